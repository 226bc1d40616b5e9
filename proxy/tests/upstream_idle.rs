//! The upstream idle timeout (`common_http_protocol_options.idle_timeout` of a cluster): a pooled
//! connection with no request in flight for that long is closed and counted in
//! `upstream_cx_idle_timeout`; a stream in flight keeps an HTTP/2 connection open however long
//! it takes; 0 turns the timeout off.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// One listener routing everything to cluster `c`, whose options are `opts` plus the idle
/// timeout `idle` and, for `h2`, HTTP/2.
async fn setup(h2: bool, idle: &str) -> (Upstream, Proxy, std::net::SocketAddr) {
    let up = upstream("up").await;
    let mut opts = json!({"common_http_protocol_options": {"idle_timeout": idle}});
    if h2 {
        opts["http2_protocol_options"] = json!({});
    }
    let vh = json!([{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "0s"}}]}]);
    let px = proxy(bootstrap(
        vec![listener("in", vh, vec![], json!({}))],
        vec![cluster("c", &[up.addr], opts)],
    ))
    .await;
    let addr = px.addr("in");
    (up, px, addr)
}

fn version(r: &Resp) -> Value {
    r.json()["version"].clone()
}

async fn idle_connections_close(h2: bool) {
    let (_up, px, addr) = setup(h2, "0.3s").await;
    let want = if h2 { "HTTP/2.0" } else { "HTTP/1.1" };
    // A GET goes through the inline HTTP/1.1 path, a POST through hyper's client.
    for (method, body) in [("GET", ""), ("POST", "body")] {
        let r = request(addr, method, "/", &[], body, false).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(version(&r), want);
        assert_eq!(px.stat("cluster.c.upstream_cx_active"), 1, "{method}");
        wait_until("the idle connection is closed", || {
            px.stat("cluster.c.upstream_cx_active") == 0
        })
        .await;
    }
    assert_eq!(px.stat("cluster.c.upstream_cx_idle_timeout"), 2);
    assert_eq!(px.stat("cluster.c.upstream_cx_total"), 2);
}

#[tokio::test]
async fn idle_h1_connections_close_after_the_idle_timeout() {
    idle_connections_close(false).await;
}

#[tokio::test]
async fn idle_h2_connections_close_after_the_idle_timeout() {
    idle_connections_close(true).await;
}

#[tokio::test]
async fn an_h2_stream_longer_than_the_idle_timeout_keeps_its_connection() {
    let (_up, px, addr) = setup(true, "0.3s").await;
    // Four idle timeouts long; the idle period starts when it ends.
    let r = get(addr, "/slow", &[("x-test-delay-ms", "1200")]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(version(&r), "HTTP/2.0");
    assert_eq!(px.stat("cluster.c.upstream_cx_idle_timeout"), 0);
    // At once after it, the same connection carries the next request.
    assert_eq!(get(addr, "/", &[]).await.status, 200);
    assert_eq!(px.stat("cluster.c.upstream_cx_total"), 1);
    wait_until("the connection is closed once idle", || {
        px.stat("cluster.c.upstream_cx_active") == 0
    })
    .await;
    assert_eq!(px.stat("cluster.c.upstream_cx_idle_timeout"), 1);
}

#[tokio::test]
async fn an_idle_timeout_of_zero_keeps_upstream_connections_open() {
    for h2 in [false, true] {
        let (_up, px, addr) = setup(h2, "0s").await;
        assert_eq!(get(addr, "/", &[]).await.status, 200);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(px.stat("cluster.c.upstream_cx_active"), 1, "h2: {h2}");
        assert_eq!(get(addr, "/", &[]).await.status, 200);
        assert_eq!(px.stat("cluster.c.upstream_cx_total"), 1, "h2: {h2}");
        assert_eq!(px.stat("cluster.c.upstream_cx_idle_timeout"), 0);
    }
}
