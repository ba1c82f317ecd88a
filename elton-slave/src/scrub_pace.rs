//! How fast a scrub may go: a byte budget per second, where every object
//! also costs a fixed minimum (opening and closing a small file costs about
//! as much as reading 64 KiB of a large one), so a store of tiny objects is
//! not opened thousands of times a second. Pure: the caller sleeps.

use std::time::{Duration, Instant};

/// What one object costs at least, in bytes of the budget.
pub const MIN_OBJECT_COST: u64 = 64 << 10;

/// Default `--scrub-rate`, MiB/s: with [`MIN_OBJECT_COST`], at most 256
/// objects a second (measured in `docs/benchmarks.md`, "Scrub").
pub const DEFAULT_RATE_MIB: u64 = 16;

/// Unused budget kept at most this long.
const BURST: Duration = Duration::from_secs(1);

/// A budget of `rate` bytes per second, measured from the start.
#[derive(Debug)]
pub struct Pace {
    /// Bytes per second; `None` is unlimited.
    rate: Option<u64>,
    start: Instant,
    spent: u64,
}

impl Pace {
    /// `rate_mib` MiB/s; 0 is unlimited.
    pub fn new(rate_mib: u64, now: Instant) -> Self {
        Self {
            rate: (rate_mib > 0).then(|| rate_mib.saturating_mul(1 << 20)),
            start: now,
            spent: 0,
        }
    }

    /// Charges an object of `size` bytes; returns how long to wait before
    /// reading it so the average stays within the rate.
    pub fn charge(&mut self, size: u64, now: Instant) -> Duration {
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        let elapsed = now.saturating_duration_since(self.start);
        // Budget left unused (while the scrub waited for a lock, say) is
        // kept for at most BURST, so a pause is not followed by a flood.
        let floor = elapsed.saturating_sub(BURST).as_secs_f64() * rate as f64;
        if (self.spent as f64) < floor {
            self.spent = floor as u64;
        }
        self.spent = self.spent.saturating_add(size.max(MIN_OBJECT_COST));
        let due = Duration::from_secs_f64(self.spent as f64 / rate as f64);
        due.saturating_sub(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let t = Instant::now();
        let mut p = Pace::new(0, t);
        assert_eq!(p.charge(u64::MAX, t), Duration::ZERO);
    }

    #[test]
    fn bytes_are_spread_over_time_and_small_objects_cost_the_minimum() {
        let t = Instant::now();
        let mut p = Pace::new(1, t); // 1 MiB/s
        // 16 small objects are 1 MiB of budget: the 16th is due at 1 s.
        let mut wait = Duration::ZERO;
        for _ in 0..16 {
            wait = p.charge(10, t);
        }
        assert_eq!(wait, Duration::from_secs(1));
        // Half a second later, half a second is left; a 1 MiB object adds 1 s.
        let later = t + Duration::from_millis(500);
        assert_eq!(p.charge(1 << 20, later), Duration::from_millis(1500));
        // Budget unused for long is kept for one second only.
        let much_later = t + Duration::from_secs(10);
        assert_eq!(p.charge(1 << 20, much_later), Duration::ZERO);
        assert_eq!(p.charge(1 << 20, much_later), Duration::from_secs(1));
    }
}
