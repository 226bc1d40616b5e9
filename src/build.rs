//! `mosnctl build`: compile the bundled proxy with cargo, check that the Linux binaries run on
//! Istio's base image, and place each binary under `DIR/<version>/<target>/mosn` with a
//! `build-info.json` beside it.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::elf::{self, GlibcVersion};
use crate::fsutil;
use crate::targets::{self, Os, Target};

/// `mosnctl build`: compile the proxy for one or more targets.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Target to build: linux-amd64 (default), linux-arm64, macos-amd64, macos-arm64, or any
    /// Rust target triple. Repeat for several.
    #[arg(long = "target", value_name = "T")]
    pub targets: Vec<String>,
    /// Cargo profile.
    #[arg(long, value_enum, default_value_t = Profile::Release)]
    pub profile: Profile,
    /// Where to put `<version>/<target>/mosn`.
    #[arg(long, value_name = "DIR", default_value = "dist")]
    pub out: PathBuf,
    /// Fail when a Linux binary needs a newer glibc than this (Istio 1.10's base has 2.27).
    #[arg(long, value_name = "X.Y", default_value = "2.27")]
    pub min_glibc: GlibcVersion,
    /// The source tree that holds `proxy/` (default: found from the current directory).
    #[arg(long, value_name = "DIR")]
    pub source: Option<PathBuf>,
}

/// Cargo profile for the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Optimised (`cargo build --release`).
    Release,
    /// Unoptimised, fast to compile.
    Debug,
}

impl Profile {
    fn dir(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "debug",
        }
    }
}

/// What `build-info.json` records about one built binary.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct BuildInfo {
    /// The proxy crate's version.
    pub version: String,
    /// Git commit of the source tree (`-dirty` when it had local changes).
    pub git_commit: String,
    /// The target as requested (`linux-amd64`, or a triple).
    pub target: String,
    /// The Rust triple it was built for.
    pub triple: String,
    /// `release` or `debug`.
    pub profile: String,
    /// sha256 of the binary.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Newest glibc symbol version it needs (`null` for static or non-Linux binaries).
    pub max_glibc: Option<String>,
    /// The dynamic loader it needs, if any.
    pub interpreter: Option<String>,
}

/// A binary that `build` placed in its output directory.
#[derive(Debug, Clone)]
pub struct Built {
    /// Path of the placed binary.
    pub path: PathBuf,
    /// What was recorded about it.
    pub info: BuildInfo,
}

/// `mosnctl build`.
pub fn run(args: Args) -> Result<Vec<Built>> {
    let rt = tokio::runtime::Runtime::new()?;
    let built = rt.block_on(build(&args))?;
    for b in &built {
        println!("{}", b.path.display());
    }
    Ok(built)
}

/// Build every requested target. All targets are checked before anything is compiled.
pub async fn build(args: &Args) -> Result<Vec<Built>> {
    let source = match &args.source {
        Some(s) => s.clone(),
        None => find_source()?,
    };
    let installed = targets::installed_triples()?;
    let names = if args.targets.is_empty() {
        vec![targets::DEFAULT_TARGET.to_string()]
    } else {
        args.targets.clone()
    };
    let mut resolved = Vec::new();
    for name in &names {
        let t = targets::resolve(name, &installed)?;
        targets::ensure_installed(&t, &installed)?;
        resolved.push(t);
    }
    let version = proxy_version(&source)?;
    let commit = git_commit(&source);
    let mut out = Vec::new();
    for t in &resolved {
        out.push(build_one(&source, t, args, &version, &commit).await?);
    }
    Ok(out)
}

async fn build_one(
    source: &Path,
    t: &Target,
    args: &Args,
    version: &str,
    commit: &str,
) -> Result<Built> {
    let target_dir = source.join("target/mosn-build");
    let exe = run_cargo(source, t, args.profile, &target_dir, commit).await?;
    let info = elf::inspect(&exe)?;
    tracing::info!("{}: {}", t.name, elf::summary(&info));
    if t.os == Os::Linux {
        elf::check_runs_on(&info, args.min_glibc)
            .with_context(|| format!("the {} build cannot run on Istio's base image", t.name))?;
    }
    let dest = args.out.join(version).join(&t.name).join("mosn");
    fsutil::copy_atomic(&exe, &dest)?;
    let meta = std::fs::metadata(&dest)?;
    let bi = BuildInfo {
        version: version.to_string(),
        git_commit: commit.to_string(),
        target: t.name.clone(),
        triple: t.triple.clone(),
        profile: args.profile.dir().to_string(),
        sha256: fsutil::sha256_file(&dest)?,
        size: meta.len(),
        max_glibc: info.max_glibc.map(|v| v.to_string()),
        interpreter: info.interpreter.clone(),
    };
    let json = serde_json::to_vec_pretty(&bi)?;
    fsutil::write_atomic(&dest.with_file_name("build-info.json"), &json)?;
    Ok(Built {
        path: dest,
        info: bi,
    })
}

/// Run cargo for one target, with a spinner, and return the path of the built executable.
/// Cargo's diagnostics go to our stderr as cargo rendered them. Ctrl-C or SIGTERM stops
/// cargo before we exit, so no compiler is left running.
async fn run_cargo(
    source: &Path,
    t: &Target,
    profile: Profile,
    target_dir: &Path,
    commit: &str,
) -> Result<PathBuf> {
    let manifest = source.join("proxy/Cargo.toml");
    let mut cmd =
        tokio::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["--bin", "mosn", "--target", &t.triple])
        .arg("--target-dir")
        .arg(target_dir)
        .args(["--message-format", "json-render-diagnostics"])
        .env("MOSN_GIT_COMMIT", commit)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Its own process group, so that stopping it reaches every rustc it started.
    #[cfg(unix)]
    cmd.process_group(0);
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    if std::io::stderr().is_terminal() {
        cmd.args(["--color", "always"]);
    }
    if t.crt_static {
        // Only the target's rustflags: build scripts and proc-macros stay dynamic.
        let var = format!(
            "CARGO_TARGET_{}_RUSTFLAGS",
            t.triple.to_uppercase().replace('-', "_")
        );
        let mut flags = std::env::var(&var).unwrap_or_default();
        flags.push_str(" -C target-feature=+crt-static");
        cmd.env(var, flags.trim());
    }
    let mut child = cmd
        .spawn()
        .context("cannot run cargo; is a Rust toolchain installed?")?;
    let pb = crate::ui::spinner(format!(
        "Building mosn for {} ({}, {})",
        t.name,
        t.triple,
        profile.dir()
    ));
    let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut stderr = BufReader::new(child.stderr.take().expect("piped")).lines();
    let mut exe = None;
    let mut compiled = 0usize;
    let (mut out_open, mut err_open) = (true, true);
    let mut interrupt = std::pin::pin!(crate::ui::interrupted());
    while out_open || err_open {
        tokio::select! {
            line = stdout.next_line(), if out_open => match line? {
                Some(l) => {
                    if let Some((name, path)) = parse_artifact(&l) {
                        compiled += 1;
                        pb.set_message(format!(
                            "Building mosn for {} ({}, {}): {compiled} crates, compiled {name}",
                            t.name, t.triple, profile.dir()
                        ));
                        if path.is_some() { exe = path; }
                    }
                }
                None => out_open = false,
            },
            line = stderr.next_line(), if err_open => match line? {
                Some(l) => pb.suspend(|| eprintln!("{l}")),
                None => err_open = false,
            },
            _ = &mut interrupt => {
                pb.finish_and_clear();
                stop_group(&mut child).await;
                bail!("interrupted: cargo and its compilers were stopped and nothing was written");
            }
        }
    }
    let status = child.wait().await?;
    pb.finish_and_clear();
    if !status.success() {
        bail!(
            "cargo could not build mosn for {} ({}): {status}",
            t.name,
            t.triple
        );
    }
    exe.with_context(|| {
        format!(
            "cargo built nothing for the `mosn` binary ({})",
            manifest.display()
        )
    })
}

/// Stop a child that leads its own process group: SIGTERM to the group, then SIGKILL to
/// whatever is left after a grace period.
pub async fn stop_group(child: &mut tokio::process::Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        let group = -(pid as libc::pid_t);
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is shared.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let waited = tokio::time::timeout(std::time::Duration::from_secs(5), child.wait()).await;
        // The leader may be gone while compilers it started still run: always sweep the group.
        unsafe { libc::kill(group, libc::SIGKILL) };
        if waited.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

/// From one line of cargo's JSON messages: the crate compiled, and the executable when the
/// line is the `mosn` binary's artifact.
fn parse_artifact(line: &str) -> Option<(String, Option<PathBuf>)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("reason")?.as_str()? != "compiler-artifact" {
        return None;
    }
    let name = v.pointer("/target/name")?.as_str()?.to_string();
    let exe = v
        .get("executable")
        .and_then(|e| e.as_str())
        .filter(|_| name == "mosn")
        .map(PathBuf::from);
    Some((name, exe))
}

/// Find the directory holding `proxy/Cargo.toml`: the current directory or an ancestor,
/// else the tree mosnctl itself was built from.
pub fn find_source() -> Result<PathBuf> {
    let cwd = std::env::current_dir()?;
    for dir in cwd.ancestors() {
        if dir.join("proxy/Cargo.toml").is_file() {
            return Ok(dir.to_path_buf());
        }
    }
    let built_from = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if built_from.join("proxy/Cargo.toml").is_file() {
        return Ok(built_from);
    }
    bail!(
        "cannot find the proxy sources (proxy/Cargo.toml) in {} or its parents\n\n\
         help: run mosnctl from the mosnctl repository, or pass --source DIR",
        cwd.display()
    )
}

/// The proxy crate's version, read from `proxy/Cargo.toml`.
pub fn proxy_version(source: &Path) -> Result<String> {
    let path = source.join("proxy/Cargo.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    // The first `version =` line is the [package] one: it is the first table in the file.
    text.lines()
        .map(str::trim)
        .find_map(|l| {
            let rest = l.strip_prefix("version")?.trim_start().strip_prefix('=')?;
            Some(rest.trim().trim_matches('"').to_string())
        })
        .with_context(|| format!("no version in {}", path.display()))
}

/// The source tree's git commit, with `-dirty` for local changes; `unknown` outside git.
pub fn git_commit(source: &Path) -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(source)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(s) if !s.is_empty() => format!("{c}-dirty"),
            _ => c,
        },
        None => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_artifact_line() {
        let line =
            r#"{"reason":"compiler-artifact","target":{"name":"mosn"},"executable":"/t/mosn"}"#;
        assert_eq!(
            parse_artifact(line),
            Some(("mosn".into(), Some(PathBuf::from("/t/mosn"))))
        );
        let dep = r#"{"reason":"compiler-artifact","target":{"name":"tokio"},"executable":null}"#;
        assert_eq!(parse_artifact(dep), Some(("tokio".into(), None)));
        assert_eq!(parse_artifact(r#"{"reason":"build-finished"}"#), None);
    }

    #[test]
    fn reads_the_proxy_version() {
        let v = proxy_version(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert!(v.chars().next().unwrap().is_ascii_digit(), "{v}");
    }
}
