//! The `SecretDiscoveryService` on the same listener as ADS.
//!
//! Istio's bootstraps fetch secrets over their own `sds-grpc` cluster rather than ADS, and
//! an Envoy cluster or listener whose TLS context names an SDS secret stays warming until the
//! secret arrives. So the replay server answers SDS too, from the same cache (the Secret
//! type), with the same SotW and delta handlers as ADS.

use super::ads::Ads;
use super::delta::Delta;
use super::sotw::Sotw;
use super::SECRET;
use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::info;

impl Ads {
    /// The SDS tonic service over the same cache, with the 64 MiB message limit.
    pub fn into_sds_service(self) -> SecretDiscoveryServiceServer<Self> {
        SecretDiscoveryServiceServer::new(self)
            .max_decoding_message_size(super::ads::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(super::ads::MAX_MESSAGE_SIZE)
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for Ads {
    type StreamSecretsStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaSecretsStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_secrets(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        Ok(self.open(req, "SotW SDS", |id, peer| Sotw::new(id, peer, "SDS")))
    }

    async fn delta_secrets(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Ok(self.open(req, "delta SDS", |id, peer| Delta::new(id, peer, "SDS")))
    }

    async fn fetch_secrets(
        &self,
        req: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let req = req.into_inner();
        let state = self.cache().state();
        let Some(secrets) = state.types.get(SECRET) else {
            return Err(Status::unavailable("no secrets have been set yet"));
        };
        let resources = secrets
            .resources
            .values()
            .filter(|r| req.resource_names.is_empty() || req.resource_names.contains(&r.name))
            .map(|r| r.any.clone())
            .collect();
        info!(names = ?req.resource_names, "SDS fetch");
        Ok(Response::new(DiscoveryResponse {
            version_info: secrets.version.clone(),
            resources,
            type_url: SECRET.into(),
            control_plane: Some(ControlPlane {
                identifier: super::CONTROL_PLANE_ID.into(),
            }),
            ..Default::default()
        }))
    }
}
