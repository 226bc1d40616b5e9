//! The one new layer: a deterministic tar holding `usr/local/bin/mosn`, gzip-compressed in
//! parallel, with the diff_id (over the tar) and the blob digest (over the gzip stream).

use std::path::Path;

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use crate::gzip;

/// Where the binary lands inside the image (relative, as tar entries are).
pub const MOSN_PATH: &str = crate::pack::MEMBER;

/// A finished layer, compressed bytes held in memory (a proxy binary is tens of MB).
#[derive(Debug, Clone)]
pub struct Layer {
    /// The gzip stream: the blob that is pushed or written.
    pub blob: bytes::Bytes,
    /// `sha256:` of `blob`.
    pub digest: String,
    /// `sha256:` of the uncompressed tar: what the config's `rootfs.diff_ids` lists.
    pub diff_id: String,
}

/// How the layer is built; every field is part of the reproducibility contract.
#[derive(Debug, Clone, Copy)]
pub struct LayerOptions {
    /// Entry mtime (`SOURCE_DATE_EPOCH`, or 0).
    pub mtime: u64,
    /// gzip level 0-9; with [`crate::gzip`]'s fixed chunking, it decides the blob bytes.
    pub level: u32,
}

/// Build the layer for `binary` at [`MOSN_PATH`] (mode 0755, uid/gid 0), with the same tar
/// member and the same deterministic parallel gzip as `mosnctl pack`.
///
/// No parent-directory entries are written: they would replace the base's `/usr/local/bin`
/// metadata when the layers are stacked. The diff_id (sha256 of the tar) is computed on one
/// thread while the chunks are deflated on the others.
pub fn build(binary: &Path, opts: LayerOptions, progress: &ProgressBar) -> Result<Layer> {
    let bytes =
        std::fs::read(binary).with_context(|| format!("cannot read {}", binary.display()))?;
    let tar = crate::pack::tar_single(&bytes, opts.mtime)?;
    drop(bytes);
    progress.set_length(tar.len() as u64);
    let (diff_id, blob) = std::thread::scope(|s| {
        let hash = s.spawn(|| format!("sha256:{}", crate::fsutil::hex(&Sha256::digest(&tar))));
        let blob = gzip::compress_with(&tar, opts.level, &|n| progress.inc(n as u64));
        (hash.join().expect("hash thread panicked"), blob)
    });
    let digest = format!("sha256:{}", crate::fsutil::hex(&Sha256::digest(&blob)));
    Ok(Layer {
        blob: bytes::Bytes::from(blob),
        digest,
        diff_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gzip::CHUNK;
    use std::io::Read;

    fn layer_of(content: &[u8], mtime: u64) -> Layer {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bin");
        std::fs::write(&p, content).unwrap();
        build(&p, LayerOptions { mtime, level: 1 }, &ProgressBar::hidden()).unwrap()
    }

    #[test]
    fn digests_match_contents_and_are_stable() {
        let a = layer_of(b"\x7fELF hello", 0);
        let b = layer_of(b"\x7fELF hello", 0);
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.digest, crate::image::digest_of(&a.blob));
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(&a.blob[..])
            .read_to_end(&mut tar_bytes)
            .unwrap();
        assert_eq!(a.diff_id, crate::image::digest_of(&tar_bytes));
        assert_eq!(tar_bytes.len(), 512 + 512 + 1024);
        let mut ar = tar::Archive::new(&tar_bytes[..]);
        let entries: Vec<_> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .collect::<Vec<_>>();
        assert_eq!(entries.len(), 1);
        let h = entries[0].header();
        assert_eq!(h.path().unwrap().to_str(), Some(MOSN_PATH));
        assert_eq!(h.mode().unwrap(), 0o755);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        assert_ne!(layer_of(b"\x7fELF hello", 1).diff_id, a.diff_id);
    }

    #[test]
    fn multi_chunk_layers_are_valid_gzip_for_system_gzip() {
        let data: Vec<u8> = (0..3 * CHUNK + 12345)
            .map(|i| ((i * 7919) % 251) as u8 ^ (i / 4096) as u8)
            .collect();
        let a = layer_of(&data, 7);
        assert_eq!(a.digest, layer_of(&data, 7).digest, "deterministic");
        let dir = tempfile::tempdir().unwrap();
        let gz = dir.path().join("layer.tar.gz");
        std::fs::write(&gz, &a.blob).unwrap();
        let out = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&gz)
            .output()
            .unwrap();
        assert!(out.status.success(), "gzip -t: {out:?}");
        assert_eq!(crate::image::digest_of(&out.stdout), a.diff_id);
        assert_eq!(&out.stdout[512..512 + data.len()], &data[..]);
    }
}
