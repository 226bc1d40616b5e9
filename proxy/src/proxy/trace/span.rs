//! One request's span: started by the HCM from the request's B3 context, named by the route,
//! finished with the response's facts when the access-log record of the request completes.

use super::{b3, zipkin::Zipkin, TraceConfig};
use crate::config::ConfigStore;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// `x-envoy-decorator-operation`.
pub const DECORATOR: HeaderName = HeaderName::from_static("x-envoy-decorator-operation");

/// A request's span.
#[derive(Debug)]
pub struct Span {
    /// `None`: a null span (an HCM whose tracer mosn lacks, or a request with broken B3
    /// headers), which only handles the decorator, as Envoy's null span does.
    tracer: Option<Arc<Zipkin>>,
    store: Arc<ConfigStore>,
    trace: (u64, u64),
    id: u64,
    parent: Option<u64>,
    /// Reported when it ends.
    pub sampled: bool,
    shared: bool,
    egress: bool,
    name: String,
    /// The route's decorator is passed on (inbound: in the response).
    propagate: bool,
    start_us: u64,
    started: Instant,
    /// Tags known at the start, in Envoy's order.
    tags: Vec<(&'static str, String)>,
    custom: Vec<(String, String)>,
}

impl Span {
    /// Start the span of a request the HCM's `decision` traces or not (an unsampled span still
    /// carries the context upstream). A null span without a tracer, and when the request's B3
    /// headers are broken: Envoy then reports nothing and passes them on untouched.
    pub fn start(
        cfg: &TraceConfig,
        tracer: Option<&Arc<Zipkin>>,
        store: &Arc<ConfigStore>,
        h: &HeaderMap,
        decision: bool,
        req: (&http::Method, &str, &'static str, &str, &str),
        peer: std::net::IpAddr,
    ) -> Option<Span> {
        let (method, path, protocol, scheme, host) = req;
        let null = || Span {
            tracer: None,
            store: store.clone(),
            trace: (0, 0),
            id: 0,
            parent: None,
            sampled: false,
            shared: false,
            egress: cfg.egress,
            name: String::new(),
            propagate: false,
            start_us: 0,
            started: Instant::now(),
            tags: Vec::new(),
            custom: Vec::new(),
        };
        let Some(tracer) = tracer else {
            return Some(null());
        };
        let (ctx, sampled) = b3::read(h, decision);
        let ctx = match ctx {
            Ok(c) => c,
            Err(why) => {
                tracing::debug!("{why}: no span for this request");
                return Some(null());
            }
        };
        let fresh = || loop {
            let id = fastrand::u64(..);
            if id != 0 {
                break id;
            }
        };
        let (trace, id, parent, shared) = match ctx {
            None => {
                let id = fresh();
                let hi = if tracer.trace_id_128bit { fresh() } else { 0 };
                ((hi, id), id, None, false)
            }
            // An inbound span shares the caller's id only with `shared_span_context`
            // (Istio turns it off).
            Some(c) if !cfg.egress && tracer.shared_span_context => (
                (c.trace_hi, c.trace_lo),
                c.span,
                c.parent.filter(|p| *p != 0),
                true,
            ),
            Some(c) => ((c.trace_hi, c.trace_lo), fresh(), Some(c.span), false),
        };
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
        let mut span = Span {
            tracer: Some(tracer.clone()),
            trace,
            id,
            parent,
            sampled,
            shared,
            name: host.to_string(),
            start_us: micros(SystemTime::now()),
            ..null()
        };
        // Tags only for a span that will be reported (most are not, at Istio's 1%).
        if !sampled {
            return Some(span);
        }
        let original = text("x-envoy-original-path").unwrap_or(path);
        let mut url = format!("{scheme}://{host}{original}");
        if url.len() > cfg.max_path {
            let mut cut = cfg.max_path;
            while !url.is_char_boundary(cut) {
                cut -= 1;
            }
            url.truncate(cut);
        }
        let mut tags = vec![
            ("node_id", store.tracing_env().node_id.clone()),
            (
                "guid:x-request-id",
                text("x-request-id").unwrap_or_default().to_string(),
            ),
            ("http.url", url),
            ("http.method", method.as_str().to_string()),
            (
                "downstream_cluster",
                text("x-envoy-downstream-service-cluster")
                    .unwrap_or("-")
                    .to_string(),
            ),
            ("user_agent", text("user-agent").unwrap_or("-").to_string()),
            ("http.protocol", protocol.to_string()),
            ("peer.address", peer.to_string()),
        ];
        if let Some(c) = text("x-client-trace-id") {
            tags.push(("guid:x-client-trace-id", c.to_string()));
        }
        span.custom = cfg
            .custom_tags(h)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        span.tags = tags;
        Some(span)
    }

    /// Name the span after the route's decorator, and pass the name on as Envoy does: in the
    /// request to the upstream from an outbound listener. An inbound request's own
    /// `x-envoy-decorator-operation` names its span; the header never goes further.
    pub fn route(&mut self, decorator: Option<&(Arc<str>, bool)>, h: &mut HeaderMap) {
        self.decorate(decorator);
        if self.egress {
            if let Some((op, true)) = decorator {
                if let Ok(v) = HeaderValue::from_str(op) {
                    h.insert(DECORATOR, v);
                }
            }
        } else if let Some(v) = h.remove(DECORATOR) {
            if let Some(op) = v.to_str().ok().filter(|o| !o.is_empty()) {
                self.name = op.to_string();
                self.propagate = false;
            }
        }
    }

    /// Name the span after the route's decorator (every route action; the headers of
    /// [`route`](Self::route) are for forwarded requests).
    pub fn decorate(&mut self, decorator: Option<&(Arc<str>, bool)>) {
        if let Some((op, propagate)) = decorator {
            self.name = op.to_string();
            self.propagate = *propagate;
        }
    }

    /// Write this span's context into the upstream request (a null span writes none).
    pub fn inject(&self, h: &mut HeaderMap) {
        if self.tracer.is_some() {
            b3::inject(h, self.trace, self.id, self.parent, self.sampled);
        }
    }

    /// The response's part: an inbound span's decorated name goes back to the caller, and an
    /// outbound span takes the name the callee's proxy sent.
    pub fn response(&mut self, h: &mut HeaderMap) {
        if self.egress {
            if let Some(v) = h.remove(DECORATOR) {
                if let Some(op) = v.to_str().ok().filter(|o| !o.is_empty()) {
                    self.name = op.to_string();
                }
            }
        } else if self.propagate {
            if let Ok(v) = HeaderValue::from_str(&self.name) {
                h.insert(DECORATOR, v);
            }
        }
    }

    /// End the span with the response's facts and hand it to the reporter if sampled.
    pub fn finish(self, end: End<'_>) {
        let Some(tracer) = self.tracer.as_ref().filter(|_| self.sampled) else {
            return;
        };
        let env = self.store.tracing_env();
        let mut tags: Vec<(&str, String)> =
            self.tags.iter().map(|(k, v)| (*k, v.clone())).collect();
        tags.extend(self.custom.iter().map(|(k, v)| (k.as_str(), v.clone())));
        tags.push(("request_size", end.request_size.to_string()));
        tags.push(("response_size", end.response_size.to_string()));
        tags.push(("component", "proxy".into()));
        if let Some(c) = end.upstream_cluster {
            tags.push(("upstream_cluster", c.to_string()));
            tags.push(("upstream_cluster.name", c.to_string()));
        }
        tags.push(("http.status_code", end.status.to_string()));
        let flags = if end.flags.is_empty() { "-" } else { end.flags };
        tags.push(("response_flags", flags.to_string()));
        if end.status == 0 || end.status >= 500 {
            tags.push(("error", "true".into()));
        }
        let json = super::zipkin::SpanJson {
            trace: self.trace,
            id: self.id,
            parent: self.parent,
            server: !self.egress,
            shared: self.shared,
            name: &self.name,
            timestamp: self.start_us,
            duration: self.started.elapsed().as_micros() as u64,
            service: &env.service,
            local_ip: env.local_ip,
            tags: &tags,
        }
        .encode();
        tracer.report(json, &self.store);
    }
}

/// What a span learns at the end of its request.
#[derive(Debug, Default)]
pub struct End<'a> {
    /// The response status (0 when none was sent).
    pub status: u16,
    /// Envoy's response flags, comma-separated.
    pub flags: &'a str,
    /// The cluster of the upstream host that was picked.
    pub upstream_cluster: Option<&'a str>,
    /// Request body bytes.
    pub request_size: u64,
    /// Response body bytes.
    pub response_size: u64,
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
