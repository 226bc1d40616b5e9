//! Bookinfo's reviews service as Istio 1.10 translates it (sidecar-contract §6), as xDS
//! resources: clusters, endpoints, the `0.0.0.0_9080` listener and route configuration `9080`.

use super::common::Upstream;
use envoy_types::pb::google::protobuf::Any;
use serde_json::{json, Value};
use std::net::SocketAddr;

/// The outbound listener of reviews' port.
pub const LISTENER: &str = "0.0.0.0_9080";
/// The Host header an app uses for reviews.
pub const HOST: &str = "reviews:9080";

fn pack<M: prost::Message + prost::Name + Default>(v: Value) -> (String, Any) {
    let m: M = mosn::config::decode::from_json(&v, true).unwrap_or_else(|e| panic!("{e}: {v}"));
    let name = v["name"]
        .as_str()
        .or(v["cluster_name"].as_str())
        .unwrap()
        .to_string();
    (
        name,
        Any {
            type_url: M::type_url(),
            value: prost::Message::encode_to_vec(&m),
        },
    )
}

pub fn ads_source(timeout: &str) -> Value {
    json!({"ads": {}, "initial_fetch_timeout": timeout, "resource_api_version": "V3"})
}

pub fn reviews(subset: &str) -> String {
    format!("outbound|9080|{subset}|reviews.default.svc.cluster.local")
}

pub fn eds_cluster(name: &str, timeout: &str, extra: Value) -> (String, Any) {
    let mut c = json!({"name": name, "type": "EDS", "connect_timeout": "10s",
        "eds_cluster_config": {"eds_config": ads_source(timeout), "service_name": name},
        "circuit_breakers": {"thresholds": [{"max_connections": 4294967295u32, "max_pending_requests": 4294967295u32,
            "max_requests": 4294967295u32, "max_retries": 4294967295u32}]}});
    mosn::config::merge(&mut c, extra);
    pack::<envoy_types::pb::envoy::config::cluster::v3::Cluster>(c)
}

/// CDS: the unsubsetted reviews cluster, v1..v3 subsets, and PassthroughCluster.
pub fn clusters(timeout: &str) -> Vec<(String, Any)> {
    let mut v: Vec<_> = ["", "v1", "v2", "v3"]
        .iter()
        .map(|s| eds_cluster(&reviews(s), timeout, json!({})))
        .collect();
    v.push(pack::<envoy_types::pb::envoy::config::cluster::v3::Cluster>(json!({
        "name": "PassthroughCluster", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "10s"})));
    v
}

pub fn cla(name: &str, addrs: &[SocketAddr]) -> (String, Any) {
    let eps: Vec<Value> = addrs
        .iter()
        .map(|a| {
            json!({"endpoint": {"address": {"socket_address":
        {"address": a.ip().to_string(), "port_value": a.port()}}}, "load_balancing_weight": 1})
        })
        .collect();
    pack::<envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment>(json!({
        "cluster_name": name, "endpoints": [{"locality": {}, "lb_endpoints": eps, "load_balancing_weight": addrs.len().max(1)}]}))
}

/// A `ClusterLoadAssignment` from its JSON.
pub fn pack_cla(v: Value) -> (String, Any) {
    pack::<envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment>(v)
}

/// EDS: each subset holds only its pod; the unsubsetted cluster holds all three.
pub fn endpoints(ups: &[Upstream]) -> Vec<(String, Any)> {
    let all: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let mut v = vec![cla(&reviews(""), &all)];
    for (i, s) in ["v1", "v2", "v3"].iter().enumerate() {
        v.push(cla(&reviews(s), &[ups[i].addr]));
    }
    v
}

/// LDS: Istio's `0.0.0.0_9080` HCM with RDS "9080", bound here on 127.0.0.1 port 0.
pub fn listeners() -> Vec<(String, Any)> {
    vec![listener(LISTENER, "9080", "outbound_0.0.0.0_9080")]
}

/// An outbound HCM listener on 127.0.0.1 port 0 reading route configuration `rds`.
pub fn listener(name: &str, rds: &str, stat_prefix: &str) -> (String, Any) {
    listener_on(name, rds, stat_prefix, 0)
}

/// The same on a given port.
pub fn listener_on(name: &str, rds: &str, stat_prefix: &str, port: u16) -> (String, Any) {
    pack_listener(listener_json(name, rds, stat_prefix, port))
}

/// A cluster resource from JSON.
pub fn pack_cluster(v: Value) -> (String, Any) {
    pack::<envoy_types::pb::envoy::config::cluster::v3::Cluster>(v)
}

/// A listener resource from JSON.
pub fn pack_listener(v: Value) -> (String, Any) {
    pack::<envoy_types::pb::envoy::config::listener::v3::Listener>(v)
}

/// The JSON of [`listener_on`]'s listener: 127.0.0.1:`port`, routes from RDS `rds`.
pub fn listener_json(name: &str, rds: &str, stat_prefix: &str, port: u16) -> Value {
    json!({
        "name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "traffic_direction": "OUTBOUND",
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "rds": {"config_source": ads_source("0s"), "route_config_name": rds},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config":
                {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]})
}

/// The routing a Bookinfo VirtualService asks for.
#[derive(Clone, Copy, Debug)]
pub enum Vs {
    Default,
    AllV1,
    V1V3,
    TestV2,
}

pub fn route_to(c: &str) -> Value {
    json!({"cluster": c, "timeout": "0s", "max_grpc_timeout": "0s",
        "retry_policy": {"retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
            "num_retries": 2, "retriable_status_codes": [503], "host_selection_retry_max_attempts": "5"}})
}

/// RDS "9080" for a VirtualService (or a malformed one: a domain in two virtual hosts).
pub fn route(vs: Vs, malformed: bool) -> Vec<(String, Any)> {
    vec![route_config("9080", vs, malformed, Vec::new())]
}

/// Route configuration `name` for a VirtualService, with `extra` virtual hosts first.
pub fn route_config(name: &str, vs: Vs, malformed: bool, extra: Vec<Value>) -> (String, Any) {
    let m = json!({"prefix": "/"});
    let routes = match vs {
        Vs::Default => json!([{"name": "default", "match": m, "route": route_to(&reviews(""))}]),
        Vs::AllV1 => json!([{"match": m, "route": route_to(&reviews("v1"))}]),
        Vs::V1V3 => {
            let mut r = route_to("");
            r.as_object_mut().unwrap().remove("cluster");
            r["weighted_clusters"] = json!({"clusters": [{"name": reviews("v1"), "weight": 50}, {"name": reviews("v3"), "weight": 50}]});
            json!([{"match": m, "route": r}])
        }
        Vs::TestV2 => json!([
            {"match": {"prefix": "/", "headers": [{"name": "end-user", "exact_match": "jason"}]}, "route": route_to(&reviews("v2"))},
            {"match": m, "route": route_to(&reviews("v1"))}]),
    };
    let fqdn = "reviews.default.svc.cluster.local";
    let domains: Vec<String> = [
        fqdn,
        "reviews",
        "reviews.default",
        "reviews.default.svc",
        "reviews.default.svc.cluster",
    ]
    .iter()
    .flat_map(|d| [d.to_string(), format!("{d}:9080")])
    .collect();
    let mut vhosts = extra;
    vhosts.push(json!({"name": format!("{fqdn}:9080"), "domains": domains, "routes": routes}));
    vhosts.push(json!({"name": "allow_any", "domains": if malformed { json!(["*", "reviews"]) } else { json!(["*"]) },
        "routes": [{"name": "allow_any", "match": {"prefix": "/"}, "route": {"cluster": "PassthroughCluster", "timeout": "0s"}}]}));
    pack::<envoy_types::pb::envoy::config::route::v3::RouteConfiguration>(
        json!({"name": name, "virtual_hosts": vhosts, "validate_clusters": false}),
    )
}
