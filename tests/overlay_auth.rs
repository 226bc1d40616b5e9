//! `mosnctl overlay` against registries that need credentials: htpasswd behind TLS, and
//! bearer tokens from a token server. Credentials come from a docker `config.json`.

mod image_harness;

use image_harness::*;

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(data))
}

#[test]
fn htpasswd_over_tls() {
    let reg = Registry::start(Auth::HtpasswdTls {
        user: "alice".into(),
        pass: "s3cret-pw".into(),
    });
    let tmp = tempfile::tempdir().unwrap();
    let cert_dir = reg.cert_dir().unwrap();
    let cert_flag = format!("--dest-cert-dir={}", cert_dir.display());
    let archive = tmp.path().join("base.tar");
    docker_archive_base(&archive, "amd64");
    push_archive_with(
        &archive,
        &format!("{}/base:v1", reg.host()),
        &["--dest-creds=alice:s3cret-pw", &cert_flag],
    );
    let base = format!("{}/base:v1", reg.host());
    let dst = format!("{}/out:v1", reg.host());
    let ca = reg.cert.clone().unwrap();

    // No credentials: a 401 that names what was tried.
    let mut c = mosnctl(&empty_docker_config(tmp.path()));
    c.args([
        "overlay",
        "--base",
        &base,
        "--tag",
        &dst,
        "--push",
        "--ca-file",
    ])
    .arg(&ca)
    .arg("--binary")
    .arg(test_binary());
    let out = run(c);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("access denied") && err.contains("401") && err.contains("no credentials"),
        "{err}"
    );

    // Credentials but no CA: the TLS failure is reported, not the HTTP fallback's 400.
    let cfg = docker_config(tmp.path(), &reg.host(), "alice", "s3cret-pw");
    let mut c = mosnctl(&cfg);
    c.args([
        "overlay", "--base", &base, "--tag", &dst, "--push", "--binary",
    ])
    .arg(test_binary());
    let out = run(c);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot talk TLS") && err.contains("--ca-file"),
        "{err}"
    );

    // Credentials and CA: pushed; the secret never shows up in the output.
    let mut c = mosnctl(&cfg);
    c.args([
        "-vv",
        "overlay",
        "--base",
        &base,
        "--tag",
        &dst,
        "--push",
        "--ca-file",
    ])
    .arg(&ca)
    .arg("--binary")
    .arg(test_binary());
    let out = run(c);
    assert!(out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("s3cret-pw"), "secret leaked");
    let digest = printed_digest(&String::from_utf8(out.stdout).unwrap());
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--creds=alice:s3cret-pw",
        &format!("--cert-dir={}", cert_dir.display()),
        &format!("docker://{dst}"),
    ]);
    assert!(raw.status.success());
    assert_eq!(format!("sha256:{}", sha256_hex(&raw.stdout)), digest);
}

#[test]
fn bearer_tokens_from_the_challenge_realm() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start(tmp.path(), "bob", "t0ken-pw");
    let reg = Registry::start(Auth::Token {
        realm: tokens.realm.clone(),
        cert: tokens.cert.clone(),
    });
    let archive = tmp.path().join("base.tar");
    docker_archive_base(&archive, "amd64");
    push_archive_with(
        &archive,
        &format!("{}/base:v1", reg.host()),
        &["--dest-creds=bob:t0ken-pw", "--dest-tls-verify=false"],
    );
    let base = format!("{}/base:v1", reg.host());
    let dst = format!("{}/team/proxyv2:v1", reg.host());

    let mut c = mosnctl(&empty_docker_config(tmp.path()));
    c.args([
        "overlay", "--base", &base, "--tag", &dst, "--push", "--binary",
    ])
    .arg(test_binary());
    let out = run(c);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused") && err.contains("no credentials"),
        "{err}"
    );

    tokens.requests.lock().unwrap().clear();
    let cfg = docker_config(tmp.path(), &reg.host(), "bob", "t0ken-pw");
    let mut c = mosnctl(&cfg);
    c.args([
        "overlay", "--base", &base, "--tag", &dst, "--push", "--binary",
    ])
    .arg(test_binary());
    let digest = printed_digest(&ok(c));
    let reqs = tokens.requests.lock().unwrap().clone();
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--creds=bob:t0ken-pw",
        "--tls-verify=false",
        &format!("docker://{dst}"),
    ]);
    assert!(raw.status.success());
    assert_eq!(format!("sha256:{}", sha256_hex(&raw.stdout)), digest);

    // One token for both repositories, push scope first; the base layer was mounted.
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let push = reqs[0]
        .find("repository%3Ateam%2Fproxyv2%3Apull%2Cpush")
        .unwrap();
    let pull = reqs[0].find("repository%3Abase%3Apull").unwrap();
    assert!(push < pull, "{reqs:?}");
    assert!(
        reg.log().contains("&from=base HTTP/1.1\" 201"),
        "{}",
        reg.log()
    );
}
