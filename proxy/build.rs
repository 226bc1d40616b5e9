//! Bakes the target triple and git commit into the binary for `mosn --version`. (envoy-types'
//! descriptor set, for decoding proto3 JSON, is embedded by the mosn-proto crate's build.rs.)
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
}
