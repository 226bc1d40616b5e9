//! Writing an overlaid image: registry push, OCI layout, docker-archive.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use serde_json::Value;

use super::layer::Layer;
use super::overlay::Binary;
use super::reference::Reference;
use super::registry::{MountOutcome, Registry};
use super::source::{BlobLoc, Source};
use super::{Descriptor, Platform};

/// A base manifest selected for overlaying.
pub struct Child<'a> {
    /// Its entry in the base index (`None` for a single-manifest base).
    pub entry: Option<Value>,
    /// Its platform.
    pub platform: Platform,
    /// Raw base manifest.
    pub manifest: Bytes,
    /// Raw base config.
    pub config: Bytes,
    /// The binary for its architecture.
    pub binary: &'a Binary,
}

/// One overlaid image (one platform).
pub struct Image {
    /// Platform.
    pub platform: Platform,
    /// The base index entry it replaces.
    pub entry: Option<Value>,
    /// Base layers, unchanged.
    pub base_layers: Vec<Descriptor>,
    /// New manifest bytes.
    pub manifest: Bytes,
    /// Its descriptor.
    pub manifest_desc: Descriptor,
    /// New config bytes.
    pub config: Bytes,
    /// `sha256:` of `config`.
    pub config_digest: String,
    /// The added layer.
    pub layer: Arc<Layer>,
}

/// The whole result: images plus the rebuilt index (when the base was an index).
pub struct Overlaid {
    /// Per-platform images.
    pub images: Vec<Image>,
    /// Raw index and its media type.
    pub index: Option<(Bytes, String)>,
}

impl Overlaid {
    /// Platforms, for the final report.
    pub fn platforms(&self) -> Vec<String> {
        self.images.iter().map(|i| i.platform.to_string()).collect()
    }
}

/// Get one base layer into the destination repository: skip if present, mount when the base
/// is on the same registry, else copy the compressed bytes unchanged.
async fn ensure_base_layer(
    dest: Arc<Registry>,
    repo: String,
    source: Arc<Source>,
    d: Descriptor,
    pb: indicatif::ProgressBar,
) -> Result<()> {
    if dest.blob_exists(&repo, &d.digest).await? {
        pb.inc(d.size);
        return Ok(());
    }
    let mut session = None;
    if let Some((reg, from)) = source.registry_repo() {
        if reg == dest.name {
            match dest.mount(&repo, &d.digest, from).await? {
                MountOutcome::Mounted => {
                    pb.inc(d.size);
                    return Ok(());
                }
                MountOutcome::Session(url) => session = Some(url),
                // distribution answers 401 when the token lacks pull on `from`: upload instead.
                MountOutcome::Refused(s) => {
                    tracing::debug!("mount of {} refused ({s}); uploading", d.digest)
                }
            }
        }
    }
    let data = source.blob(&d.digest).await?;
    dest.upload(&repo, &d.digest, data, session, Some(&pb))
        .await
}

/// Push everything; returns the digest of what the tag points at.
pub async fn push(
    dest: &Arc<Registry>,
    tag: &Reference,
    source: &Source,
    built: &Overlaid,
    progress: &indicatif::MultiProgress,
) -> Result<String> {
    let repo = tag.repository.clone();
    // Sources are cheap handles; the copy tasks share one.
    let source = Arc::new(source.clone());
    let mut sizes = std::collections::HashMap::new();
    for i in &built.images {
        for l in &i.base_layers {
            sizes.insert(l.digest.as_str(), l.size);
        }
        sizes.insert(i.layer.digest.as_str(), i.layer.blob.len() as u64);
        sizes.insert(i.config_digest.as_str(), i.config.len() as u64);
    }
    let total: u64 = sizes.values().sum();
    let pb = progress.add(super::overlay::bar("upload"));
    pb.set_length(total);

    // Base layers, four at a time (as crane does).
    let mut set = tokio::task::JoinSet::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(4));
    let mut queued = std::collections::HashSet::new();
    for img in &built.images {
        for l in &img.base_layers {
            if !queued.insert(l.digest.clone()) {
                continue;
            }
            let (dest, repo, source, l, sem, pb) = (
                dest.clone(),
                repo.clone(),
                source.clone(),
                l.clone(),
                sem.clone(),
                pb.clone(),
            );
            set.spawn(async move {
                let _permit = sem.acquire_owned().await?;
                ensure_base_layer(dest, repo, source, l, pb).await
            });
        }
    }
    while let Some(r) = set.join_next().await {
        r.context("an upload task panicked")??;
    }
    // The new layer (once per architecture) and each config: skipped when present.
    let mut blobs: Vec<(&str, &Bytes)> = Vec::new();
    for img in &built.images {
        for (d, b) in [
            (img.layer.digest.as_str(), &img.layer.blob),
            (img.config_digest.as_str(), &img.config),
        ] {
            if !blobs.iter().any(|(x, _)| *x == d) {
                blobs.push((d, b));
            }
        }
    }
    for (digest, data) in blobs {
        if dest.blob_exists(&repo, digest).await? {
            pb.inc(data.len() as u64);
        } else {
            dest.upload(&repo, digest, data.clone(), None, Some(&pb))
                .await?;
        }
    }
    pb.finish_and_clear();
    let top = match &built.index {
        None => {
            let img = &built.images[0];
            dest.put_manifest(
                &repo,
                tag.manifest_ref(),
                img.manifest.clone(),
                &img.manifest_desc.media_type,
            )
            .await?
        }
        Some((raw, mt)) => {
            // Children by digest first, the index (under the tag) last.
            for img in &built.images {
                dest.put_manifest(
                    &repo,
                    &img.manifest_desc.digest,
                    img.manifest.clone(),
                    &img.manifest_desc.media_type,
                )
                .await?;
            }
            dest.put_manifest(&repo, tag.manifest_ref(), raw.clone(), mt)
                .await?
        }
    };
    Ok(top)
}

/// Write an OCI layout entry named `name`; returns the digest `index.json` points at.
pub async fn write_oci(
    dir: &Path,
    name: &str,
    source: &Source,
    built: &Overlaid,
) -> Result<String> {
    let w = super::layout::LayoutWriter::open(dir)?;
    for img in &built.images {
        for l in &img.base_layers {
            w.copy_from(source, &l.digest).await?;
        }
        w.put(&img.layer.digest, &img.layer.blob)?;
        w.put(&img.config_digest, &img.config)?;
        w.put(&img.manifest_desc.digest, &img.manifest)?;
    }
    match &built.index {
        None => {
            let img = &built.images[0];
            let platform =
                serde_json::json!({"architecture": img.platform.arch, "os": img.platform.os});
            w.set_ref(&img.manifest_desc, Some(&platform), name)?;
            Ok(img.manifest_desc.digest.clone())
        }
        Some((raw, mt)) => {
            let d = super::digest_of(raw);
            w.put(&d, raw)?;
            w.set_ref(
                &Descriptor {
                    media_type: mt.clone(),
                    digest: d.clone(),
                    size: raw.len() as u64,
                },
                None,
                name,
            )?;
            Ok(d)
        }
    }
}

/// Write a docker-archive for `docker load` (one platform); returns the manifest digest.
pub async fn write_archive(
    file: &Path,
    tag: &Reference,
    source: &Source,
    built: &Overlaid,
) -> Result<String> {
    let img = match built.images.as_slice() {
        [one] => one,
        many => bail!(
            "a docker-archive holds one platform, but {} were overlaid ({})\n\n\
             help: pass --platform to pick one",
            many.len(),
            built.platforms().join(", ")
        ),
    };
    let mut blobs: Vec<(String, BlobLoc)> = Vec::new();
    blobs.push((
        img.manifest_desc.digest.clone(),
        BlobLoc::Mem(img.manifest.clone()),
    ));
    blobs.push((img.config_digest.clone(), BlobLoc::Mem(img.config.clone())));
    for l in &img.base_layers {
        let loc = match source {
            Source::Local(store) => store.locate(&l.digest)?,
            Source::Registry { .. } => BlobLoc::Mem(source.blob(&l.digest).await?),
        };
        blobs.push((l.digest.clone(), loc));
    }
    blobs.push((
        img.layer.digest.clone(),
        BlobLoc::Mem(img.layer.blob.clone()),
    ));
    let mut layers: Vec<String> = img.base_layers.iter().map(|l| l.digest.clone()).collect();
    layers.push(img.layer.digest.clone());
    let image = super::archive::ArchiveImage {
        manifest: img.manifest.clone(),
        config: img.config_digest.clone(),
        layers,
        repo_tag: tag.familiar(),
        full_name: format!(
            "{}/{}:{}",
            tag.registry,
            tag.repository,
            tag.tag.as_deref().unwrap_or("latest")
        ),
        tag: tag.tag.clone().unwrap_or_else(|| "latest".into()),
    };
    let file2 = file.to_path_buf();
    tokio::task::spawn_blocking(move || super::archive::write(&file2, &image, &blobs)).await??;
    Ok(img.manifest_desc.digest.clone())
}
