//! What each ADS stream has asked for, been sent, ACKed and NACKed: the observable side of
//! the server, for logs, tests and the proxy's xDS client tests.
//!
//! Every stream task owns its protocol state and publishes a copy here after each event, so
//! readers never block a stream; a `watch` channel lets tests wait for a condition instead
//! of sleeping.

use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;

/// Which ADS flavour a stream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// State of the world (`StreamAggregatedResources`, bootstrap `api_type: GRPC`).
    Sotw,
    /// Incremental (`DeltaAggregatedResources`, bootstrap `api_type: DELTA_GRPC`).
    Delta,
}

/// Per stream, per type URL: subscription and ACK/NACK state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypeStatus {
    /// Whether the client subscribed to every resource of the type.
    pub wildcard: bool,
    /// The resource names the client subscribed to (without `*`).
    pub subscribed: Vec<String>,
    /// Requests received for this type (initial, ACKs, NACKs, subscription changes).
    pub requests: u64,
    /// Responses sent.
    pub responses: u64,
    /// The type version of the last response sent.
    pub sent_version: Option<String>,
    /// The nonce of the last response sent.
    pub sent_nonce: Option<String>,
    /// Resources in the last response sent (SotW: the whole subscribed set; delta: changes).
    pub sent_resources: Vec<String>,
    /// Names removed in the last delta response.
    pub sent_removed: Vec<String>,
    /// ACKs received.
    pub acks: u64,
    /// The version the client last ACKed; a NACK leaves it unchanged.
    pub acked_version: Option<String>,
    /// NACKs received.
    pub nacks: u64,
    /// The version the client last rejected.
    pub nacked_version: Option<String>,
    /// `error_detail.message` of the last NACK.
    pub last_error: Option<String>,
}

impl TypeStatus {
    /// Count an ACK of `version`.
    pub fn record_ack(&mut self, version: String) {
        self.acks += 1;
        self.acked_version = Some(version);
    }

    /// Count a NACK of `version` (when the server can tell which) with the client's message;
    /// the last ACKed version stays, as the client keeps serving it.
    pub fn record_nack(&mut self, version: Option<String>, error: &str) {
        self.nacks += 1;
        self.nacked_version = version;
        self.last_error = Some(error.to_string());
    }
}

/// One ADS stream as the server sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamStatus {
    /// Server-assigned id, increasing from 1.
    pub id: u64,
    /// SotW or delta.
    pub protocol: Protocol,
    /// The gRPC service: "ADS" (AggregatedDiscoveryService) or "SDS" (SecretDiscoveryService).
    pub service: &'static str,
    /// The peer address (`unix` for unix sockets).
    pub peer: String,
    /// `node.id` from the first request that carried a node.
    pub node_id: String,
    /// False once the stream ended.
    pub open: bool,
    /// State per type URL the client asked for.
    pub types: BTreeMap<String, TypeStatus>,
}

impl StreamStatus {
    /// A freshly opened stream: no node yet, nothing requested.
    pub fn new(id: u64, protocol: Protocol, service: &'static str, peer: String) -> Self {
        Self {
            id,
            protocol,
            service,
            peer,
            node_id: String::new(),
            open: true,
            types: BTreeMap::new(),
        }
    }

    /// The state of `type_url`, or a default (nothing requested) one.
    pub fn of(&self, type_url: &str) -> TypeStatus {
        self.types.get(type_url).cloned().unwrap_or_default()
    }
}

/// Closed streams kept for inspection; older ones are dropped.
const KEEP_CLOSED: usize = 64;

/// The shared board of stream states.
#[derive(Clone, Debug)]
pub struct Board {
    tx: std::sync::Arc<watch::Sender<BTreeMap<u64, StreamStatus>>>,
}

impl Default for Board {
    fn default() -> Self {
        Self {
            tx: std::sync::Arc::new(watch::channel(BTreeMap::new()).0),
        }
    }
}

impl Board {
    /// Publish the current state of a stream.
    pub fn publish(&self, status: StreamStatus) {
        self.tx.send_modify(|all| {
            all.insert(status.id, status);
            let closed: Vec<u64> = all.values().filter(|s| !s.open).map(|s| s.id).collect();
            for id in closed.iter().take(closed.len().saturating_sub(KEEP_CLOSED)) {
                all.remove(id);
            }
        });
    }

    /// All known streams, oldest first.
    pub fn streams(&self) -> Vec<StreamStatus> {
        self.tx.borrow().values().cloned().collect()
    }

    /// Wait until `pred` holds for the stream list; errors after `timeout` with the last state,
    /// so a failing test shows what the server saw.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[StreamStatus]) -> bool,
    ) -> anyhow::Result<Vec<StreamStatus>> {
        let mut rx = self.tx.subscribe();
        let found = {
            let wait = rx.wait_for(|all| pred(&all.values().cloned().collect::<Vec<_>>()));
            match tokio::time::timeout(timeout, wait).await {
                Ok(Ok(all)) => Some(all.values().cloned().collect()),
                _ => None,
            }
        };
        match found {
            Some(all) => Ok(all),
            _ => anyhow::bail!(
                "the xDS streams did not reach the expected state within {timeout:?}\n\n\
                 help: last state: {:#?}",
                self.streams()
            ),
        }
    }
}
