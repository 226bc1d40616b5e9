//! The xDS server against a real tonic ADS client over real sockets (TCP and unix): SotW and
//! delta subscriptions, ACK/NACK, pushes, with Bookinfo-shaped resources as Istio 1.10 writes
//! them. Replaying real dumps and the CLI are in xds_replay.rs.

mod xds_support;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use mosnctl::xds::{
    Cache, Listen, Server, Snapshot, TypeStatus, CLUSTER, ENDPOINT, LISTENER, ROUTE,
};
use serde_json::{json, Value};
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

/// Istio-scale pushes: 1,000 clusters, CLAs and routes in one snapshot, then an update of all
/// routes. Prints how long the server took (no timing assertion).
#[tokio::test]
async fn thousand_clusters_and_routes() {
    use envoy_types::pb::envoy::config::endpoint::v3::{LbEndpoint, LocalityLbEndpoints};
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    let snap = |tag: &str| {
        let names: Vec<String> = (0..1000)
            .map(|i| format!("outbound|9080||svc{i}.default.svc.cluster.local"))
            .collect();
        let clusters = names.iter().map(|n| Cluster {
            name: n.clone(),
            ..Default::default()
        });
        let clas = names.iter().map(|n| ClusterLoadAssignment {
            cluster_name: n.clone(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint::default(); 3],
                ..Default::default()
            }],
            ..Default::default()
        });
        let routes = (0..1000).map(|i| RouteConfiguration {
            name: format!("{i}{tag}"),
            ..Default::default()
        });
        Snapshot::new()
            .with_messages(clusters)
            .with_messages(clas)
            .with_messages(routes)
    };
    let server = start("127.0.0.1:0", Snapshot::new()).await;
    let t0 = std::time::Instant::now();
    server.update(snap("")).unwrap();
    let indexed = t0.elapsed();
    let mut s = Sotw::open(tcp_channel(server.listen()).await).await;
    let cds = s.subscribe(CLUSTER, &[]).await;
    assert_eq!(cds.resources.len(), 1000);
    s.ack(&cds, &[]).await;
    let route_names: Vec<String> = (0..1000).map(|i| format!("{i}-b")).collect();
    let refs: Vec<&str> = route_names.iter().map(String::as_str).collect();
    s.send(DiscoveryRequest {
        type_url: ROUTE.into(),
        resource_names: refs.iter().map(|r| r.to_string()).collect(),
        ..Default::default()
    })
    .await;
    let t1 = std::time::Instant::now();
    server.update(snap("-b")).unwrap();
    let rds = s.recv().await;
    assert_eq!((rds.type_url.as_str(), rds.resources.len()), (ROUTE, 1000));
    eprintln!(
        "1,000 clusters/CLAs/routes: indexed in {indexed:?}; 1,000-route update pushed in {:?}",
        t1.elapsed()
    );
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
