//! Istio's HTTP telemetry between two mosn sidecars, as Bookinfo's productpage calls reviews:
//! the metadata exchange headers go from the outbound proxy to the inbound one and back (the
//! apps never see them), and each proxy counts `istio_requests_total` with both workloads in
//! its labels, in `/stats/prometheus` where Prometheus (and so Kiali) reads them.

mod common;

use common::istio::*;
use common::*;
use serde_json::{json, Value};

/// Istio 1.10's two filters as its EnvoyFilters write them (null-VM Wasm in a TypedStruct).
fn istio_filters(stats_root: &str) -> Vec<Value> {
    let wasm = |name: &str, code: &str, root: &str| {
        json!({"name": name, "typed_config": {
            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
            "type_url": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "value": {"config": {"root_id": root, "vm_config": {"runtime": "envoy.wasm.runtime.null",
                "code": {"local": {"inline_string": code}}},
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "{}"}}}}})
    };
    vec![
        wasm(
            "istio.metadata_exchange",
            "envoy.wasm.metadata_exchange",
            "",
        ),
        wasm("istio.stats", "envoy.wasm.stats", stats_root),
    ]
}

/// A sidecar of `node` whose one listener (`inbound` or `outbound` by `dir`, with Istio's
/// two filters) serves every domain with `routes`.
async fn sidecar(dir: &str, routes: Value, clusters: Vec<Value>, node: Value) -> Proxy {
    let (name, root) = match dir {
        "INBOUND" => ("inbound", "stats_inbound"),
        _ => ("outbound", "stats_outbound"),
    };
    let vhosts = json!([{"name": "v", "domains": ["*"], "routes": routes}]);
    let mut l = listener(name, vhosts, istio_filters(root), json!({}));
    l["traffic_direction"] = json!(dir);
    let mut boot = bootstrap(vec![l], clusters);
    boot["node"] = node;
    proxy(boot).await
}

/// Every request to `cluster`.
fn to(cluster: &str) -> Value {
    json!([{"match": {"prefix": "/"}, "route": {"cluster": cluster}}])
}

/// The reviews-v2 sidecar: its inbound listener to the app at `app`.
async fn reviews_sidecar(app: std::net::SocketAddr) -> Proxy {
    let app_cluster = cluster("inbound|9080||", &[app], json!({}));
    let reviews_node = node("reviews-v2", "reviews", "v2");
    sidecar(
        "INBOUND",
        to("inbound|9080||"),
        vec![app_cluster],
        reviews_node,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_exchange_metadata_and_count_requests() {
    let app = upstream("reviews").await;
    // The reviews sidecar: inbound listener to the app.
    let reviews = reviews_sidecar(app.addr).await;
    // The productpage sidecar: outbound listener to the reviews sidecar, whose cluster
    // carries Istio's service metadata.
    let services = json!({"filter_metadata": {"istio": {"services": [
        {"host": "reviews.default.svc.cluster.local", "name": "reviews", "namespace": "elsewhere"}]}}});
    let c = cluster(
        "outbound|9080||reviews.default.svc.cluster.local",
        &[reviews.addr("inbound")],
        json!({"metadata": services}),
    );
    let routes = to("outbound|9080||reviews.default.svc.cluster.local");
    let productpage_node = node("productpage-v1", "productpage", "v1");
    let productpage = sidecar("OUTBOUND", routes, vec![c], productpage_node).await;
    // The version gauge Istio's stats filter sets with its config, before any traffic,
    // from the node's ISTIO_VERSION.
    let prom = prometheus(&productpage).await;
    assert!(
        prom.lines()
            .any(|l| l == r#"istio_build{component="proxy",tag="1.10.6"} 1"#),
        "{prom}"
    );

    for _ in 0..3 {
        let r = get(
            productpage.addr("outbound"),
            "/reviews/0",
            &[("host", "reviews:9080")],
        )
        .await;
        assert_eq!(r.status, 200);
        // Neither app sees the exchange.
        let seen = r.json()["headers"].clone();
        assert!(seen.get("x-envoy-peer-metadata").is_none(), "{seen}");
        assert!(seen.get("x-envoy-peer-metadata-id").is_none(), "{seen}");
        assert!(r.header("x-envoy-peer-metadata").is_none());
    }

    let out = series(&prometheus(&productpage).await);
    assert_eq!(out.len(), 1, "{out:?}");
    let (s, n) = &out[0];
    assert_eq!(*n, 3);
    assert_labels(
        s,
        &[
            ("reporter", "source"),
            ("source_workload", "productpage-v1"),
            ("source_canonical_service", "productpage"),
            ("source_canonical_revision", "v1"),
            ("source_workload_namespace", "default"),
            ("source_app", "productpage"),
            ("source_cluster", "Kubernetes"),
            // From the reviews sidecar's answer.
            ("destination_workload", "reviews-v2"),
            ("destination_version", "v2"),
            ("destination_canonical_service", "reviews"),
            // The destination workload's namespace, as Istio's filters take it, not the
            // cluster's (which says `elsewhere` here).
            ("destination_service_namespace", "default"),
            // From the cluster's metadata.
            ("destination_service", "reviews.default.svc.cluster.local"),
            ("destination_service_name", "reviews"),
            ("request_protocol", "http"),
            ("response_code", "200"),
            ("grpc_response_status", ""),
            ("response_flags", "-"),
            ("connection_security_policy", "unknown"),
        ],
    );
    assert_eq!(s[0].0, "reporter", "Istio's label order");
    assert_eq!(s.len(), 25);

    // The histograms under the same labels: three requests each.
    let prom = prometheus(&productpage).await;
    for family in [
        "istio_request_duration_milliseconds",
        "istio_request_bytes",
        "istio_response_bytes",
    ] {
        let count = prom
            .lines()
            .find(|l| l.starts_with(&format!("{family}_count{{reporter=\"source\"")))
            .unwrap_or_else(|| panic!("no {family} in {prom}"));
        assert!(count.ends_with("} 3"), "{count}");
    }
    let sum = |family: &str| -> u64 {
        let line = prom
            .lines()
            .find(|l| l.starts_with(&format!("{family}_sum{{")))
            .unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    // Each response carries the echo's JSON body: well over 100 bytes.
    assert!(sum("istio_response_bytes") > 300, "{prom}");
    assert!(sum("istio_request_bytes") > 3 * "GET/reviews/0".len() as u64);

    let inb = series(&prometheus(&reviews).await);
    assert_eq!(inb.len(), 1, "{inb:?}");
    let (s, n) = &inb[0];
    assert_eq!(*n, 3);
    assert_labels(
        s,
        &[
            ("reporter", "destination"),
            // From the productpage sidecar's request.
            ("source_workload", "productpage-v1"),
            ("source_version", "v1"),
            ("destination_workload", "reviews-v2"),
            ("destination_app", "reviews"),
            // No Istio metadata on the inbound cluster: the Host the request carried.
            ("destination_service", "reviews:9080"),
            ("connection_security_policy", "none"),
        ],
    );
}

/// A request from outside the mesh (no exchange headers) and an answer the proxy makes
/// itself: unknown peers, the flags, and no headers sent back to a client that sent none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_metadata_is_unknown() {
    let dead = cluster("dead", &[dead_addr()], json!({}));
    let p = sidecar(
        "INBOUND",
        to("dead"),
        vec![dead],
        node("reviews-v2", "reviews", "v2"),
    )
    .await;
    let r = get(
        p.addr("inbound"),
        "/",
        &[("content-type", "application/grpc")],
    )
    .await;
    assert_eq!(r.status, 200, "a gRPC client gets a gRPC failure: {r:?}");
    assert!(r.header("x-envoy-peer-metadata").is_none());
    let s = series(&prometheus(&p).await);
    let (s, _) = &s[0];
    assert_labels(
        s,
        &[
            ("source_workload", "unknown"),
            ("source_canonical_revision", "latest"),
            ("request_protocol", "grpc"),
            ("grpc_response_status", "14"),
            ("response_flags", "UF"),
        ],
    );
}

/// The fallbacks of Istio's stats on an outbound sidecar: an HTTP/2 request names its service
/// by `:authority` (it has no Host header); an upstream that never answered is described by
/// its endpoint's `istio.workload` metadata; and REGISTRY_ONLY's `block_all` route counts as
/// BlackHoleCluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_fallbacks_follow_istio() {
    let routes = json!([
        {"name": "block_all", "match": {"prefix": "/blocked"}, "direct_response": {"status": 502}},
        {"match": {"prefix": "/"}, "route": {"cluster": "outbound|9080||reviews"}}]);
    let dead = dead_addr();
    let c = json!({"name": "outbound|9080||reviews", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "outbound|9080||reviews", "endpoints": [{"lb_endpoints": [{
            "endpoint": {"address": {"socket_address": {"address": dead.ip().to_string(), "port_value": dead.port()}}},
            "metadata": {"filter_metadata": {"istio": {"workload": "reviews-v3;default;reviews;v3;Kubernetes"}}}}]}]}});
    let p = sidecar(
        "OUTBOUND",
        routes,
        vec![c],
        node("productpage-v1", "productpage", "v1"),
    )
    .await;
    let mut h2 = h2_client(p.addr("outbound")).await;
    let req = http::Request::get("http://reviews:9080/r")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 503);
    drop(resp);
    assert_eq!(get(p.addr("outbound"), "/blocked", &[]).await.status, 502);
    let all = series(&prometheus(&p).await);
    let find = |code: &str| {
        all.iter()
            .find(|(s, _)| label(s, "response_code") == code)
            .unwrap_or_else(|| panic!("no {code} in {all:?}"))
            .0
            .clone()
    };
    let failed = find("503");
    assert_labels(
        &failed,
        &[
            ("destination_service", "reviews:9080"),
            ("destination_service_name", "reviews:9080"),
            ("destination_workload", "reviews-v3"),
            ("destination_workload_namespace", "default"),
            ("destination_canonical_service", "reviews"),
            ("destination_canonical_revision", "v3"),
            ("destination_cluster", "Kubernetes"),
            ("response_flags", "UF"),
        ],
    );
    let blocked = find("502");
    assert_eq!(
        label(&blocked, "destination_service_name"),
        "BlackHoleCluster"
    );
    assert_eq!(label(&blocked, "destination_workload"), "unknown");
}

/// A client that leaves before its response is still counted, as Envoy counts it: code 0,
/// flag DC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_client_gives_up_on_is_counted() {
    use tokio::io::AsyncWriteExt;
    let app = upstream("reviews").await;
    let p = reviews_sidecar(app.addr).await;
    let mut s = tokio::net::TcpStream::connect(p.addr("inbound"))
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: reviews:9080\r\nx-test-hold: 1\r\n\r\n")
        .await
        .unwrap();
    wait_until("the app has the request", || app.hits() == 1).await;
    drop(s);
    let admin = p.admin();
    let mut found = None;
    for _ in 0..100 {
        let all = series(&get(admin, "/stats/prometheus", &[]).await.body);
        found = all
            .into_iter()
            .find(|(s, _)| label(s, "response_code") == "0");
        if found.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (s, n) = found.expect("the abandoned request is counted");
    assert_eq!(n, 1);
    assert_eq!(label(&s, "response_flags"), "DC");
    app.release();
}

/// Later Istio's native stats filter (`stats.PluginConfig`) drops the Host fallback of
/// `destination_service` on inbound listeners: the local canonical service names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_config_inbound_names_the_local_service() {
    let app = upstream("reviews").await;
    let vhosts = json!([{"name": "v", "domains": ["*"], "routes": to("inbound|9080||")}]);
    let mut filters = istio_filters("stats_inbound");
    filters[1] = json!({"name": "istio.stats", "typed_config": {
        "@type": "type.googleapis.com/stats.PluginConfig", "disable_host_header_fallback": true}});
    let mut l = listener("inbound", vhosts, filters, json!({}));
    l["traffic_direction"] = json!("INBOUND");
    let mut boot = bootstrap(
        vec![l],
        vec![cluster("inbound|9080||", &[app.addr], json!({}))],
    );
    boot["node"] = node("reviews-v2", "reviews", "v2");
    let p = proxy(boot).await;
    let r = get(p.addr("inbound"), "/", &[("host", "reviews:9080")]).await;
    assert_eq!(r.status, 200);
    let s = series(&prometheus(&p).await);
    assert_eq!(label(&s[0].0, "destination_service"), "reviews");
}

/// Outbound over Istio's mTLS, the principals are the upstream connection's certificates
/// (Istio's `upstream.uri_san_local_certificate` and `uri_san_peer_certificate`), on each
/// kind of upstream request: a bodiless HTTP/1.1 one, one with a body, and HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_principals_are_the_upstream_certificates() {
    use common::mtls::*;
    let pki = pki();
    let d = pki.path();
    let log_path = d.join("outbound.log");
    let (server, _app) = mtls_proxy(d, json!([{"exact": SPIFFE_CLIENT}])).await;
    let to_server = server.addr("in");
    // As Istio writes them: its ALPN lists by the cluster's protocol.
    let tls = |alpn: Value| {
        json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": "outbound_.9080_._.reviews.default.svc.cluster.local",
        "common_tls_context": {
            "alpn_protocols": alpn,
            "tls_certificate_sds_secret_configs": [{"name": "default"}],
            "combined_validation_context": {
                "default_validation_context": {"match_subject_alt_names": [{"exact": SPIFFE_SERVER}]},
                "validation_context_sds_secret_config": {"name": "ROOTCA"}}}}})
    };
    let h2 = json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}});
    let clusters = vec![
        cluster(
            "h1",
            &[to_server],
            json!({"transport_socket": tls(json!(["istio-http/1.1", "istio", "http/1.1"]))}),
        ),
        cluster(
            "h2",
            &[to_server],
            json!({"transport_socket": tls(json!(["istio-h2", "istio", "h2"])),
                "typed_extension_protocol_options": h2}),
        ),
    ];
    let routes = json!([
        {"match": {"prefix": "/h2"}, "route": {"cluster": "h2"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "h1"}}]);
    let mut boot = bootstrap(
        vec![{
            let vhosts = json!([{"name": "v", "domains": ["*"], "routes": routes}]);
            // The same names in the access log (Envoy's `%UPSTREAM_*_URI_SAN%`).
            let format = "%UPSTREAM_LOCAL_URI_SAN% %UPSTREAM_PEER_URI_SAN%\n";
            let log = file_logger(
                log_path.to_str().unwrap(),
                json!({"text_format_source": {"inline_string": format}}),
            );
            let hcm = json!({"access_log": [log]});
            let mut l = listener("outbound", vhosts, istio_filters("stats_outbound"), hcm);
            l["traffic_direction"] = json!("OUTBOUND");
            l
        }],
        clusters,
    );
    boot["static_resources"]["secrets"] = json!([
        {"name": "default", "tls_certificate": {"certificate_chain": file(d, "client.crt"), "private_key": file(d, "client.key")}},
        {"name": "ROOTCA", "validation_context": {"trusted_ca": file(d, "ca.crt")}},
    ]);
    boot["node"] = node("productpage-v1", "productpage", "v1");
    let client = proxy(boot).await;
    let at = client.addr("outbound");
    for (method, path, body) in [
        ("GET", "/", ""),
        ("POST", "/", "a body"),
        ("GET", "/h2", ""),
    ] {
        let r = request(at, method, path, &[("host", "reviews:9080")], body, false).await;
        assert_eq!(r.status, 200, "{method} {path}");
    }
    let out = series(&prometheus(&client).await);
    assert_eq!(out.iter().map(|(_, n)| n).sum::<u64>(), 3, "{out:?}");
    for (s, _) in &out {
        assert_labels(
            s,
            &[
                ("reporter", "source"),
                ("source_principal", SPIFFE_CLIENT),
                ("destination_principal", SPIFFE_SERVER),
                // The server sends no metadata: its namespace is its certificate's.
                ("destination_workload_namespace", "default"),
            ],
        );
    }
    let read = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_until("three access log lines", || read().lines().count() == 3).await;
    let want = format!("{SPIFFE_CLIENT} {SPIFFE_SERVER}");
    assert!(read().lines().all(|l| l == want), "{}", read());
}
