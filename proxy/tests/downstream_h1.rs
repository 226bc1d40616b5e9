//! The downstream HTTP/1.x codec seen from a raw-bytes client: pipelined requests, HTTP/1.0
//! with and without keep-alive, `Connection: close`, HEAD, chunked responses, a request with
//! a body in the middle of a keep-alive connection (handed to hyper), malformed heads, and a
//! client that leaves while its request is upstream.

mod common;

use common::*;
use serde_json::json;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response read off the wire.
#[derive(Debug)]
struct Wire {
    /// The status line.
    line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Wire {
    fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// A client connection and the bytes read but not yet used.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        Client {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &str) {
        self.s.write_all(bytes.as_bytes()).await.unwrap();
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(HANG, self.s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }

    /// Read one response; `head` when it answers a HEAD request.
    async fn response(&mut self, head: bool) -> Wire {
        let (line, headers, n) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut slots);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).unwrap() {
                let line = format!(
                    "HTTP/1.{} {} {}",
                    r.version.unwrap(),
                    r.code.unwrap(),
                    r.reason.unwrap()
                );
                let headers = r
                    .headers
                    .iter()
                    .map(|h| {
                        let v = String::from_utf8_lossy(h.value).into_owned();
                        (h.name.to_ascii_lowercase(), v)
                    })
                    .collect::<Vec<_>>();
                break (line, headers, n);
            }
            assert!(self.fill().await, "no complete head in {:?}", self.buf);
        };
        self.buf.drain(..n);
        let mut w = Wire {
            line,
            headers,
            body: Vec::new(),
        };
        let status: u16 = w.line[9..12].parse().unwrap();
        if head || status == 204 || status == 304 {
            return w;
        }
        if let Some(len) = w.header("content-length") {
            let len: usize = len.parse().unwrap();
            while self.buf.len() < len {
                assert!(self.fill().await, "body cut short");
            }
            w.body = self.buf.drain(..len).collect();
        } else if w.header("transfer-encoding") == Some("chunked") {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|x| x == b"\r\n") {
                        break i;
                    }
                    assert!(self.fill().await, "chunk size cut short");
                };
                let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                let size = usize::from_str_radix(size_text.trim(), 16).unwrap();
                while self.buf.len() < line_end + 2 + size + 2 {
                    assert!(self.fill().await, "chunk cut short");
                }
                let data: Vec<u8> = self.buf.drain(..line_end + 2 + size + 2).collect();
                w.body
                    .extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
                if size == 0 {
                    break;
                }
            }
        } else {
            while self.fill().await {}
            w.body = std::mem::take(&mut self.buf);
        }
        w
    }

    /// Whether the proxy closed the connection (nothing more to read).
    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(HANG, self.s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

async fn setup() -> (Upstream, Proxy, SocketAddr) {
    setup_with(json!({"http_protocol_options": {"accept_http_10": true}})).await
}

/// The test proxy with `hcm` merged into its HTTP connection manager.
async fn setup_with(hcm: serde_json::Value) -> (Upstream, Proxy, SocketAddr) {
    let up = upstream("a").await;
    let vh = json!([{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "hi"}}},
        // No route timeout: only the client's leaving can end a held request.
        {"match": {"prefix": "/held"}, "route": {"cluster": "a", "timeout": "0s"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]);
    let p = proxy(bootstrap(
        vec![listener("l", vh, vec![], hcm)],
        vec![cluster("a", &[up.addr], json!({}))],
    ))
    .await;
    let addr = p.addr("l");
    (up, p, addr)
}

#[tokio::test]
async fn keep_alive_pipelining_and_http10_where_accepted() {
    let (_up, _p, addr) = setup().await;

    // Three requests in one write are answered in order on one connection; the HEAD
    // response sends no body (else the third response would not parse after it). That a
    // HEAD response keeps its length is checked in h1server/response.rs's unit tests.
    let mut c = Client::connect(addr).await;
    c.send("GET /one HTTP/1.1\r\nhost: x\r\n\r\nHEAD /two HTTP/1.1\r\nhost: x\r\n\r\nGET /three?q=1 HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n").await;
    let one = c.response(false).await;
    assert_eq!(one.line, "HTTP/1.1 200 OK");
    assert_eq!(one.json()["path"], "/one");
    assert!(one.header("date").is_some(), "{one:?}");
    let two = c.response(true).await;
    assert_eq!(two.line, "HTTP/1.1 200 OK");
    assert_eq!(two.header("x-upstream"), Some("a"));
    let three = c.response(false).await;
    assert_eq!(three.json()["path"], "/three?q=1");
    assert_eq!(three.header("connection"), None);
    // Still open: a fourth request on the same connection.
    c.send("GET /four HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(c.response(false).await.json()["path"], "/four");

    // Connection: close is answered with the same and the connection ends.
    c.send("GET /five HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    let five = c.response(false).await;
    assert_eq!(five.header("connection"), Some("close"));
    assert!(c.closed().await);

    // HTTP/1.0 without keep-alive: an HTTP/1.0 answer, then close.
    let mut c = Client::connect(addr).await;
    c.send("GET /old HTTP/1.0\r\nhost: x\r\n\r\n").await;
    let old = c.response(false).await;
    assert_eq!(old.line, "HTTP/1.0 200 OK");
    assert_eq!(old.json()["path"], "/old");
    assert!(c.closed().await);

    // HTTP/1.0 with keep-alive: said in the answer when the length is known, and the
    // connection stays.
    let mut c = Client::connect(addr).await;
    c.send("GET /direct HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\n\r\n")
        .await;
    let ka = c.response(false).await;
    assert_eq!(ka.line, "HTTP/1.0 200 OK");
    assert_eq!(ka.header("connection"), Some("keep-alive"));
    assert_eq!(ka.body, b"hi");
    // A streamed body cannot be chunked for HTTP/1.0: it ends with the connection.
    c.send("GET /ka2 HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\n\r\n")
        .await;
    let streamed = c.response(false).await;
    assert_eq!(streamed.header("connection"), None);
    assert_eq!(streamed.json()["path"], "/ka2");
}

#[tokio::test]
async fn bodies_and_odd_requests_mid_connection() {
    let (_up, _p, addr) = setup().await;
    let mut c = Client::connect(addr).await;
    // A streamed upstream body (trailers follow it upstream) reaches an HTTP/1.1 client
    // chunked, without the trailers.
    c.send("GET /t HTTP/1.1\r\nhost: x\r\nx-test-trailers: 1\r\n\r\n")
        .await;
    let t = c.response(false).await;
    assert_eq!(t.header("transfer-encoding"), Some("chunked"), "{t:?}");
    assert_eq!(t.json()["path"], "/t");
    // A POST with a body, then a GET, on the same connection: the body arrives whole.
    c.send("POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
        .await;
    let p = c.response(false).await;
    assert_eq!(p.json()["body_len"], 5, "{p:?}");
    c.send("GET /after HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(c.response(false).await.json()["path"], "/after");
    // A chunked request body.
    c.send("PUT /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .await;
    assert_eq!(c.response(false).await.json()["body_len"], 3);

    // A malformed header line: 400 and close.
    let mut c = Client::connect(addr).await;
    c.send("GET / HTTP/1.1\r\nhost: x\r\nno colon here\r\n\r\n")
        .await;
    let bad = c.response(false).await;
    assert!(bad.line.starts_with("HTTP/1.1 400"), "{bad:?}");
    assert!(c.closed().await);

    // A request target that is not a URI: 400 and close.
    let mut c = Client::connect(addr).await;
    c.send("GET http:// HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let bad = c.response(false).await;
    assert!(bad.line.starts_with("HTTP/1.1 400"), "{bad:?}");
    assert!(c.closed().await);

    // A head split over several writes.
    let mut c = Client::connect(addr).await;
    for part in ["GET /sp", "lit HTTP/1.1\r\nho", "st: x\r\n", "\r\n"] {
        c.send(part).await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(c.response(false).await.json()["path"], "/split");
}

#[tokio::test]
async fn a_client_that_leaves_cancels_its_request() {
    let (up, p, addr) = setup().await;
    let mut c = Client::connect(addr).await;
    c.send("GET /held HTTP/1.1\r\nhost: x\r\nx-test-hold: 1\r\n\r\n")
        .await;
    wait_until("the request is upstream", || up.hits() == 1).await;
    assert_eq!(p.stat("http.l.downstream_rq_active"), 1);
    drop(c);
    // The proxy sees the close while it waits for the upstream, and drops the request.
    wait_until("the request is dropped", || {
        p.stat("http.l.downstream_rq_active") == 0 && p.stat("cluster.a.upstream_rq_active") == 0
    })
    .await;
    up.release();
}

#[tokio::test]
async fn draining_closes_idle_keep_alive_connections() {
    let (_up, p, addr) = setup().await;
    let mut idle = Client::connect(addr).await;
    idle.send("GET /before HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(idle.response(false).await.json()["path"], "/before");
    // The connection sits idle in keep-alive; the drain must still reach it (after its grace
    // second), not leave it open until the hour-long idle timeout.
    for l in p.server.listeners.lock().unwrap().iter() {
        l.drain();
    }
    assert!(idle.closed().await, "an idle connection outlived the drain");
    // A request on a connection made while draining is answered, and told to close.
    let mut late = Client::connect(addr).await;
    late.send("GET /late HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let r = late.response(false).await;
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
}

#[tokio::test]
async fn request_heads_past_max_request_headers_kb_get_431() {
    let (up, px, addr) = setup().await;
    let head = |kb: usize| {
        format!(
            "GET /big HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
            "b".repeat(kb * 1024)
        )
    };
    // Envoy's default limit is 60 KiB: 59 KiB pass (on the inline path), 62 KiB (still
    // within the inline path's buffer) and 90 KiB (handed to hyper) do not.
    for (kb, status) in [(59, "200"), (62, "431"), (90, "431")] {
        let mut c = Client::connect(addr).await;
        c.send(&head(kb)).await;
        let r = c.response(false).await;
        assert!(r.line.contains(status), "{kb} KiB: {}", r.line);
    }
    assert_eq!(up.hits(), 1);
    drop(px);

    // A larger configured limit lets a 90 KiB head through.
    let px = routes_proxy(
        json!([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]),
        json!({"max_request_headers_kb": 96}),
        vec![cluster("c", &[up.addr], json!({}))],
    )
    .await;
    let mut c = Client::connect(px.addr("l")).await;
    c.send(&head(90)).await;
    let r = c.response(false).await;
    assert!(r.line.contains("200"), "{}", r.line);
    assert_eq!(
        r.json()["headers"]["x-big"].as_str().map(str::len),
        Some(90 * 1024)
    );
    // Past the inline path's buffer, hyper applies the limit: 120 KiB get 431.
    let mut c = Client::connect(px.addr("l")).await;
    c.send(&head(120)).await;
    let r = c.response(false).await;
    assert!(r.line.contains("431"), "{}", r.line);
}

#[tokio::test]
async fn more_headers_than_max_headers_count_get_431() {
    let up = upstream("a").await;
    let with_headers = |n: usize| {
        let mut h = String::from("GET /many HTTP/1.1\r\nHost: x\r\n");
        for i in 1..n {
            h.push_str(&format!("x-h{i}: {i}\r\n"));
        }
        h + "\r\n"
    };
    let status = |px: &Proxy, n: usize| {
        let addr = px.addr("l");
        let head = with_headers(n);
        async move {
            let mut c = Client::connect(addr).await;
            c.send(&head).await;
            c.response(false).await.line
        }
    };
    let proxy_with = |count: Option<u32>| {
        let hcm = match count {
            Some(n) => json!({"common_http_protocol_options": {"max_headers_count": n}}),
            None => json!({}),
        };
        routes_proxy(
            json!([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]),
            hcm,
            vec![cluster("c", &[up.addr], json!({}))],
        )
    };
    // Envoy's default, 100 (counting Host).
    let px = proxy_with(None).await;
    let l = status(&px, 100).await;
    assert!(l.contains("200"), "{l}");
    assert!(status(&px, 101).await.contains("431"));
    assert_eq!(
        up.hits(),
        1,
        "the refused request never reached the upstream"
    );
    // A lower limit is answered on the inline path, a higher one by hyper.
    let px = proxy_with(Some(5)).await;
    assert!(status(&px, 5).await.contains("200"));
    assert!(status(&px, 6).await.contains("431"));
    let px = proxy_with(Some(150)).await;
    assert!(status(&px, 150).await.contains("200"));
    assert!(status(&px, 151).await.contains("431"));
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn heads_envoy_refuses_are_refused_and_end_the_connection() {
    // Envoy's defaults: no HTTP/1.0, no length beside chunked, no coding but chunked, and
    // every request names its host.
    let (up, px, addr) = setup_with(json!({})).await;
    let refused = |req: &'static str, line: &'static str, body: &'static str| async move {
        let mut c = Client::connect(addr).await;
        c.send(req).await;
        let r = c.response(false).await;
        assert_eq!(
            (r.line.as_str(), r.body.as_slice()),
            (line, body.as_bytes()),
            "{req:?}"
        );
        assert_eq!(r.header("connection"), Some("close"), "{req:?}");
        assert!(c.closed().await, "{req:?}: the connection stays open");
    };
    // In HTTP/1.1, as Envoy answers where it does not serve HTTP/1.0; with a body too.
    refused(
        "GET /old HTTP/1.0\r\nhost: x\r\n\r\n",
        "HTTP/1.1 426 Upgrade Required",
        "Upgrade Required",
    )
    .await;
    refused(
        "POST /old HTTP/1.0\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi",
        "HTTP/1.1 426 Upgrade Required",
        "Upgrade Required",
    )
    .await;
    refused(
        "GET /nohost HTTP/1.1\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
        "",
    )
    .await;
    // A smuggling attempt: which of the two lengths would the upstream believe?
    refused(
        "POST /te HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
        "Bad Request",
    )
    .await;
    // Any coding but `chunked` alone is not implemented, wherever `chunked` stands (hyper
    // would answer 400 to a coding after it).
    for te in [
        "gzip, chunked",
        "chunked, gzip",
        "chunked\r\ntransfer-encoding: chunked",
    ] {
        let req =
            format!("POST /te HTTP/1.1\r\nhost: x\r\ntransfer-encoding: {te}\r\n\r\n0\r\n\r\n");
        refused(
            Box::leak(req.into_boxed_str()),
            "HTTP/1.1 501 Not Implemented",
            "Not Implemented",
        )
        .await;
    }
    assert_eq!(up.hits(), 0, "no refused request reaches the upstream");
    // The codec's refusals count as protocol errors; the missing host does not.
    assert_eq!(px.stat("http.l.downstream_cx_protocol_error"), 6);
    assert_eq!(px.stat("http.l.downstream_rq_4xx"), 4);
    assert_eq!(px.stat("http.l.downstream_rq_5xx"), 3);
    // An absolute request target names the host without a Host header.
    let mut c = Client::connect(addr).await;
    c.send("GET http://x/abs HTTP/1.1\r\n\r\n").await;
    assert_eq!(c.response(false).await.line, "HTTP/1.1 200 OK");
    // And it wins over a Host header that says otherwise (RFC 9112 §3.2.2, as Envoy).
    c.send("GET http://abs.example:8080/abs HTTP/1.1\r\nhost: other.example\r\n\r\n")
        .await;
    let r = c.response(false).await;
    assert_eq!(r.json()["headers"]["host"], "abs.example:8080", "{r:?}");
    drop(px);

    // What `http_protocol_options` allows: HTTP/1.0 given a default host, and a chunked
    // request's length dropped before it goes upstream.
    let (up, _px, addr) = setup_with(json!({"http_protocol_options": {"accept_http_10": true,
        "default_host_for_http_10": "default.example", "allow_chunked_length": true}}))
    .await;
    let mut c = Client::connect(addr).await;
    c.send("GET /old HTTP/1.0\r\n\r\n").await;
    let r = c.response(false).await;
    assert_eq!(r.line, "HTTP/1.0 200 OK");
    assert_eq!(r.json()["headers"]["host"], "default.example");
    let mut c = Client::connect(addr).await;
    c.send("POST /te HTTP/1.1\r\nhost: x\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").await;
    let r = c.response(false).await;
    assert_eq!(r.line, "HTTP/1.1 200 OK", "{r:?}");
    assert_eq!(r.json()["body_len"], 5);
    assert!(r.json()["headers"].get("content-length").is_none(), "{r:?}");
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn paths_are_normalized_before_routing_when_the_hcm_asks() {
    // Istio's default meshConfig.pathNormalization (BASE) sets the HCM's normalize_path.
    let ask = |addr: SocketAddr, target: &'static str| async move {
        let mut c = Client::connect(addr).await;
        c.send(&format!("GET {target} HTTP/1.1\r\nhost: x\r\n\r\n"))
            .await;
        c.response(false).await
    };
    let (_up, _p, addr) = setup_with(json!({"normalize_path": true, "merge_slashes": true})).await;
    // A dot segment does not get past a route: /x/../direct is /direct.
    let r = ask(addr, "/x/%2e%2e/direct").await;
    assert_eq!(
        (r.line.as_str(), r.body.as_slice()),
        ("HTTP/1.1 200 OK", &b"hi"[..])
    );
    // The upstream gets the normalized path: dot segments resolved, unreserved escapes
    // decoded, other escapes kept, runs of slashes merged, the query untouched.
    let r = ask(addr, "/a/./b/../c%7e%2F//d?q=/../").await;
    assert_eq!(r.json()["path"], "/a/c~%2F/d?q=/../", "{r:?}");
    // A path that cannot be normalized (an escaped NUL) gets Envoy's 400.
    let r = ask(addr, "/a/%00/b").await;
    assert_eq!(r.line, "HTTP/1.1 400 Bad Request");
    // Without the options the path goes as it came.
    let (_up, _p, addr) = setup_with(json!({})).await;
    let r = ask(addr, "/x/%2e%2e/direct").await;
    assert_eq!(r.json()["path"], "/x/%2e%2e/direct", "{r:?}");
}

/// `headers_with_underscores_action` (Istio's EDGE gateways: REJECT_REQUEST): a header name
/// with an underscore gets the request refused (400, the connection closed) or the header
/// dropped, each counted in Envoy's codec stats; with the default the header passes.
#[tokio::test]
async fn headers_with_underscores_are_refused_or_dropped_as_configured() {
    let action =
        |a: &str| json!({"common_http_protocol_options": {"headers_with_underscores_action": a}});
    let sent = [("x_user", "admin"), ("x-other", "1")];

    let (up, p, addr) = setup_with(action("REJECT_REQUEST")).await;
    let r = get(addr, "/", &sent).await;
    assert_eq!((r.status, r.header("connection")), (400, Some("close")));
    assert_eq!(r.body, "Bad Request");
    assert_eq!(
        p.stat("http1.requests_rejected_with_underscores_in_headers"),
        1
    );
    assert_eq!(up.hits(), 0);
    assert_eq!(get(addr, "/", &[("x-user", "a")]).await.status, 200);

    let (_, p, addr) = setup_with(action("DROP_HEADER")).await;
    let r = get(addr, "/", &sent).await;
    assert_eq!(r.status, 200);
    let seen = &r.json()["headers"];
    assert!(seen.get("x_user").is_none(), "{seen}");
    assert_eq!(seen["x-other"], json!("1"));
    assert_eq!(p.stat("http1.dropped_headers_with_underscores"), 1);

    let (_, _, addr) = setup().await;
    let r = get(addr, "/", &sent).await;
    assert_eq!(r.json()["headers"]["x_user"], json!("admin"));
}

/// The HCM's connection limits as Envoy applies them on HTTP/1: `request_headers_timeout`
/// answers a head that started but did not finish in time with 408 and closes;
/// `max_requests_per_connection` closes the connection with the last request's response;
/// `max_connection_duration` closes an idle connection once it is that old, and asks the
/// client of a request in flight to leave (`Connection: close`).
#[tokio::test]
async fn connection_limits_of_the_hcm_end_connections_as_envoy() {
    let (_up, p, addr) = setup_with(json!({"request_headers_timeout": "0.3s",
        "common_http_protocol_options": {"max_requests_per_connection": 2}}))
    .await;
    let mut slow = Client::connect(addr).await;
    slow.send("GET /slow HTTP/1.1\r\nhost: x\r\n").await;
    let r = slow.response(false).await;
    assert_eq!(r.line, "HTTP/1.1 408 Request Timeout");
    assert_eq!(r.body, b"request header timeout");
    assert!(slow.closed().await);
    assert_eq!(p.stat("http.l.downstream_rq_header_timeout"), 1);
    // A whole head in time is served; the second request is this connection's last.
    let mut c = Client::connect(addr).await;
    c.send("GET /1 HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(c.response(false).await.header("connection"), None);
    c.send("GET /2 HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let r = c.response(false).await;
    assert_eq!(
        (r.json()["path"].as_str(), r.header("connection")),
        (Some("/2"), Some("close"))
    );
    assert!(c.closed().await);
    assert_eq!(p.stat("http.l.downstream_cx_max_requests_reached"), 1);

    let (up, p, addr) = setup_with(json!({
        "common_http_protocol_options": {"max_connection_duration": "0.3s"}}))
    .await;
    let mut idle = Client::connect(addr).await;
    idle.send("GET /a HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(idle.response(false).await.header("connection"), None);
    assert!(idle.closed().await, "an old idle connection stays open");
    // A request held past the connection's age is answered, with `Connection: close`.
    let mut busy = Client::connect(addr).await;
    busy.send("GET /held HTTP/1.1\r\nhost: x\r\nx-test-hold: 1\r\n\r\n")
        .await;
    wait_until("the held request never arrived", || up.hits() >= 2).await;
    wait_until("the connection never aged", || {
        p.stat("http.l.downstream_cx_max_duration_reached") >= 2
    })
    .await;
    up.release();
    let r = busy.response(false).await;
    assert_eq!(
        (r.line.as_str(), r.header("connection")),
        ("HTTP/1.1 200 OK", Some("close"))
    );
    assert!(busy.closed().await);
}
