//! How worn an upstream connection is (requests carried, age) against the cluster's
//! `max_requests_per_connection` and `max_connection_duration`, which the pools check when a
//! connection is handed out or given back.

use super::stats::ClusterStats;
use std::time::Duration;

/// Requests a connection has carried and when it was opened. Eight bytes: it rides along in
/// every request's future and response body, which are moved several times per request.
#[derive(Debug, Clone, Copy)]
pub struct Wear {
    /// Requests carried.
    pub uses: u32,
    /// Coarse-clock milliseconds at opening, wrapping (ages up to 49 days are exact).
    born_ms: u32,
}

/// The coarse clock in wrapping milliseconds.
pub(super) fn now_ms(now: Duration) -> u32 {
    now.as_millis() as u32
}

/// The time from `ms` (wrapping milliseconds, from [`now_ms`]) to `now`, exact up to 49 days.
pub(super) fn since(ms: u32, now: Duration) -> Duration {
    Duration::from_millis(now_ms(now).wrapping_sub(ms).into())
}

impl Wear {
    /// A connection opened now.
    pub fn new() -> Wear {
        Wear {
            uses: 0,
            born_ms: now_ms(crate::clock::coarse_now()),
        }
    }

    /// Its age at `now` (coarse clock).
    fn age(&self, now: Duration) -> Duration {
        since(self.born_ms, now)
    }

    /// When `limits` retire it for age, on the coarse clock as `now` is, if they do.
    pub fn retire_at(&self, limits: &Limits, now: Duration) -> Option<Duration> {
        limits
            .max_duration
            .map(|d| now + d.saturating_sub(self.age(now)))
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
            if w.age(crate::clock::coarse_now()) >= max {
                stats.cx_max_duration_reached.inc();
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_survives_the_millisecond_counter_wrapping() {
        let w = Wear {
            uses: 3,
            born_ms: u32::MAX - 10,
        };
        let now = Duration::from_millis(u64::from(u32::MAX) + 20);
        assert_eq!(w.age(now), Duration::from_millis(30));
        let limits = Limits {
            max_requests: None,
            max_duration: Some(Duration::from_millis(100)),
        };
        assert_eq!(
            w.retire_at(&limits, now),
            Some(now + Duration::from_millis(70))
        );
        let old = Limits {
            max_duration: Some(Duration::from_millis(20)),
            ..limits
        };
        assert_eq!(w.retire_at(&old, now), Some(now), "already due");
        assert_eq!(w.one_more().uses, 4);
    }
}
