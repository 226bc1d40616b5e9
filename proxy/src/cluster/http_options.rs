//! A cluster's HTTP protocol options: which HTTP version to speak upstream, the pooled
//! connections' idle timeout and life limits, and the HTTP/2 settings. Each comes from the
//! `envoy.extensions.upstreams.http.v3.HttpProtocolOptions` extension when it sets it, else
//! from the cluster's own deprecated fields, which Istio 1.10 still writes.

use super::{wear, UpstreamProtocol};
use crate::config::decode;
use crate::http2::H2Settings;
use envoy_types::pb::envoy::config::cluster::v3 as cpb;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upb;
use std::time::Duration;

/// What a cluster's HTTP protocol options say, read once when the cluster is built.
#[derive(Debug, Clone)]
pub(super) struct HttpOptions {
    /// The upstream HTTP version.
    pub protocol: UpstreamProtocol,
    /// Idle time after which a pooled connection closes (`idle_timeout`; Envoy's default is
    /// 1 h and 0 disables it).
    pub idle_timeout: Option<Duration>,
    /// `max_requests_per_connection` and `max_connection_duration`.
    pub limits: wear::Limits,
    /// HTTP/2 settings for h2 upstream connections.
    pub h2: H2Settings,
}

impl HttpOptions {
    /// Reads the options of `c`; a malformed extension or an out-of-range value is an error.
    pub fn from_cluster(c: &cpb::Cluster) -> Result<Self, String> {
        let mut ext = None;
        for (name, any) in &c.typed_extension_protocol_options {
            if any.type_url == <upb::HttpProtocolOptions as prost::Name>::type_url() {
                ext = Some(decode::unpack::<upb::HttpProtocolOptions>(any)?);
            } else {
                tracing::debug!(cluster = %c.name, option = %name, "protocol option ignored");
            }
        }
        let ext = ext.as_ref();
        let common = [
            ext.and_then(|o| o.common_http_protocol_options.as_ref()),
            c.common_http_protocol_options.as_ref(),
        ];
        Ok(HttpOptions {
            protocol: protocol(c, ext)?,
            idle_timeout: match common.iter().flatten().find_map(|o| o.idle_timeout) {
                Some(d) => Some(crate::config::duration(&d)).filter(|d| !d.is_zero()),
                None => Some(Duration::from_secs(3600)),
            },
            limits: limits(c, &common),
            h2: H2Settings::from_proto(
                http2_options(c, ext),
                common
                    .iter()
                    .flatten()
                    .find_map(|o| o.max_response_headers_kb.as_ref())
                    .map(|v| v.value),
            )?,
        })
    }
}

/// A connection's life limits: `max_requests_per_connection` and `max_connection_duration`
/// from the common HTTP options, or the deprecated cluster field for the first (Istio 1.10
/// writes a DestinationRule's `maxRequestsPerConnection` there). 0 or unset: no limit.
fn limits(c: &cpb::Cluster, common: &[Option<&core::HttpProtocolOptions>]) -> wear::Limits {
    #[allow(deprecated)]
    let max_requests = common
        .iter()
        .flatten()
        .find_map(|o| o.max_requests_per_connection)
        .or(c.max_requests_per_connection)
        .map(|v| v.value);
    let max_duration = common
        .iter()
        .flatten()
        .find_map(|o| o.max_connection_duration);
    wear::Limits {
        max_requests: max_requests.filter(|&m| m > 0),
        max_duration: max_duration
            .map(|d| crate::config::duration(&d))
            .filter(|d| !d.is_zero()),
    }
}

fn protocol(
    c: &cpb::Cluster,
    ext: Option<&upb::HttpProtocolOptions>,
) -> Result<UpstreamProtocol, String> {
    use upb::http_protocol_options::{
        explicit_http_config::ProtocolConfig as P, UpstreamProtocolOptions as U,
    };
    if let Some(o) = ext {
        return Ok(match &o.upstream_protocol_options {
            Some(U::ExplicitHttpConfig(e)) => match e.protocol_config {
                Some(P::Http2ProtocolOptions(_)) => UpstreamProtocol::Http2,
                Some(P::Http3ProtocolOptions(_)) => {
                    return Err("HTTP/3 upstreams are not supported".into())
                }
                _ => UpstreamProtocol::Http1,
            },
            Some(U::UseDownstreamProtocolConfig(_)) => UpstreamProtocol::UseDownstream,
            // Auto needs ALPN over TLS; in plaintext Envoy speaks HTTP/1.1.
            _ => UpstreamProtocol::Http1,
        });
    }
    // protocol_selection USE_DOWNSTREAM_PROTOCOL (deprecated field) or http2_protocol_options.
    if c.protocol_selection == 1 {
        return Ok(UpstreamProtocol::UseDownstream);
    }
    Ok(if c.http2_protocol_options.is_some() {
        UpstreamProtocol::Http2
    } else {
        UpstreamProtocol::Http1
    })
}

/// The `http2_protocol_options` that apply when the cluster speaks h2: the extension's
/// (explicit, downstream-following or auto), else the cluster's own.
fn http2_options<'a>(
    c: &'a cpb::Cluster,
    ext: Option<&'a upb::HttpProtocolOptions>,
) -> Option<&'a core::Http2ProtocolOptions> {
    use upb::http_protocol_options::{
        explicit_http_config::ProtocolConfig as P, UpstreamProtocolOptions as U,
    };
    match ext.and_then(|o| o.upstream_protocol_options.as_ref()) {
        Some(U::ExplicitHttpConfig(e)) => match &e.protocol_config {
            Some(P::Http2ProtocolOptions(h)) => Some(h),
            _ => None,
        },
        Some(U::UseDownstreamProtocolConfig(d)) => d.http2_protocol_options.as_ref(),
        Some(U::AutoConfig(a)) => a.http2_protocol_options.as_ref(),
        None => c.http2_protocol_options.as_ref(),
    }
}
