//! The immutable runtime configuration and the store that swaps it atomically.
//!
//! A request loads the current [`Snapshot`] once and keeps that `Arc` until it ends, so a swap
//! (xDS, next issue) never changes the config under an in-flight request.

use super::LoadedBootstrap;
use crate::cluster::Cluster;
pub use crate::listener::ListenerConfig;
use crate::proxy::hcm::HcmConfig;
use crate::route::RouteConfig;
use crate::stats::Stats;
use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// Everything the data path needs, immutable.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Clusters by name (FxHash: looked up per request, keyed by config).
    pub clusters: FxHashMap<String, Arc<Cluster>>,
    /// Listeners in config order.
    pub listeners: Vec<Arc<ListenerConfig>>,
    /// Route configurations by name (RDS; empty until xDS).
    pub routes: FxHashMap<String, Arc<RouteConfig>>,
    /// The bootstrap it came from.
    pub bootstrap: Option<Arc<LoadedBootstrap>>,
    /// Listener index by address, built on first hand-off.
    pub by_address: std::sync::OnceLock<HashMap<SocketAddr, usize>>,
    /// The bootstrap's `static_resources.secrets`, compiled (the server puts them in its
    /// [`ConfigStore::secrets`]).
    pub static_secrets: Vec<(String, crate::tls::secrets::Entry)>,
}

impl Snapshot {
    /// Compile the static resources of a bootstrap. Errors name the offending resource.
    pub fn build(boot: &LoadedBootstrap, stats: &Arc<Stats>) -> Result<Self, String> {
        let mut snap = Snapshot {
            bootstrap: Some(Arc::new(boot.clone())),
            ..Default::default()
        };
        let Some(sr) = &boot.proto.static_resources else {
            return Ok(snap);
        };
        for s in &sr.secrets {
            if snap.static_secrets.iter().any(|(n, _)| *n == s.name) {
                return Err(format!("duplicate secret {:?}", s.name));
            }
            snap.static_secrets
                .push((s.name.clone(), crate::tls::secrets::entry(s)?));
        }
        for c in &sr.clusters {
            if snap.clusters.contains_key(&c.name) {
                return Err(format!("duplicate cluster {:?}", c.name));
            }
            let cluster =
                Cluster::from_proto(c, stats).map_err(|e| format!("cluster {:?}: {e}", c.name))?;
            snap.clusters.insert(c.name.clone(), cluster);
        }
        for l in &sr.listeners {
            let lc =
                ListenerConfig::from_proto(l).map_err(|e| format!("listener {:?}: {e}", l.name))?;
            if snap.listeners.iter().any(|x| x.name == lc.name) {
                return Err(format!("duplicate listener {:?}", lc.name));
            }
            snap.listeners.push(Arc::new(lc));
        }
        Ok(snap)
    }

    /// The listener a `use_original_dst` listener hands a connection to: the one at exact
    /// `dst`, else the one at `0.0.0.0:port` (`[::]:port` for IPv6), never `except` itself.
    pub fn listener_for(&self, dst: SocketAddr, except: &str) -> Option<&Arc<ListenerConfig>> {
        let index = self.by_address.get_or_init(|| {
            let mut m = HashMap::new();
            for (i, l) in self.listeners.iter().enumerate() {
                for b in &l.binds {
                    m.entry(b.addr).or_insert(i);
                }
            }
            m
        });
        let any = if dst.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        [dst, SocketAddr::new(any, dst.port())]
            .iter()
            .filter_map(|a| index.get(a))
            .map(|&i| &self.listeners[i])
            .find(|l| l.name != except)
    }

    /// The route config an HCM uses.
    pub fn route_config(&self, hcm: &HcmConfig) -> Option<Arc<RouteConfig>> {
        match &hcm.routes {
            crate::proxy::hcm::RouteSource::Inline(r) => Some(r.clone()),
            crate::proxy::hcm::RouteSource::Rds(n) => self.routes.get(n).cloned(),
        }
    }
}

/// The atomically swappable current snapshot.
#[derive(Debug)]
pub struct ConfigStore {
    current: ArcSwap<Snapshot>,
    /// TLS secrets by name (bootstrap and SDS); they change apart from snapshots.
    pub secrets: crate::tls::Secrets,
    /// What request spans need from the process (set by the server from the bootstrap).
    pub tracing: std::sync::OnceLock<crate::proxy::trace::Env>,
    /// This proxy's workload for Istio's metadata exchange (set by the server from the
    /// bootstrap's node).
    pub istio: std::sync::OnceLock<crate::proxy::istio::peer::Local>,
}

impl ConfigStore {
    /// A store holding `snap`.
    pub fn new(snap: Snapshot) -> Arc<Self> {
        Arc::new(ConfigStore {
            current: ArcSwap::from_pointee(snap),
            secrets: Default::default(),
            tracing: Default::default(),
            istio: Default::default(),
        })
    }

    /// This proxy's workload (an empty one when the server did not set it).
    pub fn istio_local(&self) -> &crate::proxy::istio::peer::Local {
        self.istio
            .get_or_init(|| crate::proxy::istio::peer::Local::from_node(None))
    }

    /// The tracing environment (an empty one when the server did not set it).
    pub fn tracing_env(&self) -> &crate::proxy::trace::Env {
        self.tracing.get_or_init(|| {
            crate::proxy::trace::Env::from_bootstrap(None, crate::stats::Stats::new())
        })
    }

    /// The current snapshot; hold it for the whole request.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replace the snapshot; in-flight requests keep the one they loaded.
    pub fn swap(&self, snap: Snapshot) -> Arc<Snapshot> {
        self.record_istio_build(&snap);
        self.current.swap(Arc::new(snap))
    }

    /// Istio's stats filter sets `istio_build` when its config is created: here, when a
    /// snapshot with a listener (bound or not) that has it is taken.
    pub fn record_istio_build(&self, snap: &Snapshot) {
        if snap.listeners.iter().any(|l| l.istio_stats()) {
            self.istio_local().record_build(&self.tracing_env().stats);
        }
    }
}
