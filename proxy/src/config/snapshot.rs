//! The immutable runtime configuration and the store that swaps it atomically.
//!
//! A request loads the current [`Snapshot`] once and keeps that `Arc` until it ends, so a swap
//! (xDS, next issue) never changes the config under an in-flight request.

use super::LoadedBootstrap;
use crate::cluster::{address, Addr, Cluster};
use crate::proxy::hcm::HcmConfig;
use crate::route::RouteConfig;
use crate::stats::Stats;
use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::listener::v3 as lpb;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// A compiled listener.
#[derive(Debug)]
pub struct ListenerConfig {
    /// Listener name (Envoy names unnamed static listeners by address).
    pub name: String,
    /// Bind address.
    pub address: SocketAddr,
    /// Whether to bind a socket (`bind_to_port` / `deprecated_v1.bind_to_port`).
    pub bind: bool,
    /// The HTTP connection manager of the (first) filter chain; `None` when unsupported.
    pub hcm: Option<Arc<HcmConfig>>,
    /// The proto (for `/config_dump`).
    pub proto: lpb::Listener,
}

/// Everything the data path needs, immutable.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Clusters by name.
    pub clusters: HashMap<String, Arc<Cluster>>,
    /// Listeners in config order.
    pub listeners: Vec<Arc<ListenerConfig>>,
    /// Route configurations by name (RDS; empty until xDS).
    pub routes: HashMap<String, Arc<RouteConfig>>,
    /// The bootstrap it came from.
    pub bootstrap: Option<Arc<LoadedBootstrap>>,
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

    /// The route config an HCM uses.
    pub fn route_config(&self, hcm: &HcmConfig) -> Option<Arc<RouteConfig>> {
        match &hcm.routes {
            crate::proxy::hcm::RouteSource::Inline(r) => Some(r.clone()),
            crate::proxy::hcm::RouteSource::Rds(n) => self.routes.get(n).cloned(),
        }
    }
}

impl ListenerConfig {
    /// Compile a listener.
    pub fn from_proto(l: &lpb::Listener) -> Result<Self, String> {
        let address = match address(l.address.as_ref())? {
            Addr::Socket(ip, port) => {
                let ip: std::net::IpAddr = ip
                    .parse()
                    .map_err(|_| format!("listener address {ip:?} is not an IP"))?;
                SocketAddr::new(ip, port)
            }
            Addr::Pipe(p) => return Err(format!("pipe listeners ({p}) are not supported")),
        };
        let bind = l
            .bind_to_port
            .as_ref()
            .map(|b| b.value)
            .or_else(|| {
                l.deprecated_v1
                    .as_ref()
                    .and_then(|d| d.bind_to_port.as_ref())
                    .map(|b| b.value)
            })
            .unwrap_or(true);
        // Without filter-chain matching (xDS issue), use the first chain with an HCM, then
        // the default chain.
        let mut hcm = None;
        for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
            for f in &chain.filters {
                let Some(lpb::filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                    continue;
                };
                if super::decode::parked_type(any).is_some() {
                    tracing::debug!(filter = %f.name, "skipping network filter of an unknown type");
                    continue;
                }
                if any.type_url.ends_with("envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager") {
                    hcm = Some(Arc::new(HcmConfig::from_any(any)?));
                    break;
                }
                tracing::debug!(filter = %f.name, "network filter not implemented yet");
            }
            if hcm.is_some() {
                break;
            }
        }
        Ok(ListenerConfig {
            name: if l.name.is_empty() {
                address.to_string()
            } else {
                l.name.clone()
            },
            address,
            bind,
            hcm,
            proto: l.clone(),
        })
    }
}

/// The atomically swappable current snapshot.
#[derive(Debug)]
pub struct ConfigStore {
    current: ArcSwap<Snapshot>,
}

impl ConfigStore {
    /// A store holding `snap`.
    pub fn new(snap: Snapshot) -> Arc<Self> {
        Arc::new(ConfigStore {
            current: ArcSwap::from_pointee(snap),
        })
    }

    /// The current snapshot; hold it for the whole request.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replace the snapshot; in-flight requests keep the one they loaded.
    pub fn swap(&self, snap: Snapshot) -> Arc<Snapshot> {
        self.current.swap(Arc::new(snap))
    }
}
