//! HCM tracing as Envoy does it with the Zipkin tracer, which is what Istio configures by
//! default (the bootstrap's `tracing.http`, or the HCM's own `tracing.provider`):
//!
//! - the sampling decision is kept in `x-request-id` (Envoy's UUID request-id extension marks
//!   the trace reason in its character 14), so every hop after the first agrees with it;
//! - every request of a tracing HCM gets one span; its B3 context goes to the upstream (with
//!   `x-b3-sampled: 0` when not sampled, as from Envoy), and a sampled span is sent to the
//!   collector in Zipkin's JSON v2 ([`zipkin`]);
//! - the span's kind follows the listener's direction (current Envoy: outbound CLIENT,
//!   inbound SERVER), its name is the route's `decorator`, else the Host.
//!
//! Not done: `verbose` timing annotations, metadata custom tags (only their default value
//! is used), other tracers (Datadog, Lightstep, OpenCensus, OpenTelemetry: such an HCM makes
//! no spans, as Envoy's null tracer), `spawn_upstream_span`.

pub mod b3;
pub mod span;
pub mod zipkin;

pub use span::Span;

use envoy_types::pb::envoy::config::trace::v3::tracing::Http as HttpTracer;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing as TracingProto;
use envoy_types::pb::envoy::r#type::tracing::v3::{custom_tag::Type as TagType, CustomTag};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;

use super::upstream_headers::X_REQUEST_ID as REQUEST_ID;
/// `x-client-trace-id`.
const CLIENT_TRACE_ID: HeaderName = HeaderName::from_static("x-client-trace-id");
/// `x-envoy-force-trace`.
pub(in crate::proxy) const FORCE_TRACE: HeaderName = HeaderName::from_static("x-envoy-force-trace");

/// A tracer an HCM may name.
#[derive(Debug, Clone)]
pub enum Provider {
    /// Zipkin, implemented.
    Zipkin(Arc<zipkin::Zipkin>),
    /// Another tracer: no spans (Envoy's null tracer for a tracer it lacks).
    Unsupported,
}

impl Provider {
    /// Compile a `tracing.http` block (bootstrap or HCM). A tracer that cannot be used is
    /// logged and traces nothing: the listener or bootstrap still loads, as in Envoy, where
    /// tracing never rejects traffic.
    pub fn from_proto(h: &HttpTracer) -> Self {
        use envoy_types::pb::envoy::config::trace::v3::tracing::http::ConfigType;
        match &h.config_type {
            Some(ConfigType::TypedConfig(any)) if any.type_url == zipkin::URL => {
                match zipkin::Zipkin::from_any(any) {
                    Ok(z) => Provider::Zipkin(Arc::new(z)),
                    Err(e) => {
                        tracing::warn!(tracer = %h.name, "{e}; requests are not traced");
                        Provider::Unsupported
                    }
                }
            }
            Some(ConfigType::TypedConfig(any)) => {
                tracing::debug!(tracer = %h.name, r#type = %any.type_url, "tracer not implemented; requests are not traced");
                Provider::Unsupported
            }
            None => Provider::Unsupported,
        }
    }

    fn zipkin(&self) -> Option<&Arc<zipkin::Zipkin>> {
        match self {
            Provider::Zipkin(z) => Some(z),
            Provider::Unsupported => None,
        }
    }
}

/// What spans need from the process: the bootstrap's tracer, the node, the stats.
#[derive(Debug)]
pub struct Env {
    /// The bootstrap's `tracing.http`, for HCMs without a provider of their own.
    pub bootstrap: Option<Provider>,
    /// `node.id` (the `node_id` tag).
    pub node_id: String,
    /// `node.cluster` (the spans' `localEndpoint.serviceName`).
    pub service: String,
    /// This host's first non-loopback address (`localEndpoint`).
    pub local_ip: Option<std::net::IpAddr>,
    /// Where the reporters count (`tracing.zipkin.*`).
    pub stats: Arc<crate::stats::Stats>,
}

impl Env {
    /// From the bootstrap.
    pub fn from_bootstrap(
        boot: Option<&crate::config::LoadedBootstrap>,
        stats: Arc<crate::stats::Stats>,
    ) -> Self {
        let proto = boot.map(|b| &b.proto);
        let node = proto.and_then(|p| p.node.as_ref());
        let bootstrap = proto
            .and_then(|p| p.tracing.as_ref()?.http.as_ref())
            .map(Provider::from_proto);
        Env {
            bootstrap,
            node_id: node.map(|n| n.id.clone()).unwrap_or_default(),
            service: node.map(|n| n.cluster.clone()).unwrap_or_default(),
            local_ip: local_ip(),
            stats,
        }
    }
}

/// The address Envoy's `getLocalAddress` finds: the UDP socket trick (no packet is sent).
fn local_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("10.255.255.255:9").ok()?;
    s.local_addr()
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_loopback())
}

/// A tag whose value each span works out.
#[derive(Debug, Clone)]
enum Tag {
    /// A fixed value (`literal`, `environment` read at load, a metadata tag's default).
    Fixed(String, String),
    /// A request header's first value, else the default.
    Header(String, HeaderName, String),
}

/// An HCM's `tracing`.
#[derive(Debug, Clone)]
pub struct TraceConfig {
    /// `client_sampling`, percent.
    client: u32,
    /// `random_sampling`, per 10,000.
    random: u32,
    /// `overall_sampling`, per 10,000.
    overall: u32,
    /// `max_path_tag_length` (256).
    max_path: usize,
    tags: Vec<Tag>,
    /// The HCM's own tracer; `None` uses the bootstrap's.
    provider: Option<Provider>,
    /// The listener is OUTBOUND: spans are CLIENT spans and the decorator goes upstream.
    pub egress: bool,
}

impl TraceConfig {
    /// Compile an HCM's `tracing`; `egress` is its listener's direction.
    pub fn from_proto(t: &TracingProto, egress: bool) -> Result<Self, String> {
        let pct = |p: &Option<envoy_types::pb::envoy::r#type::v3::Percent>| {
            p.as_ref().map_or(100.0, |p| p.value).clamp(0.0, 100.0)
        };
        // Envoy's conversions, truncating: percent for client sampling, per 10,000 else.
        let per_10k = |v: f64| (10000.0 * (v / 100.0)) as u32;
        Ok(TraceConfig {
            client: pct(&t.client_sampling) as u32,
            random: per_10k(pct(&t.random_sampling)),
            overall: per_10k(pct(&t.overall_sampling)),
            max_path: t
                .max_path_tag_length
                .as_ref()
                .map_or(256, |v| v.value as usize),
            tags: t.custom_tags.iter().filter_map(tag).collect(),
            provider: t.provider.as_ref().map(Provider::from_proto),
            egress,
        })
    }

    /// The tracer its spans go to, if any.
    pub fn tracer<'e>(&'e self, env: &'e Env) -> Option<&'e Arc<zipkin::Zipkin>> {
        self.provider.as_ref().or(env.bootstrap.as_ref())?.zipkin()
    }

    /// Envoy's `mutateTracingRequestHeader` and the decision read back from the request id:
    /// whether the HCM traces this request. `x-envoy-force-trace` counts only on requests
    /// whose control headers were kept (internal ones).
    pub fn decide(&self, h: &mut HeaderMap) -> bool {
        // The id is read once and written at most once: each lookup hashes its name.
        let Some(rid) = h.get(REQUEST_ID) else {
            return false;
        };
        let id = rid.as_bytes();
        let was = reason_of(id);
        // The first 8 hex digits of the id, mod 10,000, drive both sampling percentages.
        let Some(n) = id
            .get(..8)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| u64::from_str_radix(s, 16).ok())
        else {
            return was != NO_TRACE;
        };
        let n = (n % 10000) as u32;
        // The mark Envoy would set last, if any (only a 36-byte id carries one).
        let mut mark = None;
        if was == NO_TRACE {
            if h.contains_key(CLIENT_TRACE_ID) && fastrand::u32(..100) < self.client {
                mark = Some(CLIENT);
            } else if h.contains_key(FORCE_TRACE) {
                mark = Some(FORCED);
            } else if n < self.random {
                mark = Some(SAMPLED);
            }
        }
        if n >= self.overall {
            mark = Some(NO_TRACE);
        }
        let Some(r) = mark.filter(|_| id.len() == 36) else {
            return was != NO_TRACE;
        };
        // Rewritten from the bytes already read, only when the mark changes.
        if id[14] != r {
            let mut marked = id.to_vec();
            marked[14] = r;
            if let Ok(v) = HeaderValue::from_bytes(&marked) {
                h.insert(REQUEST_ID, v);
            }
        }
        r != NO_TRACE
    }

    /// The span tags this HCM adds, as (name, value) for a request's headers.
    fn custom_tags<'a>(&'a self, h: &'a HeaderMap) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.tags.iter().filter_map(move |t| {
            let (name, v) = match t {
                Tag::Fixed(n, v) => (n, v.as_str()),
                Tag::Header(n, header, default) => (
                    n,
                    h.get(header)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or(default.as_str()),
                ),
            };
            (!v.is_empty()).then_some((name.as_str(), v))
        })
    }
}

/// The span of a request to a tracing HCM (see the module docs): a null one when its tracer
/// is one mosn lacks.
pub(in crate::proxy) fn begin(
    ctx: &Arc<super::ConnCtx>,
    t: &TraceConfig,
    req: &mut http::Request<super::body::DownstreamBody>,
) -> Option<Box<Span>> {
    let tracer = t.tracer(ctx.store.tracing_env()).cloned();
    let decision = t.decide(req.headers_mut());
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let scheme = super::upstream_headers::forwarded_proto(ctx, req.headers());
    let facts = (
        req.method(),
        path,
        crate::route::headers::protocol_name(req.version()),
        scheme,
        authority(req),
    );
    let peer = ctx.peer.ip();
    // Boxed: the request's future carries only a pointer when there is no span.
    Span::start(
        t,
        tracer.as_ref(),
        &ctx.store,
        req.headers(),
        decision,
        facts,
        peer,
    )
    .map(Box::new)
}

/// The request's host as Envoy's `:authority`: the Host header, else (HTTP/2) the URI's.
pub(crate) fn authority<B>(req: &http::Request<B>) -> &str {
    match req.headers().get(http::header::HOST) {
        Some(v) => v.to_str().unwrap_or_default(),
        None => req.uri().authority().map_or("", |a| a.as_str()),
    }
}

fn tag(t: &CustomTag) -> Option<Tag> {
    let name = t.tag.clone();
    Some(match t.r#type.as_ref()? {
        TagType::Literal(l) => Tag::Fixed(name, l.value.clone()),
        TagType::Environment(e) => Tag::Fixed(
            name,
            std::env::var(&e.name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| e.default_value.clone()),
        ),
        TagType::RequestHeader(r) => Tag::Header(
            name,
            HeaderName::try_from(&r.name).ok()?,
            r.default_value.clone(),
        ),
        // No request, route or host metadata reaches spans here: the default stands in.
        TagType::Metadata(m) => Tag::Fixed(name, m.default_value.clone()),
        // A formatter string: only one without commands (a literal) is known here.
        TagType::Value(v) if !v.contains('%') => Tag::Fixed(name, v.clone()),
        TagType::Value(_) => return None,
    })
}

/// The trace reasons Envoy's UUID extension writes at character 14 of `x-request-id`.
const NO_TRACE: u8 = b'4';
const SAMPLED: u8 = b'9';
const FORCED: u8 = b'a';
const CLIENT: u8 = b'b';

/// Whether the request id says the request is traced because `x-envoy-force-trace` asked
/// (read on an HCM that traces, after [`TraceConfig::decide`]).
pub fn forced(h: &HeaderMap) -> bool {
    reason(h) == FORCED
}

fn reason(h: &HeaderMap) -> u8 {
    h.get(REQUEST_ID)
        .map_or(NO_TRACE, |id| reason_of(id.as_bytes()))
}

/// The trace mark a request id carries.
fn reason_of(id: &[u8]) -> u8 {
    match id {
        id if id.len() == 36 && matches!(id[14], SAMPLED | FORCED | CLIENT) => id[14],
        _ => NO_TRACE,
    }
}

#[cfg(test)]
mod tests;
