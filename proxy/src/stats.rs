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

/// The stat store.
#[derive(Debug, Default)]
pub struct Stats {
    map: RwLock<BTreeMap<String, Arc<Stat>>>,
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
        let mut name = format!("istiocustom.{family}");
        for (k, v) in labels {
            let _ = write!(name, ".{k}.{v}");
        }
        if let Some(s) = self.map.read().unwrap().get(&name) {
            return s.clone();
        }
        let mut rendered = String::new();
        for (i, (k, v)) in labels.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(rendered, "{sep}{k}=\"{}\"", escape_label(v));
        }
        self.insert(&name, kind, (family.to_string(), rendered))
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
        out
    }
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
}
