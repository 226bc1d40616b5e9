//! What routing reads off a request: the host virtual hosts are matched on, the cluster a
//! forward action picks, the header policies of every level in order, and the upgrade the
//! request asks for.

use super::body::DownstreamBody;
use super::ConnCtx;
use crate::route::action::{split_host_port, ClusterTarget, ForwardAction, WeightedTarget};
use crate::route::headers::HeaderPolicy;
use crate::route::{Route, RouteConfig, VirtualHost};
use http::{HeaderMap, HeaderValue, Request};
use std::borrow::Cow;

/// The Host used for virtual-host matching.
///
/// Borrowed from `host_value` (a cheap clone of the request's Host header, so the request
/// itself can still be moved) when there is one, which is the common case.
pub(super) fn request_host<'a>(
    ctx: &ConnCtx,
    req: &Request<DownstreamBody>,
    host_value: &'a Option<HeaderValue>,
) -> Cow<'a, str> {
    let raw: Cow<'a, str> = match host_value.as_ref().and_then(|v| v.to_str().ok()) {
        Some(h) => Cow::Borrowed(h),
        None => Cow::Owned(
            req.uri()
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default(),
        ),
    };
    // The port is parsed only when a strip option needs it (neither is on by default).
    if ctx.hcm.strip_any_host_port
        || (ctx.hcm.strip_matching_host_port && split_host_port(&raw).1 == Some(ctx.listener_port))
    {
        return match raw {
            Cow::Borrowed(r) => Cow::Borrowed(split_host_port(r).0),
            Cow::Owned(o) => Cow::Owned(split_host_port(&o).0.to_string()),
        };
    }
    raw
}

/// Pick the cluster of a forward action (weighted choice, cluster header).
pub(super) fn choose_cluster<'a>(
    a: &'a ForwardAction,
    headers: &HeaderMap,
) -> (Option<Cow<'a, str>>, Option<&'a WeightedTarget>) {
    let from_header = |h: &http::HeaderName| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(|v| Cow::Owned(v.to_string()))
    };
    match &a.target {
        ClusterTarget::Name(n) => (Some(Cow::Borrowed(n.as_str())), None),
        ClusterTarget::Header(h) => (from_header(h), None),
        ClusterTarget::Weighted { targets, total } => {
            let mut r = fastrand::u64(0..*total);
            for t in targets {
                if r < t.weight {
                    let name = match &t.cluster_header {
                        Some(h) => from_header(h),
                        None => Some(Cow::Borrowed(t.name.as_str())),
                    };
                    return (name, Some(t));
                }
                r -= t.weight;
            }
            (None, None)
        }
    }
}

/// Header policies from most to least specific (Envoy's default order, so the route
/// configuration level wins conflicts).
pub(super) struct Levels<'a> {
    all: [&'a HeaderPolicy; 4],
    skip: usize,
}

impl<'a> Levels<'a> {
    pub(super) fn new(
        wt: Option<&'a WeightedTarget>,
        route: &'a Route,
        vh: &'a VirtualHost,
        rc: &'a RouteConfig,
    ) -> Self {
        // On the stack: no allocation per request.
        match wt {
            Some(w) => Levels {
                all: [&w.headers, &route.headers, &vh.headers, &rc.headers],
                skip: 0,
            },
            None => Levels {
                all: [&route.headers, &route.headers, &vh.headers, &rc.headers],
                skip: 1,
            },
        }
    }

    pub(super) fn as_slice(&self) -> &[&'a HeaderPolicy] {
        &self.all[self.skip..]
    }
}

/// The upgrade type of an HTTP/1.1 `Connection: upgrade` request, if the HCM allows it.
pub(super) fn upgrade_type(req: &Request<DownstreamBody>, allowed: &[String]) -> Option<String> {
    if req.version() != http::Version::HTTP_11 || allowed.is_empty() {
        return None;
    }
    let h = req.headers();
    let conn_upgrade = h
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    let t = h
        .get(http::header::UPGRADE)?
        .to_str()
        .ok()?
        .to_ascii_lowercase();
    (conn_upgrade && allowed.contains(&t)).then_some(t)
}
