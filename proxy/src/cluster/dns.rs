//! DNS refresh for STRICT_DNS and LOGICAL_DNS clusters (system resolver, like Envoy's getaddrinfo
//! resolver). The task ends when its cluster is dropped (replaced by a new snapshot).

use super::host::Host;
use super::{Cluster, Discovery};
use std::sync::{Arc, Weak};

/// Spawn the refresh loop.
pub fn spawn(cluster: Weak<Cluster>) {
    tokio::spawn(async move {
        loop {
            let Some(c) = cluster.upgrade() else { return };
            let mut hosts = Vec::new();
            let mut ok = true;
            for (name, port, weight, prio) in &c.dns_targets {
                match tokio::net::lookup_host((name.as_str(), *port)).await {
                    Ok(addrs) => {
                        let mut addrs: Vec<_> = addrs.collect();
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
            let wait = c.dns_refresh;
            drop(c);
            tokio::time::sleep(wait).await;
        }
    });
}
