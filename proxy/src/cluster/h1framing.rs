//! HTTP/1.1 response framing (RFC 9112 §6): how a response body is delimited, whether the
//! connection outlives it, and the chunked decoder.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::body::Frame;
use std::io;

use super::h1conn::{protocol, MAX_HEAD, MAX_HEADERS};

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// `Content-Length` (or no body at all: 0): bytes still to read.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunk),
    /// Neither: the body ends when the connection closes.
    Close,
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// What a response head's fields say about its framing (RFC 9112 §6.3), gathered field by
/// field while the head is parsed, so no header is looked up again afterwards.
#[derive(Default)]
pub(super) struct Delimiters {
    close: bool,
    keep_alive: bool,
    /// Transfer-Encoding: how many codings, and whether the last is `chunked`.
    te_codings: u32,
    te_chunked: bool,
    /// Content-Length: the value, or `Err` for a bad or conflicting one.
    length: Option<Result<u64, &'static str>>,
}

impl Delimiters {
    /// Take note of one field; tells whether it is hop-by-hop only, so that the head need not
    /// carry it (the router would strip it): a Connection header naming no other header,
    /// Keep-Alive, Proxy-Connection and Transfer-Encoding.
    pub(super) fn add(&mut self, name: &HeaderName, value: &[u8]) -> bool {
        use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
        if name == CONNECTION {
            let t = crate::wire::connection_tokens(value);
            self.close |= t.close;
            self.keep_alive |= t.keep_alive;
            !t.other
        } else if name == TRANSFER_ENCODING {
            for t in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if !t.is_empty() {
                    self.te_codings += 1;
                    self.te_chunked = t.eq_ignore_ascii_case(b"chunked");
                }
            }
            true
        } else if name == CONTENT_LENGTH {
            if !matches!(self.length, Some(Err(_))) {
                let before = self.length.and_then(Result::ok);
                self.length = Some(crate::wire::content_length(value, before).map_err(
                    |e| match e {
                        crate::wire::BadLength::Malformed => "bad upstream content-length",
                        crate::wire::BadLength::Conflicting => {
                            "conflicting upstream content-length values"
                        }
                    },
                ));
            }
            false
        } else {
            name == "keep-alive" || name == "proxy-connection"
        }
    }

    /// How the body is delimited, and whether the connection can carry another request.
    pub(super) fn framing(
        self,
        status: http::StatusCode,
        head_only: bool,
        http10: bool,
    ) -> io::Result<(Framing, bool)> {
        let keep_alive = if http10 { self.keep_alive } else { !self.close };
        if head_only || status == 204 || status == 304 {
            return Ok((Framing::Length(0), keep_alive));
        }
        // As Envoy's codec: `chunked` is the one transfer coding accepted, never together
        // with Content-Length (RFC 9112 §6.3 calls that a smuggling risk) nor from HTTP/1.0.
        if self.te_codings > 0 {
            if http10 {
                return Err(protocol("transfer-encoding in an HTTP/1.0 response"));
            }
            if self.length.is_some() {
                return Err(protocol(
                    "both content-length and transfer-encoding in an upstream response",
                ));
            }
            if self.te_codings > 1 || !self.te_chunked {
                return Err(protocol("unsupported upstream transfer-encoding"));
            }
            return Ok((Framing::Chunked(Chunk::Size), keep_alive));
        }
        match self.length {
            Some(Ok(n)) => Ok((Framing::Length(n), keep_alive)),
            Some(Err(e)) => Err(protocol(e)),
            None => Ok((Framing::Close, false)),
        }
    }
}

/// The framing of a response with these headers (tests).
#[cfg(test)]
fn framing(
    headers: &HeaderMap,
    status: http::StatusCode,
    head_only: bool,
    http10: bool,
) -> io::Result<(Framing, bool)> {
    let mut d = Delimiters::default();
    for (n, v) in headers {
        d.add(n, v.as_bytes());
    }
    d.framing(status, head_only, http10)
}

/// What the body decoder made of the buffered bytes.
pub(super) enum Step {
    Frame(Frame<Bytes>),
    End,
    More,
}

impl Framing {
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Step> {
        match self {
            Framing::Length(0) => Ok(Step::End),
            Framing::Length(n) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let k = (*n).min(buf.len() as u64) as usize;
                *n -= k as u64;
                Ok(Step::Frame(Frame::data(buf.split_to(k).freeze())))
            }
            Framing::Close if buf.is_empty() => Ok(Step::More),
            Framing::Close => Ok(Step::Frame(Frame::data(buf.split().freeze()))),
            Framing::Chunked(c) => decode_chunked(c, buf),
        }
    }

    pub(super) fn is_done(&self) -> bool {
        matches!(self, Framing::Length(0) | Framing::Chunked(Chunk::Done))
    }
}

fn decode_chunked(state: &mut Chunk, buf: &mut BytesMut) -> io::Result<Step> {
    loop {
        match *state {
            Chunk::Size => match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((used, _))) if used > MAX_HEAD => {
                    return Err(protocol("upstream chunk size line too long"))
                }
                Ok(httparse::Status::Complete((used, size))) => {
                    let _ = buf.split_to(used);
                    *state = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                    return Err(protocol("upstream chunk size line too long"))
                }
                Ok(httparse::Status::Partial) => return Ok(Step::More),
                Err(_) => return Err(protocol("bad upstream chunk size")),
            },
            Chunk::Data(n) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let k = n.min(buf.len() as u64) as usize;
                *state = if n == k as u64 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(n - k as u64)
                };
                return Ok(Step::Frame(Frame::data(buf.split_to(k).freeze())));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(protocol("bad upstream chunk terminator"));
                }
                let _ = buf.split_to(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers => {
                if buf.starts_with(b"\r\n") {
                    let _ = buf.split_to(2);
                    *state = Chunk::Done;
                    return Ok(Step::End);
                }
                let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                match httparse::parse_headers(buf, &mut slots) {
                    Ok(httparse::Status::Complete((used, _))) if used > MAX_HEAD => {
                        return Err(protocol("upstream trailers too large"))
                    }
                    Ok(httparse::Status::Complete((used, fields))) => {
                        let mut trailers = HeaderMap::with_capacity(fields.len());
                        for f in fields {
                            let (Ok(name), Ok(value)) = (
                                HeaderName::from_bytes(f.name.as_bytes()),
                                HeaderValue::from_bytes(f.value),
                            ) else {
                                return Err(protocol("bad upstream trailer"));
                            };
                            trailers.append(name, value);
                        }
                        let _ = buf.split_to(used);
                        *state = Chunk::Done;
                        return Ok(Step::Frame(Frame::trailers(trailers)));
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                        return Err(protocol("upstream trailers too large"))
                    }
                    Ok(httparse::Status::Partial) => return Ok(Step::More),
                    Err(_) => return Err(protocol("bad upstream trailers")),
                }
            }
            Chunk::Done => return Ok(Step::End),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A header map from name/value pairs.
    pub(in crate::cluster) fn headers(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in list {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn frame_of(c: &mut Chunk, buf: &mut BytesMut) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            match decode_chunked(c, buf).unwrap() {
                Step::Frame(f) => match f.into_data() {
                    Ok(d) => out.push(String::from_utf8(d.to_vec()).unwrap()),
                    Err(f) => out.push(format!("trailers {:?}", f.into_trailers().unwrap())),
                },
                Step::End => {
                    out.push("end".into());
                    return out;
                }
                Step::More => {
                    out.push("more".into());
                    return out;
                }
            }
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let ok = http::StatusCode::OK;
        let f = |h: &[(&str, &str)], s, head, v10| framing(&headers(h), s, head, v10).unwrap();
        assert_eq!(
            f(&[("content-length", "5")], ok, false, false),
            (Framing::Length(5), true)
        );
        assert_eq!(
            f(&[("content-length", "5")], ok, true, false),
            (Framing::Length(0), true)
        );
        assert_eq!(
            f(&[], http::StatusCode::NO_CONTENT, false, false),
            (Framing::Length(0), true)
        );
        assert_eq!(
            f(&[], http::StatusCode::NOT_MODIFIED, false, false).0,
            Framing::Length(0)
        );
        assert_eq!(f(&[], ok, false, false), (Framing::Close, false));
        assert_eq!(
            f(&[("transfer-encoding", "Chunked")], ok, false, false),
            (Framing::Chunked(Chunk::Size), true)
        );
        // Envoy refuses every other use of Transfer-Encoding.
        for te in [
            &[("transfer-encoding", "chunked"), ("content-length", "3")][..],
            &[("transfer-encoding", "gzip, chunked")],
            &[("transfer-encoding", "chunked, gzip")],
            &[
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked"),
            ],
            &[("transfer-encoding", "identity")],
        ] {
            assert!(framing(&headers(te), ok, false, false).is_err(), "{te:?}");
        }
        assert!(framing(
            &headers(&[("transfer-encoding", "chunked")]),
            ok,
            false,
            true
        )
        .is_err());
        assert_eq!(
            f(
                &[("content-length", "5"), ("connection", "Keep-Alive, close")],
                ok,
                false,
                false
            ),
            (Framing::Length(5), false)
        );
        assert_eq!(
            f(&[("content-length", "5")], ok, false, true),
            (Framing::Length(5), false)
        );
        assert_eq!(
            f(
                &[("content-length", "5"), ("connection", "keep-alive")],
                ok,
                false,
                true
            ),
            (Framing::Length(5), true)
        );
        assert_eq!(
            f(&[("content-length", "5, 5")], ok, false, false).0,
            Framing::Length(5)
        );
        for bad in ["5, 6", "-1", "", "0x10", "5 5"] {
            assert!(
                framing(&headers(&[("content-length", bad)]), ok, false, false).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn chunked_bodies_decode_across_reads() {
        let mut c = Chunk::Size;
        let mut buf = BytesMut::from(&b"5;ext=1\r\nhel"[..]);
        assert_eq!(frame_of(&mut c, &mut buf), ["hel", "more"]);
        buf.extend_from_slice(b"lo\r\n0\r\nx-sum: 9\r\n\r\n");
        let out = frame_of(&mut c, &mut buf);
        assert_eq!(out[0], "lo");
        assert!(
            out[1].starts_with("trailers") && out[1].contains("x-sum"),
            "{out:?}"
        );
        assert_eq!(c, Chunk::Done);
        assert!(buf.is_empty());

        let mut c = Chunk::Size;
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\n"[..]);
        assert_eq!(frame_of(&mut c, &mut buf), ["abc", "end"]);
        let mut c = Chunk::Size;
        let mut buf = BytesMut::from(&b"3\r\nabcX\r\n"[..]);
        let _ = decode_chunked(&mut c, &mut buf).unwrap();
        assert!(decode_chunked(&mut c, &mut buf).is_err());
        let mut c = Chunk::Size;
        assert!(decode_chunked(&mut c, &mut BytesMut::from(&b"zz\r\n"[..])).is_err());
    }
}
