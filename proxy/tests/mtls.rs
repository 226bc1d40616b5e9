//! Istio's mutual TLS on the data path: filter chains that terminate TLS with a
//! `DownstreamTlsContext` (certificates by secret name, client certificates checked against
//! the validation context's CA and SAN matchers, ALPN choosing HTTP/2). The client is curl, a
//! real TLS peer; certificates are made by openssl for each test. Also two mosn sidecars
//! talking Istio's auto-mTLS. SDS is in mtls_sds.rs.

mod common;

use common::mtls::*;
use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_terminates_mutual_tls_and_negotiates_h2() {
    let dir = pki();
    let d = dir.path();
    let (p, up) = mtls_proxy(d, json!([])).await;
    let addr = p.addr("in");
    assert_eq!(
        curl(d, addr, &[&CLIENT[..], &["--http1.1"]].concat()).await,
        Ok((200, "1.1".into()))
    );
    assert_eq!(
        curl(d, addr, &[&CLIENT[..], &["--http2"]].concat()).await,
        Ok((200, "2".into()))
    );
    assert_eq!(up.hits(), 2);
    // Listener stats are named by the configured address (port 0 here).
    assert_eq!(p.stat("listener.127.0.0.1_0.ssl.handshake"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_certificate_of_the_ca_are_refused() {
    let dir = pki();
    let d = dir.path();
    let (p, up) = mtls_proxy(d, json!([])).await;
    let addr = p.addr("in");
    let none = curl(d, addr, &[]).await;
    assert!(none.is_err(), "no client certificate: {none:?}");
    let rogue = curl(d, addr, &["--cert", "rogue.crt", "--key", "rogue.key"]).await;
    assert!(rogue.is_err(), "another CA's certificate: {rogue:?}");
    // Plaintext on the TLS chain gets no HTTP answer either.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_to_close(&mut s).await;
    assert!(
        !answer.contains("HTTP/1.1"),
        "plaintext on a TLS chain: {answer}"
    );
    assert_eq!(up.hits(), 0);
    let errors = p.stat("listener.127.0.0.1_0.ssl.connection_error");
    assert_eq!(errors, 3, "handshake errors");
    assert_eq!(p.stat("listener.127.0.0.1_0.ssl.handshake"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn san_matchers_pick_the_clients_identity() {
    let dir = pki();
    let d = dir.path();
    let (p, up) = mtls_proxy(d, json!([{"exact": SPIFFE_CLIENT}])).await;
    let addr = p.addr("in");
    assert_eq!(curl(d, addr, &CLIENT).await, Ok((200, "2".into())));
    let other = curl(d, addr, &["--cert", "other.crt", "--key", "other.key"]).await;
    assert!(other.is_err(), "same CA, another identity: {other:?}");
    assert_eq!(up.hits(), 1);
}

/// Istio's auto-mTLS client side: `transport_socket_matches` with `tlsMode-istio` (an
/// UpstreamTlsContext with Istio's SNI, ALPN and the server's SPIFFE id) and
/// `tlsMode-disabled` (plaintext), as outbound clusters carry them.
fn auto_mtls(san: &str) -> Value {
    json!({"transport_socket_matches": [
        {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": {
            "name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": "outbound_.9080_._.reviews.default.svc.cluster.local",
                "common_tls_context": {
                    "alpn_protocols": ["istio-peer-exchange", "istio"],
                    "tls_certificate_sds_secret_configs": [{"name": "default"}],
                    "combined_validation_context": {
                        "default_validation_context": {"match_subject_alt_names": [{"exact": san}]},
                        "validation_context_sds_secret_config": {"name": "ROOTCA"}}}}}},
        {"name": "tlsMode-disabled", "match": {}, "transport_socket": {"name": "envoy.transport_sockets.raw_buffer",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}]})
}

/// The server sidecar: Istio's inbound chains for a sniffed port behind tls_inspector, the
/// HTTP one for Istio's HTTP ALPNs (it adds `x-chain: http`) and the TCP one for any other
/// TLS client; both in front of `app`.
async fn server_sidecar(d: &Path, app: SocketAddr) -> Proxy {
    let vhosts = json!([{"name": "v", "domains": ["*"], "response_headers_to_add": [{"header": {"key": "x-chain", "value": "http"}}],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]);
    let mut l = listener("in", vhosts, vec![], json!({}));
    let mut http = l["filter_chains"][0].take();
    http["filter_chain_match"] = json!({"transport_protocol": "tls", "application_protocols": ["istio-http/1.0", "istio-http/1.1", "istio-h2"]});
    http["transport_socket"] = downstream_tls(json!([]));
    let tcp = json!({"filter_chain_match": {"transport_protocol": "tls"}, "transport_socket": downstream_tls(json!([])),
        "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "in-tcp", "cluster": "app"}}]});
    l["filter_chains"] = json!([http, tcp]);
    l["listener_filters"] = json!([{"name": "envoy.filters.listener.tls_inspector",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}]);
    let mut boot = bootstrap(vec![l], vec![cluster("app", &[app], json!({}))]);
    boot["static_resources"]["secrets"] = secrets(d);
    proxy(boot).await
}

/// The client sidecar: an outbound listener routing to cluster `reviews`, whose one endpoint
/// (`server`, labelled `tlsMode: istio` unless `plain`) is reached with auto-mTLS expecting
/// `san`; `istio_alpn` adds Istio's `istio.alpn` HTTP filter.
async fn client_sidecar(
    d: &Path,
    server: SocketAddr,
    san: &str,
    istio_alpn: bool,
    plain: bool,
) -> Proxy {
    proxy(client_bootstrap(
        d,
        server,
        san,
        istio_alpn,
        plain,
        json!({}),
    ))
    .await
}

/// Cluster options for HTTP/2 upstream connections.
fn h2_upstream() -> Value {
    json!({"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}})
}

/// An outbound listener `name` routing to cluster `reviews`, with Istio's `istio.alpn` filter
/// when `istio_alpn`.
fn outbound(name: &str, istio_alpn: bool) -> Value {
    let vhosts = json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "reviews"}}]}]);
    let filters = if istio_alpn {
        vec![
            json!({"name": "istio.alpn", "typed_config": {"@type": "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
            "alpn_override": [{"alpn_override": ["istio-http/1.0", "istio", "http/1.0"]},
                              {"upstream_protocol": "HTTP11", "alpn_override": ["istio-http/1.1", "istio", "http/1.1"]},
                              {"upstream_protocol": "HTTP2", "alpn_override": ["istio-h2", "istio", "h2"]}]}}),
        ]
    } else {
        vec![]
    };
    listener(name, vhosts, filters, json!({}))
}

/// The bootstrap of [`client_sidecar`], with `extra` merged into the cluster.
fn client_bootstrap(
    d: &Path,
    server: SocketAddr,
    san: &str,
    istio_alpn: bool,
    plain: bool,
    extra: Value,
) -> Value {
    let l = outbound("out", istio_alpn);
    let mut tls = auto_mtls(san);
    mosn::config::merge(&mut tls, extra);
    let mut c = cluster("reviews", &[server], tls);
    if !plain {
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["metadata"] =
            json!({"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}});
    }
    let mut boot = bootstrap(vec![l], vec![c]);
    boot["static_resources"]["secrets"] = json!([
        {"name": "default", "tls_certificate": {"certificate_chain": file(d, "client.crt"), "private_key": file(d, "client.key")}},
        {"name": "ROOTCA", "validation_context": {"trusted_ca": file(d, "ca.crt")}},
    ]);
    boot
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_talk_mutual_tls_with_istios_alpn() {
    let dir = pki();
    let d = dir.path();
    let app = upstream("app").await;
    let server = server_sidecar(d, app.addr).await;
    let in_addr = server.addr("in");
    // With istio.alpn: the server's HTTP chain (its response header comes back).
    let client = client_sidecar(d, in_addr, SPIFFE_SERVER, true, false).await;
    let r = get(client.addr("out"), "/a", &[]).await;
    assert_eq!(
        (r.status, r.header("x-chain")),
        (200, Some("http")),
        "{}",
        r.body
    );
    assert_eq!(r.upstream(), "app");
    // A second request reuses the pooled TLS connection.
    assert_eq!(get(client.addr("out"), "/b", &[]).await.status, 200);
    assert_eq!(server.stat("listener.127.0.0.1_0.ssl.handshake"), 1);
    assert_eq!(client.stat("cluster.reviews.ssl.handshake"), 1);
    // Without it the cluster's `istio-peer-exchange, istio`: the TCP chain, still mTLS.
    let client = client_sidecar(d, in_addr, SPIFFE_SERVER, false, false).await;
    let r = get(client.addr("out"), "/c", &[]).await;
    assert_eq!((r.status, r.header("x-chain")), (200, None), "{}", r.body);
    assert_eq!(server.stat("listener.127.0.0.1_0.ssl.handshake"), 2);
    assert_eq!(app.hits(), 3);
}

/// Connections are pooled per ALPN offer, as Envoy keys its pools: a listener without
/// `istio.alpn` does not reuse the connection that one with it opened (that connection runs on
/// the server's HTTP chain), and each goes on reusing its own. HTTP/1.1 (the inline pool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_keep_connections_of_different_alpn_apart() {
    alpn_pools_apart(json!({}), false).await;
}

/// The same for requests with a body, which go through hyper's HTTP/1.1 client and its own
/// map of idle connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_keep_connections_of_different_alpn_apart_for_requests_with_a_body() {
    alpn_pools_apart(json!({}), true).await;
}

/// The same through the h2 pool: without `istio.alpn` the h2 connection lands on the server's
/// TCP chain and the app (which speaks h2c) answers it directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_pools_keep_connections_of_different_alpn_apart() {
    alpn_pools_apart(h2_upstream(), false).await;
}

/// Two outbound listeners, with and without `istio.alpn`, to one auto-mTLS cluster (with
/// `extra` merged into it): each listener's requests reach their own server chain, over one
/// handshake each. With `body`, every request is a POST with a body.
async fn alpn_pools_apart(extra: serde_json::Value, body: bool) {
    let dir = pki();
    let d = dir.path();
    let app = upstream("app").await;
    let server = server_sidecar(d, app.addr).await;
    let mut boot = client_bootstrap(d, server.addr("in"), SPIFFE_SERVER, true, false, extra);
    boot["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap()
        .push(outbound("plain-alpn", false));
    let client = proxy(boot).await;
    let send = |l: &str, path: &'static str| {
        let addr = client.addr(l);
        async move {
            if body {
                request(addr, "POST", path, &[], "a body", false).await
            } else {
                get(addr, path, &[]).await
            }
        }
    };
    let chain = |r: &Resp| (r.status, r.header("x-chain").map(str::to_string));
    let http = (200, Some("http".to_string()));
    let r = send("out", "/a").await;
    assert_eq!(chain(&r), http, "{}", r.body);
    let r = send("plain-alpn", "/b").await;
    assert_eq!(
        chain(&r),
        (200, None),
        "the istio.alpn connection was reused: {}",
        r.body
    );
    for (l, want) in [("out", &http), ("plain-alpn", &(200, None))] {
        let r = send(l, "/c").await;
        assert_eq!(&chain(&r), want, "{l}: {}", r.body);
    }
    assert_eq!(client.stat("cluster.reviews.ssl.handshake"), 2);
    assert_eq!(app.hits(), 4);
    if body {
        let r = send("out", "/d").await;
        assert_eq!(r.json()["body_len"], 6, "{}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_identity_is_checked_and_unlabelled_endpoints_are_plaintext() {
    let dir = pki();
    let d = dir.path();
    let app = upstream("app").await;
    let server = server_sidecar(d, app.addr).await;
    // The server is not who the cluster expects: the handshake fails on the client side (UF).
    let client = client_sidecar(d, server.addr("in"), SPIFFE_OTHER, true, false).await;
    let r = get(client.addr("out"), "/", &[]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("connection failure"), "{}", r.body);
    assert_eq!(server.stat("listener.127.0.0.1_0.ssl.handshake"), 0);
    assert!(client.stat("cluster.reviews.ssl.connection_error") >= 1);
    assert_eq!(client.stat("cluster.reviews.ssl.handshake"), 0);
    // An endpoint without `tlsMode: istio` takes the tlsMode-disabled match: plaintext, so
    // the app itself answers it directly.
    let client = client_sidecar(d, app.addr, SPIFFE_SERVER, true, true).await;
    let r = get(client.addr("out"), "/", &[]).await;
    assert_eq!(
        (r.status, r.upstream().as_str()),
        (200, "app"),
        "{}",
        r.body
    );
    assert_eq!(app.hits(), 1);
}

/// Istio's gateway XFCC: SANITIZE_SET with the client's certificate (`Cert`, and `Chain` when
/// asked) as URL-encoded PEM, so that an app behind a MUTUAL gateway can read it; the URI key
/// is there even when the certificate has no URI SAN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_forwards_the_client_certificate() {
    let dir = pki();
    let d = dir.path();
    common::certs::leaf(
        d,
        "nouri",
        "ca",
        "subjectAltName=DNS:client.test\nextendedKeyUsage=clientAuth\n",
    );
    let up = upstream("app").await;
    let vhosts = json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]);
    let xfcc = json!({"forward_client_cert_details": "SANITIZE_SET",
        "set_current_client_cert_details": {"subject": true, "cert": true, "chain": true, "uri": true, "dns": true}});
    let mut gw = listener("gw", vhosts, vec![], xfcc);
    gw["filter_chains"][0]["transport_socket"] = downstream_tls(json!([]));
    let mut boot = bootstrap(vec![gw], vec![cluster("app", &[up.addr], json!({}))]);
    boot["static_resources"]["secrets"] = secrets(d);
    let p = proxy(boot).await;
    let addr = p.addr("gw");
    let url = format!("https://server.test:{}/", addr.port());
    let args = ["--cert", "nouri.crt", "--key", "nouri.key"];
    let body = curl_body(d, addr, &url, &args).await.unwrap();
    let echo: Value = serde_json::from_str(&body).unwrap();
    let xfcc = echo["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap()
        .to_string();
    let field = |key: &str| -> String {
        let start = xfcc
            .find(&format!("{key}="))
            .unwrap_or_else(|| panic!("{key} in {xfcc}"));
        let rest = &xfcc[start + key.len() + 1..];
        let end = if let Some(q) = rest.strip_prefix('"') {
            q.find('"').unwrap() + 2
        } else {
            rest.find(';').unwrap_or(rest.len())
        };
        rest[..end].trim_matches('"').to_string()
    };
    // Percent-decoded, Cert is the PEM file openssl wrote, and Chain that and what else curl
    // sent (its OpenSSL completes the chain with the CA it trusts).
    let decode = |s: &str| {
        let mut out = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    let pem = std::fs::read_to_string(d.join("nouri.crt")).unwrap();
    let cert = field("Cert");
    assert!(!cert.contains(['\n', ' ', '+', '/', '=']), "{cert}");
    assert_eq!(decode(&cert), pem);
    let chain = decode(&field("Chain"));
    let rest = chain
        .strip_prefix(&pem)
        .expect("the chain starts with the client's own");
    let ca = std::fs::read_to_string(d.join("ca.crt")).unwrap();
    assert!(rest.is_empty() || rest == ca, "{rest}");
    assert!(
        xfcc.starts_with(&format!(
            "By={SPIFFE_SERVER};Hash={};Cert=",
            cert_sha256(d, "nouri.crt")
        )),
        "{xfcc}"
    );
    assert!(
        xfcc.ends_with(";Subject=\"CN=nouri\";URI=;DNS=client.test"),
        "{xfcc}"
    );
}

/// Istio's inbound XFCC: APPEND_FORWARD with Subject, URI and DNS; a plaintext listener's
/// default (SANITIZE) drops a client's own header, and the app sees https on mTLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_learns_the_clients_identity_and_nobody_can_forge_it() {
    let dir = pki();
    let d = dir.path();
    let up = upstream("app").await;
    let vhosts = json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]);
    let xfcc = json!({"forward_client_cert_details": "APPEND_FORWARD",
        "set_current_client_cert_details": {"subject": true, "dns": true, "uri": true}});
    let mut tls = listener("in", vhosts.clone(), vec![], xfcc);
    tls["filter_chains"][0]["transport_socket"] = downstream_tls(json!([]));
    let plain = listener("plain", vhosts, vec![], json!({}));
    let mut boot = bootstrap(
        vec![tls, plain],
        vec![cluster("app", &[up.addr], json!({}))],
    );
    boot["static_resources"]["secrets"] = secrets(d);
    let p = proxy(boot).await;
    let addr = p.addr("in");
    let url = format!("https://server.test:{}/", addr.port());
    let args = [
        &CLIENT[..],
        &["-H", "x-forwarded-client-cert: By=spiffe://upstream-proxy"],
    ]
    .concat();
    let body = curl_body(d, addr, &url, &args).await.unwrap();
    let echo: Value = serde_json::from_str(&body).unwrap();
    let expected = format!(
        "By=spiffe://upstream-proxy,By={SPIFFE_SERVER};Hash={};Subject=\"CN=client\";URI={SPIFFE_CLIENT}",
        cert_sha256(d, "client.crt")
    );
    assert_eq!(echo["headers"]["x-forwarded-client-cert"], json!(expected));
    assert_eq!(echo["headers"]["x-forwarded-proto"], json!("https"));
    // Plaintext, default SANITIZE: a forged header is dropped.
    let r = get(
        p.addr("plain"),
        "/",
        &[(
            "x-forwarded-client-cert",
            "URI=spiffe://cluster.local/ns/x/sa/admin",
        )],
    )
    .await;
    assert_eq!(
        r.json()["headers"]["x-forwarded-client-cert"],
        Value::Null,
        "{}",
        r.body
    );
}

/// HTTP/2 between sidecars over mTLS: an h2 cluster behind `istio.alpn` offers
/// `istio-h2, istio, h2`, the server's chain selects `h2`, and both sides speak HTTP/2 on the
/// TLS connection; several requests share it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_speak_h2_over_mutual_tls() {
    let dir = pki();
    let d = dir.path();
    let app = upstream("app").await;
    let server = server_sidecar(d, app.addr).await;
    let client = proxy(client_bootstrap(
        d,
        server.addr("in"),
        SPIFFE_SERVER,
        true,
        false,
        h2_upstream(),
    ))
    .await;
    for path in ["/a", "/b", "/c"] {
        let r = get(client.addr("out"), path, &[]).await;
        assert_eq!(
            (r.status, r.header("x-chain")),
            (200, Some("http")),
            "{}",
            r.body
        );
    }
    assert_eq!(client.stat("cluster.reviews.ssl.handshake"), 1);
    assert_eq!(server.stat("listener.127.0.0.1_0.ssl.handshake"), 1);
    // The client's h2 pool sent the connection preface on the TLS stream; a server that had
    // not negotiated h2 would have read it as a bad HTTP/1 request (503 on this side).
    assert_eq!(app.hits(), 3);
}

/// TLS origination as Istio writes it for a DestinationRule `tls.mode: SIMPLE` without `sni`
/// or `subjectAltNames`: the cluster's `auto_sni` and `auto_san_validation` name each new
/// connection after its request's host (without the port) and check the server's certificate
/// against that name. The server is a mosn whose filter chains match on the SNI it receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_tls_takes_sni_and_san_from_the_request_host() {
    let dir = pki();
    let d = dir.path();
    common::certs::leaf(
        d,
        "egress",
        "ca",
        "subjectAltName=DNS:egress.test,DNS:*.wild.test\nextendedKeyUsage=serverAuth\n",
    );
    let app = upstream("app").await;
    // The server: one TLS chain per expected SNI, each answering with its name.
    let tls = json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": {"tls_certificates": [{"certificate_chain": file(d, "egress.crt"), "private_key": file(d, "egress.key")}]}}});
    let mut l = listener("in", json!([]), vec![], json!({}));
    let template = l["filter_chains"][0].take();
    let chain = |sni: &str| {
        let mut c = template.clone();
        c["filter_chain_match"] = json!({"server_names": [sni]});
        c["transport_socket"] = tls.clone();
        let hcm = &mut c["filters"][0]["typed_config"];
        hcm["route_config"]["virtual_hosts"] = json!([{"name": "v", "domains": ["*"],
            "response_headers_to_add": [{"header": {"key": "x-sni", "value": sni}}],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]);
        c
    };
    l["filter_chains"] = json!([
        chain("egress.test"),
        chain("b.wild.test"),
        chain("nope.test")
    ]);
    l["listener_filters"] = json!([{"name": "envoy.filters.listener.tls_inspector",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}]);
    let server = proxy(bootstrap(
        vec![l],
        vec![cluster("app", &[app.addr], json!({}))],
    ))
    .await;
    // The client: the cluster as Istio builds it (a CA, no SNI, no SAN matchers).
    let egress = cluster(
        "egress",
        &[server.addr("in")],
        json!({"transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {"validation_context": {"trusted_ca": file(d, "ca.crt")}}}},
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "upstream_http_protocol_options": {"auto_sni": true, "auto_san_validation": true},
            "explicit_http_config": {"http_protocol_options": {}}}}}),
    );
    let vhosts = json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "egress"}}]}]);
    let client = proxy(bootstrap(
        vec![listener("out", vhosts, vec![], json!({}))],
        vec![egress],
    ))
    .await;
    let out = client.addr("out");
    let via = |host: &'static str| async move {
        let r = get(out, "/", &[("host", host)]).await;
        (r.status, r.header("x-sni").map(str::to_string))
    };
    assert_eq!(via("egress.test").await, (200, Some("egress.test".into())));
    // The port is not part of the name; a wildcard SAN covers the host.
    assert_eq!(
        via("b.wild.test:8443").await,
        (200, Some("b.wild.test".into()))
    );
    // Each name has its own pooled connection: the first one is reused, not the last.
    assert_eq!(via("egress.test").await, (200, Some("egress.test".into())));
    assert_eq!(client.stat("cluster.egress.ssl.handshake"), 2);
    // A host the certificate is not valid for: the handshake fails on the client's side.
    assert_eq!(via("nope.test").await.0, 503);
    assert_eq!(app.hits(), 3);
}

/// A chain's `transport_socket_connect_timeout` (15 s on Istio's gateways) closes a connection
/// whose TLS handshake has not finished: a client that connects and says nothing is not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_is_cut_off() {
    let dir = pki();
    let d = dir.path();
    let up = upstream("app").await;
    let vhosts = json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]);
    let mut l = listener("in", vhosts, vec![], json!({}));
    l["filter_chains"][0]["transport_socket"] = downstream_tls(json!([]));
    l["filter_chains"][0]["transport_socket_connect_timeout"] = json!("0.3s");
    let mut boot = bootstrap(vec![l], vec![cluster("app", &[up.addr], json!({}))]);
    boot["static_resources"]["secrets"] = secrets(d);
    let p = proxy(boot).await;
    let addr = p.addr("in");
    let started = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (answer, _) = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        read_to_close(&mut silent),
    )
    .await
    .expect("the proxy closes the stalled connection");
    assert!(answer.is_empty(), "{answer}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
    assert_eq!(
        p.stat("listener.127.0.0.1_0.downstream_cx_transport_socket_connect_timeout"),
        1
    );
    // A client that completes its handshake in time is served.
    assert_eq!(curl(d, addr, &CLIENT).await, Ok((200, "2".into())));
}
