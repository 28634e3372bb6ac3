//! The machine's one virtual clock.
//!
//! Everything that tells time in a machine (the TSC, the LAPIC timer, the PIT, the HPET
//! and PM timer, the RTC) reads this clock, so they always agree with each other. It
//! lives here, in the crate every other machine crate depends on, so that the CPU and
//! the devices can share it without depending on each other.
//!
//! The clock counts nanoseconds since the machine was created. It follows host time;
//! a deterministic mode (time derived from retired instructions) can be added behind the
//! same interface.

use std::sync::Arc;
use std::time::Instant;

/// A cheaply clonable handle to a machine's virtual clock; clones read the same time.
#[derive(Clone, Debug)]
pub struct VirtualClock {
    origin: Arc<Instant>,
}

impl Default for VirtualClock {
    fn default() -> Self {
        VirtualClock::new()
    }
}

impl VirtualClock {
    /// A clock that reads zero now.
    pub fn new() -> Self {
        VirtualClock {
            origin: Arc::new(Instant::now()),
        }
    }

    /// Nanoseconds of virtual time since the clock was created.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// The host instant at which the clock will read `ns` (for sleeping until a timer's
    /// deadline).
    pub fn instant_at(&self, ns: u64) -> Instant {
        *self.origin + std::time::Duration::from_nanos(ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_time_base_and_time_moves_forward() {
        let a = VirtualClock::new();
        let b = a.clone();
        let t0 = a.now_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let t1 = b.now_ns();
        assert!(t1 >= t0 + 2_000_000, "{t0} -> {t1}");
        assert!(a.instant_at(t1) <= Instant::now());
    }
}
