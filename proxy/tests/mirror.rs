//! Request mirroring (Istio's VirtualService `mirror` and `mirrorPercentage`): the original
//! answers, a copy with `-shadow` on its host reaches the mirror cluster with the whole body,
//! and a stuck or missing mirror never holds the original up.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// What a mirror upstream received: host, path and body (`Err` if the body was cut off).
type Seen = Arc<Mutex<Vec<(String, String, Result<Bytes, String>)>>>;

/// An upstream that records each request and answers 500 (a shadow's answer is ignored).
/// A request to `/stuck...` is never answered.
async fn recorder() -> (SocketAddr, Seen) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Seen = Default::default();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = l.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let s = s.clone();
                    async move {
                        let host = req.headers().get("host").map_or_else(
                            || req.uri().authority().map_or("", |a| a.as_str()).to_string(),
                            |h| h.to_str().unwrap().to_string(),
                        );
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await;
                        let body = body.map(|b| b.to_bytes()).map_err(|e| e.to_string());
                        s.lock().unwrap().push((host, path.clone(), body));
                        if path.starts_with("/stuck") {
                            std::future::pending::<()>().await;
                        }
                        let mut r = http::Response::new(http_body_util::Full::new(Bytes::new()));
                        *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                        Ok::<_, std::io::Error>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn mirror(cluster: &str, extra: Value) -> Value {
    let mut p = json!({"cluster": cluster});
    mosn::config::merge(&mut p, extra);
    p
}

/// A route to `v1` with these mirror policies.
fn route(prefix: &str, mirrors: Value) -> Value {
    json!({"match": {"prefix": prefix},
        "route": {"cluster": "v1", "request_mirror_policies": mirrors}})
}

/// The host and body length of the copy of the request to `path`.
fn copy_of(seen: &Seen, path: &str) -> (String, Result<usize, String>) {
    let s = seen.lock().unwrap();
    let r = s.iter().find(|r| r.1 == path);
    let r = r.unwrap_or_else(|| panic!("no copy of {path}"));
    (
        r.0.clone(),
        r.2.as_ref().map(|b| b.len()).map_err(Clone::clone),
    )
}

async fn wait_seen(seen: &Seen, n: usize) {
    wait_until(&format!("the mirror to receive {n} requests"), || {
        seen.lock().unwrap().len() >= n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_requests_reach_the_shadow_with_host_and_body() {
    let v1 = upstream("v1").await;
    let (m_addr, seen) = recorder().await;
    let px = routes_proxy(
        json!([
            route(
                "/plain",
                json!([mirror(
                    "mirror",
                    json!({"disable_shadow_host_suffix_append": true})
                )])
            ),
            route("/missing", json!([mirror("no-such-cluster", json!({}))])),
            json!({"match": {"prefix": "/stuck-short"}, "route": {"cluster": "v1", "timeout": "0.2s",
                "request_mirror_policies": [mirror("mirror", json!({}))]}}),
            json!({"match": {"prefix": "/toh2"}, "route": {"cluster": "v1h2",
                "request_mirror_policies": [mirror("mirror", json!({}))]}}),
            route("/", json!([mirror("mirror", json!({}))])),
        ]),
        json!({}),
        vec![
            cluster("v1", &[v1.addr], json!({})),
            cluster("mirror", &[m_addr], json!({})),
            cluster("v1h2", &[v1.addr], json!({"http2_protocol_options": {}})),
        ],
    )
    .await;
    let addr = px.addr("l");

    // The original's answer is v1's; the copy's host carries `-shadow` before the port.
    let r = get(addr, "/a?x=1", &[("host", "httpbin:8000")]).await;
    assert_eq!((r.status, r.upstream().as_str()), (200, "v1"));
    wait_seen(&seen, 1).await;
    assert_eq!(
        seen.lock().unwrap()[0],
        ("httpbin-shadow:8000".into(), "/a".into(), Ok(Bytes::new()))
    );

    // Bodies go to both, a small one and one of many chunks.
    let r = request(addr, "POST", "/p", &[("host", "h")], "hello", false).await;
    assert_eq!((r.status, r.json()["body_len"].as_u64()), (200, Some(5)));
    let big = "0123456789abcdef".repeat(40_000);
    let r = request(addr, "POST", "/big", &[("host", "h")], &big, false).await;
    assert_eq!(r.json()["body_len"].as_u64(), Some(big.len() as u64));
    let r = request(addr, "POST", "/h2", &[("host", "h")], &big, true).await;
    assert_eq!(r.json()["body_len"].as_u64(), Some(big.len() as u64));
    // An HTTP/2 upstream stops reading the original's body at its end, not past it.
    let r = request(addr, "POST", "/toh2", &[("host", "h")], "hello", false).await;
    assert_eq!((r.status, r.json()["body_len"].as_u64()), (200, Some(5)));
    wait_seen(&seen, 5).await;
    assert_eq!(copy_of(&seen, "/p"), ("h-shadow".into(), Ok(5)));
    assert_eq!(copy_of(&seen, "/toh2"), ("h-shadow".into(), Ok(5)));
    for path in ["/big", "/h2"] {
        assert_eq!(
            copy_of(&seen, path),
            ("h-shadow".into(), Ok(big.len())),
            "{path}"
        );
    }
    let p = seen
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.1 == "/p")
        .unwrap()
        .2
        .clone();
    assert_eq!(p, Ok(Bytes::from("hello")));

    // The policy may keep the host; a missing mirror cluster costs the original nothing.
    let r = get(addr, "/plain", &[("host", "httpbin:8000")]).await;
    assert_eq!(r.status, 200);
    wait_seen(&seen, 6).await;
    assert_eq!(copy_of(&seen, "/plain").0, "httpbin:8000");
    assert_eq!(get(addr, "/missing", &[("host", "h")]).await.status, 200);

    // A mirror that never answers holds nothing up: the original is answered, repeatedly.
    for _ in 0..3 {
        let r = get(addr, "/stuck", &[("host", "h")]).await;
        assert_eq!((r.status, r.upstream().as_str()), (200, "v1"));
    }
    wait_seen(&seen, 9).await;
    assert_eq!(v1.hits(), 10);
    // The shadows count in the mirror cluster's stats (its 500s included).
    wait_until("the shadows' responses counted", || {
        px.stat("cluster.mirror.upstream_rq_500") >= 6
    })
    .await;
    assert_eq!(px.stat("cluster.mirror.upstream_rq_total"), 9);

    // A shadow gets the request's timeout: one that never answers is given up.
    assert_eq!(
        get(addr, "/stuck-short", &[("host", "h")]).await.status,
        200
    );
    wait_until("the shadow to time out", || {
        px.stat("cluster.mirror.upstream_rq_timeout") == 1
    })
    .await;
    assert_eq!(
        px.stat("cluster.mirror.upstream_rq_active"),
        3,
        "the three /stuck shadows"
    );

    // A client that leaves mid-body: the copy is cut off too, never sent short as whole.
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Chunked, so that only the cut tells a short body from a whole one.
    s.write_all(
        b"POST /cut HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    wait_until("the original to reach v1", || v1.hits() == 12).await;
    drop(s);
    wait_seen(&seen, 11).await;
    let cut = copy_of(&seen, "/cut").1;
    assert!(cut.is_err(), "the copy's body looked whole: {cut:?}");
}

/// `runtime_fraction` samples (Istio's `mirrorPercentage`), and the route's policies replace
/// the virtual host's, which replace the route configuration's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirroring_samples_and_follows_envoys_precedence() {
    let v1 = upstream("v1").await;
    let (half_addr, half) = recorder().await;
    let (vh_addr, vh_seen) = recorder().await;
    let (rc_addr, rc_seen) = recorder().await;
    let vhosts = json!([
        {"name": "own", "domains": ["own"], "routes": [
            route("/", json!([mirror("half", json!({"runtime_fraction":
                {"default_value": {"numerator": 50, "denominator": "HUNDRED"}}}))]))],
         "request_mirror_policies": [mirror("vh", json!({}))]},
        {"name": "vh", "domains": ["vh"], "routes": [route("/", json!([]))],
         "request_mirror_policies": [mirror("vh", json!({}))]},
        {"name": "rc", "domains": ["rc"], "routes": [route("/", json!([]))]}]);
    let mut l = listener("l", vhosts, vec![], json!({}));
    l["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
        ["request_mirror_policies"] = json!([mirror("rc", json!({}))]);
    let px = proxy(bootstrap(
        vec![l],
        vec![
            cluster("v1", &[v1.addr], json!({})),
            cluster("half", &[half_addr], json!({})),
            cluster("vh", &[vh_addr], json!({})),
            cluster("rc", &[rc_addr], json!({})),
        ],
    ))
    .await;
    let addr = px.addr("l");
    let n = 400;
    for _ in 0..n {
        assert_eq!(get(addr, "/", &[("host", "own")]).await.status, 200);
    }
    get(addr, "/", &[("host", "vh")]).await;
    get(addr, "/", &[("host", "rc")]).await;
    wait_seen(&vh_seen, 1).await;
    wait_seen(&rc_seen, 1).await;
    // Shadows are sent before the original, so all sampled ones are in by now.
    wait_until("the sampled shadows to arrive", || {
        px.stat("cluster.half.upstream_rq_total") as usize == half.lock().unwrap().len()
    })
    .await;
    let k = half.lock().unwrap().len();
    assert!(within_binomial(k, n, 0.5), "{k} of {n} mirrored at 50%");
    assert_eq!(
        vh_seen.lock().unwrap()[0].0,
        "vh-shadow",
        "the vhost's policy"
    );
    assert_eq!(
        rc_seen.lock().unwrap()[0].0,
        "rc-shadow",
        "the route config's policy"
    );
    assert_eq!(
        vh_seen.lock().unwrap().len(),
        1,
        "a route's own policy replaces the vhost's"
    );
}
