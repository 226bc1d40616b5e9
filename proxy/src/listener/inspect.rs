//! Listener filters that look at a connection's first bytes without consuming them:
//! `envoy.filters.listener.tls_inspector` (TLS or not, SNI, ALPN) and
//! `envoy.filters.listener.http_inspector` (HTTP/1.0, HTTP/1.1 or h2c), which Istio's
//! `virtualInbound` and sniffed outbound ports rely on to pick filter chains.
//!
//! The bytes are read with `MSG_PEEK`, so the chosen filter chain still sees them. The TLS
//! ClientHello is parsed by rustls' `Acceptor` (a full, maintained parser) and never answered.

use std::time::Duration;
use tokio::net::TcpStream;

/// What the listener filters found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// `tls` or `raw_buffer`.
    pub transport: &'static str,
    /// SNI of a TLS client.
    pub sni: Option<String>,
    /// ALPN of a TLS client, or the HTTP inspector's protocol.
    pub alpn: Vec<String>,
}

impl Default for Detected {
    fn default() -> Self {
        Detected {
            transport: "raw_buffer",
            sni: None,
            alpn: Vec::new(),
        }
    }
}

/// Which inspectors run, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inspectors {
    /// tls_inspector configured.
    pub tls: bool,
    /// http_inspector configured.
    pub http: bool,
    /// `listener_filters_timeout` (Envoy's default 15 s; `None` = wait forever).
    pub timeout: Option<Duration>,
    /// `continue_on_listener_filters_timeout`: on timeout go on with what is known instead of
    /// closing. Istio sets it so that server-first protocols (MySQL) still work.
    pub continue_on_timeout: bool,
}

/// The largest prefix we look at: a ClientHello with many extensions fits; Envoy's
/// tls_inspector uses 64 KiB as well.
const MAX_PEEK: usize = 64 * 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An inspector's verdict on the bytes seen so far.
#[derive(Debug, PartialEq, Eq)]
enum Verdict<T> {
    Done(T),
    NeedMore,
}

/// Run the configured inspectors. `Err` means the connection should be closed (timeout
/// without `continue_on_timeout`, or the peer closed first).
pub async fn inspect(stream: &TcpStream, cfg: Inspectors) -> Result<Detected, &'static str> {
    if !cfg.tls && !cfg.http {
        return Ok(Detected::default());
    }
    let work = async {
        let mut buf = vec![0u8; 4096];
        let mut backoff = Duration::from_millis(1);
        loop {
            let n = stream.peek(&mut buf).await.map_err(|_| "peek failed")?;
            if n == 0 {
                return Err("peer closed before sending data");
            }
            let full = n == buf.len() && buf.len() >= MAX_PEEK;
            if let Some(d) = classify(&buf[..n], cfg, full) {
                return Ok(d);
            }
            if n == buf.len() {
                buf.resize((buf.len() * 2).min(MAX_PEEK), 0);
            }
            // The socket stays readable while unread data sits in it, so wait a little
            // before peeking again instead of spinning.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(20));
        }
    };
    match cfg.timeout {
        Some(t) => match tokio::time::timeout(t, work).await {
            Ok(r) => r,
            Err(_) if cfg.continue_on_timeout => Ok(Detected::default()),
            Err(_) => Err("listener filters timed out"),
        },
        None => work.await,
    }
}

/// What the inspectors make of the first bytes of a connection; `None` = they need more (unless
/// `full`: no more will be looked at). Pure, so it can be fuzzed.
pub fn classify(data: &[u8], cfg: Inspectors, full: bool) -> Option<Detected> {
    let mut out = Detected::default();
    if cfg.tls {
        match tls_client_hello(data) {
            Verdict::Done(Some((sni, alpn))) => {
                out.transport = "tls";
                out.sni = sni;
                out.alpn = alpn;
                // http_inspector leaves TLS connections alone.
                return Some(out);
            }
            Verdict::Done(None) => {}
            Verdict::NeedMore if full => {}
            Verdict::NeedMore => return None,
        }
    }
    if cfg.http {
        match http_protocol(data) {
            Verdict::Done(p) => out.alpn = p.into_iter().map(str::to_string).collect(),
            Verdict::NeedMore if full => {}
            Verdict::NeedMore => return None,
        }
    }
    Some(out)
}

/// `Done(Some((sni, alpn)))` for a complete ClientHello, `Done(None)` when this is not TLS.
type Hello = Option<(Option<String>, Vec<String>)>;

fn tls_client_hello(data: &[u8]) -> Verdict<Hello> {
    // A TLS handshake record: type 22, version 3.x.
    if data.first().is_some_and(|b| *b != 0x16) || data.get(1).is_some_and(|b| *b != 3) {
        return Verdict::Done(None);
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rd = data;
    while !rd.is_empty() {
        match acceptor.read_tls(&mut rd) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            let sni = hello.server_name().map(str::to_string);
            let alpn = hello
                .alpn()
                .map(|it| {
                    it.map(|p| String::from_utf8_lossy(p).into_owned())
                        .collect()
                })
                .unwrap_or_default();
            Verdict::Done(Some((sni, alpn)))
        }
        Ok(None) => Verdict::NeedMore,
        Err(_) => Verdict::Done(None),
    }
}

/// Envoy's http_inspector: the HTTP/2 preface gives `h2c`, a valid HTTP/1 request line
/// `http/1.0` or `http/1.1`; anything else no protocol.
fn http_protocol(data: &[u8]) -> Verdict<Option<&'static str>> {
    let n = data.len().min(H2_PREFACE.len());
    if data[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Verdict::Done(Some("h2c"))
        } else {
            Verdict::NeedMore
        };
    }
    let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
        // Still a plausible request line (printable ASCII, perhaps the CR of its CRLF): wait
        // for its end.
        let line = data.strip_suffix(b"\r").unwrap_or(data);
        let plausible = line.iter().all(|b| b.is_ascii_graphic() || *b == b' ');
        return if plausible {
            Verdict::NeedMore
        } else {
            Verdict::Done(None)
        };
    };
    let line = &data[..end];
    let mut parts = line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Verdict::Done(None);
    };
    let token = |s: &[u8]| {
        !s.is_empty()
            && s.iter()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
    };
    // A request target is printable ASCII without spaces (RFC 9112); anything else is not HTTP.
    if !token(method) || target.is_empty() || !target.iter().all(u8::is_ascii_graphic) {
        return Verdict::Done(None);
    }
    Verdict::Done(match version {
        b"HTTP/1.1" => Some("http/1.1"),
        b"HTTP/1.0" => Some("http/1.0"),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_inspector() {
        assert_eq!(
            http_protocol(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"),
            Verdict::Done(Some("http/1.1"))
        );
        assert_eq!(
            http_protocol(b"POST / HTTP/1.0\r\n"),
            Verdict::Done(Some("http/1.0"))
        );
        assert_eq!(http_protocol(b"GET /a HT"), Verdict::NeedMore);
        assert_eq!(http_protocol(b"GET /a HTTP/1.1\r"), Verdict::NeedMore);
        assert_eq!(http_protocol(b"PRI * HTTP/2"), Verdict::NeedMore);
        assert_eq!(http_protocol(H2_PREFACE), Verdict::Done(Some("h2c")));
        assert_eq!(http_protocol(b"\x00\x01binary"), Verdict::Done(None));
        assert_eq!(http_protocol(b"SSH-2.0-OpenSSH\r\n"), Verdict::Done(None));
        assert_eq!(http_protocol(b"GET / HTTP/3.0\r\n"), Verdict::Done(None));
        // Found by the listener_inspectors fuzz target: a target with NULs is not HTTP, also
        // once the line is complete.
        assert_eq!(
            http_protocol(b"PRI \0\0* HTTP/1.0\r\n"),
            Verdict::Done(None)
        );
    }

    #[test]
    fn tls_inspector_rejects_plaintext() {
        assert_eq!(tls_client_hello(b"GET / HTTP/1.1\r\n"), Verdict::Done(None));
        assert_eq!(tls_client_hello(&[0x16, 0x03, 0x01]), Verdict::NeedMore);
    }
}
