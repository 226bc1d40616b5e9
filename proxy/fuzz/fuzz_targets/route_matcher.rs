//! Fuzz the route matcher: a fixed route configuration that uses every matcher and action
//! form, against arbitrary Host, :path and header values. Matching and the rewrites must
//! never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mosn::route::action::Action;
use mosn::route::RouteConfig;
use std::sync::OnceLock;

fn config() -> &'static RouteConfig {
    static RC: OnceLock<RouteConfig> = OnceLock::new();
    RC.get_or_init(|| {
        let v = serde_json::json!({"name": "fuzz", "virtual_hosts": [
            {"name": "a", "domains": ["reviews", "reviews:9080", "*.example.com", "api.*", "10.0.0.1"], "routes": [
                {"match": {"prefix": "/", "headers": [{"name": "end-user", "exact_match": "jason"}]}, "route": {"cluster": "v2"}},
                {"match": {"safe_regex": {"regex": "/re/[0-9]+(/.*)?"}}, "route": {"cluster": "c", "regex_rewrite": {"pattern": {"regex": "^/re/(\\d+)"}, "substitution": "/n/\\1"}}},
                {"match": {"path": "/exact", "case_sensitive": false}, "redirect": {"https_redirect": true, "strip_query": true}},
                {"match": {"path": "/login"}, "route": {"cluster": "c", "prefix_rewrite": "/auth/login"}},
                {"match": {"safe_regex": {"regex": "/v[0-9]+/u"}}, "route": {"cluster": "c", "prefix_rewrite": "/u"}},
                {"match": {"prefix": "/rx"}, "redirect": {"regex_rewrite": {"pattern": {"regex": "x+"}, "substitution": "y"}, "host_redirect": "h"}},
                {"match": {"prefix": "/q", "query_parameters": [{"name": "v", "string_match": {"safe_regex": {"regex": "[a-z]+"}}}, {"name": "p", "present_match": true}]}, "route": {"cluster": "c"}},
                {"match": {"prefix": "/h", "headers": [
                    {"name": "x-r", "range_match": {"start": -5, "end": 5}, "invert_match": true},
                    {"name": "x-s", "string_match": {"suffix": "Z", "ignore_case": true}},
                    {"name": "x-c", "contains_match": "mid", "treat_missing_header_as_empty": true},
                    {"name": "x-p", "present_match": false}]}, "route": {"cluster": "c", "prefix_rewrite": "/"}},
                {"match": {"path_separated_prefix": "/sep"}, "redirect": {"prefix_rewrite": "/new", "port_redirect": 8443}},
                {"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [{"name": "x", "weight": 1}, {"name": "y", "weight": 3}]}}}]},
            {"name": "tls", "domains": ["secure.*"], "require_tls": "ALL"},
            {"name": "d", "domains": ["*"], "routes": [{"match": {"prefix": ""}, "direct_response": {"status": 404}}]}]});
        let proto = mosn::config::decode::from_json::<envoy_route::RouteConfiguration>(&v, true).unwrap();
        RouteConfig::from_proto(&proto).unwrap()
    })
}

mod envoy_route {
    pub use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let mut parts = s.split('\n');
    let host = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("/");
    let mut headers = http::HeaderMap::new();
    for (name, line) in ["end-user", "x-r", "x-s", "x-c", "x-p"].iter().zip(parts) {
        if let Ok(v) = http::HeaderValue::from_str(line) {
            headers.append(*name, v);
        }
    }
    let rc = config();
    if let Some(vh) = rc.select_vhost(host) {
        let _ = vh.redirects_to_https("http", false);
    }
    if let Some((_, route)) = rc.route(host, path, &headers, &Default::default()) {
        let matched = route.matched_len(path);
        assert!(matched <= path.len(), "matched {matched} of {path:?}");
        match &route.action {
            Action::Forward(f) => {
                let _ = f.rewrite_path(path, matched);
            }
            Action::Redirect(r) => {
                let _ = r.location("http", host, path, matched);
            }
            Action::Direct { .. } => {}
        }
    }
    let _ = mosn::route::matcher::percent_decode(path);
    let _ = mosn::route::action::split_host_port(host);
});
