//! Envoy's `UpstreamTlsContext` (Istio's auto-mTLS to other sidecars), compiled into rustls
//! client configs, one per ALPN offer, with Envoy's server verification: the chain against
//! the validation context's CAs and its SAN matchers, never the SNI.

use super::context::{cached, check_sans, Cached, Common, SdsRef};
use super::secrets::{Secrets, Validation};
use crate::config::decode;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use envoy_types::pb::google::protobuf::Any;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;

/// A compiled `UpstreamTlsContext`.
#[derive(Debug)]
pub struct ClientTls {
    common: Common,
    sni: String,
    /// The cluster's `auto_sni`: connections are named by their request's host, so SNI is
    /// sent even without a fixed `sni`.
    auto_sni: bool,
    /// The cluster's `auto_san_validation`: the server's certificate must be valid for the
    /// name the connection was opened for, in place of the SAN matchers.
    auto_san: bool,
    /// This context's number, unique in the process (from 1): the high bits of its
    /// connections' [`Dial::flavor`].
    id: u64,
    /// Configs by ALPN: as configured, then Istio's override for HTTP/1.1 and for HTTP/2.
    cache: [Cached<Dial>; 4],
}

/// The ALPN protocols a connection offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// The context's `alpn_protocols`.
    Configured,
    /// Istio's `istio.alpn` HTTP filter on an outbound HCM, for an HTTP/1.1 upstream:
    /// `istio-http/1.1, istio, http/1.1`, so that an Envoy server's filter chain match
    /// knows the traffic is HTTP (on a sniffed port it would otherwise be TCP).
    IstioHttp11,
    /// The same for HTTP/2: `istio-h2, istio, h2`.
    IstioH2,
    /// The context's `alpn_protocols` with `istio-peer-exchange` kept: a tcp_proxy
    /// connection of a cluster that runs Istio's TCP metadata exchange.
    PeerExchange,
}

impl Alpn {
    fn protocols(self) -> Option<Vec<Vec<u8>>> {
        let list: &[&[u8]] = match self {
            Alpn::Configured | Alpn::PeerExchange => return None,
            Alpn::IstioHttp11 => &[b"istio-http/1.1", b"istio", b"http/1.1"],
            Alpn::IstioH2 => &[b"istio-h2", b"istio", b"h2"],
        };
        Some(list.iter().map(|p| p.to_vec()).collect())
    }
}

/// What a new upstream connection needs to start TLS. Built once per context, ALPN offer
/// and secrets generation, and shared: a request to a pooled connection only clones the
/// `Arc` (building one per request cost an SNI `String` and a config lookup).
#[derive(Debug)]
pub struct Dial {
    /// The rustls config (certificate, verifier, ALPN); `None` for a plaintext connection
    /// that only needs the PROXY header.
    pub config: Option<Arc<rustls::ClientConfig>>,
    /// The upstream PROXY protocol header to write first, before any TLS.
    pub proxy: Option<crate::cluster::proxy_header::Preamble>,
    /// The SNI; `None` sends none.
    pub sni: Option<ServerName<'static>>,
    /// The URI SAN of the client certificate it presents (Istio's `source_principal` on
    /// outbound TCP telemetry).
    pub local_uri: Option<String>,
    /// Which context and ALPN offer made it: connections of different flavors to one
    /// address are not interchangeable (Envoy keys its pools by transport socket and ALPN),
    /// so the pools key by it. Never 0, which stands for plaintext.
    pub flavor: u64,
}

/// The first URI SAN of the certificate the server presented on `conn` (Istio's
/// `destination_principal` on outbound telemetry).
pub fn peer_uri(conn: &rustls::ClientConnection) -> Option<String> {
    let cert = conn.peer_certificates()?.first()?;
    super::der::subject_alt_names(cert)?.uri.into_iter().next()
}

impl Dial {
    /// The name to hand rustls for a connection to `ip`: the SNI, else the address (for
    /// which rustls sends no SNI).
    pub fn server_name(&self, ip: std::net::IpAddr) -> ServerName<'static> {
        self.sni.clone().unwrap_or(ServerName::IpAddress(ip.into()))
    }

    /// This dial for a connection named `name` by its request (auto SNI): that SNI (rustls
    /// sends none for an IP address, as RFC 6066 wants), and a flavor of its own, so that
    /// pooled connections are only reused for the same name.
    pub fn named(&self, name: &str) -> Dial {
        Dial {
            config: self.config.clone(),
            proxy: self.proxy,
            local_uri: self.local_uri.clone(),
            sni: ServerName::try_from(name.to_string()).ok(),
            flavor: xxhash_rust::xxh64::xxh64(name.as_bytes(), self.flavor) | 1 << 63,
        }
    }

    /// `tls` (`None`: plaintext) with the PROXY header `proxy` written first, in a flavor of
    /// its own.
    pub fn with_proxy(tls: Option<&Dial>, proxy: crate::cluster::proxy_header::Preamble) -> Dial {
        Dial {
            config: tls.and_then(|t| t.config.clone()),
            proxy: Some(proxy),
            local_uri: tls.and_then(|t| t.local_uri.clone()),
            sni: tls.and_then(|t| t.sni.clone()),
            flavor: proxy.flavor(tls.map_or(0, |t| t.flavor)),
        }
    }
}

impl ClientTls {
    /// Compile the transport socket's config (an `UpstreamTlsContext`) for a cluster that
    /// asks for auto SNI (`auto_sni`) and auto SAN validation (`auto_san`) or not.
    pub fn from_any(any: &Any, auto_sni: bool, auto_san: bool) -> Result<Self, String> {
        let u: UpstreamTlsContext = decode::unpack(any)?;
        if u.auto_host_sni || u.auto_sni_san_validation {
            return Err("auto_host_sni and auto_sni_san_validation are not supported".into());
        }
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(ClientTls {
            common: Common::from_proto(u.common_tls_context.as_ref())?,
            sni: u.sni,
            auto_sni,
            auto_san,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            cache: Default::default(),
        })
    }

    /// The SDS secrets it names.
    pub fn sds(&self) -> &[SdsRef] {
        &self.common.sds
    }

    /// The ALPN protocols offered (Istio: `istio-peer-exchange`, `istio`, and `h2` for
    /// HTTP/2 clusters).
    pub fn alpn(&self) -> &[Vec<u8>] {
        &self.common.alpn
    }

    /// What a new connection needs, offering `alpn`; an error when a secret is missing.
    pub fn dial(&self, secrets: &Secrets, alpn: Alpn) -> Result<Arc<Dial>, String> {
        cached(&self.cache[alpn as usize], secrets, || {
            Ok(Dial {
                config: Some(Arc::new(self.config(secrets, alpn)?)),
                proxy: None,
                local_uri: self
                    .common
                    .cert(secrets)?
                    .and_then(|k| {
                        k.cert
                            .first()
                            .and_then(|c| super::der::subject_alt_names(c))
                    })
                    .and_then(|s| s.uri.into_iter().next()),
                sni: ServerName::try_from(self.sni.clone()).ok(),
                // The context's number with the ALPN offer in the low bits. Secret rotation
                // does not change it: established connections stay in use, as in Envoy.
                flavor: self.id << 2 | alpn as u64,
            })
        })
    }

    /// A rustls config for the next handshake; an error when a secret is missing.
    fn config(&self, secrets: &Secrets, alpn: Alpn) -> Result<rustls::ClientConfig, String> {
        let provider = super::provider();
        let verifier = Arc::new(ServerPeer {
            validation: self.common.validation(secrets)?,
            algs: provider.signature_verification_algorithms,
            check_name: self.auto_san,
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(self.common.versions())
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut cfg = match self.common.cert(secrets)? {
            Some(k) => builder.with_client_cert_resolver(Arc::new(ClientCert(k))),
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = match alpn {
            Alpn::PeerExchange if !self.common.mx_alpn.is_empty() => self.common.mx_alpn.clone(),
            _ => alpn.protocols().unwrap_or_else(|| self.common.alpn.clone()),
        };
        cfg.enable_sni = !self.sni.is_empty() || self.auto_sni;
        Ok(cfg)
    }
}

/// The client certificate, offered whatever the server asks for.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// Envoy's upstream verification: the chain against the validation context's CAs and its
/// SAN matchers, never the SNI; nothing without a validation context. With
/// `auto_san_validation` (`check_name`), the certificate must be valid for the DNS name the
/// connection was opened for instead of matching the SAN matchers (Envoy's SAN list override);
/// a connection named by an IP address keeps the matchers.
#[derive(Debug)]
struct ServerPeer {
    validation: Option<Arc<Validation>>,
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
    check_name: bool,
}

impl ServerCertVerifier for ServerPeer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        _: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let by_name = self.check_name && matches!(name, ServerName::DnsName(_));
        if by_name {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_name(&cert, name)?;
        }
        if let Some(v) = &self.validation {
            if !v.roots.is_empty() {
                let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_cert_signed_by_trust_anchor(
                    &cert,
                    &v.roots,
                    intermediates,
                    now,
                    self.algs.all,
                )?;
            }
            if !by_name {
                check_sans(&v.sans, end_entity)?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::context::UPSTREAM_URL;
    use prost::Message;
    use serde_json::json;

    fn upstream(ctx: serde_json::Value) -> Result<ClientTls, String> {
        let pool = mosn_proto::decode_pool();
        let u: UpstreamTlsContext = mosn_proto::from_json(&pool, &ctx, true)?;
        ClientTls::from_any(
            &Any {
                type_url: UPSTREAM_URL.into(),
                value: u.encode_to_vec(),
            },
            false,
            false,
        )
    }

    #[test]
    fn san_matchers_need_a_trusted_ca_and_peer_exchange_is_not_offered() {
        let err = upstream(json!({"common_tls_context": {"validation_context": {
            "match_subject_alt_names": [{"exact": "spiffe://cluster.local/ns/default/sa/reviews"}]}}}))
        .unwrap_err();
        assert!(err.contains("trusted_ca"), "{err}");
        let t = upstream(
            json!({"common_tls_context": {"alpn_protocols": ["istio-peer-exchange", "istio"]}}),
        )
        .unwrap();
        assert_eq!(t.alpn(), [b"istio".to_vec()]);
    }
}
