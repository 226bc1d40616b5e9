//! The tonic `AggregatedDiscoveryService`: one task per stream drives a protocol
//! [`Handler`] (SotW or delta) from three event sources: client requests, cache changes and
//! server shutdown.

use super::cache::Cache;
use super::delta::Delta;
use super::sotw::Sotw;
use super::status::Board;
use super::Handler;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

/// Istio's CDS and LDS can exceed gRPC's 4 MiB default; Envoy and MOSN raise it too.
pub const MAX_MESSAGE_SIZE: usize = 64 << 20;

/// Responses buffered per stream before the stream task waits for the client to read.
const STREAM_BUFFER: usize = 16;

/// The ADS service: shared cache, status board and shutdown signal.
#[derive(Clone, Debug)]
pub struct Ads {
    cache: Cache,
    board: Board,
    shutdown: watch::Receiver<bool>,
    ids: Arc<AtomicU64>,
}

impl Ads {
    /// A service serving `cache`, publishing to `board`, ending streams when `shutdown` is true.
    pub fn new(cache: Cache, board: Board, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            cache,
            board,
            shutdown,
            ids: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The tonic service with the 64 MiB message limit in both directions.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub(super) fn spawn<H>(
        &self,
        handler: H,
        incoming: Streaming<H::Request>,
    ) -> ReceiverStream<Result<H::Response, Status>>
    where
        H: Handler + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(drive(
            handler,
            incoming,
            tx,
            self.cache.clone(),
            self.board.clone(),
            self.shutdown.clone(),
        ));
        ReceiverStream::new(rx)
    }

    /// Open one stream: number it, log it, and drive the handler `make(id, peer)` builds on
    /// its own task. Shared by the ADS and SDS services.
    pub(super) fn open<H>(
        &self,
        req: Request<Streaming<H::Request>>,
        what: &'static str,
        make: impl FnOnce(u64, String) -> H,
    ) -> Response<ReceiverStream<Result<H::Response, Status>>>
    where
        H: Handler + Send + 'static,
    {
        let (id, peer) = (self.next_id(), peer(&req));
        info!(stream = id, peer, "{what} stream opened");
        Response::new(self.spawn(make(id, peer), req.into_inner()))
    }

    /// The cache being served.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub(super) fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed) + 1
    }
}

fn peer<T>(req: &Request<T>) -> String {
    req.remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unix".into())
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Ok(self.open(req, "SotW ADS", |id, peer| Sotw::new(id, peer, "ADS")))
    }

    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Ok(self.open(req, "delta ADS", |id, peer| Delta::new(id, peer, "ADS")))
    }
}

/// Run one stream until the client goes away or the server shuts down.
async fn drive<H: Handler>(
    mut handler: H,
    mut incoming: Streaming<H::Request>,
    tx: mpsc::Sender<Result<H::Response, Status>>,
    cache: Cache,
    board: Board,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = cache.subscribe();
    board.publish(handler.status().clone());
    let id = handler.status().id;
    let reason = loop {
        let responses = tokio::select! {
            msg = incoming.message() => match msg {
                // Requests read the latest state without marking it seen, so the change
                // branch still runs for it and pushes other types that moved meanwhile.
                // (Clone the Arc first so the watch lock is not held while handling.)
                Ok(Some(req)) => {
                    let state = changes.borrow().clone();
                    handler.on_request(req, &state)
                }
                Ok(None) => break "client closed the stream".to_string(),
                Err(status) => break format!("stream error: {status}"),
            },
            changed = changes.changed() => match changed {
                Ok(()) => {
                    let state = changes.borrow_and_update().clone();
                    handler.on_change(&state)
                }
                Err(_) => break "cache dropped".to_string(),
            },
            _ = shutdown.wait_for(|stop| *stop) => break "server shutting down".to_string(),
            _ = tx.closed() => break "client went away".to_string(),
        };
        let mut gone = false;
        for r in responses {
            if tx.send(Ok(r)).await.is_err() {
                gone = true;
                break;
            }
        }
        board.publish(handler.status().clone());
        if gone {
            break "client went away".to_string();
        }
    };
    debug!(stream = id, reason, "ADS stream ended");
    info!(stream = id, "ADS stream closed");
    let status = handler.status();
    status.open = false;
    board.publish(status.clone());
}
