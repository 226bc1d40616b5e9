//! Envoy's request path normalization: the HCM's `normalize_path` and `merge_slashes`, which
//! Istio sets from `meshConfig.pathNormalization` (its default, BASE, is `normalize_path`).
//! It runs before routing, so that routes, and the upstream, see the normalized path: a
//! request for `/public/../admin` is routed as `/admin`.
//!
//! `normalize_path` is Chromium's URL path canonicalizer, which Envoy uses: `\` is a
//! separator, `.` and `..` segments (also when written `%2e`) are resolved, escapes of
//! unreserved characters are decoded while other escapes are kept as written, and
//! characters a path may not carry are escaped. Invalid UTF-8 fails it (Envoy answers 400).
//!
//! Before either, `path_with_escaped_slashes_action` can decode `%2F` and `%5C` in the path
//! (Istio's `DECODE_AND_MERGE_SLASHES` asks for it), so that `/admin%2Fsecret` is routed,
//! and judged by path-based policies, as `/admin/secret`; or refuse such paths, or redirect
//! them to their decoded form.

use super::local_reply::LocalReply;
use std::borrow::Cow;

/// A path Chromium's canonicalizer fails (an escaped NUL, invalid UTF-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unnormalizable;

/// The HCM's path options.
#[derive(Debug, Clone, Copy, Default)]
pub struct PathNorm {
    /// `normalize_path`.
    pub normalize: bool,
    /// `merge_slashes`.
    pub merge_slashes: bool,
    /// `path_with_escaped_slashes_action`.
    pub escaped_slashes: EscapedSlashes,
}

/// `path_with_escaped_slashes_action` (Envoy's default, and `IMPLEMENTATION_SPECIFIC_DEFAULT`,
/// is to keep them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// `KEEP_UNCHANGED`.
    #[default]
    Keep,
    /// `REJECT_REQUEST`: 400.
    Reject,
    /// `UNESCAPE_AND_REDIRECT`: 307 to the decoded path.
    Redirect,
    /// `UNESCAPE_AND_FORWARD`: route and forward the decoded path.
    Forward,
}

impl EscapedSlashes {
    /// From the proto enum's value.
    pub fn from_proto(v: i32) -> Self {
        match v {
            2 => EscapedSlashes::Reject,
            3 => EscapedSlashes::Redirect,
            4 => EscapedSlashes::Forward,
            _ => EscapedSlashes::Keep,
        }
    }
}

/// A request the path options refuse: Envoy's 400, or its 307 to the decoded path.
#[derive(Debug)]
pub struct Refused {
    /// The reply.
    pub reply: LocalReply,
    /// `Location` of a redirect.
    pub location: Option<String>,
}

/// Decode `%2F`/`%2f` to `/` and `%5C`/`%5c` to `\` in the path (not the query), as Envoy's
/// `PathUtil::unescapeSlashes`; `None` when there were none.
pub fn unescape_slashes(path_and_query: &str) -> Option<String> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let b = path.as_bytes();
    let escaped = |i: usize| match (b.get(i + 1), b.get(i + 2)) {
        (Some(b'2'), Some(b'f' | b'F')) => Some('/'),
        (Some(b'5'), Some(b'c' | b'C')) => Some('\\'),
        _ => None,
    };
    // Allocated at the first escaped slash: most paths have none.
    let mut out: Option<String> = None;
    let (mut i, mut last) = (0, 0);
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(c) = escaped(i) {
                let o = out.get_or_insert_with(|| String::with_capacity(path_and_query.len()));
                o.push_str(&path[last..i]);
                o.push(c);
                i += 3;
                last = i;
                continue;
            }
        }
        i += 1;
    }
    let mut out = out?;
    out.push_str(&path[last..]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

impl PathNorm {
    /// Normalize `req`'s path in place, as Envoy's connection manager does before routing
    /// (`maybeNormalizePath`): escaped slashes first, then `normalize_path`, then
    /// `merge_slashes`. A path that cannot be normalized, or has escaped slashes under
    /// `REJECT_REQUEST`, gets Envoy's 400; under `UNESCAPE_AND_REDIRECT` the client is sent to
    /// the normalized path.
    pub fn apply<B>(self, req: &mut http::Request<B>) -> Result<(), Refused> {
        if !self.normalize && !self.merge_slashes && self.escaped_slashes == EscapedSlashes::Keep {
            return Ok(());
        }
        let Some(pq) = req.uri().path_and_query() else {
            return Ok(());
        };
        // `OPTIONS *` has no path to normalize.
        if pq.as_str() == "*" {
            return Ok(());
        }
        let failed = || Refused {
            reply: LocalReply::with_flags(400, "", vec![]),
            location: None,
        };
        let unescaped = match self.escaped_slashes {
            EscapedSlashes::Keep => None,
            action => match unescape_slashes(pq.as_str()) {
                Some(_) if action == EscapedSlashes::Reject => return Err(failed()),
                u => u,
            },
        };
        let source = unescaped.as_deref().unwrap_or(pq.as_str());
        let new = match normalize(source, self.normalize, self.merge_slashes) {
            Ok(Cow::Borrowed(_)) if unescaped.is_none() => return Ok(()),
            Ok(p) => p.into_owned(),
            Err(Unnormalizable) => return Err(failed()),
        };
        if unescaped.is_some() && self.escaped_slashes == EscapedSlashes::Redirect {
            return Err(Refused {
                reply: LocalReply::with_flags(307, "", vec![]),
                location: Some(new),
            });
        }
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query =
            Some(http::uri::PathAndQuery::from_maybe_shared(new).map_err(|_| failed())?);
        *req.uri_mut() = http::Uri::from_parts(parts).map_err(|_| failed())?;
        Ok(())
    }
}

/// How Chromium's path canonicalizer treats a byte.
#[derive(Clone, Copy, PartialEq)]
enum Class {
    /// Copied.
    Pass,
    /// Percent-encoded.
    Escape,
    /// Copied, and decoded when it arrives escaped (the unreserved characters).
    Unreserved,
}

fn class(b: u8) -> Class {
    match b {
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => Class::Unreserved,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b':' | b';' | b'='
        | b'@' | b'[' | b']' | b'^' | b'|' | b'/' | b'%' => Class::Pass,
        _ => Class::Escape,
    }
}

/// `normalize_path`: the canonical form of `path` (without its query), `Ok(None)` when it
/// is canonical already, `Err` when it cannot be made canonical.
pub fn canonical(path: &str) -> Result<Option<String>, Unnormalizable> {
    let bytes = path.as_bytes();
    // Nearly every path: nothing to resolve, decode or escape.
    let plain = bytes.first() == Some(&b'/')
        && !bytes
            .iter()
            .any(|&b| matches!(b, b'\\' | b'%') || class(b) == Class::Escape)
        && !bytes.split(|&b| b == b'/').any(|seg| dots(seg).is_some());
    if plain {
        return Ok(None);
    }
    let is_slash = |c: u8| c == b'/' || c == b'\\';
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len() + 8);
    out.push(b'/');
    // Where the last `%` that began no escape was written.
    let mut stray: Option<usize> = None;
    // A path that does not start with a slash is read as if it did.
    let mut i = usize::from(bytes.first().is_some_and(|&c| is_slash(c)));
    // At the start of a segment, just after a slash.
    loop {
        let end = bytes[i..]
            .iter()
            .position(|&c| is_slash(c))
            .map_or(bytes.len(), |p| i + p);
        let next = (end + 1).min(bytes.len());
        match dots(&bytes[i..end]) {
            Some(1) => {}
            Some(_) => {
                // Back to the slash before the previous segment (never past the root).
                out.pop();
                while out.last().is_some_and(|&c| c != b'/') {
                    out.pop();
                }
                if out.is_empty() {
                    out.push(b'/');
                }
            }
            None => {
                segment(&bytes[i..end], &mut out, &mut stray)?;
                if end < bytes.len() {
                    out.push(b'/');
                }
            }
        }
        if end >= bytes.len() {
            break;
        }
        i = next;
    }
    let out = String::from_utf8(out).map_err(|_| Unnormalizable)?;
    Ok((out != path).then_some(out))
}

/// Copy one segment (no slashes) in canonical form. `stray` is where the last `%` that
/// began no escape was written.
fn segment(seg: &[u8], out: &mut Vec<u8>, stray: &mut Option<usize>) -> Result<(), Unnormalizable> {
    let mut i = 0;
    while i < seg.len() {
        let b = seg[i];
        if b == b'%' {
            match (seg.get(i + 1), seg.get(i + 2)) {
                (Some(&h), Some(&l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                    let v = (hex(h) << 4) | hex(l);
                    if v == 0 {
                        // An escaped NUL is invalid (Chromium's INVALID_BIT).
                        return Err(Unnormalizable);
                    }
                    if class(v) == Class::Unreserved {
                        // A stray `%` just before would make an escape of what follows
                        // ("%%30%30" would read "%00" next time): Chromium writes it `%25`.
                        // (A `..` may have cut the output back past it since.)
                        let near = |p: usize| out.get(p) == Some(&b'%') && out.len() - p <= 2;
                        if let Some(p) = stray.take().filter(|&p| near(p)) {
                            out.splice(p..=p, *b"%25");
                        }
                        out.push(v);
                    } else {
                        // Kept exactly as written: a server may care about the hex case.
                        out.extend_from_slice(&seg[i..i + 3]);
                    }
                    i += 3;
                }
                // Not an escape: passed through, as browsers other than IE do.
                _ => {
                    *stray = Some(out.len());
                    out.push(b'%');
                    i += 1;
                }
            }
            continue;
        }
        if b == 0 {
            // A NUL, raw or escaped, is invalid (Chromium's INVALID_BIT).
            return Err(Unnormalizable);
        }
        if b < 0x80 {
            match class(b) {
                Class::Escape => push_escaped(out, b),
                _ => out.push(b),
            }
            i += 1;
            continue;
        }
        // Non-ASCII: one UTF-8 character, escaped byte by byte; invalid UTF-8 fails.
        let len = match b {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return Err(Unnormalizable),
        };
        let c = seg.get(i..i + len).ok_or(Unnormalizable)?;
        std::str::from_utf8(c).map_err(|_| Unnormalizable)?;
        c.iter().for_each(|&x| push_escaped(out, x));
        i += len;
    }
    Ok(())
}

/// 1 for a `.` segment, 2 for `..`, with dots written as `.` or `%2e`/`%2E`, and
/// parameters after them ignored (`..;a=b`, as Envoy strips them from dot segments).
fn dots(seg: &[u8]) -> Option<u8> {
    let seg = match seg.iter().position(|&c| c == b';') {
        Some(p) => &seg[..p],
        None => seg,
    };
    let mut n = 0u8;
    let mut i = 0;
    while i < seg.len() {
        if seg[i] == b'.' {
            i += 1;
        } else if seg[i..].len() >= 3
            && seg[i] == b'%'
            && seg[i + 1] == b'2'
            && (seg[i + 2] | 0x20) == b'e'
        {
            i += 3;
        } else {
            return None;
        }
        n += 1;
        if n > 2 {
            return None;
        }
    }
    (n > 0).then_some(n)
}

fn hex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        _ => (c | 0x20) - b'a' + 10,
    }
}

fn push_escaped(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
}

/// `merge_slashes`: runs of `/` made one.
pub fn merge_slashes(path: &str) -> Option<String> {
    if !path.contains("//") {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    Some(out)
}

/// Apply the HCM's normalization to a path with its query: the new path and query when it
/// changed, `Err` when it cannot be normalized.
pub fn normalize<'a>(
    path_and_query: &'a str,
    normalize: bool,
    merge: bool,
) -> Result<Cow<'a, str>, Unnormalizable> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut p: Cow<str> = Cow::Borrowed(path);
    if normalize {
        if let Some(c) = canonical(path)? {
            p = Cow::Owned(c);
        }
    }
    if merge {
        if let Some(m) = merge_slashes(&p) {
            p = Cow::Owned(m);
        }
    }
    Ok(match (p, query) {
        (Cow::Borrowed(_), _) => Cow::Borrowed(path_and_query),
        (Cow::Owned(p), Some(q)) => Cow::Owned(format!("{p}?{q}")),
        (Cow::Owned(p), None) => Cow::Owned(p),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(p: &str) -> String {
        match canonical(p) {
            Ok(Some(s)) => s,
            Ok(None) => p.to_string(),
            Err(Unnormalizable) => "ERR".into(),
        }
    }

    #[test]
    fn dot_segments_resolve_as_in_envoy() {
        // Cases of Envoy's path_utility_test (NormalizeValidPaths).
        for (input, want) in [
            ("/xyz", "/xyz"),
            ("/x/y/z", "/x/y/z"),
            ("/../", "/"),
            ("/..", "/"),
            ("/dir/..", "/"),
            ("/dir/../", "/"),
            ("/dir1/../dir2", "/dir2"),
            ("/dir1/./dir2", "/dir1/dir2"),
            ("/dir1/dir2/..", "/dir1/"),
            ("/dir1/dir2/.", "/dir1/dir2/"),
            ("/./", "/"),
            ("/.", "/"),
            ("/dir1/%2e%2e/dir2", "/dir2"),
            ("/dir1/%2E/dir2", "/dir1/dir2"),
            ("/dir1/.%2e/dir2", "/dir2"),
            ("/dir1\\dir2", "/dir1/dir2"),
            ("/dir1\\..\\dir2", "/dir2"),
            ("/dir1//dir2", "/dir1//dir2"),
            ("/...", "/..."),
            ("/a..b/", "/a..b/"),
            // Envoy's own cases.
            ("/a/b/../c", "/a/c"),
            ("/a/b/./c", "/a/b/c"),
            ("a/b/../c", "/a/c"),
            ("/a/b/../../../../c", "/c"),
            ("/a/..\\c", "/c"),
            ("/%c0%af", "/%c0%af"),
            ("/%5c%25", "/%5c%25"),
            ("/a/b/%2E%2E/c", "/a/c"),
            ("/a/b/%2E./c", "/a/c"),
            ("/a/b/%2E/c", "/a/b/c"),
            ("..", "/"),
            ("/../a/b", "/a/b"),
            ("/./a/b", "/a/b"),
            ("/xyz/..;foo=bar/abc", "/abc"),
            ("/..;foo=bar/abc", "/abc"),
            ("/xyz/..;foo=bar", "/"),
            ("/xyz/.;foo=bar/abc", "/xyz/abc"),
        ] {
            assert_eq!(c(input), want, "{input}");
        }
    }

    #[test]
    fn escapes_are_decoded_only_for_unreserved_characters() {
        assert_eq!(c("/a%7eb%41"), "/a~bA");
        assert_eq!(c("/a%2fb"), "/a%2fb");
        assert_eq!(c("/a%2Fb%3f"), "/a%2Fb%3f");
        assert_eq!(c("/100%"), "/100%");
        assert_eq!(c("/%zz"), "/%zz");
        assert_eq!(c("/a\"b{c}`"), "/a%22b%7Bc%7D%60");
        assert_eq!(c("/caf\u{e9}"), "/caf%C3%A9");
        assert_eq!(canonical("/x"), Ok(None));
        // Envoy's invalid paths: an escaped NUL.
        assert_eq!(c("%33%/%3%33%4"), "/3%/%2533%4");
        // A stray `%` cut off by a `..` is no longer there to escape.
        assert_eq!(c("/a/%/../%41"), "/a/A");
        for p in [
            "/a\0b",
            "/xyz/.%00../abc",
            "/xyz/%00.%00./abc",
            "/xyz/AAAAA%%0000/abc",
        ] {
            assert_eq!(canonical(p), Err(Unnormalizable), "{p}");
        }
    }

    #[test]
    fn merge_and_query() {
        assert_eq!(merge_slashes("//a///b/"), Some("/a/b/".into()));
        assert_eq!(merge_slashes("/a/b"), None);
        assert_eq!(
            normalize("/a/../b?x=/../", true, false).unwrap(),
            "/b?x=/../"
        );
        assert_eq!(normalize("/a//./b", true, true).unwrap(), "/a/b");
        assert_eq!(normalize("/a//b", true, false).unwrap(), "/a//b");
        assert!(matches!(
            normalize("/plain?q", true, true),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn escaped_slashes_are_decoded_refused_or_redirected() {
        assert_eq!(
            unescape_slashes("/a%2Fb%5cc%2f?q=%2F").as_deref(),
            Some("/a/b\\c/?q=%2F"),
            "the query keeps its escapes"
        );
        assert_eq!(unescape_slashes("/a%2Gb%25"), None);
        let run = |action: EscapedSlashes, path: &str| {
            let norm = PathNorm {
                normalize: true,
                merge_slashes: true,
                escaped_slashes: action,
            };
            let mut req = http::Request::get(path).body(()).unwrap();
            match norm.apply(&mut req) {
                Ok(()) => (200, req.uri().to_string()),
                Err(r) => (r.reply.status, r.location.unwrap_or_default()),
            }
        };
        // The path-policy bypass Istio's DECODE_AND_MERGE_SLASHES closes.
        let sneaky = "/public%2F..%2Fadmin?x=1";
        assert_eq!(
            run(EscapedSlashes::Forward, sneaky),
            (200, "/admin?x=1".into())
        );
        assert_eq!(run(EscapedSlashes::Keep, sneaky), (200, sneaky.into()));
        assert_eq!(run(EscapedSlashes::Reject, sneaky), (400, String::new()));
        assert_eq!(
            run(EscapedSlashes::Redirect, sneaky),
            (307, "/admin?x=1".into())
        );
        // Merged after decoding: `%2F%2F` is one slash.
        assert_eq!(
            run(EscapedSlashes::Forward, "/a%2F%2Fb"),
            (200, "/a/b".into())
        );
        // Without escaped slashes nothing is refused or redirected.
        assert_eq!(run(EscapedSlashes::Redirect, "/a/b"), (200, "/a/b".into()));
        assert_eq!(run(EscapedSlashes::Reject, "/a/b"), (200, "/a/b".into()));
    }
}
