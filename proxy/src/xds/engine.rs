//! The protocol-independent half of the client: what to subscribe, accepting updates, the
//! initialisation order (CDS → EDS → LDS → RDS) and swapping snapshots.
//!
//! [`sotw`](super::sotw) and [`delta`](super::delta) translate messages to [`Update`]s, call
//! [`Engine::handle`], ACK or NACK, and then send whatever [`Engine::wanted`] says changed.

use super::apply::{self, Statics, Update};
use super::config::AdsConfig;
use super::listeners::DynamicListeners;
use super::state::XdsState;
use super::stats::{SubStats, XdsStats};
use super::Kind;
use crate::server::Server;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

static EMPTY: String = String::new();

/// How often warming and initial-fetch deadlines are checked.
pub const TICK: Duration = Duration::from_millis(200);

/// The client's state across streams.
#[derive(Debug)]
pub struct Engine {
    /// The server whose snapshot this client feeds.
    pub server: Arc<Server>,
    /// Bootstrap settings.
    pub cfg: AdsConfig,
    /// Accepted resources.
    pub state: XdsState,
    /// The bootstrap's static resources.
    pub statics: Statics,
    /// Subscription stats.
    pub stats: XdsStats,
    listeners: DynamicListeners,
    /// Initial clusters are warm (or CDS timed out): LDS may be requested.
    clusters_ready: bool,
    /// Initial listeners are warm (or LDS timed out).
    listeners_ready: bool,
    live: bool,
    cds_deadline: Option<Instant>,
    lds_deadline: Option<Instant>,
}

impl Engine {
    /// A fresh engine; the statics are the server's current snapshot.
    pub fn new(server: Arc<Server>, cfg: AdsConfig) -> Self {
        let statics = Statics::from_snapshot(&server.store.load());
        let stats = XdsStats::new(&server.stats);
        let now = Instant::now();
        let mut e = Engine {
            cds_deadline: cfg.cds_timeout.map(|t| now + t),
            lds_deadline: None,
            clusters_ready: !cfg.cds,
            listeners_ready: !cfg.lds,
            live: false,
            server,
            cfg,
            state: XdsState::default(),
            statics,
            stats,
            listeners: DynamicListeners::default(),
        };
        e.progress();
        e
    }

    /// The names to subscribe to for `k` now: `None` = not (yet); an empty set for CDS/LDS
    /// means wildcard.
    pub fn wanted(&self, k: Kind) -> Option<BTreeSet<String>> {
        match k {
            Kind::Cds => self.cfg.cds.then(BTreeSet::new),
            Kind::Lds => (self.cfg.lds && self.clusters_ready).then(BTreeSet::new),
            Kind::Eds => self.cfg.cds.then(|| self.state.eds_names()),
            Kind::Rds => self.cfg.lds.then(|| self.state.rds_names()),
        }
    }

    /// Apply one update: the valid resources are committed and swapped in; `Err` (the NACK's
    /// `error_detail`) names the rejected ones, which keep their last good version.
    pub async fn handle(&mut self, upd: Update) -> Result<(), String> {
        let kind = upd.kind;
        let current = self.server.store.load();
        let out = apply::accept(
            &mut self.state,
            &upd,
            &self.statics,
            &self.server.stats,
            &current,
        );
        drop(current);
        // CDS/LDS count per response under the manager; EDS/RDS per resource, as Envoy does.
        let per_resource: Vec<(&String, SubStats)> = match kind {
            Kind::Cds | Kind::Lds => vec![(&EMPTY, self.stats.resource(kind, "", None))],
            Kind::Eds | Kind::Rds => out
                .names
                .iter()
                .chain(out.rejected.iter().map(|(n, _)| n))
                .filter(|n| !n.starts_with('#'))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .map(|n| {
                    let prefix = (kind == Kind::Rds)
                        .then(|| self.state.rds_prefix(n))
                        .flatten();
                    (n, self.stats.resource(kind, n, prefix.as_deref()))
                })
                .collect(),
        };
        per_resource.iter().for_each(|(_, s)| s.attempt.inc());
        let error = out.error();
        for (n, s) in &per_resource {
            let bad =
                error.is_some() && (n.is_empty() || out.rejected.iter().any(|(r, _)| r == *n));
            if bad {
                s.rejected.inc();
            } else {
                s.accepted(&upd.version);
            }
        }
        // Even a rejected fetch completes initialisation (as in Envoy): what waited for it
        // goes on without it instead of blocking start-up forever.
        self.state.ty(kind).received = true;
        let mut rebuild = out.changed;
        if out.changed && matches!(kind, Kind::Cds | Kind::Lds) {
            self.state.prune_unsubscribed();
        }
        if error.is_some() {
            let names: Vec<String> = out.rejected.iter().map(|(n, _)| n.clone()).collect();
            rebuild |= self.state.give_up_warming(kind, &names);
        }
        if rebuild {
            self.rebuild().await;
        }
        self.progress();
        if error.is_none() {
            self.state.ty(kind).version = upd.version.clone();
        }
        self.publish();
        match error {
            None => {
                tracing::info!(
                    "{} update accepted (version {:?}, {} resources{})",
                    kind.short(),
                    upd.version,
                    upd.resources.len(),
                    if out.changed { "" } else { ", no change" }
                );
                Ok(())
            }
            Some(e) => {
                tracing::warn!(
                    "{} update rejected (version {:?}): {e}",
                    kind.short(),
                    upd.version
                );
                Err(e)
            }
        }
    }

    /// Check warming and initial-fetch deadlines; true if subscriptions may have changed.
    pub async fn tick(&mut self) -> bool {
        let now = Instant::now();
        if self.state.expire_warming(now) {
            self.rebuild().await;
            self.publish();
        }
        let before = self.clusters_ready;
        self.progress();
        before != self.clusters_ready
    }

    /// Publish what is accepted for `/config_dump`.
    fn publish(&self) {
        super::dump::publish(&self.server.store, super::dump::View::of(&self.state));
    }

    /// Build the next snapshot, swap it in, and bind/drain dynamic listeners.
    async fn rebuild(&mut self) {
        let prev = self.server.store.load();
        let (snap, counts) = apply::build(&self.state, &self.statics, &prev);
        drop(prev);
        let (nc, nl) = (snap.clusters.len(), snap.listeners.len());
        self.server.store.swap(snap);
        self.server.sds.sync(&self.server);
        let cur = self.server.store.load();
        self.listeners
            .reconcile(&self.server, &cur, &self.statics)
            .await;
        self.stats.active_clusters.set(nc as u64);
        self.stats.active_listeners.set(nl as u64);
        self.stats
            .warming_clusters
            .set(counts.warming_clusters as u64);
        self.stats
            .warming_listeners
            .set(counts.warming_listeners as u64);
    }

    /// Advance initialisation: clusters ready → request LDS; listeners ready → LIVE.
    fn progress(&mut self) {
        let now = Instant::now();
        if !self.clusters_ready {
            let cds = &self.state.types[Kind::Cds.idx()];
            if cds.received && self.state.clusters_all_warm() {
                self.clusters_ready = true;
            } else if self.cds_deadline.is_some_and(|d| now >= d) {
                tracing::warn!(
                    "initial CDS/EDS not complete within initial_fetch_timeout; continuing"
                );
                self.stats.init_fetch_timeout[0].inc();
                self.clusters_ready = true;
            }
            if self.clusters_ready {
                self.lds_deadline = self.cfg.lds_timeout.map(|t| now + t);
            }
        }
        if self.clusters_ready && !self.listeners_ready {
            let lds = &self.state.types[Kind::Lds.idx()];
            if lds.received && self.state.listeners_all_warm() {
                self.listeners_ready = true;
            } else if self.lds_deadline.is_some_and(|d| now >= d) {
                tracing::warn!(
                    "initial LDS/RDS not complete within initial_fetch_timeout; continuing"
                );
                self.stats.init_fetch_timeout[1].inc();
                self.listeners_ready = true;
            }
        }
        if self.clusters_ready && self.listeners_ready && !self.live {
            self.live = true;
            tracing::info!("initial xDS configuration applied; server is LIVE");
            self.server.mark_live();
        }
    }
}

/// The half of an ADS stream that differs between state of the world and delta.
pub(super) trait Protocol {
    /// The server's message type.
    type Response;
    /// The engine the stream drives.
    fn engine(&mut self) -> &mut Engine;
    /// Send whatever subscription changes the engine's state now calls for.
    fn sync(&mut self);
    /// Apply one response and ACK or NACK it.
    async fn on_response(&mut self, resp: Self::Response);
}

/// Drive an established stream until it ends: apply responses, run the engine's timers, and
/// re-sync subscriptions after each. Returns whether a response arrived (resets the backoff)
/// and why the stream ended.
pub(super) async fn pump<P: Protocol>(
    p: &mut P,
    mut inbound: tonic::Streaming<P::Response>,
    flavour: &str,
) -> (bool, String) {
    p.engine().stats.connected.set(1);
    tracing::info!("ADS stream ({flavour}) established");
    let mut got = false;
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(resp)) => {
                    got = true;
                    p.on_response(resp).await;
                    p.sync();
                }
                Ok(None) => return (got, "stream closed by the server".into()),
                Err(e) => return (got, format!("stream failed: {e}")),
            },
            _ = tick.tick() => {
                if p.engine().tick().await {
                    p.sync();
                }
            }
        }
    }
}
