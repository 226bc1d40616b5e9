//! Route actions: forward (cluster choice, rewrites, timeouts, retries, hashing), redirect and
//! direct response.

use super::headers::HeaderPolicy;
use crate::config::{duration, opt_duration};
use envoy_types::pb::envoy::config::route::v3 as rpb;
use regex::Regex;
use std::time::Duration;

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
    /// Stop at this policy if it produced a hash.
    pub terminal: bool,
}

/// Retry conditions (`retry_on`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// Any 5xx response (and resets/connect failures, as in Envoy).
    pub five_xx: bool,
    /// 502, 503, 504 (and resets/connect failures).
    pub gateway_error: bool,
    /// Connection to upstream failed.
    pub connect_failure: bool,
    /// Upstream refused an HTTP/2 stream.
    pub refused_stream: bool,
    /// Upstream reset (no response).
    pub reset: bool,
    /// Status in `retriable_status_codes`.
    pub retriable_status_codes: bool,
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    /// `envoy-ratelimited`: a response marked `x-envoy-ratelimited` (never retried without).
    pub envoy_ratelimited: bool,
    /// `retriable-headers`: a response header matches one of the policy's.
    pub retriable_headers: bool,
    /// gRPC `unavailable` / `cancelled` / `deadline-exceeded` / `resource-exhausted` /
    /// `internal`.
    pub grpc: [bool; 5],
}

/// gRPC status codes of [`RetryOn::grpc`], in order.
const GRPC_RETRY_CODES: [u32; 5] = [14, 1, 4, 8, 13];

/// `RetryPolicy`.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Conditions.
    pub on: RetryOn,
    /// Retries after the first try.
    pub num_retries: u32,
    /// Timeout of each try.
    pub per_try_timeout: Option<Duration>,
    /// Status codes for `retriable-status-codes`.
    pub status_codes: Vec<u16>,
    /// `retriable_headers`, for `retriable-headers` (and the request's
    /// `x-envoy-retriable-header-names`).
    pub retriable_headers: Vec<super::matcher::HeaderMatch>,
    /// `envoy.retry_host_predicates.previous_hosts`: do not pick a host tried before.
    pub skip_previous_hosts: bool,
    /// How often host selection may be redone to avoid a previous host.
    pub host_selection_attempts: u32,
    /// Base backoff interval (Envoy default 25 ms).
    pub backoff_base: Duration,
    /// Maximum backoff interval (default 10× base).
    pub backoff_max: Duration,
}

impl RetryOn {
    /// Add the HTTP conditions named in a comma-separated list (others are ignored).
    pub fn add_http(&mut self, list: &str) {
        for cond in list.split(',').map(str::trim) {
            match cond {
                "5xx" => self.five_xx = true,
                "gateway-error" => self.gateway_error = true,
                "connect-failure" => self.connect_failure = true,
                "refused-stream" => self.refused_stream = true,
                "reset" => self.reset = true,
                "retriable-status-codes" => self.retriable_status_codes = true,
                "retriable-4xx" => self.retriable_4xx = true,
                "envoy-ratelimited" => self.envoy_ratelimited = true,
                "retriable-headers" => self.retriable_headers = true,
                _ => {}
            }
        }
    }

    /// Add the gRPC conditions named in a comma-separated list (others are ignored).
    pub fn add_grpc(&mut self, list: &str) {
        for cond in list.split(',').map(str::trim) {
            match cond {
                "unavailable" => self.grpc[0] = true,
                "cancelled" => self.grpc[1] = true,
                "deadline-exceeded" => self.grpc[2] = true,
                "resource-exhausted" => self.grpc[3] = true,
                "internal" => self.grpc[4] = true,
                _ => {}
            }
        }
    }
}

impl RetryPolicy {
    /// Envoy's policy for a route without one, for retries the request headers enable: one
    /// retry, no per-try timeout, 25 ms backoff.
    pub fn header_default() -> Self {
        Self::from_proto(&rpb::RetryPolicy::default())
    }

    /// Convert the proto form; a `retriable_headers` matcher that does not compile is left
    /// out, with a warning.
    pub fn from_proto(p: &rpb::RetryPolicy) -> Self {
        let mut on = RetryOn::default();
        // The config's retry_on takes both kinds of condition; the request headers one each.
        on.add_http(&p.retry_on);
        on.add_grpc(&p.retry_on);
        for cond in p
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            let mut one = RetryOn::default();
            one.add_http(cond);
            one.add_grpc(cond);
            if one == RetryOn::default() {
                tracing::debug!("retry_on {cond:?} is not supported; ignored");
            }
        }
        let base = p
            .retry_back_off
            .as_ref()
            .and_then(|b| opt_duration(&b.base_interval))
            .unwrap_or(Duration::from_millis(25));
        let max = p
            .retry_back_off
            .as_ref()
            .and_then(|b| opt_duration(&b.max_interval))
            .unwrap_or(base * 10);
        RetryPolicy {
            on,
            num_retries: p.num_retries.as_ref().map(|n| n.value).unwrap_or(1),
            per_try_timeout: opt_duration(&p.per_try_timeout).filter(|d| !d.is_zero()),
            status_codes: p.retriable_status_codes.iter().map(|c| *c as u16).collect(),
            retriable_headers: p
                .retriable_headers
                .iter()
                .filter_map(|h| match super::matcher::HeaderMatch::from_proto(h) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        tracing::warn!("retry policy: retriable_headers {:?}: {e}", h.name);
                        None
                    }
                })
                .collect(),
            skip_previous_hosts: p
                .retry_host_predicate
                .iter()
                .any(|h| h.name == "envoy.retry_host_predicates.previous_hosts"),
            host_selection_attempts: p.host_selection_retry_max_attempts.clamp(1, 100) as u32,
            backoff_base: base,
            backoff_max: max,
        }
    }

    /// Whether a response makes the try retriable (Envoy's `wouldRetryFromHeaders`).
    pub fn retry_response(&self, status: u16, headers: &http::HeaderMap) -> bool {
        // What the upstream's rate limiter refused is retried only when asked for.
        if headers.contains_key("x-envoy-ratelimited") {
            return self.on.envoy_ratelimited;
        }
        if (self.on.five_xx && status >= 500)
            || (self.on.gateway_error && matches!(status, 502..=504))
            || (self.on.retriable_4xx && status == 409)
            || (self.on.retriable_status_codes && self.status_codes.contains(&status))
            || (self.on.retriable_headers
                && self.retriable_headers.iter().any(|m| m.matches(headers)))
        {
            return true;
        }
        if !self.on.grpc.contains(&true) {
            return false;
        }
        let grpc = headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse::<u32>().ok());
        grpc.is_some_and(|g| {
            GRPC_RETRY_CODES
                .iter()
                .zip(self.on.grpc)
                .any(|(code, on)| on && *code == g)
        })
    }

    /// Whether a connect failure is retriable.
    pub fn retry_connect_failure(&self) -> bool {
        self.on.connect_failure || self.on.five_xx || self.on.gateway_error || self.on.reset
    }

    /// Whether a reset (no response, per-try timeout) is retriable.
    pub fn retry_reset(&self) -> bool {
        self.on.reset || self.on.five_xx || self.on.gateway_error
    }
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
fn envoy_substitution(s: &str) -> String {
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

/// A redirect answer.
#[derive(Debug, Clone)]
pub struct Redirect {
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    path: Option<String>,
    prefix: Option<String>,
    regex: Option<(Regex, String)>,
    /// Status code (301, 302, 303, 307, 308).
    pub status: u16,
    strip_query: bool,
}

impl Redirect {
    /// Convert the proto form.
    pub fn from_proto(r: &rpb::RedirectAction) -> Result<Self, String> {
        use rpb::redirect_action::{PathRewriteSpecifier as P, SchemeRewriteSpecifier as S};
        let (mut path, mut prefix, mut regex) = (None, None, None);
        match &r.path_rewrite_specifier {
            Some(P::PathRedirect(p)) => path = Some(p.clone()),
            Some(P::PrefixRewrite(p)) => prefix = Some(p.clone()),
            Some(P::RegexRewrite(rr)) => {
                let pat = rr.pattern.as_ref().ok_or("regex_rewrite without pattern")?;
                // Unanchored, a global replace like the route action's (Envoy's
                // `replaceAll`).
                regex = Some((
                    Regex::new(&pat.regex).map_err(|e| format!("regex_rewrite: {e}"))?,
                    envoy_substitution(&rr.substitution),
                ));
            }
            Some(P::PathRewrite(_)) => return Err("path_rewrite in redirect unsupported".into()),
            None => {}
        }
        Ok(Redirect {
            scheme: match &r.scheme_rewrite_specifier {
                Some(S::HttpsRedirect(true)) => Some("https".into()),
                Some(S::SchemeRedirect(s)) => Some(s.clone()),
                _ => None,
            },
            host: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
            port: (r.port_redirect != 0).then_some(r.port_redirect as u16),
            path,
            prefix,
            regex,
            status: match r.response_code {
                1 => 302,
                2 => 303,
                3 => 307,
                4 => 308,
                _ => 301,
            },
            strip_query: r.strip_query,
        })
    }

    /// The Location for a request to `scheme://host` + `path_and_query`, of which the route
    /// matched `matched` bytes ([`super::Route::matched_len`]), as Envoy's `newUri` builds it:
    /// - the scheme is the redirect's, else the request's;
    /// - the host is `host_redirect` verbatim, else the request's Host, whose port goes when
    ///   a `port_redirect` is given or the scheme changes from one whose default port it is;
    /// - a `port_redirect` is always written out;
    /// - the query stays unless `strip_query`, or the `path_redirect` brings its own.
    pub fn location(
        &self,
        scheme: &str,
        host: &str,
        path_and_query: &str,
        matched: usize,
    ) -> String {
        let new_scheme = self.scheme.as_deref().unwrap_or(scheme);
        let host_part = match &self.host {
            Some(h) => h.as_str(),
            None => {
                let (bare, port) = split_host_port(host);
                let default_port =
                    matches!((scheme, port), ("http", Some(80)) | ("https", Some(443)));
                if self.port.is_some() || (new_scheme != scheme && default_port) {
                    bare
                } else {
                    host
                }
            }
        };
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let mut new_path = if let Some(p) = &self.path {
            p.clone()
        } else if let Some(pre) = &self.prefix {
            format!("{pre}{}", path.get(matched..).unwrap_or(""))
        } else if let Some((re, sub)) = &self.regex {
            re.replace_all(path, sub.as_str()).into_owned()
        } else {
            path.to_string()
        };
        if !self.strip_query && !new_path.contains('?') {
            if let Some(q) = query {
                new_path = format!("{new_path}?{q}");
            }
        }
        format!("{new_scheme}://{host_part}{port}{new_path}")
    }
}

/// Split `host[:port]` (IPv6 `[a::b]:port` aware).
pub fn split_host_port(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once(']') {
            let port = p.strip_prefix(':').and_then(|p| p.parse().ok());
            return (&host[..h.len() + 2], port);
        }
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (host, None),
        },
        _ => (host, None),
    }
}
