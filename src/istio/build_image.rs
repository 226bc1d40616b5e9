//! `mosnctl build-image`: the MOSN recipe for Istio's own image build in one command. Build
//! and pack the proxy, serve the tarballs, patch the checkout, `make clean` and
//! `make docker.proxyv2` with the variables Istio's build reads, then check the image through
//! the engine API, tag and push it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::diff::Direction;
use super::make::{self, Group};
use super::patch::{self, TreeState};
use super::plan::{Plan, FILE_DIR};
use crate::serve::Server;

/// How Istio's build container fetches the tarballs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UrlMode {
    /// An in-process HTTP server on a free port (Linux: loopback, which the build container
    /// reaches through --net=host; macOS: host.docker.internal).
    Http,
    /// file:// URLs to a copy under the checkout, which the build container mounts at /work:
    /// no server and no port, but relies on curl's file:// support in the build image.
    File,
}

/// `mosnctl build-image`.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildImageArgs {
    /// The istio/istio checkout (1.10.x; see `mosnctl patch-istio`).
    #[arg(long, value_name = "DIR")]
    pub istio: PathBuf,
    /// Image hub: the image is HUB/proxyv2:TAG.
    #[arg(long)]
    pub hub: String,
    /// Image tag.
    #[arg(long)]
    pub tag: String,
    /// Istio's VERSION, baked into the image as ISTIO_META_ISTIO_VERSION (default: the
    /// checkout's release, e.g. 1.10.6).
    #[arg(long, value_name = "X.Y.Z")]
    pub version: Option<String>,
    /// The checkout's Istio version (default: from its git tag, istio.deps or Makefile).
    #[arg(long, value_name = "X.Y.Z")]
    pub istio_version: Option<String>,
    /// Push HUB/proxyv2:TAG (and every --retag) with the credentials docker would use.
    #[arg(long)]
    pub push: bool,
    /// Also tag the image as REF (repeatable); pushed too with --push.
    #[arg(long, value_name = "REF")]
    pub retag: Vec<String>,
    /// Print the plan, every command and every variable, and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How Istio's build container fetches the tarballs.
    ///
    /// http (default): mosnctl serves them in-process on a free port while make runs. On
    /// Linux the build container runs with --net=host, so 127.0.0.1 reaches the server; on
    /// macOS (Docker Desktop, where "host" is the VM) the URLs use host.docker.internal.
    /// file: the tarballs are copied to DIR/.mosn-artifacts and fetched as
    /// file:///work/.mosn-artifacts/…, since the build container mounts the checkout at
    /// /work. No server or port is needed, but it relies on curl's file:// support inside
    /// Istio's build-tools image.
    #[arg(long, value_enum, default_value_t = UrlMode::Http, verbatim_doc_comment)]
    pub url_mode: UrlMode,
    /// Address for the HTTP server (default 127.0.0.1:0 on Linux, 0.0.0.0:0 on macOS).
    #[arg(long, value_name = "IP:PORT")]
    pub addr: Option<SocketAddr>,
    /// Build and pack output directory.
    #[arg(long, value_name = "DIR", default_value = "dist")]
    pub out: PathBuf,
    /// Use this Linux binary instead of building one.
    #[arg(long, value_name = "PATH")]
    pub linux: Option<PathBuf>,
    /// Use this macOS binary for mosn-macos.tar.gz.
    #[arg(long, value_name = "PATH")]
    pub macos: Option<PathBuf>,
    /// Proxy version for ISTIO_ENVOY_VERSION with --linux (default: its build-info.json).
    #[arg(long, value_name = "V")]
    pub proxy_version: Option<String>,
    /// The source tree holding proxy/ (default: found from the current directory).
    #[arg(long, value_name = "DIR")]
    pub source: Option<PathBuf>,
    /// Where make's output is logged (default: OUT/build-image.log).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
}

/// What an interrupt has to undo, shared with the interrupt handler.
#[derive(Default)]
struct Running {
    group: Group,
    server: tokio::sync::Mutex<Option<Server>>,
    step: Mutex<&'static str>,
}

impl Running {
    fn step(&self, s: &'static str) {
        *self.step.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }
}

/// `mosnctl build-image`.
pub fn run_build_image(args: BuildImageArgs) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(build_image(args))
}

/// The whole recipe; with `--dry-run`, only the plan.
pub async fn build_image(args: BuildImageArgs) -> Result<()> {
    let mut plan = Plan::new(&args)?;
    if args.dry_run {
        print!("{}", plan.render());
        return Ok(());
    }
    preflight().await?;
    std::fs::create_dir_all(&plan.dist)
        .with_context(|| format!("cannot create {}", plan.dist.display()))?;
    if let Some(dir) = plan.log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // A fresh log per run; each make invocation appends its command, environment and output.
    std::fs::write(
        &plan.log,
        format!("# mosnctl build-image for {}\n", plan.istio.display()),
    )
    .with_context(|| format!("cannot write the log {}", plan.log.display()))?;
    // `build` stops cargo on Ctrl-C itself; everything after it is stopped from here.
    let built = build(&plan).await?;
    let running = Running::default();
    // Containers created from here on are this run's (a second early, for clock rounding).
    let since = unix_now() - 1;
    let checkout = (plan.istio.clone(), plan.patch.clone(), plan.patch_text);
    let result = tokio::select! {
        r = steps(&mut plan, built, &running) => r,
        _ = crate::ui::interrupted() => Err(interrupted(&checkout, &running, since).await),
    };
    // On every path: the server goes, and file-mode copies leave the checkout.
    if let Some(server) = running.server.lock().await.take() {
        let _ = server.stop().await;
    }
    if plan.url_mode == UrlMode::File {
        let _ = std::fs::remove_dir_all(plan.istio.join(FILE_DIR));
    }
    result
}

/// A missing `make`, `docker` or engine is reported before any work starts.
async fn preflight() -> Result<()> {
    let mut missing = Vec::new();
    for tool in ["make", "docker"] {
        if make::which(tool).is_none() {
            missing.push(format!("  {tool}: not found on PATH"));
        }
    }
    if let Err(e) = crate::image::engine::connect().await {
        let cause = e.root_cause().to_string();
        missing.push(format!("  Docker engine: {cause}"));
    }
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "build-image needs these, and nothing was started:\n{}\n\n\
         help: Istio's make runs its build in a container through the docker CLI and the engine \
         builds the image: install make and docker, start dockerd (or set DOCKER_HOST); \
         `mosnctl overlay` needs neither",
        missing.join("\n")
    )
}

/// The binaries to pack: built now, or given.
struct Binaries {
    linux: PathBuf,
    macos: Option<PathBuf>,
    version: Option<String>,
}

async fn build(plan: &Plan) -> Result<Binaries> {
    if let Some(linux) = &plan.linux {
        return Ok(Binaries {
            linux: linux.clone(),
            macos: plan.macos.clone(),
            version: None,
        });
    }
    eprintln!("==> build: mosn for {}", plan.targets.join(", "));
    let built = crate::build::build(&crate::build::Args {
        targets: plan.targets.clone(),
        profile: crate::build::Profile::Release,
        out: plan.dist.clone(),
        min_glibc: crate::elf::GlibcVersion(2, 27),
        source: plan.source.clone(),
    })
    .await?;
    let find = |os: &str| {
        built
            .iter()
            .find(|b| b.info.target.starts_with(os) || b.info.triple.contains(os))
            .map(|b| b.path.clone())
    };
    Ok(Binaries {
        linux: find("linux").context("the build produced no Linux binary")?,
        macos: plan.macos.clone().or_else(|| find("darwin")),
        version: built.first().map(|b| b.info.version.clone()),
    })
}

async fn steps(plan: &mut Plan, bins: Binaries, running: &Running) -> Result<()> {
    running.step("pack");
    let release = crate::pack::pack(&crate::pack::Request {
        version: bins.version.clone().unwrap_or_else(|| {
            let v = &plan.vars.envoy_version;
            v.rsplit_once('-').map_or(v.clone(), |(a, _)| a.to_string())
        }),
        linux: bins.linux.clone(),
        macos: match &bins.macos {
            Some(p) => crate::pack::MacOs::Binary(p.clone()),
            None => crate::pack::MacOs::Skip,
        },
        out: plan.release_dir.clone(),
        mtime: plan.mtime,
    })?;
    eprintln!(
        "==> pack: {} (ISTIO_ENVOY_VERSION={})",
        plan.release_dir.display(),
        release.envoy_version
    );
    plan.vars.envoy_version = release.envoy_version.clone();

    running.step("serve");
    match plan.url_mode {
        UrlMode::Http => {
            let server = crate::serve::start(&plan.release_dir, plan.addr).await?;
            let host = plan.url_host.clone().unwrap_or_else(|| {
                server
                    .base_url()
                    .trim_start_matches("http://")
                    .rsplit_once(':')
                    .map(|(h, _)| h.to_string())
                    .unwrap_or_default()
            });
            plan.vars.base_url = format!("http://{host}:{}", server.addr.port());
            eprintln!(
                "==> serve: {} on {}",
                plan.release_dir.display(),
                server.addr
            );
            *running.server.lock().await = Some(server);
        }
        UrlMode::File => {
            let dir = plan.istio.join(FILE_DIR);
            for f in &release.files {
                crate::fsutil::copy_atomic(&plan.release_dir.join(&f.name), &dir.join(&f.name))?;
            }
            eprintln!("==> copy: tarballs to {}", dir.display());
        }
    }
    // The real values now; checked again, since the hash and port were placeholders.
    if plan.container {
        super::env::check(&plan.vars.pairs())?;
    }

    running.step("patch");
    let check = patch::check(&plan.istio, &plan.patch, plan.patch_text)?;
    check.ensure_matches()?;
    if check.state() == TreeState::Patched {
        eprintln!("==> patch: already applied ({})", plan.patch);
    } else {
        let changed = check.write(Direction::Apply)?;
        eprintln!("==> patch: {} ({} files)", plan.patch, changed.len());
    }

    running.step("make clean");
    make::run(&plan.make_clean(), &plan.log, "make clean", &running.group).await?;
    running.step("make docker.proxyv2");
    make::run(
        &plan.make_proxy(),
        &plan.log,
        "make docker.proxyv2 (Istio's build container)",
        &running.group,
    )
    .await?;
    if let Some(server) = running.server.lock().await.take() {
        server.stop().await?;
    }

    running.step("verify");
    let docker = crate::image::engine::connect().await?;
    let image = plan.vars.image();
    let v = super::engine::verify(&docker, &image).await?;
    eprintln!(
        "==> verify: {image} ({}) has {} (mode {:o}, {} bytes)",
        v.id,
        super::engine::MOSN_PATH,
        v.mode,
        v.size
    );
    for r in &plan.retag {
        running.step("tag");
        super::engine::retag(&docker, &image, r).await?;
        eprintln!("==> tag: {}", r.familiar());
    }
    if plan.push {
        running.step("push");
        for name in plan.pushes() {
            let r = crate::image::reference::Reference::parse(&name)?;
            let digest = super::engine::push(&docker, &r).await?;
            println!("{}@{digest}", r.familiar());
        }
    } else {
        println!("{image}");
    }
    Ok(())
}

/// Ctrl-C: stop make's whole process group and the server, then say where things stand.
async fn interrupted(
    (istio, name, text): &(PathBuf, String, &'static str),
    running: &Running,
    since: i64,
) -> anyhow::Error {
    let step = *running.step.lock().unwrap_or_else(|e| e.into_inner());
    let stopped_make = running.group.stop(Duration::from_secs(5)).await;
    let killed = if stopped_make {
        super::engine::kill_build_containers(since).await
    } else {
        Vec::new()
    };
    let server_note = match running.server.lock().await.take() {
        Some(server) => {
            let _ = server.stop().await;
            "; the file server was stopped"
        }
        None => "",
    };
    let state = patch::check(istio, name, text)
        .map(|c| c.describe())
        .unwrap_or_else(|e| format!("unreadable ({e})"));
    let make_note = match (stopped_make, killed.is_empty()) {
        (false, _) => "make was not running".to_string(),
        (true, true) => "make and everything it started (its process group) were stopped; \
             out/ may hold a partial build, which the next build-image removes with `make clean`"
            .to_string(),
        (true, false) => format!(
            "make and everything it started (its process group) were stopped, and the build \
             container(s) {} killed; out/ may hold a partial build, which the next build-image \
             removes with `make clean`",
            killed.join(", ")
        ),
    };
    anyhow::anyhow!(
        "interrupted during {step}: {make_note}{server_note}\n\n\
         the checkout {} is {state}\n\n\
         help: run build-image again to continue, or `mosnctl patch-istio --istio {} --revert` \
         to restore Istio's files",
        istio.display(),
        istio.display()
    )
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
