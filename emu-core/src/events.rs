//! Asynchronous events for a vCPU: stop requests, NMI and the external interrupt line.
//!
//! Everything the outside world asks of a running vCPU goes through one atomic word
//! ([`Events::pending`]), which the run loop loads once per block; a halted vCPU sleeps on a
//! condition variable until the word changes. External interrupts are a 256-bit request
//! register: the platform's interrupt controller raises vectors, and the CPU takes the
//! highest one whenever RFLAGS.IF allows (and no interrupt shadow is in force).
//!
//! A vCPU with a local APIC works differently: the APIC is attached as a
//! [`LocalInterruptController`] ([`crate::Emulator::set_interrupt_controller`]) and keeps
//! the requests itself. [`INTR`] then only means "the controller may have something":
//! the controller (or anything feeding it) calls [`InterruptLine::notify`], and the CPU,
//! when RFLAGS.IF allows, clears [`INTR`] and asks the controller
//! ([`LocalInterruptController::acknowledge`]) for the vector. Clearing before asking
//! means a notify that races with the question is never lost, at worst answered by an
//! extra question that finds nothing. The controller must notify whenever an interrupt
//! may have become deliverable (a new request, an EOI, a lower TPR, being enabled).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// [`Events::pending`] bit: stop the run.
pub const STOP: u32 = 1 << 0;
/// [`Events::pending`] bit: an NMI is pending.
pub const NMI: u32 = 1 << 1;
/// [`Events::pending`] bit: some external interrupt vector is requested.
pub const INTR: u32 = 1 << 2;
/// [`Events::pending`] bit: another party wants the machine to itself
/// ([`crate::smp::Gate`]); the vCPU steps out at its next block boundary.
pub const KICK: u32 = 1 << 3;
/// [`Events::pending`] bit: an INIT signal (the vCPU resets and waits for a start-up IPI).
pub const INIT: u32 = 1 << 4;
/// [`Events::pending`] bit: a start-up IPI (its vector in [`Events::take_startup`]).
pub const SIPI: u32 = 1 << 5;

/// The shared event state of one vCPU.
#[derive(Debug, Default)]
pub struct Events {
    pending: AtomicU32,
    /// The vector of the latest start-up IPI.
    startup_vector: AtomicU32,
    requested: [AtomicU64; 4],
    sleep: Mutex<()>,
    wake: Condvar,
}

impl Events {
    /// The pending-event bits ([`STOP`], [`NMI`], [`INTR`], ...).
    #[inline(always)]
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Acquire)
    }

    /// Where the pending-event word lives, for compiled code that reads it between
    /// blocks (a plain 32-bit load, which is an acquire load on x86-64; compiled code on
    /// weaker hosts fences its loads).
    pub(crate) fn pending_word(&self) -> *const u32 {
        self.pending.as_ptr() as *const u32
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

    /// Sets [`INTR`] without requesting a vector (the attached controller holds the
    /// request), waking a halted vCPU. Cheap when [`INTR`] is already set: one atomic
    /// operation and no lock.
    pub fn notify_intr(&self) {
        if self.pending.fetch_or(INTR, Ordering::AcqRel) & INTR == 0 {
            // Only the transition needs the wake-up: a sleeper that saw INTR clear went to
            // sleep before this lock was taken, and whoever set INTR before us woke it.
            let _guard = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
    }

    /// Raises an NMI.
    pub fn raise_nmi(&self) {
        self.signal(NMI);
    }

    /// Asks a running vCPU to step out to its gate ([`KICK`]).
    pub(crate) fn kick(&self) {
        self.signal(KICK);
    }

    /// Raises INIT. A start-up IPI still pending from before is void (the order of the
    /// two matters and the bits alone would not keep it): only start-ups raised after
    /// this INIT start the processor.
    pub fn raise_init(&self) {
        self.clear(SIPI);
        self.signal(INIT);
    }

    /// Raises a start-up IPI with `vector`.
    pub fn raise_startup(&self, vector: u8) {
        self.startup_vector.store(vector as u32, Ordering::Release);
        self.signal(SIPI);
    }

    /// Clears [`SIPI`] and returns the start-up vector.
    pub(crate) fn take_startup(&self) -> u8 {
        self.clear(SIPI);
        self.startup_vector.load(Ordering::Acquire) as u8
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

    /// Signals INIT: the vCPU resets (registers to their power-up values, paging off,
    /// real mode) and waits for a start-up IPI, as an application processor does.
    pub fn raise_init(&self) {
        self.0.raise_init();
    }

    /// Sends a start-up IPI: a vCPU waiting for one (after INIT) starts in real mode at
    /// `vector << 12` (CS = `vector << 8`, IP = 0); a running vCPU ignores it.
    pub fn raise_startup(&self, vector: u8) {
        self.0.raise_startup(vector);
    }

    /// Tells a vCPU with an attached [`LocalInterruptController`] that the controller may
    /// have an interrupt for it: the CPU asks the controller at the next instruction
    /// boundary where RFLAGS.IF allows, and a halted CPU wakes to ask. Callable from any
    /// thread, and cheap to call again while a notification is still pending. (Without a
    /// controller attached, use [`InterruptLine::raise`].)
    pub fn notify(&self) {
        self.0.notify_intr();
    }
}

/// The answer of a [`LocalInterruptController`] to an MSR access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrAccess {
    /// Not one of the controller's MSRs: the CPU handles it (and raises `#GP(0)` for an
    /// MSR it does not know either).
    NotMine,
    /// Done; for a read, the value read (ignored for writes).
    Done(u64),
    /// The access raises `#GP(0)` (an x2APIC MSR while x2APIC mode is off, a read-only
    /// register written, reserved bits set...).
    Fault,
}

/// A vCPU's local interrupt controller (its local APIC), as the CPU sees it.
///
/// Attached with [`crate::Emulator::set_interrupt_controller`] as an
/// `Arc<Mutex<dyn LocalInterruptController>>`, which the platform also maps as the
/// APIC's MMIO page and hands to its timer thread, so every path goes through the same
/// lock. The CPU locks it only at interrupt acceptance, for RDMSR/WRMSR of the APIC
/// MSRs and for MOV to/from CR8, never on the instruction hot path.
///
/// Contract:
/// - Whenever an interrupt may have become deliverable, the controller (or whatever
///   feeds it, from any thread) calls [`InterruptLine::notify`] on the vCPU's line.
/// - The CPU then, at an instruction boundary with RFLAGS.IF set and no interrupt
///   shadow, calls [`acknowledge`](Self::acknowledge) (the INTA cycle) and delivers the
///   vector it returns through the IDT.
/// - Implementations must not lock anything that could be waiting on the vCPU thread
///   while holding their own lock (the CPU calls them with nothing else locked).
pub trait LocalInterruptController: Send {
    /// The interrupt acknowledge cycle: the highest-priority deliverable vector, now
    /// in service (for a local APIC: moved from IRR to ISR; for ExtINT, the 8259's
    /// vector), or `None` if nothing is deliverable any more (masked by the task
    /// priority meanwhile, or a spurious notification).
    fn acknowledge(&mut self) -> Option<u8>;

    /// RDMSR of `msr`. The CPU offers IA32_APIC_BASE (0x1B), IA32_TSC_DEADLINE (0x6E0)
    /// and the x2APIC range 0x800..=0x8FF. IA32_TSC_DEADLINE is exchanged in raw TSC
    /// units: the virtual clock at [`crate::cpuid::TSC_HZ`], without the IA32_TSC offset
    /// (the CPU converts).
    fn read_msr(&mut self, msr: u32) -> MsrAccess;

    /// WRMSR of `value` to `msr` (the same MSRs as [`read_msr`](Self::read_msr)).
    fn write_msr(&mut self, msr: u32, value: u64) -> MsrAccess;

    /// The task-priority register (8 bits); MOV from CR8 reads bits 7:4.
    fn tpr(&mut self) -> u8;

    /// Sets the task-priority register (MOV to CR8 writes `cr8 << 4`). A lower priority
    /// may unmask pending interrupts: notify as usual.
    fn set_tpr(&mut self, tpr: u8);
}

/// A [`LocalInterruptController`] attached to a vCPU (a shared handle; see
/// [`crate::Emulator::set_interrupt_controller`]).
#[derive(Clone)]
pub struct AttachedController(pub Arc<Mutex<dyn LocalInterruptController>>);

impl std::fmt::Debug for AttachedController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttachedController")
    }
}

impl AttachedController {
    /// Locks the controller (a panic while it was held does not make it unusable: its
    /// state is plain registers).
    #[inline]
    pub fn lock(&self) -> std::sync::MutexGuard<'_, dyn LocalInterruptController + 'static> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
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
    fn notify_sets_intr_without_a_vector_and_wakes_a_sleeper() {
        let e = Arc::new(Events::default());
        let line = InterruptLine(e.clone());
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            line.notify();
            line.notify(); // a second notify while pending is harmless
        });
        let bits = e.wait(
            INTR,
            Some(Instant::now() + std::time::Duration::from_secs(10)),
        );
        t.join().unwrap();
        assert_ne!(bits & INTR, 0);
        e.clear(INTR);
        assert_eq!(e.pending(), 0);
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
