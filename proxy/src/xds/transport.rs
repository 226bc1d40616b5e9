//! The gRPC channel to the ADS server: a unix socket (Istio's `./etc/istio/proxy/XDS`, relative
//! to the working directory) or TCP, HTTP/2, 64 MiB messages; TLS when the xDS cluster has an
//! `UpstreamTlsContext` transport socket (see [`tls`]).

use super::config::Target;
use crate::cluster::{address, Addr};
use crate::config::Snapshot;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Istio's CDS and LDS can exceed gRPC's 4 MiB default.
pub const MAX_MESSAGE: usize = 64 << 20;

/// The ADS client type.
pub type Client = AggregatedDiscoveryServiceClient<Channel>;

/// Where to dial, resolved from the bootstrap. `Debug` is what logs show: `unix:PATH`,
/// `HOST:PORT`, with TLS `HOST:PORT over TLS (sni NAME)`.
#[derive(Clone, PartialEq, Eq)]
pub enum Dial {
    /// A unix socket path.
    Unix(PathBuf),
    /// `host:port` over TCP.
    Tcp(String),
    /// TLS over a [`Dial::Unix`] or [`Dial::Tcp`] connection.
    Tls(Box<tls::TlsDial>),
}

impl std::fmt::Debug for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dial::Unix(p) => write!(f, "unix:{}", p.display()),
            Dial::Tcp(a) => f.write_str(a),
            Dial::Tls(t) => write!(f, "{:?} over TLS (sni {})", t.to, t.server_name),
        }
    }
}

/// Resolve the ADS target against the static clusters of `snap`.
pub fn resolve(target: &Target, snap: &Snapshot) -> Result<Dial, String> {
    match target {
        Target::Uri(u) => Ok(match u.strip_prefix("unix:") {
            Some(p) => Dial::Unix(p.trim_start_matches("//").into()),
            None => Dial::Tcp(u.clone()),
        }),
        Target::Cluster(name) => {
            let c = snap.clusters.get(name).ok_or_else(|| {
                format!("ads_config names cluster {name:?}, which is not defined")
            })?;
            let ep = c
                .proto
                .load_assignment
                .iter()
                .flat_map(|la| &la.endpoints)
                .flat_map(|g| &g.lb_endpoints)
                .find_map(|e| match &e.host_identifier {
                    Some(envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(e)) => Some(e),
                    _ => None,
                })
                .ok_or_else(|| format!("cluster {name:?} has no endpoint"))?;
            let (to, host) = match address(ep.address.as_ref())? {
                Addr::Pipe(p) => (Dial::Unix(p.into()), None),
                Addr::Socket(h, port) if h.contains(':') => {
                    (Dial::Tcp(format!("[{h}]:{port}")), Some(h))
                }
                Addr::Socket(h, port) => (Dial::Tcp(format!("{h}:{port}")), Some(h)),
            };
            match tls::from_cluster(name, c.proto.transport_socket.as_ref(), host.as_deref())? {
                Some(t) => Ok(Dial::Tls(Box::new(t.over(to)))),
                None => Ok(to),
            }
        }
    }
}

/// Connect (HTTP/2 handshake included) and wrap in the ADS client.
pub async fn connect(dial: &Dial) -> Result<Client, String> {
    channel(dial).await.map(client)
}

/// Connect: the gRPC channel any discovery service (ADS, SDS) runs over.
pub async fn channel(dial: &Dial) -> Result<Channel, String> {
    let ep = |uri: String| -> Result<Endpoint, String> {
        Ok(Endpoint::from_shared(uri)
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            // Notice a dead server while idle (Istio pushes can be minutes apart).
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true))
    };
    let channel = match dial {
        Dial::Tcp(a) => ep(format!("http://{a}"))?.connect().await,
        Dial::Unix(p) => {
            ep("http://xds".into())?
                .connect_with_connector(UnixConnector(p.clone()))
                .await
        }
        Dial::Tls(t) => {
            // The https scheme makes tonic's connector run the handshake over our stream.
            let cfg = t.client_config()?;
            let tls_ep = |uri: String| -> Result<Endpoint, String> {
                ep(uri)?
                    .tls_config(cfg.clone())
                    .map_err(|e| format!("{e}: {}", source_chain(&e)))
            };
            let res = match &t.to {
                Dial::Unix(p) => {
                    tls_ep("https://xds".into())?
                        .connect_with_connector(UnixConnector(p.clone()))
                        .await
                }
                Dial::Tcp(a) => tls_ep(format!("https://{a}"))?.connect().await,
                Dial::Tls(_) => return Err("TLS over TLS is not a thing".into()),
            };
            let channel = res.map_err(|e| t.explain(&source_chain_all(&e)))?;
            return Ok(channel);
        }
    }
    .map_err(|e| format!("{e}: {}", source_chain(&e)))?;
    Ok(channel)
}

fn client(channel: Channel) -> Client {
    AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// `e: source: source…`, skipping a source that repeats its parent.
fn source_chain_all(e: &dyn std::error::Error) -> String {
    let mut out = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if out.last() != Some(&t) {
            out.push(t);
        }
        cur = s.source();
    }
    out.join(": ")
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

/// Dials a unix socket whatever the URI says.
#[derive(Debug, Clone)]
struct UnixConnector(PathBuf);

impl tower_service::Service<http::Uri> for UnixConnector {
    type Response = TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move {
            let s = tokio::net::UnixStream::connect(&path)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            Ok(TokioIo::new(s))
        })
    }
}

/// TLS to the xDS server, from the xDS cluster's `transport_socket`
/// (`envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext`).
///
/// - the server is verified against `common_tls_context.validation_context.trusted_ca` (also in
///   `combined_validation_context.default_validation_context`), a file or inline PEM;
/// - `tls_certificates[0]` (`certificate_chain` + `private_key`, files or inline PEM) is
///   presented for mutual TLS;
/// - `sni` is sent and the server's certificate must be valid for it; without `sni`, for the
///   endpoint's host (Envoy checks no name unless `match_subject_alt_names` is set, so a
///   server certificate without the right name fails here where Envoy would accept it);
/// - ALPN is `h2`, as gRPC needs.
///
/// Files are read on every connection attempt, so rotated or late-written certificates are
/// picked up on reconnect. Secrets from SDS (`tls_certificate_sds_secret_configs`) are not
/// supported for the xDS cluster. Key material never appears in errors or `Debug` output.
pub mod tls {
    use super::Dial;
    use envoy_types::pb::envoy::config::core::v3::{transport_socket::ConfigType, TransportSocket};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        common_tls_context::ValidationContextType, UpstreamTlsContext,
    };
    use std::fmt;
    use std::time::Duration;
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};

    const UPSTREAM_TLS: &str =
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
    const RAW_BUFFER: &str =
        "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

    /// Where the PEM files come from: the TLS contexts' reader, kept to read at each connect.
    pub use crate::tls::secrets::Source;

    /// Read the PEM data of `source` for `cluster`; `what` names the field and `block` the
    /// PEM label expected.
    fn read_pem(
        source: &Source,
        cluster: &str,
        what: &str,
        block: &str,
    ) -> Result<Vec<u8>, String> {
        let field = format!("{what} of cluster {cluster:?}");
        let data = source.read(&field).map_err(|e| match source {
            Source::File(_) => format!(
                "{e}\nhelp: create the file, or fix the path in the cluster's transport_socket"
            ),
            _ => e,
        })?;
        let text = String::from_utf8_lossy(&data);
        let found = text.lines().any(|l| {
            l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{block}-----"))
        });
        if !found {
            return Err(format!(
                "{field} ({source:?}) holds no PEM {block}\n\
                 help: it must contain a `-----BEGIN …{block}-----` block"
            ));
        }
        Ok(data)
    }

    /// The TLS side of a [`Dial::Tls`].
    #[derive(Clone, PartialEq, Eq)]
    pub struct TlsDial {
        /// The connection TLS runs over ([`Dial::Unix`] or [`Dial::Tcp`]).
        pub to: Dial,
        /// The xDS cluster's name, for messages.
        pub cluster: String,
        /// Sent as SNI and checked against the server's certificate.
        pub server_name: String,
        /// `trusted_ca`.
        pub ca: Source,
        /// `tls_certificates[0]`: chain and key, for mutual TLS.
        pub identity: Option<(Source, Source)>,
    }

    impl fmt::Debug for TlsDial {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let mut d = f.debug_struct("Tls");
            d.field("to", &self.to)
                .field("server_name", &self.server_name)
                .field("trusted_ca", &self.ca);
            if let Some((cert, key)) = &self.identity {
                d.field("certificate_chain", cert);
                // A path is fine to show; inline key bytes never are (Source hides them).
                d.field("private_key", key);
            }
            d.finish()
        }
    }

    impl TlsDial {
        /// Set the connection this TLS runs over.
        pub fn over(mut self, to: Dial) -> Self {
            self.to = to;
            self
        }

        /// tonic's client TLS settings, reading the PEM files now.
        pub fn client_config(&self) -> Result<ClientTlsConfig, String> {
            let c = &self.cluster;
            let ca = read_pem(&self.ca, c, "trusted_ca", "CERTIFICATE")?;
            let mut cfg = ClientTlsConfig::new()
                .domain_name(self.server_name.clone())
                .ca_certificate(Certificate::from_pem(ca))
                .timeout(Duration::from_secs(5));
            if let Some((cert, key)) = &self.identity {
                let cert = read_pem(cert, c, "tls_certificates certificate_chain", "CERTIFICATE")?;
                let key = read_pem(key, c, "tls_certificates private_key", "PRIVATE KEY")?;
                cfg = cfg.identity(Identity::from_pem(cert, key));
            }
            Ok(cfg)
        }

        /// A handshake failure, with what to check.
        pub fn explain(&self, err: &str) -> String {
            let mut out = format!(
                "TLS with the xDS server of cluster {:?} failed: {err}",
                self.cluster
            );
            if err.contains("certificate") || err.contains("Certificate") {
                out.push_str(&format!(
                    "\nhelp: check that trusted_ca {:?} is the CA that signed the server's \
                     certificate and that the certificate is valid for {:?} (the cluster's sni)",
                    self.ca, self.server_name
                ));
            } else if err.contains("h2") || err.contains("ALPN") {
                out.push_str("\nhelp: the server must offer ALPN h2 (gRPC)");
            }
            out
        }
    }

    /// The TLS settings of cluster `name`, `None` for plaintext (no transport socket, or
    /// `raw_buffer`). `host` is the endpoint's host, the name checked when there is no `sni`.
    pub fn from_cluster(
        name: &str,
        socket: Option<&TransportSocket>,
        host: Option<&str>,
    ) -> Result<Option<TlsDial>, String> {
        let Some(socket) = socket else {
            return Ok(None);
        };
        let any = match &socket.config_type {
            Some(ConfigType::TypedConfig(any)) => any,
            None if socket.name.ends_with("raw_buffer") || socket.name.is_empty() => {
                return Ok(None)
            }
            None => {
                return Err(format!(
                    "cluster {name:?} has transport socket {:?} without a typed_config",
                    socket.name
                ))
            }
        };
        if any.type_url == RAW_BUFFER {
            return Ok(None);
        }
        if any.type_url != UPSTREAM_TLS {
            return Err(format!(
                "cluster {name:?} uses transport socket {}, which the xDS client does not speak\n\
                 help: use {UPSTREAM_TLS} or no transport socket",
                any.type_url
            ));
        }
        let ctx = <UpstreamTlsContext as prost::Message>::decode(any.value.as_slice())
            .map_err(|e| format!("cluster {name:?}: bad UpstreamTlsContext: {e}"))?;
        let common = ctx.common_tls_context.unwrap_or_default();
        if !common.tls_certificate_sds_secret_configs.is_empty() {
            return Err(format!(
                "cluster {name:?} takes its client certificate from SDS \
                 (tls_certificate_sds_secret_configs), which the xDS client does not support\n\
                 help: name the files in common_tls_context.tls_certificates instead"
            ));
        }
        let validation = match common.validation_context_type {
            Some(ValidationContextType::ValidationContext(v)) => Some(v),
            Some(ValidationContextType::CombinedValidationContext(c)) => {
                c.default_validation_context
            }
            Some(_) => {
                return Err(format!(
                    "cluster {name:?} takes its validation context from SDS or a certificate \
                     provider, which the xDS client does not support\n\
                     help: set common_tls_context.validation_context.trusted_ca"
                ))
            }
            None => None,
        };
        let ca = validation
            .as_ref()
            .and_then(|v| Source::from(v.trusted_ca.as_ref()))
            .ok_or_else(|| {
                format!(
                    "cluster {name:?} has a TLS transport socket without \
                     common_tls_context.validation_context.trusted_ca: mosn verifies the xDS \
                     server and needs the CA to do it\n\
                     help: set trusted_ca.filename to the CA bundle that signed the server's \
                     certificate (Istio: ./var/run/secrets/istio/root-cert.pem)"
                )
            })?;
        if validation.is_some_and(|v| {
            !v.match_subject_alt_names.is_empty() || !v.match_typed_subject_alt_names.is_empty()
        }) {
            tracing::warn!(
                "cluster {name:?}: match_subject_alt_names is not checked for the xDS server; \
                 its certificate is verified for the sni name instead"
            );
        }
        let identity = match common.tls_certificates.first() {
            None => None,
            Some(t) => {
                let cert = Source::from(t.certificate_chain.as_ref());
                let key = Source::from(t.private_key.as_ref());
                match (cert, key) {
                    (Some(c), Some(k)) => Some((c, k)),
                    _ => {
                        return Err(format!(
                            "cluster {name:?}: tls_certificates needs both certificate_chain \
                             and private_key"
                        ))
                    }
                }
            }
        };
        let server_name = if !ctx.sni.is_empty() {
            ctx.sni
        } else {
            host.map(str::to_string).ok_or_else(|| {
                format!(
                    "cluster {name:?} reaches the xDS server over a pipe with TLS but sets no sni\n\
                     help: set sni to the name in the server's certificate"
                )
            })?
        };
        Ok(Some(TlsDial {
            to: Dial::Tcp(String::new()),
            cluster: name.to_string(),
            server_name,
            ca,
            identity,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::decode_bootstrap;
    use serde_json::{json, Value};

    fn dial(tls: Value) -> Result<Dial, String> {
        let b = json!({"static_resources": {"clusters": [{"name": "xds-grpc", "type": "STATIC",
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
            "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint":
                {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 15012}}}}]}]}}]}});
        let loaded = decode_bootstrap(b, true).unwrap();
        // The data path compiles the same transport socket (and refuses what it cannot use).
        let snap = crate::config::Snapshot::build(&loaded, &crate::stats::Stats::new())?;
        resolve(&Target::Cluster("xds-grpc".into()), &snap)
    }

    fn ctx(common: Value) -> Value {
        json!({"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
               "common_tls_context": common})
    }

    fn tls(d: &Dial) -> &tls::TlsDial {
        match d {
            Dial::Tls(t) => t,
            other => panic!("not TLS: {other:?}"),
        }
    }

    #[test]
    fn tls_settings_from_the_cluster() {
        let d = dial(ctx(json!({"validation_context": {"trusted_ca": {"filename": "/x/root-cert.pem"}},
            "tls_certificates": [{"certificate_chain": {"filename": "/x/cert-chain.pem"},
                                  "private_key": {"inline_string": "-----BEGIN PRIVATE KEY-----\nSECRETSECRET\n"}}]})))
        .unwrap();
        let t = tls(&d);
        assert_eq!(t.to, Dial::Tcp("10.0.0.1:15012".into()));
        assert_eq!(t.server_name, "10.0.0.1", "no sni: the endpoint's host");
        assert_eq!(t.ca, tls::Source::File("/x/root-cert.pem".into()));
        let shown = format!("{d:?} {t:?}");
        assert!(shown.contains("10.0.0.1:15012 over TLS"), "{shown}");
        assert!(!shown.contains("SECRET"), "{shown}");
        // Files are read at connect time: a missing one says which and how to fix it.
        let err = t.client_config().unwrap_err();
        assert!(
            err.contains("cannot read trusted_ca of cluster \"xds-grpc\" from /x/root-cert.pem"),
            "{err}"
        );
        assert!(err.contains("help:"), "{err}");

        // sni wins; the CA may come from combined_validation_context; inline PEM is checked.
        let mut c = ctx(
            json!({"combined_validation_context": {"default_validation_context":
            {"trusted_ca": {"inline_string": "not a certificate"}}}}),
        );
        c["sni"] = json!("istiod.istio-system.svc");
        let d = dial(c).unwrap();
        assert_eq!(tls(&d).server_name, "istiod.istio-system.svc");
        let err = tls(&d).client_config().unwrap_err();
        assert!(err.contains("holds no PEM CERTIFICATE"), "{err}");
        assert!(!err.contains("not a certificate"), "{err}");

        // raw_buffer is plaintext.
        let raw = json!({"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"});
        assert_eq!(dial(raw).unwrap(), Dial::Tcp("10.0.0.1:15012".into()));
    }

    #[test]
    fn unsupported_tls_forms_are_clear_errors() {
        // Istio 1.10's non-agent bootstrap (auth_golden.json): client cert from SDS.
        let sds = ctx(
            json!({"tls_certificate_sds_secret_configs": [{"name": "default"}],
            "validation_context": {"trusted_ca": {"filename": "/x/ca.pem"}}}),
        );
        let err = dial(sds).unwrap_err();
        assert!(
            err.contains("tls_certificate_sds_secret_configs") && err.contains("help:"),
            "{err}"
        );
        let err = dial(ctx(json!({}))).unwrap_err();
        assert!(err.contains("trusted_ca") && err.contains("help:"), "{err}");
        let err = dial(ctx(
            json!({"validation_context": {"trusted_ca": {"filename": "/x/ca.pem"}},
            "tls_certificates": [{"certificate_chain": {"filename": "/x/c.pem"}}]}),
        ))
        .unwrap_err();
        assert!(err.contains("private_key"), "{err}");
    }
}
