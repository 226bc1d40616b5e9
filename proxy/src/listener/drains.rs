//! A listener's drain signals, one per filter chain (`default_filter_chain` last), carried
//! from one version of the listener to the next for the chains the update keeps.
//!
//! Envoy updates a listener in place when nothing but its filter chains changed: only the
//! connections on chains that changed or went away drain. Every connection, accepted by the
//! listener or handed to it by another (`use_original_dst`), watches the signal of its
//! chain; a new version that keeps a chain (an equal proto) takes that chain's signal over,
//! so later drains of the new version still reach the old connections.

use super::ListenerConfig;
use crate::proxy::drain::{raise, signal, Drain, DrainTx};
use envoy_types::pb::envoy::config::listener::v3 as lpb;

impl ListenerConfig {
    /// The signal of chain `index` (as [`ListenerConfig::select_indexed`] numbers them).
    pub fn drain_of(&self, index: usize) -> &DrainTx {
        &self.drains[index]
    }

    /// Fresh signals, one per chain.
    pub(super) fn fresh_drains(chains: usize) -> Vec<DrainTx> {
        (0..=chains).map(|_| signal(Drain::Serving)).collect()
    }

    /// Take over the signals of the chains `old` (the listener's previous version) has too,
    /// when only chains differ between the two (else nothing carries over: Envoy replaces
    /// the whole listener).
    pub fn carry_drains_from(&mut self, old: &ListenerConfig) {
        if !self.chains_only_differ(old) {
            return;
        }
        let mut taken = vec![false; old.drains.len()];
        let mut carried = Vec::new();
        for (j, p) in chain_protos(self).enumerate() {
            // Once each: two equal chains are two chains.
            let found = chain_protos(old)
                .enumerate()
                .find(|(i, o)| !taken[*i] && *o == p)
                .map(|(i, _)| i);
            if let Some(i) = found {
                taken[i] = true;
                carried.push((j, old.drains[i].clone()));
            }
        }
        for (j, d) in carried {
            self.drains[j] = d;
        }
    }

    /// Retire the connections of the chains `next` (the version replacing this one, if any)
    /// did not take over.
    pub fn retire_replaced(&self, next: Option<&ListenerConfig>) {
        for d in &self.drains {
            let kept = next.is_some_and(|n| n.drains.iter().any(|x| x.same_channel(d)));
            if !kept {
                raise(d, Drain::Retired);
            }
        }
    }

    /// Raise every chain's signal to `to`.
    pub fn raise_all(&self, to: Drain) {
        if to != Drain::Serving {
            self.drains.iter().for_each(|d| raise(d, to));
        }
    }

    /// Whether `self` and `other` are the same listener but for their filter chains.
    pub fn chains_only_differ(&self, other: &ListenerConfig) -> bool {
        if self.binds != other.binds || self.bind != other.bind {
            return false;
        }
        let strip = |l: &ListenerConfig| {
            let mut p = l.proto.clone();
            p.filter_chains.clear();
            p.default_filter_chain = None;
            p
        };
        strip(self) == strip(other)
    }
}

/// A listener's filter chain protos in the order of its signals: its `filter_chains`, then
/// its `default_filter_chain` (`None` if it has none).
fn chain_protos(l: &ListenerConfig) -> impl Iterator<Item = Option<&lpb::FilterChain>> {
    l.proto
        .filter_chains
        .iter()
        .map(Some)
        .chain(std::iter::once(l.proto.default_filter_chain.as_ref()))
}
