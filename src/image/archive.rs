//! docker-archive files: the tar `docker save` writes and `docker load` reads.
//!
//! Reading accepts both the legacy shape (`manifest.json` + layer tars) and the "dual" shape
//! Docker 25 writes (an OCI layout plus `manifest.json`). Writing always produces the dual
//! shape with OCI media types: `docker load` (20.10 and later) uses `manifest.json`, while
//! skopeo and umoci can read the OCI part; compressed layers are stored once.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use serde_json::{json, Value};

use super::source::{BlobLoc, LocalStore, VerifyingReader};
use super::{
    Descriptor, DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_LAYER_TAR, DOCKER_MANIFEST, OCI_INDEX,
};

/// Extract `file` and open it as a base image.
pub fn open(file: &Path) -> Result<LocalStore> {
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix("mosnctl-archive-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    // `unpack` refuses entries that would land outside the directory.
    tar::Archive::new(std::io::BufReader::new(f))
        .unpack(tmp.path())
        .with_context(|| format!("{} is not a readable tar archive", file.display()))?;
    let root = tmp.path();
    links_stay_inside(root, root)
        .with_context(|| format!("{} cannot be used as a base", file.display()))?;
    if root.join("oci-layout").is_file() && root.join("index.json").is_file() {
        let mut store = super::layout::open(root, None)
            .with_context(|| format!("cannot read the OCI part of {}", file.display()))?;
        store._tmp = Some(tmp);
        return Ok(store);
    }
    let manifest_path = root.join("manifest.json");
    let entries: Vec<Value> =
        serde_json::from_slice(&std::fs::read(&manifest_path).with_context(|| {
            format!(
                "{} has no manifest.json: not a docker-archive",
                file.display()
            )
        })?)
        .with_context(|| format!("the manifest.json in {} is not JSON", file.display()))?;
    let entry = match entries.as_slice() {
        [one] => one,
        [] => bail!("{} holds no image", file.display()),
        _ => bail!(
            "{} holds {} images; save only the base image into it",
            file.display(),
            entries.len()
        ),
    };
    let rel = |v: &Value| -> Result<std::path::PathBuf> {
        let s = v
            .as_str()
            .context("manifest.json names a file with a non-string")?;
        if s.split('/').any(|c| c == "..") || s.starts_with('/') {
            bail!("manifest.json names a path outside the archive: {s}");
        }
        Ok(root.join(s))
    };
    let mut extra = std::collections::HashMap::new();
    let config_path = rel(entry.get("Config").context("manifest.json has no Config")?)?;
    let config = std::fs::read(&config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let config_desc = Descriptor {
        media_type: DOCKER_CONFIG.into(),
        digest: super::digest_of(&config),
        size: config.len() as u64,
    };
    extra.insert(
        config_desc.digest.clone(),
        BlobLoc::Mem(Bytes::from(config)),
    );
    let mut layers = Vec::new();
    for l in entry
        .get("Layers")
        .and_then(Value::as_array)
        .context("manifest.json has no Layers")?
    {
        let p = rel(l)?;
        let (digest, size, gzip) = hash_file(&p)?;
        layers.push(Descriptor {
            media_type: if gzip {
                DOCKER_LAYER_GZIP
            } else {
                DOCKER_LAYER_TAR
            }
            .into(),
            digest: digest.clone(),
            size,
        });
        extra.insert(digest, BlobLoc::File(p));
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": config_desc.to_json(),
        "layers": layers.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
    });
    let raw = Bytes::from(serde_json::to_vec(&manifest)?);
    extra.insert(super::digest_of(&raw), BlobLoc::Mem(raw.clone()));
    Ok(LocalStore {
        dir: None,
        extra,
        root: (raw, DOCKER_MANIFEST.into()),
        _tmp: Some(tmp),
    })
}

/// Refuse symlinks that lead out of the extracted archive. `docker save` links repeated
/// layers to each other (`../<id>/layer.tar`), which is fine; a link to, say,
/// `~/.docker/config.json` would be read and pushed as a "layer".
fn links_stay_inside(root: &Path, dir: &Path) -> Result<()> {
    let real_root = root.canonicalize()?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            let inside = path
                .canonicalize()
                .map(|t| t.starts_with(&real_root))
                .unwrap_or(true); // a dangling link reads nothing
            if !inside {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                bail!(
                    "its entry {} is a symlink to {}, outside the archive\n\n\
                     help: save the base again with `docker save`, or use a registry reference",
                    rel.display(),
                    std::fs::read_link(&path)?.display()
                );
            }
        } else if meta.is_dir() {
            links_stay_inside(root, &path)?;
        }
    }
    Ok(())
}

/// sha256, size and "is it gzip" of a file, streamed.
fn hash_file(p: &Path) -> Result<(String, u64, bool)> {
    use sha2::Digest as _;
    let mut f = std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let (mut size, mut magic) = (0u64, [0u8; 2]);
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if size == 0 && n >= 2 {
            magic = [buf[0], buf[1]];
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((
        format!("sha256:{}", crate::fsutil::hex(&h.finalize())),
        size,
        magic == [0x1f, 0x8b],
    ))
}

/// One image to write into an archive.
pub struct ArchiveImage {
    /// OCI-typed manifest bytes.
    pub manifest: Bytes,
    /// Config digest.
    pub config: String,
    /// Layer digests, base first.
    pub layers: Vec<String>,
    /// `RepoTags` entry (`repo:tag`, docker's short form).
    pub repo_tag: String,
    /// Fully qualified name for containerd (`docker.io/library/x:tag`).
    pub full_name: String,
    /// Tag, for `org.opencontainers.image.ref.name`.
    pub tag: String,
}

/// Write a dual-shape docker-archive atomically. `blobs` must hold every blob the manifest
/// names (manifest, config, layers).
pub fn write(path: &Path, image: &ArchiveImage, blobs: &[(String, BlobLoc)]) -> Result<()> {
    let hex = |d: &str| super::digest_hex(d).map(str::to_string);
    let manifest_json = json!([{
        "Config": format!("blobs/sha256/{}", hex(&image.config)?),
        "RepoTags": [image.repo_tag],
        "Layers": image.layers.iter().map(|d| Ok(format!("blobs/sha256/{}", hex(d)?))).collect::<Result<Vec<_>>>()?,
    }]);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": super::OCI_MANIFEST,
            "digest": super::digest_of(&image.manifest),
            "size": image.manifest.len(),
            "annotations": {
                "io.containerd.image.name": image.full_name,
                super::layout::REF_NAME: image.tag,
            }
        }]
    });
    crate::fsutil::write_atomic_with(path, |f| {
        let mut tar = tar::Builder::new(std::io::BufWriter::new(f));
        let mut add = |name: &str, size: u64, reader: &mut dyn Read, dir: bool| -> Result<()> {
            let mut h = tar::Header::new_ustar();
            h.set_path(name)?;
            h.set_entry_type(if dir {
                tar::EntryType::Directory
            } else {
                tar::EntryType::Regular
            });
            h.set_mode(if dir { 0o755 } else { 0o644 });
            h.set_size(size);
            h.set_mtime(0);
            h.set_cksum();
            tar.append(&h, reader)?;
            Ok(())
        };
        for (name, bytes) in [
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
            ("index.json", serde_json::to_vec(&index)?),
            ("manifest.json", serde_json::to_vec(&manifest_json)?),
        ] {
            add(name, bytes.len() as u64, &mut &bytes[..], false)?;
        }
        add("blobs/", 0, &mut std::io::empty(), true)?;
        add("blobs/sha256/", 0, &mut std::io::empty(), true)?;
        let mut seen = std::collections::HashSet::new();
        for (digest, loc) in blobs {
            if !seen.insert(digest.clone()) {
                continue;
            }
            let name = format!("blobs/sha256/{}", hex(digest)?);
            match loc {
                BlobLoc::Mem(b) => add(&name, b.len() as u64, &mut &b[..], false)?,
                BlobLoc::File(p) => {
                    // Checked as it is copied: a corrupt base blob must not be published.
                    let mut file = VerifyingReader::open(p)?;
                    let len = file.size()?;
                    add(&name, len, &mut file, false)?;
                    file.check(digest)?;
                }
            }
        }
        tar.into_inner()?.into_inner().map_err(|e| e.into_error())?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A legacy docker-archive whose layer entry is `layer`, added by `add_layer`.
    fn archive(dir: &Path, add_layer: impl FnOnce(&mut tar::Builder<std::fs::File>)) -> PathBuf {
        let path = dir.join("base.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        let manifest = br#"[{"Config":"config.json","RepoTags":["x:y"],"Layers":["l/layer.tar"]}]"#;
        for (name, data) in [
            ("manifest.json", &manifest[..]),
            (
                "config.json",
                &br#"{"architecture":"amd64","os":"linux"}"#[..],
            ),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        }
        add_layer(&mut b);
        b.finish().unwrap();
        path
    }

    fn link(b: &mut tar::Builder<std::fs::File>, name: &str, target: &str) {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, name, target).unwrap();
    }

    #[test]
    fn corrupt_base_blob_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let layer = super::super::digest_of(b"the real layer");
        let file = dir.path().join("layer");
        std::fs::write(&file, b"something else").unwrap();
        let image = ArchiveImage {
            manifest: Bytes::from_static(b"{}"),
            config: super::super::digest_of(b"{}"),
            layers: vec![layer.clone()],
            repo_tag: "x/y:z".into(),
            full_name: "docker.io/x/y:z".into(),
            tag: "z".into(),
        };
        let out = dir.path().join("out.tar");
        let err = write(&out, &image, &[(layer, BlobLoc::File(file))]).unwrap_err();
        assert!(format!("{err:#}").contains("is corrupt"), "{err:#}");
        assert!(!out.exists());
    }

    #[test]
    fn symlinks_out_of_the_archive_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "hunter2").unwrap();
        let bad = archive(dir.path(), |b| {
            link(b, "l/layer.tar", secret.to_str().unwrap())
        });
        let err = format!("{:#}", open(&bad).unwrap_err());
        assert!(err.contains("l/layer.tar is a symlink to"), "{err}");
        assert!(err.contains("outside the archive"), "{err}");

        // docker save's own links between layers stay usable.
        let sub = tempfile::tempdir().unwrap();
        let ok = archive(sub.path(), |b| {
            let data = b"layer bytes";
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, "m/layer.tar", &data[..]).unwrap();
            link(b, "l/layer.tar", "../m/layer.tar");
        });
        let store = open(&ok).unwrap();
        assert!(super::super::is_docker(&store.root.1));
    }
}
