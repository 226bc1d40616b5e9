//! State-of-the-world ADS (`StreamAggregatedResources`): every request for a type carries the
//! full list of names; CDS and LDS responses are complete sets.

use super::apply::{Incoming, Update};
use super::engine::Engine;
use super::transport::Client;
use super::Kind;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status;
use std::collections::BTreeSet;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// gRPC `INVALID_ARGUMENT`, the code Envoy puts in a NACK's `error_detail`.
pub const INVALID_ARGUMENT: i32 = 3;

struct Stream<'a> {
    engine: &'a mut Engine,
    tx: mpsc::UnboundedSender<DiscoveryRequest>,
    /// Names last sent per kind (`None`: not subscribed on this stream).
    sent: [Option<BTreeSet<String>>; 4],
    node_sent: bool,
}

/// Run one stream until it ends. Returns whether a response arrived (resets the backoff) and
/// why the stream ended.
pub async fn run(engine: &mut Engine, client: &mut Client) -> (bool, String) {
    let (tx, rx) = mpsc::unbounded_channel();
    for t in engine.state.types.iter_mut() {
        t.nonce.clear(); // nonces belong to the previous stream
    }
    let mut s = Stream {
        engine,
        tx,
        sent: Default::default(),
        node_sent: false,
    };
    // Queue the subscriptions before the call: some servers (grpc-go) send their response
    // headers only with the first response.
    s.sync();
    let inbound = match client
        .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => return (false, format!("StreamAggregatedResources: {e}")),
    };
    super::engine::pump(&mut s, inbound, "state of the world").await
}

impl super::engine::Protocol for Stream<'_> {
    type Response = DiscoveryResponse;

    fn engine(&mut self) -> &mut Engine {
        self.engine
    }

    fn sync(&mut self) {
        Stream::sync(self)
    }

    async fn on_response(&mut self, resp: DiscoveryResponse) {
        Stream::on_response(self, resp).await
    }
}

impl Stream<'_> {
    fn send(&mut self, mut req: DiscoveryRequest) {
        if !self.node_sent || !self.engine.cfg.node_first_only {
            req.node = Some(self.engine.cfg.node.clone());
            self.node_sent = true;
        }
        let _ = self.tx.send(req);
    }

    fn request(&self, k: Kind) -> DiscoveryRequest {
        let ty = &self.engine.state.types[k.idx()];
        DiscoveryRequest {
            version_info: ty.version.clone(),
            resource_names: self.sent[k.idx()].iter().flatten().cloned().collect(),
            type_url: k.type_url().into(),
            response_nonce: ty.nonce.clone(),
            ..Default::default()
        }
    }

    /// Send a request for every kind whose wanted names differ from what was sent.
    fn sync(&mut self) {
        for k in Kind::ALL {
            let Some(want) = self.engine.wanted(k) else {
                continue;
            };
            let sent = &self.sent[k.idx()];
            if sent.as_ref() == Some(&want) {
                continue;
            }
            // An empty list would mean "everything" for EDS/RDS; only send one to drop
            // names that were subscribed before.
            if !k.wildcard() && want.is_empty() && sent.is_none() {
                continue;
            }
            self.sent[k.idx()] = Some(want);
            let req = self.request(k);
            self.send(req);
        }
    }

    async fn on_response(&mut self, resp: DiscoveryResponse) {
        let Some(kind) = Kind::from_url(&resp.type_url) else {
            tracing::warn!(type_url = %resp.type_url, "ignoring a response of a type never requested");
            return;
        };
        self.engine.state.ty(kind).nonce = resp.nonce.clone();
        let upd = Update {
            kind,
            resources: resp
                .resources
                .into_iter()
                .map(|any| Incoming {
                    name: None,
                    version: resp.version_info.clone(),
                    any,
                })
                .collect(),
            removed: Vec::new(),
            complete: kind.wildcard(),
            version: resp.version_info.clone(),
        };
        let result = self.engine.handle(upd).await;
        // ACK carries the new version, NACK the last accepted one; both echo the nonce.
        let mut req = self.request(kind);
        if let Err(e) = result {
            req.error_detail = Some(Status {
                code: INVALID_ARGUMENT,
                message: e,
                details: Vec::new(),
            });
        }
        self.send(req);
    }
}
