//! Hop-by-hop headers (RFC 9110 §7.6.1): connection-level fields a proxy must not forward,
//! removed from requests going upstream and from responses coming back.

use http::{HeaderMap, HeaderName};

/// Remove connection-level headers that must not be forwarded.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Pre-parsed names: removing by `&str` would parse (and allocate for non-standard
    // names) on every call.
    const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    // One pass over the (few) names finds which kinds are present, so a message without
    // them costs no hashed lookup and one with only `Connection: keep-alive` (most upstream
    // responses) costs two, not six.
    const CONN: u8 = 1;
    const TE: u8 = 2;
    const OTHER: u8 = 4;
    let mut found = 0u8;
    for n in h.keys() {
        found |= if n == http::header::CONNECTION {
            CONN
        } else if n == http::header::TE {
            TE
        } else if n == http::header::TRANSFER_ENCODING
            || n == http::header::UPGRADE
            || n == KEEP_ALIVE
            || n == PROXY_CONNECTION
        {
            OTHER
        } else {
            0
        };
    }
    if found == 0 {
        return;
    }
    if let Some(conn) = h
        .get(http::header::CONNECTION)
        .filter(|_| found & CONN != 0)
    {
        // Only a value naming something other than close / keep-alive needs the slow path.
        let names: Option<Vec<String>> = conn
            .to_str()
            .ok()
            .filter(|_| crate::wire::connection_tokens(conn.as_bytes()).other)
            .and_then(|conn| {
                let v: Vec<String> = conn
                    .split(',')
                    .map(str::trim)
                    .filter(|n| {
                        !n.is_empty()
                            && !n.eq_ignore_ascii_case("close")
                            && !n.eq_ignore_ascii_case("keep-alive")
                    })
                    .map(str::to_string)
                    .collect();
                (!v.is_empty()).then_some(v)
            });
        for name in names.iter().flatten() {
            h.remove(name.as_str());
        }
        h.remove(http::header::CONNECTION);
    }
    if found & OTHER != 0 {
        for name in [&KEEP_ALIVE, &PROXY_CONNECTION] {
            h.remove(name);
        }
        h.remove(http::header::TRANSFER_ENCODING);
        h.remove(http::header::UPGRADE);
    }
    // "te: trailers" is meaningful for gRPC; anything else is hop-by-hop.
    if found & TE != 0
        && h.get(http::header::TE)
            .is_some_and(|v| v.as_bytes() != b"trailers")
    {
        h.remove(http::header::TE);
    }
}

#[cfg(test)]
mod tests {
    use super::strip_hop_by_hop;
    use http::HeaderMap;

    fn strip(list: &[(&'static str, &'static str)]) -> Vec<String> {
        let mut h = HeaderMap::new();
        for (n, v) in list {
            h.append(*n, v.parse().unwrap());
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<String> = h.keys().map(|k| k.to_string()).collect();
        left.sort();
        left
    }

    #[test]
    fn connection_names_the_fields_it_takes_along() {
        let named = [
            ("connection", "X-A, close"),
            ("x-a", "1"),
            ("x-b", "2"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
        ];
        assert_eq!(strip(&named), ["te", "x-b"]);
        let plain = [("connection", "Keep-Alive"), ("x-a", "1")];
        assert_eq!(strip(&plain), ["x-a"]);
        assert_eq!(strip(&[("te", "gzip"), ("x-a", "1")]), ["x-a"]);
    }
}
