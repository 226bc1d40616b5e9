//! An upstream connection's socket options from its cluster's config: the addresses it binds
//! to (`upstream_bind_config`) and TCP keepalive (`upstream_connection_options`).

use super::connector::SourceAddrs;
use envoy_types::pb::envoy::config::cluster::v3 as cpb;
use std::time::Duration;

/// `upstream_connection_options.tcp_keepalive`: SO_KEEPALIVE on, and each of idle time,
/// probe interval and probe count when set (the kernel's defaults otherwise), as Envoy does.
/// Istio writes a DestinationRule's `tcpKeepalive` here.
pub(super) fn tcp_keepalive(c: &cpb::Cluster) -> Option<socket2::TcpKeepalive> {
    let k = c
        .upstream_connection_options
        .as_ref()?
        .tcp_keepalive
        .as_ref()?;
    let mut out = socket2::TcpKeepalive::new();
    if let Some(t) = k.keepalive_time {
        out = out.with_time(Duration::from_secs(t.value.into()));
    }
    if let Some(i) = k.keepalive_interval {
        out = out.with_interval(Duration::from_secs(i.value.into()));
    }
    if let Some(n) = k.keepalive_probes {
        out = out.with_retries(n.value);
    }
    Some(out)
}

/// `upstream_bind_config`: `source_address` and at most one extra address of the other family
/// (`extra_source_addresses`, or the deprecated `additional_source_addresses`), as Envoy's
/// default selector allows. The port is ignored: the kernel picks one.
pub(super) fn bind_source(c: &cpb::Cluster) -> Result<SourceAddrs, String> {
    let Some(b) = &c.upstream_bind_config else {
        return Ok(SourceAddrs::default());
    };
    #[allow(deprecated)]
    let (extra, additional) = (&b.extra_source_addresses, &b.additional_source_addresses);
    // Envoy's own checks.
    if b.source_address.is_none() && (!extra.is_empty() || !additional.is_empty()) {
        return Err("upstream_bind_config has extra source addresses but no source_address".into());
    }
    if !extra.is_empty() && !additional.is_empty() {
        return Err(
            "upstream_bind_config: give extra_source_addresses or the deprecated \
             additional_source_addresses, not both"
                .into(),
        );
    }
    let all = b
        .source_address
        .iter()
        .chain(extra.iter().filter_map(|e| e.address.as_ref()))
        .chain(additional.iter());
    let mut out = SourceAddrs::default();
    for (i, sa) in all.enumerate() {
        let ip: std::net::IpAddr = sa
            .address
            .parse()
            .map_err(|_| format!("upstream_bind_config address {:?} is not an IP", sa.address))?;
        if i == 2 {
            return Err(
                "upstream_bind_config has more than one extra source address: \
                 give source_address and at most one extra_source_addresses entry"
                    .into(),
            );
        }
        let slot = if ip.is_ipv4() {
            &mut out.v4
        } else {
            &mut out.v6
        };
        if slot.is_some() {
            return Err(format!(
                "upstream_bind_config has two IPv{} source addresses: the extra source \
                 address must be of the other IP family",
                if ip.is_ipv4() { 4 } else { 6 }
            ));
        }
        *slot = Some(ip);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(bind: serde_json::Value) -> Result<SourceAddrs, String> {
        let c: cpb::Cluster = crate::config::decode::from_json(
            &serde_json::json!({"name": "c", "upstream_bind_config": bind}),
            true,
        )?;
        bind_source(&c)
    }

    fn sa(ip: &str) -> serde_json::Value {
        serde_json::json!({"address": ip, "port_value": 0})
    }

    #[test]
    fn bind_sources_are_one_per_family() {
        let ip = |s: &str| Some(s.parse().unwrap());
        // Istio's dual-stack inbound clusters.
        let got = sources(serde_json::json!({"source_address": sa("127.0.0.6"),
            "extra_source_addresses": [{"address": sa("::6")}]}));
        assert_eq!(
            got,
            Ok(SourceAddrs {
                v4: ip("127.0.0.6"),
                v6: ip("::6")
            })
        );
        let got = sources(serde_json::json!({"source_address": sa("::6"),
            "additional_source_addresses": [sa("127.0.0.6")]}));
        assert_eq!(
            got,
            Ok(SourceAddrs {
                v4: ip("127.0.0.6"),
                v6: ip("::6")
            })
        );
        assert_eq!(sources(serde_json::json!({})), Ok(SourceAddrs::default()));

        let e = sources(serde_json::json!({"source_address": sa("127.0.0.6"),
            "extra_source_addresses": [{"address": sa("127.0.0.7")}]}))
        .unwrap_err();
        assert!(e.contains("two IPv4 source addresses"), "{e}");
        let e = sources(serde_json::json!({"source_address": sa("127.0.0.6"),
            "extra_source_addresses": [{"address": sa("::6")}, {"address": sa("::7")}]}))
        .unwrap_err();
        assert!(e.contains("more than one extra source address"), "{e}");
        let e = sources(serde_json::json!({"extra_source_addresses": [{"address": sa("::6")}]}))
            .unwrap_err();
        assert!(e.contains("no source_address"), "{e}");
        let e = sources(serde_json::json!({"source_address": sa("127.0.0.6"),
            "extra_source_addresses": [{"address": sa("::6")}],
            "additional_source_addresses": [sa("::7")]}))
        .unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let e = sources(serde_json::json!({"source_address": sa("localhost")})).unwrap_err();
        assert!(e.contains("\"localhost\" is not an IP"), "{e}");
    }
}
