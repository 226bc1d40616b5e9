//! Registry credentials and the `WWW-Authenticate` dance: anonymous, Basic, and Bearer
//! tokens from the challenge's realm. Credentials come from docker's `config.json`
//! (`credHelpers`, `credsStore`, `auths`) through the `docker_credential` crate.
//! Secrets are never formatted into logs or errors.

use std::fmt;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde_json::Value;

/// Docker Hub's key in `config.json`.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// What to authenticate with.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// No credentials.
    Anonymous,
    /// User name and password (or a personal access token).
    Basic(String, String),
    /// An OAuth2 refresh token (`identitytoken` in config.json).
    IdentityToken(String),
}

/// Credentials plus a description of where they came from, for error messages.
#[derive(Clone)]
pub struct Credentials {
    /// The secret itself.
    pub secret: Secret,
    /// e.g. "credentials for 127.0.0.1:5000 from /root/.docker/config.json".
    pub source: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.secret {
            Secret::Anonymous => "anonymous",
            Secret::Basic(..) => "basic",
            Secret::IdentityToken(_) => "identity-token",
        };
        write!(f, "Credentials({kind}, {})", self.source)
    }
}

/// The docker config file that `docker_credential` reads.
fn config_path() -> String {
    std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".docker")))
        .map(|d| d.join("config.json").display().to_string())
        .unwrap_or_else(|| "~/.docker/config.json".to_string())
}

/// Look up credentials for a registry host (`registry` as written in the reference).
pub fn lookup(registry: &str) -> Credentials {
    let key = if registry == "docker.io" || registry == super::super::reference::DOCKER_HUB_API {
        DOCKER_HUB_KEY
    } else {
        registry
    };
    let path = config_path();
    use docker_credential::{CredentialRetrievalError as E, DockerCredential as C};
    match docker_credential::get_credential(key) {
        Ok(C::UsernamePassword(u, p)) => Credentials {
            secret: Secret::Basic(u, p),
            source: format!("credentials for {key} from {path}"),
        },
        Ok(C::IdentityToken(t)) => Credentials {
            secret: Secret::IdentityToken(t),
            source: format!("the identity token for {key} from {path}"),
        },
        Err(E::HelperFailure { helper, .. }) => {
            // The helper's output may hold secrets; name the helper only.
            tracing::warn!("credential helper `docker-credential-{helper}` failed for {key}; trying anonymously");
            Credentials {
                secret: Secret::Anonymous,
                source: format!("no credentials (credential helper `docker-credential-{helper}` failed for {key})"),
            }
        }
        Err(e) => Credentials {
            secret: Secret::Anonymous,
            source: match configured_helper(&path, key) {
                Some(h) => format!(
                    "no credentials (credential helper `docker-credential-{h}` for {key}, named in {path}: {e})"
                ),
                None => format!("no credentials (none for {key} in {path}: {e})"),
            },
        },
    }
}

/// The helper config.json names for `key` (`credHelpers`, else `credsStore`), for messages.
fn configured_helper(path: &str, key: &str) -> Option<String> {
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    cfg.get("credHelpers")
        .and_then(|h| h.get(key))
        .or_else(|| cfg.get("credsStore"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `basic` or `bearer`, lower-cased.
    pub scheme: String,
    /// `realm`, `service`, `scope`, ... (keys lower-cased).
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// Parse `Bearer realm="...",service="...",scope="a,b"` (quoted values may hold commas).
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        let mut params = Vec::new();
        let mut chars = rest.chars().peekable();
        loop {
            while matches!(chars.peek(), Some(c) if *c == ',' || c.is_whitespace()) {
                chars.next();
            }
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            if key.is_empty() {
                break;
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next()),
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(c) = chars.peek() {
                    if *c == ',' {
                        break;
                    }
                    value.push(*c);
                    chars.next();
                }
            }
            params.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        Some(Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        })
    }

    /// A parameter by (lower-case) name.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// `Authorization: Basic ...` for a user and password.
pub fn basic_header(user: &str, pass: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!("Basic {b64}")
}

/// Get a bearer token from the challenge's realm for `scopes` (push scope first: some
/// registries only look at the first one).
pub async fn fetch_token(
    http: &reqwest::Client,
    challenge: &Challenge,
    creds: &Credentials,
    scopes: &[String],
) -> Result<String> {
    let realm = challenge
        .param("realm")
        .context("the registry's bearer challenge names no realm")?;
    let mut url = reqwest::Url::parse(realm)
        .with_context(|| format!("the registry's token realm `{realm}` is not a URL"))?;
    let service = challenge.param("service").unwrap_or_default().to_string();
    let resp = match &creds.secret {
        Secret::IdentityToken(refresh) => {
            // OAuth2 refresh-token grant, as docker does with an identity token.
            let mut form = vec![
                ("grant_type", "refresh_token".to_string()),
                ("service", service.clone()),
                ("client_id", "mosnctl".to_string()),
                ("refresh_token", refresh.clone()),
            ];
            for s in scopes {
                form.push(("scope", s.clone()));
            }
            let body = form
                .iter()
                .map(|(k, v)| format!("{k}={}", urlencode(v)))
                .collect::<Vec<_>>()
                .join("&");
            http.post(url)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
        }
        secret => {
            {
                let mut q = url.query_pairs_mut();
                if !service.is_empty() {
                    q.append_pair("service", &service);
                }
                for s in scopes {
                    q.append_pair("scope", s);
                }
            }
            let mut req = http.get(url);
            if let Secret::Basic(u, p) = secret {
                req = req.header("Authorization", basic_header(u, p));
            }
            req.send().await
        }
    }
    .with_context(|| format!("cannot reach the token server at {realm}"))?;
    let status = resp.status();
    if !status.is_success() {
        bail!(
            "the token server at {realm} refused {} ({status})",
            creds.source
        );
    }
    let v: Value = resp
        .json_value()
        .await
        .with_context(|| format!("the token server at {realm} sent no JSON"))?;
    v.get("token")
        .or_else(|| v.get("access_token"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .with_context(|| format!("the token server at {realm} sent no token"))
}

/// Form encoding: everything but the unreserved characters of RFC 3986.
fn urlencode(s: &str) -> String {
    const FORM: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, FORM).to_string()
}

/// `json()` without reqwest's `json` feature.
trait JsonValue {
    async fn json_value(self) -> Result<Value>;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Result<Value> {
        let bytes = self.bytes().await?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge_with_commas() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://auth.example/token"));
        assert_eq!(c.param("scope"), Some("repository:a/b:pull,push"));
        assert_eq!(c.param("service"), Some("registry.example"));
    }

    #[test]
    fn parses_basic_challenge() {
        let c = Challenge::parse(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.param("realm"), Some("Registry Realm"));
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Credentials {
            secret: Secret::Basic("u".into(), "hunter2".into()),
            source: "test".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
