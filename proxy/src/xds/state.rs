//! The accepted xDS resources, their versions, and what is subscribed and warming.
//!
//! Every resource keeps its proto (to detect "unchanged" by value, not by bytes: Go's proto
//! marshalling orders map fields at random) next to what was compiled from it, so that an
//! unchanged resource reuses the compiled object and its connection pools. Protos are shared
//! (`Arc`) so that publishing them for `/config_dump` after every update copies nothing.

use super::Kind;
use crate::cluster::Cluster;
use crate::config::ListenerConfig;
use crate::route::RouteConfig;
use envoy_types::pb::envoy::config::cluster::v3 as cpb;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3 as lpb;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Bookkeeping shared by all resource kinds.
#[derive(Debug, Clone)]
pub struct Meta {
    /// The resource's version (the response's `version_info` in SotW).
    pub version: String,
    /// When it was accepted (for `/config_dump`'s `last_updated`).
    pub last_updated: SystemTime,
}

impl Meta {
    /// Accepted now at `version`.
    pub fn now(version: &str) -> Self {
        Meta {
            version: version.to_string(),
            last_updated: SystemTime::now(),
        }
    }
}

/// Warming of a cluster or listener: cold until what it depends on arrives, or until its
/// `initial_fetch_timeout` passes (`None` = waits forever).
#[derive(Debug, Clone)]
pub struct Warming {
    /// When warming began.
    pub since: Instant,
    /// How long to wait at most.
    pub timeout: Option<Duration>,
    /// Set once the timeout has passed.
    pub timed_out: bool,
}

impl Warming {
    /// Start warming now.
    pub fn new(timeout: Option<Duration>) -> Self {
        Warming {
            since: Instant::now(),
            timeout,
            timed_out: false,
        }
    }

    /// Whether the timeout passed at `now` (and was not noticed before).
    pub fn expires(&self, now: Instant) -> bool {
        !self.timed_out && self.timeout.is_some_and(|t| now >= self.since + t)
    }
}

/// An accepted cluster.
#[derive(Debug, Clone)]
pub struct ClusterEntry {
    /// The proto.
    pub proto: Arc<cpb::Cluster>,
    /// The compiled cluster (pools, outlier state, stats).
    pub cluster: Arc<Cluster>,
    /// The EDS service name for EDS clusters (`service_name`, else the cluster name).
    pub eds_name: Option<String>,
    /// Warming state.
    pub warming: Warming,
    /// Version and time.
    pub meta: Meta,
}

/// An accepted listener.
#[derive(Debug, Clone)]
pub struct ListenerEntry {
    /// The proto.
    pub proto: Arc<lpb::Listener>,
    /// The compiled listener.
    pub config: Arc<ListenerConfig>,
    /// RDS names of all its HCMs, each with the HCM's stat prefix.
    pub rds: Vec<(String, String)>,
    /// Warming state.
    pub warming: Warming,
    /// Version and time.
    pub meta: Meta,
}

/// An accepted route configuration.
#[derive(Debug, Clone)]
pub struct RouteEntry {
    /// The proto.
    pub proto: Arc<RouteConfiguration>,
    /// The compiled routes.
    pub config: Arc<RouteConfig>,
    /// Version and time.
    pub meta: Meta,
}

/// An accepted `ClusterLoadAssignment`.
#[derive(Debug, Clone)]
pub struct EndpointEntry {
    /// The proto.
    pub proto: Arc<ClusterLoadAssignment>,
    /// Version and time.
    pub meta: Meta,
}

/// Per-type protocol state.
#[derive(Debug, Clone, Default)]
pub struct TypeState {
    /// The last accepted `version_info` (SotW) or `system_version_info` (delta).
    pub version: String,
    /// The nonce of the last response received.
    pub nonce: String,
    /// Whether at least one response was accepted (initial fetch done).
    pub received: bool,
}

/// Everything the client has accepted.
#[derive(Debug, Default)]
pub struct XdsState {
    /// Clusters by name.
    pub clusters: BTreeMap<String, ClusterEntry>,
    /// Endpoints by EDS service name.
    pub endpoints: BTreeMap<String, EndpointEntry>,
    /// Listeners by name.
    pub listeners: BTreeMap<String, ListenerEntry>,
    /// Route configurations by name.
    pub routes: BTreeMap<String, RouteEntry>,
    /// Protocol state per kind (index [`Kind::idx`]).
    pub types: [TypeState; 4],
}

impl XdsState {
    /// Protocol state of a kind.
    pub fn ty(&mut self, k: Kind) -> &mut TypeState {
        &mut self.types[k.idx()]
    }

    /// EDS names the accepted clusters need.
    pub fn eds_names(&self) -> BTreeSet<String> {
        self.clusters
            .values()
            .filter_map(|c| c.eds_name.clone())
            .collect()
    }

    /// RDS names the accepted listeners need.
    pub fn rds_names(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .flat_map(|l| l.rds.iter().map(|(n, _)| n.clone()))
            .collect()
    }

    /// The stat prefix of an HCM that uses route configuration `name`.
    pub fn rds_prefix(&self, name: &str) -> Option<String> {
        self.listeners
            .values()
            .flat_map(|l| &l.rds)
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
    }

    /// Whether a cluster may serve: not EDS, its endpoints arrived, or it timed out.
    pub fn cluster_warm(&self, c: &ClusterEntry) -> bool {
        c.warming.timed_out
            || c.eds_name
                .as_ref()
                .is_none_or(|n| self.endpoints.contains_key(n))
    }

    /// Whether a listener may serve: all its route configurations arrived, or it timed out.
    pub fn listener_warm(&self, l: &ListenerEntry) -> bool {
        l.warming.timed_out || l.rds.iter().all(|(n, _)| self.routes.contains_key(n))
    }

    /// Mark cold clusters and listeners whose timeout passed; true if any did.
    pub fn expire_warming(&mut self, now: Instant) -> bool {
        let mut any = false;
        let cold: Vec<String> = self
            .clusters
            .iter()
            .filter(|(_, c)| !self.cluster_warm(c) && c.warming.expires(now))
            .map(|(n, _)| n.clone())
            .collect();
        for n in cold {
            tracing::warn!(cluster = %n, "no endpoints within initial_fetch_timeout; using it without");
            self.clusters.get_mut(&n).unwrap().warming.timed_out = true;
            any = true;
        }
        let cold: Vec<String> = self
            .listeners
            .iter()
            .filter(|(_, l)| !self.listener_warm(l) && l.warming.expires(now))
            .map(|(n, _)| n.clone())
            .collect();
        for n in cold {
            tracing::warn!(listener = %n, "routes missing after initial_fetch_timeout; serving without them");
            self.listeners.get_mut(&n).unwrap().warming.timed_out = true;
            any = true;
        }
        any
    }

    /// After a rejected EDS or RDS update naming `names`: stop waiting for them, so the
    /// clusters and listeners that depend on them serve without (Envoy does the same).
    pub fn give_up_warming(&mut self, kind: Kind, names: &[String]) -> bool {
        let mut any = false;
        match kind {
            Kind::Eds => {
                let eps = &self.endpoints;
                for c in self.clusters.values_mut() {
                    let cold = c
                        .eds_name
                        .as_ref()
                        .is_some_and(|n| names.contains(n) && !eps.contains_key(n));
                    if cold && !c.warming.timed_out {
                        c.warming.timed_out = true;
                        any = true;
                    }
                }
            }
            Kind::Rds => {
                let routes = &self.routes;
                for l in self.listeners.values_mut() {
                    let cold = l
                        .rds
                        .iter()
                        .any(|(n, _)| names.contains(n) && !routes.contains_key(n));
                    if cold && !l.warming.timed_out {
                        l.warming.timed_out = true;
                        any = true;
                    }
                }
            }
            Kind::Cds | Kind::Lds => {}
        }
        any
    }

    /// Whether every accepted cluster is warm.
    pub fn clusters_all_warm(&self) -> bool {
        self.clusters.values().all(|c| self.cluster_warm(c))
    }

    /// Whether every accepted listener is warm.
    pub fn listeners_all_warm(&self) -> bool {
        self.listeners.values().all(|l| self.listener_warm(l))
    }

    /// Forget endpoints and routes nothing refers to any more (they were unsubscribed).
    pub fn prune_unsubscribed(&mut self) {
        let eds = self.eds_names();
        self.endpoints.retain(|n, _| eds.contains(n));
        let rds = self.rds_names();
        self.routes.retain(|n, _| rds.contains(n));
    }

    /// Name → version of the resources held, for delta's `initial_resource_versions`.
    pub fn versions(&self, k: Kind) -> BTreeMap<String, String> {
        let v = |m: &Meta| m.version.clone();
        match k {
            Kind::Cds => self
                .clusters
                .iter()
                .map(|(n, e)| (n.clone(), v(&e.meta)))
                .collect(),
            Kind::Eds => self
                .endpoints
                .iter()
                .map(|(n, e)| (n.clone(), v(&e.meta)))
                .collect(),
            Kind::Lds => self
                .listeners
                .iter()
                .map(|(n, e)| (n.clone(), v(&e.meta)))
                .collect(),
            Kind::Rds => self
                .routes
                .iter()
                .map(|(n, e)| (n.clone(), v(&e.meta)))
                .collect(),
        }
    }
}
