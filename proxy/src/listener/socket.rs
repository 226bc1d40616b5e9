//! Listening sockets as Envoy opens them: `SO_REUSEADDR` on, and `IPV6_V6ONLY` set from the
//! address's `ipv4_compat` instead of left to the host's `net.ipv6.bindv6only` default, so that
//! a listener on `[::]` beside one on `0.0.0.0` (Istio's dual-stack listeners) binds on any
//! host and takes only IPv6.

use super::BindAddr;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use tokio::net::TcpListener;

/// The accept backlog (tokio's default for `TcpListener::bind`).
const BACKLOG: i32 = 1024;

/// Bind one listening socket. The error names the address and keeps the kind (a caller
/// retries `AddrInUse`).
pub fn bind(b: BindAddr) -> io::Result<TcpListener> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", b.addr));
    let sock = Socket::new(
        Domain::for_address(b.addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(named)?;
    sock.set_reuse_address(true).map_err(named)?;
    if b.addr.is_ipv6() {
        sock.set_only_v6(b.v6only).map_err(named)?;
    }
    sock.set_nonblocking(true).map_err(named)?;
    sock.bind(&b.addr.into()).map_err(named)?;
    sock.listen(BACKLOG).map_err(named)?;
    TcpListener::from_std(sock.into()).map_err(named)
}

/// Bind every address of a listener, or none: a socket bound before a later one fails is
/// closed when this returns the error.
pub fn bind_all(binds: &[BindAddr]) -> io::Result<Vec<TcpListener>> {
    binds.iter().map(|b| bind(*b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv6Addr, SocketAddr};

    fn v6_host() -> bool {
        std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
    }

    #[tokio::test]
    async fn ipv6_wildcard_beside_ipv4_wildcard_only_with_v6only() {
        if !v6_host() {
            eprintln!("no IPv6 on this host; skipped");
            return;
        }
        let v4 = bind(BindAddr {
            addr: "0.0.0.0:0".parse().unwrap(),
            v6only: false,
        })
        .unwrap();
        let port = v4.local_addr().unwrap().port();
        let v6 = |v6only| BindAddr {
            addr: SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
            v6only,
        };
        // A dual-stack [::] socket would also own 0.0.0.0:port, which is taken.
        let e = bind(v6(false)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        assert!(e.to_string().contains(&format!("[::]:{port}")), "{e}");
        let l = bind(v6(true)).expect("[::] with IPV6_V6ONLY binds beside 0.0.0.0");
        assert_eq!(l.local_addr().unwrap().port(), port);
    }

    #[tokio::test]
    async fn one_address_that_cannot_be_bound_fails_them_all() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = BindAddr {
            addr: "127.0.0.1:0".parse().unwrap(),
            v6only: false,
        };
        let b = BindAddr {
            addr: taken.local_addr().unwrap(),
            v6only: false,
        };
        assert!(bind_all(&[a, b]).is_err());
        assert_eq!(bind_all(&[a, a]).unwrap().len(), 2);
    }
}
