//! Copies envoy-types' descriptor set into OUT_DIR for [`mosn_proto::DESCRIPTORS`].
//!
//! envoy-types ships the FileDescriptorSet its prost structs were generated from
//! (`src/generated/types.bin`) but does not export it. Using exactly that file keeps JSON
//! decoding and the prost structs in lock-step, so find the crate's source directory:
//! `MOSN_ENVOY_TYPES_BIN` overrides, then a vendored copy, then the cargo registry.
use std::path::{Path, PathBuf};

fn main() {
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
    // The workspace's vendor directory (`cargo vendor` at the root), then one of our own.
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
            "cannot find envoy-types' types.bin (tried {candidates:?})\n\n\
             help: set MOSN_ENVOY_TYPES_BIN to envoy-types-{version}/src/generated/types.bin"
        )
    });
    println!("cargo:rerun-if-changed={}", found.display());
    std::fs::copy(found, &out).expect("copy types.bin");
}

/// The envoy-types version pinned in the workspace Cargo.lock, so the copy matches the
/// compiled structs.
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
