//! Asynchronous events for a vCPU: stop requests, NMI and the external interrupt line.
//!
//! Everything the outside world asks of a running vCPU goes through one atomic word
//! ([`Events::pending`]), which the run loop loads once per block; a halted vCPU sleeps on a
//! condition variable until the word changes. External interrupts are a 256-bit request
//! register: the platform's interrupt controller raises vectors, and the CPU takes the
//! highest one whenever RFLAGS.IF allows (and no interrupt shadow is in force).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// [`Events::pending`] bit: stop the run.
pub const STOP: u32 = 1 << 0;
/// [`Events::pending`] bit: an NMI is pending.
pub const NMI: u32 = 1 << 1;
/// [`Events::pending`] bit: some external interrupt vector is requested.
pub const INTR: u32 = 1 << 2;

/// The shared event state of one vCPU.
#[derive(Debug, Default)]
pub struct Events {
    pending: AtomicU32,
    requested: [AtomicU64; 4],
    sleep: Mutex<()>,
    wake: Condvar,
}

impl Events {
    /// The pending-event bits ([`STOP`], [`NMI`], [`INTR`]).
    #[inline(always)]
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Acquire)
    }

    fn signal(&self, bit: u32) {
        self.pending.fetch_or(bit, Ordering::AcqRel);
        // Taking the lock orders this notification after a sleeper's check of `pending`.
        let _guard = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_all();
    }

    /// Requests a stop.
    pub fn request_stop(&self) {
        self.signal(STOP);
    }

    /// Clears the bits in `bits`.
    pub fn clear(&self, bits: u32) {
        self.pending.fetch_and(!bits, Ordering::AcqRel);
    }

    /// Raises external interrupt `vector`.
    pub fn raise(&self, vector: u8) {
        self.requested[vector as usize / 64].fetch_or(1 << (vector % 64), Ordering::AcqRel);
        self.signal(INTR);
    }

    /// Raises an NMI.
    pub fn raise_nmi(&self) {
        self.signal(NMI);
    }

    /// Takes the highest requested external vector, if any.
    pub fn take_interrupt(&self) -> Option<u8> {
        for word in (0..4).rev() {
            loop {
                let bits = self.requested[word].load(Ordering::Acquire);
                if bits == 0 {
                    break;
                }
                let bit = 63 - bits.leading_zeros();
                let mask = 1u64 << bit;
                if self.requested[word].fetch_and(!mask, Ordering::AcqRel) & mask != 0 {
                    self.settle_intr();
                    return Some((word * 64 + bit as usize) as u8);
                }
            }
        }
        self.settle_intr();
        None
    }

    /// Clears [`INTR`] when no vector is requested, without losing a concurrent raise.
    fn settle_intr(&self) {
        if self
            .requested
            .iter()
            .all(|w| w.load(Ordering::Acquire) == 0)
        {
            self.clear(INTR);
            if self
                .requested
                .iter()
                .any(|w| w.load(Ordering::Acquire) != 0)
            {
                self.pending.fetch_or(INTR, Ordering::AcqRel);
            }
        }
    }

    /// Sleeps until one of `wanted` is pending or `deadline` passes. Returns the pending
    /// bits when it wakes.
    pub fn wait(&self, wanted: u32, deadline: Option<Instant>) -> u32 {
        let mut guard = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = self.pending();
            if now & wanted != 0 {
                return now;
            }
            match deadline {
                None => guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return self.pending();
                    }
                    guard = self
                        .wake
                        .wait_timeout(guard, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}

/// The platform's handle on a vCPU's interrupt pins: external interrupt requests and NMI.
#[derive(Clone, Debug)]
pub struct InterruptLine(pub(crate) Arc<Events>);

impl InterruptLine {
    /// Requests external interrupt `vector`; it is delivered through the IDT when RFLAGS.IF
    /// allows, and wakes a halted vCPU.
    pub fn raise(&self, vector: u8) {
        self.0.raise(vector);
    }

    /// Raises an NMI (delivered through vector 2 regardless of IF; further NMIs are held
    /// until the handler's IRET).
    pub fn raise_nmi(&self) {
        self.0.raise_nmi();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_vector_first_and_intr_clears_when_empty() {
        let e = Events::default();
        e.raise(0x20);
        e.raise(0xf0);
        e.raise(0x21);
        assert_ne!(e.pending() & INTR, 0);
        assert_eq!(e.take_interrupt(), Some(0xf0));
        assert_eq!(e.take_interrupt(), Some(0x21));
        assert_eq!(e.take_interrupt(), Some(0x20));
        assert_eq!(e.pending() & INTR, 0);
        assert_eq!(e.take_interrupt(), None);
    }

    #[test]
    fn a_sleeper_wakes_on_a_raise_from_another_thread() {
        let e = Arc::new(Events::default());
        let e2 = e.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            e2.raise(0x30);
        });
        let bits = e.wait(
            INTR | STOP,
            Some(Instant::now() + std::time::Duration::from_secs(10)),
        );
        assert_ne!(bits & INTR, 0);
        t.join().unwrap();
        let bits = e.wait(
            STOP,
            Some(Instant::now() + std::time::Duration::from_millis(10)),
        );
        assert_eq!(bits & STOP, 0, "timed out without a stop");
    }
}
