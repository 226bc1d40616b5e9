//! Network namespaces for interception tests: a "pod" and a "node" namespace joined by a veth
//! pair, Istio's iptables rules in the pod, and threads that run a Tokio runtime inside a
//! namespace (sockets belong to the namespace of the thread that creates them).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Istio 1.10's `istio-iptables` nat rules (tools/istio-iptables, default flags: capture all
/// inbound ports, proxy uid/gid 1337, inbound passthrough source 127.0.0.6).
pub const ISTIO_RULES: &str = "*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
";

/// The same rules for IPv6, as `istio-iptables` writes them in a dual-stack pod: the inbound
/// passthrough source is ::6 and the loopback is ::1.
pub fn istio_rules_v6() -> String {
    ISTIO_RULES
        .replace("127.0.0.6/32", "::6/128")
        .replace("127.0.0.1/32", "::1/128")
}

fn run(args: &[&str]) -> Result<Output, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out)
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    /// Its name under /var/run/netns.
    pub name: String,
}

impl Netns {
    /// Create it with `lo` up.
    pub fn new(name: &str) -> Result<Self, String> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(&["ip", "netns", "add", name])?;
        let ns = Netns { name: name.into() };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Run a command inside; error with its stderr when it fails.
    pub fn exec(&self, args: &[&str]) -> Result<Output, String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// A command that will run inside (for spawning).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Load iptables rules (iptables-restore format) inside.
    pub fn iptables_restore(&self, rules: &str) -> Result<(), String> {
        self.restore("iptables-restore", rules)
    }

    /// Load ip6tables rules inside.
    pub fn ip6tables_restore(&self, rules: &str) -> Result<(), String> {
        self.restore("ip6tables-restore", rules)
    }

    fn restore(&self, program: &str, rules: &str) -> Result<(), String> {
        use std::io::Write;
        let mut child = self
            .command(program)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "{program}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// Run `f` on a new thread inside this namespace, with its own current-thread runtime.
    /// The thread lives as long as the future.
    pub fn spawn<F, Fut>(&self, f: F) -> std::thread::JoinHandle<()>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let path = Path::new("/var/run/netns").join(&self.name);
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid netns fd only changes this thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f());
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Link two namespaces with a veth pair and give each end its addresses (CIDR strings).
pub fn link(
    a: &Netns,
    a_addrs: &[&str],
    b: &Netns,
    b_addrs: &[&str],
    tag: &str,
) -> Result<(), String> {
    let (ea, eb) = (format!("va{tag}"), format!("vb{tag}"));
    run(&[
        "ip", "link", "add", &ea, "type", "veth", "peer", "name", &eb,
    ])?;
    run(&["ip", "link", "set", &ea, "netns", &a.name])?;
    run(&["ip", "link", "set", &eb, "netns", &b.name])?;
    for (ns, dev, addrs) in [(a, &ea, a_addrs), (b, &eb, b_addrs)] {
        for addr in addrs {
            if addr.contains(':') {
                // No duplicate address detection: the address is usable at once.
                ns.exec(&["ip", "addr", "add", addr, "dev", dev, "nodad"])?;
            } else {
                ns.exec(&["ip", "addr", "add", addr, "dev", dev])?;
            }
        }
        ns.exec(&["ip", "link", "set", dev, "up"])?;
    }
    Ok(())
}

/// Why namespaces cannot be used here, if they cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    for tool in [
        "ip",
        "iptables-restore",
        "ip6tables-restore",
        "setpriv",
        "curl",
    ] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Some(format!("{tool} is not installed"));
        }
    }
    let probe = format!("mosn-probe-{}", std::process::id());
    match Netns::new(&probe) {
        Ok(ns) => ns
            .iptables_restore(
                "*nat\n-A OUTPUT -p tcp -m owner --uid-owner 1337 -j RETURN\nCOMMIT\n",
            )
            .err()
            .map(|e| format!("iptables does not work in a namespace: {e}")),
        Err(e) => Some(format!("cannot create a network namespace: {e}")),
    }
}

/// A listening socket; an IPv6 one takes IPv6 only, so that a server of each family can share
/// a port and each sees its peers' own addresses.
fn listen(addr: SocketAddr) -> tokio::net::TcpListener {
    let bind = || -> std::io::Result<tokio::net::TcpListener> {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.set_reuse_address(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(128)?;
        tokio::net::TcpListener::from_std(s.into())
    };
    bind().unwrap_or_else(|e| panic!("bind {addr}: {e}"))
}

/// A tiny HTTP/1.1 keep-alive server: every response body is `<name> <peer address>`.
pub async fn http_server(addr: SocketAddr, name: &'static str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = listen(addr);
    while let Ok((mut s, peer)) = l.accept().await {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    let body = format!("{name} {peer}");
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-upstream: {name}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
    }
}

/// A TCP server that greets with `<name>\n` and closes.
pub async fn greeter(addr: SocketAddr, name: &'static str) {
    use tokio::io::AsyncWriteExt;
    let l = listen(addr);
    while let Ok((mut s, _)) = l.accept().await {
        let _ = s.write_all(format!("{name}\n").as_bytes()).await;
    }
}

/// `curl` inside `ns` (as uid 0: in a pod, its traffic is captured): (status, body).
pub fn curl(ns: &Netns, args: &[&str]) -> Result<(u16, String), String> {
    let out = ns
        .command("curl")
        .args(["-sS", "-m", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Err(format!(
            "curl {args:?}: exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((code.trim().parse().unwrap_or(0), body.to_string()))
}

/// Connect from inside `ns` and read until the peer closes.
pub fn tcp_read(ns: &Netns, addr: String) -> String {
    let got = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let g = got.clone();
    ns.spawn(move || async move {
        use tokio::io::AsyncReadExt;
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut out = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await;
        *g.lock().unwrap() = out;
    })
    .join()
    .unwrap();
    let out = got.lock().unwrap().clone();
    out
}

/// A keep-alive HTTP/1.1 client inside a namespace, on one connection.
pub struct KeepAlive {
    go: std::sync::mpsc::Sender<()>,
    answers: std::sync::mpsc::Receiver<Result<bool, String>>,
}

impl KeepAlive {
    /// Send one request and tell whether its answer (a 200) said `connection: close`.
    pub fn ask(&self) -> bool {
        self.go.send(()).unwrap();
        let answer = self.answers.recv().unwrap();
        answer.unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A [`KeepAlive`] client inside `ns` connected to `addr`, asking for `host`.
pub fn keepalive_client(ns: &Netns, addr: String, host: &'static str) -> KeepAlive {
    let (go, go_rx) = std::sync::mpsc::channel::<()>();
    let (out_tx, out) = std::sync::mpsc::channel();
    ns.spawn(move || async move {
        let mut s = match tokio::net::TcpStream::connect(&addr).await {
            Ok(s) => s,
            Err(e) => return drop(out_tx.send(Err(format!("connect {addr}: {e}")))),
        };
        // This thread's runtime runs nothing else, so waiting here blocks no one.
        while go_rx.recv().is_ok() {
            let answer =
                tokio::time::timeout(Duration::from_secs(10), crate::common::get_on(&mut s, host));
            let r = match answer.await {
                Err(_) => Err("no answer in 10 s".to_string()),
                Ok(Err(e)) => Err(e),
                Ok(Ok(head)) if !head.starts_with("http/1.1 200") => Err(head),
                Ok(Ok(head)) => Ok(head.contains("connection: close")),
            };
            if out_tx.send(r).is_err() {
                return;
            }
        }
    });
    KeepAlive { go, answers: out }
}
