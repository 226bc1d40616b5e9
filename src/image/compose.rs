//! What the daemonless overlay adds to the selected base manifests: one deterministic layer per
//! architecture, then for each manifest the edited config and manifest that carry it, and the
//! rebuilt index.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use serde_json::Value;

use super::layer::{Layer, LayerOptions};
use super::mutate::{self, ConfigEdit};
use super::output::{self, Child, Overlaid};
use super::overlay::bar;
use super::Descriptor;

/// The new layer of each architecture (OCI name), shared by every manifest of it.
pub(super) type Layers = HashMap<String, Arc<Layer>>;

/// Build each architecture's layer once (CPU work, off the async workers), at gzip `level`
/// with file times `mtime` (`SOURCE_DATE_EPOCH`, else 0).
pub(super) async fn build_layers(
    children: &[Child<'_>],
    level: u32,
    mtime: Option<u64>,
    progress: &indicatif::MultiProgress,
) -> Result<Layers> {
    let mut layers: Layers = Default::default();
    for child in children {
        let arch = child.binary.info.oci_arch().to_string();
        if layers.contains_key(&arch) {
            continue;
        }
        let bin = child.binary.path.clone();
        let pb = progress.add(bar(&format!("compress {arch}")));
        let lopts = LayerOptions {
            mtime: mtime.unwrap_or(0),
            level,
        };
        let pb2 = pb.clone();
        let t = std::time::Instant::now();
        let layer =
            tokio::task::spawn_blocking(move || super::layer::build(&bin, lopts, &pb2)).await??;
        pb.finish_and_clear();
        tracing::info!(
            "layer {} for {arch}: {} bytes compressed in {} ms, diff_id {}",
            layer.digest,
            layer.blob.len(),
            t.elapsed().as_millis(),
            layer.diff_id
        );
        layers.insert(arch, Arc::new(layer));
    }
    Ok(layers)
}

/// Apply the layer to every child and rebuild the index. `to_oci` converts Docker media
/// types (for OCI layouts and archives).
pub(super) fn mutate_all(
    children: &[Child],
    layers: &Layers,
    root_raw: &Bytes,
    root_mt: &str,
    base_name: Option<&str>,
    to_oci: bool,
    epoch: Option<u64>,
) -> Result<Overlaid> {
    let mut out = Vec::new();
    for child in children {
        let layer = layers[child.binary.info.oci_arch()].clone();
        let comment = match &child.binary.version {
            Some(v) => format!("{v} ({})", child.binary.digest),
            None => format!("mosn binary {}", child.binary.digest),
        };
        let config = Bytes::from(mutate::edit_config(
            &child.config,
            &ConfigEdit {
                diff_id: layer.diff_id.clone(),
                created: epoch.map(super::rfc3339),
                created_by: "mosnctl overlay /usr/local/bin/mosn".into(),
                comment: Some(comment),
            },
        )?);
        let base_manifest = if to_oci {
            Bytes::from(mutate::manifest_to_oci(&child.manifest)?)
        } else {
            child.manifest.clone()
        };
        let bm: Value = serde_json::from_slice(&base_manifest)?;
        let mt = super::media_type_of(&bm, None);
        let mut config_desc = super::manifest_config(&bm)?;
        config_desc.digest = super::digest_of(&config);
        config_desc.size = config.len() as u64;
        let layer_desc = Descriptor {
            media_type: mutate::layer_media_type(&mt).into(),
            digest: layer.digest.clone(),
            size: layer.blob.len() as u64,
        };
        let base_digest = super::digest_of(&child.manifest);
        let manifest = Bytes::from(mutate::edit_manifest(
            &base_manifest,
            &config_desc,
            &layer_desc,
            base_name.map(|n| (n, base_digest.as_str())),
        )?);
        out.push(output::Image {
            platform: child.platform.clone(),
            entry: child.entry.clone(),
            base_layers: super::manifest_layers(&bm)?,
            manifest_desc: Descriptor {
                media_type: mt,
                digest: super::digest_of(&manifest),
                size: manifest.len() as u64,
            },
            manifest,
            config,
            config_digest: config_desc.digest,
            layer,
        });
    }
    let index = if super::is_index(root_mt) {
        let pairs: Vec<(Value, Descriptor)> = out
            .iter()
            .map(|i| (i.entry.clone().unwrap_or_default(), i.manifest_desc.clone()))
            .collect();
        let raw = Bytes::from(mutate::rebuild_index(root_raw, &pairs, to_oci)?);
        let mt = if to_oci {
            mutate::oci_media_type(root_mt).to_string()
        } else {
            root_mt.to_string()
        };
        Some((raw, mt))
    } else {
        None
    };
    Ok(Overlaid { images: out, index })
}
