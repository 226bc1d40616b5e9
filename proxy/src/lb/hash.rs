//! Hash policies: a request's key for the consistent-hash tables ([`super::table`]), computed
//! as Envoy computes it (xxHash64 of the same bytes), so that a key picks the same host behind
//! Envoy and behind mosn.

use crate::route::action::{CookieKey, HashKey, HashPolicy};
use std::net::SocketAddr;
use xxhash_rust::xxh64::{xxh64, Xxh64};

/// Envoy's `HashUtil::xxHash64`: xxHash64 with seed 0.
pub fn hash64(data: &[u8]) -> u64 {
    xxh64(data, 0)
}

/// What hash policies read besides the headers: the query, and the connection's addresses
/// (the client's, and the local one, which a made-up cookie is derived from).
#[derive(Debug, Clone, Copy, Default)]
pub struct Inputs<'a> {
    /// The request's query.
    pub query: Option<&'a str>,
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// The connection's local (original destination) address.
    pub local: Option<SocketAddr>,
}

/// Evaluate the route's hash policies. Envoy combines several hashes by rotating the
/// accumulated value left by one bit and xoring; a terminal policy stops once there is a hash,
/// its own or an earlier policy's.
/// A cookie policy with a `ttl` whose cookie the request lacks makes one up: its value is
/// hashed, and `set_cookie` gets the `Set-Cookie` value for the response.
pub fn compute(
    policies: &[HashPolicy],
    headers: &http::HeaderMap,
    inputs: Inputs<'_>,
    set_cookie: &mut Option<String>,
) -> Option<u64> {
    let mut acc: Option<u64> = None;
    for p in policies {
        let h = match &p.key {
            HashKey::Header(name) => {
                // All the header's lines, sorted so that their order does not matter, hashed
                // as one run of bytes (Envoy's xxHash64 over a span of strings).
                let mut vals: Vec<&[u8]> =
                    headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
                vals.sort_unstable();
                (!vals.is_empty()).then(|| {
                    let mut h = Xxh64::new(0);
                    vals.iter().for_each(|v| h.update(v));
                    h.digest()
                })
            }
            HashKey::Cookie(c) => match cookie(headers, &c.name) {
                Some(v) => Some(hash64(v.as_bytes())),
                None => c.ttl.map(|ttl| {
                    let value = made_up_cookie(inputs);
                    *set_cookie = Some(set_cookie_value(c, &value, ttl));
                    hash64(value.as_bytes())
                }),
            },
            HashKey::SourceIp => inputs.peer.map(|a| hash64(a.ip().to_string().as_bytes())),
            HashKey::Query(name) => inputs.query.and_then(|q| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| hash64(v.as_bytes()))
            }),
        };
        if let Some(h) = h {
            acc = Some(match acc {
                Some(a) => a.rotate_left(1) ^ h,
                None => h,
            });
        }
        if p.terminal && acc.is_some() {
            break;
        }
    }
    acc
}

/// A cookie value for a client without one, from the connection's two addresses as Envoy
/// derives it (16 hex digits of a hash of both), so one client connection gets one value.
fn made_up_cookie(inputs: Inputs<'_>) -> String {
    let from = inputs.peer.map(|a| a.to_string()).unwrap_or_default();
    let to = inputs.local.map(|a| a.to_string()).unwrap_or_default();
    format!("{:016x}", hash64(format!("{from}{to}").as_bytes()))
}

/// Envoy's `makeSetCookieValue`: the value quoted, `Max-Age` unless a session cookie, the
/// path, the attributes, and `HttpOnly`.
fn set_cookie_value(c: &CookieKey, value: &str, ttl: std::time::Duration) -> String {
    let mut out = format!("{}=\"{value}\"", c.name);
    if !ttl.is_zero() {
        out.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if !c.path.is_empty() {
        out.push_str(&format!("; Path={}", c.path));
    }
    for a in &c.attributes {
        out.push_str("; ");
        out.push_str(a);
    }
    out.push_str("; HttpOnly");
    out
}

/// The value of cookie `name`, without the double quotes it may be wrapped in (RFC 6265
/// §4.1.1, as Envoy reads it); an empty value counts as none.
fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    for v in headers.get_all(http::header::COOKIE) {
        for part in v.to_str().ok()?.split(';') {
            if let Some((k, val)) = part.trim().split_once('=') {
                if k == name {
                    let val = val
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(val);
                    return (!val.is_empty()).then(|| val.to_string());
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderMap, HeaderName, HeaderValue};

    fn policy(key: HashKey, terminal: bool) -> HashPolicy {
        HashPolicy { key, terminal }
    }

    fn header(name: &str) -> HashKey {
        HashKey::Header(HeaderName::from_bytes(name.as_bytes()).unwrap())
    }

    fn run(policies: &[HashPolicy], headers: &[(&str, &str)]) -> Option<u64> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        compute(policies, &map, Inputs::default(), &mut None)
    }

    #[test]
    fn header_lines_hash_as_envoy_hashes_them() {
        let p = [policy(header("x-user"), false)];
        // One line: xxHash64 of its bytes.
        assert_eq!(run(&p, &[("x-user", "jason")]), Some(xxh64(b"jason", 0)));
        // Several lines: sorted, then hashed as one run of bytes, in any order.
        let ab = run(&p, &[("x-user", "b"), ("x-user", "a")]);
        assert_eq!(ab, Some(xxh64(b"ab", 0)));
        assert_eq!(run(&p, &[("x-user", "a"), ("x-user", "b")]), ab);
        assert_eq!(run(&p, &[]), None);
    }

    #[test]
    fn a_terminal_policy_stops_on_an_earlier_hash() {
        let p = [
            policy(header("x-a"), false),
            policy(header("x-b"), true),
            policy(header("x-c"), false),
        ];
        // x-b is absent, but x-a gave a hash: the terminal policy still stops, so x-c is
        // not folded in (Envoy checks the accumulated hash).
        let only_a = run(&p, &[("x-a", "1"), ("x-c", "3")]);
        assert_eq!(only_a, Some(xxh64(b"1", 0)));
        let a_then_b = run(&p, &[("x-a", "1"), ("x-b", "2"), ("x-c", "3")]);
        assert_eq!(
            a_then_b,
            Some(xxh64(b"1", 0).rotate_left(1) ^ xxh64(b"2", 0))
        );
    }

    #[test]
    fn an_empty_cookie_is_no_cookie() {
        let p = [policy(
            HashKey::Cookie(CookieKey {
                name: "session".into(),
                ttl: None,
                path: String::new(),
                attributes: Vec::new(),
            }),
            false,
        )];
        assert_eq!(run(&p, &[("cookie", "session=")]), None);
        assert_eq!(
            run(&p, &[("cookie", "a=1; session=\"x\"")]),
            Some(xxh64(b"x", 0))
        );
    }
}
