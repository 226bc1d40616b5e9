//! The proxy under test with its ADS client, for the `xds_*` test files: a pilot-agent-like
//! bootstrap, start-up, waits for LIVE and bound listeners, requests counted by upstream, the
//! Bookinfo routing walk, and `/config_dump` sections.

use super::ads_server::*;
use super::bookinfo::*;
use super::common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A bootstrap like pilot-agent's: ADS over the `xds-grpc` cluster (a pipe or TCP).
pub fn bootstrap(xds: Value, delta: bool) -> Value {
    json!({
        "node": {"id": "sidecar~10.1.1.1~productpage-v1-123.default~default.svc.cluster.local",
                 "cluster": "productpage.default", "metadata": {"ISTIO_VERSION": "1.10.6"}},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "lds_config": ads_source("0s"), "cds_config": ads_source("0s"),
            "ads_config": {"api_type": if delta { "DELTA_GRPC" } else { "GRPC" }, "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]}},
        "static_resources": {"clusters": [{"name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s",
            "http2_protocol_options": {},
            "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": xds}}]}]}}]}
    })
}

pub fn tcp(a: SocketAddr) -> Value {
    json!({"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}})
}

/// Start the ADS client unless the server already did (once `server.rs` starts it itself).
pub fn start_xds(server: &Arc<mosn::server::Server>) {
    let _ = mosn::xds::start(server);
    assert!(server
        .stats
        .value("control_plane.connected_state")
        .is_some());
}

/// Start the proxy in-process with the ADS client.
pub async fn start_proxy(xds: Value, delta: bool) -> Proxy {
    start_proxy_with(xds, delta, mosn::cli::Options::default()).await
}

/// The same with command-line options.
pub async fn start_proxy_with(xds: Value, delta: bool, opts: mosn::cli::Options) -> Proxy {
    let p = proxy_with_options(bootstrap(xds, delta), opts).await;
    start_xds(&p.server);
    p
}

/// Wait (bounded) until the proxy is LIVE with the dynamic listener bound; its address.
pub async fn wait_live(p: &Proxy) -> SocketAddr {
    let deadline = Instant::now() + HANG;
    loop {
        let bound = p
            .server
            .listeners
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.config().name == LISTENER)
            .map(|l| l.local_addr);
        if let (Some(a), "LIVE") = (bound, p.server.state_name()) {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "proxy not LIVE: {}",
            p.server.state_name()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The address of a bound dynamic listener, once bound (bounded wait).
pub async fn wait_bound(p: &Proxy, name: &str) -> SocketAddr {
    let deadline = Instant::now() + HANG;
    loop {
        if let Some(a) = bound(p, name) {
            return a;
        }
        assert!(Instant::now() < deadline, "listener {name} never bound");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn bound(p: &Proxy, name: &str) -> Option<SocketAddr> {
    let ls = p.server.listeners.lock().unwrap();
    ls.iter()
        .find(|l| l.config().name == name)
        .map(|l| l.local_addr)
}

/// Upstream names of `n` requests.
pub async fn send(addr: SocketAddr, n: usize, headers: &[(&str, &str)]) -> Vec<String> {
    let mut hs = vec![("host", HOST)];
    hs.extend_from_slice(headers);
    let mut out = Vec::new();
    for _ in 0..n {
        let r = get(addr, "/reviews/0", &hs).await;
        assert_eq!(r.status, 200, "{}", r.body);
        out.push(r.upstream());
    }
    out
}

pub fn count(v: &[String], name: &str) -> usize {
    v.iter().filter(|x| *x == name).count()
}

/// Upstreams for reviews v1, v2 and v3, and Bookinfo's resources on the ADS server.
pub async fn setup(ads: &Ads) -> Vec<Upstream> {
    let ups = vec![
        upstream("v1").await,
        upstream("v2").await,
        upstream("v3").await,
    ];
    ads.put(CDS, clusters("0s"));
    ads.put(EDS, endpoints(&ups));
    ads.put(LDS, listeners());
    ads.put(RDS, route(Vs::Default, false));
    ups
}

/// Serve Bookinfo, wait for LIVE, and check the four VirtualService routings in turn.
pub async fn bookinfo(ads: &Ads, p: &Proxy) -> SocketAddr {
    let addr = wait_live(p).await;
    assert!(p.stat("cluster_manager.cds.update_success") > 0);
    assert!(p.stat("listener_manager.lds.update_success") > 0);
    // Default: round robin over all three versions.
    let got = send(addr, 30, &[]).await;
    for v in ["v1", "v2", "v3"] {
        assert_eq!(count(&got, v), 10, "{got:?}");
    }
    // virtual-service-all-v1.
    let ver = ads.put(RDS, route(Vs::AllV1, false));
    ads.reply(RDS, ver).await.unwrap();
    assert_eq!(count(&send(addr, 20, &[]).await, "v1"), 20);
    // virtual-service-reviews-50-v3: binomial bounds.
    let ver = ads.put(RDS, route(Vs::V1V3, false));
    ads.reply(RDS, ver).await.unwrap();
    let got = send(addr, 200, &[]).await;
    assert_eq!(count(&got, "v1") + count(&got, "v3"), 200);
    assert!(
        within_binomial(count(&got, "v3"), 200, 0.5),
        "v3 {}",
        count(&got, "v3")
    );
    // virtual-service-reviews-test-v2: jason → v2, everyone else → v1.
    let ver = ads.put(RDS, route(Vs::TestV2, false));
    ads.reply(RDS, ver).await.unwrap();
    assert_eq!(
        count(&send(addr, 10, &[("end-user", "jason")]).await, "v2"),
        10
    );
    assert_eq!(
        count(&send(addr, 10, &[("end-user", "alice")]).await, "v1"),
        10
    );
    assert_eq!(count(&send(addr, 10, &[]).await, "v1"), 10);
    addr
}

/// `/config_dump?include_eds` as the admin renders it with the client's dynamic sections.
pub fn dump(p: &Proxy) -> Value {
    let d = mosn::admin::config_dump(&p.server, true);
    mosn::xds::dump::augment(&p.server, d, true)
}

pub fn section<'a>(d: &'a Value, ty: &str) -> &'a Value {
    let url = format!("type.googleapis.com/envoy.admin.v3.{ty}");
    d["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["@type"] == url.as_str())
        .unwrap()
}
