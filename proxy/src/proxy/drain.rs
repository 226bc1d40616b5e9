//! Drain signals: what a listener, a filter chain or a hand-off target tells its open
//! connections. Draining asks HTTP connections to leave (`Connection: close`, GOAWAY);
//! retiring (the listener or chain was changed or removed) also closes TCP proxy connections
//! once the drain time is over, as Envoy closes what is left of a removed listener. A
//! `/drain_listeners` or a SIGTERM drains; an LDS update retires.

use tokio::sync::watch;

/// How far a signal has gone; it only ever rises.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Drain {
    /// Serving as usual.
    #[default]
    Serving,
    /// Connections are asked to leave.
    Draining,
    /// The config they were accepted under is gone: TCP connections close after the drain
    /// time too.
    Retired,
}

impl Drain {
    /// Whether HTTP connections should leave.
    pub fn is_draining(self) -> bool {
        self != Drain::Serving
    }
}

/// A drain signal's sending side.
pub type DrainTx = watch::Sender<Drain>;

/// A fresh signal at `level`.
pub fn signal(level: Drain) -> DrainTx {
    watch::Sender::new(level)
}

/// Raise `tx` to `to` (never lower it). Stored even with no connection listening, so that
/// one subscribing later sees it.
pub fn raise(tx: &DrainTx, to: Drain) {
    tx.send_if_modified(|v| {
        let up = *v < to;
        if up {
            *v = to;
        }
        up
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_only_rises_and_is_kept_without_listeners() {
        let tx = signal(Drain::Serving);
        raise(&tx, Drain::Retired);
        raise(&tx, Drain::Draining);
        assert_eq!(*tx.subscribe().borrow(), Drain::Retired);
        assert!(Drain::Draining.is_draining() && !Drain::Serving.is_draining());
    }
}
