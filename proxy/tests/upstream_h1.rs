//! The inline HTTP/1.1 upstream exchange against a scripted upstream that writes raw bytes:
//! every framing of RFC 9112 (length, chunked with trailers, close-delimited, HEAD, 204),
//! interim 100 responses, keep-alive reuse, `Connection: close`, an idle connection the
//! upstream closed, truncated and malformed responses.

mod common;

use common::*;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The raw upstream: answers by path; counts connections.
struct Raw {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
}

const BIG: usize = 1 << 20;

fn big_body() -> Vec<u8> {
    (0..BIG).map(|i| b'a' + (i % 26) as u8).collect()
}

async fn raw_upstream() -> Raw {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let count = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let conn = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for req in 0.. {
                    // One request head (the proxy sends these requests without bodies).
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let mut line = head.split(' ');
                    let method = line.next().unwrap_or("");
                    let path = line.next().unwrap_or("").split('?').next().unwrap_or("");
                    let ka = |body: &str| {
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .into_bytes()
                    };
                    let (out, close): (Vec<u8>, bool) = match (method, path) {
                        ("HEAD", _) => (b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n".to_vec(), false),
                        (_, "/ka") => (ka(&format!("c{conn}r{req}")), false),
                        (_, "/echo-head") => (ka(&head), false),
                        (_, "/chunked") => (
                            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n".to_vec(),
                            false,
                        ),
                        (_, "/until-close") => (b"HTTP/1.0 200 OK\r\n\r\nread until the connection closes".to_vec(), true),
                        (_, "/continue") => (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok".to_vec(), false),
                        (_, "/no-content") => (b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(), false),
                        (_, "/conn-close") => (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".to_vec(), true),
                        // A keep-alive race: the second request on a connection finds it closed.
                        (_, "/flaky") if req > 0 => (Vec::new(), true),
                        (_, "/flaky") => (ka(&format!("c{conn}")), false),
                        (_, "/truncated") => (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabcd".to_vec(), true),
                        (_, "/garbage") => (b"HTTP/1.1 abc\r\n\r\n".to_vec(), true),
                        (_, "/big") => {
                            let mut v = format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n").into_bytes();
                            v.extend_from_slice(&big_body());
                            (v, false)
                        }
                        (_, "/slow-head" | "/slow-chunks") => (Vec::new(), false),
                        _ => (b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec(), false),
                    };
                    // Responses that arrive in pieces: the proxy has to wait mid-head and
                    // mid-body (the event loop, not a full buffer, drives it on).
                    let pieces: &[&[u8]] = match path {
                        "/slow-head" => &[b"HTTP/1.1 200 OK\r\ncontent-", b"length: 2\r\n\r\nok"],
                        "/slow-chunks" => &[
                            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc",
                            b"\r\n4\r",
                            b"\ndefg\r\n0\r\n",
                            b"\r\n",
                        ],
                        _ => &[],
                    };
                    for p in pieces {
                        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                        if s.write_all(p).await.is_err() {
                            return;
                        }
                    }
                    if s.write_all(&out).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    Raw { addr, conns }
}

async fn setup() -> (Raw, Proxy, SocketAddr) {
    let up = raw_upstream().await;
    let vh = json!([{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "raw", "timeout": "5s"}}]}]);
    let px = proxy(bootstrap(
        vec![listener("in", vh, vec![], json!({}))],
        vec![cluster("raw", &[up.addr], json!({}))],
    ))
    .await;
    let addr = px.addr("in");
    (up, px, addr)
}

#[tokio::test]
async fn every_response_framing_reaches_the_client_whole() {
    let (_up, _px, addr) = setup().await;
    let r = get(addr, "/chunked", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "hello world"));
    // HTTP/2 downstream carries the chunked body's trailers.
    let r = request(addr, "GET", "/chunked", &[("host", "raw")], "", true).await;
    assert_eq!(r.body, "hello world");
    let t = r.trailers.expect("trailers forwarded over h2");
    assert_eq!(t.get("x-checksum").unwrap(), "42");

    let r = get(addr, "/until-close", &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "read until the connection closes")
    );
    let r = get(addr, "/continue", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (201, "ok"));
    let r = get(addr, "/no-content", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    let r = request(addr, "HEAD", "/ka", &[], "", false).await;
    assert_eq!((r.status, r.header("content-length")), (200, Some("1000")));
    let r = get(addr, "/slow-head", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    let r = get(addr, "/slow-chunks", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "abcdefg"));
    // Both left their connection reusable.
    assert_eq!(get(addr, "/ka", &[]).await.status, 200);
    let r = get(addr, "/big", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), BIG);
    assert!(
        r.body.as_bytes() == big_body().as_slice(),
        "1 MiB body differs"
    );
}

#[tokio::test]
async fn request_heads_go_upstream_as_the_client_sent_them() {
    let (_up, _px, addr) = setup().await;
    let r = get(
        addr,
        "/echo-head?q=1&r=%20",
        &[("x-multi", "a"), ("x-case", "MiXeD")],
    )
    .await;
    let head = r.body;
    assert!(
        head.starts_with("GET /echo-head?q=1&r=%20 HTTP/1.1\r\n"),
        "{head:?}"
    );
    assert!(head.contains("\r\nx-case: MiXeD\r\n"), "{head:?}");
    assert!(head.contains("\r\nx-multi: a\r\n"), "{head:?}");
    assert!(head.contains(&format!("\r\nhost: {addr}\r\n")), "{head:?}");
    // What Envoy's router adds.
    assert!(head.contains("\r\nx-request-id: "), "{head:?}");
    assert!(
        head.contains("\r\nx-envoy-expected-rq-timeout-ms: 5000\r\n"),
        "{head:?}"
    );
    // A bodiless POST says so, as curl does.
    let r = request(addr, "POST", "/echo-head", &[], "", false).await;
    assert!(r.body.contains("\r\ncontent-length: 0\r\n"), "{}", r.body);
}

#[tokio::test]
async fn keep_alive_connections_are_reused_and_closed_ones_are_not() {
    let (up, px, addr) = setup().await;
    for _ in 0..5 {
        assert_eq!(get(addr, "/ka", &[]).await.status, 200);
    }
    assert_eq!(
        up.conns.load(Ordering::SeqCst),
        1,
        "five sequential requests, one connection"
    );
    let r = get(addr, "/ka", &[]).await;
    assert_eq!(r.body, "c0r5");
    // HEAD and 204 leave the connection reusable too.
    request(addr, "HEAD", "/ka", &[], "", false).await;
    get(addr, "/no-content", &[]).await;
    assert_eq!(get(addr, "/ka", &[]).await.body, "c0r8");
    // `Connection: close` and a close-delimited body end the connection.
    get(addr, "/conn-close", &[]).await;
    assert_eq!(get(addr, "/ka", &[]).await.body, "c1r0");
    get(addr, "/until-close", &[]).await;
    assert_eq!(get(addr, "/ka", &[]).await.body, "c2r0");
    assert_eq!(px.stat("cluster.raw.upstream_cx_total"), 3);
}

#[tokio::test]
async fn an_idle_connection_closed_by_the_upstream_is_replaced_for_idempotent_requests() {
    let (up, px, addr) = setup().await;
    assert_eq!(get(addr, "/flaky", &[]).await.body, "c0");
    // The pooled connection dies when the next request arrives on it: a GET goes again on a
    // new connection, unseen by the client.
    let r = get(addr, "/flaky", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "c1"));
    assert_eq!(up.conns.load(Ordering::SeqCst), 2);
    // A POST is not repeated: the client gets Envoy's reset answer.
    let r = request(addr, "POST", "/flaky", &[], "", false).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(px.stat("cluster.raw.upstream_rq_total"), 3);
}

#[tokio::test]
async fn broken_responses_fail_cleanly() {
    let (_up, px, addr) = setup().await;
    // A head that is not HTTP: Envoy's 502 "protocol error" (UPE).
    let r = get(addr, "/garbage", &[]).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        r.body.ends_with("reset reason: protocol error"),
        "{}",
        r.body
    );
    // A body cut short: the client must not see a complete response.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /truncated HTTP/1.1\r\nhost: raw\r\n\r\n")
        .await
        .unwrap();
    // (hyper drops the buffered head when the body fails before its first flush; Envoy
    // would send the head and the 4 bytes, then close: either way the client cannot
    // mistake it for the whole response.)
    let (seen, closed) = read_to_close(&mut s).await;
    assert!(closed, "{seen:?}");
    assert!(
        seen.is_empty() || seen.starts_with("HTTP/1.1 200"),
        "{seen:?}"
    );
    // Nothing that arrived ends cleanly: no chunked terminator, and the length declared is
    // the upstream's 10, which the 4 bytes fall short of.
    assert!(!seen.contains("\r\n0\r\n\r\n"), "{seen:?}");
    assert!(
        seen.is_empty()
            || seen
                .to_ascii_lowercase()
                .contains("\r\ncontent-length: 10\r\n"),
        "{seen:?}"
    );
    // The proxy still works.
    assert_eq!(get(addr, "/ka", &[]).await.status, 200);
    assert_eq!(px.stat("cluster.raw.upstream_cx_active"), 1);
}

#[tokio::test]
async fn max_requests_per_connection_closes_a_connection_after_its_quota() {
    let up = raw_upstream().await;
    let echo = upstream("echo").await;
    // Newer Istio writes a DestinationRule's maxRequestsPerConnection into HttpProtocolOptions,
    // Istio 1.10 into the deprecated cluster field.
    let hpo = |n: u32| {
        json!({"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "common_http_protocol_options": {"max_requests_per_connection": n},
        "explicit_http_config": {"http_protocol_options": {}}}}})
    };
    let vh = json!([{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/two"}, "route": {"cluster": "two", "prefix_rewrite": "/ka"}},
        {"match": {"prefix": "/one"}, "route": {"cluster": "one", "prefix_rewrite": "/ka"}},
        {"match": {"prefix": "/post"}, "route": {"cluster": "post"}}]}]);
    let px = proxy(bootstrap(
        vec![listener("in", vh, vec![], json!({}))],
        vec![
            cluster("two", &[up.addr], hpo(2)),
            cluster("one", &[up.addr], json!({"max_requests_per_connection": 1})),
            cluster("post", &[echo.addr], hpo(1)),
        ],
    ))
    .await;
    let addr = px.addr("in");

    let mut bodies = Vec::new();
    for _ in 0..5 {
        bodies.push(get(addr, "/two", &[]).await.body);
    }
    assert_eq!(bodies, ["c0r0", "c0r1", "c1r0", "c1r1", "c2r0"]);
    assert_eq!(px.stat("cluster.two.upstream_cx_total"), 3);
    assert_eq!(px.stat("cluster.two.upstream_cx_max_requests"), 2);

    for _ in 0..3 {
        let b = get(addr, "/one", &[]).await.body;
        assert!(b.ends_with("r0"), "a new connection for every request: {b}");
    }
    assert_eq!(px.stat("cluster.one.upstream_cx_total"), 3);
    assert_eq!(px.stat("cluster.one.upstream_cx_max_requests"), 3);

    // Requests with a body go through hyper's client: the same quota.
    for _ in 0..2 {
        let r = request(addr, "POST", "/post", &[], "a body", false).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(px.stat("cluster.post.upstream_cx_total"), 2);
    assert_eq!(px.stat("cluster.post.upstream_cx_max_requests"), 2);
}

#[tokio::test]
async fn max_connection_duration_retires_old_connections() {
    let up = raw_upstream().await;
    let vh = json!([{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "aged", "prefix_rewrite": "/ka"}}]}]);
    let aged = json!({"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "common_http_protocol_options": {"max_connection_duration": "0.3s"},
        "explicit_http_config": {"http_protocol_options": {}}}}});
    let px = proxy(bootstrap(
        vec![listener("in", vh, vec![], json!({}))],
        vec![cluster("aged", &[up.addr], aged)],
    ))
    .await;
    let addr = px.addr("in");
    assert_eq!(get(addr, "/", &[]).await.body, "c0r0");
    assert_eq!(get(addr, "/", &[]).await.body, "c0r1");
    // Closed at its deadline while idle, not only when next taken.
    wait_until("the idle connection is closed at 0.3 s", || {
        px.stat("cluster.aged.upstream_cx_active") == 0
    })
    .await;
    assert_eq!(px.stat("cluster.aged.upstream_cx_max_duration_reached"), 1);
    assert_eq!(
        get(addr, "/", &[]).await.body,
        "c1r0",
        "the old connection is retired"
    );
    assert_eq!(get(addr, "/", &[]).await.body, "c1r1");
    assert_eq!(px.stat("cluster.aged.upstream_cx_total"), 2);
    assert_eq!(px.stat("cluster.aged.upstream_cx_max_duration_reached"), 1);
}
