//! Envoy access logs for the HTTP connection manager: `envoy.access_loggers.file` (Istio's
//! `accessLogFile: /dev/stdout`) and the stdout/stderr loggers, with Envoy's text format
//! operators (`%RESPONSE_FLAGS%`, `%UPSTREAM_HOST%`, `%REQ(X?Y):N%`, ...) and JSON formats.
//!
//! Lines are built on the request's task and handed to one writer thread per sink, so a slow
//! stdout never blocks a worker; the writer flushes whenever its queue is empty.

pub mod filter;
pub(crate) mod format;

pub use format::{Entry, Format, DEFAULT_FORMAT};

use crate::config::decode;
use envoy_types::pb::envoy::config::accesslog::v3 as alpb;
use envoy_types::pb::envoy::extensions::access_loggers::{
    file::v3 as filepb, stream::v3 as streampb,
};
use format::{layout_of, Layout};
use http::HeaderMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

/// One configured access logger.
#[derive(Debug)]
pub struct AccessLogger {
    layout: Layout,
    sink: Arc<Sink>,
    /// Which requests it writes (all without one).
    filter: Option<filter::Filter>,
}

impl AccessLogger {
    /// Compile an HCM `access_log` entry; `Ok(None)` for logger types we do not implement
    /// (gRPC, OpenTelemetry, ...), which are skipped with a debug log.
    pub fn from_proto(a: &alpb::AccessLog) -> Result<Option<Self>, String> {
        let Some(alpb::access_log::ConfigType::TypedConfig(any)) = &a.config_type else {
            return Ok(None);
        };
        let filter = a
            .filter
            .as_ref()
            .map(|f| filter::Filter::from_proto(f, &a.name))
            .transpose()?;
        let (path, fmt) = if any.type_url == <filepb::FileAccessLog as prost::Name>::type_url() {
            let f: filepb::FileAccessLog = decode::unpack(any)?;
            use filepb::file_access_log::AccessLogFormat as F;
            let layout = match &f.access_log_format {
                None => None,
                Some(F::Format(s)) => Some(Layout::Text(Format::parse(s))),
                Some(F::JsonFormat(s)) => Some(Layout::json(s)),
                Some(F::LogFormat(s)) => Some(layout_of(s)?),
                Some(F::TypedJsonFormat(s)) => Some(Layout::json(s)),
            };
            (f.path.clone(), layout)
        } else if any.type_url == <streampb::StdoutAccessLog as prost::Name>::type_url() {
            let f: streampb::StdoutAccessLog = decode::unpack(any)?;
            let layout = match &f.access_log_format {
                Some(streampb::stdout_access_log::AccessLogFormat::LogFormat(s)) => {
                    Some(layout_of(s)?)
                }
                None => None,
            };
            ("/dev/stdout".to_string(), layout)
        } else if any.type_url == <streampb::StderrAccessLog as prost::Name>::type_url() {
            let f: streampb::StderrAccessLog = decode::unpack(any)?;
            let layout = match &f.access_log_format {
                Some(streampb::stderr_access_log::AccessLogFormat::LogFormat(s)) => {
                    Some(layout_of(s)?)
                }
                None => None,
            };
            ("/dev/stderr".to_string(), layout)
        } else {
            tracing::debug!(logger = %a.name, r#type = %any.type_url, "access logger type not implemented; skipped");
            return Ok(None);
        };
        if path.is_empty() {
            return Err("file access log without a path".into());
        }
        Ok(Some(AccessLogger {
            layout: fmt.unwrap_or_else(|| Layout::Text(Format::parse(DEFAULT_FORMAT))),
            sink: Sink::get(&path),
            filter,
        }))
    }

    /// Format and queue one line.
    pub fn log(&self, e: &Entry<'_>) {
        if self.filter.as_ref().is_some_and(|f| !f.passes(e)) {
            return;
        }
        self.sink.send(self.layout.render(e));
    }
}

/// Compile a filter's `access_log` list (HCM or tcp_proxy), skipping logger types we do not
/// implement; an error names the logger.
pub fn compile(logs: &[alpb::AccessLog]) -> Result<Vec<Arc<AccessLogger>>, String> {
    logs.iter()
        .filter_map(|a| {
            AccessLogger::from_proto(a)
                .map_err(|e| format!("access_log {:?}: {e}", a.name))
                .transpose()
        })
        .map(|r| r.map(Arc::new))
        .collect()
}

/// A destination file shared by every logger that names it, written by one thread.
#[derive(Debug)]
pub struct Sink {
    tx: mpsc::Sender<String>,
}

impl Sink {
    /// The sink for `path` (opened for append on first use; `/dev/stdout` is the process's).
    fn get(path: &str) -> Arc<Sink> {
        static SINKS: OnceLock<Mutex<std::collections::HashMap<String, Arc<Sink>>>> =
            OnceLock::new();
        let mut sinks = SINKS.get_or_init(Default::default).lock().unwrap();
        sinks
            .entry(path.to_string())
            .or_insert_with(|| Sink::spawn(path.to_string()))
            .clone()
    }

    fn spawn(path: String) -> Arc<Sink> {
        let (tx, rx) = mpsc::channel::<String>();
        let _ = std::thread::Builder::new()
            .name("mosn-access-log".into())
            .spawn(move || {
                // Open on the first line, so that loading a config (`--mode validate`) writes
                // nothing.
                let Ok(first) = rx.recv() else { return };
                let out: Box<dyn Write> = match path.as_str() {
                    "/dev/stdout" => Box::new(std::io::stdout()),
                    "/dev/stderr" => Box::new(std::io::stderr()),
                    p => match std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                    {
                        Ok(f) => Box::new(f),
                        Err(e) => {
                            tracing::error!("cannot open access log {p}: {e}");
                            return;
                        }
                    },
                };
                let mut out = std::io::BufWriter::new(out);
                let _ = out.write_all(first.as_bytes());
                let _ = out.flush();
                while let Ok(line) = rx.recv() {
                    let _ = out.write_all(line.as_bytes());
                    while let Ok(more) = rx.try_recv() {
                        let _ = out.write_all(more.as_bytes());
                    }
                    let _ = out.flush();
                }
            });
        Arc::new(Sink { tx })
    }

    fn send(&self, line: String) {
        let _ = self.tx.send(line);
    }
}

/// What the HCM learns about a request while routing it, for its access log line.
#[derive(Debug, Default)]
pub struct RouteInfo {
    /// The matched route's name.
    pub route: Option<String>,
    /// The cluster chosen.
    pub cluster: Option<String>,
    /// The upstream host of the last attempt.
    pub host: Option<SocketAddr>,
    /// That host's `istio.workload` endpoint metadata.
    pub workload: Option<Arc<str>>,
    /// The connection of the last attempt, once it had one (its local address, and TLS names
    /// for Istio's outbound principals).
    pub conn: Option<Arc<crate::cluster::conn_info::ConnInfo>>,
}

/// A request's downstream remote addresses.
#[derive(Debug, Clone, Copy)]
pub struct Remote {
    /// The address the HCM settled on (`%DOWNSTREAM_REMOTE_ADDRESS%`): the peer, or an
    /// `x-forwarded-for` entry (port 0) when `use_remote_address` is off or proxies in front
    /// are trusted.
    pub effective: SocketAddr,
    /// The connection's peer (`%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%`).
    pub direct: SocketAddr,
}

/// An in-flight request's log record: captured at the start, completed when the response body
/// ends (or the client goes away), then written to every logger of the HCM.
#[derive(Debug)]
pub struct Record {
    start: SystemTime,
    started: std::time::Instant,
    method: String,
    path: String,
    authority: String,
    protocol: &'static str,
    req_headers: HeaderMap,
    resp_headers: HeaderMap,
    /// The downstream connection's TLS (kept only for loggers).
    down_tls: Option<Arc<crate::tls::Peer>>,
    /// Why the upstream connection failed (a local reply's, for loggers).
    transport_failure: Option<String>,
    status: u16,
    flags: String,
    details: std::borrow::Cow<'static, str>,
    received: Arc<std::sync::atomic::AtomicU64>,
    info: RouteInfo,
    downstream_local: SocketAddr,
    /// Envoy's downstream remote address (from `x-forwarded-for` where the HCM trusts it)
    /// and the connection's peer.
    downstream_remote: Remote,
    loggers: Vec<Arc<AccessLogger>>,
    /// The request's trace span, finished with the record.
    pub span: Option<Box<crate::proxy::trace::Span>>,
    /// The request's Istio telemetry, counted with the record.
    pub istio: Option<Box<crate::proxy::istio::Telemetry>>,
    /// `grpc-status` from the response's trailers.
    trailer_grpc_status: Option<String>,
    /// Traced because `x-envoy-force-trace` asked (the traceable log filter).
    pub forced_trace: bool,
    /// For Istio's stats: the response head's size and its `grpc-status`.
    resp_head: (u64, Option<String>),
    /// Written (loggers, span, stats) already.
    written: bool,
}

impl Record {
    /// Capture a request's start.
    pub fn start<B>(
        req: &http::Request<B>,
        local: SocketAddr,
        remote: Remote,
        tls: Option<&Arc<crate::tls::Peer>>,
        loggers: Vec<Arc<AccessLogger>>,
    ) -> Self {
        let h = req.headers();
        // Only loggers print the request line; a record kept for Istio's stats or a span
        // alone copies none of it (three allocations a request).
        let logged = !loggers.is_empty();
        let (method, path, authority) = if logged {
            (
                req.method().to_string(),
                req.uri()
                    .path_and_query()
                    .map_or_else(|| "/".into(), |p| p.as_str().to_string()),
                h.get(http::header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .or_else(|| req.uri().authority().map(|a| a.to_string()))
                    .unwrap_or_default(),
            )
        } else {
            Default::default()
        };
        Record {
            start: SystemTime::now(),
            started: std::time::Instant::now(),
            method,
            path,
            authority,
            protocol: crate::route::headers::protocol_name(req.version()),
            // Only loggers read the headers (spans and Istio's stats take theirs at the start).
            req_headers: if logged { h.clone() } else { HeaderMap::new() },
            resp_headers: HeaderMap::new(),
            down_tls: tls.filter(|_| logged).cloned(),
            transport_failure: None,
            status: 0,
            flags: String::new(),
            details: "".into(),
            received: Arc::default(),
            info: RouteInfo::default(),
            downstream_local: local,
            downstream_remote: remote,
            loggers,
            span: None,
            istio: None,
            trailer_grpc_status: None,
            forced_trace: false,
            resp_head: (0, None),
            written: false,
        }
    }

    /// The request body's byte count (`%BYTES_RECEIVED%`), for the body to add to as it is
    /// read.
    pub fn received(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.received.clone()
    }

    /// Record the response head: status, flags (`flags` from a local reply, empty when the
    /// upstream answered) and what routing found.
    pub fn response(&mut self, resp: &http::response::Parts, flags: &str, info: RouteInfo) {
        self.status = resp.status.as_u16();
        let local = resp.extensions.get::<crate::proxy::local_reply::ForLog>();
        if !self.loggers.is_empty() {
            self.resp_headers = resp.headers.clone();
            self.transport_failure = local.and_then(|l| l.transport_failure.clone());
        }
        if self.istio.is_some() {
            let grpc = resp
                .headers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok());
            self.resp_head = (
                crate::proxy::istio::labels::head_size(&resp.headers),
                grpc.map(str::to_string),
            );
        }
        self.flags = flags.to_string();
        self.details = match local.and_then(|l| l.details.clone()) {
            Some(d) => d.into(),
            None => details(flags, info.host.is_some(), self.status).into(),
        };
        self.info = info;
    }

    fn write(&mut self, bytes_sent: u64) {
        if std::mem::replace(&mut self.written, true) {
            return;
        }
        let received = self.received.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(span) = self.span.take() {
            // Envoy's upstream_cluster tag: only when a host was picked.
            let cluster = self
                .info
                .cluster
                .as_deref()
                .filter(|_| self.info.host.is_some());
            (*span).finish(crate::proxy::trace::span::End {
                status: self.status,
                flags: &self.flags,
                upstream_cluster: cluster,
                request_size: received,
                response_size: bytes_sent,
            });
        }
        if let Some(t) = self.istio.take() {
            let grpc_status = self
                .trailer_grpc_status
                .as_deref()
                .or(self.resp_head.1.as_deref());
            (*t).finish(crate::proxy::istio::labels::End {
                status: self.status,
                flags: &self.flags,
                cluster: self.info.cluster.as_deref(),
                route: self.info.route.as_deref(),
                endpoint: self.info.workload.as_deref(),
                upstream_tls: self.info.conn.as_ref().and_then(|c| c.tls.as_ref()),
                grpc_status,
                duration_ms: self.started.elapsed().as_millis() as u64,
                bytes: (received, self.resp_head.0 + bytes_sent),
            });
        }
        if self.loggers.is_empty() {
            return;
        }
        let e = Entry {
            start: Some(self.start),
            duration: Some(self.started.elapsed()),
            method: &self.method,
            path: &self.path,
            authority: &self.authority,
            protocol: self.protocol,
            req_headers: Some(&self.req_headers),
            resp_headers: Some(&self.resp_headers),
            status: self.status,
            flags: &self.flags,
            details: &self.details,
            bytes_received: received,
            bytes_sent,
            upstream_host: self.info.host,
            upstream_cluster: self.info.cluster.as_deref(),
            route_name: self.info.route.as_deref(),
            downstream_local: Some(self.downstream_local),
            downstream_remote: Some(self.downstream_remote.effective),
            downstream_direct_remote: Some(self.downstream_remote.direct),
            grpc_status: self.trailer_grpc_status.as_deref(),
            forced_trace: self.forced_trace,
            tcp: false,
            downstream_tls: self.down_tls.as_deref(),
            upstream_tls: self.info.conn.as_ref().and_then(|c| c.tls.as_ref()),
            upstream_local: self.info.conn.as_ref().and_then(|c| c.local),
            transport_failure: self.transport_failure.as_deref(),
            downstream_transport_failure: None,
            termination: None,
        };
        for l in &self.loggers {
            l.log(&e);
        }
    }
}

/// `%RESPONSE_CODE_DETAILS%` for the common cases, in Envoy's words. A reset before the
/// response carries its own (`LocalReply::reset`, `connect_failure`), so the reset flags
/// (UF, UR, UC, UPE) have no row; UO does, for an upstream answer whose retry the breakers
/// dropped.
fn details(flags: &str, upstream: bool, status: u16) -> &'static str {
    match flags.split(',').next().unwrap_or("") {
        "" if upstream => "via_upstream",
        "" if status == 0 => "",
        "" => "direct_response",
        "NR" => "route_not_found",
        "NC" => "cluster_not_found",
        "UH" => "no_healthy_upstream",
        "UO" => "upstream_reset_before_response_started{overflow}",
        "UT" => "response_timeout",
        "FI" | "DI" => "fault_filter_abort",
        "SI" => "stream_idle_timeout",
        "DC" => "downstream_remote_disconnect",
        _ => "",
    }
}

/// A response body that counts what it sends and writes the record when it ends or is dropped
/// (client gone).
pub struct Logged {
    inner: super::body::BoxBody,
    record: Option<Record>,
    sent: u64,
}

impl Logged {
    /// Wrap a response body.
    pub fn wrap(inner: super::body::BoxBody, record: Record) -> super::body::BoxBody {
        use http_body_util::BodyExt;
        Logged {
            inner,
            record: Some(record),
            sent: 0,
        }
        .boxed_unsync()
    }
}

impl hyper::body::Body for Logged {
    type Data = bytes::Bytes;
    type Error = crate::cluster::connector::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                self.sent += d.len() as u64;
            } else if let (Some(t), Some(rec)) = (f.trailers_ref(), self.record.as_mut()) {
                rec.trailer_grpc_status = t
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
            }
        }
        if let std::task::Poll::Ready(None) = &r {
            if let Some(mut rec) = self.record.take() {
                rec.write(self.sent);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A record dropped before it was written: the request was given up (the client went away
/// before its response), which Envoy logs and counts with code 0 and flag DC.
impl Drop for Record {
    fn drop(&mut self) {
        if !self.written {
            if self.status == 0 && self.flags.is_empty() {
                self.flags = "DC".into();
                self.details = "downstream_remote_disconnect".into();
            }
            self.write(0);
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(mut rec) = self.record.take() {
            rec.write(self.sent);
        }
    }
}
