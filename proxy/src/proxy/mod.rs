//! The data path: listeners accept TCP, hyper serves HTTP/1.1 and h2c on each connection, and
//! the HTTP connection manager ([`service`]) routes every request with the snapshot current
//! at that moment.

pub mod access_log;
mod attempt;
pub mod authn;
pub mod body;
mod conn;
pub mod control_headers;
pub mod cors;
pub mod drain;
pub mod fault;
pub mod h1server;
pub mod hcm;
pub mod head_checks;
pub mod hop_by_hop;
pub mod istio;
pub mod local_reply;
pub mod mirror;
pub mod path_norm;
pub mod request_body;
mod retries;
mod route_inputs;
pub mod router;
mod running;
pub mod service;
pub mod tcp_proxy;
pub mod timer;
pub mod trace;
mod upstream_headers;
pub mod xfcc;

pub use running::{bind, serve, RunningListener};

use crate::config::ConfigStore;
use crate::stats::{Kind, Stat, Stats};
use hcm::HcmConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
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
    /// `downstream_cx_max_duration_reached`.
    pub cx_max_duration_reached: Arc<Stat>,
    /// `downstream_cx_max_requests_reached`.
    pub cx_max_requests_reached: Arc<Stat>,
    /// `downstream_rq_header_timeout`.
    pub rq_header_timeout: Arc<Stat>,
    /// `http1.` / `http2.` `requests_rejected_with_underscores_in_headers` (Envoy's codec
    /// stats are not under the HCM's prefix).
    pub underscores_rejected: [Arc<Stat>; 2],
    /// `http1.` / `http2.` `dropped_headers_with_underscores`.
    pub underscores_dropped: [Arc<Stat>; 2],
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
            cx_max_duration_reached: c("downstream_cx_max_duration_reached"),
            cx_max_requests_reached: c("downstream_cx_max_requests_reached"),
            rq_header_timeout: c("downstream_rq_header_timeout"),
            underscores_rejected: ["http1", "http2"].map(|codec| {
                store.counter(&format!(
                    "{codec}.requests_rejected_with_underscores_in_headers"
                ))
            }),
            underscores_dropped: ["http1", "http2"]
                .map(|codec| store.counter(&format!("{codec}.dropped_headers_with_underscores"))),
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
    /// The socket's peer: `peer`, unless a PROXY header named another client.
    pub direct_peer: SocketAddr,
    /// Original destination (SO_ORIGINAL_DST, else the local address).
    pub original_dst: SocketAddr,
    /// `peer` and `original_dst` came from a PROXY header (Envoy keeps them in the
    /// connection's filter state then, and an upstream PROXY header repeats them).
    pub proxied: bool,
    /// The port the connection was addressed to (strip_matching_host_port).
    pub listener_port: u16,
    /// Becomes true when the listener drains.
    pub draining: watch::Receiver<drain::Drain>,
    /// Requests in flight and when the last one ended, for the HCM connection `idle_timeout`.
    pub activity: Activity,
    /// The timer its requests' timeouts reuse.
    pub timer: timer::RequestTimer,
    /// The TLS client, when the chain terminated TLS.
    pub tls: Option<Arc<crate::tls::Peer>>,
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

/// `t + d`, saturating at a year from `t` (an absurd configured timeout must not panic).
pub(crate) fn later(t: tokio::time::Instant, d: std::time::Duration) -> tokio::time::Instant {
    t.checked_add(d)
        .unwrap_or(t + std::time::Duration::from_secs(86400 * 365))
}

/// The pre-NAT destination of a redirected connection (iptables REDIRECT), if any. `local` is
/// the connection's canonical local address, which picks the family to ask.
pub fn original_dst(stream: &TcpStream, local: SocketAddr) -> Option<SocketAddr> {
    use std::os::fd::AsRawFd;
    const SO_ORIGINAL_DST: libc::c_int = 80;
    let fd = stream.as_raw_fd();
    // SAFETY: getsockopt writes at most `len` bytes into a properly sized, zeroed sockaddr.
    unsafe {
        // An IPv4 connection on a dual-stack socket has its conntrack entry under IPv4.
        if local.ip().to_canonical().is_ipv4() {
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
