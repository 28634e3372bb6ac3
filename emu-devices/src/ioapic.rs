//! The I/O APIC (an 82093AA-style IOAPIC, version 0x11, 24 pins) at MMIO 0xFEC00000.
//!
//! Registers are reached indirectly: IOREGSEL (offset 0x00) selects, IOWIN (offset 0x10)
//! reads and writes the selected register: 0x00 ID, 0x01 version, 0x02 arbitration ID,
//! 0x10 + 2n / 0x11 + 2n the low and high halves of redirection entry n.
//!
//! Input pins are [`IrqLine`]s ([`IoApic::pin`]) that devices drive. A line level of
//! `true` means *asserted*: the polarity bit of an entry is kept for the guest to read,
//! but the electrical inversion of active-low lines is the wiring's business (the
//! machine's devices always assert with `true`). Edge-triggered entries deliver on each
//! rising edge (an edge on a masked pin is lost, as on the 82093AA); level-triggered ones
//! deliver while asserted, once per EOI: delivery sets remote IRR, the local APIC's EOI
//! broadcast ([`IoApic::end_of_interrupt`]) clears it and re-delivers if the line is
//! still asserted. Unmasking an asserted level-triggered pin delivers it.
//!
//! Messages go to local APICs through an injected router (see [`crate::lapic::route`]),
//! called under the IOAPIC's lock: it must reach APICs only through their lock-free
//! [`crate::lapic::LapicInput`]s. The lock order is `LAPIC -> IOAPIC` (EOI broadcast) and
//! `device -> IOAPIC` (pins); the IOAPIC itself locks nothing else.

use std::sync::{Arc, Mutex};

use emu_mmu::BusDevice;

use crate::irq::IrqLine;
use crate::lapic::{DeliveryMode, InterruptMessage};

/// Where the IOAPIC is mapped (the PC default; the MADT says so too).
pub const IOAPIC_BASE_ADDR: u64 = 0xfec0_0000;
/// Size of the IOAPIC's MMIO window.
pub const IOAPIC_MMIO_SIZE: u64 = 0x1000;
/// Number of input pins (redirection entries).
pub const PINS: usize = 24;
/// The version register: version 0x11, maximum redirection entry 23.
pub const VERSION: u32 = 0x11 | ((PINS as u32 - 1) << 16);

/// IOREGSEL's offset.
pub const IOREGSEL: u64 = 0x00;
/// IOWIN's offset.
pub const IOWIN: u64 = 0x10;

/// Redirection entry bits.
pub mod entry {
    /// Delivery status (read-only; always 0 here, delivery is instantaneous).
    pub const DELIVERY_STATUS: u64 = 1 << 12;
    /// Logical destination mode.
    pub const LOGICAL: u64 = 1 << 11;
    /// Active low (kept, not applied: see the module docs).
    pub const ACTIVE_LOW: u64 = 1 << 13;
    /// Remote IRR (read-only): a level-triggered interrupt was delivered and not yet
    /// EOI'd.
    pub const REMOTE_IRR: u64 = 1 << 14;
    /// Level-triggered.
    pub const LEVEL: u64 = 1 << 15;
    /// Masked.
    pub const MASKED: u64 = 1 << 16;
    /// Bits software can write: vector, delivery mode, destination mode, polarity,
    /// trigger, mask, destination.
    pub const WRITABLE: u64 = 0xff | 7 << 8 | LOGICAL | ACTIVE_LOW | LEVEL | MASKED | 0xff << 56;
}

/// Delivers an interrupt message to the local APICs it addresses.
pub type Router = Box<dyn FnMut(&InterruptMessage) + Send>;

/// The IOAPIC's registers and pin levels. Share it as `Arc<Mutex<IoApic>>`: one clone on
/// the MMIO bus, one behind each pin, one in each local APIC's EOI broadcast.
pub struct IoApic {
    id: u8,
    select: u8,
    redirection: [u64; PINS],
    /// Pin levels, one bit per pin (asserted = 1).
    levels: u32,
    router: Router,
}

impl std::fmt::Debug for IoApic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoApic")
            .field("id", &self.id)
            .field("levels", &format_args!("{:#x}", self.levels))
            .field("redirection", &self.redirection)
            .finish()
    }
}

impl IoApic {
    /// An IOAPIC with APIC ID `id` (4 bits), every entry masked, delivering through
    /// `router`.
    pub fn new(id: u8, router: Router) -> Self {
        IoApic {
            id: id & 0xf,
            select: 0,
            redirection: [entry::MASKED; PINS],
            levels: 0,
            router,
        }
    }

    /// Input pin `n` as an interrupt line for a device (or for the machine's ISA IRQ
    /// fan-out). Driving it locks the IOAPIC.
    ///
    /// # Panics
    ///
    /// If `n` is not below [`PINS`].
    pub fn pin(ioapic: &Arc<Mutex<IoApic>>, n: usize) -> Arc<dyn IrqLine> {
        assert!(n < PINS, "IOAPIC pin {n} does not exist");
        Arc::new(Pin {
            ioapic: ioapic.clone(),
            n,
        })
    }

    /// Redirection entry `n` (for inspection).
    pub fn redirection(&self, n: usize) -> u64 {
        self.redirection[n]
    }

    /// Sets pin `n`'s level (asserted = `true`); what [`IoApic::pin`]'s lines call.
    pub fn set_pin(&mut self, n: usize, asserted: bool) {
        if n >= PINS {
            return;
        }
        let bit = 1u32 << n;
        let was = self.levels & bit != 0;
        if asserted {
            self.levels |= bit;
        } else {
            self.levels &= !bit;
        }
        let e = self.redirection[n];
        if e & entry::LEVEL != 0 {
            self.deliver_level(n);
        } else if asserted && !was && e & entry::MASKED == 0 {
            self.send(n);
        }
    }

    /// The EOI of `vector`, broadcast by a local APIC for a level-triggered interrupt:
    /// clears remote IRR on the level-triggered entries with that vector and delivers
    /// again those whose line is still asserted.
    pub fn end_of_interrupt(&mut self, vector: u8) {
        for n in 0..PINS {
            let e = self.redirection[n];
            if e as u8 == vector && e & entry::LEVEL != 0 && e & entry::REMOTE_IRR != 0 {
                self.redirection[n] &= !entry::REMOTE_IRR;
                self.deliver_level(n);
            }
        }
    }

    /// Delivers level-triggered pin `n` if it is asserted, unmasked and not already
    /// waiting for its EOI.
    fn deliver_level(&mut self, n: usize) {
        let e = self.redirection[n];
        if self.levels & (1 << n) != 0 && e & (entry::MASKED | entry::REMOTE_IRR) == 0 {
            // Only fixed and lowest-priority interrupts are EOI'd; for the others remote
            // IRR would never clear.
            if matches!(
                DeliveryMode::from_bits(e >> 8),
                DeliveryMode::Fixed | DeliveryMode::LowestPriority
            ) {
                self.redirection[n] |= entry::REMOTE_IRR;
            }
            self.send(n);
        }
    }

    fn send(&mut self, n: usize) {
        let e = self.redirection[n];
        let message = InterruptMessage {
            vector: e as u8,
            mode: DeliveryMode::from_bits(e >> 8),
            logical: e & entry::LOGICAL != 0,
            dest: (e >> 56) as u32,
            level: e & entry::LEVEL != 0,
        };
        (self.router)(&message);
    }

    fn read_register(&self, index: u8) -> u32 {
        match index {
            0x00 => (self.id as u32) << 24,
            0x01 => VERSION,
            0x02 => (self.id as u32) << 24,
            0x10..=0x3f => {
                let e = self.redirection[(index as usize - 0x10) / 2];
                if index & 1 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    fn write_register(&mut self, index: u8, value: u32) {
        match index {
            0x00 => self.id = (value >> 24) as u8 & 0xf,
            0x10..=0x3f => {
                let n = (index as usize - 0x10) / 2;
                let old = self.redirection[n];
                let merged = if index & 1 == 0 {
                    (old & !0xffff_ffff) | value as u64
                } else {
                    (old & 0xffff_ffff) | (value as u64) << 32
                };
                let mut e = (merged & entry::WRITABLE) | (old & entry::REMOTE_IRR);
                if e & entry::LEVEL == 0 {
                    e &= !entry::REMOTE_IRR; // edge-triggered entries have no remote IRR
                }
                self.redirection[n] = e;
                if e & entry::LEVEL != 0 {
                    // Unmasked while asserted: the level is seen now.
                    self.deliver_level(n);
                }
            }
            _ => {}
        }
    }
}

impl BusDevice for IoApic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let value = match offset & !3 {
            IOREGSEL => self.select as u32,
            IOWIN => self.read_register(self.select),
            _ => return,
        };
        let byte = (offset & 3) as usize;
        let bytes = value.to_le_bytes();
        let n = data.len().min(4 - byte);
        data[..n].copy_from_slice(&bytes[byte..byte + n]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            IOREGSEL if !data.is_empty() => self.select = data[0],
            // IOWIN takes whole dwords.
            IOWIN if data.len() >= 4 => {
                let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.write_register(self.select, value);
            }
            _ => {}
        }
    }
}

/// One IOAPIC input pin (see [`IoApic::pin`]).
struct Pin {
    ioapic: Arc<Mutex<IoApic>>,
    n: usize,
}

impl IrqLine for Pin {
    fn set_level(&self, high: bool) {
        self.ioapic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_pin(self.n, high);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Sent = Arc<Mutex<Vec<InterruptMessage>>>;

    fn ioapic() -> (Arc<Mutex<IoApic>>, Sent) {
        let sent: Sent = Arc::default();
        let s = sent.clone();
        let io = IoApic::new(1, Box::new(move |m| s.lock().unwrap().push(*m)));
        (Arc::new(Mutex::new(io)), sent)
    }

    fn write(io: &Arc<Mutex<IoApic>>, index: u8, value: u32) {
        let mut io = io.lock().unwrap();
        io.write(IOREGSEL, &[index]);
        io.write(IOWIN, &value.to_le_bytes());
    }

    fn read(io: &Arc<Mutex<IoApic>>, index: u8) -> u32 {
        let mut io = io.lock().unwrap();
        io.write(IOREGSEL, &[index]);
        let mut b = [0u8; 4];
        io.read(IOWIN, &mut b);
        u32::from_le_bytes(b)
    }

    fn vectors(sent: &Sent) -> Vec<u8> {
        sent.lock().unwrap().iter().map(|m| m.vector).collect()
    }

    #[test]
    fn identification_registers_and_entries_read_back() {
        let (io, _) = ioapic();
        assert_eq!(read(&io, 0), 1 << 24);
        assert_eq!(read(&io, 1), 0x0017_0011);
        assert_eq!(read(&io, 2), 1 << 24);
        write(&io, 0, 0x0f00_0000);
        assert_eq!(read(&io, 0), 0x0f00_0000);
        assert_eq!(read(&io, 0x10), 1 << 16, "entries start masked");
        write(&io, 0x12, 0xffff_ffff);
        write(&io, 0x13, 0xffff_ffff);
        assert_eq!(
            read(&io, 0x12),
            0x0001_afff,
            "delivery status and remote IRR are read-only"
        );
        assert_eq!(read(&io, 0x13), 0xff00_0000);
        let mut sel = [0u8; 1];
        io.lock().unwrap().read(IOREGSEL, &mut sel);
        assert_eq!(sel[0], 0x13);
    }

    #[test]
    fn edge_pins_deliver_on_rising_edges_and_masked_edges_are_lost() {
        let (io, sent) = ioapic();
        let pin = IoApic::pin(&io, 2);
        write(&io, 0x14, 0x30 | 1 << 16);
        pin.pulse();
        assert!(vectors(&sent).is_empty());
        write(&io, 0x15, 3 << 24);
        write(&io, 0x14, 0x30);
        assert!(vectors(&sent).is_empty(), "the masked edge was not kept");
        pin.pulse();
        pin.set_level(true);
        pin.set_level(true); // no new edge
        pin.set_level(false);
        assert_eq!(vectors(&sent), vec![0x30, 0x30]);
        let m = sent.lock().unwrap()[0];
        assert_eq!(m.dest, 3);
        assert!(!m.level && !m.logical);
        assert_eq!(m.mode, DeliveryMode::Fixed);
    }

    #[test]
    fn level_pins_deliver_once_per_eoi_while_asserted() {
        let (io, sent) = ioapic();
        let pin = IoApic::pin(&io, 9);
        let low = 0x10 + 2 * 9;
        write(&io, low, 0x41 | 1 << 15 | 1 << 13);
        pin.set_level(true);
        assert_eq!(vectors(&sent), vec![0x41]);
        assert_ne!(read(&io, low) & (1 << 14), 0, "remote IRR");
        assert!(sent.lock().unwrap()[0].level);
        pin.set_level(true);
        io.lock().unwrap().end_of_interrupt(0x42); // someone else's vector
        assert_eq!(vectors(&sent).len(), 1, "held until its EOI");
        io.lock().unwrap().end_of_interrupt(0x41);
        assert_eq!(vectors(&sent).len(), 2, "still asserted: delivered again");
        pin.set_level(false);
        io.lock().unwrap().end_of_interrupt(0x41);
        assert_eq!(read(&io, low) & (1 << 14), 0);
        assert_eq!(vectors(&sent).len(), 2);
        // Masked while asserted, then unmasked: delivered at the unmask.
        write(&io, low, 0x41 | 1 << 15 | 1 << 16);
        pin.set_level(true);
        assert_eq!(vectors(&sent).len(), 2);
        write(&io, low, 0x41 | 1 << 15);
        assert_eq!(vectors(&sent).len(), 3);
        // Switching to edge clears remote IRR.
        write(&io, low, 0x41);
        assert_eq!(read(&io, low) & (1 << 14), 0);
    }

    #[test]
    fn nmi_entries_do_not_latch_remote_irr() {
        let (io, sent) = ioapic();
        let pin = IoApic::pin(&io, 5);
        write(&io, 0x10 + 10, 4 << 8 | 1 << 15);
        pin.set_level(true);
        pin.set_level(false);
        pin.set_level(true);
        assert_eq!(sent.lock().unwrap().len(), 2);
        assert_eq!(sent.lock().unwrap()[0].mode, DeliveryMode::Nmi);
    }

    #[test]
    fn routes_through_local_apics_with_eoi_back() {
        use crate::lapic::{route, CpuSignal, LocalApic};
        use emu_mmu::clock::VirtualClock;
        struct Quiet;
        impl CpuSignal for Quiet {
            fn interrupt(&self) {}
            fn nmi(&self) {}
            fn init(&self) {}
            fn startup(&self, _: u8) {}
        }
        let lapic = Arc::new(Mutex::new(LocalApic::new(
            0,
            true,
            VirtualClock::manual(),
            Arc::new(Quiet),
        )));
        lapic.lock().unwrap().write(0xf0, &0x1ffu32.to_le_bytes());
        let inputs = vec![lapic.lock().unwrap().input()];
        let io = Arc::new(Mutex::new(IoApic::new(
            1,
            Box::new(move |m| route(&inputs, m)),
        )));
        let io2 = io.clone();
        lapic
            .lock()
            .unwrap()
            .set_eoi_broadcast(Box::new(move |v| io2.lock().unwrap().end_of_interrupt(v)));
        let pin = IoApic::pin(&io, 4);
        write(&io, 0x18, 0x50 | 1 << 15);
        write(&io, 0x19, 0); // physical destination: APIC 0
        pin.set_level(true);
        let mut apic = lapic.lock().unwrap();
        assert_eq!(apic.acknowledge(), Some(0x50));
        apic.eoi(); // broadcast: the IOAPIC re-delivers the still-asserted line
        assert_eq!(apic.acknowledge(), Some(0x50));
        drop(apic);
        pin.set_level(false);
        lapic.lock().unwrap().eoi();
        assert_eq!(lapic.lock().unwrap().acknowledge(), None);
        // A destination that is not APIC 0 reaches nobody.
        write(&io, 0x19, 5 << 24);
        pin.set_level(true);
        assert_eq!(lapic.lock().unwrap().acknowledge(), None);
    }
}
