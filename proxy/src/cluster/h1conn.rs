//! One HTTP/1.1 upstream connection driven inline by the request that uses it: the request
//! head is written, the response head parsed and the response body read straight from the
//! socket in the downstream request's own task.
//!
//! Why not hyper's client here: hyper runs each client connection as a separate task and
//! hands requests, responses and body chunks to it over channels, which under callgrind cost
//! about a third of mosn's user-space instructions per proxied request (13k of 35k). Envoy's
//! and nginx's upstream codecs run inline in the same way. The pool still uses hyper's client
//! for what this module does not do: requests with a body to stream, and upgrades.
//!
//! Parsing is httparse's (as in hyper); this module adds only message framing (RFC 9112 §6).

use super::connector::{BoxError, Counted};
use super::h1framing::{Delimiters, Framing, Step};
use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName};
use hyper::body::{Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest response head (status line and headers) accepted, as Envoy's default
/// `max_request_headers_kb` (60 KiB) plus room.
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// Most response headers accepted (Envoy's default `max_headers_count`).
pub(super) const MAX_HEADERS: usize = 100;
/// Read size: one read takes a typical response whole.
const READ_CHUNK: usize = 16 * 1024;

/// An open upstream connection and the bytes read from it but not yet used.
///
/// Boxed once per connection: a connection moves between the pool, the exchange and the
/// response body several times per request, and a pointer moves cheaper than the state
/// (about 140 bytes, each move a `memcpy` call).
pub struct Conn(Box<ConnState>);

/// What a [`Conn`] holds.
pub struct ConnState {
    io: Counted,
    rd: Reader,
    wbuf: Vec<u8>,
}

impl ConnState {
    /// The connection's local address and TLS names.
    pub fn info(&self) -> &std::sync::Arc<super::conn_info::ConnInfo> {
        self.io.info()
    }
}

impl std::ops::Deref for Conn {
    type Target = ConnState;
    fn deref(&self) -> &ConnState {
        &self.0
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut ConnState {
        &mut self.0
    }
}

/// The receiving side: bytes read and not yet used, and the head parser's scratch.
#[derive(Default)]
struct Reader {
    buf: BytesMut,
    /// Header names and value positions of the head being parsed, kept between responses so
    /// parsing one allocates nothing here.
    fields: Vec<(HeaderName, usize, usize)>,
}

/// A failed exchange; `before_response` tells whether any response byte had arrived (a
/// reused connection that fails before that was closed by the upstream while idle).
#[derive(Debug)]
pub struct ExchangeError {
    /// What went wrong.
    pub error: io::Error,
    /// No byte of the response had been received.
    pub before_response: bool,
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for ExchangeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

pub(super) fn protocol(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn closed_early() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "connection closed before message completed",
    )
}

/// A parsed response head and how its body is delimited.
pub struct Head {
    /// Status, version and headers.
    pub parts: http::response::Parts,
    framing: Framing,
    keep_alive: bool,
}

impl Conn {
    /// Wrap a fresh connection.
    pub fn new(io: Counted) -> Self {
        Conn(Box::new(ConnState {
            io,
            rd: Reader::default(),
            wbuf: Vec::new(),
        }))
    }

    /// Whether an idle connection can take another request: the upstream has neither closed
    /// it nor sent anything while it sat in the pool. Costs no system call unless the event
    /// loop saw the socket become readable.
    pub fn is_usable(&mut self) -> bool {
        let io = self.io.stream_mut();
        let tls = matches!(io, super::connector::UpIo::Tls(_));
        let stream = io.tcp();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Bytes on an idle TLS connection are a close_notify or garbage, never a
            // response; a probe would eat a record.
            Poll::Ready(Ok(())) if tls => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Send a request with no body and read the response head. `target` is the origin-form
    /// request target; `headers` go out as they are (Host included).
    pub async fn exchange(
        &mut self,
        method: &http::Method,
        target: &str,
        headers: &HeaderMap,
    ) -> Result<Head, ExchangeError> {
        // One borrow of the boxed state, split by field below.
        let st = &mut *self.0;
        encode_head(&mut st.wbuf, method, target, headers);
        // Any byte of an answer (an interim 1xx included) means the request was taken.
        let mut received = false;
        let failed = |error, received: bool| ExchangeError {
            error,
            before_response: !received,
        };
        // Write at the end of a saturated worker's tick, with the other connections'
        // requests, so that the upstream takes them in one wake-up as it does behind nginx,
        // which writes its batch of requests in one go.
        crate::tick_batch::end_of_tick().await;
        let stream = st.io.stream_mut();
        stream
            .write_all(&st.wbuf)
            .await
            .map_err(|e| failed(e, false))?;
        let head_only = method == http::Method::HEAD;
        loop {
            // Nothing is buffered before the first read of a normal exchange.
            if !st.rd.buf.is_empty() {
                if let Some(head) = st.rd.parse_head(head_only).map_err(|e| failed(e, true))? {
                    return Ok(head);
                }
            }
            st.rd.buf.reserve(READ_CHUNK);
            match stream.read_buf(&mut st.rd.buf).await {
                Ok(0) => return Err(failed(closed_early(), received)),
                Ok(_) => received = true,
                Err(e) => return Err(failed(e, received)),
            }
        }
    }
}

impl Reader {
    /// Parse a complete response head off the front of the buffer; `None` until one is
    /// there. Interim 1xx responses (100 Continue, 103 Early Hints) are skipped.
    fn parse_head(&mut self, head_only: bool) -> io::Result<Option<Head>> {
        loop {
            // Uninitialised slots: zeroing 100 of them per response cost more than parsing.
            let mut slots =
                [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
            let mut res = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default()
                .parse_response_with_uninit_headers(&mut res, &self.buf, &mut slots);
            // The size limit is checked the same way complete or not, so that where the
            // reads happened to cut the bytes never decides whether a head is accepted.
            let n = match parsed {
                Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
                    return Err(protocol("upstream response headers too large"))
                }
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) if self.buf.len() > MAX_HEAD => {
                    return Err(protocol("upstream response headers too large"))
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(protocol("too many upstream response headers"))
                }
                Err(_) => return Err(protocol("malformed upstream response head")),
            };
            let code = res.code.unwrap_or(0);
            if (100..200).contains(&code) && code != 101 {
                let _ = self.buf.split_to(n);
                continue;
            }
            if code == 101 {
                return Err(protocol("unexpected 101 Switching Protocols"));
            }
            let status = http::StatusCode::from_u16(code)
                .map_err(|_| protocol("bad upstream response status"))?;
            let http10 = res.version == Some(0);
            // Value positions in the buffer, so values can be cut from one shared copy of the
            // head instead of each being copied (as hyper does).
            let base = self.buf.as_ptr() as usize;
            let mut fields = std::mem::take(&mut self.fields);
            fields.clear();
            let mut delimiters = Delimiters::default();
            for h in res.headers.iter() {
                let name = crate::wire::header_name(h.name.as_bytes())
                    .map_err(|_| protocol("bad upstream response header name"))?;
                if delimiters.add(&name, h.value) {
                    continue;
                }
                let from = h.value.as_ptr() as usize - base;
                fields.push((name, from, from + h.value.len()));
            }
            // Room for the two headers the router adds (server, x-envoy-upstream-service-time)
            // without growing the map.
            let mut headers = crate::header_pool::take(fields.len() + 2);
            let head = self.buf.split_to(n).freeze();
            for (name, from, to) in fields.drain(..) {
                headers.append(name, crate::wire::header_value(head.slice(from..to)));
            }
            self.fields = fields;
            let (framing, keep_alive) = delimiters.framing(status, head_only, http10)?;
            let mut parts = http::Response::new(()).into_parts().0;
            parts.status = status;
            parts.version = if http10 {
                http::Version::HTTP_10
            } else {
                http::Version::HTTP_11
            };
            parts.headers = headers;
            return Ok(Some(Head {
                parts,
                framing,
                keep_alive,
            }));
        }
    }
}

/// A whole response decoded from `chunks` received one after another, as the inline exchange
/// and its body read them: the head, the body bytes and any trailers. The decoding must not
/// depend on where the chunks were cut (the `upstream_response` fuzz target checks this).
pub fn decode_response(
    chunks: &[&[u8]],
    head_only: bool,
) -> io::Result<(http::response::Parts, Vec<u8>, Option<HeaderMap>)> {
    let mut rd = Reader::default();
    let mut rest = chunks.iter();
    let head = loop {
        if let Some(h) = rd.parse_head(head_only)? {
            break h;
        }
        match rest.next() {
            Some(c) => rd.buf.extend_from_slice(c),
            None => return Err(closed_early()),
        }
    };
    let mut framing = head.framing;
    let (mut body, mut trailers) = (Vec::new(), None);
    loop {
        match framing.decode(&mut rd.buf)? {
            Step::Frame(f) => match f.into_data() {
                Ok(d) => body.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            },
            Step::End => break,
            Step::More => match rest.next() {
                Some(c) => rd.buf.extend_from_slice(c),
                None if framing == Framing::Close => break,
                None => return Err(closed_early()),
            },
        }
    }
    Ok((head.parts, body, trailers))
}

/// The request head: request line, headers, and `content-length: 0` for the methods whose
/// requests are expected to carry a body (as curl and hyper send it).
fn encode_head(out: &mut Vec<u8>, method: &http::Method, target: &str, headers: &HeaderMap) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let wants_length = matches!(
        *method,
        http::Method::POST | http::Method::PUT | http::Method::PATCH
    );
    if wants_length && !headers.contains_key(http::header::CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Where a connection goes when its response has been read to the end.
pub trait Release: Send + Unpin {
    /// Take back a connection that can carry another request.
    fn release(&mut self, conn: Conn);
}

/// A response body read from the connection in the reader's own task. The connection goes to
/// `home` as soon as the last byte is read, if the response allows reuse.
pub struct RawBody<R: Release> {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    home: Option<R>,
}

impl<R: Release> RawBody<R> {
    /// The body of `head`, read from `conn`.
    pub fn new(conn: Conn, head: &Head, home: Option<R>) -> Self {
        let mut body = RawBody {
            conn: Some(conn),
            framing: head.framing,
            keep_alive: head.keep_alive,
            home,
        };
        if body.framing.is_done() {
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        // Bytes after the end of the response were never asked for: do not reuse.
        if self.keep_alive && conn.rd.buf.is_empty() {
            if let Some(home) = self.home.as_mut() {
                home.release(conn);
            }
        }
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        Poll::Ready(Some(Err(Box::new(e))))
    }

    /// Poll the next frame; see [`hyper::body::Body::poll_frame`].
    pub fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.framing.decode(&mut conn.rd.buf) {
                Ok(Step::Frame(f)) => {
                    if self.framing.is_done() {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(f)));
                }
                Ok(Step::End) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(e) => return self.fail(e),
            }
            if conn.rd.buf.capacity() - conn.rd.buf.len() < READ_CHUNK / 4 {
                conn.rd.buf.reserve(READ_CHUNK);
            }
            let st = &mut *conn.0;
            let stream = Pin::new(st.io.stream_mut());
            match tokio_util::io::poll_read_buf(stream, cx, &mut st.rd.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if self.framing == Framing::Close => {
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => return self.fail(closed_early()),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return self.fail(e),
            }
        }
    }

    /// Whether the body has ended.
    pub fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.framing.is_done()
    }

    /// The exact size when `Content-Length` gave it.
    pub fn size_hint(&self) -> SizeHint {
        match (self.conn.is_some(), self.framing) {
            (false, _) => SizeHint::with_exact(0),
            (true, Framing::Length(n)) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::h1framing::tests::headers;
    use super::*;

    #[test]
    fn request_heads_are_encoded_as_sent() {
        let mut out = Vec::new();
        let h = headers(&[("host", "reviews:9080"), ("x-a", "1"), ("x-a", "2")]);
        encode_head(&mut out, &http::Method::GET, "/p?q=1", &h);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "GET /p?q=1 HTTP/1.1\r\nhost: reviews:9080\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
        );
        encode_head(&mut out, &http::Method::POST, "/", &headers(&[]));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn responses_decode_the_same_however_they_are_cut() {
        let wire: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nx-a: 1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;e=1\r\nde\r\n0\r\nx-t: 9\r\n\r\n";
        let whole = decode_response(&[wire], false).unwrap();
        assert_eq!(whole.0.status, 200);
        assert_eq!(whole.1, b"abcde");
        assert_eq!(whole.2.as_ref().unwrap().get("x-t").unwrap(), "9");
        for cut in 0..=wire.len() {
            let (a, b) = wire.split_at(cut);
            let split = decode_response(&[a, b], false).unwrap();
            assert_eq!(
                (split.0.status, &split.0.headers),
                (whole.0.status, &whole.0.headers)
            );
            assert_eq!((&split.1, &split.2), (&whole.1, &whole.2), "cut at {cut}");
        }
        // Cut short: an error, not a shorter body.
        assert!(decode_response(&[&wire[..wire.len() - 3]], false).is_err());
        // A head over the limit is refused whether it arrives whole or in pieces.
        let mut big = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        big.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
        assert!(decode_response(&[&big], false).is_err());
        let (a, b) = big.split_at(MAX_HEAD / 2);
        assert!(decode_response(&[a, b], false).is_err());
    }
}
