//! The request timer of a downstream connection, kept between its requests.
//!
//! Why: a fresh `tokio::time::timeout` per request registered a timer in the wheel and took it
//! out again, about 1.2k instructions of a proxied request. A timer kept by the connection is
//! only moved later for the next request, which tokio does with one atomic update while the
//! old deadline has not passed (the wheel entry is corrected when it comes due).

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::Context;
use tokio::time::{Instant, Sleep};

/// A parked timer for the next request on the connection. HTTP/1 requests run one at a time
/// and always find it; concurrent HTTP/2 streams that find it taken use their own.
#[derive(Debug, Default)]
pub struct RequestTimer(Mutex<Option<Pin<Box<Sleep>>>>);

impl RequestTimer {
    /// A timer set for `deadline`; it goes back to the connection when dropped.
    pub fn arm(&self, deadline: Instant) -> Armed<'_> {
        let parked = self.0.lock().ok().and_then(|mut t| t.take());
        let sleep = match parked {
            Some(mut s) => {
                s.as_mut().reset(deadline);
                s
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        Armed {
            home: self,
            sleep: Some(sleep),
        }
    }
}

/// A set request timer (see [`RequestTimer::arm`]).
pub struct Armed<'a> {
    home: &'a RequestTimer,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Armed<'_> {
    /// Whether the deadline has passed; otherwise `cx` is woken when it does.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.sleep
            .as_mut()
            .is_none_or(|s| s.as_mut().poll(cx).is_ready())
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        if let (Some(s), Ok(mut slot)) = (self.sleep.take(), self.home.0.lock()) {
            *slot = Some(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;
    use std::time::Duration;

    /// `fut` until `deadline`, as the router runs an attempt.
    async fn within<F: Future>(t: &RequestTimer, deadline: Instant, fut: F) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        let mut armed = t.arm(deadline);
        std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
            Poll::Ready(v) => Poll::Ready(Some(v)),
            Poll::Pending if armed.poll_expired(cx) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        })
        .await
    }

    #[tokio::test]
    async fn the_deadline_holds_when_the_timer_is_reused() {
        let t = RequestTimer::default();
        let ms = Duration::from_millis;
        let now = Instant::now();
        // Done in time; then the same timer, moved later, cuts a slow future off at its new
        // deadline, not before.
        assert_eq!(within(&t, now + ms(5_000), async { 1 }).await, Some(1));
        assert!(t.0.lock().unwrap().is_some(), "the timer was given back");
        let slow = tokio::time::sleep(Duration::from_secs(60));
        assert_eq!(within(&t, now + ms(100), slow).await, None);
        assert!(Instant::now() >= now + ms(100));
        // A deadline earlier than the parked one (now fired) is honoured too.
        let start = Instant::now();
        let slow = tokio::time::sleep(Duration::from_secs(60));
        assert_eq!(within(&t, start + ms(50), slow).await, None);
        assert!(Instant::now() >= start + ms(50));
    }
}
