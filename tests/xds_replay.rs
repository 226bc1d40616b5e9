//! Replaying real config dumps: the Istio EDS vector served over ADS, `mosnctl xds bootstrap`
//! on Istio 1.10.6's bootstrap, and `mosnctl xds serve` as a process (ADS and SDS over a unix
//! socket, stopped with SIGTERM). The real `mosn` taking a replay is in xds_replay_mosn.rs.

mod xds_support;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient as SdsClient;
use mosnctl::xds::{proto, Cache, Dump, Server, CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use serde_json::{json, Value};
use std::time::Duration;
use xds_support::*;

#[tokio::test]
async fn real_istio_endpoints_dump_is_served() {
    let dump =
        Dump::from_file(&vector("istio-master/configdump/endpoints-configdump.json")).unwrap();
    assert!(dump.warnings.is_empty(), "{:?}", dump.warnings);
    assert_eq!(
        dump.count(ENDPOINT),
        32,
        "the dynamic CLAs; the 5 static ones stay out"
    );
    let server = Server::start(
        &"127.0.0.1:0".parse().unwrap(),
        Cache::with_snapshot(dump.snapshot()).unwrap(),
    )
    .await
    .unwrap();
    let all: Vec<String> = dump.resources[ENDPOINT]
        .iter()
        .map(|a| proto::resource_name(a).unwrap())
        .collect();
    // No clusters in this dump: each CLA gets a minimal EDS cluster of its name.
    assert_eq!(dump.synthesized_clusters, all);
    let mut s = Sotw::open(tcp_channel(server.listen()).await).await;
    let cds = s.subscribe(CLUSTER, &[]).await;
    let mut got = names(&cds);
    let mut want = all.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    for any in &cds.resources {
        let c: Value = proto::to_json(
            &<envoy_types::pb::envoy::config::cluster::v3::Cluster as prost::Message>::decode(
                any.value.as_slice(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(c["type"], "EDS", "{c}");
        assert_eq!(c["eds_cluster_config"]["service_name"], c["name"], "{c}");
        assert_eq!(
            c["eds_cluster_config"]["eds_config"]["ads"],
            json!({}),
            "{c}"
        );
    }
    s.ack(&cds, &[]).await;
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let eds = s.subscribe(ENDPOINT, &refs).await;
    assert_eq!(eds.resources.len(), 32);
    let reviews: ClusterLoadAssignment = eds
        .resources
        .iter()
        .map(|a| prost::Message::decode(a.value.as_slice()).unwrap())
        .find(|c: &ClusterLoadAssignment| c.cluster_name == format!("outbound|9080||{REVIEWS}"))
        .unwrap();
    let eps = &reviews.endpoints[0].lb_endpoints;
    let json = proto::to_json(&reviews).unwrap();
    assert_eq!(eps.len(), 3);
    assert_eq!(
        json["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"],
        "10.244.0.192"
    );
    assert_eq!(
        json["endpoints"][0]["lb_endpoints"][0]["metadata"]["filter_metadata"]
            ["envoy.transport_socket_match"]["tlsMode"],
        "istio"
    );
    server.shutdown().await.unwrap();
}

#[test]
fn bootstrap_keeps_node_and_statics_and_points_at_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let dump_path = dir.path().join("dump.json");
    std::fs::write(&dump_path, full_dump().to_string()).unwrap();
    let out = dir.path().join("envoy-rev0.json");
    let st = mosnctl(&[
        "xds",
        "bootstrap",
        "--config-dump",
        dump_path.to_str().unwrap(),
        "--xds",
        "unix:./etc/istio/proxy/XDS",
        "--delta",
        "--out",
        out.to_str().unwrap(),
    ])
    .status()
    .unwrap();
    assert!(st.success());
    let b: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    proto::from_json::<Bootstrap>(&b, true).expect("a valid envoy.config.bootstrap.v3.Bootstrap");
    assert_eq!(b["node"]["id"], "sidecar~1.2.3.4~foo~bar");
    assert_eq!(b["admin"]["address"]["socket_address"]["port_value"], 15000);
    let ads = &b["dynamic_resources"]["ads_config"];
    assert_eq!(ads["api_type"], "DELTA_GRPC");
    assert_eq!(
        ads["grpc_services"][0]["envoy_grpc"]["cluster_name"],
        "xds-grpc"
    );
    assert_eq!(b["dynamic_resources"]["cds_config"]["ads"], json!({}));
    let clusters = b["static_resources"]["clusters"].as_array().unwrap();
    let cnames: Vec<&str> = clusters
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        cnames,
        ["prometheus_stats", "agent", "sds-grpc", "xds-grpc"]
    );
    let xds = &clusters[3];
    let addr = &xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"];
    assert_eq!(addr["pipe"]["path"], "./etc/istio/proxy/XDS");
    assert_eq!(xds["http2_protocol_options"], json!({}));
    let sds = &clusters[2]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"];
    assert_eq!(sds["address"], *addr, "sds-grpc points at the same server");
    let ports: Vec<u64> = b["static_resources"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["address"]["socket_address"]["port_value"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ports, [15090, 15021]);

    // TCP: an IP is STATIC, a host name STRICT_DNS; SotW is GRPC.
    let dump = Dump::from_json(&full_dump()).unwrap();
    for (addr, kind) in [
        ("127.0.0.1:15010", "STATIC"),
        ("istiod.istio-system.svc:15010", "STRICT_DNS"),
    ] {
        let b = mosnctl::xds::bootstrap::build(Some(&dump), &addr.parse().unwrap(), false).unwrap();
        assert_eq!(b["dynamic_resources"]["ads_config"]["api_type"], "GRPC");
        let xds = b["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(xds["type"], kind);
        assert_eq!(
            xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["port_value"],
            15010
        );
    }
    // No bootstrap section: a default sidecar node.
    let b = mosnctl::xds::bootstrap::build(
        Some(&Dump::from_json(&endpoints_vector()).unwrap()),
        &"127.0.0.1:1".parse().unwrap(),
        false,
    )
    .unwrap();
    assert!(b["node"]["id"].as_str().unwrap().starts_with("sidecar~"));
}

#[tokio::test]
async fn cli_serve_replays_a_full_dump_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let dump_path = dir.path().join("dump.json");
    std::fs::write(&dump_path, full_dump().to_string()).unwrap();
    let sock = dir.path().join("XDS");
    let boot_path = dir.path().join("envoy-rev0.json");
    let mut child = KillOnDrop(Some(
        mosnctl(&[
            "xds",
            "serve",
            "--config-dump",
            dump_path.to_str().unwrap(),
            "--listen",
            &format!("unix:{}", sock.display()),
            "--delta",
            "--bootstrap",
            boot_path.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap(),
    ));
    let deadline = std::time::Instant::now() + WAIT;
    while !sock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "mosnctl xds serve did not bind"
        );
        if let Some(st) = child.0.as_mut().unwrap().try_wait().unwrap() {
            panic!("mosnctl xds serve exited: {st}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut s = Sotw::open(unix_channel(&sock).await).await;
    let cds = s.subscribe(CLUSTER, &[]).await;
    let mut got = names(&cds);
    got.sort();
    // The dump's dynamic clusters (not its static ones), plus an EDS cluster made up for
    // each CLA of the real EDS section that none of them uses.
    let mut want: Vec<String> = vector_endpoints(&endpoints_vector())
        .into_keys()
        .chain(all_subsets())
        .collect();
    want.sort();
    want.dedup();
    assert_eq!(got, want);
    assert!(!got.iter().any(|n| n == "prometheus_stats"));
    s.ack(&cds, &[]).await;
    let (base, v1) = (subset(""), subset("v1"));
    let eds = s.subscribe(ENDPOINT, &[&base, &v1]).await;
    let cla = |name: &str| -> ClusterLoadAssignment {
        let any = eds
            .resources
            .iter()
            .find(|a| proto::resource_name(a).as_deref() == Some(name));
        prost::Message::decode(any.expect(name).value.as_slice()).unwrap()
    };
    assert_eq!(
        cla(&base).endpoints[0].lb_endpoints.len(),
        3,
        "from the real EDS section"
    );
    assert!(
        cla(&v1).endpoints.is_empty(),
        "an EDS cluster missing from the dump gets an empty CLA"
    );
    s.ack(&eds, &[&base, &v1]).await;
    assert_eq!(names(&s.subscribe(LISTENER, &[]).await), ["0.0.0.0_9080"]);
    assert_eq!(names(&s.subscribe(ROUTE, &["9080"]).await), ["9080"]);
    assert_eq!(names(&s.subscribe(SECRET, &["default"]).await), ["default"]);

    // The same listener answers SDS, as Istio's sds-grpc cluster asks for secrets.
    let ch = unix_channel(&sock).await;
    let mut sds = SdsClient::new(ch.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DiscoveryRequest {
        type_url: SECRET.into(),
        resource_names: vec!["default".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut secrets = sds
        .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(WAIT, secrets.message()).await.unwrap();
    assert_eq!(names(&first.unwrap().unwrap()), ["default"]);
    let fetched = sds
        .fetch_secrets(DiscoveryRequest {
            type_url: SECRET.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&fetched), ["default"]);
    drop(tx);

    let child = child.0.take().unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {log}", out.status);
    assert!(log.contains("ACK"), "requests and ACKs are logged: {log}");
    assert!(!sock.exists(), "the socket is removed on exit");
    // --bootstrap wrote a delta bootstrap for the bound socket.
    let boot: Value = serde_json::from_slice(&std::fs::read(&boot_path).unwrap()).unwrap();
    assert_eq!(
        boot["dynamic_resources"]["ads_config"]["api_type"],
        "DELTA_GRPC"
    );
    let xds = boot["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let pipe =
        &xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["pipe"];
    assert_eq!(pipe["path"], sock.to_str().unwrap());
}
