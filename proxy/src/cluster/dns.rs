//! DNS refresh for STRICT_DNS and LOGICAL_DNS clusters (system resolver, like Envoy's getaddrinfo
//! resolver). The task ends when its cluster is dropped (replaced by a new snapshot).

use super::host::Host;
use super::{Cluster, Discovery};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

/// Keep the addresses `dns_lookup_family` allows (AUTO prefers IPv6, as in Envoy).
pub fn filter_family(addrs: Vec<SocketAddr>, family: i32) -> Vec<SocketAddr> {
    let (v4, v6): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|a| a.is_ipv4());
    match family {
        1 => v4,
        2 => v6,
        3 if !v4.is_empty() => v4,
        3 => v6,
        4 => v4.into_iter().chain(v6).collect(),
        _ if !v6.is_empty() => v6,
        _ => v4,
    }
}

/// Spawn the refresh loop; the receiver fires after the first resolution round (success or
/// not), which is when Envoy considers a DNS cluster initialised.
pub fn spawn(cluster: Weak<Cluster>) -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    tokio::spawn(async move {
        loop {
            let Some(c) = cluster.upgrade() else { return };
            let mut hosts = Vec::new();
            let mut ok = true;
            for (name, port, weight, prio) in &c.dns_targets {
                match tokio::net::lookup_host((name.as_str(), *port)).await {
                    Ok(addrs) => {
                        let mut addrs = filter_family(addrs.collect(), c.dns_family);
                        addrs.dedup();
                        if c.discovery == Discovery::LogicalDns {
                            addrs.truncate(1);
                        }
                        for a in addrs {
                            // Keep the existing host (and its outlier state) if the address is unchanged.
                            let existing = c.hosts().all.iter().find(|h| h.addr == a).cloned();
                            hosts.push(existing.unwrap_or_else(|| {
                                Arc::new(Host::new(a, name.clone(), *weight, *prio))
                            }));
                        }
                    }
                    Err(e) => {
                        ok = false;
                        tracing::warn!(cluster = %c.name, host = %name, "DNS resolution failed: {e}");
                    }
                }
            }
            // On failure keep the last good answer, as Envoy does.
            if ok || !hosts.is_empty() {
                let changed = {
                    let cur = c.hosts();
                    cur.all.len() != hosts.len()
                        || cur.all.iter().zip(&hosts).any(|(a, b)| a.addr != b.addr)
                };
                if changed {
                    c.set_hosts(hosts);
                }
            }
            if let Some(tx) = tx.take() {
                let _ = tx.send(());
            }
            let wait = c.dns_refresh;
            drop(c);
            tokio::time::sleep(wait).await;
        }
    });
    rx
}
