//! `mosnctl overlay`: add `/usr/local/bin/mosn` to a proxyv2 base image.
//!
//! The daemonless path reads only the base's manifests and config, builds one deterministic
//! layer, edits the config as raw JSON and writes the result to a registry, an OCI layout or a
//! docker-archive. `--engine` does the same through a Docker engine instead.
//!
//! This module is the command (flags, checks, the order of the steps). Which base manifests
//! are overlaid is `select.rs`, the layer and the edited configs, manifests and index are
//! `compose.rs`, writing them is `output.rs`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub use super::binary::Binary;
use super::output;
use super::reference::{Location, Reference};
use super::registry::{ClientOptions, Registry};
use super::source::Source;
use super::{compose, select, Platform};

/// `mosnctl overlay`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Base image: a registry reference, oci:DIR[:TAG] or docker-archive:FILE.
    #[arg(long, value_name = "REF")]
    pub base: String,
    /// The mosn binary to add; repeat for several architectures. Without it, the proxy is
    /// built first, as `mosnctl build` does (static; for each --platform, else linux-amd64).
    #[arg(long, value_name = "PATH")]
    pub binary: Vec<PathBuf>,
    /// Name of the result: where --push pushes, and the name inside local outputs.
    #[arg(long, value_name = "REF")]
    pub tag: String,
    /// Push the result to the registry named by --tag.
    #[arg(long)]
    pub push: bool,
    /// Also write the result to oci:DIR[:TAG] or docker-archive:FILE.
    #[arg(long, value_name = "DEST")]
    pub output: Option<String>,
    /// Load the result into the Docker engine (through its image-load API).
    #[arg(long)]
    pub load: bool,
    /// Build with the Docker engine (docker build, tag, push) instead of daemonless.
    #[arg(long)]
    pub engine: bool,
    /// Platforms to overlay, e.g. linux/amd64,linux/arm64 (default: all that match a binary).
    #[arg(long, value_delimiter = ',', value_name = "OS/ARCH")]
    pub platform: Vec<Platform>,
    /// Run `/usr/local/bin/mosn --version` in the result through the engine (no network).
    #[arg(long)]
    pub smoke: bool,
    /// Allow plain HTTP and unverified TLS for non-loopback registries.
    #[arg(long)]
    pub insecure: bool,
    /// Extra CA certificate (PEM) for registries with a private CA.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// gzip level of the new layer (0-9); part of the reproducibility contract.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=9))]
    pub compression_level: u32,
    /// Do not read base layers to check the binary's glibc needs (dynamic binaries only).
    #[arg(long)]
    pub skip_glibc_check: bool,
    /// Cargo profile when building the proxy first.
    #[arg(long, value_enum, default_value_t = crate::build::Profile::Release)]
    pub profile: crate::build::Profile,
}

/// What a finished overlay reports.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Digest of the top-level result (index or manifest) as written to the destination.
    pub digest: String,
    /// Where it went.
    pub destination: String,
    /// Platforms overlaid.
    pub platforms: Vec<String>,
}

/// `mosnctl overlay`.
pub fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    // --engine alone keeps the built image in the engine, which is a result too.
    if !args.push && args.output.is_none() && !args.load && !args.engine {
        bail!(
            "nothing to do: the result would be thrown away\n\n\
             help: add --push, --output oci:DIR, --output docker-archive:FILE, --load or --engine"
        );
    }
    if args.smoke && !(args.load || args.engine || args.push) {
        bail!(
            "--smoke runs the image in the Docker engine, but the result only goes to a file\n\n\
             help: add --load (or --push, or --engine) so the engine can run it"
        );
    }
    // Checked before the proxy is built: a mistyped name should not cost a cargo build.
    let Locations { tag, .. } = locations(&args)?;
    let binaries = if args.binary.is_empty() {
        super::binary::build_for(&args.platform, args.profile)?
    } else {
        args.binary
            .iter()
            .map(|p| super::binary::check(p))
            .collect::<Result<Vec<_>>>()?
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let outcomes = if args.engine {
        rt.block_on(super::engine::overlay(&args, &binaries))?
    } else {
        rt.block_on(overlay(&args, &binaries))?
    };
    if args.smoke {
        let image = smoke_image(&args, &tag, &outcomes);
        let out = rt.block_on(super::engine::smoke(&image, &tag.registry))?;
        eprintln!(
            "smoke test passed: /usr/local/bin/mosn --version printed {:?}",
            out.trim()
        );
    }
    let secs = start.elapsed().as_secs_f64();
    for o in &outcomes {
        println!(
            "{}@{} ({}) in {secs:.2}s",
            o.destination,
            o.digest,
            o.platforms.join(", ")
        );
    }
    Ok(())
}

/// `--base`, `--tag` and `--output`, parsed and checked.
pub(super) struct Locations {
    pub base: Location,
    pub tag: Reference,
    pub output: Option<Location>,
}

/// Parse and check the names of `args`, with `--engine`'s limits; cheap, so `run` calls it
/// before anything is built.
pub(super) fn locations(args: &Args) -> Result<Locations> {
    let base = Location::parse(&args.base)?;
    if args.engine {
        if !matches!(base, Location::Registry(_)) {
            bail!(
                "--engine builds FROM a registry image, not {base}\n\n\
                 help: drop --engine to overlay local bases daemonlessly"
            );
        }
        if args.output.is_some() {
            bail!(
                "--output is written by the daemonless path, not by --engine\n\n\
                 help: drop --engine (or --output)"
            );
        }
    }
    let tag = Reference::parse(&args.tag).context("--tag must be an image reference")?;
    if let Some(d) = &tag.digest {
        bail!(
            "--tag {} names a digest ({d}), but the result's digest is only known once it is \
             built\n\n\
             help: give a tag, e.g. --tag {}/{}:v1",
            args.tag,
            tag.registry,
            tag.repository
        );
    }
    let output = args.output.as_deref().map(Location::parse).transpose()?;
    if let Some(Location::Registry(_)) = output {
        bail!(
            "--output takes oci:DIR[:TAG] or docker-archive:FILE\n\n\
             help: to push to a registry, use --tag REF --push"
        );
    }
    Ok(Locations { base, tag, output })
}

/// What `--smoke` runs. After `--load` or `--engine` the engine's image under the tag is the
/// one just made. After a daemonless `--push` alone, the engine may still hold an older image
/// under that tag (an earlier run), so the pushed digest is run instead; the engine pulls it.
fn smoke_image(args: &Args, tag: &Reference, outcomes: &[Outcome]) -> String {
    let familiar = tag.familiar();
    if args.load || args.engine {
        return familiar;
    }
    let pushed = outcomes
        .iter()
        .find(|o| o.destination == tag.to_string() && o.digest.starts_with("sha256:"));
    match (pushed, familiar.rsplit_once(':')) {
        (Some(o), Some((repo, _))) => format!("{repo}@{}", o.digest),
        _ => familiar,
    }
}

/// The daemonless overlay: returns one outcome per destination written.
pub async fn overlay(args: &Args, binaries: &[Binary]) -> Result<Vec<Outcome>> {
    let mut seen = std::collections::HashSet::new();
    for b in binaries {
        if !seen.insert(b.info.oci_arch().to_string()) {
            bail!(
                "two binaries for {}: give one binary per architecture",
                b.info.oci_arch()
            );
        }
    }
    let Locations {
        base: base_loc,
        tag,
        output: output_loc,
    } = locations(args)?;
    let opts = ClientOptions {
        insecure: args.insecure,
        ca_file: args.ca_file.clone(),
    };

    // One client per registry; the destination's token also covers pulls from the base's
    // repository on the same registry, so mounts work.
    let dest = if args.push {
        let mut scopes = vec![format!("repository:{}:pull,push", tag.repository)];
        if let Location::Registry(b) = &base_loc {
            if b.registry == tag.registry && b.repository != tag.repository {
                scopes.push(format!("repository:{}:pull", b.repository));
            }
        }
        Some(Arc::new(
            Registry::connect(&tag.registry, tag.api_host(), scopes, &opts).await?,
        ))
    } else {
        None
    };
    let source = match &base_loc {
        Location::Registry(r) => {
            // Its own client (pull scope only) even on the destination's registry: some
            // token servers honour only the first scope, and the destination's token asks
            // for push first. A refused mount then falls back to reading through this one.
            let registry = Arc::new(
                Registry::connect(
                    &r.registry,
                    r.api_host(),
                    vec![format!("repository:{}:pull", r.repository)],
                    &opts,
                )
                .await?,
            );
            Source::Registry {
                registry,
                reference: r.clone(),
            }
        }
        Location::Oci(dir, t) => Source::Local(Arc::new(super::layout::open(dir, t.as_deref())?)),
        Location::DockerArchive(f) => Source::Local(Arc::new(super::archive::open(f)?)),
    };

    let (root_raw, root_mt) = source.root().await?;
    let children =
        select::select_children(&source, &root_raw, &root_mt, &args.platform, binaries).await?;
    if !args.skip_glibc_check {
        for c in &children {
            let m: Value = serde_json::from_slice(&c.manifest)?;
            let layers = super::manifest_layers(&m)?;
            match super::preflight::check_glibc(&source, &layers, c.binary).await? {
                super::preflight::GlibcFinding::Static => tracing::info!(
                    "preflight {}: static binary, needs no glibc (base layers not read)",
                    c.platform
                ),
                super::preflight::GlibcFinding::Found(v, path) => tracing::info!(
                    "preflight {}: base has glibc {v} ({path}); the binary needs {}",
                    c.platform,
                    c.binary.info.max_glibc.map(|g| g.to_string()).unwrap_or_else(|| "no versioned glibc symbols".into())
                ),
                super::preflight::GlibcFinding::NotFound => tracing::warn!(
                    "preflight {}: the binary is dynamically linked ({}), but no glibc was found in the base's layers; it may not run",
                    c.platform,
                    c.binary.info.interpreter.as_deref().unwrap_or("?")
                ),
            }
        }
    }
    let base_name = match &base_loc {
        // Local paths differ between machines; naming them would break reproducibility.
        Location::Registry(r) => Some(r.to_string()),
        _ => None,
    };

    // Build each architecture's layer once (CPU work, off the async workers).
    let progress = indicatif::MultiProgress::new();
    let mtime = super::source_date_epoch()?;
    let layers = compose::build_layers(&children, args.compression_level, mtime, &progress).await?;

    // Registries get the base's media-type family; local outputs OCI types (see `to_oci`).
    let build = |to_oci| {
        compose::mutate_all(
            &children,
            &layers,
            &root_raw,
            &root_mt,
            base_name.as_deref(),
            to_oci,
            mtime,
        )
    };
    let mut outcomes = Vec::new();
    if let Some(dest) = &dest {
        let built = build(false)?;
        let t = std::time::Instant::now();
        let digest = output::push(dest, &tag, &source, &built, &progress).await?;
        tracing::info!("pushed {tag} in {} ms", t.elapsed().as_millis());
        outcomes.push(Outcome {
            digest,
            destination: tag.to_string(),
            platforms: built.platforms(),
        });
    }
    let local = if output_loc.is_some() || args.load {
        Some(build(true)?)
    } else {
        None
    };
    if let (Some(loc), Some(built)) = (&output_loc, &local) {
        let digest = match loc {
            Location::Oci(dir, t) => {
                let name = t
                    .clone()
                    .or_else(|| tag.tag.clone())
                    .unwrap_or_else(|| "latest".into());
                output::write_oci(dir, &name, &source, built).await?
            }
            Location::DockerArchive(file) => {
                output::write_archive(file, &tag, &source, built).await?
            }
            Location::Registry(_) => unreachable!("rejected above"),
        };
        outcomes.push(Outcome {
            digest,
            destination: loc.to_string(),
            platforms: built.platforms(),
        });
    }
    if let (true, Some(built)) = (args.load, &local) {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("image.tar");
        output::write_archive(&file, &tag, &source, built).await?;
        let diff_id = built.images[0].layer.diff_id.clone();
        let id = super::engine::load(&file, &tag.familiar(), &diff_id).await?;
        outcomes.push(Outcome {
            digest: id,
            destination: format!("docker engine {}", tag.familiar()),
            platforms: built.platforms(),
        });
    }
    Ok(outcomes)
}

/// A progress bar for byte counts (hidden when stderr is not a terminal).
pub fn bar(msg: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(0);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>16} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["x", "--base", "b/c:d", "--tag", "127.0.0.1:5000/mosn/p:v1"];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).args
    }

    #[test]
    fn smoke_runs_the_pushed_digest_unless_the_engine_has_the_result() {
        let tag = Reference::parse("127.0.0.1:5000/mosn/p:v1").unwrap();
        let digest = super::super::digest_of(b"m");
        let outcomes = vec![Outcome {
            digest: digest.clone(),
            destination: tag.to_string(),
            platforms: vec![],
        }];
        assert_eq!(
            smoke_image(&args(&["--push", "--smoke"]), &tag, &outcomes),
            format!("127.0.0.1:5000/mosn/p@{digest}")
        );
        for loaded in ["--load", "--engine"] {
            assert_eq!(
                smoke_image(&args(&["--push", loaded]), &tag, &outcomes),
                "127.0.0.1:5000/mosn/p:v1"
            );
        }
    }
}
