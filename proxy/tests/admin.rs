//! The admin API, pilot-agent's readiness algorithm reproduced, Istio's static listeners.

mod common;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};

/// A raw HTTP/1.1 GET as Go's net/http sends it: the query goes out unescaped.
fn raw_get(addr: std::net::SocketAddr, target: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(HANG)).unwrap();
    write!(s, "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: Go-http-client/1.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf[9..12].parse().unwrap();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    // The admin may answer chunked; de-chunk simply.
    let body = if buf
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// pilot-agent 1.10 `status/util/stats.go` parseStats/processLine: the first line starting with
/// the name, split on ':' into exactly two parts, trimmed value parsed as u64; missing is 0.
fn parse_stats(body: &str, names: &[&str]) -> Result<Vec<u64>, String> {
    let mut out = Vec::new();
    for name in names {
        let mut v = 0;
        if let Some(line) = body.split_inclusive('\n').find(|l| l.starts_with(name)) {
            let parts: Vec<&str> = line.split(':').collect();
            if parts.len() != 2 {
                return Err(format!("envoy stat {name} missing separator. line:{line}"));
            }
            v = parts[1]
                .trim()
                .parse::<u64>()
                .map_err(|e| format!("failed parsing Envoy stat {name} ({e})"))?;
        }
        out.push(v);
    }
    Ok(out)
}

/// pilot-agent 1.10 `status/ready/probe.go` Check(): config received, then live.
fn pilot_agent_probe(admin: std::net::SocketAddr) -> Result<(), String> {
    let (_, body) = raw_get(admin, "/stats?usedonly&filter=^(cluster_manager\\.cds|listener_manager\\.lds)\\.(update_success|update_rejected)$");
    let v = parse_stats(
        &body,
        &[
            "cluster_manager.cds.update_rejected",
            "cluster_manager.cds.update_success",
            "listener_manager.lds.update_rejected",
            "listener_manager.lds.update_success",
        ],
    )?;
    if !(v[1] > 0 && v[3] > 0) {
        return Err(format!(
            "config not received from Pilot (is Pilot running?): {v:?}"
        ));
    }
    let (_, body) = raw_get(
        admin,
        "/stats?usedonly&filter=^(server\\.state|listener_manager\\.workers_started)",
    );
    if !body.contains("server.state") {
        return Err(format!("server.state is not yet updated: {body}"));
    }
    if !body.contains("listener_manager.workers_started") {
        return Err(format!(
            "listener_manager.workers_started is not yet updated: {body}"
        ));
    }
    let v = parse_stats(&body, &["server.state", "listener_manager.workers_started"])?;
    if v[0] != 0 {
        return Err(format!("server is not live, current state is: {}", v[0]));
    }
    if v[1] != 1 {
        return Err("workers have not yet started".into());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_and_readiness_on_a_static_bootstrap() {
    let a = upstream("a").await;
    let routes = json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]);
    let p = proxy(bootstrap(
        vec![listener("l", routes, vec![], json!({}))],
        vec![cluster("a", &[a.addr], json!({}))],
    ))
    .await;
    let admin = p.admin();
    assert_eq!(get(p.addr("l"), "/x", &[]).await.status, 200);
    tokio::task::spawn_blocking(move || pilot_agent_probe(admin))
        .await
        .unwrap()
        .expect("pilot-agent readiness passes");

    let r = get(admin, "/ready", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "LIVE\n"));
    let all = get(admin, "/stats", &[]).await.body;
    for name in [
        "cluster.a.upstream_rq_total: 1",
        "cluster.a.upstream_rq_200: 1",
        "cluster.a.upstream_rq_2xx: 1",
        "cluster.a.upstream_cx_total: 1",
        "http.l.downstream_rq_2xx: 1",
        "server.state: 0",
    ] {
        assert!(all.lines().any(|l| l == name), "missing {name:?} in\n{all}");
    }
    let filtered = get(admin, "/stats?filter=upstream_rq_2xx", &[]).await.body;
    assert_eq!(filtered, "cluster.a.upstream_rq_2xx: 1\n");
    assert!(
        !get(admin, "/stats?usedonly", &[])
            .await
            .body
            .contains("upstream_rq_retry:"),
        "unused stats hidden"
    );
    assert_eq!(get(admin, "/stats?filter=(", &[]).await.status, 400);
    let prom = get(admin, "/stats/prometheus", &[]).await.body;
    assert!(
        prom.contains("# TYPE envoy_cluster_upstream_rq_total counter\n"),
        "{prom}"
    );
    assert!(
        prom.contains("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"a\"} 1\n"),
        "{prom}"
    );
    assert!(prom.contains("envoy_server_state{} 0\n"));

    let info: Value = serde_json::from_str(&get(admin, "/server_info", &[]).await.body).unwrap();
    assert_eq!(info["state"], "LIVE");
    assert_eq!(
        info["node"]["id"],
        "test~127.0.0.1~test.default~default.svc.cluster.local"
    );
    assert!(
        info["command_line_options"]["concurrency"]
            .as_u64()
            .unwrap()
            >= 1
    );

    let dump: Value = serde_json::from_str(&get(admin, "/config_dump", &[]).await.body).unwrap();
    let types: Vec<&str> = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["@type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
            "type.googleapis.com/envoy.admin.v3.SecretsConfigDump"
        ]
    );
    assert_eq!(
        dump["configs"][1]["static_clusters"][0]["cluster"]["@type"],
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    );
    assert_eq!(
        dump["configs"][1]["static_clusters"][0]["cluster"]["name"],
        "a"
    );
    assert_eq!(
        dump["configs"][2]["static_listeners"][0]["listener"]["name"],
        "l"
    );
    assert_eq!(
        dump["configs"][3]["static_route_configs"][0]["route_config"]["name"],
        "l_routes"
    );
    let eds: Value =
        serde_json::from_str(&get(admin, "/config_dump?include_eds", &[]).await.body).unwrap();
    assert_eq!(
        eds["configs"][2]["@type"],
        "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump"
    );

    let clusters = get(admin, "/clusters", &[]).await.body;
    assert!(
        clusters.contains(&format!("a::{}::health_flags::healthy", a.addr)),
        "{clusters}"
    );
    assert!(clusters.contains("a::default_priority::max_connections::1024"));
    let listeners = get(admin, "/listeners", &[]).await.body;
    assert_eq!(listeners, format!("l::{}\n", p.addr("l")));

    assert_eq!(
        get(admin, "/quitquitquit", &[]).await.status,
        405,
        "mutations need POST"
    );
    assert_eq!(
        request(admin, "POST", "/logging?level=debug", &[], "", false)
            .await
            .status,
        200
    );
    assert_eq!(
        request(admin, "POST", "/logging?level=loud", &[], "", false)
            .await
            .status,
        400
    );
    assert_eq!(
        request(admin, "POST", "/healthcheck/fail", &[], "", false)
            .await
            .status,
        200
    );
    assert_eq!(p.stat("server.live"), 0);
    assert_eq!(
        request(admin, "POST", "/healthcheck/ok", &[], "", false)
            .await
            .status,
        200
    );
    assert_eq!(p.stat("server.live"), 1);

    // Graceful drain: DRAINING, and HTTP/1 answers ask the client to close.
    assert_eq!(
        request(admin, "POST", "/drain_listeners?graceful", &[], "", false)
            .await
            .status,
        200
    );
    assert_eq!(get(admin, "/ready", &[]).await.status, 503);
    let r = get(p.addr("l"), "/x", &[]).await;
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(pilot_agent_probe_blocking(admin)
        .await
        .unwrap_err()
        .contains("not live"));
}

async fn pilot_agent_probe_blocking(admin: std::net::SocketAddr) -> Result<(), String> {
    tokio::task::spawn_blocking(move || pilot_agent_probe(admin))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_listeners_without_graceful_stops_accepting() {
    let a = upstream("a").await;
    let routes = json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]);
    let p = proxy(bootstrap(
        vec![listener("l", routes, vec![], json!({}))],
        vec![cluster("a", &[a.addr], json!({}))],
    ))
    .await;
    let addr = p.addr("l");
    assert_eq!(get(addr, "/", &[]).await.status, 200);
    assert_eq!(
        request(p.admin(), "POST", "/drain_listeners", &[], "", false)
            .await
            .status,
        200
    );
    let deadline = std::time::Instant::now() + HANG;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "listener still accepting"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Istio's own bootstrap (ports moved to free ones): the 15021 and 15090 listeners route to
/// the agent and to our admin, and readiness waits for xDS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_xdsproxy_bootstrap_static_listeners() {
    let agent = upstream("agent").await;
    let admin_port = dead_addr().port();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/vectors/istio-master/bootstrap/xdsproxy_golden.json");
    let mut boot: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    boot["admin"]["address"]["socket_address"]["port_value"] = json!(admin_port);
    for l in boot["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap()
    {
        l["address"]["socket_address"]["address"] = json!("127.0.0.1");
        l["address"]["socket_address"]["port_value"] = json!(0);
    }
    for c in boot["static_resources"]["clusters"].as_array_mut().unwrap() {
        let port = match c["name"].as_str().unwrap() {
            "agent" => agent.addr.port(),
            "prometheus_stats" => admin_port,
            _ => continue,
        };
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"]["port_value"] = json!(port);
    }
    let p = proxy(boot).await;
    let admin = p.admin();
    let err = pilot_agent_probe_blocking(admin).await.unwrap_err();
    assert!(err.starts_with("config not received from Pilot"), "{err}");
    assert_eq!(p.stat("server.state"), 3, "INITIALIZING until xDS delivers");

    let names: Vec<String> = p
        .server
        .listeners
        .lock()
        .unwrap()
        .iter()
        .map(|l| l.config().name.clone())
        .collect();
    let (readyl, proml) = (
        names.iter().find(|n| n.ends_with("15021")).unwrap(),
        names.iter().find(|n| n.ends_with("15090")).unwrap(),
    );
    let r = get(p.addr(readyl), "/healthz/ready", &[]).await;
    assert_eq!((r.status, r.upstream().as_str()), (200, "agent"));
    assert_eq!(get(p.addr(readyl), "/other", &[]).await.status, 404);
    let prom = get(p.addr(proml), "/stats/prometheus", &[]).await;
    assert_eq!(prom.status, 200);
    assert!(
        prom.body.contains("envoy_server_state{} 3"),
        "{}",
        prom.body
    );

    // Unknown Istio typed configs are kept in the dump with their original type.
    let dump = get(admin, "/config_dump", &[]).await.body;
    assert!(dump.contains("type.googleapis.com/udpa.type.v1.TypedStruct"));
    assert!(!dump.contains("original_type_url"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_inbound_only_keeps_outbound_serving() {
    let a = upstream("a").await;
    let routes = json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]);
    let mut inbound = listener("inbound", routes.clone(), vec![], json!({}));
    inbound["traffic_direction"] = json!("INBOUND");
    let mut outbound = listener("outbound", routes, vec![], json!({}));
    outbound["traffic_direction"] = json!("OUTBOUND");
    let p = proxy(bootstrap(
        vec![inbound, outbound],
        vec![cluster("a", &[a.addr], json!({}))],
    ))
    .await;
    let (inb, outb) = (p.addr("inbound"), p.addr("outbound"));
    let r = request(
        p.admin(),
        "POST",
        "/drain_listeners?inboundonly",
        &[],
        "",
        false,
    )
    .await;
    assert_eq!(r.status, 200);
    let deadline = std::time::Instant::now() + HANG;
    while tokio::net::TcpStream::connect(inb).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "inbound listener still accepting"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        get(outb, "/", &[]).await.status,
        200,
        "outbound keeps working"
    );
    assert_eq!(
        p.stat("server.state"),
        0,
        "a non-graceful inbound drain leaves the server LIVE"
    );
}
