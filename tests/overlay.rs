//! `mosnctl overlay` against real peers: docker-registry, skopeo and umoci.

mod image_harness;

use image_harness::*;
use serde_json::Value;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// A registry holding the Docker-typed base at `base:docker`.
fn registry_with_docker_base() -> (Registry, tempfile::TempDir, Value) {
    let reg = Registry::start(Auth::None);
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("base.tar");
    let config = docker_archive_base(&archive, "amd64");
    push_archive(&archive, &format!("{}/base:docker", reg.host()));
    (reg, tmp, config)
}

fn overlay(tmp: &std::path::Path, args: &[&str]) -> std::process::Output {
    run(overlay_cmd(&empty_docker_config(tmp), test_binary(), args))
}

#[test]
fn push_keeps_docker_types_config_fields_and_mounts_base_layers() {
    let (reg, tmp, base_cfg) = registry_with_docker_base();
    let dst = format!("{}/proxyv2:mosn", reg.host());
    let out = overlay(
        tmp.path(),
        &[
            "--base",
            &format!("{}/base:docker", reg.host()),
            "--tag",
            &dst,
            "--push",
        ],
    );
    assert!(out.status.success());
    let pushed = printed_digest(&String::from_utf8(out.stdout).unwrap());

    // The registry holds exactly the manifest we reported.
    let raw = skopeo_raw(&dst, false, None);
    assert_eq!(digest(&raw), pushed);
    let m: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(m["mediaType"], DOCKER_MANIFEST, "Docker family kept");
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[1]["mediaType"], DOCKER_LAYER_GZIP);
    assert!(m.get("annotations").is_none());

    // The config differs from the base only by one diff_id and one history entry.
    let cfg: Value = serde_json::from_slice(&skopeo_raw(&dst, true, None)).unwrap();
    let mut stripped = cfg.clone();
    stripped["rootfs"]["diff_ids"].as_array_mut().unwrap().pop();
    let added = stripped["history"].as_array_mut().unwrap().pop().unwrap();
    assert_eq!(
        serde_json::to_string(&stripped).unwrap(),
        serde_json::to_string(&base_cfg).unwrap(),
        "every base field (Healthcheck, Shell, OnBuild, container_config, ...) kept in order"
    );
    assert_eq!(added["created_by"], "mosnctl overlay /usr/local/bin/mosn");
    assert_eq!(added["created"], base_cfg["created"]);
    let comment = added["comment"].as_str().unwrap();
    assert!(comment.starts_with("mosn test 1.0 (sha256:"), "{comment}");

    // Base layers were mounted, not uploaded again.
    let log = reg.log();
    let base_layer = layers[0]["digest"].as_str().unwrap().replace(':', "%3A");
    let mount =
        format!("\"POST /v2/proxyv2/blobs/uploads/?mount={base_layer}&from=base HTTP/1.1\" 201");
    assert!(log.contains(&mount), "base layer mounted (201): {log}");
    assert!(
        !log.contains(&format!(
            "\"GET /v2/base/blobs/{}",
            layers[0]["digest"].as_str().unwrap()
        )),
        "base layers never downloaded: {log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("PUT /v2/proxyv2/blobs/uploads/")
                && l.contains(&format!("digest={base_layer}"))),
        "base layer not uploaded again: {log}"
    );

    // skopeo verifies every blob on copy; umoci unpacks the file with mode 0755, owner root.
    let layout = tmp.path().join("pulled");
    let out = pull_to_oci(&dst, &layout, &[]);
    assert!(out.status.success());
    let (bytes, stat) = umoci_mosn(&layout, "v1", tmp.path());
    assert_eq!(bytes, std::fs::read(test_binary()).unwrap());
    assert_eq!(stat, "755 0 0 0");
}

#[test]
fn same_binary_and_base_give_the_same_digest() {
    let (reg, tmp, _) = registry_with_docker_base();
    let base = format!("{}/base:docker", reg.host());
    let mut digests = Vec::new();
    for tag in ["a", "b"] {
        let out = overlay(
            tmp.path(),
            &[
                "--base",
                &base,
                "--tag",
                &format!("{}/r{tag}:x", reg.host()),
                "--push",
            ],
        );
        assert!(out.status.success());
        digests.push(printed_digest(&String::from_utf8(out.stdout).unwrap()));
    }
    assert_eq!(digests[0], digests[1]);

    // SOURCE_DATE_EPOCH changes mtime and created, and is itself reproducible.
    let mut epoch_digests = Vec::new();
    for tag in ["c", "d"] {
        let mut c = mosnctl(&empty_docker_config(tmp.path()));
        c.env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["overlay", "--base", &base, "--push", "--binary"])
            .arg(test_binary())
            .args(["--tag", &format!("{}/r{tag}:x", reg.host())]);
        epoch_digests.push(printed_digest(&ok(c)));
    }
    assert_eq!(epoch_digests[0], epoch_digests[1]);
    assert_ne!(epoch_digests[0], digests[0]);
    let cfg: Value =
        serde_json::from_slice(&skopeo_raw(&format!("{}/rc:x", reg.host()), true, None)).unwrap();
    assert_eq!(cfg["created"], "2023-11-14T22:13:20Z");
}

/// `overlay --base BASE --tag TAG --output OUTPUT`, which must succeed.
fn overlay_to(tmp: &std::path::Path, base: &str, tag: &str, output: &str) {
    let out = overlay(tmp, &["--base", base, "--tag", tag, "--output", output]);
    assert!(out.status.success(), "{}", stderr_of(&out));
}

/// How many layers `skopeo inspect` sees in `image`.
fn skopeo_layers(image: &str) -> usize {
    let inspect = skopeo(&["inspect", image]);
    assert!(inspect.status.success(), "skopeo inspect {image}");
    let info: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    info["Layers"].as_array().unwrap().len()
}

#[test]
fn oci_layout_base_to_oci_layout_and_docker_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    umoci_base(&base, "v1");
    let base_ref = format!("oci:{}:v1", base.display());
    let out_dir = tmp.path().join("out");
    let out_ref = format!("oci:{}:v2", out_dir.display());
    overlay_to(
        tmp.path(),
        &base_ref,
        "example.com/mosn/proxyv2:v2",
        &out_ref,
    );
    let (bytes, stat) = umoci_mosn(&out_dir, "v2", tmp.path());
    assert_eq!(bytes, std::fs::read(test_binary()).unwrap());
    assert_eq!(stat, "755 0 0 0");
    assert_eq!(skopeo_layers(&out_ref), 2);

    // docker-archive: the dual shape; skopeo reads it, and its manifest.json is docker load's.
    let archive = tmp.path().join("out.tar");
    let archive_ref = format!("docker-archive:{}", archive.display());
    overlay_to(
        tmp.path(),
        &base_ref,
        "example.com/mosn/proxyv2:v2",
        &archive_ref,
    );
    assert_eq!(skopeo_layers(&archive_ref), 2);
    let mut ar = tar::Archive::new(std::fs::File::open(&archive).unwrap());
    let mut names = Vec::new();
    let mut manifest_json = None;
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        if name == "manifest.json" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            manifest_json = Some(s);
        }
        names.push(name);
    }
    assert!(names.contains(&"oci-layout".to_string()) && names.contains(&"index.json".to_string()));
    let mj: Value = serde_json::from_str(&manifest_json.unwrap()).unwrap();
    assert_eq!(mj[0]["RepoTags"][0], "example.com/mosn/proxyv2:v2");
    assert_eq!(mj[0]["Layers"].as_array().unwrap().len(), 2);
    // Our dual-shape archive is itself a base (read through its OCI part).
    let again = tmp.path().join("again");
    let again_ref = format!("oci:{}:v3", again.display());
    overlay_to(
        tmp.path(),
        &archive_ref,
        "example.com/mosn/proxyv2:v3",
        &again_ref,
    );
    assert_eq!(skopeo_layers(&again_ref), 3);
    let (bytes, _) = umoci_mosn(&again, "v3", tmp.path());
    assert_eq!(bytes, std::fs::read(test_binary()).unwrap());

    // No temporary files left next to the outputs.
    for d in [tmp.path(), out_dir.as_path()] {
        for e in std::fs::read_dir(d).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!n.ends_with(".tmp"), "leftover {n}");
        }
    }
}

#[test]
fn docker_archive_base_pushes_its_layers() {
    let reg = Registry::start(Auth::None);
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("base.tar");
    docker_archive_base(&archive, "amd64");
    let dst = format!("{}/fromarchive:v1", reg.host());
    let out = overlay(
        tmp.path(),
        &[
            "--base",
            &format!("docker-archive:{}", archive.display()),
            "--tag",
            &dst,
            "--push",
        ],
    );
    assert!(out.status.success());
    let layout = tmp.path().join("pulled");
    let out = pull_to_oci(&dst, &layout, &[]);
    assert!(
        out.status.success(),
        "every blob is in the registry and verifies"
    );
    let (bytes, _) = umoci_mosn(&layout, "v1", tmp.path());
    assert_eq!(bytes, std::fs::read(test_binary()).unwrap());
}

/// Push the amd64 and arm64 Docker bases plus a stand-in attestation manifest, and an OCI
/// index over them at `base:multi`.
fn multi_arch_base(reg: &Registry, tmp: &std::path::Path) -> Value {
    let mut entries = Vec::new();
    for arch in ["amd64", "arm64"] {
        let archive = tmp.join(format!("{arch}.tar"));
        docker_archive_base(&archive, arch);
        let image = format!("{}/base:{arch}", reg.host());
        push_archive(&archive, &image);
        let raw = skopeo_raw(&image, false, None);
        entries.push(serde_json::json!({
            "mediaType": DOCKER_MANIFEST,
            "digest": digest(&raw),
            "size": raw.len(),
            "platform": {"architecture": arch, "os": "linux"}
        }));
    }
    let att = format!("{}/base:att", reg.host());
    push_archive(&tmp.join("amd64.tar"), &att);
    let raw = skopeo_raw(&att, false, None);
    entries.push(serde_json::json!({
        "mediaType": DOCKER_MANIFEST,
        "digest": digest(&raw),
        "size": raw.len(),
        "platform": {"architecture": "unknown", "os": "unknown"},
        "annotations": {
            "vnd.docker.reference.type": "attestation-manifest",
            "vnd.docker.reference.digest": entries[0]["digest"].clone()
        }
    }));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries
    });
    curl_put_manifest(
        &reg.host(),
        "base",
        "multi",
        "application/vnd.oci.image.index.v1+json",
        &serde_json::to_vec(&index).unwrap(),
    );
    index
}

#[test]
fn multi_arch_index_overlays_matching_platforms_and_drops_attestations() {
    let reg = Registry::start(Auth::None);
    let tmp = tempfile::tempdir().unwrap();
    let base_index = multi_arch_base(&reg, tmp.path());
    let arm = fake_arm64_binary(tmp.path());
    let base = format!("{}/base:multi", reg.host());

    // Both architectures: two children, same index type, attestation gone.
    let dst = format!("{}/multi:both", reg.host());
    let mut c = mosnctl(&empty_docker_config(tmp.path()));
    c.args([
        "overlay", "--base", &base, "--tag", &dst, "--push", "--binary",
    ])
    .arg(test_binary())
    .arg("--binary")
    .arg(&arm);
    let pushed = printed_digest(&ok(c));
    let raw = skopeo_raw(&dst, false, None);
    assert_eq!(digest(&raw), pushed);
    let idx: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(idx["mediaType"], base_index["mediaType"]);
    let children = idx["manifests"].as_array().unwrap();
    assert_eq!(children.len(), 2, "attestation dropped: {idx}");
    for (child, arch) in children.iter().zip(["amd64", "arm64"]) {
        assert_eq!(child["platform"]["architecture"], arch);
        assert!(child.get("annotations").is_none());
        let m: Value = serde_json::from_slice(&skopeo_raw(
            &format!("{}/multi@{}", reg.host(), child["digest"].as_str().unwrap()),
            false,
            None,
        ))
        .unwrap();
        assert_eq!(m["mediaType"], DOCKER_MANIFEST);
        assert_eq!(m["layers"].as_array().unwrap().len(), 2);
    }
    assert_ne!(children[0]["digest"], children[1]["digest"]);
    let out = skopeo(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{dst}"),
        &format!("oci:{}:all", tmp.path().join("all").display()),
    ]);
    assert!(out.status.success(), "every blob of every child verifies");

    // The same into an OCI layout: an OCI index (children converted to OCI types) that
    // skopeo reads and copies with every blob verified.
    let layout = tmp.path().join("multi-oci");
    let mut c = mosnctl(&empty_docker_config(tmp.path()));
    c.args(["overlay", "--base", &base, "--tag", &dst, "--binary"])
        .arg(test_binary())
        .arg("--binary")
        .arg(&arm)
        .arg("--output")
        .arg(format!("oci:{}:multi", layout.display()));
    ok(c);
    let out = skopeo(&[
        "inspect",
        "--raw",
        &format!("oci:{}:multi", layout.display()),
    ]);
    assert!(out.status.success());
    let idx: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(idx["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(idx["manifests"].as_array().unwrap().len(), 2);
    assert_eq!(
        idx["manifests"][1]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let out = skopeo(&[
        "copy",
        "--all",
        &format!("oci:{}:multi", layout.display()),
        &format!("oci:{}:copy", tmp.path().join("multi-copy").display()),
    ]);
    assert!(out.status.success());

    // One architecture: one child.
    let dst1 = format!("{}/multi:amd64", reg.host());
    let out = overlay(tmp.path(), &["--base", &base, "--tag", &dst1, "--push"]);
    assert!(out.status.success());
    let idx: Value = serde_json::from_slice(&skopeo_raw(&dst1, false, None)).unwrap();
    assert_eq!(idx["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(idx["manifests"][0]["platform"]["architecture"], "amd64");

    // A platform the base lacks is an error that lists what it has.
    let out = overlay(
        tmp.path(),
        &[
            "--base",
            &base,
            "--tag",
            &dst1,
            "--push",
            "--platform",
            "linux/s390x",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no platform linux/s390x")
            && err.contains("linux/arm64")
            && err.contains("\n\nhelp: pick one of the base's platforms"),
        "{err}"
    );

    // A single-platform base for another architecture.
    let out = overlay(
        tmp.path(),
        &[
            "--base",
            &format!("{}/base:arm64", reg.host()),
            "--tag",
            &dst1,
            "--push",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the base is for linux/arm64, but the binary is for linux/amd64"),
        "{err}"
    );
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The command failed, and its stderr says each of `wants`.
fn fails_with(out: &std::process::Output, wants: &[&str]) {
    let err = stderr_of(out);
    assert!(!out.status.success(), "{err}");
    for w in wants {
        assert!(err.contains(w), "missing {w:?} in:\n{err}");
    }
}

#[test]
fn each_failure_has_its_own_message() {
    let (reg, tmp, _) = registry_with_docker_base();
    let dst = format!("{}/err:v1", reg.host());

    let out = overlay(
        tmp.path(),
        &[
            "--base",
            &format!("{}/base:nope", reg.host()),
            "--tag",
            &dst,
            "--push",
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("base:nope not found"),
        "{}",
        stderr_of(&out)
    );

    let dead = format!("127.0.0.1:{}", free_port());
    let out = overlay(
        tmp.path(),
        &["--base", &format!("{dead}/x:y"), "--tag", &dst, "--push"],
    );
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains(&format!("cannot reach the registry {dead}")));

    let out = overlay(
        tmp.path(),
        &[
            "--base",
            &format!("{}/base:docker", reg.host()),
            "--tag",
            &dst,
        ],
    );
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("nothing to do"));

    let base = format!("{}/base:docker", reg.host());

    // A digest is not a name a result can be pushed under.
    let digest_tag = format!("{}/err@sha256:{}", reg.host(), "0".repeat(64));
    let out = overlay(
        tmp.path(),
        &["--base", &base, "--tag", &digest_tag, "--push"],
    );
    fails_with(&out, &["names a digest", "help: give a tag"]);

    // Without --binary the proxy is built first, but bad names fail before that: with no
    // cargo on PATH, a build attempt would fail differently.
    let early: [(&[&str], &[&str]); 2] = [
        (
            &["--base", "oci-archive:base.tar", "--tag", &dst, "--push"],
            &["`oci-archive:` images are not supported"],
        ),
        (
            &["--engine", "--base", "oci:./base", "--tag", &dst, "--push"],
            &[
                "--engine builds FROM a registry image",
                "help: drop --engine",
            ],
        ),
    ];
    for (args, wants) in early {
        let mut c = mosnctl(&empty_docker_config(tmp.path()));
        c.env("PATH", "/nonexistent").arg("overlay").args(args);
        fails_with(&run(c), wants);
    }

    // --smoke needs the result in an engine (or a registry it can pull from).
    let smoke_out = format!("oci:{}", tmp.path().join("smoke-oci").display());
    let out = overlay(
        tmp.path(),
        &[
            "--base", &base, "--tag", &dst, "--output", &smoke_out, "--smoke",
        ],
    );
    fails_with(&out, &["\n\nhelp: add --load"]);

    let cases: [(&str, &[u8], u32, &str); 2] = [
        ("not-exec", b"\x7fELF", 0o644, "is not executable"),
        (
            "script",
            b"#!/bin/sh\necho hi\n",
            0o755,
            "is not an ELF executable",
        ),
    ];
    for (name, data, mode, msg) in cases {
        let p = tmp.path().join(name);
        std::fs::write(&p, data).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        let mut c = mosnctl(&empty_docker_config(tmp.path()));
        c.args([
            "overlay", "--base", &base, "--tag", &dst, "--push", "--binary",
        ])
        .arg(&p);
        let out = run(c);
        assert!(!out.status.success());
        assert!(stderr_of(&out).contains(msg), "{}", stderr_of(&out));
    }
    let mut c = mosnctl(&empty_docker_config(tmp.path()));
    c.args([
        "overlay", "--base", &base, "--tag", &dst, "--push", "--binary",
    ])
    .arg(tmp.path().join("missing"));
    let out = run(c);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("does not exist"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn disk_full_leaves_no_partial_output() {
    let tmp = tempfile::tempdir().unwrap();
    let small = tmp.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&small)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("skipped: cannot mount a small tmpfs here (needs root)");
        return;
    }
    let base = tmp.path().join("base");
    umoci_base(&base, "v1");
    let archive = small.join("out.tar");
    let out = overlay(
        tmp.path(),
        &[
            "--base",
            &format!("oci:{}:v1", base.display()),
            "--tag",
            "x/y:z",
            "--output",
            &format!("docker-archive:{}", archive.display()),
        ],
    );
    let left: Vec<_> = std::fs::read_dir(&small)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let _ = std::process::Command::new("umount").arg(&small).status();
    assert!(
        !out.status.success(),
        "a 256 KiB disk cannot hold the archive"
    );
    assert!(
        stderr_of(&out).contains("No space left on device"),
        "{}",
        stderr_of(&out)
    );
    assert!(left.is_empty(), "nothing left behind: {left:?}");
}
