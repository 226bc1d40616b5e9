//! Istio versions and how to tell which one a checkout is: its git tag (or `git describe`),
//! else `istio.deps` (the pinned proxy commit identifies a release), else the `VERSION` file
//! or `Makefile.core.mk`, which only give the minor release.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use anyhow::{bail, Result};

/// `1.10.6`, `1.10` (minor only, from a `1.10-dev` default) or `1.11.0-rc.1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch release, when known.
    pub patch: Option<u32>,
    /// Pre-release suffix (`rc.1`, `dev`), if any.
    pub pre: Option<String>,
}

impl Version {
    /// True when this is at least `major.minor`.
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

impl FromStr for Version {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Version> {
        let t = s.trim().trim_start_matches('v');
        let (core, pre) = match t.split_once('-') {
            Some((c, p)) => (c, Some(p.to_string())),
            None => (t, None),
        };
        let nums: Vec<&str> = core.split('.').collect();
        let num = |s: &str| s.parse::<u32>().ok();
        let parsed = match nums.as_slice() {
            [a, b] => num(a).zip(num(b)).map(|(a, b)| (a, b, None)),
            [a, b, c] => match (num(a), num(b), num(c)) {
                (Some(a), Some(b), Some(c)) => Some((a, b, Some(c))),
                _ => None,
            },
            _ => None,
        };
        let Some((major, minor, patch)) = parsed else {
            bail!("`{s}` is not an Istio version (expected X.Y.Z, e.g. 1.10.6)");
        };
        Ok(Version {
            major,
            minor,
            patch,
            pre,
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if let Some(p) = self.patch {
            write!(f, ".{p}")?;
        }
        if let Some(pre) = &self.pre {
            write!(f, "-{pre}")?;
        }
        Ok(())
    }
}

/// A version and where it came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// The version.
    pub version: Version,
    /// e.g. "git tag 1.10.6", "istio.deps (PROXY_REPO_SHA 98d4e1b…)".
    pub source: String,
}

/// Work out the Istio version of the checkout at `dir`.
pub fn detect(dir: &Path) -> Result<Detected> {
    if let Some(d) = from_git(dir) {
        return Ok(d);
    }
    if let Some(d) = from_deps(dir) {
        return Ok(d);
    }
    if let Some(d) = from_version_file(dir).or_else(|| from_makefile(dir)) {
        return Ok(d);
    }
    bail!(
        "cannot tell which Istio version {} is\n\n\
         help: it has no release tag, no known istio.deps pin and no VERSION in Makefile.core.mk; \
         pass --istio-version X.Y.Z",
        dir.display()
    )
}

/// The tag at HEAD, or the nearest tag from `git describe`. Only when `dir` is itself the top
/// of a work tree: a tarball unpacked inside some other repository must not take its tags.
fn from_git(dir: &Path) -> Option<Detected> {
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    let same = std::fs::canonicalize(&top).ok()? == std::fs::canonicalize(dir).ok()?;
    if !same {
        return None;
    }
    if let Some(tag) = git(dir, &["describe", "--tags", "--exact-match", "HEAD"]) {
        if let Ok(v) = tag.parse() {
            return Some(Detected {
                version: v,
                source: format!("git tag {tag}"),
            });
        }
    }
    // `1.10.6-3-gabc1234`: three commits after 1.10.6. The patch is still checked hunk by hunk.
    let described = git(dir, &["describe", "--tags", "--abbrev=12", "HEAD"])?;
    let (tag, rest) = match described.rsplit_once("-g") {
        Some((head, _)) => match head.rsplit_once('-') {
            Some((tag, n)) if n.chars().all(|c| c.is_ascii_digit()) => (tag, n),
            _ => (described.as_str(), "0"),
        },
        None => (described.as_str(), "0"),
    };
    let version = tag.parse().ok()?;
    Some(Detected {
        version,
        source: format!("git describe {described} ({rest} commits after tag {tag})"),
    })
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `istio.deps` pins the proxy commit; each supported release pins a different one.
fn from_deps(dir: &Path) -> Option<Detected> {
    let text = std::fs::read_to_string(dir.join("istio.deps")).ok()?;
    let deps: serde_json::Value = serde_json::from_str(&text).ok()?;
    let sha = deps
        .as_array()?
        .iter()
        .find(|d| d.get("name").and_then(|n| n.as_str()) == Some("PROXY_REPO_SHA"))?
        .get("lastStableSHA")?
        .as_str()?
        .to_string();
    let row = super::supported::by_proxy_sha(&sha)?;
    Some(Detected {
        version: row.version,
        source: format!("istio.deps (PROXY_REPO_SHA {})", &sha[..sha.len().min(12)]),
    })
}

/// 1.19+ keep `X.Y` in a `VERSION` file.
fn from_version_file(dir: &Path) -> Option<Detected> {
    let text = std::fs::read_to_string(dir.join("VERSION")).ok()?;
    let v: Version = text.trim().parse().ok()?;
    Some(Detected {
        version: Version { pre: None, ..v },
        source: "the VERSION file (minor release only)".into(),
    })
}

/// `export VERSION ?= 1.10-dev` in Makefile.core.mk (or the Makefile).
fn from_makefile(dir: &Path) -> Option<Detected> {
    for name in ["Makefile.core.mk", "Makefile"] {
        let path: PathBuf = dir.join(name);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for line in text.lines() {
            let l = line.trim_start_matches("export ").trim();
            let Some(value) = l.strip_prefix("VERSION").map(str::trim_start) else {
                continue;
            };
            let Some(value) = value
                .strip_prefix("?=")
                .or_else(|| value.strip_prefix(":="))
                .or_else(|| value.strip_prefix('='))
            else {
                continue;
            };
            if let Ok(v) = value.trim().parse::<Version>() {
                return Some(Detected {
                    version: Version { pre: None, ..v },
                    source: format!("{name}: `{}` (minor release only)", line.trim()),
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders_versions() {
        let v: Version = "1.10.6".parse().unwrap();
        assert_eq!((v.major, v.minor, v.patch), (1, 10, Some(6)));
        assert_eq!(
            "v1.10-dev".parse::<Version>().unwrap().to_string(),
            "1.10-dev"
        );
        assert_eq!(
            "1.11.0-rc.1".parse::<Version>().unwrap().pre.as_deref(),
            Some("rc.1")
        );
        assert!("1.18.0".parse::<Version>().unwrap().at_least(1, 18));
        assert!(!"1.9.9".parse::<Version>().unwrap().at_least(1, 10));
        assert!("master".parse::<Version>().is_err());
        assert!("1.x.2".parse::<Version>().is_err());
    }

    #[test]
    fn falls_back_to_deps_then_makefile() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("Makefile.core.mk"),
            "# x\nexport VERSION ?= 1.10-dev\n",
        )
        .unwrap();
        let got = detect(d.path()).unwrap();
        assert_eq!(got.version.to_string(), "1.10");
        assert!(got.source.contains("Makefile.core.mk"), "{}", got.source);
        std::fs::write(
            d.path().join("istio.deps"),
            r#"[{"name": "PROXY_REPO_SHA", "lastStableSHA": "1a5e21be422f0799db124e8014fd94d366e1a1b1"}]"#,
        )
        .unwrap();
        assert_eq!(detect(d.path()).unwrap().version.to_string(), "1.10.5");
    }

    #[test]
    fn unknown_tree_asks_for_a_version() {
        let d = tempfile::tempdir().unwrap();
        let e = detect(d.path()).unwrap_err().to_string();
        assert!(e.contains("--istio-version"), "{e}");
    }
}
