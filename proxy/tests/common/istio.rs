//! Istio telemetry fixtures: a sidecar's node, and the Istio series in `/stats/prometheus`.

use super::*;
use serde_json::{json, Value};

/// A sidecar's node as pilot-agent describes it.
pub fn node(workload: &str, app: &str, version: &str) -> Value {
    json!({"id": format!("sidecar~10.0.0.1~{workload}-abc.default~default.svc.cluster.local"),
        "cluster": format!("{app}.default"),
        "metadata": {"NAME": format!("{workload}-abc"), "NAMESPACE": "default", "WORKLOAD_NAME": workload,
            "CLUSTER_ID": "Kubernetes", "INSTANCE_IPS": "10.0.0.1", "ISTIO_VERSION": "1.10.6",
            "LABELS": {"app": app, "version": version,
                "service.istio.io/canonical-name": app, "service.istio.io/canonical-revision": version}}})
}

/// The labels of the one `istio_requests_total` series in a Prometheus text, and its value.
pub fn series(prom: &str) -> Vec<(Vec<(String, String)>, u64)> {
    family(prom, "istio_requests_total")
}

/// Every series of the counter `name`: its labels and value.
pub fn family(prom: &str, name: &str) -> Vec<(Vec<(String, String)>, u64)> {
    let prefix = format!("{name}{{");
    prom.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|l| {
            let (labels, value) = l.rsplit_once("} ").unwrap();
            let labels = labels
                .split("\",")
                .map(|kv| {
                    let (k, v) = kv.split_once("=\"").unwrap();
                    (k.to_string(), v.trim_end_matches('"').to_string())
                })
                .collect();
            (labels, value.parse().unwrap())
        })
        .collect()
}

/// Each of `want`'s labels has its value in `s`.
pub fn assert_labels(s: &[(String, String)], want: &[(&str, &str)]) {
    for (k, v) in want {
        assert_eq!(label(s, k), *v, "{k} in {s:?}");
    }
}

/// The value of label `k`.
pub fn label<'a>(s: &'a [(String, String)], k: &str) -> &'a str {
    s.iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no label {k} in {s:?}"))
}

/// A proxy's `/stats/prometheus`.
pub async fn prometheus(p: &Proxy) -> String {
    get(p.admin(), "/stats/prometheus", &[]).await.body
}
