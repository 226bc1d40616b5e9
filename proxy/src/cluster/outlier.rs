//! Outlier detection: consecutive 5xx and consecutive gateway failures eject a host for
//! `base_ejection_time × its back-off`, capped by `max_ejection_time`, and by
//! `max_ejection_percent` (at least one host).
//!
//! Envoy's detector runs on an `interval` timer: it lifts an ejection at the first tick past
//! its duration, and lowers a healthy host's back-off by one each interval, so a host that
//! was ejected long ago starts again from `base_ejection_time`. Here the same happens
//! lazily, without a timer: an ejection ends at the tick Envoy's would (ticks counted from a
//! fixed origin), and the back-off is lowered by the intervals a host spent healthy when it
//! is next ejected.

use crate::config::opt_duration;
use envoy_types::pb::envoy::config::cluster::v3 as cpb;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Milliseconds since a process-wide base instant (+1 so that 0 can mean "not ejected").
fn ms(t: Instant) -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    t.saturating_duration_since(base).as_millis() as u64 + 1
}

/// Cluster-level outlier detection settings (Envoy defaults applied).
#[derive(Debug, Clone)]
pub struct OutlierConfig {
    /// `consecutive_5xx` (default 5).
    pub consecutive_5xx: u32,
    /// `enforcing_consecutive_5xx` percent (default 100).
    pub enforcing_5xx: u32,
    /// `consecutive_gateway_failure` (default 5).
    pub consecutive_gateway: u32,
    /// `enforcing_consecutive_gateway_failure` percent (default 0).
    pub enforcing_gateway: u32,
    /// `base_ejection_time` (default 30 s).
    pub base_ejection: Duration,
    /// `max_ejection_time` (default 300 s).
    pub max_ejection: Duration,
    /// `max_ejection_percent` (default 10).
    pub max_ejection_percent: u32,
    /// `interval` (default 10 s): the detector's tick.
    pub interval: Duration,
    /// `split_external_local_origin_errors`: failures of the proxy's own making (connect
    /// failures, resets, timeouts) count apart from the upstream's 5xx.
    pub split_local: bool,
    /// `consecutive_local_origin_failure` (default 5), when split.
    pub consecutive_local: u32,
    /// `enforcing_consecutive_local_origin_failure` percent (default 100).
    pub enforcing_local: u32,
}

impl OutlierConfig {
    /// Convert the proto form.
    pub fn from_proto(o: &cpb::OutlierDetection) -> Self {
        let u = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>, d: u32| {
            v.as_ref().map(|x| x.value).unwrap_or(d)
        };
        OutlierConfig {
            consecutive_5xx: u(&o.consecutive_5xx, 5),
            enforcing_5xx: u(&o.enforcing_consecutive_5xx, 100),
            consecutive_gateway: u(&o.consecutive_gateway_failure, 5),
            enforcing_gateway: u(&o.enforcing_consecutive_gateway_failure, 0),
            base_ejection: opt_duration(&o.base_ejection_time).unwrap_or(Duration::from_secs(30)),
            max_ejection: opt_duration(&o.max_ejection_time).unwrap_or(Duration::from_secs(300)),
            max_ejection_percent: u(&o.max_ejection_percent, 10),
            interval: opt_duration(&o.interval)
                .filter(|d| !d.is_zero())
                .unwrap_or(Duration::from_secs(10)),
            split_local: o.split_external_local_origin_errors,
            consecutive_local: u(&o.consecutive_local_origin_failure, 5),
            enforcing_local: u(&o.enforcing_consecutive_local_origin_failure, 100),
        }
    }
}

/// Per-host outlier state.
#[derive(Debug, Default)]
pub struct HostOutlier {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// Consecutive local-origin failures (only counted when split).
    consecutive_local: AtomicU32,
    /// Envoy's `ejectTimeBackoff`: the next ejection lasts `base × back-off`.
    backoff: AtomicU32,
    /// Ejection end as [`ms`], 0 when not ejected. An atomic because every host pick reads it.
    ejected_until: AtomicU64,
    /// When the last ejection ended, as [`ms`] (0: never ejected).
    unejected_at: AtomicU64,
}

/// Why a host was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejection {
    /// Consecutive 5xx.
    Consecutive5xx,
    /// Consecutive gateway failures.
    ConsecutiveGateway,
    /// Consecutive local-origin failures (`split_external_local_origin_errors`).
    ConsecutiveLocalOrigin,
}

impl HostOutlier {
    /// Whether the host has an ejection not yet lifted (it may have expired), without a
    /// clock read: `false` means [`Self::is_ejected`] is `false` too.
    pub fn was_ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) != 0
    }

    /// Whether the host is currently ejected. An expired ejection is lifted here.
    pub fn is_ejected(&self, now: Instant) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if ms(now) < until {
            return true;
        }
        if self
            .ejected_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.unejected_at.store(until, Ordering::Relaxed);
        }
        false
    }

    /// Record a successful (non-5xx) response. A response also means the connection
    /// worked, which ends a run of local-origin failures.
    pub fn success(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        self.consecutive_local.store(0, Ordering::Relaxed);
    }

    /// Record a failure: `status` is the upstream status, or `None` for a local-origin
    /// failure (connect failure, reset, timeout), which Envoy counts as both kinds.
    ///
    /// A run that reaches its threshold is detected once: its counter starts again whether
    /// or not the host is ejected, as in Envoy (so a refused ejection is not tried again on
    /// every further failure). Returns the reason when the ejection is enforced (the
    /// `enforcing_*` percentage); the caller applies `max_ejection_percent`.
    pub fn failure(&self, status: Option<u16>, cfg: &OutlierConfig) -> Option<Ejection> {
        let more = |run: &AtomicU32| run.fetch_add(1, Ordering::Relaxed) + 1;
        // A run of `n` that reached `threshold` starts again; the ejection is enforced with
        // the `enforcing` percentage.
        let reached = |run: &AtomicU32, n: u32, threshold: u32, enforcing: u32| {
            n >= threshold && {
                run.store(0, Ordering::Relaxed);
                enforcing >= 100 || (enforcing > 0 && fastrand::u32(0..100) < enforcing)
            }
        };
        if cfg.split_local {
            // Envoy's `putResultWithLocalExternalSplit`: the proxy's own failures have a
            // counter of their own; an answer (even a 5xx) shows the connection worked.
            let local = &self.consecutive_local;
            if status.is_none() {
                let n = more(local);
                return reached(local, n, cfg.consecutive_local, cfg.enforcing_local)
                    .then_some(Ejection::ConsecutiveLocalOrigin);
            }
            local.store(0, Ordering::Relaxed);
        }
        let gateway = status.is_none_or(|s| matches!(s, 502..=504));
        let five = more(&self.consecutive_5xx);
        let gw = if gateway {
            more(&self.consecutive_gateway)
        } else {
            self.consecutive_gateway.store(0, Ordering::Relaxed);
            0
        };
        if reached(
            &self.consecutive_5xx,
            five,
            cfg.consecutive_5xx,
            cfg.enforcing_5xx,
        ) {
            return Some(Ejection::Consecutive5xx);
        }
        let (run, threshold) = (&self.consecutive_gateway, cfg.consecutive_gateway);
        if gateway && reached(run, gw, threshold, cfg.enforcing_gateway) {
            return Some(Ejection::ConsecutiveGateway);
        }
        None
    }

    /// Eject now for `base × back-off` (capped by max), until the detector's tick past that.
    /// The back-off first loses one for each interval the host was healthy since its last
    /// ejection, then gains one while `base × back-off` is below `max + base` (Envoy's
    /// `ejectHost` and `checkHostForUneject`). Returns the ejection's length.
    pub fn eject(&self, cfg: &OutlierConfig, now: Instant) -> Duration {
        let now_ms = ms(now);
        let interval_ms = (cfg.interval.as_millis() as u64).max(1);
        let (base_ms, max_ms) = (
            cfg.base_ejection.as_millis() as u64,
            cfg.max_ejection.max(cfg.base_ejection).as_millis() as u64,
        );
        let mut backoff = self.backoff.load(Ordering::Relaxed) as u64;
        let unejected = self.unejected_at.load(Ordering::Relaxed);
        if unejected != 0 {
            backoff = backoff.saturating_sub(now_ms.saturating_sub(unejected) / interval_ms);
        }
        if backoff.saturating_mul(base_ms) < max_ms.saturating_add(base_ms) {
            backoff += 1;
        }
        self.backoff.store(backoff as u32, Ordering::Relaxed);
        let length = base_ms.saturating_mul(backoff).min(max_ms);
        // Lifted at the first tick at least `length` after now.
        let end = now_ms
            .saturating_add(length)
            .div_ceil(interval_ms)
            .saturating_mul(interval_ms);
        self.ejected_until.store(end.max(1), Ordering::Relaxed);
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        self.consecutive_local.store(0, Ordering::Relaxed);
        Duration::from_millis(end - now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx: 2,
            enforcing_5xx: 100,
            consecutive_gateway: 5,
            enforcing_gateway: 0,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 100,
            interval: Duration::from_secs(10),
            split_local: false,
            consecutive_local: 3,
            enforcing_local: 100,
        }
    }

    /// Eject at `t` and return the length rounded down to whole base ejections.
    fn eject_at(h: &HostOutlier, t: Instant) -> u64 {
        h.eject(&cfg(), t).as_secs() / 30
    }

    /// A time the millisecond clock's origin is already behind.
    fn start() -> Instant {
        ms(Instant::now());
        Instant::now()
    }

    #[test]
    fn the_back_off_grows_to_the_max_and_decays_while_healthy() {
        let h = HostOutlier::default();
        let mut t = start();
        // Back to back: 1, 2, ... base ejections, up to the max (300 s = 10 base).
        let mut seen = Vec::new();
        for _ in 0..12 {
            let len = h.eject(&cfg(), t);
            seen.push(len.as_secs() / 30);
            assert!(h.is_ejected(t + len - Duration::from_millis(1)));
            t += len;
            assert!(!h.is_ejected(t), "lifted at the tick past its length");
        }
        assert_eq!(seen, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10]);
        // Healthy for 8 intervals: the back-off (11) loses 8, then gains one: 4 base.
        let t2 = t + Duration::from_secs(80);
        assert_eq!(eject_at(&h, t2), 4);
        // Healthy for an hour: back to the base.
        let t3 = t2 + Duration::from_secs(3600);
        assert!(!h.is_ejected(t3));
        assert_eq!(eject_at(&h, t3), 1);
    }

    #[test]
    fn an_ejection_ends_at_the_detectors_tick() {
        let h = HostOutlier::default();
        let t = start();
        let len = h.eject(&cfg(), t);
        assert!(
            len >= Duration::from_secs(30) && len < Duration::from_secs(40),
            "{len:?}"
        );
        assert!(h.is_ejected(t + Duration::from_secs(29)));
        assert!(!h.is_ejected(t + len));
    }

    #[test]
    fn a_detected_run_starts_again_even_when_not_enforced() {
        let h = HostOutlier::default();
        let mut c = cfg();
        c.enforcing_5xx = 0;
        assert_eq!(h.failure(Some(500), &c), None);
        assert_eq!(h.failure(Some(500), &c), None, "detected, not enforced");
        assert_eq!(
            h.consecutive_5xx.load(Ordering::Relaxed),
            0,
            "counter reset"
        );
        c.enforcing_5xx = 100;
        assert_eq!(h.failure(Some(500), &c), None, "a new run: one failure");
        assert_eq!(h.failure(Some(500), &c), Some(Ejection::Consecutive5xx));
    }

    #[test]
    fn split_local_origin_failures_count_apart() {
        let h = HostOutlier::default();
        let mut c = cfg();
        // Not split: connect failures are 5xx (two eject).
        assert_eq!(h.failure(None, &c), None);
        assert_eq!(h.failure(None, &c), Some(Ejection::Consecutive5xx));
        c.split_local = true;
        let h = HostOutlier::default();
        // Split: two local failures are not two 5xx, and an answer ends the local run.
        assert_eq!(h.failure(None, &c), None);
        assert_eq!(h.failure(None, &c), None);
        assert_eq!(
            h.failure(Some(503), &c),
            None,
            "one 5xx, and the connection worked"
        );
        assert_eq!(h.failure(None, &c), None);
        assert_eq!(h.failure(None, &c), None);
        assert_eq!(h.failure(None, &c), Some(Ejection::ConsecutiveLocalOrigin));
        // The upstream's own 5xx count on their own: the 503 before and this 500 are a run
        // of two, which the local failures between them do not break.
        assert_eq!(h.failure(Some(500), &c), Some(Ejection::Consecutive5xx));
    }
}
