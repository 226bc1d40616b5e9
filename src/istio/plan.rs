//! What `build-image` will do, worked out and checked before anything runs: the version and
//! patch, the variables (checked against Istio's env-file blocklist), every command. The same
//! plan drives the real run and is what `--dry-run` prints.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::build_image::{BuildImageArgs, UrlMode};
use super::env::{self, MakeVars};
use super::make::{self, Invocation};
use super::patch::{self, Choice};
use super::version::{self, Detected};
use crate::image::reference::Reference;

/// Stands in for the binary's hash in `ISTIO_ENVOY_VERSION` until it is built.
pub const SHA_PLACEHOLDER: &str = "<sha12>";
/// Stands in for the server's port until it listens.
pub const PORT_PLACEHOLDER: &str = "<port>";
/// Where `--url-mode file` puts the tarballs, relative to the checkout. Not under `out/`,
/// which `make clean` removes.
pub const FILE_DIR: &str = ".mosn-artifacts";

/// Everything `build-image` is going to do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The Istio checkout (absolute).
    pub istio: PathBuf,
    /// Its version and where that came from.
    pub detected: Detected,
    /// Patch path under `istio-patches/`.
    pub patch: String,
    /// The embedded patch text.
    pub patch_text: &'static str,
    /// The checkout's state against the patch, at planning time.
    pub patch_state: String,
    /// Targets to build, or empty when `--linux` gives a binary.
    pub targets: Vec<String>,
    /// Prebuilt Linux binary.
    pub linux: Option<PathBuf>,
    /// Prebuilt macOS binary.
    pub macos: Option<PathBuf>,
    /// Proxy source tree for the build (None: found by `build`).
    pub source: Option<PathBuf>,
    /// Build output (`<dist>/<version>/<target>/mosn`).
    pub dist: PathBuf,
    /// Pack output, also what is served.
    pub release_dir: PathBuf,
    /// How the build container reaches the tarballs.
    pub url_mode: UrlMode,
    /// Server bind address (HTTP mode).
    pub addr: SocketAddr,
    /// Host name put in URLs instead of the bind address (macOS: host.docker.internal).
    pub url_host: Option<String>,
    /// False when `BUILD_WITH_CONTAINER=0`: make runs on the host, no env-file filter.
    pub container: bool,
    /// The variables (with placeholders until the binary is packed and the server listens).
    pub vars: MakeVars,
    /// Log file for make's output.
    pub log: PathBuf,
    /// Extra tags for the built image.
    pub retag: Vec<Reference>,
    /// Push the image and the extra tags.
    pub push: bool,
    /// Tarball mtime: `SOURCE_DATE_EPOCH` or 0. Read up front so a malformed value fails
    /// before any work instead of quietly making the tarballs unreproducible.
    pub mtime: u64,
}

impl Plan {
    /// Work out the plan from the arguments; reads the checkout but changes nothing.
    pub fn new(args: &BuildImageArgs) -> Result<Plan> {
        let istio = std::fs::canonicalize(&args.istio).with_context(|| {
            format!(
                "{} is not a directory\n\nhelp: --istio must point at an istio/istio checkout",
                args.istio.display()
            )
        })?;
        let detected = match &args.istio_version {
            Some(v) => Detected {
                version: v.parse()?,
                source: "--istio-version".into(),
            },
            None => version::detect(&istio)?,
        };
        if detected.version.at_least(1, 14) {
            bail!(
                "{}\n\nhelp: mosnctl overlay --base istio/proxyv2:{} adds mosn to the released image",
                patch::sidecar_warning(&detected),
                detected.version
            );
        }
        let (patch, patch_text) = match patch::choose(detected.clone())? {
            Choice::Patch { name, text, .. } => (name, text),
            Choice::NotNeeded { .. } => unreachable!("1.18+ was refused above"),
        };
        let check = patch::check(&istio, &patch, patch_text)?;
        check.ensure_matches()?;
        let istio_version = match (&args.version, detected.version.patch) {
            (Some(v), _) => v.clone(),
            (None, Some(_)) if detected.version.pre.is_none() => detected.version.to_string(),
            _ => bail!(
                "the exact Istio release of {} is unknown ({} from {})\n\n\
                 help: pass --version X.Y.Z; it becomes ISTIO_META_ISTIO_VERSION, which istiod \
                 parses (Istio's default `1.10-dev` reads as 1.10.65535)",
                istio.display(),
                detected.version,
                detected.source
            ),
        };
        let container = std::env::var("BUILD_WITH_CONTAINER").map_or(true, |v| v != "0");
        let macos_host = cfg!(target_os = "macos");
        let addr = args.addr.unwrap_or_else(|| {
            // The build container runs with --net=host: on Linux that is the host, so loopback
            // is enough; on Docker Desktop it is the VM, which reaches the host by name.
            let ip = if macos_host {
                [0, 0, 0, 0]
            } else {
                [127, 0, 0, 1]
            };
            SocketAddr::from((ip, 0))
        });
        let url_host = macos_host.then(|| "host.docker.internal".to_string());
        let base_url = match args.url_mode {
            UrlMode::Http => {
                let port = match addr.port() {
                    0 => PORT_PLACEHOLDER.to_string(),
                    p => p.to_string(),
                };
                let host = url_host.clone().unwrap_or_else(|| match addr.ip() {
                    ip if ip.is_unspecified() => "127.0.0.1".to_string(),
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                    ip => ip.to_string(),
                });
                format!("http://{host}:{port}")
            }
            UrlMode::File if container => format!("file:///work/{FILE_DIR}"),
            UrlMode::File => format!("file://{}/{FILE_DIR}", istio.display()),
        };
        let linux = args.linux.as_ref().map(|p| absolute(p)).transpose()?;
        let macos = args.macos.as_ref().map(|p| absolute(p)).transpose()?;
        let proxy_version = proxy_version(args, linux.as_deref())?;
        let sha = match &linux {
            Some(p) => crate::fsutil::sha256_file(p)?[..12].to_string(),
            None => SHA_PLACEHOLDER.to_string(),
        };
        let vars = MakeVars {
            envoy_version: format!("{proxy_version}-{sha}"),
            base_url,
            istio_version,
            hub: args.hub.clone(),
            tag: args.tag.clone(),
        };
        if container {
            env::check(&vars.pairs())?;
        }
        let retag = args
            .retag
            .iter()
            .map(|r| Reference::parse(r).with_context(|| format!("bad --retag {r}")))
            .collect::<Result<Vec<_>>>()?;
        Reference::parse(&vars.image())
            .with_context(|| format!("--hub and --tag give a bad image name {}", vars.image()))?;
        let mut targets = Vec::new();
        if linux.is_none() {
            targets.push(crate::targets::DEFAULT_TARGET.to_string());
            if macos_host && macos.is_none() {
                let arch = if cfg!(target_arch = "aarch64") {
                    "arm64"
                } else {
                    "amd64"
                };
                targets.push(format!("macos-{arch}"));
            }
        }
        let dist = absolute(&args.out)?;
        let mtime = crate::image::source_date_epoch()?.unwrap_or(0);
        Ok(Plan {
            detected,
            patch,
            patch_text,
            patch_state: check.describe(),
            targets,
            linux,
            macos,
            source: args.source.clone(),
            release_dir: dist.join("release"),
            log: match &args.log {
                Some(l) => absolute(l)?,
                None => dist.join("build-image.log"),
            },
            dist,
            url_mode: args.url_mode,
            addr,
            url_host,
            container,
            vars,
            retag,
            push: args.push,
            mtime,
            istio,
        })
    }

    /// `make clean`, with the same variables as the build (as the MOSN recipe does).
    pub fn make_clean(&self) -> Invocation {
        Invocation {
            dir: self.istio.clone(),
            args: vec!["clean".into()],
            env: self.vars.pairs(),
        }
    }

    /// `make docker.proxyv2 NAME=value…`: the variables both exported and on the command
    /// line, where they override Makefile.core.mk's `?=` defaults either way.
    pub fn make_proxy(&self) -> Invocation {
        let pairs = self.vars.pairs();
        let mut args = vec!["docker.proxyv2".to_string()];
        args.extend(pairs.iter().map(|(k, v)| format!("{k}={v}")));
        Invocation {
            dir: self.istio.clone(),
            args,
            env: pairs,
        }
    }

    /// The images to push: the built one, then the extra tags.
    pub fn pushes(&self) -> Vec<String> {
        std::iter::once(self.vars.image())
            .chain(self.retag.iter().map(Reference::familiar))
            .collect()
    }

    /// The plan as `--dry-run` prints it: steps, commands, variables.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let v = &self.detected;
        let _ = writeln!(
            s,
            "build-image plan for {} (Istio {} from {})",
            self.istio.display(),
            v.version,
            v.source
        );
        let mut n = 0;
        let mut step = |s: &mut String, what: &str, detail: String| {
            n += 1;
            let _ = writeln!(s, "{n:>3}. {what:<7} {detail}");
        };
        match &self.linux {
            Some(p) => step(&mut s, "build", format!("skipped: using {}", p.display())),
            None => step(
                &mut s,
                "build",
                format!(
                    "mosn for {} (cargo, release) into {}",
                    self.targets.join(", "),
                    self.dist.display()
                ),
            ),
        }
        step(
            &mut s,
            "pack",
            format!(
                "{}, {} (and {} when there is a macOS build) into {}",
                crate::pack::LINUX,
                crate::pack::CENTOS,
                crate::pack::MACOS,
                self.release_dir.display()
            ),
        );
        match self.url_mode {
            UrlMode::Http => step(
                &mut s,
                "serve",
                format!(
                    "{} on {} in-process until make ends (the build container uses --net=host)",
                    self.release_dir.display(),
                    self.addr
                ),
            ),
            UrlMode::File => step(
                &mut s,
                "copy",
                format!(
                    "the tarballs to {}/{FILE_DIR} (the build container mounts the checkout at /work)",
                    self.istio.display()
                ),
            ),
        }
        step(
            &mut s,
            "patch",
            format!("{} (checkout is {})", self.patch, self.patch_state),
        );
        step(&mut s, "run", self.make_clean().display());
        step(&mut s, "run", self.make_proxy().display());
        step(
            &mut s,
            "verify",
            format!(
                "{} has an executable {} (engine API)",
                self.vars.image(),
                super::engine::MOSN_PATH
            ),
        );
        for r in &self.retag {
            step(
                &mut s,
                "tag",
                format!("{} as {}", self.vars.image(), r.familiar()),
            );
        }
        if self.push {
            for p in self.pushes() {
                step(&mut s, "push", p);
            }
        }
        let _ = writeln!(s, "\nin {}, for both make runs:", self.istio.display());
        for (k, val) in self.vars.pairs() {
            let _ = writeln!(s, "  export {k}={}", make::shell_quote(&val));
        }
        let _ = writeln!(
            s,
            "\n{}",
            if self.container {
                "Istio's build container receives these through `--env-file <(env | grep -v $ENV_BLOCKLIST)`; none of them is blocked."
            } else {
                "BUILD_WITH_CONTAINER=0: make runs on this host, without Istio's build container."
            }
        );
        if self.vars.envoy_version.contains(SHA_PLACEHOLDER) {
            let _ = writeln!(
                s,
                "{SHA_PLACEHOLDER}: the first 12 hex digits of the built binary's sha256, so Istio's download cache never reuses an older binary."
            );
        }
        if self.vars.base_url.contains(PORT_PLACEHOLDER) {
            let _ = writeln!(
                s,
                "{PORT_PLACEHOLDER}: a free port chosen when the server starts."
            );
        }
        let _ = writeln!(s, "make output: the terminal and {}", self.log.display());
        let tools: Vec<String> = ["make", "docker"]
            .iter()
            .map(|t| match make::which(t) {
                Some(p) => format!("{t} ({})", p.display()),
                None => format!("{t} (MISSING)"),
            })
            .collect();
        let _ = writeln!(
            s,
            "tools: {}; the Docker engine is checked when the run starts",
            tools.join(", ")
        );
        s
    }
}

/// The proxy version for the tarball and `ISTIO_ENVOY_VERSION`: `--proxy-version`, else the
/// `build-info.json` that `mosnctl build` leaves beside a binary, else the proxy crate's.
fn proxy_version(args: &BuildImageArgs, linux: Option<&Path>) -> Result<String> {
    if let Some(v) = &args.proxy_version {
        return Ok(v.clone());
    }
    if let Some(info) = linux
        .and_then(|p| std::fs::read(p.with_file_name("build-info.json")).ok())
        .and_then(|b| serde_json::from_slice::<crate::build::BuildInfo>(&b).ok())
    {
        return Ok(info.version);
    }
    let source = match &args.source {
        Some(s) => s.clone(),
        None => crate::build::find_source()
            .context("cannot tell the proxy version\n\nhelp: pass --proxy-version with --linux")?,
    };
    crate::build::proxy_version(&source)
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("cannot resolve {}", p.display()))
}
