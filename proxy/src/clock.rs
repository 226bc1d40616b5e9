//! Tick-resolution clocks for bookkeeping on the request path.
//!
//! Why: a precise clock read (`clock_gettime(CLOCK_MONOTONIC)` through the vDSO) costs about
//! 24 ns on a VM's TSC clock, and a proxied request used to make eight of them: 1.5% of the
//! proxy's CPU, more than any function of its own. Bookkeeping that works in milliseconds or
//! seconds (how long a pooled connection has been idle, when a downstream connection became
//! idle, the `Date` header) reads Linux's coarse clocks instead: the time of the last
//! scheduler tick, which the vDSO returns from memory. Request timeouts still use the precise
//! clock.
//!
//! Elsewhere than Linux the precise clocks stand in.

use std::time::Duration;

/// Monotonic time, up to one [`resolution`] behind the precise clock (and never ahead of it).
pub fn coarse_now() -> Duration {
    #[cfg(target_os = "linux")]
    {
        read(libc::CLOCK_MONOTONIC_COARSE)
    }
    #[cfg(not(target_os = "linux"))]
    {
        static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        BASE.get_or_init(std::time::Instant::now).elapsed()
    }
}

/// Seconds since the Unix epoch, up to one [`resolution`] behind the precise clock.
pub fn coarse_unix_secs() -> u64 {
    #[cfg(target_os = "linux")]
    {
        read(libc::CLOCK_REALTIME_COARSE).as_secs()
    }
    #[cfg(not(target_os = "linux"))]
    {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// How far behind the precise clocks the coarse ones may be (the kernel's tick, typically
/// 1–10 ms); at least a millisecond.
pub fn resolution() -> Duration {
    static RES: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *RES.get_or_init(|| {
        #[cfg(target_os = "linux")]
        {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_getres writes one timespec into a valid, owned one.
            if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } == 0 {
                let d = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
                return d.max(Duration::from_millis(1));
            }
            Duration::from_millis(10)
        }
        #[cfg(not(target_os = "linux"))]
        {
            Duration::from_millis(1)
        }
    })
}

#[cfg(target_os = "linux")]
fn read(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a valid, owned one; the coarse clocks
    // exist on every Linux since 2.6.32, so it cannot fail.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_clocks_trail_the_precise_ones_by_at_most_their_resolution() {
        let res = resolution();
        assert!(res >= Duration::from_millis(1) && res <= Duration::from_millis(100));
        let precise = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let coarse = coarse_unix_secs();
        assert!(
            coarse <= precise + 1 && coarse + 1 >= precise,
            "{coarse} {precise}"
        );
        let a = coarse_now();
        std::thread::sleep(Duration::from_millis(30));
        let b = coarse_now();
        let moved = b - a;
        assert!(
            moved + res >= Duration::from_millis(30)
                && moved <= Duration::from_millis(30) + 2 * res + Duration::from_millis(50),
            "{moved:?} with resolution {res:?}"
        );
    }
}
