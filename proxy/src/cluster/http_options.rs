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
    /// `upstream_http_protocol_options`: SNI and certificate checks from each request's host.
    pub auto_sni: AutoSni,
    /// `outlier_detection.error_matcher`: which responses outlier detection counts as failures.
    pub error_matcher: Option<super::error_matcher::ErrorMatcher>,
}

/// `upstream_http_protocol_options` (Istio's DestinationRule TLS without `sni`, or without
/// `subjectAltNames`): new TLS connections take their SNI from the request's host, and check
/// the server's certificate against it, instead of the transport socket's fixed `sni` and SAN
/// matchers. Pools keep connections of different names apart.
#[derive(Debug, Clone, Default)]
pub struct AutoSni {
    /// `auto_sni`: the SNI is the request's host, without its port.
    pub sni: bool,
    /// `auto_san_validation`: the certificate must be valid for that host.
    pub san: bool,
    /// `override_auto_sni_header`: the header that names the host, instead of Host.
    pub header: Option<http::HeaderName>,
}

impl AutoSni {
    /// Whether either is asked for.
    pub fn is_on(&self) -> bool {
        self.sni || self.san
    }
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
        let (protocol, http2) = protocol(c, ext)?;
        let auto_sni = match [
            ext.and_then(|o| o.upstream_http_protocol_options.as_ref()),
            c.upstream_http_protocol_options.as_ref(),
        ]
        .into_iter()
        .flatten()
        .next()
        {
            None => AutoSni::default(),
            Some(u) => AutoSni {
                sni: u.auto_sni,
                san: u.auto_san_validation,
                header: match u.override_auto_sni_header.as_str() {
                    "" => None,
                    h => Some(http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                        format!("override_auto_sni_header {h:?} is not a header name")
                    })?),
                },
            },
        };
        Ok(HttpOptions {
            auto_sni,
            error_matcher: ext
                .and_then(|o| o.outlier_detection.as_ref())
                .and_then(|o| o.error_matcher.as_ref())
                .map(super::error_matcher::ErrorMatcher::from_proto)
                .transpose()?,
            protocol,
            idle_timeout: match common.iter().flatten().find_map(|o| o.idle_timeout) {
                Some(d) => Some(crate::config::duration(&d)).filter(|d| !d.is_zero()),
                None => Some(Duration::from_secs(3600)),
            },
            limits: limits(c, &common),
            h2: H2Settings::from_proto(
                http2,
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

/// The upstream HTTP version and, for h2, the `http2_protocol_options` that go with it: the
/// extension's (explicit, downstream-following or auto) when it is there, else the cluster's
/// own deprecated fields.
fn protocol<'a>(
    c: &'a cpb::Cluster,
    ext: Option<&'a upb::HttpProtocolOptions>,
) -> Result<(UpstreamProtocol, Option<&'a core::Http2ProtocolOptions>), String> {
    use upb::http_protocol_options::{
        explicit_http_config::ProtocolConfig as P, UpstreamProtocolOptions as U,
    };
    if let Some(o) = ext {
        return Ok(match &o.upstream_protocol_options {
            Some(U::ExplicitHttpConfig(e)) => match &e.protocol_config {
                Some(P::Http2ProtocolOptions(h)) => (UpstreamProtocol::Http2, Some(h)),
                Some(P::Http3ProtocolOptions(_)) => {
                    return Err("HTTP/3 upstreams are not supported".into())
                }
                _ => (UpstreamProtocol::Http1, None),
            },
            Some(U::UseDownstreamProtocolConfig(d)) => (
                UpstreamProtocol::UseDownstream,
                d.http2_protocol_options.as_ref(),
            ),
            // Auto needs ALPN over TLS; in plaintext Envoy speaks HTTP/1.1.
            Some(U::AutoConfig(a)) => (UpstreamProtocol::Http1, a.http2_protocol_options.as_ref()),
            None => (UpstreamProtocol::Http1, c.http2_protocol_options.as_ref()),
        });
    }
    let h2 = c.http2_protocol_options.as_ref();
    // protocol_selection USE_DOWNSTREAM_PROTOCOL (deprecated field) or http2_protocol_options.
    if c.protocol_selection == 1 {
        return Ok((UpstreamProtocol::UseDownstream, h2));
    }
    Ok(match h2 {
        Some(_) => (UpstreamProtocol::Http2, h2),
        None => (UpstreamProtocol::Http1, None),
    })
}
