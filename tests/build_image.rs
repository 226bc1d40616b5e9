//! `mosnctl build-image` through the real binary.
//!
//! Istio's real `make docker.proxyv2` needs its build-tools container and the internet, so the
//! make-driver tests run real GNU make on a STAND-IN Makefile (written below, not Istio's)
//! whose `docker.proxyv2` does what Istio's does with mosnctl's variables: fetch each
//! `ISTIO_ENVOY_*_URL` with `curl -fLSs … | tar xz`, copy `usr/local/bin/$SIDECAR`, record its
//! environment, and build `$HUB/proxyv2:$TAG` (`FROM scratch` plus the binary) with a real,
//! private dockerd. The push goes to a real `docker-registry` on a loopback port and is read
//! back with `skopeo`. The checkout is the patch fixture (see `istio_fixture`).
//! Set MOSNCTL_SKIP_ENGINE_TESTS=1 to skip the tests that need dockerd.

mod image_harness;
mod istio_fixture;
#[path = "build_image/standin.rs"]
mod standin;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use image_harness::{empty_docker_config, run, skopeo, test_binary, Auth, Dockerd, Registry};
use istio_fixture::{git_tree, images, snapshot};
use sha2::{Digest, Sha256};
use standin::*;

/// The harness's `mosnctl`, and make runs in a build container as by default.
fn mosnctl(docker_config: &Path) -> Command {
    let mut c = image_harness::mosnctl(docker_config);
    c.env_remove("BUILD_WITH_CONTAINER");
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn sha12(p: &Path) -> String {
    let d = Sha256::digest(std::fs::read(p).unwrap());
    d.iter().map(|b| format!("{b:02x}")).collect::<String>()[..12].to_string()
}

/// Common arguments: the fixture checkout, a prebuilt binary (no cargo build in tests).
fn args(c: &mut Command, istio: &Path, out: &Path, hub: &str, tag: &str) {
    c.arg("build-image")
        .arg("--istio")
        .arg(istio)
        .args(["--hub", hub, "--tag", tag])
        .arg("--linux")
        .arg(test_binary())
        .args(["--proxy-version", "9.9.9"])
        .arg("--out")
        .arg(out);
}

fn env_file(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("env.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn dry_run_prints_every_command_and_variable_and_runs_nothing() {
    let istio = git_tree("1.10.6");
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("dist");
    let before = snapshot(istio.path());
    let mut c = mosnctl(&empty_docker_config(work.path()));
    args(&mut c, istio.path(), &out, "docker.io/acme", "1.10.6-mosn");
    c.args([
        "--dry-run",
        "--push",
        "--retag",
        "127.0.0.1:5000/x/proxyv2:y",
    ]);
    let o = run(c);
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout).to_string();
    let ver = format!("9.9.9-{}", sha12(test_binary()));
    for want in [
        "(Istio 1.10.6 from git tag 1.10.6)".to_string(),
        format!("build   skipped: using {}", test_binary().display()),
        "patch   1.10.6/wasm-disable.patch (checkout is not patched (0 of 6 hunks applied))".into(),
        "run     make clean\n".into(),
        format!(
            "run     make docker.proxyv2 SIDECAR=mosn ISTIO_ENVOY_VERSION={ver} \
             'ISTIO_ENVOY_RELEASE_URL=http://127.0.0.1:<port>/mosn.tar.gz' \
             'ISTIO_ENVOY_CENTOS_RELEASE_URL=http://127.0.0.1:<port>/mosn-centos.tar.gz' \
             'ISTIO_ENVOY_MACOS_RELEASE_URL=http://127.0.0.1:<port>/mosn-macos.tar.gz' \
             ISTIO_ENVOY_MACOS_RELEASE_NAME=mosn-{ver} VERSION=1.10.6 HUB=docker.io/acme \
             TAG=1.10.6-mosn\n"
        ),
        "verify  docker.io/acme/proxyv2:1.10.6-mosn has an executable /usr/local/bin/mosn".into(),
        "tag     docker.io/acme/proxyv2:1.10.6-mosn as 127.0.0.1:5000/x/proxyv2:y".into(),
        "push    docker.io/acme/proxyv2:1.10.6-mosn\n".into(),
        "push    127.0.0.1:5000/x/proxyv2:y\n".into(),
        "  export SIDECAR=mosn\n".into(),
        format!("  export ISTIO_ENVOY_VERSION={ver}\n"),
        "  export ISTIO_ENVOY_RELEASE_URL='http://127.0.0.1:<port>/mosn.tar.gz'\n".into(),
        format!("  export ISTIO_ENVOY_MACOS_RELEASE_NAME=mosn-{ver}\n"),
        "  export VERSION=1.10.6\n".into(),
        "  export HUB=docker.io/acme\n".into(),
        "  export TAG=1.10.6-mosn\n".into(),
        "none of them is blocked".into(),
    ] {
        assert!(s.contains(&want), "missing {want:?} in:\n{s}");
    }
    assert!(!out.exists(), "--dry-run must not create {}", out.display());
    assert_eq!(snapshot(istio.path()), before, "--dry-run must not patch");

    // file:// mode: URLs under the container's /work mount; on the host without a container.
    let mut c = mosnctl(&empty_docker_config(work.path()));
    args(&mut c, istio.path(), &out, "acme", "t");
    c.args(["--dry-run", "--url-mode", "file"]);
    let s = text(&run(c));
    assert!(
        s.contains("export ISTIO_ENVOY_RELEASE_URL=file:///work/.mosn-artifacts/mosn.tar.gz"),
        "{s}"
    );
    let mut c = mosnctl(&empty_docker_config(work.path()));
    args(&mut c, istio.path(), &out, "acme", "GOLD");
    c.args(["--dry-run", "--url-mode", "file"])
        .env("BUILD_WITH_CONTAINER", "0");
    let o = run(c);
    assert!(o.status.success(), "no container, no blocklist");
    let host_url = format!(
        "ISTIO_ENVOY_RELEASE_URL=file://{}/.mosn-artifacts/mosn.tar.gz",
        std::fs::canonicalize(istio.path()).unwrap().display()
    );
    assert!(text(&o).contains(&host_url), "{}", text(&o));

    // A malformed SOURCE_DATE_EPOCH is refused up front, not silently replaced by 0.
    let mut c = mosnctl(&empty_docker_config(work.path()));
    args(&mut c, istio.path(), &out, "acme", "t");
    c.arg("--dry-run").env("SOURCE_DATE_EPOCH", "yesterday");
    let o = run(c);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("SOURCE_DATE_EPOCH=`yesterday`"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn blocklisted_values_and_later_istio_are_refused_up_front() {
    let istio = git_tree("1.10.6");
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("dist");
    let before = snapshot(istio.path());
    let mut c = mosnctl(&empty_docker_config(work.path()));
    args(
        &mut c,
        istio.path(),
        &out,
        "registry.example/MYUSER",
        "1.10.6-GOLD",
    );
    let o = run(c);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        err.starts_with("error: Istio's build container would silently drop these variables:"),
        "{err}"
    );
    assert!(
        err.contains("  HUB=registry.example/MYUSER  (contains `USER`)"),
        "{err}"
    );
    assert!(err.contains("  TAG=1.10.6-GOLD  (contains `GO`)"), "{err}");
    assert!(
        err.contains("\n\nhelp: common/scripts/run.sh passes the environment through"),
        "{err}"
    );
    assert!(!out.exists());
    assert_eq!(snapshot(istio.path()), before);

    let mut c = mosnctl(&empty_docker_config(work.path()));
    args(&mut c, istio.path(), &out, "acme", "t");
    c.args(["--istio-version", "1.14.2", "--dry-run"]);
    let o = run(c);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("hard-codes SIDECAR=envoy"), "{err}");
    assert!(err.contains("help: mosnctl overlay"), "{err}");

    let mut c = mosnctl(&empty_docker_config(work.path()));
    args(&mut c, istio.path(), &out, "acme", "t");
    c.args(["--istio-version", "1.11.0", "--dry-run"]);
    let o = run(c);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("no wasm patch for Istio 1.11.0"),
        "{}",
        text(&o)
    );
}

#[test]
fn drifted_checkout_is_refused_before_any_work() {
    let istio = git_tree("1.10.6");
    let init = istio.path().join("bin/init.sh");
    let drifted = std::fs::read_to_string(&init).unwrap().replace(
        "for plugin in stats metadata_exchange",
        "for plugin in stats",
    );
    std::fs::write(&init, drifted).unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("dist");
    let before = snapshot(istio.path());
    let mut c = mosnctl(&empty_docker_config(work.path()));
    args(&mut c, istio.path(), &out, "acme", "t");
    let o = run(c);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        err.contains("bin/init.sh: hunk #1 (@@ -135,14 +135,14 @@)"),
        "{err}"
    );
    assert!(!out.exists());
    assert_eq!(snapshot(istio.path()), before);
}

#[test]
fn missing_tools_are_reported_before_any_work() {
    let istio = git_tree("1.10.6");
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("dist");
    let empty_path = work.path().join("empty-bin");
    std::fs::create_dir_all(&empty_path).unwrap();
    let before = snapshot(istio.path());
    let mut c = mosnctl(&empty_docker_config(work.path()));
    args(&mut c, istio.path(), &out, "acme", "t");
    // No git on PATH either, so the version is given.
    c.args(["--istio-version", "1.10.6"])
        .env("PATH", &empty_path)
        .env(
            "DOCKER_HOST",
            format!("unix://{}/no.sock", work.path().display()),
        );
    let o = run(c);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        err.contains("build-image needs these, and nothing was started:"),
        "{err}"
    );
    assert!(err.contains("  make: not found on PATH"), "{err}");
    assert!(err.contains("  docker: not found on PATH"), "{err}");
    assert!(err.contains("  Docker engine: "), "{err}");
    assert!(!out.exists(), "nothing may be built or packed");
    assert_eq!(snapshot(istio.path()), before, "nothing may be patched");
}

#[test]
fn standin_make_builds_verifies_and_pushes_through_real_engine_and_registry() {
    let Some(dockerd) = Dockerd::start() else {
        return;
    };
    let registry = Registry::start(Auth::None);
    let istio = git_tree("1.10.6");
    write_makefile(istio.path(), STANDIN_MAKEFILE);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("dist");
    let hub = format!("{}/mosn", registry.host());
    let retag = format!("{}/mirror/proxyv2:copy", registry.host());
    let mut c = mosnctl(&empty_docker_config(work.path()));
    args(&mut c, istio.path(), &out, &hub, "t1");
    c.args(["--push", "--retag", &retag])
        .env("DOCKER_HOST", dockerd.host());
    let o = run(c);
    assert!(o.status.success(), "{}", text(&o));

    // make ran `clean`, then `docker.proxyv2`, on the patched checkout.
    let order = std::fs::read_to_string(istio.path().join("order.txt")).unwrap();
    assert_eq!(order, "clean\ndocker.proxyv2\n");
    for (rel, (_, post)) in images() {
        assert_eq!(
            std::fs::read_to_string(istio.path().join(&rel)).unwrap(),
            post
        );
    }
    // The environment make saw, exactly.
    let env = env_file(istio.path());
    let ver = format!("9.9.9-{}", sha12(test_binary()));
    let url = env
        .iter()
        .find_map(|l| l.strip_prefix("ISTIO_ENVOY_RELEASE_URL="))
        .expect("ISTIO_ENVOY_RELEASE_URL in make's environment")
        .to_string();
    let base = url.strip_suffix("/mosn.tar.gz").expect("…/mosn.tar.gz");
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    for want in [
        "SIDECAR=mosn".to_string(),
        format!("ISTIO_ENVOY_VERSION={ver}"),
        format!("ISTIO_ENVOY_CENTOS_RELEASE_URL={base}/mosn-centos.tar.gz"),
        format!("ISTIO_ENVOY_MACOS_RELEASE_URL={base}/mosn-macos.tar.gz"),
        format!("ISTIO_ENVOY_MACOS_RELEASE_NAME=mosn-{ver}"),
        "VERSION=1.10.6".into(),
        format!("HUB={hub}"),
        "TAG=t1".into(),
    ] {
        assert!(
            env.contains(&want),
            "{want} not in make's environment: {env:#?}"
        );
    }
    // … and on its command line too.
    let flags = std::fs::read_to_string(istio.path().join("makeflags.txt")).unwrap();
    for want in [
        "SIDECAR=mosn",
        &format!("ISTIO_ENVOY_VERSION={ver}"),
        "TAG=t1",
        "VERSION=1.10.6",
    ] {
        assert!(flags.contains(want), "{want} not in MAKEFLAGS {flags}");
    }
    // The tarball served was the binary.
    assert_eq!(
        std::fs::read(istio.path().join("out/ctx/mosn")).unwrap(),
        std::fs::read(test_binary()).unwrap()
    );
    // The server is gone once make is done.
    let probe = Command::new("curl")
        .args(["-s", "-o", "/dev/null", &url])
        .status()
        .unwrap();
    assert!(!probe.success(), "the file server still answers at {url}");

    // Both names were pushed and can be read back from the registry.
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    for name in [format!("{hub}/proxyv2:t1"), retag.clone()] {
        assert!(stdout.contains(&format!("{name}@sha256:")), "{stdout}");
        let i = skopeo(&["inspect", "--tls-verify=false", &format!("docker://{name}")]);
        assert!(i.status.success(), "skopeo inspect {name}");
        let v: serde_json::Value = serde_json::from_slice(&i.stdout).unwrap();
        assert_eq!(v["Layers"].as_array().unwrap().len(), 1, "{v}");
    }
    // make's output went to the log.
    let log = std::fs::read_to_string(out.join("build-image.log")).unwrap();
    assert!(log.contains("$ make docker.proxyv2 SIDECAR=mosn"), "{log}");
    assert!(log.contains("docker build"), "{log}");

    // A second run: the patch is already there, make runs again from `clean`.
    let mut c = mosnctl(&empty_docker_config(work.path()));
    args(&mut c, istio.path(), &out, &hub, "t2");
    c.env("DOCKER_HOST", dockerd.host());
    let o = run(c);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("==> patch: already applied"),
        "{}",
        text(&o)
    );
}

#[test]
fn standin_make_failure_missing_binary_and_interrupt() {
    let Some(dockerd) = Dockerd::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("dist");

    // Failure: the last lines and the log path.
    let istio = git_tree("1.10.6");
    write_makefile(istio.path(), FAILING_MAKEFILE);
    let mut c = mosnctl(&empty_docker_config(work.path()));
    args(&mut c, istio.path(), &out, "acme", "t");
    c.env("DOCKER_HOST", dockerd.host());
    let o = run(c);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        err.contains("error: `make docker.proxyv2` failed (exit status: 2)"),
        "{err}"
    );
    assert!(
        err.contains("  | make: *** [Makefile:5: docker.proxyv2] Error 3\n"),
        "{err}"
    );
    assert!(err.contains("  | line 50\n"), "{err}");
    assert!(
        err.contains("  | No rule to make target stats-filter.wasm"),
        "{err}"
    );
    assert!(!err.contains("  | line 10\n"), "only the last lines: {err}");
    let log = out.join("build-image.log");
    assert!(err.contains(&format!("are in {}", log.display())), "{err}");
    assert!(std::fs::read_to_string(&log).unwrap().contains("line 1\n"));

    // An image without /usr/local/bin/mosn (what 1.14+'s builder makes of SIDECAR=mosn):
    // the stand-in copies the binary to /usr/local/bin/envoy instead.
    let istio = git_tree("1.10.6");
    let envoy: Vec<String> = STANDIN_MAKEFILE
        .iter()
        .map(|l| l.replace("/usr/local/bin/$(SIDECAR)\\n", "/usr/local/bin/envoy\\n"))
        .collect();
    assert!(envoy.iter().any(|l| l.contains("/usr/local/bin/envoy")));
    std::fs::write(istio.path().join("Makefile"), envoy.join("\n") + "\n").unwrap();
    let mut c = mosnctl(&empty_docker_config(work.path()));
    args(&mut c, istio.path(), &out, "acme", "envoy-only");
    c.env("DOCKER_HOST", dockerd.host());
    let o = run(c);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        err.contains("error: the image has no /usr/local/bin/mosn"),
        "{err}"
    );
    assert!(err.contains("mosnctl overlay"), "{err}");

    // Ctrl-C while make runs: the whole process group, the build container and the server
    // stop.
    let ctx = work.path().join("build-tools");
    std::fs::create_dir_all(&ctx).unwrap();
    build_standin_build_tools(&dockerd, &ctx);
    let istio = git_tree("1.10.6");
    write_makefile(istio.path(), HANGING_MAKEFILE);
    let mut c = mosnctl(&empty_docker_config(work.path()));
    args(&mut c, istio.path(), &out, "acme", "t");
    c.env("DOCKER_HOST", dockerd.host())
        .env("STANDIN_BUILD_TOOLS", STANDIN_BUILD_TOOLS)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let pid_file = istio.path().join("sleep.pid");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pid_file.exists()
        || std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .is_empty()
    {
        assert!(Instant::now() < deadline, "make never started its sleep");
        std::thread::sleep(Duration::from_millis(50));
    }
    while running_containers(&dockerd).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the stand-in build container never ran"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let container = running_containers(&dockerd)[0][..12].to_string();
    let sleep_pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_string();
    let url = env_file(istio.path())
        .iter()
        .find_map(|l| {
            l.strip_prefix("ISTIO_ENVOY_RELEASE_URL=")
                .map(str::to_string)
        })
        .unwrap();
    let served = Command::new("curl")
        .args(["-sf", "-o", "/dev/null", &url])
        .status()
        .unwrap();
    assert!(served.success(), "the server answers while make runs");
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    eprintln!("{err}");
    assert!(!o.status.success());
    assert!(
        err.contains("error: interrupted during make docker.proxyv2"),
        "{err}"
    );
    assert!(err.contains("(its process group) were stopped"), "{err}");
    assert!(
        err.contains("is patched with 1.10.6/wasm-disable.patch (6 of 6 hunks)"),
        "{err}"
    );
    assert!(err.contains("--revert"), "{err}");
    assert!(
        !alive(&sleep_pid),
        "make's child sleep {sleep_pid} survived"
    );
    assert!(
        err.contains(&format!("the build container(s) {container} killed")),
        "{err}"
    );
    assert!(
        running_containers(&dockerd).is_empty(),
        "the build container survived"
    );
    let probe = Command::new("curl")
        .args(["-s", "-o", "/dev/null", &url])
        .status()
        .unwrap();
    assert!(!probe.success(), "the file server still answers at {url}");
}

/// True while a process exists and is not a zombie.
fn alive(pid: &str) -> bool {
    let stat = PathBuf::from(format!("/proc/{pid}/stat"));
    match std::fs::read_to_string(stat) {
        Ok(s) => !s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')),
        Err(_) => false,
    }
}
