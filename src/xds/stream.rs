//! What a SotW and a delta stream keep alike: the stream's observable [`StreamStatus`], one
//! subscription per type URL (names, wildcard, the nonces of recent responses), and the
//! bookkeeping around each request and response.
//!
//! [`sotw`](super::sotw) and [`delta`](super::delta) keep only what differs: when a response
//! is due, what it holds, and how an ACK or NACK is matched to the response it answers.

use super::status::{Protocol, StreamStatus, TypeStatus};
use super::{is_wildcard_type, CONTROL_PLANE_ID};
use envoy_types::pb::envoy::config::core::v3::{ControlPlane, Node};
use std::collections::{BTreeMap, BTreeSet};

/// Responses remembered per type. A client answers each response in order, so a few suffice
/// to name the version a late ACK or NACK is about.
const MAX_REMEMBERED: usize = 32;

/// One stream's protocol state; `P` is what the protocol adds to each type's subscription.
#[derive(Debug)]
pub(super) struct Stream<P> {
    pub(super) status: StreamStatus,
    pub(super) types: BTreeMap<String, Sub<P>>,
    /// The last nonce sent; nonces count responses of all types on the stream.
    nonce: u64,
}

/// One type's subscription on a stream.
#[derive(Debug, Default)]
pub(super) struct Sub<P> {
    pub(super) names: BTreeSet<String>,
    pub(super) wildcard: bool,
    /// nonce -> type version of recent responses (SotW keeps them to name what a late NACK
    /// rejected; delta removes them once answered).
    pub(super) sent: BTreeMap<u64, String>,
    pub(super) protocol: P,
}

impl<P> Sub<P> {
    /// Whether a resource of this name goes to the client.
    pub(super) fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// Whether subscribing to `names` of `type_url` asks for every resource: `*`, or no names at
/// all for CDS and LDS (the legacy wildcard).
pub(super) fn asks_for_all(names: &[String], type_url: &str) -> bool {
    names.iter().any(|n| n == "*") || (names.is_empty() && is_wildcard_type(type_url))
}

/// `control_plane` of every response.
pub(super) fn control_plane() -> Option<ControlPlane> {
    Some(ControlPlane {
        identifier: CONTROL_PLANE_ID.into(),
    })
}

impl<P: Default> Stream<P> {
    /// A new stream with server id `id` from `peer` on `service` ("ADS" or "SDS").
    pub(super) fn new(id: u64, protocol: Protocol, service: &'static str, peer: String) -> Self {
        Self {
            status: StreamStatus::new(id, protocol, service, peer),
            types: BTreeMap::new(),
            nonce: 0,
        }
    }

    pub(super) fn type_status(&mut self, type_url: &str) -> &mut TypeStatus {
        self.status.types.entry(type_url.to_string()).or_default()
    }

    /// Count a request for `type_url`, take the node id from the first request that carries
    /// one (clients may send it on the first message only), and make sure the type has a
    /// subscription. True when the type is new on this stream.
    pub(super) fn request(&mut self, node: Option<&Node>, type_url: &str) -> bool {
        if self.status.node_id.is_empty() {
            if let Some(node) = node {
                self.status.node_id = node.id.clone();
            }
        }
        self.type_status(type_url).requests += 1;
        let first = !self.types.contains_key(type_url);
        self.types.entry(type_url.to_string()).or_default();
        first
    }

    /// Publish `type_url`'s subscription after a request changed it.
    pub(super) fn publish_subscription(&mut self, type_url: &str) {
        let Some(sub) = self.types.get(type_url) else {
            return;
        };
        let (wildcard, names) = (sub.wildcard, sub.names.iter().cloned().collect());
        let ts = self.type_status(type_url);
        ts.wildcard = wildcard;
        ts.subscribed = names;
    }

    /// The type URLs subscribed on this stream, for a push after a cache change.
    pub(super) fn type_urls(&self) -> Vec<String> {
        self.types.keys().cloned().collect()
    }

    /// The nonce of the next response for `type_url`, remembered as carrying type `version`.
    pub(super) fn next_nonce(&mut self, type_url: &str, version: &str) -> String {
        self.nonce += 1;
        let sent = &mut self.types.entry(type_url.to_string()).or_default().sent;
        sent.insert(self.nonce, version.to_string());
        while sent.len() > MAX_REMEMBERED {
            sent.pop_first();
        }
        self.nonce.to_string()
    }

    /// Publish a response that went out: its version, nonce, resource names and removals.
    pub(super) fn record_sent(
        &mut self,
        type_url: &str,
        version: &str,
        nonce: String,
        names: Vec<String>,
        removed: Vec<String>,
    ) {
        let ts = self.type_status(type_url);
        ts.responses += 1;
        ts.sent_version = Some(version.to_string());
        ts.sent_nonce = Some(nonce);
        ts.sent_resources = names;
        ts.sent_removed = removed;
    }
}
