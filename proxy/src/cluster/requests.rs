//! A request sent to a cluster, counted as Envoy counts it: the requests circuit breaker
//! (`max_requests`) admits it or not, and while it is out it is in `upstream_rq_active` and
//! the host's active count (least-request balancing reads that). The router, request
//! mirroring and the Zipkin reporter all send requests, so they share this.

use super::host::{ActiveRequest, Host};
use super::Cluster;
use crate::stats::Stat;
use std::sync::Arc;

/// Keeps a request in `upstream_rq_active` and in its host's active count until dropped.
#[derive(Debug)]
pub struct RqGuard {
    active: Arc<Stat>,
    _host: ActiveRequest,
}

impl Drop for RqGuard {
    fn drop(&mut self) {
        self.active.dec();
    }
}

impl Cluster {
    /// Whether the requests circuit breaker lets one more request out. A refusal is counted
    /// in `upstream_rq_pending_overflow`, as Envoy counts it.
    pub fn admits_request(&self) -> bool {
        let open = self.stats.rq_active.get() >= self.breakers.max_requests;
        if open {
            self.stats.rq_pending_overflow.inc();
        }
        !open
    }

    /// Count a request to `host` as sent (`upstream_rq_total`) and active until the guard
    /// drops.
    pub fn start_request(&self, host: Arc<Host>) -> RqGuard {
        self.stats.rq_total.inc();
        self.stats.rq_active.inc();
        RqGuard {
            active: self.stats.rq_active.clone(),
            _host: ActiveRequest::new(host),
        }
    }
}
