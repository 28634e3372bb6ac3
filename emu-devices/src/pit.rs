//! The 8254 programmable interval timer (I/O 0x40..0x43) and the PC's port 0x61.
//!
//! Three 16-bit down-counters clocked at 1.193182 MHz. Nothing here counts by itself:
//! every counter value and output level is computed from the machine's
//! [`VirtualClock`] at the moment it is read, so the PIT always agrees with the TSC and the
//! other timers. Channel 0's output drives ISA IRQ 0; since no one polls the device, the
//! machine's timer thread asks [`Pit::next_deadline_ns`] when the next rising edge is due
//! and calls [`Pit::tick`] then, which pulses the line (IRQ 0 is edge-triggered on the PIC
//! and the IOAPIC alike). A timer thread that wakes late delivers one edge for all the
//! periods it missed, as a real PIC would merge them in its IRR.
//!
//! Channel 1 (once DRAM refresh) has no output wired; channel 2's gate and output are bits 0
//! and 5 of port 0x61, with the speaker enable (bit 1) stored and ignored. Bit 4 of port 0x61
//! toggles every 15.085 us (the refresh clock), as some delay loops expect.
//!
//! Modes 0 (interrupt on terminal count), 2 (rate generator), 3 (square wave) and 4
//! (software strobe) are exact to the tick; 1 and 5 (gate-triggered) work on channel 2,
//! whose gate software controls. Counter latch, read-back (count and status), low/high/
//! both-byte access and BCD counting are implemented.

use std::sync::Arc;

use emu_mmu::clock::VirtualClock;

use crate::irq::IrqLine;
use crate::ports::PortIo;

/// The PIT's input clock in Hz.
pub const PIT_HZ: u64 = 1_193_182;

/// Period of the refresh toggle seen in port 0x61 bit 4, in nanoseconds.
const REFRESH_NS: u64 = 15_085;

/// Whole PIT ticks in `ns` nanoseconds.
fn ns_to_ticks(ns: u64) -> u64 {
    (ns as u128 * PIT_HZ as u128 / 1_000_000_000) as u64
}

/// Nanoseconds until tick `ticks` has happened (rounded up).
fn ticks_to_ns(ticks: u64) -> u64 {
    (ticks as u128 * 1_000_000_000).div_ceil(PIT_HZ as u128) as u64
}

fn to_bcd(v: u32) -> u16 {
    let v = v % 10_000;
    ((v / 1000) << 12 | (v / 100 % 10) << 8 | (v / 10 % 10) << 4 | (v % 10)) as u16
}

fn from_bcd(v: u16) -> u32 {
    let d = |s: u16| ((v >> s) & 0xF) as u32;
    d(12) * 1000 + d(8) * 100 + d(4) * 10 + d(0)
}

/// How the counter is read and written (control word bits 5:4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Low,
    High,
    Both,
}

#[derive(Clone, Debug)]
struct Channel {
    /// 0..=5 (6 and 7 alias 2 and 3).
    mode: u8,
    access: Access,
    bcd: bool,
    /// The count N in effect (1..=65536, or 1..=10000 in BCD).
    reload: u32,
    /// A whole count has been written since the last control word.
    armed: bool,
    /// The gate input (fixed high on channels 0 and 1).
    gate: bool,
    /// Modes 1 and 5: the gate has triggered the count.
    triggered: bool,
    /// When counting last (re)started, or `None` while it is stopped.
    run_ns: Option<u64>,
    /// Ticks counted before `run_ns` (modes 0 and 4 pause while the gate is low).
    base_ticks: u64,
    /// Rising edges already delivered since counting started (for IRQ 0).
    fired: u64,
    /// Modes 2 and 3: a count written while running, loaded at the end of the period
    /// (at elapsed tick `.1`).
    pending: Option<(u32, u64)>,
    /// An edge that came due while a pending count was loaded, not yet delivered.
    owed_edge: bool,
    /// Latched count, and whether its high byte is next (two-byte access).
    latch: Option<u16>,
    latch_high_next: bool,
    /// Latched status byte (read-back).
    status: Option<u8>,
    /// Two-byte access: the next read / write is the high byte.
    read_high_next: bool,
    write_high_next: bool,
    /// Low byte of a two-byte write in progress.
    write_low: u8,
    /// Status bit 6: a count was written and has not been loaded yet.
    null_count: bool,
}

impl Channel {
    fn new(gate: bool) -> Self {
        Channel {
            mode: 0,
            access: Access::Both,
            bcd: false,
            reload: 0x1_0000,
            armed: false,
            gate,
            triggered: false,
            run_ns: None,
            base_ticks: 0,
            fired: 0,
            pending: None,
            owed_edge: false,
            latch: None,
            latch_high_next: false,
            status: None,
            read_high_next: false,
            write_high_next: false,
            write_low: 0,
            null_count: false,
        }
    }

    fn modulus(&self) -> u64 {
        if self.bcd {
            10_000
        } else {
            0x1_0000
        }
    }

    fn periodic(&self) -> bool {
        matches!(self.mode, 2 | 3)
    }

    /// Ticks counted since the count was loaded.
    fn elapsed(&self, now: u64) -> u64 {
        match self.run_ns {
            Some(start) => self.base_ticks + ns_to_ticks(now.saturating_sub(start)),
            None => self.base_ticks,
        }
    }

    /// Whether the counter is counting down a loaded count (or, in modes 0/4, has one
    /// loaded and is paused by the gate).
    fn loaded(&self) -> bool {
        self.armed && (!matches!(self.mode, 1 | 5) || self.triggered)
    }

    /// The counting element's current value.
    fn count(&self, now: u64) -> u16 {
        let n = self.reload as u64;
        let m = self.modulus();
        if !self.loaded() {
            return (n % m) as u16;
        }
        let e = self.elapsed(now);
        let v = match self.mode {
            2 => {
                if self.run_ns.is_none() {
                    n
                } else {
                    n - e % n
                }
            }
            3 => {
                if self.run_ns.is_none() {
                    n
                } else {
                    // Counts down by two through each half of the period.
                    let half = n.div_ceil(2);
                    let phase = e % n;
                    let p = if phase < half { phase } else { phase - half };
                    (n - 2 * p.min(n / 2)) & !1
                }
            }
            // Modes 0, 1, 4, 5 count down once and wrap through the full range.
            _ => (n + m - e % m) % m,
        };
        (v % m) as u16
    }

    /// The OUT pin.
    fn output(&self, now: u64) -> bool {
        let n = self.reload as u64;
        match self.mode {
            0 => self.armed && self.elapsed(now) >= n,
            1 => !self.loaded() || self.elapsed(now) >= n,
            2 => self.run_ns.is_none() || self.elapsed(now) % n != n - 1,
            3 => self.run_ns.is_none() || self.elapsed(now) % n < n.div_ceil(2),
            // Modes 4 and 5: a one-tick low strobe when the count reaches zero.
            _ => !self.loaded() || self.elapsed(now) != n,
        }
    }

    /// The elapsed tick of the next rising edge of OUT not yet delivered.
    fn next_edge_tick(&self) -> Option<u64> {
        if !self.loaded() || self.run_ns.is_none() {
            return None;
        }
        let n = self.reload as u64;
        if self.periodic() {
            Some((self.fired + 1) * n)
        } else if self.fired == 0 {
            Some(n)
        } else {
            None
        }
    }

    /// The clock time of the next undelivered rising edge.
    fn next_edge_ns(&self) -> Option<u64> {
        if self.owed_edge {
            return Some(self.run_ns.unwrap_or(0));
        }
        let tick = self.next_edge_tick()?;
        let start = self.run_ns?;
        Some(start + ticks_to_ns(tick.saturating_sub(self.base_ticks)))
    }

    /// Loads a count written while a mode 2/3 counter was running, once its period ends.
    fn settle(&mut self, now: u64) {
        let Some((count, boundary)) = self.pending else {
            return;
        };
        let Some(start) = self.run_ns else {
            return;
        };
        if self.elapsed(now) < boundary {
            return;
        }
        let n = self.reload as u64;
        if self.fired < boundary / n {
            self.owed_edge = true;
        }
        self.run_ns = Some(start + ticks_to_ns(boundary - self.base_ticks));
        self.base_ticks = 0;
        self.reload = count;
        self.fired = 0;
        self.pending = None;
    }

    /// Starts counting the loaded count from zero elapsed ticks.
    fn start(&mut self, now: u64) {
        self.run_ns = Some(now);
        self.base_ticks = 0;
        self.fired = 0;
        self.pending = None;
        self.owed_edge = false;
        self.null_count = false;
    }

    fn control(&mut self, value: u8) {
        self.access = match (value >> 4) & 3 {
            1 => Access::Low,
            2 => Access::High,
            _ => Access::Both,
        };
        self.mode = match (value >> 1) & 7 {
            6 => 2,
            7 => 3,
            m => m,
        };
        self.bcd = value & 1 != 0;
        self.armed = false;
        self.triggered = false;
        self.run_ns = None;
        self.base_ticks = 0;
        self.fired = 0;
        self.pending = None;
        self.owed_edge = false;
        self.latch = None;
        self.status = None;
        self.read_high_next = false;
        self.write_high_next = false;
        self.null_count = true;
    }

    /// A whole count has been written.
    fn load(&mut self, raw: u16, now: u64) {
        let mut n = if self.bcd {
            from_bcd(raw) % 10_000
        } else {
            raw as u32
        };
        if n == 0 {
            n = self.modulus() as u32;
        }
        self.null_count = true;
        let running = self.armed && self.run_ns.is_some();
        match self.mode {
            2 | 3 if running => {
                // The new count takes over at the end of the current period.
                let e = self.elapsed(now);
                let boundary = (e / self.reload as u64 + 1) * self.reload as u64;
                self.pending = Some((n, boundary));
            }
            1 | 5 => {
                // Waits for a gate trigger.
                self.reload = n;
                self.armed = true;
            }
            _ => {
                self.reload = n;
                self.armed = true;
                if self.gate {
                    self.start(now);
                } else {
                    self.run_ns = None;
                    self.base_ticks = 0;
                    self.fired = 0;
                }
            }
        }
    }

    fn write_count(&mut self, value: u8, now: u64) {
        match self.access {
            Access::Low => self.load(value as u16, now),
            Access::High => self.load((value as u16) << 8, now),
            Access::Both if !self.write_high_next => {
                self.write_low = value;
                self.write_high_next = true;
                if self.mode == 0 {
                    // Writing the first byte stops a mode 0 count (and drops OUT).
                    self.armed = false;
                    self.run_ns = None;
                }
            }
            Access::Both => {
                self.write_high_next = false;
                self.load(u16::from_le_bytes([self.write_low, value]), now);
            }
        }
    }

    fn read_count(&mut self, now: u64) -> u8 {
        if let Some(status) = self.status.take() {
            return status;
        }
        let (value, from_latch) = match self.latch {
            Some(v) => (v, true),
            None => (self.visible_count(now), false),
        };
        let high = match self.access {
            Access::Low => false,
            Access::High => true,
            Access::Both if from_latch => self.latch_high_next,
            Access::Both => self.read_high_next,
        };
        let byte = if high {
            (value >> 8) as u8
        } else {
            value as u8
        };
        if from_latch {
            if self.access == Access::Both && !self.latch_high_next {
                self.latch_high_next = true;
            } else {
                self.latch = None;
                self.latch_high_next = false;
            }
        } else if self.access == Access::Both {
            self.read_high_next = !self.read_high_next;
        }
        byte
    }

    /// The count as the guest sees it (in BCD if so programmed).
    fn visible_count(&self, now: u64) -> u16 {
        let c = self.count(now);
        if self.bcd {
            to_bcd(c as u32)
        } else {
            c
        }
    }

    fn latch_count(&mut self, now: u64) {
        if self.latch.is_none() {
            self.latch = Some(self.visible_count(now));
            self.latch_high_next = false;
        }
    }

    fn latch_status(&mut self, now: u64) {
        if self.status.is_none() {
            let access = match self.access {
                Access::Low => 1,
                Access::High => 2,
                Access::Both => 3,
            };
            self.status = Some(
                (self.output(now) as u8) << 7
                    | (self.null_count as u8) << 6
                    | access << 4
                    | self.mode << 1
                    | self.bcd as u8,
            );
        }
    }

    fn set_gate(&mut self, high: bool, now: u64) {
        if high == self.gate {
            return;
        }
        self.settle(now);
        self.gate = high;
        match self.mode {
            0 | 4 if self.armed => {
                if high {
                    self.run_ns = Some(now);
                } else {
                    self.base_ticks = self.elapsed(now);
                    self.run_ns = None;
                }
            }
            2 | 3 if self.armed => {
                if high {
                    self.start(now);
                } else {
                    self.run_ns = None;
                    self.base_ticks = 0;
                }
            }
            1 | 5 if self.armed && high => {
                self.triggered = true;
                self.start(now);
            }
            _ => {}
        }
    }
}

/// The 8254 PIT with port 0x61.
pub struct Pit {
    clock: VirtualClock,
    channels: [Channel; 3],
    /// Port 0x61 bits 1..3 as written (speaker enable, parity/IOCHK check enables).
    port61: u8,
    irq0: Arc<dyn IrqLine>,
}

impl Pit {
    /// The I/O ranges to map with a [`PortWindow`](crate::ports::PortWindow) each: the
    /// counters and control word, and port 0x61.
    pub const PORT_RANGES: &'static [(u16, u16)] = &[(0x40, 4), (0x61, 1)];

    /// A PIT reading time from `clock` whose channel 0 drives `irq0` (ISA IRQ 0). All
    /// channels start unprogrammed (no interrupts until the guest loads a count).
    pub fn new(clock: VirtualClock, irq0: Arc<dyn IrqLine>) -> Self {
        Pit {
            clock,
            channels: [Channel::new(true), Channel::new(true), Channel::new(false)],
            port61: 0,
            irq0,
        }
    }

    /// When channel 0's next interrupt is due, in the clock's nanoseconds; `None` while
    /// no interrupt is scheduled.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.channels[0].next_edge_ns()
    }

    /// Delivers channel 0's interrupt if its time (by `now_ns`) has come. Call it at (or
    /// after) [`next_deadline_ns`](Self::next_deadline_ns); early calls do nothing.
    pub fn tick(&mut self, now_ns: u64) {
        let ch = &mut self.channels[0];
        ch.settle(now_ns);
        let due = ch.next_edge_ns().is_some_and(|t| t <= now_ns);
        if !due {
            return;
        }
        if ch.owed_edge {
            ch.owed_edge = false;
        } else if ch.periodic() {
            // Every edge that has passed is covered by this one pulse.
            ch.fired = (ch.elapsed(now_ns) / ch.reload as u64).max(ch.fired + 1);
        } else {
            ch.fired = 1;
        }
        self.irq0.pulse();
    }

    fn read8(&mut self, port: u16, now: u64) -> u8 {
        match port {
            0x40..=0x42 => {
                let ch = &mut self.channels[(port - 0x40) as usize];
                ch.settle(now);
                ch.read_count(now)
            }
            // The control word register is write-only.
            0x43 => 0xFF,
            0x61 => {
                let refresh = (now / REFRESH_NS) & 1 != 0;
                let ch2 = &self.channels[2];
                (ch2.gate as u8) | self.port61 | (refresh as u8) << 4 | (ch2.output(now) as u8) << 5
            }
            _ => 0xFF,
        }
    }

    fn write8(&mut self, port: u16, value: u8, now: u64) {
        match port {
            0x40..=0x42 => {
                let ch = &mut self.channels[(port - 0x40) as usize];
                ch.settle(now);
                ch.write_count(value, now);
            }
            0x43 => {
                let sel = value >> 6;
                if sel == 3 {
                    // Read-back: bit 5 clear latches counts, bit 4 clear latches status.
                    for (i, ch) in self.channels.iter_mut().enumerate() {
                        if value & (2 << i) != 0 {
                            ch.settle(now);
                            if value & 0x10 == 0 {
                                ch.latch_status(now);
                            }
                            if value & 0x20 == 0 {
                                ch.latch_count(now);
                            }
                        }
                    }
                } else {
                    let ch = &mut self.channels[sel as usize];
                    ch.settle(now);
                    if value & 0x30 == 0 {
                        ch.latch_count(now);
                    } else {
                        ch.control(value);
                    }
                }
            }
            0x61 => {
                self.port61 = value & 0x0E;
                self.channels[2].set_gate(value & 1 != 0, now);
            }
            _ => {}
        }
    }
}

impl PortIo for Pit {
    fn port_read(&mut self, port: u16, data: &mut [u8]) {
        let now = self.clock.now_ns();
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.read8(port.wrapping_add(i as u16), now);
        }
    }

    fn port_write(&mut self, port: u16, data: &[u8]) {
        let now = self.clock.now_ns();
        for (i, &b) in data.iter().enumerate() {
            self.write8(port.wrapping_add(i as u16), b, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::RecordingLine;

    fn pit() -> (Pit, VirtualClock, Arc<RecordingLine>) {
        let clock = VirtualClock::manual();
        let line = Arc::new(RecordingLine::default());
        (Pit::new(clock.clone(), line.clone()), clock, line)
    }

    fn out(p: &mut Pit, port: u16, v: u8) {
        p.port_write(port, &[v]);
    }

    fn inb(p: &mut Pit, port: u16) -> u8 {
        let mut b = [0];
        p.port_read(port, &mut b);
        b[0]
    }

    /// Latches and reads channel `ch`'s count (two-byte access).
    fn latched(p: &mut Pit, ch: u16) -> u16 {
        out(p, 0x43, (ch as u8) << 6);
        let lo = inb(p, 0x40 + ch);
        let hi = inb(p, 0x40 + ch);
        u16::from_le_bytes([lo, hi])
    }

    /// Runs the timer thread's loop until `until_ns`, returning the times of the pulses.
    fn run_until(
        p: &mut Pit,
        clock: &VirtualClock,
        line: &RecordingLine,
        until_ns: u64,
    ) -> Vec<u64> {
        let mut fired = Vec::new();
        while let Some(t) = p.next_deadline_ns() {
            if t > until_ns {
                break;
            }
            clock.set_ns(t);
            let before = line.edges();
            p.tick(t);
            assert_ne!(line.edges(), before, "a due deadline delivers an edge");
            fired.push(t);
        }
        clock.set_ns(until_ns);
        fired
    }

    #[test]
    fn mode2_counts_down_and_interrupts_every_period() {
        let (mut p, clock, line) = pit();
        // Linux's periodic tick: channel 0, lobyte/hibyte, mode 2, LATCH for 1000 Hz.
        let latch = 1193u16;
        out(&mut p, 0x43, 0x34);
        out(&mut p, 0x40, latch as u8);
        out(&mut p, 0x40, (latch >> 8) as u8);
        assert_eq!(latched(&mut p, 0), latch);
        clock.advance(ticks_to_ns(100));
        assert_eq!(latched(&mut p, 0), latch - 100);
        let period = ticks_to_ns(latch as u64);
        assert_eq!(p.next_deadline_ns(), Some(period));
        let fired = run_until(&mut p, &clock, &line, 10 * period + 1000);
        assert_eq!(fired.len(), 10);
        assert_eq!(line.edges(), 10);
        for (k, t) in fired.iter().enumerate() {
            assert_eq!(*t, ticks_to_ns(latch as u64 * (k as u64 + 1)));
        }
        // A late timer thread delivers one edge for several missed periods.
        clock.advance(5 * period);
        p.tick(clock.now_ns());
        assert_eq!(line.edges(), 11);
        assert!(p.next_deadline_ns().unwrap() > clock.now_ns());
    }

    #[test]
    fn mode2_new_count_takes_over_at_the_end_of_the_period() {
        let (mut p, clock, line) = pit();
        out(&mut p, 0x43, 0x34);
        out(&mut p, 0x40, 100);
        out(&mut p, 0x40, 0);
        clock.set_ns(ticks_to_ns(50));
        out(&mut p, 0x40, 200);
        out(&mut p, 0x40, 0);
        assert_eq!(latched(&mut p, 0), 50, "old count still running");
        let fired = run_until(&mut p, &clock, &line, ticks_to_ns(560));
        let ticks: Vec<u64> = fired.iter().map(|&t| ns_to_ticks(t)).collect();
        assert_eq!(ticks, vec![100, 300, 500]);
    }

    #[test]
    fn mode2_output_is_low_for_the_last_tick() {
        let (mut p, clock, _) = pit();
        // Channel 2 through port 0x61, mode 2, count 10.
        out(&mut p, 0x61, 0x01);
        out(&mut p, 0x43, 0xB4);
        out(&mut p, 0x42, 10);
        out(&mut p, 0x42, 0);
        clock.set_ns(ticks_to_ns(8));
        assert_ne!(inb(&mut p, 0x61) & 0x20, 0);
        clock.set_ns(ticks_to_ns(9));
        assert_eq!(inb(&mut p, 0x61) & 0x20, 0);
        clock.set_ns(ticks_to_ns(10));
        assert_ne!(inb(&mut p, 0x61) & 0x20, 0);
    }

    #[test]
    fn mode3_square_wave() {
        let (mut p, clock, line) = pit();
        out(&mut p, 0x43, 0x36);
        out(&mut p, 0x40, 100);
        out(&mut p, 0x40, 0);
        // The count runs down by two per tick through each half.
        clock.set_ns(ticks_to_ns(10));
        assert_eq!(latched(&mut p, 0), 80);
        clock.set_ns(ticks_to_ns(60));
        assert_eq!(latched(&mut p, 0), 80);
        // Read-back status shows OUT low in the second half, mode 3, two-byte access.
        out(&mut p, 0x43, 0xE2);
        assert_eq!(inb(&mut p, 0x40), 0x36);
        clock.set_ns(ticks_to_ns(110));
        out(&mut p, 0x43, 0xE2);
        assert_eq!(inb(&mut p, 0x40), 0x80 | 0x36);
        let fired = run_until(&mut p, &clock, &line, ticks_to_ns(1000));
        assert_eq!(fired.len(), 10);
        assert_eq!(line.edges(), 10);
    }

    #[test]
    fn mode0_interrupts_once_and_channel2_shows_in_port_61() {
        let (mut p, clock, line) = pit();
        out(&mut p, 0x43, 0x30);
        out(&mut p, 0x40, 0x10);
        assert_eq!(p.next_deadline_ns(), None, "half a count loads nothing");
        out(&mut p, 0x40, 0x00);
        assert_eq!(p.next_deadline_ns(), Some(ticks_to_ns(16)));
        let fired = run_until(&mut p, &clock, &line, ticks_to_ns(100_000));
        assert_eq!(fired, vec![ticks_to_ns(16)]);
        assert_eq!(line.edges(), 1);
        // The counter wraps and keeps counting.
        assert_eq!(latched(&mut p, 0), (16 + 2 * 0x1_0000 - 100_000) as u16);

        // Linux's PIT calibration: gate channel 2 on, mode 0, wait for OUT2 in 0x61.
        let t0 = clock.now_ns();
        let v = inb(&mut p, 0x61);
        out(&mut p, 0x61, (v & !0x02) | 0x01);
        out(&mut p, 0x43, 0xB0);
        let count = 11932u16; // 10 ms
        out(&mut p, 0x42, count as u8);
        out(&mut p, 0x42, (count >> 8) as u8);
        assert_eq!(inb(&mut p, 0x61) & 0x20, 0);
        clock.set_ns(t0 + ticks_to_ns(count as u64) - 1000);
        assert_eq!(inb(&mut p, 0x61) & 0x20, 0);
        clock.set_ns(t0 + ticks_to_ns(count as u64));
        assert_eq!(inb(&mut p, 0x61) & 0x21, 0x21);
        assert_eq!(line.edges(), 1, "channel 2 has no interrupt");
    }

    #[test]
    fn mode0_gate_low_pauses_counting() {
        let (mut p, clock, _) = pit();
        out(&mut p, 0x43, 0xB0);
        out(&mut p, 0x42, 100);
        out(&mut p, 0x42, 0);
        clock.set_ns(ticks_to_ns(10));
        assert_eq!(latched(&mut p, 2), 100, "gate low: not counting");
        out(&mut p, 0x61, 1);
        clock.set_ns(ticks_to_ns(40));
        assert_eq!(latched(&mut p, 2), 70);
        out(&mut p, 0x61, 0);
        clock.set_ns(ticks_to_ns(80));
        assert_eq!(latched(&mut p, 2), 70);
    }

    #[test]
    fn mode4_oneshot_like_linux_clockevents() {
        let (mut p, clock, line) = pit();
        out(&mut p, 0x43, 0x38);
        for delta in [500u16, 1200, 3] {
            let t0 = clock.now_ns();
            out(&mut p, 0x40, delta as u8);
            out(&mut p, 0x40, (delta >> 8) as u8);
            let edges = line.edges();
            let fired = run_until(&mut p, &clock, &line, t0 + ticks_to_ns(70_000));
            assert_eq!(fired, vec![t0 + ticks_to_ns(delta as u64)]);
            assert_eq!(line.edges(), edges + 1);
        }
    }

    #[test]
    fn byte_access_modes_latches_and_bcd() {
        let (mut p, clock, _) = pit();
        // Low byte only.
        out(&mut p, 0x43, 0x50); // channel 1, lobyte, mode 0
        out(&mut p, 0x41, 200);
        clock.set_ns(ticks_to_ns(50));
        assert_eq!(inb(&mut p, 0x41), 150);
        // High byte only.
        out(&mut p, 0x43, 0x60);
        out(&mut p, 0x41, 0x02);
        clock.advance(ticks_to_ns(1) + 1);
        assert_eq!(inb(&mut p, 0x41), 0x01, "0x200 - 1 = 0x1FF");
        // A latch holds its value while time moves; a second latch is ignored until read.
        out(&mut p, 0x43, 0x70);
        out(&mut p, 0x41, 0x00);
        out(&mut p, 0x41, 0x10);
        out(&mut p, 0x43, 0x40);
        let held = clock.now_ns();
        clock.advance(ticks_to_ns(5));
        out(&mut p, 0x43, 0x40);
        let lo = inb(&mut p, 0x41);
        let hi = inb(&mut p, 0x41);
        assert_eq!(u16::from_le_bytes([lo, hi]), 0x1000);
        let _ = held;
        // BCD: 1000 decimal counts in BCD.
        let t0 = clock.now_ns();
        out(&mut p, 0x43, 0x71);
        out(&mut p, 0x41, 0x00);
        out(&mut p, 0x41, 0x10);
        clock.set_ns(t0 + ticks_to_ns(1));
        assert_eq!(latched(&mut p, 1), 0x0999);
        // Read-back latching count and status of channel 1 together: status first.
        out(&mut p, 0x43, 0xC4);
        assert_eq!(inb(&mut p, 0x41) & 0x3F, 0x31);
        let lo = inb(&mut p, 0x41);
        let hi = inb(&mut p, 0x41);
        assert_eq!(u16::from_le_bytes([lo, hi]), 0x0999);
    }

    #[test]
    fn refresh_bit_toggles_and_speaker_bits_stick() {
        let (mut p, clock, _) = pit();
        out(&mut p, 0x61, 0x03);
        let a = inb(&mut p, 0x61);
        clock.advance(REFRESH_NS);
        let b = inb(&mut p, 0x61);
        assert_eq!((a ^ b) & 0x10, 0x10);
        assert_eq!(a & 0x03, 0x03);
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = crate::ports::test_util::Rng(0x8254);
        let (mut p, clock, _) = pit();
        for _ in 0..50_000 {
            let port = [0x40u16, 0x41, 0x42, 0x43, 0x61, 0x44][(rng.next() % 6) as usize];
            let w = rng.width();
            match rng.next() % 5 {
                0 => clock.advance(rng.next() % 100_000),
                1 => {
                    let d = p.next_deadline_ns();
                    p.tick(d.unwrap_or(0).max(clock.now_ns()));
                }
                2 => p.port_read(port, &mut vec![0; w]),
                _ => p.port_write(port, &rng.bytes(w)),
            }
        }
    }
}
