//! The binary that goes into the image: checked (exists, executable, Linux ELF), built when
//! none is given, and its version probed for the history comment.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::Platform;
use crate::elf::{BinaryInfo, Format};

/// A binary to put into the image, checked.
#[derive(Debug, Clone)]
pub struct Binary {
    /// Where it is.
    pub path: PathBuf,
    /// What it needs.
    pub info: BinaryInfo,
    /// `sha256:` of its bytes, recorded in the history comment.
    pub digest: String,
    /// First line of `--version`, when it could be run here (same architecture).
    pub version: Option<String>,
}

/// Check a binary: it must exist, be executable and be a Linux ELF file.
pub fn check(path: &Path) -> Result<Binary> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "the binary {} does not exist\n\n\
             help: build it with `mosnctl build`, or leave out --binary to build it now",
            path.display()
        )
    })?;
    if !meta.is_file() {
        bail!("the binary {} is not a regular file", path.display());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        bail!(
            "the binary {} is not executable\n\nhelp: chmod +x {}",
            path.display(),
            path.display()
        );
    }
    let info = crate::elf::inspect(path)
        .with_context(|| format!("the binary {} is not an ELF executable", path.display()))?;
    if info.format != Format::Elf {
        bail!(
            "the binary {} is a {:?} executable, not a Linux ELF one\n\n\
             help: build it for linux (`mosnctl build --target linux-amd64`)",
            path.display(),
            info.format
        );
    }
    let version = probe_version(path, &info);
    Ok(Binary {
        path: path.to_path_buf(),
        digest: format!("sha256:{}", crate::fsutil::sha256_file(path)?),
        info,
        version,
    })
}

/// Run `binary --version` (only for this machine's architecture, 3 s at most) and keep the
/// first line. Its output depends only on the binary, so digests stay reproducible.
fn probe_version(path: &Path, info: &BinaryInfo) -> Option<String> {
    if info.arch != std::env::consts::ARCH || std::env::consts::OS != "linux" {
        return None;
    }
    let mut child = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take()?, &mut out).ok()?;
    let line = out.lines().next()?.trim();
    (!line.is_empty() && line.len() <= 120).then(|| line.to_string())
}

/// The `mosnctl build` targets for `--platform`s: one per architecture (variants such as
/// linux/arm64/v8 share one), linux-amd64 when none is given.
fn build_targets(platforms: &[Platform]) -> Result<Vec<String>> {
    let mut targets: Vec<String> = Vec::new();
    for p in platforms {
        let t = match p.arch.as_str() {
            "amd64" => "linux-amd64",
            "arm64" => "linux-arm64",
            other => bail!(
                "mosnctl build has no target for linux/{other}\n\n\
                 help: build mosn for it yourself and pass it with --binary"
            ),
        };
        if !targets.iter().any(|x| x == t) {
            targets.push(t.to_string());
        }
    }
    if targets.is_empty() {
        targets.push("linux-amd64".into());
    }
    Ok(targets)
}

/// The hook used without `--binary`: build the proxy as `mosnctl build` does (static, into
/// `dist/`), for each requested platform's architecture (linux-amd64 by default).
pub fn build_for(platforms: &[Platform], profile: crate::build::Profile) -> Result<Vec<Binary>> {
    let targets = build_targets(platforms)?;
    let args = crate::build::Args {
        targets,
        profile,
        out: PathBuf::from("dist"),
        min_glibc: crate::elf::GlibcVersion(2, 27),
        source: None,
    };
    let rt = tokio::runtime::Runtime::new()?;
    let built = rt
        .block_on(crate::build::build(&args))
        .context("cannot build the proxy (pass --binary to use an existing one)")?;
    built
        .into_iter()
        .map(|b| {
            let mut bin = check(&b.path)?;
            bin.version = Some(format!("mosn {}", b.info.version));
            Ok(bin)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_build_target_per_architecture() {
        let p = |s: &str| s.parse::<Platform>().unwrap();
        assert_eq!(build_targets(&[]).unwrap(), ["linux-amd64"]);
        assert_eq!(
            build_targets(&[p("linux/amd64"), p("linux/arm64/v8"), p("linux/amd64")]).unwrap(),
            ["linux-amd64", "linux-arm64"]
        );
        let err = build_targets(&[p("linux/s390x")]).unwrap_err().to_string();
        assert!(
            err.contains("linux/s390x") && err.contains("help:"),
            "{err}"
        );
    }
}
