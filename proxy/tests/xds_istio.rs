//! Istio's own data: a real sidecar's EDS resources, Istio 1.10.6's sidecar bootstrap over a
//! relative pipe, and current Istio's delta bootstrap (the shared vectors).

// Each test binary that includes these uses a different part of them.
#[allow(dead_code)]
#[path = "xds_client/ads_server.rs"]
mod ads_server;
#[allow(dead_code)]
#[path = "xds_client/bookinfo.rs"]
mod bookinfo;
mod common;
#[allow(dead_code)]
#[path = "xds_client/harness.rs"]
mod harness;

use ads_server::*;
use bookinfo::*;
use common::*;
use harness::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The shared test vectors (real data from Istio).
fn vector(path: &str) -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/vectors")
        .join(path);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// A real Istio sidecar's EDS resources (`/config_dump?include_eds`, Istio master) are
/// accepted and show under `/clusters`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_istio_endpoints_are_accepted() {
    let dump = vector("istio-master/configdump/endpoints-configdump.json");
    let mut cds = Vec::new();
    let mut eds = Vec::new();
    for e in dump["configs"][0]["dynamic_endpoint_configs"]
        .as_array()
        .unwrap()
    {
        let mut cla = e["endpoint_config"].clone();
        cla.as_object_mut().unwrap().remove("@type");
        let name = cla["cluster_name"].as_str().unwrap().to_string();
        cds.push(eds_cluster(&name, "0s", json!({})));
        eds.push(pack_cla(cla));
    }
    assert_eq!(eds.len(), 32);
    let ads = Ads::new();
    let xds = ads.serve_tcp().await;
    ads.put(CDS, cds);
    let ver = ads.put(EDS, eds);
    let p = start_proxy(tcp(xds), true).await;
    ads.reply(EDS, ver).await.expect("real EDS accepted");
    let deadline = Instant::now() + HANG;
    while p.server.state_name() != "LIVE" {
        assert!(Instant::now() < deadline, "not LIVE");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snap = p.server.store.load();
    let reviews = &snap.clusters["outbound|9080||reviews.default.svc.cluster.local"];
    assert_eq!(reviews.hosts().all.len(), 3);
    let clusters = get(p.admin(), "/clusters", &[]).await.body;
    assert!(
        clusters.contains("outbound|9080||reviews.default.svc.cluster.local::10.244.0.192:9080"),
        "{clusters}"
    );
}

/// Istio 1.10.6's real sidecar bootstrap (SotW ADS over `./etc/istio/proxy/XDS`), with the pipe
/// moved to a path relative to the working directory and the ports to free ones: Bookinfo
/// routes through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_1_10_bootstrap_over_a_relative_pipe() {
    let dir = std::env::temp_dir().join(format!("mosn-xds-rel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("XDS");
    let ads = Ads::new();
    let (_stop, stop_rx) = tokio::sync::oneshot::channel();
    ads.serve_unix(&sock, stop_rx);
    let _ups = setup(&ads).await;
    // The same socket, named relative to the working directory, as Istio names it.
    let depth = std::env::current_dir().unwrap().components().count() - 1;
    let rel = format!(
        "{}{}",
        "../".repeat(depth),
        sock.to_str().unwrap().trim_start_matches('/')
    );
    let mut boot = vector("istio-1.10.6/bootstrap/xdsproxy_golden.json");
    boot["admin"]["address"]["socket_address"] = json!({"address": "127.0.0.1", "port_value": 0});
    for l in boot["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap()
    {
        let port = l["address"]["socket_address"]["port_value"].clone();
        l["address"]["socket_address"] = json!({"address": "127.0.0.1", "port_value": 0});
        // Unnamed listeners are named by address, which must then stay unique.
        l["name"] = json!(format!("static_{port}"));
    }
    let xds = boot["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == "xds-grpc")
        .unwrap();
    let pipe = &mut xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        ["address"]["pipe"]["path"];
    assert_eq!(pipe, "./etc/istio/proxy/XDS");
    *pipe = json!(rel);
    let p = proxy(boot).await;
    start_xds(&p.server);
    bookinfo(&ads, &p).await;
    assert!(ads.0.sotw.lock().unwrap()[0]
        .node
        .as_ref()
        .unwrap()
        .id
        .starts_with("sidecar~"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Current Istio's bootstrap asks for delta over `/tmp/XDS`.
#[test]
fn istio_master_bootstrap_asks_for_delta_over_a_pipe() {
    let loaded =
        mosn::config::decode_bootstrap(vector("istio-master/bootstrap/default_golden.json"), true)
            .unwrap();
    let cfg = mosn::xds::AdsConfig::from_bootstrap(&loaded.proto)
        .unwrap()
        .unwrap();
    assert_eq!(cfg.api_type, mosn::xds::ApiType::Delta);
    assert!(cfg.node_first_only && cfg.cds && cfg.lds);
    assert_eq!((cfg.cds_timeout, cfg.lds_timeout), (None, None));
    let stats = mosn::stats::Stats::new();
    let snap = mosn::config::Snapshot::build(&loaded, &stats).unwrap();
    let dial = mosn::xds::transport::resolve(&cfg.target, &snap).unwrap();
    assert_eq!(dial, mosn::xds::transport::Dial::Unix("/tmp/XDS".into()));
}
