//! Reading an Envoy admin `/config_dump` (also the `?include_eds` form) into typed resources.
//!
//! Only the dynamic resources are served over xDS: static listeners and clusters belong to
//! the bootstrap, which [`super::bootstrap`] rebuilds from the dump's `BootstrapConfigDump`.
//! Active resources win over warming ones of the same name; draining and errored listeners
//! are left out, as Envoy would not be serving them.

use super::cache::Snapshot;
use super::{proto, CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use anyhow::{bail, Context, Result};
use envoy_types::pb::envoy::config::cluster::v3::{cluster::DiscoveryType, Cluster};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::google::protobuf::Any;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const ADMIN: &str = "type.googleapis.com/envoy.admin.v3.";

/// What a config dump holds, ready to serve.
#[derive(Clone, Debug, Default)]
pub struct Dump {
    /// The `bootstrap` of the BootstrapConfigDump, as JSON, if the dump has one.
    pub bootstrap: Option<Value>,
    /// Dynamic resources per type URL, in dump order.
    pub resources: BTreeMap<String, Vec<Any>>,
    /// EDS clusters without a ClusterLoadAssignment in the dump (see [`Dump::snapshot`]).
    pub missing_endpoints: Vec<String>,
    /// ClusterLoadAssignments that no cluster of the dump uses, for which a minimal EDS
    /// cluster was made up so a proxy subscribes to them (an `EndpointsConfigDump` alone, e.g.
    /// `istioctl proxy-config endpoints -o json`, or a dump saved without clusters).
    pub synthesized_clusters: Vec<String>,
    /// Resources that could not be decoded, and other things the user should know.
    pub warnings: Vec<String>,
}

impl Dump {
    /// Read and decode a config dump file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config dump {}", path.display()))?;
        let value: Value = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not JSON\n\nhelp: save it with `curl -s localhost:15000/config_dump?include_eds`",
                path.display()
            )
        })?;
        Self::from_json(&value)
            .with_context(|| format!("cannot use config dump {}", path.display()))
    }

    /// Decode a config dump (`envoy.admin.v3.ConfigDump` JSON).
    pub fn from_json(value: &Value) -> Result<Self> {
        let Some(configs) = value.get("configs").and_then(Value::as_array) else {
            bail!(
                "no `configs` array: this is not an Envoy /config_dump\n\n\
                 help: save one with `curl -s localhost:15000/config_dump?include_eds`"
            );
        };
        let mut dump = Dump::default();
        let mut seen: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
        for config in configs {
            let ty = config.get("@type").and_then(Value::as_str).unwrap_or("");
            let Some(kind) = ty.strip_prefix(ADMIN) else {
                if ty.contains("envoy.admin.v2alpha") {
                    bail!(
                        "`{ty}` is an xDS v2 dump\n\n\
                         help: only v3 dumps (Envoy 1.17 and later, Istio 1.8 and later) can be served"
                    );
                }
                dump.warnings
                    .push(format!("ignoring config section of type `{ty}`"));
                continue;
            };
            // (list field, resource path inside an item, type URL) per section kind.
            let lists: &[(&str, &[&str], &'static str)] = match kind {
                "BootstrapConfigDump" => {
                    dump.bootstrap = config.get("bootstrap").cloned();
                    &[]
                }
                "ClustersConfigDump" => &[
                    ("dynamic_active_clusters", &["cluster"], CLUSTER),
                    ("dynamic_warming_clusters", &["cluster"], CLUSTER),
                ],
                "ListenersConfigDump" => &[
                    ("dynamic_listeners", &["active_state", "listener"], LISTENER),
                    (
                        "dynamic_listeners",
                        &["warming_state", "listener"],
                        LISTENER,
                    ),
                ],
                "RoutesConfigDump" => &[("dynamic_route_configs", &["route_config"], ROUTE)],
                "SecretsConfigDump" => &[
                    ("dynamic_active_secrets", &["secret"], SECRET),
                    ("dynamic_warming_secrets", &["secret"], SECRET),
                ],
                "EndpointsConfigDump" => {
                    seen.entry(ENDPOINT).or_default();
                    &[("dynamic_endpoint_configs", &["endpoint_config"], ENDPOINT)]
                }
                other => {
                    let empty = config.as_object().map(|m| m.len() <= 1).unwrap_or(true);
                    if !empty {
                        dump.warnings
                            .push(format!("not serving the {other} section"));
                    }
                    &[]
                }
            };
            for (field, path, type_url) in lists {
                let items = config.get(*field).and_then(Value::as_array);
                for item in items.into_iter().flatten() {
                    let Some(res) = path.iter().try_fold(item, |v, k| v.get(*k)) else {
                        continue;
                    };
                    dump.add(res, type_url, seen.entry(type_url).or_default());
                }
            }
        }
        dump.fill_missing_endpoints();
        dump.synthesize_clusters();
        Ok(dump)
    }

    /// Decode one resource and keep it unless one of that name was already taken.
    fn add(&mut self, res: &Value, type_url: &str, seen: &mut BTreeSet<String>) {
        let label = res
            .get("name")
            .or_else(|| res.get("cluster_name"))
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        match proto::any_from_json(res) {
            Ok(any) if any.type_url != type_url => self.warnings.push(format!(
                "skipping `{label}`: it is a {} where a {type_url} belongs",
                any.type_url
            )),
            Ok(any) => match proto::resource_name(&any) {
                Some(name) if seen.insert(name.clone()) => self
                    .resources
                    .entry(type_url.to_string())
                    .or_default()
                    .push(any),
                Some(_) => {} // a warming copy of an active resource
                None => self
                    .warnings
                    .push(format!("skipping a nameless {type_url}")),
            },
            // The decoder quotes offending values, and in a secret those can be key material.
            Err(_) if type_url == SECRET => self.warnings.push(format!(
                "skipping secret `{label}`: it does not decode as a {SECRET} \
                 (details withheld: they could quote the key)"
            )),
            Err(e) => self
                .warnings
                .push(format!("skipping {type_url} `{label}`: {e}")),
        }
    }

    /// Envoy's dump holds endpoints only with `?include_eds`. An EDS cluster whose endpoints
    /// never arrive stays warming and holds back every listener, so serve an empty
    /// ClusterLoadAssignment for it (istiod does the same for services without endpoints).
    fn fill_missing_endpoints(&mut self) {
        let have: BTreeSet<String> = self
            .resources
            .get(ENDPOINT)
            .into_iter()
            .flatten()
            .filter_map(proto::resource_name)
            .collect();
        let mut missing = Vec::new();
        for any in self.resources.get(CLUSTER).into_iter().flatten() {
            let Ok(c) = <Cluster as prost::Message>::decode(any.value.as_slice()) else {
                continue;
            };
            let eds = matches!(
                c.cluster_discovery_type,
                Some(envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType::Type(t))
                    if t == DiscoveryType::Eds as i32
            );
            if !eds {
                continue;
            }
            let service = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or(c.name);
            if !have.contains(&service) && !missing.contains(&service) {
                missing.push(service);
            }
        }
        if missing.is_empty() {
            return;
        }
        if !self.resources.contains_key(ENDPOINT) {
            self.warnings.push(
                "the dump has no endpoints (save it with /config_dump?include_eds); \
                 EDS clusters get empty ClusterLoadAssignments"
                    .into(),
            );
        }
        let list = self.resources.entry(ENDPOINT.to_string()).or_default();
        for name in &missing {
            list.push(proto::pack(&ClusterLoadAssignment {
                cluster_name: name.clone(),
                ..Default::default()
            }));
        }
        self.missing_endpoints = missing;
    }

    /// A proxy only asks for endpoints of the EDS clusters it knows, so a ClusterLoadAssignment
    /// that no cluster of the dump names (by `eds_cluster_config.service_name`, or by cluster
    /// name for any cluster type) would be served to nobody. Give each such CLA a minimal EDS
    /// cluster of the same name, fetching it over ADS, as istiod writes outbound clusters
    /// (contract §5: `service_name` = cluster name). Listed in `synthesized_clusters`.
    fn synthesize_clusters(&mut self) {
        let mut used: BTreeSet<String> = BTreeSet::new();
        for any in self.resources.get(CLUSTER).into_iter().flatten() {
            let Ok(c) = <Cluster as prost::Message>::decode(any.value.as_slice()) else {
                continue;
            };
            if let Some(e) = c.eds_cluster_config.as_ref() {
                if !e.service_name.is_empty() {
                    used.insert(e.service_name.clone());
                }
            }
            used.insert(c.name);
        }
        let orphans: Vec<String> = self
            .resources
            .get(ENDPOINT)
            .into_iter()
            .flatten()
            .filter_map(proto::resource_name)
            .filter(|n| !used.contains(n))
            .collect();
        if orphans.is_empty() {
            return;
        }
        let list = self.resources.entry(CLUSTER.to_string()).or_default();
        for name in &orphans {
            list.push(proto::pack(&eds_cluster(name)));
        }
        self.synthesized_clusters = orphans;
    }

    /// The resources as a cache snapshot. All five types are included, empty or not, so
    /// wildcard CDS/LDS subscribers get an answer even from a dump without listeners.
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot::new();
        for type_url in [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET] {
            let list = self.resources.get(type_url).cloned().unwrap_or_default();
            snap = snap.with(type_url, list);
        }
        snap
    }

    /// How many resources of `type_url` the dump provides.
    pub fn count(&self, type_url: &str) -> usize {
        self.resources.get(type_url).map(Vec::len).unwrap_or(0)
    }
}

/// The cluster [`Dump::synthesize_clusters`] makes up for an orphan ClusterLoadAssignment:
/// type EDS, endpoints from `name` over ADS (waiting for them indefinitely, as Istio's
/// bootstrap does), Istio's 10 s connect timeout, round robin.
pub fn eds_cluster(name: &str) -> Cluster {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, EdsClusterConfig,
    };
    use envoy_types::pb::envoy::config::core::v3::{
        config_source::ConfigSourceSpecifier, AggregatedConfigSource, ApiVersion, ConfigSource,
    };
    use envoy_types::pb::google::protobuf::Duration;
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            service_name: name.to_string(),
            eds_config: Some(ConfigSource {
                config_source_specifier: Some(ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource {},
                )),
                initial_fetch_timeout: Some(Duration {
                    seconds: 0,
                    nanos: 0,
                }),
                resource_api_version: ApiVersion::V3 as i32,
                ..Default::default()
            }),
        }),
        connect_timeout: Some(Duration {
            seconds: 10,
            nanos: 0,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn active_wins_over_warming_and_draining_is_left_out() {
        let l = |name: &str, port: u32| {
            json!({"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": name,
                   "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}}})
        };
        let dump = Dump::from_json(&json!({"configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "dynamic_listeners": [
                {"name": "a", "active_state": {"listener": l("a", 1)}, "warming_state": {"listener": l("a", 2)}},
                {"name": "b", "warming_state": {"listener": l("b", 3)}},
                {"name": "c", "draining_state": {"listener": l("c", 4)}}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "dynamic_active_clusters": [
                {"cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                             "name": "x", "connect_timeout": "soon"}}]}
        ]}))
        .unwrap();
        let names: Vec<String> = dump.resources[LISTENER]
            .iter()
            .filter_map(proto::resource_name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        let a: envoy_types::pb::envoy::config::listener::v3::Listener =
            prost::Message::decode(dump.resources[LISTENER][0].value.as_slice()).unwrap();
        let port = a.address.unwrap().address.unwrap();
        assert!(format!("{port:?}").contains("PortValue(1)"), "{port:?}");
        assert_eq!(dump.count(CLUSTER), 0);
        assert!(dump.warnings[0].contains("`x`"), "{:?}", dump.warnings);
    }

    #[test]
    fn undecodable_secret_is_skipped_without_quoting_it() {
        let dump = Dump::from_json(&json!({"configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump", "dynamic_active_secrets": [
                {"name": "default", "secret": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                    "name": "default", "tls_certificate": {"private_key": "-----BEGIN PRIVATE KEY-----"}}}]}
        ]}))
        .unwrap();
        assert_eq!(dump.count(SECRET), 0);
        assert_eq!(dump.warnings.len(), 1, "{:?}", dump.warnings);
        assert!(
            dump.warnings[0].contains("`default`"),
            "{:?}",
            dump.warnings
        );
        assert!(
            !dump.warnings[0].contains("PRIVATE KEY"),
            "{:?}",
            dump.warnings
        );
    }

    #[test]
    fn orphan_endpoints_get_an_eds_cluster() {
        let cla = |n: &str| {
            json!({"endpoint_config": {
            "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment", "cluster_name": n}})
        };
        let cluster = |c: Value| json!({"cluster": c});
        let dump = Dump::from_json(&json!({"configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "dynamic_active_clusters": [
                cluster(json!({"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                    "name": "outbound|80||a", "type": "EDS",
                    "eds_cluster_config": {"service_name": "a-service", "eds_config": {"ads": {}}}})),
                cluster(json!({"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                    "name": "BlackHoleCluster", "type": "STATIC"}))]},
            {"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump", "dynamic_endpoint_configs": [
                cla("a-service"), cla("BlackHoleCluster"), cla("outbound|9080||orphan")]}
        ]}))
        .unwrap();
        assert!(dump.warnings.is_empty(), "{:?}", dump.warnings);
        assert_eq!(dump.synthesized_clusters, ["outbound|9080||orphan"]);
        assert_eq!(dump.count(CLUSTER), 3);
        let made: Cluster =
            prost::Message::decode(dump.resources[CLUSTER][2].value.as_slice()).unwrap();
        let json = proto::to_json(&made).unwrap();
        assert_eq!(json["name"], "outbound|9080||orphan");
        assert_eq!(json["type"], "EDS");
        assert_eq!(
            json["eds_cluster_config"]["service_name"],
            "outbound|9080||orphan"
        );
        assert_eq!(json["eds_cluster_config"]["eds_config"]["ads"], json!({}));
    }

    #[test]
    fn not_a_v3_dump() {
        let v2 = json!({"configs": [{"@type": "type.googleapis.com/envoy.admin.v2alpha.ClustersConfigDump"}]});
        assert!(format!("{:#}", Dump::from_json(&v2).unwrap_err()).contains("v2"));
        let other = Dump::from_json(&json!({"listeners": []})).unwrap_err();
        assert!(other.to_string().contains("help:"));
    }
}
