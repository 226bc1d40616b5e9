//! A cluster's transport sockets: its `transport_socket`, and `transport_socket_matches`
//! picked per endpoint by the endpoint's `envoy.transport_socket_match` metadata. Istio's
//! auto-mTLS is this: outbound clusters carry a `tlsMode-istio` match (`{tlsMode: istio}` →
//! an `UpstreamTlsContext` with the workload certificate) and a `tlsMode-disabled` one (empty
//! match → plaintext), and EDS labels the endpoints that have a sidecar.

use super::host::Host;
use super::proxy_header::{self, Preamble, Version};
use super::AutoSni;
use crate::tls::context::RAW_BUFFER_URL;
use crate::tls::ClientTls;
use envoy_types::pb::envoy::config::cluster::v3 as cpb;
use envoy_types::pb::envoy::config::core::v3::{
    transport_socket::ConfigType, Metadata, TransportSocket,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct};
use std::net::SocketAddr;
use std::sync::Arc;

/// The metadata namespace a transport socket match reads.
pub const MATCH_NAMESPACE: &str = "envoy.transport_socket_match";

/// One transport socket: TLS or plaintext (`tls` `None`), with or without the upstream PROXY
/// protocol header first.
#[derive(Debug, Default)]
struct Socket {
    tls: Option<Arc<ClientTls>>,
    proxy: Option<Version>,
}

/// One `transport_socket_matches` entry.
#[derive(Debug)]
struct Match {
    /// Fields an endpoint's match metadata must all have (none: every endpoint).
    criteria: Vec<(String, String)>,
    socket: Socket,
}

/// What a cluster's connections run over.
#[derive(Debug, Default)]
pub struct Transport {
    default: Socket,
    matches: Vec<Match>,
    /// SNI and certificate checks from each request's host.
    auto: AutoSni,
    /// Every socket is plain TCP: no dial needs working out (the common case).
    plain: bool,
}

impl Transport {
    /// Compile the cluster's transport sockets; `auto` is its HTTP options' SNI and SAN
    /// checks from each request's host.
    pub fn from_cluster(c: &cpb::Cluster, auto: &AutoSni) -> Result<Self, String> {
        let default = socket(c.transport_socket.as_ref(), auto)
            .map_err(|e| format!("transport_socket: {e}"))?;
        let mut matches = Vec::new();
        for m in &c.transport_socket_matches {
            let socket = socket(m.transport_socket.as_ref(), auto)
                .map_err(|e| format!("transport_socket_matches {:?}: {e}", m.name))?;
            matches.push(Match {
                criteria: m.r#match.as_ref().map(fields).unwrap_or_default(),
                socket,
            });
        }
        let is_plain = |s: &Socket| s.tls.is_none() && s.proxy.is_none();
        Ok(Transport {
            plain: is_plain(&default) && matches.iter().all(|m| is_plain(&m.socket)),
            default,
            matches,
            auto: auto.clone(),
        })
    }

    /// What a new connection to `host` needs, TLS or a PROXY header (`None` for plain
    /// TCP); for a connection without a host (ORIGINAL_DST), the cluster's own transport
    /// socket. An error when the context cannot be used yet (a secret has not arrived).
    /// `request` is the HTTP request the connection is for, whose host names the connection
    /// when the cluster asks for auto SNI. `downstream` is the (source, destination) a PROXY
    /// header names, when the connection is made for a downstream that has them.
    pub fn dial(
        &self,
        host: Option<&Host>,
        secrets: &crate::tls::Secrets,
        alpn: crate::tls::Alpn,
        request: Option<(&http::HeaderMap, &http::Uri)>,
        downstream: Option<(SocketAddr, SocketAddr)>,
    ) -> Result<Option<Arc<crate::tls::Dial>>, String> {
        if self.plain {
            return Ok(None);
        }
        let s = match host {
            Some(h) => self.socket_for(h),
            None => &self.default,
        };
        let tls = match &s.tls {
            None => None,
            Some(t) => {
                let dial = t.dial(secrets, alpn)?;
                match request
                    .filter(|_| self.auto.is_on())
                    .and_then(|r| self.name_of(r))
                {
                    Some(name) => Some(Arc::new(dial.named(name))),
                    None => Some(dial),
                }
            }
        };
        Ok(match s.proxy {
            None => tls,
            Some(version) => {
                let proxy = Preamble {
                    version,
                    addrs: downstream,
                };
                Some(Arc::new(crate::tls::Dial::with_proxy(
                    tls.as_deref(),
                    proxy,
                )))
            }
        })
    }

    /// Every socket is plain TCP, so [`dial`](Self::dial) always gives `None`.
    #[inline]
    pub fn is_plain(&self) -> bool {
        self.plain
    }

    /// The host a request names for auto SNI: the override header or Host (the URI's
    /// authority for HTTP/2), without port or IPv6 brackets, as Envoy's `parseAuthority`.
    fn name_of<'r>(&self, (headers, uri): (&'r http::HeaderMap, &'r http::Uri)) -> Option<&'r str> {
        let header = self.auto.header.as_ref().unwrap_or(&http::header::HOST);
        let host = match headers.get(header) {
            Some(v) => v.to_str().ok()?,
            None if self.auto.header.is_none() => uri.authority()?.as_str(),
            None => return None,
        };
        let (name, _) = crate::route::redirect::split_host_port(host);
        let name = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        (!name.is_empty()).then_some(name)
    }

    /// The TLS context for connections to `host` (`None`: plaintext): the first match whose
    /// criteria the endpoint's metadata all has, else the cluster's own transport socket.
    pub fn for_host(&self, host: &Host) -> Option<&Arc<ClientTls>> {
        self.socket_for(host).tls.as_ref()
    }

    /// The first match whose criteria the endpoint's metadata all has, else the default.
    fn socket_for(&self, host: &Host) -> &Socket {
        if self.matches.is_empty() {
            return &self.default;
        }
        let has =
            |(k, v): &(String, String)| host.socket_match.iter().any(|(hk, hv)| hk == k && hv == v);
        match self.matches.iter().find(|m| m.criteria.iter().all(has)) {
            Some(m) => &m.socket,
            None => &self.default,
        }
    }

    /// Every TLS context of the cluster (for SDS subscriptions).
    pub fn contexts(&self) -> impl Iterator<Item = &Arc<ClientTls>> {
        self.default
            .tls
            .iter()
            .chain(self.matches.iter().filter_map(|m| m.socket.tls.as_ref()))
    }
}

/// A transport socket: TLS, or plaintext (also for `raw_buffer`), either of them perhaps
/// wrapped in the upstream PROXY protocol socket.
fn socket(t: Option<&TransportSocket>, auto: &AutoSni) -> Result<Socket, String> {
    match t.map(|t| (&t.name, &t.config_type)) {
        None => Ok(Socket::default()),
        Some((_, Some(ConfigType::TypedConfig(any)))) if any.type_url == RAW_BUFFER_URL => {
            Ok(Socket::default())
        }
        Some((_, Some(ConfigType::TypedConfig(any)))) if any.type_url == proxy_header::URL => {
            let (version, inner) = proxy_header::unwrap(any)?;
            let inner = socket(inner.as_ref(), auto)?;
            if inner.proxy.is_some() {
                return Err("an upstream PROXY protocol socket inside another".into());
            }
            Ok(Socket {
                tls: inner.tls,
                proxy: Some(version),
            })
        }
        Some((_, Some(ConfigType::TypedConfig(any)))) => Ok(Socket {
            tls: Some(Arc::new(ClientTls::from_any(any, auto.sni, auto.san)?)),
            proxy: None,
        }),
        Some((n, None)) => Err(format!("transport socket {n:?} has no typed_config")),
    }
}

/// A Struct's scalar fields as strings (strings as they are, numbers and bools printed), the
/// way match criteria and endpoint metadata are compared.
fn fields(s: &Struct) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = s
        .fields
        .iter()
        .filter_map(|(k, v)| {
            let v = match v.kind.as_ref()? {
                Kind::StringValue(s) => s.clone(),
                Kind::BoolValue(b) => b.to_string(),
                Kind::NumberValue(n) => n.to_string(),
                _ => return None,
            };
            Some((k.clone(), v))
        })
        .collect();
    out.sort();
    out
}

/// An endpoint's transport socket match metadata (`metadata.filter_metadata
/// ["envoy.transport_socket_match"]`).
pub fn socket_match(md: Option<&Metadata>) -> Vec<(String, String)> {
    md.and_then(|m| m.filter_metadata.get(MATCH_NAMESPACE))
        .map(fields)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use serde_json::json;

    fn cluster(v: serde_json::Value) -> cpb::Cluster {
        crate::config::test_proto(v)
    }

    /// Istio's auto-mTLS: the tlsMode-istio match for labelled endpoints, plaintext else; and
    /// a cluster that asks for auto SNI names each connection after its request's host.
    #[test]
    fn matches_pick_per_endpoint_and_auto_sni_names_connections() {
        let c = cluster(json!({"name": "c", "transport_socket_matches": [
            {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": {"name": "tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", "sni": "a.b"}}},
            {"name": "tlsMode-disabled", "match": {}, "transport_socket": {"name": "raw", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}]}));
        let md: envoy_types::pb::envoy::config::core::v3::Metadata = crate::config::test_proto(
            json!({"filter_metadata": {MATCH_NAMESPACE: {"tlsMode": "istio"}}}),
        );
        let addr: std::net::SocketAddr = "10.0.0.1:80".parse().unwrap();
        let labelled = Host::new(addr, String::new(), 1, 0).with_socket_match(Some(&md));
        let plain = Host::new(addr, String::new(), 1, 0);
        let t = Transport::from_cluster(&c, &AutoSni::default()).unwrap();
        assert!(t.for_host(&labelled).is_some());
        assert!(t.for_host(&plain).is_none());
        let secrets = crate::tls::Secrets::default();
        let alpn = crate::tls::Alpn::Configured;
        assert!(t
            .dial(Some(&labelled), &secrets, alpn, None, None)
            .unwrap()
            .is_some());
        // Pools key by flavor: one per context and ALPN offer, never plaintext's 0.
        let flavor = |alpn| {
            let d = t.dial(Some(&labelled), &secrets, alpn, None, None);
            d.unwrap().unwrap().flavor
        };
        let istio = crate::tls::Alpn::IstioHttp11;
        assert_ne!(flavor(alpn), flavor(istio));
        assert!(flavor(alpn) != 0 && flavor(istio) != 0);
        // A rotation (a new secrets generation) rebuilds the Dial for the next handshake, and
        // keeps its flavor, so that established connections stay pooled.
        let before = t
            .dial(Some(&labelled), &secrets, alpn, None, None)
            .unwrap()
            .unwrap();
        let (f, g) = (flavor(alpn), secrets.generation());
        secrets.put(std::iter::empty());
        let after = t
            .dial(Some(&labelled), &secrets, alpn, None, None)
            .unwrap()
            .unwrap();
        assert!(secrets.generation() > g && !Arc::ptr_eq(&before, &after));
        assert_eq!(after.flavor, f);
        // Another context (the same config compiled again, as after a CDS update) has its own.
        let again = Transport::from_cluster(&c, &AutoSni::default()).unwrap();
        let d = again
            .dial(Some(&labelled), &secrets, alpn, None, None)
            .unwrap()
            .unwrap();
        assert_ne!(d.flavor, f);
        // Auto SNI: each request's host (without port or brackets) names the connection,
        // which gets a flavor of its own; the override header wins over Host.
        let auto = AutoSni {
            sni: true,
            san: true,
            header: None,
        };
        let auto = Transport::from_cluster(&c, &auto).unwrap();
        let named = |host: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::HOST, host.parse().unwrap());
            let uri = http::Uri::from_static("/");
            let d = auto.dial(
                Some(&labelled),
                &secrets,
                alpn,
                Some((&headers, &uri)),
                None,
            );
            d.unwrap().unwrap()
        };
        let (a, b) = (named("a.example:8443"), named("b.example"));
        assert_eq!(a.sni, Some(ServerName::try_from("a.example").unwrap()));
        assert_eq!(b.sni, Some(ServerName::try_from("b.example").unwrap()));
        assert_ne!(a.flavor, b.flavor);
        assert_eq!(a.flavor, named("a.example").flavor);
        let base = auto.dial(Some(&labelled), &secrets, alpn, None, None);
        assert_ne!(base.unwrap().unwrap().flavor, a.flavor);
        // An IP address stays one (rustls sends no SNI for it).
        let ip = named("[::1]:80").sni.clone();
        assert!(matches!(ip, Some(ServerName::IpAddress(_))), "{ip:?}");
        // Plaintext endpoints of such a cluster are not affected.
        assert!(auto
            .dial(Some(&plain), &secrets, alpn, None, None)
            .unwrap()
            .is_none());
    }

    /// Istio wraps each of the cluster's sockets (the auto-mTLS matches included) in the
    /// PROXY socket; a PROXY header comes with every dial then, TLS or not.
    #[test]
    fn proxy_wrappers_are_read_around_each_socket() {
        let wrap = |version: &str, inner: serde_json::Value| {
            json!({"name": "envoy.transport_sockets.upstream_proxy_protocol", "typed_config": {
                "@type": proxy_header::URL, "config": {"version": version}, "transport_socket": inner}})
        };
        let tls = json!({"name": "tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}});
        let c = cluster(json!({"name": "c", "transport_socket_matches": [
            {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": wrap("V2", tls)},
            {"name": "tlsMode-disabled", "match": {}, "transport_socket": wrap("V1", json!(null))}]}));
        let t = Transport::from_cluster(&c, &AutoSni::default()).unwrap();
        let md: envoy_types::pb::envoy::config::core::v3::Metadata = crate::config::test_proto(
            json!({"filter_metadata": {MATCH_NAMESPACE: {"tlsMode": "istio"}}}),
        );
        let addr: std::net::SocketAddr = "10.0.0.1:80".parse().unwrap();
        let labelled = Host::new(addr, String::new(), 1, 0).with_socket_match(Some(&md));
        let plain = Host::new(addr, String::new(), 1, 0);
        let secrets = crate::tls::Secrets::default();
        let alpn = crate::tls::Alpn::Configured;
        let down = Some((addr, addr));
        let d = t.dial(Some(&labelled), &secrets, alpn, None, down);
        let d = d.unwrap().unwrap();
        assert!(d.config.is_some());
        assert_eq!(
            d.proxy.map(|p| (p.version, p.addrs)),
            Some((Version::V2, down))
        );
        let d = t
            .dial(Some(&plain), &secrets, alpn, None, None)
            .unwrap()
            .unwrap();
        assert!(d.config.is_none());
        assert_eq!(
            d.proxy.map(|p| (p.version, p.addrs)),
            Some((Version::V1, None))
        );
        assert_eq!(
            t.contexts().count(),
            1,
            "the wrapped TLS context is subscribed"
        );
        // Refused with a reason: a wrapper in a wrapper. TLVs are left out, not refused.
        let nested =
            cluster(json!({"name": "c", "transport_socket": wrap("V1", wrap("V2", json!(null)))}));
        let e = Transport::from_cluster(&nested, &AutoSni::default()).unwrap_err();
        assert!(e.contains("inside another"), "{e}");
        let mut tlvs = wrap("V1", json!(null));
        tlvs["typed_config"]["config"]["added_tlvs"] = json!([{"type": 224, "value": "eA=="}]);
        let c = cluster(json!({"name": "c", "transport_socket": tlvs}));
        assert!(Transport::from_cluster(&c, &AutoSni::default()).is_ok());
    }
}
