//! An endpoint assignment (EDS `ClusterLoadAssignment`) as a cluster's hosts.

use crate::cluster::host::Host;
use crate::cluster::{address, Addr};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use std::net::SocketAddr;
use std::sync::Arc;

/// The hosts of an assignment, unhealthy ones included (as Envoy keeps them: they count
/// toward panic mode and show in `/clusters`); a host equal to one in `keep` (address,
/// weight, priority, EDS status) is reused so its outlier state and request counts carry
/// over.
pub fn hosts(cla: &ClusterLoadAssignment, keep: &[Arc<Host>]) -> Result<Vec<Arc<Host>>, String> {
    let mut out = Vec::new();
    for (index, group) in cla.endpoints.iter().enumerate() {
        let locality = crate::cluster::host::locality_of(index, group);
        for ep in &group.lb_endpoints {
            let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &ep.host_identifier else {
                continue;
            };
            let addr = match address(e.address.as_ref())? {
                Addr::Socket(ip, port) => SocketAddr::new(
                    ip.parse()
                        .map_err(|_| format!("endpoint address {ip:?} is not an IP"))?,
                    port,
                ),
                Addr::Pipe(p) => return Err(format!("pipe endpoint {p:?} is not supported")),
            };
            let weight = ep
                .load_balancing_weight
                .as_ref()
                .map(|w| w.value)
                .unwrap_or(1)
                .max(1);
            let socket_match = crate::cluster::transport::socket_match(ep.metadata.as_ref());
            let reuse = keep.iter().find(|h| {
                h.addr == addr
                    && h.weight == weight
                    && h.priority == group.priority
                    && h.eds_status as i32 == ep.health_status
                    && h.socket_match == socket_match
                    && h.locality == locality
            });
            out.push(match reuse {
                Some(h) => h.clone(),
                None => {
                    let mut h = Host::new(addr, e.hostname.clone(), weight, group.priority)
                        .with_eds_status(ep.health_status)
                        .with_socket_match(ep.metadata.as_ref())
                        .with_locality(locality.0, locality.1);
                    // A new endpoint of a cluster that has hosts starts its slow start now
                    // (an endpoint only changed keeps its old clock).
                    if !keep.is_empty() {
                        h.added = match keep.iter().find(|k| k.addr == addr) {
                            Some(old) => old.added,
                            None => Some(std::time::Instant::now()),
                        };
                    }
                    Arc::new(h)
                }
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cla(ports: &[u16]) -> ClusterLoadAssignment {
        let eps: Vec<serde_json::Value> = ports
            .iter()
            .map(|p| {
                serde_json::json!({"endpoint": {"address": {"socket_address": {
                "address": "10.0.0.1", "port_value": p}}}})
            })
            .collect();
        crate::config::test_proto(
            serde_json::json!({"cluster_name": "c", "endpoints": [{"lb_endpoints": eps}]}),
        )
    }

    /// Slow start's clock: hosts a cluster starts with have none, endpoints a later update
    /// adds start theirs then, and endpoints that stay keep theirs (and their state).
    #[test]
    fn only_endpoints_added_later_start_slow() {
        let first = hosts(&cla(&[80, 81]), &[]).unwrap();
        assert!(first.iter().all(|h| h.added.is_none()));
        let second = hosts(&cla(&[80, 81, 82]), &first).unwrap();
        assert!(
            Arc::ptr_eq(&second[0], &first[0]),
            "an unchanged host is kept"
        );
        assert!(second[1].added.is_none());
        let added = second[2].added.expect("the new endpoint is in slow start");
        let third = hosts(&cla(&[81, 82]), &second).unwrap();
        assert_eq!(third[1].added, Some(added), "its clock does not restart");
    }
}
