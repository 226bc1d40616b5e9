//! `mosnctl istio-args` and `mosnctl inject-rewrite` through the real binary.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn mosnctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mosnctl"))
}

fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/kube-inject-1.10.yaml")
}

#[test]
fn istio_args_flags_and_operator() {
    let out = mosnctl()
        .args([
            "istio-args",
            "--image",
            "registry.example/mosn/proxyv2:1.10.6-mosn",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "--set values.global.proxy.image=registry.example/mosn/proxyv2:1.10.6-mosn \
         --set meshConfig.defaultConfig.binaryPath=/usr/local/bin/mosn"
    );
    let out = mosnctl()
        .args([
            "istio-args",
            "--format",
            "operator",
            "--image",
            "me/proxyv2:v1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let docs = yaml_rust2::YamlLoader::load_from_str(&String::from_utf8(out.stdout).unwrap())
        .expect("valid YAML");
    let spec = &docs[0]["spec"];
    assert_eq!(docs[0]["kind"].as_str(), Some("IstioOperator"));
    assert_eq!(
        spec["meshConfig"]["defaultConfig"]["binaryPath"].as_str(),
        Some("/usr/local/bin/mosn")
    );
    assert_eq!(
        spec["values"]["global"]["proxy"]["image"].as_str(),
        Some("me/proxyv2:v1")
    );
}

#[test]
fn inject_rewrite_changes_proxy_config_only() {
    let input = std::fs::read_to_string(sample()).unwrap();
    let out = mosnctl()
        .arg("inject-rewrite")
        .arg(sample())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("rewrote 1 place(s): 1 PROXY_CONFIG"), "{err}");
    assert!(err.contains("left 1 other mention"), "{err}");

    // Exactly one line differs, and only in the path.
    let changed: Vec<(&str, &str)> = input
        .lines()
        .zip(text.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(changed.len(), 1);
    assert_eq!(
        changed[0]
            .0
            .replace("/usr/local/bin/envoy", "/usr/local/bin/mosn"),
        changed[0].1
    );
    assert_eq!(input.lines().count(), text.lines().count());

    // The PROXY_CONFIG JSON is intact apart from binaryPath.
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
    let env = &docs[0]["spec"]["template"]["spec"]["containers"][1]["env"];
    let pc = env
        .as_vec()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some("PROXY_CONFIG"))
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(pc["value"].as_str().unwrap()).unwrap();
    assert_eq!(json["binaryPath"], "/usr/local/bin/mosn");
    assert_eq!(json["discoveryAddress"], "istiod.istio-system.svc:15012");

    // stdin works too, and a second pass has nothing left to do.
    let mut child = mosnctl()
        .args(["inject-rewrite", "-", "--require-change"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let again = child.wait_with_output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to rewrite"));
    assert_eq!(String::from_utf8(again.stdout).unwrap(), text);
}
