//! `mosnctl serve-artifacts`: an embedded axum + tower-http file server for the packed
//! tarballs, so that Istio's `bin/init.sh` can `curl -fLSs URL | tar xz` them.
//!
//! [`start`] runs the server in the caller's runtime and hands back its address, so that
//! `build-image` can serve in-process on a free port; `run` is the foreground command.

mod files;
mod index;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::Router;

use crate::pack::{self, Release};

/// `mosnctl serve-artifacts`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Directory to serve (what `mosnctl pack` wrote).
    #[arg(long, value_name = "DIR", default_value = "dist/release")]
    pub dir: PathBuf,
    /// Address to listen on. Port 0 picks a free port.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
}

/// `mosnctl artifacts`: build, pack and serve.
#[derive(Debug, Clone, clap::Args)]
pub struct ArtifactsArgs {
    #[command(flatten)]
    pub build: crate::build::Args,
    /// Address to serve on.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// When there is no macOS build, pack the Linux binary as mosn-macos.tar.gz.
    #[arg(long)]
    pub macos_from_linux: bool,
}

/// A running file server.
pub struct Server {
    /// The address it listens on (the real port when 0 was asked for).
    pub addr: SocketAddr,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// The base URL clients use; an unspecified bind address is reached through loopback.
    pub fn base_url(&self) -> String {
        let host = if self.addr.ip().is_unspecified() {
            SocketAddr::new([127, 0, 0, 1].into(), self.addr.port())
        } else {
            self.addr
        };
        format!("http://{host}")
    }

    /// Stop accepting, let requests in flight finish, and wait for the server to end.
    pub async fn stop(self) -> Result<()> {
        let _ = self.shutdown.send(());
        self.task.await.context("the file server task failed")??;
        Ok(())
    }
}

/// Start serving `dir` on `addr` in the current tokio runtime.
pub async fn start(dir: &Path, addr: SocketAddr) -> Result<Server> {
    let root = std::fs::canonicalize(dir).with_context(|| {
        format!(
            "cannot serve {}: no such directory\n\nhelp: run `mosnctl pack` first, or pass --dir DIR",
            dir.display()
        )
    })?;
    if !root.is_dir() {
        bail!("cannot serve {}: not a directory", dir.display());
    }
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "cannot listen on {addr}: the address is already in use\n\n\
                 help: stop the program using port {}, or pass another --addr (port 0 picks a free one)",
                addr.port()
            )
        } else {
            anyhow::Error::new(e).context(format!("cannot listen on {addr}"))
        }
    })?;
    let addr = listener.local_addr()?;
    let app = router(root);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = rx.await;
        })
        .await
    });
    Ok(Server {
        addr,
        shutdown: tx,
        task,
    })
}

/// The axum app serving the canonical directory `root`.
pub fn router(root: PathBuf) -> Router {
    let state = Arc::new(files::State::new(root));
    Router::new()
        .route("/", axum::routing::get(index::index))
        .fallback(files::serve_file)
        .with_state(state)
        .layer(axum::middleware::from_fn(files::access_log))
}

/// The `export` lines the Istio recipe needs, for a server at `base_url` serving `dir`.
pub fn export_lines(base_url: &str, dir: &Path) -> Vec<String> {
    let release = Release::load(dir);
    let mut lines = vec!["export SIDECAR=mosn".to_string()];
    match &release {
        Some(r) => lines.push(format!("export ISTIO_ENVOY_VERSION={}", r.envoy_version)),
        None => lines.push(format!(
            "# no {} in {}: set ISTIO_ENVOY_VERSION to a value unique to this binary",
            pack::RELEASE_JSON,
            dir.display()
        )),
    }
    lines.push(format!(
        "export ISTIO_ENVOY_RELEASE_URL={base_url}/{}",
        pack::LINUX
    ));
    lines.push(format!(
        "export ISTIO_ENVOY_CENTOS_RELEASE_URL={base_url}/{}",
        pack::CENTOS
    ));
    let mac = format!("ISTIO_ENVOY_MACOS_RELEASE_URL={base_url}/{}", pack::MACOS);
    if dir.join(pack::MACOS).is_file() {
        lines.push(format!("export {mac}"));
    } else {
        lines.push(format!(
            "# not packed, so not exported (only macOS hosts fetch it): {mac}"
        ));
    }
    if let Some(r) = &release {
        lines.push(format!(
            "export ISTIO_ENVOY_MACOS_RELEASE_NAME=mosn-{}",
            r.envoy_version
        ));
    }
    lines
}

/// `mosnctl serve-artifacts`: serve until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(serve_foreground(&args.dir, args.addr))
}

async fn serve_foreground(dir: &Path, addr: SocketAddr) -> Result<()> {
    let server = start(dir, addr).await?;
    let base = server.base_url();
    tracing::info!("serving {} on {base}/ (Ctrl-C to stop)", dir.display());
    for line in export_lines(&base, dir) {
        println!("{line}");
    }
    crate::ui::interrupted().await;
    tracing::info!("shutting down; waiting for downloads in flight");
    server.stop().await
}

/// `mosnctl artifacts`: build the proxy, pack it, then serve the tarballs.
pub fn run_artifacts(args: ArtifactsArgs) -> Result<()> {
    let built = crate::build::run(args.build.clone())?;
    let version = built.first().map(|b| b.info.version.clone());
    let out = args.build.out.join("release");
    pack::run(pack::Args {
        dist: args.build.out.clone(),
        version,
        linux_target: args
            .build
            .targets
            .iter()
            .find(|t| t.starts_with("linux-") || t.contains("-linux-"))
            .cloned()
            .unwrap_or_else(|| crate::targets::DEFAULT_TARGET.into()),
        linux: None,
        macos: None,
        macos_from_linux: args.macos_from_linux,
        out: out.clone(),
        source_date_epoch: std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|v| v.parse().ok()),
    })?;
    run(Args {
        dir: out,
        addr: args.addr,
    })
}
