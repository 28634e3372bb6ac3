//! The PC's pair of 8259A programmable interrupt controllers.
//!
//! The master answers at I/O 0x20/0x21, the slave at 0xA0/0xA1 and is cascaded on the
//! master's IRQ2; the edge/level control registers (ELCR) are at 0x4D0/0x4D1. The pair is
//! one [`PicPair`] that implements [`PortIo`]: map a [`PortWindow`](crate::ports::PortWindow)
//! for each of [`PicPair::PORT_RANGES`].
//!
//! Wiring: devices drive ISA IRQ 0..15 through [`PicPair::set_irq`]; the pair drives one
//! output, INTR, as a level (high while the master has an interrupt to deliver). When the
//! CPU takes the interrupt (an ExtINT delivery through the local APIC's LINT0, or INTR with
//! the APIC off) it calls [`PicPair::acknowledge`], the INTA cycle, which returns the vector.
//!
//! Implemented: ICW1..ICW4 initialisation (single/cascade, ICW4 or not), OCW1 (IMR), OCW2
//! (non-specific/specific EOI, rotations, set priority), OCW3 (read IRR/ISR, poll, special
//! mask), auto-EOI (with rotation), special fully nested mode, edge/level per ELCR (or ICW1
//! LTIM). Not modelled: the 8080/85 call mode and buffered mode (accepted, ignored).

use std::sync::Arc;

use crate::irq::IrqLine;
use crate::ports::PortIo;

/// The master's IRQ the slave is cascaded on.
const CASCADE_IRQ: u8 = 2;

/// One 8259A.
#[derive(Debug, Default, Clone)]
struct Chip {
    /// Interrupt request register.
    irr: u8,
    /// In-service register.
    isr: u8,
    /// Interrupt mask register (OCW1).
    imr: u8,
    /// Last input levels, to find rising edges.
    levels: u8,
    /// Edge/level control (ELCR): 1 = level-triggered.
    elcr: u8,
    /// Bits of `elcr` the guest may change.
    elcr_mask: u8,
    /// ICW1 bit 3: every input level-triggered.
    ltim: bool,
    /// Vector of IRQ 0 (ICW2, low three bits zero).
    vector_base: u8,
    /// The IRQ with the highest priority is `priority_add` (rotation).
    priority_add: u8,
    /// Which initialisation word comes next: 0 = initialised (OCWs), 2..=4 = ICW2..ICW4.
    init_step: u8,
    /// ICW1 bit 0: an ICW4 follows.
    icw4_needed: bool,
    /// ICW1 bit 1: no cascade, so no ICW3.
    single: bool,
    auto_eoi: bool,
    rotate_on_auto_eoi: bool,
    special_fully_nested: bool,
    special_mask: bool,
    /// OCW3 RR/RIS: reads of the command port return ISR (true) or IRR.
    read_isr: bool,
    /// OCW3 poll: the next command-port read is a poll.
    poll: bool,
    /// This is the master (for the special fully nested mode's cascade rule).
    is_master: bool,
}

impl Chip {
    fn new(is_master: bool, elcr_mask: u8) -> Self {
        Chip {
            is_master,
            elcr_mask,
            ..Chip::default()
        }
    }

    fn level_triggered(&self, irq: u8) -> bool {
        self.ltim || self.elcr & (1 << irq) != 0
    }

    /// Drives input `irq` (0..7).
    fn set_input(&mut self, irq: u8, high: bool) {
        let bit = 1u8 << irq;
        if self.level_triggered(irq) {
            if high {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if high && self.levels & bit == 0 {
            // Edge requests latch: devices signal them with IrqLine::pulse, which drops
            // the line again at once, so the request must outlive the input level.
            self.irr |= bit;
        }
        if high {
            self.levels |= bit;
        } else {
            self.levels &= !bit;
        }
    }

    /// The priority rank (0 = highest) of the highest-priority bit in `mask`.
    fn best_rank(&self, mask: u8) -> Option<u8> {
        (0..8).find(|&rank| mask & (1 << ((rank + self.priority_add) & 7)) != 0)
    }

    /// The IRQ this chip would deliver now, if any: the highest-priority unmasked request
    /// of higher priority than everything in service.
    fn pending(&self) -> Option<u8> {
        let rank = self.best_rank(self.irr & !self.imr)?;
        let mut in_service = self.isr;
        if self.special_mask {
            // Special mask mode: masked levels do not block lower-priority ones.
            in_service &= !self.imr;
        }
        if self.special_fully_nested && self.is_master {
            // A second slave interrupt of higher priority may come through while the
            // cascade input is in service.
            in_service &= !(1 << CASCADE_IRQ);
        }
        let blocking = self.best_rank(in_service).unwrap_or(8);
        (rank < blocking).then_some((rank + self.priority_add) & 7)
    }

    /// The INTA cycle for `irq`: it goes in service (or, in auto-EOI mode, is ended at
    /// once) and an edge request is consumed.
    fn ack(&mut self, irq: u8) {
        let bit = 1u8 << irq;
        if !self.level_triggered(irq) {
            self.irr &= !bit;
        }
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.priority_add = (irq + 1) & 7;
            }
        } else {
            self.isr |= bit;
        }
    }

    /// Clears the highest-priority in-service bit; returns it.
    fn non_specific_eoi(&mut self) -> Option<u8> {
        let rank = self.best_rank(self.isr)?;
        let irq = (rank + self.priority_add) & 7;
        self.isr &= !(1 << irq);
        Some(irq)
    }

    fn write_command(&mut self, value: u8) {
        if value & 0x10 != 0 {
            // ICW1: start initialisation.
            self.icw4_needed = value & 0x01 != 0;
            self.single = value & 0x02 != 0;
            self.ltim = value & 0x08 != 0;
            self.init_step = 2;
            self.imr = 0;
            self.isr = 0;
            // Edge-sensitive requests are cleared; level inputs re-request if still high.
            self.irr &= self.levels;
            if !self.ltim {
                self.irr &= self.elcr;
            }
            self.priority_add = 0;
            self.special_mask = false;
            self.read_isr = false;
            self.poll = false;
            self.auto_eoi = false;
            self.rotate_on_auto_eoi = false;
            self.special_fully_nested = false;
        } else if value & 0x08 != 0 {
            // OCW3.
            if value & 0x04 != 0 {
                self.poll = true;
            }
            if value & 0x02 != 0 {
                self.read_isr = value & 0x01 != 0;
            }
            if value & 0x40 != 0 {
                self.special_mask = value & 0x20 != 0;
            }
        } else {
            // OCW2: bits 7:5 are R, SL, EOI; bits 2:0 the level for SL.
            let level = value & 7;
            match value >> 5 {
                0b001 => {
                    self.non_specific_eoi();
                }
                0b011 => self.isr &= !(1 << level),
                0b101 => {
                    if let Some(irq) = self.non_specific_eoi() {
                        self.priority_add = (irq + 1) & 7;
                    }
                }
                0b111 => {
                    self.isr &= !(1 << level);
                    self.priority_add = (level + 1) & 7;
                }
                0b110 => self.priority_add = (level + 1) & 7,
                0b100 => self.rotate_on_auto_eoi = true,
                0b000 => self.rotate_on_auto_eoi = false,
                _ => {} // 0b010: no operation
            }
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.init_step {
            2 => {
                self.vector_base = value & 0xF8;
                self.init_step = if !self.single {
                    3
                } else if self.icw4_needed {
                    4
                } else {
                    0
                };
            }
            3 => {
                // ICW3: the cascade wiring is fixed on a PC, so only the sequencing counts.
                self.init_step = if self.icw4_needed { 4 } else { 0 };
            }
            4 => {
                self.auto_eoi = value & 0x02 != 0;
                self.special_fully_nested = value & 0x10 != 0;
                self.init_step = 0;
            }
            _ => self.imr = value,
        }
    }

    /// A poll (OCW3 P) read: like an INTA, returns 0x80 | irq, or 0 if nothing is pending.
    fn poll_read(&mut self) -> u8 {
        self.poll = false;
        match self.pending() {
            Some(irq) => {
                self.ack(irq);
                0x80 | irq
            }
            None => 0,
        }
    }

    fn read_command(&self) -> u8 {
        if self.read_isr {
            self.isr
        } else {
            self.irr
        }
    }
}

/// The cascaded master/slave 8259A pair of a PC.
pub struct PicPair {
    master: Chip,
    slave: Chip,
    intr: Arc<dyn IrqLine>,
    intr_level: bool,
}

impl PicPair {
    /// The I/O ranges to map (base, length): master, slave, ELCR.
    pub const PORT_RANGES: &'static [(u16, u16)] = &[(0x20, 2), (0xA0, 2), (0x4D0, 2)];

    /// A pair in its power-on state (uninitialised, all unmasked, as after ICW1) driving
    /// `intr`, the CPU's INTR input (or the local APIC's LINT0).
    pub fn new(intr: Arc<dyn IrqLine>) -> Self {
        PicPair {
            // IRQ 0, 1, 2 (timer, keyboard, cascade) and 8, 13 (RTC, FPU) are always
            // edge-triggered on a PC; their ELCR bits are read-only zero.
            master: Chip::new(true, 0xF8),
            slave: Chip::new(false, 0xDE),
            intr,
            intr_level: false,
        }
    }

    /// Drives ISA IRQ `irq` (0..15; others are ignored). IRQ 2 is the cascade and cannot be
    /// driven from outside; on a PC IRQ 9 answers for it.
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        match irq {
            0..=7 if irq != CASCADE_IRQ => self.master.set_input(irq, level),
            8..=15 => self.slave.set_input(irq - 8, level),
            _ => return,
        }
        self.update();
    }

    /// Whether INTR is asserted (the master has an interrupt for the CPU).
    pub fn intr_pending(&self) -> bool {
        self.intr_level
    }

    /// The interrupt-acknowledge cycle: returns the vector of the highest-priority pending
    /// interrupt and puts it in service, or `None` if nothing is pending (INTR went away
    /// before the CPU took it; the CPU then delivers nothing).
    pub fn acknowledge(&mut self) -> Option<u8> {
        let irq = self.master.pending()?;
        self.master.ack(irq);
        let vector = if irq == CASCADE_IRQ && !self.master.single {
            // The slave supplies the vector. A request that vanished between the
            // master's and the slave's INTA reads as the slave's spurious IRQ 7.
            match self.slave.pending() {
                Some(s) => {
                    self.slave.ack(s);
                    self.slave.vector_base | s
                }
                None => self.slave.vector_base | 7,
            }
        } else {
            self.master.vector_base | irq
        };
        self.update();
        Some(vector)
    }

    /// Propagates the slave's output to the master's cascade input and the master's to
    /// INTR.
    fn update(&mut self) {
        // The cascade input is followed as a level: the slave's INT stays up until its
        // INTA, and treating it as a level spares re-arming an edge after every EOI.
        let slave_out = self.slave.pending().is_some();
        let bit = 1 << CASCADE_IRQ;
        if slave_out {
            self.master.irr |= bit;
        } else {
            self.master.irr &= !bit;
        }
        let level = self.master.pending().is_some();
        if level != self.intr_level {
            self.intr_level = level;
            self.intr.set_level(level);
        }
    }

    fn read8(&mut self, port: u16) -> u8 {
        match port {
            0x20 | 0xA0 => {
                let master = port == 0x20;
                let chip = if master {
                    &mut self.master
                } else {
                    &mut self.slave
                };
                if !chip.poll {
                    return chip.read_command();
                }
                if master {
                    let v = self.master.poll_read();
                    if v == 0x80 | CASCADE_IRQ {
                        // Polling the cascade acknowledges the slave too, as an INTA would.
                        if let Some(s) = self.slave.pending() {
                            self.slave.ack(s);
                        }
                    }
                    v
                } else {
                    let v = self.slave.poll_read();
                    if v != 0 {
                        // The master's cascade input goes in service with the slave's.
                        self.master.ack(CASCADE_IRQ);
                    }
                    v
                }
            }
            0x21 => self.master.imr,
            0xA1 => self.slave.imr,
            0x4D0 => self.master.elcr,
            0x4D1 => self.slave.elcr,
            _ => 0xFF,
        }
    }

    fn write8(&mut self, port: u16, value: u8) {
        match port {
            0x20 => self.master.write_command(value),
            0x21 => self.master.write_data(value),
            0xA0 => self.slave.write_command(value),
            0xA1 => self.slave.write_data(value),
            0x4D0 => self.master.elcr = value & self.master.elcr_mask,
            0x4D1 => self.slave.elcr = value & self.slave.elcr_mask,
            _ => {}
        }
    }
}

impl PortIo for PicPair {
    fn port_read(&mut self, port: u16, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.read8(port.wrapping_add(i as u16));
        }
        self.update();
    }

    fn port_write(&mut self, port: u16, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            self.write8(port.wrapping_add(i as u16), b);
        }
        self.update();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::RecordingLine;
    use crate::ports::PortWindow;
    use emu_mmu::BusDevice;
    use std::sync::Mutex;

    fn out(p: &mut PicPair, port: u16, v: u8) {
        p.port_write(port, &[v]);
    }

    fn inb(p: &mut PicPair, port: u16) -> u8 {
        let mut b = [0];
        p.port_read(port, &mut b);
        b[0]
    }

    /// Linux's init_8259A: vectors 0x30 and 0x38, cascade on IRQ2, 8086 mode.
    fn linux_init(p: &mut PicPair, auto_eoi: bool) {
        out(p, 0x21, 0xFF);
        out(p, 0xA1, 0xFF);
        out(p, 0x20, 0x11);
        out(p, 0x21, 0x30);
        out(p, 0x21, 0x04);
        out(p, 0x21, if auto_eoi { 0x03 } else { 0x01 });
        out(p, 0xA0, 0x11);
        out(p, 0xA1, 0x38);
        out(p, 0xA1, 0x02);
        out(p, 0xA1, 0x01);
        out(p, 0x21, 0x00);
        out(p, 0xA1, 0x00);
    }

    fn pic() -> (PicPair, Arc<RecordingLine>) {
        let line = Arc::new(RecordingLine::default());
        (PicPair::new(line.clone()), line)
    }

    #[test]
    fn linux_probe_reads_back_the_mask() {
        let (mut p, _) = pic();
        out(&mut p, 0xA1, 0xFF);
        out(&mut p, 0x21, 0xFB);
        assert_eq!(inb(&mut p, 0x21), 0xFB);
        assert_eq!(inb(&mut p, 0xA1), 0xFF);
    }

    #[test]
    fn init_sequence_sets_vectors_and_delivers() {
        let (mut p, line) = pic();
        linux_init(&mut p, false);
        assert!(!line.level());
        p.set_irq(1, true);
        assert!(line.level());
        assert_eq!(p.acknowledge(), Some(0x31));
        assert!(!line.level(), "in service");
        assert_eq!(p.acknowledge(), None);
        out(&mut p, 0x20, 0x0B); // OCW3: read ISR
        assert_eq!(inb(&mut p, 0x20), 0x02);
        out(&mut p, 0x20, 0x0A); // read IRR
        assert_eq!(inb(&mut p, 0x20), 0x00, "edge request consumed");
        out(&mut p, 0x20, 0x20); // EOI
        out(&mut p, 0x20, 0x0B);
        assert_eq!(inb(&mut p, 0x20), 0x00);
    }

    #[test]
    fn masking_holds_requests_back() {
        let (mut p, line) = pic();
        linux_init(&mut p, false);
        out(&mut p, 0x21, 0x01);
        p.set_irq(0, true);
        assert!(!line.level());
        out(&mut p, 0x20, 0x0A);
        assert_eq!(inb(&mut p, 0x20), 0x01, "requested but masked");
        out(&mut p, 0x21, 0x00);
        assert!(line.level());
        assert_eq!(p.acknowledge(), Some(0x30));
    }

    #[test]
    fn priority_and_nesting() {
        let (mut p, line) = pic();
        linux_init(&mut p, false);
        p.set_irq(5, true);
        p.set_irq(3, true);
        assert_eq!(p.acknowledge(), Some(0x33), "lower number first");
        assert!(!line.level(), "IRQ5 waits for IRQ3's EOI");
        p.set_irq(1, true);
        assert!(line.level(), "but a higher priority nests");
        assert_eq!(p.acknowledge(), Some(0x31));
        out(&mut p, 0x20, 0x20); // ends IRQ1 (highest in service)
        assert!(!line.level());
        out(&mut p, 0x20, 0x63); // specific EOI for IRQ3
        assert_eq!(p.acknowledge(), Some(0x35));
        // Rotation: after "rotate on non-specific EOI" of IRQ5, IRQ6 has top priority.
        out(&mut p, 0x20, 0xA0);
        p.set_irq(4, true);
        p.set_irq(6, true);
        assert_eq!(p.acknowledge(), Some(0x36));
    }

    #[test]
    fn cascade_delivers_slave_vectors() {
        let (mut p, line) = pic();
        linux_init(&mut p, false);
        p.set_irq(12, true);
        assert!(line.level());
        assert_eq!(p.acknowledge(), Some(0x3C));
        out(&mut p, 0xA0, 0x0B);
        assert_eq!(inb(&mut p, 0xA0), 0x10);
        out(&mut p, 0x20, 0x0B);
        assert_eq!(inb(&mut p, 0x20), 0x04, "cascade input in service");
        // A second slave request waits for the master's EOI of the cascade.
        p.set_irq(8, true);
        assert!(!line.level());
        out(&mut p, 0xA0, 0x20);
        out(&mut p, 0x20, 0x20);
        assert!(line.level());
        assert_eq!(p.acknowledge(), Some(0x38));
        // Masking IRQ2 on the master hides the whole slave.
        out(&mut p, 0xA0, 0x20);
        out(&mut p, 0x20, 0x20);
        out(&mut p, 0x21, 0x04);
        p.set_irq(9, true);
        assert!(!line.level());
        out(&mut p, 0x21, 0x00);
        assert_eq!(p.acknowledge(), Some(0x39));
    }

    #[test]
    fn auto_eoi_leaves_nothing_in_service() {
        let (mut p, line) = pic();
        linux_init(&mut p, true);
        p.set_irq(4, true);
        assert_eq!(p.acknowledge(), Some(0x34));
        out(&mut p, 0x20, 0x0B);
        assert_eq!(inb(&mut p, 0x20), 0);
        p.set_irq(4, false);
        p.set_irq(4, true);
        assert!(line.level(), "a new edge is delivered without any EOI");
    }

    #[test]
    fn level_triggered_inputs_follow_elcr() {
        let (mut p, line) = pic();
        linux_init(&mut p, false);
        out(&mut p, 0x4D0, 0xFF);
        out(&mut p, 0x4D1, 0xFF);
        assert_eq!((inb(&mut p, 0x4D0), inb(&mut p, 0x4D1)), (0xF8, 0xDE));
        p.set_irq(9, true);
        assert_eq!(p.acknowledge(), Some(0x39));
        out(&mut p, 0xA0, 0x20);
        out(&mut p, 0x20, 0x20);
        assert!(line.level(), "still high: requested again after EOI");
        p.set_irq(9, false);
        assert!(!line.level());
        // An edge input (IRQ1 is always edge) held high is delivered once.
        p.set_irq(1, true);
        assert_eq!(p.acknowledge(), Some(0x31));
        out(&mut p, 0x20, 0x20);
        assert!(!line.level());
    }

    #[test]
    fn poll_mode_acts_as_an_acknowledge() {
        let (mut p, _) = pic();
        linux_init(&mut p, false);
        out(&mut p, 0x20, 0x0C);
        assert_eq!(inb(&mut p, 0x20), 0, "nothing pending");
        p.set_irq(6, true);
        out(&mut p, 0x20, 0x0C);
        assert_eq!(inb(&mut p, 0x20), 0x86);
        out(&mut p, 0x20, 0x0B);
        assert_eq!(inb(&mut p, 0x20), 0x40);
    }

    #[test]
    fn special_mask_mode_lets_lower_priorities_through() {
        let (mut p, line) = pic();
        linux_init(&mut p, false);
        p.set_irq(1, true);
        assert_eq!(p.acknowledge(), Some(0x31));
        p.set_irq(5, true);
        assert!(!line.level());
        out(&mut p, 0x21, 0x02); // mask the one in service
        out(&mut p, 0x20, 0x68); // set special mask
        assert!(line.level());
        out(&mut p, 0x20, 0x48); // clear special mask
        assert!(!line.level());
    }

    #[test]
    fn windows_map_the_three_ranges() {
        let (p, line) = pic();
        let p = Arc::new(Mutex::new(p));
        let mut master = PortWindow::new(p.clone(), 0x20);
        let mut slave = PortWindow::new(p.clone(), 0xA0);
        for (w, v) in [
            (&mut master, [0x11, 0x20, 4, 1]),
            (&mut slave, [0x11, 0x28, 2, 1]),
        ] {
            w.write(0, &v[..1]);
            for b in &v[1..] {
                w.write(1, &[*b]);
            }
        }
        p.lock().unwrap().set_irq(14, true);
        assert!(line.level());
        assert_eq!(p.lock().unwrap().acknowledge(), Some(0x2E));
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = crate::ports::test_util::Rng(0x8259);
        let (mut p, _) = pic();
        for _ in 0..20_000 {
            let port =
                [0x20u16, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1, 0x22, 0xFFFF][(rng.next() % 8) as usize];
            let w = rng.width();
            match rng.next() % 4 {
                0 => p.set_irq(rng.next() as u8, rng.next() & 1 != 0),
                1 => {
                    p.acknowledge();
                }
                2 => p.port_read(port, &mut vec![0; w]),
                _ => p.port_write(port, &rng.bytes(w)),
            }
        }
    }
}
