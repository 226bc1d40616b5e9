//! End-to-end routing through the proxy: virtual hosts, matchers, actions and header mutations.

mod common;
use common::*;
use serde_json::json;

fn hv(k: &str, v: &str) -> serde_json::Value {
    json!({"header": {"key": k, "value": v}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_hosts_matchers_and_actions() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let vhosts = json!([
        {"name": "reviews", "domains": ["reviews", "reviews.default.svc.cluster.local:9080", "10.0.0.1"],
         "routes": [
            {"match": {"prefix": "/", "headers": [{"name": "end-user", "exact_match": "jason"}]}, "route": {"cluster": "b"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]},
        {"name": "wild", "domains": ["*.example.com", "api.*"],
         "request_headers_to_add": [hv("x-level", "vhost")],
         "response_headers_to_add": [hv("x-resp-level", "vhost")],
         "routes": [
            {"match": {"path": "/exact"}, "route": {"cluster": "b"}},
            {"match": {"prefix": "/CaSe", "case_sensitive": false}, "route": {"cluster": "b"}},
            {"match": {"safe_regex": {"regex": "/re/[0-9]+"}}, "route": {"cluster": "b"}},
            {"match": {"prefix": "/q", "query_parameters": [{"name": "v", "string_match": {"exact": "2"}}]}, "route": {"cluster": "b"}},
            {"match": {"prefix": "/h", "headers": [
                {"name": "x-inv", "string_match": {"exact": "no"}, "invert_match": true},
                {"name": "x-range", "range_match": {"start": 10, "end": 20}},
                {"name": "x-absent", "present_match": false},
                {"name": "x-pre", "prefix_match": "ab"},
                {"name": "x-ci", "string_match": {"exact": "MiXeD", "ignore_case": true}},
                {"name": "x-re", "safe_regex_match": {"regex": "v[0-9]"}}]}, "route": {"cluster": "b"}},
            {"match": {"prefix": "/rewrite/"}, "route": {"cluster": "a", "prefix_rewrite": "/new/", "host_rewrite_literal": "rewritten.local"},
             "request_headers_to_add": [hv("x-level", "route")],
             "request_headers_to_remove": ["x-drop-me"],
             "response_headers_to_add": [hv("x-resp-level", "route")],
             "response_headers_to_remove": ["x-upstream-remove-me"]},
            {"match": {"prefix": "/regex/"}, "route": {"cluster": "a", "regex_rewrite": {"pattern": {"regex": "^/regex/([a-z]+)/(\\d+)$"}, "substitution": "/\\2/\\1"}}},
            {"match": {"prefix": "/direct"}, "direct_response": {"status": 418, "body": {"inline_string": "teapot"}}},
            {"match": {"prefix": "/redirect"}, "redirect": {"host_redirect": "elsewhere.example.com", "path_redirect": "/moved", "response_code": "FOUND"}},
            {"match": {"prefix": "/byheader"}, "route": {"cluster_header": "x-cluster"}},
            {"match": {"prefix": "/missing"}, "route": {"cluster": "no-such-cluster"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]},
        {"name": "default", "domains": ["*"], "routes": [{"match": {"prefix": "/only"}, "route": {"cluster": "a"}}]}
    ]);
    let log = FlagLog::new("routing");
    let mut l = listener("l", vhosts, vec![], log.hcm());
    l["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["request_headers_to_add"] =
        json!([hv("x-level", "global")]);
    l["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
        ["response_headers_to_add"] =
        json!([{"header": {"key": "x-resp-level", "value": "global"}, "append": false}]);
    let p = proxy(bootstrap(
        vec![l],
        vec![
            cluster("a", &[a.addr], json!({})),
            cluster("b", &[b.addr], json!({})),
        ],
    ))
    .await;
    let addr = p.addr("l");
    let up = |r: &Resp| r.upstream();

    // Domains: exact with and without port, IP, wildcards, default.
    assert_eq!(up(&get(addr, "/", &[("host", "reviews")]).await), "a");
    assert_eq!(
        up(&get(
            addr,
            "/",
            &[("host", "reviews.default.svc.cluster.local:9080")]
        )
        .await),
        "a"
    );
    assert_eq!(up(&get(addr, "/", &[("host", "10.0.0.1")]).await), "a");
    assert_eq!(
        get(addr, "/", &[("host", "reviews:9999")]).await.status,
        404,
        "port must match"
    );
    assert_eq!(
        up(&get(addr, "/exact", &[("host", "x.example.com")]).await),
        "b"
    );
    assert_eq!(
        up(&get(addr, "/exact", &[("host", "api.anything")]).await),
        "b"
    );
    assert_eq!(
        get(addr, "/exact", &[("host", "example.com")]).await.status,
        404,
        "*.x needs a label"
    );
    assert_eq!(up(&get(addr, "/only", &[("host", "other")]).await), "a");
    let nr = get(addr, "/nothing", &[("host", "other"), ("x-test-tag", "nr")]).await;
    assert_eq!((nr.status, log.flags("nr").await.as_str()), (404, "NR"));
    // As from Envoy, a local reply carries only these headers: the flags go to the log.
    let mut names: Vec<&str> = nr.headers.keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["content-length", "date", "server"]);

    // Header match with the deprecated exact_match (Istio 1.10's reviews-test-v2).
    assert_eq!(
        up(&get(addr, "/", &[("host", "reviews"), ("end-user", "jason")]).await),
        "b"
    );
    assert_eq!(
        up(&get(addr, "/", &[("host", "reviews"), ("end-user", "json")]).await),
        "a"
    );

    let w = |path: &'static str| async move { up(&get(addr, path, &[("host", "w.example.com")]).await) };
    assert_eq!(w("/exact").await, "b");
    assert_eq!(w("/exact?x=1").await, "b", "path match ignores the query");
    assert_eq!(w("/exact/more").await, "a");
    assert_eq!(w("/case/x").await, "b", "case-insensitive prefix");
    assert_eq!(w("/re/123").await, "b");
    assert_eq!(w("/re/12a").await, "a", "regex must match the whole path");
    assert_eq!(w("/q?a=1&v=2").await, "b");
    assert_eq!(w("/q?v=3").await, "a");

    let hdrs_ok = [
        ("host", "w.example.com"),
        ("x-inv", "yes"),
        ("x-range", "15"),
        ("x-pre", "abc"),
        ("x-ci", "mixed"),
        ("x-re", "v7"),
    ];
    assert_eq!(up(&get(addr, "/h", &hdrs_ok).await), "b");
    for (i, bad) in [
        ("x-inv", "no"),
        ("x-range", "20"),
        ("x-pre", "ba"),
        ("x-ci", "other"),
        ("x-re", "v77"),
    ]
    .iter()
    .enumerate()
    {
        let mut h = hdrs_ok.to_vec();
        h.retain(|(k, _)| k != &bad.0);
        h.push(*bad);
        assert_eq!(up(&get(addr, "/h", &h).await), "a", "case {i}: {bad:?}");
    }
    let mut with_absent = hdrs_ok.to_vec();
    with_absent.push(("x-absent", "1"));
    assert_eq!(
        up(&get(addr, "/h", &with_absent).await),
        "a",
        "present_match false"
    );

    // Rewrites and header mutations (route config level wins on conflicts).
    let r = get(
        addr,
        "/rewrite/x?y=1",
        &[("host", "w.example.com"), ("x-drop-me", "1")],
    )
    .await;
    let j = r.json();
    assert_eq!(j["path"], "/new/x?y=1");
    assert_eq!(j["headers"]["x-envoy-original-path"], "/rewrite/x?y=1");
    assert_eq!(j["headers"]["host"], "rewritten.local");
    assert!(j["headers"].get("x-drop-me").is_none());
    assert_eq!(
        j["headers"]["x-level"], "route,vhost,global",
        "appended most specific first"
    );
    assert!(j["headers"]["x-request-id"].as_str().unwrap().len() == 36);
    assert_eq!(j["headers"]["x-forwarded-proto"], "http");
    assert_eq!(r.header("x-resp-level"), Some("global"));
    assert!(r.headers.get("x-upstream-remove-me").is_none());
    assert!(r.header("x-envoy-upstream-service-time").is_some());
    assert_eq!(
        get(addr, "/regex/abc/42", &[("host", "w.example.com")])
            .await
            .json()["path"],
        "/42/abc"
    );

    let d = get(addr, "/direct", &[("host", "w.example.com")]).await;
    assert_eq!((d.status, d.body.as_str()), (418, "teapot"));
    assert_eq!(d.header("x-resp-level"), Some("global"));
    let rd = get(addr, "/redirect?q=1", &[("host", "api.x:8080")]).await;
    assert_eq!(rd.status, 302);
    assert_eq!(
        rd.header("location"),
        Some("http://elsewhere.example.com/moved?q=1")
    );

    assert_eq!(
        up(&get(
            addr,
            "/byheader",
            &[("host", "w.example.com"), ("x-cluster", "b")]
        )
        .await),
        "b"
    );
    let nc = get(
        addr,
        "/byheader",
        &[
            ("host", "w.example.com"),
            ("x-cluster", "zzz"),
            ("x-test-tag", "nc"),
        ],
    )
    .await;
    assert_eq!((nc.status, log.flags("nc").await.as_str()), (503, "NC"));
    assert_eq!(
        get(addr, "/missing", &[("host", "w.example.com")])
            .await
            .status,
        503
    );
    assert!(p.stat("http.l.no_route") >= 2);
    assert!(p.stat("cluster.b.upstream_rq_200") >= 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_downstream_and_upstream() {
    let a = upstream("a").await;
    let vh = json!([{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/h2up"}, "route": {"cluster": "h2"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "h1"}}]}]);
    let h2opts = json!({"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}});
    let p = proxy(bootstrap(
        vec![listener("l", vh, vec![], json!({}))],
        vec![
            cluster("h1", &[a.addr], json!({})),
            cluster("h2", &[a.addr], h2opts),
        ],
    ))
    .await;
    let addr = p.addr("l");
    // h2c in, HTTP/1.1 out.
    let r = request(addr, "POST", "/x", &[("host", "svc.local")], "hello", true).await;
    let j = r.json();
    assert_eq!(
        (
            r.status,
            j["version"].as_str(),
            j["headers"]["host"].as_str()
        ),
        (200, Some("HTTP/1.1"), Some("svc.local"))
    );
    assert_eq!(j["body_len"], 5);
    // HTTP/1.1 in, h2c out, :authority is the request's host, connection reused.
    for _ in 0..3 {
        let r = get(addr, "/h2up", &[("host", "svc.local:9080")]).await;
        let j = r.json();
        assert_eq!(
            (j["version"].as_str(), j["authority"].as_str()),
            (Some("HTTP/2.0"), Some("svc.local:9080"))
        );
    }
    assert_eq!(
        p.stat("cluster.h2.upstream_cx_total"),
        1,
        "one multiplexed h2 connection"
    );
    // h2c both ways.
    let r = request(addr, "GET", "/h2up", &[("host", "svc.local")], "", true).await;
    assert_eq!(r.json()["version"], "HTTP/2.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_downstream_connections_close_after_idle_timeout() {
    use tokio::io::AsyncWriteExt;
    let vh = json!([{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]);
    let hcm = json!({"common_http_protocol_options": {"idle_timeout": "0.2s"}});
    let p = proxy(bootstrap(vec![listener("l", vh, vec![], hcm)], vec![])).await;
    let mut s = tokio::net::TcpStream::connect(p.addr("l")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Read the response, then keep reading: the proxy closes the idle connection (EOF).
    let (seen, closed) = read_to_close(&mut s).await;
    assert!(seen.starts_with("HTTP/1.1 200 OK"));
    assert!(closed, "idle connection was not closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_upgrades_are_tunnelled_when_enabled() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = upstream("a").await;
    let vh = json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]);
    let up = json!({"upgrade_configs": [{"upgrade_type": "echo"}]});
    let p = proxy(bootstrap(
        vec![
            listener("on", vh.clone(), vec![], up),
            listener("off", vh, vec![], json!({})),
        ],
        vec![cluster("a", &[a.addr], json!({}))],
    ))
    .await;
    let handshake = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n";
    let mut s = tokio::net::TcpStream::connect(p.addr("on")).await.unwrap();
    s.write_all(handshake).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(HANG, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for msg in [&b"ping"[..], b"second message"] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(HANG, s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, msg);
    }
    // Without upgrade_configs the Upgrade headers are hop-by-hop and dropped: a plain answer.
    let r = get(
        p.addr("off"),
        "/ws",
        &[("connection", "upgrade"), ("upgrade", "echo")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.json()["headers"].get("upgrade").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_follows_use_remote_address() {
    let a = upstream("a").await;
    let vh = json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]);
    let p = proxy(bootstrap(
        vec![
            listener(
                "edge",
                vh.clone(),
                vec![],
                json!({"use_remote_address": true, "server_name": "istio-envoy"}),
            ),
            listener("mesh", vh, vec![], json!({})),
        ],
        vec![cluster("a", &[a.addr], json!({}))],
    ))
    .await;
    let j = get(p.addr("edge"), "/", &[("x-forwarded-for", "10.9.8.7")])
        .await
        .json();
    assert_eq!(j["headers"]["x-forwarded-for"], "10.9.8.7,127.0.0.1");
    let j = get(p.addr("edge"), "/", &[]).await.json();
    assert_eq!(j["headers"]["x-forwarded-for"], "127.0.0.1");
    // server_header_transformation: OVERWRITE by default, with the HCM's server_name.
    assert_eq!(
        get(p.addr("mesh"), "/", &[]).await.header("server"),
        Some("envoy")
    );
    assert_eq!(
        get(p.addr("edge"), "/", &[]).await.header("server"),
        Some("istio-envoy")
    );
    let j = get(p.addr("mesh"), "/", &[("x-forwarded-for", "10.9.8.7")])
        .await
        .json();
    assert_eq!(
        j["headers"]["x-forwarded-for"], "10.9.8.7",
        "left alone without use_remote_address"
    );
}

/// Envoy's `server_header_transformation`: OVERWRITE replaces the upstream's Server with the
/// HCM's `server_name`, APPEND_IF_ABSENT adds it only when the upstream sent none, and
/// PASS_THROUGH leaves the header as the upstream sent it, or absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_header_transformations() {
    let a = upstream("a").await;
    let vh = json!([{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/none"}, "direct_response": {"status": 503}},
        {"match": {"prefix": "/nocluster"}, "route": {"cluster": "missing"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]);
    let mode = |m: &str| json!({"server_header_transformation": m, "server_name": "mosn-test"});
    let p = proxy(bootstrap(
        vec![
            listener("overwrite", vh.clone(), vec![], mode("OVERWRITE")),
            listener("append", vh.clone(), vec![], mode("APPEND_IF_ABSENT")),
            listener("pass", vh, vec![], mode("PASS_THROUGH")),
        ],
        vec![cluster("a", &[a.addr], json!({}))],
    ))
    .await;
    let own = [("x-test-server", "app")];
    for (l, with, without) in [
        ("overwrite", Some("mosn-test"), Some("mosn-test")),
        ("append", Some("app"), Some("mosn-test")),
        ("pass", Some("app"), None),
    ] {
        let r = get(p.addr(l), "/", &own).await;
        assert_eq!(r.header("server"), with, "{l}, upstream sends Server");
        let r = get(p.addr(l), "/", &[]).await;
        assert_eq!(r.header("server"), without, "{l}, upstream sends none");
        // The proxy's own replies: a route's direct response and a 503 NC.
        for path in ["/none", "/nocluster"] {
            let r = get(p.addr(l), path, &[]).await;
            assert_eq!(r.status, 503, "{l} {path}");
            assert_eq!(r.header("server"), without, "{l}, the proxy's own {path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_and_router_headers_can_be_turned_off() {
    let a = upstream("a").await;
    let vh = json!([{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/old/"}, "route": {"cluster": "a", "prefix_rewrite": "/new/"}}]}]);
    let mut quiet = listener(
        "quiet",
        vh.clone(),
        vec![],
        json!({"generate_request_id": false}),
    );
    let hcm = &mut quiet["filter_chains"][0]["filters"][0]["typed_config"];
    let router = hcm["http_filters"]
        .as_array_mut()
        .unwrap()
        .last_mut()
        .unwrap();
    router["typed_config"]["suppress_envoy_headers"] = json!(true);
    let p = proxy(bootstrap(
        vec![listener("plain", vh, vec![], json!({})), quiet],
        vec![cluster("a", &[a.addr], json!({}))],
    ))
    .await;

    // Envoy's defaults: the HCM adds x-request-id, the router its x-envoy-* headers.
    let r = get(p.addr("plain"), "/old/x", &[]).await;
    let j = r.json();
    assert_eq!(j["path"], "/new/x");
    assert_eq!(
        j["headers"]["x-request-id"].as_str().map(str::len),
        Some(36)
    );
    assert_eq!(j["headers"]["x-envoy-expected-rq-timeout-ms"], "15000");
    assert_eq!(j["headers"]["x-envoy-original-path"], "/old/x");
    assert!(r.header("x-envoy-upstream-service-time").is_some());

    // generate_request_id false and suppress_envoy_headers: none of them.
    let r = get(p.addr("quiet"), "/old/x", &[]).await;
    let j = r.json();
    assert_eq!(j["path"], "/new/x");
    for h in [
        "x-request-id",
        "x-envoy-expected-rq-timeout-ms",
        "x-envoy-original-path",
    ] {
        assert!(j["headers"].get(h).is_none(), "{h} sent upstream: {j}");
    }
    assert!(r.header("x-envoy-upstream-service-time").is_none());
    assert_eq!(j["headers"]["x-forwarded-proto"], "http", "the HCM's, kept");
    // A request's own id still goes through.
    let j = get(p.addr("quiet"), "/old/x", &[("x-request-id", "abc")])
        .await
        .json();
    assert_eq!(j["headers"]["x-request-id"], "abc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_count_goes_upstream_and_back_when_the_vhost_asks() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let retry =
        json!({"retry_on": "5xx", "num_retries": 1, "retry_back_off": {"base_interval": "0.001s"}});
    let vh = |counts: bool| {
        json!([{"name": "v", "domains": ["*"],
            "include_request_attempt_count": counts, "include_attempt_count_in_response": counts,
            "routes": [
                {"match": {"prefix": "/retry"}, "route": {"cluster": "ab", "retry_policy": retry}},
                {"match": {"prefix": "/dead"}, "route": {"cluster": "dead", "retry_policy":
                    {"retry_on": "connect-failure", "num_retries": 2, "retry_back_off": {"base_interval": "0.001s"}}}},
                {"match": {"prefix": "/"}, "route": {"cluster": "ab"}}]}])
    };
    let p = proxy(bootstrap(
        vec![
            listener("counts", vh(true), vec![], json!({})),
            listener("plain", vh(false), vec![], json!({})),
        ],
        vec![
            cluster("ab", &[a.addr, b.addr], json!({})),
            cluster("dead", &[dead_addr()], json!({})),
        ],
    ))
    .await;
    let count = |r: &Resp| {
        (
            r.json()["headers"]["x-envoy-attempt-count"]
                .as_str()
                .map(str::to_string),
            r.header("x-envoy-attempt-count").map(str::to_string),
        )
    };
    let one = Some("1".to_string());
    let r = get(p.addr("counts"), "/", &[]).await;
    assert_eq!(count(&r), (one.clone(), one));
    // Both attempts answer 503: the second attempt says so upstream, and the response too.
    let r = get(p.addr("counts"), "/retry", &[("x-test-status", "503")]).await;
    assert_eq!(r.status, 503);
    let two = Some("2".to_string());
    assert_eq!(count(&r), (two.clone(), two));
    let r = get(p.addr("plain"), "/retry", &[("x-test-status", "503")]).await;
    assert_eq!(count(&r), (None, None));
    // A local reply after three failed connects carries the count too.
    let r = get(p.addr("counts"), "/dead", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-envoy-attempt-count"), Some("3"));
    let r = get(p.addr("plain"), "/dead", &[]).await;
    assert_eq!(r.header("x-envoy-attempt-count"), None);
}

#[tokio::test]
async fn header_values_carry_envoys_formatters() {
    // `%...%` in a header value is rendered per request, as Envoy does (Istio users write
    // `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%` into VirtualService headers); `%%` is a `%`;
    // what has no value renders empty, and an empty value is not added.
    let a = upstream("a").await;
    let add = |k: &str, v: &str| json!({"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"});
    let p = routes_proxy(
        json!([{"match": {"prefix": "/"}, "route": {"cluster": "a"},
            "request_headers_to_add": [
                add("x-real-ip", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
                add("x-proto", "via %PROTOCOL%"),
                add("x-copy", "%REQ(x-in)%"),
                add("x-pct", "100%%"),
                add("x-none", "%REQ(x-absent)%")],
            "response_headers_to_add": [add("x-client", "%DOWNSTREAM_REMOTE_ADDRESS%")]}]),
        json!({}),
        vec![cluster("a", &[a.addr], json!({}))],
    )
    .await;
    let r = get(p.addr("l"), "/", &[("x-in", "copied")]).await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-proto"], "via HTTP/1.1");
    assert_eq!(h["x-copy"], "copied");
    assert_eq!(h["x-pct"], "100%");
    assert!(h.get("x-none").is_none(), "{h}");
    let client = r.header("x-client").unwrap_or("");
    assert!(client.starts_with("127.0.0.1:"), "{client:?}");
}

/// Pseudo-header matchers, as Istio writes a VirtualService's `method`, `authority` and
/// `scheme` matches: `:method`, `:authority`, `:scheme`, and `:path` (query included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pseudo_header_matchers_route() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let c = upstream("c").await;
    let d = upstream("d").await;
    let routes = json!([
        {"match": {"prefix": "/", "headers": [{"name": ":method", "string_match": {"exact": "POST"}}]}, "route": {"cluster": "b"}},
        {"match": {"prefix": "/", "headers": [{"name": ":authority", "string_match": {"prefix": "api."}}]}, "route": {"cluster": "c"}},
        {"match": {"prefix": "/", "headers": [
            {"name": ":path", "string_match": {"suffix": "?v=2"}},
            {"name": ":scheme", "string_match": {"exact": "http"}}]}, "route": {"cluster": "d"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]);
    let p = routes_proxy(
        routes,
        json!({}),
        vec![
            cluster("a", &[a.addr], json!({})),
            cluster("b", &[b.addr], json!({})),
            cluster("c", &[c.addr], json!({})),
            cluster("d", &[d.addr], json!({})),
        ],
    )
    .await;
    let l = p.addr("l");
    assert_eq!(
        request(l, "POST", "/x", &[], "body", false)
            .await
            .upstream(),
        "b"
    );
    assert_eq!(
        get(l, "/x", &[("host", "api.example.com")])
            .await
            .upstream(),
        "c"
    );
    assert_eq!(get(l, "/x?v=2", &[]).await.upstream(), "d");
    assert_eq!(get(l, "/x?v=3", &[]).await.upstream(), "a");
    // Over h2c the authority is the request's.
    assert_eq!(
        request(l, "GET", "/x", &[("host", "api.example.com")], "", true)
            .await
            .upstream(),
        "c"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_redirects_follow_the_forwarded_scheme() {
    // Istio's Gateway `tls.httpsRedirect`: a vhost with `require_tls: ALL` and no routes
    // answers plaintext with a 301 to https; redirects without a scheme keep the request's
    // (x-forwarded-proto from a trusted hop, as the connection manager leaves it).
    let a = upstream("a").await;
    let vh = json!([
        {"name": "redir", "domains": ["gw.example.com", "gw.example.com:*"], "require_tls": "ALL"},
        {"name": "app", "domains": ["*"], "routes": [
            {"match": {"path": "/login"}, "route": {"cluster": "a", "prefix_rewrite": "/auth/login"}},
            {"match": {"prefix": "/moved"}, "redirect": {"path_redirect": "/new"}}]}]);
    let p = proxy(bootstrap(
        vec![
            listener(
                "edge",
                vh.clone(),
                vec![],
                json!({"use_remote_address": true}),
            ),
            listener("inner", vh, vec![], json!({})),
        ],
        vec![cluster("a", &[a.addr], json!({}))],
    ))
    .await;
    let r = get(p.addr("edge"), "/x?y=1", &[("host", "gw.example.com")]).await;
    assert_eq!(r.status, 301, "{}", r.body);
    assert_eq!(r.header("location"), Some("https://gw.example.com/x?y=1"));
    // At the edge the client's own x-forwarded-proto does not count.
    let r = get(
        p.addr("edge"),
        "/x",
        &[("host", "gw.example.com"), ("x-forwarded-proto", "https")],
    )
    .await;
    assert_eq!(r.status, 301);
    // Behind a trusted hop that terminated TLS, the request is https already: no redirect
    // loop, and the vhost (no routes) answers 404.
    let r = get(
        p.addr("inner"),
        "/x",
        &[("host", "gw.example.com"), ("x-forwarded-proto", "https")],
    )
    .await;
    assert_eq!(r.status, 404);
    let moved = |xfp: &'static str| {
        let addr = p.addr("inner");
        async move {
            get(
                addr,
                "/moved?k=v",
                &[("host", "app.example.com"), ("x-forwarded-proto", xfp)],
            )
            .await
            .header("location")
            .map(str::to_string)
        }
    };
    assert_eq!(
        moved("https").await.as_deref(),
        Some("https://app.example.com/new?k=v")
    );
    assert_eq!(
        moved("http").await.as_deref(),
        Some("http://app.example.com/new?k=v")
    );
    // An exact route's prefix_rewrite replaces the whole path and keeps the query.
    let r = get(p.addr("inner"), "/login?next=%2F", &[]).await;
    assert_eq!(r.json()["path"], "/auth/login?next=%2F");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routes_host_rewrite_has_the_last_word() {
    // Envoy's order: the weighted cluster's headers and host, then the other levels'
    // headers, then the route's host_rewrite_literal.
    let a = upstream("a").await;
    let weighted = |host: &str| json!({"clusters": [{"name": "a", "weight": 1, "host_rewrite_literal": host}]});
    let vh = json!([{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/both"}, "route": {"weighted_clusters": weighted("wt.local"), "host_rewrite_literal": "route.local"}},
        {"match": {"prefix": "/wt"}, "route": {"weighted_clusters": weighted("wt.local")},
            "request_headers_to_add": [{"header": {"key": "host", "value": "hdr.local"}, "append": false}]},
        {"match": {"prefix": "/hdr"}, "route": {"cluster": "a", "host_rewrite_literal": "route.local"},
            "request_headers_to_add": [{"header": {"key": "host", "value": "hdr.local"}, "append": false}]}]}]);
    let p = proxy(bootstrap(
        vec![listener("l", vh, vec![], json!({}))],
        vec![cluster("a", &[a.addr], json!({}))],
    ))
    .await;
    let host = |path: &'static str| {
        let addr = p.addr("l");
        async move { get(addr, path, &[]).await.json()["headers"]["host"].clone() }
    };
    assert_eq!(host("/both").await, "route.local");
    assert_eq!(
        host("/wt").await,
        "hdr.local",
        "the route's headers come after the weighted host"
    );
    assert_eq!(
        host("/hdr").await,
        "route.local",
        "the literal comes after the headers"
    );
}

/// Istio's `proxyHeaders.xForwardedHost` / `xForwardedPort`: a route's host rewrite keeps
/// the original host in `x-forwarded-host` (appended, not repeated), and an edge HCM tells
/// the upstream which port the client connected to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_host_and_port_tell_the_upstream_what_the_client_asked_for() {
    let a = upstream("a").await;
    let vh = json!([{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/rewritten"}, "route": {"cluster": "a",
            "host_rewrite_literal": "backend.local", "append_x_forwarded_host": true}},
        {"match": {"prefix": "/"}, "route": {"cluster": "a", "append_x_forwarded_host": true}}]}]);
    let p = proxy(bootstrap(
        vec![listener(
            "l",
            vh,
            vec![],
            json!({"use_remote_address": true, "append_x_forwarded_port": true}),
        )],
        vec![cluster("a", &[a.addr], json!({}))],
    ))
    .await;
    let addr = p.addr("l");
    let seen = |path: &'static str, headers: Vec<(&'static str, &'static str)>| async move {
        get(addr, path, &headers).await.json()["headers"].clone()
    };
    let h = seen("/rewritten", vec![("host", "shop.example")]).await;
    assert_eq!(h["host"], "backend.local");
    assert_eq!(h["x-forwarded-host"], "shop.example");
    assert_eq!(h["x-forwarded-port"], json!(addr.port().to_string()));
    let h = seen(
        "/rewritten",
        vec![
            ("host", "shop.example"),
            ("x-forwarded-host", "cdn.example"),
        ],
    )
    .await;
    assert_eq!(h["x-forwarded-host"], "cdn.example,shop.example");
    let h = seen(
        "/rewritten",
        vec![
            ("host", "shop.example"),
            ("x-forwarded-host", "shop.example"),
        ],
    )
    .await;
    assert_eq!(h["x-forwarded-host"], "shop.example", "not repeated");
    // No rewrite, nothing appended; the client's own x-forwarded-port is replaced at the edge.
    let h = seen(
        "/plain",
        vec![("host", "shop.example"), ("x-forwarded-port", "1")],
    )
    .await;
    assert!(h.get("x-forwarded-host").is_none(), "{h}");
    assert_eq!(h["x-forwarded-port"], json!(addr.port().to_string()));
}

/// Envoy sets an HTTP/1 request's `:scheme` from x-forwarded-proto as its HCM leaves it: a
/// sidecar (no `use_remote_address`) trusts the one a gateway in front set, an edge HCM does
/// not. And away from the edge, `append_x_forwarded_port` only adds the header when absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheme_and_port_follow_the_forwarded_headers_as_envoy_sets_them() {
    let a = upstream("a").await;
    let vh = json!([{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/", "headers": [{"name": ":scheme", "string_match": {"exact": "https"}}]},
            "route": {"cluster": "a"}},
        {"match": {"prefix": "/"}, "direct_response": {"status": 418}}]}]);
    let p = proxy(bootstrap(
        vec![
            listener(
                "sidecar",
                vh.clone(),
                vec![],
                json!({"append_x_forwarded_port": true}),
            ),
            listener("edge", vh, vec![], json!({"use_remote_address": true})),
        ],
        vec![cluster("a", &[a.addr], json!({}))],
    ))
    .await;
    let https = [("x-forwarded-proto", "https")];
    let r = get(p.addr("sidecar"), "/", &https).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["headers"]["x-forwarded-port"],
        json!(p.addr("sidecar").port().to_string())
    );
    assert_eq!(get(p.addr("sidecar"), "/", &[]).await.status, 418);
    assert_eq!(
        get(p.addr("edge"), "/", &https).await.status,
        418,
        "untrusted at the edge"
    );
    let r = get(
        p.addr("sidecar"),
        "/",
        &[("x-forwarded-proto", "https"), ("x-forwarded-port", "8443")],
    )
    .await;
    assert_eq!(
        r.json()["headers"]["x-forwarded-port"],
        "8443",
        "kept away from the edge"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_behind_trusted_proxies_sees_the_real_client() {
    // Istio's gateway with numTrustedProxies: 1 (xff_num_trusted_hops): the client is the
    // x-forwarded-for entry the trusted proxy added, RBAC's remote_ip judges it, the proxy's
    // x-forwarded-proto stands, and the edge request gets x-envoy-external-address and an
    // x-request-id of the gateway's own.
    let a = upstream("a").await;
    let vh = json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]);
    // Only clients in 203.0.113.0/24 may pass.
    let rbac = json!({"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {"action": "ALLOW", "policies": {"lb-clients": {
            "permissions": [{"any": true}],
            "principals": [{"remote_ip": {"address_prefix": "203.0.113.0", "prefix_len": 24}}]}}}}});
    let gw =
        |name: &str, hcm: serde_json::Value| listener(name, vh.clone(), vec![rbac.clone()], hcm);
    let trusted = gw(
        "trusted",
        json!({"use_remote_address": true, "xff_num_trusted_hops": 1}),
    );
    let direct = gw("direct", json!({"use_remote_address": true}));
    let keep = gw(
        "keep",
        json!({"use_remote_address": true, "xff_num_trusted_hops": 1,
            "preserve_external_request_id": true}),
    );
    let p = proxy(bootstrap(
        vec![trusted, direct, keep],
        vec![cluster("a", &[a.addr], json!({}))],
    ))
    .await;
    let from_lb = [
        ("x-forwarded-for", "198.51.100.1, 203.0.113.7"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "chosen-by-the-client"),
    ];
    let r = get(p.addr("trusted"), "/", &from_lb).await;
    assert_eq!(
        r.status, 200,
        "the client 203.0.113.7 is allowed: {}",
        r.body
    );
    let j = r.json();
    assert_eq!(j["headers"]["x-envoy-external-address"], "203.0.113.7");
    assert_eq!(
        j["headers"]["x-forwarded-proto"], "https",
        "the trusted proxy's stands"
    );
    assert_eq!(
        j["headers"]["x-forwarded-for"],
        "198.51.100.1,203.0.113.7,127.0.0.1"
    );
    let id = j["headers"]["x-request-id"].as_str().unwrap();
    assert_ne!(id, "chosen-by-the-client");
    assert_eq!(id.len(), 36, "{id}");
    // Without trusted hops the peer (127.0.0.1) is the client: denied, and the LB's
    // x-forwarded-proto is not believed.
    let r = get(p.addr("direct"), "/", &from_lb).await;
    assert_eq!(r.status, 403);
    let j = get(p.addr("keep"), "/", &from_lb).await.json();
    assert_eq!(j["headers"]["x-request-id"], "chosen-by-the-client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripped_host_port_leaves_the_host_header_too() {
    // Istio's gateway with ISTIO_GATEWAY_STRIP_HOST_PORT (strip_any_host_port): the port
    // goes from routing and from the Host the upstream sees.
    let a = upstream("a").await;
    let vh = json!([{"name": "shop", "domains": ["shop.example.com"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]);
    let p = proxy(bootstrap(
        vec![listener(
            "l",
            vh,
            vec![],
            json!({"strip_any_host_port": true}),
        )],
        vec![cluster("a", &[a.addr], json!({}))],
    ))
    .await;
    let r = get(p.addr("l"), "/", &[("host", "shop.example.com:443")]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["headers"]["host"], "shop.example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_slashes_follow_the_hcms_action() {
    // Istio's DECODE_AND_MERGE_SLASHES sets UNESCAPE_AND_FORWARD: routes, policies and the
    // upstream see `/a/b`, not one opaque segment.
    let a = upstream("a").await;
    let vh = json!([{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]);
    let action = |a: &str| {
        json!({"normalize_path": true, "merge_slashes": true,
            "path_with_escaped_slashes_action": a})
    };
    let p = proxy(bootstrap(
        vec![
            listener("fwd", vh.clone(), vec![], action("UNESCAPE_AND_FORWARD")),
            listener(
                "redirect",
                vh.clone(),
                vec![],
                action("UNESCAPE_AND_REDIRECT"),
            ),
            listener("reject", vh, vec![], action("REJECT_REQUEST")),
        ],
        vec![cluster("a", &[a.addr], json!({}))],
    ))
    .await;
    let r = get(p.addr("fwd"), "/x%2F..%2Fa%2Fb?q=%2F", &[]).await;
    assert_eq!(r.json()["path"], "/a/b?q=%2F");
    let r = get(p.addr("redirect"), "/a%2Fb", &[]).await;
    assert_eq!((r.status, r.header("location")), (307, Some("/a/b")));
    assert_eq!(get(p.addr("reject"), "/a%2Fb", &[]).await.status, 400);
    assert_eq!(get(p.addr("reject"), "/a/b", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn via_and_the_request_id_in_the_response() {
    let a = upstream("a").await;
    let vh = json!([{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/nocluster"}, "route": {"cluster": "missing"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]);
    let p = proxy(bootstrap(
        vec![listener(
            "l",
            vh,
            vec![],
            json!({"via": "1.1 mosn", "always_set_request_id_in_response": true}),
        )],
        vec![cluster("a", &[a.addr], json!({}))],
    ))
    .await;
    let r = get(p.addr("l"), "/", &[("via", "1.0 lb")]).await;
    let j = r.json();
    assert_eq!(j["headers"]["via"], "1.0 lb, 1.1 mosn");
    assert_eq!(r.header("via"), Some("1.1 mosn"));
    let id = j["headers"]["x-request-id"].as_str().unwrap().to_string();
    assert_eq!(r.header("x-request-id"), Some(id.as_str()));
    // The proxy's own reply carries an id too.
    let r = get(p.addr("l"), "/nocluster", &[("x-request-id", "mine")]).await;
    assert_eq!((r.status, r.header("x-request-id")), (503, Some("mine")));
}
