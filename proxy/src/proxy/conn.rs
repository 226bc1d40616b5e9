//! Serving one downstream HTTP connection: the codec (the inline HTTP/1.x codec, or hyper's
//! HTTP/2 server after a peek at the h2c preface), and the connection's idle timeout and drain
//! around it.

use super::{body, h1server, hcm::Codec, later, service, ConnCtx};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// How long a draining HTTP connection may still take a request before it is shut down.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The request handler as a hyper service (HTTP/2, and HTTP/1 requests the inline codec
/// hands over).
pub(super) fn hyper_service(
    ctx: Arc<ConnCtx>,
) -> impl hyper::service::HttpService<
    hyper::body::Incoming,
    ResBody = body::BoxBody,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> + Clone {
    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let ctx = ctx.clone();
        async move {
            let req = req.map(|b| body::DownstreamBody::new(Some(b), None));
            Ok(service::handle(ctx, req, false).await)
        }
    })
}

pub(super) async fn serve_connection(stream: TcpStream, ctx: Arc<ConnCtx>) {
    let _ = stream.set_nodelay(true);
    let mut st = ConnState::new(&ctx);
    let h2 = match ctx.hcm.codec {
        Codec::Http1 => false,
        Codec::Http2 => true,
        // hyper-util's auto builder would read the first bytes itself and put them back with a
        // wrapper around the socket, on every read and write of the connection; a peek costs
        // nothing afterwards.
        Codec::Auto => {
            let (idle, already) = (st.idle, st.already);
            let sniffed = tokio::select! {
                p = sniff_h2(&stream) => p,
                _ = st.idle_sleep.as_mut(), if idle.is_some() => return,
                _ = async {
                    let _ = st.draining.wait_for(|d| d.is_draining()).await;
                    tokio::time::sleep(DRAIN_GRACE).await;
                }, if !already => return,
            };
            match sniffed {
                Some(h2) => h2,
                None => return,
            }
        }
    };
    serve_as(stream, h2, ctx, st).await
}

/// Serve HTTP on a connection whose TLS handshake is done: with the `auto` codec, HTTP/2 when
/// the client and the chain agreed on `h2` by ALPN (the bytes are encrypted: no peeking).
pub(super) async fn serve_tls(stream: crate::tls::ServerStream, ctx: Arc<ConnCtx>) {
    let _ = stream.get_ref().0.set_nodelay(true);
    let st = ConnState::new(&ctx);
    let h2 = match ctx.hcm.codec {
        Codec::Http1 => false,
        Codec::Http2 => true,
        Codec::Auto => stream.get_ref().1.alpn_protocol() == Some(b"h2"),
    };
    serve_as(stream, h2, ctx, st).await
}

async fn serve_as<IO: h1server::Io>(io: IO, h2: bool, ctx: Arc<ConnCtx>, st: ConnState) {
    if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        ctx.hcm.h2.server(&mut builder);
        let conn = builder.serve_connection(TokioIo::new(io), hyper_service(ctx.clone()));
        drive(std::pin::pin!(conn), &ctx, st).await;
    } else {
        let closing = std::sync::atomic::AtomicBool::new(false);
        let fut = std::pin::pin!(h1server::serve(io, ctx.clone(), &closing));
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
    draining: watch::Receiver<super::drain::Drain>,
    already: bool,
}

impl ConnState {
    fn new(ctx: &ConnCtx) -> Self {
        // Envoy's HCM idle_timeout: close a connection that has had no request in flight for
        // that long. One sleep per connection, moved only when it fires (to the end of the
        // current idle period, or a full period on while requests are in flight), never per
        // request.
        let idle = ctx.hcm.idle_timeout.filter(|d| !d.is_zero());
        let draining = ctx.draining.clone();
        // A connection accepted while draining still gets its request answered (with
        // `Connection: close`, see service::handle) instead of being shut before it is read.
        let already = draining.borrow().is_draining();
        ConnState {
            idle,
            idle_sleep: Box::pin(tokio::time::sleep(idle.unwrap_or(DRAIN_GRACE))),
            draining,
            already,
        }
    }
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

impl<IO, S> ServedConn for hyper::server::conn::http2::Connection<TokioIo<IO>, S, TokioExecutor>
where
    IO: h1server::Io,
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
        let _ = draining.wait_for(|d| d.is_draining()).await;
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
    // The HCM's max_connection_duration: one timer for the connection's life, only when set.
    let mut max_age = ctx
        .hcm
        .max_connection_duration
        .map(|d| Box::pin(tokio::time::sleep(d)));
    let mut age_polled = false;
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
            // Polled once to register, then only when it has fired, as the idle timer.
            _ = std::future::poll_fn(|cx| match max_age.as_mut() {
                Some(s) if !age_polled || s.is_elapsed() => {
                    age_polled = true;
                    std::future::Future::poll(s.as_mut(), cx)
                }
                _ => std::task::Poll::Pending,
            }), if max_age.is_some() => {
                // Envoy drains the connection: HTTP/1 closes when idle or after the response
                // in flight (`Connection: close`), h2 sends GOAWAY and finishes its streams.
                tracing::debug!(peer = %ctx.peer, "max connection duration reached");
                ctx.stats.cx_max_duration_reached.inc();
                max_age = None;
                conn.as_mut().shutdown();
            }
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
