//! The Istio make path: `mosnctl patch-istio` prepares an istio/istio checkout with the
//! embedded wasm-disable patch, and `mosnctl build-image` runs the whole recipe (build, pack,
//! serve, patch, `make docker.proxyv2`, verify, retag, push).
//!
//! - [`diff`]: unified-diff reader and per-hunk applier.
//! - [`supported`]: the supported-versions table from `istio-patches/README.md`.
//! - [`version`]: which Istio a checkout is.
//! - [`patch`]: check, apply and revert on a checkout, all or nothing.
//! - [`env`], [`plan`], [`make`], [`engine`], [`build_image`]: the `build-image` recipe.

pub mod build_image;
pub mod diff;
pub mod engine;
pub mod env;
pub mod make;
pub mod patch;
pub mod plan;
pub mod supported;
pub mod version;

use std::path::PathBuf;

use anyhow::Result;

use diff::Direction;
use patch::{Choice, TreeState};

pub use build_image::{run_build_image, BuildImageArgs};

/// `mosnctl patch-istio`.
#[derive(Debug, Clone, clap::Args)]
pub struct PatchArgs {
    /// The istio/istio checkout (a git clone or an unpacked source tarball).
    #[arg(long, value_name = "DIR")]
    pub istio: PathBuf,
    /// Only report whether the patch applies, is applied, or does not fit; change nothing.
    #[arg(long, conflicts_with = "revert")]
    pub check: bool,
    /// Put the original files back.
    #[arg(long)]
    pub revert: bool,
    /// The checkout's Istio version (default: from its git tag, istio.deps or Makefile).
    #[arg(long, value_name = "X.Y.Z")]
    pub istio_version: Option<String>,
}

/// What `patch-istio` did, for callers such as `build-image`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 1.18 or later: nothing to do.
    NotNeeded,
    /// The checkout was already in the wanted state.
    Unchanged,
    /// These files were written.
    Changed(Vec<String>),
    /// `--check`: the state found.
    Checked(TreeState),
}

/// Detect the version (or take the override) and pick the patch.
pub fn choose(istio: &std::path::Path, version: Option<&str>) -> Result<Choice> {
    let detected = match version {
        Some(v) => version::Detected {
            version: v.parse()?,
            source: "--istio-version".into(),
        },
        None => version::detect(istio)?,
    };
    if detected.version.at_least(1, 14) {
        tracing::warn!("{}", patch::sidecar_warning(&detected));
    }
    patch::choose(detected)
}

/// `mosnctl patch-istio`.
pub fn run_patch(args: PatchArgs) -> Result<()> {
    patch_istio(&args).map(|_| ())
}

/// The body of `patch-istio`, printing its report on stdout.
pub fn patch_istio(args: &PatchArgs) -> Result<Outcome> {
    if !args.istio.is_dir() {
        anyhow::bail!(
            "{} is not a directory\n\nhelp: --istio must point at an istio/istio checkout",
            args.istio.display()
        );
    }
    let (detected, name, text) = match choose(&args.istio, args.istio_version.as_deref())? {
        Choice::NotNeeded { detected } => {
            println!(
                "Istio {} (from {}) needs no wasm patch: 1.18 removed the wasm downloads and COPYs",
                detected.version, detected.source
            );
            return Ok(Outcome::NotNeeded);
        }
        Choice::Patch {
            detected,
            name,
            text,
        } => (detected, name, text),
    };
    println!(
        "Istio {} (from {}): patch {name}",
        detected.version, detected.source
    );
    let check = patch::check(&args.istio, &name, text)?;
    if args.check {
        for f in &check.files {
            let total = f.states.len();
            let what = if f.states.contains(&diff::HunkState::Mismatch) {
                "DOES NOT FIT".to_string()
            } else if f.patched() == total {
                "already patched".to_string()
            } else if f.original() == total {
                "can be patched".to_string()
            } else {
                format!("partly patched ({} of {total} hunks)", f.patched())
            };
            println!("  {:<36} {what}", f.rel);
        }
        check.ensure_matches()?;
        println!("checkout is {}", check.describe());
        return Ok(Outcome::Checked(check.state()));
    }
    check.ensure_matches()?;
    let (dir, done_state, verb) = if args.revert {
        (Direction::Revert, TreeState::Original, "reverted")
    } else {
        (Direction::Apply, TreeState::Patched, "patched")
    };
    if check.state() == done_state {
        println!(
            "already {}: nothing changed",
            if args.revert { "original" } else { "patched" }
        );
        return Ok(Outcome::Unchanged);
    }
    let changed = check.write(dir)?;
    for f in &changed {
        println!("  {verb} {f}");
    }
    println!("{verb} {} files in {}", changed.len(), args.istio.display());
    Ok(Outcome::Changed(changed))
}
