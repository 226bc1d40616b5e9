//! Edits on raw JSON documents (config, manifest, index). Documents are handled as
//! `serde_json::Value` with key order preserved, so fields this code does not know about
//! (Docker's `Healthcheck`, `Shell`, `container_config`, ...) survive untouched.

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use super::{Descriptor, DOCKER_LAYER_GZIP, OCI_LAYER_GZIP};

/// What the new layer adds to a config.
#[derive(Debug, Clone)]
pub struct ConfigEdit {
    /// `sha256:` diff_id of the new layer.
    pub diff_id: String,
    /// `created` for the history entry and, when set from `SOURCE_DATE_EPOCH`, the image.
    pub created: Option<String>,
    /// `created_by` of the history entry.
    pub created_by: String,
    /// `comment` of the history entry.
    pub comment: Option<String>,
}

/// Append the layer to `rootfs.diff_ids` and one `history` entry; keep everything else.
pub fn edit_config(raw: &[u8], edit: &ConfigEdit) -> Result<Vec<u8>> {
    let mut cfg: Value = serde_json::from_slice(raw).context("the base config is not JSON")?;
    let obj = cfg
        .as_object_mut()
        .context("the base config is not an object")?;
    let diff_ids = obj
        .get_mut("rootfs")
        .and_then(|r| r.get_mut("diff_ids"))
        .and_then(Value::as_array_mut)
        .context("the base config has no rootfs.diff_ids")?;
    diff_ids.push(Value::String(edit.diff_id.clone()));

    // Without SOURCE_DATE_EPOCH, the base's own time keeps the result reproducible.
    let created = edit
        .created
        .clone()
        .or_else(|| {
            obj.get("created")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string());
    if edit.created.is_some() {
        obj.insert("created".into(), Value::String(created.clone()));
    }
    // A config without history stays without: one entry would not match the layer count.
    if let Some(history) = obj.get_mut("history").and_then(Value::as_array_mut) {
        let mut entry = Map::new();
        entry.insert("created".into(), Value::String(created));
        entry.insert("created_by".into(), Value::String(edit.created_by.clone()));
        if let Some(c) = &edit.comment {
            entry.insert("comment".into(), Value::String(c.clone()));
        }
        history.push(Value::Object(entry));
    }
    Ok(serde_json::to_vec(&cfg)?)
}

/// The layer media type matching a manifest's family.
pub fn layer_media_type(manifest_media_type: &str) -> &'static str {
    if super::is_docker(manifest_media_type) {
        DOCKER_LAYER_GZIP
    } else {
        OCI_LAYER_GZIP
    }
}

/// Copy a base manifest, point it at the new config and append the layer. `base` adds the
/// `org.opencontainers.image.base.{name,digest}` annotations (OCI manifests only).
pub fn edit_manifest(
    raw: &[u8],
    config: &Descriptor,
    layer: &Descriptor,
    base: Option<(&str, &str)>,
) -> Result<Vec<u8>> {
    let mut m: Value = serde_json::from_slice(raw).context("the base manifest is not JSON")?;
    let is_oci = !super::is_docker(&super::media_type_of(&m, None));
    let obj = m
        .as_object_mut()
        .context("the base manifest is not an object")?;
    let cfg = obj
        .get_mut("config")
        .and_then(Value::as_object_mut)
        .context("the base manifest has no config")?;
    cfg.insert("digest".into(), json!(config.digest));
    cfg.insert("size".into(), json!(config.size));
    obj.get_mut("layers")
        .and_then(Value::as_array_mut)
        .context("the base manifest has no layers")?
        .push(layer.to_json());
    if let (true, Some((name, digest))) = (is_oci, base) {
        let ann = obj
            .entry("annotations")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(ann) = ann.as_object_mut() {
            ann.insert("org.opencontainers.image.base.name".into(), json!(name));
            ann.insert("org.opencontainers.image.base.digest".into(), json!(digest));
        }
    }
    Ok(serde_json::to_vec(&m)?)
}

/// Map a Docker media type to its OCI twin (unknown types are kept).
pub fn oci_media_type(mt: &str) -> &str {
    match mt {
        super::DOCKER_MANIFEST => super::OCI_MANIFEST,
        super::DOCKER_LIST => super::OCI_INDEX,
        super::DOCKER_CONFIG => super::OCI_CONFIG,
        super::DOCKER_LAYER_GZIP => OCI_LAYER_GZIP,
        super::DOCKER_LAYER_TAR => super::OCI_LAYER_TAR,
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        }
        other => other,
    }
}

/// Rewrite a Docker-typed manifest with OCI media types (for OCI layouts, which skopeo and
/// umoci only read with OCI types). Config and layer bytes are unchanged; digests of the
/// manifest itself change.
pub fn manifest_to_oci(raw: &[u8]) -> Result<Vec<u8>> {
    let mut m: Value = serde_json::from_slice(raw)?;
    if !super::is_docker(&super::media_type_of(&m, None)) {
        return Ok(raw.to_vec());
    }
    let swap = |v: &mut Value| {
        if let Some(mt) = v.get("mediaType").and_then(Value::as_str) {
            let new = oci_media_type(mt).to_string();
            v["mediaType"] = Value::String(new);
        }
    };
    swap(&mut m);
    if let Some(c) = m.get_mut("config") {
        swap(c);
    }
    if let Some(layers) = m.get_mut("layers").and_then(Value::as_array_mut) {
        layers.iter_mut().for_each(swap);
    }
    Ok(serde_json::to_vec(&m)?)
}

/// True for the attestation entries buildx adds to an index (they vouch for the old
/// children, so they must not be carried over).
pub fn is_attestation(entry: &Value) -> bool {
    let ann = entry
        .get("annotations")
        .and_then(|a| a.get("vnd.docker.reference.type"))
        .and_then(Value::as_str);
    let unknown = entry
        .get("platform")
        .map(|p| p.get("os").and_then(Value::as_str) == Some("unknown"))
        .unwrap_or(false);
    ann == Some("attestation-manifest") || unknown
}

/// Build the new index from the base index: same media type and top-level fields, with
/// `manifests` replaced by the overlaid children (each keeps its `platform` and annotations,
/// with new `mediaType`/`digest`/`size`). `to_oci` converts the index type.
pub fn rebuild_index(
    raw: &[u8],
    children: &[(Value, Descriptor)],
    to_oci: bool,
) -> Result<Vec<u8>> {
    let mut idx: Value = serde_json::from_slice(raw).context("the base index is not JSON")?;
    if children.is_empty() {
        bail!("no manifests left for the index");
    }
    let entries: Vec<Value> = children
        .iter()
        .map(|(old, new)| {
            let mut e = old.clone();
            e["mediaType"] = json!(new.media_type);
            e["digest"] = json!(new.digest);
            e["size"] = json!(new.size);
            e
        })
        .collect();
    let obj = idx
        .as_object_mut()
        .context("the base index is not an object")?;
    obj.insert("manifests".into(), Value::Array(entries));
    if to_oci {
        if let Some(mt) = obj.get("mediaType").and_then(Value::as_str) {
            let new = oci_media_type(mt).to_string();
            obj.insert("mediaType".into(), Value::String(new));
        }
    }
    Ok(serde_json::to_vec(&idx)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER_CFG: &str = r#"{"architecture":"amd64","config":{"Env":["A=1"],"Healthcheck":{"Test":["CMD","true"]},"Shell":["/bin/bash","-c"]},"created":"2021-01-01T00:00:00Z","docker_version":"20.10.7","history":[{"created":"2021-01-01T00:00:00Z","created_by":"ADD x"}],"os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:aa"]},"zzz_unknown":{"k":[1,2]}}"#;

    fn edit() -> ConfigEdit {
        ConfigEdit {
            diff_id: "sha256:bb".into(),
            created: None,
            created_by: "mosnctl overlay /usr/local/bin/mosn".into(),
            comment: Some("mosn".into()),
        }
    }

    #[test]
    fn config_keeps_unknown_fields_and_order() {
        let out = edit_config(DOCKER_CFG.as_bytes(), &edit()).unwrap();
        let s = String::from_utf8(out).unwrap();
        let expected = DOCKER_CFG
            .replace(r#""diff_ids":["sha256:aa"]"#, r#""diff_ids":["sha256:aa","sha256:bb"]"#)
            .replace(
                r#""created_by":"ADD x"}]"#,
                r#""created_by":"ADD x"},{"created":"2021-01-01T00:00:00Z","created_by":"mosnctl overlay /usr/local/bin/mosn","comment":"mosn"}]"#,
            );
        assert_eq!(s, expected);
    }

    #[test]
    fn source_date_epoch_sets_created() {
        let mut e = edit();
        e.created = Some("2000-01-01T00:00:00Z".into());
        let v: Value =
            serde_json::from_slice(&edit_config(DOCKER_CFG.as_bytes(), &e).unwrap()).unwrap();
        assert_eq!(v["created"], "2000-01-01T00:00:00Z");
        assert_eq!(v["history"][1]["created"], "2000-01-01T00:00:00Z");
    }

    #[test]
    fn manifest_family_and_annotations() {
        let docker = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","size":1,"digest":"sha256:{}"}},"layers":[]}}"#,
            super::super::DOCKER_MANIFEST,
            super::super::DOCKER_CONFIG,
            "0".repeat(64)
        );
        let cfg = Descriptor {
            media_type: super::super::DOCKER_CONFIG.into(),
            digest: format!("sha256:{}", "1".repeat(64)),
            size: 9,
        };
        let layer = Descriptor {
            media_type: layer_media_type(super::super::DOCKER_MANIFEST).into(),
            digest: format!("sha256:{}", "2".repeat(64)),
            size: 7,
        };
        let out = edit_manifest(docker.as_bytes(), &cfg, &layer, Some(("b", "sha256:x"))).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["layers"][0]["mediaType"], DOCKER_LAYER_GZIP);
        assert!(
            v.get("annotations").is_none(),
            "no annotations on Docker manifests"
        );
        assert_eq!(v["config"]["size"], 9);
        let oci: Value = serde_json::from_slice(&manifest_to_oci(&out).unwrap()).unwrap();
        assert_eq!(oci["mediaType"], super::super::OCI_MANIFEST);
        assert_eq!(oci["config"]["mediaType"], super::super::OCI_CONFIG);
        assert_eq!(oci["layers"][0]["mediaType"], OCI_LAYER_GZIP);
    }

    #[test]
    fn attestations_are_recognised() {
        let att = json!({"platform":{"os":"unknown","architecture":"unknown"},"annotations":{"vnd.docker.reference.type":"attestation-manifest"}});
        assert!(is_attestation(&att));
        assert!(!is_attestation(
            &json!({"platform":{"os":"linux","architecture":"amd64"}})
        ));
    }
}
