//! The stream lifecycle: connect, run a SotW or delta stream, and on failure reconnect after a
//! jittered exponential backoff (1 s doubling to 60 s, as MOSN did), keeping the last good
//! config meanwhile and re-subscribing on the new stream.

use super::config::{AdsConfig, ApiType};
use super::engine::{Engine, TICK};
use super::{delta, sotw, transport};
use crate::server::Server;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// First reconnect delay.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Run the client forever (the task is dropped with the runtime).
pub async fn run(server: Arc<Server>, cfg: AdsConfig) {
    let dial = match transport::resolve(&cfg.target, &server.store.load()) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!("xDS disabled: {e}");
            return;
        }
    };
    let api = cfg.api_type;
    let mut engine = Engine::new(server, cfg);
    let mut failures: u32 = 0;
    loop {
        let (got, why) = match transport::connect(&dial).await {
            Ok(mut client) => match api {
                ApiType::Sotw => sotw::run(&mut engine, &mut client).await,
                ApiType::Delta => delta::run(&mut engine, &mut client).await,
            },
            Err(e) => (false, format!("cannot connect to {dial:?}: {e}")),
        };
        engine.stats.connected.set(0);
        engine.stats.update_failure.iter().for_each(|s| s.inc());
        if got {
            failures = 0;
        }
        let delay = backoff(failures);
        failures = failures.saturating_add(1);
        tracing::warn!("xDS stream ended ({why}); reconnecting in {delay:?}");
        // Keep warming and initial-fetch deadlines running while disconnected.
        let until = Instant::now() + delay;
        while Instant::now() < until {
            tokio::time::sleep(TICK.min(until - Instant::now())).await;
            engine.tick().await;
        }
    }
}

/// The delay before reconnect attempt `n` (0-based): uniformly jittered in [d/2, d] where d
/// doubles from [`BACKOFF_BASE`] up to [`BACKOFF_MAX`], so restarted sidecars spread out.
pub fn backoff(n: u32) -> Duration {
    let d = BACKOFF_BASE
        .saturating_mul(1u32 << n.min(6))
        .min(BACKOFF_MAX);
    let half = d / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_jittered_and_caps() {
        for n in 0..10 {
            let d = backoff(n);
            let nominal = BACKOFF_BASE.saturating_mul(1 << n.min(6)).min(BACKOFF_MAX);
            assert!(d >= nominal / 2 && d <= nominal, "{n}: {d:?}");
        }
        assert!(backoff(30) <= BACKOFF_MAX);
    }
}
