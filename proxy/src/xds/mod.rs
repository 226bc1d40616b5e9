//! The ADS client: CDS, EDS, LDS and RDS over one aggregated gRPC stream, state-of-the-world
//! (`GRPC`, Istio 1.10) or incremental (`DELTA_GRPC`, Istio ≥ 1.22).
//!
//! - [`config`] reads `dynamic_resources.ads_config` and the initial-fetch timeouts,
//! - [`transport`] opens the gRPC channel (unix pipe or TCP, 64 MiB messages),
//! - [`client`] owns the stream lifecycle: reconnect with jittered backoff, re-subscribe,
//! - [`sotw`] and [`delta`] speak the two protocol variants on top of a shared [`engine`],
//! - [`state`] holds the accepted resources, versions and warming state,
//! - [`apply`] validates updates (ACK/NACK), builds a new [`Snapshot`] and swaps it in,
//! - [`listeners`] binds, keeps and drains the dynamic listeners around each swap,
//! - [`dump`] publishes what was accepted for `/config_dump`'s dynamic sections,
//! - [`stats`] keeps Envoy's `update_attempt`/`update_success`/`update_rejected`/`version`.
//!
//! Start it with [`start`] once the server has bound its static listeners.
//!
//! [`Snapshot`]: crate::config::Snapshot

pub mod apply;
pub mod client;
pub mod config;
pub mod delta;
pub mod dump;
pub mod endpoints;
pub mod engine;
pub mod listeners;
pub mod sotw;
pub mod state;
pub mod stats;
pub mod transport;

use crate::server::Server;
use std::sync::Arc;
use tokio::task::JoinHandle;

pub use config::{AdsConfig, ApiType};

/// A discovery type the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Clusters.
    Cds,
    /// Endpoints (`ClusterLoadAssignment`).
    Eds,
    /// Listeners.
    Lds,
    /// Route configurations.
    Rds,
}

impl Kind {
    /// All kinds, in Envoy's subscription order.
    pub const ALL: [Kind; 4] = [Kind::Cds, Kind::Eds, Kind::Lds, Kind::Rds];

    /// The v3 type URL.
    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Cds => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Kind::Eds => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            Kind::Lds => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Kind::Rds => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        }
    }

    /// The kind of a type URL, if we speak it.
    pub fn from_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// Wildcard types (CDS, LDS) get complete sets in SotW; the others are subscribed by name.
    pub fn wildcard(self) -> bool {
        matches!(self, Kind::Cds | Kind::Lds)
    }

    /// Short name for logs.
    pub fn short(self) -> &'static str {
        match self {
            Kind::Cds => "CDS",
            Kind::Eds => "EDS",
            Kind::Lds => "LDS",
            Kind::Rds => "RDS",
        }
    }

    /// Index into per-kind arrays.
    pub fn idx(self) -> usize {
        self as usize
    }
}

/// Start the ADS client for a started server whose bootstrap has an `ads_config`.
///
/// Call it inside the runtime, after the static listeners are bound. Returns `None` (after
/// logging why) when the bootstrap asks for no ADS or for a form this client does not speak,
/// and when this server already has a client (so a second call is harmless). The task runs until
/// the runtime ends; it marks the server LIVE once the initial CDS and LDS are applied (or
/// their initial-fetch timeouts pass).
pub fn start(server: &Arc<Server>) -> Option<JoinHandle<()>> {
    // The client's connection gauge doubles as the per-server "already started" mark.
    if server.stats.value(stats::CONNECTED).is_some() {
        return None;
    }
    let snap = server.store.load();
    let boot = snap.bootstrap.clone()?;
    let cfg = match AdsConfig::from_bootstrap(&boot.proto) {
        Ok(Some(c)) => c,
        Ok(None) => return None,
        Err(e) => {
            tracing::error!("xDS disabled: {e}");
            return None;
        }
    };
    server.stats.gauge(stats::CONNECTED).set(0);
    let server = server.clone();
    Some(tokio::spawn(client::run(server, cfg)))
}
