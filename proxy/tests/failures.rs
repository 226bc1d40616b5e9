//! Retries, timeouts and Envoy's failure answers, against real upstreams and dead ports.

mod common;
use common::*;
use serde_json::json;

fn retry(on: &str, n: u32, extra: serde_json::Value) -> serde_json::Value {
    let mut r = json!({"retry_on": on, "num_retries": n,
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
        "retry_back_off": {"base_interval": "0.001s"}});
    mosn::config::merge(&mut r, extra);
    r
}

/// GET `path` with an upstream body that never ends: the response starts (200) and whether its
/// body then fails.
async fn stalled_body_fails(addr: std::net::SocketAddr, path: &str) -> bool {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut s, c) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(c);
    let req = http::Request::get(path)
        .header("host", "x")
        .header("x-test-stall-body", "1");
    let resp = s
        .send_request(
            req.body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    http_body_util::BodyExt::collect(resp.into_body())
        .await
        .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_timeouts_and_failure_answers() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let dead = dead_addr();
    let route = |prefix: &str, cluster: &str, r: serde_json::Value| {
        let mut action = json!({"cluster": cluster});
        if !r.is_null() {
            action["retry_policy"] = r;
        }
        json!({"match": {"prefix": prefix}, "route": action})
    };
    let routes = json!([
        route("/5xx", "ab", retry("5xx", 1, json!({}))),
        route("/gw", "ab", retry("gateway-error", 1, json!({}))),
        route("/codes", "ab", retry("retriable-status-codes", 1, json!({"retriable_status_codes": [409]}))),
        route("/reset", "ab", retry("reset", 1, json!({}))),
        route("/allreset", "a", retry("reset", 1, json!({}))),
        route("/nobudget", "nobudget", retry("5xx", 1, json!({}))),
        route("/noretry", "a", serde_json::Value::Null),
        route("/connect", "deadfirst", retry("connect-failure", 3, json!({}))),
        route("/dead", "dead", serde_json::Value::Null),
        route("/empty", "empty", serde_json::Value::Null),
        route("/pertry", "ab", retry("5xx", 1, json!({"per_try_timeout": "0.3s"}))),
        {"match": {"prefix": "/timeout"}, "route": {"cluster": "a", "timeout": "0.3s"}},
        {"match": {"prefix": "/notimeout"}, "route": {"cluster": "a", "timeout": "0s"}},
        {"match": {"prefix": "/idle"}, "route": {"cluster": "a", "timeout": "0s", "idle_timeout": "0.3s"}},
        {"match": {"prefix": "/grpc"}, "route": {"cluster": "a", "timeout": "0.3s", "max_grpc_timeout": "0s"}},
        {"match": {"prefix": "/capped"}, "route": {"cluster": "a", "timeout": "0s", "max_grpc_timeout": "0.3s"}},
    ]);
    let log = FlagLog::new("failures");
    let clusters = vec![
        cluster("ab", &[a.addr, b.addr], json!({})),
        cluster("a", &[a.addr], json!({})),
        cluster(
            "nobudget",
            &[a.addr],
            json!({"circuit_breakers": {"thresholds": [{"max_retries": 0}]}}),
        ),
        cluster("deadfirst", &[dead, a.addr], json!({})),
        cluster("dead", &[dead], json!({})),
        json!({"name": "empty", "type": "STATIC", "connect_timeout": "1s"}),
    ];
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

    // 5xx on one host is retried on the other (previous_hosts), whichever RR picks first.
    for _ in 0..4 {
        let r = get(addr, "/5xx", &[("x-test-fail-on", "a")]).await;
        assert_eq!((r.status, r.upstream().as_str()), (200, "b"));
    }
    assert!(p.stat("cluster.ab.upstream_rq_retry") >= 2);
    assert!(p.stat("cluster.ab.upstream_rq_retry_success") >= 2);
    // Exhausted: the upstream's own 503 comes back after 1 + num_retries tries.
    let before = a.hits() + b.hits();
    let r = get(
        addr,
        "/5xx",
        &[("x-test-status", "503"), ("x-test-tag", "urx")],
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(a.hits() + b.hits() - before, 2);
    assert_eq!(p.stat("cluster.ab.upstream_rq_retry_limit_exceeded"), 1);
    // The access log says why the upstream's answer was not retried again.
    assert_eq!(log.flags("urx").await, "URX");
    // The max_retries breaker at 0: not retried, and the log says UO.
    let before = a.hits();
    let r = get(
        addr,
        "/nobudget",
        &[("x-test-status", "503"), ("x-test-tag", "budget")],
    )
    .await;
    assert_eq!((r.status, a.hits() - before), (503, 1));
    assert_eq!(log.flags("budget").await, "UO");
    assert_eq!(p.stat("cluster.nobudget.upstream_rq_retry_overflow"), 1);
    // gateway-error retries 502 but not 500.
    let before = a.hits() + b.hits();
    assert_eq!(
        get(addr, "/gw", &[("x-test-status", "500")]).await.status,
        500
    );
    assert_eq!(a.hits() + b.hits() - before, 1);
    let before = a.hits() + b.hits();
    assert_eq!(
        get(addr, "/gw", &[("x-test-status", "502")]).await.status,
        502
    );
    assert_eq!(a.hits() + b.hits() - before, 2);
    // retriable-status-codes.
    let before = a.hits() + b.hits();
    assert_eq!(
        get(addr, "/codes", &[("x-test-status", "409")])
            .await
            .status,
        409
    );
    assert_eq!(a.hits() + b.hits() - before, 2);
    let before = a.hits() + b.hits();
    assert_eq!(
        get(addr, "/codes", &[("x-test-status", "503")])
            .await
            .status,
        503
    );
    assert_eq!(a.hits() + b.hits() - before, 1);
    // Upstream resets: retried with `reset`, a 503 UR without a retry policy.
    for _ in 0..2 {
        let r = get(addr, "/reset", &[("x-test-reset-on", "a")]).await;
        assert_eq!((r.status, r.upstream().as_str()), (200, "b"));
    }
    let r = get(
        addr,
        "/noretry",
        &[("x-test-reset-on", "a"), ("x-test-tag", "ur")],
    )
    .await;
    // An upstream that closes the connection instead of answering: Envoy's UC.
    assert_eq!((r.status, log.flags("ur").await.as_str()), (503, "UC"));
    assert_eq!(
        r.body,
        "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
    );
    // Retried and still failing: the text says the reason is the latest of several.
    let r = get(
        addr,
        "/allreset",
        &[("x-test-reset-on", "a"), ("x-test-tag", "uc")],
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(log.flags("uc").await, "UC,URX");
    assert!(
        r.body
            .ends_with("retried and the latest reset reason: connection termination"),
        "{}",
        r.body
    );
    assert_eq!(
        get(addr, "/noretry", &[("x-test-status", "503")])
            .await
            .status,
        503
    );

    // Connect failures: retried to the live host; without retries 503 UF.
    for _ in 0..3 {
        assert_eq!(get(addr, "/connect", &[]).await.status, 200);
    }
    let r = get(addr, "/dead", &[("x-test-tag", "uf")]).await;
    assert_eq!((r.status, log.flags("uf").await.as_str()), (503, "UF"));
    // Envoy's words for a refused connection (errno 111, ECONNREFUSED).
    assert!(
        r.body.ends_with(
            "reset reason: remote connection failure, transport failure reason: delayed connect error: 111"
        ),
        "{}",
        r.body
    );
    assert!(p.stat("cluster.dead.upstream_cx_connect_fail") >= 1);
    let r = get(addr, "/empty", &[("x-test-tag", "uh")]).await;
    assert_eq!(
        (r.status, r.body.as_str(), log.flags("uh").await.as_str()),
        (503, "no healthy upstream", "UH")
    );

    // Per-try timeout moves on to the other host; the global timeout answers 504 UT.
    for _ in 0..2 {
        let r = get(addr, "/pertry", &[("x-test-slow-on", "a")]).await;
        assert_eq!((r.status, r.upstream().as_str()), (200, "b"));
    }
    assert!(p.stat("cluster.ab.upstream_rq_per_try_timeout") >= 1);
    let r = get(
        addr,
        "/timeout",
        &[("x-test-slow-on", "a"), ("x-test-tag", "ut")],
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str(), log.flags("ut").await.as_str()),
        (504, "upstream request timeout", "UT")
    );
    assert_eq!(p.stat("cluster.a.upstream_rq_timeout"), 1);
    // timeout: 0s disables the route timeout.
    assert_eq!(
        get(addr, "/notimeout", &[("x-test-delay-ms", "500")])
            .await
            .status,
        200
    );
    // A route idle_timeout bounds the wait for a silent upstream: 504 SI.
    let r = get(
        addr,
        "/idle",
        &[("x-test-slow-on", "a"), ("x-test-tag", "si")],
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str(), log.flags("si").await.as_str()),
        (504, "stream timeout", "SI")
    );
    assert_eq!(get(addr, "/idle", &[]).await.status, 200);
    // ... and the gaps in a response body: a stalled body is cut off, the client sees an error.
    let body_err = tokio::time::timeout(HANG, stalled_body_fails(addr, "/idle"))
        .await
        .expect("stalled body was never cut off");
    assert!(body_err);
    // The route timeout covers the whole response (Envoy): a body still unfinished when it
    // expires is cut off and counted as a timeout.
    let cut = tokio::time::timeout(HANG, stalled_body_fails(addr, "/timeout"))
        .await
        .expect("a body past the route timeout was never cut off");
    assert!(cut);
    assert_eq!(p.stat("cluster.a.upstream_rq_timeout"), 2);
    // gRPC with max_grpc_timeout: grpc-timeout replaces the route timeout (0 cap = none) ...
    let grpc = [
        ("content-type", "application/grpc"),
        ("x-test-slow-on", "a"),
    ];
    let r = get(
        addr,
        "/grpc",
        &[
            grpc[0],
            grpc[1],
            ("grpc-timeout", "300m"),
            ("x-test-tag", "grpc-ut"),
        ],
    )
    .await;
    // A gRPC client gets the timeout in gRPC's form, as from Envoy: 200, UNAVAILABLE.
    assert_eq!(
        (
            r.status,
            r.header("grpc-status"),
            log.flags("grpc-ut").await.as_str()
        ),
        (200, Some("14"), "UT")
    );
    let r = get(addr, "/grpc", &[grpc[0], ("x-test-delay-ms", "600")]).await;
    assert_eq!(
        r.status, 200,
        "no grpc-timeout: the 0.3 s route timeout does not apply to gRPC"
    );
    // ... and a non-zero max caps a missing or larger header.
    let r = get(
        addr,
        "/capped",
        &[grpc[0], grpc[1], ("grpc-timeout", "100S")],
    )
    .await;
    assert_eq!(r.header("grpc-message"), Some("upstream request timeout"));
    let r = get(addr, "/grpc", &[("x-test-delay-ms", "600")]).await;
    assert_eq!(r.status, 504, "non-gRPC requests keep the route timeout");
    // The proxy is still healthy after all of that.
    assert_eq!(get(addr, "/noretry", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_on_conditions_istio_can_name() {
    // `retryOn` values Istio accepts besides the common ones: each retries what it names and
    // nothing else. One try more shows as one upstream hit more.
    let a = upstream("a").await;
    let route = |prefix: &str, r: serde_json::Value| json!({"match": {"prefix": prefix}, "route": {"cluster": "a", "retry_policy": r}});
    let routes = json!([
        route("/4xx", retry("retriable-4xx", 1, json!({}))),
        route("/5xx", retry("5xx", 1, json!({}))),
        route("/limited", retry("envoy-ratelimited", 1, json!({}))),
        route(
            "/headers",
            retry(
                "retriable-headers",
                1,
                json!({"retriable_headers": [{"name": "x-try-again", "present_match": true}]})
            )
        ),
        route("/internal", retry("internal", 1, json!({}))),
    ]);
    let p = routes_proxy(routes, json!({}), vec![cluster("a", &[a.addr], json!({}))]).await;
    let addr = p.addr("l");
    let tries = |path: &'static str, headers: Vec<(&'static str, &'static str)>| {
        let a = &a;
        async move {
            let before = a.hits();
            get(addr, path, &headers).await;
            a.hits() - before
        }
    };
    let status = |s: &'static str| ("x-test-status", s);
    let answer_with = |h: &'static str| ("x-test-response-header", h);
    assert_eq!(tries("/4xx", vec![status("409")]).await, 2, "409");
    assert_eq!(tries("/4xx", vec![status("404")]).await, 1, "only 409");
    // A 5xx the upstream's rate limiter marked is retried only under envoy-ratelimited.
    assert_eq!(tries("/5xx", vec![status("503")]).await, 2);
    let limited = answer_with("x-envoy-ratelimited: true");
    assert_eq!(tries("/5xx", vec![status("503"), limited]).await, 1);
    assert_eq!(tries("/limited", vec![status("429"), limited]).await, 2);
    assert_eq!(tries("/limited", vec![status("429")]).await, 1);
    assert_eq!(
        tries("/headers", vec![answer_with("x-try-again: 1")]).await,
        2
    );
    assert_eq!(tries("/headers", vec![]).await, 1);
    assert_eq!(
        tries("/internal", vec![answer_with("grpc-status: 13")]).await,
        2,
        "gRPC INTERNAL"
    );
    assert_eq!(
        tries("/internal", vec![answer_with("grpc-status: 14")]).await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_before_request_retries_until_a_request_was_sent() {
    // Istio's default inbound policy (`reset-before-request`, two retries): a connection
    // that cannot be made is retried, a request the upstream took and then dropped is not.
    let a = upstream("a").await;
    let dead = dead_addr();
    let rbr = || retry("reset-before-request", 2, json!({}));
    let routes = json!([
        {"match": {"prefix": "/dead"}, "route": {"cluster": "dead", "retry_policy": rbr()}},
        {"match": {"prefix": "/mixed"}, "route": {"cluster": "mixed", "retry_policy": rbr()}},
        {"match": {"prefix": "/a"}, "route": {"cluster": "a", "retry_policy": rbr()}},
    ]);
    let clusters = vec![
        cluster("dead", &[dead], json!({})),
        cluster("mixed", &[dead, a.addr], json!({})),
        cluster("a", &[a.addr], json!({})),
    ];
    let p = routes_proxy(routes, json!({}), clusters).await;
    let addr = p.addr("l");
    let r = get(addr, "/dead", &[]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(p.stat("cluster.dead.upstream_rq_retry"), 2);
    // Round robin sends half of these to the dead host first: each is retried on the other.
    for _ in 0..4 {
        assert_eq!(get(addr, "/mixed", &[]).await.status, 200);
    }
    assert!(p.stat("cluster.mixed.upstream_rq_retry") >= 1);
    // The upstream read the request and closed: sent, so not retried.
    let before = a.hits();
    let r = get(addr, "/a", &[("x-test-reset-on", "a")]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(a.hits() - before, 1);
    assert_eq!(p.stat("cluster.a.upstream_rq_retry"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_headers_count_only_from_internal_clients() {
    let up = upstream("up").await;
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]);
    let sent: [(&str, &str); 4] = [
        ("x-envoy-upstream-rq-timeout-ms", "200"),
        ("x-envoy-internal", "true"),
        ("x-envoy-decorator-operation", "op"),
        ("x-test-delay-ms", "600"),
    ];
    // Envoy's defaults (nothing internal): the request's timeout is stripped, not obeyed.
    let px = routes_proxy(
        routes.clone(),
        json!({}),
        vec![cluster("c", &[up.addr], json!({}))],
    )
    .await;
    let r = get(px.addr("l"), "/", &sent).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = &r.json()["headers"];
    assert!(
        seen.get("x-envoy-upstream-rq-timeout-ms").is_none(),
        "{seen}"
    );
    assert!(seen.get("x-envoy-internal").is_none(), "{seen}");
    assert_eq!(
        seen["x-envoy-decorator-operation"], "op",
        "not an edge request"
    );
    drop(px);

    // Loopback clients internal: the router obeys and consumes the headers.
    let hcm = json!({"use_remote_address": true, "internal_address_config": {"cidr_ranges": [
        {"address_prefix": "127.0.0.0", "prefix_len": 8}]}});
    let px = routes_proxy(routes, hcm, vec![cluster("c", &[up.addr], json!({}))]).await;
    let addr = px.addr("l");
    let r = get(addr, "/", &sent).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (504, "upstream request timeout")
    );
    let r = get(addr, "/", &[("x-envoy-upstream-rq-timeout-ms", "5000")]).await;
    let seen = &r.json()["headers"];
    assert_eq!(seen["x-envoy-internal"], "true", "{seen}");
    assert_eq!(seen["x-envoy-expected-rq-timeout-ms"], "5000", "{seen}");
    assert!(
        seen.get("x-envoy-upstream-rq-timeout-ms").is_none(),
        "consumed: {seen}"
    );
    // Retries from the headers alone, on a route without a retry policy.
    let retried = [
        ("x-envoy-retry-on", "retriable-status-codes"),
        ("x-envoy-retriable-status-codes", "418"),
        ("x-envoy-max-retries", "2"),
        ("x-test-status", "418"),
    ];
    assert_eq!(
        tries(&up, addr, &retried).await,
        (418, 3),
        "the first and two retries"
    );
    // A request that something forwarded is not the peer's own: not internal, so stripped.
    let forwarded = [
        ("x-forwarded-for", "127.0.0.9"),
        ("x-envoy-retry-on", "5xx"),
        ("x-test-status", "503"),
    ];
    assert_eq!(tries(&up, addr, &forwarded).await, (503, 1), "no retry");
}

/// A request's status and how many tries of it reached `up`.
async fn tries(
    up: &Upstream,
    addr: std::net::SocketAddr,
    headers: &[(&str, &str)],
) -> (u16, usize) {
    let before = up.hits();
    let status = get(addr, "/", headers).await.status;
    (status, up.hits() - before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_previous_priorities_moves_to_the_next_priority() {
    // Istio's `retryRemoteLocalities`: the retry leaves the priority it tried (here P0, whose
    // one host fails) for the next. Without it, P0 takes all the load while it is healthy,
    // and the retry fails on the same host.
    let (a, b) = (upstream("a").await, upstream("b").await);
    let ep = |addr: std::net::SocketAddr| {
        json!({"endpoint": {"address": {"socket_address": {
        "address": addr.ip().to_string(), "port_value": addr.port()}}}})
    };
    let assignment = |name: &str| {
        json!({"cluster_name": name, "endpoints": [
        {"lb_endpoints": [ep(a.addr)]},
        {"priority": 1, "lb_endpoints": [ep(b.addr)]}]})
    };
    let mut c = cluster("c", &[], json!({}));
    c["load_assignment"] = assignment("c");
    let priorities = json!({"retry_priority": {"name": "envoy.retry_priorities.previous_priorities",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
            "update_frequency": 1}}});
    let routes = json!([
        {"match": {"prefix": "/moves"}, "route": {"cluster": "c", "retry_policy": retry("5xx", 1, priorities)}},
        {"match": {"prefix": "/stays"}, "route": {"cluster": "c", "retry_policy": retry("5xx", 1, json!({}))}}]);
    let p = routes_proxy(routes, json!({}), vec![c]).await;
    let addr = p.addr("l");
    let fail_a = [("x-test-fail-on", "a")];
    let r = get(addr, "/moves", &fail_a).await;
    assert_eq!(
        (r.status, r.upstream()),
        (200, "b".to_string()),
        "{}",
        r.body
    );
    let r = get(addr, "/stays", &fail_a).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(b.hits(), 1);
}
