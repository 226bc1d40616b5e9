//! The dynamic half of `/config_dump`, in the shape `istioctl proxy-config` reads:
//! `dynamic_active_clusters`, `dynamic_warming_clusters`, `dynamic_listeners`,
//! `dynamic_route_configs` and `dynamic_endpoint_configs`, each with `version_info` and
//! `last_updated`.
//!
//! The client publishes a [`View`] of what it accepted after every update; [`augment`] rewrites
//! the admin's static-only dump with it, so the admin needs one call and no xDS knowledge.

use super::state::{Meta, XdsState};
use super::Kind;
use crate::admin::rfc3339;
use crate::config::decode::to_json;
use crate::config::ConfigStore;
use crate::server::Server;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

/// One accepted resource.
#[derive(Debug, Clone)]
pub struct Res<P> {
    /// Version and update time.
    pub meta: Meta,
    /// Serving (`false`: warming).
    pub warm: bool,
    /// The proto.
    pub proto: Arc<P>,
}

/// What the client has accepted, by name.
#[derive(Debug, Default)]
pub struct View {
    /// Last accepted `version_info` per kind (index [`Kind::idx`]).
    pub versions: [String; 4],
    /// Clusters.
    pub clusters: BTreeMap<String, Res<Cluster>>,
    /// Endpoints.
    pub endpoints: BTreeMap<String, Res<ClusterLoadAssignment>>,
    /// Listeners.
    pub listeners: BTreeMap<String, Res<Listener>>,
    /// Route configurations.
    pub routes: BTreeMap<String, Res<RouteConfiguration>>,
}

impl View {
    /// Take the view of `state`.
    pub fn of(state: &XdsState) -> Self {
        fn res<P>(meta: &Meta, warm: bool, proto: Arc<P>) -> Res<P> {
            Res {
                meta: meta.clone(),
                warm,
                proto,
            }
        }
        View {
            versions: std::array::from_fn(|i| state.types[i].version.clone()),
            clusters: state
                .clusters
                .iter()
                .map(|(n, e)| {
                    let r = res(&e.meta, state.cluster_warm(e), e.proto.clone());
                    (n.clone(), r)
                })
                .collect(),
            endpoints: state
                .endpoints
                .iter()
                .map(|(n, e)| (n.clone(), res(&e.meta, true, e.proto.clone())))
                .collect(),
            listeners: state
                .listeners
                .iter()
                .map(|(n, e)| {
                    let r = res(&e.meta, state.listener_warm(e), e.proto.clone());
                    (n.clone(), r)
                })
                .collect(),
            routes: state
                .routes
                .iter()
                .map(|(n, e)| (n.clone(), res(&e.meta, true, e.proto.clone())))
                .collect(),
        }
    }
}

type Registry = Mutex<Vec<(Weak<ConfigStore>, Arc<View>)>>;

/// Views by config store (one per server); dead servers are pruned on publish.
static VIEWS: Registry = Mutex::new(Vec::new());

/// Publish the view of the server owning `store`.
pub fn publish(store: &Arc<ConfigStore>, view: View) {
    let mut all = VIEWS.lock().unwrap();
    all.retain(|(s, _)| s.strong_count() > 0 && !std::ptr::eq(s.as_ptr(), Arc::as_ptr(store)));
    all.push((Arc::downgrade(store), Arc::new(view)));
}

/// The last published view of a server, if it runs an xDS client.
pub fn view(server: &Server) -> Option<Arc<View>> {
    let all = VIEWS.lock().unwrap();
    all.iter()
        .find(|(s, _)| std::ptr::eq(s.as_ptr(), Arc::as_ptr(&server.store)))
        .map(|(_, v)| v.clone())
}

fn typed<M: prost::Message + prost::Name>(m: &M) -> Value {
    let mut v = to_json(m);
    if let Value::Object(o) = &mut v {
        o.insert("@type".into(), Value::String(M::type_url()));
    }
    v
}

fn entry<P: prost::Message + prost::Name>(key: &str, r: &Res<P>) -> Value {
    json!({"version_info": r.meta.version, key: typed(&*r.proto), "last_updated": rfc3339(r.meta.last_updated)})
}

/// Move the xDS resources of an admin `/config_dump` out of its `static_*` lists into Envoy's
/// `dynamic_*` sections. A server without an xDS client gets `dump` back unchanged.
pub fn augment(server: &Server, mut dump: Value, include_eds: bool) -> Value {
    let Some(v) = view(server) else {
        return dump;
    };
    let Some(configs) = dump.get_mut("configs").and_then(Value::as_array_mut) else {
        return dump;
    };
    for c in configs.iter_mut() {
        let Some(o) = c.as_object_mut() else { continue };
        let ty = o
            .get("@type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        match ty.rsplit('.').next().unwrap_or("") {
            "ClustersConfigDump" => {
                drop_static(o, "static_clusters", &["cluster", "name"], |n| {
                    v.clusters.contains_key(n)
                });
                o.insert("version_info".into(), json!(v.versions[Kind::Cds.idx()]));
                let (active, warming): (Vec<_>, Vec<_>) = v.clusters.values().partition(|r| r.warm);
                let list = |rs: Vec<&Res<Cluster>>| -> Vec<Value> {
                    rs.into_iter().map(|r| entry("cluster", r)).collect()
                };
                o.insert("dynamic_active_clusters".into(), json!(list(active)));
                o.insert("dynamic_warming_clusters".into(), json!(list(warming)));
            }
            "EndpointsConfigDump" if include_eds => {
                drop_static(
                    o,
                    "static_endpoint_configs",
                    &["endpoint_config", "cluster_name"],
                    |n| v.endpoints.contains_key(n),
                );
                let eps: Vec<Value> = v
                    .endpoints
                    .values()
                    .map(|r| entry("endpoint_config", r))
                    .collect();
                o.insert("dynamic_endpoint_configs".into(), json!(eps));
            }
            "ListenersConfigDump" => {
                drop_static(o, "static_listeners", &["listener", "name"], |n| {
                    v.listeners.contains_key(n)
                });
                o.insert("version_info".into(), json!(v.versions[Kind::Lds.idx()]));
                let ls: Vec<Value> = v
                    .listeners
                    .iter()
                    .map(|(n, r)| {
                        let state = if r.warm {
                            "active_state"
                        } else {
                            "warming_state"
                        };
                        json!({"name": n, state: entry("listener", r)})
                    })
                    .collect();
                o.insert("dynamic_listeners".into(), json!(ls));
            }
            "RoutesConfigDump" => {
                let rs: Vec<Value> = v
                    .routes
                    .values()
                    .map(|r| entry("route_config", r))
                    .collect();
                o.insert("dynamic_route_configs".into(), json!(rs));
            }
            _ => {}
        }
    }
    dump
}

/// Remove the entries of `o[list]` whose name (at `path`) is dynamic.
fn drop_static(
    o: &mut Map<String, Value>,
    list: &str,
    path: &[&str],
    dynamic: impl Fn(&str) -> bool,
) {
    if let Some(Value::Array(items)) = o.get_mut(list) {
        items.retain(|i| {
            let name = path
                .iter()
                .try_fold(i, |v, k| v.get(*k))
                .and_then(Value::as_str);
            !name.is_some_and(&dynamic)
        });
    }
}
