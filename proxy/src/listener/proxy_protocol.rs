//! `envoy.filters.listener.proxy_protocol`: the PROXY protocol header (HAProxy's v1 text or v2
//! binary) that a load balancer writes before the client's bytes (Istio's gateway
//! `gatewayTopology.proxyProtocol`, an AWS NLB's or HAProxy's `send-proxy`). The header is
//! taken off the connection and its addresses replace the socket's: the client's becomes the
//! connection's remote address (for XFF, RBAC, access logs) and its destination the local one.
//!
//! Unlike the inspectors in [`super::inspect`], this filter consumes what it reads. The header
//! is parsed by the `ppp` crate.

use ppp::HeaderResult;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The filter's config type.
pub const URL: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol";

/// A v2 header's fixed part; its length field says how much follows.
const V2_FIXED: usize = 16;
/// The longest v1 header (the spec's 107 bytes).
const V1_MAX: usize = 107;
/// The two signatures.
const V1_SIGNATURE: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// The filter's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyProtocol {
    /// `allow_requests_without_proxy_protocol`: a connection that does not start with a
    /// PROXY signature goes on with its own addresses instead of being closed.
    pub allow_without: bool,
}

impl ProxyProtocol {
    /// Read the filter's typed config.
    pub fn from_any(any: &envoy_types::pb::google::protobuf::Any) -> Result<Self, String> {
        use envoy_types::pb::envoy::extensions::filters::listener::proxy_protocol::v3::ProxyProtocol as Proto;
        let p: Proto = crate::config::decode::unpack(any)?;
        Ok(ProxyProtocol {
            allow_without: p.allow_requests_without_proxy_protocol,
        })
    }

    /// Take the header off `stream` within `limit`: `Some((source, destination))` from a
    /// PROXY header that carries addresses, `None` from one that does not (v1 `UNKNOWN`, v2
    /// `LOCAL`, health checks of the load balancer itself) or from a connection without a
    /// header when that is allowed. `Err` says why the connection is to be closed.
    pub async fn read(
        self,
        stream: &mut TcpStream,
        limit: Option<Duration>,
    ) -> Result<Option<(SocketAddr, SocketAddr)>, String> {
        let work = self.read_header(stream);
        match limit {
            Some(l) => tokio::time::timeout(l, work)
                .await
                .map_err(|_| "no PROXY header within the listener filter timeout".to_string())?,
            None => work.await,
        }
    }

    async fn read_header(
        self,
        stream: &mut TcpStream,
    ) -> Result<Option<(SocketAddr, SocketAddr)>, String> {
        let mut buf = vec![0u8; V2_FIXED + 216];
        let mut backoff = Duration::from_millis(1);
        loop {
            let n = stream.peek(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("peer closed before a PROXY header".into());
            }
            match verdict(&buf[..n], self.allow_without) {
                Verdict::Header(len, addrs) => {
                    let mut taken = vec![0u8; len];
                    stream
                        .read_exact(&mut taken)
                        .await
                        .map_err(|e| e.to_string())?;
                    return Ok(addrs);
                }
                Verdict::Without => return Ok(None),
                Verdict::Refuse(why) => return Err(why),
                // A v2 header longer than the buffer (TLVs): room for what it says.
                Verdict::NeedMore(want) if want > buf.len() => buf.resize(want, 0),
                // The socket stays readable while the partial header sits in it: wait a
                // little for the rest rather than spin.
                Verdict::NeedMore(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(50));
                }
            }
        }
    }
}

/// What the first bytes of a connection say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not enough yet: at least this many bytes are needed.
    NeedMore(usize),
    /// No PROXY signature, and that is allowed.
    Without,
    /// A complete header of this length, with the addresses it carries (if any).
    Header(usize, Option<(SocketAddr, SocketAddr)>),
    /// The connection is to be closed, and why.
    Refuse(String),
}

/// Judge the bytes a connection starts with. A verdict other than `NeedMore` is final: more
/// bytes do not change it. A v1 header is parsed only once its line has ended, so that a
/// header split across reads is not taken for a broken one.
pub fn verdict(seen: &[u8], allow_without: bool) -> Verdict {
    let n = seen.len();
    let maybe = |sig: &[u8]| seen[..n.min(sig.len())] == sig[..n.min(sig.len())];
    if n == 0 {
        return Verdict::NeedMore(1);
    }
    if maybe(V2_SIGNATURE) {
        if n < V2_FIXED {
            return Verdict::NeedMore(V2_FIXED);
        }
        let total = V2_FIXED + u16::from_be_bytes([seen[14], seen[15]]) as usize;
        if n < total {
            return Verdict::NeedMore(total);
        }
        return match addresses(HeaderResult::from(ppp::v2::Header::try_from(
            &seen[..total],
        ))) {
            Ok((len, addrs)) => Verdict::Header(len, addrs),
            Err(why) => Verdict::Refuse(why),
        };
    }
    if maybe(V1_SIGNATURE) {
        return match seen.iter().position(|b| *b == b'\n') {
            None if n >= V1_MAX => {
                Verdict::Refuse("a PROXY v1 header longer than 107 bytes".into())
            }
            None => Verdict::NeedMore(n + 1),
            Some(end) => {
                let line = &seen[..=end];
                match addresses(HeaderResult::from(ppp::v1::Header::try_from(line))) {
                    Ok((len, addrs)) if len == line.len() => Verdict::Header(len, addrs),
                    Ok(_) => Verdict::Refuse("malformed PROXY v1 header".into()),
                    Err(why) => Verdict::Refuse(why),
                }
            }
        };
    }
    if allow_without {
        Verdict::Without
    } else {
        Verdict::Refuse("the connection does not start with a PROXY header".into())
    }
}

/// A complete parse: the header's length and the addresses it carries.
type Parsed = (usize, Option<(SocketAddr, SocketAddr)>);

fn addresses(parsed: HeaderResult<'_>) -> Result<Parsed, String> {
    let pair = |s: IpAddr, sp: u16, d: IpAddr, dp: u16| {
        Some((SocketAddr::new(s, sp), SocketAddr::new(d, dp)))
    };
    match parsed {
        HeaderResult::V1(Ok(h)) => {
            use ppp::v1::Addresses as A;
            let addrs = match h.addresses {
                A::Tcp4(a) => pair(
                    a.source_address.into(),
                    a.source_port,
                    a.destination_address.into(),
                    a.destination_port,
                ),
                A::Tcp6(a) => pair(
                    a.source_address.into(),
                    a.source_port,
                    a.destination_address.into(),
                    a.destination_port,
                ),
                A::Unknown => None,
            };
            Ok((h.header.len(), addrs))
        }
        HeaderResult::V2(Ok(h)) => {
            use ppp::v2::{Addresses as A, Command};
            let addrs = match (h.command, h.addresses) {
                (Command::Local, _) => None,
                (_, A::IPv4(a)) => pair(
                    a.source_address.into(),
                    a.source_port,
                    a.destination_address.into(),
                    a.destination_port,
                ),
                (_, A::IPv6(a)) => pair(
                    a.source_address.into(),
                    a.source_port,
                    a.destination_address.into(),
                    a.destination_port,
                ),
                (_, A::Unspecified | A::Unix(_)) => None,
            };
            Ok((h.len(), addrs))
        }
        HeaderResult::V1(Err(e)) => Err(format!("malformed PROXY v1 header: {e}")),
        HeaderResult::V2(Err(e)) => Err(format!("malformed PROXY v2 header: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A connected pair: what `client` writes, `read` sees on the server side.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (client, server)
    }

    async fn run(
        pp: ProxyProtocol,
        bytes: &[u8],
    ) -> (Result<Option<(SocketAddr, SocketAddr)>, String>, Vec<u8>) {
        let (mut client, mut server) = pair().await;
        client.write_all(bytes).await.unwrap();
        client.shutdown().await.unwrap();
        let got = pp.read(&mut server, Some(Duration::from_secs(2))).await;
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        (got, rest)
    }

    #[tokio::test]
    async fn headers_give_their_addresses_and_leave_the_rest() {
        let pp = ProxyProtocol::default();
        let (got, rest) = run(
            pp,
            b"PROXY TCP4 203.0.113.7 10.0.0.5 51000 443\r\nGET / HTTP/1.1\r\n",
        )
        .await;
        let addrs = got.unwrap().unwrap();
        assert_eq!(addrs.0, "203.0.113.7:51000".parse::<SocketAddr>().unwrap());
        assert_eq!(addrs.1, "10.0.0.5:443".parse::<SocketAddr>().unwrap());
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");

        let (got, _) = run(pp, b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n").await;
        assert_eq!(
            got.unwrap().unwrap().0,
            "[2001:db8::7]:51000".parse::<SocketAddr>().unwrap()
        );
        let (got, rest) = run(pp, b"PROXY UNKNOWN\r\nhello").await;
        assert_eq!((got.unwrap(), rest.as_slice()), (None, &b"hello"[..]));

        // v2, PROXY over TCP/IPv4, with a TLV (an AWS VPC endpoint id) to skip.
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend([0x21, 0x11, 0x00, 12 + 7]);
        v2.extend([198, 51, 100, 9, 10, 0, 0, 5]);
        v2.extend(51001u16.to_be_bytes());
        v2.extend(8443u16.to_be_bytes());
        v2.extend([0xEA, 0x00, 0x04, b'v', b'p', b'c', b'e']);
        v2.extend(b"\x16\x03\x01");
        let (got, rest) = run(pp, &v2).await;
        let addrs = got.unwrap().unwrap();
        assert_eq!(addrs.0, "198.51.100.9:51001".parse::<SocketAddr>().unwrap());
        assert_eq!(addrs.1, "10.0.0.5:8443".parse::<SocketAddr>().unwrap());
        assert_eq!(rest, b"\x16\x03\x01");
        // v2 LOCAL (the balancer's own health check): no addresses.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0x00, 0x00]);
        assert_eq!(run(pp, &local).await.0.unwrap(), None);
    }

    #[tokio::test]
    async fn a_connection_without_a_header_is_closed_unless_allowed() {
        let strict = ProxyProtocol::default();
        let (got, _) = run(strict, b"GET / HTTP/1.1\r\n").await;
        assert!(got.unwrap_err().contains("does not start"));
        let lax = ProxyProtocol {
            allow_without: true,
        };
        let (got, rest) = run(lax, b"GET / HTTP/1.1\r\n").await;
        assert_eq!(
            (got.unwrap(), rest.as_slice()),
            (None, &b"GET / HTTP/1.1\r\n"[..])
        );
        // A header that starts right but is broken is refused even then.
        let (got, _) = run(lax, b"PROXY TCP4 not-an-ip 10.0.0.5 1 2\r\n").await;
        assert!(got.unwrap_err().contains("malformed"), "broken header");
    }

    #[test]
    fn a_header_cut_anywhere_waits_for_the_rest() {
        // Every prefix of a good header asks for more (a v1 header split inside an address
        // is not a broken one), and the whole is the header.
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.5 51000 443\r\nGET";
        let end = v1.len() - 3;
        for cut in 1..end {
            assert!(
                matches!(verdict(&v1[..cut], false), Verdict::NeedMore(_)),
                "cut at {cut}"
            );
        }
        assert!(matches!(verdict(v1, false), Verdict::Header(n, Some(_)) if n == end));
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend([0x21, 0x11, 0x00, 12]);
        v2.extend([198, 51, 100, 9, 10, 0, 0, 5, 0xC7, 0x39, 0x20, 0xFB]);
        for cut in 1..v2.len() {
            assert!(
                matches!(verdict(&v2[..cut], false), Verdict::NeedMore(_)),
                "cut at {cut}"
            );
        }
        assert!(matches!(verdict(&v2, false), Verdict::Header(28, Some(_))));
        assert!(matches!(
            verdict(b"PROXY TCP4 x\n", true),
            Verdict::Refuse(_)
        ));
        assert_eq!(verdict(b"GET /", true), Verdict::Without);
    }

    #[tokio::test]
    async fn a_header_that_never_completes_times_out() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"PROXY TCP4 203.0").await.unwrap();
        let got = ProxyProtocol::default()
            .read(&mut server, Some(Duration::from_millis(100)))
            .await;
        assert!(got.unwrap_err().contains("timeout"));
    }
}
