//! Envoy's retry policy (`RetryPolicy`): which outcomes a route retries, how often, with
//! which back-off and per-try timeout.

use crate::config::opt_duration;
use envoy_types::pb::envoy::config::route::v3 as rpb;
use std::time::Duration;

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
    /// `reset-before-request`: a failure before any attempt of the request sent a byte
    /// upstream. Envoy counts the request as sent once an attempt's headers reach a
    /// connection, so this retries connection failures until then (Istio's default inbound
    /// policy, for an app that is not listening yet).
    pub reset_before_request: bool,
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
    /// `envoy.retry_priorities.previous_priorities`' `update_frequency` (Istio's
    /// `retryRemoteLocalities`): every that many attempts, the priorities tried so far are
    /// left for the others.
    pub previous_priorities: Option<u32>,
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
                "reset-before-request" => self.reset_before_request = true,
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

/// The `update_frequency` of a `previous_priorities` retry priority (1 when its config does
/// not say, or cannot be read).
fn previous_priorities(p: Option<&rpb::retry_policy::RetryPriority>) -> Option<u32> {
    use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
    let p = p?;
    let any = p
        .config_type
        .as_ref()
        .map(|rpb::retry_policy::retry_priority::ConfigType::TypedConfig(any)| any);
    let typed =
        any.is_some_and(|a| a.type_url == <PreviousPrioritiesConfig as prost::Name>::type_url());
    if p.name != "envoy.retry_priorities.previous_priorities" && !typed {
        tracing::debug!(name = %p.name, "retry priority not supported; ignored");
        return None;
    }
    let frequency = any
        .and_then(|a| crate::config::decode::unpack::<PreviousPrioritiesConfig>(a).ok())
        .map_or(1, |c| c.update_frequency);
    Some(frequency.max(1) as u32)
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
            previous_priorities: previous_priorities(p.retry_priority.as_ref()),
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

    /// Whether a connect failure is retriable; `sent`: an earlier attempt of the request
    /// reached an upstream connection.
    pub fn retry_connect_failure(&self, sent: bool) -> bool {
        self.on.connect_failure
            || self.on.five_xx
            || self.on.gateway_error
            || self.on.reset
            || (self.on.reset_before_request && !sent)
    }

    /// Whether a reset (no response, per-try timeout) is retriable.
    pub fn retry_reset(&self) -> bool {
        self.on.reset || self.on.five_xx || self.on.gateway_error
    }
}
