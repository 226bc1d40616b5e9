//! OCI image layouts (`oci:DIR[:TAG]`): `oci-layout`, `index.json` and `blobs/sha256/<hex>`.
//! Reading picks the entry whose `org.opencontainers.image.ref.name` is the tag; writing adds
//! blobs atomically and replaces the entry of the same name in `index.json`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use serde_json::{json, Value};

use super::source::{BlobLoc, LocalStore, Source, VerifyingReader};
use super::{Descriptor, OCI_INDEX};

/// The annotation that names an image in a layout.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Open `dir` as a base, selecting `tag` (or the only entry when no tag is given).
pub fn open(dir: &Path, tag: Option<&str>) -> Result<LocalStore> {
    if !dir.join("oci-layout").is_file() {
        bail!(
            "{} is not an OCI image layout (it has no oci-layout file)",
            dir.display()
        );
    }
    let index_path = dir.join("index.json");
    let index: Value = serde_json::from_slice(
        &std::fs::read(&index_path)
            .with_context(|| format!("cannot read {}", index_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", index_path.display()))?;
    let entries = index
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let name_of = |e: &Value| {
        e.get("annotations")
            .and_then(|a| a.get(REF_NAME))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let chosen = match tag {
        Some(t) => entries.iter().find(|e| name_of(e).as_deref() == Some(t)),
        None if entries.len() == 1 => entries.first(),
        None => None,
    };
    let Some(entry) = chosen else {
        let names: Vec<String> = entries.iter().filter_map(name_of).collect();
        bail!(
            "{} has no image {}; it holds: {}\n\n\
             help: name one as oci:{}:TAG",
            dir.display(),
            tag.map(|t| format!("tagged `{t}`"))
                .unwrap_or_else(|| "selected (more than one and no tag given)".into()),
            if names.is_empty() {
                "no named images".into()
            } else {
                names.join(", ")
            },
            dir.display()
        );
    };
    let desc = Descriptor::from_json(entry)?;
    let mut store = LocalStore {
        dir: Some(dir.to_path_buf()),
        extra: Default::default(),
        root: (Bytes::new(), desc.media_type.clone()),
        _tmp: None,
    };
    let raw = match store.locate(&desc.digest)? {
        BlobLoc::File(p) => {
            std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?
        }
        BlobLoc::Mem(b) => b.to_vec(),
    };
    if super::digest_of(&raw) != desc.digest {
        bail!("{}: the manifest {} is corrupt", dir.display(), desc.digest);
    }
    let mt = if desc.media_type.is_empty() {
        super::media_type_of(&serde_json::from_slice(&raw)?, None)
    } else {
        desc.media_type
    };
    store.root = (Bytes::from(raw), mt);
    Ok(store)
}

/// Writes blobs and names into an OCI layout directory.
pub struct LayoutWriter {
    dir: PathBuf,
}

impl LayoutWriter {
    /// Create (or reuse) a layout at `dir`.
    pub fn open(dir: &Path) -> Result<LayoutWriter> {
        std::fs::create_dir_all(dir.join("blobs/sha256"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            crate::fsutil::write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        Ok(LayoutWriter {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self
            .dir
            .join("blobs/sha256")
            .join(super::digest_hex(digest)?))
    }

    /// Store bytes under their digest (skipped when present: blobs are immutable).
    pub fn put(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        let p = self.path(digest)?;
        if !p.exists() {
            crate::fsutil::write_atomic(&p, bytes)?;
        }
        Ok(())
    }

    /// Copy a blob from a base image, streaming files and fetching remote blobs.
    pub async fn copy_from(&self, source: &Source, digest: &str) -> Result<()> {
        let p = self.path(digest)?;
        if p.exists() {
            return Ok(());
        }
        if let Source::Local(store) = source {
            if let BlobLoc::File(src) = store.locate(digest)? {
                // Streamed, and checked on the way: a corrupt blob must not be published under
                // its digest (on error the temporary file is dropped, nothing is renamed).
                return crate::fsutil::write_atomic_with(&p, |f| {
                    let mut src = VerifyingReader::open(&src)?;
                    std::io::copy(&mut src, f)?;
                    src.check(digest)
                });
            }
        }
        let bytes = source.blob(digest).await?;
        self.put(digest, &bytes)
    }

    /// Point `name` at `desc` in `index.json`, replacing an older entry of that name.
    pub fn set_ref(&self, desc: &Descriptor, platform: Option<&Value>, name: &str) -> Result<()> {
        let index_path = self.dir.join("index.json");
        let mut index: Value = match std::fs::read(&index_path) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{} is not JSON", index_path.display()))?,
            Err(_) => json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}),
        };
        let manifests = index
            .get_mut("manifests")
            .and_then(Value::as_array_mut)
            .with_context(|| format!("{} has no manifests list", index_path.display()))?;
        manifests.retain(|e| {
            e.get("annotations")
                .and_then(|a| a.get(REF_NAME))
                .and_then(Value::as_str)
                != Some(name)
        });
        let mut entry = desc.to_json();
        if let Some(p) = platform {
            entry["platform"] = p.clone();
        }
        entry["annotations"] = json!({ REF_NAME: name });
        manifests.push(entry);
        crate::fsutil::write_atomic(&index_path, &serde_json::to_vec(&index)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn corrupt_base_blob_is_not_copied() {
        let base = tempfile::tempdir().unwrap();
        let digest = super::super::digest_of(b"the real layer");
        let hex = super::super::digest_hex(&digest).unwrap();
        std::fs::create_dir_all(base.path().join("blobs/sha256")).unwrap();
        std::fs::write(
            base.path().join("blobs/sha256").join(hex),
            b"something else",
        )
        .unwrap();
        let source = Source::Local(Arc::new(LocalStore {
            dir: Some(base.path().to_path_buf()),
            extra: Default::default(),
            root: (Bytes::new(), String::new()),
            _tmp: None,
        }));
        let out = tempfile::tempdir().unwrap();
        let w = LayoutWriter::open(out.path()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = rt.block_on(w.copy_from(&source, &digest)).unwrap_err();
        assert!(format!("{err:#}").contains("is corrupt"), "{err:#}");
        let left: Vec<_> = std::fs::read_dir(out.path().join("blobs/sha256"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
