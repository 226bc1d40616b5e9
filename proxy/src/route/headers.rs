//! Request/response header mutations (`*_headers_to_add` / `*_headers_to_remove`). A value
//! may carry Envoy's substitution formatters (`%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`,
//! `%REQ(x)%`, `%PROTOCOL%`, ...; `%%` is a `%`), rendered per request; what a formatter has
//! no value for renders empty, and an empty value is not added (unless `keep_empty_value`).

use crate::proxy::access_log::format::{Entry, Format};
use envoy_types::pb::envoy::config::core::v3 as core;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::net::SocketAddr;

/// Envoy's name of an HTTP version (`%PROTOCOL%`).
pub fn protocol_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/1.1",
    }
}

/// What a formatted value may refer to.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// The client.
    pub peer: SocketAddr,
    /// The address the connection arrived on (its original destination).
    pub local: SocketAddr,
    /// `HTTP/1.1`, `HTTP/2`, ...
    pub protocol: &'a str,
    /// Whether the headers being changed are the request's (`%REQ(x)%` reads them).
    pub request: bool,
}

/// A value to add: as configured, or rendered per request.
#[derive(Debug, Clone)]
enum Val {
    Lit(HeaderValue),
    Fmt(Format),
}

/// What to do when the header already exists (`HeaderValueOption.append_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Append {
    /// Add another value (or add).
    AppendOrAdd,
    /// Add only if absent.
    AddIfAbsent,
    /// Replace (or add).
    OverwriteOrAdd,
    /// Replace only if present.
    OverwriteIfExists,
}

/// One level's header mutations.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    add: Vec<(HeaderName, Val, Append, bool)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Build from the proto lists.
    pub fn from_proto(add: &[core::HeaderValueOption], remove: &[String]) -> Result<Self, String> {
        let mut ops = HeaderOps::default();
        for o in add {
            let Some(h) = &o.header else { continue };
            let name = HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes())
                .map_err(|_| format!("bad header name {:?}", h.key))?;
            let raw = if h.raw_value.is_empty() {
                h.value.as_bytes()
            } else {
                &h.raw_value
            };
            let value = if raw.contains(&b'%') {
                let text = std::str::from_utf8(raw)
                    .map_err(|_| format!("value of {:?} is not UTF-8", h.key))?;
                Val::Fmt(Format::parse(text))
            } else {
                Val::Lit(
                    HeaderValue::from_bytes(raw)
                        .map_err(|_| format!("bad value for {:?}", h.key))?,
                )
            };
            // The deprecated `append` BoolValue (default true) wins when present.
            let mode = match (&o.append, o.append_action) {
                (Some(b), _) if !b.value => Append::OverwriteOrAdd,
                (Some(_), _) => Append::AppendOrAdd,
                (None, 1) => Append::AddIfAbsent,
                (None, 2) => Append::OverwriteOrAdd,
                (None, 3) => Append::OverwriteIfExists,
                (None, _) => Append::AppendOrAdd,
            };
            ops.add.push((name, value, mode, o.keep_empty_value));
        }
        for r in remove {
            ops.remove.push(
                HeaderName::from_bytes(r.to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("bad header name {r:?}"))?,
            );
        }
        Ok(ops)
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// Apply: removals first, then additions (Envoy's HeaderParser order).
    pub fn apply(&self, headers: &mut HeaderMap, ctx: &Ctx<'_>) {
        for r in &self.remove {
            headers.remove(r);
        }
        for (name, value, mode, keep_empty) in &self.add {
            let rendered;
            let value = match value {
                Val::Lit(v) => v,
                Val::Fmt(f) => {
                    let e = Entry {
                        downstream_remote: Some(ctx.peer),
                        downstream_local: Some(ctx.local),
                        protocol: ctx.protocol,
                        req_headers: ctx.request.then_some(&*headers),
                        start: Some(std::time::SystemTime::now()),
                        ..Default::default()
                    };
                    match HeaderValue::from_str(&f.render_or(&e, "")) {
                        Ok(v) => {
                            rendered = v;
                            &rendered
                        }
                        Err(_) => continue,
                    }
                }
            };
            if value.is_empty() && !keep_empty {
                continue;
            }
            match mode {
                Append::AppendOrAdd => {
                    headers.append(name.clone(), value.clone());
                }
                Append::AddIfAbsent => {
                    if !headers.contains_key(name) {
                        headers.insert(name.clone(), value.clone());
                    }
                }
                Append::OverwriteOrAdd => {
                    headers.insert(name.clone(), value.clone());
                }
                Append::OverwriteIfExists => {
                    if headers.contains_key(name) {
                        headers.insert(name.clone(), value.clone());
                    }
                }
            }
        }
    }
}

/// Request and response mutations of one level (weighted cluster, route, vhost, route config).
#[derive(Debug, Clone, Default)]
pub struct HeaderPolicy {
    /// Applied to the upstream request.
    pub request: HeaderOps,
    /// Applied to the downstream response.
    pub response: HeaderOps,
}

impl HeaderPolicy {
    /// Build from the four proto lists every level has.
    pub fn from_proto(
        req_add: &[core::HeaderValueOption],
        req_remove: &[String],
        resp_add: &[core::HeaderValueOption],
        resp_remove: &[String],
    ) -> Result<Self, String> {
        Ok(HeaderPolicy {
            request: HeaderOps::from_proto(req_add, req_remove)?,
            response: HeaderOps::from_proto(resp_add, resp_remove)?,
        })
    }
}
