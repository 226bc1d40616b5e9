//! Authentication filters mosn cannot run, made to fail closed as Envoy does when they
//! cannot decide: Istio's RequestAuthentication (`envoy.filters.http.jwt_authn`) and CUSTOM
//! AuthorizationPolicy (`envoy.filters.http.ext_authz`). Skipping them would let every request
//! through.
//!
//! - JWT: a request without a token passes (Istio's providers allow a missing one, and RBAC
//!   then sees no request principal, as here); a request that carries one is refused with
//!   Envoy's 401 `Jwt verification fails`, since mosn cannot verify it.
//! - ext_authz: every request is treated as if the authorization service could not be
//!   reached: 403 (response flag UAEX), or let through with `failure_mode_allow`.

use crate::config::decode;
use envoy_types::pb::envoy::extensions::filters::http::{
    ext_authz::v3 as authz, jwt_authn::v3 as jwt,
};
use envoy_types::pb::google::protobuf::Any;
use http::HeaderMap;

/// The JWT filter's `@type`.
pub const JWT_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
/// The ext_authz filter's `@type`.
pub const EXT_AUTHZ_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";

/// Where the configured providers look for a token.
#[derive(Debug, Default)]
pub struct JwtTokens {
    /// Header name (lowercase) and value prefix.
    headers: Vec<(http::HeaderName, String)>,
    /// Query parameters.
    params: Vec<String>,
    /// Cookies.
    cookies: Vec<String>,
}

impl JwtTokens {
    /// The token locations of every provider (Envoy's defaults, `Authorization: Bearer` and
    /// `access_token`, for a provider that names none).
    pub fn from_any(any: &Any) -> Result<Self, String> {
        let cfg: jwt::JwtAuthentication = decode::unpack(any)?;
        let mut t = JwtTokens::default();
        for p in cfg.providers.values() {
            if p.from_headers.is_empty() && p.from_params.is_empty() && p.from_cookies.is_empty() {
                t.headers
                    .push((http::header::AUTHORIZATION, "Bearer ".into()));
                t.params.push("access_token".into());
            }
            for h in &p.from_headers {
                let name = http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("jwt_authn: bad header name {:?}", h.name))?;
                t.headers.push((name, h.value_prefix.clone()));
            }
            t.params.extend(p.from_params.iter().cloned());
            t.cookies.extend(p.from_cookies.iter().cloned());
        }
        Ok(t)
    }

    /// Whether the request carries a token where a provider looks for one.
    pub fn present(&self, headers: &HeaderMap, path: &str) -> bool {
        let in_header = self.headers.iter().any(|(name, prefix)| {
            headers.get_all(name).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.starts_with(prefix.as_str()) && v.len() > prefix.len())
            })
        });
        let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
        let in_param = query.split('&').any(|kv| {
            self.params.iter().any(|p| {
                kv.split_once('=')
                    .is_some_and(|(k, v)| k == p && !v.is_empty())
            })
        });
        let in_cookie = !self.cookies.is_empty()
            && headers.get_all(http::header::COOKIE).iter().any(|v| {
                v.to_str().is_ok_and(|c| {
                    c.split(';').any(|kv| {
                        kv.trim()
                            .split_once('=')
                            .is_some_and(|(k, _)| self.cookies.iter().any(|n| n == k))
                    })
                })
            });
        in_header || in_param || in_cookie
    }
}

/// ext_authz's `failure_mode_allow`.
pub fn ext_authz_allows(any: &Any) -> Result<bool, String> {
    decode::unpack::<authz::ExtAuthz>(any).map(|c| c.failure_mode_allow)
}
