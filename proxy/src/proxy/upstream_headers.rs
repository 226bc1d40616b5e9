//! The headers a request gets on its way upstream, as Envoy's connection manager and router
//! set them: `x-forwarded-proto`, `x-forwarded-for`, `x-request-id`, the route's path and
//! host rewrites, and the header policies of every level.

use super::hcm::HcmConfig;
use super::ConnCtx;
use crate::route::action::{ForwardAction, WeightedTarget};
use crate::route::headers::HeaderPolicy;
use crate::route::Route;
use http::{HeaderMap, HeaderName, HeaderValue};

// Pre-parsed names: `&str` names are parsed (checked and lowercased) on every use.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `x-request-id`.
pub(super) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The headers Envoy's connection manager and router set on a request before it goes
/// upstream: x-forwarded-proto, path and host rewrites, and the header
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
    if hcm.trusts_forwarded_proto() {
        h.entry(X_FORWARDED_PROTO).or_insert(scheme);
    } else {
        h.insert(X_FORWARDED_PROTO, scheme);
    }
    // As Envoy: at the edge it replaces the client's own unless a trusted proxy is in front;
    // elsewhere it is only added when absent.
    if hcm.append_x_forwarded_port {
        const XFPORT: HeaderName = HeaderName::from_static("x-forwarded-port");
        let port = HeaderValue::from(hctx.local.port());
        if hcm.trusts_forwarded_proto() {
            h.entry(XFPORT).or_insert(port);
        } else {
            h.insert(XFPORT, port);
        }
    }
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
        rewrite_host(parts, host, a.append_x_forwarded_host);
    }
    for p in rest {
        p.request.apply(&mut parts.headers, hctx);
    }
    if let Some(host) = a.host_rewrite.as_ref() {
        rewrite_host(parts, host, a.append_x_forwarded_host);
    }
}

/// Set the Host header, and the authority of an absolute URI, to `host`. With
/// `append_xfh`, the host it replaces is appended to `x-forwarded-host`, unless it is the
/// last one there already (Envoy's `updateAuthority`).
fn rewrite_host(parts: &mut http::request::Parts, host: &str, append_xfh: bool) {
    let Ok(v) = HeaderValue::from_str(host) else {
        return;
    };
    if append_xfh {
        const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
        let original = parts.headers.get(http::header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        if let Some(original) = original.filter(|o| !o.is_empty()) {
            let last = parts.headers.get(&XFH).and_then(|x| {
                let last = x.as_bytes().rsplit(|b| *b == b',').next()?;
                Some(last.trim_ascii() == original.as_bytes())
            });
            if last != Some(true) {
                append_list(&mut parts.headers, XFH, &original, b",");
            }
        }
    }
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
    if hcm.generate_request_id {
        // One hashed lookup (entry), not contains_key then insert; an empty id is no id.
        match h.entry(X_REQUEST_ID) {
            http::header::Entry::Vacant(v) => {
                v.insert(request_id());
            }
            http::header::Entry::Occupied(mut o) if o.get().is_empty() => {
                o.insert(request_id());
            }
            http::header::Entry::Occupied(_) => {}
        }
    }
}

/// Envoy's treatment of a request from outside (`use_remote_address`, not internal): its
/// `x-request-id` is the proxy's own, not the client's (unless
/// `preserve_external_request_id`), and `x-envoy-external-address` names the client. Called
/// first thing, before the request is logged or routed.
pub(super) fn mark_edge_request(ctx: &ConnCtx, h: &mut HeaderMap) {
    if !ctx.hcm.use_remote_address
        || super::control_headers::is_internal(h, ctx.peer.ip(), true, &ctx.hcm.internal)
    {
        return;
    }
    if ctx.hcm.generate_request_id && !ctx.hcm.preserve_external_request_id {
        h.remove(X_REQUEST_ID);
    }
    const EXTERNAL: HeaderName = HeaderName::from_static("x-envoy-external-address");
    if let Ok(v) = HeaderValue::from_str(&remote_address(ctx, h).to_string()) {
        h.insert(EXTERNAL, v);
    }
}

/// The `x-forwarded-for` entries of all its lines, in order, read in place: RBAC asks for
/// the remote address on every request it judges.
fn xff_entries(h: &HeaderMap) -> impl DoubleEndedIterator<Item = &str> {
    h.get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
}

/// Envoy's downstream remote address for a request (`final_remote_address`): with
/// `use_remote_address`, the peer, unless `xff_num_trusted_hops` proxies are in front, whose
/// last entries are skipped; without it, the `x-forwarded-for` entry past the trusted hops.
/// The peer when `x-forwarded-for` has no such entry.
pub(super) fn remote_address(ctx: &ConnCtx, h: &HeaderMap) -> std::net::IpAddr {
    final_remote(ctx, h).ip()
}

/// [`remote_address`] with a port, as Envoy's `%DOWNSTREAM_REMOTE_ADDRESS%` prints it: the
/// peer's, or 0 for an address taken from `x-forwarded-for` (Envoy parses the entry as an
/// address without a port).
pub(super) fn final_remote(ctx: &ConnCtx, h: &HeaderMap) -> std::net::SocketAddr {
    let hops = ctx.hcm.xff_trusted_hops as usize;
    let skip = if ctx.hcm.use_remote_address {
        match hops.checked_sub(1) {
            Some(s) => s,
            None => return ctx.peer,
        }
    } else {
        hops
    };
    xff_entries(h)
        .rev()
        .nth(skip)
        .and_then(|a| a.parse().ok())
        .map_or(ctx.peer, |ip| std::net::SocketAddr::new(ip, 0))
}

/// Append the downstream address to `x-forwarded-for` (HCM `use_remote_address`), folding
/// several lines into one as Envoy's header map does.
pub(super) fn append_xff(h: &mut HeaderMap, peer: std::net::IpAddr) {
    let mut all = String::new();
    for e in xff_entries(h) {
        all.push_str(e);
        all.push(',');
    }
    all.push_str(&peer.to_string());
    if let Ok(v) = HeaderValue::from_str(&all) {
        h.insert(X_FORWARDED_FOR, v);
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

/// Envoy's `appendVia`: the HCM's `via` after any the message carries.
pub(super) fn append_via(h: &mut HeaderMap, via: &HeaderValue) {
    append_list(h, http::header::VIA, via, b", ");
}

/// Append `value` to the list header `name` after `sep`, or set it when it is absent or
/// empty.
fn append_list(h: &mut HeaderMap, name: HeaderName, value: &HeaderValue, sep: &[u8]) {
    let joined = match h.get(&name).map(|v| v.as_bytes()) {
        Some(old) if !old.is_empty() => {
            HeaderValue::from_bytes(&[old, sep, value.as_bytes()].concat()).ok()
        }
        _ => Some(value.clone()),
    };
    if let Some(v) = joined {
        h.insert(name, v);
    }
}

/// The request's scheme as Envoy's redirects and `require_tls` read it, from
/// `x-forwarded-proto` as the connection manager leaves it: the connection's at the edge
/// (`use_remote_address` with no trusted hops, where the client's own is replaced), else a
/// valid one the request brought, else the connection's.
pub(super) fn forwarded_proto(ctx: &ConnCtx, headers: &http::HeaderMap) -> &'static str {
    let conn = if ctx.tls.is_some() { "https" } else { "http" };
    if !ctx.hcm.trusts_forwarded_proto() {
        return conn;
    }
    match headers.get(X_FORWARDED_PROTO).map(|v| v.as_bytes()) {
        Some(v) if v.eq_ignore_ascii_case(b"https") => "https",
        Some(v) if v.eq_ignore_ascii_case(b"http") => "http",
        _ => conn,
    }
}
