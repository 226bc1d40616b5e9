//! The ADS client against a real gRPC ADS server inside the test (tonic + the envoy-types
//! server trait), over a unix socket and TCP, SotW and delta, with Bookinfo's reviews service
//! shaped as Istio 1.10 writes it and real HTTP upstreams for reviews v1, v2 and v3.

mod common;
use common::*;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const LISTENER: &str = "0.0.0.0_9080";
const HOST: &str = "reviews:9080";

// ---------------------------------------------------------------------------------------------
// The test's ADS server.

/// What the server serves: type URL → name → resource, and a version bumped on every change.
#[derive(Clone, Default)]
struct Cfg {
    version: u64,
    types: BTreeMap<String, BTreeMap<String, Any>>,
}

/// An ACK or NACK the server received, resolved to the config version it answers.
#[derive(Debug, Clone)]
struct Reply {
    type_url: String,
    version: u64,
    error: Option<String>,
}

struct Shared {
    cfg: watch::Sender<Cfg>,
    sotw: Mutex<Vec<DiscoveryRequest>>,
    delta: Mutex<Vec<DeltaDiscoveryRequest>>,
    nonces: Mutex<HashMap<String, (String, u64)>>,
    replies: Mutex<Vec<Reply>>,
    next_nonce: AtomicU64,
    /// Bumped to end every open stream with UNAVAILABLE.
    kill: watch::Sender<u64>,
    streams: AtomicUsize,
}

#[derive(Clone)]
struct Ads(Arc<Shared>);

type Out<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = Out<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Out<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        self.0.streams.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(sotw_stream(self.0.clone(), req.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        self.0.streams.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(delta_stream(self.0.clone(), req.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl Shared {
    fn nonce(&self, ty: &str, version: u64) -> String {
        let n = self.next_nonce.fetch_add(1, Ordering::SeqCst).to_string();
        let mut m = self.nonces.lock().unwrap();
        m.insert(n.clone(), (ty.to_string(), version));
        n
    }
    fn record(&self, nonce: &str, error: Option<&envoy_types::pb::google::rpc::Status>) {
        if let Some((ty, version)) = self.nonces.lock().unwrap().get(nonce).cloned() {
            self.replies.lock().unwrap().push(Reply {
                type_url: ty,
                version,
                error: error.map(|e| e.message.clone()),
            });
        }
    }
}

fn wildcard(ty: &str) -> bool {
    ty == CDS || ty == LDS
}

async fn sotw_stream(
    sh: Arc<Shared>,
    mut inb: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let (mut cfg_rx, mut kill) = (sh.cfg.subscribe(), sh.kill.subscribe());
    let mut subs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut last: BTreeMap<String, Vec<Any>> = BTreeMap::new();
    loop {
        tokio::select! {
            m = inb.message() => {
                let Ok(Some(req)) = m else { return };
                sh.record(&req.response_nonce, req.error_detail.as_ref());
                if req.response_nonce.is_empty() || subs.get(&req.type_url) != Some(&req.resource_names) {
                    last.remove(&req.type_url); // a new subscription is answered even if unchanged
                }
                subs.insert(req.type_url.clone(), req.resource_names.clone());
                sh.sotw.lock().unwrap().push(req);
            }
            r = cfg_rx.changed() => if r.is_err() { return },
            _ = kill.changed() => {
                let _ = tx.send(Err(Status::unavailable("server going away"))).await;
                return;
            }
        }
        let cfg = cfg_rx.borrow_and_update().clone();
        for (ty, names) in &subs {
            let res: Vec<Any> = cfg
                .types
                .get(ty)
                .into_iter()
                .flatten()
                .filter(|(n, _)| wildcard(ty) || names.contains(n))
                .map(|(_, a)| a.clone())
                .collect();
            if last.get(ty) == Some(&res) {
                continue;
            }
            last.insert(ty.clone(), res.clone());
            let resp = DiscoveryResponse {
                version_info: cfg.version.to_string(),
                resources: res,
                type_url: ty.clone(),
                nonce: sh.nonce(ty, cfg.version),
                ..Default::default()
            };
            if tx.send(Ok(resp)).await.is_err() {
                return;
            }
        }
    }
}

fn digest(a: &Any) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    a.value.hash(&mut h);
    format!("{:x}", h.finish())
}

async fn delta_stream(
    sh: Arc<Shared>,
    mut inb: Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
) {
    let (mut cfg_rx, mut kill) = (sh.cfg.subscribe(), sh.kill.subscribe());
    // type → (wildcard, names); type → name → version the client holds.
    let mut subs: BTreeMap<String, (bool, BTreeSet<String>)> = BTreeMap::new();
    let mut sent: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    loop {
        tokio::select! {
            m = inb.message() => {
                let Ok(Some(req)) = m else { return };
                sh.record(&req.response_nonce, req.error_detail.as_ref());
                let ty = req.type_url.clone();
                if !subs.contains_key(&ty) {
                    let wild = wildcard(&ty) && req.resource_names_subscribe.is_empty();
                    subs.insert(ty.clone(), (wild, BTreeSet::new()));
                    sent.insert(ty.clone(), req.initial_resource_versions.clone().into_iter().collect());
                }
                let (wild, names) = subs.get_mut(&ty).unwrap();
                for n in &req.resource_names_subscribe {
                    if n == "*" { *wild = true } else { names.insert(n.clone()); }
                }
                for n in &req.resource_names_unsubscribe {
                    names.remove(n);
                    sent.get_mut(&ty).unwrap().remove(n);
                }
                sh.delta.lock().unwrap().push(req);
            }
            r = cfg_rx.changed() => if r.is_err() { return },
            _ = kill.changed() => {
                let _ = tx.send(Err(Status::unavailable("server going away"))).await;
                return;
            }
        }
        let cfg = cfg_rx.borrow_and_update().clone();
        for (ty, (wild, names)) in &subs {
            let have = sent.entry(ty.clone()).or_default();
            let cur: BTreeMap<&String, &Any> = cfg
                .types
                .get(ty)
                .into_iter()
                .flatten()
                .filter(|(n, _)| *wild || names.contains(*n))
                .collect();
            let mut resources = Vec::new();
            for (n, a) in &cur {
                let v = digest(a);
                if have.get(*n) != Some(&v) {
                    have.insert((*n).clone(), v.clone());
                    resources.push(Resource {
                        name: (*n).clone(),
                        version: v,
                        resource: Some((*a).clone()),
                        ..Default::default()
                    });
                }
            }
            let removed: Vec<String> = have
                .keys()
                .filter(|n| !cur.contains_key(n))
                .cloned()
                .collect();
            have.retain(|n, _| cur.contains_key(n));
            if resources.is_empty() && removed.is_empty() {
                continue;
            }
            let resp = DeltaDiscoveryResponse {
                system_version_info: cfg.version.to_string(),
                resources,
                removed_resources: removed,
                type_url: ty.clone(),
                nonce: sh.nonce(ty, cfg.version),
                ..Default::default()
            };
            if tx.send(Ok(resp)).await.is_err() {
                return;
            }
        }
    }
}

/// Serve one HTTP/2 connection with the ADS service (plain hyper: tonic's router is not built).
fn serve_conn<S>(svc: AggregatedDiscoveryServiceServer<Ads>, io: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let mut svc = svc.clone();
            async move { tower_service::Service::call(&mut svc, req).await }
        });
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
            .await;
    });
}

impl Ads {
    fn new() -> Self {
        Ads(Arc::new(Shared {
            cfg: watch::Sender::new(Cfg::default()),
            sotw: Mutex::default(),
            delta: Mutex::default(),
            nonces: Mutex::default(),
            replies: Mutex::default(),
            next_nonce: AtomicU64::new(1),
            kill: watch::Sender::new(0),
            streams: AtomicUsize::new(0),
        }))
    }

    fn service(&self) -> AggregatedDiscoveryServiceServer<Ads> {
        AggregatedDiscoveryServiceServer::new(self.clone()).max_decoding_message_size(64 << 20)
    }

    /// Serve on a fresh 127.0.0.1 port.
    async fn serve_tcp(&self) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let svc = self.service();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                serve_conn(svc.clone(), s);
            }
        });
        addr
    }

    /// Serve on a unix socket until `stop` fires.
    fn serve_unix(&self, path: &std::path::Path, mut stop: tokio::sync::oneshot::Receiver<()>) {
        let _ = std::fs::remove_file(path);
        let l = tokio::net::UnixListener::bind(path).unwrap();
        let svc = self.service();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    a = l.accept() => match a {
                        Ok((s, _)) => serve_conn(svc.clone(), s),
                        Err(_) => return,
                    },
                    _ = &mut stop => return,
                }
            }
        });
    }

    /// Replace the resources of one type; returns the new config version.
    fn put(&self, ty: &str, resources: Vec<(String, Any)>) -> u64 {
        self.0.cfg.send_modify(|c| {
            c.version += 1;
            c.types
                .insert(ty.to_string(), resources.into_iter().collect());
        });
        self.0.cfg.borrow().version
    }

    /// Wait for the client's ACK (`Ok`) or NACK (`Err(error_detail)`) of `ty` at `version` or later.
    async fn reply(&self, ty: &str, version: u64) -> Result<(), String> {
        let deadline = Instant::now() + HANG;
        loop {
            let found = self
                .0
                .replies
                .lock()
                .unwrap()
                .iter()
                .find(|r| r.type_url == ty && r.version >= version)
                .cloned();
            if let Some(r) = found {
                return r.error.map_or(Ok(()), Err);
            }
            assert!(
                Instant::now() < deadline,
                "no reply to {ty} version {version}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// End every open stream (the client must reconnect and re-subscribe).
    fn kill_streams(&self) {
        self.0.kill.send_modify(|k| *k += 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Bookinfo's reviews, as Istio 1.10 translates it (sidecar-contract §6).

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

fn ads_source(timeout: &str) -> Value {
    json!({"ads": {}, "initial_fetch_timeout": timeout, "resource_api_version": "V3"})
}

fn reviews(subset: &str) -> String {
    format!("outbound|9080|{subset}|reviews.default.svc.cluster.local")
}

fn eds_cluster(name: &str, timeout: &str, extra: Value) -> (String, Any) {
    let mut c = json!({"name": name, "type": "EDS", "connect_timeout": "10s",
        "eds_cluster_config": {"eds_config": ads_source(timeout), "service_name": name},
        "circuit_breakers": {"thresholds": [{"max_connections": 4294967295u32, "max_pending_requests": 4294967295u32,
            "max_requests": 4294967295u32, "max_retries": 4294967295u32}]}});
    mosn::config::merge(&mut c, extra);
    pack::<envoy_types::pb::envoy::config::cluster::v3::Cluster>(c)
}

/// CDS: the unsubsetted reviews cluster, v1..v3 subsets, and PassthroughCluster.
fn clusters(timeout: &str) -> Vec<(String, Any)> {
    let mut v: Vec<_> = ["", "v1", "v2", "v3"]
        .iter()
        .map(|s| eds_cluster(&reviews(s), timeout, json!({})))
        .collect();
    v.push(pack::<envoy_types::pb::envoy::config::cluster::v3::Cluster>(json!({
        "name": "PassthroughCluster", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "10s"})));
    v
}

fn cla(name: &str, addrs: &[SocketAddr]) -> (String, Any) {
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

/// EDS: each subset holds only its pod; the unsubsetted cluster holds all three.
fn endpoints(ups: &[Upstream]) -> Vec<(String, Any)> {
    let all: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let mut v = vec![cla(&reviews(""), &all)];
    for (i, s) in ["v1", "v2", "v3"].iter().enumerate() {
        v.push(cla(&reviews(s), &[ups[i].addr]));
    }
    v
}

/// LDS: Istio's `0.0.0.0_9080` HCM with RDS "9080", bound here on 127.0.0.1 port 0.
fn listeners() -> Vec<(String, Any)> {
    vec![
        pack::<envoy_types::pb::envoy::config::listener::v3::Listener>(json!({
        "name": LISTENER, "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "traffic_direction": "OUTBOUND",
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "outbound_0.0.0.0_9080",
            "rds": {"config_source": ads_source("0s"), "route_config_name": "9080"},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config":
                {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]})),
    ]
}

/// The routing a Bookinfo VirtualService asks for.
#[derive(Clone, Copy, Debug)]
enum Vs {
    Default,
    AllV1,
    V1V3,
    TestV2,
}

fn route_to(c: &str) -> Value {
    json!({"cluster": c, "timeout": "0s", "max_grpc_timeout": "0s",
        "retry_policy": {"retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
            "num_retries": 2, "retriable_status_codes": [503], "host_selection_retry_max_attempts": "5"}})
}

/// RDS "9080" for a VirtualService (or a malformed one: a domain in two virtual hosts).
fn route(vs: Vs, malformed: bool) -> Vec<(String, Any)> {
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
    let mut vhosts =
        vec![json!({"name": format!("{fqdn}:9080"), "domains": domains, "routes": routes})];
    vhosts.push(json!({"name": "allow_any", "domains": if malformed { json!(["*", "reviews"]) } else { json!(["*"]) },
        "routes": [{"name": "allow_any", "match": {"prefix": "/"}, "route": {"cluster": "PassthroughCluster", "timeout": "0s"}}]}));
    vec![pack::<
        envoy_types::pb::envoy::config::route::v3::RouteConfiguration,
    >(json!({
        "name": "9080", "virtual_hosts": vhosts, "validate_clusters": false}))]
}

// ---------------------------------------------------------------------------------------------
// The proxy under test.

/// A bootstrap like pilot-agent's: ADS over the `xds-grpc` cluster (a pipe or TCP).
fn bootstrap(xds: Value, delta: bool) -> Value {
    json!({
        "node": {"id": "sidecar~10.1.1.1~productpage-v1-123.default~default.svc.cluster.local",
                 "cluster": "productpage.default", "metadata": {"ISTIO_VERSION": "1.10.6"}},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "lds_config": ads_source("0s"), "cds_config": ads_source("0s"),
            "ads_config": {"api_type": if delta { "DELTA_GRPC" } else { "GRPC" }, "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]}},
        "static_resources": {"clusters": [{"name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s",
            "http2_protocol_options": {},
            "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": xds}}]}]}}]}
    })
}

fn tcp(a: SocketAddr) -> Value {
    json!({"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}})
}

/// Start the proxy in-process with the ADS client.
async fn start_proxy(xds: Value, delta: bool) -> Proxy {
    let p = proxy(bootstrap(xds, delta)).await;
    mosn::xds::start(&p.server).expect("ADS client starts");
    p
}

/// Wait (bounded) until the proxy is LIVE with the dynamic listener bound; its address.
async fn wait_live(p: &Proxy) -> SocketAddr {
    let deadline = Instant::now() + HANG;
    loop {
        let bound = p
            .server
            .listeners
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.config.name == LISTENER)
            .map(|l| l.local_addr);
        if let (Some(a), "LIVE") = (bound, p.server.state_name()) {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "proxy not LIVE: {}",
            p.server.state_name()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Upstream names of `n` requests.
async fn send(addr: SocketAddr, n: usize, headers: &[(&str, &str)]) -> Vec<String> {
    let mut hs = vec![("host", HOST)];
    hs.extend_from_slice(headers);
    let mut out = Vec::new();
    for _ in 0..n {
        let r = get(addr, "/reviews/0", &hs).await;
        assert_eq!(r.status, 200, "{}", r.body);
        out.push(r.upstream());
    }
    out
}

fn count(v: &[String], name: &str) -> usize {
    v.iter().filter(|x| *x == name).count()
}

/// Serve Bookinfo, wait for LIVE, and check the four VirtualService routings in turn.
async fn bookinfo(ads: &Ads, p: &Proxy) -> SocketAddr {
    let addr = wait_live(p).await;
    assert!(p.stat("cluster_manager.cds.update_success") > 0);
    assert!(p.stat("listener_manager.lds.update_success") > 0);
    // Default: round robin over all three versions.
    let got = send(addr, 30, &[]).await;
    for v in ["v1", "v2", "v3"] {
        assert_eq!(count(&got, v), 10, "{got:?}");
    }
    // virtual-service-all-v1.
    let ver = ads.put(RDS, route(Vs::AllV1, false));
    ads.reply(RDS, ver).await.unwrap();
    assert_eq!(count(&send(addr, 20, &[]).await, "v1"), 20);
    // virtual-service-reviews-50-v3: binomial bounds.
    let ver = ads.put(RDS, route(Vs::V1V3, false));
    ads.reply(RDS, ver).await.unwrap();
    let got = send(addr, 200, &[]).await;
    assert_eq!(count(&got, "v1") + count(&got, "v3"), 200);
    assert!(
        within_binomial(count(&got, "v3"), 200, 0.5),
        "v3 {}",
        count(&got, "v3")
    );
    // virtual-service-reviews-test-v2: jason → v2, everyone else → v1.
    let ver = ads.put(RDS, route(Vs::TestV2, false));
    ads.reply(RDS, ver).await.unwrap();
    assert_eq!(
        count(&send(addr, 10, &[("end-user", "jason")]).await, "v2"),
        10
    );
    assert_eq!(
        count(&send(addr, 10, &[("end-user", "alice")]).await, "v1"),
        10
    );
    assert_eq!(count(&send(addr, 10, &[]).await, "v1"), 10);
    addr
}

async fn setup(ads: &Ads) -> Vec<Upstream> {
    let ups = vec![
        upstream("v1").await,
        upstream("v2").await,
        upstream("v3").await,
    ];
    ads.put(CDS, clusters("0s"));
    ads.put(EDS, endpoints(&ups));
    ads.put(LDS, listeners());
    ads.put(RDS, route(Vs::Default, false));
    ups
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_over_unix_socket_routes_bookinfo_and_acks() {
    let dir = std::env::temp_dir().join(format!("mosn-xds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("XDS");
    let ads = Ads::new();
    let (_stop, stop_rx) = tokio::sync::oneshot::channel();
    ads.serve_unix(&sock, stop_rx);
    let ups = setup(&ads).await;
    let p = start_proxy(json!({"pipe": {"path": sock.to_str().unwrap()}}), false).await;
    bookinfo(&ads, &p).await;
    drop(ups);

    let reqs = ads.0.sotw.lock().unwrap().clone();
    // Node on the first message only, with the bootstrap's identity.
    let node = reqs[0].node.as_ref().expect("node on the first request");
    assert_eq!(
        node.id,
        "sidecar~10.1.1.1~productpage-v1-123.default~default.svc.cluster.local"
    );
    assert_eq!(node.cluster, "productpage.default");
    assert!(node
        .metadata
        .as_ref()
        .unwrap()
        .fields
        .contains_key("ISTIO_VERSION"));
    assert!(reqs[1..].iter().all(|r| r.node.is_none()));
    // Order: CDS first; LDS only after EDS was answered (clusters warm).
    assert_eq!(reqs[0].type_url, CDS);
    let first = |t: &str| reqs.iter().position(|r| r.type_url == t).unwrap();
    assert!(first(EDS) < first(LDS) && first(LDS) < first(RDS));
    let mut eds: Vec<String> = reqs[first(EDS)].resource_names.clone();
    eds.sort();
    let mut want = ["", "v1", "v2", "v3"].map(reviews).to_vec();
    want.sort();
    assert_eq!(eds, want);
    assert_eq!(reqs[first(RDS)].resource_names, vec!["9080".to_string()]);
    // ACKs echo version_info and nonce.
    let ack = reqs.iter().rev().find(|r| r.type_url == RDS).unwrap();
    assert_eq!(ack.version_info, ads.0.cfg.borrow().version.to_string());
    assert!(!ack.response_nonce.is_empty() && ack.error_detail.is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_over_tcp_routes_bookinfo() {
    let ads = Ads::new();
    let addr = ads.serve_tcp().await;
    let ups = setup(&ads).await;
    let p = start_proxy(tcp(addr), true).await;
    bookinfo(&ads, &p).await;
    drop(ups);
    let reqs = ads.0.delta.lock().unwrap().clone();
    assert!(reqs[0].node.is_some() && reqs[1..].iter().all(|r| r.node.is_none()));
    assert_eq!(reqs[0].type_url, CDS);
    assert!(reqs.iter().all(|r| r.error_detail.is_none()));
    // Removing a subset cluster unsubscribes its endpoints.
    let mut cs = clusters("0s");
    cs.retain(|(n, _)| *n != reviews("v2"));
    let ver = ads.put(CDS, cs);
    ads.reply(CDS, ver).await.unwrap();
    let deadline = Instant::now() + HANG;
    while !ads
        .0
        .delta
        .lock()
        .unwrap()
        .iter()
        .any(|r| r.resource_names_unsubscribe == vec![reviews("v2")])
    {
        assert!(Instant::now() < deadline, "no EDS unsubscribe");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!p.server.store.load().clusters.contains_key(&reviews("v2")));
}

/// A malformed update is NACKed naming the resource; traffic keeps the last good config.
async fn nack(delta: bool) {
    let ads = Ads::new();
    let addr = ads.serve_tcp().await;
    let ups = setup(&ads).await;
    let p = start_proxy(tcp(addr), delta).await;
    let addr = wait_live(&p).await;
    let ver = ads.put(RDS, route(Vs::AllV1, false));
    ads.reply(RDS, ver).await.unwrap();
    let ver = ads.put(RDS, route(Vs::TestV2, true));
    let err = ads
        .reply(RDS, ver)
        .await
        .expect_err("malformed routes must be NACKed");
    assert!(err.contains("\"9080\"") && err.contains("reviews"), "{err}");
    assert_eq!(
        count(&send(addr, 10, &[("end-user", "jason")]).await, "v1"),
        10
    );
    let prefix = "http.outbound_0.0.0.0_9080.rds.9080";
    assert!(p.stat(&format!("{prefix}.update_rejected")) >= 1);
    // A malformed cluster: NACKed, the others keep serving.
    let mut cs = clusters("0s");
    cs.push(eds_cluster(
        "bad",
        "0s",
        json!({"lb_policy": "CLUSTER_PROVIDED"}),
    ));
    let ver = ads.put(CDS, cs);
    let err = ads.reply(CDS, ver).await.expect_err("bad cluster NACKed");
    assert!(err.contains("\"bad\""), "{err}");
    assert!(p.stat("cluster_manager.cds.update_rejected") >= 1);
    assert_eq!(count(&send(addr, 10, &[]).await, "v1"), 10);
    // A good update after the NACK is applied.
    let ver = ads.put(RDS, route(Vs::TestV2, false));
    ads.reply(RDS, ver).await.unwrap();
    assert_eq!(
        count(&send(addr, 5, &[("end-user", "jason")]).await, "v2"),
        5
    );
    drop(ups);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_nack_keeps_old_config() {
    nack(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_nack_keeps_old_config() {
    nack(true).await;
}

/// A config push every 100 ms (routes, endpoints, clusters) while clients send requests: not
/// one request may fail, and unchanged listeners keep their socket.
async fn updates_under_load(delta: bool) {
    let ads = Ads::new();
    let addr = ads.serve_tcp().await;
    let ups = setup(&ads).await;
    let p = start_proxy(tcp(addr), delta).await;
    let addr = wait_live(&p).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let r = get(addr, "/", &[("host", HOST)]).await;
                if r.status == 200 {
                    ok += 1
                } else {
                    failed.push((r.status, r.body))
                }
            }
            (ok, failed)
        }));
    }
    let vs = [Vs::AllV1, Vs::V1V3, Vs::Default, Vs::TestV2];
    let mut last = 0;
    for i in 0..30 {
        last = match i % 3 {
            0 => ads.put(RDS, route(vs[i / 3 % 4], false)),
            1 => {
                // Move v1 between one and two pods (v3's pod stands in).
                let mut eps = endpoints(&ups);
                if i % 2 == 1 {
                    eps[1] = cla(&reviews("v1"), &[ups[0].addr, ups[2].addr]);
                }
                ads.put(EDS, eps)
            }
            _ => {
                // A changed cluster (new pools) while requests are in flight.
                let mut cs = clusters("0s");
                cs[1] = eds_cluster(
                    &reviews("v1"),
                    "0s",
                    json!({"connect_timeout": format!("{}s", 5 + i)}),
                );
                ads.put(CDS, cs)
            }
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ads.reply(CDS, last).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let (ok, failed) = c.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        total += ok;
    }
    assert!(total > 0);
    assert!(ads
        .0
        .replies
        .lock()
        .unwrap()
        .iter()
        .all(|r| r.error.is_none()));
    // The listener never changed: still the same socket.
    assert_eq!(wait_live(&p).await, addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_updates_every_100ms_under_load() {
    updates_under_load(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_updates_every_100ms_under_load() {
    updates_under_load(true).await;
}
