//! HTTP/1.1 upstream connections: stacks of idle connections per host. A connection goes back
//! on its host's stack when the response body has been read to the end (or had none), so the
//! next request to that host reuses the most recently used one; a response dropped half-read
//! takes its connection with it. Idle connections close after the cluster's idle timeout.
//!
//! Requests without a body (nearly all proxied GETs) are exchanged inline by
//! [`super::h1conn`]; requests with a body to stream, and upgrades, go through hyper's client
//! (`SendRequest`, its connection task running on its own). Each kind has its own stack.
//!
//! Leaner than hyper-util's pooled client, which this replaced: no per-request pool-key
//! hashing, URI rewriting, or "when ready" task spawned per request.

use super::conn_info::ConnInfo;
use super::connector::{ConnectError, CountingConnector, HostMark};
pub use super::h1body::PooledBody;
use super::h1body::{Checkin, Home, HyperTx, Kind};
use super::h1conn::{Conn, ExchangeError, RawBody};
use super::pending::Pending;
use super::wear::{Limits, Wear};
use super::UpstreamBody;
use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Why an HTTP/1.1 request could not be sent or answered.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made.
    Connect(ConnectError),
    /// The connection failed or was reset before a response came.
    Http(hyper::Error),
    /// The same, on an inline exchange.
    Exchange(ExchangeError),
}

struct Idle<T> {
    conn: T,
    /// When it was checked in, on the coarse clock: idle timeouts are seconds to hours.
    since: Duration,
    /// Requests carried and age, for the cluster's [`Limits`].
    wear: Wear,
}

type ByAddr<T> = HashMap<PoolKey, Vec<Idle<T>>, rustc_hash::FxBuildHasher>;

/// What a pooled connection is for: its upstream address and its transport's flavor
/// ([`crate::tls::Dial::flavor`], 0 for plaintext). A connection is reused only for the same
/// key, so an endpoint whose `tlsMode` changes, or a request that offers other ALPN
/// protocols, gets a connection of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The upstream address.
    pub addr: SocketAddr,
    /// The transport's flavor.
    pub flavor: u64,
}

impl PoolKey {
    /// The key of connections to `addr` made with `tls`.
    pub fn new(addr: SocketAddr, tls: Option<&crate::tls::Dial>) -> Self {
        PoolKey {
            addr,
            flavor: tls.map_or(0, |d| d.flavor),
        }
    }
}

#[derive(Default)]
struct State {
    /// Connections driven by hyper's client.
    idle: ByAddr<HyperTx>,
    /// Connections exchanged inline.
    raw: ByAddr<Conn>,
    /// Each key's mark, held by its connections, idle or not.
    marks: HashMap<PoolKey, Arc<HostMark>, rustc_hash::FxBuildHasher>,
    reaper: bool,
}

/// Per-host HTTP/1.1 connections of one cluster.
pub struct H1Pool {
    connector: CountingConnector,
    idle_timeout: Option<Duration>,
    max_pending: u64,
    /// A connection past these is closed instead of going back or being handed out.
    limits: Limits,
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
    /// A pool dialling through `connector`; idle connections close after `idle_timeout`; at
    /// most `max_pending` requests wait for a connection when `max_connections` is reached; a
    /// connection lives within `limits`.
    pub fn new(
        connector: CountingConnector,
        idle_timeout: Option<Duration>,
        max_pending: u64,
        limits: Limits,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| H1Pool {
            connector,
            idle_timeout,
            max_pending,
            limits,
            state: Mutex::new(State::default()),
            me: me.clone(),
        })
    }

    /// Send `req` (origin-form URI, Host header set) to `addr` on an idle connection, or a new
    /// one. A request the idle connection could not take (it closed meanwhile) is sent again on
    /// the next one.
    ///
    /// The request is borrowed from the caller's `Option`, and taken from it only when
    /// hyper's client needs it whole: moving a request (about 240 bytes) through each layer
    /// of the attempt was a `memcpy` per layer.
    ///
    /// `conn` is set to the connection the request goes out on as soon as it has one, so the
    /// caller knows it even when the exchange fails or is given up.
    pub async fn send(
        &self,
        addr: SocketAddr,
        tls: Option<&crate::tls::Dial>,
        req: &mut Option<Request<UpstreamBody>>,
        conn: &mut Option<Arc<ConnInfo>>,
    ) -> Result<Response<PooledBody>, SendError> {
        debug_assert!(req.is_some(), "a request is sent once per attempt");
        let Some(r) = req.as_mut() else {
            return Err(SendError::Exchange(ExchangeError {
                error: std::io::Error::other("request already sent"),
                before_response: true,
            }));
        };
        let key = PoolKey::new(addr, tls);
        if inline(r) {
            return self.send_inline(key, tls, r, conn).await;
        }
        let req = req.take().expect("checked above");
        // Boxed: hyper's handshake and send futures would otherwise make every request's
        // future (and each move of it) several times larger.
        Box::pin(self.send_hyper(key, tls, req, conn)).await
    }

    /// A request with a body to stream, or an upgrade, through hyper's client.
    async fn send_hyper(
        &self,
        key: PoolKey,
        tls: Option<&crate::tls::Dial>,
        mut req: Request<UpstreamBody>,
        conn: &mut Option<Arc<ConnInfo>>,
    ) -> Result<Response<PooledBody>, SendError> {
        loop {
            let (mut tx, wear) = match self.acquire(key, tls, false, Self::take_hyper).await? {
                Got::Idle(mut tx, wear) => {
                    // Normally ready at once: the connection finished the previous exchange
                    // before its response body ended here.
                    if !tx.tx.is_ready() && tx.tx.ready().await.is_err() {
                        continue;
                    }
                    (tx, wear)
                }
                Got::Fresh(io) => (self.handshake(key.addr, io).await?, Wear::new()),
            };
            let reused = wear.uses > 0;
            *conn = Some(tx.info.clone());
            match tx.tx.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(key, resp, tx, wear.one_more())),
                Err(mut e) => match e.take_message() {
                    // Never written: the connection went away between checkout and send.
                    Some(r) if reused => req = r,
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    /// A bodiless request, exchanged inline. A reused connection that fails before any byte
    /// of the response arrived was closed by the upstream while idle: an idempotent request
    /// is sent again on the next connection, as HTTP clients do (RFC 9110 §9.2.2).
    async fn send_inline(
        &self,
        key: PoolKey,
        tls: Option<&crate::tls::Dial>,
        req: &mut Request<UpstreamBody>,
        info: &mut Option<Arc<ConnInfo>>,
    ) -> Result<Response<PooledBody>, SendError> {
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        loop {
            let (mut conn, wear) = match self.acquire(key, tls, true, Self::take_raw).await? {
                Got::Idle(c, wear) => (c, wear),
                Got::Fresh(io) => (Conn::new(io), Wear::new()),
            };
            let reused = wear.uses > 0;
            *info = Some(conn.info().clone());
            match conn.exchange(req.method(), target, req.headers()).await {
                Ok(head) => {
                    crate::header_pool::give(std::mem::take(req.headers_mut()));
                    let home = self.me.upgrade().map(|pool| Home {
                        pool,
                        key,
                        wear: wear.one_more(),
                    });
                    let body = RawBody::new(conn, &head, home);
                    return Ok(Response::from_parts(
                        head.parts,
                        PooledBody(Kind::Raw(body)),
                    ));
                }
                Err(e) if reused && e.before_response && req.method().is_idempotent() => {
                    tracing::debug!("idle upstream connection to {} was closed: {e}", key.addr);
                }
                Err(e) => return Err(SendError::Exchange(e)),
            }
        }
    }

    /// A connection for a request to `key`: an idle one of the kind it needs (`raw`: inline,
    /// else hyper's), taken by `take`, or a new one.
    ///
    /// Envoy's pending queue: with `max_connections` reached, an idle connection this request
    /// cannot use (the other kind, or under another key) is closed to make room; failing that,
    /// a host with no connection at all gets one past the limit, as in Envoy (see
    /// [`CountingConnector::connect_first`]); else the request waits until a connection is
    /// returned or closed, counted once in `upstream_rq_pending_*` and `upstream_cx_overflow`,
    /// unless `max_pending_requests` are waiting already (503 UO,
    /// `upstream_rq_pending_overflow`). The route timeout bounds the wait.
    async fn acquire<T>(
        &self,
        key: PoolKey,
        tls: Option<&crate::tls::Dial>,
        raw: bool,
        take: fn(&Self, PoolKey) -> Option<(T, Wear)>,
    ) -> Result<Got<T>, SendError> {
        let mut pending = Pending::new(&self.connector);
        loop {
            if let Some((c, wear)) = take(self, key) {
                return Ok(Got::Idle(c, wear));
            }
            // No ready connection: the request is pending from here, the dial included.
            pending
                .enter(self.max_pending)
                .map_err(SendError::Connect)?;
            if self.connector.has_room() {
                // Held from before the dial, so that a concurrent request to the host counts
                // this connection too.
                let mark = self.mark(key);
                match self.connector.connect(key.addr, tls).await {
                    Ok(io) => return Ok(Got::Fresh(io.marked(mark))),
                    // Another request took the last slot first (the connector counted it).
                    Err(ConnectError::Overflow) => {
                        pending.overflowed(true);
                        continue;
                    }
                    Err(e) => return Err(SendError::Connect(e)),
                }
            }
            match self.evict_unusable(key, raw) {
                Evicted::Closed => continue,
                Evicted::Closing => pending.overflowed(false),
                Evicted::Nothing => {
                    if let Some(mark) = self.first_mark(key) {
                        return match self.connector.connect_first(key.addr, tls).await {
                            Ok(io) => Ok(Got::Fresh(io.marked(mark))),
                            Err(e) => Err(SendError::Connect(e)),
                        };
                    }
                    pending.overflowed(false);
                }
            }
            // Returns and closes wake one waiter each.
            pending.wait().await;
        }
    }

    /// A clone of `key`'s mark, for a connection about to be dialled.
    fn mark(&self, key: PoolKey) -> Arc<HostMark> {
        self.state
            .lock()
            .unwrap()
            .marks
            .entry(key)
            .or_default()
            .clone()
    }

    /// [`mark`](Self::mark), only when the host has no connection (open, idle, or being
    /// made).
    fn first_mark(&self, key: PoolKey) -> Option<Arc<HostMark>> {
        let mut st = self.state.lock().unwrap();
        let mark = st.marks.entry(key).or_default();
        HostMark::unused(mark).then(|| mark.clone())
    }

    /// Close one idle connection that a request of kind `raw` to `key` cannot use: the other
    /// kind under the same key first, then any under another key (another host, or the same
    /// host over another transport).
    fn evict_unusable(&self, key: PoolKey, raw: bool) -> Evicted {
        let mut st = self.state.lock().unwrap();
        let st = &mut *st;
        if !raw && drop_oldest(&mut st.raw, Some(key)) {
            return Evicted::Closed;
        }
        if raw && drop_oldest(&mut st.idle, Some(key)) {
            return Evicted::Closing;
        }
        if drop_oldest(&mut st.raw, None) {
            Evicted::Closed
        } else if drop_oldest(&mut st.idle, None) {
            Evicted::Closing
        } else {
            Evicted::Nothing
        }
    }

    /// The most recently returned usable inline connection to `key`.
    fn take_raw(&self, key: PoolKey) -> Option<(Conn, Wear)> {
        let mut st = self.state.lock().unwrap();
        self.pop_live(st.raw.get_mut(&key)?, |c| c.is_usable())
    }

    /// The most recently returned live hyper connection to `key`.
    fn take_hyper(&self, key: PoolKey) -> Option<(HyperTx, Wear)> {
        let mut st = self.state.lock().unwrap();
        self.pop_live(st.idle.get_mut(&key)?, |c| !c.tx.is_closed())
    }

    /// Pop connections off `stack`, most recent first, dropping those idle past the idle
    /// timeout, no longer `live`, or past the cluster's [`Limits`], until one is left to use.
    fn pop_live<T>(
        &self,
        stack: &mut Vec<Idle<T>>,
        mut live: impl FnMut(&mut T) -> bool,
    ) -> Option<(T, Wear)> {
        // The clock is read only when there is a timeout to check.
        let limit = self.idle_timeout.map(|t| (crate::clock::coarse_now(), t));
        while let Some(mut i) = stack.pop() {
            let fresh = limit.is_none_or(|(now, t)| now.saturating_sub(i.since) < t);
            if !fresh {
                // The reaper had not come round to it yet.
                self.connector.stats().cx_idle_timeout.inc();
            } else if live(&mut i.conn) && self.limits.allow(&i.wear, self.connector.stats()) {
                return Some((i.conn, i.wear));
            }
        }
        None
    }

    async fn handshake(
        &self,
        addr: SocketAddr,
        io: super::connector::Counted,
    ) -> Result<HyperTx, SendError> {
        let info = io.info().clone();
        let (tx, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(SendError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("upstream connection to {addr} ended: {e}");
            }
        });
        Ok(HyperTx { tx, info })
    }

    fn wrap(
        &self,
        key: PoolKey,
        resp: Response<Incoming>,
        tx: HyperTx,
        wear: Wear,
    ) -> Response<PooledBody> {
        // An upgraded (101) connection is no longer HTTP: it is never reused.
        let back = (resp.status() != http::StatusCode::SWITCHING_PROTOCOLS)
            .then(|| self.me.upgrade())
            .flatten()
            .map(|pool| Checkin {
                pool,
                key,
                tx,
                wear,
            });
        resp.map(|inner| {
            PooledBody(Kind::Hyper {
                inner,
                done: false,
                back,
            })
        })
    }

    pub(super) fn checkin(&self, key: PoolKey, tx: HyperTx, wear: Wear) {
        if tx.tx.is_closed() {
            return;
        }
        self.put_back(|st| &mut st.idle, key, tx, wear);
    }

    pub(super) fn checkin_raw(&self, key: PoolKey, conn: Conn, wear: Wear) {
        self.put_back(|st| &mut st.raw, key, conn, wear);
    }

    /// Push a returned connection on its host's stack (of the kind `stacks` picks), keep the
    /// reaper going, and wake a request waiting under `max_connections`: a returned
    /// connection is room for it. One past the cluster's [`Limits`] is closed instead (its
    /// slot frees when it is gone).
    fn put_back<T>(
        &self,
        stacks: fn(&mut State) -> &mut ByAddr<T>,
        key: PoolKey,
        conn: T,
        wear: Wear,
    ) {
        if !self.limits.allow(&wear, self.connector.stats()) {
            return;
        }
        let mut st = self.state.lock().unwrap();
        stacks(&mut st).entry(key).or_default().push(Idle {
            conn,
            since: crate::clock::coarse_now(),
            wear,
        });
        self.start_reaper(&mut st);
        drop(st);
        super::pending::wake_one(&self.connector);
    }

    fn start_reaper(&self, st: &mut State) {
        if st.reaper {
            return; // the common case: every check-in comes here
        }
        let first = [self.idle_timeout, self.limits.max_duration]
            .into_iter()
            .flatten()
            .min();
        if let Some(first) = first {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                st.reaper = true;
                rt.spawn(reap(self.me.clone(), first));
            }
        }
    }
}

/// Close connections idle for the idle timeout or older than `max_connection_duration`; the
/// task ends when the pool has no idle connection left (the next check-in starts another) or
/// the pool is gone.
async fn reap(pool: Weak<H1Pool>, first: Duration) {
    let mut wait = first;
    loop {
        tokio::time::sleep(wait).await;
        let Some(pool) = pool.upgrade() else { return };
        let now = crate::clock::coarse_now();
        let (timeout, limits) = (pool.idle_timeout, pool.limits);
        let stats = pool.connector.stats();
        let mut st = pool.state.lock().unwrap();
        let mut next: Option<Duration> = None;
        // Idle past the idle timeout, or past the cluster's limits (`allow` counts an
        // age-out, as when a connection is taken or given back).
        let mut keep = |since: Duration, wear: &Wear, live: bool| {
            let idle = timeout.map(|t| since + t);
            let idle_out = idle.is_some_and(|d| now >= d);
            if live && idle_out {
                stats.cx_idle_timeout.inc();
            }
            let keep = live && !idle_out && limits.allow(wear, stats);
            let due = [idle, wear.retire_at(&limits, now)]
                .into_iter()
                .flatten()
                .min();
            if let (true, Some(d)) = (keep, due) {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
            keep
        };
        st.idle.retain(|_, stack| {
            stack.retain(|i| keep(i.since, &i.wear, !i.conn.tx.is_closed()));
            !stack.is_empty()
        });
        st.raw.retain(|_, stack| {
            stack.retain_mut(|i| keep(i.since, &i.wear, i.conn.is_usable()));
            !stack.is_empty()
        });
        // Hosts left without connections (an EDS host that went away).
        st.marks.retain(|_, m| !HostMark::unused(m));
        match next {
            // At least a tick: the coarse clock may not have reached the deadline yet.
            Some(d) => wait = d.saturating_sub(now).max(crate::clock::resolution()),
            None => {
                st.reaper = false;
                return;
            }
        }
    }
}

/// Drop the oldest idle connection for `key` (for any when `None`); whether there was one.
fn drop_oldest<T>(stacks: &mut ByAddr<T>, key: Option<PoolKey>) -> bool {
    let stack = match key {
        Some(a) => stacks.get_mut(&a).filter(|s| !s.is_empty()),
        None => stacks.values_mut().find(|s| !s.is_empty()),
    };
    stack.map(|s| drop(s.remove(0))).is_some()
}

/// What [`H1Pool::acquire`] found: an idle connection (with its wear), or a new one to set up.
enum Got<T> {
    Idle(T, Wear),
    Fresh(super::connector::Counted),
}

/// What [`H1Pool::evict_unusable`] did.
enum Evicted {
    /// Closed an inline connection: its slot is free now.
    Closed,
    /// Dropped a hyper connection: its task frees the slot when it ends.
    Closing,
    Nothing,
}

/// Whether a request can be exchanged inline: no body to stream, no upgrade, no
/// `Expect: 100-continue` handshake, not CONNECT (whose 2xx turns the connection into a
/// tunnel).
fn inline(req: &Request<UpstreamBody>) -> bool {
    req.method() != http::Method::CONNECT
        && req.body().is_end_stream()
        && !req.headers().contains_key(http::header::UPGRADE)
        && !req.headers().contains_key(http::header::EXPECT)
}
