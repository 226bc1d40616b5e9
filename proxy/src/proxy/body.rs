//! Body plumbing: replayable request bodies for retries, response bodies that hold per-request
//! accounting until the stream ends, and Envoy-style local replies.

use crate::cluster::connector::BoxError;
use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The body type used in both directions.
pub type BoxBody = UnsyncBoxBody<Bytes, BoxError>;

/// Box any body with a convertible error.
pub fn boxed<B>(b: B) -> BoxBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}

/// An empty or fixed body.
pub fn full(b: impl Into<Bytes>) -> BoxBody {
    boxed(Full::new(b.into()))
}

/// The downstream request body; counts its bytes for `%BYTES_RECEIVED%` when an access log
/// asked for the count.
pub struct DownstreamBody {
    inner: Option<Incoming>,
    received: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// Mirrored requests' bodies, fed as this one is read.
    tees: Vec<super::mirror::Tee>,
}

impl DownstreamBody {
    /// `inner` (`None`: no body), adding the length of each data frame to `received` when
    /// given.
    pub fn new(
        inner: Option<Incoming>,
        received: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    ) -> Self {
        DownstreamBody {
            inner,
            received,
            tees: Vec::new(),
        }
    }

    /// Add the length of each data frame to `received` from now on (the access log's count).
    pub fn count_into(&mut self, received: std::sync::Arc<std::sync::atomic::AtomicU64>) {
        self.received = Some(received);
    }

    /// A body for a mirrored copy of this request: what this one yields from now on.
    pub(super) fn tee(&mut self) -> BoxBody {
        if self.is_end_stream() {
            return full("");
        }
        let (tee, body) = super::mirror::Tee::new();
        self.tees.push(tee);
        body
    }

    /// Pass what `inner` yielded on to the tees.
    fn feed_tees(&mut self, r: &Poll<Option<Result<Frame<Bytes>, hyper::Error>>>) {
        match r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.tees.retain_mut(|t| t.data(d));
                }
                // A reader may stop at the end of the stream without polling past it.
                if self.inner.as_ref().is_none_or(Body::is_end_stream) {
                    self.tees.drain(..).for_each(super::mirror::Tee::end);
                }
            }
            Poll::Ready(None) => self.tees.drain(..).for_each(super::mirror::Tee::end),
            // Dropped without `end`: the shadows' bodies are cut off.
            Poll::Ready(Some(Err(_))) => self.tees.clear(),
            Poll::Pending => {}
        }
    }
}

impl Body for DownstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let r = Pin::new(inner).poll_frame(cx);
        if let (Some(n), Poll::Ready(Some(Ok(f)))) = (&self.received, &r) {
            if let Some(d) = f.data_ref() {
                n.fetch_add(d.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if !self.tees.is_empty() {
            self.feed_tees(&r);
        }
        r
    }
    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or(SizeHint::with_exact(0), Body::size_hint)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }
}

/// A body that keeps `guard` alive until the stream ends or is dropped.
///
/// Generic over the inner body so the router can wrap hyper's `Incoming` directly (one box
/// for the whole response body instead of one per layer).
pub struct Guarded<B, G> {
    inner: B,
    _guard: G,
}

impl<B, G> Guarded<B, G>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
    G: Send + Unpin + 'static,
{
    /// Wrap `inner` without boxing.
    pub fn new(inner: B, guard: G) -> Self {
        Guarded {
            inner,
            _guard: guard,
        }
    }

    /// Wrap `inner` and box the result.
    pub fn wrap(inner: B, guard: G) -> BoxBody {
        Self::new(inner, guard).boxed_unsync()
    }
}

impl<B, G: Unpin> Body for Guarded<B, G>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

/// A response body that fails if no frame arrives for `idle` (route `idle_timeout` /
/// HCM `stream_idle_timeout`); the failure resets the downstream stream.
///
/// The timer is created only when the inner body first has to wait (a response whose body
/// is already buffered never touches the timer wheel) and re-armed lazily: frames only
/// record the time, and the timer, when it fires early, moves itself to the real deadline
/// (no timer-wheel update per frame).
pub struct IdleBody<B> {
    inner: B,
    idle: std::time::Duration,
    /// When the last frame came, once the body has had to wait (see poll_frame).
    last: Option<tokio::time::Instant>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> IdleBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Send + Unpin + 'static,
{
    /// Wrap `inner` without boxing.
    pub fn new(inner: B, idle: std::time::Duration) -> Self {
        IdleBody {
            inner,
            idle,
            last: None,
            sleep: None,
        }
    }

    /// Wrap `inner` and box the result.
    pub fn wrap(inner: B, idle: std::time::Duration) -> BoxBody {
        Self::new(inner, idle).boxed_unsync()
    }
}

/// A response body that fails when a deadline passes before it ends: Envoy's route `timeout`
/// and `max_stream_duration` cover the whole response, not only its headers. Counts the
/// deadline's stat (`upstream_rq_timeout`, `downstream_rq_max_duration_reached`).
///
/// Like [`IdleBody`], the timer is made only when the body first has to wait: most responses
/// are read whole as soon as their headers, and never touch the timer wheel.
pub struct DeadlineBody<B> {
    inner: B,
    at: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    timeouts: std::sync::Arc<crate::stats::Stat>,
    reason: &'static str,
}

impl<B> DeadlineBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Send + Unpin + 'static,
{
    /// Wrap `inner` with the deadline `at` (failing with `reason`), and box the result.
    pub fn wrap(
        inner: B,
        at: tokio::time::Instant,
        timeouts: std::sync::Arc<crate::stats::Stat>,
        reason: &'static str,
    ) -> BoxBody {
        DeadlineBody {
            inner,
            at,
            sleep: None,
            timeouts,
            reason,
        }
        .boxed_unsync()
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Poll::Ready(r) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(r);
        }
        let at = self.at;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if sleep.as_mut().poll(cx).is_ready() {
            self.timeouts.inc();
            return Poll::Ready(Some(Err(self.reason.into())));
        }
        Poll::Pending
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Poll::Ready(r) = Pin::new(&mut self.inner).poll_frame(cx) {
            // Until the body first waits there is no timer to move: no clock read.
            if self.sleep.is_some() {
                self.last = Some(tokio::time::Instant::now());
            }
            return Poll::Ready(r);
        }
        let this = &mut *self;
        // Idle from the first wait: frames ready before it came one after another.
        let last = *this.last.get_or_insert_with(tokio::time::Instant::now);
        let idle = this.idle;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(super::later(last, idle))));
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let due = super::later(last, idle);
            if due <= tokio::time::Instant::now() {
                return Poll::Ready(Some(Err("stream idle timeout".into())));
            }
            sleep.as_mut().reset(due);
        }
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}
