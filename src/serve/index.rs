//! The listing at `/`: every served file with its size and sha256, as HTML for a browser or
//! JSON for `Accept: application/json`.

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;

use super::files::{confine, State};

/// One row of the listing.
#[derive(Debug, Serialize)]
pub struct Entry {
    /// File name (also its URL path).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 of the contents.
    pub sha256: String,
}

/// GET `/`.
pub async fn index(AxState(state): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    let st = state.clone();
    let entries = match tokio::task::spawn_blocking(move || list(&st)).await {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    };
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    if wants_json {
        return axum::Json(serde_json::json!({ "files": entries })).into_response();
    }
    let rows: String = entries
        .iter()
        .map(|e| {
            let n = html_escape(&e.name);
            format!(
                "<tr><td><a href=\"/{n}\">{n}</a></td><td>{}</td><td><code>{}</code></td></tr>\n",
                e.size, e.sha256
            )
        })
        .collect();
    Html(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>mosn artifacts</title></head>\n\
         <body><h1>mosn artifacts</h1>\n<table>\n<tr><th>file</th><th>bytes</th><th>sha256</th></tr>\n\
         {rows}</table></body></html>\n"
    ))
    .into_response()
}

/// The regular files directly under the root that [`confine`] would serve, sorted by name.
pub fn list(state: &State) -> std::io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&state.root)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Ok(path) = confine(&state.root, &format!("/{name}")) else {
            continue;
        };
        let meta = std::fs::metadata(&path)?;
        let mtime = meta.modified()?;
        let cached = state.sums.lock().expect("not poisoned").get(&path).cloned();
        let sha256 = match cached {
            Some((size, t, sum)) if size == meta.len() && t == mtime => sum,
            _ => {
                let sum = crate::fsutil::sha256_file(&path).map_err(std::io::Error::other)?;
                state
                    .sums
                    .lock()
                    .expect("not poisoned")
                    .insert(path, (meta.len(), mtime, sum.clone()));
                sum
            }
        };
        out.push(Entry {
            name,
            size: meta.len(),
            sha256,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
