//! Validating an update resource by resource (a rejected resource keeps its last good version;
//! the NACK names it), committing the valid ones to the [`XdsState`], and building the next
//! [`Snapshot`] from the statics plus the warm dynamic resources.

use super::config::{initial_fetch_timeout, DEFAULT_INITIAL_FETCH_TIMEOUT};
use super::endpoints::hosts;
use super::state::{
    ClusterEntry, EndpointEntry, ListenerEntry, Meta, RouteEntry, Warming, XdsState,
};
use super::Kind;
use crate::cluster::{Cluster, Discovery};
use crate::config::{decode, ListenerConfig, LoadedBootstrap, Snapshot};
use crate::route::RouteConfig;
use crate::stats::Stats;
use envoy_types::pb::envoy::config::cluster::v3 as cpb;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3 as lpb;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hpb;
use envoy_types::pb::google::protobuf::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// One resource of a response.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The name the response gives it (delta); SotW names come from the resource itself.
    pub name: Option<String>,
    /// Its version (per resource in delta, the response's in SotW).
    pub version: String,
    /// The resource.
    pub any: Any,
}

/// A response, independent of the protocol variant.
#[derive(Debug, Clone)]
pub struct Update {
    /// Type.
    pub kind: Kind,
    /// Added or updated resources.
    pub resources: Vec<Incoming>,
    /// Explicitly removed names (delta).
    pub removed: Vec<String>,
    /// The set is complete: remove what is absent (SotW CDS and LDS).
    pub complete: bool,
    /// `version_info` / `system_version_info`.
    pub version: String,
}

/// The bootstrap's static resources, which xDS never replaces.
#[derive(Debug, Clone)]
pub struct Statics {
    /// Static clusters.
    pub clusters: rustc_hash::FxHashMap<String, Arc<Cluster>>,
    /// Static listeners.
    pub listeners: Vec<Arc<ListenerConfig>>,
    /// The bootstrap.
    pub bootstrap: Option<Arc<LoadedBootstrap>>,
}

impl Statics {
    /// Take the statics from the snapshot the server started with.
    pub fn from_snapshot(s: &Snapshot) -> Self {
        Statics {
            clusters: s.clusters.clone(),
            listeners: s.listeners.clone(),
            bootstrap: s.bootstrap.clone(),
        }
    }

    /// Whether a listener name is static.
    pub fn is_static_listener(&self, name: &str) -> bool {
        self.listeners.iter().any(|l| l.name == name)
    }
}

const RESOURCE_WRAPPER: &str = "type.googleapis.com/envoy.service.discovery.v3.Resource";

/// Decode a resource, unwrapping `discovery.v3.Resource` if the server wrapped it.
fn unpack<M: prost::Message + prost::Name + Default>(any: &Any) -> Result<M, String> {
    if any.type_url == RESOURCE_WRAPPER {
        let r: envoy_types::pb::envoy::service::discovery::v3::Resource =
            prost::Message::decode(any.value.as_slice()).map_err(|e| e.to_string())?;
        return unpack(r.resource.as_ref().ok_or("empty Resource wrapper")?);
    }
    decode::unpack(any)
}

/// What applying an update did: whether anything changed, and the resources rejected (their
/// last good version stays in place) as (name, error). As in Envoy, the good resources of a
/// response are applied even when others in it are rejected, so one resource this proxy cannot
/// use does not freeze every later update of its type.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Something was added, changed or removed.
    pub changed: bool,
    /// Rejected resources: (name, error naming the resource and the problem).
    pub rejected: Vec<(String, String)>,
    /// Names of the resources the update carried (decodable ones), for per-resource stats.
    pub names: Vec<String>,
}

impl Outcome {
    /// The NACK's `error_detail` message; `None` means ACK.
    pub fn error(&self) -> Option<String> {
        if self.rejected.is_empty() {
            return None;
        }
        let all: Vec<&str> = self.rejected.iter().map(|(_, e)| e.as_str()).collect();
        Some(all.join("; "))
    }

    fn reject(&mut self, name: &str, error: String) {
        self.rejected.push((name.to_string(), error));
    }
}

/// Decode every resource of `upd` as `M`. Undecodable, unnamed and duplicate ones are
/// rejected into `out`. Returns the decoded resources with their versions, and every name
/// seen (rejected ones included, so that a complete set does not remove their old version).
fn decode_all<M: prost::Message + prost::Name + Default>(
    upd: &Update,
    what: &str,
    name_of: fn(&M) -> &str,
    out: &mut Outcome,
) -> (Vec<(M, String)>, BTreeSet<String>) {
    let mut seen = BTreeSet::new();
    let mut decoded = Vec::with_capacity(upd.resources.len());
    for (i, r) in upd.resources.iter().enumerate() {
        let label = r.name.clone().unwrap_or_else(|| format!("#{i}"));
        if let Some(n) = &r.name {
            seen.insert(n.clone());
        }
        let m: M = match unpack(&r.any) {
            Ok(m) => m,
            Err(e) => {
                out.reject(&label, format!("{what} {label:?}: {e}"));
                continue;
            }
        };
        let name = name_of(&m).to_string();
        if name.is_empty() {
            out.reject(&label, format!("{what} {label:?} has no name"));
            continue;
        }
        if r.name.as_ref().is_some_and(|n| *n != name) {
            out.reject(&label, format!("{what} {label:?} is named {name:?} inside"));
            continue;
        }
        if decoded.iter().any(|(d, _)| name_of(d) == name) {
            out.reject(&name, format!("duplicate {what} {name:?}"));
            continue;
        }
        seen.insert(name.clone());
        out.names.push(name);
        decoded.push((m, r.version.clone()));
    }
    (decoded, seen)
}

/// Apply the valid resources of `upd` to `state`; see [`Outcome`].
pub fn accept(
    state: &mut XdsState,
    upd: &Update,
    statics: &Statics,
    stats: &Arc<Stats>,
    current: &Snapshot,
) -> Outcome {
    let mut out = Outcome::default();
    out.changed = match upd.kind {
        Kind::Cds => accept_clusters(state, upd, statics, stats, &mut out),
        Kind::Eds => accept_endpoints(state, upd, current, &mut out),
        Kind::Lds => accept_listeners(state, upd, statics, &mut out),
        Kind::Rds => accept_routes(state, upd, &mut out),
    };
    out
}

/// Names to remove: absent from a complete set, or listed as removed.
fn removals<V>(have: &BTreeMap<String, V>, upd: &Update, seen: &BTreeSet<String>) -> Vec<String> {
    if upd.complete {
        have.keys()
            .filter(|n| !seen.contains(*n))
            .cloned()
            .collect()
    } else {
        upd.removed
            .iter()
            .filter(|n| have.contains_key(*n))
            .cloned()
            .collect()
    }
}

fn accept_clusters(
    state: &mut XdsState,
    upd: &Update,
    statics: &Statics,
    stats: &Arc<Stats>,
    out: &mut Outcome,
) -> bool {
    let (decoded, seen) = decode_all::<cpb::Cluster>(upd, "cluster", |c| &c.name, out);
    let mut changed = Vec::new();
    for (c, version) in decoded {
        if statics.clusters.contains_key(&c.name) {
            out.reject(
                &c.name,
                format!(
                    "cluster {:?} is a static cluster and cannot be replaced by CDS",
                    c.name
                ),
            );
            continue;
        }
        if state.clusters.get(&c.name).is_some_and(|e| *e.proto == c) {
            continue; // unchanged: keep the running cluster, its pools and outlier state
        }
        let cluster = match Cluster::from_proto(&c, stats) {
            Ok(c) => c,
            Err(e) => {
                out.reject(&c.name, format!("cluster {:?}: {e}", c.name));
                continue;
            }
        };
        let (eds_name, timeout) = match (&cluster.discovery, &c.eds_cluster_config) {
            (Discovery::Eds, eds) => {
                let svc = eds.as_ref().map(|e| e.service_name.as_str()).unwrap_or("");
                let name = if svc.is_empty() { &c.name } else { svc };
                let timeout = eds
                    .as_ref()
                    .and_then(|e| e.eds_config.as_ref())
                    .map(initial_fetch_timeout)
                    .unwrap_or(Some(DEFAULT_INITIAL_FETCH_TIMEOUT));
                (Some(name.to_string()), timeout)
            }
            _ => (None, None),
        };
        if let Some(cla) = eds_name.as_ref().and_then(|n| state.endpoints.get(n)) {
            // Validated when the assignment was accepted; the hosts of the version being
            // replaced carry over (outlier state, request counts).
            let keep = state
                .clusters
                .get(&c.name)
                .map(|e| e.cluster.hosts().all.clone())
                .unwrap_or_default();
            if let Ok(h) = hosts(&cla.proto, &keep) {
                cluster.set_hosts(h);
            }
        }
        changed.push(ClusterEntry {
            proto: Arc::new(c),
            cluster,
            eds_name,
            warming: Warming::new(timeout),
            meta: Meta::now(&version),
        });
    }
    let removed = removals(&state.clusters, upd, &seen);
    let any = !changed.is_empty() || !removed.is_empty();
    for e in changed {
        // DNS clusters start resolving once accepted (a rejected one is just dropped).
        let _ = e.cluster.start();
        state.clusters.insert(e.proto.name.clone(), e);
    }
    for n in removed {
        state.clusters.remove(&n);
    }
    any
}

fn accept_endpoints(
    state: &mut XdsState,
    upd: &Update,
    current: &Snapshot,
    out: &mut Outcome,
) -> bool {
    let (decoded, _) = decode_all::<ClusterLoadAssignment>(
        upd,
        "cluster load assignment",
        |c| &c.cluster_name,
        out,
    );
    let mut changed = Vec::new();
    for (cla, version) in decoded {
        if let Err(e) = hosts(&cla, &[]) {
            let n = &cla.cluster_name;
            out.reject(n, format!("cluster load assignment {n:?}: {e}"));
            continue;
        }
        if state
            .endpoints
            .get(&cla.cluster_name)
            .is_some_and(|e| *e.proto == cla)
        {
            continue;
        }
        changed.push((cla, version));
    }
    let removed: Vec<String> = upd
        .removed
        .iter()
        .filter(|n| state.endpoints.contains_key(*n))
        .cloned()
        .collect();
    let any = !changed.is_empty() || !removed.is_empty();
    if !any {
        return false;
    }
    let targets = eds_index(state, current);
    let set = |name: &str, cla: Option<&ClusterLoadAssignment>| {
        for c in targets.get(name).into_iter().flatten() {
            let new = match cla {
                Some(cla) => hosts(cla, &c.hosts().all).unwrap_or_default(),
                None => Vec::new(),
            };
            c.set_hosts(new);
        }
    };
    for n in removed {
        state.endpoints.remove(&n);
        set(&n, None);
    }
    for (cla, version) in changed {
        set(&cla.cluster_name, Some(&cla));
        let entry = EndpointEntry {
            proto: Arc::new(cla),
            meta: Meta::now(&version),
        };
        state
            .endpoints
            .insert(entry.proto.cluster_name.clone(), entry);
    }
    true
}

/// EDS name → every cluster that reads it: the accepted ones, and older versions still serving
/// in the current snapshot (they get the new endpoints too until they are replaced).
fn eds_index(state: &XdsState, current: &Snapshot) -> HashMap<String, Vec<Arc<Cluster>>> {
    let mut index: HashMap<String, Vec<Arc<Cluster>>> = HashMap::new();
    for c in state.clusters.values() {
        if let Some(n) = &c.eds_name {
            index.entry(n.clone()).or_default().push(c.cluster.clone());
        }
    }
    for c in current.clusters.values() {
        if c.discovery == Discovery::Eds {
            let v = index.entry(eds_name(&c.proto).to_string()).or_default();
            if !v.iter().any(|t| Arc::ptr_eq(t, c)) {
                v.push(c.clone());
            }
        }
    }
    index
}

fn eds_name(c: &cpb::Cluster) -> &str {
    match &c.eds_cluster_config {
        Some(e) if !e.service_name.is_empty() => &e.service_name,
        _ => &c.name,
    }
}

fn accept_listeners(
    state: &mut XdsState,
    upd: &Update,
    statics: &Statics,
    out: &mut Outcome,
) -> bool {
    let (decoded, seen) = decode_all::<lpb::Listener>(upd, "listener", |l| &l.name, out);
    let mut changed = Vec::new();
    for (l, version) in decoded {
        if statics.is_static_listener(&l.name) {
            out.reject(
                &l.name,
                format!(
                    "listener {:?} is a static listener and cannot be replaced by LDS",
                    l.name
                ),
            );
            continue;
        }
        if state.listeners.get(&l.name).is_some_and(|e| *e.proto == l) {
            continue; // unchanged: keeps its socket and connections
        }
        let compiled = ListenerConfig::from_proto(&l).and_then(|c| Ok((c, rds_of(&l)?)));
        let (mut config, (rds, timeout)) = match compiled {
            Ok(x) => x,
            Err(e) => {
                out.reject(&l.name, format!("listener {:?}: {e}", l.name));
                continue;
            }
        };
        // Connections on the chains this version keeps must not drain (Envoy's in-place
        // filter chain update): it takes over their drain signals.
        if let Some(old) = state.listeners.get(&l.name) {
            config.carry_drains_from(&old.config);
        }
        changed.push(ListenerEntry {
            proto: Arc::new(l),
            config: Arc::new(config),
            rds,
            warming: Warming::new(timeout),
            meta: Meta::now(&version),
        });
    }
    let removed = removals(&state.listeners, upd, &seen);
    let any = !changed.is_empty() || !removed.is_empty();
    for e in changed {
        state.listeners.insert(e.proto.name.clone(), e);
    }
    for n in removed {
        state.listeners.remove(&n);
    }
    any
}

/// The RDS names (with stat prefixes) of every HCM in a listener, and the shortest RDS
/// `initial_fetch_timeout` among them (`None` = wait forever).
type RdsRefs = (Vec<(String, String)>, Option<Duration>);

fn rds_of(l: &lpb::Listener) -> Result<RdsRefs, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut timeout: Option<Option<Duration>> = None;
    for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
        for f in &chain.filters {
            let Some(lpb::filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                continue;
            };
            if any.type_url != <hpb::HttpConnectionManager as prost::Name>::type_url() {
                continue;
            }
            let h: hpb::HttpConnectionManager = decode::unpack(any)?;
            if let Some(hpb::http_connection_manager::RouteSpecifier::Rds(r)) = &h.route_specifier {
                if r.route_config_name.is_empty() {
                    return Err("rds without route_config_name".into());
                }
                let t = r
                    .config_source
                    .as_ref()
                    .map(initial_fetch_timeout)
                    .unwrap_or(Some(DEFAULT_INITIAL_FETCH_TIMEOUT));
                timeout = Some(match (timeout.flatten(), t) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                });
                if !out.iter().any(|(n, _)| *n == r.route_config_name) {
                    out.push((r.route_config_name.clone(), h.stat_prefix.clone()));
                }
            }
        }
    }
    Ok((out, timeout.flatten()))
}

fn accept_routes(state: &mut XdsState, upd: &Update, out: &mut Outcome) -> bool {
    let (decoded, _) =
        decode_all::<RouteConfiguration>(upd, "route configuration", |r| &r.name, out);
    let mut changed = Vec::new();
    for (r, version) in decoded {
        if state.routes.get(&r.name).is_some_and(|e| *e.proto == r) {
            continue;
        }
        let config = match RouteConfig::from_proto(&r) {
            Ok(c) => c,
            Err(e) => {
                out.reject(&r.name, format!("route configuration {:?}: {e}", r.name));
                continue;
            }
        };
        changed.push(RouteEntry {
            proto: Arc::new(r),
            config: Arc::new(config),
            meta: Meta::now(&version),
        });
    }
    let removed: Vec<String> = upd
        .removed
        .iter()
        .filter(|n| state.routes.contains_key(*n))
        .cloned()
        .collect();
    let any = !changed.is_empty() || !removed.is_empty();
    for e in changed {
        state.routes.insert(e.proto.name.clone(), e);
    }
    for n in removed {
        state.routes.remove(&n);
    }
    any
}

/// Counts of a built snapshot, for the manager gauges.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// Clusters waiting for endpoints.
    pub warming_clusters: usize,
    /// Listeners waiting for routes.
    pub warming_listeners: usize,
}

/// The next snapshot: statics, then every warm dynamic resource. A cold resource that has an
/// older version in `prev` keeps serving that version until the new one warms.
pub fn build(state: &XdsState, statics: &Statics, prev: &Snapshot) -> (Snapshot, Counts) {
    let mut counts = Counts::default();
    let mut clusters = statics.clusters.clone();
    for (name, e) in &state.clusters {
        if state.cluster_warm(e) {
            clusters.insert(name.clone(), e.cluster.clone());
        } else {
            counts.warming_clusters += 1;
            if let Some(old) = prev.clusters.get(name) {
                clusters.insert(name.clone(), old.clone());
            }
        }
    }
    let mut listeners = statics.listeners.clone();
    for (name, e) in &state.listeners {
        if state.listener_warm(e) {
            listeners.push(e.config.clone());
        } else {
            counts.warming_listeners += 1;
            if let Some(old) = prev
                .listeners
                .iter()
                .find(|l| l.name == *name && !statics.is_static_listener(name))
            {
                listeners.push(old.clone());
            }
        }
    }
    let routes = state
        .routes
        .iter()
        .map(|(n, e)| (n.clone(), e.config.clone()))
        .collect();
    // Fields the static half may add later keep their defaults until xDS fills them.
    #[allow(clippy::needless_update)]
    let snap = Snapshot {
        clusters,
        listeners,
        routes,
        bootstrap: statics.bootstrap.clone(),
        ..Default::default()
    };
    (snap, counts)
}
