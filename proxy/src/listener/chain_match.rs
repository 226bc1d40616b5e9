//! Envoy's `FilterChainMatch` selection.
//!
//! Envoy narrows the candidate chains one criterion at a time, in a fixed order: destination
//! port, destination IP, server name, transport protocol, application protocols, direct source
//! IP, source type, source IP, source port. At each step the most specific value that matches
//! wins and only the chains carrying it go on; a chain that leaves the criterion empty matches
//! anything but is the least specific. There is no backtracking: when the chains that won a
//! step all fail a later one, the connection gets the default chain (or is closed), even if a
//! less specific chain would have matched. MOSN picked the first chain whose port matched
//! (mosn/mosn#2007), which breaks Istio's permissive-mTLS inbound chains.

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::FilterChainMatch;
use std::net::{IpAddr, SocketAddr};

/// An IP prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

impl Cidr {
    /// Parse a `CidrRange` (a missing `prefix_len` means the full address).
    pub fn from_proto(c: &CidrRange) -> Result<Self, String> {
        let net: IpAddr = c
            .address_prefix
            .parse()
            .map_err(|_| format!("prefix {:?} is not an IP address", c.address_prefix))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = c.prefix_len.as_ref().map(|l| l.value).unwrap_or(max);
        if len > max {
            return Err(format!("prefix length {len} is too long for {net}"));
        }
        Ok(Cidr {
            net,
            len: len as u8,
        })
    }

    /// Whether `ip` is inside the prefix (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.len as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.len as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// `FilterChainMatch.source_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceType {
    /// Any source.
    #[default]
    Any,
    /// Loopback, or the same IP as the destination.
    Local,
    /// Anything else.
    External,
}

/// A compiled `FilterChainMatch`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainMatch {
    dest_port: Option<u16>,
    dest_ranges: Vec<Cidr>,
    server_names: Vec<String>,
    transport: Option<String>,
    alpn: Vec<String>,
    direct_source_ranges: Vec<Cidr>,
    source_type: SourceType,
    source_ranges: Vec<Cidr>,
    source_ports: Vec<u32>,
}

/// What the listener knows about a connection when it picks a chain.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo<'a> {
    /// The (original) destination.
    pub dst: SocketAddr,
    /// The peer.
    pub src: SocketAddr,
    /// SNI from the TLS ClientHello.
    pub sni: Option<&'a str>,
    /// `tls` or `raw_buffer`.
    pub transport: &'a str,
    /// ALPN offered by a TLS client, or the protocol the HTTP inspector saw.
    pub alpn: &'a [String],
}

impl ChainMatch {
    /// Compile the proto; `None` matches every connection.
    pub fn from_proto(m: Option<&FilterChainMatch>) -> Result<Self, String> {
        let Some(m) = m else {
            return Ok(ChainMatch::default());
        };
        let cidrs = |v: &[CidrRange]| v.iter().map(Cidr::from_proto).collect::<Result<_, _>>();
        if !m.address_suffix.is_empty() {
            return Err("filter_chain_match.address_suffix is not supported".into());
        }
        Ok(ChainMatch {
            dest_port: match &m.destination_port {
                Some(p) => Some(
                    u16::try_from(p.value)
                        .map_err(|_| format!("destination_port {} out of range", p.value))?,
                ),
                None => None,
            },
            dest_ranges: cidrs(&m.prefix_ranges)?,
            server_names: m
                .server_names
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            transport: Some(m.transport_protocol.clone()).filter(|t| !t.is_empty()),
            alpn: m.application_protocols.clone(),
            direct_source_ranges: cidrs(&m.direct_source_prefix_ranges)?,
            source_type: match m.source_type {
                1 => SourceType::Local,
                2 => SourceType::External,
                _ => SourceType::Any,
            },
            source_ranges: cidrs(&m.source_prefix_ranges)?,
            source_ports: m.source_ports.clone(),
        })
    }

    /// Whether any chain needs the TLS inspector's answers to be told apart.
    pub fn needs_tls(&self) -> bool {
        self.transport.is_some() || !self.server_names.is_empty() || !self.alpn.is_empty()
    }

    /// Whether the chain needs the application protocol.
    pub fn needs_alpn(&self) -> bool {
        !self.alpn.is_empty()
    }
}

/// How specifically one criterion of a chain matches: `None` = no match, `Some(0)` = the
/// criterion is empty (matches anything), larger = more specific.
type Rank = Option<u32>;

fn port_rank(want: Option<u16>, port: u16) -> Rank {
    match want {
        None => Some(0),
        Some(p) if p == port => Some(1),
        Some(_) => None,
    }
}

fn cidr_rank(ranges: &[Cidr], ip: IpAddr) -> Rank {
    if ranges.is_empty() {
        return Some(0);
    }
    // The longest matching prefix is the most specific; +1 keeps /0 above "empty".
    ranges
        .iter()
        .filter(|c| c.contains(ip))
        .map(|c| c.len as u32 + 1)
        .max()
}

fn server_name_rank(names: &[String], sni: Option<&str>) -> Rank {
    if names.is_empty() {
        return Some(0);
    }
    let sni = sni?.to_ascii_lowercase();
    names
        .iter()
        .filter_map(|n| {
            if *n == sni {
                Some(u32::MAX)
            } else if let Some(suffix) = n.strip_prefix('*') {
                // `*.example.com` matches `a.example.com`; a longer suffix is more specific.
                (suffix.starts_with('.') && sni.ends_with(suffix) && sni.len() > suffix.len())
                    .then_some(suffix.len() as u32)
            } else {
                None
            }
        })
        .max()
}

fn source_type_rank(t: SourceType, info: &ConnInfo<'_>) -> Rank {
    let local = info.src.ip().is_loopback() || info.src.ip() == info.dst.ip();
    match t {
        SourceType::Any => Some(0),
        SourceType::Local if local => Some(1),
        SourceType::External if !local => Some(1),
        _ => None,
    }
}

/// The criteria in Envoy's order.
const STEPS: [fn(&ChainMatch, &ConnInfo<'_>) -> Rank; 9] = [
    |m, i| port_rank(m.dest_port, i.dst.port()),
    |m, i| cidr_rank(&m.dest_ranges, i.dst.ip()),
    |m, i| server_name_rank(&m.server_names, i.sni),
    |m, i| match &m.transport {
        None => Some(0),
        Some(t) if t == i.transport => Some(1),
        Some(_) => None,
    },
    |m, i| {
        if m.alpn.is_empty() {
            Some(0)
        } else {
            m.alpn.iter().any(|a| i.alpn.contains(a)).then_some(1)
        }
    },
    |m, i| cidr_rank(&m.direct_source_ranges, i.src.ip()),
    |m, i| source_type_rank(m.source_type, i),
    |m, i| cidr_rank(&m.source_ranges, i.src.ip()),
    |m, i| {
        if m.source_ports.is_empty() {
            Some(0)
        } else {
            m.source_ports.contains(&(i.src.port() as u32)).then_some(1)
        }
    },
];

/// The index of the chain Envoy would pick among `matches`, or `None` (default chain).
pub fn select<'a, I>(matches: I, info: &ConnInfo<'_>) -> Option<usize>
where
    I: IntoIterator<Item = &'a ChainMatch>,
{
    let mut cands: Vec<(usize, &ChainMatch)> = matches.into_iter().enumerate().collect();
    for step in STEPS {
        let ranked: Vec<(usize, &ChainMatch, u32)> = cands
            .iter()
            .filter_map(|&(i, m)| step(m, info).map(|r| (i, m, r)))
            .collect();
        let best = ranked.iter().map(|r| r.2).max()?;
        cands = ranked
            .into_iter()
            .filter(|r| r.2 == best)
            .map(|r| (r.0, r.1))
            .collect();
        if cands.len() == 1 {
            // Later criteria can still rule the last candidate out.
            let (i, m) = cands[0];
            return STEPS.iter().all(|s| s(m, info).is_some()).then_some(i);
        }
    }
    cands.first().map(|c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(v: serde_json::Value) -> ChainMatch {
        let p: FilterChainMatch = crate::config::decode::from_json(&v, true).unwrap();
        ChainMatch::from_proto(Some(&p)).unwrap()
    }

    fn info<'a>(dst: &str, transport: &'a str, alpn: &'a [String]) -> ConnInfo<'a> {
        ConnInfo {
            dst: dst.parse().unwrap(),
            src: "10.1.0.9:40000".parse().unwrap(),
            sni: None,
            transport,
            alpn,
        }
    }

    #[test]
    fn cidr_contains() {
        let c = |p: &str, l: u32| {
            Cidr::from_proto(&CidrRange {
                address_prefix: p.into(),
                prefix_len: Some(envoy_types::pb::google::protobuf::UInt32Value { value: l }),
            })
            .unwrap()
        };
        assert!(c("10.0.0.0", 8).contains("10.200.1.1".parse().unwrap()));
        assert!(!c("10.0.0.0", 8).contains("11.0.0.1".parse().unwrap()));
        assert!(c("0.0.0.0", 0).contains("1.2.3.4".parse().unwrap()));
        assert!(c("10.0.0.1", 32).contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(c("fd00::", 8).contains("fd12::1".parse().unwrap()));
        assert!(!c("fd00::", 8).contains("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn port_beats_catch_all_and_no_backtracking() {
        let chains = [
            m(json!({})),
            m(json!({"destination_port": 9080, "transport_protocol": "tls"})),
        ];
        // Port 9080 picks chain 1 only when TLS; raw traffic on 9080 does not fall back to
        // chain 0 (Envoy does not backtrack).
        assert_eq!(select(&chains, &info("10.0.0.1:9080", "tls", &[])), Some(1));
        assert_eq!(
            select(&chains, &info("10.0.0.1:9080", "raw_buffer", &[])),
            None
        );
        assert_eq!(
            select(&chains, &info("10.0.0.1:80", "raw_buffer", &[])),
            Some(0)
        );
    }

    #[test]
    fn istio_permissive_inbound_chains() {
        let http = ["http/1.1".to_string()];
        let istio = ["istio-peer-exchange".to_string(), "istio".to_string()];
        let istio_http = ["istio-http/1.1".to_string(), "istio".to_string()];
        let chains = [
            m(
                json!({"destination_port": 9080, "transport_protocol": "tls",
                "application_protocols": ["istio-http/1.0", "istio-http/1.1", "istio-h2"]}),
            ),
            m(
                json!({"destination_port": 9080, "transport_protocol": "raw_buffer",
                "application_protocols": ["http/1.1", "http/1.0", "h2c"]}),
            ),
            m(
                json!({"destination_port": 9080, "transport_protocol": "tls",
                "application_protocols": ["istio-peer-exchange", "istio"]}),
            ),
            m(json!({"destination_port": 9080, "transport_protocol": "raw_buffer"})),
            m(json!({"destination_port": 9080, "transport_protocol": "tls"})),
            m(json!({"prefix_ranges": [{"address_prefix": "0.0.0.0", "prefix_len": 0}]})),
        ];
        let pick = |t, a| select(&chains, &info("10.0.0.1:9080", t, a));
        assert_eq!(pick("tls", &istio_http), Some(0));
        assert_eq!(pick("raw_buffer", &http), Some(1));
        assert_eq!(pick("tls", &istio), Some(2));
        assert_eq!(pick("raw_buffer", &[]), Some(3));
        assert_eq!(pick("tls", &["h2".to_string()]), Some(4));
        assert_eq!(
            select(&chains, &info("10.0.0.1:3306", "raw_buffer", &[])),
            Some(5)
        );
    }

    #[test]
    fn longest_prefix_and_server_names() {
        let chains = [
            m(json!({"prefix_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]})),
            m(json!({"prefix_ranges": [{"address_prefix": "10.1.0.0", "prefix_len": 16}]})),
            m(json!({"server_names": ["*.example.com"]})),
            m(json!({"server_names": ["api.example.com"]})),
        ];
        assert_eq!(
            select(&chains, &info("10.1.2.3:80", "raw_buffer", &[])),
            Some(1)
        );
        assert_eq!(
            select(&chains, &info("10.9.2.3:80", "raw_buffer", &[])),
            Some(0)
        );
        let mut i = info("192.168.0.1:443", "tls", &[]);
        i.sni = Some("API.example.com");
        assert_eq!(select(&chains, &i), Some(3));
        i.sni = Some("www.example.com");
        assert_eq!(select(&chains, &i), Some(2));
        i.sni = Some("example.com");
        assert_eq!(select(&chains, &i), None);
    }

    #[test]
    fn source_criteria() {
        let chains = [
            m(json!({"source_type": "SAME_IP_OR_LOOPBACK"})),
            m(json!({"source_ports": [40000]})),
            m(json!({})),
        ];
        let mut i = info("10.0.0.1:80", "raw_buffer", &[]);
        assert_eq!(select(&chains, &i), Some(1));
        i.src = "127.0.0.1:5".parse().unwrap();
        assert_eq!(select(&chains, &i), Some(0));
        i.src = "10.0.0.2:5".parse().unwrap();
        assert_eq!(select(&chains, &i), Some(2));
    }
}
