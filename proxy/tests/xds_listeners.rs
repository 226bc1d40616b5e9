//! Listener updates over LDS: a listener that changes on the same address takes over the old
//! socket, so no client is refused while it is replaced, and old connections drain.

#[path = "xds_client/ads_server.rs"]
#[allow(dead_code)]
mod ads_server;
#[path = "xds_client/bookinfo.rs"]
#[allow(dead_code)]
mod bookinfo;
mod common;
#[path = "xds_client/harness.rs"]
#[allow(dead_code)]
mod harness;

use ads_server::*;
use bookinfo::*;
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One request on a new connection: Ok for a 200, else what went wrong (refused, reset, ...).
async fn once(addr: SocketAddr) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(format!("GET / HTTP/1.1\r\nhost: {HOST}\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    tokio::time::timeout(HANG, s.read_to_end(&mut out))
        .await
        .map_err(|_| "hung".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&out);
    if text.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(text.lines().next().unwrap_or("empty response").to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_listener_on_the_same_port_refuses_nobody() {
    let ups = vec![
        upstream("v1").await,
        upstream("v2").await,
        upstream("v3").await,
    ];
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ads = Ads::new();
    ads.put(CDS, clusters("0s"));
    ads.put(EDS, endpoints(&ups));
    ads.put(LDS, vec![listener_on(LISTENER, "9080", "gen0", port)]);
    let v = ads.put(RDS, route(Vs::AllV1, false));
    let xds = ads.serve_tcp().await;
    let p = harness::start_proxy(harness::tcp(xds), false).await;
    ads.reply(RDS, v).await.unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + HANG;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "listener never bound");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A client opening a new connection per request, as fast as it can, while the listener is
    // replaced ten times (a new stat_prefix each time, so it really is a new listener).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let client = tokio::spawn(async move {
        let (mut ok, mut failed) = (0, Vec::new());
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            match once(addr).await {
                Ok(()) => ok += 1,
                Err(e) => failed.push(e),
            }
        }
        (ok, failed)
    });
    for gen in 1..=10 {
        let v = ads.put(
            LDS,
            vec![listener_on(LISTENER, "9080", &format!("gen{gen}"), port)],
        );
        ads.reply(LDS, v).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = client.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 50, "only {ok} requests were made");
    // Every generation served traffic on the same socket.
    assert!(p.stat("http.gen10.downstream_rq_total") > 0);
    assert_eq!(p.stat("listener_manager.listener_create_failure"), 0);
}
