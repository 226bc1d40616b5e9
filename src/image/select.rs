//! Which base manifests `overlay` edits, and with which binary: an index's platforms that a
//! binary matches and `--platform` selects (attestations dropped), or a single manifest whose
//! architecture must match. Errors name what the base has and what the binaries are for.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use serde_json::Value;

use super::binary::Binary;
use super::mutate;
use super::output::Child;
use super::source::Source;
use super::{Descriptor, Platform};

/// Pick the base manifests to overlay: for an index, the platforms that match a binary (and
/// `platforms`, the `--platform` flags), without attestations; for a single manifest, check
/// its architecture.
pub(super) async fn select_children<'a>(
    source: &Source,
    root_raw: &Bytes,
    root_mt: &str,
    platforms: &[Platform],
    binaries: &'a [Binary],
) -> Result<Vec<Child<'a>>> {
    let binary_for = |p: &Platform| {
        binaries
            .iter()
            .find(|b| p.os == "linux" && b.info.oci_arch() == p.arch)
    };
    let wanted = |p: &Platform| platforms.is_empty() || platforms.iter().any(|w| w.selects(p));
    let arches: Vec<&str> = binaries.iter().map(|b| b.info.oci_arch()).collect();
    if !super::is_index(root_mt) {
        let manifest: Value =
            serde_json::from_slice(root_raw).context("the base manifest is not JSON")?;
        let config_desc = super::manifest_config(&manifest)?;
        let config = source.blob(&config_desc.digest).await?;
        let cfg: Value = serde_json::from_slice(&config).context("the base config is not JSON")?;
        let platform =
            Platform::from_json(&cfg).context("the base config names no os/architecture")?;
        if !wanted(&platform) {
            bail!(
                "the base is a single-platform image for {platform}, not {}",
                plat_list(platforms)
            );
        }
        let binary = binary_for(&platform).with_context(|| {
            format!(
                "the base is for {platform}, but the binary is for linux/{}\n\n\
                 help: build mosn for {} or pick a base for linux/{}",
                arches.join(", linux/"),
                platform.arch,
                arches.join(", linux/")
            )
        })?;
        return Ok(vec![Child {
            entry: None,
            platform,
            manifest: root_raw.clone(),
            config,
            binary,
        }]);
    }
    let index: Value = serde_json::from_slice(root_raw).context("the base index is not JSON")?;
    let entries = index
        .get("manifests")
        .and_then(Value::as_array)
        .context("the base index has no manifests")?;
    let mut available = Vec::new();
    let mut children = Vec::new();
    let mut dropped = 0;
    for entry in entries {
        if mutate::is_attestation(entry) {
            dropped += 1;
            continue;
        }
        let Some(platform) = entry.get("platform").and_then(Platform::from_json) else {
            continue;
        };
        available.push(platform.to_string());
        if !wanted(&platform) {
            continue;
        }
        let Some(binary) = binary_for(&platform) else {
            // Keeping it would publish a platform without mosn; say so loudly.
            tracing::warn!(
                "leaving {platform} out of the result: no binary for it (give one with another --binary)"
            );
            continue;
        };
        let desc = Descriptor::from_json(entry)?;
        let manifest = source.manifest(&desc.digest).await?;
        let m: Value = serde_json::from_slice(&manifest).context("a base manifest is not JSON")?;
        let config = source.blob(&super::manifest_config(&m)?.digest).await?;
        children.push(Child {
            entry: Some(entry.clone()),
            platform,
            manifest,
            config,
            binary,
        });
    }
    if dropped > 0 {
        tracing::info!(
            "dropping {dropped} attestation manifest(s): they vouch for the base's digests"
        );
    }
    for w in platforms {
        if !children.iter().any(|c| w.selects(&c.platform)) {
            bail!(
                "the base has no platform {w} that a binary matches; the base has: {}; \
                 the binaries are for: linux/{}\n\n\
                 help: pick one of the base's platforms with --platform, and give a --binary \
                 built for each",
                available.join(", "),
                arches.join(", linux/")
            );
        }
    }
    if children.is_empty() {
        bail!(
            "no platform in the base matches the binary (linux/{}); the base has: {}\n\n\
             help: give a --binary built for one of the base's platforms",
            arches.join(", linux/"),
            if available.is_empty() {
                "none".into()
            } else {
                available.join(", ")
            }
        );
    }
    Ok(children)
}

fn plat_list(p: &[Platform]) -> String {
    p.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
