//! Incremental ADS (`DeltaAggregatedResources`): per-type subscriptions that grow and shrink,
//! per-resource versions, `removed_resources` on deletion, ACK/NACK by nonce.
//!
//! The server remembers, per type, which version of each resource the client has (seeded
//! from `initial_resource_versions` on the first request, as after a reconnect), and sends
//! only resources whose content hash differs from that, plus the names that disappeared.
//! The first request of a wildcard type is always answered, even with nothing, because the
//! client waits for that answer to finish initialising.

use super::cache::State;
use super::status::{Protocol, StreamStatus, TypeStatus};
use super::{is_wildcard_type, Handler, CONTROL_PLANE_ID};
use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use std::collections::{BTreeMap, BTreeSet};
use tracing::{debug, info};

/// Unanswered nonces remembered per type; a client ACKs each response, so a few suffice.
const MAX_PENDING: usize = 32;

/// One delta stream's protocol state.
#[derive(Debug)]
pub struct Delta {
    status: StreamStatus,
    types: BTreeMap<String, Sub>,
    nonce: u64,
}

/// One type's subscription on a delta stream.
#[derive(Debug, Default)]
struct Sub {
    names: BTreeSet<String>,
    wildcard: bool,
    /// name -> resource version the client has (as far as the server knows).
    known: BTreeMap<String, String>,
    /// nonce -> type version of responses not yet ACKed or NACKed.
    pending: BTreeMap<u64, String>,
    answered: bool,
}

impl Delta {
    /// A new stream with server id `id` from `peer` on `service` ("ADS" or "SDS").
    pub fn new(id: u64, peer: String, service: &'static str) -> Self {
        Self {
            status: StreamStatus::new(id, Protocol::Delta, service, peer),
            types: BTreeMap::new(),
            nonce: 0,
        }
    }

    fn type_status(&mut self, type_url: &str) -> &mut TypeStatus {
        self.status.types.entry(type_url.to_string()).or_default()
    }

    /// Record the ACK or NACK that `req` carries, if its nonce is one we sent.
    fn ack_or_nack(&mut self, req: &DeltaDiscoveryRequest) {
        let id = self.status.id;
        let type_url = req.type_url.as_str();
        let sub = self.types.entry(type_url.to_string()).or_default();
        let Some(version) = req
            .response_nonce
            .parse::<u64>()
            .ok()
            .and_then(|n| sub.pending.remove(&n).map(|v| (n, v)))
            .map(|(n, v)| {
                // Responses are processed in order, so older ones are settled too.
                sub.pending.retain(|k, _| *k > n);
                v
            })
        else {
            debug!(
                stream = id,
                type_url,
                nonce = req.response_nonce,
                "unknown nonce"
            );
            return;
        };
        let ts = self.status.types.entry(type_url.to_string()).or_default();
        if let Some(err) = &req.error_detail {
            ts.record_nack(Some(version.clone()), &err.message);
            info!(
                stream = id,
                type_url,
                rejected = version,
                nonce = req.response_nonce,
                error_detail = err.message,
                "NACK"
            );
        } else {
            ts.record_ack(version.clone());
            info!(
                stream = id,
                type_url,
                version,
                nonce = req.response_nonce,
                "ACK"
            );
        }
    }

    /// Build the response for `type_url` with what changed for this client, if anything.
    fn respond(&mut self, type_url: &str, state: &State) -> Option<DeltaDiscoveryResponse> {
        let resources = state.types.get(type_url)?;
        let sub = self.types.get_mut(type_url)?;
        let updated: Vec<_> = resources
            .resources
            .values()
            .filter(|r| sub.wildcard || sub.names.contains(&r.name))
            .filter(|r| sub.known.get(&r.name) != Some(&r.version))
            .collect();
        let removed: Vec<String> = sub
            .known
            .keys()
            .filter(|n| !resources.resources.contains_key(*n))
            .cloned()
            .collect();
        let first_wildcard = sub.wildcard && !sub.answered;
        if updated.is_empty() && removed.is_empty() && !first_wildcard {
            return None;
        }
        sub.answered = true;
        for r in &updated {
            sub.known.insert(r.name.clone(), r.version.clone());
        }
        for n in &removed {
            sub.known.remove(n);
        }
        self.nonce += 1;
        sub.pending.insert(self.nonce, resources.version.clone());
        while sub.pending.len() > MAX_PENDING {
            sub.pending.pop_first();
        }
        let nonce = self.nonce.to_string();
        let response = DeltaDiscoveryResponse {
            system_version_info: resources.version.clone(),
            resources: updated
                .iter()
                .map(|r| Resource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.any.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: type_url.to_string(),
            removed_resources: removed.clone(),
            nonce: nonce.clone(),
            control_plane: Some(ControlPlane {
                identifier: CONTROL_PLANE_ID.into(),
            }),
            ..Default::default()
        };
        debug!(
            stream = self.status.id,
            type_url,
            version = %resources.version,
            nonce,
            updated = updated.len(),
            removed = removed.len(),
            "sending"
        );
        let names = updated.iter().map(|r| r.name.clone()).collect();
        let ts = self.type_status(type_url);
        ts.responses += 1;
        ts.sent_version = Some(resources.version.clone());
        ts.sent_nonce = Some(nonce);
        ts.sent_resources = names;
        ts.sent_removed = removed;
        Some(response)
    }
}

impl Handler for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn on_request(&mut self, req: DeltaDiscoveryRequest, state: &State) -> Vec<Self::Response> {
        let id = self.status.id;
        if self.status.node_id.is_empty() {
            if let Some(node) = &req.node {
                self.status.node_id = node.id.clone();
            }
        }
        let type_url = req.type_url.clone();
        self.type_status(&type_url).requests += 1;
        let first = !self.types.contains_key(&type_url);
        if !req.response_nonce.is_empty() {
            self.ack_or_nack(&req);
        }
        let sub = self.types.entry(type_url.clone()).or_default();
        if first {
            sub.wildcard = req.resource_names_subscribe.iter().any(|n| n == "*")
                || (req.resource_names_subscribe.is_empty() && is_wildcard_type(&type_url));
            sub.known = req.initial_resource_versions.clone().into_iter().collect();
        } else if req.resource_names_subscribe.iter().any(|n| n == "*") {
            sub.wildcard = true;
        }
        for name in req.resource_names_subscribe.iter().filter(|n| *n != "*") {
            sub.names.insert(name.clone());
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                sub.wildcard = false;
            } else {
                sub.names.remove(name);
            }
            // The client drops what it unsubscribed from; forget it so a later subscribe resends.
            sub.known.remove(name);
        }
        if first
            || !req.resource_names_subscribe.is_empty()
            || !req.resource_names_unsubscribe.is_empty()
        {
            info!(
                stream = id,
                node = self.status.node_id,
                type_url,
                subscribe = req.resource_names_subscribe.len(),
                unsubscribe = req.resource_names_unsubscribe.len(),
                known = req.initial_resource_versions.len(),
                "request"
            );
        }
        let (wildcard, names) = (sub.wildcard, sub.names.iter().cloned().collect());
        let ts = self.type_status(&type_url);
        ts.wildcard = wildcard;
        ts.subscribed = names;
        self.respond(&type_url, state).into_iter().collect()
    }

    fn on_change(&mut self, state: &State) -> Vec<Self::Response> {
        let types: Vec<String> = self.types.keys().cloned().collect();
        types
            .iter()
            .filter_map(|t| self.respond(t, state))
            .collect()
    }

    fn status(&mut self) -> &mut StreamStatus {
        &mut self.status
    }
}
