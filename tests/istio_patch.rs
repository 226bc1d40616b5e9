//! `mosnctl patch-istio` through the real binary, on throwaway checkouts (see
//! `istio_fixture`: files rebuilt from the patch's own hunks, never Istio's files).

mod istio_fixture;

use std::path::Path;
use std::process::{Command, Output};

use istio_fixture::{git, git_tree, images, snapshot, write_tree, PATCH, SHA_1_10_4};

fn mosnctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mosnctl"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run mosnctl")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn istio(dir: &Path) -> String {
    dir.display().to_string()
}

#[test]
fn fixtures_are_what_git_apply_expects() {
    let d = git_tree("1.10.6");
    let patch = d.path().join("p.patch");
    std::fs::write(&patch, PATCH).unwrap();
    let o = git(d.path(), &["apply", "--check", patch.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn check_apply_is_idempotent_and_revert_restores_byte_for_byte() {
    let d = git_tree("1.10.6");
    let dir = istio(d.path());
    let before = snapshot(d.path());

    let o = mosnctl(&["patch-istio", "--istio", &dir, "--check"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("Istio 1.10.6 (from git tag 1.10.6)"), "{out}");
    assert!(
        out.contains("bin/init.sh") && out.contains("can be patched"),
        "{out}"
    );
    assert_eq!(snapshot(d.path()), before, "--check must not write");

    let o = mosnctl(&["patch-istio", "--istio", &dir]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("patched 5 files"), "{}", text(&o));
    for (rel, (_, post)) in images() {
        assert_eq!(
            std::fs::read_to_string(d.path().join(&rel)).unwrap(),
            post,
            "{rel}"
        );
    }
    // git agrees: the reverse patch applies, and the diff is the patch's.
    let patch = d.path().join("p.patch");
    std::fs::write(&patch, PATCH).unwrap();
    let o = git(
        d.path(),
        &["apply", "--check", "-R", patch.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o));
    std::fs::remove_file(&patch).unwrap();
    // Permission bits survive the atomic rewrite.
    let after = snapshot(d.path());
    assert_eq!(after["bin/init.sh"].1, 0o755);
    assert_eq!(after["pkg/config/constants/constants.go"].1, 0o644);

    // Only the WASM_URL loop is commented out; the release-URL loop stays.
    let up = std::fs::read_to_string(d.path().join("bin/update_proxy.sh")).unwrap();
    assert!(up.contains(
        "\nuntil curl --output /dev/null --silent --head --fail \"$ISTIO_ENVOY_RELEASE_URL\"; do\n"
    ));
    assert!(
        up.contains("\n# until curl --output /dev/null --silent --head --fail \"$WASM_URL\"; do\n")
    );
    assert!(up.contains("\nplugin=metadata_exchange\n"));
    assert_eq!(up.matches("\ndone\n").count(), 1, "{up}");
    let go = std::fs::read_to_string(d.path().join("pkg/config/constants/constants.go")).unwrap();
    assert!(go.contains("\tBinaryPathFilename = \"/usr/local/bin/mosn\"\n"));

    // Again: nothing to do, nothing written (not even the same bytes: mtimes stay).
    let mtime = |p: &str| {
        std::fs::metadata(d.path().join(p))
            .unwrap()
            .modified()
            .unwrap()
    };
    let m0 = mtime("bin/init.sh");
    let o = mosnctl(&["patch-istio", "--istio", &dir]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("already patched: nothing changed"),
        "{}",
        text(&o)
    );
    assert_eq!(snapshot(d.path()), after);
    assert_eq!(mtime("bin/init.sh"), m0);
    let o = mosnctl(&["patch-istio", "--istio", &dir, "--check"]);
    assert!(o.status.success());
    assert!(text(&o).contains("already patched"), "{}", text(&o));

    let o = mosnctl(&["patch-istio", "--istio", &dir, "--revert"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        snapshot(d.path()),
        before,
        "revert must restore bytes and modes"
    );
    let st = git(d.path(), &["status", "--porcelain"]);
    assert!(st.stdout.is_empty(), "{}", text(&st));
    let o = mosnctl(&["patch-istio", "--istio", &dir, "--revert"]);
    assert!(o.status.success());
    assert!(text(&o).contains("already original"), "{}", text(&o));
}

#[test]
fn drifted_file_changes_nothing_and_names_file_and_hunk() {
    let d = git_tree("1.10.6");
    let mk = d.path().join("tools/istio-docker.mk");
    let drifted = std::fs::read_to_string(&mk).unwrap().replace(
        "docker.proxyv2: $(ISTIO_ENVOY_LINUX_RELEASE_DIR)/stats-filter.wasm\n",
        "docker.proxyv2: $(ISTIO_ENVOY_LINUX_RELEASE_DIR)/stats-filter-v2.wasm\n",
    );
    std::fs::write(&mk, drifted).unwrap();
    let before = snapshot(d.path());
    let o = mosnctl(&["patch-istio", "--istio", &istio(d.path())]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        err.contains("error: the patch 1.10.6/wasm-disable.patch does not fit"),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(
        err.contains("tools/istio-docker.mk: hunk #2 (@@ -91,10 +91,10 @@)"),
        "{err}"
    );
    assert!(
        !err.contains("hunk #1"),
        "only the drifted hunk is named: {err}"
    );
    assert!(err.contains("\n\nhelp: "), "{err}");
    // Files before the drifted one in patch order were not touched either.
    assert_eq!(snapshot(d.path()), before);
    let o = mosnctl(&["patch-istio", "--istio", &istio(d.path()), "--check"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("DOES NOT FIT"), "{}", text(&o));
    let o = mosnctl(&["patch-istio", "--istio", &istio(d.path()), "--revert"]);
    assert!(!o.status.success());
    assert_eq!(snapshot(d.path()), before);
}

#[test]
fn partly_patched_tree_is_finished_and_reverted() {
    let d = git_tree("1.10.6");
    let all = images();
    let (_, post) = &all["pilot/docker/Dockerfile.proxyv2"];
    std::fs::write(d.path().join("pilot/docker/Dockerfile.proxyv2"), post).unwrap();
    let o = mosnctl(&["patch-istio", "--istio", &istio(d.path()), "--check"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("partly patched (1 of 6 hunks applied)"),
        "{}",
        text(&o)
    );
    let o = mosnctl(&["patch-istio", "--istio", &istio(d.path())]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("patched 4 files"), "{}", text(&o));
    for (rel, (_, post)) in &all {
        assert_eq!(&std::fs::read_to_string(d.path().join(rel)).unwrap(), post);
    }
}

#[test]
fn unknown_and_later_versions() {
    let d = git_tree("1.11.0");
    let o = mosnctl(&["patch-istio", "--istio", &istio(d.path())]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        err.contains("error: no wasm patch for Istio 1.11.0 (from git tag 1.11.0)"),
        "{err}"
    );
    assert!(
        err.contains("1.10.0, 1.10.1, 1.10.2, 1.10.3, 1.10.4, 1.10.5, 1.10.6"),
        "{err}"
    );
    assert!(err.contains("mosnctl overlay"), "{err}");

    let o = mosnctl(&[
        "patch-istio",
        "--istio",
        &istio(d.path()),
        "--istio-version",
        "1.15.3",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("hard-codes SIDECAR=envoy"), "{err}");
    assert!(err.contains("no wasm patch for Istio 1.15.3"), "{err}");

    let before = snapshot(d.path());
    let o = mosnctl(&[
        "patch-istio",
        "--istio",
        &istio(d.path()),
        "--istio-version",
        "1.18.2",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("needs no wasm patch"), "{}", text(&o));
    assert!(text(&o).contains("mosnctl overlay"), "{}", text(&o));
    assert_eq!(snapshot(d.path()), before);

    let o = mosnctl(&[
        "patch-istio",
        "--istio",
        &istio(d.path()),
        "--istio-version",
        "banana",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("is not an Istio version"), "{}", text(&o));
}

#[test]
fn describe_and_non_git_fallbacks() {
    // A commit after the tag: `git describe`.
    let d = git_tree("1.10.6");
    git(d.path(), &["commit", "-q", "--allow-empty", "-m", "local"]);
    let o = mosnctl(&["patch-istio", "--istio", &istio(d.path()), "--check"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("1 commits after tag 1.10.6"),
        "{}",
        text(&o)
    );

    // No git: istio.deps names the release.
    let d = tempfile::tempdir().unwrap();
    write_tree(d.path());
    std::fs::write(
        d.path().join("istio.deps"),
        format!("[\n  {{\n    \"name\": \"PROXY_REPO_SHA\",\n    \"lastStableSHA\": \"{SHA_1_10_4}\"\n  }}\n]\n"),
    )
    .unwrap();
    let o = mosnctl(&["patch-istio", "--istio", &istio(d.path())]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("Istio 1.10.4 (from istio.deps"),
        "{}",
        text(&o)
    );

    // Unknown pin: the Makefile's minor default, and the hunks decide.
    let d = tempfile::tempdir().unwrap();
    write_tree(d.path());
    std::fs::write(
        d.path().join("Makefile.core.mk"),
        "export VERSION ?= 1.10-dev\n",
    )
    .unwrap();
    let o = mosnctl(&["patch-istio", "--istio", &istio(d.path()), "--check"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("Istio 1.10 (from Makefile.core.mk"),
        "{}",
        text(&o)
    );

    // Nothing to go on.
    let d = tempfile::tempdir().unwrap();
    write_tree(d.path());
    let o = mosnctl(&["patch-istio", "--istio", &istio(d.path())]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("help: ") && text(&o).contains("--istio-version"),
        "{}",
        text(&o)
    );
    let o = mosnctl(&[
        "patch-istio",
        "--istio",
        &istio(d.path()),
        "--istio-version",
        "1.10.6",
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn missing_file_is_named() {
    let d = git_tree("1.10.6");
    std::fs::remove_file(d.path().join("bin/update_proxy.sh")).unwrap();
    let before: Vec<_> = ["bin/init.sh", "tools/istio-docker.mk"]
        .iter()
        .map(|p| std::fs::read(d.path().join(p)).unwrap())
        .collect();
    let o = mosnctl(&["patch-istio", "--istio", &istio(d.path())]);
    assert!(!o.status.success());
    assert!(text(&o).contains("bin/update_proxy.sh"), "{}", text(&o));
    let after: Vec<_> = ["bin/init.sh", "tools/istio-docker.mk"]
        .iter()
        .map(|p| std::fs::read(d.path().join(p)).unwrap())
        .collect();
    assert_eq!(before, after);
}
