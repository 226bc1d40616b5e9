//! Shared test harness: in-process upstreams (HTTP/1.1 + h2c), an in-process proxy built from a
//! JSON bootstrap, and small HTTP clients. Everything listens on 127.0.0.1 port 0.
#![allow(dead_code)]

pub mod certs;
pub mod istio;
pub mod mtls;
mod upstreams;

pub use upstreams::*;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
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

/// A loopback port that was free a moment ago (for listeners that must name their port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// Wait until the file holds `n` lines, and return them (more if more came); fail naming
/// what it holds if it does not within [`HANG`].
pub async fn log_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + HANG;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let v: Vec<String> = text.lines().map(str::to_string).collect();
        if v.len() >= n {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {n} lines: {text}",
            v.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
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
