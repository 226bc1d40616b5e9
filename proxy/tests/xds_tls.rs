//! ADS over TLS: the xDS cluster's `UpstreamTlsContext` (trusted CA, client certificate for
//! mutual TLS, SNI, ALPN h2) against a real TLS gRPC server inside the test, with
//! certificates made by the `openssl` command line for each test.

// Each test binary that includes these uses a different part of them.
#[allow(dead_code)]
#[path = "xds_client/ads_server.rs"]
mod ads_server;
#[allow(dead_code)]
#[path = "xds_client/bookinfo.rs"]
mod bookinfo;
mod common;

use ads_server::*;
use bookinfo::*;
use common::certs::*;
use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The name istiod's certificate carries and Istio's non-agent bootstrap sends as SNI.
const ISTIOD: &str = "istiod.istio-system.svc";

/// A directory with: `ca` (signs `server` for istiod.istio-system.svc and `client`, a
/// workload SPIFFE identity) and an unrelated `other-ca`.
fn pki() -> Dir {
    let dir = Dir::new();
    let d = dir.path();
    ca(d, "ca");
    ca(d, "other-ca");
    leaf(
        d,
        "server",
        "ca",
        &format!("subjectAltName=DNS:{ISTIOD}\nextendedKeyUsage=serverAuth\n"),
    );
    leaf(
        d,
        "client",
        "ca",
        "subjectAltName=URI:spiffe://cluster.local/ns/default/sa/productpage\nextendedKeyUsage=clientAuth\n",
    );
    dir
}

/// A TLS acceptor for `server.crt`, requiring a client certificate signed by `ca.crt`.
fn acceptor(d: &Path) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(d.join("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .unwrap();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(d.join("server.crt"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(d.join("server.key")).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// Istio's non-agent bootstrap shape: `xds-grpc` over TCP with an UpstreamTlsContext.
fn bootstrap(xds: SocketAddr, tls: Value, admin_port: u16) -> Value {
    json!({
        "node": {"id": "sidecar~10.1.1.1~productpage-v1-123.default~default.svc.cluster.local",
                 "cluster": "productpage.default"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "lds_config": ads_source("0s"), "cds_config": ads_source("0s"),
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]}},
        "static_resources": {"clusters": [{"name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s",
            "http2_protocol_options": {},
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
            "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {"address":
                {"socket_address": {"address": xds.ip().to_string(), "port_value": xds.port()}}}}]}]}}]}
    })
}

fn upstream_tls(ca: Value, cert: Value, key: Value) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": ISTIOD,
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "tls_certificates": [{"certificate_chain": cert, "private_key": key}],
            "validation_context": {"trusted_ca": ca}}
    })
}

fn file(p: PathBuf) -> Value {
    json!({"filename": p.to_str().unwrap()})
}

/// Mutual TLS with files: the proxy verifies istiod's certificate against the CA, presents
/// its workload certificate, and takes Bookinfo from the server: ready, routing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_arrives_over_mutual_tls() {
    let pki = pki();
    let d = pki.path();
    let ads = Ads::new();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let xds = ads.serve_tls(acceptor(d), peers.clone()).await;
    let ups = vec![
        upstream("v1").await,
        upstream("v2").await,
        upstream("v3").await,
    ];
    ads.put(CDS, clusters("0s"));
    ads.put(EDS, endpoints(&ups));
    ads.put(LDS, listeners());
    ads.put(RDS, route(Vs::Default, false));
    let tls = upstream_tls(
        file(d.join("ca.crt")),
        file(d.join("client.crt")),
        file(d.join("client.key")),
    );
    let p = proxy(bootstrap(xds, tls, 0)).await;
    let _ = mosn::xds::start(&p.server);
    let deadline = Instant::now() + HANG;
    while p.server.state_name() != "LIVE" {
        assert!(
            Instant::now() < deadline,
            "proxy not LIVE over TLS: {} (cds.update_failure {})",
            p.server.state_name(),
            p.stat("cluster_manager.cds.update_failure")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(p.stat("cluster_manager.cds.update_success") > 0);
    assert!(p.stat("listener_manager.lds.update_success") > 0);
    assert_eq!(p.stat("control_plane.connected_state"), 1);
    // The routes came over TLS and carry traffic.
    let addr = p.addr(LISTENER);
    let mut seen = Vec::new();
    for _ in 0..6 {
        let r = get(addr, "/reviews/0", &[("host", HOST)]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        seen.push(r.upstream());
    }
    for v in ["v1", "v2", "v3"] {
        assert_eq!(seen.iter().filter(|s| *s == v).count(), 2, "{seen:?}");
    }
    // The server saw the proxy's workload certificate (mutual TLS), and only TLS streams.
    let client_der = CertificateDer::from_pem_file(d.join("client.crt")).unwrap();
    let peers = peers.lock().unwrap().clone();
    assert!(!peers.is_empty());
    assert!(
        peers
            .iter()
            .all(|chain| chain.first() == Some(&client_der.to_vec())),
        "every connection presented client.crt"
    );
    let first = ads.0.sotw.lock().unwrap()[0].clone();
    assert_eq!(first.type_url, CDS);
}

/// Inline PEM works the same, and a server signed by another CA is refused: no stream, no
/// config, a counted failure and a log line that says what to check, without key material.
#[test]
fn wrong_ca_fails_the_connection_with_a_clear_log() {
    let pki = pki();
    let d = pki.path();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ads = Ads::new();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let xds = rt.block_on(ads.serve_tls(acceptor(d), peers.clone()));
    ads.put(CDS, clusters("0s"));
    let key = std::fs::read_to_string(d.join("client.key")).unwrap();
    let tls = upstream_tls(
        file(d.join("other-ca.crt")),
        json!({"inline_string": std::fs::read_to_string(d.join("client.crt")).unwrap()}),
        json!({"inline_string": key}),
    );
    let admin = dead_addr();
    let boot = d.join("envoy-rev0.json");
    std::fs::write(&boot, bootstrap(xds, tls, admin.port()).to_string()).unwrap();
    let log = d.join("mosn.log");
    let mut child = Kill(
        Command::new(env!("CARGO_BIN_EXE_mosn"))
            .args(["-c", boot.to_str().unwrap(), "-l", "info"])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + HANG;
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("xDS stream ended") {
            break text;
        }
        assert!(child.0.try_wait().unwrap().is_none(), "mosn exited: {text}");
        assert!(
            Instant::now() < deadline,
            "no connection failure logged: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(text.contains("invalid peer certificate"), "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");
    assert!(text.contains("help: check that trusted_ca"), "{text}");
    assert!(text.contains("other-ca.crt"), "names the CA file: {text}");
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(body.len() > 20);
    assert!(
        !text.contains(&body[..20]),
        "the private key never reaches the log: {text}"
    );
    // Nothing was applied; the failure is counted; the server never saw a request.
    let stats = rt.block_on(get(admin, "/stats?usedonly", &[])).body;
    let stat = |name: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0)
    };
    assert_eq!(stat("cluster_manager.cds.update_success"), 0, "{stats}");
    assert!(stat("cluster_manager.cds.update_failure") > 0, "{stats}");
    assert_eq!(stat("control_plane.connected_state"), 0, "{stats}");
    assert!(ads.0.sotw.lock().unwrap().is_empty());
    assert!(peers.lock().unwrap().is_empty(), "no handshake completed");
    let ready = rt.block_on(get(admin, "/ready", &[]));
    assert_ne!(ready.status, 200, "not ready without config");
}

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
