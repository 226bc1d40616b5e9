//! Large configs: 1,000 clusters and routes in-process, and the real binary taking its whole
//! config from ADS (then the same large update, with its RSS before and after).

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
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A 1,000-cluster / 1,000-route update (each cluster with its endpoints, each route in its own
/// virtual host) is applied and routes. Prints how long it took and the RSS afterwards for the
/// issue's closing note (not asserted: timing depends on the machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_clusters_and_routes() {
    let ads = Ads::new();
    let xds = ads.serve_tcp().await;
    let ups = setup(&ads).await;
    let p = start_proxy(tcp(xds), false).await;
    let addr = wait_live(&p).await;
    let name = |i: usize| format!("outbound|9080||svc-{i}.default.svc.cluster.local");
    let mut cs = clusters("0s");
    let mut eps = endpoints(&ups);
    let mut vhosts = Vec::new();
    for i in 0..1000 {
        cs.push(eds_cluster(&name(i), "0s", json!({})));
        eps.push(cla(&name(i), &[ups[i % 3].addr]));
        vhosts.push(json!({"name": format!("svc-{i}:9080"), "domains": [format!("svc-{i}"), format!("svc-{i}:9080")],
            "routes": [{"match": {"prefix": "/"}, "route": route_to(&name(i))}]}));
    }
    let rc = route_config("9080", Vs::Default, false, vhosts);
    let started = Instant::now();
    ads.put(CDS, cs);
    let eds = ads.put(EDS, eps);
    let rds = ads.put(RDS, vec![rc]);
    ads.reply(EDS, eds).await.unwrap();
    ads.reply(RDS, rds).await.unwrap();
    let took = started.elapsed();
    let snap = p.server.store.load();
    assert_eq!(snap.clusters.len(), 1 + 5 + 1000);
    assert_eq!(snap.clusters[&name(999)].hosts().all.len(), 1);
    for i in [0, 500, 999] {
        let r = get(addr, "/", &[("host", &format!("svc-{i}"))]).await;
        assert_eq!((r.status, r.upstream()), (200, format!("v{}", i % 3 + 1)));
    }
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_string)
        })
        .unwrap_or_default();
    eprintln!("xds: 1000 clusters + 1000 routes applied in {took:?} (test process {rss})");
}

/// Kills the child process when dropped (also when the test fails).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real binary starts the ADS client itself (server.rs) when the bootstrap has
/// `dynamic_resources`: it becomes ready and routes Bookinfo from xDS alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_takes_its_config_from_ads() {
    let ads = Ads::new();
    let xds = ads.serve_tcp().await;
    let ups = setup(&ads).await;
    let port = dead_addr().port();
    ads.put(
        LDS,
        vec![listener_on(LISTENER, "9080", "outbound_0.0.0.0_9080", port)],
    );
    let admin: SocketAddr = format!("127.0.0.1:{}", dead_addr().port()).parse().unwrap();
    let mut boot = harness::bootstrap(tcp(xds), true);
    boot["admin"]["address"]["socket_address"]["port_value"] = json!(admin.port());
    let file = std::env::temp_dir().join(format!("mosn-xds-bin-{}.json", std::process::id()));
    std::fs::write(&file, boot.to_string()).unwrap();
    // MOSN_BIN measures another build (e.g. the release binary) with the same test.
    let bin = std::env::var_os("MOSN_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_mosn").into());
    let child = Child(
        std::process::Command::new(bin)
            .args([
                "-c",
                file.to_str().unwrap(),
                "--service-cluster",
                "bin.default",
                "-l",
                "warning",
            ])
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + HANG;
    loop {
        let ready = match tokio::net::TcpStream::connect(admin).await {
            Ok(_) => get(admin, "/ready", &[]).await.status == 200,
            Err(_) => false,
        };
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "mosn never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The readiness stats pilot-agent reads, from /stats.
    let stats = get(admin, "/stats?usedonly", &[]).await.body;
    for name in [
        "cluster_manager.cds.update_success",
        "listener_manager.lds.update_success",
    ] {
        let line = stats
            .lines()
            .find(|l| l.starts_with(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("{stats}"));
        assert!(!line.ends_with(": 0"), "{line}");
    }
    let got = send(format!("127.0.0.1:{port}").parse().unwrap(), 9, &[]).await;
    for v in ["v1", "v2", "v3"] {
        assert_eq!(count(&got, v), 3, "{got:?}");
    }
    assert_eq!(
        ads.0.delta.lock().unwrap()[0]
            .node
            .as_ref()
            .unwrap()
            .cluster,
        "bin.default"
    );
    // For the closing note: a 1,000-cluster / 1,000-route update, and the proxy's RSS.
    let rss = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .map(|l| l[6..].trim().to_string())
            })
            .unwrap_or_default()
    };
    let before = rss(child.0.id());
    let name = |i: usize| format!("outbound|9080||svc-{i}.default.svc.cluster.local");
    let (mut cs, mut eps, mut vhosts) = (clusters("0s"), endpoints(&ups), Vec::new());
    for i in 0..1000 {
        cs.push(eds_cluster(&name(i), "0s", json!({})));
        eps.push(cla(&name(i), &[ups[i % 3].addr]));
        vhosts.push(
            json!({"name": format!("svc-{i}"), "domains": [format!("svc-{i}")],
            "routes": [{"match": {"prefix": "/"}, "route": route_to(&name(i))}]}),
        );
    }
    let started = Instant::now();
    ads.put(CDS, cs);
    let eds = ads.put(EDS, eps);
    let rds = ads.put(RDS, vec![route_config("9080", Vs::Default, false, vhosts)]);
    ads.reply(EDS, eds).await.unwrap();
    ads.reply(RDS, rds).await.unwrap();
    let took = started.elapsed();
    let r = get(
        format!("127.0.0.1:{port}").parse().unwrap(),
        "/",
        &[("host", "svc-998")],
    )
    .await;
    assert_eq!((r.status, r.upstream().as_str()), (200, "v3"));
    eprintln!("mosn binary: 1000 clusters + 1000 routes applied in {took:?}; RSS {before} before, {} after", rss(child.0.id()));
    let _ = std::fs::remove_file(&file);
}
