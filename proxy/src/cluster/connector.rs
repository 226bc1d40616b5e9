//! The upstream connector: TCP with connect timeout and Envoy's `upstream_cx_*` accounting, and
//! the `max_connections` circuit breaker.

use super::conn_info::{ConnInfo, TlsNames};
use super::stats::ClusterStats;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};

/// Boxed error type used across the data path.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a connection could not be made; the router maps these to response flags.
#[derive(Debug)]
pub enum ConnectError {
    /// `max_connections` reached (UO).
    Overflow,
    /// `connect_timeout` elapsed (UF).
    Timeout,
    /// The connect failed (UF).
    Failed(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Overflow => write!(f, "upstream connection overflow"),
            ConnectError::Timeout => write!(f, "upstream connect timeout"),
            ConnectError::Failed(e) => write!(f, "upstream connect error: {e}"),
        }
    }
}
impl std::error::Error for ConnectError {}

/// `upstream_bind_config`'s source addresses: `source_address` and the extra one of the other
/// family (Istio binds inbound traffic to 127.0.0.6, and to ::6 in dual-stack pods).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceAddrs {
    /// The IPv4 source, if any.
    pub v4: Option<IpAddr>,
    /// The IPv6 source, if any.
    pub v6: Option<IpAddr>,
}

impl SourceAddrs {
    /// The source for a connection to `dest`: the one of its family, as Envoy's default local
    /// address selector picks. mosn does not bind a source of the other family, which could
    /// only fail the connect.
    pub fn for_dest(&self, dest: SocketAddr) -> Option<IpAddr> {
        if dest.is_ipv4() {
            self.v4
        } else {
            self.v6
        }
    }
}

/// A TCP connector that counts connections for one cluster.
#[derive(Clone, Debug)]
pub struct CountingConnector {
    stats: Arc<ClusterStats>,
    timeout: Duration,
    max_connections: u64,
    source: SourceAddrs,
    /// `upstream_connection_options.tcp_keepalive`.
    keepalive: Option<socket2::TcpKeepalive>,
    room: Arc<Room>,
}

/// The `max_connections` budget of one cluster: connections being made or open (Envoy counts
/// a connection against the breaker from the moment it starts connecting), and a signal for
/// requests waiting for one to close.
#[derive(Debug, Default)]
pub struct Room {
    used: std::sync::atomic::AtomicU64,
    freed: tokio::sync::Notify,
}

impl Room {
    fn take(&self, max: u64) -> bool {
        use std::sync::atomic::Ordering::AcqRel;
        self.used
            .fetch_update(AcqRel, std::sync::atomic::Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Takes a slot whatever the limit (a pool's first connection to a host).
    fn take_past_limit(&self) {
        self.used.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    fn give_back(&self) {
        self.used.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.freed.notify_one();
    }
}

/// A slot taken for a connection being made; given back if the connect fails or is
/// cancelled, kept by the connection once it is open.
struct Slot(Option<Arc<Room>>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r.give_back();
        }
    }
}

impl CountingConnector {
    /// A connector with the cluster's connect timeout, connection limit and source address
    /// (`upstream_bind_config`; Istio binds inbound traffic to 127.0.0.6 so its iptables rules
    /// let it through to the app instead of capturing it again) and TCP keepalive settings.
    pub fn new(
        stats: Arc<ClusterStats>,
        timeout: Duration,
        max_connections: u64,
        source: SourceAddrs,
        keepalive: Option<socket2::TcpKeepalive>,
    ) -> Self {
        CountingConnector {
            stats,
            timeout,
            max_connections,
            source,
            keepalive,
            room: Arc::default(),
        }
    }

    /// Signalled when one of this connector's connections closes (or fails to open), so a
    /// request waiting for room under `max_connections` can try again.
    pub fn freed(&self) -> &tokio::sync::Notify {
        &self.room.freed
    }

    /// Connections open or being made (what `max_connections` counts).
    pub fn connections(&self) -> u64 {
        self.room.used.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether `max_connections` allows another connection now.
    pub fn has_room(&self) -> bool {
        self.room.used.load(std::sync::atomic::Ordering::Acquire) < self.max_connections
    }

    /// The cluster's stats.
    pub fn stats(&self) -> &ClusterStats {
        &self.stats
    }

    /// Open a TCP connection to `addr` (TCP_NODELAY, bound to the source address when one is
    /// configured and of the same family), counted in `upstream_cx_*`, and run TLS over it
    /// when `tls` is given (the handshake within the connect timeout).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        tls: Option<&crate::tls::Dial>,
    ) -> Result<Counted, ConnectError> {
        self.dial(addr, tls, false).await
    }

    /// [`connect`](Self::connect) for a pool's first connection to a host: made even past
    /// `max_connections` (still counted in `upstream_cx_overflow` and against the limit), as
    /// Envoy opens one when other hosts hold every connection, so that the host's requests are
    /// not left with no connection that could ever serve them.
    pub async fn connect_first(
        &self,
        addr: SocketAddr,
        tls: Option<&crate::tls::Dial>,
    ) -> Result<Counted, ConnectError> {
        self.dial(addr, tls, true).await
    }

    async fn dial(
        &self,
        addr: SocketAddr,
        tls: Option<&crate::tls::Dial>,
        first: bool,
    ) -> Result<Counted, ConnectError> {
        let stats = &self.stats;
        if !self.room.take(self.max_connections) {
            stats.cx_overflow.inc();
            if !first {
                return Err(ConnectError::Overflow);
            }
            self.room.take_past_limit();
        }
        let mut slot = Slot(Some(self.room.clone()));
        let source = self.source.for_dest(addr);
        let keepalive = self.keepalive.as_ref();
        let ssl_stats = &self.stats;
        let dial = async move {
            let sock = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some(ip) = source {
                sock.bind(SocketAddr::new(ip, 0))?;
            }
            if let Some(k) = keepalive {
                socket2::SockRef::from(&sock).set_tcp_keepalive(k)?;
            }
            use tokio::io::AsyncWriteExt as _;
            let mut stream = sock.connect(addr).await?;
            stream.set_nodelay(true)?;
            // Once per connection, for `%UPSTREAM_LOCAL_ADDRESS%` (and a PROXY header).
            let local = stream.local_addr();
            let mut info = ConnInfo {
                local: local.as_ref().ok().copied(),
                tls: None,
            };
            let Some(tls) = tls else {
                return Ok::<_, io::Error>((UpIo::Plain(stream), info));
            };
            // The PROXY header goes first, under any TLS (Envoy's socket wraps the inner one).
            if let Some(p) = &tls.proxy {
                let header = p.bytes(local?, stream.peer_addr()?);
                stream.write_all(&header).await?;
            }
            let Some(config) = &tls.config else {
                return Ok((UpIo::Plain(stream), info));
            };
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            match connector.connect(tls.server_name(addr.ip()), stream).await {
                Ok(t) => {
                    ssl_stats.lazy_counter("ssl.handshake").inc();
                    let names = TlsNames::of(t.get_ref().1, tls.local_uri.as_deref());
                    info.tls = Some(names);
                    Ok((UpIo::Tls(Box::new(t)), info))
                }
                Err(e) => {
                    ssl_stats.lazy_counter("ssl.connection_error").inc();
                    Err(io::Error::new(e.kind(), format!("TLS handshake: {e}")))
                }
            }
        };
        match tokio::time::timeout(self.timeout, dial).await {
            Ok(Ok((stream, info))) => {
                stats.cx_total.inc();
                stats.cx_active.inc();
                Ok(Counted {
                    io: TokioIo::new(stream),
                    info: Arc::new(info),
                    stats: stats.clone(),
                    room: slot.0.take().expect("the slot is held until here"),
                    mark: None,
                })
            }
            Ok(Err(e)) => {
                stats.cx_connect_fail.inc();
                // Envoy's transport failure reason for a refused or unreachable peer.
                Err(ConnectError::Failed(match e.raw_os_error() {
                    Some(errno) => format!("delayed connect error: {errno}"),
                    None => e.to_string(),
                }))
            }
            Err(_) => {
                stats.cx_connect_fail.inc();
                stats.cx_connect_timeout.inc();
                Err(ConnectError::Timeout)
            }
        }
    }
}

/// An upstream connection's bytes: TCP, or TLS over it.
#[derive(Debug)]
pub enum UpIo {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS (Istio's mTLS to another sidecar).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl UpIo {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            UpIo::Plain(s) => s,
            UpIo::Tls(t) => t.get_ref().0,
        }
    }
}

impl tokio::io::AsyncRead for UpIo {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpIo::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for UpIo {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpIo::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }
    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpIo::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            UpIo::Plain(s) => s.is_write_vectored(),
            UpIo::Tls(t) => t.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpIo::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpIo::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A pool's mark on its connections to one host: each connection to the host, open or being
/// made, holds a clone, so the count of clones tells whether the host has one. Envoy dials a
/// host's first connection even past `max_connections` ([`CountingConnector::connect_first`]).
#[derive(Debug, Default)]
pub struct HostMark;

impl HostMark {
    /// Whether no connection holds `mark` (only its owner does).
    pub fn unused(mark: &Arc<HostMark>) -> bool {
        Arc::strong_count(mark) == 1
    }
}

/// A connection that decrements `upstream_cx_active` when closed.
#[derive(Debug)]
pub struct Counted {
    io: TokioIo<UpIo>,
    /// Its local address and TLS names.
    info: Arc<ConnInfo>,
    stats: Arc<ClusterStats>,
    room: Arc<Room>,
    /// Its host's mark in a pool that counts them.
    mark: Option<Arc<HostMark>>,
}

impl Counted {
    /// The connection, holding its host's `mark` for as long as it lives.
    pub fn marked(mut self, mark: Arc<HostMark>) -> Self {
        self.mark = Some(mark);
        self
    }

    /// Its local address and TLS names.
    pub fn info(&self) -> &Arc<ConnInfo> {
        &self.info
    }

    /// The connection's bytes, for the inline HTTP/1.1 client and tcp_proxy.
    pub fn stream_mut(&mut self) -> &mut UpIo {
        self.io.inner_mut()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.stats.cx_active.dec();
        self.stats.cx_destroy.inc();
        self.room.give_back();
    }
}

impl Read for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_taken_before_the_connect_and_given_back_by_a_failed_one() {
        let room = Arc::new(Room::default());
        assert!(room.take(1));
        // A second connect while the first is still being made finds no room.
        assert!(!room.take(1));
        drop(Slot(Some(room.clone())));
        assert!(room.take(1));
        assert!(room.take(2));
        assert!(!room.take(2));
    }

    /// Each connection leaves from the source of its destination's family, as Istio's
    /// dual-stack inbound clusters ask (127.0.0.6 and ::6; ::1 here, which lo always has).
    #[tokio::test]
    async fn the_source_follows_the_destination_family() {
        let v6 = match tokio::net::TcpListener::bind("[::1]:0").await {
            Ok(l) => Some(l),
            Err(_) => {
                eprintln!("no IPv6 loopback: the IPv6 half is skipped");
                None
            }
        };
        let v4 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sources = SourceAddrs {
            v4: Some("127.0.0.6".parse().unwrap()),
            v6: Some("::1".parse().unwrap()),
        };
        let c = CountingConnector::new(
            ClusterStats::new(&crate::stats::Stats::new(), "c"),
            Duration::from_secs(5),
            10,
            sources,
            None,
        );
        for l in std::iter::once(&v4).chain(v6.as_ref()) {
            let dest = l.local_addr().unwrap();
            let _conn = c.connect(dest, None).await.unwrap();
            let (_, peer) = l.accept().await.unwrap();
            assert_eq!(Some(peer.ip()), sources.for_dest(dest), "to {dest}");
        }
        // Without a source of the destination's family the kernel picks one.
        let only_v6 = CountingConnector::new(
            ClusterStats::new(&crate::stats::Stats::new(), "d"),
            Duration::from_secs(5),
            10,
            SourceAddrs {
                v4: None,
                v6: sources.v6,
            },
            None,
        );
        let _conn = only_v6
            .connect(v4.local_addr().unwrap(), None)
            .await
            .unwrap();
        let (_, peer) = v4.accept().await.unwrap();
        assert_eq!(peer.ip().to_string(), "127.0.0.1");
    }
}
