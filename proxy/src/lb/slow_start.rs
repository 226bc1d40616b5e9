//! Slow start (`slow_start_config` of ROUND_ROBIN and LEAST_REQUEST, Istio's DestinationRule
//! `warmupDurationSecs`): a host added to a running cluster takes a growing share of the
//! traffic over its window instead of its full share at once, so that a cold JVM or cache is
//! not flooded. Envoy's formula: the host's weight times
//! `max((elapsed / window) ^ (1 / aggression), min_weight_percent)`.

use super::{LbPolicy, Level};
use crate::cluster::host::Host;
use envoy_types::pb::envoy::config::cluster::v3 as cpb;
use std::time::{Duration, Instant};

/// A cluster's slow start settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStart {
    window: Duration,
    aggression: f64,
    min_weight: f64,
}

impl SlowStart {
    /// From the cluster's ROUND_ROBIN or LEAST_REQUEST config; `None` without a window.
    pub fn from_cluster(c: &cpb::Cluster) -> Option<Self> {
        use cpb::cluster::LbConfig;
        let cfg = match &c.lb_config {
            Some(LbConfig::RoundRobinLbConfig(r)) if c.lb_policy == 0 => {
                r.slow_start_config.as_ref()
            }
            Some(LbConfig::LeastRequestLbConfig(l)) if c.lb_policy == 1 => {
                l.slow_start_config.as_ref()
            }
            _ => None,
        }?;
        let window =
            crate::config::opt_duration(&cfg.slow_start_window).filter(|d| !d.is_zero())?;
        // Envoy treats a non-positive (or unset) aggression as 1.
        let aggression = cfg
            .aggression
            .as_ref()
            .map(|a| a.default_value)
            .filter(|a| *a > 0.0 && a.is_finite())
            .unwrap_or(1.0);
        let min_weight = cfg.min_weight_percent.as_ref().map_or(10.0, |p| p.value) / 100.0;
        Some(SlowStart {
            window,
            aggression,
            min_weight,
        })
    }

    /// When the last of `hosts`' windows ends; `None` when none has one (the hosts a cluster
    /// started with).
    pub fn last_window_end(&self, hosts: &[std::sync::Arc<Host>]) -> Option<Instant> {
        hosts
            .iter()
            .filter_map(|h| h.added)
            .max()
            .map(|a| a + self.window)
    }

    /// What `host`'s weight is multiplied by at `now`: 1 once its window has passed (or for a
    /// host the cluster started with).
    pub fn factor(&self, host: &Host, now: Instant) -> f64 {
        let Some(added) = host.added else { return 1.0 };
        let elapsed = now.saturating_duration_since(added);
        if elapsed >= self.window {
            return 1.0;
        }
        let t = elapsed.as_millis().max(1) as f64 / self.window.as_millis() as f64;
        let t = if self.aggression == 1.0 {
            t
        } else {
            t.powf(1.0 / self.aggression)
        };
        t.max(self.min_weight)
    }
}

impl Level {
    /// With slow start and a usable host still in its window: the pick by weights scaled by
    /// the slow-start factor (for LEAST_REQUEST also divided by the host's active requests
    /// plus one), as Envoy's EDF scheduler switches to weights then; `None` otherwise.
    pub(super) fn slow_start_pick(
        &self,
        policy: &LbPolicy,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<Option<usize>> {
        let (ss, until) = self.slow_start?;
        if self.slow_over.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let now = Instant::now();
        if now >= until {
            self.slow_over
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return None;
        }
        let factors: Vec<(usize, f64)> = (0..self.hosts.len())
            .filter(|i| usable(*i))
            .map(|i| (i, ss.factor(&self.hosts[i], now)))
            .collect();
        if factors.iter().all(|(_, f)| *f >= 1.0) {
            return None;
        }
        let least = matches!(policy, LbPolicy::LeastRequest { .. });
        let weights: Vec<(usize, f64)> = factors
            .into_iter()
            .map(|(i, f)| {
                let h = &self.hosts[i];
                let w = h.weight as f64 * f;
                (
                    i,
                    if least {
                        w / (h.active() + 1) as f64
                    } else {
                        w
                    },
                )
            })
            .collect();
        Some(super::roll(&weights))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_added(ago: Duration, now: Instant) -> Host {
        let mut h = Host::new("127.0.0.1:1".parse().unwrap(), String::new(), 1, 0);
        h.added = Some(now - ago);
        h
    }

    #[test]
    fn the_factor_grows_over_the_window() {
        let now = Instant::now();
        let ss = SlowStart {
            window: Duration::from_secs(10),
            aggression: 1.0,
            min_weight: 0.1,
        };
        let f = |secs: f64| ss.factor(&host_added(Duration::from_secs_f64(secs), now), now);
        assert_eq!(f(0.0), 0.1, "the floor");
        assert!((f(5.0) - 0.5).abs() < 1e-9);
        assert_eq!(f(10.0), 1.0);
        let original = Host::new("127.0.0.1:2".parse().unwrap(), String::new(), 1, 0);
        assert_eq!(
            ss.factor(&original, now),
            1.0,
            "hosts the cluster started with"
        );
        // Aggression 2: the square root, faster at first.
        let fast = SlowStart {
            aggression: 2.0,
            ..ss
        };
        let h = host_added(Duration::from_millis(2500), now);
        assert!((fast.factor(&h, now) - 0.5).abs() < 1e-9);
    }
}
