//! Consistent hashing: hash-policy evaluation, the ring (RING_HASH) and the Maglev table.

use crate::cluster::host::Host;
use crate::route::action::{CookieKey, HashKey, HashPolicy};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

/// A stable 64-bit hash (SipHash with fixed keys, so every process agrees).
pub fn hash64(data: &[u8]) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    data.hash(&mut h);
    h.finish()
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
/// accumulated value left by one bit and xoring; a terminal policy that produced a hash stops.
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
                let vals: Vec<&[u8]> = headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
                (!vals.is_empty()).then(|| hash64(&vals.join(&b","[..])))
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
            if p.terminal {
                break;
            }
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
/// §4.1.1, as Envoy reads it).
fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    for v in headers.get_all(http::header::COOKIE) {
        for part in v.to_str().ok()?.split(';') {
            if let Some((k, val)) = part.trim().split_once('=') {
                if k == name {
                    let val = val
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(val);
                    return Some(val.to_string());
                }
            }
        }
    }
    None
}

/// Build a ring: each host gets a share of `size` entries proportional to its weight.
pub fn build_ring(hosts: &[Arc<Host>], min_size: u64, max_size: u64) -> Vec<(u64, u32)> {
    if hosts.is_empty() {
        return Vec::new();
    }
    let total: u64 = hosts.iter().map(|h| h.weight as u64).sum();
    let min_w = hosts.iter().map(|h| h.weight as u64).min().unwrap_or(1);
    // As in Envoy: scale so the lightest host has at least one entry and the ring ≥ min_size.
    let scale = ((min_size as f64 / total as f64).max(1.0 / min_w as f64) * total as f64)
        .min(max_size as f64)
        / total as f64;
    let mut ring = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let n = ((h.weight as f64 * scale).round() as u64).max(1);
        for k in 0..n {
            ring.push((hash64(format!("{}_{k}", h.addr).as_bytes()), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// The ring entry at or after `h`, wrapping around.
pub fn ring_lookup(ring: &[(u64, u32)], h: u64) -> Option<usize> {
    if ring.is_empty() {
        return None;
    }
    let i = ring.partition_point(|(k, _)| *k < h);
    Some(ring[if i == ring.len() { 0 } else { i }].1 as usize)
}

/// Build a weighted Maglev lookup table (Eisenbud et al.): each host fills its preferred slots
/// in turn; heavier hosts take turns more often.
pub fn build_maglev(hosts: &[Arc<Host>], table_size: u64) -> Vec<u32> {
    let m = table_size as usize;
    if hosts.is_empty() || m == 0 {
        return Vec::new();
    }
    let perms: Vec<(u64, u64)> = hosts
        .iter()
        .map(|h| {
            let k = h.addr.to_string();
            let offset = hash64(format!("{k}#offset").as_bytes()) % table_size;
            let skip = hash64(format!("{k}#skip").as_bytes()) % (table_size - 1).max(1) + 1;
            (offset, skip)
        })
        .collect();
    let max_w = hosts.iter().map(|h| h.weight).max().unwrap_or(1) as u64;
    let mut next = vec![0u64; hosts.len()];
    let mut credit = vec![0u64; hosts.len()];
    let mut table = vec![u32::MAX; m];
    let mut filled = 0;
    while filled < m {
        for (i, h) in hosts.iter().enumerate() {
            credit[i] += h.weight as u64;
            if credit[i] < max_w {
                continue;
            }
            credit[i] -= max_w;
            loop {
                let (off, skip) = perms[i];
                let slot = ((off + next[i] * skip) % table_size) as usize;
                next[i] += 1;
                if table[slot] == u32::MAX {
                    table[slot] = i as u32;
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                break;
            }
        }
    }
    table
}
