//! The Zipkin tracer (`envoy.tracers.zipkin`): spans as Zipkin's JSON v2, sent in batches to
//! the collector cluster, as Envoy's reporter sends them: a batch goes when 5 spans are
//! waiting (`min_flush_spans`) or every 5 s, as one `POST` of a JSON array; a batch that
//! cannot be sent is dropped (no retry), and counted.

use crate::config::ConfigStore;
use envoy_types::pb::envoy::config::trace::v3::{zipkin_config, ZipkinConfig};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// The tracer's config type.
pub const URL: &str = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig";
/// Spans that make a batch go at once.
const MIN_FLUSH_SPANS: usize = 5;
/// How often waiting spans go anyway.
const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Envoy's `tracing.zipkin.request_timeout`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a tracer's batches go.
#[derive(Debug)]
struct Collector {
    cluster: String,
    endpoint: String,
    hostname: String,
    /// The report's timeout (`collector_service.http_uri.timeout`, else Envoy's 5 s).
    timeout: Duration,
    /// `collector_service.request_headers_to_add`.
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// A Zipkin tracer and its span buffer.
#[derive(Debug)]
pub struct Zipkin {
    collector: Arc<Collector>,
    /// New traces get 128-bit ids.
    pub trace_id_128bit: bool,
    /// An inbound span reuses its caller's span id (Envoy's default; Istio turns it off).
    pub shared_span_context: bool,
    pending: Mutex<Vec<String>>,
    /// The timer task runs (it is started by the first span).
    timer: std::sync::Once,
    /// The store its spans came with, for the last batch when it is dropped.
    store: std::sync::OnceLock<Weak<ConfigStore>>,
}

impl Zipkin {
    /// Compile a `ZipkinConfig`.
    pub fn from_any(any: &envoy_types::pb::google::protobuf::Any) -> Result<Self, String> {
        let z: ZipkinConfig = crate::config::decode::unpack(any)?;
        if z.collector_endpoint_version != zipkin_config::CollectorEndpointVersion::HttpJson as i32
        {
            return Err("zipkin: only collector_endpoint_version HTTP_JSON is supported".into());
        }
        // Later Istio (proxies of 1.29 on) names the collector as an HttpService instead.
        if let Some(svc) = &z.collector_service {
            return Self::from_service(svc, z.trace_id_128bit, z.shared_span_context);
        }
        let hostname = if z.collector_hostname.is_empty() {
            z.collector_cluster.clone()
        } else {
            z.collector_hostname
        };
        let collector = Collector {
            cluster: z.collector_cluster,
            endpoint: z.collector_endpoint,
            hostname,
            timeout: REQUEST_TIMEOUT,
            headers: Vec::new(),
        };
        Ok(Self::new(
            collector,
            z.trace_id_128bit,
            z.shared_span_context,
        ))
    }

    fn new(
        collector: Collector,
        trace_id_128bit: bool,
        shared: Option<envoy_types::pb::google::protobuf::BoolValue>,
    ) -> Self {
        Zipkin {
            collector: Arc::new(collector),
            trace_id_128bit,
            shared_span_context: shared.is_none_or(|b| b.value),
            pending: Mutex::default(),
            timer: std::sync::Once::new(),
            store: Default::default(),
        }
    }

    /// The collector from `collector_service`: its URI's cluster, authority and path, its
    /// timeout and headers.
    fn from_service(
        svc: &envoy_types::pb::envoy::config::core::v3::HttpService,
        trace_id_128bit: bool,
        shared: Option<envoy_types::pb::google::protobuf::BoolValue>,
    ) -> Result<Self, String> {
        use envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
        let uri = svc
            .http_uri
            .as_ref()
            .ok_or("zipkin: collector_service without http_uri")?;
        let Some(HttpUpstreamType::Cluster(cluster)) = &uri.http_upstream_type else {
            return Err("zipkin: collector_service.http_uri without a cluster".into());
        };
        let parsed: http::Uri = uri
            .uri
            .parse()
            .map_err(|e| format!("zipkin: collector_service uri {:?}: {e}", uri.uri))?;
        let timeout = uri
            .timeout
            .as_ref()
            .map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
            .filter(|d| !d.is_zero())
            .unwrap_or(REQUEST_TIMEOUT);
        let headers = svc
            .request_headers_to_add
            .iter()
            .filter_map(|o| {
                let h = o.header.as_ref()?;
                Some((
                    http::HeaderName::try_from(h.key.as_str()).ok()?,
                    http::HeaderValue::try_from(h.value.as_str()).ok()?,
                ))
            })
            .collect();
        let collector = Collector {
            cluster: cluster.clone(),
            endpoint: parsed
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            hostname: parsed
                .authority()
                .map_or(cluster.as_str(), |a| a.as_str())
                .to_string(),
            timeout,
            headers,
        };
        Ok(Self::new(collector, trace_id_128bit, shared))
    }

    /// Buffer an encoded span; send the batch when it is full.
    pub fn report(self: &Arc<Self>, span: String, store: &Arc<ConfigStore>) {
        // A span that ends outside the runtime (a body dropped at exit) is not sent.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let _ = self.store.set(Arc::downgrade(store));
        self.timer.call_once(|| {
            // Only the spans' tracer is kept alive by spans: the timer stops with it.
            let (me, store) = (Arc::downgrade(self), Arc::downgrade(store));
            rt.spawn(timer(me, store));
        });
        let batch = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.push(span);
            (p.len() >= MIN_FLUSH_SPANS).then(|| std::mem::take(&mut *p))
        };
        if let Some(batch) = batch {
            rt.spawn(send(self.collector.clone(), store.clone(), batch));
        }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A tracer replaced by a config update sends what it still holds, instead of losing it.
impl Drop for Zipkin {
    fn drop(&mut self) {
        let batch = self.take();
        let store = self.store.get().and_then(Weak::upgrade);
        if let (false, Some(store), Ok(rt)) = (
            batch.is_empty(),
            store,
            tokio::runtime::Handle::try_current(),
        ) {
            rt.spawn(send(self.collector.clone(), store, batch));
        }
    }
}

async fn timer(me: Weak<Zipkin>, store: Weak<ConfigStore>) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (Some(z), Some(store)) = (me.upgrade(), store.upgrade()) else {
            return;
        };
        let batch = z.take();
        if !batch.is_empty() {
            store
                .tracing_env()
                .stats
                .counter("tracing.zipkin.timer_flushed")
                .inc();
            send(z.collector.clone(), store, batch).await;
        }
    }
}

/// POST one batch to the collector cluster, counted as Envoy counts it.
async fn send(z: Arc<Collector>, store: Arc<ConfigStore>, batch: Vec<String>) {
    let stats = &store.tracing_env().stats;
    let snap = store.load();
    let Some(cluster) = snap.clusters.get(&z.cluster).cloned() else {
        stats
            .counter("tracing.zipkin.reports_skipped_no_cluster")
            .inc();
        return;
    };
    let body = format!("[{}]", batch.join(","));
    let req = http::Request::post(z.endpoint.as_str())
        .header(http::header::HOST, z.hostname.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(crate::proxy::body::full(body));
    let Ok(mut req) = req else {
        stats.counter("tracing.zipkin.reports_failed").inc();
        return;
    };
    for (k, v) in &z.headers {
        req.headers_mut().append(k.clone(), v.clone());
    }
    stats
        .counter("tracing.zipkin.spans_sent")
        .add(batch.len() as u64);
    match tokio::time::timeout(z.timeout, post(&cluster, &store, req)).await {
        Ok(Ok(202)) => stats.counter("tracing.zipkin.reports_sent").inc(),
        Ok(Ok(status)) => {
            tracing::debug!(cluster = %z.cluster, status, "zipkin collector refused spans");
            stats.counter("tracing.zipkin.reports_dropped").inc();
        }
        Ok(Err(e)) => {
            tracing::debug!(cluster = %z.cluster, "zipkin report failed: {e}");
            stats.counter("tracing.zipkin.reports_failed").inc();
        }
        Err(_) => stats.counter("tracing.zipkin.reports_failed").inc(),
    }
}

/// One request to a host of `cluster`, its response read to the end: the status.
async fn post(
    cluster: &crate::cluster::Cluster,
    store: &ConfigStore,
    req: http::Request<crate::proxy::body::BoxBody>,
) -> Result<u16, String> {
    use crate::proxy::attempt::{build_request, dispatch};
    let host = cluster
        .choose(&crate::lb::LbContext::default())
        .ok_or("no healthy host")?;
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let req = build_request(
        cluster,
        &parts,
        parts.headers.clone(),
        path,
        &host,
        body,
        None,
    );
    let alpn = crate::tls::Alpn::Configured;
    let tls = cluster
        .transport
        .dial(Some(&host), &store.secrets, alpn, None, None)?;
    // Within the cluster's request breaker, as Envoy's async client is.
    if !cluster.admits_request() {
        return Err("the collector cluster's request circuit breaker is open".into());
    }
    let _active = cluster.start_request(host.clone());
    let resp = dispatch(cluster, &host, tls.as_deref(), &mut Some(req), &mut None)
        .await
        .map_err(|_| "the request to the collector failed".to_string())?;
    let status = resp.status().as_u16();
    cluster.stats.response(status);
    let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
    Ok(status)
}

/// A finished span, to encode.
pub struct SpanJson<'a> {
    /// (high, low) trace id.
    pub trace: (u64, u64),
    /// Span id.
    pub id: u64,
    /// Parent span id.
    pub parent: Option<u64>,
    /// SERVER (else CLIENT).
    pub server: bool,
    /// Shares its id with the caller's span.
    pub shared: bool,
    /// Operation name.
    pub name: &'a str,
    /// Start, µs since the epoch.
    pub timestamp: u64,
    /// µs.
    pub duration: u64,
    /// `localEndpoint.serviceName`.
    pub service: &'a str,
    /// `localEndpoint.ipv4`/`ipv6`.
    pub local_ip: Option<std::net::IpAddr>,
    /// Tags in order; a later value of a name wins.
    pub tags: &'a [(&'a str, String)],
}

impl SpanJson<'_> {
    /// Zipkin v2 JSON: ids as hex strings, times as integers in µs, tag values as strings,
    /// empty tags and an empty name left out.
    pub fn encode(&self) -> String {
        use serde_json::{json, Map, Value};
        let mut span = Map::new();
        span.insert(
            "traceId".into(),
            json!(super::b3::trace_hex(self.trace.0, self.trace.1)),
        );
        if let Some(p) = self.parent {
            span.insert("parentId".into(), json!(super::b3::id_hex(p)));
        }
        span.insert("id".into(), json!(super::b3::id_hex(self.id)));
        span.insert(
            "kind".into(),
            json!(if self.server { "SERVER" } else { "CLIENT" }),
        );
        if !self.name.is_empty() {
            span.insert("name".into(), json!(self.name));
        }
        span.insert("timestamp".into(), json!(self.timestamp));
        span.insert("duration".into(), json!(self.duration));
        let mut local = Map::new();
        if !self.service.is_empty() {
            local.insert("serviceName".into(), json!(self.service));
        }
        match self.local_ip {
            Some(ip @ std::net::IpAddr::V4(_)) => {
                local.insert("ipv4".into(), json!(ip.to_string()))
            }
            Some(ip) => local.insert("ipv6".into(), json!(ip.to_string())),
            None => None,
        };
        local.insert("port".into(), json!(0));
        span.insert("localEndpoint".into(), Value::Object(local));
        let mut tags = Map::new();
        for (k, v) in self.tags.iter().filter(|(_, v)| !v.is_empty()) {
            tags.insert((*k).to_string(), json!(v));
        }
        span.insert("tags".into(), Value::Object(tags));
        if self.shared && self.server {
            span.insert("shared".into(), json!(true));
        }
        Value::Object(span).to_string()
    }
}
