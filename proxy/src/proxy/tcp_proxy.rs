//! The `envoy.filters.network.tcp_proxy` network filter: pick a cluster (or one of weighted
//! clusters), connect to a host of it (the original destination for ORIGINAL_DST clusters such
//! as Istio's PassthroughCluster), and copy bytes both ways with half-close and an idle timeout.
//! A cluster without hosts (Istio's BlackHoleCluster) closes the connection.

use super::istio::tcp::{Opened, TcpReport};
use super::istio::tcp_mx;
use crate::cluster::connector::UpIo;
use crate::cluster::host::Host;
use crate::cluster::Cluster;
use crate::config::{decode, Snapshot};
use crate::lb::LbContext;
use crate::stats::{Stat, Stats};
use crate::tls::context::PEER_EXCHANGE;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tpb;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A compiled tcp_proxy.
#[derive(Debug)]
pub struct TcpProxyConfig {
    /// `stat_prefix` (`tcp.<prefix>.*`).
    pub stat_prefix: String,
    /// Clusters with weights (a single `cluster` has weight 1).
    pub clusters: Vec<(String, u32)>,
    total_weight: u64,
    /// `idle_timeout`: 1 h by default, 0 disables.
    pub idle_timeout: Option<Duration>,
    /// `max_connect_attempts` (default 1).
    pub max_connect_attempts: u32,
    /// `access_log`: one line per connection when it ends.
    pub access_logs: Vec<Arc<super::access_log::AccessLogger>>,
    /// Istio's stats filter ahead of it in the chain: `istio_tcp_*` per connection.
    pub istio: Option<super::istio::tcp::TcpIstio>,
    stats: OnceLock<TcpStats>,
}

#[derive(Debug)]
struct TcpStats {
    cx_total: Arc<Stat>,
    no_route: Arc<Stat>,
    idle_timeout: Arc<Stat>,
    rx_bytes: Arc<Stat>,
    tx_bytes: Arc<Stat>,
    connect_attempts_exceeded: Arc<Stat>,
}

impl TcpProxyConfig {
    /// Decode and compile from a typed config.
    pub fn from_any(any: &envoy_types::pb::google::protobuf::Any) -> Result<Self, String> {
        let t: tpb::TcpProxy = decode::unpack(any)?;
        use tpb::tcp_proxy::ClusterSpecifier as C;
        let clusters: Vec<(String, u32)> = match &t.cluster_specifier {
            Some(C::Cluster(c)) => vec![(c.clone(), 1)],
            Some(C::WeightedClusters(w)) => w
                .clusters
                .iter()
                .filter(|c| c.weight > 0)
                .map(|c| (c.name.clone(), c.weight))
                .collect(),
            None => return Err("tcp_proxy needs cluster or weighted_clusters".into()),
        };
        if clusters.is_empty() || clusters.iter().any(|c| c.0.is_empty()) {
            return Err("tcp_proxy has no cluster with a name and a weight above 0".into());
        }
        if t.tunneling_config.is_some() {
            return Err("tcp_proxy tunneling_config is not supported".into());
        }
        Ok(TcpProxyConfig {
            stat_prefix: t.stat_prefix.clone(),
            total_weight: clusters.iter().map(|c| c.1 as u64).sum(),
            clusters,
            idle_timeout: match &t.idle_timeout {
                Some(d) => Some(crate::config::duration(d)).filter(|d| !d.is_zero()),
                None => Some(Duration::from_secs(3600)),
            },
            max_connect_attempts: t.max_connect_attempts.map(|v| v.value).unwrap_or(1).max(1),
            access_logs: super::access_log::compile(&t.access_log)?,
            istio: None,
            stats: OnceLock::new(),
        })
    }

    fn stats(&self, store: &Arc<Stats>) -> &TcpStats {
        self.stats.get_or_init(|| {
            let c = |s: &str| store.counter(&format!("tcp.{}.{s}", self.stat_prefix));
            TcpStats {
                cx_total: c("downstream_cx_total"),
                no_route: c("downstream_cx_no_route"),
                idle_timeout: c("idle_timeout"),
                rx_bytes: c("downstream_cx_rx_bytes_total"),
                tx_bytes: c("downstream_cx_tx_bytes_total"),
                connect_attempts_exceeded: c("upstream_cx_connect_attempts_exceeded"),
            }
        })
    }

    fn pick_cluster(&self) -> &str {
        if self.clusters.len() == 1 {
            return &self.clusters[0].0;
        }
        let mut r = fastrand::u64(0..self.total_weight);
        for (name, w) in &self.clusters {
            if r < *w as u64 {
                return name;
            }
            r -= *w as u64;
        }
        &self.clusters[0].0
    }
}

/// The downstream side of a proxied connection.
#[derive(Debug, Clone, Copy)]
pub struct Downstream<'a> {
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// The socket's peer: `peer`, unless a PROXY header named another client.
    pub direct_peer: Option<SocketAddr>,
    /// The address it connected to (the original destination when redirected).
    pub original_dst: SocketAddr,
    /// Its TLS peer, when the chain terminates TLS.
    pub tls: Option<&'a crate::tls::Peer>,
}

/// Serve one downstream connection, given as its read and write halves (a TCP socket's, or
/// those of TLS over one) and what Istio's metadata exchange with the client left (nothing
/// when it did not run), until both directions have closed or it idles out.
pub async fn serve<R, W>(
    down: ((R, W), tcp_mx::Exchanged),
    from: Downstream<'_>,
    cfg: &TcpProxyConfig,
    snap: &Snapshot,
    store: &crate::config::ConfigStore,
    stats: &Arc<Stats>,
    drained: impl std::future::Future<Output = ()>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let started = (SystemTime::now(), Instant::now());
    let mut log = Outcome::default();
    proxy(down, from, cfg, (snap, store), stats, drained, &mut log).await;
    if let Some(istio) = &cfg.istio {
        // A connection that never reached an upstream is counted as opened at its end.
        let report = match log.istio.take() {
            Some(r) => r,
            None => {
                let flags = log.flags.join(",");
                let opened = Opened {
                    cluster: log.cluster.as_deref(),
                    flags: &flags,
                    ..log.names(from, istio.cfg.inbound())
                };
                istio.open(store, opened)
            }
        };
        report.close(log.tx, log.rx);
    }
    log.write(cfg, from, (Some(started.0), started.1), Refused::Unstated);
}

/// Why mosn closed a connection before it proxied it, as the connection's log line says.
#[derive(Clone, Copy, Debug)]
pub enum Refused<'a> {
    /// Nothing to add to the line: a connection that was proxied (`serve` writes its line
    /// with this too), or one whose metadata exchange was cut short.
    Unstated,
    /// `%CONNECTION_TERMINATION_DETAILS%`: a network RBAC denial, a handshake that timed out.
    Terminated(&'a str),
    /// `%DOWNSTREAM_TRANSPORT_FAILURE_REASON%`: the TLS handshake failed.
    Transport(&'a str),
}

/// Envoy's `%CONNECTION_TERMINATION_DETAILS%` for a handshake that did not finish in time.
pub const HANDSHAKE_TIMEOUT: &str = "transport socket timeout was reached";

/// A connection closed before it was proxied (failed TLS, denied by RBAC), accepted at
/// `since`: Istio's count of it (opened and closed, no bytes) and its access-log line, as
/// Envoy's tcp_proxy writes one for every connection of its chain.
pub fn count_refused(
    cfg: &TcpProxyConfig,
    store: &crate::config::ConfigStore,
    from: Downstream<'_>,
    client: Option<&super::istio::peer::Workload>,
    (since, why): (Instant, Refused<'_>),
) {
    if let Some(istio) = &cfg.istio {
        let log = Outcome::default();
        let inbound = istio.cfg.inbound();
        let opened = Opened {
            peer: client.filter(|_| inbound),
            ..log.names(from, inbound)
        };
        istio.open(store, opened).close(0, 0);
    }
    let start = SystemTime::now().checked_sub(since.elapsed());
    Outcome::default().write(cfg, from, (start, since), why);
}

/// What a proxied connection did, for the access log and Istio's stats.
#[derive(Debug, Default)]
struct Outcome {
    flags: Vec<&'static str>,
    host: Option<SocketAddr>,
    cluster: Option<String>,
    rx: u64,
    tx: u64,
    /// The upstream connection's local address and TLS names.
    up: Option<Arc<crate::cluster::conn_info::ConnInfo>>,
    /// The last host tried: its `istio.workload` metadata names the peer.
    endpoint: Option<Arc<str>>,
    /// Istio's report, once the connection reached an upstream.
    istio: Option<TcpReport>,
}

impl Outcome {
    /// The connection's line in each of the chain's access logs; `started` is when it was
    /// accepted (wall clock and monotonic), `why` why mosn closed it unproxied.
    fn write(
        &self,
        cfg: &TcpProxyConfig,
        from: Downstream<'_>,
        started: (Option<SystemTime>, Instant),
        why: Refused<'_>,
    ) {
        if cfg.access_logs.is_empty() {
            return;
        }
        let (termination, transport) = match why {
            Refused::Unstated => (None, None),
            Refused::Terminated(t) => (Some(t), None),
            Refused::Transport(t) => (None, Some(t)),
        };
        let flags = self.flags.join(",");
        let entry = super::access_log::Entry {
            start: started.0,
            duration: Some(started.1.elapsed()),
            status: 0,
            flags: &flags,
            bytes_received: self.rx,
            bytes_sent: self.tx,
            upstream_host: self.host,
            upstream_cluster: self.cluster.as_deref(),
            downstream_local: Some(from.original_dst),
            downstream_remote: from.peer,
            downstream_direct_remote: from.direct_peer,
            tcp: true,
            downstream_tls: from.tls,
            upstream_tls: self.up.as_ref().and_then(|u| u.tls.as_ref()),
            upstream_local: self.up.as_ref().and_then(|u| u.local),
            termination,
            downstream_transport_failure: transport,
            ..Default::default()
        };
        for l in &cfg.access_logs {
            l.log(&entry);
        }
    }

    /// The principals, as Istio picks them by reporter: inbound the downstream TLS peer's and
    /// this side's certificate names, otherwise the upstream connection's; and the endpoint.
    fn names<'a>(&'a self, from: Downstream<'a>, inbound: bool) -> Opened<'a> {
        let principals = match (inbound, from.tls) {
            (true, Some(t)) => (
                t.sans.uri.first().map_or("", String::as_str),
                t.local_uri.as_deref().unwrap_or_default(),
            ),
            (true, None) => ("", ""),
            (false, _) => self
                .up
                .as_ref()
                .and_then(|u| u.tls.as_ref())
                .map_or(("", ""), |t| (t.local.as_str(), t.peer.as_str())),
        };
        Opened {
            principals,
            endpoint: self.endpoint.as_deref(),
            ..Default::default()
        }
    }
}

async fn proxy<R, W>(
    (down, from_down): ((R, W), tcp_mx::Exchanged),
    from: Downstream<'_>,
    cfg: &TcpProxyConfig,
    (snap, store): (&Snapshot, &crate::config::ConfigStore),
    stats: &Arc<Stats>,
    drained: impl std::future::Future<Output = ()>,
    log: &mut Outcome,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (peer, original_dst) = (from.peer, from.original_dst);
    let secrets = &store.secrets;
    let st = cfg.stats(stats);
    st.cx_total.inc();
    let name = cfg.pick_cluster();
    log.cluster = Some(name.to_string());
    let Some(cluster) = snap.clusters.get(name) else {
        log.flags.push("NC");
        st.no_route.inc();
        tracing::debug!(cluster = %name, "tcp_proxy: unknown cluster; closing");
        return;
    };
    let mut up = None;
    for _ in 0..cfg.max_connect_attempts {
        let Some((addr, host)) = pick_host(cluster, original_dst) else {
            cluster.stats.cx_none_healthy.inc();
            log.flags.push("UH");
            tracing::debug!(cluster = %name, "tcp_proxy: no host; closing");
            return;
        };
        log.host = Some(addr);
        if cfg.istio.is_some() {
            log.endpoint = host.as_ref().and_then(|h| h.istio_workload.clone());
        }
        // Istio's outbound TCP to a sidecar'd service goes over mTLS, ALPN as configured
        // (`istio-peer-exchange, istio`); the first only where the cluster runs Istio's
        // metadata exchange, since that ALPN makes the server expect it.
        let alpn = match cluster
            .proto
            .filters
            .iter()
            .any(|f| f.name == tcp_mx::FILTER)
        {
            true => crate::tls::Alpn::PeerExchange,
            false => crate::tls::Alpn::Configured,
        };
        // As Envoy's TCP proxy, an upstream PROXY header names the client and the address
        // it dialled.
        let downstream = peer.map(|p| (p, original_dst));
        let tls = match cluster
            .transport
            .dial(host.as_deref(), secrets, alpn, None, downstream)
        {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(cluster = %name, %addr, "tcp_proxy: upstream TLS not ready: {e}");
                continue;
            }
        };
        match cluster.connector.connect(addr, tls.as_deref()).await {
            Ok(s) => {
                log.up = Some(s.info().clone());
                up = Some(s);
                break;
            }
            Err(e) => tracing::debug!(cluster = %name, %addr, "tcp_proxy: {e}"),
        }
    }
    let Some(up) = up else {
        log.flags.push("UF");
        st.connect_attempts_exceeded.inc();
        return;
    };
    let (dr, dw) = down;
    let mut up = up;
    // Istio's TCP metadata exchange, where the agreed ALPN says it runs: with the client
    // (done by the listener, ahead of RBAC: `from_down`) and with the server (clusters that
    // have the filter). The connection's wire bytes count the frames (Envoy's
    // `downstream_cx_*_bytes`); the tcp_proxy's (Istio's byte counts, the access log) do
    // not, since Envoy's exchange filter takes them off before the tcp_proxy sees the data.
    st.rx_bytes.add(from_down.consumed as u64);
    st.tx_bytes.add(from_down.sent as u64);
    let local = store.istio_local();
    let mut from_up = tcp_mx::Exchanged::default();
    if let UpIo::Tls(t) = up.stream_mut() {
        if t.get_ref().1.alpn_protocol() == Some(PEER_EXCHANGE.as_bytes()) {
            let (mut r, mut w) = tokio::io::split(t.as_mut());
            from_up = tcp_mx::exchange(&mut r, &mut w, local, tcp_mx::WAIT).await;
        }
    }
    if from_down.broken || from_up.broken {
        // A frame that started but never ended: what follows cannot be told from it.
        tracing::debug!(cluster = %name, "tcp_proxy: Istio metadata exchange frame cut short; closing");
        return;
    }
    if let Some(istio) = &cfg.istio {
        let inbound = istio.cfg.inbound();
        let peer = match inbound {
            true => from_down.peer.as_ref(),
            false => from_up.peer.as_ref(),
        };
        let opened = Opened {
            cluster: Some(name),
            peer,
            ..log.names(from, inbound)
        };
        let report = istio.open(store, opened);
        log.istio = Some(report);
    }
    let (rx, tx) = (AtomicU64::new(0), AtomicU64::new(0));
    let (down_rest, up_rest) = (from_down.rest, from_up.rest);
    let last = AtomicU64::new(0);
    let start = Instant::now();
    let touch = || last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    let both = async {
        // A plain socket splits by borrow; TLS needs tokio's split (a lock per poll).
        match up.stream_mut() {
            UpIo::Plain(s) => {
                let (ur, uw) = s.split();
                tokio::join!(
                    pipe((dr, down_rest), uw, &st.rx_bytes, &rx, &touch),
                    pipe((ur, up_rest), dw, &st.tx_bytes, &tx, &touch)
                );
            }
            UpIo::Tls(t) => {
                let (ur, uw) = tokio::io::split(t.as_mut());
                tokio::join!(
                    pipe((dr, down_rest), uw, &st.rx_bytes, &rx, &touch),
                    pipe((ur, up_rest), dw, &st.tx_bytes, &tx, &touch)
                );
            }
        }
    };
    let idle = async {
        let Some(idle) = cfg.idle_timeout else {
            return std::future::pending().await;
        };
        loop {
            let seen = Duration::from_millis(last.load(Ordering::Relaxed));
            let since = start.elapsed().saturating_sub(seen);
            if since >= idle {
                return;
            }
            tokio::time::sleep(idle - since).await;
        }
    };
    // Istio's periodic report of an open connection's bytes.
    let reports = async {
        match (log.istio.as_mut(), &cfg.istio) {
            (Some(r), Some(i)) if !i.every.is_zero() => loop {
                tokio::time::sleep(i.every).await;
                r.bytes(tx.load(Ordering::Relaxed), rx.load(Ordering::Relaxed));
            },
            _ => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = both => {}
        _ = reports => {}
        _ = idle => {
            st.idle_timeout.inc();
            tracing::debug!(cluster = %name, "tcp_proxy: idle timeout");
        }
        _ = drained => tracing::debug!(cluster = %name, "tcp_proxy: drain time over; closing"),
    }
    log.rx = rx.load(Ordering::Relaxed);
    log.tx = tx.load(Ordering::Relaxed);
}

/// Copy one direction, starting with `first` (read already, past the metadata exchange);
/// on EOF, half-close the other side (Envoy's tcp_proxy half-closes).
async fn pipe<R, W>(
    (mut r, first): (R, bytes::BytesMut),
    mut w: W,
    bytes: &Stat,
    count: &AtomicU64,
    touch: &impl Fn(),
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if !first.is_empty() {
        touch();
        if w.write_all(&first).await.is_err() {
            let _ = w.shutdown().await;
            return;
        }
        bytes.add(first.len() as u64);
        count.fetch_add(first.len() as u64, Ordering::Relaxed);
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        touch();
        if w.write_all(&buf[..n]).await.is_err() {
            break;
        }
        bytes.add(n as u64);
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = w.shutdown().await;
}

/// The address to connect to, and its host when the cluster has one (ORIGINAL_DST clusters
/// connect to the original destination).
fn pick_host(
    cluster: &Cluster,
    original_dst: SocketAddr,
) -> Option<(SocketAddr, Option<Arc<Host>>)> {
    if let Some(a) = cluster.original_dst_target(original_dst) {
        return Some((a, None));
    }
    cluster
        .choose(&LbContext::default())
        .map(|h| (h.addr, Some(h)))
}
