//! An Envoy v3 bootstrap that points a proxy at our ADS server.
//!
//! The node and the static parts (admin, static listeners and clusters, stats and runtime
//! settings) come from the dump's `BootstrapConfigDump` when there is one, so the proxy
//! looks to itself as it did in production; only the xDS cluster and `dynamic_resources`
//! are replaced, and Istio's `sds-grpc` cluster is pointed at the same server, which answers
//! SDS from the dump's secrets. The result is checked by decoding it strictly as a
//! `envoy.config.bootstrap.v3.Bootstrap` before it is returned.

use super::dump::Dump;
use super::proto;
use super::server::Listen;
use anyhow::{anyhow, Context, Result};
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The xDS cluster name Istio uses; kept when the dump names none.
pub const XDS_CLUSTER: &str = "xds-grpc";

/// Istio's SDS cluster; when present it is pointed at our server as well.
pub const SDS_CLUSTER: &str = "sds-grpc";

/// Node fields Envoy fills in about itself; the proxy under test reports its own.
const ENVOY_NODE_FIELDS: &[&str] = &[
    "user_agent_name",
    "user_agent_version",
    "user_agent_build_version",
    "extensions",
    "client_features",
    "hidden_envoy_deprecated_build_version",
];

/// What [`build_with`] may change beyond the xDS address.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Incremental xDS (`DELTA_GRPC`) instead of state-of-the-world (`GRPC`).
    pub delta: bool,
    /// The admin listener's address instead of the dump's (or 127.0.0.1:15000).
    pub admin: Option<SocketAddr>,
    /// Reach the xDS server over TLS (see [`ClientTls`]).
    pub tls: Option<ClientTls>,
}

/// TLS from the proxy to the xDS server: an `UpstreamTlsContext` on the xDS cluster.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// PEM CA bundle the proxy verifies the server's certificate with (`trusted_ca`).
    pub ca: PathBuf,
    /// PEM client certificate chain and key for mutual TLS (`tls_certificates`).
    pub cert_key: Option<(PathBuf, PathBuf)>,
    /// The server name to send and verify (`sni`); the server's host when unset.
    pub sni: Option<String>,
}

/// Build the bootstrap JSON for a proxy that fetches everything from `xds` over ADS,
/// state-of-the-world (`GRPC`) or, with `delta`, incremental (`DELTA_GRPC`).
pub fn build(dump: Option<&Dump>, xds: &Listen, delta: bool) -> Result<Value> {
    build_with(
        dump,
        xds,
        &Options {
            delta,
            ..Default::default()
        },
    )
}

/// [`build`] with every option.
pub fn build_with(dump: Option<&Dump>, xds: &Listen, opts: &Options) -> Result<Value> {
    let delta = opts.delta;
    let mut b = match dump.and_then(|d| d.bootstrap.as_ref()) {
        // A round trip through the typed proto drops fields our descriptors do not know
        // (dumps of newer Envoys), so the output always decodes strictly.
        Some(raw) => {
            let typed: Bootstrap = proto::from_json(raw, false)
                .map_err(|e| anyhow!("the dump's bootstrap does not decode: {e}"))?;
            proto::to_json(&typed).map_err(|e| anyhow!("cannot re-encode the bootstrap: {e}"))?
        }
        None => default_base(),
    };
    let obj = b
        .as_object_mut()
        .context("the bootstrap is not an object")?;
    let cluster_name = obj
        .get("dynamic_resources")
        .and_then(|d| d.pointer("/ads_config/grpc_services/0/envoy_grpc/cluster_name"))
        .and_then(Value::as_str)
        .unwrap_or(XDS_CLUSTER)
        .to_string();
    if let Some(node) = obj.get_mut("node").and_then(Value::as_object_mut) {
        for f in ENVOY_NODE_FIELDS {
            node.remove(*f);
        }
    }
    let statics = obj
        .entry("static_resources")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .context("static_resources is not an object")?;
    let clusters = statics
        .entry("clusters")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .context("static_resources.clusters is not a list")?;
    clusters.retain(|c| c.get("name").and_then(Value::as_str) != Some(cluster_name.as_str()));
    // Secrets come from our server too (see xds::sds); other settings of that cluster stay.
    for sds in clusters
        .iter_mut()
        .filter(|c| c.get("name").and_then(Value::as_str) == Some(SDS_CLUSTER))
    {
        let fresh = xds_cluster(SDS_CLUSTER, xds)?;
        for key in ["type", "load_assignment"] {
            sds[key] = fresh[key].clone();
        }
    }
    let mut cluster = xds_cluster(&cluster_name, xds)?;
    if let Some(tls) = &opts.tls {
        cluster["transport_socket"] = tls_socket(tls)?;
    }
    clusters.push(cluster);
    if let Some(admin) = opts.admin {
        obj.entry("admin").or_insert_with(|| json!({}))["address"] = json!({
            "socket_address": {"address": admin.ip().to_string(), "port_value": admin.port()}
        });
    }
    obj.insert(
        "dynamic_resources".into(),
        dynamic_resources(&cluster_name, delta),
    );

    proto::from_json::<Bootstrap>(&b, true)
        .map_err(|e| anyhow!("the generated bootstrap does not decode: {e}"))?;
    Ok(b)
}

/// Node and admin for a dump without a bootstrap section: an Istio-style sidecar identity
/// and the admin port pilot-agent expects.
fn default_base() -> Value {
    json!({
        "node": {
            "id": "sidecar~127.0.0.1~mosn-replay.default~default.svc.cluster.local",
            "cluster": "mosn-replay.default",
        },
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}
        },
    })
}

/// The xDS cluster's `transport_socket`: Envoy's `UpstreamTlsContext` with file data sources
/// (absolute paths, so the proxy may run from any directory), ALPN h2.
fn tls_socket(tls: &ClientTls) -> Result<Value> {
    let abs = |p: &std::path::Path| -> Result<String> {
        let p = std::path::absolute(p)
            .with_context(|| format!("cannot make {} absolute", p.display()))?;
        Ok(p.to_string_lossy().into_owned())
    };
    let mut common = json!({
        "alpn_protocols": ["h2"],
        "validation_context": {"trusted_ca": {"filename": abs(&tls.ca)?}},
    });
    if let Some((cert, key)) = &tls.cert_key {
        common["tls_certificates"] = json!([{
            "certificate_chain": {"filename": abs(cert)?},
            "private_key": {"filename": abs(key)?},
        }]);
    }
    let mut ctx = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": common,
    });
    if let Some(sni) = &tls.sni {
        ctx["sni"] = json!(sni);
    }
    Ok(json!({"name": "envoy.transport_sockets.tls", "typed_config": ctx}))
}

/// Istio 1.10's `dynamic_resources`: CDS and LDS over ADS, waiting indefinitely for the
/// first answer, ADS with the node on the first message only.
fn dynamic_resources(cluster: &str, delta: bool) -> Value {
    let over_ads = json!({"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"});
    json!({
        "lds_config": over_ads,
        "cds_config": over_ads,
        "ads_config": {
            "api_type": if delta { "DELTA_GRPC" } else { "GRPC" },
            "set_node_on_first_message_only": true,
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": cluster}}],
        },
    })
}

/// The xDS cluster in Istio 1.10's shape: HTTP/2 over a unix `pipe` or TCP.
fn xds_cluster(name: &str, xds: &Listen) -> Result<Value> {
    let (kind, address) = match xds {
        Listen::Unix(path) => ("STATIC", json!({"pipe": {"path": path.to_string_lossy()}})),
        Listen::Tcp(addr) => {
            let (host, port) = addr
                .rsplit_once(':')
                .context("no port in the xDS address")?;
            let port: u16 = port.parse().context("bad port in the xDS address")?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            // An IP needs no resolution; a host name (istiod.istio-system.svc) is resolved
            // the way Istio's non-agent bootstrap does it.
            let kind = if addr.parse::<SocketAddr>().is_ok() {
                "STATIC"
            } else {
                "STRICT_DNS"
            };
            (
                kind,
                json!({"socket_address": {"address": host, "port_value": port}}),
            )
        }
    };
    Ok(json!({
        "name": name,
        "type": kind,
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
        "upstream_connection_options": {"tcp_keepalive": {"keepalive_time": 300}},
        "http2_protocol_options": {},
    }))
}
