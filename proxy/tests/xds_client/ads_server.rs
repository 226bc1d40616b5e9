//! The test's ADS server: tonic's generated service on plain hyper HTTP/2 connections (TCP or
//! unix), SotW and delta, with a log of requests and of the ACKs/NACKs they carry.

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::common::HANG;

pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// What the server serves: type URL → name → resource, and a version bumped on every change.
#[derive(Clone, Default)]
pub struct Cfg {
    pub version: u64,
    pub types: BTreeMap<String, BTreeMap<String, Any>>,
}

/// An ACK or NACK the server received, resolved to the config version it answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub type_url: String,
    pub version: u64,
    pub error: Option<String>,
}

pub struct Shared {
    pub cfg: watch::Sender<Cfg>,
    pub sotw: Mutex<Vec<DiscoveryRequest>>,
    pub delta: Mutex<Vec<DeltaDiscoveryRequest>>,
    pub nonces: Mutex<HashMap<String, (String, u64)>>,
    pub replies: Mutex<Vec<Reply>>,
    pub next_nonce: AtomicU64,
    /// Bumped to end every open stream with UNAVAILABLE.
    pub kill: watch::Sender<u64>,
    pub streams: AtomicUsize,
}

#[derive(Clone)]
pub struct Ads(pub Arc<Shared>);

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
    let mut fresh: BTreeSet<String> = BTreeSet::new();
    loop {
        tokio::select! {
            m = inb.message() => {
                let Ok(Some(req)) = m else { return };
                sh.record(&req.response_nonce, req.error_detail.as_ref());
                let ty = req.type_url.clone();
                if !subs.contains_key(&ty) {
                    fresh.insert(ty.clone()); // the first request is always answered
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
            let first = fresh.remove(ty);
            if resources.is_empty() && removed.is_empty() && !first {
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
    pub fn new() -> Self {
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
    pub async fn serve_tcp(&self) -> SocketAddr {
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

    /// Serve gRPC over TLS (ALPN h2) on a fresh 127.0.0.1 port. Each accepted handshake's
    /// client certificate chain (empty without mutual TLS) is appended to `peers`; failed
    /// handshakes serve nothing. Used by tests/xds_tls.rs.
    #[allow(dead_code)]
    pub async fn serve_tls(
        &self,
        acceptor: tokio_rustls::TlsAcceptor,
        peers: Arc<Mutex<Vec<Vec<Vec<u8>>>>>,
    ) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let svc = self.service();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (acceptor, svc, peers) = (acceptor.clone(), svc.clone(), peers.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(s).await else {
                        return;
                    };
                    let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
                    peers
                        .lock()
                        .unwrap()
                        .push(chain.iter().map(|c| c.to_vec()).collect());
                    serve_conn(svc, tls);
                });
            }
        });
        addr
    }

    /// Serve on a unix socket until `stop` fires.
    pub fn serve_unix(&self, path: &std::path::Path, mut stop: tokio::sync::oneshot::Receiver<()>) {
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
    pub fn put(&self, ty: &str, resources: Vec<(String, Any)>) -> u64 {
        self.0.cfg.send_modify(|c| {
            c.version += 1;
            c.types
                .insert(ty.to_string(), resources.into_iter().collect());
        });
        self.0.cfg.borrow().version
    }

    /// Wait for the client's ACK (`Ok`) or NACK (`Err(error_detail)`) of `ty` at `version` or later.
    pub async fn reply(&self, ty: &str, version: u64) -> Result<(), String> {
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
    pub fn kill_streams(&self) {
        self.0.kill.send_modify(|k| *k += 1);
    }
}
