//! Shared test harness: in-process upstreams (HTTP/1.1 + h2c), an in-process proxy built from a
//! JSON bootstrap, and small HTTP clients. Everything listens on 127.0.0.1 port 0.
#![allow(dead_code)]

pub mod certs;
pub mod istio;
pub mod mtls;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mosn::config::{decode_bootstrap, Snapshot};
use mosn::server::Server;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Generous bound so a broken test fails instead of hanging.
pub const HANG: Duration = Duration::from_secs(20);

/// An in-process upstream that echoes what it received as JSON.
///
/// Behaviour is driven by request headers so one server serves many tests (`upgrade: echo`
/// switches protocols and echoes bytes):
/// `x-test-status: N` answers N; `x-test-fail-on: NAME` answers 503 only on upstream NAME;
/// `x-test-reset-on: NAME` closes the connection without answering on upstream NAME;
/// `x-test-delay-ms: N` waits first; `x-test-slow-on: NAME` waits 30 s on upstream NAME; `x-test-hold` (or `x-test-hold-on: NAME`) waits until [`Upstream::release`]; `x-test-trailers` adds grpc-status trailers; `x-test-stall-body` never ends the body; `x-test-response-header: NAME: VALUE` adds that header to the answer.
pub struct Upstream {
    /// Listening address.
    pub addr: SocketAddr,
    /// Name reported in `x-upstream`.
    pub name: String,
    /// Requests served.
    pub hits: Arc<AtomicUsize>,
    release: Arc<tokio::sync::Notify>,
}

impl Upstream {
    /// Requests served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
    /// Let held requests go.
    pub fn release(&self) {
        self.release.notify_waiters();
    }
}

/// A loopback port that was free a moment ago (for listeners that must name their port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start an upstream.
pub async fn upstream(name: &str) -> Upstream {
    // A deep accept queue: tests open hundreds of connections at once, and a SYN dropped
    // from a full queue is retried only after a second.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(4096).unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let (n, h, r) = (name.to_string(), hits.clone(), release.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let (n, h, r) = (n.clone(), h.clone(), r.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let (n, h, r) = (n.clone(), h.clone(), r.clone());
                    async move { echo(req, &n, &h, &r, peer).await }
                });
                let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // Past hyper's 100, so that tests of the proxy's own header limits see the
                // proxy's answer, not this upstream's.
                b.http1().max_headers(1000);
                let _ = b
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        name: name.to_string(),
        hits,
        release,
    }
}

async fn echo(
    mut req: http::Request<Incoming>,
    name: &str,
    hits: &AtomicUsize,
    release: &tokio::sync::Notify,
    peer: SocketAddr,
) -> Result<http::Response<Trailered>, std::io::Error> {
    hits.fetch_add(1, Ordering::SeqCst);
    if req.headers().get("upgrade").is_some_and(|v| v == "echo") {
        // A minimal upgrade protocol: after 101, echo every byte back.
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut resp = http::Response::new(Trailered(None, false, false));
        *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        resp.headers_mut()
            .insert("upgrade", "echo".parse().unwrap());
        resp.headers_mut()
            .insert("x-upstream", name.parse().unwrap());
        return Ok(resp);
    }
    let hdr = |k: &str| {
        req.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if hdr("x-test-reset-on").as_deref() == Some(name) {
        return Err(std::io::Error::other("reset as asked"));
    }
    if let Some(ms) = hdr("x-test-delay-ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if hdr("x-test-slow-on").as_deref() == Some(name) {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    if hdr("x-test-hold").is_some() || hdr("x-test-hold-on").as_deref() == Some(name) {
        release.notified().await;
    }
    let mut status = hdr("x-test-status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(200u16);
    if hdr("x-test-fail-on").as_deref() == Some(name) {
        status = 503;
    }
    let trailers = hdr("x-test-trailers").is_some();
    let own_server = hdr("x-test-server");
    let hdr_stall = hdr("x-test-stall-body").is_some();
    let extra_header = hdr("x-test-response-header");
    let mut headers = serde_json::Map::new();
    for k in req.headers().keys() {
        let all: Vec<&str> = req
            .headers()
            .get_all(k)
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect();
        headers.insert(k.to_string(), json!(all.join(",")));
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let info = json!({
        "upstream": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or(""),
        "authority": parts.uri.authority().map(|a| a.to_string()),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body.len(),
        // The connection's far end: the proxy's upstream local address.
        "peer": peer.to_string(),
    });
    let stall = hdr_stall;
    let mut resp = http::Response::new(Trailered(
        Some(Bytes::from(info.to_string())),
        trailers,
        stall,
    ));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
    resp.headers_mut()
        .insert("x-upstream", name.parse().unwrap());
    resp.headers_mut()
        .insert("x-upstream-remove-me", "yes".parse().unwrap());
    if let Some((k, v)) = extra_header.as_deref().and_then(|h| h.split_once(": ")) {
        resp.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    // The upstream's own Server header, when asked for (server_header_transformation).
    if let Some(v) = own_server {
        resp.headers_mut().insert("server", v.parse().unwrap());
    }
    Ok(resp)
}

/// A body of one chunk, optionally followed by gRPC-style trailers, or by silence forever.
pub struct Trailered(Option<Bytes>, bool, bool);

impl hyper::body::Body for Trailered {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        if let Some(b) = self.0.take() {
            return std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(b))));
        }
        if self.2 {
            return std::task::Poll::Pending;
        }
        if std::mem::take(&mut self.1) {
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", "0".parse().unwrap());
            t.insert("grpc-message", "ok".parse().unwrap());
            return std::task::Poll::Ready(Some(Ok(hyper::body::Frame::trailers(t))));
        }
        std::task::Poll::Ready(None)
    }
}

/// A running in-process proxy.
pub struct Proxy {
    /// The server.
    pub server: Arc<Server>,
}

impl Proxy {
    /// Address of a bound listener by name.
    pub fn addr(&self, name: &str) -> SocketAddr {
        let ls = self.server.listeners.lock().unwrap();
        ls.iter()
            .find(|l| l.config().name == name)
            .unwrap_or_else(|| panic!("no listener {name}"))
            .local_addr
    }
    /// The admin address.
    pub fn admin(&self) -> SocketAddr {
        self.server.admin_addr.lock().unwrap().expect("admin bound")
    }
    /// A stat value (0 if absent).
    pub fn stat(&self, name: &str) -> u64 {
        self.server.stats.value(name).unwrap_or(0)
    }
}

/// Start a proxy from a bootstrap JSON value.
pub async fn proxy(boot: Value) -> Proxy {
    proxy_with_options(boot, mosn::cli::Options::default()).await
}

/// Start a proxy from a bootstrap JSON value and command-line options.
pub async fn proxy_with_options(boot: Value, opts: mosn::cli::Options) -> Proxy {
    mosn::logging::init(Some("warning"), None);
    let loaded = decode_bootstrap(boot, true).expect("bootstrap decodes");
    let stats = mosn::stats::Stats::new();
    let snap = Snapshot::build(&loaded, &stats).expect("snapshot builds");
    let server = Server::new(opts, snap, stats);
    server.start().await.expect("server starts");
    Proxy { server }
}

/// A STATIC cluster over `addrs` with optional extra fields merged in.
pub fn cluster(name: &str, addrs: &[SocketAddr], extra: Value) -> Value {
    cluster_weighted(
        name,
        &addrs.iter().map(|a| (*a, 1)).collect::<Vec<_>>(),
        extra,
    )
}

/// A STATIC cluster with endpoint weights.
pub fn cluster_weighted(name: &str, addrs: &[(SocketAddr, u32)], extra: Value) -> Value {
    let eps: Vec<Value> = addrs
        .iter()
        .map(|(a, w)| {
            json!({"endpoint": {"address": {"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}}},
                   "load_balancing_weight": w})
        })
        .collect();
    let mut c = json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": eps}]}});
    mosn::config::merge(&mut c, extra);
    c
}

/// An HCM listener named `name` on 127.0.0.1:0 with these virtual hosts and HTTP filters
/// (the router is appended).
pub fn listener(name: &str, vhosts: Value, mut filters: Vec<Value>, extra_hcm: Value) -> Value {
    filters.push(json!({"name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "route_config": {"name": format!("{name}_routes"), "virtual_hosts": vhosts},
        "http_filters": filters,
    });
    mosn::config::merge(&mut hcm, extra_hcm);
    json!({"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]})
}

/// A proxy with one HCM listener "l" (extra HCM settings `hcm`, no HTTP filters but the
/// router) whose one virtual host "v" serves every domain with `routes`.
pub async fn routes_proxy(routes: Value, hcm: Value, clusters: Vec<Value>) -> Proxy {
    let vhosts = json!([{"name": "v", "domains": ["*"], "routes": routes}]);
    proxy(bootstrap(
        vec![listener("l", vhosts, vec![], hcm)],
        clusters,
    ))
    .await
}

/// A bootstrap with an admin on port 0.
pub fn bootstrap(listeners: Vec<Value>, clusters: Vec<Value>) -> Value {
    json!({"node": {"id": "test~127.0.0.1~test.default~default.svc.cluster.local", "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters}})
}

/// A response as seen by a test.
#[derive(Debug)]
pub struct Resp {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body text.
    pub body: String,
    /// Trailers, if any.
    pub trailers: Option<http::HeaderMap>,
}

impl Resp {
    /// Body as JSON (the echo upstream's report).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} {}", self.status, self.body))
    }
    /// A response header.
    pub fn header(&self, k: &str) -> Option<&str> {
        self.headers.get(k).and_then(|v| v.to_str().ok())
    }
    /// Which upstream answered.
    pub fn upstream(&self) -> String {
        self.header("x-upstream").unwrap_or("").to_string()
    }
}

/// An HTTP/2 (h2c) upstream whose answer to each request `respond` makes at once (the
/// response body may go on streaming).
pub async fn h2_upstream<B>(
    respond: impl Fn(http::Request<Incoming>) -> http::Response<B> + Clone + Send + Sync + 'static,
) -> SocketAddr
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let respond = respond.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let resp = respond(req);
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// Send a request over a fresh HTTP/1.1 (or h2c when `h2`) connection.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    h2: bool,
) -> Resp {
    let fut = async {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut req = http::Request::builder().method(method);
        req = if h2 {
            req.uri(format!(
                "http://{}{path}",
                headers
                    .iter()
                    .find(|(k, _)| *k == "host")
                    .map(|(_, v)| v.to_string())
                    .unwrap_or(addr.to_string())
            ))
        } else {
            req.uri(path)
        };
        let mut has_host = false;
        for (k, v) in headers {
            if *k == "host" {
                has_host = true;
                if h2 {
                    continue;
                }
            }
            req = req.header(*k, *v);
        }
        if !has_host && !h2 {
            req = req.header("host", addr.to_string());
        }
        let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        let resp = if h2 {
            let (mut s, c) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(c);
            s.send_request(req).await.unwrap()
        } else {
            let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(c);
            s.send_request(req).await.unwrap()
        };
        let (parts, b) = resp.into_parts();
        let collected = b.collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        let body = collected.to_bytes();
        Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            trailers,
        }
    };
    tokio::time::timeout(HANG, fut).await.expect("request hung")
}

/// One h2c (prior knowledge) client connection to `addr`, for tests that send several
/// requests on it.
pub async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(c);
    s
}

/// Let `up`'s held requests go until every one of `tasks` has finished, and return their
/// results in order.
pub async fn release_all<T>(up: &Upstream, tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    while tasks.iter().any(|t| !t.is_finished()) {
        up.release();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// GET over HTTP/1.1.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    request(addr, "GET", path, headers, "", false).await
}

/// An address where nothing listens (bound then closed).
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Binomial bounds: is `k` successes of `n` within 5 standard deviations of `p`?
pub fn within_binomial(k: usize, n: usize, p: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (k as f64 - mean).abs() <= 5.0 * sd.max(0.5)
}

/// Read until EOF (or an error), within [`HANG`]: what was read and whether the peer closed.
pub async fn read_to_close(s: &mut tokio::net::TcpStream) -> (String, bool) {
    let mut buf = vec![0u8; 4096];
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(HANG, async {
        loop {
            match tokio::io::AsyncReadExt::read(s, &mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .unwrap_or(false);
    (String::from_utf8_lossy(&seen).into_owned(), closed)
}

/// An `envoy.access_loggers.file` logger writing to `path`; `format` is its `log_format`
/// (null for Envoy's default).
pub fn file_logger(path: &str, format: Value) -> Value {
    let mut cfg = json!({"@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": path});
    if !format.is_null() {
        cfg["log_format"] = format;
    }
    json!({"name": "envoy.access_loggers.file", "typed_config": cfg})
}

/// Poll `done` every 5 ms until it holds; fail naming `what` if it does not within [`HANG`].
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + HANG;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An access log of each request's `x-test-tag` header and response flags. Envoy gives the
/// flags to access logs only, so tests read them where an operator would.
pub struct FlagLog(std::path::PathBuf);

impl FlagLog {
    /// A log in a fresh file named after `name`.
    pub fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "mosn-flags-{}-{name}-{}.log",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_file(&path);
        FlagLog(path)
    }

    /// HCM fields to merge into a listener (the `extra_hcm` of [`listener`]).
    pub fn hcm(&self) -> Value {
        let format = json!({"text_format_source": {"inline_string": "%REQ(X-TEST-TAG)% %RESPONSE_FLAGS%\n"}});
        json!({"access_log": [file_logger(self.0.to_str().unwrap(), format)]})
    }

    /// The flags logged for the request sent with `x-test-tag: tag` ("-" for none), waiting
    /// for its line.
    pub async fn flags(&self, tag: &str) -> String {
        let prefix = format!("{tag} ");
        let found = tokio::time::timeout(HANG, async {
            loop {
                let text = std::fs::read_to_string(&self.0).unwrap_or_default();
                if let Some(l) = text.lines().find(|l| l.starts_with(&prefix)) {
                    return l[prefix.len()..].to_string();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no access log line tagged {tag} in {:?}", self.0))
    }
}

impl Drop for FlagLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One GET for `host` on a kept-alive HTTP/1.1 connection, read to the end of its answer
/// (by Content-Length): the answer's head, lower-cased.
pub async fn get_on(s: &mut tokio::net::TcpStream, host: &str) -> Result<String, String> {
    exchange_on(s, host).await.map(|(head, _)| head)
}

/// [`get_on`]'s exchange: the answer's head (lower-cased) and its body as sent.
pub async fn exchange_on(
    s: &mut tokio::net::TcpStream,
    host: &str,
) -> Result<(String, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET / HTTP/1.1\r\nhost: {host}\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before an answer".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap_or(0));
        if buf.len() >= end + 4 + len {
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
            return Ok((head, body));
        }
    }
}
