//! The data path: listeners accept TCP, hyper serves HTTP/1.1 and h2c on each connection, and
//! the HTTP connection manager ([`service`]) routes every request with the snapshot current
//! at that moment.

pub mod access_log;
pub mod body;
pub mod cors;
pub mod fault;
pub mod h1server;
pub mod hcm;
pub mod hop_by_hop;
pub mod local_reply;
pub mod router;
pub mod service;
pub mod tcp_proxy;
pub mod timer;

use crate::config::{ConfigStore, ListenerConfig};
use crate::listener::chain_match::ConnInfo;
use crate::listener::{inspect, Terminal};
use crate::stats::{Kind, Stat, Stats};
use hcm::{Codec, HcmConfig};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
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
    /// Milliseconds after `born` when the connection last became idle.
    idle_since_ms: std::sync::atomic::AtomicU64,
    born: tokio::time::Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            in_flight: Default::default(),
            idle_since_ms: Default::default(),
            born: tokio::time::Instant::now(),
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
            let ms = self.born.elapsed().as_millis() as u64;
            self.idle_since_ms
                .store(ms, std::sync::atomic::Ordering::Release);
        }
    }

    /// When the connection becomes idle for `idle`: `None` while a request is in flight.
    fn idle_deadline(&self, idle: std::time::Duration) -> Option<tokio::time::Instant> {
        if self.in_flight.load(std::sync::atomic::Ordering::Acquire) > 0 {
            return None;
        }
        let since = self
            .idle_since_ms
            .load(std::sync::atomic::Ordering::Acquire);
        Some(later(
            later(self.born, std::time::Duration::from_millis(since)),
            idle,
        ))
    }
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
    /// The accept loop gives its socket back here when it stops, if `want_socket` is set;
    /// otherwise it closes the socket, so that a stopped listener refuses connections.
    socket_back: std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<TcpListener>>>,
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

    /// Stop accepting and take the listening socket, so that a changed listener on the same
    /// address serves it without a gap: connections waiting in the accept queue are kept
    /// (Envoy also passes the socket to the new listener).
    pub async fn take_socket(&self) -> Option<TcpListener> {
        self.want_socket
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.stop();
        let rx = self.socket_back.lock().unwrap().take()?;
        tokio::time::timeout(std::time::Duration::from_secs(1), rx)
            .await
            .ok()?
            .ok()
    }
}

/// Bind `config` and serve it on the current runtime.
pub async fn bind(
    config: Arc<ListenerConfig>,
    store: Arc<ConfigStore>,
    stats: Arc<Stats>,
) -> std::io::Result<Arc<RunningListener>> {
    let listener = TcpListener::bind(config.address).await?;
    serve(listener, config, store, stats)
}

/// Serve `config` on an already bound socket (a fresh one, or one taken over from the listener
/// it replaces).
pub fn serve(
    listener: TcpListener,
    config: Arc<ListenerConfig>,
    store: Arc<ConfigStore>,
    stats: Arc<Stats>,
) -> std::io::Result<Arc<RunningListener>> {
    let local_addr = listener.local_addr()?;
    let (stop, mut stop_rx) = watch::channel(false);
    let (drain, drain_rx) = watch::channel(false);
    let (back_tx, back_rx) = tokio::sync::oneshot::channel();
    let running = Arc::new(RunningListener {
        config: config.clone(),
        local_addr,
        stop,
        drain,
        connections: Default::default(),
        socket_back: std::sync::Mutex::new(Some(back_rx)),
        want_socket: Default::default(),
    });
    let want_socket = running.want_socket.clone();
    // Envoy names listener stats by address with `:` turned into `_` (`0.0.0.0_15001`).
    let laddr = config.address.to_string().replace(':', "_");
    let lstats = Arc::new(ListenerStats {
        cx_total: stats.listener(&laddr, "downstream_cx_total", Kind::Counter),
        cx_active: stats.listener(&laddr, "downstream_cx_active", Kind::Gauge),
        no_chain: stats.listener(&laddr, "no_filter_chain_match", Kind::Counter),
    });
    let conns = running.connections.clone();
    tokio::spawn(async move {
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
            let accept = Accepted {
                listener: config.clone(),
                store: store.clone(),
                stats: stats.clone(),
                lstats: lstats.clone(),
                draining: drain_rx.clone(),
                local: local_addr,
            };
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
    });
    Ok(running)
}

/// `listener.<address>.*` stats.
#[derive(Debug)]
struct ListenerStats {
    cx_total: Arc<Stat>,
    cx_active: Arc<Stat>,
    no_chain: Arc<Stat>,
}

/// A connection accepted by a bound listener, before its filter chain is known.
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
                serve_connection(stream, ctx).await;
                hstats.cx_active.dec();
            }
        }
    }
}

/// `t + d`, saturating at a year from `t` (an absurd configured timeout must not panic).
fn later(t: tokio::time::Instant, d: std::time::Duration) -> tokio::time::Instant {
    t.checked_add(d)
        .unwrap_or(t + std::time::Duration::from_secs(86400 * 365))
}

/// How long a draining HTTP connection may still take a request before it is shut down.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The request handler as a hyper service (HTTP/2, and HTTP/1 requests the inline codec
/// hands over).
fn hyper_service(
    ctx: Arc<ConnCtx>,
) -> impl hyper::service::HttpService<
    hyper::body::Incoming,
    ResBody = body::BoxBody,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> + Clone {
    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let ctx = ctx.clone();
        async move { Ok(service::handle(ctx, req.map(Some)).await) }
    })
}

async fn serve_connection(stream: TcpStream, ctx: Arc<ConnCtx>) {
    let _ = stream.set_nodelay(true);
    // Envoy's HCM idle_timeout: close a connection that has had no request in flight for that
    // long. One sleep per connection, moved only when it fires (to the end of the current idle
    // period, or a full period on while requests are in flight), never per request.
    let idle = ctx.hcm.idle_timeout.filter(|d| !d.is_zero());
    let idle_sleep = Box::pin(tokio::time::sleep(idle.unwrap_or(DRAIN_GRACE)));
    let draining = ctx.draining.clone();
    // A connection accepted while draining still gets its request answered (with
    // `Connection: close`, see service::handle) instead of being shut before it is read.
    let already = *draining.borrow();
    let mut st = ConnState {
        idle,
        idle_sleep,
        draining,
        already,
    };
    let h2 = match ctx.hcm.codec {
        Codec::Http1 => false,
        Codec::Http2 => true,
        // hyper-util's auto builder would read the first bytes itself and put them back with a
        // wrapper around the socket, on every read and write of the connection; a peek costs
        // nothing afterwards.
        Codec::Auto => {
            let sniffed = tokio::select! {
                p = sniff_h2(&stream) => p,
                _ = st.idle_sleep.as_mut(), if idle.is_some() => return,
                _ = async {
                    let _ = st.draining.wait_for(|d| *d).await;
                    tokio::time::sleep(DRAIN_GRACE).await;
                }, if !already => return,
            };
            match sniffed {
                Some(h2) => h2,
                None => return,
            }
        }
    };
    if h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(stream), hyper_service(ctx.clone()));
        drive(std::pin::pin!(conn), &ctx, st).await;
    } else {
        let closing = std::sync::atomic::AtomicBool::new(false);
        let fut = std::pin::pin!(h1server::serve(stream, ctx.clone(), &closing));
        let conn = h1server::Served {
            fut,
            closing: &closing,
        };
        drive(std::pin::pin!(conn), &ctx, st).await;
    }
}

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the client speaks h2c (prior knowledge), from its first bytes, peeked (they stay
/// in the socket for hyper); `None` if it closed first. The answer is HTTP/1 at the first byte
/// that differs from the preface, h2 once the request line could only be the preface's; a
/// client that stops within that prefix is polled with backoff and, after a few seconds, left
/// to the HTTP/1 parser.
async fn sniff_h2(stream: &TcpStream) -> Option<bool> {
    // "PRI * HTTP/2.0\r\n": no HTTP/1 request line starts so.
    const DECISIVE: usize = 16;
    let mut buf = [0u8; DECISIVE];
    let mut wait = std::time::Duration::from_millis(1);
    let mut waited = std::time::Duration::ZERO;
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        if buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == DECISIVE {
            return Some(true);
        }
        if waited >= std::time::Duration::from_secs(5) {
            return Some(false);
        }
        tokio::time::sleep(wait).await;
        waited += wait;
        wait = (wait * 2).min(std::time::Duration::from_millis(100));
    }
}

/// What [`drive`] needs besides the connection.
struct ConnState {
    idle: Option<std::time::Duration>,
    idle_sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    draining: watch::Receiver<bool>,
    already: bool,
}

/// A served connection of either protocol.
trait ServedConn: std::future::Future {
    /// Stop taking requests: finish the ones in flight and close (HTTP/1 closes an idle
    /// connection at once; h2 sends GOAWAY).
    fn shutdown(self: std::pin::Pin<&mut Self>);
}

impl<F: std::future::Future> ServedConn for h1server::Served<'_, F> {
    fn shutdown(self: std::pin::Pin<&mut Self>) {
        self.closing
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl<S> ServedConn for hyper::server::conn::http2::Connection<TokioIo<TcpStream>, S, TokioExecutor>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = body::BoxBody>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
{
    fn shutdown(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Serve `conn` until it ends, its idle timeout passes, or the listener drains.
async fn drive<C, E>(mut conn: std::pin::Pin<&mut C>, ctx: &ConnCtx, st: ConnState)
where
    C: ServedConn<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let ConnState {
        idle,
        mut idle_sleep,
        mut draining,
        already,
    } = st;
    let mut idle_closing = false;
    // Made once: a select! re-polls every branch on every wake of the connection (twice a
    // request), so the drain wait must not be re-created (and re-registered) each time.
    // Nor is it polled again once it waits: polling a waiting watch takes its waiter lock
    // (about 1% of a proxied request). Its registration stands, and it is polled again only
    // when the channel has changed.
    let probe = draining.clone();
    let drain_wait = async {
        if already {
            std::future::pending::<()>().await;
        }
        let _ = draining.wait_for(|d| *d).await;
    };
    tokio::pin!(drain_wait);
    let mut drain_waiting = false;
    let drain_wait = std::future::poll_fn(move |cx| {
        if drain_waiting && !probe.has_changed().unwrap_or(true) {
            return std::task::Poll::Pending;
        }
        drain_waiting = true;
        std::future::Future::poll(drain_wait.as_mut(), cx)
    });
    let mut drain_wait = std::pin::pin!(drain_wait);
    let mut idle_polled = false;
    loop {
        tokio::select! {
            // The connection first, and no random branch order (no RNG call per wake).
            biased;
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(peer = %ctx.peer, "downstream connection ended: {e}");
                }
                return;
            }
            _ = drain_wait.as_mut(), if !idle_closing => break,
            // Likewise the idle timer: polled once after each reset (that registers the
            // task's waker with it), then only when it has fired.
            _ = std::future::poll_fn(|cx| {
                if idle_polled && !idle_sleep.is_elapsed() {
                    return std::task::Poll::Pending;
                }
                idle_polled = true;
                std::future::Future::poll(idle_sleep.as_mut(), cx)
            }), if idle.is_some() => {
                idle_polled = false;
                let idle = idle.unwrap_or_default();
                let now = tokio::time::Instant::now();
                match ctx.activity.idle_deadline(idle) {
                    Some(due) if due <= now => {
                        if idle_closing {
                            // Still not closed a full period after the shutdown began, with no
                            // request in flight (a client stuck in its request head).
                            tracing::debug!(peer = %ctx.peer, "downstream connection idle timeout");
                            return;
                        }
                        // Gracefully: a request that arrives just now is still answered.
                        tracing::debug!(peer = %ctx.peer, "downstream connection idle; closing");
                        idle_closing = true;
                        conn.as_mut().shutdown();
                        idle_sleep.as_mut().reset(later(now, idle));
                    }
                    Some(due) => idle_sleep.as_mut().reset(due),
                    None => idle_sleep.as_mut().reset(later(now, idle)),
                }
            }
        }
    }
    // A client may have sent its request just before the drain began; closing the idle-looking
    // connection now would answer it with nothing. Give such requests a moment to arrive and be
    // answered (with `Connection: close`), then shut down whatever is left.
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(peer = %ctx.peer, "downstream connection ended while draining: {e}");
            }
            return;
        }
        _ = tokio::time::sleep(DRAIN_GRACE) => {}
    }
    conn.as_mut().shutdown();
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
