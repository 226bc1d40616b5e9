//! Write batching on a saturated worker: its upstream writes wait for the end of its tick, so
//! that they reach the upstream back to back and it takes them in one wake-up
//! (bench/RESULTS.md, session 12: at `-c8`, 0.58 upstream wake-ups per request without it, and
//! 20% fewer requests).
//!
//! Why only when saturated: waiting costs a task poll and a zero-timeout `epoll_wait`, and a
//! worker with one request per tick has no batch to make. The runtime's park and unpark hooks
//! measure how busy the worker is (a moving average over park cycles); a sidecar at ordinary
//! load is idle most of the time and writes at once.
//!
//! Until session 20 a saturated worker also spun for 10 µs before it slept
//! (`MOSN_IDLE_SPIN_US`). The spin made up for the benchmark running mosn in wrk's session,
//! where autogroup scheduling gave wrk a fraction of the upstream's weight; with every
//! process in its own session, as nginx's daemon and a sidecar's container are, it cost
//! throughput (bench/RESULTS.md, session 20), and it is gone.

use std::cell::Cell;
use std::time::Instant;

/// The busy share of recent wall time, in percent, from which a worker batches its writes.
pub const BUSY_PERCENT: u64 = 80;

/// Moving averages of one worker's busy and idle spells, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Load {
    busy_ns: u64,
    idle_ns: u64,
}

impl Load {
    /// Folds in one spell with weight 1/8 (about the last 16 park cycles count).
    fn fold(avg: u64, sample: u64) -> u64 {
        // Cap a sample at one second so that a long sleep cannot overflow or linger.
        let sample = sample.min(1_000_000_000);
        avg - avg / 8 + sample / 8
    }

    /// Records a busy spell (from waking to the next park).
    pub fn busy(&mut self, ns: u64) {
        self.busy_ns = Self::fold(self.busy_ns, ns);
    }

    /// Records an idle spell (from going to sleep to waking).
    pub fn idle(&mut self, ns: u64) {
        self.idle_ns = Self::fold(self.idle_ns, ns);
    }

    /// Whether the worker was busy for at least [`BUSY_PERCENT`] of the recent wall time.
    pub fn saturated(&self) -> bool {
        let total = self.busy_ns + self.idle_ns;
        total > 0 && self.busy_ns * 100 >= total * BUSY_PERCENT
    }
}

#[derive(Clone, Copy)]
struct ThreadState {
    load: Load,
    /// When the worker last woke, or last went to sleep: whichever hook ran last.
    mark: Option<Instant>,
}

thread_local! {
    static STATE: Cell<ThreadState> = const {
        Cell::new(ThreadState { load: Load { busy_ns: 0, idle_ns: 0 }, mark: None })
    };
}

/// The most writes of one worker that wait in [`end_of_tick`] at once: past that, the
/// upstream has a batch anyway and waiting only costs (4% fewer requests at `-c128` when
/// every write waited).
pub const DEFER_MAX: u32 = 8;

thread_local! {
    /// Tasks of this worker waiting in [`end_of_tick`].
    static DEFERRED: Cell<u32> = const { Cell::new(0) };
}

/// On a saturated worker, wait until the end of its tick: tokio runs a yielded task again only
/// after it has polled for I/O, so the writes of all the tasks that waited go out back to back.
/// At most [`DEFER_MAX`] wait at once. A worker that is not saturated has no batch to make and
/// returns at once: the wait costs a task poll and a zero-timeout `epoll_wait` (1,300
/// instructions and one system call per request when each request has a tick of its own).
pub async fn end_of_tick() {
    let waiting = DEFERRED.get();
    if waiting < DEFER_MAX && STATE.get().load.saturated() {
        DEFERRED.set(waiting + 1);
        tokio::task::yield_now().await;
        DEFERRED.set(DEFERRED.get().saturating_sub(1));
    }
}

/// Installs the park and unpark hooks on `builder`, which measure how busy the worker is.
pub fn install(builder: &mut tokio::runtime::Builder) {
    builder
        .on_thread_park(before_park)
        .on_thread_unpark(after_unpark);
}

fn before_park() {
    // No task can be waiting in `end_of_tick` when the worker parks. Only one that resumed
    // on another worker (multi-threaded runtime) can have left its count here, which would
    // stop this worker from deferring.
    DEFERRED.set(0);
    end_spell(Load::busy);
}

fn after_unpark() {
    end_spell(Load::idle);
}

/// Ends the spell since the last hook, recording it with `record` (busy or idle).
fn end_spell(record: fn(&mut Load, u64)) {
    let mut st = STATE.get();
    let now = Instant::now();
    if let Some(began) = st.mark {
        record(&mut st.load, now.duration_since(began).as_nanos() as u64);
    }
    st.mark = Some(now);
    STATE.set(st);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycles(load: &mut Load, busy: u64, idle: u64, n: usize) {
        for _ in 0..n {
            load.busy(busy);
            load.idle(idle);
        }
    }

    #[test]
    fn the_gate_opens_only_when_the_worker_is_mostly_busy() {
        let mut load = Load::default();
        assert!(!load.saturated(), "no history: sleep at once");
        // A sidecar at ordinary load: 8 µs of work, then 40 µs asleep.
        cycles(&mut load, 8_000, 40_000, 64);
        assert!(!load.saturated(), "{load:?}");
        // Saturation: 60 µs of work between 5 µs naps.
        cycles(&mut load, 60_000, 5_000, 32);
        assert!(load.saturated(), "{load:?}");
        // Load falls away: a few long sleeps shut the gate again.
        cycles(&mut load, 60_000, 1_000_000, 4);
        assert!(!load.saturated(), "{load:?}");
        // Just under the threshold stays shut, just over opens.
        let mut edge = Load::default();
        cycles(&mut edge, 78_000, 22_000, 200);
        assert!(!edge.saturated(), "{edge:?}");
        cycles(&mut edge, 82_000, 18_000, 200);
        assert!(edge.saturated(), "{edge:?}");
    }

    /// Runs `tasks` tasks on one tick of a current-thread runtime, each logging its index
    /// before and after `end_of_tick`, with the worker's load set to `busy`/`idle` ns.
    fn tick_order(tasks: usize, busy_ns: u64, idle_ns: u64) -> Vec<(usize, bool)> {
        use std::sync::{Arc, Mutex};
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            STATE.set(ThreadState {
                load: Load { busy_ns, idle_ns },
                mark: None,
            });
            DEFERRED.set(0);
            let log = Arc::new(Mutex::new(Vec::new()));
            let handles: Vec<_> = (0..tasks)
                .map(|i| {
                    let log = log.clone();
                    tokio::spawn(async move {
                        log.lock().unwrap().push((i, false));
                        end_of_tick().await;
                        log.lock().unwrap().push((i, true));
                    })
                })
                .collect();
            for h in handles {
                h.await.unwrap();
            }
            assert_eq!(DEFERRED.get(), 0, "every wait was counted out");
            let log = log.lock().unwrap().clone();
            log
        })
    }

    #[test]
    fn a_saturated_worker_writes_at_the_end_of_its_tick() {
        // Saturated, fewer tasks than the cap: every task's "before" comes first, then all
        // the "after"s, back to back.
        let n = DEFER_MAX as usize;
        let log = tick_order(n, 90_000, 5_000);
        let befores = log.iter().take_while(|(_, after)| !after).count();
        assert_eq!(befores, n, "all waited for the end of the tick: {log:?}");
        // Past the cap, the extra tasks go on at once.
        let log = tick_order(n + 3, 90_000, 5_000);
        let waited = log.iter().filter(|(i, after)| *after && *i < n).count();
        assert_eq!(waited, n);
        for extra in n..n + 3 {
            let at = log.iter().position(|e| *e == (extra, false)).unwrap();
            assert_eq!(
                log[at + 1],
                (extra, true),
                "task {extra} did not wait: {log:?}"
            );
        }
        // An idle worker has no batch to make: each task goes on at once.
        let log = tick_order(n, 5_000, 90_000);
        for (k, pair) in log.chunks(2).enumerate() {
            assert_eq!(pair, [(k, false), (k, true)], "{log:?}");
        }
    }

    #[test]
    fn a_long_sleep_does_not_overflow_the_averages() {
        let mut load = Load::default();
        cycles(&mut load, u64::MAX, u64::MAX, 100);
        assert!(load.busy_ns <= 1_000_000_000 && load.idle_ns <= 1_000_000_000);
    }

    #[test]
    fn a_runtime_with_the_hooks_runs_and_measures() {
        let mut b = tokio::runtime::Builder::new_current_thread();
        install(&mut b);
        let rt = b.enable_all().build().unwrap();
        let n = rt.block_on(async {
            let mut n = 0;
            for i in 0..200u64 {
                tokio::time::sleep(std::time::Duration::from_micros(i % 20)).await;
                n += 1;
            }
            n
        });
        assert_eq!(n, 200);
        let load = rt.block_on(async { STATE.get().load });
        assert_ne!(load, Load::default(), "the hooks ran and measured");
    }
}
