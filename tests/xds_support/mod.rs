//! Fixtures and clients for tests/xds_server.rs and tests/xds_replay*.rs: Bookinfo-shaped
//! resources as Istio 1.10 writes them (sidecar contract §5/§6), real tonic ADS clients for
//! SotW and delta over TCP and unix sockets, and the shared vectors.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient as Client;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use mosnctl::xds::{
    proto, Cache, Listen, Server, ServerHandle, Snapshot, StreamStatus, TypeStatus,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Streaming;

/// Generous: only there so a broken server fails the test instead of hanging it.
pub const WAIT: Duration = Duration::from_secs(30);
pub const REVIEWS: &str = "reviews.default.svc.cluster.local";
pub const NODE: &str = "sidecar~10.0.0.1~productpage-v1-1.default~default.svc.cluster.local";

pub fn subset(s: &str) -> String {
    format!("outbound|9080|{s}|{REVIEWS}")
}

/// The four reviews clusters in name order, the order the server sends them in.
pub fn all_subsets() -> Vec<String> {
    let mut v: Vec<String> = ["", "v1", "v2", "v3"].iter().map(|s| subset(s)).collect();
    v.sort();
    v
}

// ---------- Bookinfo-shaped resources (contract §5/§6), written as Istio 1.10 writes them ----------

pub fn cluster_json(name: &str, timeout: &str) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": name, "type": "EDS", "connect_timeout": timeout,
        "eds_cluster_config": {"service_name": name,
            "eds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}},
        "filters": [{"name": "istio.metadata_exchange", "typed_config": {
            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
            "type_url": "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
            "value": {"protocol": "istio-peer-exchange"}}}]
    })
}

pub fn cla_json(name: &str, ports: &[u16]) -> Value {
    let eps: Vec<Value> = ports
        .iter()
        .map(|p| json!({"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}))
        .collect();
    json!({"@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
           "cluster_name": name, "endpoints": [{"lb_endpoints": eps}]})
}

pub fn listener_json(stat_prefix: &str) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": "0.0.0.0_9080",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 9080}},
        "deprecated_v1": {"bind_to_port": false},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": stat_prefix,
                "rds": {"route_config_name": "9080", "config_source":
                    {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}},
                "http_filters": [
                    {"name": "istio.stats", "typed_config": {
                        "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                        "type_url": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                        "value": {"config": {"root_id": "stats_outbound"}}}},
                    {"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]
    })
}

pub fn route_json(to: &str) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        "name": "9080", "validate_clusters": false,
        "virtual_hosts": [{"name": format!("{REVIEWS}:9080"),
            "domains": [REVIEWS, format!("{REVIEWS}:9080"), "reviews", "reviews:9080"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": subset(to), "timeout": "0s"}}]}]
    })
}

pub fn secret_json() -> Value {
    json!({"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
           "name": "default", "tls_certificate": {"certificate_chain": {"inline_string": "[redacted]"}}})
}

/// Base plus v1/v2/v3 clusters, their CLAs, listener 0.0.0.0_9080 and route "9080" → `to`.
pub fn bookinfo(to: &str) -> Snapshot {
    let mut s = Snapshot::new();
    for (i, sub) in ["", "v1", "v2", "v3"].iter().enumerate() {
        s = s.with_json(&cluster_json(&subset(sub), "10s")).unwrap();
        let port = 9080 + i as u16;
        s = s.with_json(&cla_json(&subset(sub), &[port])).unwrap();
    }
    s.with_json(&listener_json("outbound_0.0.0.0_9080"))
        .unwrap()
        .with_json(&route_json(to))
        .unwrap()
        .with_json(&secret_json())
        .unwrap()
}

pub fn only(type_url: &str, resources: &[Value]) -> Snapshot {
    let mut s = Snapshot::new().with(type_url, vec![]);
    for r in resources {
        s = s.with_json(r).unwrap();
    }
    s
}

// ---------- clients ----------

pub async fn tcp_channel(addr: &Listen) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

pub async fn unix_channel(path: &Path) -> Channel {
    let path = path.to_path_buf();
    Endpoint::from_static("http://xds.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .unwrap()
}

pub fn client(ch: Channel) -> Client<Channel> {
    Client::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// A SotW ADS stream as Envoy drives it.
pub struct Sotw {
    pub tx: mpsc::Sender<DiscoveryRequest>,
    pub rx: Streaming<DiscoveryResponse>,
    pub first: bool,
}

impl Sotw {
    pub async fn open(ch: Channel) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let resp = client(ch)
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap();
        Sotw {
            tx,
            rx: resp.into_inner(),
            first: true,
        }
    }

    pub async fn send(&mut self, mut req: DiscoveryRequest) {
        if std::mem::take(&mut self.first) {
            req.node = Some(Node {
                id: NODE.into(),
                cluster: "productpage.default".into(),
                ..Default::default()
            });
        }
        self.tx.send(req).await.unwrap();
    }

    pub async fn recv(&mut self) -> DiscoveryResponse {
        let msg = tokio::time::timeout(WAIT, self.rx.message()).await;
        msg.expect("no response in time")
            .unwrap()
            .expect("stream ended")
    }

    pub async fn subscribe(&mut self, type_url: &str, names: &[&str]) -> DiscoveryResponse {
        self.send(DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await;
        let r = self.recv().await;
        assert_eq!(r.type_url, type_url);
        r
    }

    pub async fn ack(&mut self, r: &DiscoveryResponse, names: &[&str]) {
        self.send(DiscoveryRequest {
            type_url: r.type_url.clone(),
            version_info: r.version_info.clone(),
            response_nonce: r.nonce.clone(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }

    pub async fn nack(&mut self, r: &DiscoveryResponse, kept: &str, error: &str) {
        self.send(DiscoveryRequest {
            type_url: r.type_url.clone(),
            version_info: kept.into(),
            response_nonce: r.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: error.into(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await;
    }
}

/// A delta ADS stream.
pub struct Delta {
    pub tx: mpsc::Sender<DeltaDiscoveryRequest>,
    pub rx: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    pub async fn open(ch: Channel) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let resp = client(ch)
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap();
        Delta {
            tx,
            rx: resp.into_inner(),
        }
    }

    pub async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        let msg = tokio::time::timeout(WAIT, self.rx.message()).await;
        msg.expect("no response in time")
            .unwrap()
            .expect("stream ended")
    }

    pub async fn change(&self, type_url: &str, sub: &[&str], unsub: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }

    pub async fn ack(&self, r: &DeltaDiscoveryResponse, error: Option<&str>) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            error_detail: error.map(|e| RpcStatus {
                code: 3,
                message: e.into(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await;
    }
}

pub fn names(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|a| proto::resource_name(a).unwrap())
        .collect()
}

pub fn delta_names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    r.resources.iter().map(|r| r.name.clone()).collect()
}

pub fn ts(streams: &[StreamStatus], id: u64, type_url: &str) -> TypeStatus {
    streams
        .iter()
        .find(|s| s.id == id)
        .map(|s| s.of(type_url))
        .unwrap_or_default()
}

pub async fn start(listen: &str, snap: Snapshot) -> ServerHandle {
    let cache = Cache::with_snapshot(snap).unwrap();
    Server::start(&listen.parse().unwrap(), cache)
        .await
        .unwrap()
}

pub fn vector(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/vectors")
        .join(rel)
}

pub fn endpoints_vector() -> Value {
    let path = vector("istio-master/configdump/endpoints-configdump.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The endpoint addresses per cluster of a dump's dynamic CLAs, read straight from the JSON.
pub fn vector_endpoints(dump: &Value) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out = std::collections::BTreeMap::new();
    for e in dump["configs"][0]["dynamic_endpoint_configs"]
        .as_array()
        .unwrap()
    {
        let cla = &e["endpoint_config"];
        let mut addrs = Vec::new();
        for group in cla["endpoints"].as_array().into_iter().flatten() {
            for lb in group["lb_endpoints"].as_array().into_iter().flatten() {
                let sa = &lb["endpoint"]["address"]["socket_address"];
                addrs.push(format!(
                    "{}:{}",
                    sa["address"].as_str().unwrap(),
                    sa["port_value"]
                ));
            }
        }
        addrs.sort();
        out.insert(cla["cluster_name"].as_str().unwrap().to_string(), addrs);
    }
    out
}

/// A Bookinfo sidecar dump: Istio 1.10.6's xdsproxy bootstrap, dynamic and static clusters,
/// a listener, a route, a secret, and the real EDS section.
pub fn full_dump() -> Value {
    let boot: Value = serde_json::from_str(
        &std::fs::read_to_string(vector("istio-1.10.6/bootstrap/xdsproxy_golden.json")).unwrap(),
    )
    .unwrap();
    let dynamic: Vec<Value> = ["", "v1", "v2", "v3"]
        .iter()
        .map(|s| json!({"version_info": "2021-11-01T00:00:00Z/7", "cluster": cluster_json(&subset(s), "10s")}))
        .collect();
    let statics = json!([{"cluster": boot["static_resources"]["clusters"][0].clone()}]);
    json!({"configs": [
        {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": boot},
        {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "version_info": "7",
         "static_clusters": statics, "dynamic_active_clusters": dynamic},
        {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "dynamic_listeners": [
            {"name": "0.0.0.0_9080", "active_state": {"version_info": "7", "listener": listener_json("outbound_0.0.0.0_9080")}}]},
        {"@type": "type.googleapis.com/envoy.admin.v3.ScopedRoutesConfigDump"},
        {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump", "dynamic_route_configs": [
            {"version_info": "7", "route_config": route_json("v1")}]},
        {"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump", "dynamic_active_secrets": [
            {"name": "default", "version_info": "7", "secret": secret_json()}]},
        endpoints_vector()["configs"][0].clone(),
    ]})
}

/// Kills the child if the test fails before it stops the child itself.
pub struct KillOnDrop(pub Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn mosnctl(args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_mosnctl"));
    c.args(args).env("RUST_LOG", "info");
    c
}
