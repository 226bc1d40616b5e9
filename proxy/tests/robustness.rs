//! The proxy survives bad clients and bad upstreams and keeps serving.

mod common;
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An upstream that answers every connection with bytes that are not HTTP, then closes.
async fn junk_upstream() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"\x00\x01garbage that is not HTTP\r\n\r\n")
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_and_bad_upstreams_do_not_hurt() {
    let a = upstream("a").await;
    let junk = junk_upstream().await;
    let routes = json!([{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/junk"}, "route": {"cluster": "junk"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]);
    let log = FlagLog::new("junk");
    let p = proxy(bootstrap(
        vec![listener("l", routes, vec![], log.hcm())],
        vec![
            cluster("a", &[a.addr], json!({})),
            cluster("junk", &[junk], json!({})),
        ],
    ))
    .await;
    let addr = p.addr("l");

    // A malformed upstream answer is Envoy's 502 UPE, not a crash.
    let r = get(addr, "/junk", &[("x-test-tag", "junk")]).await;
    assert_eq!(
        (r.status, log.flags("junk").await.as_str()),
        (502, "UPE"),
        "{}",
        r.body
    );

    // Garbage, truncated requests, a huge header and abandoned requests from clients.
    let mut huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 200_000));
    huge.extend_from_slice(b"\r\n\r\n");
    let inputs: Vec<Vec<u8>> = vec![
        b"\x16\x03\x01\x00\xa5garbage-tls-hello".to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort".to_vec(),
        b"GET /\x7f HTTP/9.9\r\n\r\n".to_vec(),
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00garbage".to_vec(),
        huge,
    ];
    for input in inputs {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            let _ = s.write_all(&input).await;
            let mut buf = [0u8; 256];
            let _ =
                tokio::time::timeout(std::time::Duration::from_millis(200), s.read(&mut buf)).await;
        }
    }
    // A client that leaves while its request is held upstream.
    let held = tokio::spawn(async move { get(addr, "/", &[("x-test-hold", "1")]).await });
    let deadline = std::time::Instant::now() + HANG;
    while a.hits() == 0 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    held.abort();
    let _ = held.await;
    a.release();

    // Still serving, and the request accounting went back to zero.
    for _ in 0..5 {
        assert_eq!(get(addr, "/", &[]).await.status, 200);
    }
    let deadline = std::time::Instant::now() + HANG;
    while p.stat("http.l.downstream_rq_active") != 0 || p.stat("cluster.a.upstream_rq_active") != 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "active request gauges never returned to 0"
        );
        a.release();
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_retries_give_back_their_breaker_slot() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let retry = json!({"retry_on": "5xx", "num_retries": 1, "retry_back_off": {"base_interval": "0.001s"},
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}]});
    let routes = json!([{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "ab", "timeout": "0s", "retry_policy": retry}}]}]);
    let p = proxy(bootstrap(
        vec![listener("l", routes, vec![], json!({}))],
        vec![cluster(
            "ab",
            &[a.addr, b.addr],
            json!({"circuit_breakers": {"thresholds": [{"max_retries": 1}]}}),
        )],
    ))
    .await;
    let addr = p.addr("l");
    // Fail on a, hold on b: a request that started on a is retried onto b and parked there
    // holding the only retry slot; then its client goes away.
    let deadline = std::time::Instant::now() + HANG;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "never got a request parked in its retry"
        );
        let held_before = b.hits();
        let retries_before = p.stat("cluster.ab.upstream_rq_retry");
        let t = tokio::spawn(async move {
            get(
                addr,
                "/",
                &[("x-test-fail-on", "a"), ("x-test-hold-on", "b")],
            )
            .await
        });
        while b.hits() == held_before {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let retried = p.stat("cluster.ab.upstream_rq_retry") > retries_before;
        t.abort();
        let _ = t.await;
        b.release();
        if retried {
            break;
        }
    }
    // The proxy gives the slot back when it drops the abandoned request, which it does on
    // its own time once it sees the client gone: wait for that, then check.
    wait_until("the abandoned request never ended", || {
        p.stat("http.l.downstream_rq_active") == 0
    })
    .await;
    // The slot is back: a retriable failure is retried again, not refused as overflow.
    let deadline = std::time::Instant::now() + HANG;
    loop {
        let r = get(addr, "/", &[("x-test-fail-on", "a")]).await;
        assert_eq!(
            r.status,
            200,
            "retry refused: slot leaked ({})",
            p.stat("cluster.ab.upstream_rq_retry_overflow")
        );
        if p.stat("cluster.ab.upstream_rq_retry_success") > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
    }
    assert_eq!(p.stat("cluster.ab.upstream_rq_retry_overflow"), 0);
}
