//! Throwaway Istio checkouts for the patch and build-image tests.
//!
//! Istio's files are not in this repository, so each fixture file is rebuilt from the patch
//! itself: the pre-image of every hunk (its context and `-` lines) at the line the hunk header
//! names, with filler lines around it. The reconstruction is independent of mosnctl's own diff
//! reader, and `git apply --check` confirms the fixtures are what the patch expects.
//! `bin/update_proxy.sh` also gets the first `until curl … done` loop (the
//! `$ISTIO_ENVOY_RELEASE_URL` one, outside the hunk), so the tests can see that only the
//! `WASM_URL` loop is commented out.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

pub const PATCH: &str = include_str!("../../istio-patches/1.10.6/wasm-disable.patch");
pub const SHA_1_10_4: &str = "6a2597296110a21043af384282539739d996c0ad";

/// Per file: pre-image and post-image text, rebuilt from the patch.
pub fn images() -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    let mut file: Option<String> = None;
    let (mut pre, mut post): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    let flush = |file: &Option<String>,
                 pre: &mut Vec<String>,
                 post: &mut Vec<String>,
                 out: &mut BTreeMap<String, (String, String)>| {
        if let Some(f) = file {
            // A little filler after the last hunk, as in the real files.
            for v in [&mut *pre, &mut *post] {
                v.push("# end of fixture".into());
            }
            out.insert(f.clone(), (pre.join("\n") + "\n", post.join("\n") + "\n"));
        }
        pre.clear();
        post.clear();
    };
    for line in PATCH.lines() {
        if let Some(p) = line.strip_prefix("+++ b/") {
            flush(&file, &mut pre, &mut post, &mut out);
            file = Some(p.to_string());
        } else if let Some(h) = line.strip_prefix("@@ -") {
            let start: usize = h.split([',', ' ']).next().unwrap().parse().unwrap();
            // Filler up to the hunk's first line, the same on both sides (hunks do not change
            // line counts in this patch).
            while pre.len() + 1 < start {
                let n = pre.len() + 1;
                let l = filler(file.as_deref().unwrap(), n);
                pre.push(l.clone());
                post.push(l);
            }
        } else if line.starts_with("--- ")
            || line.starts_with("diff ")
            || line.starts_with("index ")
        {
        } else if let Some(l) = line.strip_prefix(' ') {
            pre.push(l.into());
            post.push(l.into());
        } else if let Some(l) = line.strip_prefix('-') {
            pre.push(l.into());
        } else if let Some(l) = line.strip_prefix('+') {
            post.push(l.into());
        } else if line.is_empty() && file.is_some() {
            pre.push(String::new());
            post.push(String::new());
        }
    }
    flush(&file, &mut pre, &mut post, &mut out);
    out
}

/// Line `n` of the filler; in update_proxy.sh, lines 38-42 hold the release-URL loop.
fn filler(file: &str, n: usize) -> String {
    if file == "bin/update_proxy.sh" {
        let first_loop = [
            r#"printf "Verifying %s is available\n" "$ISTIO_ENVOY_RELEASE_URL""#,
            r#"until curl --output /dev/null --silent --head --fail "$ISTIO_ENVOY_RELEASE_URL"; do"#,
            "    printf '.'",
            "    sleep $SLEEP_TIME",
            "done",
        ];
        if (38..=42).contains(&n) {
            return first_loop[n - 38].to_string();
        }
    }
    format!("# fixture line {n}")
}

pub fn git(dir: &Path, args: &[&str]) -> Output {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .expect("git must be installed for these tests")
}

/// Write the original files (0755 for the scripts, as in Istio).
pub fn write_tree(dir: &Path) {
    for (rel, (pre, _)) in images() {
        let p = dir.join(&rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, pre).unwrap();
        let mode = if rel.ends_with(".sh") { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// A git repository holding the original files, tagged `tag`.
pub fn git_tree(tag: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write_tree(d.path());
    assert!(git(d.path(), &["init", "-q"]).status.success());
    git(d.path(), &["add", "-A"]);
    assert!(git(d.path(), &["commit", "-q", "-m", "fixture"])
        .status
        .success());
    assert!(git(d.path(), &["tag", tag]).status.success());
    d
}

pub fn snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    images()
        .keys()
        .map(|rel| {
            let p = dir.join(rel);
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            (rel.clone(), (std::fs::read(&p).unwrap(), mode))
        })
        .collect()
}
