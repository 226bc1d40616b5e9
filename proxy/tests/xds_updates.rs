//! Updates after start-up: a malformed resource is NACKed naming it while the last good config
//! keeps serving, and a push every 100 ms under load fails no request (SotW and delta).

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

/// A malformed update is NACKed naming the resource; traffic keeps the last good config.
async fn nack(delta: bool) {
    let ads = Ads::new();
    let addr = ads.serve_tcp().await;
    let ups = setup(&ads).await;
    let p = start_proxy(tcp(addr), delta).await;
    let addr = wait_live(&p).await;
    let ver = ads.put(RDS, route(Vs::AllV1, false));
    ads.reply(RDS, ver).await.unwrap();
    let ver = ads.put(RDS, route(Vs::TestV2, true));
    let err = ads
        .reply(RDS, ver)
        .await
        .expect_err("malformed routes must be NACKed");
    assert!(err.contains("\"9080\"") && err.contains("reviews"), "{err}");
    assert_eq!(
        count(&send(addr, 10, &[("end-user", "jason")]).await, "v1"),
        10
    );
    let prefix = "http.outbound_0.0.0.0_9080.rds.9080";
    assert!(p.stat(&format!("{prefix}.update_rejected")) >= 1);
    // A malformed cluster is NACKed; the valid ones of the same response are applied (as in
    // Envoy, so one unusable resource does not freeze all updates) and the others keep serving.
    let mut cs = clusters("0s");
    cs.push(eds_cluster(
        "bad",
        "0s",
        json!({"lb_policy": "CLUSTER_PROVIDED"}),
    ));
    cs.push(eds_cluster(&reviews("v5"), "0s", json!({})));
    let ver = ads.put(CDS, cs);
    let err = ads.reply(CDS, ver).await.expect_err("bad cluster NACKed");
    assert!(err.contains("\"bad\"") && !err.contains("v5"), "{err}");
    assert!(p.stat("cluster_manager.cds.update_rejected") >= 1);
    assert_eq!(count(&send(addr, 10, &[]).await, "v1"), 10);
    // v5's endpoints are malformed: NACKed naming them, and v5 stops waiting for them.
    let mut eps = endpoints(&ups);
    eps.push(pack_cla(json!({"cluster_name": reviews("v5"), "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "reviews-v5.default", "port_value": 9080}}}}]}]})));
    let ver = ads.put(EDS, eps);
    let err = ads.reply(EDS, ver).await.expect_err("bad endpoints NACKed");
    assert!(
        err.contains(&reviews("v5")) && err.contains("not an IP"),
        "{err}"
    );
    let deadline = Instant::now() + HANG;
    while !p.server.store.load().clusters.contains_key(&reviews("v5")) {
        assert!(Instant::now() < deadline, "v5 still warming");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        p.stat(&format!("cluster.{}.update_rejected", reviews("v5"))),
        1
    );
    assert!(p.stat(&format!("cluster.{}.update_success", reviews("v1"))) >= 1);
    // A good update after the NACK is applied.
    let ver = ads.put(RDS, route(Vs::TestV2, false));
    ads.reply(RDS, ver).await.unwrap();
    assert_eq!(
        count(&send(addr, 5, &[("end-user", "jason")]).await, "v2"),
        5
    );
    drop(ups);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_nack_keeps_old_config() {
    nack(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_nack_keeps_old_config() {
    nack(true).await;
}

/// A config push every 100 ms (routes, endpoints, clusters) while clients send requests: not
/// one request may fail, and unchanged listeners keep their socket.
async fn updates_under_load(delta: bool) {
    let ads = Ads::new();
    let addr = ads.serve_tcp().await;
    let ups = setup(&ads).await;
    let p = start_proxy(tcp(addr), delta).await;
    let addr = wait_live(&p).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let r = get(addr, "/", &[("host", HOST)]).await;
                if r.status == 200 {
                    ok += 1
                } else {
                    failed.push((r.status, r.body))
                }
            }
            (ok, failed)
        }));
    }
    let vs = [Vs::AllV1, Vs::V1V3, Vs::Default, Vs::TestV2];
    let mut last = 0;
    for i in 0..30 {
        last = match i % 3 {
            0 => ads.put(RDS, route(vs[i / 3 % 4], false)),
            1 => {
                // Move v1 between one and two pods (v3's pod stands in).
                let mut eps = endpoints(&ups);
                if i % 2 == 1 {
                    eps[1] = cla(&reviews("v1"), &[ups[0].addr, ups[2].addr]);
                }
                ads.put(EDS, eps)
            }
            _ => {
                // A changed cluster (new pools) while requests are in flight.
                let mut cs = clusters("0s");
                cs[1] = eds_cluster(
                    &reviews("v1"),
                    "0s",
                    json!({"connect_timeout": format!("{}s", 5 + i)}),
                );
                ads.put(CDS, cs)
            }
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ads.reply(CDS, last).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let (ok, failed) = c.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        total += ok;
    }
    assert!(total > 0);
    assert!(ads
        .0
        .replies
        .lock()
        .unwrap()
        .iter()
        .all(|r| r.error.is_none()));
    // The listener never changed: still the same socket.
    assert_eq!(wait_live(&p).await, addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_updates_every_100ms_under_load() {
    updates_under_load(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_updates_every_100ms_under_load() {
    updates_under_load(true).await;
}
