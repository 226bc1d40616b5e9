//! Load balancing through the proxy: weighted clusters, ROUND_ROBIN, RANDOM, LEAST_REQUEST,
//! RING_HASH and MAGLEV with hash policies. Statistical checks use 5-sigma binomial bounds.

mod common;
use common::*;
use serde_json::json;
use std::collections::HashMap;

fn vh(routes: serde_json::Value) -> serde_json::Value {
    json!([{"name": "v", "domains": ["*"], "routes": routes}])
}

async fn count(
    addr: std::net::SocketAddr,
    path: &str,
    n: usize,
    headers: &[(&str, &str)],
) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for _ in 0..n {
        let r = get(addr, path, headers).await;
        assert_eq!(r.status, 200, "{}", r.body);
        *m.entry(r.upstream()).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_clusters_round_robin_random() {
    let (a, b, c) = (
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
    );
    let routes = json!([
        {"match": {"prefix": "/w80"}, "route": {"weighted_clusters": {"clusters": [
            {"name": "ca", "weight": 80}, {"name": "cb", "weight": 20}, {"name": "cc", "weight": 0}]}}},
        {"match": {"prefix": "/wtotal"}, "route": {"weighted_clusters": {"total_weight": 1000, "clusters": [
            {"name": "ca", "weight": 250}, {"name": "cb", "weight": 750}]}}},
        {"match": {"prefix": "/rr"}, "route": {"cluster": "rr"}},
        {"match": {"prefix": "/wrr"}, "route": {"cluster": "wrr"}},
        {"match": {"prefix": "/random"}, "route": {"cluster": "random"}}]);
    let clusters = vec![
        cluster("ca", &[a.addr], json!({})),
        cluster("cb", &[b.addr], json!({})),
        cluster("cc", &[c.addr], json!({})),
        cluster("rr", &[a.addr, b.addr, c.addr], json!({})),
        cluster_weighted("wrr", &[(a.addr, 3), (b.addr, 1)], json!({})),
        cluster("random", &[a.addr, b.addr], json!({"lb_policy": "RANDOM"})),
    ];
    let p = proxy(bootstrap(
        vec![listener("l", vh(routes), vec![], json!({}))],
        clusters,
    ))
    .await;
    let addr = p.addr("l");

    let n = 1000;
    let m = count(addr, "/w80", n, &[]).await;
    assert!(within_binomial(m["a"], n, 0.8), "{m:?}");
    assert!(!m.contains_key("c"), "weight 0 takes no traffic: {m:?}");
    let m = count(addr, "/wtotal", n, &[]).await;
    assert!(within_binomial(m["b"], n, 0.75), "{m:?}");

    // Round robin from one client is exact.
    let m = count(addr, "/rr", 300, &[]).await;
    assert_eq!((m["a"], m["b"], m["c"]), (100, 100, 100), "{m:?}");
    let m = count(addr, "/wrr", 400, &[]).await;
    assert_eq!((m["a"], m["b"]), (300, 100), "endpoint weights 3:1: {m:?}");
    let m = count(addr, "/random", 400, &[]).await;
    assert!(within_binomial(m["a"], 400, 0.5) && m.len() == 2, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_is_sticky_and_spreads() {
    let (a, b, c) = (
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
    );
    let hosts = [a.addr, b.addr, c.addr];
    let routes = json!([
        {"match": {"prefix": "/ring"}, "route": {"cluster": "ring", "hash_policy": [{"header": {"header_name": "x-user"}}]}},
        {"match": {"prefix": "/maglev"}, "route": {"cluster": "maglev", "hash_policy": [{"header": {"header_name": "x-user"}}]}},
        {"match": {"prefix": "/cookie"}, "route": {"cluster": "maglev", "hash_policy": [{"cookie": {"name": "sess"}}]}},
        {"match": {"prefix": "/src"}, "route": {"cluster": "ring", "hash_policy": [{"connection_properties": {"source_ip": true}}]}}]);
    let clusters = vec![
        cluster("ring", &hosts, json!({"lb_policy": "RING_HASH"})),
        cluster("maglev", &hosts, json!({"lb_policy": "MAGLEV"})),
    ];
    let p = proxy(bootstrap(
        vec![listener("l", vh(routes), vec![], json!({}))],
        clusters,
    ))
    .await;
    let addr = p.addr("l");
    for path in ["/ring", "/maglev"] {
        let mut seen = std::collections::HashSet::new();
        for user in 0..40 {
            let u = format!("user-{user}");
            let m = count(addr, path, 5, &[("x-user", &u)]).await;
            assert_eq!(m.len(), 1, "{path} {u} must stick to one host: {m:?}");
            seen.extend(m.into_keys());
        }
        assert!(
            seen.len() >= 2,
            "{path}: 40 users all on one host: {seen:?}"
        );
    }
    let m = count(addr, "/cookie", 10, &[("cookie", "a=1; sess=abc")]).await;
    assert_eq!(m.len(), 1, "{m:?}");
    let m = count(addr, "/src", 10, &[]).await;
    assert_eq!(m.len(), 1, "same source IP, same host: {m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_policy_with_a_ttl_makes_the_sticky_cookie() {
    // Istio's sticky sessions (`consistentHash.httpCookie` with a ttl): the first request has
    // no cookie, gets one in Set-Cookie, and the requests that bring it back stay on the host
    // the first one went to.
    let ups = [
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
    ];
    let hosts: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let routes = json!([
        {"match": {"prefix": "/session"}, "route": {"cluster": "ring", "hash_policy": [
            {"cookie": {"name": "sticky", "ttl": "0s"}}]}},
        {"match": {"prefix": "/"}, "route": {"cluster": "ring", "hash_policy": [
            {"cookie": {"name": "user", "ttl": "3600s", "path": "/",
                "attributes": [{"name": "SameSite", "value": "Lax"}]}}]}}]);
    let p = proxy(bootstrap(
        vec![listener("l", vh(routes), vec![], json!({}))],
        vec![cluster("ring", &hosts, json!({"lb_policy": "RING_HASH"}))],
    ))
    .await;
    let addr = p.addr("l");
    for round in 0..4 {
        let first = get(addr, "/", &[]).await;
        let set = first
            .header("set-cookie")
            .expect("no cookie made")
            .to_string();
        let value = set
            .strip_prefix("user=\"")
            .and_then(|v| v.split_once('"'))
            .map(|(v, rest)| {
                assert_eq!(rest, "; Max-Age=3600; Path=/; SameSite=Lax; HttpOnly");
                v.to_string()
            })
            .unwrap_or_else(|| panic!("{set}"));
        assert_eq!(value.len(), 16, "{set}");
        // As a browser sends it back (quoted), and bare.
        for cookie in [format!("user=\"{value}\""), format!("x=1; user={value}")] {
            let m = count(addr, "/", 5, &[("cookie", &cookie)]).await;
            assert_eq!(
                m.into_keys().collect::<Vec<_>>(),
                [first.upstream()],
                "round {round}: {cookie}"
            );
        }
        let again = get(addr, "/", &[("cookie", &format!("user={value}"))]).await;
        assert_eq!(
            again.header("set-cookie"),
            None,
            "the cookie came: none made"
        );
    }
    let session = get(addr, "/session", &[]).await;
    let set = session.header("set-cookie").unwrap();
    assert!(
        set.starts_with("sticky=\"") && set.ends_with("\"; HttpOnly"),
        "a session cookie has no Max-Age: {set}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_avoids_the_busy_host() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "lr", "timeout": "0s"}}]);
    let clusters = vec![cluster(
        "lr",
        &[a.addr, b.addr],
        json!({"lb_policy": "LEAST_REQUEST", "least_request_lb_config": {"choice_count": 40}}),
    )];
    let p = proxy(bootstrap(
        vec![listener("l", vh(routes), vec![], json!({}))],
        clusters,
    ))
    .await;
    let addr = p.addr("l");
    // Each held request occupies a host; with P2C (here 40 choices) the next one goes to the
    // less loaded host, so held requests alternate and end up split evenly.
    let mut tasks = Vec::new();
    for i in 0..6 {
        tasks.push(tokio::spawn(async move {
            get(addr, "/", &[("x-test-hold", "1")]).await
        }));
        let deadline = std::time::Instant::now() + HANG;
        while a.hits() + b.hits() < i + 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "held request never arrived"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    assert_eq!((a.hits(), b.hits()), (3, 3));
    while tasks.iter().any(|t| !t.is_finished()) {
        a.release();
        b.release();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
}

/// Locality-weighted balancing (Istio's `localityLbSetting.distribute`: weights on the EDS
/// localities and `locality_weighted_lb_config`): the localities take their weights' shares,
/// whatever their host counts, and a locality short of healthy hosts takes less.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locality_weights_split_the_traffic() {
    let (a, b, c) = (
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
    );
    let ep = |addr: std::net::SocketAddr| {
        json!({"endpoint": {"address": {"socket_address": {
        "address": addr.ip().to_string(), "port_value": addr.port()}}}})
    };
    // Zone 1 (weight 1): a; zone 2 (weight 3): b and c.
    let assignment = |name: &str| {
        json!({"cluster_name": name, "endpoints": [
        {"locality": {"zone": "z1"}, "load_balancing_weight": 1, "lb_endpoints": [ep(a.addr)]},
        {"locality": {"zone": "z2"}, "load_balancing_weight": 3, "lb_endpoints": [ep(b.addr), ep(c.addr)]}]})
    };
    let mut weighted = cluster(
        "weighted",
        &[],
        json!({
        "common_lb_config": {"locality_weighted_lb_config": {}}}),
    );
    weighted["load_assignment"] = assignment("weighted");
    let mut flat = cluster("flat", &[], json!({}));
    flat["load_assignment"] = assignment("flat");
    let routes = json!([
        {"match": {"prefix": "/weighted"}, "route": {"cluster": "weighted"}},
        {"match": {"prefix": "/flat"}, "route": {"cluster": "flat"}}]);
    let p = proxy(bootstrap(
        vec![listener("l", vh(routes), vec![], json!({}))],
        vec![weighted, flat],
    ))
    .await;
    let addr = p.addr("l");
    let n = 800;
    let m = count(addr, "/weighted", n, &[]).await;
    assert!(
        within_binomial(m["a"], n, 0.25),
        "zone 1 takes a quarter: {m:?}"
    );
    assert!(m["b"] > 0 && m["c"] > 0, "{m:?}");
    // Without locality_weighted_lb_config the weights are ignored: a third each.
    let m = count(addr, "/flat", 300, &[]).await;
    assert_eq!((m["a"], m["b"], m["c"]), (100, 100, 100), "{m:?}");
}
