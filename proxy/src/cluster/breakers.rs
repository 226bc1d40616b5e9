//! Circuit breakers: a cluster's thresholds (`circuit_breakers.thresholds`) and Envoy's
//! `circuit_breakers.<priority>.*` gauges. The counts they judge live where the work is (the
//! connector's connections, the pending queue and request gauges, the retries here).

use envoy_types::pb::envoy::config::cluster::v3 as cpb;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Circuit breaker thresholds of the DEFAULT priority (Envoy defaults 1024 / 1024 / 1024 / 3).
#[derive(Debug)]
pub struct Breakers {
    /// `max_connections`.
    pub max_connections: u64,
    /// `max_pending_requests`.
    pub max_pending: u64,
    /// `max_requests`.
    pub max_requests: u64,
    /// `max_retries` (concurrent retries).
    pub max_retries: u64,
    /// `retry_budget` (Istio's DestinationRule `retryBudget`): concurrent retries are bounded
    /// by `budget_percent` of the active and pending requests, never below
    /// `min_retry_concurrency`, in place of `max_retries`.
    pub retry_budget: Option<RetryBudget>,
    /// Retries in flight.
    pub active_retries: AtomicU64,
    /// `circuit_breakers.<priority>.*` gauges (see [`Breakers::refresh`]).
    gauges: [BreakerGauges; 2],
}

/// A `retry_budget` (Envoy's defaults: 20% and 3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// `budget_percent`.
    pub percent: f64,
    /// `min_retry_concurrency`.
    pub min_concurrency: u64,
}

/// One priority's breaker gauges: the four thresholds, whether each is reached (`cx_open`,
/// `rq_pending_open`, `rq_open`, `rq_retry_open`), and with `track_remaining` the room left
/// under each (`remaining_cx`, `remaining_pending`, `remaining_rq`, `remaining_retries`).
#[derive(Debug)]
struct BreakerGauges {
    limits: [u64; 4],
    open: [Arc<crate::stats::Stat>; 4],
    remaining: Option<[Arc<crate::stats::Stat>; 4]>,
}

impl Breakers {
    /// How many retries may run at once with `active` requests and `pending` ones waiting for
    /// a connection: `max_retries`, or what the retry budget allows now.
    pub fn max_retries_now(&self, active: u64, pending: u64) -> u64 {
        match self.retry_budget {
            None => self.max_retries,
            Some(b) => {
                (((active + pending) as f64 * b.percent / 100.0) as u64).max(b.min_concurrency)
            }
        }
    }

    /// Set the gauges from `used`: connections, pending requests, requests and retries of
    /// the DEFAULT priority now. Envoy moves them with every connection and request; here
    /// they are set when the stats are read (the admin calls this), so that the request path
    /// pays nothing for them. HIGH priority carries no traffic in mosn: its breakers stay
    /// closed with all their room.
    pub fn refresh(&self, used: [u64; 4]) {
        for (g, used) in self.gauges.iter().zip([used, [0; 4]]) {
            let mut limits = g.limits;
            if self.retry_budget.is_some() {
                limits[3] = self.max_retries_now(used[2], used[1]);
            }
            for i in 0..4 {
                g.open[i].set(u64::from(used[i] >= limits[i]));
                if let Some(r) = &g.remaining {
                    r[i].set(limits[i].saturating_sub(used[i]));
                }
            }
        }
    }
}

/// The DEFAULT priority's thresholds (HIGH's only show in the gauges: every route is
/// DEFAULT here), with Envoy's defaults.
pub(super) fn breakers(
    cb: Option<&cpb::CircuitBreakers>,
    store: &Arc<crate::stats::Stats>,
    cluster: &str,
) -> Breakers {
    let limits = |priority: i32| {
        let t = cb.and_then(|c| c.thresholds.iter().find(|t| t.priority == priority));
        let v = |f: fn(&cpb::circuit_breakers::Thresholds) -> Option<u32>, d: u64| {
            t.and_then(f).map(u64::from).unwrap_or(d)
        };
        let limits = [
            v(|t| t.max_connections.as_ref().map(|x| x.value), 1024),
            v(|t| t.max_pending_requests.as_ref().map(|x| x.value), 1024),
            v(|t| t.max_requests.as_ref().map(|x| x.value), 1024),
            v(|t| t.max_retries.as_ref().map(|x| x.value), 3),
        ];
        (limits, t.is_some_and(|t| t.track_remaining))
    };
    let gauges = |priority: i32, name: &str| {
        let (limits, track) = limits(priority);
        let g = |s: &str| {
            store.cluster(
                cluster,
                &format!("circuit_breakers.{name}.{s}"),
                crate::stats::Kind::Gauge,
            )
        };
        BreakerGauges {
            limits,
            open: ["cx_open", "rq_pending_open", "rq_open", "rq_retry_open"].map(g),
            remaining: track.then(|| {
                [
                    "remaining_cx",
                    "remaining_pending",
                    "remaining_rq",
                    "remaining_retries",
                ]
                .map(g)
            }),
        }
    };
    let [max_connections, max_pending, max_requests, max_retries] = limits(0).0;
    let retry_budget = cb
        .and_then(|c| c.thresholds.iter().find(|t| t.priority == 0))
        .and_then(|t| t.retry_budget.as_ref())
        .map(|b| RetryBudget {
            percent: b.budget_percent.as_ref().map_or(20.0, |p| p.value),
            min_concurrency: b
                .min_retry_concurrency
                .as_ref()
                .map_or(3, |m| u64::from(m.value)),
        });
    Breakers {
        max_connections,
        max_pending,
        max_requests,
        max_retries,
        retry_budget,
        active_retries: AtomicU64::new(0),
        gauges: [gauges(0, "default"), gauges(1, "high")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(t: serde_json::Value) -> Breakers {
        let cb: cpb::CircuitBreakers =
            crate::config::test_proto(serde_json::json!({"thresholds": [t]}));
        breakers(Some(&cb), &crate::stats::Stats::new(), "c")
    }

    #[test]
    fn a_retry_budget_replaces_max_retries() {
        let plain = with(serde_json::json!({"max_retries": 5}));
        assert_eq!(plain.max_retries_now(1000, 0), 5);
        // Envoy's defaults: 20% of active and pending, at least 3.
        let budget = with(serde_json::json!({"max_retries": 5, "retry_budget": {}}));
        assert_eq!(budget.max_retries_now(0, 0), 3);
        assert_eq!(budget.max_retries_now(90, 10), 20);
        let set = with(serde_json::json!({"retry_budget": {
            "budget_percent": {"value": 50.0}, "min_retry_concurrency": 1}}));
        assert_eq!(set.max_retries_now(1, 0), 1);
        assert_eq!(set.max_retries_now(7, 0), 3);
    }
}
