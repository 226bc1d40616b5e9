//! Real peers for the image tests: Debian's `docker-registry` on a loopback port (no auth,
//! htpasswd + TLS, or token auth through a small token server run here), `skopeo` and
//! `umoci` to make bases and check results, and `gcc` for a static test binary.

#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

mod dockerd;
mod token;

#[allow(unused_imports)]
pub use dockerd::Dockerd;
#[allow(unused_imports)]
pub use token::{identity_token, TokenServer};

/// The `mosnctl` binary with an empty docker config (no host credentials leak in) and no
/// `SOURCE_DATE_EPOCH` unless a test sets one.
pub fn mosnctl(docker_config: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mosnctl"));
    c.env("DOCKER_CONFIG", docker_config)
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("DOCKER_HOST")
        .env("NO_COLOR", "1");
    c
}

/// `mosnctl overlay --binary BINARY ARGS...`; add `DOCKER_HOST` and the like to the result.
pub fn overlay_cmd(docker_config: &Path, binary: &Path, args: &[&str]) -> Command {
    let mut c = mosnctl(docker_config);
    c.arg("overlay").arg("--binary").arg(binary).args(args);
    c
}

/// Run, echo stderr (shown for failing tests), return the output.
pub fn run(mut c: Command) -> Output {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    eprintln!(
        "--- {c:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run and require success; returns stdout.
pub fn ok(c: Command) -> String {
    let out = run(c);
    assert!(out.status.success(), "command failed");
    String::from_utf8(out.stdout).unwrap()
}

/// The `sha256:` digest mosnctl printed on its final line.
pub fn printed_digest(stdout: &str) -> String {
    let line = stdout.lines().last().expect("a final line");
    let i = line.find("@sha256:").expect("a digest on the final line") + 1;
    line[i..i + 71].to_string()
}

/// `skopeo` with the policy check off (the tests have no policy.json).
pub fn skopeo(args: &[&str]) -> Output {
    let mut c = Command::new("skopeo");
    c.arg("--insecure-policy").args(args);
    run(c)
}

/// `skopeo inspect --raw` (or `--config --raw`) bytes of a registry image.
pub fn skopeo_raw(image: &str, config: bool, ca_dir: Option<&Path>) -> Vec<u8> {
    let mut args = vec!["inspect", "--raw"];
    if config {
        args.push("--config");
    }
    let certs;
    match ca_dir {
        Some(d) => {
            certs = format!("--cert-dir={}", d.display());
            args.push(&certs);
        }
        None => args.push("--tls-verify=false"),
    }
    let full = format!("docker://{image}");
    args.push(&full);
    let out = skopeo(&args);
    assert!(out.status.success(), "skopeo inspect failed");
    out.stdout
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How the registry authenticates.
pub enum Auth {
    /// Anonymous push and pull.
    None,
    /// htpasswd (bcrypt) behind TLS with a self-signed certificate.
    HtpasswdTls { user: String, pass: String },
    /// Bearer tokens from `realm`, signed by the key of `cert`.
    Token { realm: String, cert: PathBuf },
}

/// A running `docker-registry`, killed on drop.
pub struct Registry {
    /// Loopback port.
    pub port: u16,
    /// Temp dir holding config, storage, certificates and the log.
    pub dir: tempfile::TempDir,
    child: Child,
    /// TLS certificate (PEM) when TLS is on.
    pub cert: Option<PathBuf>,
}

impl Registry {
    /// Start a registry with filesystem storage in a temp dir.
    pub fn start(auth: Auth) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cert = None;
        let mut extra = String::new();
        match &auth {
            Auth::None => {}
            Auth::HtpasswdTls { user, pass } => {
                let (c, k) = self_signed(dir.path(), "registry");
                let htpasswd = dir.path().join("htpasswd");
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, pass])
                    .output()
                    .expect("htpasswd (apache2-utils) is installed");
                assert!(out.status.success());
                std::fs::write(&htpasswd, out.stdout).unwrap();
                extra = format!(
                    "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                    c.display(),
                    k.display(),
                    htpasswd.display()
                );
                cert = Some(c);
            }
            Auth::Token { realm, cert: c } => {
                extra = format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: test-registry\n    issuer: test-issuer\n    rootcertbundle: {}\n",
                    c.display()
                );
            }
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
            dir.path().join("data").display()
        );
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry is installed (apt-get install docker-registry)");
        let reg = Registry {
            port,
            dir,
            child,
            cert,
        };
        reg.wait_ready();
        reg
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let scheme = if self.cert.is_some() { "https" } else { "http" };
        loop {
            let out = Command::new("curl")
                .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("{scheme}://127.0.0.1:{}/v2/", self.port))
                .output()
                .unwrap();
            let code = String::from_utf8_lossy(&out.stdout).to_string();
            if code == "200" || code == "401" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "registry did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// A directory skopeo's `--cert-dir` accepts for this registry's CA.
    pub fn cert_dir(&self) -> Option<PathBuf> {
        let c = self.cert.as_ref()?;
        let d = self.dir.path().join("certs.d");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(c, d.join("ca.crt")).unwrap();
        Some(d)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed RSA certificate for 127.0.0.1/localhost: (cert.pem, key.pem).
pub fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ])
        .arg(format!("/CN={name}"))
        .args([
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            // A leaf, not a CA: rustls refuses a CA certificate as the server's own.
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl req failed: {out:?}");
    (cert, key)
}

/// A docker `config.json` directory with `auths` for `host`.
pub fn docker_config(dir: &Path, host: &str, user: &str, pass: &str) -> PathBuf {
    let d = dir.join("docker-config");
    std::fs::create_dir_all(&d).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    std::fs::write(
        d.join("config.json"),
        serde_json::to_vec(&json!({"auths": {host: {"auth": auth}}})).unwrap(),
    )
    .unwrap();
    d
}

/// An empty docker config directory.
pub fn empty_docker_config(dir: &Path) -> PathBuf {
    let d = dir.join("docker-config-empty");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A static test binary (prints `mosn test 1.0`), built once per test binary.
pub fn test_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("overlay-bin");
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("mosn.c");
        std::fs::write(
            &src,
            "#include <stdio.h>\nint main(void){puts(\"mosn test 1.0\");return 0;}\n",
        )
        .unwrap();
        let bin = dir.join("mosn");
        let out = Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(&bin)
            .arg(&src)
            .output()
            .expect("gcc is installed");
        assert!(out.status.success(), "gcc -static failed: {out:?}");
        bin
    })
}

/// A copy of the test binary whose ELF header claims aarch64 (enough for arch matching).
pub fn fake_arm64_binary(dir: &Path) -> PathBuf {
    let mut data = std::fs::read(test_binary()).unwrap();
    data[18..20].copy_from_slice(&183u16.to_le_bytes());
    let p = dir.join("mosn-arm64");
    std::fs::write(&p, data).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A plain tar (as `docker save` stores layers) of `(path, mode, content)` entries.
pub fn layer_tar(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, mode, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// `sha256:<hex>` of some bytes, as registries and manifests write digests.
pub fn digest(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{:x}", sha2::Sha256::digest(data))
}

/// The Docker-typed proxyv2-like config: Docker-only fields (`Healthcheck`, `Shell`,
/// `OnBuild`, `ArgsEscaped`, `container_config`, `docker_version`) that must survive.
pub fn docker_config_json(arch: &str, diff_id: &str) -> Value {
    json!({
        "architecture": arch,
        "config": {
            "User": "1337",
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "ISTIO_META_ISTIO_PROXY_SHA=abc"],
            "Entrypoint": ["/usr/local/bin/pilot-agent"],
            "WorkingDir": "/",
            "Labels": {"org.example": "base"},
            "Healthcheck": {"Test": ["CMD", "/usr/local/bin/pilot-agent", "--health"], "Interval": 30000000000u64},
            "Shell": ["/bin/bash", "-c"],
            "OnBuild": null,
            "ArgsEscaped": true
        },
        "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) ENTRYPOINT [\"/usr/local/bin/pilot-agent\"]"]},
        "created": "2021-10-01T00:00:00Z",
        "docker_version": "20.10.7",
        "history": [{"created": "2021-10-01T00:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file:base in / "}],
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}
    })
}

/// Write a legacy `docker save` archive with one layer and the Docker-typed config.
pub fn docker_archive_base(path: &Path, arch: &str) -> Value {
    let layer = layer_tar(&[
        (
            "usr/local/bin/pilot-agent",
            0o755,
            b"#!/bin/sh\necho pilot-agent\n",
        ),
        ("usr/local/bin/mosn", 0o700, b"old stub mosn"),
        (
            "lib/x86_64-linux-gnu/libc-2.27.so",
            0o755,
            b"not really libc",
        ),
        ("etc/istio/proxy/envoy_bootstrap_tmpl.json", 0o644, b"{}"),
    ]);
    let config = docker_config_json(arch, &digest(&layer));
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let cfg_name = format!("{}.json", &digest(&config_bytes)[7..]);
    let manifest =
        json!([{"Config": cfg_name, "RepoTags": ["base:latest"], "Layers": ["layer0/layer.tar"]}]);
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [
        (cfg_name.as_str(), config_bytes.as_slice()),
        ("layer0/layer.tar", layer.as_slice()),
        ("manifest.json", &serde_json::to_vec(&manifest).unwrap()),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    }
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
    config
}

/// Push a docker-archive to `host/repo:tag` with skopeo (keeps the Docker media types).
pub fn push_archive(archive: &Path, image: &str) {
    let src = format!("docker-archive:{}", archive.display());
    let dst = format!("docker://{image}");
    let out = skopeo(&["copy", "--dest-tls-verify=false", &src, &dst]);
    assert!(out.status.success(), "skopeo copy to the registry failed");
}

/// An OCI-typed base made with umoci: `DIR:tag` with a pilot-agent stub.
pub fn umoci_base(layout: &Path, tag: &str) {
    let image = format!("{}:{tag}", layout.display());
    let bundle = layout.with_extension("bundle");
    let umoci = |args: &[&str]| {
        let mut c = Command::new("umoci");
        c.args(args);
        let out = run(c);
        assert!(out.status.success(), "umoci {args:?} failed");
    };
    if !layout.join("oci-layout").exists() {
        umoci(&["init", "--layout", &layout.display().to_string()]);
    }
    umoci(&["new", "--image", &image]);
    umoci(&[
        "unpack",
        "--rootless",
        "--image",
        &image,
        &bundle.display().to_string(),
    ]);
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("usr/local/bin")).unwrap();
    std::fs::write(rootfs.join("usr/local/bin/pilot-agent"), "stub").unwrap();
    umoci(&["repack", "--image", &image, &bundle.display().to_string()]);
    umoci(&[
        "config",
        "--image",
        &image,
        "--os",
        "linux",
        "--architecture",
        "amd64",
        "--config.entrypoint",
        "/usr/local/bin/pilot-agent",
        "--config.env",
        "A=1",
        "--config.user",
        "1337",
    ]);
    std::fs::remove_dir_all(&bundle).unwrap();
}

/// `skopeo copy docker://IMAGE oci:LAYOUT:v1` from a plain-HTTP loopback registry; skopeo
/// verifies every blob on the way. `extra` adds flags such as `--src-creds=U:P`.
pub fn pull_to_oci(image: &str, layout: &Path, extra: &[&str]) -> Output {
    let (src, dst) = (
        format!("docker://{image}"),
        format!("oci:{}:v1", layout.display()),
    );
    let mut args = vec!["copy", "--src-tls-verify=false"];
    args.extend_from_slice(extra);
    args.extend([src.as_str(), dst.as_str()]);
    skopeo(&args)
}

/// Unpack `layout:tag` with umoci and return the bytes and `stat` of usr/local/bin/mosn.
pub fn umoci_mosn(layout: &Path, tag: &str, scratch: &Path) -> (Vec<u8>, String) {
    let bundle = scratch.join(format!("unpacked-{tag}"));
    let mut c = Command::new("umoci");
    c.args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:{tag}", layout.display()))
        .arg(&bundle);
    let out = run(c);
    assert!(out.status.success(), "umoci unpack failed");
    let f = bundle.join("rootfs/usr/local/bin/mosn");
    let stat = Command::new("stat")
        .args(["-c", "%a %u %g %Y"])
        .arg(&f)
        .output()
        .unwrap();
    (
        std::fs::read(&f).unwrap(),
        String::from_utf8(stat.stdout).unwrap().trim().to_string(),
    )
}

/// PUT a manifest or index with curl (the tests' own way to build a multi-arch base).
pub fn curl_put_manifest(host: &str, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
    let mut child = Command::new("curl")
        .args(["-sf", "-X", "PUT", "-H"])
        .arg(format!("Content-Type: {media_type}"))
        .args(["--data-binary", "@-"])
        .arg(format!("http://{host}/v2/{repo}/manifests/{reference}"))
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();
    assert!(child.wait().unwrap().success(), "PUT manifest failed");
}

/// Push a docker-archive with extra skopeo flags (credentials, certificates).
pub fn push_archive_with(archive: &Path, image: &str, flags: &[&str]) {
    let src = format!("docker-archive:{}", archive.display());
    let dst = format!("docker://{image}");
    let mut args = vec!["copy"];
    args.extend_from_slice(flags);
    args.push(&src);
    args.push(&dst);
    let out = skopeo(&args);
    assert!(out.status.success(), "skopeo copy to the registry failed");
}
