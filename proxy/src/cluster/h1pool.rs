//! HTTP/1.1 upstream connections: a stack of idle connections per host, each a hyper
//! `SendRequest` whose connection task runs on its own. A connection goes back on its host's
//! stack when the response body has been read to the end (or had none), so the next request
//! to that host reuses the most recently used one; a response dropped half-read takes its
//! connection with it. Idle connections close after the cluster's idle timeout.
//!
//! Leaner than hyper-util's pooled client, which this replaced: no per-request pool-key
//! hashing, URI rewriting, or "when ready" task spawned per request.

use super::connector::{ConnectError, CountingConnector};
use super::UpstreamBody;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Why an HTTP/1.1 request could not be sent or answered.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made.
    Connect(ConnectError),
    /// The connection failed or was reset before a response came.
    Http(hyper::Error),
}

struct Idle {
    tx: SendRequest<UpstreamBody>,
    since: Instant,
}

/// FxHash's multiply-rotate for the pool's keys, instead of SipHash: the keys are upstream
/// addresses from the config, not chosen by clients, and a request looks its host up twice
/// (take a connection, give it back).
#[derive(Default, Clone, Copy)]
struct AddrHasher(u64);

impl AddrHasher {
    fn add(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl std::hash::Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(w));
        }
    }
    fn write_u8(&mut self, v: u8) {
        self.add(v.into());
    }
    fn write_u16(&mut self, v: u16) {
        self.add(v.into());
    }
    fn write_u32(&mut self, v: u32) {
        self.add(v.into());
    }
    fn write_u64(&mut self, v: u64) {
        self.add(v);
    }
    fn write_usize(&mut self, v: usize) {
        self.add(v as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Default)]
struct State {
    idle: HashMap<SocketAddr, Vec<Idle>, std::hash::BuildHasherDefault<AddrHasher>>,
    reaper: bool,
}

/// Per-host HTTP/1.1 connections of one cluster.
pub struct H1Pool {
    connector: CountingConnector,
    idle_timeout: Option<Duration>,
    state: Mutex<State>,
    me: Weak<H1Pool>,
}

impl std::fmt::Debug for H1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Pool")
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl H1Pool {
    /// A pool dialling through `connector`; idle connections close after `idle_timeout`.
    pub fn new(connector: CountingConnector, idle_timeout: Option<Duration>) -> Arc<Self> {
        Arc::new_cyclic(|me| H1Pool {
            connector,
            idle_timeout,
            state: Mutex::new(State::default()),
            me: me.clone(),
        })
    }

    /// Send `req` (origin-form URI, Host header set) to `addr` on an idle connection, or a new
    /// one. A request the idle connection could not take (it closed meanwhile) is sent again on
    /// the next one.
    pub async fn send(
        &self,
        addr: SocketAddr,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        loop {
            let (mut tx, reused) = match self.checkout(addr).await {
                Some(tx) => (tx, true),
                None => (self.dial(addr).await?, false),
            };
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(addr, resp, tx)),
                Err(mut e) => match e.take_message() {
                    // Never written: the connection went away between checkout and send.
                    Some(r) if reused => req = r,
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    /// The most recently returned live connection to `addr`, ready for a request.
    async fn checkout(&self, addr: SocketAddr) -> Option<SendRequest<UpstreamBody>> {
        loop {
            let mut tx = {
                let mut st = self.state.lock().unwrap();
                let stack = st.idle.get_mut(&addr)?;
                let now = Instant::now();
                loop {
                    let i = stack.pop()?;
                    let expired = self
                        .idle_timeout
                        .is_some_and(|t| now.duration_since(i.since) >= t);
                    if !expired && !i.tx.is_closed() {
                        break i.tx;
                    }
                }
            };
            // Normally ready at once: the connection finished the previous exchange before
            // its response body ended here.
            if tx.is_ready() || tx.ready().await.is_ok() {
                return Some(tx);
            }
        }
    }

    async fn dial(&self, addr: SocketAddr) -> Result<SendRequest<UpstreamBody>, SendError> {
        let io = self
            .connector
            .connect(addr)
            .await
            .map_err(SendError::Connect)?;
        let (tx, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(SendError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("upstream connection to {addr} ended: {e}");
            }
        });
        Ok(tx)
    }

    fn wrap(
        &self,
        addr: SocketAddr,
        resp: Response<Incoming>,
        tx: SendRequest<UpstreamBody>,
    ) -> Response<PooledBody> {
        // An upgraded (101) connection is no longer HTTP: it is never reused.
        let back = (resp.status() != http::StatusCode::SWITCHING_PROTOCOLS)
            .then(|| self.me.upgrade())
            .flatten()
            .map(|pool| Checkin { pool, addr, tx });
        resp.map(|inner| PooledBody {
            inner,
            done: false,
            back,
        })
    }

    fn checkin(&self, addr: SocketAddr, tx: SendRequest<UpstreamBody>) {
        if tx.is_closed() {
            return;
        }
        let mut st = self.state.lock().unwrap();
        st.idle.entry(addr).or_default().push(Idle {
            tx,
            since: Instant::now(),
        });
        if let (Some(t), false) = (self.idle_timeout, st.reaper) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                st.reaper = true;
                rt.spawn(reap(self.me.clone(), t));
            }
        }
    }
}

/// Close connections idle for `timeout`; the task ends when the pool has no idle connection
/// left (the next check-in starts another) or the pool is gone.
async fn reap(pool: Weak<H1Pool>, timeout: Duration) {
    let mut wait = timeout;
    loop {
        tokio::time::sleep(wait).await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        let mut st = pool.state.lock().unwrap();
        let mut oldest: Option<Instant> = None;
        st.idle.retain(|_, stack| {
            stack.retain(|i| now.duration_since(i.since) < timeout && !i.tx.is_closed());
            // Pushed in order: the first is the oldest.
            if let Some(first) = stack.first() {
                oldest = Some(oldest.map_or(first.since, |o| o.min(first.since)));
            }
            !stack.is_empty()
        });
        match oldest {
            Some(o) => wait = (o + timeout).saturating_duration_since(now),
            None => {
                st.reaper = false;
                return;
            }
        }
    }
}

struct Checkin {
    pool: Arc<H1Pool>,
    addr: SocketAddr,
    tx: SendRequest<UpstreamBody>,
}

/// An upstream response body; an HTTP/1.1 one returns its connection to the pool once read to
/// the end.
pub struct PooledBody {
    inner: Incoming,
    done: bool,
    back: Option<Checkin>,
}

impl PooledBody {
    /// A body with no connection to return (HTTP/2).
    pub fn unpooled(inner: Incoming) -> Self {
        PooledBody {
            inner,
            done: false,
            back: None,
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if let Some(c) = self.back.take() {
            if self.done || self.inner.is_end_stream() {
                c.pool.checkin(c.addr, c.tx);
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => self.done = true,
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        r
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }
}
