//! Access logs as Istio configures them (`envoy.access_loggers.file`, text and JSON formats):
//! one line per request with Envoy's operators, written to a real file.

mod common;

use common::mtls::*;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// Istio 1.10's default text format (meshConfig.accessLogFile with no accessLogFormat).
const ISTIO_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_json_access_logs() {
    let up = upstream("v1").await;
    let dead = dead_addr();
    let dir = std::env::temp_dir().join(format!("mosn-access-log-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (text, jsonl) = (dir.join("access.log"), dir.join("access.json"));
    let vhosts = json!([{"name": "r", "domains": ["reviews:9080", "reviews"], "routes": [
        {"name": "to-v1", "match": {"prefix": "/ok"}, "route": {"cluster": "v1"}},
        {"name": "to-dead", "match": {"prefix": "/dead"}, "route": {"cluster": "dead"}}]}]);
    let l = listener(
        "in",
        vhosts,
        vec![],
        json!({"access_log": [
            file_logger(text.to_str().unwrap(), json!({"text_format_source": {"inline_string": ISTIO_FORMAT}})),
            file_logger(jsonl.to_str().unwrap(), json!({"json_format": {
                "code": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%", "route": "%ROUTE_NAME%",
                "upstream": "%UPSTREAM_HOST%", "cluster": "%UPSTREAM_CLUSTER%", "bytes_sent": "%BYTES_SENT%",
                "bytes_received": "%BYTES_RECEIVED%",
                "method": "%REQ(:METHOD)%", "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"}})),
        ]}),
    );
    let p = proxy(bootstrap(
        vec![l],
        vec![
            cluster("v1", &[up.addr], json!({})),
            cluster("dead", &[dead], json!({})),
        ],
    ))
    .await;
    let addr = p.addr("in");

    let ok = get(
        addr,
        "/ok/1",
        &[
            ("host", "reviews:9080"),
            ("user-agent", "curl/8"),
            ("x-request-id", "rid-1"),
        ],
    )
    .await;
    assert_eq!(ok.status, 200);
    let nr = get(addr, "/none", &[("host", "reviews:9080")]).await;
    assert_eq!(nr.status, 404);
    let uf = get(addr, "/dead", &[("host", "reviews")]).await;
    assert_eq!(uf.status, 503);
    // A chunked request body has no Content-Length: %BYTES_RECEIVED% counts what arrived.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        b"POST /ok/2 HTTP/1.1\r\nhost: reviews\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let (posted, _) = read_to_close(&mut s).await;
    assert!(posted.starts_with("HTTP/1.1 200"), "{posted}");

    let t = log_lines(&text, 3).await;
    // [2026-11-25T21:16:02.123Z] "GET /ok/1 HTTP/1.1" 200 - via_upstream - "-" 0 N D ...
    assert!(
        t[0].starts_with('[') && t[0].contains("Z] \"GET /ok/1 HTTP/1.1\" 200 - "),
        "{}",
        t[0]
    );
    assert!(
        t[0].contains(&format!(
            "\"curl/8\" \"rid-1\" \"reviews:9080\" \"{}\" v1 ",
            up.addr
        )),
        "{}",
        t[0]
    );
    assert!(t[0].ends_with(" to-v1"), "{}", t[0]);
    assert!(t[1].contains("\"GET /none HTTP/1.1\" 404 NR "), "{}", t[1]);
    // Envoy's details and reason for the refused connection (ECONNREFUSED), blanks as `_`,
    // as Istio's sidecars log them.
    assert!(
        t[2].contains("\"GET /dead HTTP/1.1\" 503 UF upstream_reset_before_response_started{remote_connection_failure,delayed_connect_error:_111} - \"delayed_connect_error:_111\" "),
        "{}",
        t[2]
    );
    assert!(t[2].contains(&format!("\"{dead}\" dead ")), "{}", t[2]);

    let j: Vec<Value> = log_lines(&jsonl, 4)
        .await
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(j[0]["code"], 200);
    assert_eq!(j[0]["flags"], Value::Null);
    assert_eq!(j[0]["route"], "to-v1");
    assert_eq!(j[0]["cluster"], "v1");
    assert_eq!(j[0]["upstream"], up.addr.to_string());
    assert_eq!(j[0]["bytes_sent"], ok.body.len() as u64);
    assert_eq!(j[0]["bytes_received"], 0);
    assert_eq!(
        (j[3]["path"].as_str(), j[3]["bytes_received"].as_u64()),
        (Some("/ok/2"), Some(11))
    );
    assert_eq!(
        (j[0]["method"].as_str(), j[0]["path"].as_str()),
        (Some("GET"), Some("/ok/1"))
    );
    assert_eq!(
        (j[1]["code"].as_u64(), j[1]["flags"].as_str()),
        (Some(404), Some("NR"))
    );
    assert_eq!(
        (j[2]["code"].as_u64(), j[2]["cluster"].as_str()),
        (Some(503), Some("dead"))
    );
    assert!(
        j[2]["flags"].as_str().unwrap().starts_with("UF"),
        "{}",
        j[2]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Loggers with Envoy's filters, each to its own file: each writes exactly the requests its
/// filter lets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_pick_what_each_logger_writes() {
    let up = upstream("v1").await;
    let dead = dead_addr();
    let dir = std::env::temp_dir().join(format!("mosn-access-filter-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let format = json!({"text_format_source": {"inline_string": "%RESPONSE_CODE% %REQ(:PATH)%\n"}});
    let ge = |v: u32| json!({"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": v, "runtime_key": "k"}}}});
    let filters = [
        ("errors", ge(400)),
        ("uf", json!({"response_flag_filter": {"flags": ["UF"]}})),
        (
            "debug",
            json!({"header_filter": {"header": {"name": "x-debug", "present_match": true}}}),
        ),
        (
            "sampled",
            json!({"or_filter": {"filters": [
                {"duration_filter": {"comparison": {"op": "GE", "value": {"default_value": 600000, "runtime_key": "k"}}}},
                {"runtime_filter": {"runtime_key": "k", "percent_sampled": {"numerator": 50, "denominator": "HUNDRED"}}}]}}),
        ),
        (
            "cel",
            json!({"extension_filter": {"name": "envoy.access_loggers.extension_filters.cel",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                    "expression": "response.code >= 400"}}}),
        ),
    ];
    let loggers: Vec<Value> = filters
        .iter()
        .map(|(name, f)| {
            let mut l = file_logger(dir.join(name).to_str().unwrap(), format.clone());
            l["filter"] = f.clone();
            l
        })
        .collect();
    let vhosts = json!([{"name": "r", "domains": ["*"], "routes": [
        {"match": {"prefix": "/ok"}, "route": {"cluster": "v1"}},
        {"match": {"prefix": "/dead"}, "route": {"cluster": "dead"}}]}]);
    let l = listener("in", vhosts, vec![], json!({"access_log": loggers}));
    let clusters = vec![
        cluster("v1", &[up.addr], json!({})),
        cluster("dead", &[dead], json!({})),
    ];
    let p = proxy(bootstrap(vec![l], clusters)).await;
    let addr = p.addr("in");
    // 0x31 % 100 = 49 is sampled at 50%, 0x63 % 100 = 99 is not.
    let id = |n: &str| format!("000000{n}-0000-4000-8000-000000000000");
    let requests = [
        ("/ok/1", None, id("31")),
        ("/none", None, id("63")),
        ("/dead", None, id("63")),
        ("/ok/debug", Some("1"), id("63")),
    ];
    for (path, debug, rid) in &requests {
        let mut h = vec![("x-request-id", rid.as_str())];
        if let Some(d) = debug {
            h.push(("x-debug", d));
        }
        get(addr, path, &h).await;
    }
    // Every logger has had every request (the CEL one writes them all); give the others time.
    log_lines(&dir.join("cel"), requests.len()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(read("errors"), ["404 /none", "503 /dead"]);
    assert_eq!(read("uf"), ["503 /dead"]);
    assert_eq!(read("debug"), ["200 /ok/debug"]);
    assert_eq!(read("sampled"), ["200 /ok/1"]);
    assert_eq!(read("cel").len(), 4);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An h2c upstream that answers each request with its connection's far end (`x-peer`).
async fn h2_peer_upstream() -> std::net::SocketAddr {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, peer)) = l.accept().await {
            let svc = hyper::service::service_fn(move |_req| async move {
                let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                r.headers_mut()
                    .insert("x-peer", peer.to_string().parse().unwrap());
                Ok::<_, std::convert::Infallible>(r)
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc),
            );
        }
    });
    addr
}

/// A TCP upstream that writes its connection's far end and closes.
async fn tcp_peer_upstream() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = l.accept().await {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut s, peer.to_string().as_bytes()).await;
        }
    });
    addr
}

/// An HTTP/1.1 upstream that never answers: `/reset` is closed on, anything else held. It
/// records each connection's far end.
async fn mute_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let peers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = peers.clone();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = l.accept().await {
            seen.lock().unwrap().push(peer.to_string());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf)
                    .await
                    .unwrap_or(0);
                if buf[..n].starts_with(b"GET /reset") {
                    return;
                }
                tokio::time::sleep(HANG).await;
                drop(s);
            });
        }
    });
    (addr, peers)
}

/// The address operators of Istio's default format name the connections really used: the
/// upstream local address is the far end the upstream saw, over each kind of upstream
/// connection (inline HTTP/1.1, hyper's HTTP/1.1 for a streamed body, HTTP/2, TCP); the
/// downstream remote address is Envoy's (the last `x-forwarded-for` entry, port 0, when
/// `use_remote_address` is off), the direct one the client socket's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_operators_name_the_connections_used() {
    let up = upstream("v1").await;
    let h2 = h2_peer_upstream().await;
    let tcp = tcp_peer_upstream().await;
    let dir = std::env::temp_dir().join(format!("mosn-access-addr-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (http_log, tcp_log) = (dir.join("http.log"), dir.join("tcp.log"));
    let format = |f: &str| json!({"text_format_source": {"inline_string": f}});
    let (mute, mute_peers) = mute_upstream().await;
    let vhosts = json!([{"name": "r", "domains": ["*"], "routes": [
        {"match": {"prefix": "/h2"}, "route": {"cluster": "h2"}},
        {"match": {"prefix": "/slow"}, "route": {"cluster": "mute", "timeout": "0.2s"}},
        {"match": {"prefix": "/reset"}, "route": {"cluster": "mute"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "v1"}}]}]);
    let l = listener(
        "in",
        vhosts,
        vec![],
        json!({"access_log": [file_logger(http_log.to_str().unwrap(), format(
            "%REQ(:PATH)% %UPSTREAM_LOCAL_ADDRESS% %UPSTREAM_LOCAL_PORT% %DOWNSTREAM_REMOTE_ADDRESS% \
             %DOWNSTREAM_DIRECT_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_PORT%\n"))]}),
    );
    let t = json!({"name": "tcp",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "tcp", "cluster": "tcp",
            "access_log": [file_logger(tcp_log.to_str().unwrap(),
                format("%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS%\n"))]}}]}]});
    let p = proxy(bootstrap(
        vec![l, t],
        vec![
            cluster("v1", &[up.addr], json!({})),
            cluster("h2", &[h2], json!({"http2_protocol_options": {}})),
            cluster("tcp", &[tcp], json!({})),
            cluster("mute", &[mute], json!({})),
        ],
    ))
    .await;
    let addr = p.addr("in");

    // Inline HTTP/1.1, from a socket whose address the test knows, with an x-forwarded-for
    // that the default HCM (use_remote_address off) takes as the client.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let client = s.local_addr().unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        b"GET /get HTTP/1.1\r\nhost: a\r\nx-forwarded-for: 198.51.100.7, 192.0.2.9\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let (got, _) = read_to_close(&mut s).await;
    // The echo's report, whatever the framing (chunked here).
    let body: Value = serde_json::from_str(&got[got.find('{').unwrap()..=got.rfind('}').unwrap()])
        .unwrap_or_else(|e| panic!("{e}: {got}"));
    let get_peer = body["peer"].as_str().unwrap().to_string();
    // A body to stream goes over hyper's client, on a connection of its own.
    let posted = request(addr, "POST", "/post", &[], "hello", false).await;
    let post_peer = posted.json()["peer"].as_str().unwrap().to_string();
    assert_ne!(get_peer, post_peer, "two kinds of connection");
    let h2_resp = get(addr, "/h2", &[]).await;
    assert_eq!(h2_resp.status, 200);
    let h2_peer = h2_resp.header("x-peer").unwrap().to_string();

    let logged = log_lines(&http_log, 3).await;
    let port = |a: &str| a.rsplit(':').next().unwrap().to_string();
    assert_eq!(
        logged[0],
        format!(
            "/get {get_peer} {} 192.0.2.9:0 {client} {}",
            port(&get_peer),
            addr.port()
        )
    );
    assert!(
        logged[1].starts_with(&format!(
            "/post {post_peer} {} 127.0.0.1:",
            port(&post_peer)
        )),
        "{}",
        logged[1]
    );
    assert!(
        logged[2].starts_with(&format!("/h2 {h2_peer} {} ", port(&h2_peer))),
        "{}",
        logged[2]
    );

    // A request that timed out (504 UT) or was reset (503 UC) still names the connection it
    // went out on, as Envoy's log does.
    assert_eq!(get(addr, "/slow", &[]).await.status, 504);
    assert_eq!(get(addr, "/reset", &[]).await.status, 503);
    let logged = log_lines(&http_log, 5).await;
    let mute_peers = mute_peers.lock().unwrap().clone();
    assert_eq!(mute_peers.len(), 2, "{mute_peers:?}");
    for (line, (path, peer)) in logged[3..]
        .iter()
        .zip([("/slow", &mute_peers[0]), ("/reset", &mute_peers[1])])
    {
        assert!(line.starts_with(&format!("{path} {peer} ")), "{line}");
    }

    let mut s = tokio::net::TcpStream::connect(p.addr("tcp")).await.unwrap();
    let client = s.local_addr().unwrap();
    let (seen, _) = read_to_close(&mut s).await;
    drop(s);
    assert_eq!(log_lines(&tcp_log, 1).await[0], format!("{seen} {client}"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Envoy's TLS command operators in an access log of a chain that terminates mTLS: the SNI
/// curl sent, the client certificate's URI SAN and the one this side presented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_logs_name_the_sni_and_both_certificates() {
    let dir = pki();
    let d = dir.path();
    let up = upstream("app").await;
    let path = d.join("in.log");
    let format = "%REQUESTED_SERVER_NAME% %DOWNSTREAM_PEER_URI_SAN% %DOWNSTREAM_LOCAL_URI_SAN%\n";
    let log = file_logger(
        path.to_str().unwrap(),
        json!({"text_format_source": {"inline_string": format}}),
    );
    let vhosts = json!([{"name": "v", "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]);
    let mut l = listener("in", vhosts, vec![], json!({"access_log": [log]}));
    l["filter_chains"][0]["transport_socket"] = downstream_tls(json!([]));
    let mut boot = bootstrap(vec![l], vec![cluster("app", &[up.addr], json!({}))]);
    boot["static_resources"]["secrets"] = secrets(d);
    let p = proxy(boot).await;
    assert_eq!(
        curl(d, p.addr("in"), &[&CLIENT[..], &["--http1.1"]].concat()).await,
        Ok((200, "1.1".into()))
    );
    let read = || std::fs::read_to_string(&path).unwrap_or_default();
    wait_until("a log line", || read().lines().count() == 1).await;
    assert_eq!(
        read(),
        format!("server.test {SPIFFE_CLIENT} {SPIFFE_SERVER}\n")
    );
}

/// A TCP chain's connection that never got through its TLS handshake still gets its access-log
/// line, as Envoy's tcp_proxy writes one: the TLS failure in
/// `%DOWNSTREAM_TRANSPORT_FAILURE_REASON%` (blanks as `_`), a handshake that timed out in
/// `%CONNECTION_TERMINATION_DETAILS%`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handshakes_are_logged_with_their_reason() {
    let dir = pki();
    let d = dir.path();
    let up = upstream("app").await;
    let path = d.join("tcp.log");
    let format = "%DOWNSTREAM_TRANSPORT_FAILURE_REASON% [%CONNECTION_TERMINATION_DETAILS%] %DOWNSTREAM_DIRECT_REMOTE_ADDRESS% %UPSTREAM_HOST%\n";
    let log = file_logger(
        path.to_str().unwrap(),
        json!({"text_format_source": {"inline_string": format}}),
    );
    let l = json!({"name": "in", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "in", "cluster": "app", "access_log": [log]}}],
            "transport_socket": downstream_tls(json!([])),
            "transport_socket_connect_timeout": "0.3s"}]});
    let mut boot = bootstrap(vec![l], vec![cluster("app", &[up.addr], json!({}))]);
    boot["static_resources"]["secrets"] = secrets(d);
    let p = proxy(boot).await;
    let addr = p.addr("in");
    // Plaintext where a ClientHello should be.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    let plain_addr = plain.local_addr().unwrap();
    use tokio::io::AsyncWriteExt;
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let _ = read_to_close(&mut plain).await;
    // A client that says nothing until the chain's handshake timeout.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let _ = read_to_close(&mut silent).await;

    let lines = log_lines(&path, 2).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    let (reason, rest) = lines[0].split_once(' ').unwrap();
    assert!(
        reason.starts_with("TLS_error:|")
            && reason.ends_with(":TLS_error_end")
            && reason.len() > 30,
        "{reason}"
    );
    assert_eq!(rest, format!("[-] {plain_addr} -"));
    assert_eq!(
        lines[1],
        format!("- [transport socket timeout was reached] {silent_addr} -")
    );
    assert_eq!(up.hits(), 0);
}
