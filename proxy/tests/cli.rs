//! The real binary: `--version`, `--mode validate` over Istio's bootstrap goldens, bad configs.

use std::path::PathBuf;
use std::process::Command;

fn mosn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mosn"))
}

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors")
}

#[test]
fn version_first_line_shape() {
    for args in [&["--version"][..], &["version"][..]] {
        let out = mosn().args(args).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let first = text.lines().next().unwrap();
        assert!(first.starts_with("mosn version 0.1.0 (commit "), "{first}");
        assert!(
            first.contains(", target ") && first.ends_with(')'),
            "{first}"
        );
    }
}

#[test]
fn every_istio_bootstrap_golden_validates() {
    let mut n = 0;
    for release in ["istio-1.10.6", "istio-master"] {
        let dir = vectors().join(release).join("bootstrap");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with("_golden.json"))
            .collect();
        files.sort();
        for f in files {
            // The command line pilot-agent 1.10 uses, plus validate mode.
            let out = mosn()
                .args([
                    "-c",
                    f.to_str().unwrap(),
                    "--mode",
                    "validate",
                    "--restart-epoch",
                    "0",
                ])
                .args([
                    "--drain-time-s",
                    "45",
                    "--drain-strategy",
                    "immediate",
                    "--parent-shutdown-time-s",
                    "60",
                ])
                .args([
                    "--local-address-ip-version",
                    "v4",
                    "--bootstrap-version",
                    "3",
                    "--disable-hot-restart",
                ])
                .args([
                    "-l",
                    "warning",
                    "--component-log-level",
                    "misc:error",
                    "--concurrency",
                    "2",
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{} failed validation:\n{}{}",
                f.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            n += 1;
        }
    }
    assert!(n >= 18, "expected all goldens, validated {n}");
}

#[test]
fn validate_reports_errors_and_exits_1() {
    let dir = std::env::temp_dir().join(format!("mosn-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("syntax.json", "{\"static_resources\": ", "invalid"),
        ("unknown_field.yaml", "static_resources:\n  clusters:\n  - name: a\n    type: STATIC\n    connect_timeout: nope\n", "invalid configuration"),
        (
            "bad_regex.yaml",
            "static_resources:\n  listeners:\n  - address: {socket_address: {address: 127.0.0.1, port_value: 1}}\n    filter_chains:\n    - filters:\n      - name: envoy.filters.network.http_connection_manager\n        typed_config:\n          '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n          stat_prefix: x\n          route_config:\n            virtual_hosts:\n            - name: v\n              domains: ['*']\n              routes:\n              - match: {safe_regex: {regex: '(['}}\n                direct_response: {status: 200}\n",
            "bad regex",
        ),
    ];
    for (name, body, needle) in cases {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        let out = mosn()
            .args(["--mode", "validate", "-c", p.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{name}: {err}");
    }
    let missing = mosn()
        .args(["--mode", "validate", "-c", "/nonexistent/x.json"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    // `mosn start` and unknown flags are accepted.
    let ok = dir.join("ok.yaml");
    std::fs::write(&ok, "node: {id: a, cluster: b}\n").unwrap();
    let out = mosn()
        .args([
            "start",
            "-c",
            ok.to_str().unwrap(),
            "--mode",
            "validate",
            "--future-flag",
            "x",
            "--another",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown flag"));
    std::fs::remove_dir_all(&dir).ok();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One blocking HTTP/1.1 request; `None` while nothing listens.
fn http(port: u16, method: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    Some((
        buf.get(9..12)?.parse().ok()?,
        buf.split_once("\r\n\r\n")?.1.to_string(),
    ))
}

fn static_config(dir: &std::path::Path, admin: u16, listener: u16) -> PathBuf {
    let p = dir.join(format!("static-{admin}.json"));
    let addr = |port: u16| serde_json::json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    let cfg = serde_json::json!({
        "admin": {"address": addr(admin)},
        "static_resources": {"listeners": [{"name": "l", "address": addr(listener), "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "l",
                "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "up"}}}]}]},
                "http_filters": [{"name": "envoy.filters.http.router"}]}}]}]}]}
    });
    std::fs::write(&p, cfg.to_string()).unwrap();
    p
}

fn wait_exit(child: &mut std::process::Child) -> i32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code().unwrap_or(-1);
        }
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            panic!("mosn did not exit");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn wait_ready(port: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while http(port, "GET", "/ready").map(|r| r.0) != Some(200) {
        assert!(
            std::time::Instant::now() < deadline,
            "mosn never became ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn serve_sigterm_quitquitquit_and_bind_failure() {
    let dir = std::env::temp_dir().join(format!("mosn-life-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // Serve, answer through the listener, then SIGTERM drains and exits 0.
    let (admin, lport) = (free_port(), free_port());
    let cfg = static_config(&dir, admin, lport);
    let mut child = mosn()
        .args([
            "-c",
            cfg.to_str().unwrap(),
            "--concurrency",
            "3",
            "--drain-time-s",
            "1",
            "-l",
            "warning",
        ])
        .spawn()
        .unwrap();
    wait_ready(admin);
    assert_eq!(http(lport, "GET", "/"), Some((200, "up".to_string())));
    let info: serde_json::Value =
        serde_json::from_str(&http(admin, "GET", "/server_info").unwrap().1).unwrap();
    assert_eq!(info["command_line_options"]["concurrency"], 3);
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(wait_exit(&mut child), 0);

    // POST /quitquitquit exits 0.
    let (admin, lport) = (free_port(), free_port());
    let cfg = static_config(&dir, admin, lport);
    let mut child = mosn()
        .args(["start", "-c", cfg.to_str().unwrap()])
        .spawn()
        .unwrap();
    wait_ready(admin);
    assert_eq!(http(admin, "POST", "/quitquitquit").map(|r| r.0), Some(200));
    assert_eq!(wait_exit(&mut child), 0);

    // A listener port that is taken is a real error: exit 1 and say why.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = static_config(&dir, free_port(), taken.local_addr().unwrap().port());
    let out = mosn().args(["-c", cfg.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot bind listener"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_retired_idle_spin_setting_warns_and_still_serves() {
    let dir = std::env::temp_dir().join(format!("mosn-spin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (admin, lport) = (free_port(), free_port());
    let cfg = static_config(&dir, admin, lport);
    let mut child = mosn()
        .args(["-c", cfg.to_str().unwrap(), "--concurrency", "2"])
        .env("MOSN_IDLE_SPIN_US", "10us")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(admin);
    assert_eq!(http(lport, "GET", "/"), Some((200, "up".to_string())));
    assert_eq!(http(admin, "POST", "/quitquitquit").map(|r| r.0), Some(200));
    assert_eq!(wait_exit(&mut child), 0);
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("MOSN_IDLE_SPIN_US is no longer read"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
