//! Upstream hosts and the host set a load balancer picks from.

use super::outlier::HostOutlier;
use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// One upstream endpoint.
#[derive(Debug)]
pub struct Host {
    /// Where to connect.
    pub addr: SocketAddr,
    /// `addr` as a URI authority, parsed once (the upstream request URI of HTTP/1.1).
    pub authority: Option<http::uri::Authority>,
    /// The endpoint's hostname (DNS clusters), used for auto host rewrite.
    pub hostname: String,
    /// `load_balancing_weight` (≥ 1).
    pub weight: u32,
    /// EDS priority (0 is preferred).
    pub priority: u32,
    /// Requests in flight to this host (LEAST_REQUEST).
    pub active_rq: AtomicU64,
    /// Outlier-detection state.
    pub outlier: HostOutlier,
    /// The endpoint's EDS `health_status`. Istio sends not-ready pods as UNHEALTHY; they
    /// stay in the set, as in Envoy, but take traffic only in panic mode.
    pub eds_status: HealthStatus,
    /// The endpoint's `envoy.transport_socket_match` metadata (Istio's `tlsMode: istio`).
    pub socket_match: Vec<(String, String)>,
    /// Its locality: the index of its `LocalityLbEndpoints` in the assignment, and that
    /// entry's `load_balancing_weight` (0 when unset), for locality-weighted balancing.
    pub locality: (u32, u32),
    /// When an update added it to a cluster that had hosts already (slow start's clock);
    /// `None` for the hosts a cluster starts with.
    pub added: Option<std::time::Instant>,
    /// The endpoint's `istio.workload` metadata (`name;namespace;canonical service;canonical
    /// revision[;cluster]`), which Istio's stats read when the upstream sends no metadata.
    pub istio_workload: Option<std::sync::Arc<str>>,
}

/// [`Host::locality`] for the hosts of the `index`th `LocalityLbEndpoints` of an assignment.
pub fn locality_of(
    index: usize,
    group: &envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints,
) -> (u32, u32) {
    (
        index as u32,
        group.load_balancing_weight.as_ref().map_or(0, |w| w.value),
    )
}

impl Host {
    /// A host with the given weight.
    pub fn new(addr: SocketAddr, hostname: String, weight: u32, priority: u32) -> Self {
        Host {
            addr,
            authority: addr.to_string().parse().ok(),
            hostname,
            weight: weight.max(1),
            priority,
            active_rq: AtomicU64::new(0),
            outlier: HostOutlier::default(),
            eds_status: HealthStatus::Unknown,
            socket_match: Vec::new(),
            locality: (0, 0),
            added: None,
            istio_workload: None,
        }
    }

    /// A fresh copy of `h`'s identity (address, name, weight, priority), for tests that
    /// rebuild hosts with other attributes.
    #[cfg(test)]
    pub fn clone_for_test(h: &Host) -> Host {
        Host::new(h.addr, h.hostname.clone(), h.weight, h.priority)
    }

    /// The same host in locality `index` of weight `weight` (Istio's
    /// `localityLbSetting.distribute` sets the weights).
    pub fn with_locality(mut self, index: u32, weight: u32) -> Self {
        self.locality = (index, weight);
        self
    }

    /// The same host with the endpoint's transport socket match metadata.
    pub fn with_socket_match(
        mut self,
        md: Option<&envoy_types::pb::envoy::config::core::v3::Metadata>,
    ) -> Self {
        self.socket_match = super::transport::socket_match(md);
        use envoy_types::pb::google::protobuf::value::Kind;
        self.istio_workload = md
            .and_then(|m| {
                m.filter_metadata
                    .get("istio")?
                    .fields
                    .get("workload")?
                    .kind
                    .as_ref()
            })
            .and_then(|k| match k {
                Kind::StringValue(s) if !s.is_empty() => Some(s.as_str().into()),
                _ => None,
            });
        self
    }

    /// The same host with the endpoint's EDS `health_status` (the proto's number; an
    /// unknown one counts as UNKNOWN).
    pub fn with_eds_status(mut self, status: i32) -> Self {
        self.eds_status = HealthStatus::try_from(status).unwrap_or(HealthStatus::Unknown);
        self
    }

    /// EDS marks it unhealthy (UNHEALTHY, DRAINING or TIMEOUT: Envoy's FAILED_EDS_HEALTH).
    pub fn eds_unhealthy(&self) -> bool {
        use HealthStatus::*;
        matches!(self.eds_status, Unhealthy | Draining | Timeout)
    }

    /// The EDS status as the admin API names it (UNKNOWN shows as HEALTHY).
    pub fn eds_status_name(&self) -> &'static str {
        match self.eds_status {
            HealthStatus::Unknown => "HEALTHY",
            s => s.as_str_name(),
        }
    }

    /// Not to be used for new requests: unhealthy by EDS, or ejected by outlier detection.
    /// `now` is called only for a host that was ever ejected, so that a balancer pass over
    /// healthy hosts reads no clock.
    pub fn is_down(&self, now: impl FnOnce() -> std::time::Instant) -> bool {
        self.eds_unhealthy() || (self.outlier.was_ejected() && self.outlier.is_ejected(now()))
    }

    /// Requests in flight.
    pub fn active(&self) -> u64 {
        self.active_rq.load(Ordering::Relaxed)
    }
}

/// Guard that counts a request as active on a host until dropped.
#[derive(Debug)]
pub struct ActiveRequest(pub std::sync::Arc<Host>);

impl ActiveRequest {
    /// Start counting.
    pub fn new(h: std::sync::Arc<Host>) -> Self {
        h.active_rq.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(h)
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active_rq.fetch_sub(1, Ordering::Relaxed);
    }
}
