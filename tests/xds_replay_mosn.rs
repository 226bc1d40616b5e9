//! The real `mosn` on a replay: `mosnctl xds serve` replays the Istio EDS vector and
//! `mosnctl xds bootstrap` points mosn at it, in plain text over a unix socket and over mutual
//! TLS (`xds serve --tls-cert/--tls-key/--client-ca`, `xds bootstrap --tls-ca …`). Both tests
//! share one `mosnctl build` of the proxy, so they stay in one test binary.

mod common;
mod xds_support;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use mosnctl::xds::{Cache, Dump, Server, CLUSTER};
use serde_json::Value;
use std::time::Duration;
use xds_support::*;

/// The proxy built once per test binary by `mosnctl build`, as tests/artifacts.rs does,
/// unless MOSN_BIN names one already built.
async fn mosn_binary() -> std::path::PathBuf {
    match std::env::var_os("MOSN_BIN") {
        Some(p) => std::path::PathBuf::from(p),
        None => tokio::task::spawn_blocking(|| common::built_proxy().1.clone())
            .await
            .unwrap(),
    }
}

/// Start `mosn -c boot` (log in `log`) and wait until its admin at `admin` says ready; a
/// proxy that exits or never gets there fails the test with its log.
async fn start_ready(
    mosn: &std::path::Path,
    boot: &std::path::Path,
    log: &std::path::Path,
    admin: &str,
) -> KillOnDrop {
    let mut proxy = KillOnDrop(Some(
        std::process::Command::new(mosn)
            .args(["-c", boot.to_str().unwrap(), "-l", "info"])
            .stderr(std::fs::File::create(log).unwrap())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let ready = http.get(format!("http://{admin}/ready")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            return proxy;
        }
        if let Some(st) = proxy.0.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "mosn exited: {st}: {}",
                std::fs::read_to_string(log).unwrap()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "mosn never became ready: {}",
            std::fs::read_to_string(log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Issue 6's "real config" test: `mosnctl xds serve` replays the EDS-only Istio dump,
/// `mosnctl xds bootstrap` points the real `mosn` at it, and mosn's admin `/clusters` then
/// lists every one of the 32 clusters with exactly the dump's endpoint addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosn_reports_the_replayed_istio_endpoints_under_clusters() {
    let mosn = mosn_binary().await;
    let vector_path = vector("istio-master/configdump/endpoints-configdump.json");
    let want = vector_endpoints(&endpoints_vector());
    assert_eq!(want.len(), 32);

    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("XDS");
    let serve_log = dir.path().join("serve.log");
    let mut serve = KillOnDrop(Some(
        mosnctl(&[
            "xds",
            "serve",
            "--config-dump",
            vector_path.to_str().unwrap(),
            "--listen",
            &format!("unix:{}", sock.display()),
        ])
        .stderr(std::fs::File::create(&serve_log).unwrap())
        .spawn()
        .unwrap(),
    ));
    let admin = format!("127.0.0.1:{}", free_port());
    let boot = dir.path().join("envoy-rev0.json");
    let st = mosnctl(&[
        "xds",
        "bootstrap",
        "--config-dump",
        vector_path.to_str().unwrap(),
        "--xds",
        &format!("unix:{}", sock.display()),
        "--admin",
        &admin,
        "--out",
        boot.to_str().unwrap(),
    ])
    .status()
    .unwrap();
    assert!(st.success());
    let deadline = std::time::Instant::now() + WAIT;
    while !sock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "mosnctl xds serve did not bind"
        );
        if let Some(st) = serve.0.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "mosnctl xds serve exited: {st}: {}",
                std::fs::read_to_string(&serve_log).unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mosn_log = dir.path().join("mosn.log");
    // LIVE means the initial CDS, EDS (every cluster warm) and LDS were applied.
    let proxy = start_ready(&mosn, &boot, &mosn_log, &admin).await;
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let req = http.get(format!("http://{admin}{path}"));
        async move {
            let r = req.send().await.ok()?;
            Some((r.status().as_u16(), r.text().await.ok()?))
        }
    };
    let (code, body) = get("/clusters?format=json").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut got = std::collections::BTreeMap::new();
    for c in v["cluster_statuses"].as_array().unwrap() {
        let mut addrs: Vec<String> = c["host_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                let sa = &h["address"]["socket_address"];
                format!("{}:{}", sa["address"].as_str().unwrap(), sa["port_value"])
            })
            .collect();
        addrs.sort();
        got.insert(c["name"].as_str().unwrap().to_string(), addrs);
    }
    // The bootstrap's own static cluster, then exactly the dump's 32.
    assert!(got.remove("xds-grpc").is_some(), "{:?}", got.keys());
    assert_eq!(got.len(), 32, "{:?}", got.keys());
    assert_eq!(got, want);
    // A few pairs spelled out, so a reader sees what is compared.
    let reviews = format!("outbound|9080||{REVIEWS}");
    assert_eq!(
        got[&reviews],
        [
            "10.244.0.192:9080",
            "10.244.0.193:9080",
            "10.244.0.195:9080"
        ]
    );
    assert_eq!(
        got["outbound|53||kube-dns.kube-system.svc.cluster.local"],
        ["10.244.0.3:53", "10.244.0.8:53"]
    );
    assert_eq!(
        got["outbound|443||kubernetes.default.svc.cluster.local"],
        ["172.18.0.2:6443"]
    );
    assert!(got["BlackHoleCluster"].is_empty());
    // Envoy's text form, which `istioctl proxy-config endpoints` parses.
    let (_, text) = get("/clusters").await.unwrap();
    assert!(
        text.contains(&format!(
            "{reviews}::10.244.0.193:9080::health_flags::healthy\n"
        )),
        "{text}"
    );
    let (_, stats) = get("/stats?usedonly").await.unwrap();
    for name in [
        "cluster_manager.cds.update_success".to_string(),
        format!("cluster.{reviews}.update_success"),
    ] {
        let line = stats
            .lines()
            .find(|l| l.starts_with(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name}: {stats}"));
        assert_ne!(line, format!("{name}: 0"), "{stats}");
    }

    drop(proxy);
    let child = serve.0.take().unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{}", out.status);
    let log = std::fs::read_to_string(&serve_log).unwrap();
    assert!(
        log.contains("32 ClusterLoadAssignment(s) have no cluster in the dump"),
        "serve says what it made up: {log}"
    );
}

// ---------- TLS: `xds serve --tls-cert/--tls-key/--client-ca`, `xds bootstrap --tls-ca …` ----------

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command line (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// In `dir`: CA `ca`, `server` (DNS:xds.test) and `client` certificates signed by it.
fn make_pki(dir: &std::path::Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=ca",
        "-days",
        "2",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(dir, &ca);
    for (name, ext) in [
        ("server", "subjectAltName=DNS:xds.test\nextendedKeyUsage=serverAuth\n"),
        ("client", "subjectAltName=URI:spiffe://cluster.local/ns/default/sa/replay\nextendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let (key, csr, crt, extf) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        let subj = format!("/CN={name}");
        let mut req = vec!["req", "-new"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509", "-req", "-in", &csr, "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-out", &crt, "-extfile", &extf,
            ],
        );
    }
}

/// The vector replayed over mutual TLS: the library server with a client CA, a bootstrap from
/// `mosnctl xds bootstrap --tls-ca --tls-cert --tls-key --sni`, the real mosn LIVE with all 32
/// clusters; a client without a certificate gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosn_takes_the_replay_over_mutual_tls() {
    let mosn = mosn_binary().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_pki(d);
    let vector_path = vector("istio-master/configdump/endpoints-configdump.json");
    let dump = Dump::from_file(&vector_path).unwrap();
    let tls = mosnctl::xds::ServerTls {
        cert: d.join("server.crt"),
        key: d.join("server.key"),
        client_ca: Some(d.join("ca.crt")),
    };
    let server = Server::start_with_tls(
        &"127.0.0.1:0".parse().unwrap(),
        Cache::with_snapshot(dump.snapshot()).unwrap(),
        Some(&tls),
    )
    .await
    .unwrap();
    let xds = server.listen().to_string();

    // Mutual TLS is enforced: a client with the right CA but no certificate is refused.
    let port = xds.rsplit_once(':').unwrap().1;
    let no_cert = tonic::transport::ClientTlsConfig::new()
        .domain_name("xds.test")
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(d.join("ca.crt")).unwrap(),
        ));
    let refused = async {
        let ch = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(no_cert)
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(DiscoveryRequest {
            type_url: CLUSTER.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut stream = client(ch)
            .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        stream.message().await.map_err(|e| e.to_string())
    };
    let r = tokio::time::timeout(WAIT, refused).await.unwrap();
    assert!(
        !matches!(r, Ok(Some(_))),
        "a client without a certificate got a response"
    );

    let admin = format!("127.0.0.1:{}", free_port());
    let boot = d.join("envoy-rev0.json");
    let st = mosnctl(&[
        "xds",
        "bootstrap",
        "--config-dump",
        vector_path.to_str().unwrap(),
        "--xds",
        &xds,
        "--admin",
        &admin,
        "--tls-ca",
        d.join("ca.crt").to_str().unwrap(),
        "--tls-cert",
        d.join("client.crt").to_str().unwrap(),
        "--tls-key",
        d.join("client.key").to_str().unwrap(),
        "--sni",
        "xds.test",
        "--out",
        boot.to_str().unwrap(),
    ])
    .status()
    .unwrap();
    assert!(st.success());
    let b: Value = serde_json::from_slice(&std::fs::read(&boot).unwrap()).unwrap();
    let ts = &b["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["transport_socket"];
    assert_eq!(ts["typed_config"]["sni"], "xds.test", "{ts}");
    assert_eq!(
        ts["typed_config"]["common_tls_context"]["validation_context"]["trusted_ca"]["filename"],
        d.join("ca.crt").to_str().unwrap()
    );

    let log = d.join("mosn.log");
    let proxy = start_ready(&mosn, &boot, &log, &admin).await;
    let http = reqwest::Client::new();
    let body = http
        .get(format!("http://{admin}/clusters?format=json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = v["cluster_statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .filter(|n| *n != "xds-grpc")
        .collect();
    assert_eq!(names.len(), 32, "{names:?}");
    assert!(names.contains(&format!("outbound|9080||{REVIEWS}").as_str()));
    // The server saw one stream from mosn, which ACKed CDS.
    let streams = server.streams();
    assert!(
        streams
            .iter()
            .any(|s| s.of(CLUSTER).acked_version.is_some()),
        "{streams:?}"
    );
    drop(proxy);
    server.shutdown().await.unwrap();
}
