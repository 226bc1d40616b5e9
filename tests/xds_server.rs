//! The xDS server against a real tonic ADS client over real sockets (TCP and unix), with
//! Bookinfo-shaped resources as Istio 1.10 writes them, and the real Istio EDS dump.

mod xds_support;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient as SdsClient;
use mosnctl::xds::{
    proto, Cache, Dump, Listen, Server, Snapshot, TypeStatus, CLUSTER, ENDPOINT, LISTENER, ROUTE,
    SECRET,
};
use serde_json::{json, Value};
use std::time::Duration;
use xds_support::*;

// ---------- SotW ----------

#[tokio::test]
async fn sotw_over_tcp_cds_lds_then_eds_rds_and_no_resend_after_ack() {
    let server = start("127.0.0.1:0", bookinfo("v1")).await;
    let mut s = Sotw::open(tcp_channel(server.listen()).await).await;

    let cds = s.subscribe(CLUSTER, &[]).await;
    assert_eq!(cds.version_info, "1");
    let mut got = names(&cds);
    got.sort();
    assert_eq!(got, all_subsets());
    let c: Cluster = prost::Message::decode(cds.resources[0].value.as_slice()).unwrap();
    assert_eq!(
        c.filters[0].typed_config.as_ref().unwrap().type_url,
        "type.googleapis.com/udpa.type.v1.TypedStruct",
        "Istio's TypedStruct reaches the client as it is"
    );
    s.ack(&cds, &[]).await;

    let (v1, v2) = (subset("v1"), subset("v2"));
    let eds = s.subscribe(ENDPOINT, &[&v1, &v2]).await;
    assert_eq!(
        names(&eds),
        [v1.clone(), v2.clone()],
        "only the requested CLAs"
    );
    let cla: ClusterLoadAssignment =
        prost::Message::decode(eds.resources[0].value.as_slice()).unwrap();
    assert_eq!(cla.endpoints[0].lb_endpoints.len(), 1);
    s.ack(&eds, &[&v1, &v2]).await;

    let lds = s.subscribe(LISTENER, &[]).await;
    assert_eq!(names(&lds), ["0.0.0.0_9080"]);
    s.ack(&lds, &[]).await;
    let rds = s.subscribe(ROUTE, &["9080"]).await;
    assert_eq!(names(&rds), ["9080"]);
    s.ack(&rds, &["9080"]).await;

    let id = server
        .wait_for(WAIT, |all| {
            [CLUSTER, ENDPOINT, LISTENER, ROUTE]
                .iter()
                .all(|t| ts(all, 1, t).acked_version.as_deref() == Some("1"))
        })
        .await
        .unwrap()[0]
        .clone();
    assert_eq!(id.node_id, NODE);
    assert_eq!(id.of(ENDPOINT).subscribed, [v1.clone(), v2.clone()]);
    assert!(id.of(CLUSTER).wildcard);

    // An identical push moves no version and sends nothing; a route change sends only RDS,
    // so the next message on the stream is RDS version 2 and nothing was resent before it.
    let versions = server.update(bookinfo("v1")).unwrap();
    assert!(versions.values().all(|v| v == "1"), "{versions:?}");
    assert_eq!(
        server.update(only(ROUTE, &[route_json("v2")])).unwrap()[ROUTE],
        "2"
    );
    let next = s.recv().await;
    assert_eq!(
        (next.type_url.as_str(), next.version_info.as_str()),
        (ROUTE, "2")
    );
    let st = server.streams();
    for (t, n) in [(CLUSTER, 1), (ENDPOINT, 1), (LISTENER, 1), (ROUTE, 2)] {
        assert_eq!(ts(&st, 1, t).responses, n, "{t}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn update_pushes_only_to_subscribers_of_that_type_and_names() {
    let server = start("127.0.0.1:0", bookinfo("v1")).await;
    let ch = tcp_channel(server.listen()).await;
    let (mut a, mut b) = (Sotw::open(ch.clone()).await, Sotw::open(ch).await);
    let cds = a.subscribe(CLUSTER, &[]).await;
    a.ack(&cds, &[]).await;
    let v1 = subset("v1");
    let eds = a.subscribe(ENDPOINT, &[&v1]).await;
    a.ack(&eds, &[&v1]).await;
    let lds = a.subscribe(LISTENER, &[]).await;
    a.ack(&lds, &[]).await;
    let lds_b = b.subscribe(LISTENER, &[]).await;
    b.ack(&lds_b, &[]).await;
    server
        .wait_for(WAIT, |all| {
            ts(all, 1, LISTENER).acks == 1
                && ts(all, 2, LISTENER).acks == 1
                && ts(all, 1, ENDPOINT).acks == 1
        })
        .await
        .unwrap();

    // CDS changes: only A (subscribed to CDS) hears of it.
    let mut clusters: Vec<Value> = ["", "v1", "v2", "v3"]
        .iter()
        .map(|s| cluster_json(&subset(s), "10s"))
        .collect();
    clusters[3] = cluster_json(&subset("v3"), "3s");
    server.update(only(CLUSTER, &clusters)).unwrap();
    let c2 = a.recv().await;
    assert_eq!(
        (c2.type_url.as_str(), c2.version_info.as_str()),
        (CLUSTER, "2")
    );
    a.ack(&c2, &[]).await;

    // EDS changes of a CLA A did not ask for (v3) push nothing; a change of v1 pushes v1 only.
    let mut e = Snapshot::new();
    for (i, sub) in ["", "v1", "v2", "v3"].iter().enumerate() {
        e = e
            .with_json(&cla_json(&subset(sub), &[9080 + i as u16]))
            .unwrap();
    }
    let e3 = only(
        ENDPOINT,
        &[
            cla_json(&subset(""), &[9080]),
            cla_json(&v1, &[9081]),
            cla_json(&subset("v2"), &[9082]),
            cla_json(&subset("v3"), &[9083, 9093]),
        ],
    );
    assert_eq!(server.update(e3).unwrap()[ENDPOINT], "2");
    let e4 = only(
        ENDPOINT,
        &[
            cla_json(&subset(""), &[9080]),
            cla_json(&v1, &[9081, 9091]),
            cla_json(&subset("v2"), &[9082]),
            cla_json(&subset("v3"), &[9083, 9093]),
        ],
    );
    assert_eq!(server.update(e4).unwrap()[ENDPOINT], "3");
    let pushed = a.recv().await;
    assert_eq!(
        (pushed.type_url.as_str(), pushed.version_info.as_str()),
        (ENDPOINT, "3")
    );
    assert_eq!(names(&pushed), std::slice::from_ref(&v1));

    // LDS changes: both hear it; B's first message after its ACK is this LDS push.
    server
        .update(only(LISTENER, &[listener_json("changed")]))
        .unwrap();
    let lb = b.recv().await;
    assert_eq!(
        (lb.type_url.as_str(), lb.version_info.as_str()),
        (LISTENER, "2")
    );
    let la = a.recv().await;
    assert_eq!(
        (la.type_url.as_str(), la.version_info.as_str()),
        (LISTENER, "2")
    );
    let st = server.streams();
    assert_eq!(
        ts(&st, 2, CLUSTER),
        TypeStatus::default(),
        "B never asked for CDS"
    );
    assert_eq!(ts(&st, 2, LISTENER).responses, 2);
    assert_eq!(ts(&st, 1, ENDPOINT).responses, 2);
    drop(e);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn nack_is_recorded_with_error_detail_and_previous_version_kept() {
    let server = start("127.0.0.1:0", bookinfo("v1")).await;
    let mut s = Sotw::open(tcp_channel(server.listen()).await).await;
    let c1 = s.subscribe(CLUSTER, &[]).await;
    s.ack(&c1, &[]).await;
    server
        .wait_for(WAIT, |all| ts(all, 1, CLUSTER).acks == 1)
        .await
        .unwrap();

    let bad = only(CLUSTER, &[cluster_json(&subset("v1"), "1s")]);
    assert_eq!(server.update(bad).unwrap()[CLUSTER], "2");
    let c2 = s.recv().await;
    assert_eq!(c2.version_info, "2");
    let detail = format!("{}: connect_timeout too short", subset("v1"));
    s.nack(&c2, "1", &detail).await;
    let st = server
        .wait_for(WAIT, |all| ts(all, 1, CLUSTER).nacks == 1)
        .await
        .unwrap();
    let t = ts(&st, 1, CLUSTER);
    assert_eq!(t.last_error.as_deref(), Some(detail.as_str()));
    assert_eq!(
        t.acked_version.as_deref(),
        Some("1"),
        "a NACK keeps the previous version"
    );
    assert_eq!(t.nacked_version.as_deref(), Some("2"));

    // Nothing is resent after the NACK: the next message is the fixed config, version 3.
    server.update(bookinfo("v1")).unwrap();
    let c3 = s.recv().await;
    assert_eq!(
        (c3.type_url.as_str(), c3.version_info.as_str()),
        (CLUSTER, "3")
    );
    // A late NACK (the stale nonce of version 2) is recorded but triggers nothing.
    s.nack(&c2, "1", "late").await;
    s.ack(&c3, &[]).await;
    let st = server
        .wait_for(WAIT, |all| ts(all, 1, CLUSTER).acks == 2)
        .await
        .unwrap();
    let t = ts(&st, 1, CLUSTER);
    assert_eq!(t.acked_version.as_deref(), Some("3"));
    assert_eq!(t.last_error.as_deref(), Some("late"));
    assert_eq!(t.nacked_version.as_deref(), Some("2"));
    assert_eq!((t.requests, t.responses, t.nacks), (5, 3, 2));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn sotw_over_unix_socket_large_messages_and_shutdown_removes_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("etc/istio/proxy/XDS");
    // A stale socket file from a crashed server is replaced.
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let server = start(&format!("unix:{}", sock.display()), bookinfo("v1")).await;
    assert_eq!(server.listen(), &Listen::Unix(sock.clone()));
    let live = Server::start(&Listen::Unix(sock.clone()), Cache::new()).await;
    assert!(format!("{:#}", live.unwrap_err()).contains("another server is listening"));

    let mut s = Sotw::open(unix_channel(&sock).await).await;
    let cds = s.subscribe(CLUSTER, &[]).await;
    assert_eq!(cds.resources.len(), 4);
    s.ack(&cds, &[]).await;

    // Above gRPC's 4 MiB default in both directions: a 5 MiB cluster, a 5 MiB request.
    let mut big = cluster_json(&subset("v1"), "10s");
    big["metadata"] = json!({"filter_metadata": {"test": {"blob": "x".repeat(5 << 20)}}});
    server.update(only(CLUSTER, &[big])).unwrap();
    let large = s.recv().await;
    assert!(prost::Message::encoded_len(&large) > 5 << 20);
    let many: Vec<String> = (0..100_000)
        .map(|i| format!("outbound|9080|n{i}|{REVIEWS}"))
        .collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let eds = s
        .subscribe(ENDPOINT, &[&refs[..], &[&subset("v2")]].concat())
        .await;
    assert_eq!(names(&eds), [subset("v2")]);

    server.shutdown().await.unwrap();
    let end = tokio::time::timeout(WAIT, s.rx.message()).await.unwrap();
    assert!(
        matches!(end, Ok(None) | Err(_)),
        "the stream ends on shutdown"
    );
    assert!(!sock.exists(), "the socket is removed");
}

/// The proxy's client tests push a config every 100 ms; here as fast as possible, so ACKs
/// routinely carry stale nonces. The client ends on the last version and nothing is NACKed.
#[tokio::test]
async fn back_to_back_updates_end_on_the_last_version() {
    let server = start("127.0.0.1:0", bookinfo("v1")).await;
    let mut s = Sotw::open(tcp_channel(server.listen()).await).await;
    let rds = s.subscribe(ROUTE, &["9080"]).await;
    s.ack(&rds, &["9080"]).await;
    let pusher = {
        let cache = server.cache().clone();
        tokio::spawn(async move {
            for i in 0..100 {
                let to = ["v1", "v2", "v3"][i % 3];
                let mut r = route_json(to);
                r["virtual_hosts"][0]["routes"][0]["name"] = json!(format!("update-{i}"));
                cache.update(only(ROUTE, &[r])).unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    pusher.await.unwrap();
    let last = server.cache().version(ROUTE).unwrap();
    assert_eq!(last, "101");
    loop {
        let r = s.recv().await;
        s.ack(&r, &["9080"]).await;
        if r.version_info == last {
            break;
        }
    }
    let st = server
        .wait_for(WAIT, |all| {
            ts(all, 1, ROUTE).acked_version.as_deref() == Some(last.as_str())
        })
        .await
        .unwrap();
    let t = ts(&st, 1, ROUTE);
    assert_eq!(t.nacks, 0);
    // Every response was ACKed, most with a stale nonce: recorded, but nothing resent.
    assert_eq!(t.acks, t.responses, "{t:?}");
    server.shutdown().await.unwrap();
}

// ---------- delta ----------

#[tokio::test]
async fn delta_over_unix_subscribe_unsubscribe_removals_and_nack() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("xds.sock");
    let server = start(&format!("unix:{}", sock.display()), bookinfo("v1")).await;
    let ch = unix_channel(&sock).await;
    let mut d = Delta::open(ch.clone()).await;

    d.change(CLUSTER, &[], &[]).await;
    let cds = d.recv().await;
    assert_eq!(cds.resources.len(), 4, "wildcard CDS gets every cluster");
    assert!(cds.removed_resources.is_empty());
    d.ack(&cds, None).await;

    let (v1, v2) = (subset("v1"), subset("v2"));
    d.change(ENDPOINT, &[&v1], &[]).await;
    let e = d.recv().await;
    assert_eq!(delta_names(&e), std::slice::from_ref(&v1));
    d.ack(&e, None).await;
    d.change(ENDPOINT, &[&v2], &[]).await;
    let e = d.recv().await;
    assert_eq!(
        delta_names(&e),
        std::slice::from_ref(&v2),
        "v1 is not sent again"
    );
    d.ack(&e, None).await;
    d.change(ENDPOINT, &[], &[&v1]).await;
    server
        .wait_for(WAIT, |all| {
            ts(all, 1, ENDPOINT).subscribed == std::slice::from_ref(&v2)
        })
        .await
        .unwrap();

    // v1 (unsubscribed) and v2 change together: only v2 is pushed.
    let eds = |v1_ports: &[u16], with_v2: bool| {
        let mut list = vec![
            cla_json(&subset(""), &[9080]),
            cla_json(&v1, v1_ports),
            cla_json(&subset("v3"), &[9083]),
        ];
        if with_v2 {
            list.push(cla_json(&v2, &[9082, 9092]));
        }
        only(ENDPOINT, &list)
    };
    server.update(eds(&[9081, 9091], true)).unwrap();
    let e = d.recv().await;
    assert_eq!(delta_names(&e), std::slice::from_ref(&v2));
    assert!(e.removed_resources.is_empty());
    d.ack(&e, None).await;
    // Deleting v2 tells the subscriber with removed_resources.
    server.update(eds(&[9081, 9091], false)).unwrap();
    let e = d.recv().await;
    assert!(e.resources.is_empty());
    assert_eq!(e.removed_resources, std::slice::from_ref(&v2));
    d.ack(&e, None).await;

    // Deleting a cluster: removed_resources on CDS; NACK it and see it recorded.
    let rest: Vec<Value> = ["", "v1", "v2"]
        .iter()
        .map(|s| cluster_json(&subset(s), "10s"))
        .collect();
    server.update(only(CLUSTER, &rest)).unwrap();
    let c = d.recv().await;
    assert_eq!(c.removed_resources, [subset("v3")]);
    d.ack(&c, Some("v3 is still referenced")).await;
    let st = server
        .wait_for(WAIT, |all| ts(all, 1, CLUSTER).nacks == 1)
        .await
        .unwrap();
    let t = ts(&st, 1, CLUSTER);
    assert_eq!(t.last_error.as_deref(), Some("v3 is still referenced"));
    assert_eq!(
        (t.acked_version.as_deref(), t.nacked_version.as_deref()),
        (Some("1"), Some("2"))
    );
    assert_eq!(ts(&st, 1, ENDPOINT).acks, 4);

    // A reconnecting client lists what it has: it gets only what changed or disappeared.
    let mut again = Delta::open(ch).await;
    let mut known: std::collections::HashMap<String, String> = cds
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    known.insert(
        "outbound|80||gone.default.svc.cluster.local".into(),
        "x".into(),
    );
    again
        .send(DeltaDiscoveryRequest {
            type_url: CLUSTER.into(),
            initial_resource_versions: known,
            ..Default::default()
        })
        .await;
    let r = again.recv().await;
    assert!(r.resources.is_empty(), "{:?}", delta_names(&r));
    let mut removed = r.removed_resources.clone();
    removed.sort();
    assert_eq!(
        removed,
        [
            "outbound|80||gone.default.svc.cluster.local".to_string(),
            subset("v3")
        ]
    );
    server.shutdown().await.unwrap();
    assert!(!sock.exists());
}

// ---------- real config dumps, CLI ----------

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
    let mut s = Sotw::open(tcp_channel(server.listen()).await).await;
    let cds = s.subscribe(CLUSTER, &[]).await;
    assert!(
        cds.resources.is_empty(),
        "no clusters in this dump, but CDS is answered"
    );
    s.ack(&cds, &[]).await;
    let all: Vec<String> = dump.resources[ENDPOINT]
        .iter()
        .map(|a| proto::resource_name(a).unwrap())
        .collect();
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
    assert_eq!(got, all_subsets(), "only dynamic clusters");
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
