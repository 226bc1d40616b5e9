//! Locality-weighted balancing (`locality_weighted_lb_config`, Istio's
//! `localityLbSetting.distribute`): a level's hosts grouped by their EDS locality, and the
//! locality a pick goes to.

use super::{Level, OVERPROVISIONING};
use crate::cluster::host::Host;
use std::sync::Arc;

/// A level's localities with their weights and hosts, by the index of their
/// `LocalityLbEndpoints`.
pub(super) fn localities(hosts: &[Arc<Host>]) -> Vec<(u32, Vec<usize>)> {
    let mut by_id: std::collections::BTreeMap<u32, (u32, Vec<usize>)> = Default::default();
    for (i, h) in hosts.iter().enumerate() {
        by_id
            .entry(h.locality.0)
            .or_insert((h.locality.1, Vec::new()))
            .1
            .push(i);
    }
    by_id.into_values().collect()
}

impl Level {
    /// Envoy's locality pick: each locality's weight times its health (its share of usable
    /// hosts times the overprovisioning factor, at most 1), drawn at random by those
    /// effective weights (Envoy's EDF scheduler gives the same shares). `None` when no
    /// locality has an effective weight: then hosts are picked across localities. The answer
    /// is the locality's id (`Host::locality.0`).
    pub(super) fn choose_locality(&self, down: &dyn Fn(usize) -> bool) -> Option<u32> {
        if self.localities.is_empty() {
            return None;
        }
        // Every locality has a host: its first names the locality.
        let effective: Vec<(u32, f64)> = self
            .localities
            .iter()
            .map(|(weight, hosts)| {
                let up = hosts.iter().filter(|i| !down(**i)).count();
                let health =
                    (OVERPROVISIONING as f64 / 100.0 * up as f64 / hosts.len() as f64).min(1.0);
                (self.hosts[hosts[0]].locality.0, *weight as f64 * health)
            })
            .collect();
        if effective.iter().map(|(_, e)| e).sum::<f64>() <= 0.0 {
            return None;
        }
        super::roll(&effective)
    }
}
