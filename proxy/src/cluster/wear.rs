//! How worn an upstream connection is (requests carried, age) against the cluster's
//! `max_requests_per_connection` and `max_connection_duration`, which the pools check when a
//! connection is handed out or given back.

use super::stats::ClusterStats;
use std::time::Duration;

/// Requests a connection has carried and when it was opened (coarse clock).
#[derive(Debug, Clone, Copy)]
pub struct Wear {
    /// Requests carried.
    pub uses: u32,
    born: Duration,
}

impl Wear {
    /// A connection opened now.
    pub fn new() -> Wear {
        Wear {
            uses: 0,
            born: crate::clock::coarse_now(),
        }
    }

    /// When `limits` retire it for age (coarse clock), if they do.
    pub fn retire_at(&self, limits: &Limits) -> Option<Duration> {
        limits.max_duration.map(|d| self.born + d)
    }

    /// The same connection after one more request.
    pub fn one_more(self) -> Wear {
        Wear {
            uses: self.uses + 1,
            ..self
        }
    }
}

impl Default for Wear {
    fn default() -> Self {
        Wear::new()
    }
}

/// A cluster's limits on a connection's life; `None` is no limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// `max_requests_per_connection`.
    pub max_requests: Option<u32>,
    /// `common_http_protocol_options.max_connection_duration`.
    pub max_duration: Option<Duration>,
}

impl Limits {
    /// Whether a connection worn this much may carry another request. When it may not, the
    /// reason is counted (`upstream_cx_max_requests`, `upstream_cx_max_duration_reached`).
    #[inline]
    pub fn allow(&self, w: &Wear, stats: &ClusterStats) -> bool {
        if self.max_requests.is_some_and(|max| w.uses >= max) {
            stats.cx_max_requests.inc();
            return false;
        }
        if let Some(max) = self.max_duration {
            if crate::clock::coarse_now().saturating_sub(w.born) >= max {
                stats.cx_max_duration_reached.inc();
                return false;
            }
        }
        true
    }
}
