//! What the access log and Istio's stats know of one upstream connection: the local address
//! it was made from (`%UPSTREAM_LOCAL_ADDRESS%`) and, over TLS, the URI SANs of its two
//! certificates. Istio's stats filter labels an outbound request's `source_principal` and
//! `destination_principal` with the latter (its `upstream.uri_san_local_certificate` and
//! `upstream.uri_san_peer_certificate`).
//!
//! Worked out once, when the connection is made, and kept with it in whichever pool holds it
//! (the inline HTTP/1.1 stack, hyper's, HTTP/2's). A request's attempt is told which
//! connection it goes out on as soon as it has one, so that its log line names it even when the
//! attempt times out or is reset.

use std::net::SocketAddr;

/// The URI SANs of one TLS connection's two certificates, empty when a certificate has none.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TlsNames {
    /// The certificate this side presented.
    pub local: String,
    /// The certificate the upstream presented.
    pub peer: String,
}

impl TlsNames {
    /// The names of a finished handshake; `local` is the URI SAN of the certificate sent.
    pub fn of(conn: &rustls::ClientConnection, local: Option<&str>) -> Self {
        TlsNames {
            local: local.unwrap_or_default().to_string(),
            peer: crate::tls::client::peer_uri(conn).unwrap_or_default(),
        }
    }
}

/// One upstream connection's addresses and TLS names, shared by the connection and the
/// requests it carried (a reference per request: copying it made each request's futures
/// bigger, and the moves of them dearer).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConnInfo {
    /// The local address of the connection (the source the kernel or `upstream_bind_config`
    /// gave it), when the socket could tell.
    pub local: Option<SocketAddr>,
    /// The names on its TLS, when it runs TLS.
    pub tls: Option<TlsNames>,
}
