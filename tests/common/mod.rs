//! Helpers shared by the CLI integration tests: run the real `mosnctl` binary, build the
//! proxy once per test binary, and talk HTTP with the real `curl`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The repository root (where `proxy/` lives).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A `mosnctl` command run from the repository root.
pub fn mosnctl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mosnctl"));
    c.current_dir(repo());
    c
}

/// Run and return the output, printing stderr for failing-test diagnostics.
pub fn run(mut c: Command) -> Output {
    let out = c.output().expect("spawn");
    eprintln!("--- {:?}\n{}", c, String::from_utf8_lossy(&out.stderr));
    out
}

/// The proxy built once (debug profile) by `mosnctl build`, shared by the tests of this
/// binary: (dist dir, binary path).
pub fn built_proxy() -> &'static (PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dist = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dist");
        let _ = std::fs::remove_dir_all(&dist);
        let mut c = mosnctl();
        c.args(["build", "--profile", "debug", "--out"]).arg(&dist);
        let out = run(c);
        assert!(out.status.success(), "mosnctl build failed");
        let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        assert!(path.is_file(), "build printed {path:?}");
        (dist, path)
    })
}

/// sha256 of a file, via the library.
pub fn sha(p: &Path) -> String {
    mosnctl::fsutil::sha256_file(p).unwrap()
}

/// A `curl` invocation; returns (status code, headers, body).
pub fn curl(args: &[&str]) -> (u16, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let hdr = dir.path().join("h");
    let out = Command::new("curl")
        .args(["-sS", "--path-as-is", "-D"])
        .arg(&hdr)
        .args(args)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let headers = std::fs::read_to_string(&hdr).unwrap();
    let code = headers.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, headers.to_ascii_lowercase(), out.stdout)
}

/// A running `mosnctl serve-artifacts` on a free port; killed on drop.
pub struct Served {
    pub child: std::process::Child,
    pub base: String,
    pub stdout: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `mosnctl serve-artifacts --dir DIR --addr 127.0.0.1:0` and read the URL it prints.
pub fn serve(dir: &Path) -> Served {
    use std::io::BufRead;
    let mut c = mosnctl();
    c.args(["serve-artifacts", "--addr", "127.0.0.1:0", "--dir"])
        .arg(dir);
    c.stdout(std::process::Stdio::piped());
    let mut child = c.spawn().expect("spawn serve-artifacts");
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut stdout = String::new();
    let mut base = None;
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 0 {
        stdout.push_str(&line);
        if let Some(url) = line.trim().strip_prefix("export ISTIO_ENVOY_RELEASE_URL=") {
            base = Some(url.trim_end_matches("/mosn.tar.gz").to_string());
        }
        if line.contains("ISTIO_ENVOY_MACOS_RELEASE_URL") {
            break;
        }
        line.clear();
    }
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    Served {
        child,
        base: base.expect("serve-artifacts printed no release URL"),
        stdout,
    }
}
