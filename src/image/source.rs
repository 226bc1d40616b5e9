//! Reading a base image from wherever it lives: a registry, an OCI layout or a
//! docker-archive. Everything is addressed by digest, and every blob is verified.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;

use super::reference::Reference;
use super::registry::Registry;

/// Where a local blob's bytes are.
#[derive(Debug, Clone)]
pub enum BlobLoc {
    /// A file (an OCI layout blob, or a layer file of an extracted archive).
    File(PathBuf),
    /// Held in memory (a manifest synthesised from a legacy `docker save` archive).
    Mem(Bytes),
}

/// Reads a local blob file while hashing it, so a copy can be checked against the digest
/// it is published under once the last byte has gone through.
pub struct VerifyingReader {
    file: std::fs::File,
    hash: sha2::Sha256,
}

impl VerifyingReader {
    /// Open a blob file.
    pub fn open(path: &std::path::Path) -> Result<Self> {
        use sha2::Digest as _;
        Ok(Self {
            file: std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?,
            hash: sha2::Sha256::new(),
        })
    }

    /// The file's size in bytes.
    pub fn size(&self) -> Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Fail unless what was read has `digest`.
    pub fn check(self, digest: &str) -> Result<()> {
        use sha2::Digest as _;
        if format!("sha256:{}", crate::fsutil::hex(&self.hash.finalize())) != digest {
            bail!("blob {digest} of the base image is corrupt (its content has another digest)");
        }
        Ok(())
    }
}

impl std::io::Read for VerifyingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest as _;
        let n = self.file.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// A base image on the local disk.
#[derive(Debug)]
pub struct LocalStore {
    /// `blobs/sha256/<hex>` lives under this directory (when it is a layout).
    pub dir: Option<PathBuf>,
    /// Blobs found elsewhere (legacy archives) or synthesised.
    pub extra: HashMap<String, BlobLoc>,
    /// Raw root manifest or index and its media type.
    pub root: (Bytes, String),
    /// Keeps an extracted archive alive while the store is used.
    pub _tmp: Option<tempfile::TempDir>,
}

impl LocalStore {
    /// Where a blob lives, if this store has it.
    pub fn locate(&self, digest: &str) -> Result<BlobLoc> {
        if let Some(loc) = self.extra.get(digest) {
            return Ok(loc.clone());
        }
        if let Some(dir) = &self.dir {
            let p = dir.join("blobs/sha256").join(super::digest_hex(digest)?);
            if p.is_file() {
                return Ok(BlobLoc::File(p));
            }
        }
        bail!("the base image has no blob {digest}")
    }

    fn read(&self, digest: &str) -> Result<Bytes> {
        let bytes = match self.locate(digest)? {
            BlobLoc::Mem(b) => b,
            BlobLoc::File(p) => Bytes::from(
                std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?,
            ),
        };
        if super::digest_of(&bytes) != digest {
            bail!("blob {digest} of the base image is corrupt (its content has another digest)");
        }
        Ok(bytes)
    }
}

/// A base image; cloning is cheap (shared handles).
#[derive(Clone)]
pub enum Source {
    /// In a registry (only manifests and the config are fetched when pushing there).
    Registry {
        /// Connected client.
        registry: Arc<Registry>,
        /// The reference as given.
        reference: Reference,
    },
    /// An OCI layout or docker-archive.
    Local(Arc<LocalStore>),
}

impl Source {
    /// The root document (manifest or index) and its media type.
    pub async fn root(&self) -> Result<(Bytes, String)> {
        match self {
            Source::Registry {
                registry,
                reference,
            } => {
                let (raw, ct) = registry
                    .get_manifest(&reference.repository, reference.manifest_ref())
                    .await?;
                let doc: serde_json::Value = serde_json::from_slice(&raw)
                    .with_context(|| format!("the manifest of {reference} is not JSON"))?;
                let mt = super::media_type_of(&doc, ct.as_deref());
                Ok((raw, mt))
            }
            Source::Local(store) => Ok(store.root.clone()),
        }
    }

    /// A child manifest by digest.
    pub async fn manifest(&self, digest: &str) -> Result<Bytes> {
        match self {
            Source::Registry {
                registry,
                reference,
            } => Ok(registry
                .get_manifest(&reference.repository, digest)
                .await?
                .0),
            Source::Local(store) => store.read(digest),
        }
    }

    /// A whole blob, verified.
    pub async fn blob(&self, digest: &str) -> Result<Bytes> {
        match self {
            Source::Registry {
                registry,
                reference,
            } => registry.get_blob(&reference.repository, digest).await,
            Source::Local(store) => store.read(digest),
        }
    }

    /// The registry and repository, for cross-repository mounts.
    pub fn registry_repo(&self) -> Option<(&str, &str)> {
        match self {
            Source::Registry { reference, .. } => {
                Some((reference.registry.as_str(), reference.repository.as_str()))
            }
            Source::Local(_) => None,
        }
    }
}
