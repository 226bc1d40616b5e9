//! Writing a response to an HTTP/1.x client: the head, with the framing hyper's server would
//! choose (RFC 9112 §6), and the body encoder.

use super::request::Meta;
use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::StatusCode;
use hyper::body::SizeHint;

/// How the body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Encoder {
    /// Exactly this many bytes still to write (0: no body at all).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (HTTP/1.0 clients, unknown length).
    Close,
}

/// The response head as written, and what follows it.
pub(super) struct Framed {
    /// The body encoder.
    pub encoder: Encoder,
    /// The connection closes after this response.
    pub last: bool,
}

/// Append the response head to `out`. `closing` asks for the connection to end after this
/// response (a draining or idle-closing connection).
pub(super) fn encode_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    body: (bool, SizeHint),
    meta: Meta,
    closing: bool,
) -> Framed {
    let (end_stream, hint) = body;
    // hyper's rules: 1xx, 204 and 304 carry neither a length nor a body; HEAD has a length
    // but no body.
    let may_length = !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED);
    let no_body = meta.head || !may_length;
    let mut last = !meta.keep_alive || closing;
    if meta.http10 {
        out.extend_from_slice(b"HTTP/1.0 ");
    } else if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
    }
    if meta.http10 || status != StatusCode::OK {
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut encoder = None;
    let mut has_date = false;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    for (name, value) in headers {
        match *name {
            header::CONTENT_LENGTH => {
                if encoder.is_some() || !may_length {
                    continue;
                }
                // An empty body is sent as length 0, except that a HEAD response keeps the
                // length of the body it stands for; otherwise the body's own exact size wins
                // over the header (as in hyper).
                let len = match (end_stream, hint.exact()) {
                    (true, _) if !meta.head => continue,
                    (false, Some(n)) => Some(n),
                    _ => crate::wire::content_length(value.as_bytes(), None).ok(),
                };
                let Some(len) = len else { continue };
                push_length(out, len);
                encoder = Some(Encoder::Length(len));
                continue;
            }
            // Our bodies are never transfer-coded on the way in: the framing is ours to pick.
            header::TRANSFER_ENCODING | header::TRAILER => continue,
            header::CONNECTION => {
                let t = crate::wire::connection_tokens(value.as_bytes());
                conn_close |= t.close;
                conn_keep_alive |= t.keep_alive;
            }
            header::DATE => has_date = true,
            _ => {}
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    last |= conn_close;
    let encoder = match encoder {
        Some(e) => e,
        None if end_stream || hint.exact() == Some(0) => {
            if may_length && !meta.head {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            Encoder::Length(0)
        }
        None => match hint.exact() {
            Some(n) if may_length => {
                push_length(out, n);
                Encoder::Length(n)
            }
            Some(_) => Encoder::Length(0),
            None if meta.http10 || no_body => Encoder::Close,
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Encoder::Chunked
            }
        },
    };
    let encoder = if no_body { Encoder::Length(0) } else { encoder };
    if encoder == Encoder::Close {
        last = true;
    }
    // The connection header says what happens to the connection, as hyper writes it.
    if meta.http10 {
        if !last && !conn_keep_alive {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    } else if last && !conn_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        date::extend(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Framed { encoder, last }
}

fn push_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

impl Encoder {
    /// Append one data frame; returns false when the body overruns its declared length (the
    /// excess is not written, and the connection must end).
    pub(super) fn data(&mut self, out: &mut Vec<u8>, data: &Bytes) -> bool {
        match self {
            Encoder::Length(left) => {
                let take = (*left).min(data.len() as u64) as usize;
                out.extend_from_slice(&data[..take]);
                *left -= take as u64;
                take == data.len()
            }
            Encoder::Chunked => {
                // An empty chunk would end the body.
                if !data.is_empty() {
                    use std::io::Write;
                    let _ = write!(out, "{:X}\r\n", data.len());
                    out.extend_from_slice(data);
                    out.extend_from_slice(b"\r\n");
                }
                true
            }
            Encoder::Close => {
                out.extend_from_slice(data);
                true
            }
        }
    }

    /// Append the end of the body; returns false when the body ended short of its declared
    /// length (the client must see the connection close, not a complete response).
    pub(super) fn end(&self, out: &mut Vec<u8>) -> bool {
        match self {
            Encoder::Length(left) => *left == 0,
            Encoder::Chunked => {
                // Trailers are not sent to HTTP/1 clients, as Envoy's default
                // (`enable_trailers` off).
                out.extend_from_slice(b"0\r\n\r\n");
                true
            }
            Encoder::Close => true,
        }
    }
}

/// HTTP dates, formatted once a second (as hyper caches them).
mod date {
    use std::cell::RefCell;
    use std::time::{Duration, UNIX_EPOCH};

    thread_local! {
        static CACHE: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
    }

    /// Append the current date (IMF-fixdate, 29 bytes).
    pub(super) fn extend(out: &mut Vec<u8>) {
        // The coarse clock: the second may turn a tick late, which a Date header can afford.
        let secs = crate::clock::coarse_unix_secs();
        CACHE.with_borrow_mut(|(at, text)| {
            if *at != secs {
                let s = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
                if s.len() == text.len() {
                    text.copy_from_slice(s.as_bytes());
                    *at = secs;
                }
            }
            out.extend_from_slice(text);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(keep_alive: bool, http10: bool, head: bool) -> Meta {
        Meta {
            keep_alive,
            http10,
            head,
            checked: true,
        }
    }

    fn head(
        status: u16,
        headers: &[(&str, &str)],
        body: (bool, SizeHint),
        m: Meta,
        closing: bool,
    ) -> (String, Framed) {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let mut out = Vec::new();
        let f = encode_head(
            &mut out,
            StatusCode::from_u16(status).unwrap(),
            &map,
            body,
            m,
            closing,
        );
        let s = String::from_utf8(out).unwrap();
        // Drop the date line, which changes every second.
        let s = s
            .split("\r\n")
            .filter(|l| !l.starts_with("date: "))
            .collect::<Vec<_>>()
            .join("\r\n");
        (s, f)
    }

    fn exact(n: u64) -> (bool, SizeHint) {
        (n == 0, SizeHint::with_exact(n))
    }

    fn unknown() -> (bool, SizeHint) {
        (false, SizeHint::default())
    }

    #[test]
    fn framing_follows_the_body() {
        let ka = meta(true, false, false);
        let (s, f) = head(200, &[("x-a", "1")], exact(5), ka, false);
        assert_eq!(s, "HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\n\r\n");
        assert_eq!((f.encoder, f.last), (Encoder::Length(5), false));
        let (s, f) = head(404, &[], unknown(), ka, false);
        assert_eq!(
            s,
            "HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(f.encoder, Encoder::Chunked);
        // A declared length is kept for a stream of unknown size.
        let (s, f) = head(200, &[("content-length", "7")], unknown(), ka, false);
        assert_eq!(s, "HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n");
        assert_eq!(f.encoder, Encoder::Length(7));
        // An empty body: length 0, whatever the header claimed.
        let (s, _) = head(200, &[("content-length", "7")], exact(0), ka, false);
        assert_eq!(s, "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        // 204 and 304 carry no length and no body.
        let (s, f) = head(204, &[], unknown(), ka, false);
        assert_eq!(s, "HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!((f.encoder, f.last), (Encoder::Length(0), false));
    }

    #[test]
    fn head_responses_keep_their_length_but_send_no_body() {
        let m = meta(true, false, true);
        let (s, f) = head(200, &[("content-length", "42")], exact(0), m, false);
        assert_eq!(s, "HTTP/1.1 200 OK\r\ncontent-length: 42\r\n\r\n");
        assert_eq!(f.encoder, Encoder::Length(0));
    }

    #[test]
    fn connection_header_says_what_happens() {
        let (s, f) = head(200, &[], exact(0), meta(false, false, false), false);
        assert_eq!(
            s,
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        assert!(f.last);
        let (s, f) = head(
            200,
            &[("connection", "close")],
            exact(0),
            meta(true, false, false),
            false,
        );
        assert_eq!(
            s,
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        );
        assert!(f.last);
        let (_, f) = head(200, &[], exact(0), meta(true, false, false), true);
        assert!(f.last);
        // HTTP/1.0 keep-alive is said out loud; an unknown length ends the connection.
        let (s, f) = head(200, &[], exact(2), meta(true, true, false), false);
        assert_eq!(
            s,
            "HTTP/1.0 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\n"
        );
        assert!(!f.last);
        let (s, f) = head(200, &[], unknown(), meta(true, true, false), false);
        assert_eq!(s, "HTTP/1.0 200 OK\r\n\r\n");
        assert_eq!((f.encoder, f.last), (Encoder::Close, true));
    }

    #[test]
    fn encoders_frame_data() {
        let mut out = Vec::new();
        let mut e = Encoder::Chunked;
        assert!(e.data(&mut out, &Bytes::from_static(&[b'x'; 26])));
        assert!(e.data(&mut out, &Bytes::new()));
        assert!(e.end(&mut out));
        assert_eq!(
            out,
            [&b"1A\r\n"[..], &[b'x'; 26], b"\r\n0\r\n\r\n"].concat()
        );
        let mut out = Vec::new();
        let mut e = Encoder::Length(3);
        assert!(!e.data(&mut out, &Bytes::from_static(b"abcd")));
        assert_eq!(out, b"abc");
        assert!(e.end(&mut out));
        let e = Encoder::Length(3);
        assert!(!e.end(&mut out));
    }
}
