//! RBAC as Istio writes an AuthorizationPolicy: the HTTP filter (methods, paths and the
//! client's SPIFFE id from its mTLS certificate; ALLOW and DENY) and the network filter on a
//! TCP chain. curl is the client, with openssl-made workload certificates.

mod common;

use common::mtls::*;
use common::*;
use serde_json::{json, Value};

/// An HTTP RBAC filter with `action` and one policy of `permissions` and `principals`.
fn http_rbac(action: &str, permissions: Value, principals: Value) -> Value {
    json!({"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {"action": action, "policies": {"ns[default]-policy[p]-rule[0]": {
            "permissions": permissions, "principals": principals}}}}})
}

fn principal(spiffe: &str) -> Value {
    json!([{"and_ids": {"ids": [{"or_ids": {"ids": [{"authenticated": {"principal_name": {"exact": spiffe}}}]}}]}}])
}

const OTHER: [&str; 4] = ["--cert", "other.crt", "--key", "other.key"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_takes_method_path_and_the_spiffe_identity() {
    let dir = pki();
    let d = dir.path();
    // Istio: `to: operation {methods: [GET], paths: [/public*]}`, `from: principals`.
    let permissions = json!([{"and_rules": {"rules": [
        {"or_rules": {"rules": [{"header": {"name": ":method", "string_match": {"exact": "GET"}}}]}},
        {"or_rules": {"rules": [{"url_path": {"path": {"prefix": "/public"}}}]}}]}}]);
    let rbac = http_rbac("ALLOW", permissions, principal(SPIFFE_CLIENT));
    let (p, up) = mtls_proxy_with(d, json!([]), vec![rbac]).await;
    let addr = p.addr("in");
    let at = |path: &str| format!("https://server.test:{}{path}", addr.port());
    assert_eq!(
        curl_url(d, addr, &at("/public/x?q=1"), &CLIENT).await,
        Ok((200, "2".into()))
    );
    assert_eq!(
        curl_url(d, addr, &at("/private"), &CLIENT).await,
        Ok((403, "2".into()))
    );
    let post = [&CLIENT[..], &["-X", "POST"]].concat();
    assert_eq!(
        curl_url(d, addr, &at("/public"), &post).await,
        Ok((403, "2".into()))
    );
    assert_eq!(
        curl_url(d, addr, &at("/public"), &OTHER).await,
        Ok((403, "2".into()))
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_stops_what_it_matches_and_nothing_else() {
    let dir = pki();
    let d = dir.path();
    let permissions = json!([{"url_path": {"path": {"prefix": "/admin"}}}]);
    let rbac = http_rbac("DENY", permissions, json!([{"any": true}]));
    let (p, up) = mtls_proxy_with(d, json!([]), vec![rbac]).await;
    let addr = p.addr("in");
    let at = |path: &str| format!("https://server.test:{}{path}", addr.port());
    assert_eq!(
        curl_url(d, addr, &at("/admin/users"), &CLIENT).await,
        Ok((403, "2".into()))
    );
    assert_eq!(
        curl_url(d, addr, &at("/home"), &CLIENT).await,
        Ok((200, "2".into()))
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_rbac_closes_tcp_connections_of_other_identities() {
    let dir = pki();
    let d = dir.path();
    let up = upstream("app").await;
    // A TCP chain over mTLS whose network RBAC lets in only `other`.
    let chain = json!({"transport_socket": downstream_tls(json!([])), "filters": [
        {"name": "envoy.filters.network.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC", "stat_prefix": "tcp.",
            "rules": {"policies": {"p": {"permissions": [{"any": true}], "principals": principal(SPIFFE_OTHER)}}}}},
        {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "in", "cluster": "app"}}]});
    let l = json!({"name": "in", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}, "filter_chains": [chain]});
    let mut boot = bootstrap(vec![l], vec![cluster("app", &[up.addr], json!({}))]);
    boot["static_resources"]["secrets"] = secrets(d);
    let p = proxy(boot).await;
    let addr = p.addr("in");
    // The app speaks plain HTTP/1.1 behind the TCP proxy.
    let url = format!("https://server.test:{}/", addr.port());
    let ok = curl_url(d, addr, &url, &[&OTHER[..], &["--http1.1"]].concat()).await;
    assert_eq!(ok, Ok((200, "1.1".into())));
    let denied = curl_url(d, addr, &url, &[&CLIENT[..], &["--http1.1"]].concat()).await;
    assert!(
        denied.is_err(),
        "the client's identity is not allowed: {denied:?}"
    );
    assert_eq!(p.stat("listener.127.0.0.1_0.rbac.denied"), 1);
    assert_eq!(up.hits(), 1);
}

/// Filters mosn cannot run fail closed: a request carrying a JWT gets 401 (a request without
/// one passes, as Istio's providers allow a missing token); ext_authz answers 403 as Envoy
/// does when its authorization service fails, unless `failure_mode_allow`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_and_ext_authz_fail_closed() {
    let up = upstream("app").await;
    let vhosts = json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]);
    let jwt = json!({"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"origins-0": {"issuer": "testing@secure.istio.io", "local_jwks": {"inline_string": "{}"}, "forward": true}}}});
    let authz = |allow: bool| {
        json!({"name": "envoy.filters.http.ext_authz", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "failure_mode_allow": allow,
        "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}}}})
    };
    let p = proxy(bootstrap(
        vec![
            listener("jwt", vhosts.clone(), vec![jwt], json!({})),
            listener("deny", vhosts.clone(), vec![authz(false)], json!({})),
            listener("allow", vhosts, vec![authz(true)], json!({})),
        ],
        vec![cluster("app", &[up.addr], json!({}))],
    ))
    .await;
    let r = get(
        p.addr("jwt"),
        "/",
        &[("authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln")],
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (401, "Jwt verification fails"));
    assert_eq!(
        get(p.addr("jwt"), "/?access_token=abc", &[]).await.status,
        401
    );
    assert_eq!(get(p.addr("jwt"), "/", &[]).await.status, 200);
    assert_eq!(get(p.addr("deny"), "/", &[]).await.status, 403);
    assert_eq!(get(p.addr("allow"), "/", &[]).await.status, 200);
    assert_eq!(up.hits(), 2);
}

/// Denials are logged as Envoy logs them: an HTTP one with no response flag and the policy in
/// `%RESPONSE_CODE_DETAILS%` (`none` when no ALLOW policy matched; blanks become `_`), a
/// network one as a line of the TCP proxy's log with the policy in
/// `%CONNECTION_TERMINATION_DETAILS%`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_are_logged_with_the_policy() {
    let up = upstream("app").await;
    let dir = std::env::temp_dir().join(format!("mosn-rbac-log-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (http_log, tcp_log) = (dir.join("http.log"), dir.join("tcp.log"));
    let format = |f: &str| json!({"text_format_source": {"inline_string": f}});
    let logger = file_logger(
        http_log.to_str().unwrap(),
        format("%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"),
    );
    let vhosts = json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]);
    let rbac = |action: &str, name: &str, path: &str| {
        json!({"name": "envoy.filters.http.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": action, "policies": {name: {
                "permissions": [{"url_path": {"path": {"prefix": path}}}],
                "principals": [{"any": true}]}}}}})
    };
    let allow = listener(
        "allow",
        vhosts.clone(),
        vec![rbac("ALLOW", "ns[default]-policy[p]-rule[0]", "/public")],
        json!({"access_log": [logger.clone()]}),
    );
    let deny = listener(
        "deny",
        vhosts,
        vec![rbac(
            "DENY",
            "ns[default]-policy[no admin]-rule[0]",
            "/admin",
        )],
        json!({"access_log": [logger]}),
    );
    // A TCP chain whose network RBAC lets in only 10.0.0.0/8: loopback clients are refused.
    let tcp = json!({"name": "tcp", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [
            {"name": "envoy.filters.network.rbac", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC", "stat_prefix": "tcp.",
                "rules": {"policies": {"p": {"permissions": [{"any": true}],
                    "principals": [{"direct_remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}}]}}}}},
            {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": "tcp", "cluster": "app",
                "access_log": [file_logger(tcp_log.to_str().unwrap(),
                    format("%CONNECTION_TERMINATION_DETAILS% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS% %BYTES_RECEIVED% %UPSTREAM_HOST%\n"))]}}]}]});
    let p = proxy(bootstrap(
        vec![allow, deny, tcp],
        vec![cluster("app", &[up.addr], json!({}))],
    ))
    .await;
    assert_eq!(get(p.addr("allow"), "/public", &[]).await.status, 200);
    assert_eq!(get(p.addr("allow"), "/private", &[]).await.status, 403);
    assert_eq!(get(p.addr("deny"), "/admin", &[]).await.status, 403);
    let mut s = tokio::net::TcpStream::connect(p.addr("tcp")).await.unwrap();
    let client = s.local_addr().unwrap();
    let _ = read_to_close(&mut s).await;

    assert_eq!(
        log_lines(&http_log, 3).await,
        [
            "/public 200 - via_upstream",
            "/private 403 - rbac_access_denied_matched_policy[none]",
            "/admin 403 - rbac_access_denied_matched_policy[ns[default]-policy[no_admin]-rule[0]]",
        ]
    );
    assert_eq!(
        log_lines(&tcp_log, 1).await,
        [format!(
            "rbac_access_denied_matched_policy[none] {client} 0 -"
        )]
    );
    assert_eq!(up.hits(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
