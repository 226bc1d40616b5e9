//! The ADS stream itself: the client reconnects after the server goes away, re-subscribes with
//! the versions it accepted, keeps serving meanwhile, and takes messages over gRPC's 4 MiB.

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
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_resubscribes_and_keeps_config_while_down() {
    let dir = std::env::temp_dir().join(format!("mosn-xds-rc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("XDS");
    let ads = Ads::new();
    let (stop, stop_rx) = tokio::sync::oneshot::channel();
    ads.serve_unix(&sock, stop_rx);
    let _ups = setup(&ads).await;
    let p = start_proxy(json!({"pipe": {"path": sock.to_str().unwrap()}}), false).await;
    let addr = wait_live(&p).await;
    assert_eq!(p.stat("control_plane.connected_state"), 1);
    let before = p.server.store.load();
    let cds_version = ads.0.cfg.borrow().version;

    // The server goes away: the stream ends and nothing listens on the socket.
    stop.send(()).unwrap();
    ads.kill_streams();
    let deadline = Instant::now() + HANG;
    while p.stat("control_plane.connected_state") != 0 {
        assert!(Instant::now() < deadline, "client never noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(p.stat("cluster_manager.cds.update_failure") >= 1);
    // The last good config keeps serving.
    let got = send(addr, 9, &[]).await;
    for v in ["v1", "v2", "v3"] {
        assert_eq!(count(&got, v), 3, "{got:?}");
    }

    // Back with a new route: the client reconnects, re-subscribes, and applies it.
    let (_stop2, stop_rx2) = tokio::sync::oneshot::channel();
    ads.serve_unix(&sock, stop_rx2);
    let ver = ads.put(RDS, route(Vs::AllV1, false));
    ads.reply(RDS, ver).await.unwrap();
    assert_eq!(count(&send(addr, 10, &[]).await, "v1"), 10);
    assert!(ads.0.streams.load(Ordering::SeqCst) >= 2);
    // The new stream's CDS request carried the version accepted before.
    let resub: Vec<_> = ads
        .0
        .sotw
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.type_url == CDS && r.response_nonce.is_empty())
        .cloned()
        .collect();
    assert!(resub.len() >= 2);
    assert!(
        resub[1].node.is_some(),
        "node on the first message of every stream"
    );
    assert!(resub[1].version_info.parse::<u64>().unwrap() <= cds_version);
    assert!(!resub[1].version_info.is_empty());
    // Resent but unchanged resources caused no churn: same cluster objects, same socket.
    let after = p.server.store.load();
    for s in ["", "v1", "v2", "v3"] {
        assert!(Arc::ptr_eq(
            &before.clusters[&reviews(s)],
            &after.clusters[&reviews(s)]
        ));
    }
    assert_eq!(bound(&p, LISTENER), Some(addr));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Istio's CDS/LDS can exceed gRPC's 4 MiB default; the client takes up to 64 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_messages_over_4_mib() {
    let ads = Ads::new();
    let xds = ads.serve_tcp().await;
    let _ups = setup(&ads).await;
    let p = start_proxy(tcp(xds), false).await;
    let addr = wait_live(&p).await;
    let domains: Vec<String> = (0..200_000)
        .map(|i| format!("host-{i:06}.big.example.com"))
        .collect();
    let big = json!({"name": "big", "domains": domains,
        "routes": [{"match": {"prefix": "/"}, "route": route_to(&reviews("v2"))}]});
    let rc = route_config("9080", Vs::AllV1, false, vec![big]);
    assert!(rc.1.value.len() > 4 << 20, "{} bytes", rc.1.value.len());
    let ver = ads.put(RDS, vec![rc]);
    ads.reply(RDS, ver).await.unwrap();
    let r = get(addr, "/", &[("host", "host-123456.big.example.com")]).await;
    assert_eq!((r.status, r.upstream().as_str()), (200, "v2"));
}
