//! Bound listeners: their sockets and accept loops, the dispatch of each connection to a
//! filter chain, and draining, by listener or, when an update changes only some filter
//! chains, by chain.
//!
//! Envoy updates a listener in place when nothing but its filter chains changed: the
//! sockets stay, new connections take the new chains, and only the connections on chains
//! that changed or went away are drained. Istio rewrites `virtualInbound` whenever one of
//! the pod's ports changes, so draining every connection on each such push would reset the
//! whole inbound side. Each chain has its own drain signal for that, carried by the config
//! (`listener/drains.rs`): a version that keeps a chain (an equal proto) takes its signal,
//! and so its connections, over. The same holds for connections handed to an unbound
//! listener, which watch the signal of their chain there.

use super::drain::Drain;
use super::tcp_proxy::{self, Refused};
use super::{conn, original_dst, Activity, ConnCtx};
use crate::config::{ConfigStore, ListenerConfig};
use crate::listener::chain_match::ConnInfo;
use crate::listener::{inspect, Terminal};
use crate::stats::{Kind, Stat, Stats};
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// A bound, serving listener.
#[derive(Debug)]
pub struct RunningListener {
    /// The current config (it carries the chains' drain signals), shared with the accept
    /// loops.
    current: Arc<ArcSwap<ListenerConfig>>,
    /// The bound address (port 0 resolved): the first of `local_addrs`.
    pub local_addr: SocketAddr,
    /// Every bound address, in the order of the config's `binds`.
    pub local_addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    /// How far the whole listener has drained (a [`Drain`] as a number).
    level: AtomicU8,
    /// Open downstream connections.
    pub connections: Arc<AtomicUsize>,
    /// Each accept loop gives its socket back here when it stops, if `want_socket` is set;
    /// otherwise it closes the socket, so that a stopped listener refuses connections.
    socket_back: Mutex<Vec<oneshot::Receiver<TcpListener>>>,
    want_socket: Arc<AtomicBool>,
}

impl RunningListener {
    /// Its current config.
    pub fn config(&self) -> Arc<ListenerConfig> {
        self.current.load_full()
    }

    /// Stop accepting new connections.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Drain open connections (HTTP/1 `Connection: close`, h2 GOAWAY), and those accepted
    /// from now on.
    pub fn drain(&self) {
        self.raise(Drain::Draining);
    }

    /// Drain as a listener that was changed or removed: TCP proxy connections also close
    /// once the drain time is over.
    pub fn retire(&self) {
        self.raise(Drain::Retired);
    }

    fn raise(&self, to: Drain) {
        self.level.fetch_max(to as u8, Ordering::SeqCst);
        self.current.load().raise_all(to);
    }

    /// How far the whole listener has drained.
    fn level(&self) -> Drain {
        match self.level.load(Ordering::SeqCst) {
            0 => Drain::Serving,
            1 => Drain::Draining,
            _ => Drain::Retired,
        }
    }

    /// Whether the listener was drained.
    pub fn is_draining(&self) -> bool {
        self.level().is_draining()
    }

    /// Take `new` in place when it differs from the current config in its filter chains
    /// only (Envoy's rule), and drain the connections of the chains it changes or drops;
    /// connections on chains it keeps go on. `false` (nothing done) when more changed.
    pub fn update_in_place(&self, new: Arc<ListenerConfig>) -> bool {
        let cur = self.current.load_full();
        if !new.chains_only_differ(&cur) {
            return false;
        }
        // The kept chains' signals were carried over when `new` was built (xds/apply.rs).
        cur.retire_replaced(Some(&new));
        self.current.store(new.clone());
        // A drain that read the config before the store missed the new chains (it sets the
        // level first, so it is seen here).
        new.raise_all(self.level());
        true
    }

    /// Stop accepting and take the listening sockets, in the order of `local_addrs`, so that
    /// a changed listener on the same addresses serves them without a gap: connections
    /// waiting in the accept queues are kept (Envoy also passes the sockets to the new
    /// listener). `None` when any of them cannot be had.
    pub async fn take_sockets(&self) -> Option<Vec<TcpListener>> {
        self.want_socket.store(true, Ordering::SeqCst);
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

/// `a` with an IPv4-mapped IPv6 address written as IPv4.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// Bind every address of `config` and serve them on the current runtime. `drain_time`
/// (`--drain-time-s`) is how long a drained TCP proxy connection may go on.
pub async fn bind(
    config: Arc<ListenerConfig>,
    store: Arc<ConfigStore>,
    stats: Arc<Stats>,
    drain_time: Duration,
) -> std::io::Result<Arc<RunningListener>> {
    let sockets = crate::listener::socket::bind_all(&config.binds)?;
    serve(sockets, config, store, stats, drain_time)
}

/// Serve `config` on already bound sockets, one per address (fresh ones, or those taken
/// over from the listener it replaces). All of them feed the same filter chains, stats and
/// drain.
pub fn serve(
    sockets: Vec<TcpListener>,
    config: Arc<ListenerConfig>,
    store: Arc<ConfigStore>,
    stats: Arc<Stats>,
    drain_time: Duration,
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
    let (backs, back_rxs): (Vec<_>, Vec<_>) = sockets.iter().map(|_| oneshot::channel()).unzip();
    // Envoy names listener stats by the first address with `:` turned into `_`
    // (`0.0.0.0_15001`); the additional addresses count there too.
    let laddr = config.address.to_string().replace(':', "_");
    let lstats = Arc::new(ListenerStats {
        cx_total: stats.listener(&laddr, "downstream_cx_total", Kind::Counter),
        cx_active: stats.listener(&laddr, "downstream_cx_active", Kind::Gauge),
        no_chain: stats.listener(&laddr, "no_filter_chain_match", Kind::Counter),
        ssl_handshake: stats.listener(&laddr, "ssl.handshake", Kind::Counter),
        ssl_error: stats.listener(&laddr, "ssl.connection_error", Kind::Counter),
        proxy_proto_error: stats.listener(&laddr, "downstream_cx_proxy_proto_error", Kind::Counter),
        handshake_timeout: stats.listener(
            &laddr,
            "downstream_cx_transport_socket_connect_timeout",
            Kind::Counter,
        ),
        rbac_denied: stats.listener(&laddr, "rbac.denied", Kind::Counter),
    });
    let running = Arc::new(RunningListener {
        current: Arc::new(ArcSwap::new(config)),
        local_addr,
        local_addrs: local_addrs.clone(),
        stop,
        level: AtomicU8::new(Drain::Serving as u8),
        connections: Default::default(),
        socket_back: Mutex::new(back_rxs),
        want_socket: Default::default(),
    });
    for ((listener, back_tx), local) in sockets.into_iter().zip(backs).zip(local_addrs) {
        let accept = Accepted {
            current: running.current.clone(),
            store: store.clone(),
            stats: stats.clone(),
            lstats: lstats.clone(),
            local,
            drain_time,
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
    back_tx: oneshot::Sender<TcpListener>,
    want_socket: Arc<AtomicBool>,
    conns: Arc<AtomicUsize>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop_rx.wait_for(|s| *s) => {
                if want_socket.load(Ordering::SeqCst) {
                    let _ = back_tx.send(listener);
                }
                return;
            }
        };
        let (stream, peer) = match accepted {
            // An IPv4 client of a dual-stack (`ipv4_compat`) socket is seen as IPv4, as Envoy
            // sees it, not as `::ffff:a.b.c.d`.
            Ok((s, p)) => (s, canonical(p)),
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
            conns.fetch_add(1, Ordering::Relaxed);
            let lstats = accept.lstats.clone();
            accept.dispatch(stream, peer).await;
            conns.fetch_sub(1, Ordering::Relaxed);
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
    /// TLS handshakes completed on TLS chains.
    ssl_handshake: Arc<Stat>,
    /// TLS handshakes that failed (or could not start: a secret not yet received).
    ssl_error: Arc<Stat>,
    /// TLS handshakes cut off by the chain's `transport_socket_connect_timeout`.
    handshake_timeout: Arc<Stat>,
    /// Connections closed by the proxy_protocol filter (no header, or a broken one).
    proxy_proto_error: Arc<Stat>,
    /// Connections a network RBAC filter closed.
    rbac_denied: Arc<Stat>,
}

/// A downstream connection once its chain's transport socket has run.
enum Down {
    Plain(TcpStream),
    Tls(Box<crate::tls::ServerStream>, Arc<crate::tls::Peer>),
}

/// A connection accepted by a bound listener, before its filter chain is known.
#[derive(Clone)]
struct Accepted {
    current: Arc<ArcSwap<ListenerConfig>>,
    store: Arc<ConfigStore>,
    stats: Arc<Stats>,
    lstats: Arc<ListenerStats>,
    local: SocketAddr,
    drain_time: Duration,
}

impl Accepted {
    /// Envoy's path for a new connection: restore the original destination, hand it to the
    /// listener of that address (`use_original_dst`), run the listener filters, pick the filter
    /// chain and run its terminal filter.
    async fn dispatch(self, mut stream: TcpStream, peer: SocketAddr) {
        // For the log line of a connection refused before it is proxied.
        let accepted = std::time::Instant::now();
        let local = canonical(stream.local_addr().unwrap_or(self.local));
        let own = self.current.load_full();
        let dst = if own.original_dst {
            original_dst(&stream, local).unwrap_or(local)
        } else {
            local
        };
        // A load balancer's PROXY header names the real client and the address it dialled,
        // which stand for the socket's from here on (the socket's peer is still logged as
        // the direct remote address).
        let direct = peer;
        let (peer, dst, proxied) = match own.proxy_protocol {
            None => (peer, dst, false),
            Some(pp) => match pp.read(&mut stream, own.inspectors.timeout).await {
                Ok(Some((src, to))) => (canonical(src), canonical(to), true),
                Ok(None) => (peer, dst, false),
                Err(why) => {
                    tracing::debug!(listener = %own.name, %peer, "connection closed by proxy_protocol: {why}");
                    self.lstats.proxy_proto_error.inc();
                    return;
                }
            },
        };
        let snap = self.store.load();
        let mut target = own.clone();
        let mut handed = false;
        if own.hand_off && dst != local {
            if let Some(l) = snap.listener_for(dst, &own.name) {
                tracing::trace!(from = %own.name, to = %l.name, %dst, "handing off");
                target = l.clone();
                handed = true;
            }
        }
        let detected = match inspect::inspect(&stream, target.inspectors).await {
            Ok(d) => d,
            Err(why) => {
                tracing::debug!(listener = %target.name, %peer, "connection closed by listener filters: {why}");
                return;
            }
        };
        if !handed {
            // The listener may have been updated in place while its filters ran: the chain
            // is picked, and its drain signal taken, from the config now current.
            target = self.current.load_full();
        }
        let info = ConnInfo {
            dst,
            src: peer,
            sni: detected.sni.as_deref(),
            transport: detected.transport,
            alpn: &detected.alpn,
        };
        let Some((index, chain)) = target.select_indexed(&info) else {
            self.lstats.no_chain.inc();
            tracing::debug!(listener = %target.name, %peer, %dst, transport = detected.transport, alpn = ?detected.alpn, "no filter chain matches; closing");
            return;
        };
        // The drain of its chain, in the listener it was accepted by or handed to.
        let draining = target.drain_of(index).subscribe();
        // A connection the chain closes before proxying it: counted and logged (TCP chains).
        let refuse = |tls, client, why| {
            refused_tcp(
                chain,
                &self.store,
                (peer, direct, dst),
                tls,
                client,
                (accepted, why),
            );
        };
        let stream = match &chain.tls {
            None => Down::Plain(stream),
            Some(tls) => {
                let handshake = tls.accept(stream, &self.store.secrets);
                let done = match chain.handshake_timeout {
                    None => Ok(handshake.await),
                    Some(limit) => tokio::time::timeout(limit, handshake).await,
                };
                match done {
                    Ok(Ok((s, peer))) => {
                        self.lstats.ssl_handshake.inc();
                        Down::Tls(Box::new(s), Arc::new(peer))
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(listener = %target.name, chain = %chain.name, %peer, "TLS: {e}");
                        self.lstats.ssl_error.inc();
                        // Envoy's envelope for the TLS library's reason (BoringSSL's codes
                        // there, rustls's words here).
                        let why = format!("TLS_error:|{e}:TLS_error_end");
                        refuse(None, None, Refused::Transport(&why));
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(listener = %target.name, chain = %chain.name, %peer, "TLS handshake timed out");
                        self.lstats.handshake_timeout.inc();
                        refuse(
                            None,
                            None,
                            Refused::Terminated(tcp_proxy::HANDSHAKE_TIMEOUT),
                        );
                        return;
                    }
                }
            }
        };
        // Istio's TCP metadata exchange with the client, ahead of RBAC as Istio orders its
        // filters, so that a denied connection is counted with the client's workload.
        let mut stream = stream;
        let mx = match (&mut stream, &chain.terminal) {
            (Down::Tls(s, p), Terminal::Tcp(_)) if p.peer_exchange => {
                let (mut r, mut w) = tokio::io::split(&mut **s);
                let local = self.store.istio_local();
                Some(
                    super::istio::tcp_mx::exchange(
                        &mut r,
                        &mut w,
                        local,
                        super::istio::tcp_mx::WAIT,
                    )
                    .await,
                )
            }
            _ => None,
        };
        let client = mx.as_ref().and_then(|m| m.peer.as_ref());
        if mx.as_ref().is_some_and(|m| m.broken) {
            tracing::debug!(listener = %target.name, chain = %chain.name, %peer, "Istio metadata exchange frame cut short; closing");
            refuse(tls_of(&stream).map(Arc::as_ref), client, Refused::Unstated);
            return;
        }
        if !chain.rbac.is_empty() {
            let subject = crate::rbac::Subject {
                http: None,
                peer,
                remote: peer.ip(),
                dst,
                tls: tls_of(&stream).map(Arc::as_ref),
            };
            for r in &chain.rbac {
                if let (false, policy) = r.allows(&subject) {
                    tracing::debug!(listener = %target.name, chain = %chain.name, %peer, policy = ?policy, "RBAC: connection denied");
                    self.lstats.rbac_denied.inc();
                    refuse(
                        subject.tls,
                        client,
                        Refused::Terminated(&crate::rbac::Rbac::denial(policy)),
                    );
                    return;
                }
            }
        }
        match &chain.terminal {
            Terminal::Tcp(tp) => {
                // Envoy closes what is left of a removed listener's (or chain's) connections
                // once its drain time is over; TCP has no way to ask the client to leave
                // earlier. A mere drain (`/drain_listeners`, SIGTERM) leaves them.
                let mut draining = draining;
                let drain_time = self.drain_time;
                let over = async move {
                    let _ = draining.wait_for(|d| *d == Drain::Retired).await;
                    tokio::time::sleep(drain_time).await;
                };
                // Boxed halves: one copy loop for both, at an indirect call per read or
                // write of up to 16 KiB.
                let tls_peer = tls_of(&stream).cloned();
                let down: (
                    Box<dyn AsyncRead + Unpin + Send>,
                    Box<dyn AsyncWrite + Unpin + Send>,
                ) = match stream {
                    Down::Plain(s) => {
                        let _ = s.set_nodelay(true);
                        let (r, w) = s.into_split();
                        (Box::new(r), Box::new(w))
                    }
                    Down::Tls(s, _) => {
                        let _ = s.get_ref().0.set_nodelay(true);
                        let (r, w) = tokio::io::split(s);
                        (Box::new(r), Box::new(w))
                    }
                };
                let from = tcp_proxy::Downstream {
                    peer: Some(peer),
                    direct_peer: Some(direct),
                    original_dst: dst,
                    tls: tls_peer.as_deref(),
                };
                let down = (down, mx.unwrap_or_default());
                tcp_proxy::serve(down, from, tp, &snap, &self.store, &self.stats, over).await
            }
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
                    direct_peer: direct,
                    original_dst: dst,
                    proxied,
                    listener_port: dst.port(),
                    draining,
                    activity: Activity::default(),
                    timer: Default::default(),
                    tls: match &stream {
                        Down::Plain(_) => None,
                        Down::Tls(_, p) => Some(p.clone()),
                    },
                });
                hstats.cx_total.inc();
                hstats.cx_active.inc();
                match stream {
                    Down::Plain(s) => conn::serve_connection(s, ctx).await,
                    Down::Tls(s, _) => conn::serve_tls(*s, ctx).await,
                }
                hstats.cx_active.dec();
            }
        }
    }
}

/// A connection a tcp_proxy chain closed before proxying it (failed TLS, denied by RBAC):
/// Istio's stats filter, which Envoy runs from the connection's start, counts it as opened
/// and closed.
fn refused_tcp(
    chain: &crate::listener::FilterChain,
    store: &ConfigStore,
    (peer, direct, dst): (SocketAddr, SocketAddr, SocketAddr),
    tls: Option<&crate::tls::Peer>,
    client: Option<&crate::proxy::istio::peer::Workload>,
    why: (std::time::Instant, Refused<'_>),
) {
    if let Terminal::Tcp(tp) = &chain.terminal {
        let from = tcp_proxy::Downstream {
            peer: Some(peer),
            direct_peer: Some(direct),
            original_dst: dst,
            tls,
        };
        tcp_proxy::count_refused(tp, store, from, client, why);
    }
}

/// A downstream connection's TLS peer, if it has one.
fn tls_of(stream: &Down) -> Option<&Arc<crate::tls::Peer>> {
    match stream {
        Down::Tls(_, p) => Some(p),
        Down::Plain(_) => None,
    }
}
