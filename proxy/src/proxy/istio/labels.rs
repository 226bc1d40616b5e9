//! `istio_requests_total` and its labels, worked out as Istio's stats filter does when the
//! request ends: this proxy's workload on one side, the peer's (from the metadata exchange)
//! on the other, the service from the cluster's `istio` metadata, and the response.

use super::peer::Workload;
use super::IstioConfig;
use crate::config::ConfigStore;
use crate::stats::{Histogram, Stat};
use std::sync::Arc;

/// The telemetry of one request, from its start to its end.
#[derive(Debug)]
pub struct Telemetry {
    cfg: IstioConfig,
    store: Arc<ConfigStore>,
    /// The other side's workload, once known.
    pub peer: Option<Arc<Workload>>,
    host: String,
    grpc: bool,
    /// The request head's size: header names and values, method and path.
    head_bytes: u64,
    /// (source, destination) principals, and whether the connection is mutual TLS (inbound).
    principals: (String, String),
    mtls: Option<bool>,
}

/// The request's content types that make it gRPC for Istio's `request_protocol`.
const GRPC: [&str; 3] = [
    "application/grpc",
    "application/grpc+proto",
    "application/grpc+json",
];

/// Clusters whose name is the destination service name.
const PASSTHROUGH: [&str; 5] = [
    "BlackHoleCluster",
    "PassthroughCluster",
    "InboundPassthroughCluster",
    "InboundPassthroughClusterIpv4",
    "InboundPassthroughClusterIpv6",
];

/// What the end of a request adds.
#[derive(Debug, Default)]
pub struct End<'a> {
    /// Response status, 0 when none was sent.
    pub status: u16,
    /// Response flags, comma-separated, empty for none.
    pub flags: &'a str,
    /// The cluster the request was routed to.
    pub cluster: Option<&'a str>,
    /// The route's name.
    pub route: Option<&'a str>,
    /// The upstream endpoint's `istio.workload` metadata.
    pub endpoint: Option<&'a str>,
    /// The names on the upstream TLS connection (the source and destination principals of
    /// an outbound request).
    pub upstream_tls: Option<&'a crate::cluster::conn_info::TlsNames>,
    /// The response's `grpc-status` (trailers or headers).
    pub grpc_status: Option<&'a str>,
    /// From the request's start to the end of its response, in ms.
    pub duration_ms: u64,
    /// Request body bytes, and the response's: its head's header names and values, and body.
    pub bytes: (u64, u64),
}

/// Header names and values, the size Istio 1.10 counts for a head.
pub fn head_size(h: &http::HeaderMap) -> u64 {
    h.iter()
        .map(|(k, v)| (k.as_str().len() + v.len()) as u64)
        .sum()
}

impl Telemetry {
    /// Capture what the labels need from the request and its connection.
    pub fn start<B>(
        cfg: &IstioConfig,
        store: &Arc<ConfigStore>,
        req: &http::Request<B>,
        tls: Option<&crate::tls::Peer>,
    ) -> Self {
        let h = req.headers();
        let text = |k: http::header::HeaderName| {
            h.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default()
        };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let head_bytes =
            (":method:path".len() + req.method().as_str().len() + path.len()) as u64 + head_size(h);
        let (principals, mtls) = match (cfg.inbound(), tls) {
            (true, Some(t)) => (
                (
                    t.sans.uri.first().cloned().unwrap_or_default(),
                    t.local_uri.clone().unwrap_or_default(),
                ),
                Some(t.authenticated()),
            ),
            (true, None) => (Default::default(), Some(false)),
            (false, _) => (Default::default(), None),
        };
        Telemetry {
            cfg: cfg.clone(),
            store: store.clone(),
            peer: None,
            host: crate::proxy::trace::authority(req).to_string(),
            grpc: GRPC.contains(&text(http::header::CONTENT_TYPE)),
            head_bytes,
            principals,
            mtls,
        }
    }

    /// Count the request.
    pub fn finish(self, end: End<'_>) {
        if !self.cfg.stats {
            return;
        }
        let store = &self.store;
        let who = Who {
            peer: self.peer.as_deref(),
            endpoint: end.endpoint,
            host: &self.host,
            cluster: end.cluster,
            route: end.route,
            // Outbound, Istio names the upstream connection's two certificates.
            principals: match (self.cfg.inbound(), end.upstream_tls) {
                (false, Some(t)) => (&t.local, &t.peer),
                _ => (&self.principals.0, &self.principals.1),
            },
        };
        let mut code = itoa::Buffer::new();
        let mut grpc_code = itoa::Buffer::new();
        let grpc_status = match (self.grpc, end.grpc_status) {
            (false, _) => "",
            (true, Some(s)) => s,
            (true, None) => grpc_code.format(crate::proxy::local_reply::grpc_status_of(end.status)),
        };
        let tail = [
            ("request_protocol", if self.grpc { "grpc" } else { "http" }),
            ("response_code", code.format(end.status)),
            ("grpc_response_status", grpc_status),
            ("response_flags", flags(end.flags)),
            ("connection_security_policy", security(self.mtls)),
        ];
        let series = with_sides(&self.cfg, store, who, |sides| {
            let values: [(&str, &str); 25] =
                std::array::from_fn(|i| if i < 20 { sides[i] } else { tail[i - 20] });
            store.istio_local().series(&values, || {
                let stats = &store.tracing_env().stats;
                let h = |family| stats.labeled_histogram(family, &values);
                Series::Http {
                    requests: stats.labeled(
                        "istio_requests_total",
                        &values,
                        crate::stats::Kind::Counter,
                    ),
                    duration: h("istio_request_duration_milliseconds"),
                    request_bytes: h("istio_request_bytes"),
                    response_bytes: h("istio_response_bytes"),
                }
            })
        });
        let Some(Series::Http {
            requests,
            duration,
            request_bytes,
            response_bytes,
        }) = series.as_deref()
        else {
            return;
        };
        requests.inc();
        duration.record(end.duration_ms);
        request_bytes.record(self.head_bytes + end.bytes.0);
        response_bytes.record(end.bytes.1);
    }
}

/// What names the two sides of a request or connection.
#[derive(Debug, Default)]
pub struct Who<'a> {
    /// The other side's workload, from the metadata exchange.
    pub peer: Option<&'a Workload>,
    /// The upstream endpoint's `istio.workload` metadata.
    pub endpoint: Option<&'a str>,
    /// The request's Host (empty for TCP).
    pub host: &'a str,
    /// The cluster the traffic went to.
    pub cluster: Option<&'a str>,
    /// The route's name.
    pub route: Option<&'a str>,
    /// The (source, destination) principals, empty when unknown.
    pub principals: (&'a str, &'a str),
}

/// The reporter and the source and destination labels (the first 20 of Istio's, in its
/// order), worked out as Istio's stats filter does, handed to `f`.
pub fn with_sides<R>(
    cfg: &IstioConfig,
    store: &ConfigStore,
    who: Who<'_>,
    f: impl FnOnce(&[(&'static str, &str); 20]) -> R,
) -> R {
    let local = store.istio_local();
    let inbound = cfg.inbound();
    // No metadata from the upstream (it failed, or has no sidecar): the endpoint's own,
    // as Istio's stats fall back to.
    let endpoint = match (who.peer, who.endpoint) {
        (None, Some(e)) if !inbound => Workload::from_endpoint(e),
        _ => None,
    };
    let none = Workload::default();
    let peer = who.peer.or(endpoint.as_ref()).unwrap_or(&none);
    let (src, dst) = if inbound {
        (peer, &local.workload)
    } else {
        (&local.workload, peer)
    };
    // The peer's namespace: from its certificate's SPIFFE name, else its metadata.
    let peer_san = if inbound {
        who.principals.0
    } else {
        who.principals.1
    };
    let peer_ns = san_namespace(peer_san).unwrap_or(&peer.namespace);
    let (src_ns, dst_ns) = if inbound {
        (peer_ns, local.workload.namespace.as_str())
    } else {
        (local.workload.namespace.as_str(), peer_ns)
    };
    // destination_service: the Host (unless the filter is told not to use it), then the
    // cluster's Istio service metadata.
    let host_fallback = !(local.gateway || (cfg.plugin_config && inbound));
    let mut service = match () {
        _ if host_fallback && !who.host.is_empty() => who.host.to_string(),
        _ if inbound => local.workload.canonical_name.clone(),
        _ => String::new(),
    };
    let mut service_name = None;
    // Istio's REGISTRY_ONLY and ALLOW_ANY routes name the cluster the traffic stands for.
    let by_route = match who.route {
        Some("block_all") => Some("BlackHoleCluster"),
        Some("allow_any") => Some("PassthroughCluster"),
        _ => None,
    };
    if let Some(c) = by_route {
        service_name = Some(c.to_string());
    } else if let Some(c) = who.cluster {
        if PASSTHROUGH.contains(&c) {
            service_name = Some(c.to_string());
        } else if let Some((host, name)) = istio_service(store, c) {
            // Without a name, the host's first label.
            service_name = Some(match name.is_empty() {
                true => host.split('.').next().unwrap_or_default().to_string(),
                false => name,
            });
            service = host;
        }
    }
    let service_name = service_name.unwrap_or_else(|| service.clone());
    f(&[
        ("reporter", if inbound { "destination" } else { "source" }),
        ("source_workload", unknown(&src.workload)),
        ("source_canonical_service", unknown(src.canonical_service())),
        ("source_canonical_revision", revision(src)),
        ("source_workload_namespace", unknown(src_ns)),
        ("source_principal", unknown(who.principals.0)),
        ("source_app", unknown(&src.app)),
        ("source_version", unknown(&src.version)),
        ("source_cluster", unknown(&src.cluster)),
        ("destination_workload", unknown(&dst.workload)),
        ("destination_workload_namespace", unknown(dst_ns)),
        ("destination_principal", unknown(who.principals.1)),
        ("destination_app", unknown(&dst.app)),
        ("destination_version", unknown(&dst.version)),
        ("destination_service", unknown(&service)),
        (
            "destination_canonical_service",
            unknown(dst.canonical_service()),
        ),
        ("destination_canonical_revision", revision(dst)),
        ("destination_service_name", unknown(&service_name)),
        // The destination workload's namespace (Istio 1.10's and later Istio's filters
        // alike), not the service's from the cluster metadata.
        ("destination_service_namespace", unknown(dst_ns)),
        ("destination_cluster", unknown(&dst.cluster)),
    ])
}

/// The namespace in a SPIFFE name (`spiffe://<domain>/ns/<namespace>/sa/<account>`).
fn san_namespace(san: &str) -> Option<&str> {
    // A byte scan: `str::find` sets up a two-way searcher per call, even for an empty name.
    let at = san.as_bytes().windows(4).position(|w| w == b"/ns/")?;
    let rest = &san[at + 4..];
    Some(rest.split('/').next().unwrap_or(rest))
}

/// The map key of a label set: its values, each ended by a NUL.
pub fn key(values: &[(&str, &str)]) -> String {
    let mut key = String::with_capacity(512);
    for (_, v) in values {
        key.push_str(v);
        key.push('\0');
    }
    key
}

/// Istio's `response_flags`: `-` for none.
pub fn flags(f: &str) -> &str {
    if f.is_empty() {
        "-"
    } else {
        f
    }
}

/// Istio's `connection_security_policy`: unknown on the client side.
pub fn security(mtls: Option<bool>) -> &'static str {
    match mtls {
        None => "unknown",
        Some(true) => "mutual_tls",
        Some(false) => "none",
    }
}

/// The cluster's `filter_metadata.istio.services[0]`: (host, name).
fn istio_service(store: &ConfigStore, cluster: &str) -> Option<(String, String)> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let snap = store.load();
    let c = snap.clusters.get(cluster)?;
    let istio = c.proto.metadata.as_ref()?.filter_metadata.get("istio")?;
    let Some(Kind::ListValue(list)) = istio.fields.get("services")?.kind.as_ref() else {
        return None;
    };
    let Some(Kind::StructValue(first)) = list.values.first()?.kind.as_ref() else {
        return None;
    };
    let text = |k: &str| match first.fields.get(k).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => s.clone(),
        _ => String::new(),
    };
    Some((text("host"), text("name")))
}

/// The stats of one label set.
#[derive(Debug)]
pub enum Series {
    /// A request's: `istio_requests_total` and the three histograms.
    Http {
        requests: Arc<Stat>,
        duration: Arc<Histogram>,
        request_bytes: Arc<Histogram>,
        response_bytes: Arc<Histogram>,
    },
    /// A TCP connection's: `istio_tcp_connections_{opened,closed}_total` and
    /// `istio_tcp_{sent,received}_bytes_total`.
    Tcp {
        opened: Arc<Stat>,
        closed: Arc<Stat>,
        sent: Arc<Stat>,
        received: Arc<Stat>,
    },
}

/// A label's value, `unknown` when empty.
fn unknown(s: &str) -> &str {
    if s.is_empty() {
        "unknown"
    } else {
        s
    }
}

/// A canonical revision, `latest` when unset.
fn revision(w: &Workload) -> &str {
    match w.canonical_revision.as_str() {
        "" => "latest",
        r => r,
    }
}
