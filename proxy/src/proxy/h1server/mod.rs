//! The downstream HTTP/1.x codec for plain requests: a bodiless request is parsed, handled
//! and answered inline in the connection's task, and its response written with one write.
//!
//! Why not hyper's server for these: its dispatcher polls the service, the body and the
//! socket through a general state machine and reserves a fresh read buffer for every request
//! of a keep-alive connection; under callgrind that was about a quarter of mosn's user-space
//! instructions per proxied request. nginx and Envoy run their codecs inline the same way.
//!
//! Everything else (request bodies, `Expect`, upgrades, CONNECT, heads that do not parse or
//! are too large) is handed to hyper's server with the bytes already read, and hyper serves
//! the rest of that connection, so its answers to such requests are unchanged.

mod request;
mod response;

pub use request::decode_requests;

use super::body::BoxBody;
use super::{service, ConnCtx};
use bytes::{Buf, Bytes, BytesMut};
use hyper::body::Body;
use hyper_util::rt::TokioIo;
use request::{Parsed, Scratch};
use response::Encoder;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// A downstream byte stream: a TCP socket, or TLS over one.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Read size: a typical request head whole, with room for a few pipelined ones.
const READ_CHUNK: usize = 8 * 1024;
/// Response bytes gathered before a write (bodies larger than this go out in pieces).
const WRITE_CHUNK: usize = 64 * 1024;

/// A downstream connection: the socket, bytes read and not yet parsed, bytes to write.
struct Conn<IO> {
    io: IO,
    rd: BytesMut,
    wr: Vec<u8>,
    scratch: Scratch,
}

/// A served connection: the serving future and the flag that asks it to close gracefully
/// (see `ServedConn::shutdown` in `proxy/conn.rs`).
pub(super) struct Served<'a, F> {
    /// The future returned by [`serve`].
    pub(super) fut: Pin<&'a mut F>,
    /// The flag passed to [`serve`].
    pub(super) closing: &'a AtomicBool,
}

impl<F: Future> Future for Served<'_, F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.fut.as_mut().poll(cx)
    }
}

/// Serve HTTP/1.x on `stream` until the client closes, an error, or `closing` is set (then
/// the request in flight is answered with `Connection: close` and the connection closed).
pub(super) async fn serve<IO: Io>(
    stream: IO,
    ctx: Arc<ConnCtx>,
    closing: &AtomicBool,
) -> io::Result<()> {
    let mut c = Conn {
        io: stream,
        rd: BytesMut::new(),
        wr: Vec::new(),
        scratch: Scratch::default(),
    };
    let mut served = 0u32;
    loop {
        // When the current request's head began, if it has not all arrived in one read.
        let mut head_started: Option<tokio::time::Instant> = None;
        let (req, meta) = loop {
            if !c.rd.is_empty() {
                let (size, count) = (ctx.hcm.max_request_headers(), ctx.hcm.max_headers_count);
                match request::parse(&mut c.rd, &mut c.scratch, size, count, &ctx.hcm.http1) {
                    Parsed::Inline(req, meta) => break (req, meta),
                    Parsed::Partial => {}
                    Parsed::Handoff => return handoff(c, ctx, closing).await,
                    Parsed::BadTarget => return c.refuse(http::StatusCode::BAD_REQUEST).await,
                    Parsed::TooLarge => {
                        let status = http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
                        return c.refuse(status).await;
                    }
                }
            }
            // request_headers_timeout runs from a head's first byte to its last.
            let more = match ctx.hcm.request_headers_timeout.filter(|_| !c.rd.is_empty()) {
                None => c.read_more(closing).await?,
                Some(limit) => {
                    let since = *head_started.get_or_insert_with(tokio::time::Instant::now);
                    match tokio::time::timeout_at(super::later(since, limit), c.read_more(closing))
                        .await
                    {
                        Ok(more) => more?,
                        Err(_) => {
                            ctx.stats.rq_header_timeout.inc();
                            return c
                                .refuse_with(
                                    http::StatusCode::REQUEST_TIMEOUT,
                                    "request header timeout",
                                )
                                .await;
                        }
                    }
                }
            };
            if !more {
                return Ok(());
            }
        };
        served += 1;
        if ctx.hcm.max_requests_per_connection == Some(served) {
            // This response closes the connection (`Connection: close`), as Envoy drains it.
            ctx.stats.cx_max_requests_reached.inc();
            closing.store(true, Ordering::Relaxed);
        }
        // The handler runs while the socket is watched for the client leaving: hyper drops
        // the request then, and so must this, so that the upstream request is cancelled.
        let mut handler = pin!(service::handle(ctx.clone(), req, meta.checked));
        let Some(resp) = poll_fn(|cx| match handler.as_mut().poll(cx) {
            Poll::Ready(r) => Poll::Ready(Some(r)),
            Poll::Pending if c.poll_gone(cx) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        })
        .await
        else {
            tracing::debug!(peer = %ctx.peer, "downstream closed before its response");
            return Ok(());
        };
        let (parts, body) = resp.into_parts();
        let framed = response::encode_head(
            &mut c.wr,
            parts.status,
            &parts.headers,
            (body.is_end_stream(), body.size_hint()),
            meta,
            closing.load(Ordering::Relaxed),
        );
        crate::header_pool::give(parts.headers);
        let complete = c.send_body(body, framed.encoder).await?;
        c.flush().await?;
        if framed.last || !complete {
            let _ = c.io.shutdown().await;
            return Ok(());
        }
    }
}

impl<IO: Io> Conn<IO> {
    /// Read more of a request head; false when the connection should end (the client
    /// closed, or `closing` was set while no request was complete).
    async fn read_more(&mut self, closing: &AtomicBool) -> io::Result<bool> {
        self.rd.reserve(READ_CHUNK);
        let n = poll_fn(|cx| {
            if closing.load(Ordering::Relaxed) {
                return Poll::Ready(Ok(0));
            }
            tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rd)
        })
        .await?;
        Ok(n > 0)
    }

    /// Whether the client has gone (EOF or an error) while a response is awaited. Bytes that
    /// arrive meanwhile (pipelined requests) are kept, up to a head's worth.
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> bool {
        while self.rd.len() < request::MAX_INLINE_HEAD {
            if self.rd.capacity() == self.rd.len() {
                self.rd.reserve(READ_CHUNK);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rd) {
                Poll::Pending => return false,
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return true,
                Poll::Ready(Ok(_)) => {}
            }
        }
        false
    }

    /// Encode the body after the head in `wr`, writing whenever the body has to wait or
    /// enough has gathered. Returns whether it ended as framed (else the connection must
    /// close: the client is gone, the body failed, or its length was wrong).
    async fn send_body(&mut self, mut body: BoxBody, mut enc: Encoder) -> io::Result<bool> {
        if enc == Encoder::Length(0) {
            return Ok(true);
        }
        loop {
            // A frame that is ready goes into the same write as the head (a proxied response
            // read whole with its head is one write).
            let item = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                Poll::Ready(item) => item,
                Poll::Pending => {
                    self.flush().await?;
                    let next = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
                        Poll::Ready(item) => Poll::Ready(Some(item)),
                        Poll::Pending if self.poll_gone(cx) => Poll::Ready(None),
                        Poll::Pending => Poll::Pending,
                    })
                    .await;
                    match next {
                        Some(item) => item,
                        None => return Ok(false),
                    }
                }
            };
            match item {
                None => return Ok(enc.end(&mut self.wr)),
                Some(Ok(frame)) => {
                    // Trailers are dropped for HTTP/1 clients (Envoy's default).
                    if let Ok(data) = frame.into_data() {
                        if !enc.data(&mut self.wr, &data) {
                            return Ok(false);
                        }
                        if self.wr.len() >= WRITE_CHUNK {
                            self.flush().await?;
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!("response body failed: {e}");
                    return Ok(false);
                }
            }
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.wr.is_empty() {
            self.io.write_all(&self.wr).await?;
            self.wr.clear();
            // A large body must not keep its buffer for the life of the connection.
            if self.wr.capacity() > WRITE_CHUNK * 2 {
                self.wr = Vec::new();
            }
        }
        Ok(())
    }

    /// Answer `status` without a body and close: a head whose target is not a URI (400, as
    /// hyper answers it) or one too large (431).
    async fn refuse(self, status: http::StatusCode) -> io::Result<()> {
        self.refuse_with(status, "").await
    }

    /// [`refuse`](Self::refuse) with a text body.
    async fn refuse_with(mut self, status: http::StatusCode, body: &str) -> io::Result<()> {
        let meta = request::Meta {
            keep_alive: false,
            http10: false,
            head: false,
            checked: true,
        };
        let mut headers = http::HeaderMap::new();
        if !body.is_empty() {
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain"),
            );
        }
        let size = (
            body.is_empty(),
            hyper::body::SizeHint::with_exact(body.len() as u64),
        );
        response::encode_head(&mut self.wr, status, &headers, size, meta, true);
        self.wr.extend_from_slice(body.as_bytes());
        self.flush().await?;
        self.io.shutdown().await
    }
}

/// Serve the rest of the connection with hyper's server, starting with the bytes read.
async fn handoff<IO: Io>(c: Conn<IO>, ctx: Arc<ConnCtx>, closing: &AtomicBool) -> io::Result<()> {
    let io = Prefixed {
        prefix: c.rd.freeze(),
        io: c.io,
    };
    // No header-read timer: hyper would arm and cancel it for every request of a keep-alive
    // connection; the connection's one idle timer stands in.
    // hyper's read buffer bounds the head (431 past it); 8 KiB is the least it takes.
    let max_head = ctx.hcm.max_request_headers().max(8192);
    let mut builder = hyper::server::conn::http1::Builder::new();
    if let Some(limit) = ctx.hcm.request_headers_timeout {
        // Asked for: hyper's own header timer (it closes without a 408).
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limit);
    } else {
        builder.header_read_timeout(None);
    }
    let conn = builder
        .keep_alive(true)
        .max_buf_size(max_head)
        .max_headers(ctx.hcm.max_headers_count)
        .serve_connection(TokioIo::new(io), super::conn::hyper_service(ctx))
        .with_upgrades();
    let mut conn = pin!(conn);
    let mut shut = false;
    poll_fn(|cx| {
        if !shut && closing.load(Ordering::Relaxed) {
            shut = true;
            conn.as_mut().graceful_shutdown();
        }
        conn.as_mut().poll(cx)
    })
    .await
    .map_err(io::Error::other)
}

/// A socket with bytes already read from it put back in front.
struct Prefixed<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO: Io> AsyncRead for Prefixed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        this.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<IO: Io> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
