//! Named TLS secrets, Envoy's `Secret`: a certificate with its key, or a validation context
//! (trusted CAs and the names a peer must have). They come from the bootstrap's
//! `static_resources.secrets` and from SDS (Istio's `default` and `ROOTCA`), and a TLS context
//! names the ones it uses. A change bumps the store's generation, so that contexts rebuild
//! their rustls configs for the next handshake while established connections go on.

use super::context::SanMatch;
use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret::Type, CertificateValidationContext, Secret, TlsCertificate,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A compiled secret.
#[derive(Clone)]
pub enum Entry {
    /// `tls_certificate`: the chain and its key, ready to present.
    Cert(Arc<CertifiedKey>),
    /// `validation_context`.
    Validation(Arc<Validation>),
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key; the chain's length is enough for logs.
        match self {
            Entry::Cert(k) => write!(f, "Cert({} certificates)", k.cert.len()),
            Entry::Validation(v) => write!(f, "Validation({} roots)", v.roots.len()),
        }
    }
}

/// A compiled `CertificateValidationContext`.
#[derive(Debug)]
pub struct Validation {
    /// `trusted_ca`; empty when none was given.
    pub roots: Arc<RootCertStore>,
    /// `match_subject_alt_names` and `match_typed_subject_alt_names`: a peer must have a name
    /// that one of them matches (none: any name).
    pub sans: Vec<SanMatch>,
}

impl Validation {
    /// Compile a validation context. Fields that would make Envoy check more than this does
    /// (pinned hashes or keys, CRLs) or less (untrusted chains) are refused rather than
    /// ignored.
    pub fn from_proto(v: &CertificateValidationContext) -> Result<Self, String> {
        let sans = Self::check(v)?;
        let mut roots = RootCertStore::empty();
        if let Some(ca) = &v.trusted_ca {
            let pem = read(ca, "trusted_ca")?;
            let certs = certificates(&pem, "trusted_ca")?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err("trusted_ca holds no usable CA certificate".into());
            }
        }
        Ok(Validation {
            roots: Arc::new(roots),
            sans,
        })
    }

    /// Check what can be checked without reading files; the SAN matchers compiled.
    pub fn check(v: &CertificateValidationContext) -> Result<Vec<SanMatch>, String> {
        if !v.verify_certificate_hash.is_empty() || !v.verify_certificate_spki.is_empty() {
            return Err(
                "verify_certificate_hash and verify_certificate_spki are not supported".into(),
            );
        }
        if v.crl.is_some() {
            return Err("crl is not supported".into());
        }
        if v.allow_expired_certificate || v.trust_chain_verification != 0 {
            return Err("allow_expired_certificate and ACCEPT_UNTRUSTED are not supported".into());
        }
        if v.custom_validator_config.is_some() {
            return Err("custom_validator_config is not supported".into());
        }
        let mut sans = Vec::new();
        for m in &v.match_subject_alt_names {
            sans.push(SanMatch::any(m)?);
        }
        for m in &v.match_typed_subject_alt_names {
            sans.push(SanMatch::typed(m)?);
        }
        Ok(sans)
    }

    /// This context with the names of `default` added (Envoy merges a combined validation
    /// context's default into the SDS one: repeated fields concatenate).
    pub fn merged(&self, default: &Validation) -> Validation {
        let mut sans = default.sans.clone();
        sans.extend(self.sans.iter().cloned());
        Validation {
            roots: self.roots.clone(),
            sans,
        }
    }
}

/// Check a `TlsCertificate` without reading its files.
pub fn check_certificate(t: &TlsCertificate) -> Result<(), String> {
    if t.certificate_chain.is_none() {
        return Err("tls_certificate has no certificate_chain".into());
    }
    if t.private_key.is_none() {
        return Err("tls_certificate has no private_key".into());
    }
    if t.private_key_provider.is_some() || t.password.is_some() {
        return Err("private_key_provider and password are not supported".into());
    }
    Ok(())
}

/// Compile a `TlsCertificate`: the chain and key must be PEM, the key the chain's.
pub fn certified_key(t: &TlsCertificate) -> Result<Arc<CertifiedKey>, String> {
    check_certificate(t)?;
    let (Some(chain), Some(key)) = (&t.certificate_chain, &t.private_key) else {
        return Err("tls_certificate has no certificate_chain or private_key".into());
    };
    let certs = certificates(&read(chain, "certificate_chain")?, "certificate_chain")?;
    let key_pem = read(key, "private_key")?;
    // The key's bytes never reach a message: only what is wrong with them.
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| "private_key holds no PEM private key".to_string())?;
    CertifiedKey::from_der(certs, key, &super::provider())
        .map(Arc::new)
        .map_err(|e| format!("certificate_chain and private_key do not go together: {e}"))
}

/// Compile a `Secret` resource.
pub fn entry(s: &Secret) -> Result<Entry, String> {
    let ctx = |e: String| format!("secret {:?}: {e}", s.name);
    match &s.r#type {
        Some(Type::TlsCertificate(t)) => certified_key(t).map(Entry::Cert).map_err(ctx),
        Some(Type::ValidationContext(v)) => Validation::from_proto(v)
            .map(|v| Entry::Validation(Arc::new(v)))
            .map_err(ctx),
        Some(Type::SessionTicketKeys(_)) | Some(Type::GenericSecret(_)) => Err(ctx(
            "only tls_certificate and validation_context secrets are supported".into(),
        )),
        None => Err(ctx("no secret type set".into())),
    }
}

/// PEM data from a `DataSource`; `what` names the field in messages.
pub fn read(ds: &DataSource, what: &str) -> Result<Vec<u8>, String> {
    Source::from(Some(ds))
        .ok_or_else(|| format!("{what} is empty"))?
        .read(what)
}

/// Where PEM data comes from (a `DataSource`), kept to read later: the xDS cluster's TLS
/// files are read at each connect. `Debug` shows a file's path, never inline content.
#[derive(Clone, PartialEq, Eq)]
pub enum Source {
    /// `filename`, relative to the working directory like a pipe path.
    File(std::path::PathBuf),
    /// `inline_bytes` or `inline_string`.
    Inline(Vec<u8>),
    /// `environment_variable`.
    Env(String),
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Inline(b) => write!(f, "<inline, {} bytes>", b.len()),
            Source::Env(v) => write!(f, "${v}"),
        }
    }
}

impl Source {
    /// The source `ds` names; `None` when it names none (or an empty file name).
    pub fn from(ds: Option<&DataSource>) -> Option<Source> {
        match ds?.specifier.as_ref()? {
            Specifier::Filename(f) if !f.is_empty() => Some(Source::File(f.into())),
            Specifier::Filename(_) => None,
            Specifier::InlineBytes(b) => Some(Source::Inline(b.clone())),
            Specifier::InlineString(s) => Some(Source::Inline(s.clone().into_bytes())),
            Specifier::EnvironmentVariable(v) => Some(Source::Env(v.clone())),
        }
    }

    /// The data; `what` names the field in messages.
    pub fn read(&self, what: &str) -> Result<Vec<u8>, String> {
        match self {
            Source::File(p) => std::fs::read(p).map_err(|e| {
                format!(
                    "cannot read {what} from {}: {e} (relative paths are resolved against \
                     mosn's working directory)",
                    p.display()
                )
            }),
            Source::Inline(b) => Ok(b.clone()),
            Source::Env(v) => std::env::var(v)
                .map(String::into_bytes)
                .map_err(|_| format!("{what} names environment variable {v}, which is not set")),
        }
    }
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what} is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what} holds no PEM CERTIFICATE"));
    }
    Ok(certs)
}

/// The secrets known by name, and a generation that changes with them.
#[derive(Debug, Default)]
pub struct Secrets {
    map: ArcSwap<HashMap<String, Entry>>,
    generation: AtomicU64,
    /// What SDS sent, keys redacted, for `/config_dump` (`dynamic_active_secrets`).
    dynamic: std::sync::Mutex<std::collections::BTreeMap<String, Dumped>>,
}

/// A secret as `/config_dump` shows it.
#[derive(Debug, Clone)]
pub struct Dumped {
    /// The SDS version it came with.
    pub version: String,
    /// When it was accepted.
    pub last_updated: std::time::SystemTime,
    /// The secret, its private key replaced by `[redacted]` as Envoy's dump does.
    pub secret: Secret,
}

/// `s` with its private key replaced by `[redacted]`.
pub fn redacted(s: &Secret) -> Secret {
    let mut s = s.clone();
    if let Some(Type::TlsCertificate(t)) = &mut s.r#type {
        if t.private_key.is_some() {
            t.private_key = Some(DataSource {
                specifier: Some(Specifier::InlineString("[redacted]".into())),
                ..Default::default()
            });
        }
    }
    s
}

impl Secrets {
    /// The secret named `name`, if it has arrived.
    pub fn get(&self, name: &str) -> Option<Entry> {
        self.map.load().get(name).cloned()
    }

    /// Changes with every update; contexts cache their configs by it.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Add or replace secrets (SDS updates, the bootstrap's static ones).
    pub fn put(&self, entries: impl IntoIterator<Item = (String, Entry)>) {
        let mut map = HashMap::clone(&self.map.load());
        map.extend(entries);
        self.map.store(Arc::new(map));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Record what an SDS update brought (keys redacted), for `/config_dump`.
    pub fn record(&self, secrets: &[Secret], version: &str) {
        let now = std::time::SystemTime::now();
        let mut d = self.dynamic.lock().unwrap();
        for s in secrets {
            let secret = redacted(s);
            d.insert(
                s.name.clone(),
                Dumped {
                    version: version.to_string(),
                    last_updated: now,
                    secret,
                },
            );
        }
    }

    /// The SDS secrets as last accepted, by name.
    pub fn dynamic(&self) -> Vec<Dumped> {
        self.dynamic.lock().unwrap().values().cloned().collect()
    }
}
