//! Envoy's access-log formats: the text format operators (`%RESPONSE_FLAGS%`,
//! `%UPSTREAM_HOST%`, `%REQ(X?Y):N%`, ...), JSON formats, and the layouts a logger config
//! names.

use crate::config::decode;
use envoy_types::pb::envoy::config::core::v3 as core;
use http::HeaderMap;
use serde_json::Value;
use std::net::SocketAddr;
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
    /// The client, as the HCM settled it (possibly from `x-forwarded-for`).
    pub downstream_remote: Option<SocketAddr>,
    /// The connection's peer.
    pub downstream_direct_remote: Option<SocketAddr>,
    /// The response trailers' `grpc-status`.
    pub grpc_status: Option<&'a str>,
    /// Traced because `x-envoy-force-trace` asked.
    pub forced_trace: bool,
    /// A TCP connection's entry (log type `TcpConnectionEnd`), not a request's.
    pub tcp: bool,
    /// The downstream connection's TLS, when it has it.
    pub downstream_tls: Option<&'a crate::tls::Peer>,
    /// The names on the upstream connection's TLS, when it had it.
    pub upstream_tls: Option<&'a crate::cluster::conn_info::TlsNames>,
    /// The local address of the upstream connection.
    pub upstream_local: Option<SocketAddr>,
    /// Why the upstream connection could not be made.
    pub transport_failure: Option<&'a str>,
    /// Why the downstream connection's transport failed (its TLS handshake).
    pub downstream_transport_failure: Option<&'a str>,
    /// Why mosn closed the downstream connection (a network RBAC denial, a handshake that
    /// timed out).
    pub termination: Option<&'a str>,
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
    Address(Addr, Part),
    UpstreamCluster,
    RouteName,
    RequestedServerName,
    DownstreamPeerUriSan,
    DownstreamLocalUriSan,
    DownstreamPeerSubject,
    DownstreamPeerFingerprint256,
    UpstreamPeerUriSan,
    UpstreamLocalUriSan,
    UpstreamTransportFailureReason,
    DownstreamTransportFailureReason,
    ConnectionTerminationDetails,
    /// An operator we do not produce (mTLS, filter state, ...): Envoy's "-".
    Dash,
}

/// Which address an address operator prints.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Addr {
    /// The upstream host (`UPSTREAM_HOST`, `UPSTREAM_REMOTE_ADDRESS`).
    UpstreamRemote,
    UpstreamLocal,
    DownstreamLocal,
    DownstreamRemote,
    DownstreamDirectRemote,
}

/// Which part of the address: all of it (`ip:port`), `_WITHOUT_PORT`, or `_PORT`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Part {
    Full,
    Ip,
    Port,
}

/// The address operator `cmd` names, if it is one: Envoy's `<WHICH>_ADDRESS`,
/// `<WHICH>_ADDRESS_WITHOUT_PORT` and `<WHICH>_PORT`, and `UPSTREAM_HOST`.
fn address_op(cmd: &str) -> Option<Op> {
    if cmd == "UPSTREAM_HOST" {
        return Some(Op::Address(Addr::UpstreamRemote, Part::Full));
    }
    let (which, part) = if let Some(w) = cmd.strip_suffix("_ADDRESS_WITHOUT_PORT") {
        (w, Part::Ip)
    } else if let Some(w) = cmd.strip_suffix("_ADDRESS") {
        (w, Part::Full)
    } else {
        (cmd.strip_suffix("_PORT")?, Part::Port)
    };
    let which = match which {
        "UPSTREAM_REMOTE" => Addr::UpstreamRemote,
        "UPSTREAM_LOCAL" => Addr::UpstreamLocal,
        "DOWNSTREAM_LOCAL" => Addr::DownstreamLocal,
        "DOWNSTREAM_REMOTE" => Addr::DownstreamRemote,
        "DOWNSTREAM_DIRECT_REMOTE" => Addr::DownstreamDirectRemote,
        _ => return None,
    };
    Some(Op::Address(which, part))
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
        self.render_or(e, "-")
    }

    /// Render one entry with `missing` for values that are not there (a log writes `-`, a
    /// header formatter nothing).
    pub fn render_or(&self, e: &Entry<'_>, missing: &str) -> String {
        let mut out = String::with_capacity(64);
        for op in &self.0 {
            match op {
                Op::Lit(s) => out.push_str(s),
                op => out.push_str(value(op, e).as_deref().unwrap_or(missing)),
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
        "UPSTREAM_CLUSTER" => Op::UpstreamCluster,
        "ROUTE_NAME" => Op::RouteName,
        "REQUESTED_SERVER_NAME" => Op::RequestedServerName,
        "DOWNSTREAM_PEER_URI_SAN" => Op::DownstreamPeerUriSan,
        "DOWNSTREAM_LOCAL_URI_SAN" => Op::DownstreamLocalUriSan,
        "DOWNSTREAM_PEER_SUBJECT" => Op::DownstreamPeerSubject,
        "DOWNSTREAM_PEER_FINGERPRINT_256" => Op::DownstreamPeerFingerprint256,
        "UPSTREAM_PEER_URI_SAN" => Op::UpstreamPeerUriSan,
        "UPSTREAM_LOCAL_URI_SAN" => Op::UpstreamLocalUriSan,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => Op::UpstreamTransportFailureReason,
        "DOWNSTREAM_TRANSPORT_FAILURE_REASON" => Op::DownstreamTransportFailureReason,
        "CONNECTION_TERMINATION_DETAILS" => Op::ConnectionTerminationDetails,
        c => address_op(c).unwrap_or(Op::Dash),
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

fn nonempty(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty())
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
        Op::Address(which, part) => {
            let a = match which {
                Addr::UpstreamRemote => e.upstream_host,
                Addr::UpstreamLocal => e.upstream_local,
                Addr::DownstreamLocal => e.downstream_local,
                Addr::DownstreamRemote => e.downstream_remote,
                Addr::DownstreamDirectRemote => e.downstream_direct_remote,
            }?;
            match part {
                Part::Full => a.to_string(),
                Part::Ip => a.ip().to_string(),
                Part::Port => a.port().to_string(),
            }
        }
        Op::UpstreamCluster => e.upstream_cluster?.to_string(),
        Op::RouteName => e.route_name.filter(|r| !r.is_empty())?.to_string(),
        // Envoy's "-" for a connection without TLS or a certificate without the field.
        Op::RequestedServerName => nonempty(e.downstream_tls?.sni.clone()?)?,
        Op::DownstreamPeerUriSan => nonempty(e.downstream_tls?.sans.uri.join(","))?,
        Op::DownstreamLocalUriSan => nonempty(e.downstream_tls?.local_uri.clone()?)?,
        Op::DownstreamPeerSubject => nonempty(e.downstream_tls?.subject.clone()?)?,
        Op::DownstreamPeerFingerprint256 => nonempty(e.downstream_tls?.hash.clone()?)?,
        Op::UpstreamPeerUriSan => nonempty(e.upstream_tls?.peer.clone())?,
        Op::UpstreamLocalUriSan => nonempty(e.upstream_tls?.local.clone())?,
        // Blanks as `_`, as Envoy writes both reasons.
        Op::UpstreamTransportFailureReason => nonempty(e.transport_failure?.replace(' ', "_"))?,
        Op::DownstreamTransportFailureReason => {
            nonempty(e.downstream_transport_failure?.replace(' ', "_"))?
        }
        Op::ConnectionTerminationDetails => nonempty(e.termination?.to_string())?,
        Op::Dash => return None,
    })
}

impl Layout {
    /// A `json_format` layout.
    pub(super) fn json(s: &envoy_types::pb::google::protobuf::Struct) -> Self {
        Layout::Json(json_layout(s))
    }

    /// One log line for `e`, newline included.
    pub(super) fn render(&self, e: &Entry<'_>) -> String {
        match self {
            Layout::Text(f) => f.render(e),
            Layout::Json(fields) => {
                let mut s = render_json(fields, e).to_string();
                s.push('\n');
                s
            }
        }
    }
}

/// How a logger renders a line.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Layout {
    Text(Format),
    /// `json_format`: key → format (strings), nested objects kept.
    Json(Vec<(String, JsonField)>),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum JsonField {
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
                    Op::Code
                    | Op::BytesReceived
                    | Op::BytesSent
                    | Op::Duration
                    | Op::Address(_, Part::Port) => s
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

pub(super) fn layout_of(s: &core::SubstitutionFormatString) -> Result<Layout, String> {
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

#[cfg(test)]
mod tests;
