//! SDS: the secrets that TLS contexts name, fetched from their SDS servers. Istio's contexts
//! name `default` (the workload certificate) and `ROOTCA`, served by pilot-agent over the
//! `sds-grpc` cluster's unix pipe; pilot-agent rotates them by pushing new versions.
//!
//! One state-of-the-world `StreamSecrets` per SDS cluster and secret name (as Envoy), for the
//! names that the current snapshot's contexts use ([`Manager::sync`] runs at start and after every xDS
//! update). A response is compiled whole before it is accepted: a bad secret is NACKed with
//! its name and the problem, and the previous version keeps serving. Streams reconnect with
//! the ADS client's jittered backoff.

use super::context::SdsRef;
use super::secrets::entry;
use crate::config::Snapshot;
use crate::server::Server;
use crate::xds::{client::backoff, config::Target, transport};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status;
use prost::Message;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;

/// The `Secret` type URL.
pub const SECRET_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// An SDS stream's (cluster, secret name).
type StreamKey = (String, String);

/// The SDS streams of a server, one per SDS cluster and secret name.
#[derive(Debug, Default)]
pub struct Manager {
    /// By (SDS cluster, secret name).
    /// Dropping a sender ends its stream.
    streams: Mutex<HashMap<StreamKey, watch::Sender<()>>>,
}

impl Manager {
    /// Subscribe to the secrets the current snapshot's TLS contexts name, starting a stream
    /// for an SDS cluster not seen before (call inside the runtime). Names no longer used are
    /// unsubscribed; their secrets stay until replaced.
    pub fn sync(&self, server: &Arc<Server>) {
        // One stream per secret, as Envoy opens them: pilot-agent fails a whole response when
        // one name cannot be served (a DestinationRule's `file-cert:` path), which would
        // starve `default` and `ROOTCA` on a shared stream.
        let mut wanted_streams = BTreeSet::new();
        for r in wanted(&server.store.load()) {
            match r.cluster {
                Some(c) => {
                    wanted_streams.insert((c, r.name));
                }
                None => {
                    tracing::warn!(secret = %r.name, "secrets over the ADS stream are not supported; give the context an SDS cluster")
                }
            }
        }
        let mut streams = self.streams.lock().unwrap();
        // A stream no longer needed ends (its receiver sees the sender dropped).
        streams.retain(|k, _| wanted_streams.contains(k));
        for key in wanted_streams {
            if let std::collections::hash_map::Entry::Vacant(v) = streams.entry(key) {
                let (cluster, name) = v.key().clone();
                let (tx, rx) = watch::channel(());
                tokio::spawn(run(Arc::downgrade(server), cluster, name, rx));
                v.insert(tx);
            }
        }
    }
}

/// The SDS secrets `snap`'s TLS contexts name.
pub fn wanted(snap: &Snapshot) -> BTreeSet<SdsRef> {
    let mut out = BTreeSet::new();
    for l in &snap.listeners {
        for c in l.chains.iter().chain(l.default_chain.iter()) {
            if let Some(t) = &c.tls {
                out.extend(t.sds().iter().cloned());
            }
        }
    }
    for c in snap.clusters.values() {
        for t in c.transport.contexts() {
            out.extend(t.sds().iter().cloned());
        }
    }
    out
}

/// One SDS cluster's stream, reconnecting until the server is gone.
async fn run(server: Weak<Server>, cluster: String, name: String, mut stop: watch::Receiver<()>) {
    let mut failures = 0u32;
    loop {
        let Some(srv) = server.upgrade() else { return };
        let node = node(&srv);
        let (got, why) =
            match transport::resolve(&Target::Cluster(cluster.clone()), &srv.store.load()) {
                Ok(dial) => {
                    drop(srv);
                    match transport::channel(&dial).await {
                        Ok(ch) => stream(&server, ch, node, &name, &mut stop).await,
                        Err(e) => (false, format!("cannot connect to {dial:?}: {e}")),
                    }
                }
                Err(e) => (false, e),
            };
        // The manager dropped this stream's sender: its secret is no longer used.
        if stop.has_changed().is_err() {
            return;
        }
        if got {
            failures = 0;
        }
        let delay = backoff(failures);
        failures = failures.saturating_add(1);
        tracing::warn!(%cluster, "SDS stream ended ({why}); reconnecting in {delay:?}");
        tokio::time::sleep(delay).await;
    }
}

/// The node sent on the stream's first request: the bootstrap's, as on the ADS stream.
fn node(server: &Server) -> Node {
    let mut node = server
        .store
        .load()
        .bootstrap
        .as_ref()
        .and_then(|b| b.proto.node.clone())
        .unwrap_or_default();
    if node.user_agent_name.is_empty() {
        node.user_agent_name = "envoy".into();
    }
    node
}

/// Run one stream; whether a response arrived, and why it ended.
async fn stream(
    server: &Weak<Server>,
    channel: tonic::transport::Channel,
    node: Node,
    name: &str,
    stop: &mut watch::Receiver<()>,
) -> (bool, String) {
    let mut client = SecretDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(transport::MAX_MESSAGE);
    let (tx, rx) = mpsc::unbounded_channel();
    let mut version = String::new();
    let request = |version: &str, nonce: &str| DiscoveryRequest {
        version_info: version.into(),
        resource_names: vec![name.to_string()],
        type_url: SECRET_URL.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    };
    let _ = tx.send(DiscoveryRequest {
        node: Some(node),
        ..request("", "")
    });
    let mut inbound = match client
        .stream_secrets(UnboundedReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => return (false, format!("StreamSecrets: {e}")),
    };
    let mut got = false;
    loop {
        tokio::select! {
            // Never sent: only the sender's drop ends the wait.
            _ = stop.changed() => return (got, "no longer needed".into()),
            msg = inbound.message() => {
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return (got, "the server closed the stream".into()),
                    Err(e) => return (got, format!("stream failed: {e}")),
                };
                got = true;
                let Some(srv) = server.upgrade() else {
                    return (got, "server gone".into());
                };
                match accept(&srv, &resp) {
                    Ok(n) => {
                        version = resp.version_info.clone();
                        tracing::info!(version = %version, secrets = n, "SDS update accepted");
                        let _ = tx.send(request(&version, &resp.nonce));
                    }
                    Err(e) => {
                        tracing::warn!(version = %resp.version_info, "SDS update rejected: {e}");
                        let _ = tx.send(DiscoveryRequest {
                            error_detail: Some(Status {
                                code: crate::xds::sotw::INVALID_ARGUMENT,
                                message: e,
                                details: Vec::new(),
                            }),
                            ..request(&version, &resp.nonce)
                        });
                    }
                }
            }
        }
    }
}

/// Compile every secret of a response, then put them all in the store; the count.
fn accept(server: &Server, resp: &DiscoveryResponse) -> Result<usize, String> {
    let mut entries = Vec::new();
    let mut protos = Vec::new();
    for any in &resp.resources {
        if any.type_url != SECRET_URL {
            return Err(format!(
                "resource of type {} in an SDS response",
                any.type_url
            ));
        }
        let s =
            Secret::decode(any.value.as_slice()).map_err(|e| format!("undecodable Secret: {e}"))?;
        entries.push((s.name.clone(), entry(&s)?));
        protos.push(s);
    }
    let n = entries.len();
    server.store.secrets.put(entries);
    server.store.secrets.record(&protos, &resp.version_info);
    Ok(n)
}
