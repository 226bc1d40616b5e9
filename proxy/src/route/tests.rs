//! Matcher and action semantics checked without sockets.

use super::action::{split_host_port, Action, Redirect};
use super::matcher::{HeaderMatch, QueryMatch, StringMatch};
use super::RouteConfig;
use crate::config::decode::from_json;
use envoy_types::pb::envoy::config::route::v3 as rpb;
use http::HeaderMap;
use serde_json::json;

fn rc(v: serde_json::Value) -> RouteConfig {
    RouteConfig::from_proto(&from_json::<rpb::RouteConfiguration>(&v, true).unwrap()).unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

fn hm(v: serde_json::Value) -> HeaderMatch {
    HeaderMatch::from_proto(&from_json::<rpb::HeaderMatcher>(&v, true).unwrap()).unwrap()
}

#[test]
fn vhost_selection_precedence() {
    let vh = |name: &str, domains: serde_json::Value| json!({"name": name, "domains": domains, "routes": []});
    let c = rc(json!({"virtual_hosts": [
        vh("exact", json!(["foo.bar.com"])), vh("suffix", json!(["*.bar.com"])), vh("longsuffix", json!(["*.foo.bar.com"])),
        vh("prefix", json!(["foo.*"])), vh("longprefix", json!(["foo.bar.*"])), vh("any", json!(["*"]))]}));
    let pick = |h: &str| c.select_vhost(h).map(|v| v.name.clone()).unwrap();
    assert_eq!(pick("foo.bar.com"), "exact");
    assert_eq!(pick("FOO.bar.com"), "exact", "hosts are case-insensitive");
    assert_eq!(pick("x.foo.bar.com"), "longsuffix");
    assert_eq!(pick("x.bar.com"), "suffix");
    assert_eq!(pick("foo.bar.org"), "longprefix");
    assert_eq!(pick("foo.org"), "prefix");
    assert_eq!(pick("other"), "any");
    let dup = from_json::<rpb::RouteConfiguration>(
        &json!({"virtual_hosts": [vh("a", json!(["x"])), vh("b", json!(["x"]))]}),
        true,
    )
    .unwrap();
    assert!(
        RouteConfig::from_proto(&dup).is_err(),
        "duplicate domains are rejected"
    );
    let ip = rc(
        json!({"ignore_port_in_host_matching": true, "virtual_hosts": [vh("a", json!(["svc"]))]}),
    );
    assert!(ip.select_vhost("svc:8080").is_some());
}

#[test]
fn header_matcher_missing_header_semantics() {
    let empty = headers(&[]);
    // A missing header matches only `present_match: false` (or an inverted `present_match: true`).
    assert!(hm(json!({"name": "x", "present_match": false})).matches(&empty));
    assert!(hm(json!({"name": "x", "present_match": true, "invert_match": true})).matches(&empty));
    assert!(!hm(json!({"name": "x", "exact_match": "a", "invert_match": true})).matches(&empty));
    assert!(!hm(json!({"name": "x", "exact_match": ""})).matches(&empty));
    assert!(hm(
        json!({"name": "x", "string_match": {"exact": ""}, "treat_missing_header_as_empty": true})
    )
    .matches(&empty));
    // Deprecated exact_match "" matches any present value; repeated values are joined by ','.
    assert!(hm(json!({"name": "x", "exact_match": ""})).matches(&headers(&[("x", "anything")])));
    assert!(
        hm(json!({"name": "x", "exact_match": "a,b"})).matches(&headers(&[("x", "a"), ("x", "b")]))
    );
    assert!(hm(json!({"name": "x", "suffix_match": "end"})).matches(&headers(&[("x", "the end")])));
    assert!(
        !hm(json!({"name": "x", "range_match": {"start": 0, "end": 10}}))
            .matches(&headers(&[("x", "ten")]))
    );
    assert!(
        hm(json!({"name": "x", "range_match": {"start": -10, "end": 0}}))
            .matches(&headers(&[("x", "-3")]))
    );
    assert!(
        hm(json!({"name": "X-Upper", "exact_match": "v"})).matches(&headers(&[("x-upper", "v")]))
    );
}

#[test]
fn string_and_query_matchers() {
    let sm = |v: serde_json::Value| {
        StringMatch::from_proto(
            &from_json::<envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher>(&v, true)
                .unwrap(),
        )
        .unwrap()
    };
    assert!(sm(json!({"prefix": "AB", "ignore_case": true})).matches("abc"));
    assert!(!sm(json!({"prefix": "AB"})).matches("abc"));
    assert!(sm(json!({"safe_regex": {"regex": "a.c"}})).matches("abc"));
    assert!(
        !sm(json!({"safe_regex": {"regex": "a.c"}})).matches("abcd"),
        "regex is anchored"
    );
    let qm = |v: serde_json::Value| {
        QueryMatch::from_proto(&from_json::<rpb::QueryParameterMatcher>(&v, true).unwrap()).unwrap()
    };
    // As written, not decoded (Envoy's route matching parses the query raw).
    let q = qm(json!({"name": "k", "string_match": {"exact": "a b"}}));
    assert!(q.matches(Some("x=1&k=a b")));
    assert!(!q.matches(Some("x=1&k=a%20b")));
    assert!(!q.matches(Some("k=a+b")));
    assert!(!q.matches(Some("k=ab")));
    assert!(!q.matches(None));
    let escaped = qm(json!({"name": "k", "string_match": {"exact": "a%2Fb"}}));
    assert!(escaped.matches(Some("k=a%2Fb")));
    assert!(!escaped.matches(Some("k=a/b")));
    assert!(qm(json!({"name": "flag", "present_match": true})).matches(Some("flag")));
}

#[test]
fn weighted_total_weight_must_add_up() {
    let r = |total: u32| {
        json!({"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {
            "weighted_clusters": {"total_weight": total, "clusters": [{"name": "a", "weight": 30}, {"name": "b", "weight": 70}]}}}]}]})
    };
    let ok = from_json::<rpb::RouteConfiguration>(&r(100), true).unwrap();
    assert!(RouteConfig::from_proto(&ok).is_ok());
    let bad = from_json::<rpb::RouteConfiguration>(&r(90), true).unwrap();
    assert!(RouteConfig::from_proto(&bad)
        .unwrap_err()
        .contains("total_weight"));
}

#[test]
fn redirects_and_host_ports() {
    let redirect = |v: serde_json::Value| {
        Redirect::from_proto(&from_json::<rpb::RedirectAction>(&v, true).unwrap()).unwrap()
    };
    let loc = |v: serde_json::Value, scheme: &str, host: &str, pq: &str, matched: usize| {
        redirect(v).location(scheme, host, pq, matched)
    };
    // A scheme change drops the old scheme's default port, and only that.
    assert_eq!(
        loc(
            json!({"https_redirect": true}),
            "http",
            "a.com:80",
            "/p?q",
            2
        ),
        "https://a.com/p?q"
    );
    assert_eq!(
        loc(
            json!({"https_redirect": true}),
            "http",
            "a.com:8080",
            "/p",
            2
        ),
        "https://a.com:8080/p"
    );
    // A port_redirect replaces the request's and is always written out.
    assert_eq!(
        loc(
            json!({"scheme_redirect": "https", "port_redirect": 8443}),
            "http",
            "a.com:99",
            "/p",
            2
        ),
        "https://a.com:8443/p"
    );
    assert_eq!(
        loc(json!({"port_redirect": 80}), "http", "a.com", "/p", 2),
        "http://a.com:80/p"
    );
    // No scheme in the redirect: the request's (an https request stays https).
    assert_eq!(
        loc(json!({"path_redirect": "/n"}), "https", "a.com", "/p", 2),
        "https://a.com/n"
    );
    // host_redirect is taken as it is, without the request's port.
    assert_eq!(
        loc(
            json!({"host_redirect": "b.com"}),
            "http",
            "a.com:8080",
            "/p",
            2
        ),
        "http://b.com/p"
    );
    assert_eq!(
        loc(
            json!({"prefix_rewrite": "/new", "strip_query": true}),
            "http",
            "a.com:8080",
            "/old/x?q=1",
            4
        ),
        "http://a.com:8080/new/x"
    );
    // A path_redirect's own query is kept, strip_query or not.
    assert_eq!(
        loc(
            json!({"path_redirect": "/n?x=1", "strip_query": true}),
            "http",
            "h",
            "/p?q=2",
            2
        ),
        "http://h/n?x=1"
    );
    assert_eq!(
        loc(
            json!({"regex_rewrite": {"pattern": {"regex": "^/(\\w+)/(\\w+)$"}, "substitution": "/\\2/\\1"}}),
            "http",
            "h",
            "/a/b",
            2
        ),
        "http://h/b/a"
    );
    // Unanchored, replacing every match, as the route action's regex_rewrite.
    assert_eq!(
        loc(
            json!({"regex_rewrite": {"pattern": {"regex": "/foo/"}, "substitution": "/bar/"}}),
            "http",
            "h",
            "/foo/x/foo/",
            1
        ),
        "http://h/bar/x/bar/"
    );
    assert_eq!(
        redirect(json!({"response_code": "PERMANENT_REDIRECT"})).status,
        308
    );
    assert_eq!(split_host_port("[::1]:8080"), ("[::1]", Some(8080)));
    assert_eq!(split_host_port("::1"), ("::1", None));
    assert_eq!(split_host_port("h:x"), ("h:x", None));
    let c = rc(
        json!({"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]}),
    );
    assert!(matches!(
        c.route("h", "/", &HeaderMap::new(), &Default::default())
            .unwrap()
            .1
            .action,
        Action::Direct { status: 200, .. }
    ));
}

#[test]
fn runtime_fraction_and_tls_context() {
    let c = rc(
        json!({"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/none", "runtime_fraction": {"default_value": {"numerator": 0}, "runtime_key": "k"}}, "route": {"cluster": "frac"}},
        {"match": {"prefix": "/half", "runtime_fraction": {"default_value": {"numerator": 50}, "runtime_key": "k"}}, "route": {"cluster": "frac"}},
        {"match": {"prefix": "/tls", "tls_context": {"presented": true}}, "route": {"cluster": "tls"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "rest"}}]}]}),
    );
    let hits = |path: &str| {
        (0..400)
            .filter(|_| {
                let (_, r) = c.route("h", path, &HeaderMap::new(), &Default::default()).unwrap();
                matches!(&r.action, Action::Forward(f) if matches!(&f.target, super::action::ClusterTarget::Name(n) if n == "frac"))
            })
            .count()
    };
    assert_eq!(hits("/none"), 0);
    let half = hits("/half");
    assert!(
        (120..=280).contains(&half),
        "50% runtime_fraction matched {half}/400"
    );
    let (_, r) = c
        .route("h", "/tls", &HeaderMap::new(), &Default::default())
        .unwrap();
    assert!(
        matches!(&r.action, Action::Forward(f) if matches!(&f.target, super::action::ClusterTarget::Name(n) if n == "rest")),
        "plaintext never matches tls_context.presented"
    );
}

#[test]
fn grpc_timeout_header() {
    use super::action::parse_grpc_timeout as p;
    use std::time::Duration;
    assert_eq!(p("2S"), Some(Duration::from_secs(2)));
    assert_eq!(p("150m"), Some(Duration::from_millis(150)));
    assert_eq!(p("1H"), Some(Duration::from_secs(3600)));
    assert_eq!(p("5u"), Some(Duration::from_micros(5)));
    assert_eq!(p("123456789S"), None, "at most 8 digits");
    assert_eq!(p("S"), None);
    assert_eq!(p("1x"), None);
    assert_eq!(p(""), None);
}

#[test]
fn prefix_rewrite_replaces_what_each_route_kind_matched() {
    // Istio writes every VirtualService `rewrite.uri` as prefix_rewrite, whatever the match.
    let c = rc(
        json!({"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"path": "/login"}, "route": {"cluster": "x", "prefix_rewrite": "/auth/login"}},
        {"match": {"path": "/CaSe", "case_sensitive": false}, "route": {"cluster": "x", "prefix_rewrite": "/c"}},
        {"match": {"safe_regex": {"regex": "/v[0-9]+/users"}}, "route": {"cluster": "x", "prefix_rewrite": "/users"}},
        {"match": {"prefix": "/old/"}, "route": {"cluster": "x", "prefix_rewrite": "/new/"}}]}]}),
    );
    let rewritten = |pq: &str| {
        let (_, r) = c
            .route("h", pq, &HeaderMap::new(), &Default::default())
            .unwrap();
        let Action::Forward(f) = &r.action else {
            panic!("not forwarded")
        };
        f.rewrite_path(pq, r.matched_len(pq))
    };
    assert_eq!(
        rewritten("/login?next=1").as_deref(),
        Some("/auth/login?next=1")
    );
    assert_eq!(rewritten("/case").as_deref(), Some("/c"));
    assert_eq!(rewritten("/v2/users?id=7").as_deref(), Some("/users?id=7"));
    assert_eq!(rewritten("/old/x?q").as_deref(), Some("/new/x?q"));
}

#[test]
fn dynamic_metadata_routes_and_missing_cluster_codes() {
    // No filter here writes dynamic metadata: a claim-gated route (Istio's
    // `@request.auth.claims` match) never matches, its inverted form always does.
    let md = |invert: bool| {
        json!([{"filter": "istio_authn", "path": [{"key": "request.auth.claims"}, {"key": "group"}],
            "value": {"list_match": {"one_of": {"string_match": {"exact": "admin"}}}}, "invert": invert}])
    };
    let c = rc(
        json!({"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/claims", "dynamic_metadata": md(false)}, "route": {"cluster": "admins"}},
        {"match": {"prefix": "/not", "dynamic_metadata": md(true)}, "route": {"cluster": "others"}},
        {"match": {"prefix": "/gw"}, "route": {"cluster": "gone", "cluster_not_found_response_code": "INTERNAL_SERVER_ERROR"}},
        {"match": {"prefix": "/nf"}, "route": {"cluster": "gone", "cluster_not_found_response_code": "NOT_FOUND"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "rest"}}]}]}),
    );
    let forward = |path: &str| {
        let (_, r) = c
            .route("h", path, &HeaderMap::new(), &Default::default())
            .unwrap();
        match &r.action {
            Action::Forward(f) => f.clone(),
            _ => panic!("not forwarded"),
        }
    };
    let cluster = |path: &str| match forward(path).target {
        super::action::ClusterTarget::Name(n) => n.to_string(),
        t => panic!("{t:?}"),
    };
    assert_eq!(cluster("/claims"), "rest");
    assert_eq!(cluster("/not"), "others");
    // Envoy's ClusterNotFoundResponseCode; Istio's Gateway API routes ask for 500.
    assert_eq!(forward("/gw").cluster_not_found, 500);
    assert_eq!(forward("/nf").cluster_not_found, 404);
    assert_eq!(forward("/").cluster_not_found, 503);
}

#[test]
fn require_tls_redirects_plaintext_before_any_route() {
    let c = rc(json!({"virtual_hosts": [
        {"name": "all", "domains": ["all.com"], "require_tls": "ALL"},
        {"name": "ext", "domains": ["ext.com"], "require_tls": "EXTERNAL_ONLY", "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "x"}}]},
        {"name": "none", "domains": ["*"], "routes": []}]}));
    let vh = |h: &str| c.select_vhost(h).unwrap();
    assert!(vh("all.com").redirects_to_https("http", true));
    assert!(!vh("all.com").redirects_to_https("https", false));
    assert!(vh("ext.com").redirects_to_https("http", false));
    assert!(!vh("ext.com").redirects_to_https("http", true), "internal");
    assert!(!vh("other").redirects_to_https("http", false));
}

#[test]
fn grpc_is_application_grpc_or_a_suffix_after_plus() {
    let grpc = |ct: &str| super::matcher::is_grpc(&headers(&[("content-type", ct)]));
    assert!(grpc("application/grpc"));
    assert!(grpc("application/grpc+proto"));
    assert!(!grpc("application/grpc-web"));
    assert!(!grpc("application/grpc-web-text+proto"));
    assert!(!grpc("application/json"));
    assert!(!super::matcher::is_grpc(&HeaderMap::new()));
}
