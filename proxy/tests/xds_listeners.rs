//! Listener updates over LDS: a listener that changes on the same address takes over the old
//! socket, so no client is refused while it is replaced, and old connections drain.

#[path = "xds_client/ads_server.rs"]
#[allow(dead_code)]
mod ads_server;
#[path = "xds_client/bookinfo.rs"]
#[allow(dead_code)]
mod bookinfo;
mod common;
#[path = "xds_client/harness.rs"]
#[allow(dead_code)]
mod harness;

use ads_server::*;
use bookinfo::*;
use common::*;
use envoy_types::pb::google::protobuf::Any;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One request on a new connection: Ok for a 200, else what went wrong (refused, reset, ...).
async fn once(addr: SocketAddr) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(format!("GET / HTTP/1.1\r\nhost: {HOST}\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    tokio::time::timeout(HANG, s.read_to_end(&mut out))
        .await
        .map_err(|_| "hung".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&out);
    if text.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(text.lines().next().unwrap_or("empty response").to_string())
    }
}

/// Serves `make("gen0")` over LDS, then replaces it ten times (a new stat_prefix each
/// time, so it really is a new listener) while a client opens a new connection per request,
/// as fast as it can, to each of `addrs` in turn. Asserts that no request failed and that the
/// last generation served.
async fn replaced_ten_times_under_load(
    make: impl Fn(&str) -> (String, Any),
    addrs: Vec<SocketAddr>,
) -> Proxy {
    let ups = vec![
        upstream("v1").await,
        upstream("v2").await,
        upstream("v3").await,
    ];
    let ads = Ads::new();
    ads.put(CDS, clusters("0s"));
    ads.put(EDS, endpoints(&ups));
    ads.put(LDS, vec![make("gen0")]);
    let v = ads.put(RDS, route(Vs::AllV1, false));
    let xds = ads.serve_tcp().await;
    let p = harness::start_proxy(harness::tcp(xds), false).await;
    ads.reply(RDS, v).await.unwrap();
    let deadline = Instant::now() + HANG;
    for &addr in &addrs {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "listener never bound on {addr}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let client = tokio::spawn(async move {
        let (mut ok, mut failed) = (0, Vec::new());
        for addr in addrs.iter().cycle() {
            if s.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            match once(*addr).await {
                Ok(()) => ok += 1,
                Err(e) => failed.push(format!("{addr}: {e}")),
            }
        }
        (ok, failed)
    });
    for gen in 1..=10 {
        let v = ads.put(LDS, vec![make(&format!("gen{gen}"))]);
        ads.reply(LDS, v).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = client.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 50, "only {ok} requests were made");
    // Every generation served traffic on the same sockets.
    assert!(p.stat("http.gen10.downstream_rq_total") > 0);
    assert_eq!(p.stat("listener_manager.listener_create_failure"), 0);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_listener_on_the_same_port_refuses_nobody() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    replaced_ten_times_under_load(|g| listener_on(LISTENER, "9080", g, port), vec![addr]).await;
}

/// Istio's dual-stack listeners: `0.0.0.0:port` with `[::]:port` in `additional_addresses`.
/// Both sockets serve, `[::]` takes IPv6 only (so both can bind), both carry over when LDS
/// replaces the listener, and the admin API lists both, as Envoy does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_listener_serves_and_is_replaced_on_both_families() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback on this host; skipped");
        return;
    }
    let port = free_port();
    let dual = |g: &str| {
        let mut l = listener_json(LISTENER, "9080", g, port);
        l["address"]["socket_address"]["address"] = "0.0.0.0".into();
        l["additional_addresses"] = serde_json::json!([{"address":
            {"socket_address": {"address": "::", "port_value": port}}}]);
        pack_listener(l)
    };
    let v4: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let p = replaced_ten_times_under_load(dual, vec![v4, v6]).await;
    // Connections on both sockets count under the listener's first address.
    let total = p.stat(&format!("listener.0.0.0.0_{port}.downstream_cx_total"));
    assert!(
        total > 50,
        "listener.0.0.0.0_{port}.downstream_cx_total = {total}"
    );

    let text = get(p.admin(), "/listeners", &[]).await.body;
    assert_eq!(
        text,
        format!("{LISTENER}::0.0.0.0:{port}\n{LISTENER}::[::]:{port}\n")
    );
    let json = get(p.admin(), "/listeners?format=json", &[]).await.json();
    let l = &json["listener_statuses"][0];
    assert_eq!(l["local_address"]["socket_address"]["address"], "0.0.0.0");
    assert_eq!(
        l["additional_local_addresses"][0]["socket_address"],
        serde_json::json!({"address": "::", "port_value": port})
    );
}

/// A keep-alive HTTP/1.1 connection from `src` (a loopback address of the test's choosing,
/// which the listener's chains match on).
async fn connect_from(src: &str, addr: SocketAddr) -> tokio::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(format!("{src}:0").parse().unwrap()).unwrap();
    s.connect(addr).await.unwrap()
}

/// One request on `s`: whether it was answered 200, and whether the answer said
/// `connection: close`.
async fn ask(s: &mut tokio::net::TcpStream) -> (bool, bool) {
    let head = tokio::time::timeout(HANG, get_on(s, HOST))
        .await
        .expect("no answer");
    let head = head.unwrap_or_else(|e| panic!("{e}"));
    (
        head.starts_with("http/1.1 200"),
        head.contains("connection: close"),
    )
}

/// Envoy's in-place filter chain update: when only some filter chains change, connections on
/// the unchanged ones go on and only those on the changed ones drain. A change outside the
/// chains still drains everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_chain_update_drains_only_the_changed_chains() {
    let ups = vec![
        upstream("v1").await,
        upstream("v2").await,
        upstream("v3").await,
    ];
    let port = free_port();
    // Chain "a" for clients from 127.0.0.1, chain "b" for 127.0.0.2.
    let make = |b_prefix: &str, extra: serde_json::Value| {
        let mut l = listener_json(LISTENER, "9080", "a", port);
        let a = l["filter_chains"][0].clone();
        let mut b = a.clone();
        let mut a = a;
        a["filter_chain_match"] = serde_json::json!({"source_prefix_ranges":
            [{"address_prefix": "127.0.0.1", "prefix_len": 32}]});
        b["filter_chain_match"] = serde_json::json!({"source_prefix_ranges":
            [{"address_prefix": "127.0.0.2", "prefix_len": 32}]});
        b["filters"][0]["typed_config"]["stat_prefix"] = b_prefix.into();
        l["filter_chains"] = serde_json::json!([a, b]);
        mosn::config::merge(&mut l, extra);
        pack_listener(l)
    };
    let ads = Ads::new();
    ads.put(CDS, clusters("0s"));
    ads.put(EDS, endpoints(&ups));
    ads.put(LDS, vec![make("b0", serde_json::json!({}))]);
    let v = ads.put(RDS, route(Vs::AllV1, false));
    let xds = ads.serve_tcp().await;
    let p = harness::start_proxy(harness::tcp(xds), false).await;
    ads.reply(RDS, v).await.unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + HANG;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "listener never bound");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut on_a = connect_from("127.0.0.1", addr).await;
    let mut on_b = connect_from("127.0.0.2", addr).await;
    assert_eq!(ask(&mut on_a).await, (true, false));
    assert_eq!(ask(&mut on_b).await, (true, false));
    assert_eq!(p.stat("http.b0.downstream_rq_total"), 1);

    // Chain "b" changes (its stat prefix); chain "a" and the rest do not.
    let v = ads.put(LDS, vec![make("b1", serde_json::json!({}))]);
    ads.reply(LDS, v).await.unwrap();
    let mut new_b = connect_from("127.0.0.2", addr).await;
    assert_eq!(ask(&mut new_b).await, (true, false));
    assert_eq!(
        p.stat("http.b1.downstream_rq_total"),
        1,
        "the new chain serves"
    );
    // The old "b" connection is told to close; the "a" one goes on, request after request.
    assert_eq!(ask(&mut on_b).await, (true, true));
    for _ in 0..3 {
        assert_eq!(ask(&mut on_a).await, (true, false));
    }
    assert_eq!(p.stat("listener_manager.listener_create_failure"), 0);

    // A change outside the chains (a listener setting) replaces the listener: all drain,
    // the connection on the kept chain included.
    let v = ads.put(
        LDS,
        vec![make(
            "b1",
            serde_json::json!({"listener_filters_timeout": "2s"}),
        )],
    );
    ads.reply(LDS, v).await.unwrap();
    assert_eq!(ask(&mut on_a).await, (true, true));
    assert_eq!(ask(&mut new_b).await, (true, true));
}

/// A listener removed by LDS: its TCP proxy connections close once the drain time is over,
/// as Envoy closes what is left of a removed listener (a mere drain leaves them alone, see
/// listeners.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_listeners_tcp_connections_close_after_the_drain_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An echo server.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let port = free_port();
    let tcp = |name: &str, port: u16| {
        pack_listener(serde_json::json!({"name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": "echo", "cluster": "echo"}}]}]}))
    };
    let echo_cluster = pack_cluster(serde_json::json!({"name": "echo", "type": "STATIC",
        "connect_timeout": "1s", "load_assignment": {"cluster_name": "echo", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": echo_addr.port()}}}}]}]}}));
    let ads = Ads::new();
    ads.put(CDS, vec![echo_cluster]);
    ads.put(LDS, vec![tcp("echo", port)]);
    let xds = ads.serve_tcp().await;
    let opts = mosn::cli::Options {
        drain_time_s: Some(1),
        ..Default::default()
    };
    let _p = harness::start_proxy_with(harness::tcp(xds), false, opts).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + HANG;
    let mut s = loop {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            break s;
        }
        assert!(Instant::now() < deadline, "listener never bound");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");

    // The listener goes: the connection goes on through the drain time, then is closed.
    let v = ads.put(LDS, vec![]);
    ads.reply(LDS, v).await.unwrap();
    s.write_all(b"pong").await.unwrap();
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(HANG, s.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "not closed by the proxy: {closed:?}"
    );
}
