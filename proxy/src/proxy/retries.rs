//! Between the router's attempts: whether a retriable outcome is retried, the back-off, and
//! the `max_retries` breaker slot a retrying request holds.

use super::local_reply::Flag;
use crate::cluster::Cluster;
use crate::route::action::RetryPolicy;
use std::sync::Arc;
use std::time::Duration;

/// Take a retry slot and back off (Envoy: random in [0, base × 2^attempt], capped).
async fn next_retry(
    cluster: &Cluster,
    policy: &RetryPolicy,
    attempt: u32,
    in_retry: &mut RetrySlot,
) -> bool {
    if !in_retry.held {
        if !cluster.begin_retry() {
            return false;
        }
        in_retry.held = true;
    }
    cluster.stats.rq_retry.inc();
    let ceiling = policy
        .backoff_base
        .saturating_mul(1u32 << attempt.min(16))
        .min(policy.backoff_max);
    let ms = ceiling.as_millis() as u64;
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=ms))).await;
    }
    true
}

/// What becomes of a retriable outcome.
pub(super) enum Retry {
    /// Try again (the back-off has passed).
    Again,
    /// No more tries, and why, as Envoy's `RetryStatus` flags it: URX when the retries are
    /// used up, UO when the `max_retries` breaker refused; no flag when the request cannot be
    /// sent again (its body past the buffer, or the route's time up).
    Stop(Option<Flag>),
}

/// Decide a retriable outcome: retries used up count in `upstream_rq_retry_limit_exceeded`
/// (even with `num_retries: 0`); a retry backs off first.
pub(super) async fn retry_or_stop(
    cluster: &Cluster,
    policy: &RetryPolicy,
    attempt: u32,
    retries: u32,
    may_retry: bool,
    in_retry: &mut RetrySlot,
) -> Retry {
    if attempt >= retries {
        cluster.stats.rq_retry_limit_exceeded.inc();
        return Retry::Stop(Some(Flag::UpstreamRetryLimitExceeded));
    }
    if !may_retry {
        return Retry::Stop(None);
    }
    if next_retry(cluster, policy, attempt, in_retry).await {
        Retry::Again
    } else {
        Retry::Stop(Some(Flag::UpstreamOverflow))
    }
}

/// A `max_retries` slot of a request; released when the request stops retrying or is
/// dropped mid-way (client gone), so abandoned requests cannot leak breaker capacity.
pub(super) struct RetrySlot {
    pub(super) cluster: Arc<Cluster>,
    pub(super) held: bool,
}

impl RetrySlot {
    pub(super) fn release(&mut self) {
        if std::mem::take(&mut self.held) {
            self.cluster.end_retry();
        }
    }
}

impl Drop for RetrySlot {
    fn drop(&mut self) {
        self.release();
    }
}
