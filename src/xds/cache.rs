//! The versioned resource snapshot that the ADS streams serve.
//!
//! Resources are kept per type URL, each type with its own version that moves only when the
//! set of (name, content) pairs of that type changes: pushing an identical config is a no-op,
//! so clients see no churn. Every resource also carries a content hash, which is its version
//! in delta xDS. Streams follow the cache through a `watch` channel.

use super::proto::resource_name;
use anyhow::{bail, Result};
use envoy_types::pb::google::protobuf::Any;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

/// One resource as served: its name, its content hash (delta version) and the payload.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    /// The resource name (Cluster.name, ClusterLoadAssignment.cluster_name, ...).
    pub name: String,
    /// A hash of the encoded payload; the per-resource version in delta xDS.
    pub version: String,
    /// The resource itself.
    pub any: Any,
}

/// All resources of one type URL at one version.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypeResources {
    /// The type's version, "1", "2", ...; bumped only when the resources change.
    pub version: String,
    /// The resources by name.
    pub resources: BTreeMap<String, Arc<Resource>>,
}

/// What the cache holds: every type that has been set, with its resources.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// Resources per type URL. A type that was never set is absent, and streams wait for it.
    pub types: BTreeMap<String, Arc<TypeResources>>,
}

/// Resources to put into the cache, per type URL. Types not mentioned stay as they are.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The complete new resource list of each type in this snapshot.
    pub resources: BTreeMap<String, Vec<Any>>,
}

impl Snapshot {
    /// An empty snapshot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the complete resource list of `type_url`.
    pub fn with(mut self, type_url: impl Into<String>, resources: Vec<Any>) -> Self {
        self.resources.insert(type_url.into(), resources);
        self
    }

    /// Add typed resources, packed with their canonical type URL. The type is included even
    /// when `msgs` is empty, which makes "no resources of this type" part of the snapshot.
    pub fn with_messages<M: prost::Message + prost::Name>(
        mut self,
        msgs: impl IntoIterator<Item = M>,
    ) -> Self {
        let list = self.resources.entry(M::type_url()).or_default();
        list.extend(msgs.into_iter().map(|m| super::proto::pack(&m)));
        self
    }

    /// Add one resource written as proto3 JSON with its `@type`, e.g. a Cluster copied from
    /// a config dump. Handy for tests that describe Istio-shaped configs as JSON.
    pub fn with_json(mut self, resource: &serde_json::Value) -> Result<Self> {
        let any = super::proto::any_from_json(resource)
            .map_err(|e| anyhow::anyhow!("cannot decode a resource: {e}"))?;
        self.resources
            .entry(any.type_url.clone())
            .or_default()
            .push(any);
        Ok(self)
    }

    /// The number of resources over all types.
    pub fn len(&self) -> usize {
        self.resources.values().map(Vec::len).sum()
    }

    /// Whether the snapshot holds no resources at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A shared, versioned resource cache. Cloning gives another handle to the same cache.
#[derive(Clone, Debug)]
pub struct Cache {
    tx: Arc<watch::Sender<Arc<State>>>,
}

impl Default for Cache {
    fn default() -> Self {
        Self::new()
    }
}

impl Cache {
    /// An empty cache: no types set, so streams wait until a type is set.
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::channel(Arc::new(State::default())).0),
        }
    }

    /// A cache holding `snapshot`.
    pub fn with_snapshot(snapshot: Snapshot) -> Result<Self> {
        let cache = Self::new();
        cache.update(snapshot)?;
        Ok(cache)
    }

    /// The current state.
    pub fn state(&self) -> Arc<State> {
        self.tx.borrow().clone()
    }

    /// Follow the cache: the receiver is notified whenever a type's version moves.
    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.tx.subscribe()
    }

    /// The current version of `type_url`, if that type was ever set.
    pub fn version(&self, type_url: &str) -> Option<String> {
        self.tx
            .borrow()
            .types
            .get(type_url)
            .map(|t| t.version.clone())
    }

    /// Replace all resources of `type_url`; returns the type's (possibly unchanged) version.
    pub fn set_resources(&self, type_url: &str, resources: Vec<Any>) -> Result<String> {
        let versions = self.update(Snapshot::new().with(type_url, resources))?;
        Ok(versions[type_url].clone())
    }

    /// Apply every type of `snapshot` at once (streams see all of it or none of it). Returns
    /// the resulting version of each type in the snapshot.
    pub fn update(&self, snapshot: Snapshot) -> Result<BTreeMap<String, String>> {
        // Validate and hash before taking the lock, so a bad snapshot changes nothing.
        let mut prepared = BTreeMap::new();
        for (type_url, list) in snapshot.resources {
            prepared.insert(type_url.clone(), index(&type_url, list)?);
        }
        let mut versions = BTreeMap::new();
        self.tx.send_if_modified(|state| {
            let mut next = (**state).clone();
            let mut changed = false;
            for (type_url, resources) in prepared {
                let old = next.types.get(&type_url);
                let version = match old {
                    Some(old) if old.resources == resources => old.version.clone(),
                    Some(old) => bump(&old.version),
                    None => "1".to_string(),
                };
                if old.map(|o| o.version != version).unwrap_or(true) {
                    changed = true;
                    next.types.insert(
                        type_url.clone(),
                        Arc::new(TypeResources {
                            version: version.clone(),
                            resources,
                        }),
                    );
                }
                versions.insert(type_url, version);
            }
            if changed {
                *state = Arc::new(next);
            }
            changed
        });
        Ok(versions)
    }
}

/// Name and hash every resource of one type, rejecting wrong types, nameless and duplicates.
fn index(type_url: &str, list: Vec<Any>) -> Result<BTreeMap<String, Arc<Resource>>> {
    let mut out = BTreeMap::new();
    for any in list {
        if any.type_url != type_url {
            bail!(
                "a resource of type {} was given as {type_url}\n\n\
                 help: put each resource under its own type URL",
                any.type_url
            );
        }
        let Some(name) = resource_name(&any) else {
            bail!("a {type_url} resource has no name");
        };
        let version = crate::fsutil::hex(&Sha256::digest(&any.value)[..8]);
        let res = Resource {
            name: name.clone(),
            version,
            any,
        };
        if out.insert(name.clone(), Arc::new(res)).is_some() {
            bail!("two {type_url} resources are named `{name}`");
        }
    }
    Ok(out)
}

/// The next version after `v` (versions are decimal counters; anything else restarts at 1).
fn bump(v: &str) -> String {
    (v.parse::<u64>().unwrap_or(0) + 1).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    fn cluster(name: &str, ms: i64) -> Cluster {
        Cluster {
            name: name.into(),
            connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 0,
                nanos: (ms * 1_000_000) as i32,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn versions_move_only_on_change() {
        let cache = Cache::new();
        let url = <Cluster as prost::Name>::type_url();
        let v1 = cache
            .update(Snapshot::new().with_messages([cluster("a", 10)]))
            .unwrap();
        assert_eq!(v1[&url], "1");
        let again = cache
            .update(Snapshot::new().with_messages([cluster("a", 10)]))
            .unwrap();
        assert_eq!(again[&url], "1");
        let v2 = cache
            .update(Snapshot::new().with_messages([cluster("a", 20)]))
            .unwrap();
        assert_eq!(v2[&url], "2");
        assert!(cache
            .update(Snapshot::new().with_messages([cluster("b", 1), cluster("b", 2)]))
            .is_err());
        assert_eq!(cache.version(&url).as_deref(), Some("2"));
    }
}
