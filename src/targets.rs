//! Build targets: the short names users type (`linux-amd64`, `macos-arm64`, ...) and the Rust
//! triples they map to, and whether the standard library for a triple is installed.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The operating system a target produces binaries for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    /// Linux: must run on Istio's glibc base images.
    Linux,
    /// macOS: needs a macOS linker/SDK when cross-compiling.
    MacOs,
    /// Anything else given as a raw triple.
    Other,
}

/// A resolved build target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// What the user asked for; also the output directory name.
    pub name: String,
    /// The Rust target triple passed to cargo.
    pub triple: String,
    /// Target OS.
    pub os: Os,
    /// Link the C runtime statically (`+crt-static`), for `*-linux-gnu` triples.
    pub crt_static: bool,
}

/// The target `mosnctl build` uses when none is given.
pub const DEFAULT_TARGET: &str = "linux-amd64";

/// The short names, for help texts and errors.
pub const SHORT_NAMES: &[&str] = &["linux-amd64", "linux-arm64", "macos-amd64", "macos-arm64"];

/// Resolve a short name or a triple, preferring musl for Linux when its std is installed.
pub fn resolve(name: &str, installed: &[String]) -> Result<Target> {
    let has = |t: &str| installed.iter().any(|i| i == t);
    let linux = |arch: &str| {
        let musl = format!("{arch}-unknown-linux-musl");
        let gnu = format!("{arch}-unknown-linux-gnu");
        if has(&musl) || !has(&gnu) {
            // musl links statically by default; when neither is installed we report musl,
            // the better choice, as the one to add.
            target(name, &musl)
        } else {
            target(name, &gnu)
        }
    };
    Ok(match name {
        "linux-amd64" => linux("x86_64"),
        "linux-arm64" => linux("aarch64"),
        "macos-amd64" => target(name, "x86_64-apple-darwin"),
        "macos-arm64" => target(name, "aarch64-apple-darwin"),
        triple if triple.matches('-').count() >= 2 => target(name, triple),
        other => bail!(
            "unknown target `{other}`\n\nhelp: use one of {} or a Rust target triple such as \
             x86_64-unknown-linux-musl",
            SHORT_NAMES.join(", ")
        ),
    })
}

fn target(name: &str, triple: &str) -> Target {
    let os = if triple.contains("-linux-") {
        Os::Linux
    } else if triple.contains("-apple-darwin") {
        Os::MacOs
    } else {
        Os::Other
    };
    Target {
        name: name.to_string(),
        triple: triple.to_string(),
        os,
        crt_static: triple.ends_with("-linux-gnu"),
    }
}

/// The triples whose standard library is installed in the active toolchain's sysroot.
pub fn installed_triples() -> Result<Vec<String>> {
    let out = Command::new(rustc())
        .args(["--print", "sysroot"])
        .output()
        .context("cannot run rustc; is a Rust toolchain installed?")?;
    if !out.status.success() {
        bail!(
            "`rustc --print sysroot` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let mut triples = Vec::new();
    let dir = sysroot.join("lib/rustlib");
    for entry in
        std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
    {
        let entry = entry?;
        let lib = entry.path().join("lib");
        let has_std = std::fs::read_dir(&lib)
            .map(|rd| {
                rd.flatten()
                    .any(|f| f.file_name().to_string_lossy().starts_with("libstd-"))
            })
            .unwrap_or(false);
        if has_std {
            triples.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    triples.sort();
    Ok(triples)
}

/// Fail with the exact remedy when a target's standard library is missing.
pub fn ensure_installed(t: &Target, installed: &[String]) -> Result<()> {
    if installed.iter().any(|i| i == &t.triple) {
        return Ok(());
    }
    let mut msg = format!(
        "the Rust standard library for target `{}` ({}) is not installed\n\n\
         help: run `rustup target add {}`",
        t.name, t.triple, t.triple
    );
    if t.os == Os::MacOs {
        msg.push_str(
            "\nhelp: building for macOS from another OS also needs a macOS linker and SDK, \
             for example cargo-zigbuild (`cargo install cargo-zigbuild` plus zig) or osxcross",
        );
    }
    bail!(msg)
}

fn rustc() -> String {
    std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn prefers_musl_when_installed() {
        let t = resolve(
            "linux-amd64",
            &inst(&["x86_64-unknown-linux-musl", "x86_64-unknown-linux-gnu"]),
        )
        .unwrap();
        assert_eq!(t.triple, "x86_64-unknown-linux-musl");
        assert!(!t.crt_static);
        let t = resolve("linux-amd64", &inst(&["x86_64-unknown-linux-gnu"])).unwrap();
        assert_eq!(t.triple, "x86_64-unknown-linux-gnu");
        assert!(t.crt_static);
    }

    #[test]
    fn missing_target_names_the_rustup_command() {
        let t = resolve("macos-arm64", &[]).unwrap();
        let err = ensure_installed(&t, &[]).unwrap_err().to_string();
        assert!(
            err.contains("rustup target add aarch64-apple-darwin"),
            "{err}"
        );
        assert!(err.contains("cargo-zigbuild"), "{err}");
        assert!(resolve("windows", &[]).is_err());
    }
}
