//! `envoy.filters.http.cors`: preflight answers and response headers for allowed origins.

use crate::config::decode;
use crate::proxy::fault::Percent;
use crate::route::matcher::StringMatch;
use envoy_types::pb::envoy::config::route::v3 as rpb;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3 as cpb;
use http::{HeaderMap, HeaderValue, Method};

/// A compiled CORS policy.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    origins: Vec<StringMatch>,
    allow_methods: String,
    allow_headers: String,
    expose_headers: String,
    max_age: String,
    allow_credentials: bool,
    enabled: Percent,
    forward_not_matching_preflights: bool,
}

impl CorsPolicy {
    /// Decode the per-filter form.
    pub fn from_any(any: &envoy_types::pb::google::protobuf::Any) -> Result<Self, String> {
        let c: cpb::CorsPolicy = decode::unpack(any)?;
        Ok(CorsPolicy {
            origins: c
                .allow_origin_string_match
                .iter()
                .map(StringMatch::from_proto)
                .collect::<Result<_, _>>()?,
            allow_methods: c.allow_methods,
            allow_headers: c.allow_headers,
            expose_headers: c.expose_headers,
            max_age: c.max_age,
            allow_credentials: c.allow_credentials.is_some_and(|b| b.value),
            enabled: Percent::from_proto(
                c.filter_enabled
                    .as_ref()
                    .and_then(|f| f.default_value.as_ref()),
            ),
            forward_not_matching_preflights: c
                .forward_not_matching_preflights
                .as_ref()
                .is_none_or(|b| b.value),
        })
    }

    /// Convert the legacy route/vhost `cors` field.
    pub fn from_proto(c: &rpb::CorsPolicy) -> Result<Self, String> {
        let enabled = match &c.enabled_specifier {
            Some(rpb::cors_policy::EnabledSpecifier::FilterEnabled(f)) => {
                Percent::from_proto(f.default_value.as_ref())
            }
            None => Percent::from_proto(None),
        };
        Ok(CorsPolicy {
            origins: c
                .allow_origin_string_match
                .iter()
                .map(StringMatch::from_proto)
                .collect::<Result<_, _>>()?,
            allow_methods: c.allow_methods.clone(),
            allow_headers: c.allow_headers.clone(),
            expose_headers: c.expose_headers.clone(),
            max_age: c.max_age.clone(),
            allow_credentials: c.allow_credentials.as_ref().is_some_and(|b| b.value),
            enabled,
            forward_not_matching_preflights: c
                .forward_not_matching_preflights
                .as_ref()
                .is_none_or(|b| b.value),
        })
    }

    fn allowed_origin<'a>(&self, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
        let origin = headers.get(http::header::ORIGIN)?;
        let o = origin.to_str().ok()?;
        self.origins.iter().any(|m| m.matches(o)).then_some(origin)
    }

    /// For a CORS preflight, the response headers to answer with directly. `Some(None)` means
    /// "preflight from a disallowed origin that must not be forwarded" (answer 200 without CORS
    /// headers); `None` means "not a preflight we handle; forward".
    pub fn preflight(&self, method: &Method, headers: &HeaderMap) -> Option<Option<HeaderMap>> {
        if method != Method::OPTIONS
            || !headers.contains_key(http::header::ORIGIN)
            || !headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
            || !self.enabled.sample()
        {
            return None;
        }
        let Some(origin) = self.allowed_origin(headers) else {
            return if self.forward_not_matching_preflights {
                None
            } else {
                Some(None)
            };
        };
        let mut h = HeaderMap::new();
        h.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        let mut put = |name: http::HeaderName, v: &str| {
            if let Ok(v) = HeaderValue::from_str(v) {
                if !v.is_empty() {
                    h.insert(name, v);
                }
            }
        };
        put(
            http::header::ACCESS_CONTROL_ALLOW_METHODS,
            &self.allow_methods,
        );
        put(
            http::header::ACCESS_CONTROL_ALLOW_HEADERS,
            &self.allow_headers,
        );
        put(http::header::ACCESS_CONTROL_MAX_AGE, &self.max_age);
        if self.allow_credentials {
            put(http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
        }
        Some(Some(h))
    }

    /// Add CORS headers to a forwarded response for an allowed origin.
    pub fn decorate(&self, req_headers: &HeaderMap, resp: &mut HeaderMap) {
        let Some(origin) = self.allowed_origin(req_headers) else {
            return;
        };
        resp.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if self.allow_credentials {
            resp.insert(
                http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Ok(v) = HeaderValue::from_str(&self.expose_headers) {
            if !v.is_empty() {
                resp.insert(http::header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
            }
        }
    }
}
