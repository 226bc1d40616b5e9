//! The admin API on the bootstrap's admin address, with Envoy's paths and formats: `/stats`,
//! `/stats/prometheus`, `/server_info`, `/ready`, `/config_dump`, `/clusters`, `/listeners`,
//! `POST /drain_listeners`, `POST /quitquitquit`, `POST /healthcheck/{fail,ok}`, `/logging`.

use crate::config::decode::to_json;
use crate::proxy::body::{full, BoxBody};
use crate::route::matcher::percent_decode;
use crate::server::{Server, Shutdown};
use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Bind the admin listener and serve it; returns the bound address.
pub async fn serve(server: Arc<Server>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let server = server.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let server = server.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(&server, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(bound)
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<BoxBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    r
}

fn json_response(v: &Value) -> Response<BoxBody> {
    let mut r = text(
        StatusCode::OK,
        serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
    );
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Query parameters in order; a key without `=` has an empty value.
fn params(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            // A literal '+' stays '+': filters are regexes and pilot-agent sends them raw.
            let dec = |x: &str| percent_decode(&x.replace('+', "%2B"));
            (dec(k), dec(v))
        })
        .collect()
}

/// Serve one admin request.
pub async fn handle(server: &Arc<Server>, req: Request<Incoming>) -> Response<BoxBody> {
    let path = req.uri().path().to_string();
    let q = params(req.uri().query());
    let has = |k: &str| q.iter().any(|(x, _)| x == k);
    let get = |k: &str| q.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
    let post_only = matches!(
        path.as_str(),
        "/quitquitquit" | "/drain_listeners" | "/healthcheck/fail" | "/healthcheck/ok" | "/logging"
    );
    if post_only && req.method() != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "This operation requires a POST request.\n",
        );
    }
    match path.as_str() {
        "/ready" => {
            let name = server.state_name();
            let code = if name == "LIVE" {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(code, format!("{name}\n"))
        }
        "/stats" | "/stats/prometheus" => {
            let filter = match get("filter").filter(|f| !f.is_empty()) {
                Some(f) => match regex::Regex::new(&f) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        return text(StatusCode::BAD_REQUEST, format!("Invalid re2 regex: {e}\n"))
                    }
                },
                None => None,
            };
            server
                .stats
                .gauge("server.uptime")
                .set(server.started.elapsed().as_secs());
            for c in server.store.load().clusters.values() {
                c.refresh_breaker_gauges();
            }
            let used = has("usedonly");
            match (path.as_str(), get("format").as_deref()) {
                ("/stats/prometheus", _) | (_, Some("prometheus")) => {
                    let mut r = text(
                        StatusCode::OK,
                        server.stats.render_prometheus(used, filter.as_ref()),
                    );
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    r
                }
                (_, Some("json")) => {
                    json_response(&server.stats.render_json(used, filter.as_ref()))
                }
                _ => text(
                    StatusCode::OK,
                    server.stats.render_text(used, filter.as_ref()),
                ),
            }
        }
        "/server_info" => json_response(&server_info(server)),
        "/config_dump" => {
            // Static config plus the xDS client's dynamic sections (with version_info and
            // last_updated), the shape `istioctl proxy-config` reads.
            let eds = has("include_eds");
            let mut dump = crate::xds::dump::augment(server, config_dump(server, eds), eds);
            redact_keys(&mut dump);
            json_response(&dump)
        }
        "/clusters" => clusters(server, get("format").as_deref() == Some("json")),
        "/listeners" => listeners(server, get("format").as_deref() == Some("json")),
        "/drain_listeners" => {
            server.drain_listeners(has("inboundonly"), has("graceful"));
            text(StatusCode::OK, "OK\n")
        }
        "/quitquitquit" => {
            server.shutdown(Shutdown::Quit);
            text(StatusCode::OK, "OK\n")
        }
        "/healthcheck/fail" => {
            server.healthcheck_failed.store(true, Ordering::Relaxed);
            server.stats.gauge("server.live").set(0);
            text(StatusCode::OK, "OK\n")
        }
        "/healthcheck/ok" => {
            server.healthcheck_failed.store(false, Ordering::Relaxed);
            if server.state_name() == "LIVE" {
                server.stats.gauge("server.live").set(1);
            }
            text(StatusCode::OK, "OK\n")
        }
        "/logging" => {
            for (k, v) in &q {
                let r = if k == "level" {
                    crate::logging::set_level(v)
                } else {
                    crate::logging::set_component(k, v)
                };
                if let Err(e) = r {
                    return text(StatusCode::BAD_REQUEST, format!("error: {e}\n"));
                }
            }
            text(StatusCode::OK, "active loggers updated\n")
        }
        "/" | "/help" => text(StatusCode::OK, HELP),
        _ => text(
            StatusCode::NOT_FOUND,
            format!("invalid path. admin commands are:\n{HELP}"),
        ),
    }
}

const HELP: &str = "  /: this help\n  /clusters: upstream cluster status\n  /config_dump: dump current Envoy configs\n  \
/drain_listeners (POST): drain listeners (params: inboundonly, graceful)\n  /healthcheck/fail (POST): cause the server to fail health checks\n  \
/healthcheck/ok (POST): cause the server to pass health checks\n  /listeners: print listener info\n  \
/logging (POST): query/change logging levels\n  /quitquitquit (POST): exit the server\n  /ready: print server state, return 200 if LIVE, otherwise return 503\n  \
/server_info: print server version/status information\n  /stats: print server stats (params: usedonly, filter, format)\n  \
/stats/prometheus: print server stats in prometheus format\n";

/// RFC 3339 UTC timestamp (config_dump `last_updated`).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

fn server_info(server: &Server) -> Value {
    let o = &server.opts;
    let up = format!("{}s", server.started.elapsed().as_secs());
    let node = server
        .store
        .load()
        .bootstrap
        .as_ref()
        .and_then(|b| b.proto.node.as_ref())
        .map(to_json)
        .unwrap_or(json!({}));
    json!({
        "version": format!("{}/{}/Clean/RELEASE/mosn", env!("MOSN_GIT_COMMIT"), env!("CARGO_PKG_VERSION")),
        "state": server.state_name(),
        "hot_restart_version": "disabled",
        "command_line_options": {
            "base_id": "0",
            "concurrency": server.concurrency,
            "config_path": o.config_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            "config_yaml": o.config_yaml.clone().unwrap_or_default(),
            "log_level": o.log_level.clone().unwrap_or_else(|| "info".into()),
            "component_log_level": o.component_log_level.clone().unwrap_or_default(),
            "service_cluster": o.service_cluster.clone().unwrap_or_default(),
            "service_node": o.service_node.clone().unwrap_or_default(),
            "drain_time": format!("{}s", server.drain_time.as_secs()),
            "drain_strategy": "Immediate",
            "mode": "Serve",
            "disable_hot_restart": true,
            "restart_epoch": 0,
            "local_address_ip_version": if o.ip_version_v6 { "v6" } else { "v4" },
        },
        "node": node,
        "uptime_current_epoch": up,
        "uptime_all_epochs": up,
    })
}

/// `envoy.admin.v3.ConfigDump` JSON: bootstrap, clusters, (endpoints), listeners, routes.
pub fn config_dump(server: &Server, include_eds: bool) -> Value {
    let snap = server.store.load();
    let ts = rfc3339(std::time::SystemTime::now() - server.started.elapsed());
    let with_type = |url: String, mut v: Value| {
        if let Value::Object(m) = &mut v {
            m.insert("@type".into(), Value::String(url));
        }
        v
    };
    let mut configs = Vec::new();
    if let Some(b) = &snap.bootstrap {
        configs.push(json!({
            "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
            "bootstrap": to_json(&b.proto),
            "last_updated": ts,
        }));
    }
    let mut names: Vec<&String> = snap.clusters.keys().collect();
    names.sort();
    let clusters: Vec<Value> = names
        .iter()
        .map(|n| {
            let c = &snap.clusters[*n];
            json!({"cluster": with_type(type_url::<envoy_types::pb::envoy::config::cluster::v3::Cluster>(), to_json(&c.proto)), "last_updated": ts})
        })
        .collect();
    configs.push(json!({"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "static_clusters": clusters}));
    if include_eds {
        let eps: Vec<Value> = names
            .iter()
            .filter_map(|n| snap.clusters[*n].proto.load_assignment.as_ref())
            .map(|la| json!({"endpoint_config": with_type(type_url::<envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment>(), to_json(la)), "last_updated": ts}))
            .collect();
        configs.push(json!({"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump", "static_endpoint_configs": eps}));
    }
    let mut routes = Vec::new();
    let listeners: Vec<Value> = snap
        .listeners
        .iter()
        .map(|l| {
            routes.extend(inline_routes(&l.proto).into_iter().map(|r| json!({"route_config": r, "last_updated": ts})));
            json!({"listener": with_type(type_url::<envoy_types::pb::envoy::config::listener::v3::Listener>(), to_json(&l.proto)), "last_updated": ts})
        })
        .collect();
    configs.push(json!({"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "static_listeners": listeners}));
    configs.push(json!({"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump", "static_route_configs": routes}));
    // Secrets, private keys redacted (`istioctl proxy-config secret` reads these).
    let secret_url =
        type_url::<envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret>();
    let statics: Vec<Value> = snap
        .bootstrap
        .iter()
        .flat_map(|b| b.proto.static_resources.iter().flat_map(|r| &r.secrets))
        .map(|s| {
            json!({"name": s.name, "last_updated": ts,
            "secret": with_type(secret_url.clone(), to_json(&crate::tls::secrets::redacted(s)))})
        })
        .collect();
    let dynamic: Vec<Value> = server
        .store
        .secrets
        .dynamic()
        .iter()
        .map(|d| json!({"name": d.secret.name, "version_info": d.version, "last_updated": rfc3339(d.last_updated),
            "secret": with_type(secret_url.clone(), to_json(&d.secret))}))
        .collect();
    configs.push(
        json!({"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
        "static_secrets": statics, "dynamic_active_secrets": dynamic}),
    );
    json!({ "configs": configs })
}

/// Replace every inline `private_key` (bootstrap, clusters, listeners, secrets) with
/// `[redacted]`, as Envoy's dump does with fields marked sensitive. File paths stay.
fn redact_keys(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                let inline = v.get("inline_bytes").is_some() || v.get("inline_string").is_some();
                if k == "private_key" && inline {
                    *v = json!({"inline_string": "[redacted]"});
                } else {
                    redact_keys(v);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact_keys),
        _ => {}
    }
}

fn type_url<M: prost::Name>() -> String {
    M::type_url()
}

/// Inline route configurations of a listener's HCMs (Envoy lists them as static routes).
fn inline_routes(l: &envoy_types::pb::envoy::config::listener::v3::Listener) -> Vec<Value> {
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as h;
    let mut out = Vec::new();
    for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
        for f in &chain.filters {
            let Some(
                envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any),
            ) = &f.config_type
            else {
                continue;
            };
            if let Ok(hcm) = crate::config::decode::unpack::<h::HttpConnectionManager>(any) {
                if let Some(h::http_connection_manager::RouteSpecifier::RouteConfig(rc)) =
                    &hcm.route_specifier
                {
                    let mut v = to_json(rc);
                    if let Value::Object(m) = &mut v {
                        m.insert(
                            "@type".into(),
                            Value::String(type_url::<
                                envoy_types::pb::envoy::config::route::v3::RouteConfiguration,
                            >()),
                        );
                    }
                    out.push(v);
                }
            }
        }
    }
    out
}

fn clusters(server: &Server, as_json: bool) -> Response<BoxBody> {
    let snap = server.store.load();
    let mut names: Vec<&String> = snap.clusters.keys().collect();
    names.sort();
    let now = std::time::Instant::now();
    // Clusters not in the bootstrap's static_resources came over CDS.
    let statics: std::collections::HashSet<&str> = snap
        .bootstrap
        .iter()
        .flat_map(|b| b.proto.static_resources.iter())
        .flat_map(|r| r.clusters.iter().map(|c| c.name.as_str()))
        .collect();
    let via_api = |n: &str| !statics.contains(n);
    if as_json {
        let statuses: Vec<Value> = names
            .iter()
            .map(|n| {
                let c = &snap.clusters[*n];
                let hosts: Vec<Value> = c
                    .hosts()
                    .all
                    .iter()
                    .map(|h| {
                        let mut health = json!({"eds_health_status": h.eds_status_name()});
                        if h.outlier.is_ejected(now) {
                            health["failed_outlier_check"] = json!(true);
                        }
                        json!({
                            "address": {"socket_address": {"address": h.addr.ip().to_string(), "port_value": h.addr.port()}},
                            "stats": [{"name": "rq_active", "type": "GAUGE", "value": h.active().to_string()}],
                            "health_status": health,
                            "weight": h.weight,
                            "priority": h.priority,
                        })
                    })
                    .collect();
                json!({"name": n, "added_via_api": via_api(n), "host_statuses": hosts})
            })
            .collect();
        return json_response(&json!({"cluster_statuses": statuses}));
    }
    let mut out = String::new();
    for n in names {
        let c = &snap.clusters[n];
        let b = &c.breakers;
        out.push_str(&format!("{n}::observability_name::{n}\n"));
        for (k, v) in [
            ("max_connections", b.max_connections),
            ("max_pending_requests", b.max_pending),
            ("max_requests", b.max_requests),
            ("max_retries", b.max_retries),
        ] {
            out.push_str(&format!("{n}::default_priority::{k}::{v}\n"));
        }
        out.push_str(&format!("{n}::added_via_api::{}\n", via_api(n)));
        for h in &c.hosts().all {
            let a = h.addr;
            // Envoy's order: outlier check, then EDS health.
            let mut flags = String::new();
            if h.outlier.is_ejected(now) {
                flags.push_str("/failed_outlier_check");
            }
            if h.eds_unhealthy() {
                flags.push_str("/failed_eds_health");
            } else if h.eds_status == HealthStatus::Degraded {
                flags.push_str("/degraded_eds_health");
            }
            if flags.is_empty() {
                flags.push_str("healthy");
            }
            out.push_str(&format!("{n}::{a}::rq_active::{}\n", h.active()));
            out.push_str(&format!(
                "{n}::{a}::health_flags::{flags}\n{n}::{a}::weight::{}\n",
                h.weight
            ));
            out.push_str(&format!("{n}::{a}::priority::{}\n", h.priority));
            out.push_str(&format!("{n}::{a}::hostname::{}\n", h.hostname));
        }
    }
    text(StatusCode::OK, out)
}

fn listeners(server: &Server, as_json: bool) -> Response<BoxBody> {
    let running = server.listeners.lock().unwrap().clone();
    if as_json {
        let addr = |a: &SocketAddr| json!({"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}});
        let s: Vec<Value> = running
            .iter()
            .map(|l| {
                let mut v = json!({"name": l.config().name, "local_address": addr(&l.local_addr)});
                // Envoy's ListenerStatus lists the sockets of `additional_addresses` apart.
                if l.local_addrs.len() > 1 {
                    v["additional_local_addresses"] = l.local_addrs[1..].iter().map(addr).collect();
                }
                v
            })
            .collect();
        return json_response(&json!({"listener_statuses": s}));
    }
    // One line per socket, as Envoy writes them.
    let out: String = running
        .iter()
        .flat_map(|l| {
            l.local_addrs
                .iter()
                .map(move |a| format!("{}::{a}\n", l.config().name))
        })
        .collect();
    text(StatusCode::OK, out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_known_instants() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(951_782_400_123);
        assert_eq!(super::rfc3339(t), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            super::rfc3339(std::time::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
    }
}
