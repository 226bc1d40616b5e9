//! The engine path against a private dockerd: `--engine` build + push, `--load` of the
//! daemonless docker-archive, and `--smoke` runs of `mosn --version` in the results.
//! Needs root (dockerd); `MOSNCTL_SKIP_ENGINE_TESTS=1` skips it.

mod image_harness;

use image_harness::*;
use serde_json::Value;

#[test]
fn engine_build_push_load_and_smoke() {
    let Some(dockerd) = Dockerd::start() else {
        return;
    };
    let reg = Registry::start(Auth::None);
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("base.tar");
    docker_archive_base(&archive, "amd64");
    let base = format!("{}/base:docker", reg.host());
    push_archive(&archive, &base);
    let config = empty_docker_config(tmp.path());
    // `mosnctl overlay --binary BINARY ARGS` against this test's dockerd.
    let overlay = |binary: &std::path::Path, args: &[&str]| {
        let mut c = overlay_cmd(&config, binary, args);
        c.env("DOCKER_HOST", dockerd.host());
        run(c)
    };

    // --engine: docker build FROM the base, push, then run mosn --version in it.
    let dst = format!("{}/engine:v1", reg.host());
    let out = overlay(
        test_binary(),
        &[
            "--engine", "--base", &base, "--tag", &dst, "--push", "--smoke",
        ],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("printed \"mosn test 1.0\""));
    let pushed = printed_digest(&String::from_utf8(out.stdout).unwrap());
    let raw = skopeo_raw(&dst, false, None);
    assert_eq!(digest(&raw), pushed, "push digest from the stream");
    let m: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        m["layers"].as_array().unwrap().len(),
        2,
        "one layer added: {m}"
    );
    let layout = tmp.path().join("engine-pulled");
    let out = pull_to_oci(&dst, &layout, &[]);
    assert!(out.status.success());
    let (bytes, stat) = umoci_mosn(&layout, "v1", tmp.path());
    assert_eq!(bytes, std::fs::read(test_binary()).unwrap());
    assert!(stat.starts_with("755 0 0"), "{stat}");

    // --load: the daemonless archive through the image-load API; smoke-tested too.
    let out = overlay(
        test_binary(),
        &[
            "--base",
            &base,
            "--tag",
            "example.com/mosn/loaded:v1",
            "--load",
            "--smoke",
        ],
    );
    assert!(out.status.success());
    let img = dockerd.api("/images/example.com/mosn/loaded:v1/json");
    let layers = img["RootFS"]["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    let cfg = img["Config"].clone();
    assert_eq!(
        cfg["Entrypoint"][0], "/usr/local/bin/pilot-agent",
        "base config kept"
    );
    assert_eq!(cfg["User"], "1337");

    // A push error inside the engine's stream fails the command (nothing listens there).
    let dead = format!("127.0.0.1:{}/nowhere:v1", free_port());
    let out = overlay(
        test_binary(),
        &["--engine", "--base", &base, "--tag", &dead, "--push"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("docker push"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A dynamically linked binary: the glibc preflight reads the base's layers and finds
    // glibc 2.27, older than the host's build needs.
    let dynamic = tmp.path().join("dyn-mosn");
    let src = tmp.path().join("dyn.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\nint main(void){puts(\"dyn\");return 0;}\n",
    )
    .unwrap();
    let gcc = std::process::Command::new("gcc")
        .arg("-o")
        .arg(&dynamic)
        .arg(&src)
        .status()
        .unwrap();
    assert!(gcc.success());
    let out = overlay(
        &dynamic,
        &[
            "--base",
            &base,
            "--tag",
            "example.com/mosn/dyn:v1",
            "--load",
            "--smoke",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("but the base image has glibc 2.27 (lib/x86_64-linux-gnu/libc-2.27.so)"),
        "{err}"
    );

    // Past the preflight, the smoke test catches it: the base has no dynamic loader.
    let out = overlay(
        &dynamic,
        &[
            "--skip-glibc-check",
            "--base",
            &base,
            "--tag",
            "example.com/mosn/dyn:v1",
            "--load",
            "--smoke",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("smoke test") || err.contains("smoke-test"),
        "{err}"
    );

    // A daemonless --push --smoke runs what was pushed, not an older image the engine holds
    // under the same name: load a broken one (the dynamic binary) under it first.
    let stale = format!("{}/stale:v1", reg.host());
    assert!(overlay(
        &dynamic,
        &[
            "--skip-glibc-check",
            "--base",
            &base,
            "--tag",
            &stale,
            "--load",
        ]
    )
    .status
    .success());
    let out = overlay(
        test_binary(),
        &["--base", &base, "--tag", &stale, "--push", "--smoke"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("printed \"mosn test 1.0\""), "{err}");

    // Ctrl-C during the smoke test removes its container (this "mosn" never exits).
    let hang = tmp.path().join("hang-mosn");
    let src = tmp.path().join("hang.c");
    std::fs::write(
        &src,
        "#include <unistd.h>\nint main(void){sleep(600);return 0;}\n",
    )
    .unwrap();
    let gcc = std::process::Command::new("gcc")
        .args(["-static", "-o"])
        .arg(&hang)
        .arg(&src)
        .status()
        .unwrap();
    assert!(gcc.success());
    let mut c = overlay_cmd(
        &config,
        &hang,
        &[
            "--base",
            &base,
            "--tag",
            "example.com/mosn/hang:v1",
            "--load",
            "--smoke",
        ],
    );
    c.env("DOCKER_HOST", dockerd.host())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while dockerd
        .api("/containers/json")
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the smoke container never ran"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("interrupted during the smoke test"), "{err}");
    let left = dockerd.api("/containers/json?all=1");
    assert!(left.as_array().unwrap().is_empty(), "left behind: {left}");
}
