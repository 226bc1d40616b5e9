//! The names on a cluster's TLS connections, by upstream address: the URI SAN of the
//! certificate this side presented and of the one the upstream presented. Istio's stats
//! filter labels an outbound request's `source_principal` and `destination_principal` with
//! them (its `upstream.uri_san_local_certificate` and `upstream.uri_san_peer_certificate`).
//!
//! Why by address and not on each connection: an HTTP request's connection is the pool's
//! (and, for the hyper paths, hyper's) business, and every connection to one endpoint of a
//! cluster shows the same workload identity; the last handshake's names stand for them all.

use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Most addresses remembered; past that the map starts over (endpoints come and go with EDS,
/// and a forgotten one is learnt again at its next handshake).
const MAX_ADDRS: usize = 4096;

/// The URI SANs of one TLS connection's two certificates, empty when a certificate has none.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TlsNames {
    /// The certificate this side presented.
    pub local: String,
    /// The certificate the upstream presented.
    pub peer: String,
}

/// The last handshake's names per upstream address of one cluster. Read by every request
/// over TLS and written at handshakes whose names differ from the last, so reads take no
/// lock and a write copies the map.
#[derive(Debug, Default)]
pub struct NamesByAddr {
    /// Whether any TLS handshake was recorded: plaintext clusters never load the map.
    any: AtomicBool,
    map: ArcSwap<FxHashMap<SocketAddr, Arc<TlsNames>>>,
}

impl NamesByAddr {
    /// Record the names of a finished handshake with `addr`.
    pub fn record(&self, addr: SocketAddr, conn: &rustls::ClientConnection, local: Option<&str>) {
        let names = TlsNames {
            local: local.unwrap_or_default().to_string(),
            peer: crate::tls::client::peer_uri(conn).unwrap_or_default(),
        };
        if self.map.load().get(&addr).is_some_and(|n| **n == names) {
            return;
        }
        let names = Arc::new(names);
        self.map.rcu(|m| {
            let mut m = FxHashMap::clone(m);
            if m.len() >= MAX_ADDRS && !m.contains_key(&addr) {
                m.clear();
            }
            m.insert(addr, names.clone());
            m
        });
        self.any.store(true, Ordering::Relaxed);
    }

    /// The names of the last handshake with `addr`, if any was made.
    pub fn get(&self, addr: SocketAddr) -> Option<Arc<TlsNames>> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        self.map.load().get(&addr).cloned()
    }
}
