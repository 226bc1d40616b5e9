//! Envoy HTTP routing: route configurations, virtual-host selection by Host, route matching and
//! actions. Built once per config snapshot from `envoy.config.route.v3.RouteConfiguration`.

pub mod action;
pub mod headers;
pub mod matcher;
pub mod redirect;
pub mod retry;
pub mod stream_duration;
#[cfg(test)]
mod tests;

use crate::proxy::cors::CorsPolicy;
use crate::proxy::fault::FaultConfig;
use crate::proxy::mirror::MirrorPolicy;
use action::{Action, ForwardAction, Redirect, RetryPolicy};
use envoy_types::pb::envoy::config::route::v3 as rpb;
use headers::HeaderPolicy;
use matcher::{PathMatch, RouteMatch};
use std::collections::HashMap;
use std::sync::Arc;

/// Per-filter overrides that may sit on a route config, virtual host, route or weighted cluster.
#[derive(Debug, Clone, Default)]
pub struct FilterOverrides {
    /// `envoy.filters.http.fault`.
    pub fault: Option<Arc<FaultConfig>>,
    /// `envoy.filters.http.cors` (or the legacy `cors` field).
    pub cors: Option<Arc<CorsPolicy>>,
}

impl FilterOverrides {
    fn from_proto(
        per_filter: &HashMap<String, envoy_types::pb::google::protobuf::Any>,
        legacy_cors: Option<&rpb::CorsPolicy>,
    ) -> Result<Self, String> {
        let mut o = FilterOverrides::default();
        for (name, any) in per_filter {
            if crate::config::decode::parked_type(any).is_some() {
                tracing::debug!(filter = %name, "skipping per-filter config of an unknown type");
                continue;
            }
            match name.as_str() {
                "envoy.filters.http.fault" | "envoy.fault" => {
                    o.fault = Some(Arc::new(FaultConfig::from_any(any)?));
                }
                "envoy.filters.http.cors" | "envoy.cors" => {
                    o.cors = Some(Arc::new(CorsPolicy::from_any(any)?));
                }
                _ => tracing::debug!(filter = %name, "per-filter config ignored"),
            }
        }
        if o.cors.is_none() {
            if let Some(c) = legacy_cors {
                o.cors = Some(Arc::new(CorsPolicy::from_proto(c)?));
            }
        }
        Ok(o)
    }
}

/// One route of a virtual host.
#[derive(Debug, Clone)]
pub struct Route {
    /// Route name (may be empty).
    pub name: String,
    /// Match conditions.
    pub matcher: RouteMatch,
    /// What to do.
    pub action: Action,
    /// Route-level header mutations.
    pub headers: HeaderPolicy,
    /// Per-filter overrides.
    pub filters: FilterOverrides,
    /// `decorator`: the operation name of the request's trace span, and whether it is passed
    /// on in `x-envoy-decorator-operation` (only read when the HCM traces).
    pub decorator: Option<(Arc<str>, bool)>,
}

impl Route {
    /// How much of `path_and_query` the route matched, which `prefix_rewrite` replaces: the
    /// prefix of a prefix route, the whole path (without the query) of an exact or regex
    /// route, as in Envoy's `rewritePathHeader` of each route kind.
    pub fn matched_len(&self, path_and_query: &str) -> usize {
        let path_len = path_and_query
            .find(['?', '#'])
            .unwrap_or(path_and_query.len());
        match &self.matcher.path {
            PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p) | PathMatch::Exact(p) => {
                p.len().min(path_len)
            }
            PathMatch::Regex(_) => path_len,
        }
    }
}

/// A virtual host.
#[derive(Debug, Clone)]
pub struct VirtualHost {
    /// Name.
    pub name: String,
    /// Domains as configured (lower-cased).
    pub domains: Vec<String>,
    /// Routes in order; the first match wins.
    pub routes: Vec<Route>,
    /// Vhost-level header mutations.
    pub headers: HeaderPolicy,
    /// Vhost retry policy (used when the route has none).
    pub retry: Option<RetryPolicy>,
    /// Per-filter overrides.
    pub filters: FilterOverrides,
    /// `include_request_attempt_count`: send `x-envoy-attempt-count` upstream (Istio sets it).
    pub attempt_count_in_request: bool,
    /// `include_attempt_count_in_response`: return `x-envoy-attempt-count` downstream.
    pub attempt_count_in_response: bool,
    /// `request_mirror_policies`, for routes without their own.
    pub mirrors: Vec<MirrorPolicy>,
    /// `require_tls`: which plaintext requests get a redirect to https instead of a route.
    pub require_tls: RequireTls,
}

/// `VirtualHost.require_tls` (Istio's Gateway `tls.httpsRedirect` sets `ALL`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RequireTls {
    /// No requirement.
    #[default]
    None,
    /// Requests from outside (not marked `x-envoy-internal`) must be https.
    ExternalOnly,
    /// Every request must be https.
    All,
}

impl VirtualHost {
    /// Whether a request of `scheme` (as `x-forwarded-proto` says it, see Envoy's
    /// `getRouteFromEntries`) gets a 301 to https before any route is looked at; `internal`
    /// is whether the connection manager marked it `x-envoy-internal`.
    pub fn redirects_to_https(&self, scheme: &str, internal: bool) -> bool {
        match self.require_tls {
            RequireTls::None => false,
            RequireTls::ExternalOnly => scheme != "https" && !internal,
            RequireTls::All => scheme != "https",
        }
    }

    /// The first route that matches.
    pub fn route(
        &self,
        path_and_query: &str,
        headers: &http::HeaderMap,
        pseudo: &matcher::Pseudo<'_>,
    ) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.matcher.matches(path_and_query, headers, pseudo))
    }
}

/// A compiled `RouteConfiguration`.
#[derive(Debug, Clone, Default)]
pub struct RouteConfig {
    /// Name.
    pub name: String,
    /// All virtual hosts.
    pub vhosts: Vec<VirtualHost>,
    exact: HashMap<String, usize>,
    /// `*.suffix` wildcards, longest first: (suffix without `*`, vhost).
    suffix: Vec<(String, usize)>,
    /// `prefix.*` wildcards, longest first.
    prefix: Vec<(String, usize)>,
    default: Option<usize>,
    /// Route-config-level header mutations.
    pub headers: HeaderPolicy,
    /// `request_mirror_policies`, for virtual hosts and routes without their own.
    pub mirrors: Vec<MirrorPolicy>,
    ignore_port: bool,
    /// Some route matches on `:scheme`: only then is a request's scheme worked out.
    pub reads_scheme: bool,
}

impl RouteConfig {
    /// Compile a route configuration; errors are config errors (validate reports them).
    pub fn from_proto(rc: &rpb::RouteConfiguration) -> Result<Self, String> {
        let mut cfg = RouteConfig {
            name: rc.name.clone(),
            headers: HeaderPolicy::from_proto(
                &rc.request_headers_to_add,
                &rc.request_headers_to_remove,
                &rc.response_headers_to_add,
                &rc.response_headers_to_remove,
            )?,
            mirrors: MirrorPolicy::from_protos(&rc.request_mirror_policies)?,
            ignore_port: rc.ignore_port_in_host_matching,
            ..Default::default()
        };
        for (i, vh) in rc.virtual_hosts.iter().enumerate() {
            let vhost = VirtualHost::from_proto(vh)
                .map_err(|e| format!("virtual host {:?}: {e}", vh.name))?;
            for d in &vhost.domains {
                let dup = if d == "*" {
                    cfg.default.replace(i).is_some()
                } else if let Some(s) = d.strip_prefix('*') {
                    cfg.suffix.iter().any(|(x, _)| x == s) || {
                        cfg.suffix.push((s.to_string(), i));
                        false
                    }
                } else if let Some(p) = d.strip_suffix('*') {
                    cfg.prefix.iter().any(|(x, _)| x == p) || {
                        cfg.prefix.push((p.to_string(), i));
                        false
                    }
                } else {
                    cfg.exact.insert(d.clone(), i).is_some()
                };
                if dup {
                    return Err(format!(
                        "route config {:?}: domain {d:?} appears in two virtual hosts",
                        rc.name
                    ));
                }
            }
            cfg.vhosts.push(vhost);
        }
        cfg.reads_scheme = cfg
            .vhosts
            .iter()
            .flat_map(|v| &v.routes)
            .any(|r| r.matcher.reads_scheme());
        cfg.suffix.sort_by_key(|x| std::cmp::Reverse(x.0.len()));
        cfg.prefix.sort_by_key(|x| std::cmp::Reverse(x.0.len()));
        Ok(cfg)
    }

    /// Envoy's vhost selection: exact, then longest `*suffix`, then longest `prefix*`, then `*`.
    pub fn select_vhost(&self, host: &str) -> Option<&VirtualHost> {
        // Lower-case (allocating) only when the Host has upper-case letters.
        let lower;
        let mut host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        if self.ignore_port {
            host = action::split_host_port(host).0;
        }
        if let Some(i) = self.exact.get(host) {
            return Some(&self.vhosts[*i]);
        }
        // A wildcard must stand for at least one character.
        for (s, i) in &self.suffix {
            if host.len() > s.len() && host.ends_with(s.as_str()) {
                return Some(&self.vhosts[*i]);
            }
        }
        for (p, i) in &self.prefix {
            if host.len() > p.len() && host.starts_with(p.as_str()) {
                return Some(&self.vhosts[*i]);
            }
        }
        self.default.map(|i| &self.vhosts[i])
    }

    /// Find the vhost and the first matching route.
    pub fn route(
        &self,
        host: &str,
        path_and_query: &str,
        headers: &http::HeaderMap,
        pseudo: &matcher::Pseudo<'_>,
    ) -> Option<(&VirtualHost, &Route)> {
        let vh = self.select_vhost(host)?;
        Some((vh, vh.route(path_and_query, headers, pseudo)?))
    }
}

impl VirtualHost {
    fn from_proto(vh: &rpb::VirtualHost) -> Result<Self, String> {
        let mut routes = Vec::new();
        for (i, r) in vh.routes.iter().enumerate() {
            routes.push(
                Route::from_proto(r).map_err(|e| format!("route {} ({:?}): {e}", i, r.name))?,
            );
        }
        Ok(VirtualHost {
            name: vh.name.clone(),
            domains: vh.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            routes,
            headers: HeaderPolicy::from_proto(
                &vh.request_headers_to_add,
                &vh.request_headers_to_remove,
                &vh.response_headers_to_add,
                &vh.response_headers_to_remove,
            )?,
            retry: vh.retry_policy.as_ref().map(RetryPolicy::from_proto),
            filters: FilterOverrides::from_proto(&vh.typed_per_filter_config, vh.cors.as_ref())?,
            attempt_count_in_request: vh.include_request_attempt_count,
            attempt_count_in_response: vh.include_attempt_count_in_response,
            mirrors: MirrorPolicy::from_protos(&vh.request_mirror_policies)?,
            require_tls: match vh.require_tls {
                1 => RequireTls::ExternalOnly,
                2 => RequireTls::All,
                _ => RequireTls::None,
            },
        })
    }
}

impl Route {
    fn from_proto(r: &rpb::Route) -> Result<Self, String> {
        use rpb::route::Action as A;
        let m = r.r#match.as_ref().ok_or("route without match")?;
        let mut filters = FilterOverrides::from_proto(&r.typed_per_filter_config, None)?;
        let action = match &r.action {
            Some(A::Route(ra)) => {
                if filters.cors.is_none() {
                    if let Some(c) = &ra.cors {
                        filters.cors = Some(Arc::new(CorsPolicy::from_proto(c)?));
                    }
                }
                Action::Forward(Box::new(ForwardAction::from_proto(ra)?))
            }
            Some(A::Redirect(rd)) => Action::Redirect(Redirect::from_proto(rd)?),
            Some(A::DirectResponse(d)) => Action::Direct {
                status: u16::try_from(d.status)
                    .ok()
                    .filter(|s| (100..=599).contains(s))
                    .ok_or("bad direct_response status")?,
                body: d
                    .body
                    .as_ref()
                    .map(data_source)
                    .transpose()?
                    .unwrap_or_default(),
            },
            Some(A::NonForwardingAction(_)) => Action::Direct {
                status: 404,
                body: Default::default(),
            },
            Some(A::FilterAction(_)) => return Err("filter_action routes are not supported".into()),
            None => return Err("route without action".into()),
        };
        Ok(Route {
            name: r.name.clone(),
            matcher: RouteMatch::from_proto(m)?,
            action,
            headers: HeaderPolicy::from_proto(
                &r.request_headers_to_add,
                &r.request_headers_to_remove,
                &r.response_headers_to_add,
                &r.response_headers_to_remove,
            )?,
            filters,
            decorator: r
                .decorator
                .as_ref()
                .filter(|d| !d.operation.is_empty())
                .map(|d| {
                    (
                        d.operation.as_str().into(),
                        d.propagate.as_ref().is_none_or(|p| p.value),
                    )
                }),
        })
    }
}

/// Read a `DataSource` (inline or file; files are read once at config time).
pub fn data_source(
    d: &envoy_types::pb::envoy::config::core::v3::DataSource,
) -> Result<bytes::Bytes, String> {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier as S;
    Ok(match &d.specifier {
        Some(S::InlineBytes(b)) => b.clone().into(),
        Some(S::InlineString(s)) => s.clone().into(),
        Some(S::Filename(f)) => std::fs::read(f).map_err(|e| format!("{f}: {e}"))?.into(),
        Some(S::EnvironmentVariable(v)) => std::env::var(v)
            .map_err(|_| format!("env {v} unset"))?
            .into(),
        None => bytes::Bytes::new(),
    })
}
