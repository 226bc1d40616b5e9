//! The data path: listeners accept TCP, hyper serves HTTP/1.1 and h2c on each connection, and
//! the HTTP connection manager ([`service`]) routes every request with the snapshot current
//! at that moment.

pub mod body;
pub mod cors;
pub mod fault;
pub mod hcm;
pub mod local_reply;
pub mod router;
pub mod service;

use crate::config::{ConfigStore, ListenerConfig};
use crate::stats::{Kind, Stat, Stats};
use hcm::{Codec, HcmConfig};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// `http.<stat_prefix>.*` stats of one HCM.
#[derive(Debug)]
pub struct HcmStats {
    /// `downstream_rq_total`.
    pub rq_total: Arc<Stat>,
    /// `downstream_rq_active`.
    pub rq_active: Arc<Stat>,
    /// `downstream_cx_total`.
    pub cx_total: Arc<Stat>,
    /// `downstream_cx_active`.
    pub cx_active: Arc<Stat>,
    /// `no_route`.
    pub no_route: Arc<Stat>,
    /// `rq_direct_response`.
    pub direct_response: Arc<Stat>,
    /// `fault.delays_injected`.
    pub fault_delays: Arc<Stat>,
    /// `fault.aborts_injected`.
    pub fault_aborts: Arc<Stat>,
    /// `downstream_rq_1xx` .. `downstream_rq_5xx`, registered up front (no lock per request).
    classes: [Arc<Stat>; 5],
}

impl HcmStats {
    /// Register the stats of an HCM with `prefix`.
    pub fn new(store: &Arc<Stats>, prefix: &str) -> Arc<Self> {
        let c = |s: &str| store.http(prefix, s, Kind::Counter);
        let g = |s: &str| store.http(prefix, s, Kind::Gauge);
        Arc::new(HcmStats {
            rq_total: c("downstream_rq_total"),
            rq_active: g("downstream_rq_active"),
            cx_total: c("downstream_cx_total"),
            cx_active: g("downstream_cx_active"),
            no_route: c("no_route"),
            direct_response: c("rq_direct_response"),
            fault_delays: c("fault.delays_injected"),
            fault_aborts: c("fault.aborts_injected"),
            classes: std::array::from_fn(|i| {
                store.http(prefix, &format!("downstream_rq_{}xx", i + 1), Kind::Counter)
            }),
        })
    }

    /// Count `downstream_rq_<N>xx`.
    pub fn status(&self, code: u16) {
        if let Some(s) = self.classes.get((code / 100).wrapping_sub(1) as usize) {
            s.inc();
        }
    }
}

/// Per-connection context shared by the requests of a connection.
#[derive(Debug)]
pub struct ConnCtx {
    /// The HCM config of the listener.
    pub hcm: Arc<HcmConfig>,
    /// Where snapshots come from.
    pub store: Arc<ConfigStore>,
    /// HCM stats.
    pub stats: Arc<HcmStats>,
    /// Client address.
    pub peer: SocketAddr,
    /// Original destination (SO_ORIGINAL_DST, else the local address).
    pub original_dst: SocketAddr,
    /// The listener's port (strip_matching_host_port).
    pub listener_port: u16,
    /// Becomes true when the listener drains.
    pub draining: watch::Receiver<bool>,
}

/// A bound, serving listener.
#[derive(Debug)]
pub struct RunningListener {
    /// Its config.
    pub config: Arc<ListenerConfig>,
    /// The bound address (port 0 resolved).
    pub local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    drain: watch::Sender<bool>,
    /// Open downstream connections.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl RunningListener {
    /// Stop accepting new connections.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Drain open connections (HTTP/1 `Connection: close`, h2 GOAWAY).
    pub fn drain(&self) {
        let _ = self.drain.send(true);
    }

    /// Whether the listener was drained.
    pub fn is_draining(&self) -> bool {
        *self.drain.borrow()
    }
}

/// Bind `config` and serve it on the current runtime.
pub async fn bind(
    config: Arc<ListenerConfig>,
    store: Arc<ConfigStore>,
    stats: Arc<Stats>,
) -> std::io::Result<Arc<RunningListener>> {
    let listener = TcpListener::bind(config.address).await?;
    let local_addr = listener.local_addr()?;
    let (stop, mut stop_rx) = watch::channel(false);
    let (drain, drain_rx) = watch::channel(false);
    let running = Arc::new(RunningListener {
        config: config.clone(),
        local_addr,
        stop,
        drain,
        connections: Default::default(),
    });
    let Some(hcm) = config.hcm.clone() else {
        tracing::warn!(listener = %config.name, "listener has no http_connection_manager; connections will be closed");
        return Ok(running);
    };
    let hstats = HcmStats::new(&stats, &hcm.stat_prefix);
    let laddr = config.address.to_string();
    let l_cx_total = stats.listener(&laddr, "downstream_cx_total", Kind::Counter);
    let l_cx_active = stats.listener(&laddr, "downstream_cx_active", Kind::Gauge);
    let use_original_dst = config
        .proto
        .use_original_dst
        .as_ref()
        .is_some_and(|b| b.value)
        || config
            .proto
            .listener_filters
            .iter()
            .any(|f| f.name == "envoy.filters.listener.original_dst");
    let conns = running.connections.clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop_rx.wait_for(|s| *s) => return,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let local = stream.local_addr().unwrap_or(local_addr);
            let original_dst = if use_original_dst {
                original_dst(&stream).unwrap_or(local)
            } else {
                local
            };
            let ctx = Arc::new(ConnCtx {
                hcm: hcm.clone(),
                store: store.clone(),
                stats: hstats.clone(),
                peer,
                original_dst,
                listener_port: local_addr.port(),
                draining: drain_rx.clone(),
            });
            hstats.cx_total.inc();
            l_cx_total.inc();
            let (cx_active, l_active, conns) =
                (hstats.cx_active.clone(), l_cx_active.clone(), conns.clone());
            tokio::spawn(async move {
                cx_active.inc();
                l_active.inc();
                conns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                serve_connection(stream, ctx).await;
                conns.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                cx_active.dec();
                l_active.dec();
            });
        }
    });
    Ok(running)
}

async fn serve_connection(stream: TcpStream, ctx: Arc<ConnCtx>) {
    let _ = stream.set_nodelay(true);
    let mut draining = ctx.draining.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's header-read timer also runs while a keep-alive connection waits for its next
    // request, so it doubles as the HCM connection idle_timeout (Envoy: 1 h, no separate
    // header timeout by default) instead of hyper's 30 s default.
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(ctx.hcm.idle_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = match ctx.hcm.codec {
        Codec::Auto => builder,
        Codec::Http1 => builder.http1_only(),
        Codec::Http2 => builder.http2_only(),
    };
    let svc_ctx = ctx.clone();
    let svc = hyper::service::service_fn(move |req| {
        let ctx = svc_ctx.clone();
        async move { Ok::<_, std::convert::Infallible>(service::handle(ctx, req).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    // A connection accepted while draining still gets its request answered (with
    // `Connection: close`, see service::handle) instead of being shut before it is read.
    let already = *draining.borrow();
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(peer = %ctx.peer, "downstream connection ended: {e}");
            }
            return;
        }
        _ = draining.wait_for(|d| *d), if !already => {}
    }
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        tracing::debug!(peer = %ctx.peer, "downstream connection ended while draining: {e}");
    }
}

/// The pre-NAT destination of a redirected connection (iptables REDIRECT), if any.
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    use std::os::fd::AsRawFd;
    const SO_ORIGINAL_DST: libc::c_int = 80;
    let fd = stream.as_raw_fd();
    let local = stream.local_addr().ok()?;
    // SAFETY: getsockopt writes at most `len` bytes into a properly sized, zeroed sockaddr.
    unsafe {
        if local.is_ipv4() {
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            if libc::getsockopt(
                fd,
                libc::SOL_IP,
                SO_ORIGINAL_DST,
                &mut addr as *mut _ as *mut libc::c_void,
                &mut len,
            ) != 0
            {
                return None;
            }
            let ip = std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(addr.sin_port)))
        } else {
            let mut addr: libc::sockaddr_in6 = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            if libc::getsockopt(
                fd,
                libc::SOL_IPV6,
                SO_ORIGINAL_DST,
                &mut addr as *mut _ as *mut libc::c_void,
                &mut len,
            ) != 0
            {
                return None;
            }
            let ip = std::net::Ipv6Addr::from(addr.sin6_addr.s6_addr);
            Some(SocketAddr::new(ip.into(), u16::from_be(addr.sin6_port)))
        }
    }
}
