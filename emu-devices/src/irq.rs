//! Interrupt lines: how a device signals an interrupt without knowing who listens.
//!
//! A device is given an `Arc<dyn IrqLine>` for each of its outputs (as `vm-superio`
//! devices are given an event) and drives it; the machine (emu-vmm) decides where the line
//! goes: a PIC input, an IOAPIC pin, or both, as on a PC where ISA IRQs reach both.

/// One interrupt request line.
pub trait IrqLine: Send + Sync {
    /// Drives the line high (`true`) or low. Level-triggered receivers see the level;
    /// edge-triggered ones see the rising edges.
    fn set_level(&self, high: bool);

    /// A rising edge followed by a return to low: the edge-triggered "interrupt now".
    fn pulse(&self) {
        self.set_level(true);
        self.set_level(false);
    }
}

/// A line connected to nothing (for devices whose interrupt is not wired).
#[derive(Debug, Default, Clone, Copy)]
pub struct Unconnected;

impl IrqLine for Unconnected {
    fn set_level(&self, _: bool) {}
}

/// A line that records its level and counts rising edges (for tests).
#[derive(Debug, Default)]
pub struct RecordingLine {
    level: std::sync::atomic::AtomicBool,
    edges: std::sync::atomic::AtomicU64,
}

impl RecordingLine {
    /// The current level.
    pub fn level(&self) -> bool {
        self.level.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Rising edges seen so far.
    pub fn edges(&self) -> u64 {
        self.edges.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl IrqLine for RecordingLine {
    fn set_level(&self, high: bool) {
        let was = self.level.swap(high, std::sync::atomic::Ordering::SeqCst);
        if high && !was {
            self.edges.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}
