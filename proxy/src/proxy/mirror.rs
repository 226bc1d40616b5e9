//! Request mirroring (`request_mirror_policies`; Istio's VirtualService `mirror` and
//! `mirrorPercentage`), as Envoy's shadow writer does it: a sampled request is copied to
//! another cluster, fire and forget. The copy carries the request's upstream headers with
//! `-shadow` added to its host, and its body as it streams; its response is read and
//! dropped. Neither its failure nor its pace touches the original request: a copy that falls
//! behind the original's body by more than [`SHADOW_BUFFER_LIMIT`] is abandoned.

use super::attempt::{build_request, dispatch};
use super::body::BoxBody;
use super::fault::Percent;
use super::router::Downstream;
use crate::cluster::connector::BoxError;
use crate::config::Snapshot;
use bytes::Bytes;
use envoy_types::pb::envoy::config::route::v3::route_action::RequestMirrorPolicy;
use http::{HeaderName, HeaderValue};
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// How far a shadow's body may lag behind the original's before it is given up (Envoy's
/// default buffer limit).
pub const SHADOW_BUFFER_LIMIT: usize = 1024 * 1024;

/// Where a policy sends its copies.
#[derive(Debug, Clone)]
pub enum MirrorTarget {
    /// `cluster`.
    Name(String),
    /// `cluster_header`: the cluster named by this request header.
    Header(HeaderName),
}

/// One compiled `RequestMirrorPolicy`.
#[derive(Debug, Clone)]
pub struct MirrorPolicy {
    /// The shadow cluster.
    pub target: MirrorTarget,
    /// `runtime_fraction.default_value` (absent: every request).
    pub percent: Percent,
    /// Append `-shadow` to the host (unless `disable_shadow_host_suffix_append`).
    pub host_suffix: bool,
}

impl MirrorPolicy {
    /// Compile a route's, virtual host's or route configuration's policies.
    pub fn from_protos(v: &[RequestMirrorPolicy]) -> Result<Vec<Self>, String> {
        v.iter()
            .enumerate()
            .map(|(i, p)| {
                Self::from_proto(p).map_err(|e| format!("request_mirror_policies[{i}]: {e}"))
            })
            .collect()
    }

    fn from_proto(p: &RequestMirrorPolicy) -> Result<Self, String> {
        let target = match (p.cluster.as_str(), p.cluster_header.as_str()) {
            ("", "") => return Err("give cluster or cluster_header".into()),
            (c, "") => MirrorTarget::Name(c.to_string()),
            ("", h) => MirrorTarget::Header(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("cluster_header {h:?} is not a header name"))?,
            ),
            _ => return Err("cluster and cluster_header are exclusive: give one".into()),
        };
        Ok(MirrorPolicy {
            target,
            percent: Percent::from_proto(
                p.runtime_fraction
                    .as_ref()
                    .and_then(|r| r.default_value.as_ref()),
            ),
            host_suffix: !p.disable_shadow_host_suffix_append,
        })
    }
}

/// Envoy's shadow authority: `-shadow` after the host name, before any port (an IPv6
/// literal's brackets included: `[::1]-shadow:80`).
pub fn shadow_host(host: &str) -> String {
    // The port's colon is the last one, after any `]`.
    let port_at = host
        .rfind(':')
        .filter(|&i| host.rfind(']').is_none_or(|b| b < i));
    match port_at {
        Some(i) => format!("{}-shadow{}", &host[..i], &host[i..]),
        None => format!("{host}-shadow"),
    }
}

/// Send a copy of the request in `parts` (its upstream headers as the router will send
/// them) to the cluster of each sampled policy, with `body` teed to it. `timeout` is the
/// request's own; a shadow gets the same.
pub(super) fn launch(
    policies: &[MirrorPolicy],
    snap: &Snapshot,
    parts: &http::request::Parts,
    body: &mut super::body::DownstreamBody,
    down: Downstream<'_>,
    timeout: Option<Duration>,
) {
    for p in policies.iter().filter(|p| p.percent.sample()) {
        let name = match &p.target {
            MirrorTarget::Name(n) => Some(n.as_str()),
            MirrorTarget::Header(h) => parts.headers.get(h).and_then(|v| v.to_str().ok()),
        };
        let Some(cluster) = name.and_then(|n| snap.clusters.get(n)).cloned() else {
            tracing::debug!(cluster = ?name, "mirror cluster not found; no shadow sent");
            continue;
        };
        if !cluster.admits_request() {
            continue;
        }
        let Some(host) =
            super::router::pick_host(&cluster, &parts.headers, down, &Default::default())
        else {
            cluster.stats.cx_none_healthy.inc();
            continue;
        };
        let mut headers = parts.headers.clone();
        if p.host_suffix {
            let authority = headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .or_else(|| parts.uri.authority().map(|a| a.to_string()));
            if let Some(v) = authority.and_then(|a| HeaderValue::from_str(&shadow_host(&a)).ok()) {
                headers.insert(http::header::HOST, v);
            }
        }
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let req = build_request(&cluster, parts, headers, path, &host, body.tee(), None);
        let Ok(tls) = super::attempt::tls_dial(
            &cluster,
            &host,
            down,
            cluster.is_h2(req.version()),
            Some(&req),
        ) else {
            continue;
        };
        tokio::spawn(async move {
            let mut req = Some(req);
            let stats = &cluster.stats;
            let _active = cluster.start_request(host.clone());
            // The whole exchange, body included, within the request's timeout.
            let exchange = async {
                match dispatch(&cluster, &host, tls.as_deref(), &mut req, &mut None).await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let outlier = cluster.outlier_status(status, resp.headers());
                        cluster.record_result(&host, Some(outlier));
                        stats.response(status);
                        // Read to the end, so that the connection goes back to the pool.
                        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                    }
                    Err(_) => cluster.record_result(&host, None),
                }
            };
            match timeout {
                Some(t) => {
                    if tokio::time::timeout(t, exchange).await.is_err() {
                        stats.rq_timeout.inc();
                    }
                }
                None => exchange.await,
            }
        });
    }
}

/// The original request body's end of a shadow's body.
pub(super) struct Tee {
    tx: mpsc::UnboundedSender<Result<Bytes, ()>>,
    lag: Arc<AtomicUsize>,
    done: bool,
}

impl Tee {
    /// A tee and the shadow's body it feeds.
    pub(super) fn new() -> (Tee, BoxBody) {
        let (tx, rx) = mpsc::unbounded_channel();
        let lag = Arc::new(AtomicUsize::new(0));
        let tee = Tee {
            tx,
            lag: lag.clone(),
            done: false,
        };
        (tee, super::body::boxed(ShadowBody { rx, lag }))
    }

    /// Pass a data frame on; `false` once the shadow is given up (it lags too far behind, or
    /// is gone).
    pub(super) fn data(&mut self, b: &Bytes) -> bool {
        let lag = self.lag.fetch_add(b.len(), Ordering::Relaxed) + b.len();
        if lag > SHADOW_BUFFER_LIMIT {
            return false;
        }
        self.tx.send(Ok(b.clone())).is_ok()
    }

    /// The original body ended: so does the shadow's.
    pub(super) fn end(mut self) {
        self.done = true;
    }
}

impl Drop for Tee {
    /// A tee dropped before the original body's end cuts the shadow's body off, so that the
    /// shadow request is reset instead of sent short.
    fn drop(&mut self) {
        if !self.done {
            let _ = self.tx.send(Err(()));
        }
    }
}

/// A shadow request's body: what the original's body passed through its [`Tee`].
struct ShadowBody {
    rx: mpsc::UnboundedReceiver<Result<Bytes, ()>>,
    lag: Arc<AtomicUsize>,
}

impl Body for ShadowBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => {
                self.lag.fetch_sub(b.len(), Ordering::Relaxed);
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(Some(Err(()))) => {
                Poll::Ready(Some(Err("the original request's body was cut off".into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shadow_suffix_goes_before_the_port() {
        assert_eq!(shadow_host("httpbin:8000"), "httpbin-shadow:8000");
        assert_eq!(shadow_host("httpbin"), "httpbin-shadow");
        assert_eq!(shadow_host("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(shadow_host("[::1]"), "[::1]-shadow");
    }

    #[tokio::test]
    async fn a_shadow_body_ends_with_the_original_or_is_cut_off() {
        use http_body_util::BodyExt;
        let (mut tee, body) = Tee::new();
        assert!(tee.data(&Bytes::from_static(b"ab")));
        assert!(tee.data(&Bytes::from_static(b"cd")));
        tee.end();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcd");

        let (mut tee, body) = Tee::new();
        assert!(tee.data(&Bytes::from_static(b"ab")));
        drop(tee);
        assert!(
            body.collect().await.is_err(),
            "a cut body must not look whole"
        );

        // Lagging more than the limit behind gives the shadow up.
        let (mut tee, _body) = Tee::new();
        let big = Bytes::from(vec![0u8; SHADOW_BUFFER_LIMIT / 2 + 1]);
        assert!(tee.data(&big));
        assert!(!tee.data(&big));
    }

    #[test]
    fn policies_name_one_cluster_and_a_fraction() {
        let p = |v: serde_json::Value| -> Result<Vec<MirrorPolicy>, String> {
            let v: RequestMirrorPolicy = crate::config::decode::from_json(&v, true)?;
            MirrorPolicy::from_protos(&[v])
        };
        let got = p(serde_json::json!({"cluster": "v2",
            "runtime_fraction": {"default_value": {"numerator": 500000, "denominator": "MILLION"}}}))
        .unwrap();
        assert!(matches!(&got[0].target, MirrorTarget::Name(n) if n == "v2"));
        assert_eq!(got[0].percent, Percent::from_millionths(500_000));
        assert!(got[0].host_suffix);
        let got = p(serde_json::json!({"cluster_header": "x-mirror",
            "disable_shadow_host_suffix_append": true}))
        .unwrap();
        assert!(matches!(&got[0].target, MirrorTarget::Header(h) if h == "x-mirror"));
        assert_eq!(got[0].percent, Percent::from_millionths(1_000_000));
        assert!(!got[0].host_suffix);
        let e = p(serde_json::json!({"cluster": "a", "cluster_header": "b"})).unwrap_err();
        assert!(
            e.contains("request_mirror_policies[0]") && e.contains("exclusive"),
            "{e}"
        );
        assert!(p(serde_json::json!({}))
            .unwrap_err()
            .contains("give cluster"));
    }
}
