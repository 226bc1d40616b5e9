//! Envoy's xDS subscription stats.
//!
//! CDS and LDS use `cluster_manager.cds.*` and `listener_manager.lds.*`, which pilot-agent's
//! readiness check reads. EDS counts per cluster (`cluster.<name>.update_*`) and RDS per route
//! configuration (`http.<stat_prefix>.rds.<name>.update_*`), as Envoy does. `version` is a
//! 64-bit hash of the accepted `version_info` (Envoy hashes it too).

use super::Kind;
use crate::stats::{Kind as StatKind, Stat, Stats};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// `control_plane.connected_state`: 1 while an ADS stream is up.
pub const CONNECTED: &str = "control_plane.connected_state";

/// The four stats of one subscription.
#[derive(Debug, Clone)]
pub struct SubStats {
    /// Responses received.
    pub attempt: Arc<Stat>,
    /// Responses accepted (ACKed).
    pub success: Arc<Stat>,
    /// Responses rejected (NACKed).
    pub rejected: Arc<Stat>,
    /// Hash of the last accepted version.
    pub version: Arc<Stat>,
}

impl SubStats {
    fn with(f: impl Fn(&str, StatKind) -> Arc<Stat>) -> Self {
        SubStats {
            attempt: f("update_attempt", StatKind::Counter),
            success: f("update_success", StatKind::Counter),
            rejected: f("update_rejected", StatKind::Counter),
            version: f("version", StatKind::Gauge),
        }
    }

    /// Count an accepted update of `version`.
    pub fn accepted(&self, version: &str) {
        self.success.inc();
        self.version.set(version_hash(version));
    }
}

/// All xDS stats of the client.
#[derive(Debug)]
pub struct XdsStats {
    store: Arc<Stats>,
    /// `cluster_manager.cds.*`.
    pub cds: SubStats,
    /// `listener_manager.lds.*`.
    pub lds: SubStats,
    /// `control_plane.connected_state` (1 while a stream is up).
    pub connected: Arc<Stat>,
    /// `cluster_manager.warming_clusters`.
    pub warming_clusters: Arc<Stat>,
    /// `cluster_manager.active_clusters`.
    pub active_clusters: Arc<Stat>,
    /// `listener_manager.total_listeners_warming`.
    pub warming_listeners: Arc<Stat>,
    /// `listener_manager.total_listeners_active`.
    pub active_listeners: Arc<Stat>,
    /// `cluster_manager.cds.init_fetch_timeout` and `listener_manager.lds.init_fetch_timeout`.
    pub init_fetch_timeout: [Arc<Stat>; 2],
    /// `cluster_manager.cds.update_failure` and `listener_manager.lds.update_failure`: the
    /// stream failed or could not be opened.
    pub update_failure: [Arc<Stat>; 2],
}

impl XdsStats {
    /// Register the stats (they show in `/stats` from the start, at 0).
    pub fn new(store: &Arc<Stats>) -> Self {
        let c = |p: &'static str| move |s: &str, k| get(store, &format!("{p}.{s}"), k);
        XdsStats {
            store: store.clone(),
            cds: SubStats::with(c("cluster_manager.cds")),
            lds: SubStats::with(c("listener_manager.lds")),
            connected: store.gauge(CONNECTED),
            warming_clusters: store.gauge("cluster_manager.warming_clusters"),
            active_clusters: store.gauge("cluster_manager.active_clusters"),
            warming_listeners: store.gauge("listener_manager.total_listeners_warming"),
            active_listeners: store.gauge("listener_manager.total_listeners_active"),
            init_fetch_timeout: [
                store.counter("cluster_manager.cds.init_fetch_timeout"),
                store.counter("listener_manager.lds.init_fetch_timeout"),
            ],
            update_failure: [
                get(
                    store,
                    "cluster_manager.cds.update_failure",
                    StatKind::Counter,
                ),
                get(
                    store,
                    "listener_manager.lds.update_failure",
                    StatKind::Counter,
                ),
            ],
        }
    }

    /// The stats of one resource: CDS/LDS share the type's stats; an EDS resource counts under
    /// its cluster, an RDS resource under the HCM stat prefix that uses it.
    pub fn resource(&self, kind: Kind, name: &str, rds_prefix: Option<&str>) -> SubStats {
        match kind {
            Kind::Cds => self.cds.clone(),
            Kind::Lds => self.lds.clone(),
            Kind::Eds => SubStats::with(|s, k| self.store.cluster(name, s, k)),
            Kind::Rds => {
                let prefix = rds_prefix.unwrap_or("rds");
                SubStats::with(|s, k| self.store.http(prefix, &format!("rds.{name}.{s}"), k))
            }
        }
    }
}

fn get(store: &Stats, name: &str, kind: StatKind) -> Arc<Stat> {
    let s = match kind {
        StatKind::Counter => store.counter(name),
        StatKind::Gauge => store.gauge(name),
    };
    // Written once so `usedonly` (what pilot-agent's readiness probe reads) shows them at 0.
    s.add(0);
    s
}

/// A stable 64-bit hash of a version string (FNV-1a; Envoy uses xxHash, any stable hash will do
/// because only changes are meaningful).
pub fn version_hash(v: &str) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    v.hash(&mut h);
    h.0
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}
