//! TLS for the data path: Istio's mutual TLS between sidecars.
//!
//! - [`secrets`] holds named certificates and validation contexts (bootstrap and SDS),
//! - [`context`] compiles Envoy's `DownstreamTlsContext` into rustls configs, with Envoy's peer
//!   verification (CA chain plus SAN matchers, not the SNI), and holds what both sides share,
//! - [`client`] compiles `UpstreamTlsContext`, one config per ALPN offer,
//! - [`der`] reads a certificate's SANs (the SPIFFE URI Istio identifies workloads by),
//! - [`sds`] fetches the secrets the contexts name from their SDS servers (Istio's
//!   `sds-grpc` pipe to pilot-agent).
//!
//! rustls runs on ring, which the ADS client's TLS already builds.

pub mod client;
pub mod context;
pub mod der;
pub mod sds;
pub mod secrets;

pub use client::{Alpn, ClientTls, Dial};
pub use context::{SdsRef, ServerSide, ServerTls};
pub use secrets::Secrets;

use std::sync::{Arc, OnceLock};

/// The crypto provider every TLS config here uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static P: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// What a downstream TLS connection says about its client, for RBAC's `authenticated`
/// principals, `:scheme` and `x-forwarded-client-cert`.
#[derive(Debug, Default, Clone)]
pub struct Peer {
    /// The client certificate's SANs (none without a certificate).
    pub sans: der::Sans,
    /// The SNI the client sent.
    pub sni: Option<String>,
    /// The client certificate's SHA-256, lowercase hex.
    pub hash: Option<String>,
    /// The client certificate's subject (RFC 2253).
    pub subject: Option<String>,
    /// The URI SAN of the certificate this side presented (XFCC's `By=`).
    pub local_uri: Option<String>,
    /// ALPN `istio-peer-exchange` was agreed: Istio's TCP metadata exchange runs first.
    pub peer_exchange: bool,
    /// The certificates the client presented, its own first (XFCC's `Cert` and `Chain`).
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// XFCC's `Cert` and `Chain` values (URL-encoded PEM), made at the first request that
    /// asks for them and reused by the connection's later requests.
    pub xfcc_pem: [std::sync::OnceLock<String>; 2],
}

impl Peer {
    /// Whether the client presented a certificate (it was verified, or the handshake failed).
    pub fn authenticated(&self) -> bool {
        self.hash.is_some()
    }

    /// Read the peer of a finished handshake; `local_uri` from the certificate presented.
    pub fn of(conn: &rustls::ServerConnection, local_uri: Option<String>) -> Peer {
        let cert = conn.peer_certificates().and_then(|c| c.first());
        Peer {
            sans: cert
                .and_then(|c| der::subject_alt_names(c))
                .unwrap_or_default(),
            sni: conn.server_name().map(str::to_string),
            hash: cert.map(|c| {
                let d = ring::digest::digest(&ring::digest::SHA256, c);
                // One string, not one per byte (mosnctl's fsutil::hex, in the other crate).
                d.as_ref()
                    .iter()
                    .fold(String::with_capacity(64), |mut s, b| {
                        use std::fmt::Write as _;
                        let _ = write!(s, "{b:02x}");
                        s
                    })
            }),
            subject: cert.and_then(|c| der::subject(c)),
            local_uri,
            peer_exchange: conn.alpn_protocol() == Some(context::PEER_EXCHANGE.as_bytes()),
            chain: conn
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default(),
            xfcc_pem: Default::default(),
        }
    }
}

/// A downstream connection after its TLS handshake.
pub type ServerStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
