//! Parsing a downstream HTTP/1.x request head for the inline path, and deciding which requests
//! stay on it: those without a body and without a protocol change. Everything else is left,
//! unconsumed, for hyper's server, so that hyper's answers to odd requests (400 on a bad
//! head, 431, bodies, `Expect`, upgrades, CONNECT) are unchanged.

use crate::proxy::head_checks::Http1Options;
use bytes::BytesMut;
use http::header::{self, HeaderName};
use http::{Method, Request, Uri, Version};
use std::mem::MaybeUninit;

/// Most request headers accepted (hyper's and Envoy's default limit is also 100).
const MAX_HEADERS: usize = 100;
/// A head still incomplete at this size goes to hyper, which applies its own limit (and
/// answers 431 past it).
pub(super) const MAX_INLINE_HEAD: usize = 64 * 1024;

/// What the buffer holds.
// Boxing the request would cost an allocation per request; the value is moved once.
#[allow(clippy::large_enum_variant)]
pub(super) enum Parsed {
    /// A complete bodiless request, taken off the buffer.
    Inline(Request<crate::proxy::body::DownstreamBody>, Meta),
    /// Not yet a complete head.
    Partial,
    /// A request the inline path does not serve: the bytes stay in the buffer for hyper.
    Handoff,
    /// A head httparse accepted but whose target is not a URI (hyper answers such a head
    /// 400, so this is answered the same).
    BadTarget,
    /// A head longer than the HCM's `max_request_headers_kb`, or with more headers than its
    /// `max_headers_count`: 431, as Envoy answers.
    TooLarge,
}

/// What the request head says about the connection and the response.
#[derive(Debug, Clone, Copy)]
pub(super) struct Meta {
    /// The client asked for the connection to stay open (HTTP/1.1 by default, HTTP/1.0 only
    /// with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// The request was HTTP/1.0: the response must be too, and cannot be chunked.
    pub http10: bool,
    /// HEAD: the response has no body on the wire.
    pub head: bool,
    /// The head passes `head_checks` as it is (HTTP/1.1, a host, no length beside a
    /// coding), seen while parsing, so the service need not look again.
    pub checked: bool,
}

/// Header name positions, kept between requests so that parsing allocates nothing here.
#[derive(Default)]
pub(super) struct Scratch {
    fields: Vec<(HeaderName, usize, usize)>,
}

/// Parse the request at the front of `buf`. A head longer than `limit` (the HCM's
/// `max_request_headers_kb`) or with more than `max_count` headers gets 431: here when the
/// inline path can tell, else from hyper. `opts` are the HCM's `http_protocol_options`.
pub(super) fn parse(
    buf: &mut BytesMut,
    scratch: &mut Scratch,
    limit: usize,
    max_count: usize,
    opts: &Http1Options,
) -> Parsed {
    let inline_max = limit.min(MAX_INLINE_HEAD);
    // Uninitialised slots, as in hyper: zeroing 100 headers per request costs more than
    // parsing a typical one.
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let n = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) if n <= inline_max => n,
        Ok(httparse::Status::Partial) if buf.len() <= inline_max => return Parsed::Partial,
        // Past a limit below the inline buffer's: answered here, as hyper's own check is
        // looser (a head that fits its buffer whole passes).
        Ok(_) if limit <= MAX_INLINE_HEAD => return Parsed::TooLarge,
        _ => return Parsed::Handoff,
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Handoff;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Handoff;
    };
    if method == Method::CONNECT {
        return Parsed::Handoff;
    }
    if req.headers.len() > max_count {
        return Parsed::TooLarge;
    }
    let http10 = version == 0;
    let mut keep_alive = !http10;
    let mut close = false;
    // A body, a protocol change or an interim response: hyper's server does these, except
    // for the heads Envoy refuses, which stay here to be refused (head_checks) and answered
    // as Envoy answers them: Content-Length beside Transfer-Encoding (hyper would drop the
    // length), a coding but `chunked` alone (hyper says 400 where Envoy says 501), and
    // HTTP/1.0 unless it is accepted.
    let (mut handoff, mut length, mut coded, mut host) = (false, false, false, false);
    let mut other_coding = false;
    let base = buf.as_ptr() as usize;
    let fields = &mut scratch.fields;
    fields.clear();
    for h in req.headers.iter() {
        let Ok(name) = crate::wire::header_name(h.name.as_bytes()) else {
            return Parsed::Handoff;
        };
        match name {
            header::TRANSFER_ENCODING => {
                // A second Transfer-Encoding line is a second coding.
                other_coding |= coded || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
                (handoff, coded) = (true, true);
            }
            header::UPGRADE | header::EXPECT => handoff = true,
            header::HOST => host = true,
            header::CONTENT_LENGTH => {
                length = true;
                handoff |= h.value.iter().any(|b| *b != b'0') || h.value.is_empty();
            }
            header::CONNECTION => {
                let t = crate::wire::connection_tokens(h.value);
                close |= t.close;
                keep_alive |= t.keep_alive;
            }
            _ => {}
        }
        let from = h.value.as_ptr() as usize - base;
        fields.push((name, from, from + h.value.len()));
    }
    let refused = (length && coded && !opts.allow_chunked_length)
        || other_coding
        || (http10 && !opts.accept_http_10);
    if handoff && !refused {
        return Parsed::Handoff;
    }
    let path_from = path.as_ptr() as usize - base;
    let path_to = path_from + path.len();
    let head = buf.split_to(n).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path_from..path_to)) else {
        // The head is consumed by now, so hyper cannot have it; answer as it would.
        return Parsed::BadTarget;
    };
    let mut headers = crate::header_pool::take(fields.len() + 4);
    for (name, from, to) in fields.drain(..) {
        headers.append(name, crate::wire::header_value(head.slice(from..to)));
    }
    let meta = Meta {
        // The body of a refused head is never read: the connection ends with the answer.
        keep_alive: keep_alive && !close && !refused,
        // Envoy answers in HTTP/1.0 only where it serves HTTP/1.0: the 426 is in HTTP/1.1.
        http10: http10 && opts.accept_http_10,
        head: method == Method::HEAD,
        checked: !http10 && !refused && (host || uri.authority().is_some()),
    };
    let mut req = Request::new(crate::proxy::body::DownstreamBody::new(None, None));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *req.headers_mut() = headers;
    Parsed::Inline(req, meta)
}

/// What the server makes of `chunks` arriving one after another on a connection: one line
/// per request served inline, then `handoff` or `bad target` if it stops there. The outcome
/// must not depend on where the chunks were cut (the `downstream_request` fuzz target checks
/// this).
pub fn decode_requests(chunks: &[&[u8]]) -> Vec<String> {
    let mut buf = BytesMut::new();
    let mut scratch = Scratch::default();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while !buf.is_empty() {
            match parse(
                &mut buf,
                &mut scratch,
                60 * 1024,
                MAX_HEADERS,
                &Http1Options::default(),
            ) {
                Parsed::Inline(req, meta) => {
                    out.push(format!(
                        "{} {} {:?} {:?} {meta:?}",
                        req.method(),
                        req.uri(),
                        req.version(),
                        req.headers()
                    ));
                    // The server closes the connection after this one's answer.
                    if !meta.keep_alive {
                        return out;
                    }
                }
                Parsed::Partial => break,
                Parsed::Handoff => {
                    out.push("handoff".into());
                    return out;
                }
                Parsed::BadTarget => {
                    out.push("bad target".into());
                    return out;
                }
                Parsed::TooLarge => {
                    out.push("too large".into());
                    return out;
                }
            }
        }
    }
    out
}
