//! Cluster types and endpoint handling: STRICT_DNS / LOGICAL_DNS, EDS from load_assignment with
//! priorities and health status, ORIGINAL_DST, and gRPC-style trailers through h2c.

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;

fn route_all(prefix: &str, cluster: &str) -> serde_json::Value {
    json!({"match": {"prefix": prefix}, "route": {"cluster": cluster}})
}

fn ep(addr: std::net::SocketAddr, health: &str) -> serde_json::Value {
    json!({"endpoint": {"address": {"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}}},
        "health_status": health})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_eds_and_original_dst_clusters() {
    let (a, b, c) = (
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
    );
    let dns = |name: &str, kind: &str, port: u16| {
        json!({"name": name, "type": kind, "connect_timeout": "1s", "dns_lookup_family": "V4_ONLY",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "localhost", "port_value": port}}}}]}]}})
    };
    let eds = |name: &str, groups: serde_json::Value| {
        json!({"name": name, "type": "EDS", "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}, "service_name": name},
            "load_assignment": {"cluster_name": name, "endpoints": groups}})
    };
    let clusters = vec![
        dns("strict", "STRICT_DNS", a.addr.port()),
        dns("logical", "LOGICAL_DNS", b.addr.port()),
        eds(
            "eds",
            json!([
            {"priority": 0, "lb_endpoints": [ep(a.addr, "UNHEALTHY"), ep(c.addr, "HEALTHY")]},
            {"priority": 1, "lb_endpoints": [ep(b.addr, "HEALTHY")]}]),
        ),
        eds(
            "failover",
            json!([
            {"priority": 0, "lb_endpoints": [ep(a.addr, "DRAINING")]},
            {"priority": 1, "lb_endpoints": [ep(b.addr, "UNKNOWN")]}]),
        ),
        json!({"name": "orig", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "1s",
            "original_dst_lb_config": {"use_http_header": true}}),
    ];
    let routes = json!([
        route_all("/strict", "strict"),
        route_all("/logical", "logical"),
        route_all("/eds", "eds"),
        route_all("/failover", "failover"),
        route_all("/orig", "orig")
    ]);
    let p = proxy(bootstrap(
        vec![listener(
            "l",
            json!([{"name": "v", "domains": ["*"], "routes": routes}]),
            vec![],
            json!({}),
        )],
        clusters,
    ))
    .await;
    let addr = p.addr("l");
    // DNS clusters are initialised (first resolution done) before the proxy reports started.
    assert_eq!(get(addr, "/strict", &[]).await.upstream(), "a");
    assert_eq!(get(addr, "/logical", &[]).await.upstream(), "b");
    assert_eq!(
        p.stat("cluster.strict.membership_total"),
        1,
        "V4_ONLY keeps 127.0.0.1 only"
    );
    // Priority 0 has one healthy host of two: its health is 50% x 1.4 = 70, so it keeps 70%
    // of the load and priority 1 takes the rest (Envoy's priority spillover). The unhealthy
    // host takes none: the priorities together have enough healthy hosts, so no panic.
    let n = 300;
    let mut by = std::collections::BTreeMap::new();
    for _ in 0..n {
        *by.entry(get(addr, "/eds", &[]).await.upstream())
            .or_insert(0) += 1;
    }
    assert_eq!(by.get("a"), None, "{by:?}");
    let c_share = by.get("c").copied().unwrap_or(0);
    assert!(within_binomial(c_share, n, 0.7), "{by:?}");
    assert_eq!(c_share + by.get("b").copied().unwrap_or(0), n);
    for _ in 0..6 {
        assert_eq!(
            get(addr, "/failover", &[]).await.upstream(),
            "b",
            "no usable host at priority 0"
        );
    }
    let target = a.addr.to_string();
    assert_eq!(
        get(addr, "/orig", &[("x-envoy-original-dst-host", &target)])
            .await
            .upstream(),
        "a"
    );
    let target = c.addr.to_string();
    assert_eq!(
        get(addr, "/orig", &[("x-envoy-original-dst-host", &target)])
            .await
            .upstream(),
        "c"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_trailers_pass_through_h2() {
    let a = upstream("a").await;
    let h2 = json!({"http2_protocol_options": {}});
    let routes = json!([{"match": {"prefix": "/pkg.Svc/", "grpc": {}}, "route": {"cluster": "grpc", "timeout": "0s"}}]);
    let p = proxy(bootstrap(
        vec![listener(
            "l",
            json!([{"name": "v", "domains": ["*"], "routes": routes}]),
            vec![],
            json!({}),
        )],
        vec![cluster("grpc", &[a.addr], h2)],
    ))
    .await;
    let addr = p.addr("l");
    let hdrs = [
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("x-test-trailers", "1"),
    ];
    let r = request(addr, "POST", "/pkg.Svc/Call", &hdrs, "\0\0\0\0\0", true).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["version"], "HTTP/2.0");
    assert_eq!(r.json()["headers"]["te"], "trailers");
    let t = r.trailers.expect("trailers forwarded");
    assert_eq!(t.get("grpc-status").unwrap(), "0");
    // The grpc route match requires a gRPC content-type.
    assert_eq!(
        request(addr, "POST", "/pkg.Svc/Call", &[], "", true)
            .await
            .status,
        404
    );
}

/// The socket of this process connected to `to` (the in-process proxy's upstream side), found
/// through /proc/net/tcp's inode and /proc/self/fd.
fn socket_to(to: std::net::SocketAddr) -> Option<std::os::fd::RawFd> {
    let std::net::IpAddr::V4(ip) = to.ip() else {
        return None;
    };
    let want = format!("{:08X}:{:04X}", u32::from_le_bytes(ip.octets()), to.port());
    let tcp = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = tcp.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&want.as_str()) && f.get(3) == Some(&"01")).then(|| f[9].to_string())
    })?;
    let link = format!("socket:[{inode}]");
    std::fs::read_dir("/proc/self/fd")
        .ok()?
        .flatten()
        .find_map(|e| {
            let l = std::fs::read_link(e.path()).ok()?;
            (l.as_os_str() == link.as_str()).then(|| e.file_name().to_str()?.parse().ok())?
        })
}

#[tokio::test]
async fn tcp_keepalive_applies_to_upstream_connections() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let routes = json!([
        {"match": {"prefix": "/ka"}, "route": {"cluster": "ka"}},
        {"match": {"prefix": "/plain"}, "route": {"cluster": "plain"}}]);
    let ka = json!({"upstream_connection_options": {"tcp_keepalive": {
        "keepalive_time": 300, "keepalive_interval": 7, "keepalive_probes": 4}}});
    let p = routes_proxy(
        routes,
        json!({}),
        vec![
            cluster("ka", &[a.addr], ka),
            cluster("plain", &[b.addr], json!({})),
        ],
    )
    .await;
    let addr = p.addr("l");
    assert_eq!(get(addr, "/ka", &[]).await.upstream(), "a");
    assert_eq!(get(addr, "/plain", &[]).await.upstream(), "b");
    // Both connections stay open in the pools.
    let fd = socket_to(a.addr).expect("the proxy's connection to a");
    // SAFETY: the descriptor belongs to the proxy running in this process and stays open
    // while it sits idle in the pool; it is only read here.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let s = socket2::SockRef::from(&fd);
    assert!(s.keepalive().unwrap());
    assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(300));
    assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(7));
    assert_eq!(s.tcp_keepalive_retries().unwrap(), 4);
    let fd = socket_to(b.addr).expect("the proxy's connection to b");
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    assert!(
        !socket2::SockRef::from(&fd).keepalive().unwrap(),
        "not asked for"
    );
}

#[tokio::test]
async fn max_requests_per_connection_limits_h2_streams_too() {
    let echo = upstream("echo").await;
    let vh = json!([{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "h2"}}]}]);
    let px = proxy(bootstrap(
        vec![listener("in", vh, vec![], json!({}))],
        vec![cluster(
            "h2",
            &[echo.addr],
            json!({"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "common_http_protocol_options": {"max_requests_per_connection": 2},
                "explicit_http_config": {"http2_protocol_options": {}}}}}),
        )],
    ))
    .await;
    let addr = px.addr("in");
    for _ in 0..5 {
        let r = get(addr, "/", &[]).await;
        assert_eq!(r.json()["version"], "HTTP/2.0", "{}", r.body);
    }
    assert_eq!(px.stat("cluster.h2.upstream_cx_total"), 3);
    assert_eq!(px.stat("cluster.h2.upstream_cx_max_requests"), 2);

    // max_connection_duration (the cluster's own common_http_protocol_options): a request
    // after it has passed gets a new connection.
    let px = proxy(bootstrap(
        vec![listener("in", vh_all("h2aged"), vec![], json!({}))],
        vec![cluster(
            "h2aged",
            &[echo.addr],
            json!({"http2_protocol_options": {},
                "common_http_protocol_options": {"max_connection_duration": "0.3s"}}),
        )],
    ))
    .await;
    let addr = px.addr("in");
    for _ in 0..2 {
        assert_eq!(get(addr, "/", &[]).await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get(addr, "/", &[]).await.status, 200);
    assert_eq!(px.stat("cluster.h2aged.upstream_cx_total"), 2);
    assert_eq!(
        px.stat("cluster.h2aged.upstream_cx_max_duration_reached"),
        1
    );
}

fn vh_all(cluster: &str) -> serde_json::Value {
    json!([{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}])
}

/// A listener whose accept queue is full and never drained: a connect to it hangs (Linux drops
/// the SYN), like a host that has gone away without a reset. Keep the returned values alive.
async fn hanging_addr() -> (tokio::net::TcpListener, Vec<std::net::TcpStream>) {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let l = s.listen(1).unwrap();
    let addr = l.local_addr().unwrap();
    let mut fill = Vec::new();
    // Fill the accept queue until a connect no longer completes.
    for _ in 0..8 {
        let c = tokio::task::spawn_blocking(move || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300))
        });
        match c.await.unwrap() {
            Ok(c) => fill.push(c),
            Err(_) => return (l, fill),
        }
    }
    panic!("the accept queue of {addr} never filled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_host_that_hangs_on_connect_does_not_hold_up_the_others() {
    let good = upstream("good").await;
    let (hang, _fill) = hanging_addr().await;
    let px = proxy(bootstrap(
        vec![listener("in", vh_all("h2"), vec![], json!({}))],
        vec![cluster(
            "h2",
            &[good.addr, hang.local_addr().unwrap()],
            json!({"http2_protocol_options": {}, "connect_timeout": "60s"}),
        )],
    ))
    .await;
    let addr = px.addr("in");
    // Round robin sends every other request to the hanging host; those wait for the 60 s
    // connect timeout. The others must not wait behind them.
    let mut reqs = Vec::new();
    for _ in 0..6 {
        reqs.push(tokio::spawn(async move { get(addr, "/", &[]).await }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Well inside the time a SYN to the hanging host takes to be retried (1, 3, 7, 15 s).
    tokio::time::timeout(
        Duration::from_secs(5),
        wait_until("three requests on the good host", || good.hits() >= 3),
    )
    .await
    .expect("requests to the good host waited behind the hanging connect");
    for r in reqs {
        r.abort();
    }
}
