//! `mosnctl pack`: turn built binaries into the tarballs Istio's `bin/init.sh` downloads:
//! `mosn.tar.gz`, `mosn-centos.tar.gz` and `mosn-macos.tar.gz`, each holding exactly
//! `usr/local/bin/mosn`, plus `SHA256SUMS` and `release.json`.
//!
//! The bytes depend only on the binary and the mtime (`SOURCE_DATE_EPOCH`, or 0): the tar
//! header is fixed, and the gzip stream comes from [`crate::gzip`], whose compressor and
//! level are pinned.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::elf::{self, Format};
use crate::fsutil;

/// The one member every tarball holds (relative, as Istio's `tar xz` expects).
pub const MEMBER: &str = "usr/local/bin/mosn";
/// Linux tarball name (`ISTIO_ENVOY_RELEASE_URL`).
pub const LINUX: &str = "mosn.tar.gz";
/// CentOS tarball name (`ISTIO_ENVOY_CENTOS_RELEASE_URL`); same binary as [`LINUX`].
pub const CENTOS: &str = "mosn-centos.tar.gz";
/// macOS tarball name (`ISTIO_ENVOY_MACOS_RELEASE_URL`).
pub const MACOS: &str = "mosn-macos.tar.gz";
/// Checksums in the format `sha256sum -c` reads.
pub const SUMS: &str = "SHA256SUMS";
/// Machine-readable description of the release (read by `serve-artifacts`).
pub const RELEASE_JSON: &str = "release.json";

/// `mosnctl pack`: write the tarballs and checksums.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Where `mosnctl build` put its output.
    #[arg(long, value_name = "DIR", default_value = "dist")]
    pub dist: PathBuf,
    /// Proxy version to pack (default: the version in proxy/Cargo.toml).
    #[arg(long)]
    pub version: Option<String>,
    /// Which build goes into mosn.tar.gz and mosn-centos.tar.gz.
    #[arg(long, value_name = "T", default_value = "linux-amd64")]
    pub linux_target: String,
    /// Pack this Linux binary instead of the built one.
    #[arg(long, value_name = "PATH")]
    pub linux: Option<PathBuf>,
    /// Pack this macOS binary instead of the built one (macos-amd64, else macos-arm64).
    #[arg(long, value_name = "PATH", conflicts_with = "macos_from_linux")]
    pub macos: Option<PathBuf>,
    /// When there is no macOS build, put the Linux binary in mosn-macos.tar.gz. Only useful to
    /// satisfy a build that insists on the download; the result does not run on macOS.
    #[arg(long)]
    pub macos_from_linux: bool,
    /// Output directory.
    #[arg(long, value_name = "DIR", default_value = "dist/release")]
    pub out: PathBuf,
    /// mtime of the tar member (seconds since the epoch); defaults to 0.
    #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECS")]
    pub source_date_epoch: Option<u64>,
}

/// One file that `pack` wrote.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Packed {
    /// File name inside the output directory.
    pub name: String,
    /// sha256 of the file.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 of the binary inside.
    pub binary_sha256: String,
}

/// What `release.json` says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Release {
    /// The proxy's version.
    pub version: String,
    /// A value for `ISTIO_ENVOY_VERSION` that is new for every binary, so Istio's download
    /// cache never hands back an older one.
    pub envoy_version: String,
    /// The tarball member's mtime.
    pub mtime: u64,
    /// The tarballs.
    pub files: Vec<Packed>,
}

impl Release {
    /// Read `release.json` from a directory, if there is one.
    pub fn load(dir: &Path) -> Option<Release> {
        let bytes = std::fs::read(dir.join(RELEASE_JSON)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// The inputs of a pack, resolved.
#[derive(Debug, Clone)]
pub struct Request {
    /// Proxy version.
    pub version: String,
    /// Linux binary.
    pub linux: PathBuf,
    /// What goes into the macOS tarball.
    pub macos: MacOs,
    /// Output directory.
    pub out: PathBuf,
    /// Member mtime.
    pub mtime: u64,
}

/// The source of `mosn-macos.tar.gz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MacOs {
    /// A macOS binary.
    Binary(PathBuf),
    /// The Linux binary, because the user asked for it explicitly.
    FromLinux,
    /// No macOS tarball.
    Skip,
}

/// `mosnctl pack`.
pub fn run(args: Args) -> Result<Release> {
    let req = resolve(&args)?;
    let release = pack(&req)?;
    for f in &release.files {
        println!(
            "{}  {}  ({} bytes)",
            f.sha256,
            req.out.join(&f.name).display(),
            f.size
        );
    }
    println!("wrote {}", req.out.join(SUMS).display());
    Ok(release)
}

/// Work out which binaries to pack from the arguments and what `build` left in `--dist`.
pub fn resolve(args: &Args) -> Result<Request> {
    let version = match &args.version {
        Some(v) => v.clone(),
        None => crate::build::proxy_version(&crate::build::find_source()?)?,
    };
    let built = |t: &str| args.dist.join(&version).join(t).join("mosn");
    let linux = match &args.linux {
        Some(p) => p.clone(),
        None => {
            let p = built(&args.linux_target);
            if !p.is_file() {
                bail!(
                    "no Linux build at {}\n\n\
                     help: run `mosnctl build --target {}` first, or pass --linux PATH",
                    p.display(),
                    args.linux_target
                );
            }
            p
        }
    };
    let macos = if let Some(p) = &args.macos {
        MacOs::Binary(p.clone())
    } else if let Some(p) = ["macos-amd64", "macos-arm64"]
        .iter()
        .map(|t| built(t))
        .find(|p| p.is_file())
    {
        MacOs::Binary(p)
    } else if args.macos_from_linux {
        tracing::warn!(
            "packing the Linux binary as {MACOS} (--macos-from-linux): it will not run on macOS"
        );
        MacOs::FromLinux
    } else {
        tracing::warn!(
            "no macOS build in {}: skipping {MACOS} (Istio only fetches it on macOS hosts; \
             build with --target macos-amd64, or pass --macos-from-linux)",
            args.dist.join(&version).display()
        );
        MacOs::Skip
    };
    Ok(Request {
        version,
        linux,
        macos,
        out: args.out.clone(),
        mtime: args.source_date_epoch.unwrap_or(0),
    })
}

/// Write the tarballs, `SHA256SUMS` and `release.json` into `req.out`, each atomically.
pub fn pack(req: &Request) -> Result<Release> {
    let linux = read_binary(&req.linux, Format::Elf, "--linux")?;
    let linux_sha = fsutil::sha256_hex(&linux);
    let linux_tgz = tarball(&linux, req.mtime)?;
    let mut files = Vec::new();
    // The CentOS tarball holds the same binary: compress and hash once, write twice.
    let linux_packed = Packed {
        name: LINUX.into(),
        sha256: fsutil::sha256_hex(&linux_tgz),
        size: linux_tgz.len() as u64,
        binary_sha256: linux_sha.clone(),
    };
    for name in [LINUX, CENTOS] {
        fsutil::write_atomic(&req.out.join(name), &linux_tgz)?;
        files.push(Packed {
            name: name.into(),
            ..linux_packed.clone()
        });
    }
    let macos_path = req.out.join(MACOS);
    match &req.macos {
        MacOs::FromLinux => files.push(write_tarball(&req.out, MACOS, &linux_tgz, &linux_sha)?),
        MacOs::Binary(p) => {
            let mac = read_binary(p, Format::MachO, "--macos")?;
            let sha = fsutil::sha256_hex(&mac);
            files.push(write_tarball(
                &req.out,
                MACOS,
                &tarball(&mac, req.mtime)?,
                &sha,
            )?);
        }
        MacOs::Skip => {
            // A stale tarball from an earlier pack would be served as if it were current.
            if macos_path.exists() {
                std::fs::remove_file(&macos_path)
                    .with_context(|| format!("cannot remove stale {}", macos_path.display()))?;
            }
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    let sums: String = files
        .iter()
        .map(|f| format!("{}  {}\n", f.sha256, f.name))
        .collect();
    fsutil::write_atomic(&req.out.join(SUMS), sums.as_bytes())?;
    let release = Release {
        version: req.version.clone(),
        envoy_version: format!("{}-{}", req.version, &linux_sha[..12]),
        mtime: req.mtime,
        files,
    };
    fsutil::write_atomic(
        &req.out.join(RELEASE_JSON),
        &serde_json::to_vec_pretty(&release)?,
    )?;
    Ok(release)
}

fn write_tarball(dir: &Path, name: &str, bytes: &[u8], binary_sha256: &str) -> Result<Packed> {
    fsutil::write_atomic(&dir.join(name), bytes)?;
    Ok(Packed {
        name: name.to_string(),
        sha256: fsutil::sha256_hex(bytes),
        size: bytes.len() as u64,
        binary_sha256: binary_sha256.to_string(),
    })
}

/// Read a binary and make sure it is the kind the tarball promises, so a macOS binary never
/// lands in the Linux tarball by mistake.
fn read_binary(path: &Path, want: Format, flag: &str) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let info =
        elf::inspect_bytes(&bytes).with_context(|| format!("cannot inspect {}", path.display()))?;
    if info.format != want {
        bail!(
            "{} is a {:?} binary, but a {want:?} binary is needed here\n\n\
             help: pass the right file with {flag}",
            path.display(),
            info.format
        );
    }
    Ok(bytes)
}

/// A gzip-compressed tar holding `binary` as [`MEMBER`]: mode 0755, uid/gid 0, the given
/// mtime. Deterministic.
pub fn tarball(binary: &[u8], mtime: u64) -> Result<Vec<u8>> {
    Ok(crate::gzip::compress(&tar_single(binary, mtime)?))
}

/// An uncompressed tar with the single member [`MEMBER`].
pub fn tar_single(binary: &[u8], mtime: u64) -> Result<Vec<u8>> {
    let mut header = tar::Header::new_ustar();
    header.set_path(MEMBER)?;
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(binary.len() as u64);
    header.set_mode(0o755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_username("root")?;
    header.set_groupname("root")?;
    header.set_mtime(mtime);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::with_capacity(binary.len() + 4096));
    builder.append(&header, binary)?;
    Ok(builder.into_inner()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn tarball_has_one_member_with_the_contract() {
        let bin = b"\x7fELF not really".repeat(1000);
        let tgz = tarball(&bin, 1_700_000_000).unwrap();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&tgz[..]));
        let mut entries = ar.entries().unwrap();
        let mut e = entries.next().unwrap().unwrap();
        assert_eq!(e.path().unwrap().to_str().unwrap(), MEMBER);
        let h = e.header().clone();
        assert_eq!(h.mode().unwrap(), 0o755);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        assert_eq!(h.mtime().unwrap(), 1_700_000_000);
        let mut got = Vec::new();
        e.read_to_end(&mut got).unwrap();
        assert_eq!(got, bin);
        assert!(entries.next().is_none());
        assert_eq!(tgz, tarball(&bin, 1_700_000_000).unwrap());
    }
}
