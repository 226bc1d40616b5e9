//! Sidecar interception, end to end: a "pod" network namespace with Istio's iptables rules
//! (outbound → 15001, inbound → 15006, uid 1337 exempt), the real `mosn` binary running in it
//! as uid 1337 and configured over ADS (a unix socket, as pilot-agent does) with listeners
//! shaped as Istio 1.10 writes them, and Bookinfo's reviews v1..v3 in a "node" namespace.
//! The app in the pod is `curl`, calling `reviews:9080` at its ClusterIP.
//!
//! The pod is dual-stack, as Istio's dual-stack mode sets it up: ip6tables carries the same
//! rules (passthrough source ::6), and the capture listeners add `[::]` sockets in
//! `additional_addresses`, so IPv6 traffic takes the same paths as IPv4.
//!
//! Needs root (CI runs as root). Where namespaces cannot be created it says why and skips.

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
mod netns;

use ads_server::*;
use bookinfo::*;
use netns::{curl, tcp_read, Netns};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::Child;
use std::time::{Duration, Instant};

const POD_IP: &str = "10.77.0.2";
const REVIEWS_VIP: &str = "10.96.0.10";
const MYSQL_VIP: &str = "10.96.0.20";
const REVIEWS: [(&str, &str); 3] = [
    ("v1", "10.77.0.11"),
    ("v2", "10.77.0.12"),
    ("v3", "10.77.0.13"),
];
const MYSQL_POD: &str = "10.77.0.21";
const OUTSIDE: &str = "10.77.0.1";
const POD_IP6: &str = "fd00:77::2";
const OUTSIDE6: &str = "fd00:77::1";
const REVIEWS_VIP6: &str = "fd00:96::10";

fn any<M: prost::Message + prost::Name + Default>(
    v: Value,
) -> (String, envoy_types::pb::google::protobuf::Any) {
    let m: M = mosn::config::decode::from_json(&v, true).unwrap_or_else(|e| panic!("{e}: {v}"));
    let name = v["name"]
        .as_str()
        .or(v["cluster_name"].as_str())
        .unwrap()
        .to_string();
    (
        name,
        envoy_types::pb::google::protobuf::Any {
            type_url: M::type_url(),
            value: m.encode_to_vec(),
        },
    )
}
type Listener = envoy_types::pb::envoy::config::listener::v3::Listener;
type Cluster = envoy_types::pb::envoy::config::cluster::v3::Cluster;
use prost::Message;

fn sock(ip: &str, port: u16) -> Value {
    json!({"socket_address": {"address": ip, "port_value": port}})
}

/// Istio's dual-stack addition to a 0.0.0.0 listener: the same port on `[::]`.
fn and_ipv6(port: u16) -> Value {
    json!([{"address": sock("::", port)}])
}

fn tcp_proxy(prefix: &str, cluster: &str) -> Value {
    json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": prefix, "cluster": cluster}})
}

/// Istio's `istio.metadata_exchange` network filter as istiod sends it: a binary
/// `udpa.type.v1.TypedStruct` that mosn's descriptor pool does not know and must skip.
fn metadata_exchange() -> envoy_types::pb::envoy::config::listener::v3::Filter {
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as PValue};
    #[derive(Clone, PartialEq, prost::Message)]
    struct TypedStruct {
        #[prost(string, tag = "1")]
        type_url: String,
        #[prost(message, optional, tag = "2")]
        value: Option<Struct>,
    }
    let ts = TypedStruct {
        type_url: "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange".into(),
        value: Some(Struct {
            fields: [(
                "protocol".to_string(),
                PValue {
                    kind: Some(Kind::StringValue("istio-peer-exchange".into())),
                },
            )]
            .into(),
        }),
    };
    envoy_types::pb::envoy::config::listener::v3::Filter {
        name: "istio.metadata_exchange".into(),
        config_type: Some(
            envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(
                envoy_types::pb::google::protobuf::Any {
                    type_url: "type.googleapis.com/udpa.type.v1.TypedStruct".into(),
                    value: ts.encode_to_vec(),
                },
            ),
        ),
    }
}

/// A listener from JSON, with metadata exchange in front of every tcp_proxy, as Istio does.
fn listener(v: Value) -> (String, envoy_types::pb::google::protobuf::Any) {
    let mut l: Listener =
        mosn::config::decode::from_json(&v, true).unwrap_or_else(|e| panic!("{e}: {v}"));
    for c in &mut l.filter_chains {
        if c.filters
            .iter()
            .any(|f| f.name == "envoy.filters.network.tcp_proxy")
        {
            c.filters.insert(0, metadata_exchange());
        }
    }
    (
        l.name.clone(),
        envoy_types::pb::google::protobuf::Any {
            type_url: <Listener as prost::Name>::type_url(),
            value: l.encode_to_vec(),
        },
    )
}

fn router() -> Value {
    json!([{"name": "envoy.filters.http.router", "typed_config":
        {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}])
}

/// LDS as Istio 1.10 writes it for a pod that calls reviews (HTTP, port 9080) and mysql (TCP,
/// ClusterIP listener) and serves HTTP on 9080 itself. Later generations `gen` change a
/// setting of the mysql listener (1 and up) and of 0.0.0.0_9080 (2 and up).
fn listeners(gen: u32) -> Vec<(String, envoy_types::pb::google::protobuf::Any)> {
    let unbound = json!({"bind_to_port": false});
    vec![
        listener(
            json!({"name": "virtualOutbound", "address": sock("0.0.0.0", 15001),
            "additional_addresses": and_ipv6(15001),
            "use_original_dst": true, "traffic_direction": "OUTBOUND",
            "filter_chains": [
                {"name": "virtualOutbound-blackhole", "filter_chain_match": {"destination_port": 15001},
                 "filters": [tcp_proxy("BlackHoleCluster", "BlackHoleCluster")]},
                {"name": "virtualOutbound-catchall-tcp", "filter_chain_match": {"prefix_ranges": [
                    {"address_prefix": "0.0.0.0", "prefix_len": 0}, {"address_prefix": "::", "prefix_len": 0}]},
                 "filters": [tcp_proxy("PassthroughCluster", "PassthroughCluster")]}]}),
        ),
        listener(
            json!({"name": "0.0.0.0_9080", "address": sock("0.0.0.0", 9080),
            "additional_addresses": and_ipv6(9080), "deprecated_v1": unbound, "traffic_direction": "OUTBOUND",
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "outbound_0.0.0.0_9080",
                "stream_idle_timeout": if gen >= 2 { "301s" } else { "300s" },
                "rds": {"config_source": ads_source("0s"), "route_config_name": "9080"},
                "http_filters": router()}}]}]}),
        ),
        listener(
            json!({"name": format!("{MYSQL_VIP}_3306"), "address": sock(MYSQL_VIP, 3306),
            "per_connection_buffer_limit_bytes": 32768 + gen.min(1),
            "bind_to_port": false, "traffic_direction": "OUTBOUND",
            "filter_chains": [{"filters": [tcp_proxy("outbound|3306||mysql", "outbound|3306||mysql.default.svc.cluster.local")]}]}),
        ),
        // A wildcard listener on the same port: the exact ip:port listener must win.
        listener(
            json!({"name": "0.0.0.0_3306", "address": sock("0.0.0.0", 3306),
            "bind_to_port": false, "filter_chains": [{"filters": [tcp_proxy("wrong", "BlackHoleCluster")]}]}),
        ),
        listener(
            json!({"name": "virtualInbound", "address": sock("0.0.0.0", 15006),
            "additional_addresses": and_ipv6(15006), "traffic_direction": "INBOUND", "continue_on_listener_filters_timeout": true, "listener_filters_timeout": "1s",
            "listener_filters": [
                {"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}},
                {"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}},
                {"name": "envoy.filters.listener.http_inspector", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"}}],
            "filter_chains": [
                {"name": "virtualInbound-blackhole", "filter_chain_match": {"destination_port": 15006},
                 "filters": [tcp_proxy("BlackHoleCluster", "BlackHoleCluster")]},
                {"name": "0.0.0.0_9080", "filter_chain_match": {"destination_port": 9080, "transport_protocol": "raw_buffer",
                    "application_protocols": ["http/1.0", "http/1.1", "h2c"]},
                 "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "inbound_0.0.0.0_9080",
                    "route_config": {"name": "inbound|9080||", "virtual_hosts": [{"name": "inbound|http|9080", "domains": ["*"],
                        "routes": [{"name": "default", "match": {"prefix": "/"}, "route": {"cluster": "inbound|9080||", "timeout": "0s"}}]}]},
                    "http_filters": router()}}]},
                {"name": "virtualInbound-catchall-tcp", "filter_chain_match": {"prefix_ranges": [{"address_prefix": "0.0.0.0", "prefix_len": 0}]},
                 "filters": [tcp_proxy("InboundPassthroughClusterIpv4", "InboundPassthroughClusterIpv4")]},
                {"name": "virtualInbound-catchall-tcp-ipv6", "filter_chain_match": {"prefix_ranges": [{"address_prefix": "::", "prefix_len": 0}]},
                 "filters": [tcp_proxy("InboundPassthroughClusterIpv6", "InboundPassthroughClusterIpv6")]}]}),
        ),
    ]
}

fn clusters() -> Vec<(String, envoy_types::pb::google::protobuf::Any)> {
    let mut v = bookinfo::clusters("0s");
    let bind = json!({"source_address": {"address": "127.0.0.6", "port_value": 0},
        "extra_source_addresses": [{"address": {"address": "::6", "port_value": 0}}]});
    v.push(any::<Cluster>(
        json!({"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s"}),
    ));
    v.push(any::<Cluster>(
        json!({"name": "InboundPassthroughClusterIpv4", "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "10s", "upstream_bind_config": bind}),
    ));
    v.push(any::<Cluster>(
        json!({"name": "InboundPassthroughClusterIpv6", "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "10s",
        "upstream_bind_config": {"source_address": {"address": "::6", "port_value": 0}}}),
    ));
    v.push(any::<Cluster>(
        json!({"name": "inbound|9080||", "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "10s", "upstream_bind_config": bind}),
    ));
    v.push(eds_cluster(
        "outbound|3306||mysql.default.svc.cluster.local",
        "0s",
        json!({}),
    ));
    v
}

fn endpoints() -> Vec<(String, envoy_types::pb::google::protobuf::Any)> {
    let at = |ip: &str, port: u16| -> SocketAddr { format!("{ip}:{port}").parse().unwrap() };
    let all: Vec<SocketAddr> = REVIEWS.iter().map(|r| at(r.1, 9080)).collect();
    let mut v = vec![cla(&reviews(""), &all)];
    for (name, ip) in REVIEWS {
        v.push(cla(&reviews(name), &[at(ip, 9080)]));
    }
    v.push(cla(
        "outbound|3306||mysql.default.svc.cluster.local",
        &[at(MYSQL_POD, 3306)],
    ));
    v
}

/// The mosn process, killed on drop.
struct Sidecar(Child);
impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stat(pod: &Netns, name: &str) -> u64 {
    let (_, body) = curl(pod, &["http://127.0.0.1:15000/stats"]).unwrap_or_default();
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn reviews_call(pod: &Netns, headers: &[&str]) -> String {
    let mut args = vec![
        "--resolve".to_string(),
        format!("reviews:9080:{REVIEWS_VIP}"),
        "http://reviews:9080/reviews/0".into(),
    ];
    for h in headers {
        args.push("-H".into());
        args.push(h.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, body) = curl(pod, &args).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, 200, "{body}");
    body
}

#[test]
fn istio_iptables_interception_through_mosn_as_uid_1337() {
    if let Some(why) = netns::unavailable() {
        eprintln!("SKIPPED istio_iptables_interception_through_mosn_as_uid_1337: {why}; network namespaces with iptables are needed (run as root on Linux)");
        return;
    }
    let id = std::process::id() % 100_000;
    let pod = Netns::new(&format!("mosn-pod-{id}")).unwrap();
    let node = Netns::new(&format!("mosn-node-{id}")).unwrap();
    let mut node_addrs = vec![
        format!("{OUTSIDE}/24"),
        format!("{MYSQL_POD}/24"),
        format!("{OUTSIDE6}/64"),
    ];
    node_addrs.extend(REVIEWS.iter().map(|r| format!("{}/24", r.1)));
    let node_addrs: Vec<&str> = node_addrs.iter().map(String::as_str).collect();
    netns::link(
        &pod,
        &[&format!("{POD_IP}/24"), &format!("{POD_IP6}/64")],
        &node,
        &node_addrs,
        &id.to_string(),
    )
    .unwrap();
    pod.exec(&["ip", "route", "add", "default", "via", OUTSIDE])
        .unwrap();
    pod.exec(&["ip", "-6", "route", "add", "default", "via", OUTSIDE6])
        .unwrap();
    pod.iptables_restore(netns::ISTIO_RULES).unwrap();
    pod.ip6tables_restore(&netns::istio_rules_v6()).unwrap();
    // istio-iptables gives a dual-stack pod's loopback the IPv6 passthrough source.
    pod.exec(&["ip", "-6", "addr", "add", "::6/128", "dev", "lo"])
        .unwrap();

    // The rest of the "cluster": reviews v1..v3, mysql, and a server outside the mesh.
    node.spawn(|| async {
        for (name, ip) in REVIEWS {
            tokio::spawn(netns::http_server(
                format!("{ip}:9080").parse().unwrap(),
                name,
            ));
        }
        tokio::spawn(netns::greeter(
            format!("{MYSQL_POD}:3306").parse().unwrap(),
            "mysql",
        ));
        tokio::spawn(netns::http_server(
            format!("[{OUTSIDE6}]:8000").parse().unwrap(),
            "outside6",
        ));
        netns::http_server(format!("{OUTSIDE}:8000").parse().unwrap(), "outside").await;
    });
    // The pod's own app on 9080, for inbound traffic, on both families.
    pod.spawn(|| async {
        tokio::spawn(netns::http_server("[::]:9080".parse().unwrap(), "pod-app"));
        netns::http_server("0.0.0.0:9080".parse().unwrap(), "pod-app").await
    });

    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let dir = std::env::temp_dir().join(format!("mosn-intercept-{id}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let xds_path = dir.join("XDS");
    let ads = Ads::new();
    ads.put(CDS, clusters());
    ads.put(EDS, endpoints());
    ads.put(LDS, listeners(0));
    let v = ads.put(RDS, route(Vs::Default, false));
    let (_stop, stop_rx) = tokio::sync::oneshot::channel();
    ads.serve_unix(&xds_path, stop_rx);
    // pilot-agent's socket is reachable by the proxy's uid.
    std::fs::set_permissions(&xds_path, std::fs::Permissions::from_mode(0o777)).unwrap();

    // pilot-agent's bootstrap: ADS over the xds-grpc pipe, admin on 15000 inside the pod.
    let mut boot = harness::bootstrap(json!({"pipe": {"path": xds_path.to_str().unwrap()}}), false);
    boot["admin"] = json!({"address": sock("127.0.0.1", 15000)});
    boot["node"]["id"] = json!(format!(
        "sidecar~{POD_IP}~productpage-v1-1.default~default.svc.cluster.local"
    ));
    let boot_path = dir.join("envoy-rev0.json");
    std::fs::write(&boot_path, boot.to_string()).unwrap();
    let log = std::fs::File::create(dir.join("mosn.log")).unwrap();
    let child = pod
        .command("setpriv")
        .args([
            "--reuid=1337",
            "--regid=1337",
            "--clear-groups",
            env!("CARGO_BIN_EXE_mosn"),
        ])
        .args([
            "-c",
            boot_path.to_str().unwrap(),
            "--concurrency",
            "2",
            "-l",
            "debug",
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = child.id();
    let sidecar = Sidecar(child);
    let mosn_log = || std::fs::read_to_string(dir.join("mosn.log")).unwrap_or_default();

    // Ready: pilot-agent's view (server LIVE) and the route applied.
    rt.block_on(async { ads.reply(RDS, v).await })
        .unwrap_or_else(|e| panic!("RDS NACKed: {e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while curl(&pod, &["http://127.0.0.1:15000/ready"]).map(|r| r.0) != Ok(200) {
        assert!(
            Instant::now() < deadline,
            "mosn never became ready:\n{}",
            mosn_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["1337"; 4],
        "mosn must run as uid 1337"
    );

    // Outbound HTTP: the app calls reviews:9080 at its ClusterIP; iptables sends it to 15001,
    // which hands it to 0.0.0.0_9080 (never bound), which routes over EDS endpoints. mosn's own
    // upstream connections (uid 1337) are not captured again.
    let mut seen = std::collections::HashMap::new();
    for _ in 0..30 {
        let body = reviews_call(&pod, &[]);
        let (name, peer) = body.split_once(' ').unwrap();
        assert!(
            peer.starts_with(&format!("{POD_IP}:")),
            "upstream saw {peer}, not the pod IP"
        );
        *seen.entry(name.to_string()).or_insert(0) += 1;
    }
    for (v, _) in REVIEWS {
        assert!(
            seen.get(v).copied().unwrap_or(0) >= 5,
            "round robin over v1..v3: {seen:?}"
        );
    }
    assert!(stat(&pod, "http.outbound_0.0.0.0_9080.downstream_rq_total") >= 30);

    // virtual-service-reviews-test-v2: jason → v2, everyone else → v1.
    let v = ads.put(RDS, route(Vs::TestV2, false));
    rt.block_on(async { ads.reply(RDS, v).await }).unwrap();
    for _ in 0..5 {
        assert!(reviews_call(&pod, &["end-user: jason"]).starts_with("v2 "));
        assert!(reviews_call(&pod, &[]).starts_with("v1 "));
    }

    // A keep-alive connection handed to 0.0.0.0_9080 belongs to that listener, as in Envoy:
    // an LDS push that leaves it as it was lets the connection go on; a change to it drains
    // the connection (the answer says `connection: close`).
    let reviews = || netns::keepalive_client(&pod, format!("{REVIEWS_VIP}:9080"), "reviews:9080");
    let client = reviews();
    assert!(!client.ask(), "a fresh connection is asked to close");
    for (gen, closes) in [(1, false), (2, true)] {
        let v = ads.put(LDS, listeners(gen));
        rt.block_on(async { ads.reply(LDS, v).await }).unwrap();
        assert_eq!(client.ask(), closes, "after LDS generation {gen}");
    }

    // Outbound TCP: the exact ClusterIP listener wins over 0.0.0.0_3306.
    assert_eq!(tcp_read(&pod, format!("{MYSQL_VIP}:3306")), "mysql\n");

    // Outside the mesh (ALLOW_ANY): virtualOutbound's catch-all → PassthroughCluster.
    let (code, body) = curl(&pod, &[&format!("http://{OUTSIDE}:8000/")]).unwrap();
    assert_eq!((code, body.split(' ').next().unwrap()), (200, "outside"));
    assert!(stat(&pod, "cluster.PassthroughCluster.upstream_cx_total") >= 1);

    // A direct connection to 15001 is blackholed instead of looping.
    assert!(curl(&pod, &["http://127.0.0.1:15001/"]).is_err());
    assert!(stat(&pod, "cluster.BlackHoleCluster.upstream_cx_none_healthy") >= 1);

    // Inbound: a caller in the node reaches the pod's app through 15006; the app sees
    // 127.0.0.6 (InboundPassthrough source), so the response was not captured again.
    let (code, body) = curl(&node, &[&format!("http://{POD_IP}:9080/")]).unwrap();
    assert_eq!(code, 200, "{body}");
    let (name, peer) = body.split_once(' ').unwrap();
    assert_eq!(name, "pod-app");
    assert!(peer.starts_with("127.0.0.6:"), "the app saw {peer}");
    assert!(stat(&pod, "http.inbound_0.0.0.0_9080.downstream_rq_total") >= 1);

    // Inbound non-HTTP to another port: the catch-all chain, InboundPassthroughClusterIpv4.
    pod.spawn(|| async {
        tokio::spawn(netns::greeter("[::]:7000".parse().unwrap(), "pod-tcp"));
        netns::greeter("0.0.0.0:7000".parse().unwrap(), "pod-tcp").await
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(tcp_read(&node, format!("{POD_IP}:7000")), "pod-tcp\n");
    assert!(
        stat(
            &pod,
            "cluster.InboundPassthroughClusterIpv4.upstream_cx_total"
        ) >= 1
    );

    // IPv6, the same paths through the listeners' [::] sockets. Outbound HTTP to the
    // reviews ClusterIP of the other family: 15001 hands it to 0.0.0.0_9080 by [::]:9080.
    let resolve6 = format!("reviews:9080:[{REVIEWS_VIP6}]");
    let (code, body) = curl(&pod, &["--resolve", &resolve6, "http://reviews:9080/"]).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with('v'), "reviews answered {body}");
    // Outside the mesh: PassthroughCluster to the original IPv6 destination.
    let (code, body) = curl(&pod, &["-g", &format!("http://[{OUTSIDE6}]:8000/")]).unwrap();
    assert_eq!(code, 200, "{body}");
    let (name, peer) = body.split_once(' ').unwrap();
    assert_eq!(name, "outside6");
    assert!(peer.starts_with(&format!("[{POD_IP6}]:")), "{peer}");
    // Inbound: the app sees ::6, the IPv6 passthrough source (extra_source_addresses).
    let (code, body) = curl(&node, &["-g", &format!("http://[{POD_IP6}]:9080/")]).unwrap();
    assert_eq!(code, 200, "{body}");
    let (name, peer) = body.split_once(' ').unwrap();
    assert_eq!(name, "pod-app");
    assert!(peer.starts_with("[::6]:"), "the app saw {peer}");
    // Inbound non-HTTP: the IPv6 catch-all chain.
    assert_eq!(tcp_read(&node, format!("[{POD_IP6}]:7000")), "pod-tcp\n");
    assert!(
        stat(
            &pod,
            "cluster.InboundPassthroughClusterIpv6.upstream_cx_total"
        ) >= 1
    );
    let (_, listed) = curl(&pod, &["http://127.0.0.1:15000/listeners"]).unwrap();
    for want in ["virtualOutbound::[::]:15001", "virtualInbound::[::]:15006"] {
        assert!(listed.contains(want), "/listeners lacks {want}:\n{listed}");
    }

    // istioctl's view: the dynamic listeners, Istio's skipped filters included.
    let (code, dump) = curl(&pod, &["http://127.0.0.1:15000/config_dump"]).unwrap();
    assert_eq!(code, 200);
    for want in [
        "virtualOutbound",
        "virtualInbound",
        "istio.metadata_exchange",
        // Rendered as Envoy does: the TypedStruct with its inner type and value.
        "\"type.googleapis.com/udpa.type.v1.TypedStruct\"",
        "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
        "InboundPassthroughClusterIpv4",
    ] {
        assert!(dump.contains(want), "/config_dump lacks {want}");
    }

    let (_, clusters) = curl(&pod, &["http://127.0.0.1:15000/clusters"]).unwrap();
    assert!(clusters
        .contains("outbound|9080|v1|reviews.default.svc.cluster.local::added_via_api::true"));
    assert!(clusters.contains("xds-grpc::added_via_api::false"));

    // A drain of all listeners (pilot-agent's at pod shutdown) reaches the connections
    // handed to unbound listeners too.
    let client = reviews();
    assert!(!client.ask());
    let drain = curl(
        &pod,
        &[
            "-X",
            "POST",
            "http://127.0.0.1:15000/drain_listeners?graceful",
        ],
    );
    assert_eq!(drain.map(|r| r.0), Ok(200));
    assert!(
        client.ask(),
        "a handed-off connection is asked to close by the drain"
    );

    drop(sidecar);
    let _ = std::fs::remove_dir_all(&dir);
}
