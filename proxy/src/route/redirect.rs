//! Envoy's redirect action (`RedirectAction`): the `Location` its `newUri` builds.

use super::action::envoy_substitution;
use envoy_types::pb::envoy::config::route::v3 as rpb;
use regex::Regex;

/// A redirect answer.
#[derive(Debug, Clone)]
pub struct Redirect {
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    path: Option<String>,
    prefix: Option<String>,
    regex: Option<(Regex, String)>,
    /// Status code (301, 302, 303, 307, 308).
    pub status: u16,
    strip_query: bool,
}

impl Redirect {
    /// Convert the proto form.
    pub fn from_proto(r: &rpb::RedirectAction) -> Result<Self, String> {
        use rpb::redirect_action::{PathRewriteSpecifier as P, SchemeRewriteSpecifier as S};
        let (mut path, mut prefix, mut regex) = (None, None, None);
        match &r.path_rewrite_specifier {
            Some(P::PathRedirect(p)) => path = Some(p.clone()),
            Some(P::PrefixRewrite(p)) => prefix = Some(p.clone()),
            Some(P::RegexRewrite(rr)) => {
                let pat = rr.pattern.as_ref().ok_or("regex_rewrite without pattern")?;
                // Unanchored, a global replace like the route action's (Envoy's
                // `replaceAll`).
                regex = Some((
                    Regex::new(&pat.regex).map_err(|e| format!("regex_rewrite: {e}"))?,
                    envoy_substitution(&rr.substitution),
                ));
            }
            Some(P::PathRewrite(_)) => return Err("path_rewrite in redirect unsupported".into()),
            None => {}
        }
        Ok(Redirect {
            scheme: match &r.scheme_rewrite_specifier {
                Some(S::HttpsRedirect(true)) => Some("https".into()),
                Some(S::SchemeRedirect(s)) => Some(s.clone()),
                _ => None,
            },
            host: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
            port: (r.port_redirect != 0).then_some(r.port_redirect as u16),
            path,
            prefix,
            regex,
            status: match r.response_code {
                1 => 302,
                2 => 303,
                3 => 307,
                4 => 308,
                _ => 301,
            },
            strip_query: r.strip_query,
        })
    }

    /// The Location for a request to `scheme://host` + `path_and_query`, of which the route
    /// matched `matched` bytes ([`super::Route::matched_len`]), as Envoy's `newUri` builds it:
    /// - the scheme is the redirect's, else the request's;
    /// - the host is `host_redirect` verbatim, else the request's Host, whose port goes when
    ///   a `port_redirect` is given or the scheme changes from one whose default port it is;
    /// - a `port_redirect` is always written out;
    /// - the query stays unless `strip_query`, or the `path_redirect` brings its own.
    pub fn location(
        &self,
        scheme: &str,
        host: &str,
        path_and_query: &str,
        matched: usize,
    ) -> String {
        let new_scheme = self.scheme.as_deref().unwrap_or(scheme);
        let host_part = match &self.host {
            Some(h) => h.as_str(),
            None => {
                let (bare, port) = split_host_port(host);
                let default_port =
                    matches!((scheme, port), ("http", Some(80)) | ("https", Some(443)));
                if self.port.is_some() || (new_scheme != scheme && default_port) {
                    bare
                } else {
                    host
                }
            }
        };
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let mut new_path = if let Some(p) = &self.path {
            p.clone()
        } else if let Some(pre) = &self.prefix {
            format!("{pre}{}", path.get(matched..).unwrap_or(""))
        } else if let Some((re, sub)) = &self.regex {
            re.replace_all(path, sub.as_str()).into_owned()
        } else {
            path.to_string()
        };
        if !self.strip_query && !new_path.contains('?') {
            if let Some(q) = query {
                new_path = format!("{new_path}?{q}");
            }
        }
        format!("{new_scheme}://{host_part}{port}{new_path}")
    }
}

/// Split `host[:port]` (IPv6 `[a::b]:port` aware).
pub fn split_host_port(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once(']') {
            let port = p.strip_prefix(':').and_then(|p| p.parse().ok());
            return (&host[..h.len() + 2], port);
        }
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (host, None),
        },
        _ => (host, None),
    }
}
