//! Load balancing: ROUND_ROBIN (weighted), LEAST_REQUEST (power of two choices), RANDOM,
//! RING_HASH and MAGLEV. A [`HostSet`] is immutable and rebuilt whenever a cluster's hosts change,
//! so per-set tables (RR sequence, ring, Maglev table) are computed once.

pub mod hash;
mod locality;
pub mod slow_start;
pub mod table;

use crate::cluster::host::Host;
use arc_swap::ArcSwapOption;
use envoy_types::pb::envoy::config::cluster::v3 as cpb;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A cluster's LB policy with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LbPolicy {
    /// Weighted round robin.
    RoundRobin,
    /// Power of `choice_count` choices by active requests.
    LeastRequest {
        /// Number of random picks compared (default 2).
        choice_count: u32,
    },
    /// Weighted random.
    Random,
    /// Ketama-style ring.
    RingHash {
        /// Minimum ring size (default 1024).
        min_size: u64,
        /// Maximum ring size (default 8M).
        max_size: u64,
        /// The hash of the ring's entries (`hash_function`).
        hash_fn: table::RingHashFn,
        /// Hosts are hashed by hostname (`use_hostname_for_hashing`), not address.
        use_hostname: bool,
    },
    /// Maglev table.
    Maglev {
        /// Table size, a prime (default 65537).
        table_size: u64,
        /// Hosts are hashed by hostname (`use_hostname_for_hashing`), not address.
        use_hostname: bool,
    },
    /// The cluster picks the host itself (ORIGINAL_DST).
    ClusterProvided,
}

impl LbPolicy {
    /// From the Cluster proto.
    pub fn from_proto(c: &cpb::Cluster) -> Result<Self, String> {
        use cpb::cluster::LbConfig;
        let use_hostname = c
            .common_lb_config
            .as_ref()
            .and_then(|l| l.consistent_hashing_lb_config.as_ref())
            .is_some_and(|h| h.use_hostname_for_hashing);
        Ok(match c.lb_policy {
            0 => LbPolicy::RoundRobin,
            1 => LbPolicy::LeastRequest {
                choice_count: match &c.lb_config {
                    Some(LbConfig::LeastRequestLbConfig(l)) => {
                        l.choice_count.as_ref().map(|v| v.value.max(2)).unwrap_or(2)
                    }
                    _ => 2,
                },
            },
            2 => {
                let (mut min_size, mut max_size) = (1024, 8 * 1024 * 1024);
                let mut hash_fn = table::RingHashFn::XxHash;
                if let Some(LbConfig::RingHashLbConfig(r)) = &c.lb_config {
                    if r.hash_function
                        == cpb::cluster::ring_hash_lb_config::HashFunction::MurmurHash2 as i32
                    {
                        hash_fn = table::RingHashFn::Murmur2;
                    }
                    min_size = r
                        .minimum_ring_size
                        .as_ref()
                        .map(|v| v.value)
                        .unwrap_or(min_size);
                    max_size = r
                        .maximum_ring_size
                        .as_ref()
                        .map(|v| v.value)
                        .unwrap_or(max_size);
                }
                // Envoy's proto limits: both at most 8M entries.
                if min_size > max_size || max_size > 8 * 1024 * 1024 {
                    return Err(format!(
                        "ring hash sizes must satisfy minimum ({min_size}) <= maximum ({max_size}) <= 8388608"
                    ));
                }
                LbPolicy::RingHash {
                    min_size,
                    max_size,
                    hash_fn,
                    use_hostname,
                }
            }
            3 => LbPolicy::Random,
            5 => {
                let table_size = match &c.lb_config {
                    Some(LbConfig::MaglevLbConfig(m)) => {
                        m.table_size.as_ref().map(|v| v.value).unwrap_or(65537)
                    }
                    _ => 65537,
                };
                // Maglev's permutations only cover the table when its size is prime; Envoy
                // also caps it at 5000011.
                if table_size > 5_000_011 || !is_prime(table_size) {
                    return Err(format!(
                        "maglev table_size {table_size} must be a prime <= 5000011"
                    ));
                }
                LbPolicy::Maglev {
                    table_size,
                    use_hostname,
                }
            }
            6 => LbPolicy::ClusterProvided,
            p => return Err(format!("lb_policy {p} is not supported")),
        })
    }

    /// The consistent-hash table this policy keeps, and whether hosts are hashed by name.
    fn table_kind(&self) -> Option<(table::Kind, bool)> {
        match *self {
            LbPolicy::RingHash {
                min_size,
                max_size,
                hash_fn,
                use_hostname,
            } => Some((
                table::Kind::Ring {
                    min_size,
                    max_size,
                    hash_fn,
                },
                use_hostname,
            )),
            LbPolicy::Maglev {
                table_size,
                use_hostname,
            } => Some((table::Kind::Maglev { size: table_size }, use_hostname)),
            _ => None,
        }
    }
}

/// Per-request inputs to host selection.
#[derive(Debug, Default, Clone, Copy)]
pub struct LbContext<'a> {
    /// Hash from the route's hash policy (RING_HASH/MAGLEV); random when absent.
    pub hash: Option<u64>,
    /// Hosts to avoid (retries with previous_hosts).
    pub exclude: &'a [std::net::SocketAddr],
    /// How many times a hash policy's pick may move on from an excluded host
    /// (`host_selection_retry_max_attempts`); other policies always avoid excluded hosts
    /// while they have another.
    pub host_selection_attempts: u32,
    /// Priorities a retry moves away from (`previous_priorities`): their levels take no load
    /// while another level has health.
    pub skip_priorities: &'a [u32],
}

/// A cluster's LB settings besides its policy.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LbOptions {
    /// `common_lb_config.locality_weighted_lb_config`: hosts are picked by locality weight
    /// first (Istio's `localityLbSetting.distribute`).
    pub by_locality: bool,
    /// `slow_start_config` of ROUND_ROBIN or LEAST_REQUEST.
    pub slow_start: Option<slow_start::SlowStart>,
}

impl LbOptions {
    /// From the Cluster proto.
    pub fn from_proto(c: &cpb::Cluster) -> Self {
        use cpb::cluster::common_lb_config::LocalityConfigSpecifier;
        LbOptions {
            by_locality: c.common_lb_config.as_ref().is_some_and(|l| {
                matches!(
                    l.locality_config_specifier,
                    Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
                )
            }),
            slow_start: slow_start::SlowStart::from_cluster(c),
        }
    }
}

/// Hosts of one priority with their precomputed LB tables.
#[derive(Debug)]
struct Level {
    hosts: Vec<Arc<Host>>,
    /// Weighted RR sequence (indices), or empty when all weights are equal.
    rr_seq: Vec<u32>,
    rr_next: AtomicUsize,
    /// The consistent-hash table (RING_HASH, MAGLEV) over the hosts usable when it was built;
    /// rebuilt when that changes, as Envoy rebuilds it on health changes.
    table: ArcSwapOption<table::Table>,
    equal_weights: bool,
    /// With `locality_weighted_lb_config`: each locality's weight and hosts (indices), in
    /// assignment order; empty without it.
    localities: Vec<(u32, Vec<usize>)>,
    /// Slow start, with the end of the last window of this level's hosts (none once every
    /// host's has passed: no clock read per pick then).
    slow_start: Option<(slow_start::SlowStart, Instant)>,
    /// Set once a pick found every window over.
    slow_over: std::sync::atomic::AtomicBool,
}

/// An immutable set of hosts grouped by priority.
#[derive(Debug)]
pub struct HostSet {
    levels: Vec<Level>,
    /// All hosts (admin `/clusters`, outlier accounting).
    pub all: Vec<Arc<Host>>,
}

impl HostSet {
    /// Build the set and the tables `policy` needs.
    pub fn new(hosts: Vec<Arc<Host>>, policy: &LbPolicy, opts: LbOptions) -> Self {
        let by_locality = opts.by_locality;
        let mut prios: Vec<u32> = hosts.iter().map(|h| h.priority).collect();
        prios.sort_unstable();
        prios.dedup();
        let levels = prios
            .into_iter()
            .map(|p| {
                let hs: Vec<Arc<Host>> =
                    hosts.iter().filter(|h| h.priority == p).cloned().collect();
                let equal_weights = hs.windows(2).all(|w| w[0].weight == w[1].weight);
                Level {
                    rr_seq: if equal_weights {
                        Vec::new()
                    } else {
                        smooth_wrr(&hs)
                    },
                    // Envoy starts round robin at a random offset so that many proxies do not
                    // hit the same first host.
                    rr_next: AtomicUsize::new(fastrand::usize(..hs.len().max(1))),
                    table: ArcSwapOption::new(policy.table_kind().map(|(kind, by_name)| {
                        let now = Instant::now();
                        let members = hs.iter().map(|h| !h.is_down(|| now)).collect();
                        Arc::new(table::Table::build(
                            kind,
                            &hs,
                            members,
                            by_name,
                            by_locality,
                        ))
                    })),
                    equal_weights,
                    localities: if by_locality {
                        locality::localities(&hs)
                    } else {
                        Vec::new()
                    },
                    slow_start: opts
                        .slow_start
                        .and_then(|ss| Some((ss, ss.last_window_end(&hs)?))),
                    slow_over: Default::default(),
                    hosts: hs,
                }
            })
            .collect();
        HostSet { levels, all: hosts }
    }

    /// Whether there are no hosts at all.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Pick a host as Envoy does. The priority level comes from the levels' health (their
    /// healthy share times the overprovisioning factor, 1.4): a level short of healthy hosts
    /// passes part of its load to the next. Within the level, unhealthy hosts (EDS-unhealthy
    /// or ejected) are skipped, unless the levels together lack healthy hosts and this one's
    /// healthy share is below `panic_threshold` percent (panic mode, 50 by default; 0 never
    /// panics): then all of that level is used.
    pub fn choose(
        &self,
        policy: &LbPolicy,
        panic_threshold: f64,
        ctx: &LbContext<'_>,
    ) -> Option<Arc<Host>> {
        // The clock is read only if some host was ever ejected (a clock read costs more than
        // the rest of a round-robin pick).
        let now = std::cell::LazyCell::new(Instant::now);
        let is_down = |h: &Host| h.is_down(|| *now);
        // No allocation for one level (the usual cluster): the check is a load per host.
        let count_down = |l: &Level| l.hosts.iter().filter(|h| is_down(h)).count();
        let (level, n_down, total_health) = match self.levels.as_slice() {
            [] => return None,
            [only] => {
                let d = count_down(only);
                (only, d, health(only.hosts.len(), d))
            }
            levels => {
                let downs: Vec<usize> = levels.iter().map(count_down).collect();
                let healths: Vec<usize> = levels
                    .iter()
                    .zip(&downs)
                    .map(|(l, d)| health(l.hosts.len(), *d))
                    .collect();
                // A hash policy picks the level by the request's hash, so a key stays put.
                let roll = ctx
                    .hash
                    .map_or_else(|| fastrand::usize(..100), |h| (h % 100) as usize);
                // A retry's previous priorities lose their load (Envoy's
                // `adjustForAttemptedPriorities`), unless that leaves no health at all.
                // Only a retry with previous_priorities has any: no work for the rest.
                let adjusted: Vec<usize>;
                let loads_from = if ctx.skip_priorities.is_empty() {
                    &healths
                } else {
                    let skip = |l: &Level| {
                        l.hosts
                            .first()
                            .is_some_and(|h| ctx.skip_priorities.contains(&h.priority))
                    };
                    adjusted = levels
                        .iter()
                        .zip(&healths)
                        .map(|(l, h)| if skip(l) { 0 } else { *h })
                        .collect();
                    if adjusted.iter().any(|h| *h > 0) {
                        &adjusted
                    } else {
                        &healths
                    }
                };
                let mut upto = 0;
                let i = priority_loads(loads_from)
                    .iter()
                    .position(|load| {
                        upto += load;
                        roll < upto
                    })
                    .unwrap_or(0);
                (&levels[i], downs[i], healths.iter().sum::<usize>().min(100))
            }
        };
        let down = |i: usize| n_down > 0 && is_down(&level.hosts[i]);
        let healthy = (level.hosts.len() - n_down) as f64;
        let panic = n_down > 0
            && total_health < 100
            && healthy * 100.0 < panic_threshold * level.hosts.len() as f64;
        if let Some((kind, by_name)) = policy.table_kind() {
            return level
                .pick_hashed(kind, by_name, ctx, &|i| panic || !down(i))
                .map(|i| level.hosts[i].clone());
        }
        let usable = |i: usize| (panic || !down(i)) && !ctx.exclude.contains(&level.hosts[i].addr);
        // Locality-weighted: first the locality (not in panic, as Envoy), then the host in it.
        if let Some(id) = (!panic).then(|| level.choose_locality(&down)).flatten() {
            let in_locality = |i: usize| usable(i) && level.hosts[i].locality.0 == id;
            if let Some(i) = level.pick(policy, &in_locality) {
                return Some(level.hosts[i].clone());
            }
        }
        if let Some(i) = level.pick(policy, &usable) {
            return Some(level.hosts[i].clone());
        }
        // Everything excluded by retry predicates: fall back to any healthy host.
        let fallback = |i: usize| panic || !down(i);
        level
            .pick(policy, &fallback)
            .map(|i| level.hosts[i].clone())
    }
}

/// Envoy's default overprovisioning factor, in percent.
const OVERPROVISIONING: usize = 140;

/// A priority level's health in percent: its healthy share times the overprovisioning
/// factor, at most 100.
fn health(hosts: usize, down: usize) -> usize {
    (OVERPROVISIONING * (hosts - down))
        .checked_div(hosts)
        .unwrap_or(0)
        .min(100)
}

/// Each level's share of the load in percent (Envoy's priority load): its health over the
/// levels' total (capped at 100), and at most what the levels before it left. Rounding's
/// remainder goes to the first level with load; with no health anywhere, all to the first.
fn priority_loads(healths: &[usize]) -> Vec<usize> {
    let total = healths.iter().sum::<usize>().min(100);
    let mut loads = vec![0; healths.len()];
    if total == 0 {
        loads[0] = 100;
        return loads;
    }
    let mut left = 100;
    for (load, h) in loads.iter_mut().zip(healths) {
        *load = (h * 100 / total).min(left);
        left -= *load;
    }
    if let Some(first) = loads.iter_mut().find(|l| **l > 0) {
        *first += left;
    }
    loads
}

impl Level {
    /// Envoy's thread-aware pick: the key's host in the table of the hosts that may take
    /// traffic (`member`), rebuilding the table when they changed; a host to avoid sends the
    /// pick on along the table, `host_selection_attempts` times at most, after which the
    /// last host stands.
    fn pick_hashed(
        &self,
        kind: table::Kind,
        by_name: bool,
        ctx: &LbContext<'_>,
        member: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let cached = self.table.load();
        let rebuilt;
        let table = match &*cached {
            Some(t) if t.members.iter().enumerate().all(|(i, m)| *m == member(i)) => t,
            _ => {
                let members = (0..self.hosts.len()).map(member).collect();
                let by_locality = !self.localities.is_empty();
                rebuilt = Arc::new(table::Table::build(
                    kind,
                    &self.hosts,
                    members,
                    by_name,
                    by_locality,
                ));
                self.table.store(Some(rebuilt.clone()));
                &rebuilt
            }
        };
        let h = ctx.hash.unwrap_or_else(|| fastrand::u64(..));
        let attempts = if ctx.exclude.is_empty() {
            1
        } else {
            ctx.host_selection_attempts.max(1) + 1
        };
        let mut last = None;
        for attempt in 0..attempts {
            let i = table.choose(h, attempt)?;
            if !ctx.exclude.contains(&self.hosts[i].addr) {
                return Some(i);
            }
            last = Some(i);
        }
        last
    }

    /// The pick of the policies without a table, among the `usable` hosts.
    fn pick(&self, policy: &LbPolicy, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        let n = self.hosts.len();
        if n == 0 {
            return None;
        }
        if let Some(i) = self.slow_start_pick(policy, usable) {
            return i;
        }
        match policy {
            LbPolicy::LeastRequest { choice_count } => {
                let cands: Vec<usize> = (0..n).filter(|i| usable(*i)).collect();
                if cands.is_empty() {
                    return None;
                }
                let mut best: Option<usize> = None;
                for _ in 0..*choice_count {
                    let c = if self.equal_weights {
                        cands[fastrand::usize(..cands.len())]
                    } else {
                        weighted_random(&self.hosts, &cands)?
                    };
                    // Weighted least request: compare active / weight.
                    let score = |i: usize| {
                        (self.hosts[i].active() + 1) as f64 / self.hosts[i].weight as f64
                    };
                    if best.is_none_or(|b| score(c) < score(b)) {
                        best = Some(c);
                    }
                }
                best
            }
            LbPolicy::Random => {
                let cands: Vec<usize> = (0..n).filter(|i| usable(*i)).collect();
                weighted_random(&self.hosts, &cands)
            }
            _ => {
                // Round robin (also the fallback for ClusterProvided sets).
                let len = if self.rr_seq.is_empty() {
                    n
                } else {
                    self.rr_seq.len()
                };
                for _ in 0..len {
                    let k = self.rr_next.fetch_add(1, Ordering::Relaxed) % len;
                    let i = if self.rr_seq.is_empty() {
                        k
                    } else {
                        self.rr_seq[k] as usize
                    };
                    if usable(i) {
                        return Some(i);
                    }
                }
                None
            }
        }
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// One of `items` drawn at random by its weight; at the top end (rounding) the last with
/// weight, else the last.
fn roll<T: Copy>(items: &[(T, f64)]) -> Option<T> {
    let total: f64 = items.iter().map(|(_, w)| w).sum();
    let mut roll = fastrand::f64() * total;
    for (t, w) in items {
        if roll < *w {
            return Some(*t);
        }
        roll -= w;
    }
    items
        .iter()
        .rev()
        .find(|(_, w)| *w > 0.0)
        .or(items.last())
        .map(|(t, _)| *t)
}

fn weighted_random(hosts: &[Arc<Host>], cands: &[usize]) -> Option<usize> {
    let total: u64 = cands.iter().map(|i| hosts[*i].weight as u64).sum();
    if total == 0 {
        return None;
    }
    let mut r = fastrand::u64(..total);
    for i in cands {
        let w = hosts[*i].weight as u64;
        if r < w {
            return Some(*i);
        }
        r -= w;
    }
    None
}

/// Smooth weighted round robin (interleaved, exact proportions over one cycle). Weights are
/// scaled down so that a cycle stays small.
fn smooth_wrr(hosts: &[Arc<Host>]) -> Vec<u32> {
    let total: u64 = hosts.iter().map(|h| h.weight as u64).sum();
    let scale = total.div_ceil(4096).max(1);
    let weights: Vec<i64> = hosts
        .iter()
        .map(|h| ((h.weight as u64 / scale).max(1)) as i64)
        .collect();
    let sum: i64 = weights.iter().sum();
    let mut current = vec![0i64; hosts.len()];
    let mut seq = Vec::with_capacity(sum as usize);
    for _ in 0..sum {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, -(*i as i64)))
            .unwrap();
        current[best] -= sum;
        seq.push(best as u32);
    }
    seq
}

#[cfg(test)]
mod tests;
