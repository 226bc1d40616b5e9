//! Counters and gauges with Envoy's names, rendered as Envoy's `/stats` text and as Prometheus.
//!
//! A stat is an atomic plus a "used" flag (Envoy's `usedonly` shows stats written at least once).
//! Handles are `Arc`s fetched once and kept by their owners, so the hot path is one atomic add.

use regex::Regex;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Counter or gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// One stat.
#[derive(Debug)]
pub struct Stat {
    kind: Kind,
    value: AtomicU64,
    used: AtomicBool,
    /// Prometheus family name and its labels, rendered (`k="v",...`; Envoy's default tag
    /// extraction, or the labels a labelled stat was made with).
    prom: (String, String),
}

impl Stat {
    /// Add one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Add `n`.
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
        self.used.store(true, Ordering::Relaxed);
    }
    /// Subtract one (gauges), saturating at zero.
    pub fn dec(&self) {
        let _ = self
            .value
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(1))
            });
        self.used.store(true, Ordering::Relaxed);
    }
    /// Set (gauges).
    pub fn set(&self, v: u64) {
        self.value.store(v, Ordering::Relaxed);
        self.used.store(true, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
    /// Whether it was ever written.
    pub fn used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }
}

/// Samples of one Prometheus family: (rendered labels, value).
type Family = (Kind, Vec<(String, u64)>);

/// Envoy's default histogram bucket bounds.
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// A histogram over [`BUCKETS`], counted exactly (Envoy's are approximate: its samples fall in
/// two-significant-digit bins, so a sample of 1 is not within `le="1"` there, and is here).
#[derive(Debug)]
pub struct Histogram {
    /// Samples at or below each bound (not cumulative).
    counts: [AtomicU64; BUCKETS.len()],
    above: AtomicU64,
    sum: AtomicU64,
    /// Prometheus family name and rendered labels.
    prom: (String, String),
}

impl Histogram {
    /// Record one sample.
    pub fn record(&self, v: u64) {
        let i = BUCKETS.partition_point(|b| *b < v as f64);
        match self.counts.get(i) {
            Some(c) => c.fetch_add(1, Ordering::Relaxed),
            None => self.above.fetch_add(1, Ordering::Relaxed),
        };
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String) {
        let (family, labels) = &self.prom;
        let sep = if labels.is_empty() { "" } else { "," };
        let mut total = 0;
        for (bound, c) in BUCKETS.iter().zip(&self.counts) {
            total += c.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{family}_bucket{{{labels}{sep}le=\"{bound}\"}} {total}"
            );
        }
        total += self.above.load(Ordering::Relaxed);
        let _ = writeln!(out, "{family}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let sum = self.sum.load(Ordering::Relaxed);
        let _ = writeln!(out, "{family}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{family}_count{{{labels}}} {total}");
    }

    fn count(&self) -> u64 {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
            + self.above.load(Ordering::Relaxed)
    }
}

/// The stat store.
#[derive(Debug, Default)]
pub struct Stats {
    map: RwLock<BTreeMap<String, Arc<Stat>>>,
    histograms: RwLock<BTreeMap<String, Arc<Histogram>>>,
}

impl Stats {
    /// A new, empty store.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn get_or_create(
        &self,
        name: &str,
        kind: Kind,
        tag: Option<(&'static str, &str, &str)>,
    ) -> Arc<Stat> {
        if let Some(s) = self.map.read().unwrap().get(name) {
            return s.clone();
        }
        let prom = match tag {
            Some((label, value, base)) => (
                prom_name(base),
                format!("{label}=\"{}\"", escape_label(value)),
            ),
            None => (prom_name(name), String::new()),
        };
        self.insert(name, kind, prom)
    }

    fn insert(&self, name: &str, kind: Kind, prom: (String, String)) -> Arc<Stat> {
        let stat = Arc::new(Stat {
            kind,
            value: AtomicU64::new(0),
            used: AtomicBool::new(false),
            prom,
        });
        self.map
            .write()
            .unwrap()
            .entry(name.to_string())
            .or_insert(stat)
            .clone()
    }

    /// A counter by full Envoy name.
    pub fn counter(&self, name: &str) -> Arc<Stat> {
        self.get_or_create(name, Kind::Counter, None)
    }

    /// A gauge by full Envoy name.
    pub fn gauge(&self, name: &str) -> Arc<Stat> {
        self.get_or_create(name, Kind::Gauge, None)
    }

    /// A stat of a Prometheus `family` (named as it is, without `envoy_`) with `labels`, as
    /// Istio's stats filter makes them; in `/stats` it is `istiocustom.<family>` followed by
    /// `.<label>.<value>` for each label, as Envoy names tagged stats.
    pub fn labeled(&self, family: &str, labels: &[(&str, &str)], kind: Kind) -> Arc<Stat> {
        let name = tagged_name(family, labels);
        if let Some(s) = self.map.read().unwrap().get(&name) {
            return s.clone();
        }
        self.insert(&name, kind, (family.to_string(), render_labels(labels)))
    }

    /// [`labeled`](Self::labeled) for a histogram: in `/stats/prometheus` only.
    pub fn labeled_histogram(&self, family: &str, labels: &[(&str, &str)]) -> Arc<Histogram> {
        let name = tagged_name(family, labels);
        if let Some(h) = self.histograms.read().unwrap().get(&name) {
            return h.clone();
        }
        let h = Arc::new(Histogram {
            counts: Default::default(),
            above: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            prom: (family.to_string(), render_labels(labels)),
        });
        self.histograms
            .write()
            .unwrap()
            .entry(name)
            .or_insert(h)
            .clone()
    }

    /// `cluster.<name>.<suffix>`, tagged `envoy_cluster_name` for Prometheus.
    pub fn cluster(&self, cluster: &str, suffix: &str, kind: Kind) -> Arc<Stat> {
        let name = format!("cluster.{cluster}.{suffix}");
        self.get_or_create(
            &name,
            kind,
            Some(("envoy_cluster_name", cluster, &format!("cluster.{suffix}"))),
        )
    }

    /// `http.<prefix>.<suffix>`, tagged `envoy_http_conn_manager_prefix`.
    pub fn http(&self, prefix: &str, suffix: &str, kind: Kind) -> Arc<Stat> {
        let name = format!("http.{prefix}.{suffix}");
        self.get_or_create(
            &name,
            kind,
            Some((
                "envoy_http_conn_manager_prefix",
                prefix,
                &format!("http.{suffix}"),
            )),
        )
    }

    /// `listener.<address>.<suffix>`, tagged `envoy_listener_address`.
    pub fn listener(&self, address: &str, suffix: &str, kind: Kind) -> Arc<Stat> {
        let name = format!("listener.{address}.{suffix}");
        self.get_or_create(
            &name,
            kind,
            Some((
                "envoy_listener_address",
                address,
                &format!("listener.{suffix}"),
            )),
        )
    }

    /// The value of a stat, if it exists.
    pub fn value(&self, name: &str) -> Option<u64> {
        self.map.read().unwrap().get(name).map(|s| s.get())
    }

    /// Envoy's `/stats` text: `name: value` per line, sorted by name.
    pub fn render_text(&self, used_only: bool, filter: Option<&Regex>) -> String {
        let mut out = String::new();
        for (name, s) in self.map.read().unwrap().iter() {
            if (used_only && !s.used()) || filter.is_some_and(|f| !f.is_match(name)) {
                continue;
            }
            let _ = writeln!(out, "{name}: {}", s.get());
        }
        out
    }

    /// Envoy's `/stats?format=json`.
    pub fn render_json(&self, used_only: bool, filter: Option<&Regex>) -> serde_json::Value {
        let stats: Vec<_> = self
            .map
            .read()
            .unwrap()
            .iter()
            .filter(|(n, s)| (!used_only || s.used()) && filter.is_none_or(|f| f.is_match(n)))
            .map(|(n, s)| serde_json::json!({"name": n, "value": s.get()}))
            .collect();
        serde_json::json!({ "stats": stats })
    }

    /// Prometheus text exposition with Envoy's metric names (`envoy_` + sanitized name).
    pub fn render_prometheus(&self, used_only: bool, filter: Option<&Regex>) -> String {
        // Group by metric family so TYPE lines appear once.
        let mut families: BTreeMap<String, Family> = BTreeMap::new();
        for (name, s) in self.map.read().unwrap().iter() {
            if (used_only && !s.used()) || filter.is_some_and(|f| !f.is_match(name)) {
                continue;
            }
            families
                .entry(s.prom.0.clone())
                .or_insert_with(|| (s.kind, Vec::new()))
                .1
                .push((s.prom.1.clone(), s.get()));
        }
        let mut out = String::new();
        for (family, (kind, samples)) in families {
            let t = if kind == Kind::Counter {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(out, "# TYPE {family} {t}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{family}{{{labels}}} {v}");
            }
        }
        // Histograms after counters and gauges, as Envoy writes them.
        let mut last = None;
        for (name, h) in self.histograms.read().unwrap().iter() {
            if (used_only && h.count() == 0) || filter.is_some_and(|f| !f.is_match(name)) {
                continue;
            }
            if last != Some(&h.prom.0) {
                let _ = writeln!(out, "# TYPE {} histogram", h.prom.0);
                last = Some(&h.prom.0);
            }
            h.render(&mut out);
        }
        out
    }
}

/// A labelled stat's `/stats` name: `istiocustom.<family>` and `.<label>.<value>` for each.
fn tagged_name(family: &str, labels: &[(&str, &str)]) -> String {
    let mut name = format!("istiocustom.{family}");
    for (k, v) in labels {
        let _ = write!(name, ".{k}.{v}");
    }
    name
}

/// `k="v",...` with Prometheus escapes.
fn render_labels(labels: &[(&str, &str)]) -> String {
    let mut rendered = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(rendered, "{sep}{k}=\"{}\"", escape_label(v));
    }
    rendered
}

/// `envoy_` + the name with every character outside `[a-zA-Z0-9_]` turned into `_`.
pub fn prom_name(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 6);
    s.push_str("envoy_");
    s.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    s
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Envoy's `server.state` values.
pub mod server_state {
    /// Serving.
    pub const LIVE: u64 = 0;
    /// Draining listeners.
    pub const DRAINING: u64 = 1;
    /// Before initialisation.
    pub const PRE_INITIALIZING: u64 = 2;
    /// Waiting for the initial config.
    pub const INITIALIZING: u64 = 3;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_usedonly_filter_and_prometheus() {
        let s = Stats::new();
        s.gauge("server.state").set(0);
        s.counter("never.used");
        s.cluster(
            "outbound|9080||reviews.default.svc.cluster.local",
            "upstream_rq_total",
            Kind::Counter,
        )
        .add(3);
        let all = s.render_text(false, None);
        assert!(all.contains("never.used: 0\n"));
        let used = s.render_text(true, None);
        assert!(!used.contains("never.used"));
        assert!(used.contains(
            "cluster.outbound|9080||reviews.default.svc.cluster.local.upstream_rq_total: 3\n"
        ));
        let f = Regex::new("^server\\.state").unwrap();
        assert_eq!(s.render_text(true, Some(&f)), "server.state: 0\n");
        let p = s.render_prometheus(false, None);
        assert!(p.contains("# TYPE envoy_cluster_upstream_rq_total counter\n"));
        assert!(p.contains(
            "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"outbound|9080||reviews.default.svc.cluster.local\"} 3\n"
        ));
        assert!(p.contains("envoy_server_state{} 0\n"));
    }

    #[test]
    fn labelled_counters_and_histograms_render_as_prometheus_families() {
        let s = Stats::new();
        let labels = [("reporter", "source"), ("destination_service", "a\"b")];
        s.labeled("istio_requests_total", &labels, Kind::Counter)
            .add(2);
        assert_eq!(
            s.value("istiocustom.istio_requests_total.reporter.source.destination_service.a\"b"),
            Some(2)
        );
        let h = s.labeled_histogram("istio_request_duration_milliseconds", &labels);
        for v in [0, 1, 3, 7_200_000] {
            h.record(v);
        }
        let p = s.render_prometheus(false, None);
        let l = "reporter=\"source\",destination_service=\"a\\\"b\"";
        assert!(
            p.contains(&format!(
                "# TYPE istio_requests_total counter\nistio_requests_total{{{l}}} 2\n"
            )),
            "{p}"
        );
        let family = "istio_request_duration_milliseconds";
        assert!(p.contains(&format!("# TYPE {family} histogram\n")), "{p}");
        for (le, n) in [("0.5", 1), ("1", 2), ("5", 3), ("3600000", 3), ("+Inf", 4)] {
            let line = format!("{family}_bucket{{{l},le=\"{le}\"}} {n}\n");
            assert!(p.contains(&line), "{line} in {p}");
        }
        assert!(p.contains(&format!("{family}_sum{{{l}}} 7200004\n")), "{p}");
        assert!(p.contains(&format!("{family}_count{{{l}}} 4\n")), "{p}");
        // Histograms come after the counters, and an unused one is left out of usedonly.
        assert!(p.find("# TYPE istio_requests_total").unwrap() < p.find(family).unwrap());
        s.labeled_histogram("istio_request_bytes", &labels);
        assert!(!s
            .render_prometheus(true, None)
            .contains("istio_request_bytes"));
    }
}
