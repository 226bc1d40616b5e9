//! The gRPC channel to the ADS server: a unix socket (Istio's `./etc/istio/proxy/XDS`, relative
//! to the working directory) or TCP, plaintext HTTP/2, 64 MiB messages.

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

/// Where to dial, resolved from the bootstrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dial {
    /// A unix socket path.
    Unix(PathBuf),
    /// `host:port` over TCP.
    Tcp(String),
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
            if c.proto.transport_socket.is_some() {
                return Err(format!(
                    "cluster {name:?} uses a transport socket (TLS), which the xDS client does not speak"
                ));
            }
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
            Ok(match address(ep.address.as_ref())? {
                Addr::Pipe(p) => Dial::Unix(p.into()),
                Addr::Socket(h, port) if h.contains(':') => Dial::Tcp(format!("[{h}]:{port}")),
                Addr::Socket(h, port) => Dial::Tcp(format!("{h}:{port}")),
            })
        }
    }
}

/// Connect (HTTP/2 handshake included) and wrap in the ADS client.
pub async fn connect(dial: &Dial) -> Result<Client, String> {
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
    }
    .map_err(|e| format!("{e}: {}", source_chain(&e)))?;
    Ok(AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
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
