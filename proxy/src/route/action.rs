//! Route actions: forward (cluster choice, rewrites, timeouts, retries, hashing), redirect and
//! direct response.

use super::headers::HeaderPolicy;
use crate::config::{duration, opt_duration};
use envoy_types::pb::envoy::config::route::v3 as rpb;
use regex::Regex;
use std::time::Duration;

pub use super::redirect::{split_host_port, Redirect};
pub use super::retry::{RetryOn, RetryPolicy};

/// What a matched route does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Forward upstream.
    Forward(Box<ForwardAction>),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer directly.
    Direct {
        /// HTTP status.
        status: u16,
        /// Body (may be empty).
        body: bytes::Bytes,
    },
}

/// One entry of `weighted_clusters`.
#[derive(Debug, Clone)]
pub struct WeightedTarget {
    /// Cluster name (empty when `cluster_header` is used).
    pub name: String,
    /// Take the cluster name from this request header instead.
    pub cluster_header: Option<http::HeaderName>,
    /// Weight.
    pub weight: u64,
    /// Header mutations at weighted-cluster level.
    pub headers: HeaderPolicy,
    /// `host_rewrite_literal` at weighted-cluster level.
    pub host_rewrite: Option<String>,
}

/// Which cluster a forward goes to.
#[derive(Debug, Clone)]
pub enum ClusterTarget {
    /// A fixed cluster.
    Name(String),
    /// The cluster named by a request header.
    Header(http::HeaderName),
    /// A weighted choice. `total` is `total_weight` or the sum of the weights.
    Weighted {
        /// Entries with weight > 0.
        targets: Vec<WeightedTarget>,
        /// Sum used to pick.
        total: u64,
    },
}

/// A hash policy element for RING_HASH/MAGLEV.
#[derive(Debug, Clone)]
pub enum HashKey {
    /// Hash a request header.
    Header(http::HeaderName),
    /// Hash a cookie's value, or make one up (see [`CookieKey`]).
    Cookie(CookieKey),
    /// Hash the downstream source IP.
    SourceIp,
    /// Hash a query parameter.
    Query(String),
}

/// Envoy's cookie hash policy (Istio's `consistentHash.httpCookie`): the cookie's value is
/// hashed; a request without the cookie gets one made up when `ttl` is set, sent back in
/// `Set-Cookie` so that the client's next requests stick to the same host.
#[derive(Debug, Clone)]
pub struct CookieKey {
    /// The cookie's name.
    pub name: String,
    /// `ttl`: `Some` makes a cookie when the request has none; zero makes a session cookie.
    pub ttl: Option<Duration>,
    /// `path` of a made-up cookie (none when empty).
    pub path: String,
    /// `attributes` of a made-up cookie, as written after its `;` (`name=value` or `name`).
    pub attributes: Vec<String>,
}

/// A hash policy entry and whether it is terminal.
#[derive(Debug, Clone)]
pub struct HashPolicy {
    /// What to hash.
    pub key: HashKey,
    /// Stop at this policy once there is a hash (its own or an earlier one).
    pub terminal: bool,
}

/// Forwarding parameters of a route.
#[derive(Debug, Clone)]
pub struct ForwardAction {
    /// Which cluster.
    pub target: ClusterTarget,
    /// `prefix_rewrite`.
    pub prefix_rewrite: Option<String>,
    /// `regex_rewrite`.
    pub regex_rewrite: Option<(Regex, String)>,
    /// `host_rewrite_literal`.
    pub host_rewrite: Option<String>,
    /// `append_x_forwarded_host`: a host rewrite appends the original host to
    /// `x-forwarded-host` (Istio sets it with `proxyHeaders.xForwardedHost`).
    pub append_x_forwarded_host: bool,
    /// Whole-request timeout; `None` disables it (`timeout: 0s`). Envoy's default is 15 s.
    pub timeout: Option<Duration>,
    /// Stream idle timeout for this route; zero turns off the connection manager's too
    /// (Envoy's `RouteAction.idle_timeout`).
    pub idle_timeout: Option<Duration>,
    /// Route-level retry policy.
    pub retry: Option<RetryPolicy>,
    /// Hash policies for consistent-hash LBs.
    pub hash_policy: Vec<HashPolicy>,
    /// Status when the cluster does not exist (503 or 404).
    pub cluster_not_found: u16,
    /// `max_grpc_timeout`: when set, gRPC requests use their `grpc-timeout` header (capped by
    /// this unless it is 0) instead of `timeout`.
    pub max_grpc_timeout: Option<Duration>,
    /// `max_stream_duration` (see [`super::stream_duration`]).
    pub max_stream_duration: Option<super::stream_duration::StreamDuration>,
    /// `request_mirror_policies` (the virtual host's, then the route configuration's, when
    /// empty).
    pub mirrors: Vec<crate::proxy::mirror::MirrorPolicy>,
}

impl ForwardAction {
    /// Convert the proto form.
    pub fn from_proto(a: &rpb::RouteAction) -> Result<Self, String> {
        use rpb::route_action::ClusterSpecifier as C;
        use rpb::route_action::HostRewriteSpecifier as H;
        let target = match &a.cluster_specifier {
            Some(C::Cluster(c)) => ClusterTarget::Name(c.clone()),
            Some(C::ClusterHeader(h)) => ClusterTarget::Header(header_name(h)?),
            Some(C::WeightedClusters(w)) => {
                let mut targets = Vec::new();
                for c in &w.clusters {
                    let weight = c.weight.as_ref().map(|w| w.value as u64).unwrap_or(0);
                    if weight == 0 {
                        continue;
                    }
                    let host_rewrite = c.host_rewrite_specifier.as_ref().map(|h| match h {
                        rpb::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(h) => h.clone(),
                    });
                    targets.push(WeightedTarget {
                        name: c.name.clone(),
                        cluster_header: if c.cluster_header.is_empty() {
                            None
                        } else {
                            Some(header_name(&c.cluster_header)?)
                        },
                        weight,
                        headers: HeaderPolicy::from_proto(
                            &c.request_headers_to_add,
                            &c.request_headers_to_remove,
                            &c.response_headers_to_add,
                            &c.response_headers_to_remove,
                        )?,
                        host_rewrite,
                    });
                }
                let sum: u64 = targets.iter().map(|t| t.weight).sum();
                let total = match &w.total_weight {
                    Some(t) if t.value > 0 => {
                        if sum != t.value as u64 {
                            return Err(format!(
                                "weighted_clusters weights sum to {sum}, total_weight is {}",
                                t.value
                            ));
                        }
                        t.value as u64
                    }
                    _ => sum,
                };
                if total == 0 {
                    return Err("weighted_clusters has no cluster with a weight".into());
                }
                ClusterTarget::Weighted { targets, total }
            }
            Some(C::ClusterSpecifierPlugin(p)) => {
                return Err(format!("cluster_specifier_plugin {p} unsupported"))
            }
            Some(C::InlineClusterSpecifierPlugin(_)) => {
                return Err("inline cluster_specifier_plugin unsupported".into())
            }
            None => return Err("route action without a cluster specifier".into()),
        };
        let regex_rewrite = match &a.regex_rewrite {
            Some(r) => {
                let pat = r.pattern.as_ref().ok_or("regex_rewrite without pattern")?;
                let re = Regex::new(&pat.regex).map_err(|e| format!("regex_rewrite: {e}"))?;
                Some((re, envoy_substitution(&r.substitution)))
            }
            None => None,
        };
        let hash_policy =
            a.hash_policy
                .iter()
                .filter_map(|h| {
                    use rpb::route_action::hash_policy::PolicySpecifier as P;
                    let key = match h.policy_specifier.as_ref()? {
                        P::Header(hd) => HashKey::Header(header_name(&hd.header_name).ok()?),
                        P::Cookie(c) => HashKey::Cookie(CookieKey {
                            name: c.name.clone(),
                            ttl: c.ttl.as_ref().map(|t| {
                                Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32)
                            }),
                            path: c.path.clone(),
                            attributes: c
                                .attributes
                                .iter()
                                .map(|a| match a.value.as_str() {
                                    "" => a.name.clone(),
                                    v => format!("{}={v}", a.name),
                                })
                                .collect(),
                        }),
                        P::ConnectionProperties(c) if c.source_ip => HashKey::SourceIp,
                        P::QueryParameter(q) => HashKey::Query(q.name.clone()),
                        _ => return None,
                    };
                    Some(HashPolicy {
                        key,
                        terminal: h.terminal,
                    })
                })
                .collect();
        Ok(ForwardAction {
            target,
            prefix_rewrite: (!a.prefix_rewrite.is_empty()).then(|| a.prefix_rewrite.clone()),
            regex_rewrite,
            host_rewrite: match &a.host_rewrite_specifier {
                Some(H::HostRewriteLiteral(h)) => Some(h.clone()),
                _ => None,
            },
            append_x_forwarded_host: a.append_x_forwarded_host,
            timeout: match &a.timeout {
                Some(d) => Some(duration(d)).filter(|d| !d.is_zero()),
                None => Some(Duration::from_secs(15)),
            },
            idle_timeout: opt_duration(&a.idle_timeout),
            retry: a.retry_policy.as_ref().map(RetryPolicy::from_proto),
            hash_policy,
            max_grpc_timeout: opt_duration(&a.max_grpc_timeout),
            max_stream_duration: a
                .max_stream_duration
                .as_ref()
                .map(super::stream_duration::StreamDuration::from_proto),
            mirrors: crate::proxy::mirror::MirrorPolicy::from_protos(&a.request_mirror_policies)?,
            // Envoy's ClusterNotFoundResponseCode: SERVICE_UNAVAILABLE, NOT_FOUND,
            // INTERNAL_SERVER_ERROR (Istio's choice for Gateway API routes).
            cluster_not_found: match a.cluster_not_found_response_code {
                1 => 404,
                2 => 500,
                _ => 503,
            },
        })
    }

    /// Rewrite the path for this route. `matched` is how much of the path the route matched
    /// ([`super::Route::matched_len`]).
    pub fn rewrite_path(&self, path_and_query: &str, matched: usize) -> Option<String> {
        if let Some(new) = &self.prefix_rewrite {
            // Case-insensitive routes match regardless of case, so cut by length.
            let rest = path_and_query.get(matched..).unwrap_or("");
            return Some(format!("{new}{rest}"));
        }
        if let Some((re, sub)) = &self.regex_rewrite {
            let (path, query) = match path_and_query.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (path_and_query, None),
            };
            let new = re.replace_all(path, sub.as_str());
            return Some(match query {
                Some(q) => format!("{new}?{q}"),
                None => new.into_owned(),
            });
        }
        None
    }
}

/// The effective route timeout of a request (Envoy's `FilterUtility::finalTimeout`): for a
/// gRPC request (`grpc`, known from its content type) with `max_grpc_timeout` set, the
/// `grpc-timeout` header (absent = none) capped by the max (0 = no cap); otherwise the route
/// `timeout`.
#[inline(always)]
pub fn effective_timeout(
    a: &ForwardAction,
    grpc: bool,
    headers: &http::HeaderMap,
) -> Option<Duration> {
    // A route with `max_stream_duration` uses Envoy's "new timeouts": `max_grpc_timeout` is
    // ignored there (the stream duration reads `grpc-timeout` instead).
    match a.max_grpc_timeout {
        Some(max) if grpc && a.max_stream_duration.is_none() => {
            let mut t = grpc_timeout(headers).unwrap_or(Duration::ZERO);
            if !max.is_zero() && (t.is_zero() || t > max) {
                t = max;
            }
            Some(t).filter(|t| !t.is_zero())
        }
        _ => a.timeout,
    }
}

/// The request's `grpc-timeout` header (a gRPC client's deadline), if it has a valid one.
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
}

/// Parse gRPC's `grpc-timeout` (`<up to 8 digits><H|M|S|m|u|n>`).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Envoy (RE2) writes capture references as `\1`; the regex crate wants `${1}`.
pub(super) fn envoy_substitution(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(|d| d.is_ascii_digit()) => {
                out.push_str(&format!("${{{}}}", chars.next().unwrap()));
            }
            '\\' if chars.peek() == Some(&'\\') => {
                chars.next();
                out.push('\\');
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

fn header_name(s: &str) -> Result<http::HeaderName, String> {
    http::HeaderName::from_bytes(s.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("bad header name {s:?}"))
}
