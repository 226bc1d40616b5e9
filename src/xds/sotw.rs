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
use super::status::{Protocol, StreamStatus, TypeStatus};
use super::{is_wildcard_type, Handler, CONTROL_PLANE_ID};
use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use std::collections::{BTreeMap, BTreeSet};
use tracing::{debug, info};

/// Recent responses remembered per type, to attribute late ACKs and NACKs.
const MAX_VERSIONS: usize = 32;

/// One SotW stream's protocol state.
#[derive(Debug)]
pub struct Sotw {
    status: StreamStatus,
    types: BTreeMap<String, Sub>,
    nonce: u64,
}

/// One type's subscription on a stream.
#[derive(Debug, Default)]
struct Sub {
    names: BTreeSet<String>,
    wildcard: bool,
    /// (name, content hash) of everything in the last response; `None` before the first.
    sent_view: Option<Vec<(String, String)>>,
    nonce: Option<String>,
    /// nonce -> type version of recent responses, to name what a late NACK rejected.
    versions: BTreeMap<u64, String>,
}

impl Sotw {
    /// A new stream with server id `id` from `peer` on `service` ("ADS" or "SDS").
    pub fn new(id: u64, peer: String, service: &'static str) -> Self {
        Self {
            status: StreamStatus::new(id, Protocol::Sotw, service, peer),
            types: BTreeMap::new(),
            nonce: 0,
        }
    }

    fn type_status(&mut self, type_url: &str) -> &mut TypeStatus {
        self.status.types.entry(type_url.to_string()).or_default()
    }

    /// Build the response for `type_url` if its subscribed view changed (or `force`).
    fn respond(&mut self, type_url: &str, state: &State, force: bool) -> Option<DiscoveryResponse> {
        let resources = state.types.get(type_url)?;
        let sub = self.types.get_mut(type_url)?;
        let selected: Vec<_> = resources
            .resources
            .values()
            .filter(|r| sub.wildcard || sub.names.contains(&r.name))
            .collect();
        let view: Vec<(String, String)> = selected
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        let send = match &sub.sent_view {
            None => sub.wildcard || !view.is_empty(),
            Some(prev) => force || *prev != view,
        };
        if !send {
            return None;
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        sub.sent_view = Some(view);
        sub.nonce = Some(nonce.clone());
        sub.versions.insert(self.nonce, resources.version.clone());
        while sub.versions.len() > MAX_VERSIONS {
            sub.versions.pop_first();
        }
        let names: Vec<String> = selected.iter().map(|r| r.name.clone()).collect();
        let response = DiscoveryResponse {
            version_info: resources.version.clone(),
            resources: selected.iter().map(|r| r.any.clone()).collect(),
            type_url: type_url.to_string(),
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
            resources = names.len(),
            "sending"
        );
        let ts = self.type_status(type_url);
        ts.responses += 1;
        ts.sent_version = Some(resources.version.clone());
        ts.sent_nonce = Some(nonce);
        ts.sent_resources = names;
        Some(response)
    }
}

impl Handler for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn on_request(&mut self, req: DiscoveryRequest, state: &State) -> Vec<DiscoveryResponse> {
        let id = self.status.id;
        if self.status.node_id.is_empty() {
            if let Some(node) = &req.node {
                self.status.node_id = node.id.clone();
            }
        }
        let type_url = req.type_url.clone();
        self.type_status(&type_url).requests += 1;
        let sub = self.types.entry(type_url.clone()).or_default();
        let initial = req.response_nonce.is_empty();
        if !initial {
            // ACKs and NACKs are recorded even when stale (the client did accept or reject
            // that response), but a stale request changes no subscription (xDS protocol).
            let stale = sub.nonce.as_deref() != Some(req.response_nonce.as_str());
            let answered = req.response_nonce.parse::<u64>().ok();
            let version = answered.and_then(|n| sub.versions.get(&n).cloned());
            let ts = self.status.types.entry(type_url.clone()).or_default();
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
                node = self.status.node_id,
                type_url,
                version = req.version_info,
                names = req.resource_names.len(),
                "request"
            );
        }
        let sub = self.types.get_mut(&type_url).expect("inserted above");
        sub.wildcard = req.resource_names.iter().any(|n| n == "*")
            || (req.resource_names.is_empty() && is_wildcard_type(&type_url));
        sub.names = req
            .resource_names
            .iter()
            .filter(|n| *n != "*")
            .cloned()
            .collect();
        let (wildcard, names) = (sub.wildcard, sub.names.iter().cloned().collect());
        let ts = self.type_status(&type_url);
        ts.wildcard = wildcard;
        ts.subscribed = names;
        self.respond(&type_url, state, initial)
            .into_iter()
            .collect()
    }

    fn on_change(&mut self, state: &State) -> Vec<DiscoveryResponse> {
        let types: Vec<String> = self.types.keys().cloned().collect();
        types
            .iter()
            .filter_map(|t| self.respond(t, state, false))
            .collect()
    }

    fn status(&mut self) -> &mut StreamStatus {
        &mut self.status
    }
}
