//! A private dockerd for the engine tests.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A private `dockerd` (own data root, exec root and socket; no iptables, no bridge),
/// stopped on drop. `None` when `MOSNCTL_SKIP_ENGINE_TESTS` is set; otherwise a dockerd
/// that does not start fails the test.
pub struct Dockerd {
    /// Temp dir holding the socket, data root and log.
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Dockerd {
    /// Start it and wait for `/_ping`.
    pub fn start() -> Option<Dockerd> {
        if std::env::var_os("MOSNCTL_SKIP_ENGINE_TESTS").is_some() {
            eprintln!("skipped: MOSNCTL_SKIP_ENGINE_TESTS is set");
            return None;
        }
        // Short paths: unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("dkd")
            .tempdir_in("/tmp")
            .unwrap();
        let p = dir.path();
        let log = std::fs::File::create(p.join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--host")
            .arg(format!("unix://{}", p.join("docker.sock").display()))
            .arg("--data-root")
            .arg(p.join("data"))
            .arg("--exec-root")
            .arg(p.join("exec"))
            .arg("--pidfile")
            .arg(p.join("docker.pid"))
            .args(["--iptables=false", "--bridge=none"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd is installed (apt-get install docker.io); set MOSNCTL_SKIP_ENGINE_TESTS=1 to skip");
        let d = Dockerd { dir, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new("curl")
                .args(["-s", "--unix-socket"])
                .arg(d.socket())
                .arg("http://localhost/_ping")
                .output()
                .unwrap();
            if out.stdout == b"OK" {
                return Some(d);
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not start (set MOSNCTL_SKIP_ENGINE_TESTS=1 to skip): {}",
                std::fs::read_to_string(d.dir.path().join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The API socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// `DOCKER_HOST` value.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// GET a JSON document from the engine API.
    pub fn api(&self, path: &str) -> Value {
        let out = Command::new("curl")
            .args(["-sf", "--unix-socket"])
            .arg(self.socket())
            .arg(format!("http://localhost{path}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "GET {path} failed");
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM lets dockerd stop its own containerd and unmount its overlays.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut exited = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // dockerd leaves some mounts behind (exec/netns/default, sometimes the data root);
        // unmount everything under our dir, deepest first, so the temp dir can be removed.
        let root = self.dir.path().to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&root))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount").arg(m).status();
        }
    }
}
