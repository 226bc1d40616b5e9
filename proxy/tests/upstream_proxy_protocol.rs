//! The upstream PROXY protocol transport socket (`envoy.transport_sockets.upstream_proxy_protocol`,
//! Istio's DestinationRule `trafficPolicy.proxyProtocol`): every new upstream connection starts
//! with a PROXY header, checked here by upstreams that read it before anything else.

mod common;

use common::*;
use ppp::PartialResult;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that reads a PROXY header off each connection, then answers every HTTP/1.1
/// GET on it with what the header said: the v1 line, `LOCAL`, or `v2 SRC DST`. `raw` keeps
/// every byte each connection received, in order.
struct ProxiedUpstream {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    raw: Arc<Mutex<Vec<Vec<u8>>>>,
}

async fn proxied_upstream() -> ProxiedUpstream {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let raw = Arc::new(Mutex::new(Vec::new()));
    let (c, r) = (conns.clone(), raw.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_proxied(s, r.clone()));
        }
    });
    ProxiedUpstream { addr, conns, raw }
}

async fn serve_proxied(mut s: TcpStream, raw: Arc<Mutex<Vec<Vec<u8>>>>) {
    let me = {
        let mut raw = raw.lock().unwrap();
        raw.push(Vec::new());
        raw.len() - 1
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut said: Option<String> = None;
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        raw.lock().unwrap()[me].extend_from_slice(&chunk[..n]);
        buf.extend_from_slice(&chunk[..n]);
        // The header first, however the reads cut it.
        if said.is_none() {
            let (what, used) = match ppp::HeaderResult::parse(&buf) {
                ppp::HeaderResult::V1(Ok(h)) => (h.header.to_string(), h.header.len()),
                ppp::HeaderResult::V2(Ok(h)) => (describe_v2(&h), h.len()),
                r if r.is_incomplete() => continue,
                _ => return,
            };
            buf.drain(..used);
            said = Some(what);
        }
        let said = said.as_deref().unwrap_or_default();
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{said}",
                said.len()
            );
            if s.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

fn describe_v2(h: &ppp::v2::Header<'_>) -> String {
    match h.addresses {
        ppp::v2::Addresses::IPv4(a) => format!(
            "v2 {}:{} {}:{}",
            a.source_address, a.source_port, a.destination_address, a.destination_port
        ),
        ppp::v2::Addresses::Unspecified if h.command == ppp::v2::Command::Local => {
            "LOCAL".to_string()
        }
        ref other => format!("v2 {other:?}"),
    }
}

/// A cluster whose transport socket is the PROXY wrapper of `version` around `inner`.
fn proxied_cluster(name: &str, up: SocketAddr, version: &str, inner: Value) -> Value {
    let ts = json!({"name": "envoy.transport_sockets.upstream_proxy_protocol", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport",
        "config": {"version": version}, "transport_socket": inner}});
    cluster(name, &[up], json!({"transport_socket": ts}))
}

fn raw_buffer() -> Value {
    json!({"name": "envoy.transport_sockets.raw_buffer", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}})
}

/// The body of one GET on a kept-alive connection, which must be a 200.
async fn body_of(s: &mut TcpStream) -> String {
    let (head, body) = exchange_on(s, "app").await.unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    body
}

/// A sidecar's HTTP connection carries no PROXY header of its own, so (as in Envoy) v1 names
/// the upstream connection's own addresses and v2 sends LOCAL; either way the header comes
/// first and the connection is then pooled as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_upstreams_get_the_header_before_the_request() {
    let (one, two) = (proxied_upstream().await, proxied_upstream().await);
    let routes = json!([
        {"match": {"prefix": "/", "headers": [{"name": "x-v", "exact_match": "2"}]}, "route": {"cluster": "v2"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "v1"}}]);
    let p = routes_proxy(
        routes,
        json!({}),
        vec![
            proxied_cluster("v1", one.addr, "V1", raw_buffer()),
            // No inner socket at all: plaintext.
            proxied_cluster("v2", two.addr, "V2", Value::Null),
        ],
    )
    .await;
    let addr = p.addr("l");
    let mut s = TcpStream::connect(addr).await.unwrap();
    let said = body_of(&mut s).await;
    let prefix = "PROXY TCP4 127.0.0.1 127.0.0.1 ";
    let suffix = format!(" {}\r\n", one.addr.port());
    assert!(
        said.starts_with(prefix) && said.ends_with(&suffix),
        "{said:?}"
    );
    // The source port is the upstream connection's own, not the client's.
    let client_port = s.local_addr().unwrap().port().to_string();
    let ports: Vec<&str> = said.trim_end().split(' ').skip(4).collect();
    assert_ne!(ports[0], client_port, "{said:?}");
    assert_eq!(body_of(&mut s).await, said, "the pooled connection again");
    assert_eq!(one.conns.load(Ordering::SeqCst), 1);
    let resp = get(addr, "/", &[("x-v", "2")]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "LOCAL");
    // What went first on the wire: the header, then the request.
    let first = one.raw.lock().unwrap()[0].clone();
    let text = String::from_utf8_lossy(&first);
    assert!(
        text.starts_with("PROXY TCP4 ") && text.contains("\r\nGET / HTTP/1.1\r\n"),
        "{text:?}"
    );
}

/// A gateway behind a load balancer that speaks PROXY (`gatewayTopology.proxyProtocol`) to
/// an upstream that wants it too: the client the load balancer named is passed on, and
/// connections for different clients are not shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_passes_the_clients_address_on() {
    let up = proxied_upstream().await;
    let vhosts = json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]);
    let log = std::env::temp_dir().join(format!("mosn-pp-gw-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let format = "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS%\n";
    let mut l = listener(
        "gw",
        vhosts,
        vec![],
        json!({"access_log": [file_logger(log.to_str().unwrap(),
            json!({"text_format_source": {"inline_string": format}}))]}),
    );
    l["listener_filters"] = json!([{"name": "envoy.filters.listener.proxy_protocol", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"}}]);
    let p = proxy(bootstrap(
        vec![l],
        vec![proxied_cluster("app", up.addr, "V2", raw_buffer())],
    ))
    .await;
    let addr = p.addr("gw");
    let client = |ip: &'static str| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let header = format!("PROXY TCP4 {ip} 10.0.0.5 51000 443\r\n");
        s.write_all(header.as_bytes()).await.unwrap();
        s
    };
    let (mut a, mut b) = (client("203.0.113.7").await, client("203.0.113.8").await);
    for _ in 0..2 {
        assert_eq!(body_of(&mut a).await, "v2 203.0.113.7:51000 10.0.0.5:443");
        assert_eq!(body_of(&mut b).await, "v2 203.0.113.8:51000 10.0.0.5:443");
    }
    // One pooled connection per client, each reused.
    assert_eq!(up.conns.load(Ordering::SeqCst), 2);
    // The access log names the client the header named, and the load balancer's socket as
    // the direct remote address.
    let direct = a.local_addr().unwrap();
    let deadline = std::time::Instant::now() + HANG;
    let text = loop {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        if t.lines().count() >= 4 || std::time::Instant::now() > deadline {
            break t;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let want = format!("203.0.113.7:51000 {direct} 10.0.0.5:443");
    assert_eq!(text.lines().filter(|l| *l == want).count(), 2, "{text}");
    let _ = std::fs::remove_file(&log);
}

/// A TCP proxy always names the client and the address it dialled (Envoy's tcp_proxy puts
/// them in the filter state), and the header goes before a TLS handshake, not inside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_names_the_client_before_tls() {
    let up = proxied_upstream().await;
    let tls = json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": "app.example"}});
    let tp = json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "tcp", "cluster": "app"}});
    let l = json!({"name": "tcp", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [tp]}]});
    let p = proxy(bootstrap(
        vec![l],
        vec![proxied_cluster("app", up.addr, "V1", tls)],
    ))
    .await;
    let addr = p.addr("tcp");
    let s = TcpStream::connect(addr).await.unwrap();
    let me = s.local_addr().unwrap();
    let want = format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        me.ip(),
        addr.ip(),
        me.port(),
        addr.port()
    );
    wait_until("the upstream saw the connection", || {
        up.raw.lock().unwrap().iter().any(|r| r.len() > want.len())
    })
    .await;
    let first = up.raw.lock().unwrap()[0].clone();
    assert_eq!(String::from_utf8_lossy(&first[..want.len()]), want);
    // A TLS record (handshake, TLS 1.x) follows the header.
    assert_eq!(&first[want.len()..want.len() + 2], &[0x16, 0x03]);
    drop(s);
}
