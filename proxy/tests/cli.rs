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
