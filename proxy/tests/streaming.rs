//! Request bodies on routes with a retry policy (Istio gives every route one): streamed
//! upstream as they arrive, as Envoy's router does, and recorded up to 1 MiB so a retry can
//! send them again.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// A request body fed from a channel: a client that sends when it chooses.
struct Chan(mpsc::Receiver<Bytes>);

impl Body for Chan {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// An HTTP/2 upstream that answers at once and sends each request chunk back as it comes,
/// as a bidirectional gRPC stream does.
async fn echo_stream() -> SocketAddr {
    h2_upstream(|req: http::Request<hyper::body::Incoming>| http::Response::new(req.into_body()))
        .await
}

fn retry_route(cluster: &str) -> serde_json::Value {
    json!([{"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s",
        "retry_policy": {"retry_on": "5xx,connect-failure,refused-stream", "num_retries": 2}}}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_stream_flows_before_its_request_ends() {
    let up = echo_stream().await;
    let px = routes_proxy(
        retry_route("s"),
        json!({}),
        vec![cluster("s", &[up], json!({"http2_protocol_options": {}}))],
    )
    .await;
    let stream = tokio::net::TcpStream::connect(px.addr("l")).await.unwrap();
    let (mut client, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel(4);
    let req = http::Request::post(format!("http://{}/echo.Echo/Chat", px.addr("l")))
        .header("content-type", "application/grpc")
        .body(Chan(rx))
        .unwrap();
    tx.send(Bytes::from_static(b"ping 1")).await.unwrap();
    // The response comes while the request is still open: nothing waits for its end.
    let resp = tokio::time::timeout(HANG, client.send_request(req))
        .await
        .expect("the response waited for the end of the request body")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    for i in 1..=3 {
        let chunk = tokio::time::timeout(HANG, body.frame())
            .await
            .expect("the echo of a chunk never came")
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        assert_eq!(chunk, format!("ping {i}").as_bytes());
        if i < 3 {
            tx.send(Bytes::from(format!("ping {}", i + 1)))
                .await
                .unwrap();
        }
    }
    drop(tx);
    let end = tokio::time::timeout(HANG, body.collect())
        .await
        .unwrap()
        .unwrap();
    assert!(end.to_bytes().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_sends_the_recorded_body_again_up_to_the_buffer_limit() {
    // Round robin over a failing and a healthy host: of two requests, one or both start on
    // the failing host and are retried on the other with the whole body.
    let (a, b) = (upstream("a").await, upstream("b").await);
    let px = routes_proxy(
        retry_route("c"),
        json!({}),
        vec![cluster("c", &[a.addr, b.addr], json!({}))],
    )
    .await;
    let addr = px.addr("l");
    let fail_a = [("x-test-fail-on", "a")];
    let small = "x".repeat(100 * 1024);
    for _ in 0..2 {
        let r = request(addr, "POST", "/", &fail_a, &small, false).await;
        assert_eq!(
            (r.status, r.upstream()),
            (200, "b".to_string()),
            "{}",
            r.body
        );
        assert_eq!(r.json()["body_len"], small.len());
    }
    let retries = px.stat("cluster.c.upstream_rq_retry");
    assert!((1..=2).contains(&retries), "{retries} retries");
    // Round robin last chose the healthy host, so the next request starts on the failing one.
    // Past 1 MiB the copy is dropped: the request that starts on the failing host gets its
    // 503, not a retry with a body cut short.
    let big = "y".repeat(2 * 1024 * 1024);
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let r = request(addr, "POST", "/", &fail_a, &big, false).await;
        if r.status == 200 {
            assert_eq!(r.json()["body_len"], big.len());
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses, [503, 200]);
    assert_eq!(px.stat("cluster.c.upstream_rq_retry"), retries);
}
