//! A token server for the registry's `auth.token` (bearer auth), run in the test process.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::{json, Value};

use super::self_signed;

/// A token server for the registry's `auth.token`: checks Basic credentials and returns an
/// RS256 JWT (signed with the `openssl` CLI) whose `x5c` header holds its certificate.
pub struct TokenServer {
    /// `http://127.0.0.1:PORT/token`.
    pub realm: String,
    /// The signing certificate (the registry's `rootcertbundle`).
    pub cert: PathBuf,
    /// Query strings of every token request, in order.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    /// Start it on a loopback port; it accepts only `user:pass`.
    pub fn start(dir: &Path, user: &str, pass: &str) -> TokenServer {
        Self::start_with(dir, user, pass, false)
    }

    /// Like [`TokenServer::start`]; `first_scope_only` grants only the first requested
    /// scope, as some registries' token servers do.
    pub fn start_with(dir: &Path, user: &str, pass: &str, first_scope_only: bool) -> TokenServer {
        let (cert, key) = self_signed(dir, "token");
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .unwrap()
            .stdout;
        let x5c = base64::engine::general_purpose::STANDARD.encode(der);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = (
            expected,
            x5c,
            key,
            requests.clone(),
            user.to_string(),
            first_scope_only,
        );
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let post_state = state.clone();
                let app = axum::Router::new().route(
                    "/token",
                    axum::routing::get(
                        move |q: axum::extract::RawQuery, h: axum::http::HeaderMap| {
                            let state = state.clone();
                            async move { token(state, q.0.unwrap_or_default(), h, false) }
                        },
                    )
                    // OAuth2 refresh-token grant (docker's `identitytoken`): form body.
                    .post(move |h: axum::http::HeaderMap, body: String| {
                        let state = post_state.clone();
                        async move { token(state, body, h, true) }
                    }),
                );
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(l, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        TokenServer {
            realm,
            cert,
            requests,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type TokenState = (
    String,
    String,
    PathBuf,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    String,
    bool,
);

fn token(
    (expected, x5c, key, requests, user, first_scope_only): TokenState,
    query: String,
    headers: axum::http::HeaderMap,
    oauth: bool,
) -> (axum::http::StatusCode, String) {
    requests.lock().unwrap().push(query.clone());
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let authorized = if oauth {
        let decoded: Vec<String> = query
            .split('&')
            .map(|kv| {
                percent_encoding::percent_decode_str(&kv.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        let refresh = format!("refresh_token={}", identity_token(&user));
        decoded.iter().any(|kv| kv == "grant_type=refresh_token") && decoded.contains(&refresh)
    } else {
        auth == expected
    };
    if !authorized {
        return (
            axum::http::StatusCode::UNAUTHORIZED,
            r#"{"details":"bad credentials"}"#.into(),
        );
    }
    let access: Vec<Value> = query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("scope="))
        .map(|s| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (t, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(
                json!({"type": t, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}),
            )
        })
        .take(if first_scope_only { 1 } else { usize::MAX })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = json!({
        "iss": "test-issuer", "sub": user, "aud": "test-registry",
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", access.len()),
        "access": access
    });
    let signing_input = format!("{}.{}", b64(&header), b64(&claims));
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(signing_input.as_bytes())
        .unwrap();
    let sig = child.wait_with_output().unwrap().stdout;
    let jwt = format!(
        "{signing_input}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig)
    );
    (
        axum::http::StatusCode::OK,
        if oauth {
            json!({"access_token": jwt, "expires_in": 300}).to_string()
        } else {
            json!({"token": jwt, "expires_in": 300}).to_string()
        },
    )
}

/// The refresh token (docker's `identitytoken`) this server accepts for `user`.
pub fn identity_token(user: &str) -> String {
    format!("idtoken-{user}")
}
