//! Compiled listeners: address, bind flag, listener filters and filter chains with their
//! `FilterChainMatch`, each ending in an HTTP connection manager or a `tcp_proxy`.
//!
//! The accept loop (`crate::proxy`) asks a listener for the chain of each connection with
//! [`ListenerConfig::select`] after the inspectors in [`inspect`] have run.

pub mod chain_match;
mod drains;
pub mod inspect;
pub mod proxy_protocol;
pub mod socket;

use crate::cluster::{address, Addr};
use crate::config::decode;
use crate::proxy::hcm::HcmConfig;
use crate::proxy::tcp_proxy::TcpProxyConfig;
use crate::proxy::HcmStats;
use crate::stats::Stats;
use crate::tls::context::RAW_BUFFER_URL;
use chain_match::{ChainMatch, ConnInfo};
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as TsConfig;
use envoy_types::pb::envoy::config::listener::v3 as lpb;
use inspect::Inspectors;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

const HCM_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// What a filter chain does with its connections.
#[derive(Debug)]
pub enum Terminal {
    /// `envoy.filters.network.http_connection_manager`.
    Http {
        /// The compiled HCM.
        hcm: Arc<HcmConfig>,
        /// Its `http.<stat_prefix>.*` stats, registered on first use.
        stats: OnceLock<Arc<HcmStats>>,
    },
    /// `envoy.filters.network.tcp_proxy`.
    Tcp(Arc<TcpProxyConfig>),
}

impl Terminal {
    /// The HCM stats of an HTTP chain.
    pub fn hcm_stats(&self, store: &Arc<Stats>) -> Option<(&Arc<HcmConfig>, Arc<HcmStats>)> {
        match self {
            Terminal::Http { hcm, stats } => Some((
                hcm,
                stats
                    .get_or_init(|| HcmStats::new(store, &hcm.stat_prefix))
                    .clone(),
            )),
            Terminal::Tcp(_) => None,
        }
    }
}

/// A compiled filter chain.
#[derive(Debug)]
pub struct FilterChain {
    /// Chain name (Istio names them, e.g. `virtualOutbound-catchall-tcp`).
    pub name: String,
    /// Its match.
    pub matcher: ChainMatch,
    /// The terminal network filter.
    pub terminal: Terminal,
    /// The chain terminates TLS (a `DownstreamTlsContext` transport socket: Istio's mTLS).
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// Network RBAC filters (Istio's AuthorizationPolicy on TCP), checked once the
    /// connection's TLS handshake is done.
    pub rbac: Vec<Arc<crate::rbac::Rbac>>,
    /// `transport_socket_connect_timeout` (Istio's gateways: 15 s): a TLS handshake still
    /// unfinished after it closes the connection.
    pub handshake_timeout: Option<std::time::Duration>,
}

impl FilterChain {
    /// Compile a chain of a listener with this `traffic_direction`.
    fn from_proto(c: &lpb::FilterChain, direction: i32) -> Result<Self, String> {
        let name = c.name.clone();
        let ctx = |e: String| {
            if name.is_empty() {
                e
            } else {
                format!("filter chain {name:?}: {e}")
            }
        };
        let tls = match c
            .transport_socket
            .as_ref()
            .map(|t| (&t.name, &t.config_type))
        {
            None => None,
            Some((_, Some(TsConfig::TypedConfig(any)))) if any.type_url == RAW_BUFFER_URL => None,
            Some((_, Some(TsConfig::TypedConfig(any)))) => {
                let tls = crate::tls::ServerTls::from_any(any)
                    .map_err(|e| ctx(format!("transport socket: {e}")))?;
                // Istio's TCP metadata exchange on a tcp_proxy chain: `istio-peer-exchange`
                // may be agreed, and the tcp_proxy runs the exchange (an HTTP chain does not,
                // so it never agrees on it).
                let mx = c.filters.iter().any(|f| f.name == crate::proxy::istio::tcp_mx::FILTER)
                    && c.filters.iter().any(|f| {
                        matches!(&f.config_type,
                            Some(lpb::filter::ConfigType::TypedConfig(a)) if a.type_url == TCP_PROXY_URL)
                    });
                Some(Arc::new(if mx { tls.with_peer_exchange() } else { tls }))
            }
            Some((n, None)) => {
                return Err(ctx(format!("transport socket {n:?} has no typed_config")))
            }
        };
        let mut terminal = None;
        let mut rbac = Vec::new();
        let mut istio_stats = None;
        for f in &c.filters {
            let Some(lpb::filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                tracing::debug!(filter = %f.name, "network filter without typed_config skipped");
                continue;
            };
            if terminal.is_some() {
                return Err(ctx(format!(
                    "filter {:?} comes after the terminal filter",
                    f.name
                )));
            }
            // Istio's stats filter (1.10's Wasm, later Istio's own), found by its name as for
            // HTTP; it counts a tcp_proxy's connections.
            if f.name == "istio.stats" {
                istio_stats = Some(crate::proxy::istio::tcp::reporting_every(any));
            }
            if let Some(t) = decode::parked_type(any) {
                tracing::debug!(filter = %f.name, r#type = %t, "skipping network filter of an unknown type");
                continue;
            }
            match any.type_url.as_str() {
                crate::rbac::NETWORK_URL => rbac.extend(
                    crate::rbac::Rbac::from_network(any)
                        .map_err(|e| ctx(format!("filter {:?}: {e}", f.name)))?
                        .map(Arc::new),
                ),
                HCM_URL => {
                    let mut hcm = HcmConfig::from_any(any).map_err(ctx)?;
                    // OUTBOUND (2): spans of its HCMs are CLIENT spans.
                    if let Some(t) = hcm.tracing.as_mut() {
                        t.egress = direction == 2;
                    }
                    hcm.istio.direction = direction;
                    terminal = Some(Terminal::Http {
                        hcm: Arc::new(hcm),
                        stats: OnceLock::new(),
                    })
                }
                TCP_PROXY_URL => {
                    let mut tp = TcpProxyConfig::from_any(any).map_err(ctx)?;
                    tp.istio = istio_stats.map(|every| crate::proxy::istio::tcp::TcpIstio {
                        cfg: crate::proxy::istio::IstioConfig {
                            stats: true,
                            direction,
                            ..Default::default()
                        },
                        every,
                    });
                    terminal = Some(Terminal::Tcp(Arc::new(tp)))
                }
                t => {
                    // Istio's metadata exchange and stats filters (TypedStruct-wrapped) and
                    // other non-terminal filters: skipped, visible in /config_dump.
                    tracing::debug!(filter = %f.name, r#type = %t, "network filter skipped");
                }
            }
        }
        let terminal = terminal.ok_or_else(|| {
            ctx("no terminal network filter (http_connection_manager or tcp_proxy)".into())
        })?;
        Ok(FilterChain {
            matcher: ChainMatch::from_proto(c.filter_chain_match.as_ref()).map_err(ctx)?,
            terminal,
            tls,
            rbac,
            handshake_timeout: c
                .transport_socket_connect_timeout
                .as_ref()
                .map(crate::config::duration)
                .filter(|d| !d.is_zero()),
            name,
        })
    }
}

/// One socket a listener binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindAddr {
    /// The address.
    pub addr: SocketAddr,
    /// `IPV6_V6ONLY`. Envoy sets it on every IPv6 socket unless the address has
    /// `ipv4_compat`, so that `[::]` takes IPv6 alone and a dual-stack listener (Istio's
    /// `additional_addresses`) can bind `0.0.0.0` and `[::]` on the same port.
    pub v6only: bool,
}

impl BindAddr {
    /// Decode a listener's `Address`; `what` names it in errors.
    fn from_proto(
        a: Option<&envoy_types::pb::envoy::config::core::v3::Address>,
        what: &str,
    ) -> Result<Self, String> {
        use envoy_types::pb::envoy::config::core::v3::address::Address as A;
        let addr = match address(a)? {
            Addr::Socket(ip, port) => {
                let ip: std::net::IpAddr = ip
                    .parse()
                    .map_err(|_| format!("{what} {ip:?} is not an IP"))?;
                SocketAddr::new(ip, port)
            }
            Addr::Pipe(p) => return Err(format!("pipe listeners ({p}) are not supported")),
        };
        let compat = matches!(a.and_then(|a| a.address.as_ref()), Some(A::SocketAddress(s)) if s.ipv4_compat);
        Ok(BindAddr {
            addr,
            v6only: addr.is_ipv6() && !compat,
        })
    }
}

/// A compiled listener.
#[derive(Debug)]
pub struct ListenerConfig {
    /// Listener name (Envoy names unnamed static listeners by address).
    pub name: String,
    /// Bind address (the first of `binds`).
    pub address: SocketAddr,
    /// Every socket to bind: `address`, then `additional_addresses` in config order.
    pub binds: Vec<BindAddr>,
    /// Whether to bind a socket (`bind_to_port` / `deprecated_v1.bind_to_port`).
    pub bind: bool,
    /// `use_original_dst`: hand connections to the listener of their original destination.
    pub hand_off: bool,
    /// Read SO_ORIGINAL_DST (`use_original_dst` or the original_dst listener filter).
    pub original_dst: bool,
    /// tls_inspector / http_inspector.
    pub inspectors: Inspectors,
    /// The proxy_protocol listener filter, which runs before the inspectors.
    pub proxy_protocol: Option<proxy_protocol::ProxyProtocol>,
    /// Filter chains in config order.
    pub chains: Vec<FilterChain>,
    /// `default_filter_chain`.
    pub default_chain: Option<FilterChain>,
    /// The HCM of the first HTTP chain (listeners with one HTTP chain use only this).
    pub hcm: Option<Arc<HcmConfig>>,
    /// The proto (for `/config_dump`).
    pub proto: lpb::Listener,
    /// One drain signal per chain, `default_filter_chain` last (see `drains.rs`). The
    /// connections of a chain watch its signal, also those handed to this listener by
    /// another (`use_original_dst`): they belong to it, as in Envoy.
    drains: Vec<crate::proxy::drain::DrainTx>,
}

impl ListenerConfig {
    /// Whether a chain has Istio's stats filter (HTTP or TCP).
    pub fn istio_stats(&self) -> bool {
        self.chains
            .iter()
            .chain(&self.default_chain)
            .any(|c| match &c.terminal {
                Terminal::Http { hcm, .. } => hcm.istio.stats,
                Terminal::Tcp(tp) => tp.istio.is_some(),
            })
    }

    /// Compile a listener. Errors name the chain or filter at fault.
    pub fn from_proto(l: &lpb::Listener) -> Result<Self, String> {
        let mut binds = vec![BindAddr::from_proto(
            l.address.as_ref(),
            "listener address",
        )?];
        for (i, a) in l.additional_addresses.iter().enumerate() {
            let b = BindAddr::from_proto(a.address.as_ref(), "additional address")
                .map_err(|e| format!("additional_addresses[{i}]: {e}"))?;
            // Envoy refuses a listener whose sockets would collide with each other.
            if binds.iter().any(|x| x.addr == b.addr) {
                return Err(format!(
                    "additional_addresses[{i}]: {} is already an address of this listener",
                    b.addr
                ));
            }
            binds.push(b);
        }
        let address = binds[0].addr;
        let bind = l
            .bind_to_port
            .as_ref()
            .map(|b| b.value)
            .or_else(|| {
                l.deprecated_v1
                    .as_ref()
                    .and_then(|d| d.bind_to_port.as_ref())
                    .map(|b| b.value)
            })
            .unwrap_or(true);
        let direction = l.traffic_direction;
        let chains = l
            .filter_chains
            .iter()
            .map(|c| FilterChain::from_proto(c, direction))
            .collect::<Result<Vec<_>, _>>()?;
        let default_chain = l
            .default_filter_chain
            .as_ref()
            .map(|c| FilterChain::from_proto(c, direction))
            .transpose()
            .map_err(|e| format!("default_filter_chain: {e}"))?;
        let has = |n: &str| l.listener_filters.iter().any(|f| f.name == n);
        let proxy_protocol = l
            .listener_filters
            .iter()
            .find_map(|f| match &f.config_type {
                Some(lpb::listener_filter::ConfigType::TypedConfig(any))
                    if any.type_url == proxy_protocol::URL =>
                {
                    Some(proxy_protocol::ProxyProtocol::from_any(any))
                }
                _ if f.name == "envoy.filters.listener.proxy_protocol"
                    || f.name == "envoy.listener.proxy_protocol" =>
                {
                    Some(Ok(Default::default()))
                }
                _ => None,
            })
            .transpose()
            .map_err(|e| format!("listener filter proxy_protocol: {e}"))?;
        let hand_off = l.use_original_dst.as_ref().is_some_and(|b| b.value);
        let inspectors = Inspectors {
            tls: has("envoy.filters.listener.tls_inspector") || has("envoy.listener.tls_inspector"),
            http: has("envoy.filters.listener.http_inspector")
                || has("envoy.listener.http_inspector"),
            timeout: match &l.listener_filters_timeout {
                Some(d) => Some(crate::config::duration(d)).filter(|d| !d.is_zero()),
                None => Some(Duration::from_secs(15)),
            },
            continue_on_timeout: l.continue_on_listener_filters_timeout,
        };
        // An inspector whose answers no chain looks at would only delay the connection.
        let mut inspectors = inspectors;
        let all = || chains.iter().chain(default_chain.iter());
        inspectors.tls &= all().any(|c| c.matcher.needs_tls());
        inspectors.http &= all().any(|c| c.matcher.needs_alpn());
        let hcm = chains
            .iter()
            .chain(default_chain.iter())
            .find_map(|c| match &c.terminal {
                Terminal::Http { hcm, .. } => Some(hcm.clone()),
                Terminal::Tcp(_) => None,
            });
        let chains_len = chains.len();
        Ok(ListenerConfig {
            name: if l.name.is_empty() {
                address.to_string()
            } else {
                l.name.clone()
            },
            address,
            binds,
            bind,
            hand_off,
            original_dst: hand_off
                || has("envoy.filters.listener.original_dst")
                || has("envoy.listener.original_dst"),
            inspectors,
            proxy_protocol,
            chains,
            default_chain,
            hcm,
            proto: l.clone(),
            drains: Self::fresh_drains(chains_len),
        })
    }

    /// The filter chain for a connection, Envoy's way; `None` closes it.
    pub fn select(&self, info: &ConnInfo<'_>) -> Option<&FilterChain> {
        self.select_indexed(info).map(|(_, c)| c)
    }

    /// [`Self::select`] with the chain's index in `chains` (`chains.len()` for the default
    /// chain).
    pub fn select_indexed(&self, info: &ConnInfo<'_>) -> Option<(usize, &FilterChain)> {
        match chain_match::select(self.chains.iter().map(|c| &c.matcher), info) {
            Some(i) => Some((i, &self.chains[i])),
            None => self.default_chain.as_ref().map(|c| (self.chains.len(), c)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(extra: serde_json::Value) -> Result<ListenerConfig, String> {
        let mut l = serde_json::json!({"name": "l", "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": TCP_PROXY_URL, "stat_prefix": "t", "cluster": "c"}}]}]});
        for (k, v) in extra.as_object().unwrap() {
            l[k] = v.clone();
        }
        let l: lpb::Listener = decode::from_json(&l, true)?;
        ListenerConfig::from_proto(&l)
    }

    fn sock(addr: &str, compat: bool) -> serde_json::Value {
        serde_json::json!({"socket_address": {"address": addr, "port_value": 15001, "ipv4_compat": compat}})
    }

    #[test]
    fn binds_follow_envoys_v6only_rule() {
        let l = listener(serde_json::json!({"address": sock("0.0.0.0", false),
            "additional_addresses": [{"address": sock("::", false)}, {"address": sock("::1", true)}]}))
        .unwrap();
        let got: Vec<(String, bool)> = l
            .binds
            .iter()
            .map(|b| (b.addr.to_string(), b.v6only))
            .collect();
        assert_eq!(
            got,
            [
                ("0.0.0.0:15001".to_string(), false),
                ("[::]:15001".to_string(), true),
                ("[::1]:15001".to_string(), false),
            ]
        );
        assert_eq!(l.address, l.binds[0].addr);
    }

    #[test]
    fn an_additional_address_must_be_new_and_an_ip() {
        let e = listener(serde_json::json!({"address": sock("::", false),
            "additional_addresses": [{"address": sock("::", true)}]}))
        .unwrap_err();
        assert!(
            e.contains("additional_addresses[0]") && e.contains("[::]:15001"),
            "{e}"
        );
        let e = listener(serde_json::json!({"address": sock("0.0.0.0", false),
            "additional_addresses": [{"address": sock("localhost", false)}]}))
        .unwrap_err();
        assert!(
            e.contains("additional_addresses[0]: additional address \"localhost\" is not an IP"),
            "{e}"
        );
    }
}
