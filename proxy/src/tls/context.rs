//! Envoy's TLS transport sockets: `DownstreamTlsContext` on a filter chain (Istio's inbound
//! mTLS) and `UpstreamTlsContext` on a cluster (Istio's auto-mTLS to other sidecars), compiled
//! into rustls configs. Certificates and CAs are named SDS secrets or inline; a config is
//! built at the first handshake after its secrets change (see [`Secrets::generation`]).
//!
//! Peer verification is Envoy's, not the web's: a peer certificate must chain to the
//! validation context's CAs, and when SAN matchers are set one of its names must match. The
//! server's name is not compared with SNI (Istio's SNI is `outbound_.9080_.v1_.reviews…`,
//! which no certificate carries); a context without a validation context does not verify
//! the peer at all, as in Envoy.

use super::der::{subject_alt_names, Sans};
use super::secrets::{certified_key, check_certificate, Entry, Secrets, Validation};
use crate::config::decode;
use crate::route::matcher::StringMatch;
use arc_swap::ArcSwapOption;
use envoy_types::pb::envoy::config::core::v3::{
    config_source::ConfigSourceSpecifier, grpc_service,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, subject_alt_name_matcher::SanType,
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsCertificate, TlsParameters,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::google::protobuf::Any;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::Arc;

/// The `@type` of a downstream TLS transport socket.
pub const DOWNSTREAM_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
/// The `@type` of an upstream TLS transport socket.
pub const UPSTREAM_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
/// The `@type` of a plaintext transport socket.
pub const RAW_BUFFER_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

/// One SAN matcher: of one SAN type (`match_typed_subject_alt_names`) or of any
/// (`match_subject_alt_names`).
#[derive(Debug, Clone)]
pub struct SanMatch {
    kind: Option<SanType>,
    m: StringMatch,
}

impl SanMatch {
    /// An untyped matcher: DNS, URI, email and IP SANs are all tried.
    pub fn any(m: &StringMatcher) -> Result<Self, String> {
        Ok(SanMatch {
            kind: None,
            m: StringMatch::from_proto(m)?,
        })
    }

    /// A typed matcher.
    pub fn typed(m: &SubjectAltNameMatcher) -> Result<Self, String> {
        let kind = match SanType::try_from(m.san_type) {
            Ok(k @ (SanType::Dns | SanType::Uri | SanType::Email | SanType::IpAddress)) => k,
            _ => return Err(format!("SAN type {} is not supported", m.san_type)),
        };
        let matcher = m.matcher.as_ref().ok_or("SAN matcher without a matcher")?;
        Ok(SanMatch {
            kind: Some(kind),
            m: StringMatch::from_proto(matcher)?,
        })
    }

    /// Whether one of `s` matches.
    pub fn matches(&self, s: &Sans) -> bool {
        let want = |k: SanType| self.kind.is_none_or(|x| x == k);
        (want(SanType::Dns) && s.dns.iter().any(|d| self.dns(d)))
            || (want(SanType::Uri) && s.uri.iter().any(|u| self.m.matches(u)))
            || (want(SanType::Email) && s.email.iter().any(|e| self.m.matches(e)))
            || (want(SanType::IpAddress) && s.ip.iter().any(|i| self.m.matches(&i.to_string())))
    }

    /// A DNS SAN: an exact matcher also accepts a certificate's wildcard for its first label,
    /// as Envoy's `dnsNameMatch` does.
    fn dns(&self, san: &str) -> bool {
        if self.m.matches(san) {
            return true;
        }
        match (&self.m, san.strip_prefix('*')) {
            (StringMatch::Exact(want, _), Some(rest)) if rest.starts_with('.') => want
                .find('.')
                .is_some_and(|i| i > 0 && want[i..].eq_ignore_ascii_case(rest)),
            _ => false,
        }
    }
}

/// Where a context's certificate or validation context comes from. Inline ones are read
/// (their files too) when a config is built, not when the context is compiled: Envoy's
/// bootstraps name certificate files that appear later (pilot-agent writes them), and
/// `--mode validate` runs where they do not exist.
#[derive(Clone)]
enum Source<P> {
    Inline(P),
    /// An SDS secret by name, with the validation context it is merged with (combined
    /// validation contexts).
    Sds(String, Option<Box<CertificateValidationContext>>),
}

/// Names only: an inline certificate's key must never reach a log through `{:?}`.
impl<P> std::fmt::Debug for Source<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Inline(_) => f.write_str("Inline(<redacted>)"),
            Source::Sds(name, _) => write!(f, "Sds({name:?})"),
        }
    }
}

/// An SDS secret a context needs, and where it is served.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SdsRef {
    /// The cluster of the SDS server (Istio's `sds-grpc`), or `None` for the ADS stream.
    pub cluster: Option<String>,
    /// The secret's name (`default`, `ROOTCA`, `file-cert:…`).
    pub name: String,
}

/// Where a named secret comes from: `None` for a static one (no `sds_config`: the
/// bootstrap's `static_resources.secrets`).
fn sds_ref(c: &SdsSecretConfig) -> Result<Option<SdsRef>, String> {
    let Some(src) = &c.sds_config else {
        return Ok(None);
    };
    let cluster = match &src.config_source_specifier {
        Some(ConfigSourceSpecifier::Ads(_)) => None,
        Some(ConfigSourceSpecifier::ApiConfigSource(a)) => {
            let g = a
                .grpc_services
                .first()
                .and_then(|g| g.target_specifier.as_ref());
            match g {
                Some(grpc_service::TargetSpecifier::EnvoyGrpc(e)) => Some(e.cluster_name.clone()),
                _ => {
                    return Err(format!(
                        "SDS secret {:?}: only envoy_grpc SDS sources are supported",
                        c.name
                    ))
                }
            }
        }
        _ => {
            return Err(format!(
                "SDS secret {:?} has no api_config_source or ads source",
                c.name
            ))
        }
    };
    Ok(Some(SdsRef {
        cluster,
        name: c.name.clone(),
    }))
}

/// Istio's ALPN for its TCP metadata exchange.
pub const PEER_EXCHANGE: &str = "istio-peer-exchange";

/// What both kinds of context share.
#[derive(Debug)]
pub(super) struct Common {
    cert: Option<Source<TlsCertificate>>,
    validation: Option<Source<CertificateValidationContext>>,
    pub(super) alpn: Vec<Vec<u8>>,
    /// The configured list with `istio-peer-exchange` in its place, when it is there: for a
    /// chain or cluster that runs Istio's TCP metadata exchange.
    pub(super) mx_alpn: Vec<Vec<u8>>,
    tls13_only: bool,
    pub(super) sds: Vec<SdsRef>,
}

impl Common {
    pub(super) fn from_proto(c: Option<&CommonTlsContext>) -> Result<Self, String> {
        let Some(c) = c else {
            return Ok(Common {
                cert: None,
                validation: None,
                alpn: Vec::new(),
                mx_alpn: Vec::new(),
                tls13_only: false,
                sds: Vec::new(),
            });
        };
        let mut sds = Vec::new();
        let cert = if let Some(t) = c.tls_certificates.first() {
            check_certificate(t)?;
            Some(Source::Inline(t.clone()))
        } else if let Some(s) = c.tls_certificate_sds_secret_configs.first() {
            sds.extend(sds_ref(s)?);
            Some(Source::Sds(s.name.clone(), None))
        } else {
            None
        };
        let validation = match &c.validation_context_type {
            Some(ValidationContextType::ValidationContext(v)) => {
                Validation::check(v)?;
                no_sans_without_ca(v)?;
                Some(Source::Inline(v.clone()))
            }
            Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
                sds.extend(sds_ref(s)?);
                Some(Source::Sds(s.name.clone(), None))
            }
            Some(ValidationContextType::CombinedValidationContext(cv)) => {
                let default = cv.default_validation_context.clone();
                default.as_ref().map(Validation::check).transpose()?;
                match (&cv.validation_context_sds_secret_config, default) {
                    (Some(s), default) => {
                        sds.extend(sds_ref(s)?);
                        Some(Source::Sds(s.name.clone(), default.map(Box::new)))
                    }
                    // Without the SDS half, the default alone.
                    (None, Some(d)) => {
                        no_sans_without_ca(&d)?;
                        Some(Source::Inline(d))
                    }
                    (None, None) => None,
                }
            }
            Some(_) => {
                return Err("certificate provider validation contexts are not supported".into())
            }
            None => None,
        };
        Ok(Common {
            cert,
            validation,
            mx_alpn: match c.alpn_protocols.iter().any(|p| p == PEER_EXCHANGE) {
                true => c
                    .alpn_protocols
                    .iter()
                    .map(|p| p.as_bytes().to_vec())
                    .collect(),
                false => Vec::new(),
            },
            // Not `istio-peer-exchange` unless the metadata exchange runs (`mx_alpn`): an
            // Envoy peer that selects it exchanges metadata over the stream, which would
            // otherwise pass on as data.
            alpn: c
                .alpn_protocols
                .iter()
                .filter(|p| p.as_str() != PEER_EXCHANGE)
                .map(|p| p.as_bytes().to_vec())
                .collect(),
            tls13_only: tls13_only(c.tls_params.as_ref())?,
            sds,
        })
    }

    pub(super) fn cert(&self, secrets: &Secrets) -> Result<Option<Arc<CertifiedKey>>, String> {
        match &self.cert {
            None => Ok(None),
            Some(Source::Inline(t)) => certified_key(t).map(Some),
            Some(Source::Sds(name, _)) => match secrets.get(name) {
                Some(Entry::Cert(k)) => Ok(Some(k)),
                Some(Entry::Validation(_)) => {
                    Err(format!("SDS secret {name:?} is not a certificate"))
                }
                None => Err(format!("SDS secret {name:?} has not arrived")),
            },
        }
    }

    pub(super) fn validation(&self, secrets: &Secrets) -> Result<Option<Arc<Validation>>, String> {
        match &self.validation {
            None => Ok(None),
            Some(Source::Inline(v)) => Validation::from_proto(v).map(|v| Some(Arc::new(v))),
            Some(Source::Sds(name, default)) => match (secrets.get(name), default) {
                (Some(Entry::Validation(v)), None) => Ok(Some(v)),
                (Some(Entry::Validation(v)), Some(d)) => {
                    let merged = v.merged(&Validation::from_proto(d)?);
                    if merged.roots.is_empty() && !merged.sans.is_empty() {
                        return Err(format!(
                            "SDS secret {name:?} has no trusted CA for the SAN matchers"
                        ));
                    }
                    Ok(Some(Arc::new(merged)))
                }
                (Some(Entry::Cert(_)), _) => {
                    Err(format!("SDS secret {name:?} is not a validation context"))
                }
                (None, _) => Err(format!("SDS secret {name:?} has not arrived")),
            },
        }
    }

    pub(super) fn versions(&self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        static BOTH: [&rustls::SupportedProtocolVersion; 2] =
            [&rustls::version::TLS12, &rustls::version::TLS13];
        if self.tls13_only {
            &TLS13
        } else {
            &BOTH
        }
    }
}

/// Envoy refuses SAN matchers without a trusted CA: a self-signed certificate could carry
/// any name.
fn no_sans_without_ca(v: &CertificateValidationContext) -> Result<(), String> {
    let sans = !v.match_subject_alt_names.is_empty() || !v.match_typed_subject_alt_names.is_empty();
    if sans && v.trusted_ca.is_none() {
        return Err("SAN matchers without a trusted_ca would trust any self-signed certificate; add trusted_ca".into());
    }
    Ok(())
}

/// Whether `tls_params` ask for TLS 1.3 only; versions below 1.2 are not offered at all
/// (rustls has none), and a maximum below 1.2 is an error.
fn tls13_only(p: Option<&TlsParameters>) -> Result<bool, String> {
    let Some(p) = p else { return Ok(false) };
    // TLS_AUTO 0, TLSv1_0 1, TLSv1_1 2, TLSv1_2 3, TLSv1_3 4.
    if matches!(p.tls_maximum_protocol_version, 1 | 2) {
        return Err("tls_maximum_protocol_version below TLSv1_2 is not supported".into());
    }
    Ok(p.tls_minimum_protocol_version == 4)
}

/// A built config and the secrets generation it was built from.
pub(super) type Cached<T> = ArcSwapOption<(u64, Arc<T>)>;

pub(super) fn cached<T>(
    cache: &Cached<T>,
    secrets: &Secrets,
    build: impl FnOnce() -> Result<T, String>,
) -> Result<Arc<T>, String> {
    let generation = secrets.generation();
    if let Some(c) = &*cache.load() {
        if c.0 == generation {
            return Ok(c.1.clone());
        }
    }
    let cfg = Arc::new(build()?);
    cache.store(Some(Arc::new((generation, cfg.clone()))));
    Ok(cfg)
}

/// A compiled `DownstreamTlsContext`.
#[derive(Debug)]
pub struct ServerTls {
    common: Common,
    require_client: bool,
    /// Its chain runs Istio's TCP metadata exchange: `istio-peer-exchange` is selected.
    mx: bool,
    /// Configs with the context's ALPN, and without (see [`ServerTls::config`]).
    cache: [Cached<ServerSide>; 2],
}

impl ServerTls {
    /// Run the server side of a handshake on `stream`: the ClientHello first, since the
    /// config depends on whether the client offered one of the chain's ALPN protocols.
    pub async fn accept(
        &self,
        stream: tokio::net::TcpStream,
        secrets: &Secrets,
    ) -> Result<(super::ServerStream, super::Peer), String> {
        let acceptor = rustls::server::Acceptor::default();
        let start = tokio_rustls::LazyConfigAcceptor::new(acceptor, stream)
            .await
            .map_err(|e| format!("handshake failed: {e}"))?;
        let offered = start
            .client_hello()
            .alpn()
            .is_some_and(|mut a| a.any(|p| self.alpn().iter().any(|ours| ours.as_slice() == p)));
        let side = self
            .config(secrets, offered)
            .map_err(|e| format!("chain not ready ({e}); closing"))?;
        let s = start
            .into_stream(side.config.clone())
            .await
            .map_err(|e| format!("handshake failed: {e}"))?;
        let peer = super::Peer::of(s.get_ref().1, side.local_uri.clone());
        Ok((s, peer))
    }
}

/// A built server config and what it presents.
#[derive(Debug)]
pub struct ServerSide {
    /// The rustls config.
    pub config: Arc<rustls::ServerConfig>,
    /// The URI SAN of the certificate presented (XFCC's `By=`).
    pub local_uri: Option<String>,
}

impl ServerTls {
    /// Compile the transport socket's config (a `DownstreamTlsContext`).
    pub fn from_any(any: &Any) -> Result<Self, String> {
        let d: DownstreamTlsContext = decode::unpack(any)?;
        let common = Common::from_proto(d.common_tls_context.as_ref())?;
        if common.cert.is_none() {
            return Err("DownstreamTlsContext has no certificate".into());
        }
        let require_client = d.require_client_certificate.is_some_and(|b| b.value);
        if require_client && common.validation.is_none() {
            return Err("require_client_certificate needs a validation context".into());
        }
        Ok(ServerTls {
            common,
            require_client,
            mx: false,
            cache: Default::default(),
        })
    }

    /// Select `istio-peer-exchange` when the client offers it and the context lists it: the
    /// chain runs Istio's TCP metadata exchange.
    pub fn with_peer_exchange(mut self) -> Self {
        self.mx = true;
        self
    }

    /// The ALPN protocols it selects from.
    fn alpn(&self) -> &[Vec<u8>] {
        match self.mx && !self.common.mx_alpn.is_empty() {
            true => &self.common.mx_alpn,
            false => &self.common.alpn,
        }
    }

    /// The SDS secrets it names.
    pub fn sds(&self) -> &[SdsRef] {
        &self.common.sds
    }

    /// The rustls config for the next handshake; an error when a secret is missing. `alpn`:
    /// the client offered one of ours. When it did not, the config selects none: rustls
    /// would refuse the handshake, where Envoy (BoringSSL) goes on without ALPN (an Istio
    /// client offers `istio-peer-exchange, istio` to a chain that lists `h2, http/1.1`).
    pub fn config(&self, secrets: &Secrets, alpn: bool) -> Result<Arc<ServerSide>, String> {
        cached(&self.cache[alpn as usize], secrets, || {
            let key = self.common.cert(secrets)?.ok_or("no certificate")?;
            let local_uri = key
                .cert
                .first()
                .and_then(|c| subject_alt_names(c))
                .and_then(|s| s.uri.into_iter().next());
            let provider = super::provider();
            let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(self.common.versions())
                .map_err(|e| e.to_string())?;
            let builder = match self.common.validation(secrets)? {
                Some(v) => {
                    let mut b =
                        WebPkiClientVerifier::builder_with_provider(v.roots.clone(), provider);
                    if !self.require_client {
                        b = b.allow_unauthenticated();
                    }
                    let inner = b.build().map_err(|e| format!("validation context: {e}"))?;
                    builder.with_client_cert_verifier(Arc::new(ClientSans {
                        inner,
                        sans: v.sans.clone(),
                    }))
                }
                None => builder.with_no_client_auth(),
            };
            let mut cfg = builder.with_cert_resolver(Arc::new(One(key)));
            if alpn {
                cfg.alpn_protocols = self.alpn().to_vec();
            }
            Ok(ServerSide {
                config: Arc::new(cfg),
                local_uri,
            })
        })
    }
}

/// The one certificate a context presents.
#[derive(Debug)]
struct One(Arc<CertifiedKey>);

impl ResolvesServerCert for One {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// webpki's client verification, then the SAN matchers.
#[derive(Debug)]
struct ClientSans {
    inner: Arc<dyn ClientCertVerifier>,
    sans: Vec<SanMatch>,
}

impl ClientCertVerifier for ClientSans {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_sans(&self.sans, end_entity)?;
        Ok(ok)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

pub(super) fn check_sans(
    sans: &[SanMatch],
    cert: &CertificateDer<'_>,
) -> Result<(), rustls::Error> {
    if sans.is_empty() {
        return Ok(());
    }
    let names = subject_alt_names(cert).ok_or(rustls::Error::InvalidCertificate(
        CertificateError::BadEncoding,
    ))?;
    if sans.iter().any(|m| m.matches(&names)) {
        Ok(())
    } else {
        Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        ))
    }
}
