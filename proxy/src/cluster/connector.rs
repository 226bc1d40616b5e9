//! The upstream connector: TCP with connect timeout and Envoy's `upstream_cx_*` accounting, and
//! the `max_connections` circuit breaker.

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

/// A TCP connector that counts connections for one cluster.
#[derive(Clone, Debug)]
pub struct CountingConnector {
    stats: Arc<ClusterStats>,
    timeout: Duration,
    max_connections: u64,
    source: Option<IpAddr>,
    room: Arc<tokio::sync::Notify>,
}

impl CountingConnector {
    /// A connector with the cluster's connect timeout, connection limit and source address
    /// (`upstream_bind_config`; Istio binds inbound traffic to 127.0.0.6 so its iptables rules
    /// let it through to the app instead of capturing it again).
    pub fn new(
        stats: Arc<ClusterStats>,
        timeout: Duration,
        max_connections: u64,
        source: Option<IpAddr>,
    ) -> Self {
        CountingConnector {
            stats,
            timeout,
            max_connections,
            source,
            room: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Signalled when one of this connector's connections closes, so a request waiting for
    /// room under `max_connections` can try again.
    pub fn room(&self) -> &tokio::sync::Notify {
        &self.room
    }

    /// The cluster's stats.
    pub fn stats(&self) -> &ClusterStats {
        &self.stats
    }

    /// Open a TCP connection to `addr` (TCP_NODELAY, bound to the source address when one is
    /// configured and of the same family), counted in `upstream_cx_*`.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Counted, ConnectError> {
        let stats = &self.stats;
        if stats.cx_active.get() >= self.max_connections {
            stats.cx_overflow.inc();
            return Err(ConnectError::Overflow);
        }
        let source = self.source.filter(|s| s.is_ipv4() == addr.is_ipv4());
        let dial = async move {
            let sock = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some(ip) = source {
                sock.bind(SocketAddr::new(ip, 0))?;
            }
            let stream = sock.connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok::<_, io::Error>(stream)
        };
        match tokio::time::timeout(self.timeout, dial).await {
            Ok(Ok(stream)) => {
                stats.cx_total.inc();
                stats.cx_active.inc();
                Ok(Counted {
                    io: TokioIo::new(stream),
                    stats: stats.clone(),
                    room: self.room.clone(),
                })
            }
            Ok(Err(e)) => {
                stats.cx_connect_fail.inc();
                Err(ConnectError::Failed(e.to_string()))
            }
            Err(_) => {
                stats.cx_connect_fail.inc();
                stats.cx_connect_timeout.inc();
                Err(ConnectError::Timeout)
            }
        }
    }
}

/// A connection that decrements `upstream_cx_active` when closed.
#[derive(Debug)]
pub struct Counted {
    io: TokioIo<TcpStream>,
    stats: Arc<ClusterStats>,
    room: Arc<tokio::sync::Notify>,
}

impl Counted {
    /// The socket, for byte-level proxying (tcp_proxy).
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        self.io.inner_mut()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.stats.cx_active.dec();
        self.stats.cx_destroy.inc();
        self.room.notify_one();
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
