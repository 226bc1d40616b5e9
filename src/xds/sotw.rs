//! State-of-the-world ADS (`StreamAggregatedResources`): per-type subscriptions, nonces,
//! ACK/NACK, and pushes of the complete subscribed set whenever it changes.
//!
//! Rules (envoyproxy/envoy api/envoy/service/discovery/v3/discovery.proto and the xDS
//! protocol doc):
//! - a request without `response_nonce` (re)starts a subscription and always gets an answer
//!   once the type is in the cache;
//! - `error_detail` means NACK, otherwise a request with a nonce ACKs `version_info`;
//! - a request whose nonce is not the last one sent for the type is stale: its ACK/NACK is
//!   recorded, but its resource names are ignored and nothing is sent;
//! - an empty name list means wildcard for CDS and LDS; `*` means wildcard for any type;
//! - a response goes out only when the subscribed (name, content) set differs from the last
//!   one sent, so an ACK, a NACK, or an update of another type causes no resend.

use super::cache::State;
use super::status::{Protocol, StreamStatus};
use super::stream::{asks_for_all, control_plane, Stream};
use super::Handler;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tracing::{debug, info};

/// One SotW stream's protocol state.
#[derive(Debug)]
pub struct Sotw {
    stream: Stream<Sent>,
}

/// What SotW adds to a type's subscription.
#[derive(Debug, Default)]
struct Sent {
    /// (name, content hash) of everything in the last response; `None` before the first.
    view: Option<Vec<(String, String)>>,
}

impl Sotw {
    /// A new stream with server id `id` from `peer` on `service` ("ADS" or "SDS").
    pub fn new(id: u64, peer: String, service: &'static str) -> Self {
        Self {
            stream: Stream::new(id, Protocol::Sotw, service, peer),
        }
    }

    /// Build the response for `type_url` if its subscribed view changed (or `force`).
    fn respond(&mut self, type_url: &str, state: &State, force: bool) -> Option<DiscoveryResponse> {
        let resources = state.types.get(type_url)?;
        let sub = self.stream.types.get_mut(type_url)?;
        let selected: Vec<_> = resources
            .resources
            .values()
            .filter(|r| sub.wants(&r.name))
            .collect();
        let view: Vec<(String, String)> = selected
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        let send = match &sub.protocol.view {
            None => sub.wildcard || !view.is_empty(),
            Some(prev) => force || *prev != view,
        };
        if !send {
            return None;
        }
        sub.protocol.view = Some(view);
        let nonce = self.stream.next_nonce(type_url, &resources.version);
        let names: Vec<String> = selected.iter().map(|r| r.name.clone()).collect();
        let response = DiscoveryResponse {
            version_info: resources.version.clone(),
            resources: selected.iter().map(|r| r.any.clone()).collect(),
            type_url: type_url.to_string(),
            nonce: nonce.clone(),
            control_plane: control_plane(),
            ..Default::default()
        };
        debug!(
            stream = self.stream.status.id,
            type_url,
            version = %resources.version,
            nonce,
            resources = names.len(),
            "sending"
        );
        self.stream
            .record_sent(type_url, &resources.version, nonce, names, Vec::new());
        Some(response)
    }
}

impl Handler for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn on_request(&mut self, req: DiscoveryRequest, state: &State) -> Vec<DiscoveryResponse> {
        let id = self.stream.status.id;
        let type_url = req.type_url.clone();
        self.stream.request(req.node.as_ref(), &type_url);
        let initial = req.response_nonce.is_empty();
        if !initial {
            // ACKs and NACKs are recorded even when stale (the client did accept or reject
            // that response), but a stale request changes no subscription (xDS protocol).
            // Nonces only grow, so the newest one remembered is the last one sent.
            let sent = &self.stream.types[&type_url].sent;
            let last = sent.keys().next_back().map(u64::to_string);
            let stale = last.as_deref() != Some(req.response_nonce.as_str());
            let answered = req.response_nonce.parse::<u64>().ok();
            let version = answered.and_then(|n| sent.get(&n).cloned());
            let ts = self.stream.type_status(&type_url);
            if let Some(err) = &req.error_detail {
                ts.record_nack(version.clone(), &err.message);
                info!(
                    stream = id,
                    type_url,
                    rejected = version.as_deref().unwrap_or("?"),
                    kept = req.version_info,
                    nonce = req.response_nonce,
                    stale,
                    error_detail = err.message,
                    "NACK"
                );
            } else {
                ts.record_ack(req.version_info.clone());
                info!(
                    stream = id,
                    type_url,
                    version = req.version_info,
                    nonce = req.response_nonce,
                    stale,
                    "ACK"
                );
            }
            if stale {
                return Vec::new();
            }
        } else {
            info!(
                stream = id,
                node = self.stream.status.node_id,
                type_url,
                version = req.version_info,
                names = req.resource_names.len(),
                "request"
            );
        }
        // Every SotW request carries the whole subscription.
        let sub = self
            .stream
            .types
            .get_mut(&type_url)
            .expect("added by request");
        sub.wildcard = asks_for_all(&req.resource_names, &type_url);
        sub.names = req
            .resource_names
            .iter()
            .filter(|n| *n != "*")
            .cloned()
            .collect();
        self.stream.publish_subscription(&type_url);
        self.respond(&type_url, state, initial)
            .into_iter()
            .collect()
    }

    fn on_change(&mut self, state: &State) -> Vec<DiscoveryResponse> {
        self.stream
            .type_urls()
            .iter()
            .filter_map(|t| self.respond(t, state, false))
            .collect()
    }

    fn status(&mut self) -> &mut StreamStatus {
        &mut self.stream.status
    }
}
