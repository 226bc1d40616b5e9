//! Configuration: decoding Envoy's v3 bootstrap and building the immutable runtime snapshot.
//!
//! Flow: file (JSON/YAML/binary proto) → `serde_json::Value` → [`decode`] (unknown Istio types
//! parked) → typed `envoy.config.bootstrap.v3.Bootstrap` → [`Snapshot::build`] → the data path
//! reads it through [`ConfigStore`], which xDS can swap atomically.

pub mod decode;
mod snapshot;

pub use snapshot::{ConfigStore, ListenerConfig, Snapshot};

use crate::cli::Options;
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use serde_json::Value;
use std::time::Duration;

/// A decoded bootstrap plus what the loader had to skip.
#[derive(Debug, Clone)]
pub struct LoadedBootstrap {
    /// The typed bootstrap.
    pub proto: Bootstrap,
    /// Type URLs of typed configs that were parked because no decoder knows them.
    pub parked: Vec<String>,
}

/// Read, merge (`--config-yaml`), decode and apply the command-line overrides.
pub fn load(opts: &Options) -> Result<LoadedBootstrap, String> {
    let mut value = match &opts.config_path {
        Some(p) => {
            let bytes =
                std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            let name = p.to_string_lossy().to_ascii_lowercase();
            if name.ends_with(".pb") {
                let proto: Bootstrap = prost::Message::decode(bytes.as_slice())
                    .map_err(|e| format!("{}: {e}", p.display()))?;
                decode::to_json(&proto)
            } else {
                let text = String::from_utf8(bytes)
                    .map_err(|_| format!("{} is not UTF-8", p.display()))?;
                parse_text(&text, name.ends_with(".yaml") || name.ends_with(".yml"))
                    .map_err(|e| format!("{}: {e}", p.display()))?
            }
        }
        None if opts.config_yaml.is_some() => Value::Object(Default::default()),
        None => return Err("no configuration given (use -c FILE or --config-yaml)".into()),
    };
    if let Some(y) = &opts.config_yaml {
        let overlay = parse_text(y, true).map_err(|e| format!("--config-yaml: {e}"))?;
        merge(&mut value, overlay);
    }
    let mut boot = decode_bootstrap(value, !opts.allow_unknown_fields)?;
    let node = boot.proto.node.get_or_insert_with(Default::default);
    if let Some(c) = &opts.service_cluster {
        node.cluster = c.clone();
    }
    if let Some(n) = &opts.service_node {
        node.id = n.clone();
    }
    Ok(boot)
}

/// Parse JSON (tolerating trailing commas) or YAML text into a JSON value.
pub fn parse_text(text: &str, yaml: bool) -> Result<Value, String> {
    if !yaml {
        match serde_json::from_str(text) {
            Ok(v) => return Ok(v),
            Err(first) => {
                if let Ok(v) = serde_json::from_str(&decode::strip_trailing_commas(text)) {
                    return Ok(v);
                }
                // Envoy picks the parser by extension; a JSON-named file that is really YAML
                // still loads, but report the JSON error if YAML fails too.
                return serde_yaml::from_str(text).map_err(|_| format!("invalid JSON: {first}"));
            }
        }
    }
    serde_yaml::from_str(text).map_err(|e| format!("invalid YAML: {e}"))
}

/// Decode a bootstrap JSON value. Strict first; if only unknown fields fail, warn and go on,
/// because a newer control plane may know fields that our envoy-types does not.
pub fn decode_bootstrap(mut value: Value, strict: bool) -> Result<LoadedBootstrap, String> {
    let mut parked = Vec::new();
    decode::park_unknown_types(&mut value, &mut parked);
    let proto = match decode::from_json::<Bootstrap>(&value, strict) {
        Ok(p) => p,
        Err(strict_err) if strict => match decode::from_json::<Bootstrap>(&value, false) {
            Ok(p) => {
                tracing::warn!("bootstrap has fields this build does not know: {strict_err}");
                p
            }
            Err(e) => return Err(e),
        },
        Err(e) => return Err(e),
    };
    Ok(LoadedBootstrap { proto, parked })
}

/// Proto `MergeFrom` over JSON: messages merge, repeated fields append, scalars replace.
pub fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(o)) => b.extend(o),
        (slot, v) => *slot = v,
    }
}

/// A proto Duration as a std Duration (negative → zero).
pub fn duration(d: &envoy_types::pb::google::protobuf::Duration) -> Duration {
    Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
}

/// An optional proto Duration, `None` when absent.
pub fn opt_duration(d: &Option<envoy_types::pb::google::protobuf::Duration>) -> Option<Duration> {
    d.as_ref().map(duration)
}

/// A proto from its JSON form, for unit tests (strict: unknown fields are an error).
#[cfg(test)]
pub(crate) fn test_proto<M: prost::Message + prost::Name + Default>(v: serde_json::Value) -> M {
    mosn_proto::from_json(&mosn_proto::decode_pool(), &v, true).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_is_proto_merge_from() {
        let mut base = json!({"node": {"id": "a", "metadata": {"x": 1}}, "static_resources": {"clusters": [{"name": "c1"}]}});
        merge(
            &mut base,
            json!({"node": {"id": "b"}, "static_resources": {"clusters": [{"name": "c2"}]}}),
        );
        assert_eq!(base["node"], json!({"id": "b", "metadata": {"x": 1}}));
        assert_eq!(
            base["static_resources"]["clusters"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn load_yaml_file_with_config_yaml_and_overrides() {
        let dir = std::env::temp_dir().join(format!("mosn-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("b.yaml");
        std::fs::write(&file, "node: {id: from-file, cluster: c}\nstatic_resources:\n  clusters:\n  - {name: one, type: STATIC}\n").unwrap();
        let opts = Options {
            config_path: Some(file.clone()),
            config_yaml: Some(
                "static_resources: {clusters: [{name: two, type: STRICT_DNS}]}".into(),
            ),
            service_node: Some("sidecar~1.2.3.4~x.ns~ns.svc.cluster.local".into()),
            ..Default::default()
        };
        let b = load(&opts).unwrap();
        let names: Vec<_> = b
            .proto
            .static_resources
            .as_ref()
            .unwrap()
            .clusters
            .iter()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(names, ["one", "two"]);
        assert_eq!(
            b.proto.node.as_ref().unwrap().id,
            "sidecar~1.2.3.4~x.ns~ns.svc.cluster.local"
        );
        assert_eq!(b.proto.node.as_ref().unwrap().cluster, "c");
        // Unknown fields: strict fails, so the loader warns and decodes leniently.
        assert!(decode_bootstrap(json!({"node": {"id": "x"}, "future_field": 1}), true).is_ok());
        assert!(decode_bootstrap(json!({"node": "not an object"}), true).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
