//! Envoy's request control headers (`x-envoy-upstream-rq-timeout-ms`, `x-envoy-retry-on`,
//! ...). The connection manager strips them from every request it does not trust as
//! internal (Envoy's `cleanInternalHeaders`), so a client cannot set its own retries or
//! timeouts. The router takes those that are left as per-request overrides of the route and
//! consumes them, so they do not travel upstream.
//!
//! A request is internal only when the HCM's `internal_address_config` says its address is.
//! Envoy's default since 1.33 is that nothing is, and Istio's sidecars leave it so, which is
//! why an application's `x-envoy-upstream-rq-timeout-ms` has no effect through them.

use crate::listener::chain_match::Cidr;
use crate::route::action::RetryPolicy;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::InternalAddressConfig;
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use std::net::IpAddr;
use std::time::Duration;

const TIMEOUT: &str = "x-envoy-upstream-rq-timeout-ms";
const PER_TRY: &str = "x-envoy-upstream-rq-per-try-timeout-ms";
const RETRY_ON: &str = "x-envoy-retry-on";
const RETRY_GRPC_ON: &str = "x-envoy-retry-grpc-on";
const MAX_RETRIES: &str = "x-envoy-max-retries";
const RETRIABLE_CODES: &str = "x-envoy-retriable-status-codes";
const RETRIABLE_HEADER_NAMES: &str = "x-envoy-retriable-header-names";
const INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");

/// Stripped from requests that are not internal.
const CONTROL: [&str; 14] = [
    RETRIABLE_CODES,
    RETRIABLE_HEADER_NAMES,
    RETRY_ON,
    RETRY_GRPC_ON,
    MAX_RETRIES,
    "x-envoy-upstream-alt-stat-name",
    TIMEOUT,
    PER_TRY,
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
    "x-envoy-original-url",
    "x-envoy-hedge-on-per-try-timeout",
];

/// Also stripped from edge requests (`use_remote_address` set and not internal).
const EDGE: [&str; 3] = [
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
];

/// The HCM's `internal_address_config`: the CIDR ranges whose clients are internal.
#[derive(Debug, Clone, Default)]
pub struct InternalAddresses(Vec<Cidr>);

impl InternalAddresses {
    /// From the HCM's config (absent or without ranges: nothing is internal).
    pub fn from_proto(c: Option<&InternalAddressConfig>) -> Result<Self, String> {
        let ranges = c.map_or(&[][..], |c| c.cidr_ranges.as_slice());
        ranges
            .iter()
            .map(Cidr::from_proto)
            .collect::<Result<_, _>>()
            .map(InternalAddresses)
            .map_err(|e| format!("internal_address_config: {e}"))
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }
}

/// Decide whether the request is internal, as Envoy's connection manager does, and strip
/// the control headers from it if not. `x-envoy-internal: true` marks an internal request.
/// Runs before the request's `x-forwarded-for` gets the peer appended. Returns whether
/// control headers may be left for the router.
pub fn sanitize(
    headers: &mut HeaderMap,
    peer: IpAddr,
    use_remote_address: bool,
    internal: &InternalAddresses,
) -> bool {
    // Nearly every request has no x-envoy- header: one pass over the names decides. The
    // edge's own `x-envoy-external-address` (set just before, and never stripped) does not
    // count, or every external request at the edge would take the slow path below.
    let envoy = headers
        .keys()
        .any(|k| k.as_str().starts_with("x-envoy-") && k.as_str() != "x-envoy-external-address");
    if !envoy && internal.0.is_empty() {
        return false;
    }
    let is_internal = is_internal(headers, peer, use_remote_address, internal);
    headers.remove(INTERNAL);
    if is_internal {
        headers.insert(INTERNAL, HeaderValue::from_static("true"));
    } else if envoy {
        for h in CONTROL {
            headers.remove(h);
        }
        if use_remote_address {
            for h in EDGE {
                headers.remove(h);
            }
        }
    }
    is_internal && envoy
}

/// Whether Envoy's connection manager takes the request as internal: its client is in
/// `internal_address_config` (the peer, when nothing forwarded it before, with
/// `use_remote_address`; else a single address in `x-forwarded-for`).
pub fn is_internal(
    headers: &HeaderMap,
    peer: IpAddr,
    use_remote_address: bool,
    internal: &InternalAddresses,
) -> bool {
    if internal.0.is_empty() {
        return false;
    }
    let xff = headers.get_all(http::header::HeaderName::from_static("x-forwarded-for"));
    let mut lines = xff.iter();
    let first = lines.next();
    if use_remote_address {
        // The peer is the client only when nothing forwarded the request before.
        return first.is_none() && internal.contains(peer);
    }
    // Trust comes from a single address in x-forwarded-for (over all its lines).
    lines.next().is_none()
        && first
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.contains(','))
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
            .is_some_and(|ip| internal.contains(ip))
}

/// The router's overrides from the request's control headers, which it consumes.
#[derive(Debug, Default)]
pub struct Overrides {
    /// `x-envoy-upstream-rq-timeout-ms`: the route timeout (`Some(None)`: 0, none).
    pub timeout: Option<Option<Duration>>,
    /// The route's retry policy merged with the retry headers and the per-try header.
    pub retry: Option<RetryPolicy>,
}

/// Take the control headers off `headers` (Envoy's `finalTimeout` and `RetryStateImpl`):
/// the timeout replaces the route's; `x-envoy-retry-on` and `x-envoy-retry-grpc-on` add
/// conditions to the route's (and enable retries, once by default, on a route without a
/// policy); `x-envoy-max-retries` replaces the count when some condition is set; status
/// codes are added; the per-try timeout replaces the route's (the router ignores one not
/// below the request timeout). Values that do not parse are ignored.
pub fn take(headers: &mut HeaderMap, route: Option<&RetryPolicy>) -> Overrides {
    let mut take = |name: &str| {
        headers
            .remove(name)
            .and_then(|v| v.to_str().ok().map(|s| s.trim().to_string()))
    };
    let millis = |v: Option<String>| v.and_then(|s| s.parse::<u64>().ok());
    let timeout =
        millis(take(TIMEOUT)).map(|ms| Some(Duration::from_millis(ms)).filter(|d| !d.is_zero()));
    let per_try = millis(take(PER_TRY));
    let (on, grpc_on) = (take(RETRY_ON), take(RETRY_GRPC_ON));
    let (max, codes) = (take(MAX_RETRIES), take(RETRIABLE_CODES));
    let header_names = take(RETRIABLE_HEADER_NAMES);
    // The route's policy, or Envoy's default for retries the headers enable.
    let base = || route.cloned().unwrap_or_else(RetryPolicy::header_default);
    let mut retry = None;
    let tunes_route = max.is_some() || codes.is_some() || header_names.is_some();
    if on.is_some() || grpc_on.is_some() || (route.is_some() && tunes_route) {
        let mut p = base();
        if let Some(on) = &on {
            p.on.add_http(on);
        }
        if let Some(on) = &grpc_on {
            p.on.add_grpc(on);
        }
        if p.on != Default::default() {
            if let Some(n) = max.and_then(|m| m.parse::<u32>().ok()) {
                p.num_retries = n;
            }
            p.status_codes.extend(
                codes
                    .iter()
                    .flat_map(|c| c.split(','))
                    .filter_map(|c| c.trim().parse::<u16>().ok()),
            );
            // Each name a presence test, for `retriable-headers`.
            p.retriable_headers.extend(
                header_names
                    .iter()
                    .flat_map(|n| n.split(','))
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .filter_map(|n| crate::route::matcher::HeaderMatch::present(n).ok()),
            );
        }
        retry = Some(p);
    }
    if let Some(ms) = per_try {
        let p = retry.get_or_insert_with(base);
        p.per_try_timeout = Some(Duration::from_millis(ms)).filter(|d| !d.is_zero());
    }
    Overrides { timeout, retry }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::CidrRange;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
            .collect()
    }

    fn loopback() -> InternalAddresses {
        InternalAddresses::from_proto(Some(&InternalAddressConfig {
            cidr_ranges: vec![CidrRange {
                address_prefix: "127.0.0.0".into(),
                prefix_len: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 8 }),
            }],
            ..Default::default()
        }))
        .unwrap()
    }

    #[test]
    fn only_internal_requests_keep_control_headers() {
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let sent = [
            ("x-envoy-retry-on", "5xx"),
            ("x-envoy-internal", "true"),
            ("x-envoy-decorator-operation", "op"),
            ("x-envoy-upstream-rq-timeout-ms", "100"),
        ];
        // Envoy's default: nothing is internal.
        let mut h = headers(&sent);
        assert!(!sanitize(&mut h, peer, false, &Default::default()));
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-envoy-decorator-operation"));
        // An edge request loses the decorator too.
        let mut h = headers(&sent);
        sanitize(&mut h, peer, true, &Default::default());
        assert!(h.is_empty());
        // use_remote_address and an internal peer with nothing forwarded: internal.
        let mut h = headers(&sent);
        assert!(sanitize(&mut h, peer, true, &loopback()));
        assert_eq!(h["x-envoy-internal"], "true");
        assert_eq!(h["x-envoy-retry-on"], "5xx");
        // Something forwarded it: not internal.
        let mut h = headers(&sent);
        h.insert("x-forwarded-for", "127.0.0.2".parse().unwrap());
        assert!(!sanitize(&mut h, peer, true, &loopback()));
        assert!(!h.contains_key("x-envoy-retry-on") && !h.contains_key("x-envoy-internal"));
        // Without use_remote_address, one internal address in x-forwarded-for is trusted,
        // two are not.
        for (xff, internal) in [("127.0.0.9", true), ("10.0.0.1, 127.0.0.9", false)] {
            let mut h = headers(&sent);
            h.insert("x-forwarded-for", xff.parse().unwrap());
            assert_eq!(
                sanitize(&mut h, "10.1.1.1".parse().unwrap(), false, &loopback()),
                internal
            );
        }
    }

    #[test]
    fn the_router_takes_its_overrides() {
        let mut h = headers(&[
            ("x-envoy-upstream-rq-timeout-ms", "250"),
            ("x-envoy-retry-on", "retriable-status-codes, bogus"),
            ("x-envoy-max-retries", "3"),
            ("x-envoy-retriable-status-codes", "418,x,409"),
            ("x-envoy-upstream-rq-per-try-timeout-ms", "nope"),
            ("x-other", "kept"),
        ]);
        let o = take(&mut h, None);
        assert_eq!(o.timeout, Some(Some(Duration::from_millis(250))));
        let p = o.retry.unwrap();
        assert!(p.on.retriable_status_codes && !p.on.five_xx);
        assert_eq!(
            (p.num_retries, p.status_codes.as_slice()),
            (3, &[418, 409][..])
        );
        assert_eq!(p.per_try_timeout, None);
        assert_eq!(h.len(), 1, "consumed: {h:?}");
        // 0 means no timeout; max-retries alone enables nothing on a route without a policy.
        let mut h = headers(&[
            ("x-envoy-upstream-rq-timeout-ms", "0"),
            ("x-envoy-max-retries", "5"),
        ]);
        let o = take(&mut h, None);
        assert_eq!(o.timeout, Some(None));
        assert!(o.retry.is_none());
        // The retry-on header alone retries once.
        let mut h = headers(&[("x-envoy-retry-on", "5xx")]);
        assert_eq!(take(&mut h, None).retry.unwrap().num_retries, 1);
        // Retriable header names: each a presence test.
        let mut h = headers(&[
            ("x-envoy-retry-on", "retriable-headers"),
            ("x-envoy-retriable-header-names", "x-a, x-b"),
        ]);
        let p = take(&mut h, None).retry.unwrap();
        assert!(h.is_empty(), "consumed: {h:?}");
        let answer = |k: &str| {
            let mut r = HeaderMap::new();
            r.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
            p.retry_response(200, &r)
        };
        assert!(answer("x-a") && answer("x-b") && !answer("x-c"));
    }
}
