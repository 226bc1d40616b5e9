//! The HTTP side: connect (scheme choice, ping, auth), then manifests and blobs.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use reqwest::{Method, StatusCode, Url};

use super::auth::{self, Challenge, Credentials, Secret};

/// Connection options shared by every registry in a run.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Allow plain HTTP and unverified TLS for every registry (loopback is always allowed).
    pub insecure: bool,
    /// Extra CA certificate (PEM) for self-signed registries.
    pub ca_file: Option<PathBuf>,
}

/// A connected registry with its credentials and scopes.
pub struct Registry {
    http: reqwest::Client,
    base: Url,
    /// The registry's name as written in references (`docker.io`, `127.0.0.1:5000`).
    pub name: String,
    creds: Credentials,
    scopes: Vec<String>,
    authorization: Mutex<Option<String>>,
}

/// What a cross-repository mount did.
#[derive(Debug)]
pub enum MountOutcome {
    /// 201: the blob is now in the target repository.
    Mounted,
    /// 202: the registry opened a plain upload session instead.
    Session(Url),
    /// Refused (401/403/404/...): upload the blob instead.
    Refused(StatusCode),
}

/// A request body that advances `pb` as hyper pulls 256 KiB chunks from it.
fn progress_body(
    data: Bytes,
    pb: indicatif::ProgressBar,
    counted: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> reqwest::Body {
    const CHUNK: usize = 256 * 1024;
    let chunks: Vec<Bytes> = (0..data.len())
        .step_by(CHUNK)
        .map(|i| data.slice(i..(i + CHUNK).min(data.len())))
        .collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks.into_iter().map(
        move |c| {
            pb.inc(c.len() as u64);
            counted.fetch_add(c.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, std::io::Error>(c)
        },
    )))
}

/// "Cannot reach" with the cause and a remedy.
fn unreachable(api_host: &str, e: reqwest::Error, allow_http: bool) -> anyhow::Error {
    anyhow!(e).context(format!(
        "cannot reach the registry {api_host}\n\n\
         help: check the address and that the registry is running{}",
        if allow_http {
            ""
        } else {
            "; for a plain-HTTP registry pass --insecure"
        }
    ))
}

/// The `errors` of a distribution error body, as one line.
fn error_text(body: &[u8]) -> String {
    let v: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            return String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_string()
        }
    };
    v.get("errors")
        .and_then(|e| e.as_array())
        .map(|errs| {
            errs.iter()
                .map(|e| {
                    format!(
                        "{}: {}",
                        e.get("code").and_then(|c| c.as_str()).unwrap_or("ERROR"),
                        e.get("message").and_then(|c| c.as_str()).unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

impl Registry {
    /// Connect to `name` (API host `api_host`) and authenticate for `scopes`.
    /// HTTPS first; plain HTTP only for loopback hosts or with `insecure`, as docker does.
    pub async fn connect(
        name: &str,
        api_host: &str,
        scopes: Vec<String>,
        opts: &ClientOptions,
    ) -> Result<Registry> {
        let allow_http = opts.insecure || super::super::reference::is_loopback_host(api_host);
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("mosnctl/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            .danger_accept_invalid_certs(opts.insecure);
        if let Some(ca) = &opts.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
            builder = builder.add_root_certificate(
                reqwest::Certificate::from_pem(&pem)
                    .with_context(|| format!("{} is not a PEM certificate", ca.display()))?,
            );
        }
        let http = builder.build().context("cannot set up the HTTP client")?;
        let creds = auth::lookup(name);
        tracing::debug!(registry = name, ?creds, "connecting");
        let mut https_err: Option<reqwest::Error> = None;
        for scheme in if allow_http {
            &["https", "http"][..]
        } else {
            &["https"][..]
        } {
            let base = Url::parse(&format!("{scheme}://{api_host}/"))
                .with_context(|| format!("`{api_host}` is not a registry host"))?;
            let resp = match http.get(base.join("v2/")?).send().await {
                Ok(resp) => resp,
                Err(e) if https_err.is_none() => {
                    https_err = Some(e);
                    continue;
                }
                Err(e) => return Err(unreachable(api_host, https_err.unwrap_or(e), allow_http)),
            };
            let status = resp.status();
            if !status.is_success() && status != StatusCode::UNAUTHORIZED {
                // Plain HTTP to a TLS port answers 400: the HTTPS error is the real story.
                if let Some(e) = https_err {
                    return Err(anyhow!(e).context(format!(
                        "cannot talk TLS to the registry {api_host}, and plain HTTP answered {status}\n\n\
                         help: for a private CA pass --ca-file CA.pem (or --insecure to skip verification)"
                    )));
                }
                bail!("{api_host} does not look like a registry: GET /v2/ answered {status}");
            }
            let reg = Registry {
                http,
                base,
                name: name.to_string(),
                creds,
                scopes,
                authorization: Mutex::new(None),
            };
            if status == StatusCode::UNAUTHORIZED {
                reg.authenticate(&resp).await?;
            }
            return Ok(reg);
        }
        Err(unreachable(
            api_host,
            https_err.expect("https was tried"),
            allow_http,
        ))
    }

    /// Answer a 401's challenge: remember a Basic header or fetch a bearer token.
    async fn authenticate(&self, resp: &reqwest::Response) -> Result<()> {
        let header = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let challenge = Challenge::parse(header)
            .with_context(|| format!("{} sent an unreadable auth challenge", self.name))?;
        let value = match challenge.scheme.as_str() {
            "basic" => match &self.creds.secret {
                Secret::Basic(u, p) => Some(auth::basic_header(u, p)),
                _ => None,
            },
            "bearer" => Some(format!(
                "Bearer {}",
                auth::fetch_token(&self.http, &challenge, &self.creds, &self.scopes).await?
            )),
            other => bail!("{} asks for unsupported auth scheme `{other}`", self.name),
        };
        *self.authorization.lock().expect("not poisoned") = value;
        Ok(())
    }

    fn url(&self, path: &str) -> Result<Url> {
        Ok(self.base.join(path)?)
    }

    /// Send one request; on 401 re-authenticate once; retry transient failures.
    async fn send(
        &self,
        method: Method,
        url: Url,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<reqwest::Response> {
        self.send_with(method, url, headers, body, None).await
    }

    /// [`Registry::send`], streaming the body in chunks that advance `progress`.
    async fn send_with(
        &self,
        method: Method,
        url: Url,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
        progress: Option<&indicatif::ProgressBar>,
    ) -> Result<reqwest::Response> {
        let counted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut reauthed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.http.request(method.clone(), url.clone());
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some(a) = self.authorization.lock().expect("not poisoned").clone() {
                req = req.header(reqwest::header::AUTHORIZATION, a);
            }
            match (&body, progress) {
                (Some(b), Some(pb)) => {
                    // A retry takes back what the failed attempt counted (bars are shared
                    // by parallel uploads, so no absolute positions).
                    pb.dec(counted.swap(0, std::sync::atomic::Ordering::Relaxed));
                    req = req
                        .header(reqwest::header::CONTENT_LENGTH, b.len())
                        .body(progress_body(b.clone(), pb.clone(), counted.clone()));
                }
                (Some(b), None) => req = req.body(b.clone()),
                (None, _) => {}
            }
            match req.send().await {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !reauthed => {
                    reauthed = true;
                    self.authenticate(&resp).await?;
                }
                Ok(resp)
                    if attempt < 3 && matches!(resp.status().as_u16(), 429 | 502 | 503 | 504) =>
                {
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                Ok(resp) => return Ok(resp),
                Err(e) if attempt < 3 && (e.is_connect() || e.is_timeout()) => {
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                Err(e) => {
                    return Err(
                        anyhow!(e).context(format!("cannot reach the registry {}", self.name))
                    )
                }
            }
        }
    }

    /// Turn a failed response into a clear error (auth problems name the credentials tried).
    async fn fail(&self, what: &str, resp: reqwest::Response) -> anyhow::Error {
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        let detail = error_text(&body);
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => anyhow!(
                "{what}: access denied by {} ({status}{}); tried {}\n\n\
                 help: log in with `docker login {}` or add credentials to config.json",
                self.name,
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(", {detail}")
                },
                self.creds.source,
                self.name
            ),
            _ => anyhow!(
                "{what}: {} answered {status}{}",
                self.name,
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({detail})")
                }
            ),
        }
    }

    /// Fetch a manifest or index: raw bytes and the `Content-Type`.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<(Bytes, Option<String>)> {
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"))?;
        let resp = self
            .send(
                Method::GET,
                url,
                &[("Accept", super::super::MANIFEST_ACCEPT)],
                None,
            )
            .await?;
        let what = format!("cannot fetch {}/{repo}:{reference}", self.name);
        if resp.status() == StatusCode::NOT_FOUND {
            let detail = error_text(&resp.bytes().await.unwrap_or_default());
            bail!(
                "image {}/{repo}:{reference} not found ({})\n\n\
                 help: check the repository and tag; `skopeo list-tags docker://{}/{repo}` lists tags",
                self.name,
                if detail.is_empty() { "404".to_string() } else { detail },
                self.name
            );
        }
        if !resp.status().is_success() {
            return Err(self.fail(&what, resp).await);
        }
        let ct = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = resp.bytes().await.with_context(|| what.clone())?;
        if reference.starts_with("sha256:") && super::super::digest_of(&bytes) != reference {
            bail!("{what}: the manifest does not match its digest");
        }
        Ok((bytes, ct))
    }

    /// Fetch a whole blob and check its digest.
    pub async fn get_blob(&self, repo: &str, digest: &str) -> Result<Bytes> {
        let url = self.url(&format!("v2/{repo}/blobs/{digest}"))?;
        let resp = self.send(Method::GET, url, &[], None).await?;
        let what = format!("cannot fetch blob {digest} from {}/{repo}", self.name);
        if !resp.status().is_success() {
            return Err(self.fail(&what, resp).await);
        }
        let bytes = resp.bytes().await.with_context(|| what.clone())?;
        if super::super::digest_of(&bytes) != digest {
            bail!("{what}: the content does not match its digest");
        }
        Ok(bytes)
    }

    /// Does the repository already hold this blob?
    pub async fn blob_exists(&self, repo: &str, digest: &str) -> Result<bool> {
        let url = self.url(&format!("v2/{repo}/blobs/{digest}"))?;
        let resp = self.send(Method::HEAD, url, &[], None).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self
                .fail(
                    &format!("cannot check blob {digest} in {}/{repo}", self.name),
                    resp,
                )
                .await),
        }
    }

    /// Ask the registry to mount `digest` from `from` into `repo` (same registry).
    pub async fn mount(&self, repo: &str, digest: &str, from: &str) -> Result<MountOutcome> {
        let mut url = self.url(&format!("v2/{repo}/blobs/uploads/"))?;
        url.query_pairs_mut()
            .append_pair("mount", digest)
            .append_pair("from", from);
        let resp = self
            .send(Method::POST, url, &[], Some(Bytes::new()))
            .await?;
        Ok(match resp.status() {
            StatusCode::CREATED => MountOutcome::Mounted,
            StatusCode::ACCEPTED => MountOutcome::Session(self.location(&resp)?),
            s => MountOutcome::Refused(s),
        })
    }

    /// The `Location` of an upload response, resolved and kept on the registry's host (a
    /// redirect elsewhere could leak the token).
    fn location(&self, resp: &reqwest::Response) -> Result<Url> {
        let loc = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .with_context(|| format!("{} started an upload without a Location", self.name))?;
        let url = self
            .base
            .join(loc)
            .with_context(|| format!("{} sent a malformed upload Location", self.name))?;
        if url.host_str() != self.base.host_str()
            || url.port_or_known_default() != self.base.port_or_known_default()
        {
            bail!(
                "{} sent an upload Location on another host; refusing to follow it",
                self.name
            );
        }
        Ok(url)
    }

    /// Upload a blob monolithically (POST, then PUT with `digest`), reusing `session` when a
    /// refused mount already opened one.
    pub async fn upload(
        &self,
        repo: &str,
        digest: &str,
        data: Bytes,
        session: Option<Url>,
        progress: Option<&indicatif::ProgressBar>,
    ) -> Result<()> {
        let what = format!("cannot upload blob {digest} to {}/{repo}", self.name);
        let mut url = match session {
            Some(u) => u,
            None => {
                let resp = self
                    .send(
                        Method::POST,
                        self.url(&format!("v2/{repo}/blobs/uploads/"))?,
                        &[],
                        Some(Bytes::new()),
                    )
                    .await?;
                if resp.status() != StatusCode::ACCEPTED {
                    return Err(self.fail(&what, resp).await);
                }
                self.location(&resp)?
            }
        };
        // Location may already carry a query (`_state`): add to it, never concatenate.
        url.query_pairs_mut().append_pair("digest", digest);
        let resp = self
            .send_with(
                Method::PUT,
                url,
                &[("Content-Type", "application/octet-stream")],
                Some(data),
                progress,
            )
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.fail(&what, resp).await);
        }
        Ok(())
    }

    /// Push a manifest or index under `reference` (tag or digest); returns the registry's digest.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        body: Bytes,
        media_type: &str,
    ) -> Result<String> {
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"))?;
        let ours = super::super::digest_of(&body);
        let resp = self
            .send(
                Method::PUT,
                url,
                &[("Content-Type", media_type)],
                Some(body),
            )
            .await?;
        let what = format!("cannot push the manifest {}/{repo}:{reference}", self.name);
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(self.fail(&what, resp).await);
        }
        if let Some(theirs) = resp
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
        {
            if theirs != ours {
                bail!("{what}: the registry stored {theirs}, but we sent {ours}");
            }
        }
        Ok(ours)
    }
}
