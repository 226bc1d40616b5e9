//! Envoy's pending queue, shared by the HTTP/1.1 and HTTP/2 pools. As in Envoy's
//! `ConnPoolImplBase::newStreamImpl`, a request that finds no ready connection (h1) or stream
//! (h2) is pending from then on, while a connection is made for it too, and it is refused
//! (503 UO, `upstream_rq_pending_overflow`) when `max_pending_requests` are pending already.
//! It is counted once in `upstream_rq_pending_total`; `upstream_cx_overflow` counts, once per
//! request, that `max_connections` kept a connection from being made for it. A request that
//! cannot connect waits for a connection to be returned, to close, or for a stream to end; the
//! route timeout bounds the wait.

use super::connector::{ConnectError, CountingConnector};
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::futures::Notified;

/// How often a waiting request looks again without being woken.
const RECHECK: Duration = Duration::from_millis(50);

/// One request's stay in the pending queue; leaving `upstream_rq_pending_active` when dropped.
pub struct Pending<'a> {
    connector: &'a CountingConnector,
    counted: bool,
    /// `upstream_cx_overflow` counted for this request.
    overflowed: bool,
    /// The place in line, taken after the first look fails (the fast path takes none), and
    /// kept across the periodic looks, so waiters are served in the order they came (tokio's
    /// `notify_one` wakes the longest waiter). Only a wake-up that was used up takes a new
    /// place, at the back.
    place: Option<Pin<Box<Notified<'a>>>>,
}

impl<'a> Pending<'a> {
    /// Not waiting yet, and not counted.
    pub fn new(connector: &'a CountingConnector) -> Self {
        Pending {
            connector,
            counted: false,
            overflowed: false,
            place: None,
        }
    }

    /// Count the request as pending, the first time only; `Overflow` when `max_pending`
    /// requests wait already.
    pub fn enter(&mut self, max_pending: u64) -> Result<(), ConnectError> {
        if self.counted {
            return Ok(());
        }
        let stats = self.connector.stats();
        if stats.rq_pending_active.get() >= max_pending {
            stats.rq_pending_overflow.inc();
            return Err(ConnectError::Overflow);
        }
        stats.rq_pending_total.inc();
        stats.rq_pending_active.inc();
        self.counted = true;
        Ok(())
    }

    /// `max_connections` kept a connection from being made for this request: counted in
    /// `upstream_cx_overflow` the first time (`counted`: the connector counted it already).
    pub fn overflowed(&mut self, counted: bool) {
        if !std::mem::replace(&mut self.overflowed, true) && !counted {
            self.connector.stats().cx_overflow.inc();
        }
    }

    /// Wait to look again. The first call takes a place in line and returns at once: a
    /// connection or stream freed before the place was taken woke nobody. Later calls wait
    /// for a wake-up, or the periodic look, which covers a wake-up that went to a waiter that
    /// then lost the race.
    pub async fn wait(&mut self) {
        match self.place.as_mut() {
            None => {
                let mut place = Box::pin(self.connector.freed().notified());
                place.as_mut().enable();
                self.place = Some(place);
            }
            Some(place) => {
                if tokio::time::timeout(RECHECK, place.as_mut()).await.is_ok() {
                    self.place = None;
                }
            }
        }
    }
}

/// A connection was returned or a stream ended: wake the longest-waiting pending request, if
/// one waits (closes wake one through the connector's own slot).
pub fn wake_one(connector: &CountingConnector) {
    if connector.stats().rq_pending_active.get() > 0 {
        connector.freed().notify_one();
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.connector.stats().rq_pending_active.dec();
        }
    }
}
