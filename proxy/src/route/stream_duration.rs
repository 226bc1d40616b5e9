//! A route's `max_stream_duration`: how long a whole request may last, from its headers to the
//! end of its response, before the proxy answers or ends it.
//!
//! Istio writes `max_stream_duration: {max_stream_duration: 0s, grpc_timeout_header_max: 0s}`
//! (or the VirtualService timeout) on every route. With `grpc_timeout_header_max` set, a
//! request's `grpc-timeout` header (a gRPC client's deadline) becomes the limit, so a call
//! that outlives its deadline gets `DEADLINE_EXCEEDED` from the sidecar, as with Envoy.

use super::action::grpc_timeout;
use crate::config::opt_duration;
use envoy_types::pb::envoy::config::route::v3 as rpb;
use std::time::Duration;

/// `RouteAction.max_stream_duration`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamDuration {
    /// `max_stream_duration` (0: none; unset: the HCM's).
    pub max: Option<Duration>,
    /// `grpc_timeout_header_max`: when set, a `grpc-timeout` header is the limit, capped by
    /// this unless it is 0.
    pub grpc_header_max: Option<Duration>,
    /// `grpc_timeout_header_offset`, taken off the header's value.
    pub grpc_header_offset: Option<Duration>,
}

impl StreamDuration {
    /// From the proto.
    pub fn from_proto(m: &rpb::route_action::MaxStreamDuration) -> Self {
        StreamDuration {
            max: opt_duration(&m.max_stream_duration),
            grpc_header_max: opt_duration(&m.grpc_timeout_header_max),
            grpc_header_offset: opt_duration(&m.grpc_timeout_header_offset),
        }
    }
}

/// The limit on one request's duration, as Envoy's HCM computes it
/// (`ActiveStream::refreshDurationTimeout`): the `grpc-timeout` header when the route has
/// `grpc_timeout_header_max`, else the route's `max_stream_duration` (0 = none), else the
/// HCM's `common_http_protocol_options.max_stream_duration`. `None`: no limit.
pub fn limit(
    route: Option<&StreamDuration>,
    hcm_max: Option<Duration>,
    headers: &http::HeaderMap,
) -> Option<Duration> {
    if let Some(cap) = route.and_then(|r| r.grpc_header_max) {
        if let Some(mut t) = grpc_timeout(headers) {
            if !cap.is_zero() && t > cap {
                t = cap;
            }
            if let Some(off) = route.and_then(|r| r.grpc_header_offset) {
                if !t.is_zero() && !off.is_zero() {
                    t = if off < t {
                        t - off
                    } else {
                        Duration::from_millis(1)
                    };
                }
            }
            return Some(t);
        }
    }
    match route.and_then(|r| r.max) {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None => hcm_max.filter(|d| !d.is_zero()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    fn grpc(timeout: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-timeout", timeout.parse().unwrap());
        h
    }

    #[test]
    fn istios_routes_take_the_grpc_deadline_and_nothing_else() {
        let istio = StreamDuration {
            max: ms(0),
            grpc_header_max: ms(0),
            grpc_header_offset: None,
        };
        assert_eq!(limit(Some(&istio), None, &grpc("250m")), ms(250));
        assert_eq!(limit(Some(&istio), None, &grpc("3S")), ms(3000));
        // No header: max_stream_duration 0s means no limit, even with one on the HCM.
        assert_eq!(limit(Some(&istio), ms(900), &http::HeaderMap::new()), None);
        // A malformed header counts as none.
        assert_eq!(limit(Some(&istio), None, &grpc("soon")), None);
    }

    #[test]
    fn caps_offsets_and_the_hcm_fallback() {
        let capped = StreamDuration {
            max: ms(5000),
            grpc_header_max: ms(1000),
            grpc_header_offset: ms(100),
        };
        assert_eq!(limit(Some(&capped), None, &grpc("3S")), ms(900));
        assert_eq!(limit(Some(&capped), None, &grpc("50m")), ms(1));
        assert_eq!(
            limit(Some(&capped), None, &http::HeaderMap::new()),
            ms(5000)
        );
        // Without grpc_timeout_header_max the header is ignored.
        let plain = StreamDuration {
            max: ms(700),
            ..Default::default()
        };
        assert_eq!(limit(Some(&plain), None, &grpc("1m")), ms(700));
        // Route silent: the HCM's limit, 0 meaning none.
        assert_eq!(limit(None, ms(800), &grpc("1m")), ms(800));
        assert_eq!(
            limit(Some(&StreamDuration::default()), ms(0), &grpc("1m")),
            None
        );
    }
}
