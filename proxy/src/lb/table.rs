//! Consistent-hash tables: the ring (RING_HASH) and the Maglev table, built as Envoy builds
//! them, so that one key picks the same host behind Envoy and behind mosn.
//!
//! Envoy's rules, each checked against its tests' tables (see the tests below):
//! - hosts are hashed by their address (`10.0.0.1:9080`), or by their hostname with
//!   `use_hostname_for_hashing`, with xxHash64 (seed 0);
//! - weights are normalized to sum 1 over the hosts in the table;
//! - a table holds the level's healthy hosts only, or all of them in panic mode: when a host
//!   goes down, the table is rebuilt without it, which spreads its keys over the others;
//! - a retry that must avoid a host (`previous_hosts`) moves `attempt` steps along the ring,
//!   or xors the key with `-attempt` in the Maglev table.

use crate::cluster::host::Host;
use std::sync::Arc;

/// The hash of a ring's entries (`RingHashLbConfig.hash_function`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RingHashFn {
    /// xxHash64, Envoy's default.
    #[default]
    XxHash,
    /// 64-bit MurmurHash2 with libstdc++'s seed, as Envoy's `MURMUR_HASH_2`.
    Murmur2,
}

/// Which consistent-hash table a level keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A ring of at least `min_size` entries (capped at `max_size`).
    Ring {
        /// `minimum_ring_size`.
        min_size: u64,
        /// `maximum_ring_size`.
        max_size: u64,
        /// The hash of the ring's entries.
        hash_fn: RingHashFn,
    },
    /// A Maglev lookup table of `size` slots (a prime).
    Maglev {
        /// `table_size`.
        size: u64,
    },
}

/// A built table over some of a level's hosts. Entries are indices into the level's hosts.
#[derive(Debug)]
pub struct Table {
    /// Which of the level's hosts the table holds (the cache key: the table is rebuilt when
    /// the hosts' health changes this).
    pub members: Vec<bool>,
    ring: Vec<(u64, u32)>,
    maglev: Vec<u32>,
}

impl Table {
    /// Build a `kind` table over the `hosts` marked in `members`; with `by_locality`
    /// (`locality_weighted_lb_config`), weighted by their localities' weights too.
    pub fn build(
        kind: Kind,
        hosts: &[Arc<Host>],
        members: Vec<bool>,
        use_hostname: bool,
        by_locality: bool,
    ) -> Self {
        let (chosen, min_w, max_w) = normalize(hosts, &members, use_hostname, by_locality);
        let (mut ring, mut maglev) = (Vec::new(), Vec::new());
        match kind {
            Kind::Ring {
                min_size,
                max_size,
                hash_fn,
            } => ring = build_ring(&chosen, min_w, min_size, max_size, hash_fn),
            Kind::Maglev { size } => maglev = build_maglev(chosen, max_w, size),
        }
        Table {
            members,
            ring,
            maglev,
        }
    }

    /// The host (index into the level's hosts) for key `h` on selection attempt `attempt`
    /// (0 first); `None` when the table is empty.
    pub fn choose(&self, h: u64, attempt: u32) -> Option<usize> {
        if !self.ring.is_empty() {
            // The first entry at or past the key, wrapping round (Envoy's ketama search).
            let mut i = self.ring.partition_point(|(k, _)| *k < h);
            if i == self.ring.len() {
                i = 0;
            }
            if attempt > 0 {
                i = (i + attempt as usize) % self.ring.len();
            }
            return Some(self.ring[i].1 as usize);
        }
        if self.maglev.is_empty() {
            return None;
        }
        // A retry that avoids a host moves the key by a value with most bits set, as Envoy.
        let h = if attempt > 0 {
            h ^ (attempt as u64).wrapping_neg()
        } else {
            h
        };
        Some(self.maglev[(h % self.maglev.len() as u64) as usize] as usize)
    }
}

/// What a host is hashed by: its hostname with `use_hostname_for_hashing` (where it has one;
/// Envoy would hash an empty name), else its address as Envoy prints it.
fn hash_key(h: &Host, use_hostname: bool) -> String {
    if use_hostname && !h.hostname.is_empty() {
        h.hostname.clone()
    } else {
        h.addr.to_string()
    }
}

/// A host in a table: its index in the level, what it is hashed by, its normalized weight.
struct Member {
    index: u32,
    key: String,
    weight: f64,
}

/// The member hosts with their weights normalized to sum 1, with the smallest and largest
/// (Envoy's `normalizeHostWeights`, floating point in the same order of operations). By
/// locality: each locality's share is its weight over all the level's locality weights
/// (a locality of weight 0 takes none), split among its member hosts by their weights, in
/// locality order (Envoy's `normalizeLocalityWeights`).
fn normalize(
    hosts: &[Arc<Host>],
    members: &[bool],
    use_hostname: bool,
    by_locality: bool,
) -> (Vec<Member>, f64, f64) {
    let (mut min, mut max) = (1.0f64, 0.0f64);
    let mut out = Vec::new();
    let mut group = |indices: &[usize], share: f64| {
        let sum: u64 = indices.iter().map(|i| hosts[*i].weight as u64).sum();
        for &i in indices {
            let w = hosts[i].weight as f64 * share / sum as f64;
            min = min.min(w);
            max = max.max(w);
            out.push(Member {
                index: i as u32,
                key: hash_key(&hosts[i], use_hostname),
                weight: w,
            });
        }
    };
    let chosen = |keep: &dyn Fn(&Host) -> bool| -> Vec<usize> {
        (0..hosts.len())
            .filter(|i| members[*i] && keep(&hosts[*i]))
            .collect()
    };
    if !by_locality {
        group(&chosen(&|_| true), 1.0);
    } else {
        let mut localities: Vec<(u32, u32)> = hosts.iter().map(|h| h.locality).collect();
        localities.sort_unstable();
        localities.dedup();
        let total: u64 = localities.iter().map(|(_, w)| *w as u64).sum();
        for (id, w) in localities.into_iter().filter(|(_, w)| *w > 0) {
            let indices = chosen(&|h| h.locality.0 == id);
            if !indices.is_empty() {
                group(&indices, w as f64 / total as f64);
            }
        }
    }
    (out, min, max)
}

/// Envoy's ring: scaled so the lightest host gets a whole number of entries and the ring at
/// least `min_size` (at most `max_size`); host `k`'s entries are the hashes of `"{key}_0"`,
/// `"{key}_1"`, …, handed out by running sums so that fractional shares stay stable.
fn build_ring(
    hosts: &[Member],
    min_w: f64,
    min_size: u64,
    max_size: u64,
    hash_fn: RingHashFn,
) -> Vec<(u64, u32)> {
    if hosts.is_empty() {
        return Vec::new();
    }
    let scale = ((min_w * min_size as f64).ceil() / min_w).min(max_size as f64);
    let mut ring = Vec::with_capacity(scale.ceil() as usize);
    let (mut current, mut target) = (0.0f64, 0.0f64);
    let mut key = String::new();
    for m in hosts {
        let (index, host_key) = (m.index, m.key.as_str());
        target += scale * m.weight;
        let mut n = 0u64;
        while current < target {
            key.clear();
            key.push_str(host_key);
            key.push('_');
            key.push_str(itoa::Buffer::new().format(n));
            let h = match hash_fn {
                RingHashFn::XxHash => xxhash_rust::xxh64::xxh64(key.as_bytes(), 0),
                RingHashFn::Murmur2 => murmur2_64(key.as_bytes(), MURMUR_SEED),
            };
            ring.push((h, index));
            n += 1;
            current += 1.0;
        }
    }
    ring.sort_by_key(|(h, _)| *h);
    ring
}

/// Envoy's Maglev table (Eisenbud et al., listing 1, weighted): hosts sorted by their key so
/// that the table does not depend on their order; each takes its next preferred free slot
/// in turn, a host of weight `w` once every `max / w` rounds.
fn build_maglev(mut hosts: Vec<Member>, max_w: f64, size: u64) -> Vec<u32> {
    if hosts.is_empty() || size < 2 {
        return Vec::new();
    }
    hosts.sort_by(|a, b| a.key.cmp(&b.key));
    struct Entry {
        index: u32,
        offset: u64,
        skip: u64,
        weight: f64,
        target: f64,
        next: u64,
    }
    let mut entries: Vec<Entry> = hosts
        .into_iter()
        .map(|m| Entry {
            index: m.index,
            offset: xxhash_rust::xxh64::xxh64(m.key.as_bytes(), 0) % size,
            skip: xxhash_rust::xxh64::xxh64(m.key.as_bytes(), 1) % (size - 1) + 1,
            weight: m.weight,
            target: 0.0,
            next: 0,
        })
        .collect();
    let mut table = vec![u32::MAX; size as usize];
    let mut filled = 0u64;
    let mut round = 1u32;
    while filled < size {
        for e in entries.iter_mut() {
            if filled == size {
                break;
            }
            if round as f64 * e.weight < e.target {
                continue;
            }
            e.target += max_w;
            let mut slot = (e.offset + e.skip * e.next) % size;
            while table[slot as usize] != u32::MAX {
                e.next += 1;
                slot = (e.offset + e.skip * e.next) % size;
            }
            table[slot as usize] = e.index;
            e.next += 1;
            filled += 1;
        }
        round += 1;
    }
    table
}

/// libstdc++'s `std::hash` seed, which Envoy's `MURMUR_HASH_2` ring uses.
const MURMUR_SEED: u64 = 0xc70f6907;

/// 64-bit MurmurHash2 (MurmurHash64A), the function Envoy's `MurmurHash::murmurHash2` copies
/// from libstdc++. Written out here rather than taken from a crate: it is only the ring's
/// optional entry hash, and the test below pins it to Envoy's own ring.
fn murmur2_64(data: &[u8], seed: u64) -> u64 {
    const M: u64 = 0xc6a4a7935bd1e995;
    let shift_mix = |v: u64| v ^ (v >> 47);
    let mut h = seed ^ (data.len() as u64).wrapping_mul(M);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let k = u64::from_le_bytes(c.try_into().expect("eight bytes"));
        h ^= shift_mix(k.wrapping_mul(M)).wrapping_mul(M);
        h = h.wrapping_mul(M);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let k = rest
            .iter()
            .rev()
            .fold(0u64, |acc, b| (acc << 8) | *b as u64);
        h ^= k;
        h = h.wrapping_mul(M);
    }
    shift_mix(shift_mix(h).wrapping_mul(M))
}

#[cfg(test)]
mod tests {
    //! The expected tables are those of Envoy's own tests (ring_hash_lb_test.cc and
    //! maglev_lb_test.cc): the same hosts must give the same entries here.
    use super::*;

    fn hosts(ports: &[(u16, u32)]) -> Vec<Arc<Host>> {
        ports
            .iter()
            .map(|(p, w)| {
                Arc::new(Host::new(
                    format!("127.0.0.1:{p}").parse().unwrap(),
                    p.to_string(),
                    *w,
                    0,
                ))
            })
            .collect()
    }

    fn ring(hs: &[Arc<Host>], min: u64, max: u64, hash_fn: RingHashFn, by_name: bool) -> Table {
        let kind = Kind::Ring {
            min_size: min,
            max_size: max,
            hash_fn,
        };
        Table::build(kind, hs, vec![true; hs.len()], by_name, false)
    }

    const SIX: [(u16, u32); 6] = [(90, 1), (91, 1), (92, 1), (93, 1), (94, 1), (95, 1)];

    #[test]
    fn the_ring_is_envoys() {
        let hs = hosts(&SIX);
        let t = ring(&hs, 12, 8 << 20, RingHashFn::XxHash, false);
        let expected: [(u64, usize); 12] = [
            (833437586790550860, 4),
            (928266305478181108, 2),
            (1033482794131418490, 0),
            (3551244743356806947, 5),
            (3851675632748031481, 3),
            (5583722120771150861, 1),
            (6311230543546372928, 1),
            (7700377290971790572, 3),
            (13144177310400110813, 5),
            (13444792449719432967, 2),
            (15516499411664133160, 4),
            (16117243373044804889, 0),
        ];
        let got: Vec<(u64, usize)> = t.ring.iter().map(|(h, i)| (*h, *i as usize)).collect();
        assert_eq!(got, expected);
        // Envoy's lookups: 0 and u64::MAX wrap to the first entry; an exact hash is its own.
        assert_eq!(t.choose(0, 0), Some(4));
        assert_eq!(t.choose(u64::MAX, 0), Some(4));
        assert_eq!(t.choose(3551244743356806947, 0), Some(5));
        assert_eq!(t.choose(3551244743356806948, 0), Some(3));
        assert_eq!(t.choose(16117243373044804880, 0), Some(0));
        // Selection attempts walk the ring (BasicWithRetryHostPredicate).
        assert_eq!(t.choose(0, 1), Some(2));
        assert_eq!(t.choose(0, 2), Some(0));
        assert_eq!(t.choose(0, 13), Some(2));
    }

    #[test]
    fn the_ring_by_hostname_and_by_murmur_is_envoys() {
        let hs = hosts(&SIX);
        let t = ring(&hs, 12, 8 << 20, RingHashFn::XxHash, true);
        assert_eq!(t.ring[0], (1975508444536362413, 5));
        assert_eq!(t.ring[5], (7225015537174310577, 2));
        assert_eq!(t.ring[11], (15364271037087512980, 4));
        assert_eq!(t.choose(6803900775736438537, 0), Some(3));

        let hs = hosts(&[(80, 1), (81, 1), (82, 1), (83, 1), (84, 1), (85, 1)]);
        let t = ring(&hs, 12, 8 << 20, RingHashFn::Murmur2, false);
        let got: Vec<u64> = t.ring.iter().map(|(h, _)| *h).collect();
        assert_eq!(
            got,
            [
                1358027074129602068,
                4361834613929391114,
                7224494972555149682,
                7701421856454313576,
                8649315368077433379,
                8739448859063030639,
                9887544217113020895,
                10150910876324007731,
                15168472011420622455,
                15427156902705414897,
                16375050414328759093,
                17613279263364193813
            ]
        );
        assert_eq!(t.choose(1358027074129602069, 0), Some(3));
        assert_eq!(t.choose(10150910876324007730, 0), Some(2));
    }

    #[test]
    fn ring_sizes_follow_the_weights() {
        // Two hosts, minimum 3: two entries each (UnevenHosts).
        let hs = hosts(&[(80, 1), (81, 1)]);
        let t = ring(&hs, 3, 8 << 20, RingHashFn::XxHash, false);
        let got: Vec<(u64, u32)> = t.ring.clone();
        assert_eq!(
            got,
            [
                (5454692015285649509, 0),
                (7859399908942313493, 1),
                (13838424394637650569, 0),
                (16064866803292627174, 1)
            ]
        );
        // Weights 1, 2, 3 in a ring of exactly six (HostWeightedTinyRing).
        let hs = hosts(&[(90, 1), (91, 2), (92, 3)]);
        let t = ring(&hs, 6, 6, RingHashFn::XxHash, false);
        for (h, host) in [
            (928266305478181108u64, 2),
            (4443673547860492590, 2),
            (5583722120771150861, 1),
            (6311230543546372928, 1),
            (13444792449719432967, 2),
            (16117243373044804889, 0),
        ] {
            assert_eq!(t.choose(h, 0), Some(host), "hash {h}");
        }
        assert_eq!(t.ring.len(), 6);
    }

    fn maglev(hs: &[Arc<Host>], size: u64, members: Vec<bool>) -> Table {
        Table::build(Kind::Maglev { size }, hs, members, false, false)
    }

    #[test]
    fn the_maglev_table_is_envoys() {
        let hs = hosts(&SIX);
        let t = maglev(&hs, 7, vec![true; 6]);
        assert_eq!(t.maglev, [2, 4, 0, 1, 5, 0, 3]);
        // Host order does not matter (BasicStability).
        let mut reversed = hs.clone();
        reversed.reverse();
        let r = maglev(&reversed, 7, vec![true; 6]);
        let by_port = |t: &Table, hs: &[Arc<Host>]| -> Vec<u16> {
            t.maglev
                .iter()
                .map(|i| hs[*i as usize].addr.port())
                .collect()
        };
        assert_eq!(by_port(&r, &reversed), by_port(&t, &hs));
        // Selection attempts (BasicWithRetryHostPredicate): key 10 is slot 3, host 1; the
        // second attempt lands on host 0, the third on host 5.
        assert_eq!(t.choose(10, 0), Some(1));
        assert_eq!(t.choose(10, 1), Some(0));
        assert_eq!(t.choose(10, 2), Some(5));

        let hs = hosts(&[(90, 1), (91, 2)]);
        let t = maglev(&hs, 17, vec![true; 2]);
        assert_eq!(
            t.maglev,
            [1, 0, 0, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 0, 1]
        );
    }

    #[test]
    fn a_table_without_a_host_spreads_its_keys() {
        // Envoy rebuilds the table from the healthy hosts: the keys of a host that went
        // down move to several others, not all to one neighbour.
        let hs = hosts(&[(90, 1), (91, 1), (92, 1), (93, 1), (94, 1), (95, 1)]);
        for full in [
            ring(&hs, 1024, 8 << 20, RingHashFn::XxHash, false),
            maglev(&hs, 65537, vec![true; 6]),
        ] {
            let kind = if full.ring.is_empty() {
                Kind::Maglev { size: 65537 }
            } else {
                Kind::Ring {
                    min_size: 1024,
                    max_size: 8 << 20,
                    hash_fn: RingHashFn::XxHash,
                }
            };
            let mut members = vec![true; 6];
            members[0] = false;
            let without = Table::build(kind, &hs, members, false, false);
            let mut moved_to = std::collections::BTreeSet::new();
            let mut stayed = 0;
            for k in 0..2000u64 {
                let key = xxhash_rust::xxh64::xxh64(&k.to_le_bytes(), 0);
                let before = full.choose(key, 0).unwrap();
                let after = without.choose(key, 0).unwrap();
                assert_ne!(after, 0, "the removed host is not in the table");
                if before == 0 {
                    moved_to.insert(after);
                } else if after == before {
                    stayed += 1;
                }
            }
            assert!(moved_to.len() >= 3, "{kind:?}: keys moved to {moved_to:?}");
            // The other hosts keep most of their keys (the ring grows their shares with
            // entries of their own, so a few keys change hands among them too).
            assert!(stayed > 2000 * 5 / 6 * 8 / 10, "{kind:?}: {stayed} kept");
        }
    }

    #[test]
    fn locality_weights_shape_the_maglev_table_as_envoys() {
        // LocalityWeightedSameLocalityWeights: two localities of weight 1, one host each.
        let hs: Vec<Arc<Host>> = hosts(&[(90, 1), (91, 2)])
            .into_iter()
            .enumerate()
            .map(|(i, h)| Arc::new(Host::clone_for_test(&h).with_locality(i as u32, 1)))
            .collect();
        let t = Table::build(Kind::Maglev { size: 17 }, &hs, vec![true; 2], false, true);
        assert_eq!(
            t.maglev,
            [1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1]
        );
        // LocalityWeightedDifferentLocalityWeights: localities A (weight 8: :90), B (0: :92),
        // C (2: :91); the weight-0 locality takes nothing.
        let base = hosts(&[(90, 1), (91, 2), (92, 3)]);
        let at = |i: usize, locality: u32, weight: u32| {
            Arc::new(Host::clone_for_test(&base[i]).with_locality(locality, weight))
        };
        let hs = vec![at(0, 0, 8), at(1, 2, 2), at(2, 1, 0)];
        let t = Table::build(Kind::Maglev { size: 17 }, &hs, vec![true; 3], false, true);
        assert_eq!(
            t.maglev,
            [1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0]
        );
        // Every locality weight 0: an empty table, no host.
        let hs = vec![at(0, 0, 0)];
        let t = Table::build(Kind::Maglev { size: 17 }, &hs, vec![true], false, true);
        assert_eq!(t.choose(0, 0), None);
    }
}
