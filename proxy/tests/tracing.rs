//! HCM tracing with the Zipkin tracer, as Istio configures it (the bootstrap's
//! `envoy.tracers.zipkin`, the HCM's `tracing` with its sampling): B3 headers to the upstream,
//! and sampled spans POSTed as Zipkin JSON v2 to a collector running in the test.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// A Zipkin collector: every POST body it gets, parsed; answers 202 as Zipkin does.
struct Collector {
    addr: SocketAddr,
    batches: Arc<Mutex<Vec<(String, String, Value)>>>,
}

async fn collector() -> Collector {
    use http_body_util::BodyExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let batches = Arc::new(Mutex::new(Vec::new()));
    let b = batches.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let b = b.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let b = b.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let host = req.headers()["host"].to_str().unwrap().to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let spans: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            b.lock().unwrap().push((path, host, spans));
                            let mut r =
                                http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                            *r.status_mut() = http::StatusCode::ACCEPTED;
                            Ok::<_, std::io::Error>(r)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Collector { addr, batches }
}

/// A proxy whose one listener `l` (direction `dir`, HCM `tracing` as given) routes to the
/// echo upstream "app" with a decorator, and whose bootstrap names the Zipkin collector as
/// Istio 1.10's does.
async fn traced_proxy(up: SocketAddr, zipkin: SocketAddr, dir: &str, tracing: Value) -> Proxy {
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "app"},
        "decorator": {"operation": "app.default.svc.cluster.local:80/*"}}]);
    let hcm = json!({"tracing": tracing});
    traced_proxy_with((up, zipkin), dir, routes, hcm, json!({})).await
}

/// [`traced_proxy`] with other `routes`, more `hcm` settings, and `collector` settings merged
/// into the Zipkin cluster.
async fn traced_proxy_with(
    (up, zipkin): (SocketAddr, SocketAddr),
    dir: &str,
    routes: Value,
    hcm: Value,
    collector: Value,
) -> Proxy {
    let vhosts = json!([{"name": "v", "domains": ["*"], "routes": routes}]);
    let mut l = listener("l", vhosts, vec![], hcm);
    l["traffic_direction"] = json!(dir);
    let mut boot = bootstrap(
        vec![l],
        vec![
            cluster("app", &[up], json!({})),
            cluster("zipkin", &[zipkin], collector),
        ],
    );
    boot["node"]["cluster"] = json!("productpage.default");
    boot["tracing"] = json!({"http": {"name": "envoy.tracers.zipkin", "typed_config": {
        "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
        "collector_cluster": "zipkin", "collector_endpoint": "/api/v2/spans",
        "collector_endpoint_version": "HTTP_JSON", "trace_id_128bit": true,
        "shared_span_context": false}}});
    proxy(boot).await
}

fn hex_of(v: &Value, len: usize) -> String {
    let s = v.as_str().unwrap_or_default().to_string();
    assert!(
        s.len() == len && s.bytes().all(|c| c.is_ascii_hexdigit()),
        "{v}"
    );
    s
}

/// An outbound sidecar samples every request at 100%: the app gets a fresh 128-bit trace
/// and the span's id, the request id carries the trace mark, and five spans go to the
/// collector in one batch, each as Zipkin JSON v2 that names what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_requests_are_reported_to_the_collector() {
    let (up, zipkin) = (upstream("app").await, collector().await);
    let tracing = json!({"random_sampling": {"value": 100}, "custom_tags": [
        {"tag": "istio.mesh_id", "literal": {"value": "cluster.local"}},
        {"tag": "who", "request_header": {"name": "x-who", "default_value": "nobody"}}]});
    let p = traced_proxy(up.addr, zipkin.addr, "OUTBOUND", tracing).await;
    let addr = p.addr("l");
    let mut seen = Vec::new();
    for i in 0..5 {
        let r = get(addr, &format!("/p/{i}"), &[("x-who", "alice")]).await;
        assert_eq!(r.status, 200);
        let h = r.json()["headers"].clone();
        let rid = h["x-request-id"].as_str().unwrap().to_string();
        assert_eq!(rid.as_bytes()[14], b'9', "sampled mark in {rid}");
        assert_eq!(h["x-b3-sampled"], "1");
        assert!(h.get("x-b3-parentspanid").is_none(), "a root span: {h}");
        assert_eq!(
            h["x-envoy-decorator-operation"],
            "app.default.svc.cluster.local:80/*"
        );
        seen.push((
            hex_of(&h["x-b3-traceid"], 32),
            hex_of(&h["x-b3-spanid"], 16),
            rid,
        ));
    }
    wait_until("a batch of five spans", || {
        !zipkin.batches.lock().unwrap().is_empty()
    })
    .await;
    let (path, host, spans) = zipkin.batches.lock().unwrap()[0].clone();
    assert_eq!((path.as_str(), host.as_str()), ("/api/v2/spans", "zipkin"));
    let spans = spans.as_array().unwrap().clone();
    assert_eq!(spans.len(), 5, "{spans:?}");
    for (s, (trace, id, rid)) in spans.iter().zip(&seen) {
        assert_eq!(s["traceId"], json!(trace));
        assert_eq!(s["id"], json!(id));
        assert!(s.get("parentId").is_none());
        assert_eq!(s["kind"], "CLIENT");
        assert_eq!(s["name"], "app.default.svc.cluster.local:80/*");
        assert!(
            s["timestamp"].as_u64().unwrap() > 1_600_000_000_000_000,
            "µs: {s}"
        );
        assert!(s["duration"].is_u64());
        assert_eq!(s["localEndpoint"]["serviceName"], "productpage.default");
        let t = &s["tags"];
        assert_eq!(t["guid:x-request-id"], json!(rid));
        assert_eq!(t["http.status_code"], "200");
        assert_eq!(t["upstream_cluster"], "app");
        assert_eq!(t["http.method"], "GET");
        assert_eq!(t["component"], "proxy");
        assert_eq!(t["response_flags"], "-");
        assert_eq!(t["istio.mesh_id"], "cluster.local");
        assert_eq!(t["who"], "alice");
        assert!(
            t["http.url"].as_str().unwrap().starts_with("http://"),
            "{t}"
        );
        assert!(t["http.url"].as_str().unwrap().contains("/p/"), "{t}");
        assert!(t.get("error").is_none());
        assert!(t["node_id"].as_str().unwrap().starts_with("test~"));
    }
    assert_eq!(p.stat("tracing.zipkin.spans_sent"), 5);
    wait_until("the collector's 202 counted", || {
        p.stat("tracing.zipkin.reports_sent") == 1
    })
    .await;
}

/// Sampling as Envoy decides it: at 0% nothing is reported but the context still goes
/// upstream (`x-b3-sampled: 0`); a caller's `x-b3-sampled: 1` samples anyway, and its span
/// becomes the parent; broken B3 headers make no span and pass through unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_context_and_sampling_flag_are_followed() {
    let (up, zipkin) = (upstream("app").await, collector().await);
    let tracing = json!({"random_sampling": {"value": 0}});
    let p = traced_proxy(up.addr, zipkin.addr, "OUTBOUND", tracing).await;
    let addr = p.addr("l");
    for _ in 0..5 {
        let h = get(addr, "/", &[]).await.json()["headers"].clone();
        assert_eq!(h["x-b3-sampled"], "0");
        hex_of(&h["x-b3-traceid"], 32);
        assert_ne!(h["x-request-id"].as_str().unwrap().as_bytes()[14], b'9');
    }
    // A caller's sampled context: same trace, its span as the parent.
    let caller = [
        ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
        ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ("x-b3-sampled", "1"),
    ];
    let mut mine = Vec::new();
    for _ in 0..5 {
        let h = get(addr, "/", &caller).await.json()["headers"].clone();
        assert_eq!(h["x-b3-traceid"], "463ac35c9f6413ad48485a3953bb6124");
        assert_eq!(h["x-b3-parentspanid"], "a2fb4a1d1a96d312");
        assert_eq!(h["x-b3-sampled"], "1");
        mine.push(hex_of(&h["x-b3-spanid"], 16));
    }
    wait_until("the sampled batch", || {
        !zipkin.batches.lock().unwrap().is_empty()
    })
    .await;
    let batches = zipkin.batches.lock().unwrap().clone();
    assert_eq!(batches.len(), 1, "only the five sampled spans: {batches:?}");
    let spans = batches[0].2.as_array().unwrap();
    let ids: Vec<&str> = spans.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, mine);
    assert!(spans.iter().all(|s| s["parentId"] == "a2fb4a1d1a96d312"));
    // Broken headers: no span, passed on as they came.
    let broken = [("x-b3-traceid", "zzz"), ("x-b3-spanid", "a2fb4a1d1a96d312")];
    let h = get(addr, "/", &broken).await.json()["headers"].clone();
    assert_eq!(h["x-b3-traceid"], "zzz");
    assert!(h.get("x-b3-sampled").is_none(), "{h}");
}

/// An inbound sidecar: the span is a SERVER span whose parent is the caller's, named by the
/// caller's `x-envoy-decorator-operation`, which the app never sees; without one, the route's
/// decorator names it and the response tells the caller the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_span_is_the_callers_child() {
    let (up, zipkin) = (upstream("app").await, collector().await);
    let tracing = json!({"random_sampling": {"value": 100}});
    let p = traced_proxy(up.addr, zipkin.addr, "INBOUND", tracing).await;
    let addr = p.addr("l");
    let caller = [
        ("x-b3-traceid", "48485a3953bb6124"),
        ("x-b3-spanid", "00000000000000aa"),
        ("x-envoy-decorator-operation", "caller-op"),
    ];
    for _ in 0..5 {
        let r = get(addr, "/", &caller).await;
        let h = r.json()["headers"].clone();
        assert!(h.get("x-envoy-decorator-operation").is_none(), "{h}");
        assert_eq!(
            h["x-b3-traceid"], "48485a3953bb6124",
            "a 64-bit trace stays 64-bit"
        );
        assert_eq!(h["x-b3-parentspanid"], "00000000000000aa");
        assert!(
            r.header("x-envoy-decorator-operation").is_none(),
            "overridden: not echoed"
        );
    }
    wait_until("the inbound batch", || {
        !zipkin.batches.lock().unwrap().is_empty()
    })
    .await;
    let spans = zipkin.batches.lock().unwrap()[0].2.clone();
    for s in spans.as_array().unwrap() {
        assert_eq!(s["kind"], "SERVER");
        assert_eq!(s["parentId"], "00000000000000aa");
        assert_eq!(s["name"], "caller-op");
        assert!(s.get("shared").is_none());
    }
    // Without the caller's name, the route's decorator names the span and goes back.
    let r = get(addr, "/", &[]).await;
    assert_eq!(
        r.header("x-envoy-decorator-operation"),
        Some("app.default.svc.cluster.local:80/*")
    );
}

/// Later Istio (Telemetry API, proxies from 1.29) gives the HCM its own Zipkin provider that
/// names the collector as a `collector_service`: its URI's path and authority are used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_on_the_hcm_may_name_a_collector_service() {
    let (up, zipkin) = (upstream("app").await, collector().await);
    let tracing = json!({"random_sampling": {"value": 100}, "provider": {"name": "envoy.tracers.zipkin",
        "typed_config": {"@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
            "collector_endpoint_version": "HTTP_JSON", "trace_id_128bit": true, "shared_span_context": false,
            "collector_service": {"http_uri": {"uri": "http://zipkin.istio-system:9411/api/v2/spans",
                "cluster": "zipkin", "timeout": "2s"}}}}});
    let p = traced_proxy(up.addr, zipkin.addr, "OUTBOUND", tracing).await;
    for _ in 0..5 {
        assert_eq!(get(p.addr("l"), "/", &[]).await.status, 200);
    }
    wait_until("a batch", || !zipkin.batches.lock().unwrap().is_empty()).await;
    let (path, host, spans) = zipkin.batches.lock().unwrap()[0].clone();
    assert_eq!(
        (path.as_str(), host.as_str()),
        ("/api/v2/spans", "zipkin.istio-system:9411")
    );
    assert_eq!(spans.as_array().unwrap().len(), 5);
}

/// Envoy's null span: with a tracer mosn lacks, nothing is injected or reported, but an
/// inbound caller's decorator is still taken off before the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracer_mosn_lacks_still_keeps_the_decorator_from_the_app() {
    let (up, zipkin) = (upstream("app").await, collector().await);
    let tracing = json!({"random_sampling": {"value": 100}, "provider": {"name": "envoy.tracers.datadog",
        "typed_config": {"@type": "type.googleapis.com/envoy.config.trace.v3.DatadogConfig",
            "collector_cluster": "zipkin", "service_name": "x"}}});
    let p = traced_proxy(up.addr, zipkin.addr, "INBOUND", tracing).await;
    let r = get(
        p.addr("l"),
        "/",
        &[("x-envoy-decorator-operation", "caller-op")],
    )
    .await;
    let h = r.json()["headers"].clone();
    assert!(h.get("x-envoy-decorator-operation").is_none(), "{h}");
    assert!(h.get("x-b3-traceid").is_none(), "{h}");
}

/// A trusted `x-envoy-force-trace` (from an internal address) traces a request the random
/// sampling would not, and the response tells the caller the request id; a direct response
/// is named by its route's decorator too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_trace_and_decorated_direct_responses() {
    let (up, zipkin) = (upstream("app").await, collector().await);
    let tracing = json!({"random_sampling": {"value": 0}});
    let routes = json!([
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 204},
            "decorator": {"operation": "direct-op"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "app"}}]);
    // A logger of the forced requests alone (Envoy's traceable_filter).
    let log = std::env::temp_dir().join(format!("mosn-traceable-{}", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let format = json!({"text_format_source": {"inline_string": "%REQ(:PATH)%\n"}});
    let mut logger = file_logger(log.to_str().unwrap(), format);
    logger["filter"] = json!({"traceable_filter": {}});
    let hcm = json!({"tracing": tracing, "internal_address_config": {"cidr_ranges": [
        {"address_prefix": "127.0.0.0", "prefix_len": 8}]}, "access_log": [logger]});
    let ends = (up.addr, zipkin.addr);
    let p = traced_proxy_with(ends, "OUTBOUND", routes, hcm, json!({})).await;
    let forced = [
        ("x-forwarded-for", "127.0.0.1"),
        ("x-envoy-force-trace", "1"),
    ];
    let r = get(p.addr("l"), "/", &forced).await;
    let rid = r
        .header("x-request-id")
        .expect("the id goes back")
        .to_string();
    assert_eq!(rid.as_bytes()[14], b'a', "forced: {rid}");
    assert_eq!(r.json()["headers"]["x-b3-sampled"], "1");
    // Not trusted from elsewhere: no XFF, so not internal; the header is dropped.
    let r = get(p.addr("l"), "/", &[("x-envoy-force-trace", "1")]).await;
    assert!(r.header("x-request-id").is_none());
    assert_eq!(r.json()["headers"]["x-b3-sampled"], "0");
    for _ in 0..4 {
        assert_eq!(get(p.addr("l"), "/direct", &forced).await.status, 204);
    }
    wait_until("the forced batch", || {
        !zipkin.batches.lock().unwrap().is_empty()
    })
    .await;
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("five forced lines", || logged().lines().count() >= 5).await;
    assert_eq!(logged(), "/\n/direct\n/direct\n/direct\n/direct\n");
    let _ = std::fs::remove_file(&log);
    let spans = zipkin.batches.lock().unwrap()[0].2.clone();
    let names: Vec<&str> = spans
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names.iter().filter(|n| **n == "direct-op").count(),
        4,
        "{names:?}"
    );
}

/// A tracer that goes away (its HCM replaced by a listener update) sends the spans it still
/// holds instead of losing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_tracer_sends_what_it_holds() {
    let (up, zipkin) = (upstream("app").await, collector().await);
    let p = traced_proxy(up.addr, zipkin.addr, "OUTBOUND", json!({})).await;
    let any = envoy_types::pb::google::protobuf::Any {
        type_url: "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig".into(),
        value: prost::Message::encode_to_vec(
            &envoy_types::pb::envoy::config::trace::v3::ZipkinConfig {
                collector_cluster: "zipkin".into(),
                collector_endpoint: "/api/v2/spans".into(),
                collector_endpoint_version: 1,
                ..Default::default()
            },
        ),
    };
    let tracer = Arc::new(mosn::proxy::trace::zipkin::Zipkin::from_any(&any).unwrap());
    for id in ["1", "2"] {
        tracer.report(format!("{{\"id\":\"{id}\"}}"), &p.server.store);
    }
    assert!(
        zipkin.batches.lock().unwrap().is_empty(),
        "two spans wait for more"
    );
    drop(tracer);
    wait_until("the last batch", || {
        !zipkin.batches.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        zipkin.batches.lock().unwrap()[0].2,
        json!([{"id": "1"}, {"id": "2"}])
    );
}

/// Reports stay within the collector cluster's request circuit breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_respect_the_collectors_circuit_breaker() {
    let (up, zipkin) = (upstream("app").await, collector().await);
    let tracing = json!({"random_sampling": {"value": 100}});
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]);
    let shut = json!({"circuit_breakers": {"thresholds": [{"max_requests": 0}]}});
    let ends = (up.addr, zipkin.addr);
    let p = traced_proxy_with(ends, "OUTBOUND", routes, json!({"tracing": tracing}), shut).await;
    for _ in 0..5 {
        assert_eq!(get(p.addr("l"), "/", &[]).await.status, 200);
    }
    wait_until("the report refused", || {
        p.stat("tracing.zipkin.reports_failed") == 1
    })
    .await;
    assert_eq!(p.stat("cluster.zipkin.upstream_rq_pending_overflow"), 1);
    assert!(zipkin.batches.lock().unwrap().is_empty());
}
