//! The i8042 keyboard controller (I/O 0x60 data, 0x64 status/command) with an AT keyboard
//! behind it, and port 0x92 (System Control Port A: fast reset and A20).
//!
//! Enough for Linux's i8042 and atkbd drivers to probe cleanly and quickly and for the
//! machine to be reset through it:
//! - controller commands: read/write the command byte (0x20/0x60) and internal RAM,
//!   self-test (0xAA → 0x55), keyboard interface test (0xAB → 0x00), enable/disable the
//!   keyboard (0xAE/0xAD) and auxiliary port (0xA8/0xA7), the output port (0xD0/0xD1), writes
//!   into the output buffer (0xD2), A20 (0xDD/0xDF), and the pulse-output commands
//!   0xF0..0xFF, of which those pulsing bit 0 (0xFE is the classic one) reset the machine;
//! - a keyboard answering reset (0xFF → ACK, 0xAA), identify (0xF2 → ACK, 0xAB, 0x41 when
//!   translating or 0x83), echo, LEDs, typematic rate, scan code set, enable/disable;
//! - no auxiliary (mouse) device. The AUX loop-back command (0xD3) answers at once but as
//!   keyboard data, and the AUX interface test (0xA9) reports "clock line stuck low"
//!   (0x01), which is how Linux decides there is no AUX port without waiting for time-outs.
//!
//! IRQ 1 is driven as on the board: high while the output buffer holds keyboard data and
//! the command byte enables the keyboard interrupt; each new byte reaching the buffer is a
//! new rising edge. Host key presses can be fed with [`I8042::enqueue_scancodes`].

use std::collections::VecDeque;
use std::sync::Arc;

use crate::irq::IrqLine;
use crate::legacy::Signal;
use crate::ports::PortIo;

// Status register bits.
const STS_OBF: u8 = 0x01;
const STS_SYS: u8 = 0x04;
const STS_CMD: u8 = 0x08;
const STS_UNLOCKED: u8 = 0x10;

// Command byte bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYS: u8 = 0x04;
const CTR_KBD_DISABLE: u8 = 0x10;
const CTR_AUX_DISABLE: u8 = 0x20;
const CTR_XLATE: u8 = 0x40;

// Keyboard responses.
const KBD_ACK: u8 = 0xFA;
const KBD_BAT_OK: u8 = 0xAA;

/// Most bytes the output queue holds (a keyboard's buffer is about this size).
const QUEUE_LEN: usize = 64;

/// What the next byte written to port 0x60 is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataTarget {
    Keyboard,
    /// The parameter of a controller command (0x60..0x7F, 0xD1..0xD4).
    ControllerParam(u8),
    /// The parameter of a keyboard command (0xED, 0xF0, 0xF3).
    KeyboardParam(u8),
}

/// The i8042 controller, its keyboard, and port 0x92.
pub struct I8042 {
    /// Internal RAM; byte 0 is the command byte.
    ram: [u8; 32],
    /// The output buffer (`Some` while OBF is set) and bytes waiting behind it.
    output: Option<u8>,
    queue: VecDeque<u8>,
    /// The value returned when reading an empty buffer (the last byte read).
    last_read: u8,
    /// Status bit 3: the last write went to the command port.
    last_was_command: bool,
    self_tested: bool,
    target: DataTarget,
    scan_set: u8,
    /// Port 0x92 bit 1 and output-port bit 1 (the A20 gate; tracked, not enforced).
    a20: bool,
    irq_level: bool,
    irq1: Arc<dyn IrqLine>,
    reset: Signal,
}

impl I8042 {
    /// The I/O ranges to map with a [`PortWindow`](crate::ports::PortWindow) each.
    pub const PORT_RANGES: &'static [(u16, u16)] = &[(0x60, 1), (0x64, 1), (0x92, 1)];

    /// A controller driving `irq1` (ISA IRQ 1) that calls `reset` when the guest pulses the
    /// reset line (command 0xFE, output-port bit 0 cleared, or port 0x92 bit 0 set).
    pub fn new(irq1: Arc<dyn IrqLine>, reset: Signal) -> Self {
        let mut ram = [0u8; 32];
        // Keyboard interrupt on, translation on, AUX disabled: what firmware leaves.
        ram[0] = CTR_KBD_INT | CTR_SYS | CTR_AUX_DISABLE | CTR_XLATE;
        I8042 {
            ram,
            output: None,
            queue: VecDeque::new(),
            last_read: 0,
            last_was_command: false,
            self_tested: true,
            target: DataTarget::Keyboard,
            scan_set: 2,
            a20: true,
            irq_level: false,
            irq1,
            reset,
        }
    }

    /// Queues scan codes from the host keyboard (in the guest-visible set: set 1 while the
    /// controller translates, as it does by default). Dropped while the keyboard is
    /// disabled or the queue is full. Returns how many bytes were taken.
    pub fn enqueue_scancodes(&mut self, codes: &[u8]) -> usize {
        if self.ram[0] & CTR_KBD_DISABLE != 0 {
            return 0;
        }
        let room = QUEUE_LEN.saturating_sub(self.queue.len() + self.output.is_some() as usize);
        let n = codes.len().min(room);
        for &c in &codes[..n] {
            self.push(c);
        }
        self.update_irq();
        n
    }

    /// Whether the A20 gate is open (tracked for completeness; memory is not wrapped).
    pub fn a20_enabled(&self) -> bool {
        self.a20
    }

    fn push(&mut self, byte: u8) {
        if self.output.is_none() {
            self.output = Some(byte);
        } else if self.queue.len() < QUEUE_LEN {
            self.queue.push_back(byte);
        }
    }

    fn update_irq(&mut self) {
        let level = self.output.is_some() && self.ram[0] & CTR_KBD_INT != 0;
        if level != self.irq_level {
            self.irq_level = level;
            self.irq1.set_level(level);
        }
    }

    fn status(&self) -> u8 {
        let mut s = STS_UNLOCKED;
        if self.output.is_some() {
            s |= STS_OBF;
        }
        if self.self_tested || self.ram[0] & CTR_SYS != 0 {
            s |= STS_SYS;
        }
        if self.last_was_command {
            s |= STS_CMD;
        }
        s
    }

    fn read_data(&mut self) -> u8 {
        if let Some(b) = self.output.take() {
            self.last_read = b;
            // The line drops with OBF; the next byte raises it again, a fresh edge.
            self.update_irq();
            if let Some(next) = self.queue.pop_front() {
                self.output = Some(next);
            }
        }
        self.last_read
    }

    fn output_port(&self) -> u8 {
        // Bit 0: not in reset; bit 1: A20; bit 4: output buffer full (keyboard).
        0x01 | (self.a20 as u8) << 1 | (self.output.is_some() as u8) << 4
    }

    fn command(&mut self, cmd: u8) {
        match cmd {
            0x20..=0x3F => {
                let v = self.ram[(cmd & 0x1F) as usize];
                self.push(v);
            }
            0x60..=0x7F | 0xD1..=0xD4 => self.target = DataTarget::ControllerParam(cmd),
            0xA7 => self.ram[0] |= CTR_AUX_DISABLE,
            0xA8 => self.ram[0] &= !CTR_AUX_DISABLE,
            0xA9 => self.push(0x01),
            0xAA => {
                self.self_tested = true;
                self.push(0x55);
            }
            0xAB => self.push(0x00),
            0xAD => self.ram[0] |= CTR_KBD_DISABLE,
            0xAE => self.ram[0] &= !CTR_KBD_DISABLE,
            0xC0 => self.push(0x00),
            0xD0 => {
                let v = self.output_port();
                self.push(v);
            }
            0xDD => self.a20 = false,
            0xDF => self.a20 = true,
            // Pulse output lines for ~6 us: a 0 in bit 0 pulses the CPU reset line.
            0xF0..=0xFF if cmd & 1 == 0 => (self.reset)(),
            _ => {}
        }
    }

    fn controller_param(&mut self, cmd: u8, value: u8) {
        match cmd {
            0x60..=0x7F => self.ram[(cmd & 0x1F) as usize] = value,
            0xD1 => {
                self.a20 = value & 0x02 != 0;
                if value & 0x01 == 0 {
                    (self.reset)();
                }
            }
            0xD2 => self.push(value),
            // AUX loop-back answered as keyboard data: "no AUX port" (see the module docs).
            0xD3 => self.push(value),
            // Bytes for the absent AUX device go nowhere.
            _ => {}
        }
    }

    fn keyboard_write(&mut self, value: u8) {
        // Any write to the keyboard enables its interface (as on real controllers).
        self.ram[0] &= !CTR_KBD_DISABLE;
        if let DataTarget::KeyboardParam(cmd) = self.target {
            self.target = DataTarget::Keyboard;
            self.push(KBD_ACK);
            if cmd == 0xF0 {
                if value == 0 {
                    let set = if self.ram[0] & CTR_XLATE != 0 {
                        // The controller translates this answer too (2 -> 0x41, etc.).
                        [0x43, 0x41, 0x3F][(self.scan_set as usize).clamp(1, 3) - 1]
                    } else {
                        self.scan_set
                    };
                    self.push(set);
                } else if (1..=3).contains(&value) {
                    self.scan_set = value;
                }
            }
            return;
        }
        match value {
            0xED | 0xF0 | 0xF3 => {
                self.target = DataTarget::KeyboardParam(value);
                self.push(KBD_ACK);
            }
            0xEE => self.push(0xEE),
            0xF2 => {
                self.push(KBD_ACK);
                self.push(0xAB);
                self.push(if self.ram[0] & CTR_XLATE != 0 {
                    0x41
                } else {
                    0x83
                });
            }
            0xFF => {
                self.queue.clear();
                self.output = None;
                self.scan_set = 2;
                self.push(KBD_ACK);
                self.push(KBD_BAT_OK);
            }
            // Enable, disable, defaults, resend, the set-3 key type commands: acknowledged.
            _ => self.push(KBD_ACK),
        }
    }

    fn read8(&mut self, port: u16) -> u8 {
        match port {
            0x60 => self.read_data(),
            0x64 => self.status(),
            0x92 => (self.a20 as u8) << 1,
            _ => 0xFF,
        }
    }

    fn write8(&mut self, port: u16, value: u8) {
        match port {
            0x60 => {
                self.last_was_command = false;
                match std::mem::replace(&mut self.target, DataTarget::Keyboard) {
                    DataTarget::ControllerParam(cmd) => self.controller_param(cmd, value),
                    t @ DataTarget::KeyboardParam(_) => {
                        self.target = t;
                        self.keyboard_write(value);
                    }
                    DataTarget::Keyboard => self.keyboard_write(value),
                }
            }
            0x64 => {
                self.last_was_command = true;
                // A new command abandons a pending controller parameter.
                if matches!(self.target, DataTarget::ControllerParam(_)) {
                    self.target = DataTarget::Keyboard;
                }
                self.command(value);
            }
            0x92 => {
                self.a20 = value & 0x02 != 0;
                if value & 0x01 != 0 {
                    (self.reset)();
                }
            }
            _ => {}
        }
    }
}

impl PortIo for I8042 {
    fn port_read(&mut self, port: u16, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.read8(port.wrapping_add(i as u16));
        }
        self.update_irq();
    }

    fn port_write(&mut self, port: u16, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            self.write8(port.wrapping_add(i as u16), b);
        }
        self.update_irq();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::RecordingLine;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn kbc() -> (I8042, Arc<RecordingLine>, Arc<AtomicUsize>) {
        let line = Arc::new(RecordingLine::default());
        let resets = Arc::new(AtomicUsize::new(0));
        let r = resets.clone();
        let dev = I8042::new(
            line.clone(),
            Arc::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }),
        );
        (dev, line, resets)
    }

    fn out(k: &mut I8042, port: u16, v: u8) {
        k.port_write(port, &[v]);
    }

    fn inb(k: &mut I8042, port: u16) -> u8 {
        let mut b = [0];
        k.port_read(port, &mut b);
        b[0]
    }

    /// Drains the output buffer as Linux's i8042_flush does.
    fn drain(k: &mut I8042) -> Vec<u8> {
        let mut v = Vec::new();
        while inb(k, 0x64) & STS_OBF != 0 {
            v.push(inb(k, 0x60));
        }
        v
    }

    #[test]
    fn reset_command_calls_the_callback() {
        let (mut k, _, resets) = kbc();
        out(&mut k, 0x64, 0xFE);
        assert_eq!(resets.load(Ordering::SeqCst), 1);
        out(&mut k, 0x64, 0xFF); // pulses nothing
        assert_eq!(resets.load(Ordering::SeqCst), 1);
        // Output port write with bit 0 clear, and port 0x92 bit 0.
        out(&mut k, 0x64, 0xD1);
        out(&mut k, 0x60, 0xDE);
        assert_eq!(resets.load(Ordering::SeqCst), 2);
        out(&mut k, 0x92, 0x02);
        assert_eq!(resets.load(Ordering::SeqCst), 2);
        assert_eq!(inb(&mut k, 0x92), 0x02);
        out(&mut k, 0x92, 0x03);
        assert_eq!(resets.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn linux_controller_probe() {
        let (mut k, _, _) = kbc();
        assert!(drain(&mut k).is_empty());
        out(&mut k, 0x64, 0xAA);
        assert_eq!(drain(&mut k), vec![0x55]);
        out(&mut k, 0x64, 0x20);
        let ctr = drain(&mut k)[0];
        assert_eq!(ctr & CTR_XLATE, CTR_XLATE);
        out(&mut k, 0x64, 0x60);
        out(&mut k, 0x60, (ctr | CTR_KBD_DISABLE) & !CTR_KBD_INT);
        out(&mut k, 0x64, 0x20);
        assert_eq!(drain(&mut k), vec![(ctr | CTR_KBD_DISABLE) & !CTR_KBD_INT]);
        // No AUX: the loop-back answer is not AUX data, and the AUX test fails.
        out(&mut k, 0x64, 0xD3);
        out(&mut k, 0x60, 0x5A);
        assert_eq!(inb(&mut k, 0x64) & (STS_OBF | 0x20), STS_OBF);
        assert_eq!(drain(&mut k), vec![0x5A]);
        out(&mut k, 0x64, 0xA9);
        assert_eq!(drain(&mut k), vec![0x01]);
        out(&mut k, 0x64, 0xAB);
        assert_eq!(drain(&mut k), vec![0x00]);
        assert_eq!(inb(&mut k, 0x64) & (STS_SYS | STS_CMD), STS_SYS | STS_CMD);
    }

    #[test]
    fn keyboard_answers_atkbd() {
        let (mut k, line, _) = kbc();
        out(&mut k, 0x60, 0xF2);
        assert_eq!(drain(&mut k), vec![KBD_ACK, 0xAB, 0x41]);
        assert_eq!(line.edges(), 3, "one edge per byte");
        out(&mut k, 0x60, 0xFF);
        assert_eq!(drain(&mut k), vec![KBD_ACK, KBD_BAT_OK]);
        out(&mut k, 0x60, 0xED);
        out(&mut k, 0x60, 0x07);
        assert_eq!(drain(&mut k), vec![KBD_ACK, KBD_ACK]);
        out(&mut k, 0x60, 0xF0);
        out(&mut k, 0x60, 0x00);
        assert_eq!(drain(&mut k), vec![KBD_ACK, KBD_ACK, 0x41]);
        out(&mut k, 0x60, 0xEE);
        assert_eq!(drain(&mut k), vec![0xEE]);
        // Without translation the identify answer is untranslated.
        out(&mut k, 0x64, 0x60);
        out(&mut k, 0x60, CTR_KBD_INT);
        out(&mut k, 0x60, 0xF2);
        assert_eq!(drain(&mut k), vec![KBD_ACK, 0xAB, 0x83]);
        // Host key presses reach the guest with an interrupt.
        assert_eq!(k.enqueue_scancodes(&[0x1E, 0x9E]), 2);
        assert!(line.level());
        assert_eq!(drain(&mut k), vec![0x1E, 0x9E]);
        assert!(!line.level());
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = crate::ports::test_util::Rng(0x8042);
        let (mut k, _, _) = kbc();
        for _ in 0..20_000 {
            let port = [0x60u16, 0x64, 0x92, 0x61][(rng.next() % 4) as usize];
            let w = rng.width();
            match rng.next() % 4 {
                0 => {
                    let b = rng.bytes(w);
                    k.enqueue_scancodes(&b);
                }
                1 => k.port_read(port, &mut vec![0; w]),
                _ => k.port_write(port, &rng.bytes(w)),
            }
        }
    }
}
