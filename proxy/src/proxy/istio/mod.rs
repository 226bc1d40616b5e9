//! Istio's HTTP telemetry on an HCM, for what Kiali and Istio's dashboards read:
//! - `istio.metadata_exchange`: the workload metadata of each side travels in
//!   `x-envoy-peer-metadata` / `x-envoy-peer-metadata-id` (outbound proxies add theirs to
//!   requests, inbound ones answer with theirs, and each takes the other's off), so that
//! - `istio.stats` can count `istio_requests_total` with the labels of both sides.
//!
//! Istio 1.10 runs both as Wasm (null VM) filters and later Istio as native ones; both are
//! found by their names in the HCM's filters. The labels are those of Istio's stats filter,
//! in its current order; see [`labels`]; and the histograms
//! `istio_request_duration_milliseconds`, `istio_request_bytes` and `istio_response_bytes`
//! under the same labels (sizes: header names and values plus body bytes, as Istio 1.10
//! counts them, the pseudo-headers taken as `:method` and `:path`). [`tcp`] counts a tcp_proxy
//! chain's connections and bytes, [`tcp_mx`] is the TCP metadata exchange. Outbound, the
//! principals are the upstream TLS connection's names (`cluster::conn_info`). Not done:
//! custom dimensions.

pub mod labels;
pub mod peer;
pub mod tcp;
pub mod tcp_mx;

pub use labels::Telemetry;

use http::{HeaderMap, HeaderName, HeaderValue};

/// `x-envoy-peer-metadata-id`.
const ID: HeaderName = HeaderName::from_static("x-envoy-peer-metadata-id");
/// `x-envoy-peer-metadata`.
const VALUE: HeaderName = HeaderName::from_static("x-envoy-peer-metadata");

/// An HCM's Istio telemetry filters.
#[derive(Debug, Clone, Default)]
pub struct IstioConfig {
    /// `istio.metadata_exchange` is in the chain.
    pub mx: bool,
    /// `istio.stats` is in the chain.
    pub stats: bool,
    /// `istio.stats` is configured as later Istio does it (`stats.PluginConfig`), which
    /// drops the Host fallback of `destination_service` on inbound listeners.
    pub plugin_config: bool,
    /// The listener's `traffic_direction` (0 unspecified, 1 inbound, 2 outbound).
    pub direction: i32,
}

/// What the request side of the exchange learnt, for the response side.
#[derive(Debug, Default)]
pub struct Exchange {
    had_id: bool,
    had_value: bool,
    /// The other side's workload: the client's (inbound, from the request) or the server's
    /// (outbound, from the response), shared from the decoded-peer cache.
    pub peer: Option<std::sync::Arc<peer::Workload>>,
}

impl IstioConfig {
    /// Whether either filter is there.
    pub fn on(&self) -> bool {
        self.mx || self.stats
    }

    /// Whether this listener reports as the destination (inbound).
    pub fn inbound(&self) -> bool {
        self.direction == 1
    }

    /// The request side: the client's metadata taken off (and kept when inbound), this
    /// proxy's put on when not inbound.
    pub fn request(&self, local: &peer::Local, h: &mut HeaderMap) -> Exchange {
        if !self.mx {
            return Exchange::default();
        }
        let (id, value) = if self.inbound() {
            (h.remove(ID), h.remove(VALUE))
        } else {
            // Istio sends no id when the node has none.
            let ours = (!local.id.is_empty()).then(|| local.id.clone());
            (swap(h, ID, ours), swap(h, VALUE, Some(local.value.clone())))
        };
        let (id, value) = (
            id.filter(|v| !v.is_empty()),
            value.filter(|v| !v.is_empty()),
        );
        let peer = value
            .as_ref()
            .filter(|_| self.inbound())
            .and_then(|v| local.peer(v));
        Exchange {
            had_id: id.is_some(),
            had_value: value.is_some(),
            peer,
        }
    }

    /// The response side: the server's metadata taken off (and kept when outbound), this
    /// proxy's put on when not outbound, for a client that sent its own.
    pub fn response(&self, local: &peer::Local, ex: &mut Exchange, h: &mut HeaderMap) {
        if !self.mx {
            return;
        }
        if self.direction == 2 {
            h.remove(ID);
            ex.peer = h.remove(VALUE).and_then(|v| local.peer(&v));
        } else {
            let id = (ex.had_id && !local.id.is_empty()).then(|| local.id.clone());
            swap(h, ID, id);
            swap(h, VALUE, ex.had_value.then(|| local.value.clone()));
        }
    }
}

/// Every `name` line replaced by `new`, or removed when it is `None`, in one lookup (each
/// hashes the name); the first value it had.
fn swap(h: &mut HeaderMap, name: HeaderName, new: Option<HeaderValue>) -> Option<HeaderValue> {
    use http::header::Entry;
    match (h.entry(name), new) {
        (Entry::Occupied(mut o), Some(v)) => Some(o.insert(v)),
        (Entry::Occupied(o), None) => Some(o.remove()),
        (Entry::Vacant(e), Some(v)) => {
            e.insert(v);
            None
        }
        (Entry::Vacant(_), None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_go_one_way_each_direction() {
        let node: envoy_types::pb::envoy::config::core::v3::Node = crate::config::test_proto(
            serde_json::json!({"id": "sidecar~a", "metadata": {"WORKLOAD_NAME": "me"}}),
        );
        let local = peer::Local::from_node(Some(&node));
        let out = IstioConfig {
            mx: true,
            direction: 2,
            ..Default::default()
        };
        let inbound = IstioConfig {
            direction: 1,
            ..out.clone()
        };
        // Outbound: an app's own headers are replaced by the proxy's.
        let mut req = HeaderMap::new();
        req.insert(VALUE, "forged".parse().unwrap());
        let mut ex = out.request(&local, &mut req);
        assert_eq!(req[&ID], local.id);
        assert_eq!(req[&VALUE], local.value);
        // Inbound: taken off the request and decoded; the answer carries the callee's.
        let mut ex_in = inbound.request(&local, &mut req);
        assert!(!req.contains_key(&VALUE) && !req.contains_key(&ID));
        assert_eq!(ex_in.peer.as_ref().map(|p| p.workload.as_str()), Some("me"));
        let mut resp = HeaderMap::new();
        inbound.response(&local, &mut ex_in, &mut resp);
        assert_eq!(resp[&VALUE], local.value);
        // Outbound again: the callee's is read and never reaches the app.
        out.response(&local, &mut ex, &mut resp);
        assert!(resp.is_empty());
        assert_eq!(ex.peer.map(|p| p.workload.clone()), Some("me".to_string()));
        // A client without the exchange gets nothing back.
        let mut ex_plain = inbound.request(&local, &mut HeaderMap::new());
        let mut resp = HeaderMap::new();
        inbound.response(&local, &mut ex_plain, &mut resp);
        assert!(resp.is_empty());
    }
}
