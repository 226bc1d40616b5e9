//! Binding, running and stopping the ADS server, in-process or from the CLI.
//!
//! SotW and delta are two methods of the same gRPC service, so one listener serves both;
//! the SecretDiscoveryService (see [`super::sds`]) shares it too.

use super::ads::Ads;
use super::cache::{Cache, Snapshot};
use super::status::{Board, StreamStatus};
use anyhow::{bail, Context, Result};
use envoy_types::pb::google::protobuf::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_stream::StreamExt;

/// Where the server listens (or, for a bootstrap, where the proxy connects).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// `HOST:PORT`; an IP literal to listen on, any host name for a bootstrap.
    Tcp(String),
    /// `unix:PATH`, a unix socket (Envoy's `pipe`), absolute or relative to the cwd.
    Unix(PathBuf),
}

impl FromStr for Listen {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        if let Some(path) = s.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                bail!("`{s}` names no socket path\n\nhelp: use unix:PATH, e.g. unix:./etc/istio/proxy/XDS");
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Listen::Tcp(s.to_string()))
            }
            _ => bail!(
                "`{s}` is not an xDS address\n\n\
                 help: use HOST:PORT (e.g. 127.0.0.1:15010) or unix:PATH (e.g. unix:./etc/istio/proxy/XDS)"
            ),
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(a) => f.write_str(a),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The ADS server. Start it with [`Server::start`]; everything else is on the handle.
#[derive(Debug)]
pub struct Server;

/// TLS for the server: its certificate chain and key, and optionally a CA that client
/// certificates must chain to (mutual TLS). PEM files.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// Require client certificates signed by this CA.
    pub client_ca: Option<PathBuf>,
}

impl ServerTls {
    fn config(&self) -> Result<tonic::transport::ServerTlsConfig> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let read = |p: &Path, what: &str, block: &str| -> Result<Vec<u8>> {
            let data = std::fs::read(p)
                .with_context(|| format!("cannot read the {what} {}", p.display()))?;
            if !String::from_utf8_lossy(&data).lines().any(|l| {
                l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{block}-----"))
            }) {
                bail!(
                    "{} holds no PEM {block}\n\nhelp: the {what} must contain a `-----BEGIN …{block}-----` block",
                    p.display()
                );
            }
            Ok(data)
        };
        let cert = read(&self.cert, "server certificate (--tls-cert)", "CERTIFICATE")?;
        let key = read(&self.key, "server key (--tls-key)", "PRIVATE KEY")?;
        let mut cfg = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = &self.client_ca {
            let ca = read(ca, "client CA (--client-ca)", "CERTIFICATE")?;
            cfg = cfg.client_ca_root(Certificate::from_pem(ca));
        }
        Ok(cfg)
    }
}

impl Server {
    /// Bind `listen` and serve `cache` over ADS and SDS (SotW and delta) until the handle's
    /// [`ServerHandle::shutdown`] or drop. TCP port 0 picks a free port (see
    /// [`ServerHandle::listen`]). A stale unix socket file is replaced; a live one is an error.
    pub async fn start(listen: &Listen, cache: Cache) -> Result<ServerHandle> {
        Self::start_with_tls(listen, cache, None).await
    }

    /// [`Server::start`], over TLS (ALPN h2) when `tls` is given.
    pub async fn start_with_tls(
        listen: &Listen,
        cache: Cache,
        tls: Option<&ServerTls>,
    ) -> Result<ServerHandle> {
        let board = Board::default();
        let (stop_tx, stop_rx) = watch::channel(false);
        let ads = Ads::new(cache.clone(), board.clone(), stop_rx.clone());
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            // The key is read here and handed to rustls; errors name files, never contents.
            builder = builder.tls_config(tls.config()?).map_err(|e| {
                anyhow::anyhow!("cannot use the TLS certificate and key: {e}\n\nhelp: --tls-key must be the key of --tls-cert's first certificate")
            })?;
        }
        let router = builder
            .add_service(ads.clone().into_service())
            .add_service(ads.into_sds_service());
        let mut signal = stop_rx;
        let shutdown = async move {
            let _ = signal.wait_for(|stop| *stop).await;
        };
        let (bound, socket, task) = match listen {
            Listen::Tcp(addr) => {
                let sa: SocketAddr = addr.parse().with_context(|| {
                    format!("cannot listen on `{addr}`: not an IP address and port\n\nhelp: use e.g. 127.0.0.1:15010")
                })?;
                let listener = tokio::net::TcpListener::bind(sa)
                    .await
                    .with_context(|| format!("cannot listen on {sa}"))?;
                let local = listener.local_addr()?;
                // Small xDS messages go out at once rather than waiting for Nagle.
                let incoming = TcpListenerStream::new(listener).map(|s| {
                    s.inspect(|s| {
                        let _ = s.set_nodelay(true);
                    })
                });
                let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown));
                (Listen::Tcp(local.to_string()), None, task)
            }
            Listen::Unix(path) => {
                let listener = bind_unix(path).await?;
                let incoming = UnixListenerStream::new(listener);
                let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown));
                (Listen::Unix(path.clone()), Some(path.clone()), task)
            }
        };
        let over = if tls.is_some() { ", TLS" } else { "" };
        tracing::info!(listen = %bound, "xDS server listening (ADS and SDS, SotW and delta{over})");
        Ok(ServerHandle {
            listen: bound,
            cache,
            board,
            stop: stop_tx,
            task: Some(task),
            socket,
        })
    }
}

/// Bind a unix socket, creating parent directories and replacing a stale socket file.
async fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket\n\nhelp: remove it or choose another unix:PATH",
                path.display()
            );
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!(
                "another server is listening on {}\n\nhelp: stop it or choose another unix:PATH",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    tokio::net::UnixListener::bind(path).with_context(|| {
        format!(
            "cannot listen on unix socket {}\n\nhelp: socket paths must be shorter than 108 bytes",
            path.display()
        )
    })
}

/// A running server: push resources, observe streams, stop it. Dropping it stops the server
/// too (without waiting) and removes the unix socket.
#[derive(Debug)]
pub struct ServerHandle {
    listen: Listen,
    cache: Cache,
    board: Board,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    socket: Option<PathBuf>,
}

impl ServerHandle {
    /// The bound address (with the real port when started on port 0).
    pub fn listen(&self) -> &Listen {
        &self.listen
    }

    /// The cache being served; clone it to push from elsewhere.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Replace all resources of `type_url` and push them to its subscribers. Returns the
    /// type's version, unchanged (and nothing pushed) when the resources are identical.
    pub fn set_resources(&self, type_url: &str, resources: Vec<Any>) -> Result<String> {
        self.cache.set_resources(type_url, resources)
    }

    /// Apply every type in `snapshot` atomically; returns the resulting version per type.
    pub fn update(&self, snapshot: Snapshot) -> Result<BTreeMap<String, String>> {
        self.cache.update(snapshot)
    }

    /// Current state of every stream (closed ones included, most recent 64).
    pub fn streams(&self) -> Vec<StreamStatus> {
        self.board.streams()
    }

    /// Wait until `pred` holds for the stream list, or fail after `timeout` with the state.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl FnMut(&[StreamStatus]) -> bool,
    ) -> Result<Vec<StreamStatus>> {
        self.board.wait_for(timeout, pred).await
    }

    /// Stop accepting, end every stream, wait for the server (at most 10 s), remove the socket.
    pub async fn shutdown(mut self) -> Result<()> {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            match tokio::time::timeout(Duration::from_secs(10), task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => return Err(e).context("the xDS server failed"),
                Ok(Err(e)) => return Err(e).context("the xDS server task panicked"),
                Err(_) => tracing::warn!("xDS server did not stop within 10 s"),
            }
        }
        Ok(())
    }

    /// Wait until the server ends on its own (it only does on error) or `signal` completes,
    /// then shut down. This is what `mosnctl xds serve` runs.
    pub async fn run_until(mut self, signal: impl std::future::Future<Output = ()>) -> Result<()> {
        let mut task = self.task.take().expect("running server");
        tokio::select! {
            res = &mut task => {
                return match res {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e).context("the xDS server failed"),
                    Err(e) => Err(e).context("the xDS server task panicked"),
                };
            }
            _ = signal => {}
        }
        self.task = Some(task);
        self.shutdown().await
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        let unix: Listen = "unix:./etc/istio/proxy/XDS".parse().unwrap();
        assert_eq!(unix, Listen::Unix("./etc/istio/proxy/XDS".into()));
        assert_eq!(unix.to_string(), "unix:./etc/istio/proxy/XDS");
        let abs: Listen = "unix:///run/xds.sock".parse().unwrap();
        assert_eq!(abs, Listen::Unix("/run/xds.sock".into()));
        let tcp: Listen = "istiod.istio-system.svc:15012".parse().unwrap();
        assert_eq!(tcp, Listen::Tcp("istiod.istio-system.svc:15012".into()));
        for bad in ["unix:", "15010", "host:port", ":15010"] {
            let err = bad.parse::<Listen>().unwrap_err().to_string();
            assert!(err.contains("help:"), "{bad}: {err}");
        }
    }
}
