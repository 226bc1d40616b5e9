//! The one new layer: a deterministic tar holding `usr/local/bin/mosn`, gzip-compressed, with
//! the diff_id (over the tar) and the blob digest (over the gzip stream) computed in one pass.

use std::io::{self, Read, Write};
use std::path::Path;

use anyhow::{Context, Result};
use flate2::{Compression, GzBuilder};
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

/// Where the binary lands inside the image (relative, as tar entries are).
pub const MOSN_PATH: &str = "usr/local/bin/mosn";

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
    /// gzip level 0-9 (flate2's pure-Rust backend; pinned, since output depends on it).
    pub level: u32,
}

/// Hash everything written through it, then pass it on.
struct HashWriter<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Build the layer for `binary` at [`MOSN_PATH`] (mode 0755, uid/gid 0).
///
/// No parent-directory entries are written: they would replace the base's `/usr/local/bin`
/// metadata when the layers are stacked.
pub fn build(binary: &Path, opts: LayerOptions, progress: &ProgressBar) -> Result<Layer> {
    let mut file =
        std::fs::File::open(binary).with_context(|| format!("cannot open {}", binary.display()))?;
    let size = file
        .metadata()
        .with_context(|| format!("cannot stat {}", binary.display()))?
        .len();
    progress.set_length(size);

    let mut header = tar::Header::new_ustar();
    header
        .set_path(MOSN_PATH)
        .expect("static path fits a ustar header");
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(opts.mtime);
    header.set_username("root").expect("short name");
    header.set_groupname("root").expect("short name");
    header.set_cksum();

    // tar -> sha256 (diff_id) -> gzip -> sha256 (digest) -> memory.
    let blob_sink = HashWriter {
        inner: Vec::with_capacity(size as usize / 2 + 4096),
        hash: Sha256::new(),
    };
    // mtime 0, no file name, so the gzip header carries nothing machine-specific.
    let gz = GzBuilder::new()
        .mtime(0)
        .write(blob_sink, Compression::new(opts.level.min(9)));
    let mut tar_sink = HashWriter {
        inner: gz,
        hash: Sha256::new(),
    };
    tar_sink.write_all(header.as_bytes())?;
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", binary.display()))?;
        if n == 0 {
            break;
        }
        tar_sink.write_all(&buf[..n])?;
        copied += n as u64;
        progress.set_position(copied);
    }
    anyhow::ensure!(
        copied == size,
        "{} changed size while it was being read",
        binary.display()
    );
    let pad = (512 - (size % 512) as usize) % 512;
    tar_sink.write_all(&vec![0u8; pad + 1024])?;
    let diff_id = format!("sha256:{}", crate::fsutil::hex(&tar_sink.hash.finalize()));
    let blob_sink = tar_sink.inner.finish().context("gzip failed")?;
    let digest = format!("sha256:{}", crate::fsutil::hex(&blob_sink.hash.finalize()));
    Ok(Layer {
        blob: bytes::Bytes::from(blob_sink.inner),
        digest,
        diff_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
