//! What the bootstrap says about ADS: protocol, target cluster, node, initial-fetch timeouts.

use crate::config::duration;
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::core::v3 as core;
use std::time::Duration;

/// Envoy's default `initial_fetch_timeout`.
pub const DEFAULT_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// The two ADS protocol variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiType {
    /// State of the world (`GRPC`).
    Sotw,
    /// Incremental (`DELTA_GRPC`).
    Delta,
}

/// Where the ADS server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `envoy_grpc.cluster_name`: a static cluster of the bootstrap.
    Cluster(String),
    /// `google_grpc.target_uri` (`host:port` or `unix:PATH`).
    Uri(String),
}

/// The ADS client configuration taken from the bootstrap.
#[derive(Debug, Clone)]
pub struct AdsConfig {
    /// SotW or delta.
    pub api_type: ApiType,
    /// The server.
    pub target: Target,
    /// `set_node_on_first_message_only`.
    pub node_first_only: bool,
    /// The node (with `--service-node`/`--service-cluster` already applied by the loader).
    pub node: core::Node,
    /// Whether CDS comes over ADS.
    pub cds: bool,
    /// Whether LDS comes over ADS.
    pub lds: bool,
    /// CDS `initial_fetch_timeout`; `None` waits forever (`0s`).
    pub cds_timeout: Option<Duration>,
    /// LDS `initial_fetch_timeout`; `None` waits forever.
    pub lds_timeout: Option<Duration>,
}

impl AdsConfig {
    /// Read `dynamic_resources`. `Ok(None)`: no ADS asked for. `Err`: asked for in a form
    /// this client does not speak (REST, path sources, no target).
    pub fn from_bootstrap(b: &Bootstrap) -> Result<Option<Self>, String> {
        let Some(dr) = &b.dynamic_resources else {
            return Ok(None);
        };
        let Some(ads) = &dr.ads_config else {
            if dr.cds_config.is_some() || dr.lds_config.is_some() {
                return Err("cds_config/lds_config without ads_config are not supported".into());
            }
            return Ok(None);
        };
        use core::api_config_source::ApiType as A;
        let api_type = match A::try_from(ads.api_type) {
            Ok(A::Grpc | A::AggregatedGrpc) => ApiType::Sotw,
            Ok(A::DeltaGrpc | A::AggregatedDeltaGrpc) => ApiType::Delta,
            _ => return Err(format!("ads_config api_type {} unsupported", ads.api_type)),
        };
        use core::grpc_service::TargetSpecifier as T;
        let target = match ads
            .grpc_services
            .first()
            .and_then(|g| g.target_specifier.as_ref())
        {
            Some(T::EnvoyGrpc(e)) => Target::Cluster(e.cluster_name.clone()),
            Some(T::GoogleGrpc(g)) => Target::Uri(g.target_uri.clone()),
            None => match ads.cluster_names.first() {
                Some(c) => Target::Cluster(c.clone()),
                None => return Err("ads_config names no gRPC service".into()),
            },
        };
        let source = |c: &Option<core::ConfigSource>, what: &str| -> Result<_, String> {
            let Some(c) = c else { return Ok((false, None)) };
            match &c.config_source_specifier {
                Some(core::config_source::ConfigSourceSpecifier::Ads(_)) => {
                    Ok((true, initial_fetch_timeout(c)))
                }
                _ => Err(format!(
                    "{what} must use ads (other config sources are not supported)"
                )),
            }
        };
        let (cds, cds_timeout) = source(&dr.cds_config, "cds_config")?;
        let (lds, lds_timeout) = source(&dr.lds_config, "lds_config")?;
        let mut node = b.node.clone().unwrap_or_default();
        // Envoy always identifies itself; control planes key features off the agent name.
        if node.user_agent_name.is_empty() {
            node.user_agent_name = "envoy".into();
        }
        Ok(Some(AdsConfig {
            api_type,
            target,
            node_first_only: ads.set_node_on_first_message_only,
            node,
            cds,
            lds,
            cds_timeout,
            lds_timeout,
        }))
    }
}

/// A config source's `initial_fetch_timeout`: default 15 s, `0s` = wait forever (`None`).
pub fn initial_fetch_timeout(c: &core::ConfigSource) -> Option<Duration> {
    let d = c
        .initial_fetch_timeout
        .as_ref()
        .map(duration)
        .unwrap_or(DEFAULT_INITIAL_FETCH_TIMEOUT);
    (!d.is_zero()).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::decode_bootstrap;
    use serde_json::json;

    fn ads(dynamic: serde_json::Value) -> Result<Option<AdsConfig>, String> {
        let b = json!({"node": {"id": "n", "cluster": "c"}, "dynamic_resources": dynamic});
        AdsConfig::from_bootstrap(&decode_bootstrap(b, true).unwrap().proto)
    }

    fn grpc(api_type: &str) -> serde_json::Value {
        json!({"api_type": api_type, "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]})
    }

    #[test]
    fn protocols_timeouts_and_unsupported_forms() {
        let src =
            |t: &str| json!({"ads": {}, "initial_fetch_timeout": t, "resource_api_version": "V3"});
        let c = ads(
            json!({"ads_config": grpc("GRPC"), "cds_config": src("0s"), "lds_config": src("2s")}),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.api_type, ApiType::Sotw);
        assert_eq!(c.target, Target::Cluster("xds-grpc".into()));
        assert_eq!((c.cds, c.lds), (true, true));
        assert_eq!(
            (c.cds_timeout, c.lds_timeout),
            (None, Some(Duration::from_secs(2)))
        );
        assert_eq!(c.node.user_agent_name, "envoy");
        let d = ads(json!({"ads_config": grpc("DELTA_GRPC"), "cds_config": {"ads": {}}}))
            .unwrap()
            .unwrap();
        assert_eq!(d.api_type, ApiType::Delta);
        assert_eq!(
            (d.cds, d.lds, d.cds_timeout),
            (true, false, Some(DEFAULT_INITIAL_FETCH_TIMEOUT))
        );
        assert!(ads(json!({})).unwrap().is_none());
        assert!(ads(json!({"ads_config": grpc("REST")}))
            .unwrap_err()
            .contains("api_type"));
        let path = json!({"ads_config": grpc("GRPC"), "cds_config": {"path_config_source": {"path": "/x"}}});
        assert!(ads(path).unwrap_err().contains("cds_config"));
        assert!(ads(json!({"lds_config": {"ads": {}}}))
            .unwrap_err()
            .contains("ads_config"));
    }
}
