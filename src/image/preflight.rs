//! Preflight: does the binary run on the base? The architecture comes from the config; the
//! glibc version has to be read from the base's layers (the libc file name or its version
//! banner), so that check downloads layers and only runs for dynamically linked binaries.

use std::io::Read;

use anyhow::{bail, Context, Result};

use super::overlay::Binary;
use super::source::Source;
use super::Descriptor;
use crate::elf::GlibcVersion;

/// What the glibc check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlibcFinding {
    /// The binary is static: nothing to check, no layer read.
    Static,
    /// The base's glibc, and the file it was read from.
    Found(GlibcVersion, String),
    /// No libc in any layer (a distroless or musl base).
    NotFound,
}

/// Check the binary's glibc needs against the base's layers (topmost first).
pub async fn check_glibc(
    source: &Source,
    layers: &[Descriptor],
    binary: &Binary,
) -> Result<GlibcFinding> {
    if binary.info.interpreter.is_none() {
        return Ok(GlibcFinding::Static);
    }
    for l in layers.iter().rev() {
        let blob = source.blob(&l.digest).await?;
        let found = tokio::task::spawn_blocking(move || find_glibc(&blob)).await??;
        if let Some((v, path)) = found {
            let info = &binary.info;
            if let Some(interp) = info.interpreter.as_deref().filter(|i| i.contains("musl")) {
                bail!(
                    "{} needs the musl loader {interp}, but the base image has glibc {v} ({path})\n\n\
                     help: link it statically (`mosnctl build` does)",
                    binary.path.display()
                );
            }
            if let Some(need) = info.max_glibc.filter(|need| *need > v) {
                bail!(
                    "{} needs glibc {need}, but the base image has glibc {v} ({path})\n\n\
                     help: build it statically (`mosnctl build` does), or pick a base with glibc {need} \
                     or newer; --skip-glibc-check skips this check",
                    binary.path.display()
                );
            }
            return Ok(GlibcFinding::Found(v, path));
        }
    }
    Ok(GlibcFinding::NotFound)
}

/// Find the glibc version in one layer (gzip or plain tar): `libc-2.27.so` names it up to
/// glibc 2.33; from 2.34 `libc.so.6` is the file itself and holds a version banner.
pub fn find_glibc(layer: &[u8]) -> Result<Option<(GlibcVersion, String)>> {
    let reader: Box<dyn Read + '_> = if layer.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(layer))
    } else {
        Box::new(layer)
    };
    let mut ar = tar::Archive::new(reader);
    for entry in ar.entries().context("a base layer is not a tar")? {
        let mut entry = entry.context("a base layer is not a readable tar")?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let name = path.rsplit('/').next().unwrap_or_default().to_string();
        if !path.contains("lib") {
            continue;
        }
        if let Some(v) = name
            .strip_prefix("libc-")
            .and_then(|r| r.strip_suffix(".so"))
        {
            if let Ok(v) = v.parse::<GlibcVersion>() {
                return Ok(Some((v, path)));
            }
        }
        if name == "libc.so.6" && entry.header().entry_type().is_file() {
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            if let Some(v) = banner_version(&data) {
                return Ok(Some((v, path)));
            }
        }
    }
    Ok(None)
}

/// `GNU C Library (...) stable release version 2.35.` → 2.35.
fn banner_version(data: &[u8]) -> Option<GlibcVersion> {
    let needle = b"release version ";
    let pos = data.windows(needle.len()).position(|w| w == needle)?;
    let rest = &data[pos + needle.len()..];
    let end = rest
        .iter()
        .position(|b| !(b.is_ascii_digit() || *b == b'.'))?;
    std::str::from_utf8(&rest[..end])
        .ok()?
        .trim_end_matches('.')
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(path: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, path, data).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn finds_old_and_new_glibc() {
        let old = tar_with("lib/x86_64-linux-gnu/libc-2.27.so", b"x");
        assert_eq!(find_glibc(&old).unwrap().unwrap().0, GlibcVersion(2, 27));
        let new = tar_with(
            "usr/lib/x86_64-linux-gnu/libc.so.6",
            b"\0GNU C Library (Ubuntu GLIBC 2.35-0ubuntu3) stable release version 2.35.\n",
        );
        assert_eq!(find_glibc(&new).unwrap().unwrap().0, GlibcVersion(2, 35));
        assert_eq!(find_glibc(&tar_with("bin/sh", b"x")).unwrap(), None);
    }
}
