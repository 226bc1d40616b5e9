//! The HCM connection idle timeout (`common_http_protocol_options.idle_timeout`): a connection
//! with no request in flight for that long is closed; a request in flight is never cut.

mod common;
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_and_slow_requests_complete() {
    let a = upstream("a").await;
    let vh = json!([{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "a", "timeout": "0s"}}]}]);
    let hcm = json!({"common_http_protocol_options": {"idle_timeout": "0.3s"}});
    let p = proxy(bootstrap(
        vec![listener("l", vh, vec![], hcm)],
        vec![cluster("a", &[a.addr], json!({}))],
    ))
    .await;
    let addr = p.addr("l");

    // A client that connects and sends nothing is closed.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (seen, closed) = read_to_close(&mut s).await;
    assert!(closed, "silent connection was not closed");
    assert_eq!(seen, "");

    // A keep-alive connection is closed once its request is answered and it stays idle.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (seen, closed) = read_to_close(&mut s).await;
    assert!(seen.starts_with("HTTP/1.1 200 OK"), "{seen}");
    assert!(closed, "idle keep-alive connection was not closed");

    // A request that takes several idle timeouts upstream is answered in full: the idle timer
    // does not run while a request is in flight. A second one on the same connection, after
    // a short pause, as well.
    let mut s = TcpStream::connect(addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nx-test-delay-ms: 1000\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let mut seen = Vec::new();
        let head_and_body = tokio::time::timeout(HANG, async {
            loop {
                let n = s.read(&mut buf).await.unwrap();
                assert!(
                    n > 0,
                    "closed mid-request: {}",
                    String::from_utf8_lossy(&seen)
                );
                seen.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&seen);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head.lines().find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    });
                    let done = match len {
                        Some(len) => body.len() >= len,
                        None => body.ends_with("0\r\n\r\n"),
                    };
                    if done {
                        return text.into_owned();
                    }
                }
            }
        })
        .await
        .expect("slow request answered");
        assert!(
            head_and_body.starts_with("HTTP/1.1 200 OK"),
            "{head_and_body}"
        );
        assert!(head_and_body.contains("/slow"), "{head_and_body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, closed) = read_to_close(&mut s).await;
    assert!(closed, "connection not closed after its slow requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_zero_disables() {
    let vh = json!([{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]);
    let hcm = json!({"common_http_protocol_options": {"idle_timeout": "0s"}});
    let p = proxy(bootstrap(vec![listener("l", vh, vec![], hcm)], vec![])).await;
    let mut s = TcpStream::connect(p.addr("l")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(HANG, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"));
    // Still open after a while: a read times out rather than seeing EOF.
    let r = tokio::time::timeout(std::time::Duration::from_secs(1), s.read(&mut buf)).await;
    assert!(r.is_err(), "connection closed although idle_timeout is 0");
}
