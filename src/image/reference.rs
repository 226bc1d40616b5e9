//! Image references: `[registry/]repo[:tag][@digest]` as docker spells them, plus the local
//! forms `oci:DIR[:TAG]` and `docker-archive:FILE`.

use std::fmt;
use std::path::PathBuf;

use anyhow::{bail, Result};

/// Docker Hub's API host; `docker.io` is only a name.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A registry reference, normalised the way docker does it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `docker.io`, `127.0.0.1:5000`, `gcr.io`, ...
    pub registry: String,
    /// `library/busybox`, `istio/proxyv2`.
    pub repository: String,
    /// Tag, when given (defaults to `latest` unless a digest is given).
    pub tag: Option<String>,
    /// `sha256:...`, when given.
    pub digest: Option<String>,
}

impl Reference {
    /// Parse `[registry/]repo[:tag][@digest]`.
    pub fn parse(s: &str) -> Result<Reference> {
        let s = s.strip_prefix("docker://").unwrap_or(s);
        if s.is_empty() || s.chars().any(|c| c.is_whitespace()) {
            bail!("`{s}` is not an image reference");
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                super::digest_hex(d)?;
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is after the last ':' only if no '/' follows it (else it is a port).
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                && !t.starts_with(['.', '-']);
            if !ok {
                bail!("`{t}` is not a valid tag in `{s}`");
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            "docker.io".to_string()
        } else {
            registry
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let valid = !repository.is_empty()
            && repository.split('/').all(|c| {
                !c.is_empty()
                    && c.chars().all(|ch| {
                        ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch)
                    })
            });
        if !valid {
            bail!("`{name}` is not a valid repository name (lower-case letters, digits, `._-/`)");
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host the registry API is served on.
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to put after `/manifests/`: the digest if pinned, else the tag.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The short form docker prints and `docker load` expects in `RepoTags`.
    pub fn familiar(&self) -> String {
        let repo = if self.registry == "docker.io" {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            format!("{}/{}", self.registry, self.repository)
        };
        format!("{repo}:{}", self.tag.as_deref().unwrap_or("latest"))
    }

    /// True for registries docker talks plain HTTP to by default (loopback).
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.registry)
    }
}

/// `localhost`, `127.x.x.x` or `[::1]`, with or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let h = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    h == "localhost"
        || h == "::1"
        || h.parse::<std::net::Ipv4Addr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Where an image is read from or written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A registry (`docker://` or a bare reference).
    Registry(Reference),
    /// An OCI image layout directory, with an optional `org.opencontainers.image.ref.name`.
    Oci(PathBuf, Option<String>),
    /// A `docker save`-style tar.
    DockerArchive(PathBuf),
}

impl Location {
    /// Parse `oci:DIR[:TAG]`, `docker-archive:FILE` or a registry reference.
    pub fn parse(s: &str) -> Result<Location> {
        if let Some(rest) = s.strip_prefix("oci:") {
            // `oci:DIR:TAG`: the tag is after the last ':' when it holds no '/'.
            let (dir, tag) = match rest.rfind(':') {
                Some(i) if i > 0 && !rest[i + 1..].contains('/') && !rest[i + 1..].is_empty() => {
                    (&rest[..i], Some(rest[i + 1..].to_string()))
                }
                _ => (rest, None),
            };
            if dir.is_empty() {
                bail!("`{s}` names no directory; write it like oci:./out or oci:./out:v1");
            }
            return Ok(Location::Oci(PathBuf::from(dir), tag));
        }
        if let Some(file) = s.strip_prefix("docker-archive:") {
            if file.is_empty() {
                bail!("`{s}` names no file; write it like docker-archive:./image.tar");
            }
            return Ok(Location::DockerArchive(PathBuf::from(file)));
        }
        if let Some((scheme, _)) = s.split_once(':') {
            if ["oci-archive", "dir", "containers-storage", "docker-daemon"].contains(&scheme) {
                bail!(
                    "`{scheme}:` images are not supported\n\n\
                     help: use a registry reference, oci:DIR[:TAG] or docker-archive:FILE"
                );
            }
        }
        Ok(Location::Registry(Reference::parse(s)?))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Registry(r) => write!(f, "{r}"),
            Location::Oci(d, Some(t)) => write!(f, "oci:{}:{t}", d.display()),
            Location::Oci(d, None) => write!(f, "oci:{}", d.display()),
            Location::DockerArchive(p) => write!(f, "docker-archive:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_normalisation() {
        let r = Reference::parse("istio/proxyv2:1.10.6").unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.api_host(), DOCKER_HUB_API);
        assert_eq!(r.repository, "istio/proxyv2");
        assert_eq!(r.familiar(), "istio/proxyv2:1.10.6");
        let b = Reference::parse("busybox").unwrap();
        assert_eq!(b.repository, "library/busybox");
        assert_eq!(b.tag.as_deref(), Some("latest"));
        assert_eq!(b.familiar(), "busybox:latest");
    }

    #[test]
    fn ports_tags_and_digests() {
        let r = Reference::parse("127.0.0.1:5000/a/b:v1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("127.0.0.1:5000", "a/b")
        );
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert!(r.is_loopback());
        let d = format!("localhost:5000/x@{}", crate::image::digest_of(b""));
        let r = Reference::parse(&d).unwrap();
        assert_eq!(r.tag, None);
        assert!(r.manifest_ref().starts_with("sha256:"));
        assert!(Reference::parse("Upper/Case").is_err());
        assert!(!Reference::parse("gcr.io/x").unwrap().is_loopback());
    }

    #[test]
    fn local_locations() {
        assert_eq!(
            Location::parse("oci:/tmp/x:v1").unwrap(),
            Location::Oci("/tmp/x".into(), Some("v1".into()))
        );
        assert_eq!(
            Location::parse("oci:./a/b").unwrap(),
            Location::Oci("./a/b".into(), None)
        );
        assert_eq!(
            Location::parse("docker-archive:x.tar").unwrap(),
            Location::DockerArchive("x.tar".into())
        );
        assert!(Location::parse("oci-archive:x").is_err());
    }
}
