//! Dynamic listeners around a snapshot swap: bind new ones, keep unchanged ones (same
//! `Arc<ListenerConfig>`, so same socket and connections), update in place those whose
//! filter chains alone changed (only the connections of changed chains drain), and drain
//! removed and replaced ones.
//!
//! Static listeners are bound by `server.rs` at start-up and never touched here.

use super::apply::Statics;
use crate::config::{ListenerConfig, Snapshot};
use crate::proxy::RunningListener;
use crate::server::Server;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The listeners this client bound, by name, and the unbound ones (`bind_to_port: false`)
/// it has seen, whose hand-offs drain when they change.
#[derive(Debug, Default)]
pub struct DynamicListeners {
    bound: HashMap<String, Arc<RunningListener>>,
    unbound: HashMap<String, Arc<ListenerConfig>>,
}

impl DynamicListeners {
    /// Make the bound dynamic listeners match `snap`.
    pub async fn reconcile(&mut self, server: &Arc<Server>, snap: &Snapshot, statics: &Statics) {
        // An unbound listener owns the connections handed to it: when it changes or goes,
        // they drain (Envoy drains a replaced listener's connections).
        let unbound: HashMap<String, Arc<ListenerConfig>> = snap
            .listeners
            .iter()
            .filter(|l| !l.bind && !statics.is_static_listener(&l.name))
            .map(|l| (l.name.clone(), l.clone()))
            .collect();
        for (name, old) in &self.unbound {
            match unbound.get(name) {
                Some(new) if Arc::ptr_eq(new, old) => {}
                // The chains the new version kept go on; the rest drain, as in Envoy.
                next => old.retire_replaced(next.map(|n| &**n)),
            }
        }
        self.unbound = unbound;
        let wanted: Vec<&Arc<ListenerConfig>> = snap
            .listeners
            .iter()
            .filter(|l| l.bind && !statics.is_static_listener(&l.name))
            .collect();
        let gone: Vec<String> = self
            .bound
            .keys()
            .filter(|n| !wanted.iter().any(|l| l.name == **n))
            .cloned()
            .collect();
        for n in gone {
            if let Some(old) = self.bound.remove(&n) {
                tracing::info!(listener = %n, "listener removed; draining");
                retire(server, &old);
            }
        }
        for l in wanted {
            if let Some(old) = self.bound.get(&l.name) {
                if Arc::ptr_eq(&old.config(), l) {
                    continue;
                }
                if old.update_in_place(l.clone()) {
                    tracing::info!(listener = %l.name, "listener changed in place; draining the connections of changed filter chains");
                    continue;
                }
                let old = self.bound.remove(&l.name).expect("present");
                tracing::info!(listener = %l.name, "listener changed; draining the old one");
                if old.config().binds == l.binds {
                    // Same addresses: the new listener takes over the sockets, so no
                    // connection is refused between the two.
                    if let Some(sock) = old.take_sockets().await {
                        retire(server, &old);
                        match crate::proxy::serve(
                            sock,
                            l.clone(),
                            server.store.clone(),
                            server.stats.clone(),
                            server.drain_time,
                        ) {
                            Ok(r) => {
                                server.listeners.lock().unwrap().push(r.clone());
                                self.bound.insert(l.name.clone(), r);
                                continue;
                            }
                            Err(e) => {
                                tracing::error!(listener = %l.name, "cannot serve the taken-over socket: {e}")
                            }
                        }
                    }
                }
                retire(server, &old);
            }
            match bind(server, l).await {
                Ok(r) => {
                    tracing::info!(listener = %l.name, addr = ?r.local_addrs, "listener added");
                    server.listeners.lock().unwrap().push(r.clone());
                    self.bound.insert(l.name.clone(), r);
                }
                Err(e) => {
                    server
                        .stats
                        .counter("listener_manager.listener_create_failure")
                        .inc();
                    tracing::error!(listener = %l.name, "cannot bind {e}");
                }
            }
        }
    }
}

/// Stop accepting, drain open connections, and forget the listener.
fn retire(server: &Server, old: &Arc<RunningListener>) {
    old.stop();
    old.retire();
    server
        .listeners
        .lock()
        .unwrap()
        .retain(|r| !Arc::ptr_eq(r, old));
}

/// Bind, retrying briefly while a removed listener on the same address (under another name)
/// lets go of it (its accept loop drops the socket asynchronously after `stop`).
async fn bind(
    server: &Arc<Server>,
    l: &Arc<ListenerConfig>,
) -> std::io::Result<Arc<RunningListener>> {
    let mut tries = 0;
    loop {
        let (store, stats) = (server.store.clone(), server.stats.clone());
        match crate::proxy::bind(l.clone(), store, stats, server.drain_time).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => return r,
        }
    }
}
