//! HTTP/2 (h2c) upstream connections: one multiplexed connection per host, re-dialled when it
//! closes. hyper-util's pooled client would put the endpoint address in `:authority`; Envoy
//! forwards the request's own authority, so h2 uses hyper's connection API directly.

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
    conns: Mutex<HashMap<SocketAddr, SendRequest<UpstreamBody>>>,
}

impl H2Pool {
    /// A pool dialling through `connector`.
    pub fn new(connector: CountingConnector) -> Arc<Self> {
        Arc::new(H2Pool {
            connector,
            conns: Mutex::new(HashMap::new()),
        })
    }

    /// A ready sender to `addr`, dialling if there is none or the old one closed.
    pub async fn sender(&self, addr: SocketAddr) -> Result<SendRequest<UpstreamBody>, BoxError> {
        // Holding the lock while dialling makes concurrent first requests share one
        // connection instead of racing to open several.
        let mut conns = self.conns.lock().await;
        if let Some(s) = conns.get(&addr) {
            // A busy connection (max concurrent streams) is still reused: the caller waits
            // for a stream slot with `ready()`.
            if !s.is_closed() {
                return Ok(s.clone());
            }
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
        conns.insert(addr, sender.clone());
        Ok(sender)
    }
}
