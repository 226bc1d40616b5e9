//! Istio's TCP telemetry (`istio_tcp_*`) on tcp_proxy chains between two mosn sidecars over
//! Istio's mTLS, with real TCP apps: what each side counts, under which labels, and when.

mod common;

use common::istio::*;
use common::mtls::*;
use common::*;
use serde_json::{json, Value};

/// A TCP app that greets with `hi\n`, then echoes what it reads.
async fn tcp_echo() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"hi\n").await;
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A tcp_proxy chain to `cluster` behind Istio 1.10's TCP stats filter (null-VM Wasm),
/// reporting every 200 ms, on a listener of direction `dir`.
fn tcp_listener(name: &str, dir: &str, cluster: &str, tls: Option<Value>) -> Value {
    let root = if dir == "INBOUND" {
        "stats_inbound"
    } else {
        "stats_outbound"
    };
    let stats = json!({"name": "istio.stats", "typed_config": {
        "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
        "type_url": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
        "value": {"config": {"root_id": root, "vm_config": {"runtime": "envoy.wasm.runtime.null",
            "code": {"local": {"inline_string": "envoy.wasm.stats"}}},
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": "{\"debug\": \"false\", \"stat_prefix\": \"istio\", \"tcp_reporting_duration\": \"0.2s\"}"}}}}});
    let tcp = json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": cluster, "cluster": cluster}});
    let mut chain = json!({"filters": [stats, tcp]});
    if let Some(t) = tls {
        chain["transport_socket"] = t;
    }
    json!({"name": name, "traffic_direction": dir,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [chain]})
}

/// Two mosn sidecars over Istio's mTLS, as ratings-v2 talks to MongoDB: the client's
/// outbound tcp_proxy (certificate SPIFFE_CLIENT) to the server's inbound one (certificate
/// SPIFFE_SERVER, with `rbac` network filters ahead), which forwards to `app`. The outbound
/// endpoint carries Istio's workload metadata. With `mx`, both run Istio's TCP metadata
/// exchange as Istio configures it (the listener's and the cluster's `istio.metadata_exchange`,
/// `istio-peer-exchange` first in the inbound ALPN). The PKI directory lives as long as they
/// do.
async fn sidecars(
    app: std::net::SocketAddr,
    rbac: Vec<Value>,
    mx: bool,
) -> (Proxy, Proxy, impl Drop) {
    let pki = pki();
    let d = pki.path();
    let mut inbound = tcp_listener(
        "inbound",
        "INBOUND",
        "inbound|27017||",
        Some(downstream_tls(
            json!([{"prefix": "spiffe://cluster.local/"}]),
        )),
    );
    let mx_filter = json!({"name": "istio.metadata_exchange", "typed_config": {
        "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
        "type_url": "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
        "value": {"protocol": "istio-peer-exchange"}}});
    let mut rbac = rbac;
    if mx {
        rbac.insert(0, mx_filter.clone());
        inbound["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
            ["alpn_protocols"] = json!(["istio-peer-exchange", "h2", "http/1.1"]);
    }
    for (i, f) in rbac.into_iter().enumerate() {
        inbound["filter_chains"][0]["filters"]
            .as_array_mut()
            .unwrap()
            .insert(i, f);
    }
    let mut boot = bootstrap(
        vec![inbound],
        vec![cluster("inbound|27017||", &[app], json!({}))],
    );
    boot["static_resources"]["secrets"] = secrets(d);
    boot["node"] = node("mongodb-v1", "mongodb", "v1");
    let server = proxy(boot).await;
    let name = "outbound|27017||mongodb.default.svc.cluster.local";
    let to = server.addr("inbound");
    let c = json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
        "metadata": {"filter_metadata": {"istio": {"services": [
            {"host": "mongodb.default.svc.cluster.local", "name": "mongodb", "namespace": "default"}]}}},
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "outbound_.27017_._.mongodb.default.svc.cluster.local",
            "common_tls_context": {
                "alpn_protocols": ["istio-peer-exchange", "istio"],
                "tls_certificate_sds_secret_configs": [{"name": "default"}],
                "combined_validation_context": {
                    "default_validation_context": {"match_subject_alt_names": [{"exact": SPIFFE_SERVER}]},
                    "validation_context_sds_secret_config": {"name": "ROOTCA"}}}}},
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{
            "endpoint": {"address": {"socket_address": {"address": to.ip().to_string(), "port_value": to.port()}}},
            "metadata": {"filter_metadata": {"istio": {"workload": "mongodb-v1;default;mongodb;v1;Kubernetes"}}}}]}]}});
    let mut c = c;
    if mx {
        c["filters"] = json!([mx_filter]);
    }
    let mut boot = bootstrap(
        vec![tcp_listener("outbound", "OUTBOUND", name, None)],
        vec![c],
    );
    boot["static_resources"]["secrets"] = json!([
        {"name": "default", "tls_certificate": {"certificate_chain": file(d, "client.crt"), "private_key": file(d, "client.key")}},
        {"name": "ROOTCA", "validation_context": {"trusted_ca": file(d, "ca.crt")}},
    ]);
    boot["node"] = node("ratings-v2", "ratings", "v2");
    let client = proxy(boot).await;
    (client, server, pki)
}

/// Through the client sidecar: 12 bytes to the app, its greeting and their echo (15 bytes)
/// back; the connection stays open.
async fn query(client: &Proxy) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(client.addr("outbound"))
        .await
        .unwrap();
    s.write_all(b"find ratings").await.unwrap();
    let mut back = [0u8; 15];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"hi\nfind ratings");
    s
}

/// A TCP connection between two mosn sidecars over Istio's mTLS: each side counts it in
/// `istio_tcp_*`, the bytes while it is open, with the peer named by its certificate (and,
/// outbound, by the endpoint's metadata).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_are_counted_on_both_sides() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = tcp_echo().await;
    let (client, server, _pki) = sidecars(app, vec![], false).await;

    let mut s = query(&client).await;
    // Open: counted as opened, its bytes reported by the timer, not closed.
    let counters = |p: &Proxy| {
        let p = p.admin();
        async move {
            let prom = get(p, "/stats/prometheus", &[]).await.body;
            let one = |f: &str| match family(&prom, f).as_slice() {
                [] => None,
                [(labels, n)] => Some((labels.clone(), *n)),
                more => panic!("{f}: {more:?}"),
            };
            [
                "istio_tcp_connections_opened_total",
                "istio_tcp_sent_bytes_total",
                "istio_tcp_received_bytes_total",
                "istio_tcp_connections_closed_total",
            ]
            .map(one)
        }
    };
    let value = |c: &Option<(Vec<(String, String)>, u64)>| c.as_ref().map_or(0, |c| c.1);
    // Within 1.5 s, well before the 15 s default: the configured 200 ms holds.
    for p in [&client, &server] {
        let mut seen = [None, None, None, None];
        for _ in 0..15 {
            seen = counters(p).await;
            if value(&seen[1]) == 15 && value(&seen[2]) == 12 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        // Sent to the client: the greeting and the echo; received: its 12 bytes.
        assert_eq!(seen.each_ref().map(value), [1, 15, 12, 0], "{seen:?}");
    }
    let [Some((out, _)), ..] = counters(&client).await else {
        panic!("no outbound series")
    };
    assert_labels(
        &out,
        &[
            ("reporter", "source"),
            ("source_workload", "ratings-v2"),
            ("source_principal", SPIFFE_CLIENT),
            ("destination_workload", "mongodb-v1"),
            ("destination_workload_namespace", "default"),
            ("destination_principal", SPIFFE_SERVER),
            ("destination_canonical_service", "mongodb"),
            ("destination_service", "mongodb.default.svc.cluster.local"),
            ("destination_service_name", "mongodb"),
            ("request_protocol", "tcp"),
            ("response_flags", "-"),
            ("connection_security_policy", "unknown"),
        ],
    );
    assert_eq!(out.len(), 23, "Istio's TCP labels: {out:?}");
    let [Some((inb, _)), ..] = counters(&server).await else {
        panic!("no inbound series")
    };
    assert_labels(
        &inb,
        &[
            ("reporter", "destination"),
            // No metadata exchange over TCP: the client is named by its certificate alone.
            ("source_workload", "unknown"),
            ("source_principal", SPIFFE_CLIENT),
            ("source_workload_namespace", "default"),
            ("destination_workload", "mongodb-v1"),
            ("destination_principal", SPIFFE_SERVER),
            ("destination_app", "mongodb"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    // Closed: counted on both sides, with the last bytes.
    s.write_all(b"bye").await.unwrap();
    let mut back = [0u8; 3];
    s.read_exact(&mut back).await.unwrap();
    drop(s);
    for p in [&client, &server] {
        let mut seen = [None, None, None, None];
        for _ in 0..50 {
            seen = counters(p).await;
            if value(&seen[3]) == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(seen.each_ref().map(value), [1, 18, 15, 1], "{seen:?}");
    }
}

/// A connection that finds no upstream is counted as opened and closed at its end, with
/// its response flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_connection_without_upstream_is_counted_with_its_flag() {
    let dead = dead_addr();
    let name = "outbound|27017||mongodb.default.svc.cluster.local";
    // The endpoint's Istio metadata names the peer even though it could not be reached.
    let mut c = cluster(name, &[dead], json!({}));
    c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["metadata"] = json!({"filter_metadata": {"istio": {"workload": "mongodb-v1;default;mongodb;v1;Kubernetes"}}});
    let mut boot = bootstrap(
        vec![tcp_listener("outbound", "OUTBOUND", name, None)],
        vec![c],
    );
    boot["node"] = node("ratings-v2", "ratings", "v2");
    let p = proxy(boot).await;
    refused(p.addr("outbound")).await;
    let closed = closed_series(&p).await;
    let (labels, n) = &closed[0];
    assert_eq!(*n, 1);
    assert_eq!(label(labels, "response_flags"), "UF");
    assert_eq!(label(labels, "destination_service"), "unknown");
    assert_eq!(label(labels, "destination_workload"), "mongodb-v1");
    let prom = prometheus(&p).await;
    let opened = family(&prom, "istio_tcp_connections_opened_total");
    assert_eq!(opened, closed, "opened under the same labels");
    assert!(prom.contains(r#"istio_build{component="proxy",tag="1.10.6"} 1"#));
}

/// Connect and read until the proxy closes the connection; what came.
async fn refused(addr: std::net::SocketAddr) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    rest
}

/// The one `istio_tcp_connections_closed_total` series, once there (5 s at most).
async fn closed_series(p: &Proxy) -> Vec<(Vec<(String, String)>, u64)> {
    let mut closed = vec![];
    for _ in 0..50 {
        closed = family(&prometheus(p).await, "istio_tcp_connections_closed_total");
        if !closed.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(closed.len(), 1, "{closed:?}");
    closed
}

/// A connection the server's RBAC denies is still counted there, opened and closed, under
/// the client's workload and certificate name, as Istio's stats filter (which runs from the
/// connection's start, after the metadata exchange) counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_connection_is_counted() {
    let app = tcp_echo().await;
    let deny = json!({"name": "envoy.filters.network.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
        "stat_prefix": "tcp.", "rules": {"action": "DENY", "policies": {"ns[default]-policy[deny]": {
            "permissions": [{"any": true}], "principals": [{"any": true}]}}}}});
    // With the metadata exchange, which runs ahead of RBAC as Istio orders them.
    let (client, server, _pki) = sidecars(app, vec![deny], true).await;
    let rest = refused(client.addr("outbound")).await;
    assert!(
        !String::from_utf8_lossy(&rest).contains("hi"),
        "the app was reached"
    );
    let closed = closed_series(&server).await;
    let (labels, n) = &closed[0];
    assert_eq!(*n, 1);
    assert_labels(
        labels,
        &[
            ("reporter", "destination"),
            ("source_workload", "ratings-v2"),
            ("source_principal", SPIFFE_CLIENT),
            ("destination_principal", SPIFFE_SERVER),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    let opened = family(
        &prometheus(&server).await,
        "istio_tcp_connections_opened_total",
    );
    assert_eq!(&opened, &closed);
}

/// With Istio's TCP metadata exchange on both sides, each learns the other's workload from
/// the exchange (inbound too, where only the certificate named the client before), and the
/// application's bytes pass untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tcp_metadata_exchange_names_both_workloads() {
    let app = tcp_echo().await;
    let (client, server, _pki) = sidecars(app, vec![], true).await;
    let _s = query(&client).await;
    let opened = "istio_tcp_connections_opened_total";
    let out = family(&prometheus(&client).await, opened);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_labels(
        &out[0].0,
        &[
            ("destination_workload", "mongodb-v1"),
            // Not in the endpoint's metadata: from the exchange.
            ("destination_app", "mongodb"),
            ("destination_version", "v1"),
            ("destination_principal", SPIFFE_SERVER),
        ],
    );
    let inb = family(&prometheus(&server).await, opened);
    assert_eq!(inb.len(), 1, "{inb:?}");
    assert_labels(
        &inb[0].0,
        &[
            ("source_workload", "ratings-v2"),
            ("source_app", "ratings"),
            ("source_canonical_revision", "v2"),
            ("source_principal", SPIFFE_CLIENT),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    // The frames are not the application's bytes: the inbound side counts 15 sent and 12
    // received, as without the exchange.
    let mut seen = (0, 0);
    for _ in 0..15 {
        let prom = prometheus(&server).await;
        let one = |f: &str| family(&prom, f).first().map_or(0, |s| s.1);
        seen = (
            one("istio_tcp_sent_bytes_total"),
            one("istio_tcp_received_bytes_total"),
        );
        if seen != (0, 0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(seen, (15, 12));
}
