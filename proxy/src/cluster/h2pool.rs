//! HTTP/2 (h2c) upstream connections: one multiplexed connection per host, re-dialled when it
//! closes, or once it has carried `max_requests_per_connection` streams or reached
//! `max_connection_duration` (it then ends when its last stream does). hyper-util's pooled
//! client would put the endpoint address in `:authority`; Envoy forwards the request's own
//! authority, so h2 uses hyper's connection API directly.

use super::connector::{BoxError, CountingConnector};
use super::wear::{Limits, Wear};
use super::UpstreamBody;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::Mutex;

/// One host's connection and its wear (streams given, age), if it has one.
type Slot = Arc<Mutex<Option<(SendRequest<UpstreamBody>, Wear)>>>;

/// Per-host h2 connections of one cluster.
#[derive(Debug)]
pub struct H2Pool {
    connector: CountingConnector,
    /// A slot per host. Each has its own lock, held while dialling, so that a host whose
    /// connect hangs holds up only its own requests.
    /// Keyed by address and transport flavor, as the HTTP/1.1 pool
    /// ([`super::h1pool::PoolKey`]).
    conns: std::sync::Mutex<HashMap<super::h1pool::PoolKey, Slot>>,
    limits: Limits,
    settings: crate::http2::H2Settings,
}

impl H2Pool {
    /// A pool dialling through `connector`, with `settings`; a connection lives within
    /// `limits`.
    pub fn new(
        connector: CountingConnector,
        limits: Limits,
        settings: crate::http2::H2Settings,
    ) -> Arc<Self> {
        Arc::new(H2Pool {
            connector,
            conns: std::sync::Mutex::new(HashMap::new()),
            limits,
            settings,
        })
    }

    /// A sender for one request to `addr`, dialling if there is none, the old one closed, or
    /// it is past the cluster's limits.
    pub async fn sender(
        &self,
        addr: SocketAddr,
        tls: Option<&crate::tls::Dial>,
    ) -> Result<SendRequest<UpstreamBody>, BoxError> {
        let key = super::h1pool::PoolKey::new(addr, tls);
        let slot = self.conns.lock().unwrap().entry(key).or_default().clone();
        // Holding the host's lock while dialling makes concurrent first requests share one
        // connection instead of racing to open several.
        let mut slot = slot.lock().await;
        if let Some((s, wear)) = slot.as_mut() {
            // A busy connection (max concurrent streams) is still reused: the caller waits
            // for a stream slot with `ready()`.
            if !s.is_closed() && self.limits.allow(wear, self.connector.stats()) {
                *wear = wear.one_more();
                return Ok(s.clone());
            }
            // Dropping the last sender lets the connection finish its streams and close.
            *slot = None;
        }
        let io = self.connector.connect(addr, tls).await?;
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        self.settings.client(&mut builder);
        let (sender, conn) = builder.handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("upstream h2 connection to {addr} ended: {e}");
            }
        });
        *slot = Some((sender.clone(), Wear::new().one_more()));
        Ok(sender)
    }
}
