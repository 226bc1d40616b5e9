//! Envoy's access log filters (`AccessLog.filter`): which requests a logger writes. All of
//! Envoy's built-in ones, with its semantics (`source/common/access_log/access_log_impl.cc`):
//! status code, duration, response flags, gRPC status, request headers, runtime sampling
//! (by the request id), forced tracing, log type, health checks, dynamic metadata, and `and`/
//! `or` of them. Runtime keys are not read: mosn has no runtime, so the default values hold.
//!
//! Extension filters (Istio's Telemetry API writes CEL expressions) are not evaluated: such a
//! filter lets every request through, with a warning when the config loads, so that nothing is
//! lost.

use super::Entry;
use crate::route::matcher::HeaderMatch;
use envoy_types::pb::envoy::config::accesslog::v3 as alpb;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;

/// A compiled access log filter.
#[derive(Debug)]
pub enum Filter {
    /// The response code (0 when none was sent) compared.
    Status(Compare),
    /// The request's duration in ms compared.
    Duration(Compare),
    /// Any of these response flags (any flag at all when empty).
    Flags(Vec<String>),
    /// The gRPC status in (or, with `exclude`, not in) the list.
    Grpc {
        /// Status codes.
        statuses: Vec<u32>,
        /// Invert.
        exclude: bool,
    },
    /// A request header matcher.
    Header(Box<HeaderMatch>),
    /// `numerator / denominator` of requests, picked by the request id or at random.
    Runtime {
        /// Out of `denominator`.
        numerator: u64,
        /// 100, 10,000 or 1,000,000.
        denominator: u64,
        /// Roll the dice even when the request has an id.
        independent: bool,
    },
    /// Requests traced because `x-envoy-force-trace` asked.
    Traceable,
    /// The log type (`AccessLogType`) in (or, with `exclude`, not in) the list.
    LogType {
        /// `AccessLogType` values.
        types: Vec<i32>,
        /// Invert.
        exclude: bool,
    },
    /// A fixed answer: health checks (mosn marks none), dynamic metadata (mosn sets none:
    /// `match_if_key_not_found`), extension filters (not evaluated).
    Always(bool),
    /// All of these.
    And(Vec<Filter>),
    /// Any of these.
    Or(Vec<Filter>),
}

/// `ComparisonFilter`: an operator and the value (the runtime key's default).
#[derive(Debug)]
pub struct Compare {
    op: i32,
    value: u64,
}

impl Compare {
    fn from_proto(c: Option<&alpb::ComparisonFilter>) -> Self {
        Compare {
            op: c.map_or(0, |c| c.op),
            value: c
                .and_then(|c| c.value.as_ref())
                .map_or(0, |v| v.default_value as u64),
        }
    }

    fn holds(&self, v: u64) -> bool {
        use alpb::comparison_filter::Op;
        match Op::try_from(self.op) {
            Ok(Op::Ge) => v >= self.value,
            Ok(Op::Le) => v <= self.value,
            Ok(Op::Ne) => v != self.value,
            _ => v == self.value,
        }
    }
}

/// Envoy's response flags, short names (an unknown one is a config error, as in Envoy).
const FLAGS: [&str; 30] = [
    "DC", "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "URX", "NR", "DI", "FI", "RL", "UAEX",
    "RLSE", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR",
    "UDO",
];

/// Envoy's `AccessLogType` for a request's end and a TCP connection's end.
const DOWNSTREAM_END: i32 = 6;
const TCP_CONNECTION_END: i32 = 3;

impl Filter {
    /// Compile an `AccessLogFilter`; `name` is the logger's, for the warning.
    pub fn from_proto(f: &alpb::AccessLogFilter, name: &str) -> Result<Self, String> {
        use alpb::access_log_filter::FilterSpecifier as F;
        let Some(spec) = &f.filter_specifier else {
            return Err("access log filter without a filter".into());
        };
        let list = |fs: &[alpb::AccessLogFilter]| {
            fs.iter()
                .map(|f| Filter::from_proto(f, name))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(match spec {
            F::StatusCodeFilter(s) => Filter::Status(Compare::from_proto(s.comparison.as_ref())),
            F::DurationFilter(d) => Filter::Duration(Compare::from_proto(d.comparison.as_ref())),
            F::NotHealthCheckFilter(_) => Filter::Always(true),
            F::TraceableFilter(_) => Filter::Traceable,
            F::RuntimeFilter(r) => {
                let (numerator, denominator) = fraction(r.percent_sampled.as_ref());
                Filter::Runtime {
                    numerator,
                    denominator,
                    independent: r.use_independent_randomness,
                }
            }
            F::AndFilter(a) => Filter::And(list(&a.filters)?),
            F::OrFilter(o) => Filter::Or(list(&o.filters)?),
            F::HeaderFilter(h) => {
                let m = h.header.as_ref().ok_or("header filter without a header")?;
                Filter::Header(Box::new(HeaderMatch::from_proto(m)?))
            }
            F::ResponseFlagFilter(r) => {
                if let Some(bad) = r.flags.iter().find(|f| !FLAGS.contains(&f.as_str())) {
                    return Err(format!(
                        "unknown response flag {bad:?} in response_flag_filter"
                    ));
                }
                Filter::Flags(r.flags.clone())
            }
            F::GrpcStatusFilter(g) => Filter::Grpc {
                statuses: g.statuses.iter().map(|s| *s as u32).collect(),
                exclude: g.exclude,
            },
            F::LogTypeFilter(l) => Filter::LogType {
                types: l.types.clone(),
                exclude: l.exclude,
            },
            F::MetadataFilter(m) => {
                Filter::Always(m.match_if_key_not_found.is_none_or(|b| b.value))
            }
            F::ExtensionFilter(e) => {
                tracing::warn!(logger = %name, filter = %e.name, "access log extension filters (CEL) are not evaluated; the logger writes every request");
                Filter::Always(true)
            }
        })
    }

    /// Whether the logger writes this entry.
    pub fn passes(&self, e: &Entry<'_>) -> bool {
        match self {
            Filter::Status(c) => c.holds(e.status as u64),
            Filter::Duration(c) => e.duration.is_some_and(|d| c.holds(d.as_millis() as u64)),
            Filter::Flags(want) if want.is_empty() => !e.flags.is_empty(),
            Filter::Flags(want) => e.flags.split(',').any(|f| want.iter().any(|w| w == f)),
            Filter::Grpc { statuses, exclude } => statuses.contains(&grpc_status(e)) != *exclude,
            Filter::Header(m) => match e.req_headers {
                Some(h) => m.matches(h),
                None => m.matches(&http::HeaderMap::new()),
            },
            Filter::Runtime {
                numerator,
                denominator,
                independent,
            } => {
                let by_id = (!independent)
                    .then(|| e.req_headers.and_then(request_id_integer))
                    .flatten();
                let roll = by_id.unwrap_or_else(|| fastrand::u64(..)) % denominator;
                roll < *numerator
            }
            Filter::Traceable => e.forced_trace,
            Filter::LogType { types, exclude } => {
                let t = if e.tcp {
                    TCP_CONNECTION_END
                } else {
                    DOWNSTREAM_END
                };
                types.contains(&t) != *exclude
            }
            Filter::Always(b) => *b,
            Filter::And(fs) => fs.iter().all(|f| f.passes(e)),
            Filter::Or(fs) => fs.iter().any(|f| f.passes(e)),
        }
    }
}

/// Envoy's `Grpc::Common::getGrpcStatus`: the trailer's `grpc-status`, else the response
/// header's (an empty value counts as none), else the HTTP status mapped; a value that is not
/// a known status matches none.
fn grpc_status(e: &Entry<'_>) -> u32 {
    let header = || {
        e.resp_headers
            .and_then(|h| h.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
    };
    let value = e
        .grpc_status
        .filter(|s| !s.is_empty())
        .or_else(|| header().filter(|s| !s.is_empty()));
    match value {
        Some(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|s| *s <= 16)
            .unwrap_or(u32::MAX),
        None => crate::proxy::local_reply::grpc_status_of(e.status),
    }
}

/// A FractionalPercent as (numerator, denominator); absent is 0%, as Envoy's runtime filter
/// defaults.
fn fraction(p: Option<&FractionalPercent>) -> (u64, u64) {
    let Some(p) = p else { return (0, 100) };
    let denominator = match p.denominator {
        1 => 10_000,
        2 => 1_000_000,
        _ => 100,
    };
    (p.numerator as u64, denominator)
}

/// Envoy's UUID request id as an integer: its first 8 hex digits.
fn request_id_integer(h: &http::HeaderMap) -> Option<u64> {
    let id = h.get("x-request-id")?.as_bytes().get(..8)?;
    u64::from_str_radix(std::str::from_utf8(id).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(v: serde_json::Value) -> Filter {
        let f: alpb::AccessLogFilter = crate::config::test_proto(v);
        Filter::from_proto(&f, "test").unwrap()
    }

    fn entry(status: u16, flags: &str) -> Entry<'_> {
        Entry {
            status,
            flags,
            ..Default::default()
        }
    }

    #[test]
    fn comparisons_flags_and_grpc_status() {
        let ge = filter(
            json!({"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 400, "runtime_key": "k"}}}}),
        );
        assert!(ge.passes(&entry(503, "UF")) && ge.passes(&entry(400, "")));
        assert!(!ge.passes(&entry(200, "")));
        let ne = filter(
            json!({"status_code_filter": {"comparison": {"op": "NE", "value": {"default_value": 200, "runtime_key": "k"}}}}),
        );
        assert!(ne.passes(&entry(0, "DC")) && !ne.passes(&entry(200, "")));
        let any = filter(json!({"response_flag_filter": {}}));
        assert!(any.passes(&entry(503, "UF,URX")) && !any.passes(&entry(200, "")));
        let uo = filter(json!({"response_flag_filter": {"flags": ["UO", "URX"]}}));
        assert!(uo.passes(&entry(503, "UF,URX")) && !uo.passes(&entry(503, "UF")));
        let bad: alpb::AccessLogFilter =
            crate::config::test_proto(json!({"response_flag_filter": {"flags": ["XX"]}}));
        assert!(Filter::from_proto(&bad, "t")
            .unwrap_err()
            .contains("\"XX\""));
        // gRPC: the trailer's status, else Envoy's mapping of the HTTP status.
        let unavailable = filter(json!({"grpc_status_filter": {"statuses": ["UNAVAILABLE"]}}));
        let ok = Entry {
            grpc_status: Some("0"),
            ..entry(200, "")
        };
        assert!(!unavailable.passes(&ok));
        assert!(unavailable.passes(&entry(503, "UF")));
        // An empty trailer value falls back to the header; a bad one matches no status.
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", "14".parse().unwrap());
        let in_header = Entry {
            grpc_status: Some(""),
            resp_headers: Some(&h),
            ..entry(200, "")
        };
        assert!(unavailable.passes(&in_header));
        let unknown = filter(json!({"grpc_status_filter": {"statuses": ["UNKNOWN"]}}));
        let bad = Entry {
            grpc_status: Some("x"),
            ..entry(200, "")
        };
        assert!(!unknown.passes(&bad) && unknown.passes(&entry(200, "")));
        let not_ok = filter(json!({"grpc_status_filter": {"statuses": ["OK"], "exclude": true}}));
        assert!(!not_ok.passes(&ok) && not_ok.passes(&entry(200, "")));
    }

    #[test]
    fn sampling_by_request_id_log_types_and_combinators() {
        let half = filter(json!({"runtime_filter": {"runtime_key": "k",
            "percent_sampled": {"numerator": 50, "denominator": "HUNDRED"}}}));
        let with_id = |id: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("x-request-id", id.parse().unwrap());
            h
        };
        let (low, high) = (
            with_id("00000031-0000-4000-8000-000000000000"),
            with_id("00000063-0000-4000-8000-000000000000"),
        );
        // 0x31 = 49 < 50; 0x63 = 99.
        let e = |h| Entry {
            req_headers: Some(h),
            ..entry(200, "")
        };
        assert!(half.passes(&e(&low)) && !half.passes(&e(&high)));
        let none = filter(json!({"runtime_filter": {"runtime_key": "k"}}));
        assert!(!none.passes(&e(&low)), "absent percent_sampled is 0%");
        let tcp_only = filter(json!({"log_type_filter": {"types": ["TcpConnectionEnd"]}}));
        let tcp = Entry {
            tcp: true,
            ..entry(0, "")
        };
        assert!(tcp_only.passes(&tcp) && !tcp_only.passes(&entry(200, "")));
        let both = filter(json!({"and_filter": {"filters": [
            {"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 500, "runtime_key": "k"}}}},
            {"or_filter": {"filters": [{"response_flag_filter": {"flags": ["UF"]}}, {"traceable_filter": {}}]}}]}}));
        assert!(both.passes(&entry(503, "UF")));
        assert!(!both.passes(&entry(503, "UH")) && !both.passes(&entry(404, "UF")));
        let forced = Entry {
            forced_trace: true,
            ..entry(500, "")
        };
        assert!(both.passes(&forced));
        let md = filter(json!({"metadata_filter": {"match_if_key_not_found": false}}));
        assert!(!md.passes(&entry(200, "")));
    }
}
