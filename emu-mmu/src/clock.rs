//! The machine's one virtual clock.
//!
//! Everything that tells time in a machine (the TSC, the LAPIC timer, the PIT, the HPET
//! and PM timer, the RTC) reads this clock, so they always agree with each other. It
//! lives here, in the crate every other machine crate depends on, so that the CPU and
//! the devices can share it without depending on each other.
//!
//! The clock counts nanoseconds since the machine was created. It follows host time;
//! a deterministic mode (time derived from retired instructions) can be added behind the
//! same interface. A manual clock ([`VirtualClock::manual`]), which moves only when
//! told to ([`VirtualClock::advance`]), lets device tests check timer arithmetic exactly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A cheaply clonable handle to a machine's virtual clock; clones read the same time.
#[derive(Clone, Debug)]
pub struct VirtualClock {
    origin: Arc<Instant>,
    /// `Some` for a manual clock: the current time in nanoseconds, moved by `advance`.
    manual: Option<Arc<AtomicU64>>,
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
            manual: None,
        }
    }

    /// A clock that reads zero and moves only when [`advance`](Self::advance) or
    /// [`set_ns`](Self::set_ns) is called: deterministic time for tests of timer devices.
    pub fn manual() -> Self {
        VirtualClock {
            origin: Arc::new(Instant::now()),
            manual: Some(Arc::new(AtomicU64::new(0))),
        }
    }

    /// Whether this is a [`manual`](Self::manual) clock.
    pub fn is_manual(&self) -> bool {
        self.manual.is_some()
    }

    /// Moves a manual clock forward by `ns` nanoseconds (and all its clones with it).
    ///
    /// # Panics
    ///
    /// If the clock follows host time: only manual clocks can be moved.
    pub fn advance(&self, ns: u64) {
        self.manual
            .as_ref()
            .expect("VirtualClock::advance on a host-time clock")
            .fetch_add(ns, Ordering::SeqCst);
    }

    /// Sets a manual clock to `ns`; time never goes backwards, so a smaller value is
    /// ignored.
    ///
    /// # Panics
    ///
    /// If the clock follows host time.
    pub fn set_ns(&self, ns: u64) {
        self.manual
            .as_ref()
            .expect("VirtualClock::set_ns on a host-time clock")
            .fetch_max(ns, Ordering::SeqCst);
    }

    /// Nanoseconds of virtual time since the clock was created.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        match &self.manual {
            None => self.origin.elapsed().as_nanos() as u64,
            Some(t) => t.load(Ordering::SeqCst),
        }
    }

    /// The host instant at which the clock will read `ns` (for sleeping until a timer's
    /// deadline). A manual clock does not follow host time, so for it this is "now" plus
    /// the distance still to go, a best guess.
    pub fn instant_at(&self, ns: u64) -> Instant {
        match &self.manual {
            None => *self.origin + std::time::Duration::from_nanos(ns),
            Some(t) => {
                Instant::now()
                    + std::time::Duration::from_nanos(ns.saturating_sub(t.load(Ordering::SeqCst)))
            }
        }
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

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let a = VirtualClock::manual();
        let b = a.clone();
        assert!(a.is_manual() && !VirtualClock::new().is_manual());
        assert_eq!(a.now_ns(), 0);
        std::thread::sleep(std::time::Duration::from_millis(1));
        assert_eq!(b.now_ns(), 0);
        a.advance(1500);
        assert_eq!(b.now_ns(), 1500);
        b.set_ns(1000);
        assert_eq!(a.now_ns(), 1500, "time never goes backwards");
        b.set_ns(4000);
        assert_eq!(a.now_ns(), 4000);
    }
}
