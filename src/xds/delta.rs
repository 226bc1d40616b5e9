//! Incremental ADS (`DeltaAggregatedResources`): per-type subscriptions that grow and shrink,
//! per-resource versions, `removed_resources` on deletion, ACK/NACK by nonce.
//!
//! The server remembers, per type, which version of each resource the client has (seeded
//! from `initial_resource_versions` on the first request, as after a reconnect), and sends
//! only resources whose content hash differs from that, plus the names that disappeared.
//! The first request of a wildcard type is always answered, even with nothing, because the
//! client waits for that answer to finish initialising.

use super::cache::State;
use super::status::{Protocol, StreamStatus};
use super::stream::{asks_for_all, control_plane, Stream};
use super::Handler;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use std::collections::BTreeMap;
use tracing::{debug, info};

/// One delta stream's protocol state.
#[derive(Debug)]
pub struct Delta {
    stream: Stream<Known>,
}

/// What delta adds to a type's subscription.
#[derive(Debug, Default)]
struct Known {
    /// name -> resource version the client has (as far as the server knows).
    versions: BTreeMap<String, String>,
    /// Whether a response for the type went out (the first wildcard one always does).
    answered: bool,
}

impl Delta {
    /// A new stream with server id `id` from `peer` on `service` ("ADS" or "SDS").
    pub fn new(id: u64, peer: String, service: &'static str) -> Self {
        Self {
            stream: Stream::new(id, Protocol::Delta, service, peer),
        }
    }

    /// Record the ACK or NACK that `req` carries, if its nonce is one we sent and that is not
    /// answered yet.
    fn ack_or_nack(&mut self, req: &DeltaDiscoveryRequest) {
        let id = self.stream.status.id;
        let type_url = req.type_url.as_str();
        let sub = self.stream.types.entry(type_url.to_string()).or_default();
        let Some(version) = req
            .response_nonce
            .parse::<u64>()
            .ok()
            .and_then(|n| sub.sent.remove(&n).map(|v| (n, v)))
            .map(|(n, v)| {
                // Responses are processed in order, so older ones are settled too.
                sub.sent.retain(|k, _| *k > n);
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
        let ts = self.stream.type_status(type_url);
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
        let sub = self.stream.types.get_mut(type_url)?;
        let known = &sub.protocol.versions;
        let updated: Vec<_> = resources
            .resources
            .values()
            .filter(|r| sub.wants(&r.name))
            .filter(|r| known.get(&r.name) != Some(&r.version))
            .collect();
        let removed: Vec<String> = known
            .keys()
            .filter(|n| !resources.resources.contains_key(*n))
            .cloned()
            .collect();
        let first_wildcard = sub.wildcard && !sub.protocol.answered;
        if updated.is_empty() && removed.is_empty() && !first_wildcard {
            return None;
        }
        sub.protocol.answered = true;
        for r in &updated {
            sub.protocol
                .versions
                .insert(r.name.clone(), r.version.clone());
        }
        for n in &removed {
            sub.protocol.versions.remove(n);
        }
        let nonce = self.stream.next_nonce(type_url, &resources.version);
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
            control_plane: control_plane(),
            ..Default::default()
        };
        debug!(
            stream = self.stream.status.id,
            type_url,
            version = %resources.version,
            nonce,
            updated = updated.len(),
            removed = removed.len(),
            "sending"
        );
        let names = updated.iter().map(|r| r.name.clone()).collect();
        self.stream
            .record_sent(type_url, &resources.version, nonce, names, removed);
        Some(response)
    }
}

impl Handler for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn on_request(&mut self, req: DeltaDiscoveryRequest, state: &State) -> Vec<Self::Response> {
        let id = self.stream.status.id;
        let type_url = req.type_url.clone();
        let first = self.stream.request(req.node.as_ref(), &type_url);
        if !req.response_nonce.is_empty() {
            self.ack_or_nack(&req);
        }
        // A delta request carries only changes to the subscription.
        let sub = self
            .stream
            .types
            .get_mut(&type_url)
            .expect("added by request");
        if first {
            sub.wildcard = asks_for_all(&req.resource_names_subscribe, &type_url);
            sub.protocol.versions = req.initial_resource_versions.clone().into_iter().collect();
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
            sub.protocol.versions.remove(name);
        }
        if first
            || !req.resource_names_subscribe.is_empty()
            || !req.resource_names_unsubscribe.is_empty()
        {
            info!(
                stream = id,
                node = self.stream.status.node_id,
                type_url,
                subscribe = req.resource_names_subscribe.len(),
                unsubscribe = req.resource_names_unsubscribe.len(),
                known = req.initial_resource_versions.len(),
                "request"
            );
        }
        self.stream.publish_subscription(&type_url);
        self.respond(&type_url, state).into_iter().collect()
    }

    fn on_change(&mut self, state: &State) -> Vec<Self::Response> {
        self.stream
            .type_urls()
            .iter()
            .filter_map(|t| self.respond(t, state))
            .collect()
    }

    fn status(&mut self) -> &mut StreamStatus {
        &mut self.stream.status
    }
}
