//! Incremental ADS (`DeltaAggregatedResources`): subscriptions change by difference, responses
//! carry only changed resources plus removed names, and a new stream tells the server which
//! versions are already held (`initial_resource_versions`).

use super::apply::{Incoming, Update};
use super::engine::Engine;
use super::sotw::INVALID_ARGUMENT;
use super::transport::Client;
use super::Kind;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use std::collections::BTreeSet;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

struct Stream<'a> {
    engine: &'a mut Engine,
    tx: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    /// Names subscribed per kind on this stream (`None`: not subscribed yet).
    sent: [Option<BTreeSet<String>>; 4],
    node_sent: bool,
}

/// Run one stream until it ends; see [`super::sotw::run`].
pub async fn run(engine: &mut Engine, client: &mut Client) -> (bool, String) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut s = Stream {
        engine,
        tx,
        sent: Default::default(),
        node_sent: false,
    };
    s.sync();
    let inbound = match client
        .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => return (false, format!("DeltaAggregatedResources: {e}")),
    };
    super::engine::pump(&mut s, inbound, "delta").await
}

impl super::engine::Protocol for Stream<'_> {
    type Response = DeltaDiscoveryResponse;

    fn engine(&mut self) -> &mut Engine {
        self.engine
    }

    fn sync(&mut self) {
        Stream::sync(self)
    }

    async fn on_response(&mut self, resp: DeltaDiscoveryResponse) {
        Stream::on_response(self, resp).await
    }
}

impl Stream<'_> {
    fn send(&mut self, mut req: DeltaDiscoveryRequest) {
        if !self.node_sent || !self.engine.cfg.node_first_only {
            req.node = Some(self.engine.cfg.node.clone());
            self.node_sent = true;
        }
        let _ = self.tx.send(req);
    }

    /// Subscribe and unsubscribe by difference with what this stream asked for so far.
    fn sync(&mut self) {
        for k in Kind::ALL {
            let Some(want) = self.engine.wanted(k) else {
                continue;
            };
            let mut req = DeltaDiscoveryRequest {
                type_url: k.type_url().into(),
                ..Default::default()
            };
            match &self.sent[k.idx()] {
                Some(sent) if *sent == want => continue,
                Some(sent) => {
                    req.resource_names_subscribe = want.difference(sent).cloned().collect();
                    req.resource_names_unsubscribe = sent.difference(&want).cloned().collect();
                }
                None => {
                    // First request of the type on this stream: an empty subscribe list is the
                    // (legacy) wildcard for CDS/LDS; EDS/RDS wait until a name is wanted.
                    if !k.wildcard() && want.is_empty() {
                        continue;
                    }
                    req.resource_names_subscribe = want.iter().cloned().collect();
                    req.initial_resource_versions = self
                        .engine
                        .state
                        .versions(k)
                        .into_iter()
                        .filter(|(n, _)| k.wildcard() || want.contains(n))
                        .collect();
                }
            }
            self.sent[k.idx()] = Some(want);
            self.send(req);
        }
    }

    async fn on_response(&mut self, resp: DeltaDiscoveryResponse) {
        let Some(kind) = Kind::from_url(&resp.type_url) else {
            tracing::warn!(type_url = %resp.type_url, "ignoring a response of a type never requested");
            return;
        };
        self.engine.state.ty(kind).nonce = resp.nonce.clone();
        let mut removed = resp.removed_resources;
        let mut resources = Vec::new();
        for r in resp.resources {
            match r.resource {
                Some(any) => resources.push(Incoming {
                    name: Some(r.name),
                    version: r.version,
                    any,
                }),
                // A name without a body: the server says it does not exist.
                None => removed.push(r.name),
            }
        }
        let upd = Update {
            kind,
            resources,
            removed,
            complete: false,
            version: resp.system_version_info,
        };
        let result = self.engine.handle(upd).await;
        let req = DeltaDiscoveryRequest {
            type_url: kind.type_url().into(),
            response_nonce: resp.nonce,
            error_detail: result.err().map(|e| Status {
                code: INVALID_ARGUMENT,
                message: e,
                details: Vec::new(),
            }),
            ..Default::default()
        };
        self.send(req);
    }
}
