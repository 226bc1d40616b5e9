//! Istio's mutual TLS on the data path: filter chains that terminate TLS with a
//! `DownstreamTlsContext` (certificates by secret name, client certificates checked against
//! the validation context's CA and SAN matchers, ALPN choosing HTTP/2). The client is curl, a
//! real TLS peer; certificates are made by openssl for each test.

mod common;

use common::certs::*;
use common::*;
use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tlspb;
use envoy_types::pb::google::protobuf::Any;
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

/// The test's SDS server, as pilot-agent's: SotW `StreamSecrets` on a unix socket, pushing
/// every secret it holds on each change, and keeping the requests it got (ACKs, NACKs).
mod sds {
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    };
    use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
        SecretDiscoveryService, SecretDiscoveryServiceServer,
    };
    use envoy_types::pb::google::protobuf::Any;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use tokio::sync::{mpsc, watch};
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::{Request, Response, Status, Streaming};

    type Out<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

    #[derive(Clone)]
    pub struct Sds {
        /// (version, secrets as `Any`).
        pub secrets: Arc<watch::Sender<(u64, Vec<Any>)>>,
        pub requests: Arc<Mutex<Vec<DiscoveryRequest>>>,
    }

    #[tonic::async_trait]
    impl SecretDiscoveryService for Sds {
        type StreamSecretsStream = Out<DiscoveryResponse>;
        type DeltaSecretsStream = Out<DeltaDiscoveryResponse>;

        async fn stream_secrets(
            &self,
            req: Request<Streaming<DiscoveryRequest>>,
        ) -> Result<Response<Self::StreamSecretsStream>, Status> {
            let mut inbound = req.into_inner();
            let (tx, rx) = mpsc::channel(16);
            let (requests, mut secrets) = (self.requests.clone(), self.secrets.subscribe());
            tokio::spawn(async move {
                // Answer the first request, then push every change.
                match inbound.message().await {
                    Ok(Some(r)) => requests.lock().unwrap().push(r),
                    _ => return,
                }
                let reqs = requests.clone();
                tokio::spawn(async move {
                    while let Ok(Some(r)) = inbound.message().await {
                        reqs.lock().unwrap().push(r);
                    }
                });
                loop {
                    let (v, res) = secrets.borrow_and_update().clone();
                    let resp = DiscoveryResponse {
                        version_info: v.to_string(),
                        resources: res,
                        type_url: mosn::tls::sds::SECRET_URL.into(),
                        nonce: format!("n{v}"),
                        ..Default::default()
                    };
                    if tx.send(Ok(resp)).await.is_err() || secrets.changed().await.is_err() {
                        return;
                    }
                }
            });
            Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
        }

        async fn delta_secrets(
            &self,
            _: Request<Streaming<DeltaDiscoveryRequest>>,
        ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
            Err(Status::unimplemented("delta"))
        }

        async fn fetch_secrets(
            &self,
            _: Request<DiscoveryRequest>,
        ) -> Result<Response<DiscoveryResponse>, Status> {
            Err(Status::unimplemented("fetch"))
        }
    }

    impl Sds {
        /// Serve on a unix socket at `path`.
        pub fn serve(path: &std::path::Path, secrets: Vec<Any>) -> Sds {
            let sds = Sds {
                secrets: Arc::new(watch::Sender::new((1, secrets))),
                requests: Arc::default(),
            };
            let svc = SecretDiscoveryServiceServer::new(sds.clone());
            let l = tokio::net::UnixListener::bind(path).unwrap();
            tokio::spawn(async move {
                while let Ok((io, _)) = l.accept().await {
                    let svc = svc.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(
                            move |req: http::Request<hyper::body::Incoming>| {
                                let mut svc = svc.clone();
                                async move { tower_service::Service::call(&mut svc, req).await }
                            },
                        );
                        let _ = hyper::server::conn::http2::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                        .await;
                    });
                }
            });
            sds
        }

        /// Replace the secrets (a new version).
        pub fn push(&self, secrets: Vec<Any>) {
            self.secrets.send_modify(|(v, s)| {
                *v += 1;
                *s = secrets;
            });
        }

        /// The requests that answer version `v` (ACKs carry it; NACKs its nonce).
        pub fn replies_to(&self, v: u64) -> Vec<DiscoveryRequest> {
            let nonce = format!("n{v}");
            self.requests
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.response_nonce == nonce)
                .cloned()
                .collect()
        }
    }
}

/// A `Secret` as pilot-agent sends it: PEM inline.
fn secret_any(s: tlspb::Secret) -> Any {
    Any {
        type_url: mosn::tls::sds::SECRET_URL.into(),
        value: prost::Message::encode_to_vec(&s),
    }
}

fn inline(d: &Path, file: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(std::fs::read(d.join(file)).unwrap())),
        ..Default::default()
    })
}

/// Secret `default`: `leaf`'s certificate with the key in `key` (`leaf.key` unless a test
/// wants a mismatch).
fn cert_secret(d: &Path, leaf: &str, key: &str) -> Any {
    secret_any(tlspb::Secret {
        name: "default".into(),
        r#type: Some(tlspb::secret::Type::TlsCertificate(tlspb::TlsCertificate {
            certificate_chain: inline(d, &format!("{leaf}.crt")),
            private_key: inline(d, key),
            ..Default::default()
        })),
    })
}

/// Secret `ROOTCA`: trust `ca`.
fn ca_secret(d: &Path, ca: &str) -> Any {
    secret_any(tlspb::Secret {
        name: "ROOTCA".into(),
        r#type: Some(tlspb::secret::Type::ValidationContext(
            tlspb::CertificateValidationContext {
                trusted_ca: inline(d, &format!("{ca}.crt")),
                ..Default::default()
            },
        )),
    })
}

/// Istio's SDS source: the `sds-grpc` cluster.
fn sds_source() -> Value {
    json!({"api_config_source": {"api_type": "GRPC", "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}]}, "resource_api_version": "V3"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_come_from_sds_rotate_and_bad_ones_are_nacked() {
    let dir = pki();
    let d = dir.path();
    let sock = d.join("sds.sock");
    let server = sds::Sds::serve(
        &sock,
        vec![cert_secret(d, "server", "server.key"), ca_secret(d, "ca")],
    );
    let up = upstream("app").await;
    let vhosts = json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]);
    let mut l = listener("in", vhosts, vec![], json!({}));
    let mut tls = downstream_tls(json!([]));
    let common = &mut tls["typed_config"]["common_tls_context"];
    common["tls_certificate_sds_secret_configs"][0]["sds_config"] = sds_source();
    common["combined_validation_context"]["validation_context_sds_secret_config"]["sds_config"] =
        sds_source();
    l["filter_chains"][0]["transport_socket"] = tls;
    let sds_cluster = json!({"name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": "sds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": sock.to_str().unwrap()}}}}]}]}});
    let p = proxy(bootstrap(
        vec![l],
        vec![cluster("app", &[up.addr], json!({})), sds_cluster],
    ))
    .await;
    let addr = p.addr("in");
    wait_until("SDS version 1 acknowledged", || {
        !server.replies_to(1).is_empty()
    })
    .await;
    let first = server.requests.lock().unwrap()[0].clone();
    assert_eq!(first.resource_names, ["ROOTCA", "default"]);
    assert!(first.node.is_some(), "the node goes on the first request");
    assert!(server.replies_to(1)[0].error_detail.is_none());
    assert_eq!(curl(d, addr, &CLIENT).await, Ok((200, "2".into())));

    // Rotation: a new trust anchor applies to the next handshake.
    server.push(vec![
        cert_secret(d, "server", "server.key"),
        ca_secret(d, "rogue-ca"),
    ]);
    wait_until("SDS version 2 acknowledged", || {
        !server.replies_to(2).is_empty()
    })
    .await;
    let old = curl(d, addr, &CLIENT).await;
    assert!(
        old.is_err(),
        "a client of the old CA after rotation: {old:?}"
    );
    assert_eq!(
        curl(d, addr, &["--cert", "rogue.crt", "--key", "rogue.key"]).await,
        Ok((200, "2".into()))
    );

    // A key that is not the certificate's is NACKed, naming the secret; the last good
    // version keeps serving.
    server.push(vec![
        cert_secret(d, "server", "client.key"),
        ca_secret(d, "ca"),
    ]);
    wait_until("SDS version 3 answered", || {
        !server.replies_to(3).is_empty()
    })
    .await;
    let nack = server.replies_to(3)[0].clone();
    let detail = nack.error_detail.expect("a NACK").message;
    assert!(
        detail.contains("\"default\"") && detail.contains("do not go together"),
        "{detail}"
    );
    assert_eq!(
        nack.version_info, "2",
        "the NACK carries the last accepted version"
    );
    assert_eq!(
        curl(d, addr, &["--cert", "rogue.crt", "--key", "rogue.key"]).await,
        Ok((200, "2".into()))
    );
    assert_eq!(up.hits(), 3);
}

/// Istio's auto-mTLS client side: `transport_socket_matches` with `tlsMode-istio` (an
/// UpstreamTlsContext with Istio's SNI, ALPN and the server's SPIFFE id) and
/// `tlsMode-disabled` (plaintext), as outbound clusters carry them.
fn auto_mtls(san: &str) -> Value {
    json!({"transport_socket_matches": [
        {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": {
            "name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": "outbound_.9080_._.reviews.default.svc.cluster.local",
                "common_tls_context": {
                    "alpn_protocols": ["istio-peer-exchange", "istio"],
                    "tls_certificate_sds_secret_configs": [{"name": "default"}],
                    "combined_validation_context": {
                        "default_validation_context": {"match_subject_alt_names": [{"exact": san}]},
                        "validation_context_sds_secret_config": {"name": "ROOTCA"}}}}}},
        {"name": "tlsMode-disabled", "match": {}, "transport_socket": {"name": "envoy.transport_sockets.raw_buffer",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}]})
}

/// The server sidecar: Istio's inbound chains for a sniffed port behind tls_inspector, the
/// HTTP one for Istio's HTTP ALPNs (it adds `x-chain: http`) and the TCP one for any other
/// TLS client; both in front of `app`.
async fn server_sidecar(d: &Path, app: SocketAddr) -> Proxy {
    let vhosts = json!([{"name": "v", "domains": ["*"], "response_headers_to_add": [{"header": {"key": "x-chain", "value": "http"}}],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]);
    let mut l = listener("in", vhosts, vec![], json!({}));
    let mut http = l["filter_chains"][0].take();
    http["filter_chain_match"] = json!({"transport_protocol": "tls", "application_protocols": ["istio-http/1.0", "istio-http/1.1", "istio-h2"]});
    http["transport_socket"] = downstream_tls(json!([]));
    let tcp = json!({"filter_chain_match": {"transport_protocol": "tls"}, "transport_socket": downstream_tls(json!([])),
        "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "in-tcp", "cluster": "app"}}]});
    l["filter_chains"] = json!([http, tcp]);
    l["listener_filters"] = json!([{"name": "envoy.filters.listener.tls_inspector",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}]);
    let mut boot = bootstrap(vec![l], vec![cluster("app", &[app], json!({}))]);
    boot["static_resources"]["secrets"] = secrets(d);
    proxy(boot).await
}

/// The client sidecar: an outbound listener routing to cluster `reviews`, whose one endpoint
/// (`server`, labelled `tlsMode: istio` unless `plain`) is reached with auto-mTLS expecting
/// `san`; `istio_alpn` adds Istio's `istio.alpn` HTTP filter.
async fn client_sidecar(
    d: &Path,
    server: SocketAddr,
    san: &str,
    istio_alpn: bool,
    plain: bool,
) -> Proxy {
    let vhosts = json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "reviews"}}]}]);
    let filters = if istio_alpn {
        vec![
            json!({"name": "istio.alpn", "typed_config": {"@type": "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
            "alpn_override": [{"alpn_override": ["istio-http/1.0", "istio", "http/1.0"]},
                              {"upstream_protocol": "HTTP11", "alpn_override": ["istio-http/1.1", "istio", "http/1.1"]},
                              {"upstream_protocol": "HTTP2", "alpn_override": ["istio-h2", "istio", "h2"]}]}}),
        ]
    } else {
        vec![]
    };
    let l = listener("out", vhosts, filters, json!({}));
    let mut c = cluster("reviews", &[server], auto_mtls(san));
    if !plain {
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["metadata"] =
            json!({"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}});
    }
    let mut boot = bootstrap(vec![l], vec![c]);
    boot["static_resources"]["secrets"] = json!([
        {"name": "default", "tls_certificate": {"certificate_chain": file(d, "client.crt"), "private_key": file(d, "client.key")}},
        {"name": "ROOTCA", "validation_context": {"trusted_ca": file(d, "ca.crt")}},
    ]);
    proxy(boot).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_talk_mutual_tls_with_istios_alpn() {
    let dir = pki();
    let d = dir.path();
    let app = upstream("app").await;
    let server = server_sidecar(d, app.addr).await;
    let in_addr = server.addr("in");
    // With istio.alpn: the server's HTTP chain (its response header comes back).
    let client = client_sidecar(d, in_addr, SPIFFE_SERVER, true, false).await;
    let r = get(client.addr("out"), "/a", &[]).await;
    assert_eq!(
        (r.status, r.header("x-chain")),
        (200, Some("http")),
        "{}",
        r.body
    );
    assert_eq!(r.upstream(), "app");
    // A second request reuses the pooled TLS connection.
    assert_eq!(get(client.addr("out"), "/b", &[]).await.status, 200);
    assert_eq!(server.stat("listener.127.0.0.1_0.ssl.handshake"), 1);
    // Without it the cluster's `istio-peer-exchange, istio`: the TCP chain, still mTLS.
    let client = client_sidecar(d, in_addr, SPIFFE_SERVER, false, false).await;
    let r = get(client.addr("out"), "/c", &[]).await;
    assert_eq!((r.status, r.header("x-chain")), (200, None), "{}", r.body);
    assert_eq!(server.stat("listener.127.0.0.1_0.ssl.handshake"), 2);
    assert_eq!(app.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_identity_is_checked_and_unlabelled_endpoints_are_plaintext() {
    let dir = pki();
    let d = dir.path();
    let app = upstream("app").await;
    let server = server_sidecar(d, app.addr).await;
    // The server is not who the cluster expects: the handshake fails on the client side (UF).
    let client = client_sidecar(d, server.addr("in"), SPIFFE_OTHER, true, false).await;
    let r = get(client.addr("out"), "/", &[]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("connection failure"), "{}", r.body);
    assert_eq!(server.stat("listener.127.0.0.1_0.ssl.handshake"), 0);
    // An endpoint without `tlsMode: istio` takes the tlsMode-disabled match: plaintext, so
    // the app itself answers it directly.
    let client = client_sidecar(d, app.addr, SPIFFE_SERVER, true, true).await;
    let r = get(client.addr("out"), "/", &[]).await;
    assert_eq!(
        (r.status, r.upstream().as_str()),
        (200, "app"),
        "{}",
        r.body
    );
    assert_eq!(app.hits(), 1);
}
