//! An xDS (ADS) control plane: replay an Envoy `/config_dump` to a proxy, or drive a proxy
//! from tests.
//!
//! - [`dump`] reads a config dump into typed resources, [`proto`] does the JSON <-> proto work;
//! - [`cache`] holds the versioned resources per type URL ([`Snapshot`] in, versions out);
//! - [`ads`] is the ADS gRPC service and [`sds`] the SDS one on the same listener, both driving
//!   [`sotw`] or [`delta`] per stream, with [`status`] publishing each stream's
//!   subscriptions and ACK/NACK state;
//! - [`server`] binds TCP or unix listeners and returns a [`ServerHandle`] to push updates;
//! - [`bootstrap`] writes an Envoy bootstrap that points a proxy at the server.
//!
//! In-process use (tests): start, push, wait for the client's ACK, push again.
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use envoy_types::pb::envoy::config::cluster::v3::Cluster;
//! use mosnctl::xds::{Cache, Server, Snapshot, CLUSTER};
//! use std::time::Duration;
//! let server = Server::start(&"127.0.0.1:0".parse()?, Cache::new()).await?;
//! let c = Cluster { name: "outbound|9080||reviews.default.svc.cluster.local".into(), ..Default::default() };
//! let v = server.update(Snapshot::new().with_messages([c]))?; // {CLUSTER: "1"}
//! // ... point the proxy at server.listen() ...
//! server
//!     .wait_for(Duration::from_secs(30), |streams| {
//!         streams.iter().any(|s| s.of(CLUSTER).acked_version.as_deref() == Some(v[CLUSTER].as_str()))
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

pub mod ads;
pub mod bootstrap;
pub mod cache;
pub mod delta;
pub mod dump;
pub mod proto;
pub mod sds;
pub mod server;
pub mod sotw;
pub mod status;
mod stream;

pub use cache::{Cache, Snapshot};
pub use dump::Dump;
pub use server::{Listen, Server, ServerHandle, ServerTls};
pub use status::{Protocol, StreamStatus, TypeStatus};

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// CDS resource type.
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// EDS resource type.
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// LDS resource type.
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// RDS resource type.
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// SDS resource type.
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// `control_plane.identifier` in every response.
pub const CONTROL_PLANE_ID: &str = "mosnctl-xds";

/// Types where an empty subscription means "everything" (legacy wildcard).
pub fn is_wildcard_type(type_url: &str) -> bool {
    type_url == CLUSTER || type_url == LISTENER
}

/// One ADS protocol (SotW or delta) on one stream, driven by [`ads`].
pub trait Handler {
    /// The client's message type.
    type Request: prost::Message + Default + Send + 'static;
    /// The server's message type.
    type Response: Send + 'static;
    /// Handle one client request against the current cache state.
    fn on_request(&mut self, req: Self::Request, state: &cache::State) -> Vec<Self::Response>;
    /// The cache changed: push what the client's subscriptions now need.
    fn on_change(&mut self, state: &cache::State) -> Vec<Self::Response>;
    /// The stream's observable state.
    fn status(&mut self) -> &mut StreamStatus;
}

/// `mosnctl xds`: replay an Envoy config dump to a proxy over ADS.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// `serve` or `bootstrap`.
    #[command(subcommand)]
    pub command: XdsCommand,
}

/// The `xds` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum XdsCommand {
    /// Serve the clusters, endpoints, listeners, routes and secrets of a config dump over
    /// ADS (state-of-the-world and delta, v3, on the same listener) until Ctrl-C/SIGTERM.
    Serve(ServeArgs),
    /// Write an Envoy v3 bootstrap (JSON) that points a proxy at `mosnctl xds serve`.
    Bootstrap(BootstrapArgs),
}

/// Arguments of `mosnctl xds serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// An Envoy admin /config_dump JSON (`?include_eds` to include endpoints).
    #[arg(long, value_name = "FILE")]
    pub config_dump: PathBuf,
    /// Where to listen: IP:PORT, or unix:PATH for a unix socket (Envoy `pipe`, like Istio's
    /// ./etc/istio/proxy/XDS). The socket file is removed on exit.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15010")]
    pub listen: String,
    /// Both SotW and delta ADS are always served. This only selects DELTA_GRPC (instead of
    /// GRPC) in the bootstrap written by --bootstrap and in the printed hint.
    #[arg(long)]
    pub delta: bool,
    /// Also write a bootstrap for the bound address to FILE (as `mosnctl xds bootstrap` would).
    #[arg(long, value_name = "FILE")]
    pub bootstrap: Option<PathBuf>,
    /// The admin address of the proxy in the bootstrap written by --bootstrap.
    #[arg(long, value_name = "ADDR", requires = "bootstrap")]
    pub admin: Option<std::net::SocketAddr>,
    /// Serve over TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this PEM CA (mutual TLS, as istiod on 15012).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
}

/// Arguments of `mosnctl xds bootstrap`.
#[derive(Debug, Clone, clap::Args)]
pub struct BootstrapArgs {
    /// The config dump whose node and static parts (admin, static listeners and clusters)
    /// the bootstrap keeps; without a bootstrap section a default sidecar node is used.
    #[arg(long, value_name = "FILE")]
    pub config_dump: PathBuf,
    /// The xDS server: IP:PORT, HOST:PORT (resolved by the proxy) or unix:PATH.
    #[arg(long, value_name = "ADDR")]
    pub xds: String,
    /// Use incremental xDS (ads_config.api_type DELTA_GRPC) instead of GRPC.
    #[arg(long)]
    pub delta: bool,
    /// The proxy's admin address (IP:PORT) instead of the dump's, or 127.0.0.1:15000 (where
    /// a local Envoy or pilot-agent may already listen).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<std::net::SocketAddr>,
    /// Reach the server over TLS, verifying it with this PEM CA bundle (the xDS cluster's
    /// UpstreamTlsContext trusted_ca).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// With --tls-ca: present this PEM client certificate chain (mutual TLS).
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// With --tls-ca: the server name to send and verify (default: the host of --xds).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub sni: Option<String>,
    /// Write to FILE (atomically) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Run `mosnctl xds …`.
pub fn run(args: Args) -> Result<()> {
    match args.command {
        XdsCommand::Serve(a) => run_serve(a),
        XdsCommand::Bootstrap(a) => run_bootstrap(a),
    }
}

fn load(path: &std::path::Path) -> Result<Dump> {
    let dump = Dump::from_file(path)?;
    for w in &dump.warnings {
        tracing::warn!("{w}");
    }
    let made = &dump.synthesized_clusters;
    if !made.is_empty() {
        let shown: Vec<&str> = made.iter().take(3).map(String::as_str).collect();
        let more = match made.len() - shown.len() {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        tracing::info!(
            "{} ClusterLoadAssignment(s) have no cluster in the dump; serving a minimal EDS \
             cluster (service_name = its cluster_name, endpoints over ADS) for each: {}{more}",
            made.len(),
            shown.join(", ")
        );
        tracing::debug!("made-up EDS clusters: {}", made.join(", "));
    }
    Ok(dump)
}

fn write_bootstrap(
    dump: &Dump,
    xds: &Listen,
    opts: &bootstrap::Options,
    out: Option<&std::path::Path>,
) -> Result<()> {
    let b = bootstrap::build_with(Some(dump), xds, opts)?;
    let mut text = serde_json::to_string_pretty(&b)?;
    text.push('\n');
    match out {
        Some(path) => crate::fsutil::write_atomic(path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display())),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

fn run_bootstrap(args: BootstrapArgs) -> Result<()> {
    let dump = load(&args.config_dump)?;
    let xds: Listen = args.xds.parse()?;
    let tls = args.tls_ca.map(|ca| bootstrap::ClientTls {
        ca,
        cert_key: args.tls_cert.zip(args.tls_key),
        sni: args.sni,
    });
    let opts = bootstrap::Options {
        delta: args.delta,
        admin: args.admin,
        tls,
    };
    write_bootstrap(&dump, &xds, &opts, args.out.as_deref())
}

fn run_serve(args: ServeArgs) -> Result<()> {
    let listen: Listen = args.listen.parse()?;
    let tls = args
        .tls_cert
        .clone()
        .zip(args.tls_key.clone())
        .map(|(cert, key)| ServerTls {
            cert,
            key,
            client_ca: args.client_ca.clone(),
        });
    if tls.is_some() && args.bootstrap.is_some() {
        bail!(
            "--bootstrap cannot know which CA the proxy should trust for --tls-cert\n\n\
             help: write it with `mosnctl xds bootstrap --xds ADDR --tls-ca CA.pem \
             [--tls-cert CLIENT.pem --tls-key CLIENT.key] [--sni NAME]`"
        );
    }
    let dump = load(&args.config_dump)?;
    let cache = Cache::with_snapshot(dump.snapshot())?;
    tracing::info!(
        clusters = dump.count(CLUSTER),
        endpoints = dump.count(ENDPOINT),
        listeners = dump.count(LISTENER),
        routes = dump.count(ROUTE),
        secrets = dump.count(SECRET),
        "loaded {}",
        args.config_dump.display()
    );
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        // Poll the signal future once so SIGTERM/Ctrl-C handlers exist before the socket
        // does: a supervisor may stop us as soon as it sees the socket.
        let mut stop = Box::pin(crate::ui::interrupted());
        tokio::select! {
            biased;
            _ = &mut stop => return Ok(()),
            _ = std::future::ready(()) => {}
        }
        let server = Server::start_with_tls(&listen, cache, tls.as_ref()).await?;
        let bound = server.listen().clone();
        if let Some(path) = &args.bootstrap {
            let opts = bootstrap::Options {
                delta: args.delta,
                admin: args.admin,
                tls: None,
            };
            write_bootstrap(&dump, &bound, &opts, Some(path))?;
            tracing::info!("wrote bootstrap {}", path.display());
        }
        let delta = if args.delta { " --delta" } else { "" };
        let tls_hint = match (&tls, &args.client_ca) {
            (None, _) => "",
            (Some(_), None) => " --tls-ca CA.pem",
            (Some(_), Some(_)) => " --tls-ca CA.pem --tls-cert CLIENT.pem --tls-key CLIENT.key",
        };
        eprintln!(
            "Serving ADS on {bound}; point a proxy at it with:\n  mosnctl xds bootstrap --config-dump {} --xds {bound}{delta}{tls_hint} --out bootstrap.json\nPress Ctrl-C to stop.",
            args.config_dump.display()
        );
        server.run_until(stop).await?;
        tracing::info!("xDS server stopped");
        Ok(())
    })
}
