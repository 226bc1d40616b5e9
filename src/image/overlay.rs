//! `mosnctl overlay`: add `/usr/local/bin/mosn` to a proxyv2 base image.
//!
//! The daemonless path reads only the base's manifests and config, builds one deterministic
//! layer, edits the config as raw JSON and writes the result to a registry, an OCI layout or a
//! docker-archive. `--engine` does the same through a Docker engine instead.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use serde_json::Value;

pub use super::binary::Binary;
use super::layer::{Layer, LayerOptions};
use super::mutate::{self, ConfigEdit};
use super::output::{self, Child, Overlaid};
use super::reference::{Location, Reference};
use super::registry::{ClientOptions, Registry};
use super::source::Source;
use super::{Descriptor, Platform};

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
    let children = select_children(&source, &root_raw, &root_mt, args, binaries).await?;
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
    let mut layers: std::collections::HashMap<String, Arc<Layer>> = Default::default();
    for child in &children {
        let arch = child.binary.info.oci_arch().to_string();
        if layers.contains_key(&arch) {
            continue;
        }
        let bin = child.binary.path.clone();
        let pb = progress.add(bar(&format!("compress {arch}")));
        let lopts = LayerOptions {
            mtime: mtime.unwrap_or(0),
            level: args.compression_level,
        };
        let pb2 = pb.clone();
        let t = std::time::Instant::now();
        let layer =
            tokio::task::spawn_blocking(move || super::layer::build(&bin, lopts, &pb2)).await??;
        pb.finish_and_clear();
        tracing::info!(
            "layer {} for {arch}: {} bytes compressed in {} ms, diff_id {}",
            layer.digest,
            layer.blob.len(),
            t.elapsed().as_millis(),
            layer.diff_id
        );
        layers.insert(arch, Arc::new(layer));
    }

    // Registries get the base's media-type family; local outputs OCI types (see `to_oci`).
    let build = |to_oci| {
        mutate_all(
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

/// Pick the base manifests to overlay: for an index, the platforms that match a binary (and
/// `--platform`), without attestations; for a single manifest, check its architecture.
async fn select_children<'a>(
    source: &Source,
    root_raw: &Bytes,
    root_mt: &str,
    args: &Args,
    binaries: &'a [Binary],
) -> Result<Vec<Child<'a>>> {
    let binary_for = |p: &Platform| {
        binaries
            .iter()
            .find(|b| p.os == "linux" && b.info.oci_arch() == p.arch)
    };
    let wanted =
        |p: &Platform| args.platform.is_empty() || args.platform.iter().any(|w| w.selects(p));
    let arches: Vec<&str> = binaries.iter().map(|b| b.info.oci_arch()).collect();
    if !super::is_index(root_mt) {
        let manifest: Value =
            serde_json::from_slice(root_raw).context("the base manifest is not JSON")?;
        let config_desc = super::manifest_config(&manifest)?;
        let config = source.blob(&config_desc.digest).await?;
        let cfg: Value = serde_json::from_slice(&config).context("the base config is not JSON")?;
        let platform =
            Platform::from_json(&cfg).context("the base config names no os/architecture")?;
        if !wanted(&platform) {
            bail!(
                "the base is a single-platform image for {platform}, not {}",
                plat_list(&args.platform)
            );
        }
        let binary = binary_for(&platform).with_context(|| {
            format!(
                "the base is for {platform}, but the binary is for linux/{}\n\n\
                 help: build mosn for {} or pick a base for linux/{}",
                arches.join(", linux/"),
                platform.arch,
                arches.join(", linux/")
            )
        })?;
        return Ok(vec![Child {
            entry: None,
            platform,
            manifest: root_raw.clone(),
            config,
            binary,
        }]);
    }
    let index: Value = serde_json::from_slice(root_raw).context("the base index is not JSON")?;
    let entries = index
        .get("manifests")
        .and_then(Value::as_array)
        .context("the base index has no manifests")?;
    let mut available = Vec::new();
    let mut children = Vec::new();
    let mut dropped = 0;
    for entry in entries {
        if mutate::is_attestation(entry) {
            dropped += 1;
            continue;
        }
        let Some(platform) = entry.get("platform").and_then(Platform::from_json) else {
            continue;
        };
        available.push(platform.to_string());
        if !wanted(&platform) {
            continue;
        }
        let Some(binary) = binary_for(&platform) else {
            // Keeping it would publish a platform without mosn; say so loudly.
            tracing::warn!(
                "leaving {platform} out of the result: no binary for it (give one with another --binary)"
            );
            continue;
        };
        let desc = Descriptor::from_json(entry)?;
        let manifest = source.manifest(&desc.digest).await?;
        let m: Value = serde_json::from_slice(&manifest).context("a base manifest is not JSON")?;
        let config = source.blob(&super::manifest_config(&m)?.digest).await?;
        children.push(Child {
            entry: Some(entry.clone()),
            platform,
            manifest,
            config,
            binary,
        });
    }
    if dropped > 0 {
        tracing::info!(
            "dropping {dropped} attestation manifest(s): they vouch for the base's digests"
        );
    }
    for w in &args.platform {
        if !children.iter().any(|c| w.selects(&c.platform)) {
            bail!(
                "the base has no platform {w} that a binary matches; the base has: {}; \
                 the binaries are for: linux/{}\n\n\
                 help: pick one of the base's platforms with --platform, and give a --binary \
                 built for each",
                available.join(", "),
                arches.join(", linux/")
            );
        }
    }
    if children.is_empty() {
        bail!(
            "no platform in the base matches the binary (linux/{}); the base has: {}\n\n\
             help: give a --binary built for one of the base's platforms",
            arches.join(", linux/"),
            if available.is_empty() {
                "none".into()
            } else {
                available.join(", ")
            }
        );
    }
    Ok(children)
}

fn plat_list(p: &[Platform]) -> String {
    p.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Apply the layer to every child and rebuild the index. `to_oci` converts Docker media
/// types (for OCI layouts and archives).
fn mutate_all(
    children: &[Child],
    layers: &std::collections::HashMap<String, Arc<Layer>>,
    root_raw: &Bytes,
    root_mt: &str,
    base_name: Option<&str>,
    to_oci: bool,
    epoch: Option<u64>,
) -> Result<Overlaid> {
    let mut out = Vec::new();
    for child in children {
        let layer = layers[child.binary.info.oci_arch()].clone();
        let comment = match &child.binary.version {
            Some(v) => format!("{v} ({})", child.binary.digest),
            None => format!("mosn binary {}", child.binary.digest),
        };
        let config = Bytes::from(mutate::edit_config(
            &child.config,
            &ConfigEdit {
                diff_id: layer.diff_id.clone(),
                created: epoch.map(super::rfc3339),
                created_by: "mosnctl overlay /usr/local/bin/mosn".into(),
                comment: Some(comment),
            },
        )?);
        let base_manifest = if to_oci {
            Bytes::from(mutate::manifest_to_oci(&child.manifest)?)
        } else {
            child.manifest.clone()
        };
        let bm: Value = serde_json::from_slice(&base_manifest)?;
        let mt = super::media_type_of(&bm, None);
        let mut config_desc = super::manifest_config(&bm)?;
        config_desc.digest = super::digest_of(&config);
        config_desc.size = config.len() as u64;
        let layer_desc = Descriptor {
            media_type: mutate::layer_media_type(&mt).into(),
            digest: layer.digest.clone(),
            size: layer.blob.len() as u64,
        };
        let base_digest = super::digest_of(&child.manifest);
        let manifest = Bytes::from(mutate::edit_manifest(
            &base_manifest,
            &config_desc,
            &layer_desc,
            base_name.map(|n| (n, base_digest.as_str())),
        )?);
        out.push(output::Image {
            platform: child.platform.clone(),
            entry: child.entry.clone(),
            base_layers: super::manifest_layers(&bm)?,
            manifest_desc: Descriptor {
                media_type: mt,
                digest: super::digest_of(&manifest),
                size: manifest.len() as u64,
            },
            manifest,
            config,
            config_digest: config_desc.digest,
            layer,
        });
    }
    let index = if super::is_index(root_mt) {
        let pairs: Vec<(Value, Descriptor)> = out
            .iter()
            .map(|i| (i.entry.clone().unwrap_or_default(), i.manifest_desc.clone()))
            .collect();
        let raw = Bytes::from(mutate::rebuild_index(root_raw, &pairs, to_oci)?);
        let mt = if to_oci {
            mutate::oci_media_type(root_mt).to_string()
        } else {
            root_mt.to_string()
        };
        Some((raw, mt))
    } else {
        None
    };
    Ok(Overlaid { images: out, index })
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
