//! The data path: listeners accept TCP, hyper serves HTTP/1.1 and h2c on each connection, and
//! the HTTP connection manager ([`service`]) routes every request with the snapshot current
//! at that moment.

pub mod access_log;
mod attempt;
pub mod body;
mod conn;
pub mod control_headers;
pub mod cors;
pub mod fault;
pub mod h1server;
pub mod hcm;
pub mod head_checks;
pub mod hop_by_hop;
pub mod local_reply;
pub mod mirror;
pub mod router;
pub mod service;
pub mod tcp_proxy;
pub mod timer;

use crate::config::{ConfigStore, ListenerConfig};
use crate::listener::chain_match::ConnInfo;
use crate::listener::{inspect, Terminal};
use crate::stats::{Kind, Stat, Stats};
use hcm::HcmConfig;
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
    /// `downstream_rq_max_duration_reached`.
    pub rq_max_duration_reached: Arc<Stat>,
    /// `rq_direct_response`.
    pub direct_response: Arc<Stat>,
    /// `downstream_cx_protocol_error`: requests refused by the HTTP/1 codec's checks.
    pub cx_protocol_error: Arc<Stat>,
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
            rq_max_duration_reached: c("downstream_rq_max_duration_reached"),
            direct_response: c("rq_direct_response"),
            cx_protocol_error: c("downstream_cx_protocol_error"),
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
    /// The port the connection was addressed to (strip_matching_host_port).
    pub listener_port: u16,
    /// Becomes true when the listener drains.
    pub draining: watch::Receiver<bool>,
    /// Requests in flight and when the last one ended, for the HCM connection `idle_timeout`.
    pub activity: Activity,
    /// The timer its requests' timeouts reuse.
    pub timer: timer::RequestTimer,
}

/// What the connection idle timer reads: the request path only touches two atomics per
/// request (and the clock when the last request in flight ends), never the timer wheel.
#[derive(Debug)]
pub struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    /// Milliseconds after `born` when the connection last became idle, on the coarse clock
    /// (one precise clock read per request saved; see [`crate::clock`]).
    idle_since_ms: std::sync::atomic::AtomicU64,
    born: tokio::time::Instant,
    /// `born` on the coarse clock.
    born_coarse: std::time::Duration,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            in_flight: Default::default(),
            idle_since_ms: Default::default(),
            born: tokio::time::Instant::now(),
            born_coarse: crate::clock::coarse_now(),
        }
    }
}

impl Activity {
    /// A request started.
    pub fn start(&self) {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// A request ended (its response body ended or was dropped).
    pub fn end(&self) {
        if self
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            let since = crate::clock::coarse_now().saturating_sub(self.born_coarse);
            // Rounded up: the deadline may be late by a tick or two, never early.
            let ms = since.as_millis() as u64 + 1;
            self.idle_since_ms
                .store(ms, std::sync::atomic::Ordering::Release);
        }
    }

    /// When the connection becomes idle for `idle`: `None` while a request is in flight.
    ///
    /// Both coarse readings trail the precise clock by less than a tick, so the idle time
    /// they measure is within a tick of the truth; one tick more keeps the deadline from
    /// coming early.
    fn idle_deadline(&self, idle: std::time::Duration) -> Option<tokio::time::Instant> {
        if self.in_flight.load(std::sync::atomic::Ordering::Acquire) > 0 {
            return None;
        }
        let since = self
            .idle_since_ms
            .load(std::sync::atomic::Ordering::Acquire);
        let since = std::time::Duration::from_millis(since) + crate::clock::resolution();
        Some(later(later(self.born, since), idle))
    }
}

/// A bound, serving listener.
#[derive(Debug)]
pub struct RunningListener {
    /// Its config.
    pub config: Arc<ListenerConfig>,
    /// The bound address (port 0 resolved): the first of `local_addrs`.
    pub local_addr: SocketAddr,
    /// Every bound address, in the order of the config's `binds`.
    pub local_addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    drain: watch::Sender<bool>,
    /// Open downstream connections.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    /// Each accept loop gives its socket back here when it stops, if `want_socket` is set;
    /// otherwise it closes the socket, so that a stopped listener refuses connections.
    socket_back: std::sync::Mutex<Vec<tokio::sync::oneshot::Receiver<TcpListener>>>,
    want_socket: Arc<std::sync::atomic::AtomicBool>,
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

    /// Stop accepting and take the listening sockets, in the order of `local_addrs`, so that
    /// a changed listener on the same addresses serves them without a gap: connections
    /// waiting in the accept queues are kept (Envoy also passes the sockets to the new
    /// listener). `None` when any of them cannot be had.
    pub async fn take_sockets(&self) -> Option<Vec<TcpListener>> {
        self.want_socket
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.stop();
        let backs = std::mem::take(&mut *self.socket_back.lock().unwrap());
        if backs.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(backs.len());
        for rx in backs {
            let sock = tokio::time::timeout(std::time::Duration::from_secs(1), rx).await;
            out.push(sock.ok()?.ok()?);
        }
        Some(out)
    }
}

/// Bind every address of `config` and serve them on the current runtime.
pub async fn bind(
    config: Arc<ListenerConfig>,
    store: Arc<ConfigStore>,
    stats: Arc<Stats>,
) -> std::io::Result<Arc<RunningListener>> {
    let sockets = crate::listener::socket::bind_all(&config.binds)?;
    serve(sockets, config, store, stats)
}

/// Serve `config` on already bound sockets, one per address (fresh ones, or those taken
/// over from the listener it replaces). All of them feed the same filter chains, stats and
/// drain.
pub fn serve(
    sockets: Vec<TcpListener>,
    config: Arc<ListenerConfig>,
    store: Arc<ConfigStore>,
    stats: Arc<Stats>,
) -> std::io::Result<Arc<RunningListener>> {
    let local_addrs = sockets
        .iter()
        .map(|s| s.local_addr())
        .collect::<std::io::Result<Vec<_>>>()?;
    let Some(&local_addr) = local_addrs.first() else {
        return Err(std::io::Error::other(format!(
            "listener {} has no socket",
            config.name
        )));
    };
    let (stop, stop_rx) = watch::channel(false);
    let (drain, drain_rx) = watch::channel(false);
    let (backs, back_rxs): (Vec<_>, Vec<_>) = sockets
        .iter()
        .map(|_| tokio::sync::oneshot::channel())
        .unzip();
    let running = Arc::new(RunningListener {
        config: config.clone(),
        local_addr,
        local_addrs: local_addrs.clone(),
        stop,
        drain,
        connections: Default::default(),
        socket_back: std::sync::Mutex::new(back_rxs),
        want_socket: Default::default(),
    });
    // Envoy names listener stats by the first address with `:` turned into `_`
    // (`0.0.0.0_15001`); the additional addresses count there too.
    let laddr = config.address.to_string().replace(':', "_");
    let lstats = Arc::new(ListenerStats {
        cx_total: stats.listener(&laddr, "downstream_cx_total", Kind::Counter),
        cx_active: stats.listener(&laddr, "downstream_cx_active", Kind::Gauge),
        no_chain: stats.listener(&laddr, "no_filter_chain_match", Kind::Counter),
    });
    for ((listener, back_tx), local) in sockets.into_iter().zip(backs).zip(local_addrs) {
        let accept = Accepted {
            listener: config.clone(),
            store: store.clone(),
            stats: stats.clone(),
            lstats: lstats.clone(),
            draining: drain_rx.clone(),
            local,
        };
        tokio::spawn(accept_loop(
            listener,
            accept,
            stop_rx.clone(),
            back_tx,
            running.want_socket.clone(),
            running.connections.clone(),
        ));
    }
    Ok(running)
}

/// Accept on one socket of a listener until it is stopped, then close the socket or hand it
/// back through `back_tx`.
async fn accept_loop(
    listener: TcpListener,
    template: Accepted,
    mut stop_rx: watch::Receiver<bool>,
    back_tx: tokio::sync::oneshot::Sender<TcpListener>,
    want_socket: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::atomic::AtomicUsize>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop_rx.wait_for(|s| *s) => {
                if want_socket.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = back_tx.send(listener);
                }
                return;
            }
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
        let accept = template.clone();
        let conns = conns.clone();
        tokio::spawn(async move {
            accept.lstats.cx_total.inc();
            accept.lstats.cx_active.inc();
            conns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let lstats = accept.lstats.clone();
            accept.dispatch(stream, peer).await;
            conns.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            lstats.cx_active.dec();
        });
    }
}

/// `listener.<address>.*` stats.
#[derive(Debug)]
struct ListenerStats {
    cx_total: Arc<Stat>,
    cx_active: Arc<Stat>,
    no_chain: Arc<Stat>,
}

/// A connection accepted by a bound listener, before its filter chain is known.
#[derive(Clone)]
struct Accepted {
    listener: Arc<ListenerConfig>,
    store: Arc<ConfigStore>,
    stats: Arc<Stats>,
    lstats: Arc<ListenerStats>,
    draining: watch::Receiver<bool>,
    local: SocketAddr,
}

impl Accepted {
    /// Envoy's path for a new connection: restore the original destination, hand it to the
    /// listener of that address (`use_original_dst`), run the listener filters, pick the filter
    /// chain and run its terminal filter.
    async fn dispatch(self, stream: TcpStream, peer: SocketAddr) {
        let local = stream.local_addr().unwrap_or(self.local);
        let dst = if self.listener.original_dst {
            original_dst(&stream).unwrap_or(local)
        } else {
            local
        };
        let snap = self.store.load();
        let mut target = self.listener.clone();
        if self.listener.hand_off && dst != local {
            if let Some(l) = snap.listener_for(dst, &self.listener.name) {
                tracing::trace!(from = %self.listener.name, to = %l.name, %dst, "handing off");
                target = l.clone();
            }
        }
        let detected = match inspect::inspect(&stream, target.inspectors).await {
            Ok(d) => d,
            Err(why) => {
                tracing::debug!(listener = %target.name, %peer, "connection closed by listener filters: {why}");
                return;
            }
        };
        let info = ConnInfo {
            dst,
            src: peer,
            sni: detected.sni.as_deref(),
            transport: detected.transport,
            alpn: &detected.alpn,
        };
        let Some(chain) = target.select(&info) else {
            self.lstats.no_chain.inc();
            tracing::debug!(listener = %target.name, %peer, %dst, transport = detected.transport, alpn = ?detected.alpn, "no filter chain matches; closing");
            return;
        };
        if chain.tls {
            tracing::debug!(listener = %target.name, chain = %chain.name, "chain terminates TLS, which is not supported; closing");
            return;
        }
        match &chain.terminal {
            Terminal::Tcp(tp) => tcp_proxy::serve(stream, tp, &snap, &self.stats, dst).await,
            t @ Terminal::Http { .. } => {
                let Some((hcm, hstats)) = t.hcm_stats(&self.stats) else {
                    return;
                };
                // Requests load the snapshot themselves; a keep-alive connection must not pin
                // an old one.
                drop(snap);
                let ctx = Arc::new(ConnCtx {
                    hcm: hcm.clone(),
                    store: self.store,
                    stats: hstats.clone(),
                    peer,
                    original_dst: dst,
                    listener_port: dst.port(),
                    draining: self.draining,
                    activity: Activity::default(),
                    timer: Default::default(),
                });
                hstats.cx_total.inc();
                hstats.cx_active.inc();
                conn::serve_connection(stream, ctx).await;
                hstats.cx_active.dec();
            }
        }
    }
}

/// `t + d`, saturating at a year from `t` (an absurd configured timeout must not panic).
pub(crate) fn later(t: tokio::time::Instant, d: std::time::Duration) -> tokio::time::Instant {
    t.checked_add(d)
        .unwrap_or(t + std::time::Duration::from_secs(86400 * 365))
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
