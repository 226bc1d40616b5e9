//! Outlier detection: consecutive 5xx and consecutive gateway failures eject a host for
//! `base_ejection_time × times ejected`, capped by `max_ejection_percent` (at least one host).

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
        }
    }
}

/// Per-host outlier state.
#[derive(Debug, Default)]
pub struct HostOutlier {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    times_ejected: AtomicU32,
    /// Ejection end as [`ms`], 0 when not ejected. An atomic because every host pick reads it.
    ejected_until: AtomicU64,
}

/// Why a host was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejection {
    /// Consecutive 5xx.
    Consecutive5xx,
    /// Consecutive gateway failures.
    ConsecutiveGateway,
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
        let _ = self
            .ejected_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
        false
    }

    /// Record a successful (non-5xx) response.
    pub fn success(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
    }

    /// Record a failure: `status` is the upstream status, or `None` for a local-origin
    /// failure (connect failure, reset, timeout), which Envoy counts as both kinds.
    /// Returns the ejection reason if a threshold was crossed (the caller enforces limits).
    pub fn failure(&self, status: Option<u16>, cfg: &OutlierConfig) -> Option<Ejection> {
        let gateway = status.is_none_or(|s| matches!(s, 502..=504));
        let five = self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        let gw = if gateway {
            self.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.consecutive_gateway.store(0, Ordering::Relaxed);
            0
        };
        let roll = |pct: u32| pct >= 100 || (pct > 0 && fastrand::u32(0..100) < pct);
        if five >= cfg.consecutive_5xx && roll(cfg.enforcing_5xx) {
            return Some(Ejection::Consecutive5xx);
        }
        if gateway && gw >= cfg.consecutive_gateway && roll(cfg.enforcing_gateway) {
            return Some(Ejection::ConsecutiveGateway);
        }
        None
    }

    /// Eject now for `base × times ejected` (capped by max).
    pub fn eject(&self, cfg: &OutlierConfig, now: Instant) {
        let times = self.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        // Durations come from config: saturate instead of overflowing.
        let dur = cfg
            .base_ejection
            .saturating_mul(times)
            .min(cfg.max_ejection.max(cfg.base_ejection));
        let until = now
            .checked_add(dur)
            .unwrap_or(now + Duration::from_secs(86400 * 365));
        self.ejected_until.store(ms(until), Ordering::Relaxed);
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
    }
}
