//! Secrets from SDS, as pilot-agent serves them to the sidecar: subscription, rotation and
//! NACKs, with curl as the TLS client.

mod common;

use common::mtls::*;
use common::*;
use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tlspb;
use envoy_types::pb::google::protobuf::Any;
use serde_json::{json, Value};
use std::path::Path;

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

/// A proxy whose listener "in" terminates mTLS with Istio's SDS secrets from the
/// `sds-grpc` cluster at `sock`, in front of one upstream.
async fn sds_proxy(sock: &std::path::Path) -> (Proxy, Upstream) {
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
    (p, up)
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
    let (p, up) = sds_proxy(&sock).await;
    let addr = p.addr("in");
    // Each secret has a stream of its own: a version is in force once both answered it.
    wait_until("SDS version 1 acknowledged", || {
        server.replies_to(1).len() >= 2
    })
    .await;
    // One stream per secret, as Envoy: each opens with one name and the node.
    let firsts: Vec<_> = server
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.response_nonce.is_empty())
        .cloned()
        .collect();
    let mut names: Vec<_> = firsts.iter().map(|r| r.resource_names.clone()).collect();
    names.sort();
    assert_eq!(
        names,
        [vec!["ROOTCA".to_string()], vec!["default".to_string()]]
    );
    assert!(
        firsts.iter().all(|r| r.node.is_some()),
        "the node goes on each stream's first request"
    );
    assert!(server.replies_to(1)[0].error_detail.is_none());
    assert_eq!(curl(d, addr, &CLIENT).await, Ok((200, "2".into())));

    // Rotation: a new trust anchor applies to the next handshake.
    server.push(vec![
        cert_secret(d, "server", "server.key"),
        ca_secret(d, "rogue-ca"),
    ]);
    wait_until("SDS version 2 acknowledged", || {
        server.replies_to(2).len() >= 2
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
    wait_until("SDS version 3 answered", || server.replies_to(3).len() >= 2).await;
    // The trust anchor's stream accepts it; the key's stream refuses it.
    let nack = server
        .replies_to(3)
        .into_iter()
        .find(|r| r.error_detail.is_some())
        .expect("a NACK");
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

    // /config_dump lists the secrets as accepted (version 2), keys redacted.
    let dump = get(p.admin(), "/config_dump", &[]).await;
    let v: Value = serde_json::from_str(&dump.body).unwrap();
    let secrets = v["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.SecretsConfigDump")
        .expect("a SecretsConfigDump");
    let active = secrets["dynamic_active_secrets"].as_array().unwrap();
    let names: Vec<&str> = active.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ROOTCA", "default"]);
    assert!(active.iter().all(|s| s["version_info"] == "2"), "{secrets}");
    let key = &active[1]["secret"]["tls_certificate"]["private_key"];
    assert_eq!(key, &json!({"inline_string": "[redacted]"}));
    // The key as the dump would carry it: PEM inline, base64 in proto JSON.
    let b64 = std::process::Command::new("openssl")
        .args(["base64", "-A", "-in", "server.key"])
        .current_dir(d)
        .output()
        .unwrap()
        .stdout;
    let b64 = String::from_utf8(b64).unwrap();
    assert!(b64.len() > 100, "openssl base64 of the key: {b64:?}");
    assert!(
        !dump.body.contains("PRIVATE KEY") && !dump.body.contains(&b64),
        "a key leaked into /config_dump"
    );
}

/// Like Envoy's warming, the server is not LIVE (nor `/ready`) until the secrets its TLS
/// contexts name have arrived: here the SDS server starts late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_goes_live_once_its_secrets_arrive() {
    let dir = pki();
    let d = dir.path();
    let sock = d.join("late.sock");
    let (p, _up) = sds_proxy(&sock).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(p.server.state_name(), "INITIALIZING");
    assert_ne!(
        get(p.admin(), "/ready", &[]).await.status,
        200,
        "ready before its certificate"
    );
    let _sds = sds::Sds::serve(
        &sock,
        vec![cert_secret(d, "server", "server.key"), ca_secret(d, "ca")],
    );
    wait_until("LIVE", || p.server.state_name() == "LIVE").await;
    assert_eq!(get(p.admin(), "/ready", &[]).await.status, 200);
    assert_eq!(curl(d, p.addr("in"), &CLIENT).await, Ok((200, "2".into())));
}
