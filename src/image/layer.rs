//! The one new layer: a deterministic tar holding `usr/local/bin/mosn`, gzip-compressed in
//! parallel, with the diff_id (over the tar) and the blob digest (over the gzip stream).

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use flate2::{Compress, Compression, FlushCompress, Status};
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
    /// gzip level 0-9; with the flate2 backend and [`CHUNK`], it decides the blob bytes.
    pub level: u32,
}

/// Deflate input is cut into chunks of this size, compressed in parallel and joined (the
/// pigz technique). Part of the reproducibility contract: changing it changes the bytes.
pub const CHUNK: usize = 1 << 20;

/// Build the layer for `binary` at [`MOSN_PATH`] (mode 0755, uid/gid 0).
///
/// No parent-directory entries are written: they would replace the base's `/usr/local/bin`
/// metadata when the layers are stacked. The file is read once into the tar bytes; the
/// diff_id (sha256) and gzip CRC are computed on one thread while the chunks are deflated on
/// the others, then the blob digest is taken over the assembled gzip stream.
pub fn build(binary: &Path, opts: LayerOptions, progress: &ProgressBar) -> Result<Layer> {
    let tar = tar_bytes(binary, opts.mtime)?;
    progress.set_length(tar.len() as u64);
    let level = opts.level.min(9);
    let ((diff_id, crc), body) = std::thread::scope(|s| {
        let hashes = s.spawn(|| {
            let diff_id = format!("sha256:{}", crate::fsutil::hex(&Sha256::digest(&tar)));
            (diff_id, crc32fast::hash(&tar))
        });
        let body = deflate_parallel(&tar, level, progress);
        (hashes.join().expect("hash thread panicked"), body)
    });
    let mut blob = Vec::with_capacity(body.len() + 18);
    // Magic, deflate, no flags, mtime 0, no extra flags, OS "unknown": nothing
    // machine-specific in the header.
    blob.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    blob.extend_from_slice(&body);
    blob.extend_from_slice(&crc.to_le_bytes());
    blob.extend_from_slice(&(tar.len() as u32).to_le_bytes());
    let digest = format!("sha256:{}", crate::fsutil::hex(&Sha256::digest(&blob)));
    Ok(Layer {
        blob: bytes::Bytes::from(blob),
        digest,
        diff_id,
    })
}

/// The uncompressed layer: one ustar entry, padding, and the two-block trailer.
fn tar_bytes(binary: &Path, mtime: u64) -> Result<Vec<u8>> {
    let mut file =
        std::fs::File::open(binary).with_context(|| format!("cannot open {}", binary.display()))?;
    let size = file
        .metadata()
        .with_context(|| format!("cannot stat {}", binary.display()))?
        .len();
    let mut header = tar::Header::new_ustar();
    header
        .set_path(MOSN_PATH)
        .expect("static path fits a ustar header");
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    header.set_username("root").expect("short name");
    header.set_groupname("root").expect("short name");
    header.set_cksum();
    let pad = (512 - (size % 512) as usize) % 512;
    let mut tar = Vec::with_capacity(512 + size as usize + pad + 1024);
    tar.extend_from_slice(header.as_bytes());
    let read = file
        .read_to_end(&mut tar)
        .with_context(|| format!("cannot read {}", binary.display()))?;
    anyhow::ensure!(
        read as u64 == size,
        "{} changed size while it was being read",
        binary.display()
    );
    tar.resize(tar.len() + pad + 1024, 0);
    Ok(tar)
}

/// Raw deflate of `data` in [`CHUNK`]s on all cores; every chunk but the last ends with a
/// sync flush (byte-aligned, no final bit), so the parts join into one deflate stream.
fn deflate_parallel(data: &[u8], level: u32, progress: &ProgressBar) -> Vec<u8> {
    let chunks: Vec<&[u8]> = data.chunks(CHUNK).collect();
    let last = chunks.len().saturating_sub(1);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, chunks.len().max(1));
    let next = AtomicUsize::new(0);
    let mut parts: Vec<Vec<u8>> = vec![Vec::new(); chunks.len()];
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(chunk) = chunks.get(i) else {
                            return done;
                        };
                        done.push((i, deflate(chunk, level, i == last)));
                        progress.inc(chunk.len() as u64);
                    }
                })
            })
            .collect();
        for h in handles {
            for (i, part) in h.join().expect("deflate worker panicked") {
                parts[i] = part;
            }
        }
    });
    parts.concat()
}

fn deflate(input: &[u8], level: u32, last: bool) -> Vec<u8> {
    let mut c = Compress::new(Compression::new(level), false);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(input.len() / 2 + 1024);
    loop {
        if out.capacity() - out.len() < 4096 {
            out.reserve(out.capacity().max(64 * 1024));
        }
        let consumed = c.total_in() as usize;
        let status = c
            .compress_vec(&input[consumed..], &mut out, flush)
            .expect("deflate of in-memory data cannot fail");
        let finished = match flush {
            FlushCompress::Finish => status == Status::StreamEnd,
            // Flushed once all input is in and the output buffer was not the limit.
            _ => c.total_in() as usize == input.len() && out.len() < out.capacity(),
        };
        if finished {
            return out;
        }
    }
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
