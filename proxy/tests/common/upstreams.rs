//! In-process upstreams for the tests: an HTTP/1.1 and h2c echo server driven by request
//! headers, and an h2c server answering with a closure.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
