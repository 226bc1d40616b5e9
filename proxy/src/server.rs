//! Process lifecycle: the Tokio runtime (`--concurrency` workers), admin and listeners, the
//! `server.state` gauge pilot-agent polls, drain and shutdown.

use crate::cli::Options;
use crate::config::{ConfigStore, LoadedBootstrap, Snapshot};
use crate::proxy::RunningListener;
use crate::stats::{server_state, Stat, Stats};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How the process is asked to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// `/quitquitquit`: exit now.
    Quit,
    /// SIGTERM/SIGINT: drain for `--drain-time-s`, then exit.
    Terminate,
}

/// Shared state of a running proxy.
#[derive(Debug)]
pub struct Server {
    /// The current config snapshot.
    pub store: Arc<ConfigStore>,
    /// All stats.
    pub stats: Arc<Stats>,
    /// Command line.
    pub opts: Options,
    /// Start time (uptime).
    pub started: Instant,
    /// `--drain-time-s` (default 600 s as in Envoy).
    pub drain_time: Duration,
    /// Worker threads.
    pub concurrency: usize,
    /// Bound listeners.
    pub listeners: Mutex<Vec<Arc<RunningListener>>>,
    /// Bound admin address.
    pub admin_addr: Mutex<Option<SocketAddr>>,
    /// Set by `/healthcheck/fail`.
    pub healthcheck_failed: AtomicBool,
    state: Arc<Stat>,
    live: Arc<Stat>,
    shutdown: watch::Sender<Option<Shutdown>>,
    /// The SDS streams for the secrets TLS contexts name.
    pub sds: crate::tls::sds::Manager,
}

impl Server {
    /// Build the shared state; nothing is bound yet.
    pub fn new(opts: Options, snap: Snapshot, stats: Arc<Stats>) -> Arc<Self> {
        let state = stats.gauge("server.state");
        state.set(server_state::PRE_INITIALIZING);
        let concurrency = match opts.concurrency {
            Some(n) if n > 0 => n,
            _ => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        };
        stats.gauge("server.concurrency").set(concurrency as u64);
        stats.gauge("server.hot_restart_epoch").set(0);
        let live = stats.gauge("server.live");
        let (shutdown, _) = watch::channel(None);
        let secrets = snap.static_secrets.clone();
        let env =
            crate::proxy::trace::Env::from_bootstrap(snap.bootstrap.as_deref(), stats.clone());
        let store = ConfigStore::new(snap);
        store.secrets.put(secrets);
        let _ = store.tracing.set(env);
        let node = store
            .load()
            .bootstrap
            .as_ref()
            .and_then(|b| b.proto.node.clone());
        let _ = store
            .istio
            .set(crate::proxy::istio::peer::Local::from_node(node.as_ref()));
        store.record_istio_build(&store.load());
        Arc::new(Server {
            store,
            drain_time: Duration::from_secs(opts.drain_time_s.unwrap_or(600)),
            opts,
            stats,
            started: Instant::now(),
            concurrency,
            listeners: Mutex::new(Vec::new()),
            admin_addr: Mutex::new(None),
            healthcheck_failed: AtomicBool::new(false),
            state,
            live,
            shutdown,
            sds: Default::default(),
        })
    }

    /// Bind admin and listeners and start serving (inside the runtime).
    pub async fn start(self: &Arc<Self>) -> Result<(), String> {
        let snap = self.store.load();
        // Like Envoy's cluster manager init: DNS clusters are ready after their first
        // resolution round; bounded so an unreachable resolver cannot block start-up.
        let inits: Vec<_> = snap.clusters.values().filter_map(|c| c.start()).collect();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            for rx in inits {
                let _ = rx.await;
            }
        })
        .await;
        let boot = snap.bootstrap.clone();
        if let Some(a) = boot
            .as_ref()
            .and_then(|b| b.proto.admin.as_ref())
            .and_then(|a| a.address.as_ref())
        {
            match crate::cluster::address(Some(a))? {
                crate::cluster::Addr::Socket(ip, port) => {
                    let ip: std::net::IpAddr = ip
                        .parse()
                        .map_err(|_| format!("admin address {ip:?} is not an IP"))?;
                    let bound = crate::admin::serve(self.clone(), SocketAddr::new(ip, port))
                        .await
                        .map_err(|e| format!("cannot bind admin {ip}:{port}: {e}"))?;
                    *self.admin_addr.lock().unwrap() = Some(bound);
                }
                crate::cluster::Addr::Pipe(p) => {
                    return Err(format!("admin on a pipe ({p}) is not supported"))
                }
            }
        }
        for l in snap.listeners.iter().filter(|l| l.bind) {
            let (store, stats) = (self.store.clone(), self.stats.clone());
            let running = crate::proxy::bind(l.clone(), store, stats, self.drain_time)
                .await
                .map_err(|e| format!("cannot bind listener {} on {e}", l.name))?;
            self.listeners.lock().unwrap().push(running);
        }
        self.stats
            .gauge("listener_manager.total_listeners_active")
            .set(snap.listeners.len() as u64);
        self.stats
            .gauge("cluster_manager.active_clusters")
            .set(snap.clusters.len() as u64);
        self.stats.gauge("listener_manager.workers_started").set(1);
        self.sds.sync(self);
        let dynamic = boot
            .as_ref()
            .and_then(|b| b.proto.dynamic_resources.as_ref())
            .is_some_and(|d| {
                d.lds_config.is_some() || d.cds_config.is_some() || d.ads_config.is_some()
            });
        if dynamic {
            // Waiting for the initial xDS config; the xDS client flips this to LIVE.
            self.state.set(server_state::INITIALIZING);
            if crate::xds::start(self).is_none() {
                tracing::warn!("bootstrap asks for xDS in a form this build does not speak; staying INITIALIZING");
            }
        } else {
            // A static bootstrap is the complete initial config: count it as the first
            // CDS/LDS update so pilot-agent's readiness check (which needs both > 0) passes.
            self.stats
                .counter("cluster_manager.cds.update_success")
                .inc();
            self.stats
                .counter("listener_manager.lds.update_success")
                .inc();
            self.mark_live();
        }
        self.stats.counter("cluster_manager.cds.update_rejected");
        self.stats.counter("listener_manager.lds.update_rejected");
        Ok(())
    }

    /// Initial configuration applied and listeners serving: `server.state` becomes LIVE.
    ///
    /// Like Envoy's warming of TLS listeners and clusters, LIVE waits for the SDS secrets
    /// that the TLS contexts name (Istio's `default` and `ROOTCA`), so that kubelet sees the
    /// pod ready only once it can handshake; after 15 s it goes LIVE anyway, with a warning.
    pub fn mark_live(self: &Arc<Self>) {
        let missing = |s: &Server| {
            crate::tls::sds::wanted(&s.store.load())
                .into_iter()
                .filter(|r| r.cluster.is_some() && s.store.secrets.get(&r.name).is_none())
                .map(|r| r.name)
                .collect::<Vec<_>>()
        };
        if missing(self).is_empty() {
            self.state.set(server_state::LIVE);
            self.live.set(1);
            return;
        }
        self.state.set(server_state::INITIALIZING);
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let until = tokio::time::Instant::now() + Duration::from_secs(15);
            loop {
                let Some(s) = me.upgrade() else { return };
                let left = missing(&s);
                if left.is_empty() || tokio::time::Instant::now() >= until {
                    if !left.is_empty() {
                        tracing::warn!(secrets = ?left, "SDS secrets not received within 15 s; going LIVE without them");
                    }
                    s.state.set(server_state::LIVE);
                    s.live.set(1);
                    return;
                }
                drop(s);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    /// Envoy's state value.
    pub fn state(&self) -> u64 {
        self.state.get()
    }

    /// Envoy's state name (`ServerInfo.State`).
    pub fn state_name(&self) -> &'static str {
        match self.state() {
            server_state::LIVE => "LIVE",
            server_state::DRAINING => "DRAINING",
            server_state::PRE_INITIALIZING => "PRE_INITIALIZING",
            _ => "INITIALIZING",
        }
    }

    /// `POST /drain_listeners`: inbound-only and/or graceful as in Envoy. Graceful drains
    /// connections now and stops accepting after the drain time; otherwise stop at once.
    pub fn drain_listeners(self: &Arc<Self>, inbound_only: bool, graceful: bool) {
        let targets: Vec<Arc<RunningListener>> = self
            .listeners
            .lock()
            .unwrap()
            .iter()
            .filter(|l| !inbound_only || l.config().proto.traffic_direction == 1)
            .cloned()
            .collect();
        self.drain_unbound(inbound_only);
        if graceful {
            self.state.set(server_state::DRAINING);
            self.live.set(0);
            for l in &targets {
                l.drain();
            }
            let wait = self.drain_time;
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                targets.iter().for_each(|l| l.stop());
            });
        } else {
            for l in &targets {
                l.stop();
                l.drain();
            }
        }
    }

    /// Drain the connections handed to unbound listeners (only inbound ones if asked).
    fn drain_unbound(&self, inbound_only: bool) {
        let snap = self.store.load();
        let unbound = snap
            .listeners
            .iter()
            .filter(|l| !l.bind && (!inbound_only || l.proto.traffic_direction == 1));
        unbound.for_each(|l| l.raise_all(crate::proxy::drain::Drain::Draining));
    }

    /// Ask the process to end.
    pub fn shutdown(&self, how: Shutdown) {
        self.shutdown.send_replace(Some(how));
    }

    /// Wait until asked to end (signal or admin), drain if needed, and stop listeners.
    pub async fn wait(self: &Arc<Self>) -> i32 {
        let mut rx = self.shutdown.subscribe();
        let how = tokio::select! {
            r = rx.wait_for(|s| s.is_some()) => r.ok().and_then(|s| *s).unwrap_or(Shutdown::Quit),
            _ = terminate_signal() => Shutdown::Terminate,
        };
        if how == Shutdown::Terminate {
            tracing::info!(
                "terminating: draining listeners for up to {:?}",
                self.drain_time
            );
            self.state.set(server_state::DRAINING);
            self.live.set(0);
            let all: Vec<_> = self.listeners.lock().unwrap().clone();
            all.iter().for_each(|l| l.drain());
            self.drain_unbound(false);
            let deadline = Instant::now()
                .checked_add(self.drain_time)
                .unwrap_or_else(Instant::now);
            // Exit early once every downstream connection has closed.
            while Instant::now() < deadline
                && all
                    .iter()
                    .any(|l| l.connections.load(Ordering::Relaxed) > 0)
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        for l in self.listeners.lock().unwrap().iter() {
            l.stop();
            l.drain();
        }
        0
    }
}

async fn terminate_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Run the proxy until it is told to stop; returns the exit code.
pub fn run(opts: Options, _boot: LoadedBootstrap, snap: Snapshot, stats: Arc<Stats>) -> i32 {
    /// Take the executable's read-only pages (code and data used only to start: bootstrap
    /// decoding, the embedded descriptor set) out of the resident set once start-up is done.
    /// They stay in the page cache; what the data path uses comes back on first touch (minor
    /// faults), so the RSS afterwards is the working set, not everything start-up touched.
    fn drop_startup_pages() {
        #[cfg(target_os = "linux")]
        {
            let (Ok(exe), Ok(smaps)) = (
                std::fs::read_link("/proc/self/exe"),
                std::fs::read_to_string("/proc/self/smaps"),
            ) else {
                return;
            };
            let Some(exe) = exe.to_str() else { return };
            // Mappings of the executable that are read-only and have no dirty page. RELRO data is
            // read-only but was written by relocation: it is dirty and must keep its pages.
            let mut current: Option<(usize, usize)> = None;
            let mut dirty = false;
            let release = |range: Option<(usize, usize)>, dirty: bool| {
                if let (Some((start, end)), false) = (range, dirty) {
                    // SAFETY: a clean, read-only, file-backed private mapping of our own
                    // executable: its pages are read back from the file on the next access.
                    unsafe {
                        libc::madvise(
                            start as *mut libc::c_void,
                            end.saturating_sub(start),
                            libc::MADV_DONTNEED,
                        );
                    }
                }
            };
            for line in smaps.lines() {
                let mut f = line.split_whitespace();
                let Some(first) = f.next() else { continue };
                if let Some((a, b)) = first.split_once('-') {
                    // A mapping header: start-end perms offset dev inode path
                    let (Ok(a), Ok(b)) =
                        (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                    else {
                        release(current.take(), dirty);
                        continue;
                    };
                    release(current.take(), dirty);
                    dirty = false;
                    let perms = f.next().unwrap_or("");
                    let path = line.find('/').map(|i| line[i..].trim_end());
                    if path == Some(exe) && perms.starts_with("r") && perms.get(1..2) == Some("-") {
                        current = Some((a, b));
                    }
                } else if matches!(first, "Private_Dirty:" | "Shared_Dirty:" | "Anonymous:")
                    && f.next().is_some_and(|v| v != "0")
                {
                    dirty = true;
                }
            }
            release(current.take(), dirty);
        }
    }

    let server = Server::new(opts.clone(), snap, stats);
    // One worker: a current-thread runtime on the main thread. No cross-thread wake-ups or
    // work-stealing bookkeeping per task switch, and one thread less.
    let mut builder = if server.concurrency <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(server.concurrency);
        b
    };
    crate::tick_batch::install(&mut builder);
    let rt = match builder.thread_name("mosn-worker").enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mosn: cannot start runtime: {e}");
            return 1;
        }
    };
    let code = rt.block_on(async {
        if let Err(e) = server.start().await {
            eprintln!("mosn: {e}");
            return 1;
        }
        // Start-up decoding is done: hand its memory back before serving.
        crate::config::decode::release_pool();
        crate::config::decode::spawn_pool_reaper();
        drop_startup_pages();
        if opts.mode == crate::cli::Mode::InitOnly {
            return 0;
        }
        tracing::info!(admin = ?server.admin_addr.lock().unwrap(), "mosn started ({} workers)", server.concurrency);
        server.wait().await
    });
    // Do not wait for in-flight tasks (idle keep-alive connections) after the drain.
    rt.shutdown_timeout(Duration::from_millis(100));
    code
}
