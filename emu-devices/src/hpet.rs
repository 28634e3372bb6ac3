//! The HPET (High Precision Event Timer) at MMIO 0xFED0_0000 (1 KiB).
//!
//! A 64-bit main counter at 100 MHz (period 10 ns = 10,000,000 fs) derived from the
//! machine's [`VirtualClock`], and three comparators, each one-shot or periodic, 32- or
//! 64-bit, edge or level, with legacy replacement routing (timer 0 → GSI 2, i.e. ISA IRQ
//! 0 through the IOAPIC's interrupt-source override; timer 1 → GSI 8, IRQ 8) or routing to
//! IOAPIC pins 20..23. No FSB (MSI) delivery.
//!
//! Interrupt lines are given per GSI (`pins[gsi]`, missing entries are unconnected); the
//! machine decides whether a GSI also reaches the 8259 (GSI 2 as IRQ 0, GSI 8 as IRQ 8).
//! Comparators fire when the counter passes them, as on hardware: a comparator written
//! behind the counter does not fire until the counter wraps (Linux checks for this itself).
//! Nothing polls the device: the timer thread calls [`Hpet::tick`] at
//! [`Hpet::next_deadline_ns`].
//!
//! Registers are 64 bits wide and may be accessed as 32-bit halves (as Linux does) or in
//! any smaller piece; accesses that straddle registers are split into bytes.

use std::sync::Arc;

use emu_mmu::clock::VirtualClock;
use emu_mmu::BusDevice;

use crate::irq::IrqLine;
use crate::ports::{le_value, put_le};

/// The HPET's MMIO base.
pub const HPET_BASE: u64 = 0xFED0_0000;
/// The size of its MMIO range.
pub const HPET_LEN: u64 = 0x400;
/// Main counter frequency in Hz.
pub const HPET_HZ: u64 = 100_000_000;
/// Main counter period in femtoseconds (for GCAP_ID and the ACPI HPET table's minimum
/// tick).
pub const HPET_PERIOD_FS: u64 = 1_000_000_000_000_000 / HPET_HZ;
/// Number of comparators.
pub const HPET_TIMERS: usize = 3;
/// IOAPIC pins the timers may be routed to (outside legacy replacement).
pub const HPET_ROUTE_CAP: u32 = 0x00F0_0000;

const NS_PER_TICK: u64 = 1_000_000_000 / HPET_HZ;

// Register offsets.
const GCAP_ID: u64 = 0x000;
const GEN_CONF: u64 = 0x010;
const GINTR_STA: u64 = 0x020;
const MAIN_CNT: u64 = 0x0F0;
const TIMER_BASE: u64 = 0x100;
const TIMER_STRIDE: u64 = 0x20;

// GEN_CONF bits.
const ENABLE_CNF: u64 = 1 << 0;
const LEG_RT_CNF: u64 = 1 << 1;

// Tn_CONF_CAP bits.
const TN_INT_TYPE_LEVEL: u64 = 1 << 1;
const TN_INT_ENB: u64 = 1 << 2;
const TN_TYPE_PERIODIC: u64 = 1 << 3;
const TN_PER_INT_CAP: u64 = 1 << 4;
const TN_SIZE_CAP: u64 = 1 << 5;
const TN_VAL_SET: u64 = 1 << 6;
const TN_32MODE: u64 = 1 << 8;
const TN_ROUTE_SHIFT: u32 = 9;
const TN_ROUTE_MASK: u64 = 0x1F << TN_ROUTE_SHIFT;
const TN_WRITABLE: u64 =
    TN_INT_TYPE_LEVEL | TN_INT_ENB | TN_TYPE_PERIODIC | TN_VAL_SET | TN_32MODE | TN_ROUTE_MASK;

#[derive(Debug, Clone, Default)]
struct Timer {
    /// The writable part of Tn_CONF_CAP.
    config: u64,
    comparator: u64,
    period: u64,
    /// The counter value up to which matches have been looked for.
    checked_to: u64,
    /// The GSI whose line this timer holds high (level mode), if any.
    asserted: Option<usize>,
}

impl Timer {
    fn is_32bit(&self) -> bool {
        self.config & TN_32MODE != 0
    }

    fn periodic(&self) -> bool {
        self.config & TN_TYPE_PERIODIC != 0
    }

    /// The counter value of the next match after `checked_to`, if there is one.
    fn next_match(&self) -> Option<u64> {
        if self.is_32bit() {
            let ahead = (self.comparator as u32).wrapping_sub(self.checked_to as u32) as u64;
            let ahead = if ahead == 0 { 1 << 32 } else { ahead };
            self.checked_to.checked_add(ahead)
        } else {
            (self.comparator > self.checked_to).then_some(self.comparator)
        }
    }
}

/// The HPET.
pub struct Hpet {
    clock: VirtualClock,
    config: u64,
    /// Level-mode interrupt status (GINTR_STA).
    status: u64,
    /// The counter at `counter_ns` (or always, while halted).
    counter_base: u64,
    counter_ns: u64,
    timers: [Timer; HPET_TIMERS],
    pins: Vec<Arc<dyn IrqLine>>,
}

impl Hpet {
    /// An HPET timed by `clock`, its interrupts going to `pins[gsi]`. The counter starts
    /// halted at zero, as after reset.
    pub fn new(clock: VirtualClock, pins: Vec<Arc<dyn IrqLine>>) -> Self {
        let now = clock.now_ns();
        Hpet {
            clock,
            config: 0,
            status: 0,
            counter_base: 0,
            counter_ns: now,
            timers: Default::default(),
            pins,
        }
    }

    fn enabled(&self) -> bool {
        self.config & ENABLE_CNF != 0
    }

    /// The main counter at `now`.
    fn counter(&self, now: u64) -> u64 {
        if self.enabled() {
            self.counter_base
                .wrapping_add(now.saturating_sub(self.counter_ns) / NS_PER_TICK)
        } else {
            self.counter_base
        }
    }

    /// The clock time at which the counter reaches `value`.
    fn time_of(&self, value: u64) -> u64 {
        let ticks = value.wrapping_sub(self.counter_base);
        self.counter_ns
            .saturating_add(ticks.saturating_mul(NS_PER_TICK))
    }

    /// The GSI timer `n` delivers to.
    fn route(&self, n: usize) -> usize {
        if self.config & LEG_RT_CNF != 0 && n < 2 {
            [2, 8][n]
        } else {
            ((self.timers[n].config & TN_ROUTE_MASK) >> TN_ROUTE_SHIFT) as usize
        }
    }

    fn line(&self, gsi: usize) -> Option<&Arc<dyn IrqLine>> {
        self.pins.get(gsi)
    }

    /// Drops timer `n`'s level interrupt, if it holds one.
    fn deassert(&mut self, n: usize) {
        if let Some(gsi) = self.timers[n].asserted.take() {
            if let Some(l) = self.line(gsi) {
                l.set_level(false);
            }
        }
    }

    fn fire(&mut self, n: usize) {
        let t = &self.timers[n];
        if t.config & TN_INT_ENB == 0 {
            return;
        }
        let gsi = self.route(n);
        if t.config & TN_INT_TYPE_LEVEL != 0 {
            self.status |= 1 << n;
            if self.timers[n].asserted.is_none() {
                self.timers[n].asserted = Some(gsi);
                if let Some(l) = self.line(gsi) {
                    l.set_level(true);
                }
            }
        } else if let Some(l) = self.line(gsi) {
            l.pulse();
        }
    }

    /// Restarts the search for matches at the current counter value.
    fn rebase_checks(&mut self, now: u64) {
        let c = self.counter(now);
        for t in &mut self.timers {
            t.checked_to = c;
        }
    }

    /// When the next enabled comparator match is due.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        if !self.enabled() {
            return None;
        }
        self.timers
            .iter()
            .filter(|t| t.config & TN_INT_ENB != 0)
            .filter_map(|t| t.next_match())
            .map(|v| self.time_of(v))
            .min()
    }

    /// Fires the comparators the counter has passed by `now_ns`.
    pub fn tick(&mut self, now_ns: u64) {
        if !self.enabled() {
            return;
        }
        let now_count = self.counter(now_ns);
        for n in 0..HPET_TIMERS {
            let Some(m) = self.timers[n].next_match() else {
                self.timers[n].checked_to = now_count;
                continue;
            };
            if m > now_count {
                self.timers[n].checked_to = now_count;
                continue;
            }
            self.fire(n);
            let t = &mut self.timers[n];
            if t.periodic() && t.period != 0 {
                // Move the comparator past the counter; periods missed by a late timer
                // thread are merged into this one interrupt.
                let k = (now_count - m) / t.period + 1;
                let next = m.wrapping_add(k.wrapping_mul(t.period));
                t.comparator = if t.is_32bit() {
                    next & 0xFFFF_FFFF
                } else {
                    next
                };
                // Look for the next match from just before it.
                t.checked_to = next.wrapping_sub(1).max(m);
            } else {
                t.checked_to = now_count;
            }
        }
    }

    fn read_reg(&self, reg: u64, now: u64) -> u64 {
        match reg {
            GCAP_ID => {
                HPET_PERIOD_FS << 32
                    | 0x8086 << 16
                    | 1 << 15 // LEG_RT_CAP
                    | 1 << 13 // COUNT_SIZE_CAP: 64 bits
                    | ((HPET_TIMERS as u64 - 1) << 8)
                    | 0x01 // revision
            }
            GEN_CONF => self.config,
            GINTR_STA => self.status,
            MAIN_CNT => self.counter(now),
            r if (TIMER_BASE..TIMER_BASE + TIMER_STRIDE * HPET_TIMERS as u64).contains(&r) => {
                let t = &self.timers[((r - TIMER_BASE) / TIMER_STRIDE) as usize];
                match (r - TIMER_BASE) % TIMER_STRIDE {
                    0 => {
                        (HPET_ROUTE_CAP as u64) << 32
                            | TN_PER_INT_CAP
                            | TN_SIZE_CAP
                            | (t.config & !TN_VAL_SET)
                    }
                    8 => t.comparator,
                    _ => 0, // FSB route: not supported
                }
            }
            _ => 0,
        }
    }

    fn write_reg(&mut self, reg: u64, value: u64, now: u64) {
        match reg {
            GEN_CONF => {
                let was = self.config;
                let counter = self.counter(now);
                self.config = value & (ENABLE_CNF | LEG_RT_CNF);
                if (was ^ self.config) & ENABLE_CNF != 0 {
                    // Freeze or restart the counter where it stands.
                    self.counter_base = counter;
                    self.counter_ns = now;
                    self.rebase_checks(now);
                }
                if (was ^ self.config) & LEG_RT_CNF != 0 {
                    self.deassert(0);
                    self.deassert(1);
                }
            }
            GINTR_STA => {
                let clear = value & self.status;
                self.status &= !clear;
                for n in 0..HPET_TIMERS {
                    if clear & (1 << n) != 0 {
                        self.deassert(n);
                    }
                }
            }
            MAIN_CNT => {
                // Writable at any time here; software is told to halt the counter first.
                self.counter_base = value;
                self.counter_ns = now;
                self.rebase_checks(now);
            }
            r if (TIMER_BASE..TIMER_BASE + TIMER_STRIDE * HPET_TIMERS as u64).contains(&r) => {
                let n = ((r - TIMER_BASE) / TIMER_STRIDE) as usize;
                let counter = self.counter(now);
                match (r - TIMER_BASE) % TIMER_STRIDE {
                    0 => {
                        let mut v = value & TN_WRITABLE;
                        let route = ((v & TN_ROUTE_MASK) >> TN_ROUTE_SHIFT) as u32;
                        if HPET_ROUTE_CAP & (1 << route) == 0 {
                            // Unsupported routes are not taken; keep the old one.
                            v = (v & !TN_ROUTE_MASK) | (self.timers[n].config & TN_ROUTE_MASK);
                        }
                        let t = &mut self.timers[n];
                        let old = t.config;
                        t.config = v;
                        if v & TN_32MODE != 0 {
                            t.comparator &= 0xFFFF_FFFF;
                            t.period &= 0xFFFF_FFFF;
                        }
                        t.checked_to = counter;
                        let changed = old ^ v;
                        if changed & (TN_INT_ENB | TN_INT_TYPE_LEVEL | TN_ROUTE_MASK) != 0
                            && (v & TN_INT_ENB == 0 || v & TN_INT_TYPE_LEVEL == 0)
                        {
                            self.status &= !(1 << n);
                            self.deassert(n);
                        }
                    }
                    8 => {
                        let t = &mut self.timers[n];
                        let value = if t.is_32bit() {
                            value & 0xFFFF_FFFF
                        } else {
                            value
                        };
                        if t.periodic() {
                            // The first write after VAL_SET sets the comparator (and
                            // the period); later ones set only the period.
                            if t.config & TN_VAL_SET != 0 {
                                t.comparator = value;
                                t.config &= !TN_VAL_SET;
                            }
                            t.period = value;
                        } else {
                            t.comparator = value;
                        }
                        t.checked_to = counter;
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// One access within a single 8-byte register (offset and width checked by callers).
    fn access(&mut self, offset: u64, data: &mut [u8], write: bool) {
        let now = self.clock.now_ns();
        let reg = offset & !7;
        let shift = (offset & 7) * 8;
        let cur = self.read_reg(reg, now);
        if write {
            let mask = if data.len() >= 8 {
                u64::MAX
            } else {
                ((1u64 << (data.len() * 8)) - 1) << shift
            };
            let v = (cur & !mask) | ((le_value(data) << shift) & mask);
            self.write_reg(reg, v, now);
        } else {
            put_le(data, cur >> shift);
        }
    }

    fn dispatch(&mut self, offset: u64, data: &mut [u8], write: bool) {
        let len = data.len() as u64;
        let fits = matches!(len, 1 | 2 | 4 | 8) && (offset & 7) + len <= 8;
        if fits && offset < HPET_LEN {
            self.access(offset, data, write);
            return;
        }
        // Straddling or odd accesses: one byte at a time.
        for (i, b) in data.iter_mut().enumerate() {
            let o = offset.wrapping_add(i as u64);
            if o < HPET_LEN {
                self.access(o, std::slice::from_mut(b), write);
            } else if !write {
                *b = 0;
            }
        }
    }
}

impl BusDevice for Hpet {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.dispatch(offset, data, false);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut copy = data.to_vec();
        self.dispatch(offset, &mut copy, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::RecordingLine;

    struct Rig {
        h: Hpet,
        clock: VirtualClock,
        pins: Vec<Arc<RecordingLine>>,
    }

    fn rig() -> Rig {
        let clock = VirtualClock::manual();
        let pins: Vec<Arc<RecordingLine>> = (0..24)
            .map(|_| Arc::new(RecordingLine::default()))
            .collect();
        let lines = pins.iter().map(|p| p.clone() as Arc<dyn IrqLine>).collect();
        Rig {
            h: Hpet::new(clock.clone(), lines),
            clock,
            pins,
        }
    }

    fn r32(h: &mut Hpet, off: u64) -> u32 {
        let mut b = [0u8; 4];
        h.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn r64(h: &mut Hpet, off: u64) -> u64 {
        let mut b = [0u8; 8];
        h.read(off, &mut b);
        u64::from_le_bytes(b)
    }

    fn w32(h: &mut Hpet, off: u64, v: u32) {
        h.write(off, &v.to_le_bytes());
    }

    fn w64(h: &mut Hpet, off: u64, v: u64) {
        h.write(off, &v.to_le_bytes());
    }

    fn tconf(n: u64) -> u64 {
        TIMER_BASE + TIMER_STRIDE * n
    }

    fn tcmp(n: u64) -> u64 {
        tconf(n) + 8
    }

    /// Runs the timer thread until `until`, returning the deadlines it acted on.
    fn run_until(r: &mut Rig, until: u64) -> Vec<u64> {
        let mut seen = Vec::new();
        while let Some(t) = r.h.next_deadline_ns() {
            if t > until {
                break;
            }
            r.clock.set_ns(t);
            r.h.tick(t);
            seen.push(t);
        }
        r.clock.set_ns(until);
        seen
    }

    #[test]
    fn capabilities_and_counter_rate() {
        let mut r = rig();
        let cap = r64(&mut r.h, GCAP_ID);
        assert_eq!(cap >> 32, 10_000_000, "10 ns period");
        assert_eq!(cap & 0xFF, 1);
        assert_eq!((cap >> 8) & 0x1F, 2, "three timers");
        assert_ne!(cap & (1 << 13), 0);
        assert_ne!(cap & (1 << 15), 0);
        assert_eq!(r32(&mut r.h, GCAP_ID + 4), 10_000_000);
        // Halted: the counter does not move.
        r.clock.advance(1_000);
        assert_eq!(r64(&mut r.h, MAIN_CNT), 0);
        w64(&mut r.h, GEN_CONF, ENABLE_CNF);
        r.clock.advance(1_000_000_000);
        assert_eq!(r64(&mut r.h, MAIN_CNT), 100_000_000);
        assert_eq!(r32(&mut r.h, MAIN_CNT), 100_000_000);
        // Halt, write, restart.
        w64(&mut r.h, GEN_CONF, 0);
        r.clock.advance(5_000);
        w64(&mut r.h, MAIN_CNT, 0xFFFF_FFFF_FFFF_FE00);
        w64(&mut r.h, GEN_CONF, ENABLE_CNF);
        r.clock.advance(3_000);
        assert_eq!(r64(&mut r.h, MAIN_CNT), 0xFFFF_FFFF_FFFF_FE00 + 300);
        assert_eq!(r32(&mut r.h, MAIN_CNT + 4), 0xFFFF_FFFF);
    }

    #[test]
    fn one_shot_in_legacy_mode_like_linux_clockevents() {
        let mut r = rig();
        w32(&mut r.h, GEN_CONF, (ENABLE_CNF | LEG_RT_CNF) as u32);
        w32(&mut r.h, tconf(0), (TN_INT_ENB | TN_32MODE) as u32);
        assert_eq!(
            r.h.next_deadline_ns(),
            Some(r.h.time_of(1 << 32)),
            "comparator 0"
        );
        r.clock.advance(1_000);
        let cnt = r32(&mut r.h, MAIN_CNT);
        w32(&mut r.h, tcmp(0), cnt + 5_000); // 50 us
        assert_eq!(r.h.next_deadline_ns(), Some(1_000 + 50_000));
        let seen = run_until(&mut r, 1_000_000);
        assert_eq!(seen, vec![51_000]);
        assert_eq!(r.pins[2].edges(), 1, "timer 0 -> GSI 2 in legacy mode");
        assert_eq!(r.pins.iter().map(|p| p.edges()).sum::<u64>(), 1);
        // Timer 1 goes to GSI 8.
        w32(&mut r.h, tconf(1), (TN_INT_ENB | TN_32MODE) as u32);
        let cnt = r32(&mut r.h, MAIN_CNT);
        w32(&mut r.h, tcmp(1), cnt + 10);
        run_until(&mut r, 2_000_000);
        assert_eq!(r.pins[8].edges(), 1);
        // A comparator written behind the counter does not fire (until it wraps).
        let cnt = r32(&mut r.h, MAIN_CNT);
        w32(&mut r.h, tcmp(0), cnt - 1);
        run_until(&mut r, 3_000_000);
        assert_eq!(r.pins[2].edges(), 1);
    }

    #[test]
    fn periodic_like_linux_set_state_periodic() {
        let mut r = rig();
        w32(&mut r.h, GEN_CONF, (ENABLE_CNF | LEG_RT_CNF) as u32);
        let delta = 100_000u32; // 1 ms
        let cfg = TN_INT_ENB | TN_TYPE_PERIODIC | TN_VAL_SET | TN_32MODE;
        w32(&mut r.h, tconf(0), cfg as u32);
        let now = r32(&mut r.h, MAIN_CNT);
        w32(&mut r.h, tcmp(0), now + delta);
        w32(&mut r.h, tcmp(0), delta);
        let seen = run_until(&mut r, 10_000_000);
        assert_eq!(seen, (1..=10).map(|k| k * 1_000_000).collect::<Vec<_>>());
        assert_eq!(r.pins[2].edges(), 10);
        assert_eq!(r32(&mut r.h, tcmp(0)), 11 * delta);
        // A late tick merges the missed periods and stays in phase.
        r.clock.advance(3_500_000);
        r.h.tick(r.clock.now_ns());
        assert_eq!(r.pins[2].edges(), 11);
        assert_eq!(r.h.next_deadline_ns(), Some(14_000_000));
    }

    #[test]
    fn level_mode_routing_and_status() {
        let mut r = rig();
        w64(&mut r.h, GEN_CONF, ENABLE_CNF);
        // Unsupported route (pin 5) is refused; pin 21 is taken.
        w64(&mut r.h, tconf(2), TN_INT_ENB | TN_INT_TYPE_LEVEL | 5 << 9);
        assert_eq!(r64(&mut r.h, tconf(2)) & TN_ROUTE_MASK, 0);
        w64(&mut r.h, tconf(2), TN_INT_ENB | TN_INT_TYPE_LEVEL | 21 << 9);
        assert_eq!(r64(&mut r.h, tconf(2)) >> 32, HPET_ROUTE_CAP as u64);
        w64(&mut r.h, tcmp(2), 1_000);
        run_until(&mut r, 20_000);
        assert!(r.pins[21].level());
        assert_eq!(r64(&mut r.h, GINTR_STA), 1 << 2);
        w64(&mut r.h, GINTR_STA, 1 << 2);
        assert!(!r.pins[21].level());
        assert_eq!(r64(&mut r.h, GINTR_STA), 0);
        // 64-bit comparator in two 32-bit halves.
        w32(&mut r.h, tcmp(2), 0x10);
        w32(&mut r.h, tcmp(2) + 4, 0x1);
        assert_eq!(r64(&mut r.h, tcmp(2)), 0x1_0000_0010);
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = crate::ports::test_util::Rng(0x4E7);
        let mut r = rig();
        for _ in 0..50_000 {
            let w = rng.width();
            let off = match rng.next() % 4 {
                0 => rng.next() % 0x2000,
                _ => [
                    GEN_CONF,
                    GINTR_STA,
                    MAIN_CNT,
                    tconf(0),
                    tcmp(1),
                    tconf(2),
                    tcmp(2) + 4,
                ][(rng.next() % 7) as usize],
            };
            match rng.next() % 5 {
                0 => r.clock.advance(rng.next() >> 30),
                1 => {
                    r.h.next_deadline_ns();
                    r.h.tick(r.clock.now_ns());
                }
                2 => r.h.read(off, &mut vec![0; w]),
                _ => r.h.write(off, &rng.bytes(w)),
            }
        }
    }
}
