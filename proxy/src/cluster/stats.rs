//! Per-cluster stats with Envoy's names (`cluster.<name>.upstream_*`).

use crate::stats::{Kind, Stat, Stats};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// `upstream_rq_<code>` and `upstream_rq_<N>xx` for one status code.
type CodeStats = (Arc<Stat>, Arc<Stat>);

/// Handles to one cluster's stats.
#[derive(Debug)]
pub struct ClusterStats {
    store: Arc<Stats>,
    name: String,
    /// `upstream_cx_total`.
    pub cx_total: Arc<Stat>,
    /// `upstream_cx_active`.
    pub cx_active: Arc<Stat>,
    /// `upstream_cx_destroy`.
    pub cx_destroy: Arc<Stat>,
    /// `upstream_cx_connect_fail`.
    pub cx_connect_fail: Arc<Stat>,
    /// `upstream_cx_connect_timeout`.
    pub cx_connect_timeout: Arc<Stat>,
    /// `upstream_cx_overflow`.
    pub cx_overflow: Arc<Stat>,
    /// `upstream_cx_max_requests`: closed after `max_requests_per_connection`.
    pub cx_max_requests: Arc<Stat>,
    /// `upstream_cx_max_duration_reached`: closed after `max_connection_duration`.
    pub cx_max_duration_reached: Arc<Stat>,
    /// `upstream_cx_idle_timeout`: closed after the idle timeout.
    pub cx_idle_timeout: Arc<Stat>,
    /// `upstream_rq_total`.
    pub rq_total: Arc<Stat>,
    /// `upstream_rq_active`.
    pub rq_active: Arc<Stat>,
    /// `upstream_rq_pending_active`.
    pub rq_pending_active: Arc<Stat>,
    /// `upstream_rq_pending_overflow`.
    pub rq_pending_overflow: Arc<Stat>,
    /// `upstream_rq_pending_total`.
    pub rq_pending_total: Arc<Stat>,
    /// `upstream_rq_completed`.
    pub rq_completed: Arc<Stat>,
    /// `upstream_rq_timeout`.
    pub rq_timeout: Arc<Stat>,
    /// `upstream_rq_per_try_timeout`.
    pub rq_per_try_timeout: Arc<Stat>,
    /// `upstream_rq_retry`.
    pub rq_retry: Arc<Stat>,
    /// `upstream_rq_retry_success`.
    pub rq_retry_success: Arc<Stat>,
    /// `upstream_rq_retry_overflow`.
    pub rq_retry_overflow: Arc<Stat>,
    /// `upstream_rq_retry_limit_exceeded`.
    pub rq_retry_limit_exceeded: Arc<Stat>,
    /// `upstream_cx_none_healthy` (no host to pick).
    pub cx_none_healthy: Arc<Stat>,
    /// `membership_total`.
    pub membership_total: Arc<Stat>,
    /// `membership_healthy`.
    pub membership_healthy: Arc<Stat>,
    /// `outlier_detection.ejections_active`.
    pub ejections_active: Arc<Stat>,
    /// `outlier_detection.ejections_enforced_total`.
    pub ejections_total: Arc<Stat>,
    /// `outlier_detection.ejections_overflow`: ejections `max_ejection_percent` refused.
    pub ejections_overflow: Arc<Stat>,
    /// `outlier_detection.ejections_enforced_consecutive_5xx`.
    pub ejections_5xx: Arc<Stat>,
    /// `outlier_detection.ejections_enforced_consecutive_gateway_failure`.
    pub ejections_gateway: Arc<Stat>,
    /// `outlier_detection.ejections_enforced_consecutive_local_origin_failure`.
    pub ejections_local: Arc<Stat>,
    codes: RwLock<HashMap<u16, CodeStats>>,
    /// The counters of a 200, which nearly every response takes: no lock, hash or clone.
    ok: std::sync::OnceLock<CodeStats>,
}

impl ClusterStats {
    /// A counter created on first use (`ssl.handshake`, `ssl.connection_error`): only
    /// clusters that make TLS connections show them, as in Envoy.
    pub fn lazy_counter(&self, stat: &str) -> Arc<Stat> {
        self.store.cluster(&self.name, stat, Kind::Counter)
    }

    /// Register a cluster's stats.
    pub fn new(store: &Arc<Stats>, name: &str) -> Arc<Self> {
        let c = |s: &str| store.cluster(name, s, Kind::Counter);
        let g = |s: &str| store.cluster(name, s, Kind::Gauge);
        Arc::new(ClusterStats {
            store: store.clone(),
            name: name.to_string(),
            cx_total: c("upstream_cx_total"),
            cx_active: g("upstream_cx_active"),
            cx_destroy: c("upstream_cx_destroy"),
            cx_connect_fail: c("upstream_cx_connect_fail"),
            cx_connect_timeout: c("upstream_cx_connect_timeout"),
            cx_overflow: c("upstream_cx_overflow"),
            cx_max_requests: c("upstream_cx_max_requests"),
            cx_max_duration_reached: c("upstream_cx_max_duration_reached"),
            cx_idle_timeout: c("upstream_cx_idle_timeout"),
            rq_total: c("upstream_rq_total"),
            rq_active: g("upstream_rq_active"),
            rq_pending_active: g("upstream_rq_pending_active"),
            rq_pending_overflow: c("upstream_rq_pending_overflow"),
            rq_pending_total: c("upstream_rq_pending_total"),
            rq_completed: c("upstream_rq_completed"),
            rq_timeout: c("upstream_rq_timeout"),
            rq_per_try_timeout: c("upstream_rq_per_try_timeout"),
            rq_retry: c("upstream_rq_retry"),
            rq_retry_success: c("upstream_rq_retry_success"),
            rq_retry_overflow: c("upstream_rq_retry_overflow"),
            rq_retry_limit_exceeded: c("upstream_rq_retry_limit_exceeded"),
            cx_none_healthy: c("upstream_cx_none_healthy"),
            membership_total: g("membership_total"),
            membership_healthy: g("membership_healthy"),
            ejections_active: g("outlier_detection.ejections_active"),
            ejections_total: c("outlier_detection.ejections_enforced_total"),
            ejections_overflow: c("outlier_detection.ejections_overflow"),
            ejections_5xx: c("outlier_detection.ejections_enforced_consecutive_5xx"),
            ejections_local: c(
                "outlier_detection.ejections_enforced_consecutive_local_origin_failure",
            ),
            ejections_gateway: c(
                "outlier_detection.ejections_enforced_consecutive_gateway_failure",
            ),
            codes: RwLock::new(HashMap::new()),
            ok: Default::default(),
        })
    }

    /// Count a completed upstream response: `upstream_rq_<code>` and `upstream_rq_<N>xx`.
    pub fn response(&self, code: u16) {
        let other;
        let (a, b) = if code == 200 {
            self.ok.get_or_init(|| self.code_stats(200))
        } else {
            other = self.other_code_stats(code);
            &other
        };
        a.inc();
        b.inc();
        self.rq_completed.inc();
    }

    /// The counters of a code other than 200, registered on first use.
    fn other_code_stats(&self, code: u16) -> CodeStats {
        let cached = self
            .codes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&code)
            .cloned();
        cached.unwrap_or_else(|| {
            let x = self.code_stats(code);
            let mut m = self.codes.write().unwrap_or_else(|e| e.into_inner());
            m.entry(code).or_insert(x).clone()
        })
    }

    fn code_stats(&self, code: u16) -> CodeStats {
        (
            self.store
                .cluster(&self.name, &format!("upstream_rq_{code}"), Kind::Counter),
            self.store.cluster(
                &self.name,
                &format!("upstream_rq_{}xx", code / 100),
                Kind::Counter,
            ),
        )
    }
}
