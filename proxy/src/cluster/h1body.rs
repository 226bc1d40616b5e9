//! The body of an HTTP/1.1 upstream response: it returns its connection to the pool once
//! read to the end (an HTTP/2 one has nothing to return).

use super::conn_info::ConnInfo;
use super::connector::BoxError;
use super::h1conn::{Conn, RawBody, Release};
use super::h1pool::H1Pool;
use super::wear::Wear;
use super::UpstreamBody;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// A hyper client connection: its sender, and what the access log knows of it (hyper holds
/// the socket).
pub(super) struct HyperTx {
    pub(super) tx: SendRequest<UpstreamBody>,
    pub(super) info: Arc<ConnInfo>,
}

/// Where a hyper client connection goes back to.
pub(super) struct Checkin {
    pub(super) pool: Arc<H1Pool>,
    pub(super) key: super::h1pool::PoolKey,
    pub(super) tx: HyperTx,
    /// Requests carried, this one included, and age.
    pub(super) wear: Wear,
}

/// Where an inline connection goes back to.
pub(super) struct Home {
    pub(super) pool: Arc<H1Pool>,
    pub(super) key: super::h1pool::PoolKey,
    /// Requests carried, this one included, and age.
    pub(super) wear: Wear,
}

impl Release for Home {
    fn release(&mut self, conn: Conn) {
        self.pool.checkin_raw(self.key, conn, self.wear);
    }
}

/// An upstream response body; an HTTP/1.1 one returns its connection to the pool once read to
/// the end.
pub struct PooledBody(pub(super) Kind);

/// A hyper client's body (with the connection to check in), or an inline exchange's.
pub(super) enum Kind {
    Hyper {
        inner: Incoming,
        done: bool,
        back: Option<Checkin>,
    },
    Raw(RawBody<Home>),
    /// An HTTP/2 stream's body, with the mark that keeps its connection from idling out.
    H2 {
        inner: Incoming,
        _stream: super::h2pool::Stream,
    },
}

impl PooledBody {
    /// An HTTP/2 stream's body: no connection to return, but the connection is busy until
    /// the body is dropped.
    pub fn h2(inner: Incoming, stream: super::h2pool::Stream) -> Self {
        PooledBody(Kind::H2 {
            inner,
            _stream: stream,
        })
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if let Kind::Hyper { inner, done, back } = &mut self.0 {
            if let Some(c) = back.take() {
                if *done || inner.is_end_stream() {
                    c.pool.checkin(c.key, c.tx, c.wear);
                }
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.0 {
            Kind::Raw(b) => b.poll_next(cx),
            Kind::H2 { inner, .. } => Pin::new(inner)
                .poll_frame(cx)
                .map(|o| o.map(|r| r.map_err(Into::into))),
            Kind::Hyper { inner, done, back } => {
                let r = Pin::new(inner).poll_frame(cx);
                match &r {
                    Poll::Ready(None) => *done = true,
                    Poll::Ready(Some(Err(_))) => *back = None,
                    _ => {}
                }
                r.map(|o| o.map(|r| r.map_err(Into::into)))
            }
        }
    }
    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Raw(b) => b.size_hint(),
            Kind::H2 { inner, .. } => inner.size_hint(),
            Kind::Hyper { inner, .. } => inner.size_hint(),
        }
    }
    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Raw(b) => b.is_end_stream(),
            Kind::H2 { inner, .. } => inner.is_end_stream(),
            Kind::Hyper { inner, done, .. } => *done || inner.is_end_stream(),
        }
    }
}
