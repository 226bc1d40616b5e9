//! The variables `build-image` hands to Istio's make, and the check that they survive Istio's
//! build container. `common/scripts/run.sh` (1.10) passes the environment as
//! `--env-file <(env | grep -v $ENV_BLOCKLIST)`: any `NAME=value` line that contains one of
//! the blocked words anywhere, in the name or the value, is dropped without a word, and make
//! inside the container then falls back to its defaults (Envoy's URLs, `1.10-dev`, …).

use anyhow::{bail, Result};

/// `ENV_BLOCKLIST`'s default in `common/scripts/setup_env.sh@1.10.6`, a case-sensitive basic
/// regex: `^_\|PATH\|SHELL\|…`. Only the first alternative is anchored.
pub const BLOCKED: &[&str] = &[
    "PATH",
    "SHELL",
    "EDITOR",
    "TMUX",
    "USER",
    "HOME",
    "PWD",
    "TERM",
    "GO",
    "rvm",
    "SSH",
    "TMPDIR",
    "CC",
    "CXX",
    "MAKEFILE_LIST",
];

/// The blocked word an `env` line would be dropped for, if any.
pub fn blocked_by(name: &str, value: &str) -> Option<&'static str> {
    let line = format!("{name}={value}");
    if line.starts_with('_') {
        return Some("^_");
    }
    BLOCKED.iter().copied().find(|w| line.contains(w))
}

/// Fail, naming every variable Istio's build container would drop and why.
pub fn check(vars: &[(String, String)]) -> Result<()> {
    let bad: Vec<String> = vars
        .iter()
        .filter_map(|(n, v)| blocked_by(n, v).map(|w| format!("  {n}={v}  (contains `{w}`)")))
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    bail!(
        "Istio's build container would silently drop {}:\n{}\n\n\
         help: common/scripts/run.sh passes the environment through `env | grep -v $ENV_BLOCKLIST`, \
         which drops every line containing any of {} (case-sensitive) anywhere in the name or \
         the value, and make would then use Istio's defaults instead; choose values without \
         these words (e.g. another --tag, --hub or --version, or a checkout/server path without them)",
        if bad.len() == 1 { "this variable" } else { "these variables" },
        bad.join("\n"),
        BLOCKED.join(", ")
    )
}

/// The values that go to make, in the order they are printed and passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MakeVars {
    /// `ISTIO_ENVOY_VERSION`: unique per binary, so Istio's download cache never reuses an
    /// older proxy.
    pub envoy_version: String,
    /// Base URL the three tarballs are fetched from (`http://…` or `file://…`).
    pub base_url: String,
    /// `VERSION`: becomes `ISTIO_META_ISTIO_VERSION`, which istiod parses.
    pub istio_version: String,
    /// `HUB`.
    pub hub: String,
    /// `TAG`.
    pub tag: String,
}

impl MakeVars {
    /// `NAME=value` pairs for both the environment and make's command line.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let url = |f: &str| format!("{}/{f}", self.base_url.trim_end_matches('/'));
        [
            ("SIDECAR", "mosn".to_string()),
            ("ISTIO_ENVOY_VERSION", self.envoy_version.clone()),
            ("ISTIO_ENVOY_RELEASE_URL", url(crate::pack::LINUX)),
            ("ISTIO_ENVOY_CENTOS_RELEASE_URL", url(crate::pack::CENTOS)),
            ("ISTIO_ENVOY_MACOS_RELEASE_URL", url(crate::pack::MACOS)),
            (
                "ISTIO_ENVOY_MACOS_RELEASE_NAME",
                format!("mosn-{}", self.envoy_version),
            ),
            ("VERSION", self.istio_version.clone()),
            ("HUB", self.hub.clone()),
            ("TAG", self.tag.clone()),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect()
    }

    /// The image `make docker.proxyv2` produces.
    pub fn image(&self) -> String {
        format!("{}/proxyv2:{}", self.hub, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(tag: &str) -> MakeVars {
        MakeVars {
            envoy_version: "0.1.0-0123456789ab".into(),
            base_url: "http://127.0.0.1:8080".into(),
            istio_version: "1.10.6".into(),
            hub: "docker.io/acme".into(),
            tag: tag.into(),
        }
    }

    #[test]
    fn blocklist_matches_anywhere_case_sensitively() {
        assert_eq!(blocked_by("TAG", "1.0-GOLD"), Some("GO"));
        assert_eq!(blocked_by("URL", "http://h/SUCCESS"), Some("CC"));
        assert_eq!(blocked_by("_X", "1"), Some("^_"));
        assert_eq!(blocked_by("TAG", "gold"), None);
        assert_eq!(blocked_by("HUB", "my_user"), None);
        assert_eq!(blocked_by("HUB", "MY_USER"), Some("USER"));
    }

    #[test]
    fn our_own_names_pass_and_bad_values_are_named() {
        check(&vars("1.10.6-mosn").pairs()).unwrap();
        let e = check(&vars("1.10.6-GOLD").pairs()).unwrap_err().to_string();
        assert!(e.contains("TAG=1.10.6-GOLD  (contains `GO`)"), "{e}");
        assert!(e.contains("\n\nhelp: "), "{e}");
        assert_eq!(vars("t").image(), "docker.io/acme/proxyv2:t");
        let p = vars("t").pairs();
        assert_eq!(p[0], ("SIDECAR".into(), "mosn".into()));
        assert_eq!(
            p[2].1, "http://127.0.0.1:8080/mosn.tar.gz",
            "ISTIO_ENVOY_RELEASE_URL"
        );
        assert_eq!(p[5].1, "mosn-0.1.0-0123456789ab");
    }
}
