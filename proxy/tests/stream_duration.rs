//! `max_stream_duration` as Istio writes it on every route (gRPC deadlines from the
//! `grpc-timeout` header), a route's and the HCM's own limits, the proxy's answers to gRPC
//! clients in gRPC's form, and the timeouts the upstream is told (`x-envoy-expected-rq-timeout-ms`,
//! `grpc-timeout`).

mod common;

use common::*;
use serde_json::json;

/// What Istio puts on each route: no route timeout, the gRPC deadline as the stream limit.
fn istio_route(prefix: &str) -> serde_json::Value {
    json!({"match": {"prefix": prefix}, "route": {"cluster": "c", "timeout": "0s",
        "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"}}})
}

async fn grpc_call(addr: std::net::SocketAddr, path: &str, extra: &[(&str, &str)]) -> Resp {
    let mut h = vec![("content-type", "application/grpc"), ("te", "trailers")];
    h.extend_from_slice(extra);
    request(addr, "POST", path, &h, "\0\0\0\0\0", true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_deadline_ends_the_call_with_deadline_exceeded() {
    let up = upstream("up").await;
    let log = std::env::temp_dir().join(format!("mosn-max-duration-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let format =
        "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %UPSTREAM_HOST%\n";
    let px = routes_proxy(
        json!([
            istio_route("/pkg.Svc/"),
            {"match": {"prefix": "/limited"}, "route": {"cluster": "c", "timeout": "0s",
                "max_stream_duration": {"max_stream_duration": "0.2s"}}},
            {"match": {"prefix": "/hcm"}, "route": {"cluster": "c", "timeout": "0s"}}]),
        json!({"common_http_protocol_options": {"max_stream_duration": "0.2s"},
            "access_log": [file_logger(log.to_str().unwrap(),
                json!({"text_format_source": {"inline_string": format}}))]}),
        vec![cluster("c", &[up.addr], json!({}))],
    )
    .await;
    let addr = px.addr("l");

    // The client's 200 ms deadline passes while the upstream takes 3 s.
    let r = grpc_call(
        addr,
        "/pkg.Svc/Slow",
        &[("grpc-timeout", "200m"), ("x-test-delay-ms", "3000")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("grpc-status"), Some("4"), "{:?}", r.headers);
    assert_eq!(
        r.header("grpc-message"),
        Some("downstream duration timeout")
    );
    assert_eq!(px.stat("http.l.downstream_rq_max_duration_reached"), 1);

    // Within its deadline, or without one, the call goes through.
    let r = grpc_call(
        addr,
        "/pkg.Svc/Fast",
        &[("grpc-timeout", "10S"), ("x-test-delay-ms", "300")],
    )
    .await;
    assert_eq!(r.json()["path"], "/pkg.Svc/Fast");
    let r = grpc_call(addr, "/pkg.Svc/Fast", &[("x-test-delay-ms", "300")]).await;
    assert_eq!(r.json()["path"], "/pkg.Svc/Fast");
    assert_eq!(px.stat("http.l.downstream_rq_max_duration_reached"), 1);

    // A route's own max_stream_duration, and the HCM's for routes without one: HTTP 504
    // for a request received whole.
    for path in ["/limited", "/hcm"] {
        let r = get(addr, path, &[("x-test-delay-ms", "3000")]).await;
        assert_eq!(r.status, 504, "{path}: {}", r.body);
        assert_eq!(r.body, "downstream duration timeout");
    }
    assert_eq!(px.stat("http.l.downstream_rq_max_duration_reached"), 3);
    // Logged with Envoy's details and the host the request had gone to.
    wait_until("five log lines", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 5)
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    for path in ["/limited", "/hcm"] {
        let want = format!("{path} 504 - max_duration_timeout {}", up.addr);
        assert!(text.lines().any(|l| l == want), "{want} in {text}");
    }
    let _ = std::fs::remove_file(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_still_streaming_at_the_deadline_is_cut() {
    let up = upstream("up").await;
    let px = routes_proxy(
        json!([istio_route("/")]),
        json!({}),
        vec![cluster("c", &[up.addr], json!({}))],
    )
    .await;
    let addr = px.addr("l");
    let mut s = h2_client(addr).await;
    // The upstream answers at once and never ends the body.
    let req = http::Request::post(format!("http://{addr}/pkg.Svc/Stream"))
        .header("content-type", "application/grpc")
        .header("grpc-timeout", "300m")
        .header("x-test-stall-body", "1")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"\0\0\0\0\0",
        )))
        .unwrap();
    let resp = s.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(HANG, http_body_util::BodyExt::collect(resp.into_body()))
        .await
        .expect("the body outlived the deadline");
    assert!(body.is_err(), "the stream should be reset");
    assert_eq!(px.stat("http.l.downstream_rq_max_duration_reached"), 1);
}

#[tokio::test]
async fn the_proxys_own_answers_reach_grpc_clients_in_grpc_form() {
    let px = routes_proxy(
        json!([{"match": {"prefix": "/pkg.Svc/"}, "route": {"cluster": "c"}}]),
        json!({}),
        vec![cluster("c", &[dead_addr()], json!({}))],
    )
    .await;
    let addr = px.addr("l");
    // No route: UNIMPLEMENTED; upstream refused: UNAVAILABLE with Envoy's text.
    let r = grpc_call(addr, "/other.Svc/M", &[]).await;
    assert_eq!((r.status, r.header("grpc-status")), (200, Some("12")));
    let r = grpc_call(addr, "/pkg.Svc/M", &[]).await;
    assert_eq!((r.status, r.header("grpc-status")), (200, Some("14")));
    assert!(
        r.header("grpc-message")
            .is_some_and(|m| m.starts_with("upstream connect error")),
        "{:?}",
        r.headers
    );
    // A plain HTTP client still gets HTTP statuses.
    assert_eq!(get(addr, "/other", &[]).await.status, 404);
}

#[tokio::test]
async fn fault_aborts_reach_grpc_clients_in_grpc_form() {
    let up = upstream("up").await;
    let fault = |abort: serde_json::Value| {
        json!({"envoy.filters.http.fault": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            "abort": abort}})
    };
    // As Istio writes a VirtualService's `fault.abort.grpcStatus` and `httpStatus`.
    let routes = json!([
        {"match": {"prefix": "/grpc-abort"}, "route": {"cluster": "c"},
         "typed_per_filter_config": fault(json!({"grpc_status": 8, "percentage": {"numerator": 100}}))},
        {"match": {"prefix": "/http-abort"}, "route": {"cluster": "c"},
         "typed_per_filter_config": fault(json!({"http_status": 503, "percentage": {"numerator": 100}}))},
        {"match": {"prefix": "/header-abort"}, "route": {"cluster": "c"},
         "typed_per_filter_config": fault(json!({"header_abort": {}, "percentage": {"numerator": 100}}))}]);
    let filters = vec![json!({"name": "envoy.filters.http.fault", "typed_config":
        {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}})];
    let px = proxy(bootstrap(
        vec![listener(
            "l",
            json!([{"name": "v", "domains": ["*"], "routes": routes}]),
            filters,
            json!({}),
        )],
        vec![cluster("c", &[up.addr], json!({}))],
    ))
    .await;
    let addr = px.addr("l");

    // A gRPC abort answers a gRPC call trailers-only: no body for the client to misread as
    // a message.
    let r = grpc_call(addr, "/grpc-abort", &[]).await;
    assert_eq!(
        (r.status, r.header("content-type"), r.header("grpc-status")),
        (200, Some("application/grpc"), Some("8")),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("grpc-message"), Some("fault filter abort"));
    assert_eq!(r.body, "", "a trailers-only reply has no body");
    // An HTTP abort of a gRPC call maps its status, as any local reply does.
    let r = grpc_call(addr, "/http-abort", &[]).await;
    assert_eq!((r.status, r.header("grpc-status")), (200, Some("14")));
    assert_eq!(r.body, "");
    // The gRPC status from the request's header.
    let r = grpc_call(
        addr,
        "/header-abort",
        &[("x-envoy-fault-abort-grpc-request", "5")],
    )
    .await;
    assert_eq!((r.status, r.header("grpc-status")), (200, Some("5")));
    // A plain HTTP request to the gRPC-abort route gets a plain 200 with the text.
    let r = get(addr, "/grpc-abort", &[]).await;
    assert_eq!(
        (r.status, r.body.as_str(), r.header("grpc-status")),
        (200, "fault filter abort", None)
    );
    assert_eq!(up.hits(), 0, "aborted requests never reach the upstream");
    assert_eq!(px.stat("http.l.fault.aborts_injected"), 4);
}

/// A route for `prefix` to cluster "a", with `extra` merged into its action.
fn route_to_a(prefix: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut r = json!({"match": {"prefix": prefix}, "route": {"cluster": "a"}});
    mosn::config::merge(&mut r["route"], extra);
    r
}

#[tokio::test]
async fn the_expected_timeout_header_is_what_the_attempt_may_take() {
    // Envoy's x-envoy-expected-rq-timeout-ms: the per-try timeout when there is one below
    // the request's, else the request's; nothing when neither limits the attempt.
    let a = upstream("a").await;
    let route = route_to_a;
    let retry =
        |per_try: &str| json!({"retry_on": "5xx", "num_retries": 1, "per_try_timeout": per_try});
    let p = routes_proxy(
        json!([
            route("/per-try", json!({"retry_policy": retry("1s")})),
            route("/long-try", json!({"retry_policy": retry("20s")})),
            route(
                "/unlimited-try",
                json!({"timeout": "0s", "retry_policy": retry("2s")})
            ),
            route("/unlimited", json!({"timeout": "0s"}))
        ]),
        json!({}),
        vec![cluster("a", &[a.addr], json!({}))],
    )
    .await;
    for (path, expected) in [
        ("/per-try", Some("1000")),
        ("/long-try", Some("15000")),
        ("/unlimited-try", Some("2000")),
        ("/unlimited", None),
    ] {
        let j = get(p.addr("l"), path, &[]).await.json();
        assert_eq!(
            j["headers"]["x-envoy-expected-rq-timeout-ms"].as_str(),
            expected,
            "{path}"
        );
    }
}

#[tokio::test]
async fn grpc_requests_learn_the_attempts_timeout_in_grpc_timeout() {
    // With max_grpc_timeout (Istio 1.10 sets 0s on every route), Envoy rewrites a gRPC
    // request's grpc-timeout to what the attempt may take, as it does the expected-timeout
    // header; without it, grpc-timeout passes as sent.
    let a = upstream("a").await;
    let route = route_to_a;
    let retry = json!({"retry_on": "5xx", "num_retries": 1, "per_try_timeout": "2s"});
    let p = routes_proxy(
        json!([
            route(
                "/per-try",
                json!({"max_grpc_timeout": "0s", "retry_policy": retry})
            ),
            route("/capped", json!({"max_grpc_timeout": "3s"})),
            route("/deadline", json!({"max_grpc_timeout": "0s"})),
            route(
                "/new-timeouts",
                json!({"max_grpc_timeout": "0s", "retry_policy": retry,
                "max_stream_duration": {"grpc_timeout_header_max": "0s"}})
            ),
            route("/plain", json!({}))
        ]),
        // Envoy's own headers off: grpc-timeout does not depend on them.
        json!({"http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            "suppress_envoy_headers": true}}]}),
        vec![cluster("a", &[a.addr], json!({}))],
    )
    .await;
    let grpc = |t: &'static str| vec![("content-type", "application/grpc"), ("grpc-timeout", t)];
    let seen = |path: &'static str, h: Vec<(&'static str, &'static str)>| {
        let addr = p.addr("l");
        async move {
            let j = get(addr, path, &h).await.json();
            j["headers"]["grpc-timeout"].as_str().map(str::to_string)
        }
    };
    assert_eq!(
        seen("/per-try", grpc("10S")).await.as_deref(),
        Some("2000m")
    );
    assert_eq!(seen("/capped", grpc("1H")).await.as_deref(), Some("3000m"));
    // What is left of the client's own deadline (it started when mosn received the request).
    let left = seen("/deadline", grpc("900m")).await.unwrap();
    let ms: u64 = left.strip_suffix('m').unwrap().parse().unwrap();
    assert!((500..=900).contains(&ms), "grpc-timeout {left}");
    assert_eq!(seen("/plain", grpc("900m")).await.as_deref(), Some("900m"));
    // With max_stream_duration, Envoy's "new timeouts", max_grpc_timeout is ignored.
    assert_eq!(
        seen("/new-timeouts", grpc("10S")).await.as_deref(),
        Some("10S")
    );
    // Not gRPC: left alone.
    let plain = vec![("grpc-timeout", "900m")];
    assert_eq!(seen("/per-try", plain).await.as_deref(), Some("900m"));
}
