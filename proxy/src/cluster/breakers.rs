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
    /// Retries in flight.
    pub active_retries: AtomicU64,
    /// `circuit_breakers.<priority>.*` gauges (see [`Breakers::refresh`]).
    gauges: [BreakerGauges; 2],
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
    /// Set the gauges from `used`: connections, pending requests, requests and retries of
    /// the DEFAULT priority now. Envoy moves them with every connection and request; here
    /// they are set when the stats are read (the admin calls this), so that the request path
    /// pays nothing for them. HIGH priority carries no traffic in mosn: its breakers stay
    /// closed with all their room.
    pub fn refresh(&self, used: [u64; 4]) {
        for (g, used) in self.gauges.iter().zip([used, [0; 4]]) {
            for i in 0..4 {
                g.open[i].set(u64::from(used[i] >= g.limits[i]));
                if let Some(r) = &g.remaining {
                    r[i].set(g.limits[i].saturating_sub(used[i]));
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
    Breakers {
        max_connections,
        max_pending,
        max_requests,
        max_retries,
        active_retries: AtomicU64::new(0),
        gauges: [gauges(0, "default"), gauges(1, "high")],
    }
}
