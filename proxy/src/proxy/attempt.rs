//! One upstream attempt of the router: the request built for it, sent through the cluster's
//! pools under the attempt's timeout, and its failures named as Envoy names them.

use super::body::BoxBody;
use super::hop_by_hop::strip_hop_by_hop;
use super::local_reply::{Flag, LocalReply};
use super::router::Downstream;
use crate::cluster::conn_info::ConnInfo;
use crate::cluster::connector::{BoxError, ConnectError};
use crate::cluster::h1pool::{PooledBody, SendError};
use crate::cluster::host::Host;
use crate::cluster::Cluster;
use crate::tls::{Alpn, Dial};
use http::{HeaderMap, HeaderValue, Request, Response};
use std::sync::Arc;
use std::task::Poll;

/// Why one attempt failed.
pub(super) enum AttemptError {
    Connect(LocalReply),
    Reset(Reset),
    PerTryTimeout,
    Idle,
}

/// Why an upstream stream ended before its response, as Envoy names it
/// (`StreamResetReason`), with the flag and status its router answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reset {
    /// The connection closed (UC).
    ConnectionTermination,
    /// The upstream broke HTTP: a malformed response (UPE, 502).
    ProtocolError,
    /// The upstream reset the stream (UR).
    ByPeer,
    /// The upstream refused the stream before processing it (UR).
    RefusedStream,
}

impl Reset {
    /// The reply Envoy's router gives for it.
    pub(super) fn reply(self) -> LocalReply {
        match self {
            Reset::ConnectionTermination => LocalReply::reset(
                "connection termination",
                Flag::UpstreamConnectionTermination,
            ),
            Reset::ProtocolError => {
                LocalReply::reset_status(502, "protocol error", Flag::UpstreamProtocolError)
            }
            Reset::ByPeer => LocalReply::reset("remote reset", Flag::UpstreamRemoteReset),
            Reset::RefusedStream => {
                LocalReply::reset("remote refused stream reset", Flag::UpstreamRemoteReset)
            }
        }
    }

    /// Name the failure from its error chain: hyper's kinds, the inline codec's I/O errors,
    /// and h2's messages (hyper does not expose h2's reason codes).
    pub(super) fn of(e: &(dyn std::error::Error + 'static)) -> Reset {
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = src {
            if let Some(h) = s.downcast_ref::<hyper::Error>() {
                if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() {
                    return Reset::ProtocolError;
                }
                if h.is_incomplete_message() {
                    return Reset::ConnectionTermination;
                }
            }
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind as K;
                match io.kind() {
                    K::InvalidData => return Reset::ProtocolError,
                    K::UnexpectedEof
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::BrokenPipe => return Reset::ConnectionTermination,
                    _ => {}
                }
            }
            let text = s.to_string();
            if text.contains("REFUSED_STREAM") || text.contains("refused stream") {
                return Reset::RefusedStream;
            }
            if text.contains("stream error") {
                return Reset::ByPeer;
            }
            if text.contains("connection error") || text.contains("go away") {
                return Reset::ConnectionTermination;
            }
            src = s.source();
        }
        Reset::ByPeer
    }
}

#[inline(always)]
pub(super) fn build_request(
    cluster: &Cluster,
    parts: &http::request::Parts,
    mut headers: HeaderMap,
    path: &str,
    host: &Host,
    body: BoxBody,
    upgrade: Option<&str>,
) -> Request<BoxBody> {
    let h2 = cluster.is_h2(parts.version);
    strip_hop_by_hop(&mut headers);
    if let (Some(t), false) = (upgrade, h2) {
        if let Ok(v) = HeaderValue::from_str(t) {
            headers.insert(
                http::header::CONNECTION,
                HeaderValue::from_static("upgrade"),
            );
            headers.insert(http::header::UPGRADE, v);
        }
    }
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    // Fast path for HTTP/1.1 (the common case): a valid Host stays as it is and the request
    // goes upstream in origin form with the request's own (reference-counted) path, with no
    // formatting and re-parsing per request. It gives the same request as the general path.
    if !h2 {
        let pq = parts
            .uri
            .path_and_query()
            .filter(|pq| pq.as_str().starts_with('/'));
        let host_ok = headers
            .get(http::header::HOST)
            .is_some_and(|v| v.to_str().is_ok());
        if let (Some(pq), true) = (pq, host_ok) {
            *req.uri_mut() = http::Uri::from(pq.clone());
            *req.version_mut() = http::Version::HTTP_11;
            *req.headers_mut() = headers;
            return req;
        }
    }
    let authority = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| host.addr.to_string());
    let uri = if h2 {
        headers.remove(http::header::HOST);
        format!("http://{authority}{path}")
    } else {
        // HTTP/1.1 connections are made by the pool: the request line takes the origin form.
        if let Ok(v) = HeaderValue::from_str(&authority) {
            headers.insert(http::header::HOST, v);
        }
        if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        }
    };
    *req.uri_mut() = uri.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
    *req.version_mut() = if h2 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    *req.headers_mut() = headers;
    req
}

/// Send `req` to `host` through the cluster's pool for its protocol, without a timeout.
///
/// The request stays in the caller's `Option` (borrowed, not moved through each layer) until
/// a client that needs it whole takes it; see [`crate::cluster::h1pool::H1Pool::send`].
#[inline(always)]
///
/// `conn` is set to the connection the request goes out on once it has one.
pub(super) async fn dispatch(
    cluster: &Cluster,
    host: &Host,
    tls: Option<&Dial>,
    req: &mut Option<Request<BoxBody>>,
    conn: &mut Option<Arc<ConnInfo>>,
) -> Result<Response<PooledBody>, AttemptError> {
    let h2 = req.as_ref().is_some_and(|r| cluster.is_h2(r.version()));
    if h2 {
        let req = req.take().expect("checked above");
        // Boxed, like the pool's hyper path, to keep the HTTP/1.1 future small.
        Box::pin(async {
            let (mut sender, stream) = cluster
                .h2
                .sender(host.addr, tls)
                .await
                .map_err(connect_error)?;
            *conn = Some(stream.info().clone());
            // Wait for a free stream slot (SETTINGS_MAX_CONCURRENT_STREAMS).
            sender
                .ready()
                .await
                .map_err(|e| AttemptError::Reset(Reset::of(&e)))?;
            sender
                .send_request(req)
                .await
                .map(|r| r.map(|b| PooledBody::h2(b, stream)))
                .map_err(|e| AttemptError::Reset(Reset::of(&e)))
        })
        .await
    } else {
        cluster
            .h1
            .send(host.addr, tls, req, conn)
            .await
            .map_err(|e| match e {
                SendError::Connect(c) => AttemptError::Connect(connect_reply(&c)),
                SendError::Http(e) => AttemptError::Reset(Reset::of(&e)),
                SendError::Exchange(e) => AttemptError::Reset(Reset::of(&e.error)),
            })
    }
}

/// One attempt: [`dispatch`] under the attempt's deadline `until`, on the connection's timer;
/// `conn` names the connection it went out on, if it got one.
pub(super) async fn send(
    cluster: &Cluster,
    host: &Host,
    req: &mut Option<Request<BoxBody>>,
    conn: &mut Option<Arc<ConnInfo>>,
    down: Downstream<'_>,
    until: Option<tokio::time::Instant>,
) -> Result<Response<PooledBody>, AttemptError> {
    let h2 = req.as_ref().is_some_and(|r| cluster.is_h2(r.version()));
    let tls = tls_dial(cluster, host, down, h2, req.as_ref())?;
    let mut fut = std::pin::pin!(dispatch(cluster, host, tls.as_deref(), req, conn));
    let Some(until) = until else { return fut.await };
    let mut timer = down.timer.arm(until);
    // The attempt is polled in place (not moved into a timeout wrapper), the timer only
    // while it waits.
    std::future::poll_fn(|cx| match std::future::Future::poll(fut.as_mut(), cx) {
        Poll::Ready(r) => Poll::Ready(r),
        Poll::Pending if timer.poll_expired(cx) => Poll::Ready(Err(AttemptError::PerTryTimeout)),
        Poll::Pending => Poll::Pending,
    })
    .await
}

/// What a new connection to `host` needs for TLS, when its cluster's transport socket (or
/// the endpoint's match) asks for it. A context whose secrets have not arrived fails the
/// attempt as a connection failure (UF), as Envoy's connection would.
#[inline]
pub(super) fn tls_dial(
    cluster: &Cluster,
    host: &Host,
    down: Downstream<'_>,
    h2: bool,
    req: Option<&Request<BoxBody>>,
) -> Result<Option<std::sync::Arc<Dial>>, AttemptError> {
    // Nothing to work out for plain TCP (most clusters), not even the arguments.
    if cluster.transport.is_plain() {
        return Ok(None);
    }
    let alpn = match (down.istio_alpn, h2) {
        (false, _) => Alpn::Configured,
        (true, false) => Alpn::IstioHttp11,
        (true, true) => Alpn::IstioH2,
    };
    cluster
        .transport
        .dial(
            Some(host),
            down.secrets,
            alpn,
            req.map(|r| (r.headers(), r.uri())),
            down.proxied.then_some((down.peer, down.original_dst)),
        )
        .map_err(|e| {
            tracing::debug!(cluster = %cluster.name, host = %host.addr, "upstream TLS not ready: {e}");
            AttemptError::Connect(connect_reply(&ConnectError::Failed(e)))
        })
}

/// Envoy's reply to a connection that could not be made: "remote connection failure" with
/// the transport's reason, "connection timeout", or "overflow" (UO).
fn connect_reply(c: &ConnectError) -> LocalReply {
    match c {
        ConnectError::Overflow => LocalReply::reset("overflow", Flag::UpstreamOverflow),
        ConnectError::Timeout => {
            LocalReply::reset("connection timeout", Flag::UpstreamConnectionFailure)
        }
        ConnectError::Failed(why) => LocalReply::connect_failure(why),
    }
}

fn connect_error(e: BoxError) -> AttemptError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(s) = src {
        if let Some(c) = s.downcast_ref::<ConnectError>() {
            return AttemptError::Connect(connect_reply(c));
        }
        src = s.source();
    }
    AttemptError::Connect(LocalReply::connect_failure(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::Reset;
    use std::io::{Error, ErrorKind};

    #[test]
    fn failures_are_named_as_envoy_names_them() {
        let io = |k: ErrorKind| Reset::of(&Error::new(k, "x"));
        assert_eq!(io(ErrorKind::UnexpectedEof), Reset::ConnectionTermination);
        assert_eq!(io(ErrorKind::ConnectionReset), Reset::ConnectionTermination);
        assert_eq!(io(ErrorKind::InvalidData), Reset::ProtocolError);
        let text = |t: &str| Reset::of(&Error::other(t.to_string()));
        assert_eq!(
            text("stream error received: refused stream before processing any application logic"),
            Reset::RefusedStream
        );
        assert_eq!(
            text("stream error received: unexpected internal error"),
            Reset::ByPeer
        );
        assert_eq!(
            text("connection error: broken"),
            Reset::ConnectionTermination
        );
        assert_eq!(text("something else"), Reset::ByPeer);
        assert_eq!(Reset::ProtocolError.reply().status, 502);
        assert_eq!(Reset::ConnectionTermination.reply().status, 503);
    }
}
