//! The foundation end to end, through the real binary: build the proxy, pack it, serve it,
//! and fetch it exactly as Istio's `bin/init.sh` does.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;

fn pack(dist: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut c = mosnctl();
    c.args(["pack", "--dist"])
        .arg(dist)
        .arg("--out")
        .arg(out)
        .args(extra);
    run(c)
}

#[test]
fn istio_download_contract() {
    let (dist, bin) = built_proxy();
    // The built binary is what build-info.json says, is static, and runs.
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bin.with_file_name("build-info.json")).unwrap())
            .unwrap();
    assert_eq!(info["sha256"], sha(bin));
    assert_eq!(info["target"], "linux-amd64");
    assert_eq!(info["profile"], "debug");
    assert!(
        info["interpreter"].is_null(),
        "static binary expected: {info}"
    );
    let v = Command::new(bin).arg("--version").output().unwrap();
    assert!(
        String::from_utf8_lossy(&v.stdout).starts_with("mosn version"),
        "{v:?}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let rel = tmp.path().join("release");
    let out = pack(dist, &rel, &["--macos-from-linux"]);
    assert!(out.status.success());
    let served = serve(&rel);
    assert!(served.stdout.contains("export SIDECAR=mosn"));
    assert!(served.stdout.contains("export ISTIO_ENVOY_VERSION="));
    for name in ["mosn.tar.gz", "mosn-centos.tar.gz", "mosn-macos.tar.gz"] {
        let into = tmp.path().join(format!("x-{name}"));
        std::fs::create_dir_all(&into).unwrap();
        // Exactly the pipeline of istio/istio bin/init.sh.
        let url = format!("{}/{name}", served.base);
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "curl -fLSs --retry 5 --retry-delay 1 --retry-connrefused '{url}' | tar xz"
            ))
            .current_dir(&into)
            .status()
            .unwrap();
        assert!(st.success(), "{url}");
        let got = into.join("usr/local/bin/mosn");
        let mode = std::fs::metadata(&got).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "{name}");
        assert_eq!(sha(&got), sha(bin), "{name} holds another binary");
        let members: Vec<_> = walk(&into);
        assert_eq!(members, vec!["usr/local/bin/mosn".to_string()], "{name}");
    }
    // SHA256SUMS is what sha256sum -c reads.
    let st = Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(&rel)
        .status()
        .unwrap();
    assert!(st.success());
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out
}

#[test]
fn pack_is_reproducible_across_dirs_and_time_zones() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::copy("/bin/true", &bin).unwrap();
    let sums = |out: &std::path::Path, tz: &str| {
        let mut c = mosnctl();
        c.args(["pack", "--version", "1.2.3", "--linux"])
            .arg(&bin)
            .arg("--out")
            .arg(out);
        c.env("TZ", tz).env_remove("SOURCE_DATE_EPOCH");
        assert!(run(c).status.success());
        std::fs::read_to_string(out.join("SHA256SUMS")).unwrap()
    };
    let a = sums(&tmp.path().join("a"), "UTC");
    let b = sums(&tmp.path().join("b"), "UTC");
    let other = tempfile::tempdir().unwrap();
    let c = sums(&other.path().join("deep/er/c"), "Asia/Kathmandu");
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(
        a.lines().count(),
        2,
        "no macOS build, so only two tarballs: {a}"
    );
    // SOURCE_DATE_EPOCH sets the member mtime, still deterministically.
    let mut c = mosnctl();
    c.args(["pack", "--version", "1.2.3", "--linux"])
        .arg(&bin)
        .arg("--out")
        .arg(tmp.path().join("d"));
    c.env("SOURCE_DATE_EPOCH", "1700000000");
    assert!(run(c).status.success());
    let d = std::fs::read_to_string(tmp.path().join("d/SHA256SUMS")).unwrap();
    assert_ne!(a, d);
    let listing = Command::new("tar")
        .args(["tvzf"])
        .arg(tmp.path().join("d/mosn.tar.gz"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("2023-11-1"), "{listing}");
    assert!(listing.starts_with("-rwxr-xr-x root/root"), "{listing}");
}

#[test]
fn pack_refuses_the_wrong_kind_of_binary_and_drops_stale_macos() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rel");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("mosn-macos.tar.gz"), b"stale").unwrap();
    let mut c = mosnctl();
    c.args([
        "pack",
        "--version",
        "1",
        "--linux",
        "/bin/true",
        "--macos",
        "/bin/true",
        "--out",
    ])
    .arg(&out);
    let o = run(c);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("MachO binary is needed"));
    let mut c = mosnctl();
    c.args(["pack", "--version", "1", "--linux", "/bin/true", "--out"])
        .arg(&out);
    let o = run(c);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("skipping mosn-macos.tar.gz"));
    assert!(
        !out.join("mosn-macos.tar.gz").exists(),
        "a stale macOS tarball must not be served"
    );
}

#[test]
fn server_confines_requests_to_its_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("mosn.tar.gz"), b"tarball").unwrap();
    std::fs::write(tmp.path().join("secret"), b"TOP-SECRET").unwrap();
    std::os::unix::fs::symlink(tmp.path().join("secret"), root.join("escape")).unwrap();
    std::os::unix::fs::symlink(tmp.path(), root.join("sub/up")).unwrap();
    let s = serve(&root);
    for path in [
        "/../secret",
        "/%2e%2e/secret",
        "/%2E%2E%2Fsecret",
        "/sub/..%2f..%2fsecret",
        "/escape",
        "/sub/up/secret",
        "/..%5csecret",
    ] {
        let (code, _, body) = curl(&[&format!("{}{path}", s.base)]);
        assert!(code == 403 || code == 404, "{path}: {code}");
        assert!(
            !String::from_utf8_lossy(&body).contains("TOP-SECRET"),
            "{path} leaked"
        );
    }
    let (code, _, _) = curl(&[&format!("{}/missing.tar.gz", s.base)]);
    assert_eq!(code, 404);
    let (code, _, _) = curl(&["-X", "POST", &format!("{}/mosn.tar.gz", s.base)]);
    assert_eq!(code, 405);
}

#[test]
fn server_answers_range_head_and_conditional_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(tmp.path().join("mosn.tar.gz"), &data).unwrap();
    let s = serve(tmp.path());
    let url = format!("{}/mosn.tar.gz", s.base);

    let (code, h, _) = curl(&["-I", &url]);
    assert_eq!(code, 200);
    assert!(h.contains("content-length: 100000"), "{h}");
    assert!(h.contains("content-type: application/gzip"), "{h}");
    assert!(h.contains("last-modified:"), "{h}");
    let etag = h
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .expect("etag")
        .trim()
        .to_string();

    let (code, h, body) = curl(&["-H", "Range: bytes=10-19", &url]);
    assert_eq!(code, 206);
    assert_eq!(body, &data[10..20]);
    assert!(h.contains("content-range: bytes 10-19/100000"), "{h}");
    let (code, _, body) = curl(&["-H", "Range: bytes=-5", &url]);
    assert_eq!((code, &body[..]), (206, &data[99_995..]));
    let (code, h, _) = curl(&["-H", "Range: bytes=200000-", &url]);
    assert_eq!(code, 416, "{h}");

    let (code, _, body) = curl(&["-H", &format!("If-None-Match: {etag}"), &url]);
    assert_eq!((code, body.len()), (304, 0));
    // If-Range with the current validator gives the range; a stale one gives the whole file.
    let (code, _, _) = curl(&[
        "-H",
        "Range: bytes=0-0",
        "-H",
        &format!("If-Range: {etag}"),
        &url,
    ]);
    assert_eq!(code, 206);
    let (code, _, body) = curl(&["-H", "Range: bytes=0-0", "-H", "If-Range: \"stale\"", &url]);
    assert_eq!((code, body.len()), (200, 100_000));

    let (code, h, body) = curl(&["-H", "Accept: application/json", &format!("{}/", s.base)]);
    assert_eq!(code, 200);
    assert!(h.contains("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["files"][0]["name"], "mosn.tar.gz");
    assert_eq!(v["files"][0]["size"], 100_000);
    assert_eq!(v["files"][0]["sha256"], mosnctl::fsutil::sha256_hex(&data));
    let (_, h, body) = curl(&[&format!("{}/", s.base)]);
    assert!(h.contains("text/html"));
    assert!(String::from_utf8_lossy(&body).contains("<a href=\"/mosn.tar.gz\">"));
}

#[test]
fn server_reports_a_busy_port_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = serve(tmp.path());
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut c = mosnctl();
    c.args(["serve-artifacts", "--addr", &addr, "--dir"])
        .arg(tmp.path());
    let o = run(c);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("already in use") && err.contains("--addr"),
        "{err}"
    );

    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = s.child.wait().unwrap();
    assert!(status.success(), "graceful exit on SIGTERM: {status:?}");
}

#[test]
fn missing_target_gives_the_remedy_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("dist");
    for (target, want) in [
        (
            "linux-arm64",
            "rustup target add aarch64-unknown-linux-musl",
        ),
        ("macos-amd64", "rustup target add x86_64-apple-darwin"),
        (
            "riscv64gc-unknown-linux-gnu",
            "rustup target add riscv64gc-unknown-linux-gnu",
        ),
    ] {
        let mut c = mosnctl();
        // A valid target first: nothing may be built when a later one is missing.
        c.args([
            "build",
            "--target",
            "linux-amd64",
            "--target",
            target,
            "--out",
        ])
        .arg(&out);
        let o = run(c);
        assert!(!o.status.success(), "{target}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{target}: {err}");
        if target.starts_with("macos") {
            assert!(
                err.contains("cargo-zigbuild") && err.contains("osxcross"),
                "{err}"
            );
        }
        assert!(!out.exists(), "{target}: output was written");
    }
}

#[test]
fn glibc_check_flags_a_binary_that_needs_a_newer_glibc() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("p.c");
    // arc4random arrived in glibc 2.36; any dynamic program here also needs
    // __libc_start_main@GLIBC_2.34.
    std::fs::write(
        &src,
        "#include <stdlib.h>\nint main(void){return (int)(arc4random() & 1);}\n",
    )
    .unwrap();
    let dynamic = tmp.path().join("dyn");
    let stat = tmp.path().join("static");
    assert!(Command::new("gcc")
        .arg(&src)
        .arg("-o")
        .arg(&dynamic)
        .status()
        .unwrap()
        .success());
    assert!(Command::new("gcc")
        .arg("-static")
        .arg(&src)
        .arg("-o")
        .arg(&stat)
        .status()
        .unwrap()
        .success());

    let info = mosnctl::elf::inspect(&dynamic).unwrap();
    let need = info.max_glibc.unwrap();
    assert!(need >= mosnctl::elf::GlibcVersion(2, 34), "{need}");
    let err = mosnctl::elf::check_runs_on(&info, "2.27".parse().unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("glibc {need}")) && err.contains("2.27"),
        "{err}"
    );

    let mut c = mosnctl();
    c.arg("inspect").arg(&dynamic);
    let o = run(c);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("needs glibc {need}")) && err.contains("2.27"),
        "{err}"
    );

    let mut c = mosnctl();
    c.arg("inspect")
        .arg(&dynamic)
        .arg("--min-glibc")
        .arg(need.to_string());
    assert!(run(c).status.success());
    let mut c = mosnctl();
    c.arg("inspect").arg(&stat);
    let o = run(c);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("static, no dynamic loader"));
}

/// (pid, parent pid, command name) of every process, from /proc.
fn processes() -> Vec<(u32, u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..."; comm may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let rest: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        if rest.first() == Some(&"Z") {
            continue;
        }
        let ppid = rest.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        out.push((pid, ppid, stat[open + 1..close].to_string()));
    }
    out
}

fn descendants(root: u32) -> Vec<(u32, String)> {
    let all = processes();
    let mut found = vec![];
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (pid, ppid, name) in &all {
            if *ppid == p {
                found.push((*pid, name.clone()));
                frontier.push(*pid);
            }
        }
    }
    found
}

#[test]
fn interrupted_build_stops_the_compilers_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("dist");
    let mut c = mosnctl();
    // A release build: nothing else in the tests builds one, so it really compiles.
    c.args(["build", "--profile", "release", "--out"]).arg(&out);
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(900);
    let tree = loop {
        let d = descendants(child.id());
        // A real compilation, not cargo's short `rustc -vV` probes.
        let compiling = d.iter().any(|(pid, n)| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            n.starts_with("rustc") && cmdline.contains("--crate-name") && !cmdline.contains("___")
        });
        if compiling {
            std::thread::sleep(std::time::Duration::from_millis(300));
            break descendants(child.id());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no rustc started: {d:?}"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "build ended before it could be interrupted"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("interrupted"), "{err}");
    // Every cargo and rustc it had started is gone by the time mosnctl has exited. A compiler
    // orphaned by killing only cargo would still be running (it only dies when it next writes
    // to cargo's closed pipe).
    std::thread::sleep(std::time::Duration::from_millis(100));
    let gone = |pid: u32| processes().iter().all(|(p, _, _)| *p != pid);
    let left: Vec<_> = tree.iter().filter(|(p, _)| !gone(*p)).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!out.exists(), "an interrupted build wrote output");
}
