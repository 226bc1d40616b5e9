//! The request body of each attempt: streamed upstream as it arrives, and recorded, up to
//! Envoy's buffer limit, so that a retry can send it again.
//!
//! Why not read it whole first: Envoy's router never holds a request back for its body. It
//! forwards each chunk to the current attempt and keeps a copy for retries (`decodeData`).
//! Istio gives every route a retry policy, and a gRPC stream whose client waits for the
//! server's first message before it sends more (or ends) would otherwise wait forever, and an
//! upload would reach the upstream only once it had all arrived. Past the limit the copy is
//! dropped and no further attempt is made, as Envoy abandons the retry.

use super::body::{boxed, full, BoxBody, DownstreamBody};
use crate::cluster::connector::BoxError;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Envoy buffers request bodies up to this size so it can retry (its default buffer limit).
pub const RETRY_BUFFER_LIMIT: usize = 1024 * 1024;

/// A downstream request body prepared for forwarding.
pub enum RequestBody {
    /// No body: every attempt sends none.
    Empty,
    /// Sent once (no retries asked for); `None` once taken.
    Once(Option<BoxBody>),
    /// Streamed to the current attempt and recorded for the next.
    Recorded(Arc<Mutex<Recording>>),
}

/// What has passed through to the attempts so far, and the rest still to come.
pub struct Recording {
    source: DownstreamBody,
    frames: Vec<Recorded>,
    size: usize,
    /// Past [`RETRY_BUFFER_LIMIT`]: the copy is gone, and the attempt under way is the last.
    overflowed: bool,
    /// The source has ended: `frames` hold the whole body (unless overflowed).
    ended: bool,
    /// The attempt that may read on from the source: the newest. An older one that is still
    /// polled (its connection winding down) gets an error instead of taking frames from it.
    current: u32,
}

enum Recorded {
    Data(Bytes),
    Trailers(http::HeaderMap),
}

impl Recorded {
    fn frame(&self) -> Frame<Bytes> {
        match self {
            Recorded::Data(d) => Frame::data(d.clone()),
            Recorded::Trailers(t) => Frame::trailers(t.clone()),
        }
    }
}

impl RequestBody {
    /// `body`, recorded for retries when `want_replay`, else sent once.
    pub fn new(body: DownstreamBody, want_replay: bool) -> Self {
        if body.is_end_stream() {
            return RequestBody::Empty;
        }
        if !want_replay {
            return RequestBody::Once(Some(boxed(body)));
        }
        RequestBody::Recorded(Arc::new(Mutex::new(Recording {
            source: body,
            frames: Vec::new(),
            size: 0,
            overflowed: false,
            ended: false,
            current: 0,
        })))
    }

    /// The body for the next attempt: what was recorded, then the rest as it comes; `None`
    /// when the body can no longer be sent again.
    pub fn take(&mut self) -> Option<BoxBody> {
        match self {
            RequestBody::Empty => Some(full(Bytes::new())),
            RequestBody::Once(b) => b.take(),
            RequestBody::Recorded(rec) => {
                let attempt = {
                    let mut r = rec.lock().unwrap();
                    if r.overflowed && r.current > 0 {
                        return None;
                    }
                    r.current += 1;
                    r.current
                };
                Some(boxed(Replay {
                    rec: rec.clone(),
                    attempt,
                    next: 0,
                }))
            }
        }
    }

    /// Whether another attempt can be made.
    pub fn replayable(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Once(_) => false,
            RequestBody::Recorded(rec) => !rec.lock().unwrap().overflowed,
        }
    }
}

impl Recording {
    /// Keep a copy of `f` unless the copy would pass the limit; then drop it all.
    fn record(&mut self, f: &Frame<Bytes>) {
        if self.overflowed {
            return;
        }
        if let Some(d) = f.data_ref() {
            self.size += d.len();
            if self.size > RETRY_BUFFER_LIMIT {
                self.overflowed = true;
                self.frames = Vec::new();
                return;
            }
            self.frames.push(Recorded::Data(d.clone()));
        } else if let Some(t) = f.trailers_ref() {
            self.frames.push(Recorded::Trailers(t.clone()));
        }
    }

    /// Bytes recorded from frame `next` on.
    fn replay_len(&self, next: usize) -> u64 {
        let frames = self.frames.get(next..).unwrap_or_default();
        frames
            .iter()
            .map(|f| match f {
                Recorded::Data(d) => d.len() as u64,
                Recorded::Trailers(_) => 0,
            })
            .sum()
    }
}

/// One attempt's view of the body: the recorded frames from `next` on, then the source.
struct Replay {
    rec: Arc<Mutex<Recording>>,
    attempt: u32,
    next: usize,
}

impl Body for Replay {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut r = this.rec.lock().unwrap();
        if r.current != this.attempt {
            return Poll::Ready(Some(Err(
                "a newer attempt took over the request body".into()
            )));
        }
        if let Some(f) = r.frames.get(this.next) {
            let f = f.frame();
            this.next += 1;
            return Poll::Ready(Some(Ok(f)));
        }
        if r.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut r.source).poll_frame(cx) {
            Poll::Ready(None) => {
                r.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(f))) => {
                r.record(&f);
                // Past the limit the copy is empty and this attempt reads the source alone.
                this.next = r.frames.len();
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        let r = self.rec.lock().unwrap();
        let replay = r.replay_len(self.next);
        if r.ended {
            return SizeHint::with_exact(replay);
        }
        let mut h = r.source.size_hint();
        // Upper first: `set_lower` asserts it stays at most the upper bound.
        if let Some(u) = h.upper() {
            h.set_upper(u + replay);
        }
        h.set_lower(h.lower() + replay);
        h
    }

    fn is_end_stream(&self) -> bool {
        let r = self.rec.lock().unwrap();
        self.next >= r.frames.len() && (r.ended || r.source.is_end_stream())
    }
}
