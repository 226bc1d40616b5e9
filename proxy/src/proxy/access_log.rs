//! Envoy access logs for the HTTP connection manager: `envoy.access_loggers.file` (Istio's
//! `accessLogFile: /dev/stdout`) and the stdout/stderr loggers, with Envoy's text format
//! operators (`%RESPONSE_FLAGS%`, `%UPSTREAM_HOST%`, `%REQ(X?Y):N%`, ...) and JSON formats.
//!
//! Lines are built on the request's task and handed to one writer thread per sink, so a slow
//! stdout never blocks a worker; the writer flushes whenever its queue is empty.

use crate::config::decode;
use envoy_types::pb::envoy::config::accesslog::v3 as alpb;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::access_loggers::{
    file::v3 as filepb, stream::v3 as streampb,
};
use http::HeaderMap;
use serde_json::Value;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

/// Envoy's default format (used when a logger gives none).
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// What one finished request looked like, for the formatter.
#[derive(Debug, Clone, Default)]
pub struct Entry<'a> {
    /// When the request started.
    pub start: Option<SystemTime>,
    /// Request start to last response byte.
    pub duration: Option<Duration>,
    /// Request method, path (`:path`), authority and protocol (`HTTP/1.1`).
    pub method: &'a str,
    /// `:path` as received.
    pub path: &'a str,
    /// `:authority` / Host.
    pub authority: &'a str,
    /// `HTTP/1.1`, `HTTP/2`, ...
    pub protocol: &'a str,
    /// Request headers.
    pub req_headers: Option<&'a HeaderMap>,
    /// Response headers.
    pub resp_headers: Option<&'a HeaderMap>,
    /// Status sent downstream (0 when none was).
    pub status: u16,
    /// Envoy's short response flags (`UF,URX`), empty for none.
    pub flags: &'a str,
    /// `%RESPONSE_CODE_DETAILS%`.
    pub details: &'a str,
    /// Request body bytes received.
    pub bytes_received: u64,
    /// Response body bytes sent.
    pub bytes_sent: u64,
    /// The upstream host used.
    pub upstream_host: Option<SocketAddr>,
    /// Its cluster.
    pub upstream_cluster: Option<&'a str>,
    /// The route's name.
    pub route_name: Option<&'a str>,
    /// The local address the connection arrived on (the original destination).
    pub downstream_local: Option<SocketAddr>,
    /// The client.
    pub downstream_remote: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Lit(String),
    StartTime,
    Req(Vec<String>, Option<usize>),
    Resp(Vec<String>, Option<usize>),
    Protocol,
    Method,
    Code,
    Flags,
    Details,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    RouteName,
    DownstreamLocal,
    DownstreamRemote,
    DownstreamRemoteNoPort,
    /// An operator we do not produce (mTLS, filter state, ...): Envoy's "-".
    Dash,
}

/// A compiled text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Format(Vec<Op>);

impl Format {
    /// Parse an Envoy format string. Unknown operators render as `-`.
    pub fn parse(s: &str) -> Self {
        let mut ops = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('%') {
            lit.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            if let Some(r) = rest.strip_prefix('%') {
                lit.push('%');
                rest = r;
                continue;
            }
            let Some(end) = rest.find('%') else {
                lit.push('%');
                break;
            };
            let cmd = &rest[..end];
            rest = &rest[end + 1..];
            if !lit.is_empty() {
                ops.push(Op::Lit(std::mem::take(&mut lit)));
            }
            ops.push(parse_op(cmd));
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            ops.push(Op::Lit(lit));
        }
        Format(ops)
    }

    /// Render one entry.
    pub fn render(&self, e: &Entry<'_>) -> String {
        let mut out = String::with_capacity(256);
        for op in &self.0 {
            match op {
                Op::Lit(s) => out.push_str(s),
                op => out.push_str(&value(op, e).unwrap_or_else(|| "-".into())),
            }
        }
        out
    }
}

fn parse_op(cmd: &str) -> Op {
    // `REQ(A?B):N`: header A, else B, truncated to N bytes.
    let headers = |inner: &str| -> (Vec<String>, Option<usize>) {
        let (names, len) = match inner.rsplit_once("):") {
            Some((n, l)) => (n, l.parse().ok()),
            None => (inner.strip_suffix(')').unwrap_or(inner), None),
        };
        (
            names.split('?').map(|n| n.to_ascii_lowercase()).collect(),
            len,
        )
    };
    if let Some(inner) = cmd.strip_prefix("REQ(") {
        let (h, l) = headers(inner);
        return Op::Req(h, l);
    }
    if let Some(inner) = cmd.strip_prefix("RESP(") {
        let (h, l) = headers(inner);
        return Op::Resp(h, l);
    }
    match cmd.split('(').next().unwrap_or(cmd) {
        "START_TIME" => Op::StartTime,
        "PROTOCOL" => Op::Protocol,
        "METHOD" => Op::Method,
        "RESPONSE_CODE" => Op::Code,
        "RESPONSE_FLAGS" => Op::Flags,
        "RESPONSE_CODE_DETAILS" => Op::Details,
        "BYTES_RECEIVED" => Op::BytesReceived,
        "BYTES_SENT" => Op::BytesSent,
        "DURATION" => Op::Duration,
        "UPSTREAM_HOST" => Op::UpstreamHost,
        "UPSTREAM_CLUSTER" => Op::UpstreamCluster,
        "ROUTE_NAME" => Op::RouteName,
        "DOWNSTREAM_LOCAL_ADDRESS" => Op::DownstreamLocal,
        "DOWNSTREAM_REMOTE_ADDRESS" => Op::DownstreamRemote,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Op::DownstreamRemoteNoPort,
        _ => Op::Dash,
    }
}

fn header(h: Option<&HeaderMap>, names: &[String], e: &Entry<'_>, req: bool) -> Option<String> {
    for n in names {
        let v = match n.as_str() {
            ":method" if req => Some(e.method.to_string()),
            ":path" if req => Some(e.path.to_string()),
            ":authority" if req => Some(e.authority.to_string()),
            ":status" if !req && e.status > 0 => Some(e.status.to_string()),
            n => h
                .and_then(|h| h.get(n))
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        };
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            return Some(v);
        }
    }
    None
}

fn value(op: &Op, e: &Entry<'_>) -> Option<String> {
    let truncate = |mut s: String, n: &Option<usize>| {
        if let Some(n) = n {
            let mut cut = (*n).min(s.len());
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
        }
        s
    };
    Some(match op {
        Op::Lit(s) => s.clone(),
        Op::StartTime => crate::admin::rfc3339(e.start?),
        Op::Req(h, n) => truncate(header(e.req_headers, h, e, true)?, n),
        Op::Resp(h, n) => truncate(header(e.resp_headers, h, e, false)?, n),
        Op::Protocol => Some(e.protocol).filter(|p| !p.is_empty())?.to_string(),
        Op::Method => e.method.to_string(),
        Op::Code => e.status.to_string(),
        Op::Flags => Some(e.flags).filter(|f| !f.is_empty())?.to_string(),
        Op::Details => Some(e.details).filter(|d| !d.is_empty())?.to_string(),
        Op::BytesReceived => e.bytes_received.to_string(),
        Op::BytesSent => e.bytes_sent.to_string(),
        Op::Duration => e.duration?.as_millis().to_string(),
        Op::UpstreamHost => e.upstream_host?.to_string(),
        Op::UpstreamCluster => e.upstream_cluster?.to_string(),
        Op::RouteName => e.route_name.filter(|r| !r.is_empty())?.to_string(),
        Op::DownstreamLocal => e.downstream_local?.to_string(),
        Op::DownstreamRemote => e.downstream_remote?.to_string(),
        Op::DownstreamRemoteNoPort => e.downstream_remote?.ip().to_string(),
        Op::Dash => return None,
    })
}

/// How a logger renders a line.
#[derive(Debug, Clone, PartialEq)]
enum Layout {
    Text(Format),
    /// `json_format`: key → format (strings), nested objects kept.
    Json(Vec<(String, JsonField)>),
}

#[derive(Debug, Clone, PartialEq)]
enum JsonField {
    Fmt(Format),
    Const(Value),
    Nested(Vec<(String, JsonField)>),
}

fn json_layout(s: &envoy_types::pb::google::protobuf::Struct) -> Vec<(String, JsonField)> {
    let v = decode::to_json(s);
    fn fields(v: &Value) -> Vec<(String, JsonField)> {
        let mut out: Vec<(String, JsonField)> = v
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        let f = match v {
                            Value::String(s) => JsonField::Fmt(Format::parse(s)),
                            Value::Object(_) => JsonField::Nested(fields(v)),
                            other => JsonField::Const(other.clone()),
                        };
                        (k.clone(), f)
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
    fields(&v)
}

fn render_json(fields: &[(String, JsonField)], e: &Entry<'_>) -> Value {
    let mut m = serde_json::Map::new();
    for (k, f) in fields {
        let v = match f {
            JsonField::Const(v) => v.clone(),
            JsonField::Nested(n) => render_json(n, e),
            // A lone operator gives a typed value (numbers stay numbers), as in Envoy.
            JsonField::Fmt(Format(ops)) if ops.len() == 1 => match value(&ops[0], e) {
                None => Value::Null,
                Some(s) => match ops[0] {
                    Op::Code | Op::BytesReceived | Op::BytesSent | Op::Duration => s
                        .parse::<u64>()
                        .map(Value::from)
                        .unwrap_or(Value::String(s)),
                    _ => Value::String(s),
                },
            },
            JsonField::Fmt(fmt) => Value::String(fmt.render(e)),
        };
        m.insert(k.clone(), v);
    }
    Value::Object(m)
}

/// One configured access logger.
#[derive(Debug)]
pub struct AccessLogger {
    layout: Layout,
    sink: Arc<Sink>,
}

impl AccessLogger {
    /// Compile an HCM `access_log` entry; `Ok(None)` for logger types we do not implement
    /// (gRPC, OpenTelemetry, ...), which are skipped with a debug log.
    pub fn from_proto(a: &alpb::AccessLog) -> Result<Option<Self>, String> {
        let Some(alpb::access_log::ConfigType::TypedConfig(any)) = &a.config_type else {
            return Ok(None);
        };
        if a.filter.is_some() {
            tracing::debug!(logger = %a.name, "access log filters are not supported; logging every request");
        }
        let (path, fmt) = if any.type_url == <filepb::FileAccessLog as prost::Name>::type_url() {
            let f: filepb::FileAccessLog = decode::unpack(any)?;
            use filepb::file_access_log::AccessLogFormat as F;
            let layout = match &f.access_log_format {
                None => None,
                Some(F::Format(s)) => Some(Layout::Text(Format::parse(s))),
                Some(F::JsonFormat(s)) => Some(Layout::Json(json_layout(s))),
                Some(F::LogFormat(s)) => Some(layout_of(s)?),
                Some(F::TypedJsonFormat(s)) => Some(Layout::Json(json_layout(s))),
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
        }))
    }

    /// Format and queue one line.
    pub fn log(&self, e: &Entry<'_>) {
        let line = match &self.layout {
            Layout::Text(f) => f.render(e),
            Layout::Json(fields) => {
                let mut s = render_json(fields, e).to_string();
                s.push('\n');
                s
            }
        };
        self.sink.send(line);
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

fn layout_of(s: &core::SubstitutionFormatString) -> Result<Layout, String> {
    use core::substitution_format_string::Format as F;
    Ok(match &s.format {
        #[allow(deprecated)]
        Some(F::TextFormat(t)) => Layout::Text(Format::parse(t)),
        Some(F::JsonFormat(j)) => Layout::Json(json_layout(j)),
        Some(F::TextFormatSource(src)) => {
            use core::data_source::Specifier as D;
            let text = match &src.specifier {
                Some(D::InlineString(t)) => t.clone(),
                Some(D::InlineBytes(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(D::Filename(f)) => std::fs::read_to_string(f)
                    .map_err(|e| format!("access log format file {f}: {e}"))?,
                _ => return Err("text_format_source: unsupported data source".into()),
            };
            Layout::Text(Format::parse(&text))
        }
        None => Layout::Text(Format::parse(DEFAULT_FORMAT)),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(h: &HeaderMap) -> Entry<'_> {
        Entry {
            start: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_105_362_123)),
            duration: Some(Duration::from_millis(7)),
            method: "GET",
            path: "/reviews/0",
            authority: "reviews:9080",
            protocol: "HTTP/1.1",
            req_headers: Some(h),
            resp_headers: None,
            status: 503,
            flags: "UF,URX",
            details: "upstream_reset_before_response_started{connection_failure}",
            bytes_received: 0,
            bytes_sent: 91,
            upstream_host: Some("10.1.0.7:9080".parse().unwrap()),
            upstream_cluster: Some("outbound|9080|v1|reviews.default.svc.cluster.local"),
            route_name: Some("default"),
            downstream_local: Some("10.96.0.10:9080".parse().unwrap()),
            downstream_remote: Some("10.1.0.2:40000".parse().unwrap()),
        }
    }

    #[test]
    fn envoy_default_format() {
        let mut h = HeaderMap::new();
        h.insert("user-agent", "curl/8".parse().unwrap());
        h.insert("x-request-id", "abc".parse().unwrap());
        let line = Format::parse(DEFAULT_FORMAT).render(&entry(&h));
        assert_eq!(
            line,
            "[2025-11-25T21:16:02.123Z] \"GET /reviews/0 HTTP/1.1\" 503 UF,URX 0 91 7 - \"-\" \"curl/8\" \"abc\" \"reviews:9080\" \"10.1.0.7:9080\"\n"
        );
    }

    #[test]
    fn operators_alternatives_truncation_and_escapes() {
        let mut h = HeaderMap::new();
        h.insert("x-b", "bravo".parse().unwrap());
        let f = Format::parse("%REQ(X-A?X-B):3% 100%% %UPSTREAM_CLUSTER% %ROUTE_NAME% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %UNKNOWN_OP% %RESPONSE_CODE_DETAILS% tail %");
        assert_eq!(
            f.render(&entry(&h)),
            "bra 100% outbound|9080|v1|reviews.default.svc.cluster.local default 10.1.0.2 - upstream_reset_before_response_started{connection_failure} tail %"
        );
    }

    #[test]
    fn json_format_keeps_numbers_typed() {
        let h = HeaderMap::new();
        let s: envoy_types::pb::google::protobuf::Struct = decode::from_json(
            &serde_json::json!({"code": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%", "ua": "%REQ(USER-AGENT)%",
                "path": "p=%REQ(:PATH)%", "n": {"host": "%UPSTREAM_HOST%"}}),
            true,
        )
        .unwrap();
        let v = render_json(&json_layout(&s), &entry(&h));
        assert_eq!(
            v,
            serde_json::json!({"code": 503, "flags": "UF,URX", "ua": null, "path": "p=/reviews/0",
                "n": {"host": "10.1.0.7:9080"}})
        );
    }

    #[test]
    fn civil_dates() {
        let t = |s: u64| crate::admin::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(t(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(t(951_782_400), "2000-02-29T00:00:00.000Z");
        assert_eq!(t(4_107_542_399), "2100-02-28T23:59:59.000Z");
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
    status: u16,
    flags: String,
    details: &'static str,
    received: Arc<std::sync::atomic::AtomicU64>,
    info: RouteInfo,
    downstream_local: SocketAddr,
    downstream_remote: SocketAddr,
    loggers: Vec<Arc<AccessLogger>>,
}

impl Record {
    /// Capture a request's start.
    pub fn start<B>(
        req: &http::Request<B>,
        local: SocketAddr,
        remote: SocketAddr,
        loggers: Vec<Arc<AccessLogger>>,
    ) -> Self {
        let h = req.headers();
        Record {
            start: SystemTime::now(),
            started: std::time::Instant::now(),
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
            authority: h
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .or_else(|| req.uri().authority().map(|a| a.to_string()))
                .unwrap_or_default(),
            protocol: match req.version() {
                http::Version::HTTP_10 => "HTTP/1.0",
                http::Version::HTTP_2 => "HTTP/2",
                _ => "HTTP/1.1",
            },
            req_headers: h.clone(),
            resp_headers: HeaderMap::new(),
            status: 0,
            flags: String::new(),
            details: "",
            received: Arc::default(),
            info: RouteInfo::default(),
            downstream_local: local,
            downstream_remote: remote,
            loggers,
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
        self.resp_headers = resp.headers.clone();
        self.flags = flags.to_string();
        self.details = details(flags, info.host.is_some(), self.status);
        self.info = info;
    }

    fn write(&self, bytes_sent: u64) {
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
            details: self.details,
            bytes_received: self.received.load(std::sync::atomic::Ordering::Relaxed),
            bytes_sent,
            upstream_host: self.info.host,
            upstream_cluster: self.info.cluster.as_deref(),
            route_name: self.info.route.as_deref(),
            downstream_local: Some(self.downstream_local),
            downstream_remote: Some(self.downstream_remote),
        };
        for l in &self.loggers {
            l.log(&e);
        }
    }
}

/// `%RESPONSE_CODE_DETAILS%` for the common cases, in Envoy's words.
fn details(flags: &str, upstream: bool, status: u16) -> &'static str {
    match flags.split(',').next().unwrap_or("") {
        "" if upstream => "via_upstream",
        "" if status == 0 => "",
        "" => "direct_response",
        "NR" => "route_not_found",
        "NC" => "cluster_not_found",
        "UH" => "no_healthy_upstream",
        "UF" => "upstream_reset_before_response_started{connection_failure}",
        "UO" => "upstream_reset_before_response_started{overflow}",
        "UR" => "upstream_reset_before_response_started{remote_reset}",
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
            }
        }
        if let std::task::Poll::Ready(None) = &r {
            if let Some(rec) = self.record.take() {
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

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(rec) = self.record.take() {
            rec.write(self.sent);
        }
    }
}
