//! Coarse clocks, for times that need only a few milliseconds of resolution (how long a
//! connection has been idle, the `date` header): the kernel's coarse clocks are several times
//! cheaper to read than the precise ones, which the request path already reads for latencies.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nix::time::{ClockId, clock_gettime};

/// Milliseconds on a monotonic clock (coarse: a few ms of resolution).
pub fn monotonic_ms() -> u64 {
    match clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE) {
        Ok(t) => t.tv_sec().max(0) as u64 * 1000 + t.tv_nsec().max(0) as u64 / 1_000_000,
        Err(_) => {
            static ORIGIN: OnceLock<Instant> = OnceLock::new();
            ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64
        }
    }
}

/// Seconds since the Unix epoch (coarse).
pub fn realtime_secs() -> u64 {
    match clock_gettime(ClockId::CLOCK_REALTIME_COARSE) {
        Ok(t) => t.tv_sec().max(0) as u64,
        Err(_) => SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_clocks_move_forward_and_agree_with_the_precise_ones() {
        let a = monotonic_ms();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let b = monotonic_ms();
        assert!(b >= a + 20 && b < a + 5_000, "30 ms apart: {a} then {b}");
        let precise = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        assert!(realtime_secs().abs_diff(precise) <= 1);
    }
}
