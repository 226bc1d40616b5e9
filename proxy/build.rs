//! Bakes the target triple and git commit into the binary for `mosn --version`, and copies
//! envoy-types' descriptor set into OUT_DIR so the bootstrap loader can decode proto3 JSON.
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=MOSN_TARGET={target}");
    // mosnctl passes the commit explicitly so that builds from a source tarball
    // (no .git) still say where they came from; fall back to asking git.
    println!("cargo:rerun-if-env-changed=MOSN_GIT_COMMIT");
    let commit = std::env::var("MOSN_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| {
            Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_else(|| "unknown".into())
        });
    println!("cargo:rustc-env=MOSN_GIT_COMMIT={commit}");
    copy_descriptor_set();
}

/// envoy-types ships the FileDescriptorSet its structs were generated from
/// (`src/generated/types.bin`) but does not export it. Using exactly that file keeps the
/// JSON decoder and the prost structs in lock-step, so find the crate's source directory:
/// `MOSN_ENVOY_TYPES_BIN` overrides, then a vendored copy, then the cargo registry.
fn copy_descriptor_set() {
    println!("cargo:rerun-if-env-changed=MOSN_ENVOY_TYPES_BIN");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("envoy_types.bin");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let version = locked_version(&manifest).unwrap_or_else(|| "0.7.7".into());
    let dir = format!("envoy-types-{version}");
    let rel = Path::new("src/generated/types.bin");
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(p) = std::env::var("MOSN_ENVOY_TYPES_BIN") {
        candidates.push(PathBuf::from(p));
    }
    for vendor in ["../vendor", "vendor"] {
        candidates.push(manifest.join(vendor).join("envoy-types").join(rel));
        candidates.push(manifest.join(vendor).join(&dir).join(rel));
    }
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo")
        });
    if let Ok(entries) = std::fs::read_dir(cargo_home.join("registry/src")) {
        for e in entries.flatten() {
            candidates.push(e.path().join(&dir).join(rel));
        }
    }
    let found = candidates.iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "cannot find envoy-types' types.bin (tried {candidates:?}); set MOSN_ENVOY_TYPES_BIN"
        )
    });
    println!("cargo:rerun-if-changed={}", found.display());
    std::fs::copy(found, &out).expect("copy types.bin");
}

/// The envoy-types version pinned in the workspace Cargo.lock, so we pick the matching copy.
fn locked_version(manifest: &Path) -> Option<String> {
    let lock = [manifest.join("Cargo.lock"), manifest.join("../Cargo.lock")]
        .into_iter()
        .find_map(|p| std::fs::read_to_string(p).ok())?;
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l.trim() == "name = \"envoy-types\"" {
            let v = lines.next()?.trim();
            return v
                .strip_prefix("version = \"")?
                .strip_suffix('"')
                .map(str::to_string);
        }
    }
    None
}
