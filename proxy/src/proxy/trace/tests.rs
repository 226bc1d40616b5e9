use super::*;
use serde_json::json;

fn config(v: serde_json::Value) -> TraceConfig {
    TraceConfig::from_proto(&crate::config::test_proto(v), false).unwrap()
}

fn with_id(id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(REQUEST_ID, id.parse().unwrap());
    h
}

/// The request id's first 8 hex digits mod 10,000 against the sampling per 10,000, and the
/// mark at character 14 that later hops read instead of deciding again.
#[test]
fn the_decision_is_marked_in_the_request_id() {
    // 0x00000063 = 99: under 1% (100 of 10,000); 0x00000064 = 100: not.
    let one_percent = config(json!({"random_sampling": {"value": 1}}));
    let mut h = with_id("00000063-0000-4000-8000-000000000000");
    assert!(one_percent.decide(&mut h));
    assert_eq!(h[REQUEST_ID], "00000063-0000-9000-8000-000000000000");
    let mut h = with_id("00000064-0000-4000-8000-000000000000");
    assert!(!one_percent.decide(&mut h));
    assert_eq!(h[REQUEST_ID], "00000064-0000-4000-8000-000000000000");
    // Marked before: traced whatever the sampling, unless overall sampling says no.
    let none = config(json!({"random_sampling": {"value": 0}}));
    let mut h = with_id("ffffffff-0000-9000-8000-000000000000");
    assert!(none.decide(&mut h));
    let off = config(json!({"overall_sampling": {"value": 0}}));
    assert!(!off.decide(&mut h));
    assert_eq!(h[REQUEST_ID], "ffffffff-0000-4000-8000-000000000000");
    // Forced (internal requests keep x-envoy-force-trace) and client-sampled requests.
    let mut h = with_id("ffffffff-0000-4000-8000-000000000000");
    h.insert("x-envoy-force-trace", "yes".parse().unwrap());
    assert!(none.decide(&mut h));
    assert_eq!(h[REQUEST_ID].as_bytes()[14], FORCED);
    let mut h = with_id("ffffffff-0000-4000-8000-000000000000");
    h.insert("x-client-trace-id", "c".parse().unwrap());
    assert!(none.decide(&mut h));
    assert_eq!(h[REQUEST_ID].as_bytes()[14], CLIENT);
    // Not a UUID: no mark can be written, so nothing is traced; no id, no decision.
    let mut h = with_id("12345678");
    assert!(!config(json!({})).decide(&mut h));
    assert!(!config(json!({})).decide(&mut HeaderMap::new()));
    // Envoy truncates: 0.29% is 28 of 10,000.
    assert_eq!(
        config(json!({"random_sampling": {"value": 0.29}})).random,
        28
    );
}

#[test]
fn custom_tags_take_literals_the_environment_and_headers() {
    std::env::set_var("MOSN_TRACE_TEST_TAG", "from-env");
    let c = config(json!({"custom_tags": [
        {"tag": "lit", "literal": {"value": "v"}},
        {"tag": "env", "environment": {"name": "MOSN_TRACE_TEST_TAG"}},
        {"tag": "unset", "environment": {"name": "MOSN_TRACE_TEST_UNSET", "default_value": "d"}},
        {"tag": "hdr", "request_header": {"name": "x-h", "default_value": "none"}},
        {"tag": "md", "metadata": {"kind": {"request": {}}, "metadata_key": {"key": "k", "path": [{"key": "p"}]}}},
        {"tag": "fmt", "value": "%REQ(x-h)%"}]}));
    let mut h = HeaderMap::new();
    let tags = |h: &HeaderMap| {
        c.custom_tags(h)
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(tags(&h), ["lit=v", "env=from-env", "unset=d", "hdr=none"]);
    h.insert("x-h", "set".parse().unwrap());
    assert_eq!(tags(&h)[3], "hdr=set");
}

#[test]
fn spans_encode_as_zipkin_v2() {
    let tags = [
        ("http.status_code", "503".to_string()),
        ("empty", String::new()),
    ];
    let s = zipkin::SpanJson {
        trace: (1, 2),
        id: 3,
        parent: Some(4),
        server: true,
        shared: false,
        name: "op",
        timestamp: 1_700_000_000_000_000,
        duration: 1234,
        service: "svc.ns",
        local_ip: Some("10.1.2.3".parse().unwrap()),
        tags: &tags,
    }
    .encode();
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(
        v,
        json!({"traceId": "00000000000000010000000000000002", "id": "0000000000000003",
            "parentId": "0000000000000004", "kind": "SERVER", "name": "op",
            "timestamp": 1_700_000_000_000_000u64, "duration": 1234,
            "localEndpoint": {"serviceName": "svc.ns", "ipv4": "10.1.2.3", "port": 0},
            "tags": {"http.status_code": "503"}})
    );
}

#[test]
fn other_tracers_trace_nothing() {
    let c = config(
        json!({"provider": {"name": "envoy.tracers.datadog", "typed_config": {
        "@type": "type.googleapis.com/envoy.config.trace.v3.DatadogConfig", "collector_cluster": "dd"}}}),
    );
    let env = Env::from_bootstrap(None, crate::stats::Stats::new());
    assert!(c.tracer(&env).is_none());
}
