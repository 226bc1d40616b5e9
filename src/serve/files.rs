//! Serving one file: path confinement, conditional requests (ETag), byte ranges through
//! tower-http's `ServeFile`, and the access log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State as AxState};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;

/// Shared server state.
pub struct State {
    /// Canonical root directory; nothing outside it is ever served.
    pub root: PathBuf,
    /// sha256 per file, keyed by name, size and mtime, so the index hashes each file once.
    pub sums: std::sync::Mutex<std::collections::HashMap<PathBuf, (u64, SystemTime, String)>>,
}

impl State {
    /// State for a canonical root.
    pub fn new(root: PathBuf) -> Self {
        State {
            root,
            sums: Default::default(),
        }
    }
}

/// Why a path was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `..`, `.`, backslashes or NUL in a segment: a traversal attempt.
    Forbidden,
    /// Not there, hidden (temporary files start with a dot), or not a regular file.
    NotFound,
}

/// Map a request path to a regular file under `root`, or refuse. The path is percent-decoded
/// once, checked segment by segment, then resolved with symlinks and required to stay
/// under the root.
pub fn confine(root: &Path, uri_path: &str) -> Result<PathBuf, Refusal> {
    let decoded = percent_encoding::percent_decode_str(uri_path)
        .decode_utf8()
        .map_err(|_| Refusal::NotFound)?;
    let mut rel = PathBuf::new();
    for seg in decoded.split('/').filter(|s| !s.is_empty()) {
        if seg == ".." || seg == "." || seg.contains('\\') || seg.contains('\0') {
            return Err(Refusal::Forbidden);
        }
        if seg.starts_with('.') {
            return Err(Refusal::NotFound);
        }
        rel.push(seg);
    }
    let real = std::fs::canonicalize(root.join(&rel)).map_err(|_| Refusal::NotFound)?;
    if !real.starts_with(root) {
        return Err(Refusal::Forbidden);
    }
    if !real.is_file() {
        return Err(Refusal::NotFound);
    }
    Ok(real)
}

/// A strong validator from size and mtime, as nginx builds it.
pub fn etag(meta: &std::fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default();
    format!("\"{:x}-{:x}\"", mtime.as_nanos(), meta.len())
}

fn etag_matches(list: &str, tag: &str) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == tag)
}

/// The fallback handler: every path but `/`.
pub async fn serve_file(AxState(state): AxState<Arc<State>>, mut req: Request) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
            "method not allowed\n",
        )
            .into_response();
    }
    let root = state.root.clone();
    let path = req.uri().path().to_string();
    let found = tokio::task::spawn_blocking(move || {
        let p = confine(&root, &path)?;
        let meta = std::fs::metadata(&p).map_err(|_| Refusal::NotFound)?;
        Ok::<_, Refusal>((p, meta))
    })
    .await
    .unwrap_or(Err(Refusal::NotFound));
    let (file, meta) = match found {
        Ok(x) => x,
        Err(Refusal::Forbidden) => return (StatusCode::FORBIDDEN, "forbidden\n").into_response(),
        Err(Refusal::NotFound) => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
    };
    let tag = etag(&meta);
    let headers = req.headers();
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        if etag_matches(inm, &tag) {
            return (StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response();
        }
    }
    // If-Range: a range is only honoured for the representation the client already has.
    if let Some(ir) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        let current = if ir.starts_with('"') || ir.starts_with("W/") {
            ir == tag
        } else {
            let lm = meta.modified().ok().map(httpdate::fmt_http_date);
            lm.as_deref() == Some(ir)
        };
        if !current {
            req.headers_mut().remove(header::RANGE);
        }
    }
    let mime: mime::Mime = content_type(&file)
        .parse()
        .expect("static mime types parse");
    let svc = tower_http::services::ServeFile::new_with_mime(&file, &mime)
        .with_buf_chunk_size(256 * 1024);
    match svc.oneshot(req).await {
        Ok(res) => {
            let mut res = res.map(Body::new);
            if let Ok(v) = HeaderValue::from_str(&tag) {
                res.headers_mut().insert(header::ETAG, v);
            }
            res
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

fn content_type(p: &Path) -> &'static str {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") || name.ends_with(".gz") {
        "application/gzip"
    } else if name.ends_with(".json") {
        "application/json"
    } else if name == crate::pack::SUMS || name.ends_with(".txt") {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

/// One access-log line per request: client, request line, status, bytes, time.
pub async fn access_log(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "-".into());
    let line = format!("{} {} {:?}", req.method(), req.uri(), req.version());
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let res = next.run(req).await;
    let len = res
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    tracing::info!(
        target: "access",
        "{peer} \"{line}\" {} {len} {:.1}ms{}",
        res.status().as_u16(),
        start.elapsed().as_secs_f64() * 1000.0,
        range.map(|r| format!(" range={r}")).unwrap_or_default()
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confinement() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::write(root.join("a.tar.gz"), b"x").unwrap();
        std::fs::write(root.join(".a.tar.gz.123.tmp"), b"x").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.join("link")).unwrap();
        assert!(confine(&root, "/a.tar.gz").is_ok());
        assert!(confine(&root, "/a%2Etar%2Egz").is_ok());
        assert_eq!(confine(&root, "/../etc/passwd"), Err(Refusal::Forbidden));
        assert_eq!(
            confine(&root, "/%2e%2e/%2e%2e/etc/passwd"),
            Err(Refusal::Forbidden)
        );
        assert_eq!(
            confine(&root, "/..%2f..%2fetc/passwd"),
            Err(Refusal::Forbidden)
        );
        assert_eq!(confine(&root, "/link"), Err(Refusal::Forbidden));
        assert_eq!(confine(&root, "/.a.tar.gz.123.tmp"), Err(Refusal::NotFound));
        assert_eq!(confine(&root, "/missing"), Err(Refusal::NotFound));
        assert_eq!(confine(&root, "/"), Err(Refusal::NotFound));
    }

    #[test]
    fn etag_lists() {
        assert!(etag_matches("\"a\", \"b\"", "\"b\""));
        assert!(etag_matches("*", "\"b\""));
        assert!(etag_matches("W/\"b\"", "\"b\""));
        assert!(!etag_matches("\"c\"", "\"b\""));
    }
}
