//! The headers a request gets on its way upstream, as Envoy's connection manager and router
//! set them: `x-forwarded-proto`, `x-forwarded-for`, `x-request-id`, the route's path and
//! host rewrites, and the header policies of every level.

use super::hcm::HcmConfig;
use super::ConnCtx;
use crate::route::action::{ForwardAction, WeightedTarget};
use crate::route::headers::HeaderPolicy;
use crate::route::Route;
use http::{HeaderMap, HeaderName, HeaderValue};

/// The headers Envoy's connection manager and router set on a request before it goes
/// upstream: x-forwarded-proto, x-request-id, path and host rewrites, and the header
/// policies of every level (most specific first).
pub(super) fn prepare_upstream_headers(
    parts: &mut http::request::Parts,
    hcm: &HcmConfig,
    tls: bool,
    (a, wt, route): (&ForwardAction, Option<&WeightedTarget>, &Route),
    path: &str,
    levels: &[&HeaderPolicy],
    hctx: &crate::route::headers::Ctx<'_>,
) {
    // Pre-parsed names: `&str` names are parsed on every use.
    const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    const ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
    let h = &mut parts.headers;
    // Room for what this and the router add (x-forwarded-proto, x-request-id,
    // x-envoy-expected-rq-timeout-ms) in one step, not one map growth per header.
    h.reserve(3);
    // Envoy's x-forwarded-proto follows the downstream connection, and at the edge
    // (`use_remote_address`) replaces the client's own. One hashed lookup (entry), not
    // contains_key then insert.
    const HTTPS: HeaderValue = HeaderValue::from_static("https");
    const HTTP: HeaderValue = HeaderValue::from_static("http");
    let scheme = if tls { HTTPS } else { HTTP };
    if hcm.use_remote_address {
        h.insert(XFP, scheme);
    } else {
        h.entry(XFP).or_insert(scheme);
    }
    ensure_request_id(hcm, h);
    if let Some(new) = a.rewrite_path(path, route.matched_len(path)) {
        if !hcm.suppress_envoy_headers {
            if let Ok(v) = HeaderValue::from_str(path) {
                h.insert(ORIGINAL_PATH, v);
            }
        }
        if let Ok(uri) = http::Uri::builder().path_and_query(new.as_str()).build() {
            let mut p = http::uri::Parts::from(uri);
            p.scheme = parts.uri.scheme().cloned();
            p.authority = parts.uri.authority().cloned();
            if let Ok(u) = http::Uri::from_parts(p) {
                parts.uri = u;
            }
        }
    }
    // Envoy's order (`WeightedClusterEntry::finalizeRequestHeaders`): the weighted cluster's
    // headers and host, then the route's, virtual host's and configuration's headers, then
    // the route's host, so a route's `host_rewrite_literal` has the last word.
    let (first, rest) = match wt {
        Some(_) => levels
            .split_first()
            .map_or((None, levels), |(f, r)| (Some(*f), r)),
        None => (None, levels),
    };
    if let Some(p) = first {
        p.request.apply(&mut parts.headers, hctx);
    }
    if let Some(host) = wt.and_then(|w| w.host_rewrite.as_ref()) {
        rewrite_host(parts, host);
    }
    for p in rest {
        p.request.apply(&mut parts.headers, hctx);
    }
    if let Some(host) = a.host_rewrite.as_ref() {
        rewrite_host(parts, host);
    }
}

/// Set the Host header, and the authority of an absolute URI, to `host`.
fn rewrite_host(parts: &mut http::request::Parts, host: &str) {
    let Ok(v) = HeaderValue::from_str(host) else {
        return;
    };
    parts.headers.insert(http::header::HOST, v);
    if let Ok(auth) = host.parse::<http::uri::Authority>() {
        let mut p = parts.uri.clone().into_parts();
        if p.authority.is_some() {
            p.authority = Some(auth);
            if let Ok(u) = http::Uri::from_parts(p) {
                parts.uri = u;
            }
        }
    }
}

/// Give a request without an `x-request-id` one, unless the HCM's `generate_request_id` is
/// off. It runs before access logging starts (so the log and the upstream see the same id)
/// and again before forwarding, where it finds the id already there.
pub(super) fn ensure_request_id(hcm: &HcmConfig, h: &mut HeaderMap) {
    const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    if hcm.generate_request_id {
        // One hashed lookup (entry), not contains_key then insert.
        h.entry(REQUEST_ID).or_insert_with(request_id);
    }
}

/// Envoy's downstream remote address for a request: the peer with `use_remote_address`,
/// else the last `x-forwarded-for` hop (no trusted hops), else the peer.
pub(super) fn remote_address(ctx: &ConnCtx, h: &HeaderMap) -> std::net::IpAddr {
    if ctx.hcm.use_remote_address {
        return ctx.peer.ip();
    }
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    h.get_all(XFF)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or(ctx.peer.ip())
}

/// Append the downstream address to `x-forwarded-for` (HCM `use_remote_address`).
pub(super) fn append_xff(h: &mut HeaderMap, peer: std::net::IpAddr) {
    let new = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(old) if !old.trim().is_empty() => format!("{old},{peer}"),
        _ => peer.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&new) {
        h.insert("x-forwarded-for", v);
    }
}

/// A random RFC 4122 version-4 UUID, as Envoy generates for `x-request-id`, as a header
/// value, formatted on the stack (one allocation, for the value).
fn request_id() -> HeaderValue {
    let id = bytes::Bytes::copy_from_slice(&uuid4_bytes());
    // SAFETY: hex digits and dashes only, all valid in a header value.
    unsafe { HeaderValue::from_maybe_shared_unchecked(id) }
}

fn uuid4_bytes() -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = [b'-'; 36];
    let mut o = 0;
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            o += 1;
        }
        out[o] = HEX[(x >> 4) as usize];
        out[o + 1] = HEX[(x & 15) as usize];
        o += 2;
    }
    out
}
