//! HTTP/2 (h2c) upstream connections: one multiplexed connection per host, re-dialled when it
//! closes, or once it has carried `max_requests_per_connection` streams (it then ends when its
//! last stream does). hyper-util's pooled client would put the endpoint address in
//! `:authority`; Envoy forwards the request's own authority, so h2 uses hyper's connection API
//! directly.

use super::connector::{BoxError, CountingConnector};
use super::UpstreamBody;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::Mutex;

/// Per-host h2 connections of one cluster.
#[derive(Debug)]
pub struct H2Pool {
    connector: CountingConnector,
    /// Each host's connection and the streams it has been given.
    conns: Mutex<HashMap<SocketAddr, (SendRequest<UpstreamBody>, u32)>>,
    max_requests: Option<u32>,
}

impl H2Pool {
    /// A pool dialling through `connector`; a connection carries at most `max_requests`
    /// streams.
    pub fn new(connector: CountingConnector, max_requests: Option<u32>) -> Arc<Self> {
        Arc::new(H2Pool {
            connector,
            conns: Mutex::new(HashMap::new()),
            max_requests,
        })
    }

    /// A sender for one request to `addr`, dialling if there is none, the old one closed, or
    /// it has carried `max_requests` streams.
    pub async fn sender(&self, addr: SocketAddr) -> Result<SendRequest<UpstreamBody>, BoxError> {
        // Holding the lock while dialling makes concurrent first requests share one
        // connection instead of racing to open several.
        let mut conns = self.conns.lock().await;
        if let Some((s, uses)) = conns.get_mut(&addr) {
            let spent = self.max_requests.is_some_and(|max| *uses >= max);
            // A busy connection (max concurrent streams) is still reused: the caller waits
            // for a stream slot with `ready()`.
            if !s.is_closed() && !spent {
                *uses += 1;
                return Ok(s.clone());
            }
            if spent && !s.is_closed() {
                self.connector.stats().cx_max_requests.inc();
            }
            // Dropping the last sender lets the connection finish its streams and close.
            conns.remove(&addr);
        }
        let io = self.connector.connect(addr).await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("upstream h2 connection to {addr} ended: {e}");
            }
        });
        conns.insert(addr, (sender.clone(), 1));
        Ok(sender)
    }
}
