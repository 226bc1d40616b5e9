//! The compiled `http_connection_manager` network filter config.

use super::fault::FaultConfig;
use crate::config::{decode, opt_duration};
use crate::route::RouteConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hpb;
use std::sync::Arc;
use std::time::Duration;

type RouterProto = envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
type FaultProto = envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
type CorsProto = envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;

fn full_name<M: prost::Name>() -> String {
    M::full_name()
}

/// Where the HCM gets its routes.
#[derive(Debug, Clone)]
pub enum RouteSource {
    /// Inline `route_config`.
    Inline(Arc<RouteConfig>),
    /// RDS by name, looked up in the snapshot.
    Rds(String),
}

/// An HTTP filter in the HCM chain that we act on.
#[derive(Debug, Clone)]
pub enum HttpFilter {
    /// Fault injection (listener-level config; routes may override).
    Fault(Arc<FaultConfig>),
    /// CORS (policies come from routes/vhosts).
    Cors,
    /// RBAC (Istio's AuthorizationPolicy).
    Rbac(Arc<crate::rbac::Rbac>),
    /// JWT authentication, which mosn cannot verify: requests with a token get 401.
    Jwt(Arc<super::authn::JwtTokens>),
    /// ext_authz, whose service mosn does not call: 403 unless `failure_mode_allow`.
    ExtAuthz {
        /// `failure_mode_allow`.
        allow: bool,
    },
    /// The router (terminal).
    Router,
}

/// Downstream codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Sniff HTTP/1.1 vs h2c preface.
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only.
    Http2,
}

/// Compiled HCM.
#[derive(Debug, Clone)]
pub struct HcmConfig {
    /// `stat_prefix` for `http.<prefix>.*`.
    pub stat_prefix: String,
    /// Routes.
    pub routes: RouteSource,
    /// The filters we implement, in order; unknown Istio filters are skipped.
    pub filters: Vec<HttpFilter>,
    /// Codec.
    pub codec: Codec,
    /// `stream_idle_timeout` (default 5 min; 0 disables).
    pub stream_idle_timeout: Option<Duration>,
    /// `request_timeout` (default none).
    pub request_timeout: Option<Duration>,
    /// Connection idle timeout (`common_http_protocol_options.idle_timeout`, default 1 h).
    pub idle_timeout: Option<Duration>,
    /// `common_http_protocol_options.max_connection_duration`: a connection older than this
    /// is drained (HTTP/1: closed when idle or after its response; h2: GOAWAY).
    pub max_connection_duration: Option<Duration>,
    /// `common_http_protocol_options.max_requests_per_connection`: the response to the last
    /// one closes an HTTP/1 connection.
    pub max_requests_per_connection: Option<u32>,
    /// `request_headers_timeout`: a request head that starts but is not complete within it is
    /// answered 408 and its connection closed.
    pub request_headers_timeout: Option<Duration>,
    /// Strip any port from Host before vhost matching.
    pub strip_any_host_port: bool,
    /// Strip the port if it equals the listener's port.
    pub strip_matching_host_port: bool,
    /// `server` header for local replies (empty with `PASS_THROUGH`: none).
    pub server_name: String,
    /// `server_name` as a header value, built once (None if it is not a valid value).
    pub server_value: Option<http::HeaderValue>,
    /// Names of filters that were skipped (unknown types), for diagnostics.
    pub skipped: Vec<String>,
    /// Enabled `upgrade_configs` types, lower-cased (Istio enables `websocket`).
    pub upgrades: Vec<String>,
    /// `use_remote_address` without `skip_xff_append`: append the peer to x-forwarded-for.
    pub append_xff: bool,
    /// `server_header_transformation`: 0 overwrite (default), 1 append if absent, 2 pass through.
    pub server_header: i32,
    /// `access_log`: the loggers we implement (file, stdout, stderr).
    pub access_logs: Vec<Arc<super::access_log::AccessLogger>>,
    /// `generate_request_id` (default true): give requests without one an `x-request-id`.
    pub generate_request_id: bool,
    /// The router's `suppress_envoy_headers`: no `x-envoy-expected-rq-timeout-ms`,
    /// `x-envoy-upstream-service-time` or `x-envoy-original-path` from the router.
    pub suppress_envoy_headers: bool,
    /// Istio's `istio.alpn` HTTP filter is in the chain: upstream mTLS connections offer
    /// Istio's ALPN for the upstream protocol (see [`crate::tls::Alpn`]).
    pub istio_alpn: bool,
    /// `x-forwarded-client-cert` handling.
    pub xfcc: super::xfcc::Xfcc,
    /// Downstream HTTP/2: `http2_protocol_options` and `max_request_headers_kb`.
    pub h2: crate::http2::H2Settings,
    /// `common_http_protocol_options.max_stream_duration`, for routes without their own.
    pub max_stream_duration: Option<Duration>,
    /// `common_http_protocol_options.max_headers_count` (Envoy's default: 100): more request
    /// headers get 431.
    pub max_headers_count: usize,
    /// `http_protocol_options`: HTTP/1.0, chunked with a length (see `head_checks`).
    pub http1: super::head_checks::Http1Options,
    /// `common_http_protocol_options.headers_with_underscores_action`.
    pub underscores: super::head_checks::Underscores,
    /// `use_remote_address`: the peer is the client (else `x-forwarded-for` says who is).
    pub use_remote_address: bool,
    /// `append_x_forwarded_port`: at the edge, the port the client connected to goes
    /// upstream as `x-forwarded-port` (Istio's `proxyHeaders.xForwardedPort`).
    pub append_x_forwarded_port: bool,
    /// `xff_num_trusted_hops`: proxies in front whose `x-forwarded-for` entries (and, at the
    /// edge, `x-forwarded-proto`) are trusted (Istio's gateway `numTrustedProxies`).
    pub xff_trusted_hops: u32,
    /// `preserve_external_request_id`: an edge request keeps the client's `x-request-id`.
    pub preserve_external_request_id: bool,
    /// `always_set_request_id_in_response`: the response carries the request's
    /// `x-request-id`.
    pub request_id_in_response: bool,
    /// `via`: appended to the `via` header of requests and responses (none when `None`).
    pub via: Option<http::HeaderValue>,
    /// `normalize_path`, `merge_slashes` and `path_with_escaped_slashes_action` (see
    /// [`super::path_norm`]).
    pub path_norm: super::path_norm::PathNorm,
    /// `internal_address_config`: whose requests may carry Envoy's control headers.
    pub internal: super::control_headers::InternalAddresses,
    /// `tracing`: each request gets a span (see [`super::trace`]).
    pub tracing: Option<Box<super::trace::TraceConfig>>,
    /// Istio's metadata exchange and stats filters (see [`super::istio`]).
    pub istio: super::istio::IstioConfig,
}

impl HcmConfig {
    /// Whether the request's own `x-forwarded-proto` stands (Envoy's mutateRequestHeaders):
    /// not at the edge (`use_remote_address`) unless trusted proxies are in front
    /// (`xff_num_trusted_hops`); else the connection's scheme replaces it.
    pub fn trusts_forwarded_proto(&self) -> bool {
        !self.use_remote_address || self.xff_trusted_hops > 0
    }

    /// `max_request_headers_kb` in bytes (Envoy's default: 60 KiB): a larger request head gets
    /// 431. It is read, with its default and range, along with the HTTP/2 settings.
    pub fn max_request_headers(&self) -> usize {
        self.h2.max_header_list as usize
    }

    /// Decode and compile.
    pub fn from_any(any: &envoy_types::pb::google::protobuf::Any) -> Result<Self, String> {
        let h: hpb::HttpConnectionManager = decode::unpack(any)?;
        Self::from_proto(&h)
    }

    /// Compile from the proto.
    pub fn from_proto(h: &hpb::HttpConnectionManager) -> Result<Self, String> {
        use hpb::http_connection_manager::RouteSpecifier as R;
        let routes = match &h.route_specifier {
            Some(R::RouteConfig(rc)) => RouteSource::Inline(Arc::new(RouteConfig::from_proto(rc)?)),
            Some(R::Rds(r)) => RouteSource::Rds(r.route_config_name.clone()),
            Some(R::ScopedRoutes(_)) => return Err("scoped_routes are not supported".into()),
            None => return Err("http_connection_manager without routes".into()),
        };
        let mut filters = Vec::new();
        let mut skipped = Vec::new();
        let mut suppress_envoy_headers = false;
        let mut istio = super::istio::IstioConfig::default();
        for f in &h.http_filters {
            if f.disabled {
                continue;
            }
            let any = match &f.config_type {
                Some(hpb::http_filter::ConfigType::TypedConfig(a)) => Some(a),
                _ => None,
            };
            match f.name.as_str() {
                "istio.metadata_exchange" => istio.mx = true,
                "istio.stats" => {
                    istio.stats = true;
                    // Its type URL as sent: a JSON config parks the unknown type in a Struct.
                    let url = any.map(|a| decode::parked_type(a).unwrap_or(a.type_url.clone()));
                    istio.plugin_config = url.is_some_and(|u| u.ends_with("/stats.PluginConfig"));
                }
                _ => {}
            }
            if let Some(t) = any.and_then(decode::parked_type) {
                tracing::debug!(filter = %f.name, type_url = %t, "skipping HTTP filter of an unknown type");
                skipped.push(f.name.clone());
                continue;
            }
            let t = any
                .map(|a| a.type_url.rsplit('/').next().unwrap_or(""))
                .unwrap_or("");
            match (f.name.as_str(), t) {
                _ if t == full_name::<RouterProto>() => {
                    let value = any.map_or(&[][..], |a| a.value.as_slice());
                    let r = <RouterProto as prost::Message>::decode(value)
                        .map_err(|e| format!("router filter {}: {e}", f.name))?;
                    suppress_envoy_headers = r.suppress_envoy_headers;
                    filters.push(HttpFilter::Router)
                }
                ("envoy.filters.http.router" | "envoy.router", "") => {
                    filters.push(HttpFilter::Router)
                }
                _ if t == full_name::<FaultProto>() => filters.push(HttpFilter::Fault(Arc::new(
                    FaultConfig::from_any(any.unwrap())?,
                ))),
                ("envoy.filters.http.fault" | "envoy.fault", "") => {
                    filters.push(HttpFilter::Fault(Default::default()))
                }
                _ if t == full_name::<CorsProto>() => filters.push(HttpFilter::Cors),
                _ if any.is_some_and(|a| a.type_url == super::authn::JWT_URL) => {
                    let t = super::authn::JwtTokens::from_any(any.unwrap())
                        .map_err(|e| format!("filter {}: {e}", f.name))?;
                    filters.push(HttpFilter::Jwt(Arc::new(t)))
                }
                _ if any.is_some_and(|a| a.type_url == super::authn::EXT_AUTHZ_URL) => {
                    let allow = super::authn::ext_authz_allows(any.unwrap())
                        .map_err(|e| format!("filter {}: {e}", f.name))?;
                    filters.push(HttpFilter::ExtAuthz { allow })
                }
                _ if any.is_some_and(|a| a.type_url == crate::rbac::HTTP_URL) => {
                    let rbac = crate::rbac::Rbac::from_http(any.unwrap())
                        .map_err(|e| format!("filter {}: {e}", f.name))?;
                    // Without rules the filter has no effect.
                    filters.extend(rbac.map(|r| HttpFilter::Rbac(Arc::new(r))));
                }
                ("envoy.filters.http.cors" | "envoy.cors", "") => filters.push(HttpFilter::Cors),
                (name, t) => {
                    // Istio's allowlisted extras (alpn, grpc_stats, compressor, ...) are
                    // accepted and skipped rather than rejected.
                    tracing::debug!(filter = %name, type_url = %t, "HTTP filter not implemented; skipped");
                    skipped.push(name.to_string());
                }
            }
        }
        let strip_any_host_port = matches!(
            h.strip_port_mode,
            Some(hpb::http_connection_manager::StripPortMode::StripAnyHostPort(true))
        );
        let h2 = crate::http2::H2Settings::from_proto(
            h.http2_protocol_options.as_ref(),
            h.max_request_headers_kb.as_ref().map(|v| v.value),
        )?;
        Ok(HcmConfig {
            stat_prefix: h.stat_prefix.clone(),
            routes,
            filters,
            codec: match h.codec_type {
                1 => Codec::Http1,
                2 => Codec::Http2,
                0 => Codec::Auto,
                c => return Err(format!("codec_type {c} (HTTP/3) unsupported")),
            },
            stream_idle_timeout: match &h.stream_idle_timeout {
                Some(d) => Some(crate::config::duration(d)).filter(|d| !d.is_zero()),
                None => Some(Duration::from_secs(300)),
            },
            request_timeout: opt_duration(&h.request_timeout).filter(|d| !d.is_zero()),
            idle_timeout: match h
                .common_http_protocol_options
                .as_ref()
                .and_then(|o| o.idle_timeout.as_ref())
            {
                Some(d) => Some(crate::config::duration(d)).filter(|d| !d.is_zero()),
                None => Some(Duration::from_secs(3600)),
            },
            max_connection_duration: h
                .common_http_protocol_options
                .as_ref()
                .and_then(|o| opt_duration(&o.max_connection_duration))
                .filter(|d| !d.is_zero()),
            max_requests_per_connection: h
                .common_http_protocol_options
                .as_ref()
                .and_then(|o| o.max_requests_per_connection.as_ref())
                .map(|v| v.value)
                .filter(|n| *n > 0),
            request_headers_timeout: opt_duration(&h.request_headers_timeout)
                .filter(|d| !d.is_zero()),
            strip_any_host_port,
            strip_matching_host_port: h.strip_matching_host_port,
            server_value: http::HeaderValue::from_str(if h.server_name.is_empty() {
                "envoy"
            } else {
                &h.server_name
            })
            .ok(),
            // PASS_THROUGH: Envoy stamps no Server on its own replies either.
            server_name: if h.server_header_transformation == 2 {
                String::new()
            } else if h.server_name.is_empty() {
                "envoy".into()
            } else {
                h.server_name.clone()
            },
            istio_alpn: skipped.iter().any(|n| n == "istio.alpn"),
            xfcc: super::xfcc::Xfcc::from_hcm(h),
            skipped,
            append_xff: h.use_remote_address.as_ref().is_some_and(|b| b.value)
                && !h.skip_xff_append,
            server_header: h.server_header_transformation,
            access_logs: super::access_log::compile(&h.access_log)?,
            generate_request_id: h.generate_request_id.as_ref().is_none_or(|b| b.value),
            suppress_envoy_headers,
            upgrades: h
                .upgrade_configs
                .iter()
                .filter(|u| u.enabled.as_ref().is_none_or(|e| e.value))
                .map(|u| u.upgrade_type.to_ascii_lowercase())
                .collect(),
            max_stream_duration: h
                .common_http_protocol_options
                .as_ref()
                .and_then(|o| opt_duration(&o.max_stream_duration)),
            max_headers_count: match h
                .common_http_protocol_options
                .as_ref()
                .and_then(|o| o.max_headers_count.as_ref())
            {
                Some(v) if v.value == 0 => {
                    return Err("max_headers_count must be at least 1".into())
                }
                Some(v) => v.value as usize,
                None => 100,
            },
            h2,
            http1: super::head_checks::Http1Options::from_proto(h.http_protocol_options.as_ref())?,
            underscores: super::head_checks::Underscores::from_proto(
                h.common_http_protocol_options
                    .as_ref()
                    .map_or(0, |o| o.headers_with_underscores_action),
            ),
            use_remote_address: h.use_remote_address.as_ref().is_some_and(|b| b.value),
            append_x_forwarded_port: h.append_x_forwarded_port,
            xff_trusted_hops: h.xff_num_trusted_hops,
            preserve_external_request_id: h.preserve_external_request_id,
            request_id_in_response: h.always_set_request_id_in_response,
            via: (!h.via.is_empty())
                .then(|| http::HeaderValue::from_str(&h.via))
                .transpose()
                .map_err(|_| format!("via {:?} is not a valid header value", h.via))?,
            path_norm: super::path_norm::PathNorm {
                normalize: h.normalize_path.as_ref().is_some_and(|b| b.value),
                merge_slashes: h.merge_slashes,
                escaped_slashes: super::path_norm::EscapedSlashes::from_proto(
                    h.path_with_escaped_slashes_action,
                ),
            },
            internal: super::control_headers::InternalAddresses::from_proto(
                h.internal_address_config.as_ref(),
            )?,
            tracing: h
                .tracing
                .as_ref()
                .map(|t| super::trace::TraceConfig::from_proto(t, false).map(Box::new))
                .transpose()
                .map_err(|e| format!("tracing: {e}"))?,
            istio,
        })
    }
}
