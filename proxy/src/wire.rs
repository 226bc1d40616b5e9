//! Header fields as the inline HTTP/1 codecs (downstream server, upstream client) take them
//! from httparse, and the two fields both codecs read: `Connection` and `Content-Length`.
//!
//! Why not only `HeaderName::from_bytes` and `HeaderValue::from_maybe_shared`: the first
//! lower-cases every name through a scratch buffer before matching the standard names, and the
//! second checks every value byte again after httparse has; together about 300 instructions a
//! header, a tenth of a proxied request under callgrind. The names that nearly every request or
//! response carries are matched here first, and values are taken as httparse checked them.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue, InvalidHeaderName};

/// A header name from the wire, in any case. The names met on almost every message are
/// matched whole in the two spellings senders use (`Content-Length` from nginx and curl,
/// `content-length` from hyper and Envoy); anything else goes through the full parser.
pub fn header_name(raw: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    Ok(match raw {
        b"Host" | b"host" => header::HOST,
        b"Date" | b"date" => header::DATE,
        b"Vary" | b"vary" => header::VARY,
        b"Server" | b"server" => header::SERVER,
        b"Accept" | b"accept" => header::ACCEPT,
        b"Cookie" | b"cookie" => header::COOKIE,
        b"Connection" | b"connection" => header::CONNECTION,
        b"User-Agent" | b"user-agent" => header::USER_AGENT,
        b"Keep-Alive" | b"keep-alive" => HeaderName::from_static("keep-alive"),
        b"Content-Type" | b"content-type" => header::CONTENT_TYPE,
        b"X-Request-Id" | b"x-request-id" => HeaderName::from_static("x-request-id"),
        b"Cache-Control" | b"cache-control" => header::CACHE_CONTROL,
        b"Authorization" | b"authorization" => header::AUTHORIZATION,
        b"Last-Modified" | b"last-modified" => header::LAST_MODIFIED,
        b"Content-Length" | b"content-length" => header::CONTENT_LENGTH,
        b"Accept-Encoding" | b"accept-encoding" => header::ACCEPT_ENCODING,
        b"Transfer-Encoding" | b"transfer-encoding" => header::TRANSFER_ENCODING,
        _ => return HeaderName::from_bytes(raw),
    })
}

/// A header value that httparse has accepted.
pub fn header_value(raw: Bytes) -> HeaderValue {
    // SAFETY: the contract is that the bytes are a valid value, which httparse guarantees: it
    // admits in a field value only HTAB, SP, VCHAR and obs-text (0x80-0xFF), the bytes
    // HeaderValue admits (the test below checks every byte). Debug builds check again.
    unsafe { HeaderValue::from_maybe_shared_unchecked(raw) }
}

/// What a `Connection` field says (RFC 9112 §9.6).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionTokens {
    /// `close`.
    pub close: bool,
    /// `keep-alive`.
    pub keep_alive: bool,
    /// Any other token: the field names other hop-by-hop headers.
    pub other: bool,
}

/// The tokens of one `Connection` field value, case-insensitively.
pub fn connection_tokens(value: &[u8]) -> ConnectionTokens {
    let mut t = ConnectionTokens::default();
    for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
        if token.eq_ignore_ascii_case(b"close") {
            t.close = true;
        } else if token.eq_ignore_ascii_case(b"keep-alive") {
            t.keep_alive = true;
        } else if !token.is_empty() {
            t.other = true;
        }
    }
    t
}

/// Why a `Content-Length` field was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadLength {
    /// Not a list of decimal numbers.
    Malformed,
    /// Values that differ, within the field or from an earlier one.
    Conflicting,
}

/// One `Content-Length` field (a list of equal values is allowed) against the length an
/// earlier field gave, if any.
pub fn content_length(value: &[u8], before: Option<u64>) -> Result<u64, BadLength> {
    let mut length = before;
    for part in value.split(|b| *b == b',') {
        let n = std::str::from_utf8(part.trim_ascii())
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(BadLength::Malformed)?;
        if length.is_some_and(|l| l != n) {
            return Err(BadLength::Conflicting);
        }
        length = Some(n);
    }
    length.ok_or(BadLength::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names_match_the_parser() {
        let names = "Host Date Vary Server Accept Cookie Connection User-Agent Keep-Alive \
            Content-Type X-Request-Id Cache-Control Authorization Last-Modified Content-Length \
            Accept-Encoding Transfer-Encoding X-Other";
        for text in names.split_whitespace() {
            for spelling in [
                text.to_string(),
                text.to_ascii_lowercase(),
                text.to_ascii_uppercase(),
            ] {
                let parsed = HeaderName::from_bytes(spelling.as_bytes()).unwrap();
                assert_eq!(
                    header_name(spelling.as_bytes()).unwrap(),
                    parsed,
                    "{spelling}"
                );
            }
        }
        assert!(header_name(b"bad name").is_err());
    }

    #[test]
    fn values_httparse_accepts_are_valid_header_values() {
        // Every byte httparse lets through in a value must be one HeaderValue accepts.
        for b in 0u8..=255 {
            let line = [b"x: a".as_slice(), &[b], b"b\r\n\r\n"].concat();
            let mut slots = [httparse::EMPTY_HEADER; 1];
            if let Ok(httparse::Status::Complete(_)) = httparse::parse_headers(&line, &mut slots) {
                let v = slots[0].value;
                assert!(HeaderValue::from_bytes(v).is_ok(), "byte {b:#x}");
            }
        }
    }

    #[test]
    fn connection_and_length_fields() {
        let t = connection_tokens(b" Keep-Alive , close,x-hop");
        assert!(t.close && t.keep_alive && t.other);
        assert_eq!(
            connection_tokens(b"close"),
            ConnectionTokens {
                close: true,
                ..Default::default()
            }
        );
        assert_eq!(content_length(b"42", None), Ok(42));
        assert_eq!(content_length(b"42, 42", Some(42)), Ok(42));
        assert_eq!(content_length(b"42, 43", None), Err(BadLength::Conflicting));
        assert_eq!(content_length(b"42", Some(7)), Err(BadLength::Conflicting));
        for bad in [&b""[..], b"+1", b"1x", b"99999999999999999999"] {
            assert_eq!(
                content_length(bad, None),
                Err(BadLength::Malformed),
                "{bad:?}"
            );
        }
    }
}
