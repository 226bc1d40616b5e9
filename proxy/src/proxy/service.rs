//! The HTTP connection manager for one request: route lookup, fault and CORS filters, the
//! route's action, header mutations at every level, and Envoy's local replies.

use super::access_log;
use super::body::{full, BoxBody, DownstreamBody};
use super::control_headers;
use super::hcm::HttpFilter;
use super::head_checks;
use super::local_reply::{Flag, LocalReply, ResponseFlags};
use super::route_inputs::{choose_cluster, request_host, upgrade_type, Levels};
use super::router::{self, Downstream};
use super::upstream_headers::{
    append_via, append_xff, ensure_request_id, forwarded_proto, prepare_upstream_headers,
    remote_address, X_REQUEST_ID,
};
use super::ConnCtx;
use crate::route::action::Action;
use crate::route::matcher::Pseudo;
use crate::route::RequireTls;
use http::{HeaderMap, HeaderValue, Request, Response};
use std::sync::Arc;

/// Handle one downstream request (its body `None` when it has none); never fails (errors
/// become local replies). `checked`: the head is known to pass `head_checks` already.
pub async fn handle(
    ctx: Arc<ConnCtx>,
    mut req: Request<DownstreamBody>,
    checked: bool,
) -> Response<BoxBody> {
    let stats = &ctx.stats;
    stats.rq_total.inc();
    if ctx.hcm.use_remote_address {
        super::upstream_headers::mark_edge_request(&ctx, req.headers_mut());
    }
    if let Some(via) = &ctx.hcm.via {
        append_via(req.headers_mut(), via);
    }
    // Before tracing, routing and logging, as Envoy's connection manager: control headers
    // only from the trusted.
    let control = control_headers::sanitize(
        req.headers_mut(),
        ctx.peer.ip(),
        ctx.hcm.use_remote_address,
        &ctx.hcm.internal,
    );
    // Envoy's connection manager gives every request its id first (unless
    // `generate_request_id` is off): the trace decision is read from it, and the access log,
    // the response and the upstream all see the same one.
    ensure_request_id(&ctx.hcm, req.headers_mut());
    // A tracing HCM settles the sampling decision next: the access log and the upstream see
    // the id with its trace mark.
    let mut span = ctx
        .hcm
        .tracing
        .as_deref()
        .and_then(|t| super::trace::begin(&ctx, t, &mut req));
    // Istio's metadata exchange, request side (the client's taken off, ours put on).
    let istio = &ctx.hcm.istio;
    let mut exchange = istio
        .on()
        .then(|| istio.request(ctx.store.istio_local(), req.headers_mut()));
    let mut telemetry = istio.stats.then(|| {
        let t = super::istio::Telemetry::start(istio, &ctx.store, &req, ctx.tls.as_deref());
        Box::new(t)
    });
    // `always_set_request_id_in_response`, or a (trusted) `x-envoy-force-trace`, as Envoy's
    // mutateResponseHeaders: the id is settled now, for the response.
    let force_trace = control && req.headers().contains_key(super::trace::FORCE_TRACE);
    let id_for_response = (ctx.hcm.request_id_in_response || force_trace)
        .then(|| req.headers().get(X_REQUEST_ID).cloned())
        .flatten();
    // Access logging costs nothing unless the HCM has loggers. A sampled span ends with the
    // record; an unsampled one only carries its context.
    let sampled = span.as_ref().is_some_and(|s| s.sampled);
    let mut record = (!ctx.hcm.access_logs.is_empty() || sampled || istio.stats).then(|| {
        // Only loggers print the remote address (Istio's stats and spans keep a record too).
        let effective = if ctx.hcm.access_logs.is_empty() {
            ctx.peer
        } else {
            super::upstream_headers::final_remote(&ctx, req.headers())
        };
        access_log::Record::start(
            &req,
            ctx.original_dst,
            access_log::Remote {
                effective,
                direct: ctx.direct_peer,
            },
            ctx.tls.as_ref(),
            ctx.hcm.access_logs.clone(),
        )
    });
    // The inline HTTP/1 codec saw whether its head passes while parsing it (`checked`).
    let mut refused = if checked {
        None
    } else {
        head_checks::check(&ctx.hcm.http1, &mut req).err()
    };
    if refused.is_none() && ctx.hcm.underscores != head_checks::Underscores::Allow {
        let codec = usize::from(req.version() >= http::Version::HTTP_2);
        match ctx.hcm.underscores.apply(&mut req) {
            Ok(0) => {}
            Ok(n) => ctx.stats.underscores_dropped[codec].add(n as u64),
            Err(r) => {
                ctx.stats.underscores_rejected[codec].inc();
                refused = Some(r);
            }
        }
    }
    // The body's bytes count into the log record; the request is not rebuilt for it (each
    // rebuild was two copies of the whole request).
    if let Some(r) = record.as_mut() {
        req.body_mut().count_into(r.received());
        // The span and Istio's telemetry ride in the record from here, so that a request the
        // client gives up on is still counted and traced (as Envoy does: code 0, flag DC).
        r.span = span.take();
        r.istio = telemetry.take();
        r.forced_trace = ctx.hcm.tracing.is_some() && super::trace::forced(req.headers());
    }
    let mut info = access_log::RouteInfo::default();
    // The request is active until its response body ends, or until hyper drops this future
    // because the client went away: a drop guard covers both.
    // A proxied response's body takes the guard into its own box (see router::forward);
    // other responses are wrapped here.
    let mut active = Some(ActiveGauge::new(ctx.clone()));
    let h1 = req.version() < http::Version::HTTP_2;
    let logging = record.is_some();
    let mut resp = match refused {
        None => {
            let info = logging.then_some(&mut info);
            let span = live_span(&mut record, &mut span);
            route_request(&ctx, req, &mut active, info, control, span).await
        }
        Some(r) => {
            if r.protocol_error {
                stats.cx_protocol_error.inc();
            }
            let mut resp = r.reply.into_response(&ctx.hcm.server_name, r.grpc, None);
            // The rest of an HTTP/1 connection cannot be trusted after a refused head.
            if h1 {
                resp.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    };
    stats.status(resp.status().as_u16());
    if let Some(s) = live_span(&mut record, &mut span) {
        s.response(resp.headers_mut());
    }
    if let Some(ex) = exchange.as_mut() {
        istio.response(ctx.store.istio_local(), ex, resp.headers_mut());
    }
    if let Some(id) = id_for_response {
        resp.headers_mut().insert("x-request-id", id);
    }
    if let Some(via) = &ctx.hcm.via {
        append_via(resp.headers_mut(), via);
    }
    let mut resp = match active {
        Some(active) => {
            let (parts, body) = resp.into_parts();
            Response::from_parts(parts, super::body::Guarded::wrap(body, active))
        }
        None => resp,
    };
    // Envoy stamps its server name on responses unless told to pass the upstream's through.
    // The lookup only for APPEND_IF_ABSENT: the default (OVERWRITE) needs none.
    if ctx.hcm.server_header == 0
        || (ctx.hcm.server_header == 1 && !resp.headers().contains_key(http::header::SERVER))
    {
        if let Some(v) = &ctx.hcm.server_value {
            resp.headers_mut().insert(http::header::SERVER, v.clone());
        }
    }
    // `Connection` is illegal in HTTP/2; hyper sends GOAWAY for h2 connections instead.
    if h1 && ctx.draining.borrow().is_draining() {
        // Draining: ask HTTP/1 clients to reconnect elsewhere (h2 gets GOAWAY from hyper).
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(mut rec) = record.take() {
        let (parts, body) = resp.into_parts();
        let flags = parts
            .extensions
            .get::<ResponseFlags>()
            .map_or("", |f| f.0.as_str());
        if let (Some(t), Some(ex)) = (rec.istio.as_mut(), exchange) {
            t.peer = ex.peer;
        }
        rec.response(&parts, flags, info);
        return Response::from_parts(parts, access_log::Logged::wrap(body, rec));
    }
    resp
}

/// The request's span: in its log record once it has one (so that it ends with the record),
/// else on its own.
fn live_span<'a>(
    record: &'a mut Option<access_log::Record>,
    span: &'a mut Option<Box<super::trace::Span>>,
) -> Option<&'a mut super::trace::Span> {
    match record {
        Some(r) => r.span.as_deref_mut(),
        None => span.as_deref_mut(),
    }
}

/// A request in flight: `downstream_rq_active` and the connection's activity (its idle
/// timer) count it from now until this is dropped.
pub struct ActiveGauge(Arc<ConnCtx>);

impl ActiveGauge {
    fn new(ctx: Arc<ConnCtx>) -> Self {
        ctx.stats.rq_active.inc();
        ctx.activity.start();
        ActiveGauge(ctx)
    }
}

impl Drop for ActiveGauge {
    fn drop(&mut self) {
        self.0.stats.rq_active.dec();
        self.0.activity.end();
    }
}

async fn route_request(
    ctx: &ConnCtx,
    mut req: Request<DownstreamBody>,
    active: &mut Option<ActiveGauge>,
    mut info: Option<&mut access_log::RouteInfo>,
    control: bool,
    mut span: Option<&mut super::trace::Span>,
) -> Response<BoxBody> {
    let snap = ctx.store.load();
    let req_version = req.version();
    // A gRPC client gets the proxy's own answers in gRPC's form, as from Envoy.
    let grpc = crate::route::matcher::is_grpc(req.headers());
    let reply = |r: LocalReply| r.into_response(&ctx.hcm.server_name, grpc, None);
    if let Err(r) = ctx.hcm.path_norm.apply(&mut req) {
        let mut resp = reply(r.reply);
        if let Some(v) = r.location.and_then(|l| HeaderValue::try_from(l).ok()) {
            resp.headers_mut().insert(http::header::LOCATION, v);
        }
        return resp;
    }
    // What formatted header values (`%DOWNSTREAM_REMOTE_ADDRESS%`, ...) refer to.
    let hctx = |request| crate::route::headers::Ctx {
        peer: ctx.peer,
        local: ctx.original_dst,
        protocol: crate::route::headers::protocol_name(req_version),
        request,
    };
    let no_route = || reply(LocalReply::new(404, "", Flag::NoRoute));
    let Some(rc) = snap.route_config(&ctx.hcm) else {
        ctx.stats.no_route.inc();
        return no_route();
    };
    // An absolute-form target's authority replaces Host (RFC 9112 §3.2.2), as Envoy's
    // HTTP/1 codec does: routing and the upstream see one host.
    if req.version() <= http::Version::HTTP_11 {
        if let Some(v) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(http::header::HOST, v);
        }
    }
    // Cheap (reference-counted) clones, so host and path can be borrowed after `req` moves.
    let host_value = req.headers().get(http::header::HOST).cloned();
    let host = request_host(ctx, &req, &host_value);
    // A stripped port goes from the Host header itself, as Envoy's `maybeNormalizeHost`
    // rewrites it: the upstream and header matchers see the host without it.
    if (ctx.hcm.strip_any_host_port || ctx.hcm.strip_matching_host_port)
        && host_value
            .as_ref()
            .is_some_and(|v| v.as_bytes() != host.as_bytes())
    {
        if let Ok(v) = HeaderValue::from_str(&host) {
            req.headers_mut().insert(http::header::HOST, v);
        }
    }
    let pq = req.uri().path_and_query().cloned();
    let path: &str = pq.as_ref().map_or("/", |p| p.as_str());
    let pseudo = Pseudo {
        method: req.method().as_str(),
        // As routing sees it: the Host header or the h2 authority, ports stripped as asked.
        authority: Some(&host).filter(|h| !h.is_empty()).map(|h| &**h),
        path,
        // Worked out only for a route config that matches on it (a header lookup).
        scheme: match req.uri().scheme_str() {
            Some(s) if rc.reads_scheme && req.version() >= http::Version::HTTP_2 => s,
            _ if rc.reads_scheme => forwarded_proto(ctx, req.headers()),
            _ if ctx.tls.is_some() => "https",
            _ => "http",
        },
    };
    let Some(vh) = rc.select_vhost(&host) else {
        ctx.stats.no_route.inc();
        return no_route();
    };
    if vh.require_tls != RequireTls::None {
        let internal = req
            .headers()
            .get("x-envoy-internal")
            .is_some_and(|v| v == "true");
        if vh.redirects_to_https(forwarded_proto(ctx, req.headers()), internal) {
            // Envoy's `createSslRedirectPath`: the Host and path as they came.
            return super::local_reply::redirect(301, &format!("https://{host}{path}"));
        }
    }
    let Some(route) = vh.route(path, req.headers(), &pseudo) else {
        ctx.stats.no_route.inc();
        return no_route();
    };
    if let Some(s) = span.as_deref_mut() {
        s.decorate(route.decorator.as_ref());
    }
    let (cluster_name, wt) = match &route.action {
        Action::Forward(a) => choose_cluster(a, req.headers()),
        _ => (None, None),
    };
    if let Some(i) = info.as_deref_mut() {
        i.route = Some(route.name.clone()).filter(|n| !n.is_empty());
        i.cluster = cluster_name.as_deref().map(str::to_string);
    }
    let mut flags = Vec::new();
    let mut cors = None;
    for f in &ctx.hcm.filters {
        match f {
            HttpFilter::Fault(listener_cfg) => {
                let cfg = route
                    .filters
                    .fault
                    .as_ref()
                    .or(vh.filters.fault.as_ref())
                    .unwrap_or(listener_cfg);
                let d = cfg.decide(req.headers(), cluster_name.as_deref());
                if let Some(delay) = d.delay {
                    ctx.stats.fault_delays.inc();
                    flags.push(Flag::DelayInjected);
                    tokio::time::sleep(delay).await;
                }
                if let Some((status, grpc_abort)) = d.abort {
                    ctx.stats.fault_aborts.inc();
                    flags.push(Flag::FaultInjected);
                    // A gRPC abort reaches a gRPC client trailers-only with its code, and
                    // anything else as a plain 200 with the text (Envoy's sendLocalReply).
                    return LocalReply::with_flags(status, d.body, flags).into_response(
                        &ctx.hcm.server_name,
                        grpc,
                        grpc_abort,
                    );
                }
            }
            HttpFilter::Cors => {
                if let Some(p) = route.filters.cors.as_ref().or(vh.filters.cors.as_ref()) {
                    match p.preflight(req.method(), req.headers()) {
                        Some(Some(h)) => {
                            let mut r = Response::new(full(""));
                            *r.headers_mut() = h;
                            return r;
                        }
                        Some(None) => return Response::new(full("")),
                        None => cors = Some(p.clone()),
                    }
                }
            }
            HttpFilter::Rbac(rbac) => {
                let subject = crate::rbac::Subject {
                    http: Some((req.headers(), &pseudo)),
                    peer: ctx.peer,
                    remote: remote_address(ctx, req.headers()),
                    dst: ctx.original_dst,
                    tls: ctx.tls.as_deref(),
                };
                let (allowed, policy) = rbac.allows(&subject);
                if !allowed {
                    tracing::debug!(policy = ?policy, peer = %ctx.peer, "RBAC: access denied");
                    // Envoy's RBAC filter sets no response flag: the details name the policy.
                    return LocalReply::with_flags(403, "RBAC: access denied", flags)
                        .details(crate::rbac::Rbac::denial(policy))
                        .into_response(&ctx.hcm.server_name, grpc, None);
                }
            }
            HttpFilter::Jwt(tokens) => {
                if tokens.present(req.headers(), path) {
                    tracing::debug!(peer = %ctx.peer, "jwt_authn: a token mosn cannot verify; 401");
                    // Envoy sets no response flag for a failed JWT.
                    let reply = LocalReply::with_flags(
                        401,
                        "Jwt verification fails",
                        std::mem::take(&mut flags),
                    );
                    return reply.into_response(&ctx.hcm.server_name, grpc, None);
                }
            }
            HttpFilter::ExtAuthz { allow } => {
                if !allow {
                    tracing::debug!(peer = %ctx.peer, "ext_authz: no authorization service; 403");
                    return LocalReply::new(403, "", Flag::UnauthorizedExternalService)
                        .into_response(&ctx.hcm.server_name, grpc, None);
                }
            }
            HttpFilter::Router => break,
        }
    }
    let levels = Levels::new(wt, route, vh, &rc);
    let levels = levels.as_slice();
    let req_headers_for_cors = cors.as_ref().map(|_| req.headers().clone());
    let mut resp = match &route.action {
        Action::Direct { status, body } => {
            ctx.stats.direct_response.inc();
            super::local_reply::direct(*status, body)
        }
        Action::Redirect(rd) => {
            let scheme = forwarded_proto(ctx, req.headers());
            let loc = rd.location(scheme, &host, path, route.matched_len(path));
            super::local_reply::redirect(rd.status, &loc)
        }
        Action::Forward(a) => {
            let Some(name) = cluster_name else {
                return reply(LocalReply::new(a.cluster_not_found, "", Flag::NoCluster));
            };
            let Some(cluster) = snap.clusters.get(name.as_ref()).cloned() else {
                return reply(LocalReply::new(a.cluster_not_found, "", Flag::NoCluster));
            };
            // The request's duration limit runs from here to the end of its response.
            let deadline = crate::route::stream_duration::limit(
                a.max_stream_duration.as_ref(),
                ctx.hcm.max_stream_duration,
                req.headers(),
            )
            .map(|l| tokio::time::Instant::now() + l);
            let upgrade = upgrade_type(&req, &ctx.hcm.upgrades);
            let (mut parts, mut body) = req.into_parts();
            if let Some(t) = upgrade {
                parts.extensions.insert(router::Upgrade(t));
            }
            if ctx.hcm.append_xff {
                append_xff(&mut parts.headers, ctx.peer.ip());
            }
            if let Some(s) = span {
                s.route(route.decorator.as_ref(), &mut parts.headers);
                s.inject(&mut parts.headers);
            }
            ctx.hcm.xfcc.apply(&mut parts.headers, ctx.tls.as_deref());
            prepare_upstream_headers(
                &mut parts,
                &ctx.hcm,
                ctx.tls.is_some(),
                (a, wt, route),
                path,
                levels,
                &hctx(true),
            );
            let retry = a.retry.as_ref().or(vh.retry.as_ref());
            let overrides = if control {
                control_headers::take(&mut parts.headers, retry)
            } else {
                Default::default()
            };
            let retry = overrides.retry.as_ref().or(retry);
            let down = Downstream {
                timeout: overrides.timeout,
                grpc,
                peer: ctx.peer,
                original_dst: ctx.original_dst,
                proxied: ctx.proxied,
                stream_idle: ctx.hcm.stream_idle_timeout,
                envoy_headers: !ctx.hcm.suppress_envoy_headers,
                attempt_count: vh.attempt_count_in_request,
                timer: &ctx.timer,
                secrets: &ctx.store.secrets,
                istio_alpn: ctx.hcm.istio_alpn,
            };
            // Request mirroring: the route's policies, else the virtual host's, else the route
            // configuration's (Envoy's precedence). Shadows leave before the original.
            let mirrors = [&a.mirrors, &vh.mirrors, &rc.mirrors]
                .into_iter()
                .find(|m| !m.is_empty());
            if let Some(m) = mirrors {
                let timeout = overrides.timeout.unwrap_or_else(|| {
                    crate::route::action::effective_timeout(a, grpc, &parts.headers)
                });
                super::mirror::launch(m, &snap, &parts, &mut body, down, timeout);
            }
            let mut tried = router::Tried::default();
            let body_done = hyper::body::Body::is_end_stream(&body);
            // Pinned in place: wrapping the (large) future by value would copy it per request.
            let result = {
                let fwd = std::pin::pin!(router::forward(
                    cluster, a, retry, parts, body, down, active, &mut tried
                ));
                match deadline {
                    None => Some(fwd.await),
                    Some(at) => tokio::time::timeout_at(at, fwd).await.ok(),
                }
            };
            // What the last attempt used, for the log line of a timed-out request too.
            if let Some(i) = info {
                i.host = tried.host;
                i.workload = tried.workload.take();
                i.conn = tried.conn.take();
            }
            let Some(result) = result else {
                // Envoy: 504 once the request was received whole, else 408, and
                // DEADLINE_EXCEEDED to a gRPC client.
                ctx.stats.rq_max_duration_reached.inc();
                let status = if body_done { 504 } else { 408 };
                // No response flag: Envoy sets none for this reply.
                // Envoy's details: not "via_upstream", though a host was picked.
                let timeout = LocalReply::with_flags(status, "downstream duration timeout", vec![])
                    .details("max_duration_timeout");
                let mut r = timeout.into_response(&ctx.hcm.server_name, grpc, Some(4));
                levels
                    .iter()
                    .for_each(|p| p.response.apply(r.headers_mut(), &hctx(false)));
                return r;
            };
            // As Envoy's router: the attempt count goes on every response once an attempt was
            // made, the upstream's and the proxy's own.
            let count = (vh.attempt_count_in_response && tried.attempts > 0)
                .then(|| HeaderValue::from(tried.attempts));
            let stamp = |h: &mut HeaderMap| {
                if let Some(c) = &count {
                    h.insert(router::ATTEMPT_COUNT, c.clone());
                }
            };
            match result {
                Ok(mut r) => {
                    // The limit lasts until the response's end: a body still streaming when it
                    // passes is cut, as Envoy resets the stream.
                    if let Some(at) = deadline {
                        r = r.map(|b| {
                            super::body::DeadlineBody::wrap(
                                b,
                                at,
                                ctx.stats.rq_max_duration_reached.clone(),
                                "downstream duration timeout",
                            )
                        });
                    }
                    stamp(r.headers_mut());
                    // A delay the fault filter injected before a proxied answer is logged too,
                    // before what the router flagged (URX, UO).
                    if !flags.is_empty() {
                        let mut all = ResponseFlags::of(&flags);
                        if let Some(router) = r.extensions().get::<ResponseFlags>() {
                            all.0 = format!("{},{}", all.0, router.0);
                        }
                        r.extensions_mut().insert(all);
                    }
                    r
                }
                Err(mut reply) => {
                    // Envoy's router marks a request the circuit breakers dropped.
                    let overloaded = !ctx.hcm.suppress_envoy_headers
                        && reply.flags.contains(&Flag::UpstreamOverflow);
                    reply.flags.splice(0..0, flags);
                    let mut r = reply.into_response(&ctx.hcm.server_name, grpc, None);
                    stamp(r.headers_mut());
                    if overloaded {
                        r.headers_mut().insert(
                            http::HeaderName::from_static("x-envoy-overloaded"),
                            HeaderValue::from_static("true"),
                        );
                    }
                    levels
                        .iter()
                        .for_each(|p| p.response.apply(r.headers_mut(), &hctx(false)));
                    return r;
                }
            }
        }
    };
    levels
        .iter()
        .for_each(|p| p.response.apply(resp.headers_mut(), &hctx(false)));
    if let (Some(p), Some(h)) = (cors, req_headers_for_cors) {
        p.decorate(&h, resp.headers_mut());
    }
    resp
}
