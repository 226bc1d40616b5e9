//! The ADS client against a real gRPC ADS server inside the test (tonic + the envoy-types
//! server trait), SotW over a unix socket and delta over TCP, with Bookinfo's reviews service
//! shaped as Istio 1.10 writes it and real HTTP upstreams for reviews v1, v2 and v3: routing,
//! ACKs, the node it sends, and warming before use. NACKs and updates under load are in
//! xds_updates.rs, reconnects and message size in xds_transport.rs, Istio's own bootstraps and
//! vectors in xds_istio.rs, large configs and the real binary in xds_scale.rs.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_over_unix_socket_routes_bookinfo_and_acks() {
    let dir = std::env::temp_dir().join(format!("mosn-xds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("XDS");
    let ads = Ads::new();
    let (_stop, stop_rx) = tokio::sync::oneshot::channel();
    ads.serve_unix(&sock, stop_rx);
    let ups = setup(&ads).await;
    let p = start_proxy(json!({"pipe": {"path": sock.to_str().unwrap()}}), false).await;
    bookinfo(&ads, &p).await;
    drop(ups);

    let reqs = ads.0.sotw.lock().unwrap().clone();
    // Node on the first message only, with the bootstrap's identity.
    let node = reqs[0].node.as_ref().expect("node on the first request");
    assert_eq!(
        node.id,
        "sidecar~10.1.1.1~productpage-v1-123.default~default.svc.cluster.local"
    );
    assert_eq!(node.cluster, "productpage.default");
    assert!(node
        .metadata
        .as_ref()
        .unwrap()
        .fields
        .contains_key("ISTIO_VERSION"));
    assert!(reqs[1..].iter().all(|r| r.node.is_none()));
    // Order: CDS first; LDS only after EDS was answered (clusters warm).
    assert_eq!(reqs[0].type_url, CDS);
    let first = |t: &str| reqs.iter().position(|r| r.type_url == t).unwrap();
    assert!(first(EDS) < first(LDS) && first(LDS) < first(RDS));
    let mut eds: Vec<String> = reqs[first(EDS)].resource_names.clone();
    eds.sort();
    let mut want = ["", "v1", "v2", "v3"].map(reviews).to_vec();
    want.sort();
    assert_eq!(eds, want);
    assert_eq!(reqs[first(RDS)].resource_names, vec!["9080".to_string()]);
    // ACKs echo version_info and nonce.
    let ack = reqs.iter().rev().find(|r| r.type_url == RDS).unwrap();
    assert_eq!(ack.version_info, ads.0.cfg.borrow().version.to_string());
    assert!(!ack.response_nonce.is_empty() && ack.error_detail.is_none());
    // /config_dump shows the xDS resources as dynamic, with versions.
    let d = dump(&p);
    let version = |v: &Value| v["version_info"].as_str().unwrap().parse::<u64>().unwrap();
    let c = section(&d, "ClustersConfigDump");
    let active = c["dynamic_active_clusters"].as_array().unwrap();
    assert_eq!(active.len(), 5);
    assert!(active
        .iter()
        .all(|a| version(a) >= 1 && a["last_updated"].is_string()));
    assert_eq!(active[0]["cluster"]["@type"], CDS);
    assert_eq!(
        c["static_clusters"].as_array().unwrap().len(),
        1,
        "xds-grpc only"
    );
    let l = section(&d, "ListenersConfigDump");
    assert_eq!(l["dynamic_listeners"][0]["name"], LISTENER);
    assert_eq!(
        l["dynamic_listeners"][0]["active_state"]["listener"]["name"],
        LISTENER
    );
    let r = section(&d, "RoutesConfigDump");
    assert_eq!(
        r["dynamic_route_configs"][0]["route_config"]["name"],
        "9080"
    );
    let e = section(&d, "EndpointsConfigDump");
    assert_eq!(e["dynamic_endpoint_configs"].as_array().unwrap().len(), 4);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_over_tcp_routes_bookinfo() {
    let ads = Ads::new();
    let addr = ads.serve_tcp().await;
    let ups = setup(&ads).await;
    let p = start_proxy(tcp(addr), true).await;
    bookinfo(&ads, &p).await;
    drop(ups);
    let reqs = ads.0.delta.lock().unwrap().clone();
    assert!(reqs[0].node.is_some() && reqs[1..].iter().all(|r| r.node.is_none()));
    assert_eq!(reqs[0].type_url, CDS);
    assert!(reqs.iter().all(|r| r.error_detail.is_none()));
    // Removing a subset cluster unsubscribes its endpoints.
    let mut cs = clusters("0s");
    cs.retain(|(n, _)| *n != reviews("v2"));
    let ver = ads.put(CDS, cs);
    ads.reply(CDS, ver).await.unwrap();
    let deadline = Instant::now() + HANG;
    while !ads
        .0
        .delta
        .lock()
        .unwrap()
        .iter()
        .any(|r| r.resource_names_unsubscribe == vec![reviews("v2")])
    {
        assert!(Instant::now() < deadline, "no EDS unsubscribe");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!p.server.store.load().clusters.contains_key(&reviews("v2")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_and_listeners_warm_before_use() {
    let ads = Ads::new();
    let xds = ads.serve_tcp().await;
    let ups = vec![
        upstream("v1").await,
        upstream("v2").await,
        upstream("v3").await,
    ];
    ads.put(CDS, clusters("0s"));
    let mut eps = endpoints(&ups);
    eps.retain(|(n, _)| *n != reviews("v3"));
    ads.put(EDS, eps);
    ads.put(LDS, listeners());
    ads.put(RDS, route(Vs::Default, false));
    let p = start_proxy(tcp(xds), false).await;

    // v3 waits for its endpoints (initial_fetch_timeout 0s: forever), so LDS is not asked yet.
    let deadline = Instant::now() + HANG;
    while p.stat("cluster_manager.cds.update_success") == 0
        || p.stat("cluster_manager.warming_clusters") != 1
    {
        assert!(Instant::now() < deadline, "CDS never applied");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!ads.0.sotw.lock().unwrap().iter().any(|r| r.type_url == LDS));
    assert_ne!(p.server.state_name(), "LIVE");
    assert!(!p.server.store.load().clusters.contains_key(&reviews("v3")));
    let warming = section(&dump(&p), "ClustersConfigDump")["dynamic_warming_clusters"].clone();
    assert_eq!(warming[0]["cluster"]["name"], reviews("v3").as_str());

    // Its endpoints arrive: LDS, RDS, LIVE.
    ads.put(EDS, endpoints(&ups));
    let addr = wait_live(&p).await;
    assert_eq!(p.stat("cluster_manager.warming_clusters"), 0);
    assert_eq!(count(&send(addr, 3, &[]).await, "v3"), 1);

    // A cluster whose endpoints never come is used without them after its initial_fetch_timeout.
    let mut cs = clusters("0s");
    cs.push(eds_cluster(&reviews("v4"), "5s", json!({})));
    let ver = ads.put(CDS, cs);
    ads.reply(CDS, ver).await.unwrap();
    let deadline = Instant::now() + HANG;
    while !p.server.store.load().clusters.contains_key(&reviews("v4")) {
        assert!(Instant::now() < deadline, "v4 never promoted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(p.stat("cluster_manager.warming_clusters"), 0);

    // A listener waits for its routes; then it is bound and serves.
    let ver = ads.put(
        LDS,
        vec![
            listeners().remove(0),
            bookinfo::listener("0.0.0.0_9081", "9081", "outbound_0.0.0.0_9081"),
        ],
    );
    ads.reply(LDS, ver).await.unwrap();
    assert_eq!(p.stat("listener_manager.total_listeners_warming"), 1);
    assert_eq!(bound(&p, "0.0.0.0_9081"), None);
    ads.put(
        RDS,
        vec![
            route(Vs::Default, false).remove(0),
            route_config("9081", Vs::AllV1, false, Vec::new()),
        ],
    );
    let a9081 = wait_bound(&p, "0.0.0.0_9081").await;
    assert_eq!(count(&send(a9081, 5, &[]).await, "v1"), 5);
    assert_eq!(p.stat("listener_manager.total_listeners_warming"), 0);

    // Changed: the new listener takes over the old one's socket (same address, no refused
    // connections) and serves with its own config; the old one drained. Removed: drained.
    let ver = ads.put(
        LDS,
        vec![
            listeners().remove(0),
            bookinfo::listener("0.0.0.0_9081", "9081", "changed"),
        ],
    );
    ads.reply(LDS, ver).await.unwrap();
    let a2 = wait_bound(&p, "0.0.0.0_9081").await;
    assert_eq!(a2, a9081);
    assert_eq!(count(&send(a2, 3, &[]).await, "v1"), 3);
    assert_eq!(p.stat("http.changed.downstream_rq_total"), 3);
    let ver = ads.put(LDS, listeners());
    ads.reply(LDS, ver).await.unwrap();
    assert_eq!(bound(&p, "0.0.0.0_9081"), None);
    assert_eq!(bound(&p, LISTENER), Some(addr));
    assert!(
        !p.server.store.load().routes.contains_key("9081"),
        "unsubscribed routes are dropped"
    );
}

/// The node is the bootstrap's with `--service-node`/`--service-cluster` applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_overrides_from_the_command_line() {
    let ads = Ads::new();
    let xds = ads.serve_tcp().await;
    let _ups = setup(&ads).await;
    let file = std::env::temp_dir().join(format!("mosn-xds-node-{}.json", std::process::id()));
    std::fs::write(&file, harness::bootstrap(tcp(xds), true).to_string()).unwrap();
    let args = [
        "-c",
        file.to_str().unwrap(),
        "--service-node",
        "sidecar~10.9.9.9~ratings.ns~ns.svc.cluster.local",
        "--service-cluster",
        "ratings.ns",
    ];
    let opts = mosn::cli::parse(args.map(String::from)).unwrap();
    let boot = mosn::config::load(&opts).unwrap();
    let stats = mosn::stats::Stats::new();
    let snap = mosn::config::Snapshot::build(&boot, &stats).unwrap();
    let server = mosn::server::Server::new(opts, snap, stats);
    server.start().await.unwrap();
    start_xds(&server);
    assert!(mosn::xds::start(&server).is_none(), "one client per server");
    wait_live(&Proxy { server }).await;
    let first = ads.0.delta.lock().unwrap()[0].clone();
    let node = first.node.unwrap();
    assert_eq!(node.id, "sidecar~10.9.9.9~ratings.ns~ns.svc.cluster.local");
    assert_eq!(node.cluster, "ratings.ns");
    assert!(node.metadata.unwrap().fields.contains_key("ISTIO_VERSION"));
    let _ = std::fs::remove_file(&file);
}
