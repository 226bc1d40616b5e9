//! `envoy.transport_sockets.upstream_proxy_protocol`: a PROXY protocol header written on each
//! new upstream connection before anything else (before a TLS handshake too), so that the
//! upstream sees who the client was. Istio writes it for a DestinationRule's
//! `trafficPolicy.proxyProtocol`, wrapped around the cluster's own transport socket.
//!
//! What the header says follows Envoy's `UpstreamProxyProtocolSocket`:
//! - the downstream's addresses when the connection has them as Envoy's filter state would: a
//!   TCP proxy always (client → the address it dialled), HTTP only for a downstream
//!   connection that came with a PROXY header itself;
//! - otherwise v1 names the upstream connection's own addresses, and v2 sends a `LOCAL`
//!   header.
//!
//! Pooled HTTP connections carry the addresses of the downstream they were opened for, so
//! connections with different headers are pooled apart (Envoy hashes the options into the
//! pool key the same way). TLVs are not written (with a warning): Istio configures none.

use envoy_types::pb::envoy::config::core::v3::{proxy_protocol_config, TransportSocket};
use std::net::{IpAddr, SocketAddr};

/// The wrapper's config type.
pub const URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport";

/// The header's version (`ProxyProtocolConfig.version`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// HAProxy's text header.
    V1,
    /// The binary header.
    V2,
}

/// The header one new connection starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Preamble {
    /// The header's version.
    pub version: Version,
    /// The downstream's (source, destination), when the connection is made for one that has
    /// them (see the module docs).
    pub addrs: Option<(SocketAddr, SocketAddr)>,
}

impl Preamble {
    /// The header's bytes for a connection from `local` to `peer` (the upstream connection's
    /// own addresses, used by v1 when there are no downstream addresses).
    pub fn bytes(&self, local: SocketAddr, peer: SocketAddr) -> Vec<u8> {
        match (self.version, self.addrs) {
            (Version::V1, addrs) => {
                let (src, dst) = same_family(addrs.unwrap_or((local, peer)));
                ppp::v1::Addresses::from((src, dst))
                    .to_string()
                    .into_bytes()
            }
            (Version::V2, None) => {
                let local = ppp::v2::Version::Two | ppp::v2::Command::Local;
                let unspec = ppp::v2::Addresses::Unspecified;
                ppp::v2::Builder::with_addresses(local, ppp::v2::Protocol::Unspecified, unspec)
                    .build()
                    .unwrap_or_default()
            }
            (Version::V2, Some(addrs)) => {
                let proxy = ppp::v2::Version::Two | ppp::v2::Command::Proxy;
                let addrs = same_family(addrs);
                ppp::v2::Builder::with_addresses(proxy, ppp::v2::Protocol::Stream, addrs)
                    .build()
                    .unwrap_or_default()
            }
        }
    }

    /// A pool flavor for connections that start with this header over a transport of flavor
    /// `base` (0 for plaintext): never 0, and the same only for the same header.
    pub fn flavor(&self, base: u64) -> u64 {
        let mut key = Vec::with_capacity(48);
        key.push(self.version as u8);
        if let Some((src, dst)) = self.addrs {
            key.extend_from_slice(src.to_string().as_bytes());
            key.push(b'>');
            key.extend_from_slice(dst.to_string().as_bytes());
        }
        xxhash_rust::xxh64::xxh64(&key, base) | 1 << 62
    }
}

/// One family for both ends, as a header has room for one: an IPv4 end beside an IPv6 one
/// is written IPv4-mapped.
fn same_family((src, dst): (SocketAddr, SocketAddr)) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (v6(src), v6(dst))
    }
}

/// The wrapper's version and the transport socket it wraps (`None`: plaintext).
pub fn unwrap(
    any: &envoy_types::pb::google::protobuf::Any,
) -> Result<(Version, Option<TransportSocket>), String> {
    use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport as Proto;
    let p: Proto = crate::config::decode::unpack(any)?;
    let config = p.config.unwrap_or_default();
    // TLVs are left out rather than the cluster refused: the header still names the client.
    if !config.added_tlvs.is_empty() || config.pass_through_tlvs.is_some() {
        tracing::warn!("upstream PROXY protocol: TLVs are not written");
    }
    let version = match proxy_protocol_config::Version::try_from(config.version) {
        Ok(proxy_protocol_config::Version::V1) => Version::V1,
        Ok(proxy_protocol_config::Version::V2) => Version::V2,
        Err(_) => return Err(format!("unknown PROXY protocol version {}", config.version)),
    };
    Ok((version, p.transport_socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// The bytes Envoy's `generateV1Header`, `generateV2Header` and `generateV2LocalHeader`
    /// write for the same addresses.
    #[test]
    fn headers_are_written_as_envoy_writes_them() {
        let pair = (addr("192.0.2.7:40000"), addr("10.0.0.5:8080"));
        let down = Some(pair);
        let (local, peer) = (addr("10.0.0.9:51000"), addr("10.0.0.5:8080"));
        let v1 = |addrs| {
            let p = Preamble {
                version: Version::V1,
                addrs,
            };
            String::from_utf8(p.bytes(local, peer)).unwrap()
        };
        assert_eq!(v1(down), "PROXY TCP4 192.0.2.7 10.0.0.5 40000 8080\r\n");
        // No downstream addresses: the connection's own.
        assert_eq!(v1(None), "PROXY TCP4 10.0.0.9 10.0.0.5 51000 8080\r\n");
        let v6 = Some((addr("[2001:db8::1]:1234"), addr("[2001:db8::2]:80")));
        assert_eq!(v1(v6), "PROXY TCP6 2001:db8::1 2001:db8::2 1234 80\r\n");
        // Mixed families become IPv4-mapped IPv6.
        let mixed = Some((addr("192.0.2.7:1"), addr("[2001:db8::2]:80")));
        assert_eq!(
            v1(mixed),
            "PROXY TCP6 ::ffff:192.0.2.7 2001:db8::2 1 80\r\n"
        );

        let sig = b"\r\n\r\n\0\r\nQUIT\n";
        let v2 = |addrs| {
            Preamble {
                version: Version::V2,
                addrs,
            }
            .bytes(local, peer)
        };
        let mut want = sig.to_vec();
        // PROXY command, AF_INET + STREAM, 12 address bytes.
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 0, 2, 7, 10, 0, 0, 5]);
        want.extend_from_slice(&[0x9c, 0x40, 0x1f, 0x90]);
        assert_eq!(v2(down), want);
        // LOCAL command, AF_UNSPEC, no addresses.
        let mut local_header = sig.to_vec();
        local_header.extend_from_slice(&[0x20, 0, 0, 0]);
        assert_eq!(v2(None), local_header);
        // Each header the listener filter reads back as written.
        for bytes in [v1(down).into_bytes(), v2(down)] {
            match ppp::HeaderResult::parse(&bytes) {
                ppp::HeaderResult::V1(Ok(h)) => {
                    assert_eq!(h.addresses, ppp::v1::Addresses::from(pair))
                }
                ppp::HeaderResult::V2(Ok(h)) => {
                    assert_eq!(h.addresses, ppp::v2::Addresses::from(pair))
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn flavors_differ_by_header_and_transport() {
        let p = |version, addrs| Preamble { version, addrs };
        let a = Some((addr("192.0.2.7:40000"), addr("10.0.0.5:8080")));
        let b = Some((addr("192.0.2.8:40000"), addr("10.0.0.5:8080")));
        let flavors = [
            p(Version::V1, None).flavor(0),
            p(Version::V2, None).flavor(0),
            p(Version::V1, a).flavor(0),
            p(Version::V1, b).flavor(0),
            p(Version::V1, a).flavor(7),
        ];
        for (i, f) in flavors.iter().enumerate() {
            assert_ne!(*f, 0);
            assert!(flavors[i + 1..].iter().all(|g| g != f), "{flavors:?}");
        }
        assert_eq!(p(Version::V1, a).flavor(0), p(Version::V1, a).flavor(0));
    }
}
