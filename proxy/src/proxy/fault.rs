//! `envoy.filters.http.fault`: delay and abort a percentage of requests (Istio's fault injection).

use crate::config::{decode, opt_duration};
use crate::route::matcher::HeaderMatch;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as common;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fpb;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use std::time::Duration;

/// A percentage as a fraction of one million.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percent(u32);

impl Percent {
    /// From Envoy's FractionalPercent (absent means 100%).
    pub fn from_proto(p: Option<&FractionalPercent>) -> Self {
        match p {
            None => Percent(1_000_000),
            Some(p) => {
                let scale = match p.denominator {
                    1 => 100,
                    2 => 1,
                    _ => 10_000,
                };
                Percent((p.numerator as u64 * scale).min(1_000_000) as u32)
            }
        }
    }

    /// `n` millionths (at most one million).
    pub const fn from_millionths(n: u32) -> Self {
        Percent(if n > 1_000_000 { 1_000_000 } else { n })
    }

    /// Roll the dice.
    pub fn sample(self) -> bool {
        self.0 >= 1_000_000 || (self.0 > 0 && fastrand::u32(0..1_000_000) < self.0)
    }
}

/// How long to delay.
#[derive(Debug, Clone)]
pub enum Delay {
    /// A fixed delay.
    Fixed(Duration),
    /// Milliseconds from `x-envoy-fault-delay-request`.
    Header,
}

/// How to abort.
#[derive(Debug, Clone)]
pub enum Abort {
    /// HTTP status.
    Http(u16),
    /// gRPC status (HTTP 200 + grpc-status).
    Grpc(u32),
    /// Status from `x-envoy-fault-abort-request` (or `-grpc-request`).
    Header,
}

/// Compiled fault configuration.
#[derive(Debug, Clone, Default)]
pub struct FaultConfig {
    /// Delay and its probability.
    pub delay: Option<(Delay, Percent)>,
    /// Abort, its probability and body.
    pub abort: Option<(Abort, Percent, String)>,
    /// Only for requests to this cluster (empty = any).
    pub upstream_cluster: String,
    headers: Vec<HeaderMatch>,
    /// `max_active_faults`.
    pub max_active: Option<u32>,
}

/// The fault decided for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Delay to inject.
    pub delay: Option<Duration>,
    /// Abort as (HTTP status, gRPC status).
    pub abort: Option<(u16, Option<u32>)>,
    /// Body of the abort response.
    pub body: String,
}

impl FaultConfig {
    /// Decode from a typed_config / typed_per_filter_config Any.
    pub fn from_any(any: &envoy_types::pb::google::protobuf::Any) -> Result<Self, String> {
        Self::from_proto(&decode::unpack::<fpb::HttpFault>(any)?)
    }

    /// Convert the proto form.
    pub fn from_proto(f: &fpb::HttpFault) -> Result<Self, String> {
        let delay = match &f.delay {
            Some(d) => {
                use common::fault_delay::FaultDelaySecifier as S;
                let kind = match &d.fault_delay_secifier {
                    Some(S::FixedDelay(x)) => Delay::Fixed(crate::config::duration(x)),
                    Some(S::HeaderDelay(_)) => Delay::Header,
                    None => return Err("fault delay without fixed_delay or header_delay".into()),
                };
                Some((kind, Percent::from_proto(d.percentage.as_ref())))
            }
            None => None,
        };
        let abort = match &f.abort {
            Some(a) => {
                use fpb::fault_abort::ErrorType as E;
                let kind = match &a.error_type {
                    Some(E::HttpStatus(s)) if (200..600).contains(s) => Abort::Http(*s as u16),
                    Some(E::HttpStatus(s)) => {
                        return Err(format!("fault abort status {s} out of range"))
                    }
                    Some(E::GrpcStatus(g)) => Abort::Grpc(*g),
                    Some(E::HeaderAbort(_)) => Abort::Header,
                    None => return Err("fault abort without an error type".into()),
                };
                let body = if a.response_body.is_empty() {
                    "fault filter abort".to_string()
                } else {
                    a.response_body.clone()
                };
                Some((kind, Percent::from_proto(a.percentage.as_ref()), body))
            }
            None => None,
        };
        let _ = opt_duration; // (durations handled above)
        Ok(FaultConfig {
            delay,
            abort,
            upstream_cluster: f.upstream_cluster.clone(),
            headers: f
                .headers
                .iter()
                .map(HeaderMatch::from_proto)
                .collect::<Result<_, _>>()?,
            max_active: f.max_active_faults.as_ref().map(|m| m.value),
        })
    }

    /// Decide the fault for a request bound for `cluster`.
    pub fn decide(&self, headers: &http::HeaderMap, cluster: Option<&str>) -> Decision {
        let mut d = Decision::default();
        if !self.upstream_cluster.is_empty() && cluster != Some(self.upstream_cluster.as_str()) {
            return d;
        }
        if !self.headers.iter().all(|h| h.matches(headers)) {
            return d;
        }
        let header_num = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let Some((kind, pct)) = &self.delay {
            let dur = match kind {
                Delay::Fixed(x) => Some(*x),
                Delay::Header => {
                    header_num("x-envoy-fault-delay-request").map(Duration::from_millis)
                }
            };
            if dur.is_some() && pct.sample() {
                d.delay = dur;
            }
        }
        if let Some((kind, pct, body)) = &self.abort {
            let status = match kind {
                Abort::Http(s) => Some((*s, None)),
                Abort::Grpc(g) => Some((200, Some(*g))),
                Abort::Header => header_num("x-envoy-fault-abort-request")
                    .filter(|s| (200..600).contains(s))
                    .map(|s| (s as u16, None))
                    .or_else(|| {
                        header_num("x-envoy-fault-abort-grpc-request")
                            .map(|g| (200, Some(g as u32)))
                    }),
            };
            if status.is_some() && pct.sample() {
                d.abort = status;
                d.body = body.clone();
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages() {
        let p = |n, d| {
            Percent::from_proto(Some(&FractionalPercent {
                numerator: n,
                denominator: d,
            }))
        };
        assert_eq!(p(50, 0), Percent(500_000));
        assert_eq!(p(1, 1), Percent(100));
        assert_eq!(p(7, 2), Percent(7));
        assert_eq!(Percent::from_proto(None), Percent(1_000_000));
        assert!(p(100, 0).sample());
        assert!(!p(0, 0).sample());
    }
}
