//! `mosnctl overlay` against registries that need credentials: htpasswd behind TLS, and
//! bearer tokens from a token server. Credentials come from a docker `config.json`.

mod image_harness;

use image_harness::*;

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
    let c = overlay_cmd(
        &empty_docker_config(tmp.path()),
        test_binary(),
        &[
            "--base",
            &base,
            "--tag",
            &dst,
            "--push",
            "--ca-file",
            ca.to_str().unwrap(),
        ],
    );
    let out = run(c);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("access denied") && err.contains("401") && err.contains("no credentials"),
        "{err}"
    );

    // Credentials but no CA: the TLS failure is reported, not the HTTP fallback's 400.
    let cfg = docker_config(tmp.path(), &reg.host(), "alice", "s3cret-pw");
    let c = overlay_cmd(
        &cfg,
        test_binary(),
        &["--base", &base, "--tag", &dst, "--push"],
    );
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
    use base64::Engine as _;
    let header = base64::engine::general_purpose::STANDARD.encode("alice:s3cret-pw");
    assert!(!all.contains(&header), "Authorization header leaked");
    assert!(
        all.contains("TRACE") || all.contains("DEBUG"),
        "-vv logged: {all}"
    );
    let pushed = printed_digest(&String::from_utf8(out.stdout).unwrap());
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--creds=alice:s3cret-pw",
        &format!("--cert-dir={}", cert_dir.display()),
        &format!("docker://{dst}"),
    ]);
    assert!(raw.status.success());
    assert_eq!(digest(&raw.stdout), pushed);
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

    let c = overlay_cmd(
        &empty_docker_config(tmp.path()),
        test_binary(),
        &["--base", &base, "--tag", &dst, "--push"],
    );
    let out = run(c);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused") && err.contains("no credentials"),
        "{err}"
    );

    tokens.requests.lock().unwrap().clear();
    let cfg = docker_config(tmp.path(), &reg.host(), "bob", "t0ken-pw");
    let c = overlay_cmd(
        &cfg,
        test_binary(),
        &["--base", &base, "--tag", &dst, "--push"],
    );
    let pushed = printed_digest(&ok(c));
    let reqs = tokens.requests.lock().unwrap().clone();
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--creds=bob:t0ken-pw",
        "--tls-verify=false",
        &format!("docker://{dst}"),
    ]);
    assert!(raw.status.success());
    assert_eq!(digest(&raw.stdout), pushed);

    // The destination's token covers both repositories, push scope first (for the mount);
    // the base is read with its own pull-only token. The base layer was mounted.
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(
        reqs[1],
        "service=test-registry&scope=repository%3Abase%3Apull"
    );
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

    // An identity token (OAuth2 refresh token) in config.json: POSTed as a refresh grant.
    let dir = tmp.path().join("idtoken");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::json!({"auths": {reg.host(): {"identitytoken": identity_token("bob")}}})
            .to_string(),
    )
    .unwrap();
    tokens.requests.lock().unwrap().clear();
    let dst = format!("{}/team/idtoken:v1", reg.host());
    ok(overlay_cmd(
        &dir,
        test_binary(),
        &["--base", &base, "--tag", &dst, "--push"],
    ));
    let reqs = tokens.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert!(
        reqs.iter().all(|r| r.contains("grant_type=refresh_token")),
        "{reqs:?}"
    );
}

#[test]
fn refused_mount_falls_back_to_upload() {
    // This token server grants only the first scope: the destination's token (push first)
    // cannot pull from the base repository, so the registry refuses the mount with 401.
    let tmp = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start_with(tmp.path(), "bob", "pw", true);
    let reg = Registry::start(Auth::Token {
        realm: tokens.realm.clone(),
        cert: tokens.cert.clone(),
    });
    let archive = tmp.path().join("base.tar");
    docker_archive_base(&archive, "amd64");
    push_archive_with(
        &archive,
        &format!("{}/base:v1", reg.host()),
        &["--dest-creds=bob:pw", "--dest-tls-verify=false"],
    );
    let dst = format!("{}/other:v1", reg.host());
    let cfg = docker_config(tmp.path(), &reg.host(), "bob", "pw");
    let base = format!("{}/base:v1", reg.host());
    ok(overlay_cmd(
        &cfg,
        test_binary(),
        &["--base", &base, "--tag", &dst, "--push"],
    ));
    let log = reg.log();
    assert!(
        log.contains("&from=base HTTP/1.1\" 401"),
        "mount refused: {log}"
    );
    let out = pull_to_oci(&dst, &tmp.path().join("pulled"), &["--src-creds=bob:pw"]);
    assert!(
        out.status.success(),
        "the uploaded base layer is there and verifies"
    );
}

#[test]
fn base_on_another_registry_is_copied_without_recompression() {
    let a = Registry::start(Auth::None);
    let b = Registry::start(Auth::None);
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("base.tar");
    docker_archive_base(&archive, "amd64");
    let base = format!("{}/base:v1", a.host());
    push_archive(&archive, &base);
    let dst = format!("{}/copied:v1", b.host());
    let c = overlay_cmd(
        &empty_docker_config(tmp.path()),
        test_binary(),
        &["--base", &base, "--tag", &dst, "--push"],
    );
    ok(c);
    let base_m: serde_json::Value =
        serde_json::from_slice(&skopeo_raw(&base, false, None)).unwrap();
    let new_m: serde_json::Value = serde_json::from_slice(&skopeo_raw(&dst, false, None)).unwrap();
    assert_eq!(
        base_m["layers"][0], new_m["layers"][0],
        "same compressed base layer"
    );
    let out = pull_to_oci(&dst, &tmp.path().join("pulled"), &[]);
    assert!(out.status.success());
}

#[test]
fn credentials_from_cred_helpers_and_creds_store() {
    let reg = Registry::start(Auth::HtpasswdTls {
        user: "carol".into(),
        pass: "helper-pw".into(),
    });
    let tmp = tempfile::tempdir().unwrap();
    let cert_dir = reg.cert_dir().unwrap();
    let archive = tmp.path().join("base.tar");
    docker_archive_base(&archive, "amd64");
    let base = format!("{}/base:v1", reg.host());
    push_archive_with(
        &archive,
        &base,
        &[
            "--dest-creds=carol:helper-pw",
            &format!("--dest-cert-dir={}", cert_dir.display()),
        ],
    );
    // A real credential helper on PATH (the docker-credential-* protocol: `get`, server on
    // stdin, JSON on stdout); it answers only for this registry.
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-testhelper");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\n[ \"$server\" = \"{}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"carol\",\"Secret\":\"helper-pw\"}}' \"$server\"\n",
            reg.host()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let ca = reg.cert.clone().unwrap();

    for (name, config) in [
        (
            "credHelpers",
            serde_json::json!({"credHelpers": {reg.host(): "testhelper"}}),
        ),
        (
            "credsStore",
            serde_json::json!({"credsStore": "testhelper"}),
        ),
    ] {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let dst = format!("{}/{}:v1", reg.host(), name.to_lowercase());
        let mut c = mosnctl(&dir);
        c.env("PATH", &path)
            .args([
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
        ok(c);
    }

    // A helper that is not installed: the 401 says which credential source was tried.
    let dir = tmp.path().join("missing-helper");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::json!({"credHelpers": {reg.host(): "nosuchhelper"}}).to_string(),
    )
    .unwrap();
    let mut c = mosnctl(&dir);
    c.env("PATH", &path)
        .args([
            "overlay",
            "--base",
            &base,
            "--tag",
            &format!("{}/x:v1", reg.host()),
        ])
        .args(["--push", "--ca-file"])
        .arg(&ca)
        .arg("--binary")
        .arg(test_binary());
    let out = run(c);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("401") && err.contains("credential helper `docker-credential-nosuchhelper`"),
        "{err}"
    );
}
