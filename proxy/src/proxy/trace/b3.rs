//! B3 propagation as Envoy's Zipkin tracer does it: the sampling flag and span context read
//! from a request (`b3`, else `x-b3-*`), and the span's context written into the upstream
//! request.
//!
//! Ids are parsed as hex digits only; Envoy's `strtoull` also takes leading blanks, a sign
//! and a `0x` prefix, which no tracer sends.

use http::{HeaderMap, HeaderName, HeaderValue};

const B3: HeaderName = HeaderName::from_static("b3");
const TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const PARENT_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");

/// A span context carried by a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    /// The trace id's high 64 bits (0 for a 64-bit id).
    pub trace_hi: u64,
    /// The trace id's low 64 bits.
    pub trace_lo: u64,
    /// The sender's span.
    pub span: u64,
    /// The sender's parent span.
    pub parent: Option<u64>,
}

/// The request's span context and whether the span is sampled, each header looked up once
/// (every lookup hashes its name).
///
/// The context is `Ok(None)` when the request carries none (a new trace starts) and `Err` when
/// its B3 headers do not parse (Envoy then makes no span and the headers go on as they came).
/// The sampling flag is the `b3` header's, else `x-b3-sampled` ("1" or "true"; any other value
/// is "no"), else the HCM's own `decision`.
pub fn read(h: &HeaderMap, decision: bool) -> (Result<Option<Context>, &'static str>, bool) {
    if let Some(b3) = h.get(B3) {
        let b = b3.as_bytes();
        return (single(b), single_flag(b).unwrap_or(decision));
    }
    let sampled = match h.get(SAMPLED) {
        Some(v) => v == "1" || v == "true",
        None => decision,
    };
    (multi(h), sampled)
}

/// The sampling flag of a `b3` header, if it has one that reads.
fn single_flag(b: &[u8]) -> Option<bool> {
    let flag = match b.len() {
        1 => b[0],
        35 | 52 => b[34],
        51 | 68 => b[50],
        _ => return None,
    };
    match flag {
        b'0' => Some(false),
        b'1' | b'd' => Some(true),
        _ => None,
    }
}

/// The context of the `x-b3-*` headers.
fn multi(h: &HeaderMap) -> Result<Option<Context>, &'static str> {
    let Some(trace) = h.get(TRACE_ID) else {
        return Ok(None);
    };
    let Some(span) = h.get(SPAN_ID) else {
        return Ok(None);
    };
    let t = trace.as_bytes();
    let (trace_hi, trace_lo) = if t.len() == 32 {
        (hex(&t[..16])?, hex(&t[16..])?)
    } else {
        (0, hex(t)?)
    };
    let parent = match h.get(PARENT_ID).map(HeaderValue::as_bytes) {
        Some(p) if !p.is_empty() => Some(hex(p)?),
        _ => None,
    };
    Ok(Some(Context {
        trace_hi,
        trace_lo,
        span: hex(span.as_bytes())?,
        parent,
    }))
}

/// The single `b3` header: `{trace}-{span}[-{flag}[-{parent}]]`, or just a flag.
fn single(b: &[u8]) -> Result<Option<Context>, &'static str> {
    match b.len() {
        0 => return Err("empty b3 header"),
        1 if matches!(b[0], b'0' | b'1' | b'd') => return Ok(None),
        1 => return Err("bad b3 sampling flag"),
        n if n < 33 => return Err("truncated b3 header"),
        n if n > 68 => return Err("b3 header too long"),
        _ => {}
    }
    let (trace_hi, trace_lo, mut pos) = if b[32] == b'-' {
        (hex(&b[..16])?, hex(&b[16..32])?, 32)
    } else {
        (0, hex(&b[..16])?, 16)
    };
    if b[pos] != b'-' || b.len() < pos + 17 {
        return Err("b3 header without a span id");
    }
    let span = hex(&b[pos + 1..pos + 17])?;
    pos += 17;
    let mut parent = None;
    if pos < b.len() {
        if b[pos] != b'-' || pos + 2 > b.len() || !matches!(b[pos + 1], b'0' | b'1' | b'd') {
            return Err("bad b3 sampling flag");
        }
        pos += 2;
        if pos < b.len() {
            if b[pos] != b'-' || b.len() != pos + 17 {
                return Err("bad b3 parent span id");
            }
            parent = Some(hex(&b[pos + 1..])?);
        }
    }
    Ok(Some(Context {
        trace_hi,
        trace_lo,
        span,
        parent,
    }))
}

fn hex(b: &[u8]) -> Result<u64, &'static str> {
    let s = std::str::from_utf8(b).map_err(|_| "bad b3 id")?;
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err("bad b3 id");
    }
    u64::from_str_radix(s, 16).map_err(|_| "b3 id too long")
}

/// 16 lowercase hex digits.
pub fn id_hex(id: u64) -> String {
    String::from_utf8_lossy(&hex16(id)).into_owned()
}

/// The trace id as Zipkin writes it: 32 hex digits with a high part, else 16.
pub fn trace_hex(hi: u64, lo: u64) -> String {
    let (buf, n) = trace_bytes(hi, lo);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// `id` as 16 lowercase hex digits (without the formatting machinery: this runs for every
/// request of a tracing HCM).
fn hex16(id: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = HEX[((id >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// A trace id's hex digits on the stack (each upstream request writes one), and how many:
/// 32 for a 128-bit id, 16 for a 64-bit one.
fn trace_bytes(hi: u64, lo: u64) -> ([u8; 32], usize) {
    let mut buf = [0u8; 32];
    if hi == 0 {
        buf[..16].copy_from_slice(&hex16(lo));
        return (buf, 16);
    }
    buf[..16].copy_from_slice(&hex16(hi));
    buf[16..].copy_from_slice(&hex16(lo));
    (buf, 32)
}

/// Write a span's context into an upstream request (replacing what came): its trace, its own
/// id, its parent when it has one, and the sampling flag. `x-b3-flags` and `b3` are left.
pub fn inject(h: &mut HeaderMap, trace: (u64, u64), id: u64, parent: Option<u64>, sampled: bool) {
    let v = |b: &[u8]| HeaderValue::from_bytes(b).expect("hex digits");
    let (digits, n) = trace_bytes(trace.0, trace.1);
    h.insert(TRACE_ID, v(&digits[..n]));
    h.insert(SPAN_ID, v(&hex16(id)));
    if let Some(p) = parent {
        h.insert(PARENT_ID, v(&hex16(p)));
    }
    h.insert(
        SAMPLED,
        HeaderValue::from_static(if sampled { "1" } else { "0" }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(h: &HeaderMap) -> Result<Option<Context>, &'static str> {
        read(h, false).0
    }

    fn flag(h: &HeaderMap, decision: bool) -> bool {
        read(h, decision).1
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::try_from(*k).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn contexts_are_read_from_either_form() {
        let multi = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-parentspanid", "0020000000000001"),
        ]);
        let want = Context {
            trace_hi: 0x463ac35c9f6413ad,
            trace_lo: 0x48485a3953bb6124,
            span: 0xa2fb4a1d1a96d312,
            parent: Some(0x20000000000001),
        };
        assert_eq!(ctx(&multi), Ok(Some(want)));
        let single = headers(&[(
            "b3",
            "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-1-0020000000000001",
        )]);
        assert_eq!(ctx(&single), Ok(Some(want)));
        // 64-bit trace, no flag or parent; a b3 header hides the x-b3 ones.
        let short = headers(&[
            ("b3", "48485a3953bb6124-a2fb4a1d1a96d312"),
            ("x-b3-traceid", "zz"),
        ]);
        let c = ctx(&short).unwrap().unwrap();
        assert_eq!(
            (c.trace_hi, c.trace_lo, c.parent),
            (0, 0x48485a3953bb6124, None)
        );
        // No context: a flag alone, or a span id without a trace id.
        assert_eq!(ctx(&headers(&[("b3", "1")])), Ok(None));
        assert_eq!(
            ctx(&headers(&[("x-b3-spanid", "a2fb4a1d1a96d312")])),
            Ok(None)
        );
        // Broken ones are errors (Envoy makes no span for them).
        for bad in [
            "463ac35c9f6413ad-xyz",
            "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-7",
            "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-1-00200000000000",
            "x",
        ] {
            assert!(ctx(&headers(&[("b3", bad)])).is_err(), "{bad}");
        }
        let bad = headers(&[("x-b3-traceid", "1"), ("x-b3-spanid", "not-hex")]);
        assert!(ctx(&bad).is_err());
    }

    #[test]
    fn the_sampling_flag_follows_envoys_precedence() {
        assert!(!flag(&headers(&[("b3", "0")]), true));
        assert!(flag(&headers(&[("b3", "d")]), false));
        let ids = "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312";
        assert!(flag(&headers(&[("b3", &format!("{ids}-1"))]), false));
        assert!(
            !flag(&headers(&[("b3", ids)]), false),
            "no flag: the decision"
        );
        assert!(flag(&headers(&[("x-b3-sampled", "true")]), false));
        assert!(!flag(&headers(&[("x-b3-sampled", "yes")]), true));
        assert!(flag(&HeaderMap::new(), true));
    }

    #[test]
    fn injection_replaces_the_context() {
        let mut h = headers(&[("x-b3-spanid", "0000000000000001"), ("b3", "1")]);
        inject(&mut h, (0, 0xab), 0xcd, Some(0xef), false);
        assert_eq!(h["x-b3-traceid"], "00000000000000ab");
        assert_eq!(h["x-b3-spanid"], "00000000000000cd");
        assert_eq!(h["x-b3-parentspanid"], "00000000000000ef");
        assert_eq!(h["x-b3-sampled"], "0");
        assert_eq!(h.get_all("x-b3-spanid").iter().count(), 1);
        inject(&mut h, (1, 2), 3, None, true);
        assert_eq!(h["x-b3-traceid"], "00000000000000010000000000000002");
        assert_eq!(h["x-b3-sampled"], "1");
    }
}
