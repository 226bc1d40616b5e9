//! mTLS fixtures shared by the TLS and RBAC tests: an openssl-made PKI of SPIFFE identities,
//! Istio's secrets and inbound DownstreamTlsContext, a proxy terminating mTLS, and curl as
//! the TLS client.

use super::certs::*;
use super::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;

pub const SPIFFE_CLIENT: &str = "spiffe://cluster.local/ns/default/sa/productpage";
pub const SPIFFE_OTHER: &str = "spiffe://cluster.local/ns/default/sa/ratings";
pub const SPIFFE_SERVER: &str = "spiffe://cluster.local/ns/default/sa/reviews";

/// `ca` signs `server` (its SPIFFE URI, and DNS `server.test` for curl's name check),
/// `client` and `other` (workload identities); `rogue-ca` signs `rogue` with the client's URI.
pub fn pki() -> Dir {
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

pub fn file(d: &Path, name: &str) -> Value {
    json!({"filename": d.join(name).to_str().unwrap()})
}

/// Istio's secrets as static ones: `default` (the workload certificate) and `ROOTCA`.
pub fn secrets(d: &Path) -> Value {
    json!([
        {"name": "default", "tls_certificate": {"certificate_chain": file(d, "server.crt"), "private_key": file(d, "server.key")}},
        {"name": "ROOTCA", "validation_context": {"trusted_ca": file(d, "ca.crt")}},
    ])
}

/// Istio's inbound DownstreamTlsContext, with the secrets by name and `sans` as the default
/// validation context's matchers.
pub fn downstream_tls(sans: Value) -> Value {
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
pub async fn mtls_proxy(d: &Path, sans: Value) -> (Proxy, Upstream) {
    mtls_proxy_with(d, sans, vec![]).await
}

/// [`mtls_proxy`] with these HTTP filters before the router.
pub async fn mtls_proxy_with(d: &Path, sans: Value, filters: Vec<Value>) -> (Proxy, Upstream) {
    let up = upstream("app").await;
    let vhosts = json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]);
    let mut l = listener("in", vhosts, filters, json!({}));
    l["filter_chains"][0]["transport_socket"] = downstream_tls(sans);
    let mut boot = bootstrap(vec![l], vec![cluster("app", &[up.addr], json!({}))]);
    boot["static_resources"]["secrets"] = secrets(d);
    (proxy(boot).await, up)
}

/// curl over TLS to `addr` as server.test, with `args` (client certificate, --http2);
/// `(status, HTTP version)`, or curl's error.
pub async fn curl(d: &Path, addr: SocketAddr, args: &[&str]) -> Result<(u16, String), String> {
    let url = format!("https://server.test:{}/hello", addr.port());
    curl_url(d, addr, &url, args).await
}

/// [`curl`] of `url` (`https://server.test:PORT/...`).
pub async fn curl_url(
    d: &Path,
    addr: SocketAddr,
    url: &str,
    args: &[&str],
) -> Result<(u16, String), String> {
    let format = ["-o", "/dev/null", "-w", "%{http_code} %{http_version}"];
    let text = curl_body(d, addr, url, &[&format[..], args].concat()).await?;
    let (code, version) = text.split_once(' ').unwrap();
    Ok((code.parse().unwrap(), version.to_string()))
}

pub const CLIENT: [&str; 4] = ["--cert", "client.crt", "--key", "client.key"];

/// What curl prints for `url` over TLS (by default the body: the upstream's JSON echo), or
/// curl's error. It runs blocking, off the runtime's workers: the proxy under test runs on
/// them.
pub async fn curl_body(
    d: &Path,
    addr: SocketAddr,
    url: &str,
    args: &[&str],
) -> Result<String, String> {
    let resolve = format!("server.test:{}:127.0.0.1", addr.port());
    let (d, url) = (d.to_path_buf(), url.to_string());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .current_dir(d)
            .args([
                "-sS",
                "--max-time",
                "10",
                "--cacert",
                "ca.crt",
                "--resolve",
                &resolve,
            ])
            .args(args)
            .arg(&url)
            .output()
            .expect("curl (apt-get install curl)")
    })
    .await
    .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// SHA-256 of a PEM certificate's DER, lowercase hex (openssl's own reading).
pub fn cert_sha256(d: &Path, pem: &str) -> String {
    let der = std::process::Command::new("openssl")
        .args(["x509", "-in", pem, "-outform", "DER"])
        .current_dir(d)
        .output()
        .unwrap()
        .stdout;
    let out = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-r"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&der)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
