//! Istio's listener model without interception: filter-chain selection (destination port,
//! transport protocol and SNI/ALPN from tls_inspector, application protocol from
//! http_inspector), tcp_proxy with weighted clusters and half-close, BlackHoleCluster, and the
//! `no_filter_chain_match` path. Real TCP upstreams and a real `openssl s_client`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP upstream that greets with `<name>\n`, then echoes, and remembers the first bytes it
/// received.
struct TcpUpstream {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    first: Arc<std::sync::Mutex<Vec<u8>>>,
}

async fn tcp_upstream(name: &'static str) -> TcpUpstream {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let first = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (c, f) = (conns.clone(), first.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let f = f.clone();
            tokio::spawn(async move {
                let _ = s.write_all(format!("{name}\n").as_bytes()).await;
                let mut buf = [0u8; 4096];
                let mut seen = false;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if !seen {
                                *f.lock().unwrap() = buf[..n].to_vec();
                                seen = true;
                            }
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                // Half-close seen: say goodbye after the client's FIN, then close.
                let _ = s.write_all(b"bye\n").await;
            });
        }
    });
    TcpUpstream { addr, conns, first }
}

fn tcp_proxy(prefix: &str, clusters: Value) -> Value {
    let mut tp = json!({"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": prefix});
    match clusters {
        Value::String(c) => tp["cluster"] = json!(c),
        w => tp["weighted_clusters"] = json!({"clusters": w}),
    }
    json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": tp})
}

fn http_filter(name: &str, cluster: &str) -> Value {
    json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "route_config": {"name": name, "virtual_hosts": [{"name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}})
}

/// Connect and read the upstream's greeting line.
async fn greet(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while tokio::time::timeout(HANG, s.read(&mut b))
        .await
        .unwrap()
        .unwrap()
        == 1
        && b[0] != b'\n'
    {
        line.push(b[0]);
    }
    (s, String::from_utf8(line).unwrap())
}

/// Whether the proxy closed the connection without sending anything (a close with unread data
/// arrives as a reset).
async fn closed_silently(s: &mut TcpStream) -> bool {
    let mut out = Vec::new();
    match tokio::time::timeout(HANG, s.read_to_end(&mut out))
        .await
        .expect("connection should end")
    {
        Ok(_) => out.is_empty(),
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

async fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(HANG, s.read_to_end(&mut out))
        .await
        .expect("connection should end")
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_echo_half_close_and_weighted_clusters() {
    let (a, b) = (tcp_upstream("a").await, tcp_upstream("b").await);
    let l = json!({"name": "tcp", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [tcp_proxy("tcp", json!([{"name": "a", "weight": 25}, {"name": "b", "weight": 75}]))]}]});
    let p = proxy(bootstrap(
        vec![l],
        vec![
            cluster("a", &[a.addr], json!({})),
            cluster("b", &[b.addr], json!({})),
        ],
    ))
    .await;
    let addr = p.addr("tcp");

    // Echo, then half-close: the upstream sees our FIN and still gets its last word through.
    let (mut s, who) = greet(addr).await;
    assert!(who == "a" || who == "b", "{who}");
    s.write_all(b"hello").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut s).await, b"hellobye\n");

    let n = 400;
    let mut to_a = 0;
    for _ in 0..n {
        let (_s, who) = greet(addr).await;
        to_a += (who == "a") as usize;
    }
    assert!(
        within_binomial(to_a, n, 0.25),
        "{to_a} of {n} went to a (expected 25%)"
    );
    assert!(p.stat("tcp.tcp.downstream_cx_total") > n as u64);
    assert!(p.stat("tcp.tcp.downstream_cx_rx_bytes_total") >= 5);
    assert!(p.stat("cluster.a.upstream_cx_total") == a.conns.load(Ordering::SeqCst) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_and_unknown_cluster_close_the_connection() {
    let l = |name: &str, c: &str| {
        json!({"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [tcp_proxy(name, json!(c))]}]})
    };
    let p = proxy(bootstrap(
        vec![l("bh", "BlackHoleCluster"), l("nocluster", "missing")],
        vec![json!({"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "1s"})],
    ))
    .await;
    for name in ["bh", "nocluster"] {
        let mut s = TcpStream::connect(p.addr(name)).await.unwrap();
        let _ = s.write_all(b"x").await;
        assert!(closed_silently(&mut s).await, "{name}");
    }
    assert_eq!(
        p.stat("cluster.BlackHoleCluster.upstream_cx_none_healthy"),
        1
    );
    assert_eq!(p.stat("tcp.nocluster.downstream_cx_no_route"), 1);
}

/// Istio's permissive inbound shape: per-port chains split by transport and application
/// protocol, a catch-all, and a port with no chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_chains_by_port_transport_and_protocol() {
    let http_up = upstream("http-app").await;
    let (tcp_app, tls_app, tls_istio, other) = (
        tcp_upstream("tcp-app").await,
        tcp_upstream("tls-app").await,
        tcp_upstream("tls-istio").await,
        tcp_upstream("catch-all").await,
    );
    let port = free_port();
    let chains = json!([
        {"name": "http", "filter_chain_match": {"destination_port": port, "transport_protocol": "raw_buffer",
            "application_protocols": ["http/1.1", "http/1.0", "h2c"]},
         "filters": [http_filter("inbound_http", "http-app")]},
        {"name": "tls-istio", "filter_chain_match": {"destination_port": port, "transport_protocol": "tls",
            "application_protocols": ["istio-peer-exchange", "istio"]},
         "filters": [tcp_proxy("tls-istio", json!("tls-istio"))]},
        {"name": "tls-sni", "filter_chain_match": {"destination_port": port, "transport_protocol": "tls",
            "server_names": ["*.example.com"]},
         "filters": [tcp_proxy("tls-app", json!("tls-app"))]},
        {"name": "tcp", "filter_chain_match": {"destination_port": port, "transport_protocol": "raw_buffer"},
         "filters": [tcp_proxy("tcp-app", json!("tcp-app"))]},
    ]);
    let l = json!({"name": "virtualInbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "listener_filters": [
            {"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}},
            {"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}},
            {"name": "envoy.filters.listener.http_inspector", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"}}],
        "listener_filters_timeout": "1s", "continue_on_listener_filters_timeout": true,
        "filter_chains": chains,
        "default_filter_chain": {"name": "catch-all", "filters": [tcp_proxy("catch-all", json!("catch-all"))]}});
    let other_port = free_port();
    let mut l2 = l.clone();
    l2["name"] = json!("other-port");
    l2["address"]["socket_address"]["port_value"] = json!(other_port);
    l2.as_object_mut().unwrap().remove("default_filter_chain");
    let p = proxy(bootstrap(
        vec![l, l2],
        vec![
            cluster("http-app", &[http_up.addr], json!({})),
            cluster("tcp-app", &[tcp_app.addr], json!({})),
            cluster("tls-app", &[tls_app.addr], json!({})),
            cluster("tls-istio", &[tls_istio.addr], json!({})),
            cluster("catch-all", &[other.addr], json!({})),
        ],
    ))
    .await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // HTTP/1.1 → the HCM chain.
    let r = get(addr, "/x", &[]).await;
    assert_eq!((r.status, r.upstream()), (200, "http-app".to_string()));
    // A client-first non-HTTP protocol → the raw TCP chain.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"\x00\x01binary\r\n").await.unwrap();
    let mut line = [0u8; 8];
    tokio::time::timeout(HANG, s.read_exact(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&line, b"tcp-app\n");
    drop(s);
    // A server-first protocol sends nothing: after listener_filters_timeout, with
    // continue_on_listener_filters_timeout, it goes on as raw_buffer.
    let (_s, who) = greet(addr).await;
    assert_eq!(who, "tcp-app");

    // TLS ClientHellos from a real client: ALPN istio → tls-istio; SNI *.example.com →
    // tls-app; neither → no chain at this port's level → default chain.
    for (args, want) in [
        (vec!["-alpn", "istio-peer-exchange,istio"], &tls_istio),
        (vec!["-servername", "api.example.com"], &tls_app),
        (vec!["-servername", "other.test"], &other),
    ] {
        let before = want.conns.load(Ordering::SeqCst);
        let mut child = std::process::Command::new("openssl")
            .args(["s_client", "-connect", &addr.to_string()])
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl is installed by .ci/run");
        let deadline = std::time::Instant::now() + HANG;
        while want.conns.load(Ordering::SeqCst) == before || want.first.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "{args:?} never reached its chain"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        let first = want.first.lock().unwrap().clone();
        assert_eq!(
            first.first(),
            Some(&0x16),
            "{args:?}: the upstream gets the untouched ClientHello"
        );
        want.first.lock().unwrap().clear();
    }

    // No chain and no default chain: closed and counted.
    let mut s = TcpStream::connect(format!("127.0.0.1:{other_port}"))
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_silently(&mut s).await);
    assert_eq!(
        p.stat(&format!(
            "listener.127.0.0.1_{other_port}.no_filter_chain_match"
        )),
        1
    );
}

/// `/drain_listeners` asks HTTP connections to leave but lets TCP proxy connections run on,
/// as Envoy does (it closes them only when their listener is removed; see xds_listeners.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_leaves_tcp_connections_alone() {
    let a = tcp_upstream("a").await;
    let l = json!({"name": "tcp", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [tcp_proxy("tcp", json!([{"name": "a", "weight": 1}]))]}]});
    let opts = mosn::cli::Options {
        drain_time_s: Some(1),
        ..Default::default()
    };
    let p = proxy_with_options(
        bootstrap(vec![l], vec![cluster("a", &[a.addr], json!({}))]),
        opts,
    )
    .await;
    let (mut s, who) = greet(p.addr("tcp")).await;
    assert_eq!(who, "a");
    let r = request(
        p.admin(),
        "POST",
        "/drain_listeners?graceful",
        &[],
        "",
        false,
    )
    .await;
    assert_eq!(r.status, 200);
    // Past the drain time, the connection still carries bytes both ways.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

/// A dual-stack socket (`::` with `ipv4_compat`) sees its IPv4 clients as IPv4, as Envoy does:
/// the address it appends to `x-forwarded-for` is `127.0.0.1`, not `::ffff:127.0.0.1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_clients_of_a_dual_stack_socket_are_ipv4() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 on this host; skipped");
        return;
    }
    let up = upstream("up").await;
    let mut hcm = http_filter("dual", "up");
    hcm["typed_config"]["use_remote_address"] = json!(true);
    let l = json!({"name": "dual", "address": {"socket_address": {"address": "::", "port_value": 0, "ipv4_compat": true}},
        "filter_chains": [{"filters": [hcm]}]});
    let p = proxy(bootstrap(
        vec![l],
        vec![cluster("up", &[up.addr], json!({}))],
    ))
    .await;
    let port = p.addr("dual").port();
    for (client, seen) in [("127.0.0.1", "127.0.0.1"), ("[::1]", "::1")] {
        let addr = format!("{client}:{port}").parse().unwrap();
        let r = get(addr, "/", &[("host", "x")]).await;
        assert_eq!(
            r.json()["headers"]["x-forwarded-for"],
            seen,
            "from {client}"
        );
    }
}

/// A gateway behind a load balancer that speaks the PROXY protocol (Istio's
/// `gatewayTopology.proxyProtocol`): the header's client is the connection's remote address,
/// so the edge HCM (`use_remote_address`) forwards it in x-forwarded-for; a connection
/// without the header is closed and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_protocol_header_names_the_client() {
    let up = upstream("app").await;
    let vhosts = json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]);
    let mut l = listener("gw", vhosts, vec![], json!({"use_remote_address": true}));
    l["listener_filters"] = json!([{"name": "envoy.filters.listener.proxy_protocol", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"}}]);
    let p = proxy(bootstrap(
        vec![l],
        vec![cluster("app", &[up.addr], json!({}))],
    ))
    .await;
    let addr = p.addr("gw");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PROXY TCP4 203.0.113.7 10.0.0.5 51000 443\r\nGET / HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_to_close(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The echo's JSON, whatever the framing (it may come chunked).
    let body = &answer[answer.find('{').unwrap()..=answer.rfind('}').unwrap()];
    let echo: Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        echo["headers"]["x-forwarded-for"],
        json!("203.0.113.7"),
        "{echo}"
    );
    // No header: closed before any HTTP answer.
    let mut bare = TcpStream::connect(addr).await.unwrap();
    bare.write_all(b"GET / HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_to_close(&mut bare).await;
    assert!(answer.is_empty(), "{answer}");
    assert_eq!(
        p.stat("listener.127.0.0.1_0.downstream_cx_proxy_proto_error"),
        1
    );
    assert_eq!(up.hits(), 1);
}
