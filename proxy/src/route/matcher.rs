//! Envoy's request matchers: StringMatcher, HeaderMatcher (every form, including the deprecated
//! `exact_match` that Istio 1.10 emits, and `invert_match`), query parameters and path matching.

use envoy_types::pb::envoy::config::route::v3 as rpb;
use envoy_types::pb::envoy::r#type::matcher::v3 as mpb;
use http::HeaderMap;
use regex::Regex;

/// Compile an Envoy RE2 regex so it must match the whole input, as Envoy's `safe_regex` does.
pub fn full_regex(re: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{re})$")).map_err(|e| format!("bad regex {re:?}: {e}"))
}

/// `envoy.type.matcher.v3.StringMatcher`.
#[derive(Debug, Clone)]
pub enum StringMatch {
    /// Exact comparison.
    Exact(String, bool),
    /// Prefix comparison.
    Prefix(String, bool),
    /// Suffix comparison.
    Suffix(String, bool),
    /// Substring comparison.
    Contains(String, bool),
    /// Full-string regex (ignore_case does not apply, as in Envoy).
    Regex(Regex),
}

impl StringMatch {
    /// Convert the proto form.
    pub fn from_proto(m: &mpb::StringMatcher) -> Result<Self, String> {
        use mpb::string_matcher::MatchPattern as P;
        let ic = m.ignore_case;
        let low = |s: &String| {
            if ic {
                s.to_ascii_lowercase()
            } else {
                s.clone()
            }
        };
        Ok(match &m.match_pattern {
            Some(P::Exact(s)) => StringMatch::Exact(low(s), ic),
            Some(P::Prefix(s)) => StringMatch::Prefix(low(s), ic),
            Some(P::Suffix(s)) => StringMatch::Suffix(low(s), ic),
            Some(P::Contains(s)) => StringMatch::Contains(low(s), ic),
            Some(P::SafeRegex(r)) => StringMatch::Regex(full_regex(&r.regex)?),
            Some(P::Custom(c)) => {
                return Err(format!("custom string matcher {} unsupported", c.name))
            }
            None => return Err("string matcher without a pattern".into()),
        })
    }

    /// Whether `v` matches.
    pub fn matches(&self, v: &str) -> bool {
        let cmp = |ic: bool| -> std::borrow::Cow<'_, str> {
            if ic {
                v.to_ascii_lowercase().into()
            } else {
                v.into()
            }
        };
        match self {
            StringMatch::Exact(s, ic) => cmp(*ic) == s.as_str(),
            StringMatch::Prefix(s, ic) => cmp(*ic).starts_with(s.as_str()),
            StringMatch::Suffix(s, ic) => cmp(*ic).ends_with(s.as_str()),
            StringMatch::Contains(s, ic) => cmp(*ic).contains(s.as_str()),
            StringMatch::Regex(r) => r.is_match(v),
        }
    }
}

/// How a header value is compared.
#[derive(Debug, Clone)]
enum HeaderKind {
    /// Deprecated `exact_match`: an empty value matches any present header.
    Value(String),
    Regex(Regex),
    Range(i64, i64),
    Present(bool),
    Str(StringMatch),
}

/// What a header matcher reads: a header, or one of the request's pseudo-headers, which
/// Envoy's matchers see as headers (Istio's VirtualService `method` and `authority` matches
/// are `:method` and `:authority` header matchers).
#[derive(Debug, Clone)]
enum Name {
    Header(http::HeaderName),
    Method,
    Authority,
    Path,
    Scheme,
    /// `:status`, which only responses have (a request never matches it).
    Status,
}

/// The request's pseudo-headers, which a `HeaderMap` does not hold.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pseudo<'a> {
    /// `:method`.
    pub method: &'a str,
    /// `:authority` (the Host header for HTTP/1).
    pub authority: Option<&'a str>,
    /// `:path`, query included.
    pub path: &'a str,
    /// `:scheme`: the client's on HTTP/2; on HTTP/1, x-forwarded-proto as the HCM leaves
    /// it (Envoy sets `:scheme` from it), else `https` on a TLS connection, else `http`.
    pub scheme: &'a str,
}

/// `envoy.config.route.v3.HeaderMatcher`.
#[derive(Debug, Clone)]
pub struct HeaderMatch {
    name: Name,
    kind: HeaderKind,
    invert: bool,
    missing_as_empty: bool,
}

impl HeaderMatch {
    /// Convert the proto form.
    pub fn from_proto(h: &rpb::HeaderMatcher) -> Result<Self, String> {
        use rpb::header_matcher::HeaderMatchSpecifier as S;
        let lower = h.name.to_ascii_lowercase();
        let name = match lower.as_str() {
            ":method" => Name::Method,
            ":authority" => Name::Authority,
            ":path" => Name::Path,
            ":scheme" => Name::Scheme,
            ":status" => Name::Status,
            _ => Name::Header(
                http::HeaderName::from_bytes(lower.as_bytes())
                    .map_err(|_| format!("bad header name {:?}", h.name))?,
            ),
        };
        let kind = match &h.header_match_specifier {
            Some(S::ExactMatch(v)) => HeaderKind::Value(v.clone()),
            Some(S::SafeRegexMatch(r)) => HeaderKind::Regex(full_regex(&r.regex)?),
            Some(S::RangeMatch(r)) => HeaderKind::Range(r.start, r.end),
            Some(S::PresentMatch(p)) => HeaderKind::Present(*p),
            Some(S::PrefixMatch(p)) => HeaderKind::Str(StringMatch::Prefix(p.clone(), false)),
            Some(S::SuffixMatch(p)) => HeaderKind::Str(StringMatch::Suffix(p.clone(), false)),
            Some(S::ContainsMatch(p)) => HeaderKind::Str(StringMatch::Contains(p.clone(), false)),
            Some(S::StringMatch(m)) => HeaderKind::Str(StringMatch::from_proto(m)?),
            // No specifier: Envoy treats it as "header present".
            None => HeaderKind::Present(true),
        };
        Ok(HeaderMatch {
            name,
            kind,
            invert: h.invert_match,
            missing_as_empty: h.treat_missing_header_as_empty,
        })
    }

    /// Whether it matches on `:scheme` (a request's scheme is then worked out for routing).
    pub fn reads_scheme(&self) -> bool {
        matches!(self.name, Name::Scheme)
    }

    /// A presence test for header `name`.
    pub fn present(name: &str) -> Result<Self, String> {
        Self::from_proto(&rpb::HeaderMatcher {
            name: name.to_string(),
            header_match_specifier: Some(rpb::header_matcher::HeaderMatchSpecifier::PresentMatch(
                true,
            )),
            ..Default::default()
        })
    }

    /// Envoy's `HeaderUtility::matchHeaders`: values of a repeated header are joined by ",".
    /// Pseudo-headers are missing here (see [`HeaderMatch::matches_in`]).
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        self.matches_in(headers, None)
    }

    /// [`HeaderMatch::matches`], with the request's pseudo-headers.
    pub fn matches_in(&self, headers: &HeaderMap, pseudo: Option<&Pseudo<'_>>) -> bool {
        let value: Option<String> = match &self.name {
            Name::Header(name) => joined(headers, name),
            Name::Method => pseudo.map(|p| p.method.to_string()),
            Name::Authority => pseudo.and_then(|p| p.authority).map(str::to_string),
            Name::Path => pseudo.map(|p| p.path.to_string()),
            Name::Scheme => pseudo.map(|p| p.scheme.to_string()),
            Name::Status => None,
        };
        self.matches_value(value)
    }

    /// Match a response's headers and `:status`.
    pub fn matches_response(&self, headers: &HeaderMap, status: u16) -> bool {
        let value = match &self.name {
            Name::Header(name) => joined(headers, name),
            Name::Status => Some(status.to_string()),
            _ => None,
        };
        self.matches_value(value)
    }

    fn matches_value(&self, value: Option<String>) -> bool {
        let value = match value {
            Some(v) => v,
            None if self.missing_as_empty => String::new(),
            None => {
                // A missing header only satisfies a presence test (inverted or not).
                return match self.kind {
                    HeaderKind::Present(p) => p == self.invert,
                    _ => false,
                };
            }
        };
        let m = match &self.kind {
            HeaderKind::Value(v) => v.is_empty() || *v == value,
            HeaderKind::Regex(r) => r.is_match(&value),
            HeaderKind::Range(s, e) => value.parse::<i64>().is_ok_and(|n| n >= *s && n < *e),
            HeaderKind::Present(p) => *p,
            HeaderKind::Str(s) => s.matches(&value),
        };
        m != self.invert
    }
}

/// Every line of header `name`, joined with commas as Envoy reads a repeated header; `None`
/// when it is absent.
fn joined(headers: &HeaderMap, name: &http::HeaderName) -> Option<String> {
    let mut vals = headers.get_all(name).iter().peekable();
    vals.peek()?;
    Some(
        vals.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// `envoy.config.route.v3.QueryParameterMatcher`.
#[derive(Debug, Clone)]
pub struct QueryMatch {
    name: String,
    /// `None` means present_match.
    value: Option<StringMatch>,
}

impl QueryMatch {
    /// Convert the proto form.
    pub fn from_proto(q: &rpb::QueryParameterMatcher) -> Result<Self, String> {
        use rpb::query_parameter_matcher::QueryParameterMatchSpecifier as S;
        let value = match &q.query_parameter_match_specifier {
            Some(S::StringMatch(m)) => Some(StringMatch::from_proto(m)?),
            Some(S::PresentMatch(_)) | None => None,
        };
        Ok(QueryMatch {
            name: q.name.clone(),
            value,
        })
    }

    /// Whether the first occurrence of the parameter in `query` matches. Names and values
    /// are compared as they are written, escapes and `+` included: Envoy's route matching
    /// parses the query without decoding it (`QueryParamsMulti::parseQueryString`).
    pub fn matches(&self, query: Option<&str>) -> bool {
        let Some(q) = query else { return false };
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == self.name {
                return match &self.value {
                    None => true,
                    Some(m) => m.matches(v),
                };
            }
        }
        false
    }
}

/// Decode %XX escapes (and `+` as space, as query strings use it).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(c) => {
                        out.push(c);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path part of a route match.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// `prefix`.
    Prefix(String),
    /// `path` (exact).
    Exact(String),
    /// `path_separated_prefix`: the prefix followed by end, `/`, `?` or `#`.
    SeparatedPrefix(String),
    /// `safe_regex` on the path without the query.
    Regex(Regex),
}

/// `envoy.config.route.v3.RouteMatch`.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// The path specifier.
    pub path: PathMatch,
    case_sensitive: bool,
    headers: Vec<HeaderMatch>,
    query: Vec<QueryMatch>,
    grpc: bool,
    /// `runtime_fraction` (its default value; there is no runtime layer).
    fraction: Option<crate::proxy::fault::Percent>,
    /// Conditions this proxy never meets, so the route never matches:
    /// - `tls_context` `presented`/`validated: true` (not checked against the peer's
    ///   certificate here);
    /// - a `dynamic_metadata` matcher that is not inverted: no filter here writes dynamic
    ///   metadata, and Envoy's matcher fails on metadata that is absent (`invert` flips it).
    ///   Istio routes on JWT claims this way (`@request.auth.claims.*` header matches), and
    ///   such a route must not take requests that carry no verified claim.
    unmatchable: bool,
}

impl RouteMatch {
    /// Whether a header matcher reads `:scheme`.
    pub fn reads_scheme(&self) -> bool {
        self.headers.iter().any(HeaderMatch::reads_scheme)
    }
}

impl RouteMatch {
    /// Convert the proto form.
    pub fn from_proto(m: &rpb::RouteMatch) -> Result<Self, String> {
        use rpb::route_match::PathSpecifier as P;
        let case_sensitive = m.case_sensitive.as_ref().map(|b| b.value).unwrap_or(true);
        let norm = |s: &String| {
            if case_sensitive {
                s.clone()
            } else {
                s.to_ascii_lowercase()
            }
        };
        let path = match &m.path_specifier {
            Some(P::Prefix(p)) => PathMatch::Prefix(norm(p)),
            Some(P::Path(p)) => PathMatch::Exact(norm(p)),
            Some(P::PathSeparatedPrefix(p)) => PathMatch::SeparatedPrefix(norm(p)),
            Some(P::SafeRegex(r)) => PathMatch::Regex(full_regex(&r.regex)?),
            Some(P::ConnectMatcher(_)) => return Err("connect_matcher is not supported".into()),
            Some(P::PathMatchPolicy(p)) => {
                return Err(format!("path_match_policy {} unsupported", p.name))
            }
            None => return Err("route match without a path specifier".into()),
        };
        Ok(RouteMatch {
            path,
            case_sensitive,
            headers: m
                .headers
                .iter()
                .map(HeaderMatch::from_proto)
                .collect::<Result<_, _>>()?,
            query: m
                .query_parameters
                .iter()
                .map(QueryMatch::from_proto)
                .collect::<Result<_, _>>()?,
            grpc: m.grpc.is_some(),
            fraction: m
                .runtime_fraction
                .as_ref()
                .map(|f| crate::proxy::fault::Percent::from_proto(f.default_value.as_ref())),
            unmatchable: m.tls_context.as_ref().is_some_and(|t| {
                t.presented.as_ref().is_some_and(|p| p.value)
                    || t.validated.as_ref().is_some_and(|v| v.value)
            }) || m.dynamic_metadata.iter().any(|d| !d.invert),
        })
    }

    /// Whether a request with this path (query included, as in `:path`), headers and
    /// pseudo-headers matches.
    pub fn matches(&self, path_and_query: &str, headers: &HeaderMap, pseudo: &Pseudo<'_>) -> bool {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let path = path.split('#').next().unwrap_or(path);
        let folded;
        let cmp = if self.case_sensitive {
            path
        } else {
            folded = path.to_ascii_lowercase();
            &folded
        };
        let path_ok = match &self.path {
            // Envoy matches prefixes against the whole :path, query included.
            PathMatch::Prefix(p) => {
                if self.case_sensitive {
                    path_and_query.starts_with(p.as_str())
                } else {
                    path_and_query.to_ascii_lowercase().starts_with(p.as_str())
                }
            }
            PathMatch::Exact(p) => cmp == p,
            PathMatch::SeparatedPrefix(p) => {
                cmp.starts_with(p.as_str())
                    && matches!(cmp.as_bytes().get(p.len()), None | Some(b'/'))
            }
            PathMatch::Regex(r) => r.is_match(path),
        };
        path_ok
            && !self.unmatchable
            && (!self.grpc || is_grpc(headers))
            && self
                .headers
                .iter()
                .all(|h| h.matches_in(headers, Some(pseudo)))
            && self.query.iter().all(|q| q.matches(query))
            && self.fraction.is_none_or(|f| f.sample())
    }
}

/// Whether the request is gRPC: content-type `application/grpc` or `application/grpc+...`
/// (Envoy's `hasGrpcContentType`; `application/grpc-web` is not gRPC).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.as_bytes().strip_prefix(b"application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'+')
}
