//! Container-image editing without a daemon, in the spirit of go-containerregistry's `mutate`:
//! read a base (registry, OCI layout or docker-archive), append one layer, edit the config as
//! raw JSON, and write the result (registry push, OCI layout or docker-archive).
//!
//! The `overlay` module is the thin command on top; everything else is library code that
//! knows nothing about mosn.

pub mod archive;
pub mod binary;
mod compose;
pub mod engine;
pub mod inject;
pub mod istio;
pub mod layer;
pub mod layout;
pub mod mutate;
pub mod output;
pub mod overlay;
pub mod preflight;
pub mod reference;
pub mod registry;
mod select;
pub mod source;

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI uncompressed layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker uncompressed layer (what `docker save` archives hold).
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Every manifest and index type, for the `Accept` header.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// True for an index or manifest list.
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// True for the Docker media-type family (kept on output so the registry sees the same kind).
pub fn is_docker(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.docker.")
}

/// `sha256:<hex>` of some bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", crate::fsutil::sha256_hex(bytes))
}

/// The hex part of a `sha256:` digest; fails for other algorithms or malformed digests,
/// since the hex is used as a file name.
pub fn digest_hex(digest: &str) -> Result<&str> {
    let hex = digest
        .strip_prefix("sha256:")
        .with_context(|| format!("unsupported digest `{digest}` (only sha256 is supported)"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("malformed digest `{digest}`");
    }
    Ok(hex)
}

/// The media type of a manifest document: its `mediaType` field, else the registry's
/// `Content-Type`, else a guess from its shape (OCI allows omitting the field).
pub fn media_type_of(doc: &Value, content_type: Option<&str>) -> String {
    if let Some(mt) = doc.get("mediaType").and_then(Value::as_str) {
        return mt.to_string();
    }
    if let Some(ct) = content_type {
        let ct = ct.split(';').next().unwrap_or(ct).trim();
        if ct.contains("manifest") || ct.contains("index") {
            return ct.to_string();
        }
    }
    if doc.get("manifests").is_some() {
        OCI_INDEX.to_string()
    } else {
        OCI_MANIFEST.to_string()
    }
}

/// A content descriptor: the three fields every blob reference carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// `mediaType`.
    pub media_type: String,
    /// `sha256:...`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

impl Descriptor {
    /// Read `{mediaType, digest, size}` from a JSON descriptor.
    pub fn from_json(v: &Value) -> Result<Descriptor> {
        let digest = v
            .get("digest")
            .and_then(Value::as_str)
            .context("descriptor without a digest")?;
        digest_hex(digest)?;
        Ok(Descriptor {
            media_type: v
                .get("mediaType")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            digest: digest.to_string(),
            size: v
                .get("size")
                .and_then(Value::as_u64)
                .context("descriptor without a size")?,
        })
    }

    /// The JSON form, fields in the order registries write them.
    pub fn to_json(&self) -> Value {
        serde_json::json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// The layer descriptors of a manifest.
pub fn manifest_layers(manifest: &Value) -> Result<Vec<Descriptor>> {
    manifest
        .get("layers")
        .and_then(Value::as_array)
        .context("manifest has no `layers`")?
        .iter()
        .map(Descriptor::from_json)
        .collect()
}

/// The config descriptor of a manifest.
pub fn manifest_config(manifest: &Value) -> Result<Descriptor> {
    Descriptor::from_json(manifest.get("config").context("manifest has no `config`")?)
}

/// An OS/architecture pair such as `linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// OCI spelling: `amd64`, `arm64`.
    pub arch: String,
    /// `v8`, `v7`, ... when given.
    pub variant: Option<String>,
}

impl Platform {
    /// Read the `platform` object of an index entry (or the fields of a config).
    pub fn from_json(v: &Value) -> Option<Platform> {
        Some(Platform {
            os: v.get("os")?.as_str()?.to_string(),
            arch: v.get("architecture")?.as_str()?.to_string(),
            variant: v.get("variant").and_then(Value::as_str).map(str::to_string),
        })
    }

    /// Does this (requested) platform select `other` (found in a base)? A request without a
    /// variant matches any variant.
    pub fn selects(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.arch == other.arch
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                arch: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                arch: arch.to_string(),
                variant: Some(variant.to_string()),
            }),
            _ => Err(format!(
                "`{s}` is not a platform; write it like linux/amd64 or linux/arm64/v8"
            )),
        }
    }
}

/// RFC 3339 UTC time for a Unix timestamp (as `SOURCE_DATE_EPOCH` gives), without a clock.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `SOURCE_DATE_EPOCH`, when set; malformed values are an error rather than silently
/// breaking reproducibility.
pub fn source_date_epoch() -> Result<Option<u64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("SOURCE_DATE_EPOCH=`{v}` is not a Unix timestamp")),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn platform_parse_and_select() {
        let p: Platform = "linux/arm64".parse().unwrap();
        let v8: Platform = "linux/arm64/v8".parse().unwrap();
        assert!(p.selects(&v8));
        assert!(!v8.selects(&"linux/arm64/v9".parse().unwrap()));
        assert!("linux".parse::<Platform>().is_err());
    }

    #[test]
    fn digest_hex_rejects_paths() {
        assert!(digest_hex("sha256:../../etc/passwd").is_err());
        assert!(digest_hex(&digest_of(b"x")).is_ok());
    }
}
