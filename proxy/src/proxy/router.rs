//! The router filter: host selection, upstream request, timeouts and Envoy's retry semantics.

use super::attempt::{build_request, send, AttemptError};
use super::body::{BoxBody, Guarded};
use super::hop_by_hop::strip_hop_by_hop;
use super::local_reply::{Flag, LocalReply};
use super::request_body::RequestBody;
use super::retries::{retry_or_stop, Retry, RetrySlot};
use super::service::ActiveGauge;
use crate::cluster::host::Host;
use crate::cluster::{Cluster, Discovery, RqGuard};
use crate::lb::{hash, LbContext};
use crate::route::action::{ForwardAction, RetryPolicy};
use http::{HeaderMap, HeaderName, HeaderValue, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Request facts the router needs besides the request itself.
#[derive(Debug, Clone, Copy)]
pub struct Downstream<'a> {
    /// Client address.
    pub peer: SocketAddr,
    /// Original destination of the connection (ORIGINAL_DST clusters).
    pub original_dst: SocketAddr,
    /// The two came from a PROXY header (see [`super::ConnCtx::proxied`]).
    pub proxied: bool,
    /// The HCM's `stream_idle_timeout` (a route's `idle_timeout` overrides it).
    pub stream_idle: Option<Duration>,
    /// Add the router's `x-envoy-*` headers (the router's `suppress_envoy_headers` unset).
    pub envoy_headers: bool,
    /// The virtual host's `include_request_attempt_count`: `x-envoy-attempt-count` (1-based)
    /// on each upstream attempt. Not affected by `envoy_headers`, as in Envoy. (The count on
    /// responses is the HCM's, from [`Tried::attempts`].)
    pub attempt_count: bool,
    /// The connection's request timer (per-try and route timeouts).
    pub timer: &'a super::timer::RequestTimer,
    /// The request's own timeout (`x-envoy-upstream-rq-timeout-ms`; `Some(None)`: none),
    /// over the route's.
    pub timeout: Option<Option<Duration>>,
    /// A gRPC request (by its content type), as the HCM found it.
    pub grpc: bool,
    /// The TLS secrets, for upstream mTLS.
    pub secrets: &'a crate::tls::Secrets,
    /// The HCM's `istio.alpn` (see [`super::hcm::HcmConfig::istio_alpn`]).
    pub istio_alpn: bool,
}

/// `x-envoy-attempt-count`.
pub const ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");

/// Why a response body that outlived the route timeout failed.
const TIMEOUT: &str = "upstream request timeout";

/// What [`forward`] tried: the host of its last attempt and how many attempts it made.
#[derive(Debug, Default, Clone)]
pub struct Tried {
    /// The host of the last attempt.
    pub host: Option<SocketAddr>,
    /// Attempts made (0 when no host could be picked).
    pub attempts: u32,
    /// That host's Istio workload metadata (see [`crate::cluster::host::Host`]).
    pub workload: Option<Arc<str>>,
    /// The connection of the last attempt, once it had one (whether or not a response came
    /// over it): its local address and TLS names (Istio's outbound principals).
    pub conn: Option<Arc<crate::cluster::conn_info::ConnInfo>>,
}

/// Forward `parts`/`body` to `cluster` per `action`; `retry` is the effective retry policy.
/// `report` tells the caller which host the last attempt used (for the access log) and how many
/// attempts were made (for `x-envoy-attempt-count` on the response).
// Out-parameters, because the caller reads them whether the forward succeeds or fails.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    cluster: Arc<Cluster>,
    action: &ForwardAction,
    retry: Option<&RetryPolicy>,
    mut parts: http::request::Parts,
    body: super::body::DownstreamBody,
    down: Downstream<'_>,
    down_active: &mut Option<ActiveGauge>,
    report: &mut Tried,
) -> Result<Response<BoxBody>, LocalReply> {
    let stats = cluster.stats.clone();
    // An allowed HTTP/1.1 upgrade (websocket): keep its headers and, on 101, splice the two
    // upgraded connections together.
    let upgrade = parts.extensions.remove::<Upgrade>().map(|u| u.0);
    let mut down_upgrade = match upgrade {
        Some(_) => parts.extensions.remove::<hyper::upgrade::OnUpgrade>(),
        None => None,
    };
    // The requests circuit breaker; connections and pending requests are the pool's.
    if !cluster.admits_request() {
        return Err(LocalReply::reset("overflow", Flag::UpstreamOverflow));
    }
    let retries = retry.map(|r| r.num_retries).unwrap_or(0);
    // Streamed to the first attempt at once, and recorded for retries (never read whole
    // first: see `request_body`).
    let mut body = RequestBody::new(body, retries > 0);
    // A route's 0 disables the stream idle timeout, the connection manager's included.
    let idle = action
        .idle_timeout
        .or(down.stream_idle)
        .filter(|d| !d.is_zero());
    // The request's one precise clock read (the first attempt's timer starts from it too).
    let started = tokio::time::Instant::now();
    let timeout = down.timeout.unwrap_or_else(|| {
        crate::route::action::effective_timeout(action, down.grpc, &parts.headers)
    });
    // A per-try timeout not below the request's is no limit of its own (Envoy's rule).
    let per_try = retry
        .and_then(|r| r.per_try_timeout)
        .filter(|p| timeout.is_none_or(|t| *p < t));
    let deadline = timeout.and_then(|t| started.checked_add(t));
    // A reference-counted clone: path and query are borrowed from it, not copied.
    let pq = parts.uri.path_and_query().cloned();
    let path: &str = pq.as_ref().map_or("/", |p| p.as_str());
    let query: Option<&str> = pq.as_ref().and_then(|p| p.query());
    // A made-up hash cookie for the response (`Set-Cookie`), when a policy made one.
    let mut set_cookie = None;
    let hash = if action.hash_policy.is_empty() {
        None
    } else {
        let inputs = hash::Inputs {
            query,
            peer: Some(down.peer),
            local: Some(down.original_dst),
        };
        hash::compute(&action.hash_policy, &parts.headers, inputs, &mut set_cookie)
    };
    let mut tried: Vec<SocketAddr> = Vec::new();
    // previous_priorities: the priorities attempted, and those a retry now avoids.
    let mut tried_priorities: Vec<u32> = Vec::new();
    let mut skip_priorities: Vec<u32> = Vec::new();
    let mut attempt = 0u32;
    // Whether an attempt reached an upstream connection (Envoy's `upstream_request_started_`,
    // which ends `reset-before-request` retries).
    let mut sent = false;
    let mut in_retry = RetrySlot {
        cluster: cluster.clone(),
        held: false,
    };
    loop {
        let exclude: &[SocketAddr] = if retry.is_some_and(|r| r.skip_previous_hosts) {
            &tried
        } else {
            &[]
        };
        let attempts = retry.map_or(0, |r| r.host_selection_attempts);
        if let Some(every) = retry.and_then(|r| r.previous_priorities) {
            // Envoy updates the exclusions every `update_frequency` attempts.
            let n = tried_priorities.len() as u32;
            if n >= every && n.is_multiple_of(every) {
                skip_priorities.clone_from(&tried_priorities);
            }
        }
        let lb = LbContext {
            hash,
            exclude,
            host_selection_attempts: attempts,
            skip_priorities: &skip_priorities,
        };
        let host = match pick_host(&cluster, &parts.headers, down, &lb) {
            Some(h) => h,
            None => {
                stats.cx_none_healthy.inc();
                in_retry.release();
                return Err(LocalReply::no_healthy_upstream());
            }
        };
        report.host = Some(host.addr);
        report.workload.clone_from(&host.istio_workload);
        report.conn = None;
        report.attempts = attempt + 1;
        // Only a policy with skip_previous_hosts reads `tried` (no allocation otherwise).
        if retry.is_some_and(|r| r.skip_previous_hosts) {
            tried.push(host.addr);
        }
        if retry.is_some_and(|r| r.previous_priorities.is_some()) {
            tried_priorities.push(host.priority);
        }
        let Some(req_body) = body.take() else {
            in_retry.release();
            return Err(LocalReply::reset(
                "connection termination",
                Flag::UpstreamRemoteReset,
            ));
        };
        if down.attempt_count {
            parts
                .headers
                .insert(ATTEMPT_COUNT, HeaderValue::from(attempt + 1));
        }
        let now = if attempt == 0 {
            started
        } else {
            tokio::time::Instant::now()
        };
        let remaining = deadline.map(|d| d.saturating_duration_since(now));
        let wait = match (per_try, remaining) {
            (Some(p), Some(r)) => Some(p.min(r)),
            (p, r) => p.or(r),
        };
        // What this attempt may take, as Envoy tells the upstream: the per-try timeout, else
        // what is left of the request's (at least 1 ms).
        if let (Some(w), true) = (wait, down.envoy_headers) {
            const EXPECTED_TIMEOUT: HeaderName =
                HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
            let ms = w.as_millis().max(1);
            parts.headers.insert(EXPECTED_TIMEOUT, millis_value(ms));
        }
        // With `max_grpc_timeout` set (and no `max_stream_duration`, Envoy's "new timeouts"),
        // a gRPC upstream is told the same in `grpc-timeout` (so that it knows of a per-try
        // timeout), whatever `suppress_envoy_headers` says.
        let old_timeouts = action.max_stream_duration.is_none();
        if let (Some(w), true) = (
            wait,
            down.grpc && action.max_grpc_timeout.is_some() && old_timeouts,
        ) {
            const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
            parts.headers.insert(GRPC_TIMEOUT, grpc_timeout_value(w));
        }
        // The last possible attempt takes the headers instead of copying them (no retry can
        // follow it, so `parts.headers` is not read again).
        let headers = if attempt >= retries {
            std::mem::take(&mut parts.headers)
        } else {
            parts.headers.clone()
        };
        let mut req = Some(build_request(
            &cluster,
            &parts,
            headers,
            path,
            &host,
            req_body,
            upgrade.as_deref(),
        ));
        // The stream idle timeout also bounds the wait for response headers.
        let idle_first = idle.is_some_and(|i| wait.is_none_or(|w| i < w));
        // `upstream_rq_active` and the host's active count last until the response ends.
        let guard = cluster.start_request(host.clone());
        let outcome = match send(
            &cluster,
            &host,
            &mut req,
            &mut report.conn,
            down,
            (if idle_first { idle } else { wait }).map(|w| super::later(now, w)),
        )
        .await
        {
            Err(AttemptError::PerTryTimeout) if idle_first => Err(AttemptError::Idle),
            o => o,
        };
        // Read only when a retry is in question: a clock read per request otherwise.
        let global_expired = || deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
        let replayable = body.replayable();
        // (Retries used up are retry_or_stop's first check.)
        let can_retry = |expired: bool| replayable && !expired;
        sent |= !matches!(outcome, Err(AttemptError::Connect(_)));
        match outcome {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                if status == 101 {
                    if let Some(down) = down_upgrade.take() {
                        cluster.record_result(&host, Some(status));
                        stats.response(status);
                        in_retry.release();
                        let up = resp.extensions_mut().remove::<hyper::upgrade::OnUpgrade>();
                        tokio::spawn(tunnel(down, up, guard));
                        let (rp, _) = resp.into_parts();
                        return Ok(Response::from_parts(rp, super::body::full("")));
                    }
                }
                // A trailers-only gRPC answer counts as its gRPC status reads in HTTP (a
                // pod answering UNAVAILABLE is failing, though its HTTP status is 200), as
                // Envoy's router reports it to the outlier detector.
                let outlier_status = if down.grpc {
                    resp.headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                        .map_or(status, super::local_reply::http_status_of_grpc)
                } else {
                    status
                };
                let outlier_status = cluster.outlier_status(outlier_status, resp.headers());
                cluster.record_result(&host, Some(outlier_status));
                stats.response(status);
                // Looked up only when a retry policy could read it.
                let retriable = retry.filter(|r| r.retry_response(status, resp.headers()));
                let mut stopped = None;
                if let Some(policy) = retriable {
                    match retry_or_stop(
                        &cluster,
                        policy,
                        attempt,
                        retries,
                        can_retry(global_expired()),
                        &mut in_retry,
                    )
                    .await
                    {
                        Retry::Again => {
                            attempt += 1;
                            continue;
                        }
                        Retry::Stop(flag) => stopped = flag,
                    }
                } else if in_retry.held {
                    stats.rq_retry_success.inc();
                }
                in_retry.release();
                let (mut rp, rb) = resp.into_parts();
                // Why a retriable answer was not retried, for the access log (as Envoy's
                // `onUpstreamHeaders` sets it).
                if let Some(flag) = stopped {
                    rp.extensions
                        .insert(super::local_reply::ResponseFlags::of(&[flag]));
                }
                strip_hop_by_hop(&mut rp.headers);
                if let Some(c) = set_cookie
                    .take()
                    .and_then(|c| HeaderValue::try_from(c).ok())
                {
                    rp.headers.append(http::header::SET_COOKIE, c);
                }
                if down.envoy_headers {
                    const SERVICE_TIME: HeaderName =
                        HeaderName::from_static("x-envoy-upstream-service-time");
                    rp.headers
                        .insert(SERVICE_TIME, millis_value(started.elapsed().as_millis()));
                }
                // Envoy's route timeout lasts until the response is complete, body included.
                use super::body::{DeadlineBody, IdleBody};
                // One box for the whole body: the layers wrap `Incoming` by value, and the
                // request guard and the downstream gauge ride along.
                let inner = Guarded::new(rb, (guard, down_active.take()));
                let timeouts = || stats.rq_timeout.clone();
                let body = match (idle, deadline) {
                    (Some(i), Some(d)) => {
                        DeadlineBody::wrap(IdleBody::new(inner, i), d, timeouts(), TIMEOUT)
                    }
                    (Some(i), None) => IdleBody::wrap(inner, i),
                    (None, Some(d)) => DeadlineBody::wrap(inner, d, timeouts(), TIMEOUT),
                    (None, None) => super::body::boxed(inner),
                };
                return Ok(Response::from_parts(rp, body));
            }
            Err(e) => {
                drop(guard);
                let global_expired = global_expired();
                // An overflow says the cluster is overloaded, not that the host failed:
                // ejecting hosts for it would make the overload worse (Envoy's
                // `onUpstreamReset` skips the outlier detector for a dropped request).
                let dropped = matches!(&e, AttemptError::Connect(r)
                    if r.flags.contains(&Flag::UpstreamOverflow));
                if !dropped {
                    cluster.record_result(&host, None);
                }
                let (reply, retriable) = match e {
                    AttemptError::Connect(r) => {
                        let retriable = r.flags.contains(&Flag::UpstreamConnectionFailure)
                            && retry.is_some_and(|p| p.retry_connect_failure(sent));
                        (r, retriable)
                    }
                    AttemptError::Reset(reset) => {
                        let refused = reset == super::attempt::Reset::RefusedStream;
                        let retriable = retry
                            .is_some_and(|p| p.retry_reset() || (refused && p.on.refused_stream));
                        (reset.reply(), retriable)
                    }
                    AttemptError::Idle => {
                        in_retry.release();
                        return Err(LocalReply::new(
                            504,
                            "stream timeout",
                            Flag::StreamIdleTimeout,
                        ));
                    }
                    AttemptError::PerTryTimeout if global_expired || per_try.is_none() => {
                        stats.rq_timeout.inc();
                        in_retry.release();
                        return Err(LocalReply::timeout());
                    }
                    AttemptError::PerTryTimeout => {
                        stats.rq_per_try_timeout.inc();
                        (
                            LocalReply::timeout(),
                            retry.is_some_and(|p| p.retry_reset()),
                        )
                    }
                };
                let mut stopped = None;
                if let Some(policy) = retry.filter(|_| retriable) {
                    let may = can_retry(global_expired);
                    match retry_or_stop(&cluster, policy, attempt, retries, may, &mut in_retry)
                        .await
                    {
                        Retry::Again => {
                            attempt += 1;
                            continue;
                        }
                        Retry::Stop(flag) => stopped = flag,
                    }
                }
                in_retry.release();
                if global_expired {
                    stats.rq_timeout.inc();
                    return Err(LocalReply::timeout());
                }
                let mut reply = reply;
                if attempt > 0 {
                    reply = reply.after_retries();
                }
                reply.flags.extend(stopped);
                return Err(reply);
            }
        }
    }
}

/// A `grpc-timeout` value as Envoy writes it: milliseconds (at least 1), or the smallest of
/// seconds, minutes and hours that fits gRPC's eight digits (clipped at 99999999 hours).
fn grpc_timeout_value(d: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let mut t = d.as_millis().max(1);
    let mut unit = 0;
    if t > MAX {
        t /= 1000;
        unit = 1;
    }
    while t > MAX {
        if unit == 3 {
            t = MAX;
        } else {
            t /= 60;
            unit += 1;
        }
    }
    let v = format!("{t}{}", ['m', 'S', 'M', 'H'][unit]);
    HeaderValue::from_str(&v).expect("digits and a letter")
}

/// A millisecond count as a header value, without an allocation in the common cases: counts
/// under 100 (most upstream service times) are static strings, and the last larger value
/// (typically the route timeout, the same for every request) is kept per thread and shared.
fn millis_value(ms: u128) -> HeaderValue {
    const PAIRS: &str = "00010203040506070809101112131415161718192021222324252627282930313233343536373839404142434445464748495051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";
    if ms < 100 {
        let i = ms as usize * 2;
        let digits = if ms < 10 {
            &PAIRS[i + 1..i + 2]
        } else {
            &PAIRS[i..i + 2]
        };
        return HeaderValue::from_static(digits);
    }
    thread_local! {
        static LAST: std::cell::RefCell<Option<(u128, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((m, v)) if *m == ms => v.clone(),
        _ => {
            let v = match u64::try_from(ms) {
                Ok(v) => HeaderValue::from(v),
                Err(_) => {
                    HeaderValue::from_str(&ms.to_string()).expect("digits are a valid header value")
                }
            };
            *last = Some((ms, v.clone()));
            v
        }
    })
}

/// The upgrade type of a request the HCM allows to upgrade (set by the HCM in extensions).
#[derive(Debug, Clone)]
pub struct Upgrade(pub String);

/// Copy bytes both ways between the upgraded downstream and upstream connections; the request
/// stays active (stats, least-request) until the tunnel closes.
async fn tunnel(
    down: hyper::upgrade::OnUpgrade,
    up: Option<hyper::upgrade::OnUpgrade>,
    guard: RqGuard,
) {
    let Some(up) = up else { return };
    let (Ok(d), Ok(u)) = (down.await, up.await) else {
        return;
    };
    let (mut d, mut u) = (
        hyper_util::rt::TokioIo::new(d),
        hyper_util::rt::TokioIo::new(u),
    );
    if let Err(e) = tokio::io::copy_bidirectional(&mut d, &mut u).await {
        tracing::debug!("upgraded connection ended: {e}");
    }
    drop(guard);
}

#[inline(always)]
pub(super) fn pick_host(
    cluster: &Cluster,
    headers: &HeaderMap,
    down: Downstream<'_>,
    lb: &LbContext<'_>,
) -> Option<Arc<Host>> {
    if let Discovery::OriginalDst { header, .. } = &cluster.discovery {
        // The header overrides; without a usable one, the connection's original destination.
        let dst = header
            .as_ref()
            .and_then(|h| headers.get(h)?.to_str().ok()?.parse::<SocketAddr>().ok())
            .unwrap_or(down.original_dst);
        let addr = cluster.original_dst_target(dst)?;
        return Some(Arc::new(Host::new(addr, String::new(), 1, 0)));
    }
    cluster.choose(lb)
}

#[cfg(test)]
mod tests {
    use super::{grpc_timeout_value, millis_value};
    use std::time::Duration;

    #[test]
    fn grpc_timeouts_take_the_smallest_unit_that_fits() {
        let v = |ms: u64| grpc_timeout_value(Duration::from_millis(ms));
        assert_eq!(v(0), "1m");
        assert_eq!(v(2000), "2000m");
        assert_eq!(v(99_999_999), "99999999m");
        assert_eq!(v(100_000_000), "100000S");
        assert_eq!(v(u64::MAX), "99999999H");
        let secs = |s: u64| grpc_timeout_value(Duration::from_secs(s));
        assert_eq!(secs(200_000_000), "3333333M");
        assert_eq!(secs(8_640_000_000), "2400000H");
        assert_eq!(secs(u64::MAX / 1000), "99999999H");
    }

    #[test]
    fn millis_values_format_like_integers() {
        for ms in [
            0u128,
            7,
            9,
            10,
            42,
            99,
            100,
            15000,
            15000,
            16000,
            15000,
            u128::MAX,
        ] {
            assert_eq!(millis_value(ms).to_str().unwrap(), ms.to_string());
        }
    }
}
