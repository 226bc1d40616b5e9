//! HTTP/2 settings with Envoy's defaults and `http2_protocol_options`: more than hyper's 200
//! concurrent streams on one downstream connection, the HCM's own stream limit, and header
//! blocks past hyper's 16 KiB in both directions (Envoy's limit is 60 KiB).

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

fn route_to(cluster: &str) -> serde_json::Value {
    json!([{"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}])
}

fn held_get(addr: SocketAddr) -> http::Request<Full<Bytes>> {
    http::Request::get(format!("http://{addr}/"))
        .header("x-test-hold", "1")
        .body(Full::default())
        .unwrap()
}

/// Sends `n` held requests on one h2 connection and returns how many reached the upstream
/// before it lets them go, then lets them go and checks that all of them are answered.
async fn streams_in_flight(px_addr: SocketAddr, up: &Upstream, n: usize) -> usize {
    let mut client = h2_client(px_addr).await;
    // One request first, so that the client has the proxy's SETTINGS before the burst (a
    // stream opened past the limit before that is refused, in Envoy too).
    let first = http::Request::get(format!("http://{px_addr}/"))
        .body(Full::default())
        .unwrap();
    assert_eq!(client.send_request(first).await.unwrap().status(), 200);
    let before = up.hits();
    let mut reqs = Vec::new();
    for _ in 0..n {
        let mut c = client.clone();
        reqs.push(tokio::spawn(async move {
            c.ready().await.unwrap();
            c.send_request(held_get(px_addr)).await.unwrap().status()
        }));
    }
    // Give every stream that may open the time to reach the upstream.
    let mut last = usize::MAX;
    while up.hits() != last {
        last = up.hits();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let reached = up.hits() - before;
    // Released requests free their streams, which lets the queued ones through: release
    // until every request has been answered.
    let statuses = tokio::time::timeout(HANG, release_all(up, reqs))
        .await
        .expect("requests hung");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    reached
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downstream_connection_carries_envoys_stream_limit_not_hypers() {
    let up = upstream("up").await;
    let px = routes_proxy(
        route_to("c"),
        json!({}),
        vec![cluster("c", &[up.addr], json!({}))],
    )
    .await;
    // hyper's server default would stop at 200.
    assert_eq!(streams_in_flight(px.addr("l"), &up, 260).await, 260);

    // The HCM's own limit is advertised and kept.
    let up = upstream("up").await;
    let px = routes_proxy(
        route_to("c"),
        json!({"http2_protocol_options": {"max_concurrent_streams": 5}}),
        vec![cluster("c", &[up.addr], json!({}))],
    )
    .await;
    assert_eq!(streams_in_flight(px.addr("l"), &up, 12).await, 5);
}

#[tokio::test]
async fn header_blocks_up_to_60_kib_pass_both_ways() {
    // An h2 upstream that answers with a 40 KiB header.
    let h2_up = h2_upstream(|_req| {
        http::Response::builder()
            .header("x-big", "b".repeat(40 * 1024))
            .body(Full::new(Bytes::from_static(b"big")))
            .unwrap()
    })
    .await;
    let up = upstream("up").await;
    let px = routes_proxy(
        json!([
            {"match": {"prefix": "/big-response"}, "route": {"cluster": "h2"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "c"}}]),
        json!({}),
        vec![
            cluster("c", &[up.addr], json!({})),
            cluster("h2", &[h2_up], json!({"http2_protocol_options": {}})),
        ],
    )
    .await;
    let addr = px.addr("l");

    // A 40 KiB request header over h2 downstream (hyper's default limit is 16 KiB).
    let mut client = h2_client(addr).await;
    let req = http::Request::get(format!("http://{addr}/"))
        .header("cookie", "c".repeat(40 * 1024))
        .body(Full::default())
        .unwrap();
    let resp = client.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        echoed["headers"]["cookie"].as_str().map(str::len),
        Some(40 * 1024)
    );

    // A 40 KiB response header from an h2 upstream.
    let r = get(addr, "/big-response", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-big").map(str::len), Some(40 * 1024));

    // Past the HCM's max_request_headers_kb the stream is refused, as in Envoy.
    let px = routes_proxy(
        route_to("c"),
        json!({"max_request_headers_kb": 8}),
        vec![cluster("c", &[up.addr], json!({}))],
    )
    .await;
    let addr = px.addr("l");
    let mut client = h2_client(addr).await;
    let req = http::Request::get(format!("http://{addr}/"))
        .header("cookie", "c".repeat(12 * 1024))
        .body(Full::default())
        .unwrap();
    let refused = match client.send_request(req).await {
        Ok(resp) => resp.status() == 431,
        Err(_) => true,
    };
    assert!(refused, "a 12 KiB header passed an 8 KiB limit");
}

/// Sends `n` held GETs through `px`'s listener and waits until `up` has served `hits`
/// requests in all; returns the request tasks.
async fn hold(
    px: &Proxy,
    up: &Upstream,
    n: usize,
    hits: usize,
) -> Vec<tokio::task::JoinHandle<u16>> {
    let addr = px.addr("l");
    let reqs = (0..n)
        .map(|_| tokio::spawn(async move { get(addr, "/", &[("x-test-hold", "1")]).await.status }))
        .collect();
    wait_until("the held requests at the upstream", || up.hits() == hits).await;
    reqs
}

/// Lets `up`'s held requests go and returns the statuses of `reqs`.
async fn released(up: &Upstream, reqs: Vec<tokio::task::JoinHandle<u16>>) -> Vec<u16> {
    tokio::time::timeout(HANG, release_all(up, reqs))
        .await
        .expect("requests hung")
}

/// A proxy routing everything to cluster `c` of `up`, with `opts` on the cluster.
async fn proxy_to(up: &Upstream, opts: serde_json::Value) -> Proxy {
    routes_proxy(
        route_to("c"),
        json!({}),
        vec![cluster("c", &[up.addr], opts)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_connection_carries_the_clusters_stream_limit_then_another_opens() {
    // Seven streams at once, three to a connection: three connections.
    let up = upstream("up").await;
    let px = proxy_to(
        &up,
        json!({"http2_protocol_options": {"max_concurrent_streams": 3}}),
    )
    .await;
    let reqs = hold(&px, &up, 7, 7).await;
    assert_eq!(px.stat("cluster.c.upstream_cx_total"), 3);
    let statuses = released(&up, reqs).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // Streams that have ended free their places: the next seven need no new connection.
    let reqs = hold(&px, &up, 7, 14).await;
    assert_eq!(px.stat("cluster.c.upstream_cx_total"), 3);
    released(&up, reqs).await;

    // Envoy's default (no limit): one connection carries them all.
    let up = upstream("up").await;
    let px = proxy_to(&up, json!({"http2_protocol_options": {}})).await;
    let reqs = hold(&px, &up, 7, 7).await;
    assert_eq!(px.stat("cluster.c.upstream_cx_total"), 1);
    released(&up, reqs).await;

    // max_connections 2: no third connection. The seventh request waits in the pending
    // queue (Envoy's), not on a full connection, and goes when a stream ends.
    let up = upstream("up").await;
    let px = proxy_to(
        &up,
        json!({"http2_protocol_options": {"max_concurrent_streams": 3},
            "circuit_breakers": {"thresholds": [{"max_connections": 2}]}}),
    )
    .await;
    let reqs = hold(&px, &up, 7, 6).await;
    wait_until("the seventh request pending", || {
        px.stat("cluster.c.upstream_rq_pending_active") == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(up.hits(), 6, "a stream past the limit reached the upstream");
    assert_eq!(px.stat("cluster.c.upstream_cx_total"), 2);
    // Envoy counts a request pending from the moment it finds no stream, its connection's
    // dial included: the two that dialled, and the one that waits.
    assert_eq!(px.stat("cluster.c.upstream_rq_pending_total"), 3);
    let statuses = released(&up, reqs).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(up.hits(), 7);
    assert_eq!(px.stat("cluster.c.upstream_cx_total"), 2);
    assert_eq!(px.stat("cluster.c.upstream_rq_pending_active"), 0);

    // With max_pending_requests 1 as well, a second waiting request is refused: 503 UO.
    let up = upstream("up").await;
    let px = proxy_to(
        &up,
        json!({"http2_protocol_options": {"max_concurrent_streams": 3},
            "circuit_breakers": {"thresholds": [
                {"max_connections": 1, "max_pending_requests": 1}]}}),
    )
    .await;
    let reqs = hold(&px, &up, 4, 3).await;
    wait_until("one request pending", || {
        px.stat("cluster.c.upstream_rq_pending_active") == 1
    })
    .await;
    let r = get(px.addr("l"), "/", &[]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(px.stat("cluster.c.upstream_rq_pending_overflow"), 1);
    let statuses = released(&up, reqs).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

#[tokio::test]
async fn a_host_without_a_connection_gets_one_past_max_connections() {
    // Two hosts, one connection allowed: the second host still gets its first connection
    // (counted as an overflow), as in Envoy, instead of a 503 until the first host's idle
    // connection times out.
    let (a, b) = (upstream("a").await, upstream("b").await);
    let px = routes_proxy(
        route_to("c"),
        json!({}),
        vec![cluster(
            "c",
            &[a.addr, b.addr],
            json!({"http2_protocol_options": {},
                "circuit_breakers": {"thresholds": [{"max_connections": 1}]}}),
        )],
    )
    .await;
    let addr = px.addr("l");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let r = get(addr, "/", &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        seen.insert(r.upstream());
    }
    assert_eq!(seen.len(), 2, "round robin reached both hosts: {seen:?}");
    assert_eq!(px.stat("cluster.c.upstream_cx_total"), 2);
    assert_eq!(px.stat("cluster.c.upstream_cx_overflow"), 1);
}

/// `connection_keepalive` on an h2 cluster (Istio's DestinationRule h2 keepalive): the proxy
/// pings its upstream connections, and one whose peer stopped answering is closed after the
/// timeout, failing its request, instead of keeping it for ever. The upstream here is a bare
/// socket that completes the HTTP/2 handshake, then reads and answers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_h2_upstream_is_pinged_and_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let seen = tokio::spawn(async move {
        let (mut s, _) = silent.accept().await.unwrap();
        // SETTINGS (empty) and an ACK of the client's: the handshake, from the server's side.
        s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0])
            .await
            .unwrap();
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        // Frames after the 24-byte preface: is there a PING (type 6) without ACK?
        let mut frames = &all[24.min(all.len())..];
        let mut ping = false;
        while frames.len() >= 9 {
            let len = u32::from_be_bytes([0, frames[0], frames[1], frames[2]]) as usize;
            ping |= frames[3] == 6 && frames[4] & 1 == 0;
            frames = &frames[(9 + len).min(frames.len())..];
        }
        ping
    });
    let h2 = json!({"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {
            "connection_keepalive": {"interval": "0.2s", "timeout": "0.2s"}}}}}});
    let p = proxy(bootstrap(
        vec![listener(
            "l",
            json!([{"name": "v", "domains": ["*"], "routes": route_to("silent")}]),
            vec![],
            json!({}),
        )],
        vec![cluster("silent", &[addr], h2)],
    ))
    .await;
    let r = tokio::time::timeout(Duration::from_secs(5), get(p.addr("l"), "/", &[]))
        .await
        .expect("the request is failed once the connection is found dead");
    assert_eq!(r.status, 503, "{}", r.body);
    let pinged = tokio::time::timeout(Duration::from_secs(5), seen)
        .await
        .expect("the proxy closed the silent connection")
        .unwrap();
    assert!(pinged, "a PING was sent");
}
