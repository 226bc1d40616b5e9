//! Deterministic, parallel gzip.
//!
//! The input is cut into fixed 1 MiB chunks. Each chunk becomes raw deflate, ended by a sync
//! flush (so it stops on a byte boundary without the final-block bit), and the last one by a
//! finish. Concatenated, they form one valid deflate stream in one gzip member, the way pigz
//! does it. The chunking does not depend on the number of threads, the compressor (flate2's
//! pure-Rust miniz_oxide backend, version pinned by Cargo.lock) and level are fixed, and the
//! header carries no time, name or OS, so the same input gives the same bytes on any machine.
//! Chunks do not share a dictionary, which costs well under 1% of ratio at this chunk size.

use flate2::{Compress, Compression, FlushCompress, Status};

/// The pinned compression level (gzip's default).
pub const LEVEL: u32 = 6;
/// The fixed chunk size; changing it changes the output bytes.
pub const CHUNK: usize = 1 << 20;

/// gzip `data` at [`LEVEL`], using all cores, deterministically.
pub fn compress(data: &[u8]) -> Vec<u8> {
    compress_with(data, LEVEL, &|_| {})
}

/// gzip `data` at `level` (0-9), calling `progress` with the input bytes of each finished
/// chunk. The level is part of the reproducibility contract: it decides the bytes.
pub fn compress_with(data: &[u8], level: u32, progress: &(dyn Fn(usize) + Sync)) -> Vec<u8> {
    let level = level.min(9);
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![data]
    } else {
        data.chunks(CHUNK).collect()
    };
    let last = chunks.len() - 1;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(chunks.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    // Workers take the next chunk index until none are left; results carry their index.
    let done: Vec<(usize, Vec<u8>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= chunks.len() {
                            return mine;
                        }
                        mine.push((i, deflate_chunk(chunks[i], level, i == last)));
                        progress(chunks[i].len());
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("deflate worker panicked"))
            .collect()
    });
    let mut parts: Vec<Vec<u8>> = vec![Vec::new(); chunks.len()];
    for (i, p) in done {
        parts[i] = p;
    }
    let body: usize = parts.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(body + 18);
    // Magic, deflate, no flags, mtime 0, no extra flags, OS "unknown".
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    for p in &parts {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn deflate_chunk(input: &[u8], level: u32, last: bool) -> Vec<u8> {
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
        let done = match flush {
            FlushCompress::Finish => status == Status::StreamEnd,
            // Flushed when all input is in and the output buffer was not the limit.
            _ => c.total_in() as usize == input.len() && out.len() < out.capacity(),
        };
        if done {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn round_trips_across_chunk_boundaries() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let data: Vec<u8> = (0..len)
                .map(|i| ((i * 7919) % 251) as u8 ^ (i / 3000) as u8)
                .collect();
            let gz = compress(&data);
            assert_eq!(gunzip(&gz), data, "len {len}");
            assert_eq!(compress(&data), gz, "deterministic at len {len}");
        }
    }

    #[test]
    fn system_gzip_accepts_it() {
        let data = vec![42u8; 2 * CHUNK + 5];
        let gz = compress(&data);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gz");
        std::fs::write(&p, &gz).unwrap();
        let out = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&p)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, data);
    }
}
