//! Workload metadata for Istio's HTTP metadata exchange: this proxy's own (from the
//! bootstrap's `node.metadata`, as pilot-agent writes it) and a peer's (from its
//! `x-envoy-peer-metadata` header: Base64 of a protobuf `google.protobuf.Struct`).

use base64::Engine as _;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use prost::Message as _;

/// What the metrics' labels read of one side (the labels picked out once, when decoded).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Workload {
    /// `WORKLOAD_NAME`.
    pub workload: String,
    /// `NAMESPACE`.
    pub namespace: String,
    /// `CLUSTER_ID`.
    pub cluster: String,
    /// `LABELS.app`.
    pub app: String,
    /// `LABELS.version`.
    pub version: String,
    /// `LABELS["service.istio.io/canonical-name"]`.
    pub canonical_name: String,
    /// `LABELS["service.istio.io/canonical-revision"]`.
    pub canonical_revision: String,
}

impl Workload {
    /// The canonical service: its label, else the workload name (Istio 1.10's fallback).
    pub fn canonical_service(&self) -> &str {
        match self.canonical_name.as_str() {
            "" => &self.workload,
            s => s,
        }
    }

    /// From an endpoint's `istio.workload` metadata, `name;namespace;canonical
    /// service;canonical revision[;cluster]` (at least four parts).
    pub fn from_endpoint(md: &str) -> Option<Self> {
        let mut parts = md.split(';');
        let mut next = || parts.next().map(str::to_string);
        let (workload, namespace, canonical_name, canonical_revision) =
            (next()?, next()?, next()?, next()?);
        Some(Workload {
            workload,
            namespace,
            canonical_name,
            canonical_revision,
            cluster: next().unwrap_or_default(),
            ..Default::default()
        })
    }

    pub fn from_struct(s: &Struct) -> Self {
        let text = |s: &Struct, k: &str| match s.fields.get(k).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(v)) => v.clone(),
            _ => String::new(),
        };
        let none = Struct::default();
        let labels = match s.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
            Some(Kind::StructValue(l)) => l,
            _ => &none,
        };
        Workload {
            workload: text(s, "WORKLOAD_NAME"),
            namespace: text(s, "NAMESPACE"),
            cluster: text(s, "CLUSTER_ID"),
            app: text(labels, "app"),
            version: text(labels, "version"),
            canonical_name: text(labels, "service.istio.io/canonical-name"),
            canonical_revision: text(labels, "service.istio.io/canonical-revision"),
        }
    }
}

/// This proxy's side of the exchange.
#[derive(Debug)]
pub struct Local {
    /// `node.id`, sent as `x-envoy-peer-metadata-id`.
    pub id: http::HeaderValue,
    /// The encoded metadata, sent as `x-envoy-peer-metadata`.
    pub value: http::HeaderValue,
    /// The same metadata in the TCP exchange's framing (see [`super::tcp_mx`]).
    pub mx_header: bytes::Bytes,
    /// What labels read.
    pub workload: Workload,
    /// A gateway (`router~` node): Istio's stats take no Host fallback there.
    pub gateway: bool,
    /// The node's `ISTIO_VERSION`, the tag of `istio_build`.
    istio_version: String,
    /// `istio_build` is set.
    build: std::sync::OnceLock<()>,
    /// The stats of each label set seen, by its values.
    series: std::sync::Mutex<SeriesMap>,
    /// Peers' metadata by header value (Istio 1.10 caches 500 too).
    peers: std::sync::Mutex<rustc_hash::FxHashMap<http::HeaderValue, std::sync::Arc<Workload>>>,
}

/// The node metadata keys Istio 1.10's exchange sends (its FlatBuffer schema); the rest of the
/// node's metadata (INSTANCE_IPS, ...) stays home. Later Istio sends a subset of these.
const SENT: [&str; 7] = [
    "NAME",
    "NAMESPACE",
    "OWNER",
    "WORKLOAD_NAME",
    "ISTIO_VERSION",
    "MESH_ID",
    "CLUSTER_ID",
];

impl Local {
    /// From the bootstrap's node.
    pub fn from_node(node: Option<&envoy_types::pb::envoy::config::core::v3::Node>) -> Self {
        let id = node.map(|n| n.id.as_str()).unwrap_or_default();
        let md = node.and_then(|n| n.metadata.clone()).unwrap_or_default();
        let mut sent = Struct::default();
        for k in SENT {
            if let Some(
                v @ Value {
                    kind: Some(Kind::StringValue(_)),
                },
            ) = md.fields.get(k)
            {
                sent.fields.insert(k.to_string(), v.clone());
            }
        }
        // LABELS and PLATFORM_METADATA always go (empty when unset), APP_CONTAINERS too.
        for k in ["LABELS", "PLATFORM_METADATA"] {
            let v = match md.fields.get(k) {
                Some(
                    v @ Value {
                        kind: Some(Kind::StructValue(_)),
                    },
                ) => v.clone(),
                _ => Value {
                    kind: Some(Kind::StructValue(Struct::default())),
                },
            };
            sent.fields.insert(k.to_string(), v);
        }
        let containers = match md
            .fields
            .get("APP_CONTAINERS")
            .and_then(|v| v.kind.as_ref())
        {
            Some(Kind::StringValue(s)) => s.clone(),
            _ => String::new(),
        };
        sent.fields.insert(
            "APP_CONTAINERS".into(),
            Value {
                kind: Some(Kind::StringValue(containers)),
            },
        );
        let value = base64::engine::general_purpose::STANDARD.encode(sent.encode_to_vec());
        let mx_header = super::tcp_mx::header(id, sent);
        Local {
            id: http::HeaderValue::from_str(id).unwrap_or(http::HeaderValue::from_static("")),
            value: http::HeaderValue::from_str(&value).expect("base64 is a valid header value"),
            mx_header,
            workload: Workload::from_struct(&md),
            gateway: id.starts_with("router~"),
            istio_version: match md.fields.get("ISTIO_VERSION").and_then(|v| v.kind.as_ref()) {
                Some(Kind::StringValue(v)) if !v.is_empty() => v.clone(),
                _ => "unknown".into(),
            },
            build: Default::default(),
            series: Default::default(),
            peers: Default::default(),
        }
    }

    /// Istio's `istio_build{component="proxy",tag=<ISTIO_VERSION>} 1`, which its stats
    /// filter sets when its config is created (see `ConfigStore::record_istio_build`).
    pub fn record_build(&self, stats: &crate::stats::Stats) {
        self.build.get_or_init(|| {
            let labels = [("component", "proxy"), ("tag", self.istio_version.as_str())];
            stats
                .labeled("istio_build", &labels, crate::stats::Kind::Gauge)
                .set(1);
        });
    }

    /// A peer's metadata from its header value, decoded once per distinct value.
    pub fn peer(&self, value: &http::HeaderValue) -> Option<std::sync::Arc<Workload>> {
        const CACHED: usize = 500;
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = peers.get(value) {
            return Some(w.clone());
        }
        let w = std::sync::Arc::new(decode(value.as_bytes())?);
        if peers.len() >= CACHED {
            peers.clear();
        }
        peers.insert(value.clone(), w.clone());
        Some(w)
    }

    /// The stats of the label set `key`, made by `make` the first time; `None` past
    /// [`MAX_SERIES`] label sets (a bound on what forged Host or peer headers can make).
    pub fn series(
        &self,
        values: &[(&str, &str)],
        make: impl FnOnce() -> super::labels::Series,
    ) -> Option<std::sync::Arc<super::labels::Series>> {
        // Found by a hash of the values, then checked against them: no key is built for a
        // label set already seen.
        let hash = {
            use std::hash::Hasher;
            let mut h = rustc_hash::FxHasher::default();
            for (_, v) in values {
                h.write(v.as_bytes());
                h.write_u8(0);
            }
            h.finish()
        };
        let mut m = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let SeriesMap { by_hash, len } = &mut *m;
        let same = by_hash.get(&hash).into_iter().flatten();
        if let Some((_, s)) = same.into_iter().find(|(k, _)| joined_is(k, values)) {
            return Some(s.clone());
        }
        if *len >= MAX_SERIES {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "{MAX_SERIES} Istio metric label sets: requests with new ones are not counted"
                );
            });
            return None;
        }
        let s = std::sync::Arc::new(make());
        let key = super::labels::key(values).into_boxed_str();
        by_hash.entry(hash).or_default().push((key, s.clone()));
        *len += 1;
        Some(s)
    }
}

/// The stats of each label set seen, by a hash of its values (with their joined values, to
/// tell apart sets whose hashes collide).
#[derive(Debug, Default)]
struct SeriesMap {
    by_hash: rustc_hash::FxHashMap<u64, Vec<Keyed>>,
    len: usize,
}

/// A label set's joined values and its stats.
type Keyed = (Box<str>, std::sync::Arc<super::labels::Series>);

/// Whether `joined` is these values, each ended by a NUL ([`super::labels::key`]).
fn joined_is(joined: &str, values: &[(&str, &str)]) -> bool {
    let mut rest = joined.as_bytes();
    for (_, v) in values {
        let v = v.as_bytes();
        match rest.strip_prefix(v) {
            Some([0, tail @ ..]) => rest = tail,
            _ => return false,
        }
    }
    rest.is_empty()
}

/// Label sets counted at most; each is a counter and three histograms.
pub const MAX_SERIES: usize = 10_000;

/// A peer's metadata from its `x-envoy-peer-metadata` value (padding optional); `None` when
/// it does not decode.
pub fn decode(value: &[u8]) -> Option<Workload> {
    use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let bytes = LENIENT.decode(value).ok()?;
    Struct::decode(bytes.as_slice())
        .ok()
        .map(|s| Workload::from_struct(&s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_local_metadata_round_trips_through_the_header() {
        let node: envoy_types::pb::envoy::config::core::v3::Node =
            crate::config::test_proto(json!({
            "id": "sidecar~10.1.1.1~productpage-v1-abc.default~default.svc.cluster.local",
            "metadata": {"NAME": "productpage-v1-abc", "NAMESPACE": "default",
                "WORKLOAD_NAME": "productpage-v1", "CLUSTER_ID": "Kubernetes",
                "INSTANCE_IPS": "10.1.1.1", "LABELS": {"app": "productpage", "version": "v1"}}}));
        let local = Local::from_node(Some(&node));
        assert!(!local.gateway);
        let peer = decode(local.value.as_bytes()).unwrap();
        assert_eq!(peer, local.workload);
        assert_eq!(peer.workload, "productpage-v1");
        assert_eq!(peer.version, "v1");
        assert_eq!(
            peer.canonical_service(),
            "productpage-v1",
            "no canonical label"
        );
        // What is not sent: INSTANCE_IPS.
        let raw = base64::engine::general_purpose::STANDARD
            .decode(local.value.as_bytes())
            .unwrap();
        let s = Struct::decode(raw.as_slice()).unwrap();
        assert!(!s.fields.contains_key("INSTANCE_IPS"));
        assert!(s.fields.contains_key("PLATFORM_METADATA"));
        // Unpadded input decodes too; garbage does not.
        let unpadded = local.value.to_str().unwrap().trim_end_matches('=');
        assert_eq!(decode(unpadded.as_bytes()), Some(peer));
        assert_eq!(decode(b"%%%"), None);
    }
}

#[cfg(test)]
mod series_tests {
    use super::*;

    #[test]
    fn joined_values_compare_whole() {
        let v = [("a", "ab"), ("b", "c")];
        assert!(joined_is("ab\0c\0", &v));
        assert!(!joined_is("ab\0c\0d\0", &v));
        assert!(!joined_is("ab\0", &v));
        assert!(!joined_is("a\0bc\0", &v));
        assert!(!joined_is("abc\0\0", &v));
    }
}
