//! The checks Envoy makes on a request head before any filter sees it: its HTTP/1 codec's
//! (HTTP/1.0 only when `accept_http_10`, no `Content-Length` beside `Transfer-Encoding`,
//! no transfer coding but `chunked`) and its connection manager's (a request needs a host).
//! These are request-smuggling and routing guards, so mosn answers them as Envoy does
//! rather than as hyper would (hyper serves HTTP/1.0, takes `Transfer-Encoding` over
//! `Content-Length`, and accepts a request without `Host`).

use super::local_reply::{Flag, LocalReply};
use envoy_types::pb::envoy::config::core::v3::Http1ProtocolOptions;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderValue, Request, Version};

/// The HCM's `http_protocol_options` that decide which HTTP/1 requests are served.
#[derive(Debug, Clone, Default)]
pub struct Http1Options {
    /// `accept_http_10`: serve HTTP/1.0 (else 426, Envoy's default).
    pub accept_http_10: bool,
    /// `default_host_for_http_10`: the host of an HTTP/1.0 request without one.
    pub default_host_for_http_10: Option<HeaderValue>,
    /// `allow_chunked_length`: a chunked request's `Content-Length` is dropped (else 400).
    pub allow_chunked_length: bool,
}

impl Http1Options {
    /// From the HCM's `http_protocol_options` (absent: Envoy's defaults).
    pub fn from_proto(o: Option<&Http1ProtocolOptions>) -> Result<Self, String> {
        let Some(o) = o else {
            return Ok(Self::default());
        };
        let default_host = match o.default_host_for_http_10.as_str() {
            "" => None,
            h => Some(HeaderValue::from_str(h).map_err(|_| {
                format!("http_protocol_options.default_host_for_http_10 {h:?} is not a valid host")
            })?),
        };
        Ok(Http1Options {
            accept_http_10: o.accept_http_10,
            default_host_for_http_10: default_host,
            allow_chunked_length: o.allow_chunked_length,
        })
    }
}

/// `headers_with_underscores_action` (Istio's EDGE gateway profile rejects them): what
/// happens to a request header whose name has an underscore, which some servers read as a
/// dash, so that `x_user` could pass for a `x-user` a filter removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Underscores {
    /// Served as it is (Envoy's default).
    #[default]
    Allow,
    /// The request is refused with 400.
    Reject,
    /// The header is dropped.
    Drop,
}

impl Underscores {
    /// From `common_http_protocol_options.headers_with_underscores_action`.
    pub fn from_proto(action: i32) -> Self {
        match action {
            1 => Underscores::Reject,
            2 => Underscores::Drop,
            _ => Underscores::Allow,
        }
    }

    /// Apply the action to `req`'s headers: `Err` for a refused request, else how many
    /// headers were dropped. Envoy's codec does this, and counts it in
    /// `http1.` / `http2.` `requests_rejected_with_underscores_in_headers` and
    /// `dropped_headers_with_underscores`.
    pub fn apply<B>(self, req: &mut Request<B>) -> Result<usize, Refusal> {
        if self == Underscores::Allow {
            return Ok(0);
        }
        let has = |n: &http::HeaderName| n.as_str().contains('_');
        if !req.headers().keys().any(has) {
            return Ok(0);
        }
        if self == Underscores::Reject {
            return Err(codec_error(http::StatusCode::BAD_REQUEST));
        }
        let names: Vec<http::HeaderName> =
            req.headers().keys().filter(|n| has(n)).cloned().collect();
        let mut dropped = 0;
        for n in names {
            dropped += req.headers().get_all(&n).iter().count();
            req.headers_mut().remove(&n);
        }
        Ok(dropped)
    }
}

/// A refused request head: the reply, and whether Envoy counts it as a protocol error of the
/// connection (`downstream_cx_protocol_error`; the codec's refusals are, a missing host is not).
pub struct Refusal {
    /// What the client gets. HTTP/1 connections close after it.
    pub reply: LocalReply,
    /// A codec error.
    pub protocol_error: bool,
    /// To be answered in gRPC's form: the HCM's refusals of a gRPC request are (the codec's
    /// come before the request's headers are known, so they are not).
    pub grpc: bool,
}

/// Check `req` as Envoy's HTTP/1 codec and HCM would, in their order. A chunked request's
/// `Content-Length` is removed, and an HTTP/1.0 request gets the default host, where the
/// options say so.
pub fn check<B>(opts: &Http1Options, req: &mut Request<B>) -> Result<(), Refusal> {
    let h1 = req.version() < Version::HTTP_2;
    if h1 {
        let headers = req.headers_mut();
        if headers.contains_key(TRANSFER_ENCODING) {
            // Only `chunked`, whole and alone (case and surrounding blanks aside).
            let mut te = headers.get_all(TRANSFER_ENCODING).iter();
            let chunked = te
                .next()
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"))
                && te.next().is_none();
            if headers.contains_key(CONTENT_LENGTH) {
                if !(chunked && opts.allow_chunked_length) {
                    return Err(codec_error(http::StatusCode::BAD_REQUEST));
                }
                headers.remove(CONTENT_LENGTH);
            }
            if !chunked {
                return Err(codec_error(http::StatusCode::NOT_IMPLEMENTED));
            }
        }
        if req.version() < Version::HTTP_11 {
            if !opts.accept_http_10 {
                return Err(codec_error(http::StatusCode::UPGRADE_REQUIRED));
            }
            if let Some(host) = &opts.default_host_for_http_10 {
                if !req.headers().contains_key(HOST) {
                    req.headers_mut().insert(HOST, host.clone());
                }
            }
        }
    }
    // HTTP/2 carries the host as `:authority` (the URI's), HTTP/1.1 as `Host` or in an
    // absolute request target.
    if !req.headers().contains_key(HOST) && req.uri().authority().is_none() {
        return Err(Refusal {
            // Envoy's HCM sends this one without a response flag.
            reply: LocalReply::with_flags(400, "", vec![]),
            protocol_error: false,
            grpc: crate::route::matcher::is_grpc(req.headers()),
        });
    }
    Ok(())
}

/// The codec's answer: the status's reason phrase as the text, as Envoy's `sendProtocolError`.
fn codec_error(status: http::StatusCode) -> Refusal {
    Refusal {
        reply: LocalReply::new(
            status.as_u16(),
            status.canonical_reason().unwrap_or_default(),
            Flag::DownstreamProtocolError,
        ),
        protocol_error: true,
        grpc: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, headers: &[(&str, &str)]) -> Request<()> {
        req_at("/p", version, headers)
    }

    fn req_at(uri: &str, version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri(uri).version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn status(opts: &Http1Options, r: &mut Request<()>) -> Option<u16> {
        check(opts, r).err().map(|e| e.reply.status)
    }

    #[test]
    fn envoys_defaults() {
        let d = Http1Options::default();
        let h11 = Version::HTTP_11;
        assert_eq!(status(&d, &mut req(h11, &[("host", "a")])), None);
        assert_eq!(status(&d, &mut req(h11, &[])), Some(400), "no host");
        assert_eq!(
            status(&d, &mut req(Version::HTTP_10, &[("host", "a")])),
            Some(426)
        );
        let te = |v| req(h11, &[("host", "a"), ("transfer-encoding", v)]);
        assert_eq!(status(&d, &mut te("chunked")), None);
        assert_eq!(status(&d, &mut te(" Chunked ")), None);
        assert_eq!(status(&d, &mut te("gzip, chunked")), Some(501));
        assert_eq!(status(&d, &mut te("identity")), Some(501));
        let mut two = req(
            h11,
            &[
                ("host", "a"),
                ("transfer-encoding", "identity"),
                ("transfer-encoding", "chunked"),
            ],
        );
        assert_eq!(status(&d, &mut two), Some(501));
        let mut both = req(
            h11,
            &[
                ("host", "a"),
                ("transfer-encoding", "chunked"),
                ("content-length", "5"),
            ],
        );
        assert_eq!(status(&d, &mut both), Some(400));
        // HTTP/2 has neither HTTP/1 check (a length beside a coding passes), and its host
        // is the URI's authority.
        let framing = [("transfer-encoding", "gzip"), ("content-length", "5")];
        let mut h2 = req_at("http://a/p", Version::HTTP_2, &framing);
        assert_eq!(status(&d, &mut h2), None);
        // Without :authority, a gRPC call is refused in gRPC's form.
        let grpc = [("content-type", "application/grpc")];
        let mut call = req_at("/pkg.Svc/M", Version::HTTP_2, &grpc);
        let r = check(&d, &mut call).err().unwrap();
        assert!(r.grpc && !r.protocol_error && r.reply.status == 400);
    }

    #[test]
    fn what_the_options_allow() {
        let o = Http1Options::from_proto(Some(&Http1ProtocolOptions {
            accept_http_10: true,
            default_host_for_http_10: "default.example".into(),
            allow_chunked_length: true,
            ..Default::default()
        }))
        .unwrap();
        let mut old = req(Version::HTTP_10, &[]);
        assert_eq!(status(&o, &mut old), None);
        assert_eq!(old.headers()["host"], "default.example");
        let mut both = req(
            Version::HTTP_11,
            &[
                ("host", "a"),
                ("transfer-encoding", "chunked"),
                ("content-length", "5"),
            ],
        );
        assert_eq!(status(&o, &mut both), None);
        assert!(!both.headers().contains_key("content-length"));
        // Allowed only with chunked.
        let mut gz = req(
            Version::HTTP_11,
            &[
                ("host", "a"),
                ("transfer-encoding", "gzip"),
                ("content-length", "5"),
            ],
        );
        assert_eq!(status(&o, &mut gz), Some(400));
        // HTTP/1.0 accepted without a default host still needs one.
        let no_default = Http1Options {
            accept_http_10: true,
            ..Default::default()
        };
        assert_eq!(
            status(&no_default, &mut req(Version::HTTP_10, &[])),
            Some(400)
        );
        assert!(Http1Options::from_proto(Some(&Http1ProtocolOptions {
            default_host_for_http_10: "bad\nhost".into(),
            ..Default::default()
        }))
        .is_err());
    }

    #[test]
    fn underscores_are_dropped_line_by_line_or_refused() {
        let mut r = req(
            Version::HTTP_2,
            &[("a_b", "1"), ("a_b", "2"), ("c-d", "3"), ("e_f", "4")],
        );
        assert_eq!(Underscores::Drop.apply(&mut r).ok(), Some(3));
        assert_eq!(r.headers().len(), 1);
        let mut r = req(Version::HTTP_11, &[("a_b", "1")]);
        assert_eq!(Underscores::Allow.apply(&mut r).ok(), Some(0));
        let refused = Underscores::Reject.apply(&mut r).err().unwrap();
        assert_eq!((refused.reply.status, refused.protocol_error), (400, true));
    }
}
