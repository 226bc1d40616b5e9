//! A cluster's transport sockets: its `transport_socket`, and `transport_socket_matches`
//! picked per endpoint by the endpoint's `envoy.transport_socket_match` metadata. Istio's
//! auto-mTLS is this: outbound clusters carry a `tlsMode-istio` match (`{tlsMode: istio}` →
//! an `UpstreamTlsContext` with the workload certificate) and a `tlsMode-disabled` one (empty
//! match → plaintext), and EDS labels the endpoints that have a sidecar.

use super::host::Host;
use crate::tls::context::{ClientTls, RAW_BUFFER_URL};
use envoy_types::pb::envoy::config::cluster::v3 as cpb;
use envoy_types::pb::envoy::config::core::v3::{
    transport_socket::ConfigType, Metadata, TransportSocket,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct};
use std::sync::Arc;

/// The metadata namespace a transport socket match reads.
pub const MATCH_NAMESPACE: &str = "envoy.transport_socket_match";

/// One `transport_socket_matches` entry.
#[derive(Debug)]
struct Match {
    /// Fields an endpoint's match metadata must all have (none: every endpoint).
    criteria: Vec<(String, String)>,
    tls: Option<Arc<ClientTls>>,
}

/// What a cluster's connections run over.
#[derive(Debug, Default)]
pub struct Transport {
    default: Option<Arc<ClientTls>>,
    matches: Vec<Match>,
}

impl Transport {
    /// Compile the cluster's transport sockets.
    pub fn from_cluster(c: &cpb::Cluster) -> Result<Self, String> {
        let default =
            socket(c.transport_socket.as_ref()).map_err(|e| format!("transport_socket: {e}"))?;
        let mut matches = Vec::new();
        for m in &c.transport_socket_matches {
            let tls = socket(m.transport_socket.as_ref())
                .map_err(|e| format!("transport_socket_matches {:?}: {e}", m.name))?;
            matches.push(Match {
                criteria: m.r#match.as_ref().map(fields).unwrap_or_default(),
                tls,
            });
        }
        Ok(Transport { default, matches })
    }

    /// The TLS context for connections to `host` (`None`: plaintext): the first match whose
    /// criteria the endpoint's metadata all has, else the cluster's own transport socket.
    pub fn for_host(&self, host: &Host) -> Option<&Arc<ClientTls>> {
        if self.matches.is_empty() {
            return self.default.as_ref();
        }
        let has =
            |(k, v): &(String, String)| host.socket_match.iter().any(|(hk, hv)| hk == k && hv == v);
        match self.matches.iter().find(|m| m.criteria.iter().all(has)) {
            Some(m) => m.tls.as_ref(),
            None => self.default.as_ref(),
        }
    }

    /// Every TLS context of the cluster (for SDS subscriptions).
    pub fn contexts(&self) -> impl Iterator<Item = &Arc<ClientTls>> {
        self.default
            .iter()
            .chain(self.matches.iter().filter_map(|m| m.tls.as_ref()))
    }
}

/// A transport socket: TLS, or plaintext (`None`, also for `raw_buffer`).
fn socket(t: Option<&TransportSocket>) -> Result<Option<Arc<ClientTls>>, String> {
    match t.map(|t| (&t.name, &t.config_type)) {
        None => Ok(None),
        Some((_, Some(ConfigType::TypedConfig(any)))) if any.type_url == RAW_BUFFER_URL => Ok(None),
        Some((_, Some(ConfigType::TypedConfig(any)))) => {
            ClientTls::from_any(any).map(|t| Some(Arc::new(t)))
        }
        Some((n, None)) => Err(format!("transport socket {n:?} has no typed_config")),
    }
}

/// A Struct's scalar fields as strings (strings as they are, numbers and bools printed), the
/// way match criteria and endpoint metadata are compared.
fn fields(s: &Struct) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = s
        .fields
        .iter()
        .filter_map(|(k, v)| {
            let v = match v.kind.as_ref()? {
                Kind::StringValue(s) => s.clone(),
                Kind::BoolValue(b) => b.to_string(),
                Kind::NumberValue(n) => n.to_string(),
                _ => return None,
            };
            Some((k.clone(), v))
        })
        .collect();
    out.sort();
    out
}

/// An endpoint's transport socket match metadata (`metadata.filter_metadata
/// ["envoy.transport_socket_match"]`).
pub fn socket_match(md: Option<&Metadata>) -> Vec<(String, String)> {
    md.and_then(|m| m.filter_metadata.get(MATCH_NAMESPACE))
        .map(fields)
        .unwrap_or_default()
}
