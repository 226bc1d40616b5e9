//! Circuit breakers, outlier detection, the fault filter and CORS.

mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

async fn wait_hits(up: &Upstream, n: usize) {
    let what = format!("upstream {} never got {n} requests", up.name);
    wait_until(&what, || up.hits() >= n).await;
}

/// The `circuit_breakers.*` gauges as Envoy keeps them (dashboards alert on them): whether
/// each breaker is open, and with `track_remaining` (Istio 1.10 sets it on every cluster) how
/// much room is left; the HIGH priority's with its own thresholds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_gauges_show_what_is_open_and_left() {
    let a = upstream("a").await;
    let routes = json!([
        {"match": {"prefix": "/tracked"}, "route": {"cluster": "tracked", "timeout": "0s"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "plain"}}]);
    let clusters = vec![
        cluster(
            "tracked",
            &[a.addr],
            json!({"circuit_breakers": {"thresholds": [
                {"max_requests": 1, "max_connections": 5, "track_remaining": true},
                {"priority": "HIGH", "max_requests": 7, "track_remaining": true}]}}),
        ),
        cluster("plain", &[a.addr], json!({})),
    ];
    let p = routes_proxy(routes, json!({}), clusters).await;
    let addr = p.addr("l");
    let admin = p.admin();
    let gauges = || async move {
        let r = get(admin, "/stats?filter=circuit_breakers", &[]).await;
        r.body
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.parse::<u64>().unwrap()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let held = tokio::spawn(async move { get(addr, "/tracked", &[("x-test-hold", "1")]).await });
    wait_hits(&a, 1).await;
    let g = gauges().await;
    let t = |k: &str| g[&format!("cluster.tracked.circuit_breakers.{k}")];
    assert_eq!(
        (t("default.rq_open"), t("default.remaining_rq")),
        (1, 0),
        "{g:?}"
    );
    assert_eq!((t("default.cx_open"), t("default.remaining_cx")), (0, 4));
    assert_eq!(t("default.remaining_pending"), 1024);
    assert_eq!(t("default.remaining_retries"), 3);
    assert_eq!((t("high.rq_open"), t("high.remaining_rq")), (0, 7));
    // Without track_remaining only the open flags are kept.
    assert_eq!(g["cluster.plain.circuit_breakers.default.rq_open"], 0);
    assert!(!g.contains_key("cluster.plain.circuit_breakers.default.remaining_rq"));
    release_all(&a, vec![held]).await;
    let g = gauges().await;
    assert_eq!(g["cluster.tracked.circuit_breakers.default.rq_open"], 0);
    assert_eq!(
        g["cluster.tracked.circuit_breakers.default.remaining_rq"],
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breakers_overflow_with_503_uo() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let routes = json!([
        {"match": {"prefix": "/two"}, "route": {"cluster": "twohosts", "timeout": "0s"}},
        {"match": {"prefix": "/rq"}, "route": {"cluster": "maxrq", "timeout": "0s"}},
        {"match": {"prefix": "/cx"}, "route": {"cluster": "maxcx", "timeout": "0s"}}]);
    let cb = |t: serde_json::Value| json!({"circuit_breakers": {"thresholds": [t]}});
    let clusters = vec![
        cluster("maxrq", &[a.addr], cb(json!({"max_requests": 1}))),
        cluster(
            "maxcx",
            &[a.addr],
            cb(json!({"max_connections": 1, "max_pending_requests": 1})),
        ),
        cluster(
            "twohosts",
            &[a.addr, b.addr],
            cb(json!({"max_connections": 1})),
        ),
    ];
    let log = FlagLog::new("breakers");
    let p = proxy(bootstrap(
        vec![listener(
            "l",
            json!([{"name": "v", "domains": ["*"], "routes": routes}]),
            vec![],
            log.hcm(),
        )],
        clusters,
    ))
    .await;
    let addr = p.addr("l");

    // max_requests: a second request while one is active overflows at once.
    let before = a.hits();
    let held = tokio::spawn(async move { get(addr, "/rq", &[("x-test-hold", "1")]).await });
    wait_hits(&a, before + 1).await;
    let r = get(addr, "/rq", &[("x-test-tag", "rq")]).await;
    assert_eq!(
        (r.status, log.flags("rq").await.as_str()),
        (503, "UO"),
        "{}",
        r.body
    );
    assert_eq!(r.header("x-envoy-overloaded"), Some("true"));
    assert_eq!(p.stat("cluster.maxrq.upstream_rq_pending_overflow"), 1);
    let done = release_all(&a, vec![held]).await;
    assert_eq!(done[0].status, 200);
    assert_eq!(get(addr, "/rq", &[]).await.status, 200, "capacity is back");

    // max_connections with Envoy's pending queue: with the one connection busy, the next
    // request waits for it (max_pending_requests 1) and the one after overflows.
    let before = a.hits();
    let held = tokio::spawn(async move { get(addr, "/cx", &[("x-test-hold", "1")]).await });
    wait_hits(&a, before + 1).await;
    let queued = tokio::spawn(async move { get(addr, "/cx", &[]).await });
    wait_until("the second request never queued", || {
        p.stat("cluster.maxcx.upstream_rq_pending_active") >= 1
    })
    .await;
    let r = get(addr, "/cx", &[("x-test-tag", "cx")]).await;
    assert_eq!(
        (r.status, log.flags("cx").await.as_str()),
        (503, "UO"),
        "{}",
        r.body
    );
    assert_eq!(p.stat("cluster.maxcx.upstream_rq_pending_overflow"), 1);
    assert!(p.stat("cluster.maxcx.upstream_cx_overflow") >= 1);
    assert_eq!(
        a.hits(),
        before + 1,
        "the queued request waits for the connection"
    );
    let done = release_all(&a, vec![held, queued]).await;
    assert_eq!(
        (done[0].status, done[1].status),
        (200, 200),
        "the queued request is served on the freed connection"
    );
    // Pending, as Envoy counts: the first request while its connection was made, the
    // second while it waited for it.
    assert_eq!(p.stat("cluster.maxcx.upstream_rq_pending_total"), 2);
    assert_eq!(p.stat("cluster.maxcx.upstream_rq_pending_active"), 0);
    assert_eq!(p.stat("cluster.maxcx.upstream_cx_total"), 1);
    // The one idle connection was made for bodiless requests; a request with a body to
    // stream takes its place, and the next GET takes it back (no waiting for a slot).
    let r = request(addr, "POST", "/cx", &[], "a body", false).await;
    assert_eq!(r.status, 200);
    assert_eq!(get(addr, "/cx", &[]).await.status, 200);
    assert_eq!(p.stat("cluster.maxcx.upstream_cx_total"), 3);
    assert_eq!(p.stat("cluster.maxcx.upstream_rq_pending_overflow"), 1);

    // max_connections counts the whole cluster: an idle connection to one host gives up its
    // slot to a request for the other (round robin alternates them).
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(get(addr, "/two", &[]).await.upstream());
    }
    seen.sort();
    assert_eq!(seen, ["a", "a", "b", "b"]);
    assert_eq!(p.stat("cluster.twohosts.upstream_cx_total"), 4);
    assert_eq!(p.stat("cluster.twohosts.upstream_cx_active"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_a_connection_gets_one_past_max_connections() {
    // Two hosts, one connection allowed, and one host's connection busy: a request for the
    // other host gets its first connection past the limit (counted as an overflow), as in
    // Envoy, instead of waiting for the busy one to finish.
    let (a, b) = (upstream("a").await, upstream("b").await);
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "0s"}}]);
    let limits = json!({"circuit_breakers": {"thresholds": [{"max_connections": 1}]}});
    let p = routes_proxy(
        routes,
        json!({}),
        vec![cluster("c", &[a.addr, b.addr], limits)],
    )
    .await;
    let addr = p.addr("l");
    let held = tokio::spawn(async move { get(addr, "/", &[("x-test-hold", "1")]).await });
    wait_until("the held request at an upstream", || {
        a.hits() + b.hits() == 1
    })
    .await;
    let (busy, other) = if a.hits() == 1 { (&a, &b) } else { (&b, &a) };
    // Round robin sends the next request to the other host.
    let r = tokio::time::timeout(HANG, get(addr, "/", &[]))
        .await
        .expect("the request waited for the busy host's connection");
    assert_eq!(
        (r.status, r.upstream()),
        (200, other.name.clone()),
        "{}",
        r.body
    );
    assert_eq!(p.stat("cluster.c.upstream_cx_total"), 2);
    assert_eq!(p.stat("cluster.c.upstream_cx_overflow"), 1);
    // Each request was pending while its host's first connection was made (Envoy's
    // accounting), neither waited for another's.
    assert_eq!(p.stat("cluster.c.upstream_rq_pending_total"), 2);
    // (A request that finds its host's one connection busy waits instead: the `/cx` case of
    // `circuit_breakers_overflow_with_503_uo`.)
    let done = release_all(busy, vec![held]).await;
    assert_eq!(
        (done[0].status, done[0].upstream()),
        (200, busy.name.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_requests_get_the_connection_in_the_order_they_came() {
    // Envoy's pending queue is first come, first served. The waits here (0.2 s, then 60 ms
    // per request) span several of the pool's periodic looks, which must not cost a waiter
    // its place.
    let a = upstream("a").await;
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "one", "timeout": "0s"}}]);
    let limits = json!({"circuit_breakers": {"thresholds": [
        {"max_connections": 1, "max_pending_requests": 100}]}});
    let p = routes_proxy(routes, json!({}), vec![cluster("one", &[a.addr], limits)]).await;
    let addr = p.addr("l");
    assert_eq!(
        get(addr, "/", &[]).await.status,
        200,
        "the one connection is open"
    );
    let first = tokio::spawn(async move { get(addr, "/", &[("x-test-delay-ms", "200")]).await });
    wait_hits(&a, 2).await;
    let mut queued = Vec::new();
    for i in 1..=6u64 {
        queued.push(tokio::spawn(async move {
            let r = get(addr, "/", &[("x-test-delay-ms", "60")]).await;
            (i, r.status, Instant::now())
        }));
        let what = format!("request {i} never queued");
        wait_until(&what, || {
            p.stat("cluster.one.upstream_rq_pending_active") >= i
        })
        .await;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    assert_eq!(first.await.unwrap().status, 200);
    let mut done = Vec::new();
    for t in queued {
        done.push(t.await.unwrap());
    }
    assert!(done.iter().all(|d| d.1 == 200), "{done:?}");
    done.sort_by_key(|d| d.2);
    let order: Vec<u64> = done.iter().map(|d| d.0).collect();
    assert_eq!(order, [1, 2, 3, 4, 5, 6], "served in arrival order");
    assert_eq!(p.stat("cluster.one.upstream_cx_total"), 1);
    // The six that waited, and the first request while the connection was made.
    assert_eq!(p.stat("cluster.one.upstream_rq_pending_total"), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_a_failing_host() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "ab"}}]);
    let od = json!({"outlier_detection": {"consecutive_5xx": 2, "base_ejection_time": "60s",
        "max_ejection_percent": 100, "interval": "1s"}});
    let p = proxy(bootstrap(
        vec![listener(
            "l",
            json!([{"name": "v", "domains": ["*"], "routes": routes}]),
            vec![],
            json!({}),
        )],
        vec![cluster("ab", &[a.addr, b.addr], od)],
    ))
    .await;
    let addr = p.addr("l");
    let mut failures = 0;
    for _ in 0..6 {
        if get(addr, "/", &[("x-test-fail-on", "a")]).await.status == 503 {
            failures += 1;
        }
    }
    assert_eq!(failures, 2, "host a is ejected after two consecutive 5xx");
    assert_eq!(
        p.stat("cluster.ab.outlier_detection.ejections_enforced_total"),
        1
    );
    assert_eq!(p.stat("cluster.ab.outlier_detection.ejections_active"), 1);
    for _ in 0..10 {
        assert_eq!(get(addr, "/", &[]).await.upstream(), "b");
    }
    let clusters = get(p.admin(), "/clusters", &[]).await.body;
    assert!(
        clusters.contains(&format!(
            "ab::{}::health_flags::/failed_outlier_check",
            a.addr
        )),
        "{clusters}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_overflows_do_not_eject_hosts() {
    // Istio's circuit-breaking shape: a small connection pool and outlier detection on one
    // DestinationRule, with the panic threshold at 0. Overflows (503 UO) say the cluster is
    // busy, not that the host failed; counting them would eject the one healthy host and
    // turn every request into 503 UH.
    let a = upstream("a").await;
    let opts = json!({
        "circuit_breakers": {"thresholds": [{"max_connections": 1, "max_pending_requests": 1}]},
        "outlier_detection": {"consecutive_5xx": 1, "consecutive_gateway_failure": 1,
            "enforcing_consecutive_gateway_failure": 100, "base_ejection_time": "60s",
            "max_ejection_percent": 100, "interval": "1s"},
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}}});
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "0s"}}]);
    let p = routes_proxy(routes, json!({}), vec![cluster("c", &[a.addr], opts)]).await;
    let addr = p.addr("l");
    let held = tokio::spawn(async move { get(addr, "/", &[("x-test-hold", "1")]).await });
    wait_hits(&a, 1).await;
    let queued = tokio::spawn(async move { get(addr, "/", &[]).await });
    wait_until("the second request never queued", || {
        p.stat("cluster.c.upstream_rq_pending_active") == 1
    })
    .await;
    for _ in 0..3 {
        assert_eq!(get(addr, "/", &[]).await.status, 503, "overflow");
    }
    assert_eq!(p.stat("cluster.c.upstream_rq_pending_overflow"), 3);
    let done = release_all(&a, vec![held, queued]).await;
    assert_eq!((done[0].status, done[1].status), (200, 200));
    assert_eq!(
        p.stat("cluster.c.outlier_detection.ejections_enforced_total"),
        0
    );
    let r = get(addr, "/", &[]).await;
    assert_eq!(r.status, 200, "the host still serves: {}", r.body);
}

/// An HTTP/2 upstream whose every answer is gRPC's trailers-only form with `code`.
async fn grpc_upstream(code: u32) -> std::net::SocketAddr {
    h2_upstream(move |_req| {
        http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", code.to_string())
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_host_answering_unavailable_is_ejected() {
    // Trailers-only UNAVAILABLE is HTTP 200 on the wire; Envoy's outlier detector reads it
    // as 503.
    let (failing, healthy) = (grpc_upstream(14).await, grpc_upstream(0).await);
    let od = json!({"http2_protocol_options": {},
        "outlier_detection": {"consecutive_5xx": 2, "base_ejection_time": "60s",
            "max_ejection_percent": 100, "interval": "1s"}});
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "g"}}]);
    let p = routes_proxy(
        routes,
        json!({}),
        vec![cluster("g", &[failing, healthy], od)],
    )
    .await;
    let addr = p.addr("l");
    let mut codes = Vec::new();
    for _ in 0..8 {
        let r = get(
            addr,
            "/pkg.Svc/Call",
            &[("content-type", "application/grpc")],
        )
        .await;
        codes.push(r.header("grpc-status").unwrap_or("-").to_string());
    }
    assert_eq!(
        codes.iter().filter(|c| *c == "14").count(),
        2,
        "the failing host is ejected after two UNAVAILABLE: {codes:?}"
    );
    assert_eq!(
        p.stat("cluster.g.outlier_detection.ejections_enforced_total"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_local_origin_failures_eject_on_their_own_threshold() {
    // Istio's splitExternalLocalOriginErrors with consecutiveLocalOriginFailures: a host that
    // refuses connections is ejected after that many, counted apart from 5xx.
    let a = upstream("a").await;
    let dead = dead_addr();
    let od = json!({"outlier_detection": {"split_external_local_origin_errors": true,
        "consecutive_local_origin_failure": 2, "consecutive_5xx": 100,
        "base_ejection_time": "60s", "max_ejection_percent": 100, "interval": "1s"}});
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]);
    let p = routes_proxy(routes, json!({}), vec![cluster("c", &[dead, a.addr], od)]).await;
    let addr = p.addr("l");
    let mut failed = 0;
    for _ in 0..8 {
        if get(addr, "/", &[]).await.status == 503 {
            failed += 1;
        }
    }
    assert_eq!(
        failed, 2,
        "the refusing host is ejected after two connect failures"
    );
    assert_eq!(
        p.stat("cluster.c.outlier_detection.ejections_enforced_consecutive_local_origin_failure"),
        1
    );
    assert_eq!(
        p.stat("cluster.c.outlier_detection.ejections_enforced_consecutive_5xx"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_panic_threshold_decides_whether_ejected_hosts_take_traffic() {
    // One host, ejected after one 5xx. With Envoy's default threshold (50%) the cluster is in
    // panic and the ejected host still takes traffic; with 0 (what Istio writes for a
    // DestinationRule's outlierDetection) it does not: 503 UH.
    let a = upstream("a").await;
    let od = |lb: serde_json::Value| {
        let mut c = json!({"outlier_detection": {"consecutive_5xx": 1, "base_ejection_time": "60s",
            "max_ejection_percent": 100, "interval": "1s"}});
        mosn::config::merge(&mut c, lb);
        c
    };
    let routes = json!([
        {"match": {"prefix": "/default"}, "route": {"cluster": "default"}},
        {"match": {"prefix": "/off"}, "route": {"cluster": "off"}}]);
    let log = FlagLog::new("panic");
    let p = routes_proxy(
        routes,
        log.hcm(),
        vec![
            cluster("default", &[a.addr], od(json!({}))),
            cluster(
                "off",
                &[a.addr],
                od(json!({"common_lb_config": {"healthy_panic_threshold": {"value": 0}}})),
            ),
        ],
    )
    .await;
    let addr = p.addr("l");
    for path in ["/default", "/off"] {
        assert_eq!(
            get(addr, path, &[("x-test-status", "503")]).await.status,
            503
        );
    }
    assert_eq!(
        p.stat("cluster.default.outlier_detection.ejections_active"),
        1
    );
    assert_eq!(p.stat("cluster.off.outlier_detection.ejections_active"), 1);

    let before = a.hits();
    let r = get(addr, "/default", &[]).await;
    assert_eq!(
        (r.status, r.upstream().as_str()),
        (200, "a"),
        "panic: the ejected host serves"
    );
    assert_eq!(a.hits(), before + 1);
    let r = get(addr, "/off", &[("x-test-tag", "off")]).await;
    assert_eq!(
        (r.status, r.body.as_str(), log.flags("off").await.as_str()),
        (503, "no healthy upstream", "UH")
    );
    assert_eq!(a.hits(), before + 1, "no request reached the ejected host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_filter_and_cors() {
    let a = upstream("a").await;
    let fault = |cfg: serde_json::Value| {
        let mut f = json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"});
        mosn::config::merge(&mut f, cfg);
        json!({"envoy.filters.http.fault": f})
    };
    let cors = json!({"envoy.filters.http.cors": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [{"exact": "http://good.example"}], "allow_methods": "GET,POST",
        "allow_headers": "x-a", "expose_headers": "x-upstream", "max_age": "600", "allow_credentials": true}});
    let routes = json!([
        {"match": {"prefix": "/abort"}, "route": {"cluster": "a"},
         "typed_per_filter_config": fault(json!({"abort": {"http_status": 418, "percentage": {"numerator": 100}}}))},
        {"match": {"prefix": "/half"}, "route": {"cluster": "a"},
         "typed_per_filter_config": fault(json!({"abort": {"http_status": 503, "percentage": {"numerator": 50}}}))},
        {"match": {"prefix": "/delay"}, "route": {"cluster": "a"},
         "typed_per_filter_config": fault(json!({"delay": {"fixed_delay": "0.05s", "percentage": {"numerator": 100}}}))},
        {"match": {"prefix": "/hdr"}, "route": {"cluster": "a"},
         "typed_per_filter_config": fault(json!({"abort": {"header_abort": {}, "percentage": {"numerator": 100}}}))},
        {"match": {"prefix": "/cors"}, "route": {"cluster": "a"}, "typed_per_filter_config": cors},
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]);
    let filters = vec![
        json!({"name": "istio.stats", "typed_config": {"@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
            "type_url": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "value": {"config": {}}}}),
        json!({"name": "envoy.filters.http.cors", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}}),
        json!({"name": "envoy.filters.http.fault", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}}),
    ];
    let log = FlagLog::new("fault");
    let p = proxy(bootstrap(
        vec![listener(
            "l",
            json!([{"name": "v", "domains": ["*"], "routes": routes}]),
            filters,
            log.hcm(),
        )],
        vec![cluster("a", &[a.addr], json!({}))],
    ))
    .await;
    let addr = p.addr("l");

    let before = a.hits();
    let r = get(addr, "/abort", &[("x-test-tag", "fi")]).await;
    assert_eq!(
        (r.status, r.body.as_str(), log.flags("fi").await.as_str()),
        (418, "fault filter abort", "FI")
    );
    assert_eq!(
        a.hits(),
        before,
        "aborted requests never reach the upstream"
    );
    let n = 400;
    let mut aborted = 0;
    for _ in 0..n {
        if get(addr, "/half", &[]).await.status == 503 {
            aborted += 1;
        }
    }
    assert!(within_binomial(aborted, n, 0.5), "{aborted}/{n}");
    assert_eq!(
        get(addr, "/delay", &[("x-test-tag", "di")]).await.status,
        200
    );
    assert_eq!(log.flags("di").await, "DI");
    assert_eq!(p.stat("http.l.fault.delays_injected"), 1);
    assert_eq!(
        get(addr, "/hdr", &[("x-envoy-fault-abort-request", "429")])
            .await
            .status,
        429
    );
    assert_eq!(
        get(addr, "/hdr", &[]).await.status,
        200,
        "no header, no abort"
    );
    assert_eq!(
        get(addr, "/other", &[]).await.status,
        200,
        "the empty listener config injects nothing"
    );

    // CORS preflight from an allowed origin is answered by the proxy.
    let before = a.hits();
    let pre = [
        ("origin", "http://good.example"),
        ("access-control-request-method", "POST"),
    ];
    let r = request(addr, "OPTIONS", "/cors", &pre, "", false).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://good.example")
    );
    assert_eq!(r.header("access-control-allow-methods"), Some("GET,POST"));
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(a.hits(), before);
    // A disallowed origin's preflight is forwarded without CORS headers.
    let r = request(
        addr,
        "OPTIONS",
        "/cors",
        &[
            ("origin", "http://evil.example"),
            ("access-control-request-method", "POST"),
        ],
        "",
        false,
    )
    .await;
    assert_eq!(
        (
            r.upstream().as_str(),
            r.header("access-control-allow-origin")
        ),
        ("a", None)
    );
    let r = get(addr, "/cors", &[("origin", "http://good.example")]).await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://good.example")
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-upstream")
    );
    assert_eq!(
        get(addr, "/cors", &[("origin", "http://evil.example")])
            .await
            .header("access-control-allow-origin"),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejected_hosts_come_back_after_the_ejection_time() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "ab"}}]);
    // The ejection ends at the detector's tick past its length (Envoy's interval; 10 s by
    // default).
    let od = json!({"outlier_detection": {"consecutive_5xx": 1, "base_ejection_time": "0.2s",
        "max_ejection_percent": 100, "interval": "0.1s"}});
    let p = proxy(bootstrap(
        vec![listener(
            "l",
            json!([{"name": "v", "domains": ["*"], "routes": routes}]),
            vec![],
            json!({}),
        )],
        vec![cluster("ab", &[a.addr, b.addr], od)],
    ))
    .await;
    let addr = p.addr("l");
    while p.stat("cluster.ab.outlier_detection.ejections_active") == 0 {
        get(addr, "/", &[("x-test-fail-on", "a")]).await;
    }
    // Once the ejection time has passed, a is picked again and the gauge drops back.
    let before = a.hits();
    let deadline = Instant::now() + HANG;
    while a.hits() == before || p.stat("cluster.ab.outlier_detection.ejections_active") != 0 {
        assert!(Instant::now() < deadline, "host a never came back");
        assert_eq!(get(addr, "/", &[]).await.status, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(p.stat("cluster.ab.membership_healthy"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eds_unhealthy_endpoints_are_kept_and_serve_only_in_panic() {
    // Current Istio sends not-ready pods as UNHEALTHY endpoints (and sets the panic threshold
    // to 0 for them). Envoy keeps them in the host set: they count toward panic mode, take
    // traffic only in panic, and show in /clusters.
    let (a, b, c) = (
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
    );
    let health = |mut cl: serde_json::Value, statuses: &[&str]| {
        for (i, s) in statuses.iter().enumerate() {
            cl["load_assignment"]["endpoints"][0]["lb_endpoints"][i]["health_status"] = json!(s);
        }
        cl
    };
    let istio = json!({"common_lb_config": {"healthy_panic_threshold": {"value": 0}}});
    let three = [a.addr, b.addr, c.addr];
    let routes = json!(["half", "third", "istio", "none"].map(|n| json!(
        {"match": {"prefix": format!("/{n}")}, "route": {"cluster": n}})));
    let p = routes_proxy(
        routes,
        json!({}),
        vec![
            // Half healthy: not below Envoy's default threshold of 50%, so no panic.
            health(
                cluster("half", &[a.addr, b.addr], json!({})),
                &["HEALTHY", "UNHEALTHY"],
            ),
            // A third healthy: panic, every host serves.
            health(
                cluster("third", &three, json!({})),
                &["HEALTHY", "UNHEALTHY", "DRAINING"],
            ),
            // The same with Istio's threshold of 0: never panic.
            health(
                cluster("istio", &three, istio.clone()),
                &["HEALTHY", "UNHEALTHY", "TIMEOUT"],
            ),
            health(cluster("none", &[a.addr], istio), &["UNHEALTHY"]),
        ],
    )
    .await;
    let addr = p.addr("l");
    let seen = |path: &'static str| async move {
        let mut s = std::collections::BTreeSet::new();
        for _ in 0..30 {
            s.insert(get(addr, path, &[]).await.upstream());
        }
        s.into_iter().collect::<Vec<_>>().join(",")
    };
    assert_eq!(seen("/half").await, "a");
    assert_eq!(seen("/third").await, "a,b,c", "panic mode uses every host");
    assert_eq!(seen("/istio").await, "a");
    let r = get(addr, "/none", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (503, "no healthy upstream"));

    assert_eq!(p.stat("cluster.third.membership_total"), 3);
    assert_eq!(p.stat("cluster.third.membership_healthy"), 1);
    let text = get(p.admin(), "/clusters", &[]).await.body;
    for line in [
        format!("half::{}::health_flags::healthy", a.addr),
        format!("half::{}::health_flags::/failed_eds_health", b.addr),
        format!("third::{}::health_flags::/failed_eds_health", c.addr),
    ] {
        assert!(text.contains(&line), "{line} not in\n{text}");
    }
    let json = get(p.admin(), "/clusters?format=json", &[]).await.json();
    let third = json["cluster_statuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "third")
        .unwrap();
    let statuses: Vec<&str> = third["host_statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["health_status"]["eds_health_status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["HEALTHY", "UNHEALTHY", "DRAINING"]);
}

/// Envoy's pending accounting: a request is pending from the moment it finds no ready
/// connection, while its connection is being made too. So with `max_pending_requests: 1`, a
/// second request that comes while the first one's connection is still in its (here: stalled)
/// TLS handshake is refused at once, 503 UO, instead of dialling a connection of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_a_new_connection_is_pending() {
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr_up = stalled.local_addr().unwrap();
    // Accepts and says nothing: the proxy's TLS handshake waits until its connect timeout.
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut keep = Vec::new();
        while let Ok((s, _)) = stalled.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            keep.push(s);
        }
    });
    let tls = json!({"connect_timeout": "2s",
        "circuit_breakers": {"thresholds": [{"max_pending_requests": 1}]},
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}}});
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "0s"}}]);
    let p = routes_proxy(routes, json!({}), vec![cluster("c", &[addr_up], tls)]).await;
    let addr = p.addr("l");
    let first = tokio::spawn(async move { get(addr, "/", &[]).await });
    wait_until("the first request never became pending", || {
        p.stat("cluster.c.upstream_rq_pending_active") == 1
    })
    .await;
    let r = get(addr, "/", &[]).await;
    assert_eq!(
        (r.status, r.header("x-envoy-overloaded")),
        (503, Some("true")),
        "{}",
        r.body
    );
    // Refused while the first request's handshake still stalls, not after a dial of its own
    // (an ordering, not a timing: the first ends only at its 2 s connect timeout).
    assert!(!first.is_finished(), "refused at once, not after a dial");
    assert_eq!(p.stat("cluster.c.upstream_rq_pending_overflow"), 1);
    let dialled = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(dialled, 1, "no second connection");
    // The first fails when its handshake times out.
    assert_eq!(first.await.unwrap().status, 503);
}

/// Istio's DestinationRule outlier error codes (`error_matcher` on the cluster's HTTP options,
/// one `:status` matcher per code): only those codes count as failures. A host answering 503
/// is not ejected when the codes are [429]; one answering 429 is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_error_codes_decide_what_counts_as_a_failure() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "ab"}}]);
    let od = json!({"outlier_detection": {"consecutive_5xx": 2, "base_ejection_time": "60s",
        "max_ejection_percent": 50, "interval": "1s"},
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http_protocol_options": {}},
            "outlier_detection": {"error_matcher": {"or_match": {"rules": [
                {"http_response_headers_match": {"headers": [
                    {"name": ":status", "string_match": {"exact": "429"}}]}}]}}}}}});
    let p = routes_proxy(
        routes,
        json!({}),
        vec![cluster("ab", &[a.addr, b.addr], od)],
    )
    .await;
    let addr = p.addr("l");
    let ejections = || p.stat("cluster.ab.outlier_detection.ejections_enforced_total");
    for _ in 0..8 {
        get(addr, "/", &[("x-test-fail-on", "a")]).await;
    }
    assert_eq!(ejections(), 0, "503 is not one of the codes");
    for _ in 0..4 {
        get(addr, "/", &[("x-test-status", "429")]).await;
    }
    assert_eq!(ejections(), 1, "429 is");
}
