//! HTTP/2 (h2c) upstream connections: multiplexed connections per host and transport flavor.
//! A request takes the first one with a stream to spare under the cluster's
//! `max_concurrent_streams` (Envoy's per-connection stream limit, unlimited by default), and a
//! new one is dialled when none has, while `max_connections` has room (a host's first
//! connection is dialled regardless, as Envoy's); past that the request waits in Envoy's
//! pending queue (`max_pending_requests`) for a stream to end. A connection is dropped when it
//! closes, or once it has carried `max_requests_per_connection` streams or reached
//! `max_connection_duration` (it then ends when its last stream does). A connection with no
//! stream open for the cluster's idle timeout is closed, as Envoy closes it
//! (`upstream_cx_idle_timeout`), and a host's entry goes when its connections have.
//!
//! hyper-util's pooled client would put the endpoint address in `:authority`; Envoy forwards
//! the request's own authority, so h2 uses hyper's connection API directly.

use super::connector::{BoxError, ConnectError, CountingConnector};
use super::h1pool::PoolKey;
use super::pending::Pending;
use super::wear::{self, Limits, Wear};
use super::UpstreamBody;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Mutex;

/// When a connection's last stream ended. The pool holds one reference and each open
/// [`Stream`] another, so more than one holder means the connection is busy.
#[derive(Debug)]
struct Activity {
    last_ms: AtomicU32,
    /// The cluster's connector: a stream that ends wakes a request pending for one.
    connector: CountingConnector,
    /// The connection's local address and TLS names.
    info: Arc<super::conn_info::ConnInfo>,
}

/// One open stream on a pooled h2 connection. It rides in the response body: while it lives
/// the connection is not idle, and dropping it starts the idle period.
#[derive(Debug)]
pub struct Stream(Arc<Activity>);

impl Stream {
    /// The local address and TLS names of the stream's connection.
    pub fn info(&self) -> &Arc<super::conn_info::ConnInfo> {
        &self.0.info
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let now = wear::now_ms(crate::clock::coarse_now());
        self.0.last_ms.store(now, Ordering::Relaxed);
        super::pending::wake_one(&self.0.connector);
    }
}

/// A host's connection: its sender, wear (streams given, age) and activity.
#[derive(Debug)]
struct Entry {
    tx: SendRequest<UpstreamBody>,
    wear: Wear,
    activity: Arc<Activity>,
}

impl Entry {
    /// Streams open on this connection: the marks handed out and not yet dropped.
    fn open(&self) -> usize {
        Arc::strong_count(&self.activity) - 1
    }
}

/// One host's connections.
type Slot = Arc<Mutex<Vec<Entry>>>;

/// Per-host h2 connections of one cluster.
#[derive(Debug)]
pub struct H2Pool {
    me: Weak<H2Pool>,
    connector: CountingConnector,
    /// A slot per host. Each has its own lock, held while dialling, so that a host whose
    /// connect hangs holds up only its own requests.
    /// Keyed by address and transport flavor, as the HTTP/1.1 pool ([`PoolKey`]).
    conns: std::sync::Mutex<HashMap<PoolKey, Slot>>,
    idle_timeout: Option<Duration>,
    limits: Limits,
    settings: crate::http2::H2Settings,
    /// `max_pending_requests`: requests that may wait for a stream at once.
    max_pending: u64,
    /// Whether the task that closes idle and aged connections runs.
    reaping: AtomicBool,
}

impl H2Pool {
    /// A pool dialling through `connector`, with `settings`; a connection lives within
    /// `limits`, and closes after `idle_timeout` without a stream. At most `max_pending`
    /// requests wait for a stream when every connection is full.
    pub fn new(
        connector: CountingConnector,
        idle_timeout: Option<Duration>,
        limits: Limits,
        settings: crate::http2::H2Settings,
        max_pending: u64,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| H2Pool {
            me: me.clone(),
            connector,
            conns: std::sync::Mutex::new(HashMap::new()),
            idle_timeout,
            limits,
            settings,
            max_pending,
            reaping: AtomicBool::new(false),
        })
    }

    /// A sender for one request to `addr` and the stream's mark, to keep until the response
    /// has ended: on the first connection with a stream to spare, else on a new one. Closed
    /// connections and those past the cluster's limits are dropped on the way.
    ///
    /// With every connection full and `max_connections` reached, the request waits for a
    /// stream to end or a connection to close, counted in `upstream_rq_pending_*` and
    /// `upstream_cx_overflow`, unless `max_pending_requests` wait already (503 UO,
    /// `upstream_rq_pending_overflow`), as in Envoy's pending queue. The route timeout bounds
    /// the wait.
    pub async fn sender(
        &self,
        addr: SocketAddr,
        tls: Option<&crate::tls::Dial>,
    ) -> Result<(SendRequest<UpstreamBody>, Stream), BoxError> {
        let key = PoolKey::new(addr, tls);
        let slot = self.conns.lock().unwrap().entry(key).or_default().clone();
        let cap = self.settings.max_concurrent_streams as usize;
        let stats = self.connector.stats();
        let mut pending = Pending::new(&self.connector);
        let (io, mut conns) = loop {
            // Holding the host's lock while dialling makes concurrent requests share the new
            // connection instead of racing to open several.
            let mut conns = slot.lock().await;
            let mut i = 0;
            while i < conns.len() {
                let e = &mut conns[i];
                // Dropping the last sender lets the connection finish its streams and close.
                // `allow` counts an age-out, once, as the connection goes.
                if e.tx.is_closed() || !self.limits.allow(&e.wear, stats) {
                    conns.swap_remove(i);
                    continue;
                }
                if e.open() < cap {
                    e.wear = e.wear.one_more();
                    return Ok((e.tx.clone(), Stream(e.activity.clone())));
                }
                i += 1;
            }
            // No stream to spare: the request is pending from here, the dial included (the
            // requests that wait for the host's lock meanwhile are not counted).
            pending.enter(self.max_pending)?;
            // No connection to this host yet: dial, past `max_connections` if need be (see
            // `connect_first`).
            if conns.is_empty() {
                break (self.connector.connect_first(addr, tls).await?, conns);
            }
            if self.connector.has_room() {
                match self.connector.connect(addr, tls).await {
                    Ok(io) => break (io, conns),
                    // Another host's request took the last slot first: wait with the rest.
                    Err(ConnectError::Overflow) => pending.overflowed(true),
                    Err(e) => return Err(e.into()),
                }
            } else {
                pending.overflowed(false);
            }
            drop(conns);
            // Streams that end and connections that close wake one waiter each.
            pending.wait().await;
        };
        drop(pending);
        let info = io.info().clone();
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        self.settings.client(&mut builder);
        let (tx, conn) = builder.handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("upstream h2 connection to {addr} ended: {e}");
            }
        });
        let activity = Arc::new(Activity {
            last_ms: AtomicU32::new(wear::now_ms(crate::clock::coarse_now())),
            connector: self.connector.clone(),
            info,
        });
        let stream = Stream(activity.clone());
        conns.push(Entry {
            tx: tx.clone(),
            wear: Wear::new().one_more(),
            activity,
        });
        drop(conns);
        self.start_reaper();
        Ok((tx, stream))
    }

    /// Start the reaper, unless it runs or nothing would ever be due.
    fn start_reaper(&self) {
        let Some(first) = [self.idle_timeout, self.limits.max_duration]
            .into_iter()
            .flatten()
            .min()
        else {
            return;
        };
        if self.reaping.swap(true, Ordering::AcqRel) {
            return; // the common case
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(reap(self.me.clone(), first))),
            Err(_) => self.reaping.store(false, Ordering::Release),
        }
    }
}

/// Close connections without a stream for the idle timeout, or past `max_connection_duration`
/// (their open streams finish first), and forget hosts whose connection is gone. The task ends
/// when the pool has no host left (the next connection starts another) or is gone.
async fn reap(pool: Weak<H2Pool>, first: Duration) {
    let mut wait = first;
    loop {
        tokio::time::sleep(wait).await;
        let Some(pool) = pool.upgrade() else { return };
        let now = crate::clock::coarse_now();
        let stats = pool.connector.stats();
        let mut next = now + first;
        let mut conns = pool.conns.lock().unwrap();
        conns.retain(|_, slot| {
            // Locked: being dialled or handed out; look again later.
            let Ok(mut entries) = slot.try_lock() else {
                return true;
            };
            entries.retain(|e| {
                let busy = e.open() > 0;
                let idle_for = wear::since(e.activity.last_ms.load(Ordering::Relaxed), now);
                // A busy connection is looked at again one idle timeout on: its idle period
                // cannot end sooner.
                let idle_due = pool
                    .idle_timeout
                    .map(|t| now + if busy { t } else { t.saturating_sub(idle_for) });
                let idle_out = !busy && idle_due.is_some_and(|d| d <= now);
                let live = !e.tx.is_closed();
                if idle_out && live {
                    stats.cx_idle_timeout.inc();
                }
                // `allow` counts an age-out, as when a connection is taken.
                let keep = live && !idle_out && pool.limits.allow(&e.wear, stats);
                if keep {
                    let due = [idle_due, e.wear.retire_at(&pool.limits, now)]
                        .into_iter()
                        .flatten()
                        .min();
                    next = due.map_or(next, |d| d.min(next));
                }
                keep
            });
            // An empty slot stays while a request holds it, to dial into it.
            !entries.is_empty() || Arc::strong_count(slot) > 1
        });
        if conns.is_empty() {
            pool.reaping.store(false, Ordering::Release);
            return;
        }
        // At least a tick: the coarse clock may not have reached the deadline yet.
        wait = next.saturating_sub(now).max(crate::clock::resolution());
    }
}
