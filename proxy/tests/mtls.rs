//! Istio's mutual TLS on the data path: filter chains that terminate TLS with a
//! `DownstreamTlsContext` (certificates by secret name, client certificates checked against
//! the validation context's CA and SAN matchers, ALPN choosing HTTP/2). The client is curl, a
//! real TLS peer; certificates are made by openssl for each test.

mod common;

use common::certs::*;
use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;

const SPIFFE_CLIENT: &str = "spiffe://cluster.local/ns/default/sa/productpage";
const SPIFFE_OTHER: &str = "spiffe://cluster.local/ns/default/sa/ratings";
const SPIFFE_SERVER: &str = "spiffe://cluster.local/ns/default/sa/reviews";

/// `ca` signs `server` (its SPIFFE URI, and DNS `server.test` for curl's name check),
/// `client` and `other` (workload identities); `rogue-ca` signs `rogue` with the client's URI.
fn pki() -> Dir {
    let dir = Dir::new();
    let d = dir.path();
    ca(d, "ca");
    ca(d, "rogue-ca");
    let usage = "extendedKeyUsage=serverAuth,clientAuth\n";
    leaf(
        d,
        "server",
        "ca",
        &format!("subjectAltName=URI:{SPIFFE_SERVER},DNS:server.test\n{usage}"),
    );
    leaf(
        d,
        "client",
        "ca",
        &format!("subjectAltName=URI:{SPIFFE_CLIENT}\n{usage}"),
    );
    leaf(
        d,
        "other",
        "ca",
        &format!("subjectAltName=URI:{SPIFFE_OTHER}\n{usage}"),
    );
    leaf(
        d,
        "rogue",
        "rogue-ca",
        &format!("subjectAltName=URI:{SPIFFE_CLIENT}\n{usage}"),
    );
    dir
}

fn file(d: &Path, name: &str) -> Value {
    json!({"filename": d.join(name).to_str().unwrap()})
}

/// Istio's secrets as static ones: `default` (the workload certificate) and `ROOTCA`.
fn secrets(d: &Path) -> Value {
    json!([
        {"name": "default", "tls_certificate": {"certificate_chain": file(d, "server.crt"), "private_key": file(d, "server.key")}},
        {"name": "ROOTCA", "validation_context": {"trusted_ca": file(d, "ca.crt")}},
    ])
}

/// Istio's inbound DownstreamTlsContext, with the secrets by name and `sans` as the default
/// validation context's matchers.
fn downstream_tls(sans: Value) -> Value {
    json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": true,
        "common_tls_context": {
            "alpn_protocols": ["h2", "http/1.1"],
            "tls_certificate_sds_secret_configs": [{"name": "default"}],
            "combined_validation_context": {
                "default_validation_context": {"match_subject_alt_names": sans},
                "validation_context_sds_secret_config": {"name": "ROOTCA"}}}}})
}

/// A proxy whose listener "in" terminates mTLS in front of one upstream.
async fn mtls_proxy(d: &Path, sans: Value) -> (Proxy, Upstream) {
    let up = upstream("app").await;
    let vhosts = json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]);
    let mut l = listener("in", vhosts, vec![], json!({}));
    l["filter_chains"][0]["transport_socket"] = downstream_tls(sans);
    let mut boot = bootstrap(vec![l], vec![cluster("app", &[up.addr], json!({}))]);
    boot["static_resources"]["secrets"] = secrets(d);
    (proxy(boot).await, up)
}

/// curl over TLS to `addr` as server.test, with `args` (client certificate, --http2);
/// `(status, HTTP version)`, or curl's error.
async fn curl(d: &Path, addr: SocketAddr, args: &[&str]) -> Result<(u16, String), String> {
    let resolve = format!("server.test:{}:127.0.0.1", addr.port());
    let url = format!("https://server.test:{}/hello", addr.port());
    let (d, args): (std::path::PathBuf, Vec<String>) =
        (d.into(), args.iter().map(|a| a.to_string()).collect());
    // Blocking, off the runtime's workers: the proxy under test runs on them.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .current_dir(d)
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
                "--max-time",
                "10",
            ])
            .args(["--cacert", "ca.crt", "--resolve", &resolve])
            .args(args)
            .arg(&url)
            .output()
            .expect("curl (apt-get install curl)")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let (code, version) = text.split_once(' ').unwrap();
    Ok((code.parse().unwrap(), version.to_string()))
}

const CLIENT: [&str; 4] = ["--cert", "client.crt", "--key", "client.key"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_terminates_mutual_tls_and_negotiates_h2() {
    let dir = pki();
    let d = dir.path();
    let (p, up) = mtls_proxy(d, json!([])).await;
    let addr = p.addr("in");
    assert_eq!(
        curl(d, addr, &[&CLIENT[..], &["--http1.1"]].concat()).await,
        Ok((200, "1.1".into()))
    );
    assert_eq!(
        curl(d, addr, &[&CLIENT[..], &["--http2"]].concat()).await,
        Ok((200, "2".into()))
    );
    assert_eq!(up.hits(), 2);
    // Listener stats are named by the configured address (port 0 here).
    assert_eq!(p.stat("listener.127.0.0.1_0.ssl.handshake"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_certificate_of_the_ca_are_refused() {
    let dir = pki();
    let d = dir.path();
    let (p, up) = mtls_proxy(d, json!([])).await;
    let addr = p.addr("in");
    let none = curl(d, addr, &[]).await;
    assert!(none.is_err(), "no client certificate: {none:?}");
    let rogue = curl(d, addr, &["--cert", "rogue.crt", "--key", "rogue.key"]).await;
    assert!(rogue.is_err(), "another CA's certificate: {rogue:?}");
    // Plaintext on the TLS chain gets no HTTP answer either.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_to_close(&mut s).await;
    assert!(
        !answer.contains("HTTP/1.1"),
        "plaintext on a TLS chain: {answer}"
    );
    assert_eq!(up.hits(), 0);
    let errors = p.stat("listener.127.0.0.1_0.ssl.connection_error");
    assert_eq!(errors, 3, "handshake errors");
    assert_eq!(p.stat("listener.127.0.0.1_0.ssl.handshake"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn san_matchers_pick_the_clients_identity() {
    let dir = pki();
    let d = dir.path();
    let (p, up) = mtls_proxy(d, json!([{"exact": SPIFFE_CLIENT}])).await;
    let addr = p.addr("in");
    assert_eq!(curl(d, addr, &CLIENT).await, Ok((200, "2".into())));
    let other = curl(d, addr, &["--cert", "other.crt", "--key", "other.key"]).await;
    assert!(other.is_err(), "same CA, another identity: {other:?}");
    assert_eq!(up.hits(), 1);
}
