//! The CMOS real-time clock (MC146818 style) and its 128 bytes of NVRAM, at I/O 0x70
//! (index; bit 7, the NMI mask, is ignored) and 0x71 (data). IRQ 8.
//!
//! The time starts from the host's wall clock (UTC) when the device is created and then
//! advances with the machine's [`VirtualClock`], so it agrees with the other timers; the
//! guest may set it (SET bit in register B, write the fields, clear SET). Registers:
//! seconds/minutes/hours and their alarms, day of week (Sunday = 1), day, month, year, and
//! the century at 0x32; A (UIP, divider and periodic rate), B (SET, PIE, AIE, UIE, binary
//! vs BCD, 24 vs 12 hours), C (IRQF, PF, AF, UF; cleared by reading), D (VRT).
//!
//! Update-in-progress: UIP reads 1 during the last 244 us of every second (the update
//! cycle ends on the second boundary), as drivers polling it expect. Interrupt flags are
//! worked out from the clock when registers are read and by [`Rtc::tick`], which the
//! timer thread calls at [`Rtc::next_deadline_ns`]; IRQ 8 is high while IRQF is set (until
//! register C is read), so edge-triggered receivers see one edge per C-read cycle.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use emu_mmu::clock::VirtualClock;
use emu_mmu::BusDevice;

use crate::irq::IrqLine;

/// The index and data ports (map at [`RTC_PORT_BASE`], length 2).
pub const RTC_PORT_BASE: u16 = 0x70;
/// The ISA IRQ of the RTC.
pub const RTC_IRQ: u8 = 8;

const NS_PER_SEC: i128 = 1_000_000_000;
/// How long UIP is set before each update.
const UIP_NS: i128 = 244_000;

// Register indices.
const SEC: usize = 0x00;
const SEC_ALARM: usize = 0x01;
const MIN: usize = 0x02;
const MIN_ALARM: usize = 0x03;
const HOUR: usize = 0x04;
const HOUR_ALARM: usize = 0x05;
const WEEKDAY: usize = 0x06;
const DAY: usize = 0x07;
const MONTH: usize = 0x08;
const YEAR: usize = 0x09;
const REG_A: usize = 0x0A;
const REG_B: usize = 0x0B;
const REG_C: usize = 0x0C;
const REG_D: usize = 0x0D;
const CENTURY: usize = 0x32;

// Register bits.
const A_UIP: u8 = 0x80;
const B_SET: u8 = 0x80;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;
const D_VRT: u8 = 0x80;

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + (m <= 2) as i64, m, d)
}

/// The CMOS RTC and NVRAM.
pub struct Rtc {
    clock: VirtualClock,
    cmos: [u8; 128],
    index: usize,
    /// RTC time in nanoseconds since 1970 = `epoch_ns + clock.now_ns()`.
    epoch_ns: i128,
    /// Events up to this clock time have been turned into flags.
    accounted_ns: u64,
    irq_level: bool,
    irq: Arc<dyn IrqLine>,
}

impl Rtc {
    /// An RTC showing the host's current UTC time, timed by `clock`, driving `irq` (IRQ 8).
    pub fn new(clock: VirtualClock, irq: Arc<dyn IrqLine>) -> Self {
        let host_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        Self::with_time_ns(clock, irq, host_ns)
    }

    /// An RTC showing `unix_ns` (nanoseconds since 1970, UTC) now.
    pub fn with_time_ns(clock: VirtualClock, irq: Arc<dyn IrqLine>, unix_ns: i128) -> Self {
        let now = clock.now_ns();
        let mut cmos = [0u8; 128];
        cmos[REG_A] = 0x26; // 32.768 kHz time base, 1024 Hz periodic rate
        cmos[REG_B] = B_24H;
        cmos[REG_D] = D_VRT;
        let mut rtc = Rtc {
            clock,
            cmos,
            index: 0,
            epoch_ns: unix_ns - now as i128,
            accounted_ns: now,
            irq_level: false,
            irq,
        };
        rtc.refresh_time(now);
        rtc
    }

    /// Writes a byte of NVRAM (e.g. for firmware-style configuration the guest reads).
    pub fn set_nvram(&mut self, index: u8, value: u8) {
        self.cmos[(index & 0x7F) as usize] = value;
    }

    fn b(&self) -> u8 {
        self.cmos[REG_B]
    }

    fn rtc_ns(&self, now: u64) -> i128 {
        self.epoch_ns + now as i128
    }

    fn secs(&self, now: u64) -> i64 {
        self.rtc_ns(now).div_euclid(NS_PER_SEC) as i64
    }

    fn encode(&self, v: i64) -> u8 {
        let v = v.rem_euclid(100) as u8;
        if self.b() & B_BINARY != 0 {
            v
        } else {
            (v / 10) << 4 | (v % 10)
        }
    }

    fn decode(&self, v: u8) -> i64 {
        if self.b() & B_BINARY != 0 {
            v as i64
        } else {
            ((v >> 4) as i64) * 10 + (v & 0xF) as i64
        }
    }

    fn encode_hour(&self, h: i64) -> u8 {
        if self.b() & B_24H != 0 {
            self.encode(h)
        } else {
            let h12 = if h % 12 == 0 { 12 } else { h % 12 };
            self.encode(h12) | if h >= 12 { 0x80 } else { 0 }
        }
    }

    fn decode_hour(&self, v: u8) -> i64 {
        if self.b() & B_24H != 0 {
            self.decode(v) % 24
        } else {
            self.decode(v & 0x7F) % 12 + if v & 0x80 != 0 { 12 } else { 0 }
        }
    }

    /// Writes the current time into the time registers (unless SET freezes them).
    fn refresh_time(&mut self, now: u64) {
        if self.b() & B_SET != 0 {
            return;
        }
        let secs = self.secs(now);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        self.cmos[SEC] = self.encode(sod % 60);
        self.cmos[MIN] = self.encode(sod / 60 % 60);
        self.cmos[HOUR] = self.encode_hour(sod / 3600);
        self.cmos[WEEKDAY] = self.encode((days + 4).rem_euclid(7) + 1);
        self.cmos[DAY] = self.encode(d);
        self.cmos[MONTH] = self.encode(m);
        self.cmos[YEAR] = self.encode(y.rem_euclid(100));
        self.cmos[CENTURY] = self.encode(y.div_euclid(100));
    }

    /// The time the registers hold, in seconds since 1970.
    fn parse_time(&self) -> i64 {
        let year = self.decode(self.cmos[CENTURY]) * 100 + self.decode(self.cmos[YEAR]);
        let month = self.decode(self.cmos[MONTH]).clamp(1, 12);
        let day = self.decode(self.cmos[DAY]).clamp(1, 31);
        let days = days_from_civil(year, month, day);
        days * 86_400
            + self.decode_hour(self.cmos[HOUR]) * 3600
            + self.decode(self.cmos[MIN]) * 60
            + self.decode(self.cmos[SEC])
    }

    /// Sets the clock so that it reads the registers' time now, plus `phase_ns`.
    fn adopt_registers(&mut self, now: u64, phase_ns: i128) {
        self.epoch_ns = self.parse_time() as i128 * NS_PER_SEC + phase_ns - now as i128;
    }

    fn alarm_matches(&self, secs: i64) -> bool {
        let sod = secs.rem_euclid(86_400);
        let field = |alarm: usize, value: i64, hour: bool| {
            let a = self.cmos[alarm];
            // 0b11xx_xxxx is "don't care".
            a & 0xC0 == 0xC0
                || if hour {
                    self.decode_hour(a) == value
                } else {
                    self.decode(a) == value
                }
        };
        field(SEC_ALARM, sod % 60, false)
            && field(MIN_ALARM, sod / 60 % 60, false)
            && field(HOUR_ALARM, sod / 3600, true)
    }

    /// The periodic interrupt's period in 32.768 kHz ticks (rate select in register A).
    fn periodic_ticks(&self) -> Option<u64> {
        match self.cmos[REG_A] & 0x0F {
            0 => None,
            1 => Some(128),
            2 => Some(256),
            r => Some(1 << (r - 1)),
        }
    }

    fn ticks_32k(ns: u64) -> u64 {
        (ns as u128 * 32_768 / 1_000_000_000) as u64
    }

    /// Turns the updates, alarms and periodic ticks since the last call into flags.
    fn catch_up(&mut self, now: u64) {
        let then = self.accounted_ns;
        if now <= then {
            return;
        }
        self.accounted_ns = now;
        let mut flags = 0;
        if self.b() & B_SET == 0 {
            let (s0, s1) = (self.secs(then), self.secs(now));
            if s1 > s0 {
                flags |= C_UF;
                // The alarm repeats at most daily: look at no more than a day of updates.
                let first = (s0 + 1).max(s1 - 86_400);
                if (first..=s1).any(|s| self.alarm_matches(s)) {
                    flags |= C_AF;
                }
            }
        }
        if let Some(p) = self.periodic_ticks() {
            if Self::ticks_32k(now) / p > Self::ticks_32k(then) / p {
                flags |= C_PF;
            }
        }
        self.cmos[REG_C] |= flags;
        self.update_irq();
    }

    fn update_irq(&mut self) {
        let c = self.cmos[REG_C];
        let enabled = self.b() & (B_PIE | B_AIE | B_UIE);
        let irqf = c & enabled & (C_PF | C_AF | C_UF) != 0;
        if irqf {
            self.cmos[REG_C] |= C_IRQF;
        }
        if irqf != self.irq_level {
            self.irq_level = irqf;
            self.irq.set_level(irqf);
        }
    }

    /// When the next enabled interrupt is due; `None` while none is enabled or IRQ 8 is
    /// already high (nothing changes until the guest reads register C).
    pub fn next_deadline_ns(&self) -> Option<u64> {
        if self.irq_level {
            return None;
        }
        let now = self.clock.now_ns();
        let b = self.b();
        let mut best: Option<u64> = None;
        if b & (B_UIE | B_AIE) != 0 && b & B_SET == 0 {
            // The next second boundary of the RTC's time.
            let rtc = self.rtc_ns(now);
            let next = (rtc.div_euclid(NS_PER_SEC) + 1) * NS_PER_SEC;
            best = Some((next - self.epoch_ns).max(0) as u64);
        }
        if b & B_PIE != 0 {
            if let Some(p) = self.periodic_ticks() {
                let k = Self::ticks_32k(now) / p + 1;
                let t = ((k as u128 * p as u128) * 1_000_000_000).div_ceil(32_768) as u64;
                best = Some(best.map_or(t, |b| b.min(t)));
            }
        }
        best
    }

    /// Raises IRQ 8 for the events that have happened by `now_ns`.
    pub fn tick(&mut self, now_ns: u64) {
        self.catch_up(now_ns);
    }

    fn read_data(&mut self, now: u64) -> u8 {
        self.catch_up(now);
        match self.index {
            SEC..=YEAR | CENTURY => {
                self.refresh_time(now);
                self.cmos[self.index]
            }
            REG_A => {
                let phase = self.rtc_ns(now).rem_euclid(NS_PER_SEC);
                let uip = self.b() & B_SET == 0 && phase >= NS_PER_SEC - UIP_NS;
                self.cmos[REG_A] & 0x7F | if uip { A_UIP } else { 0 }
            }
            REG_C => {
                let c = self.cmos[REG_C];
                self.cmos[REG_C] = 0;
                self.update_irq();
                c
            }
            i => self.cmos[i],
        }
    }

    fn write_data(&mut self, value: u8, now: u64) {
        self.catch_up(now);
        match self.index {
            SEC | MIN | HOUR | WEEKDAY | DAY | MONTH | YEAR | CENTURY => {
                let running = self.b() & B_SET == 0;
                self.refresh_time(now);
                self.cmos[self.index] = value;
                if running {
                    // Keep the sub-second phase: the divider chain was not reset.
                    let phase = self.rtc_ns(now).rem_euclid(NS_PER_SEC);
                    self.adopt_registers(now, phase);
                }
            }
            REG_A => self.cmos[REG_A] = value & 0x7F,
            REG_B => {
                let was_set = self.b() & B_SET != 0;
                // Setting SET freezes the registers at the current time (and clears UIE).
                if !was_set && value & B_SET != 0 {
                    self.refresh_time(now);
                }
                // Switching between BCD and binary or 12 and 24 hours re-encodes nothing on
                // real parts; the registers are rewritten from the running time below.
                let mut v = value;
                if v & B_SET != 0 {
                    v &= !B_UIE;
                }
                if was_set && v & B_SET == 0 {
                    // Parse in the format the fields were written in, then restart the
                    // second with the divider chain.
                    self.adopt_registers(now, 0);
                    self.cmos[REG_B] = v;
                } else {
                    self.cmos[REG_B] = v;
                }
                self.refresh_time(now);
                self.update_irq();
            }
            REG_C | REG_D => {} // read-only
            i => self.cmos[i] = value,
        }
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let now = self.clock.now_ns();
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset.wrapping_add(i as u64) {
                // The index register is write-only; reads float.
                0 => 0xFF,
                1 => self.read_data(now),
                _ => 0xFF,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let now = self.clock.now_ns();
        for (i, &b) in data.iter().enumerate() {
            match offset.wrapping_add(i as u64) {
                0 => self.index = (b & 0x7F) as usize,
                1 => self.write_data(b, now),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::RecordingLine;

    /// 2024-02-29 23:59:58 UTC, a Thursday.
    const T0: i128 = 1_709_251_198;

    fn rtc() -> (Rtc, VirtualClock, Arc<RecordingLine>) {
        let clock = VirtualClock::manual();
        let line = Arc::new(RecordingLine::default());
        let r = Rtc::with_time_ns(clock.clone(), line.clone(), T0 * NS_PER_SEC);
        (r, clock, line)
    }

    fn get(r: &mut Rtc, reg: u8) -> u8 {
        r.write(0, &[reg | 0x80]); // NMI-disable bit set, ignored
        let mut b = [0];
        r.read(1, &mut b);
        b[0]
    }

    fn set(r: &mut Rtc, reg: u8, v: u8) {
        r.write(0, &[reg]);
        r.write(1, &[v]);
    }

    fn time(r: &mut Rtc) -> [u8; 8] {
        [0x32u8, 9, 8, 7, 6, 4, 2, 0].map(|reg| get(r, reg))
    }

    #[test]
    fn bcd_24h_time_and_date() {
        let (mut r, clock, _) = rtc();
        assert_eq!(
            time(&mut r),
            [0x20, 0x24, 0x02, 0x29, 0x05, 0x23, 0x59, 0x58]
        );
        clock.advance(2_000_000_000);
        assert_eq!(
            time(&mut r),
            [0x20, 0x24, 0x03, 0x01, 0x06, 0x00, 0x00, 0x00]
        );
        assert_eq!(get(&mut r, 0x0D), D_VRT);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let (mut r, _, _) = rtc();
        set(&mut r, 0x0B, B_BINARY | B_24H);
        assert_eq!(time(&mut r), [20, 24, 2, 29, 5, 23, 59, 58]);
        set(&mut r, 0x0B, B_BINARY);
        assert_eq!(get(&mut r, 4), 0x80 | 11, "11 PM");
        set(&mut r, 0x0B, 0);
        assert_eq!(get(&mut r, 4), 0x80 | 0x11);
    }

    #[test]
    fn setting_the_time() {
        let (mut r, clock, _) = rtc();
        set(&mut r, 0x0B, B_SET | B_24H);
        for (reg, v) in [
            (0x32u8, 0x19),
            (9, 0x99),
            (8, 0x12),
            (7, 0x31),
            (4, 0x23),
            (2, 0x59),
            (0, 0x50),
        ] {
            set(&mut r, reg, v);
        }
        clock.advance(5_000_000_000);
        assert_eq!(get(&mut r, 0), 0x50, "frozen while SET");
        set(&mut r, 0x0B, B_24H);
        clock.advance(10_500_000_000);
        assert_eq!(
            time(&mut r),
            [0x20, 0x00, 0x01, 0x01, 0x07, 0x00, 0x00, 0x00]
        );
    }

    #[test]
    fn update_in_progress_precedes_each_second() {
        let (mut r, clock, _) = rtc();
        assert_eq!(get(&mut r, 0x0A), 0x26);
        clock.set_ns(1_000_000_000 - 244_000 - 1);
        assert_eq!(get(&mut r, 0x0A) & A_UIP, 0);
        clock.set_ns(1_000_000_000 - 244_000);
        assert_eq!(get(&mut r, 0x0A) & A_UIP, A_UIP);
        assert_eq!(get(&mut r, 0), 0x58, "old second during the update");
        clock.set_ns(1_000_000_000);
        assert_eq!(get(&mut r, 0x0A) & A_UIP, 0);
        assert_eq!(get(&mut r, 0), 0x59);
    }

    #[test]
    fn update_ended_interrupt() {
        let (mut r, clock, line) = rtc();
        assert_eq!(r.next_deadline_ns(), None);
        set(&mut r, 0x0B, B_24H | B_UIE);
        get(&mut r, 0x0C);
        assert_eq!(r.next_deadline_ns(), Some(1_000_000_000));
        clock.set_ns(999_999_999);
        r.tick(clock.now_ns());
        assert!(!line.level());
        clock.set_ns(1_000_000_000);
        r.tick(clock.now_ns());
        assert!(line.level());
        assert_eq!(r.next_deadline_ns(), None);
        // PF is set too (the periodic rate runs whether or not PIE is set).
        assert_eq!(get(&mut r, 0x0C) & !C_PF, C_IRQF | C_UF);
        assert!(!line.level());
        assert_eq!(get(&mut r, 0x0C), 0);
        assert_eq!(r.next_deadline_ns(), Some(2_000_000_000));
    }

    #[test]
    fn periodic_interrupt_at_the_programmed_rate() {
        let (mut r, clock, line) = rtc();
        set(&mut r, 0x0A, 0x26); // rate 6: 1024 Hz
        set(&mut r, 0x0B, B_24H | B_PIE);
        let mut n = 0;
        while let Some(t) = r.next_deadline_ns() {
            if t > 1_000_000_000 {
                break;
            }
            clock.set_ns(t);
            r.tick(t);
            assert!(line.level());
            assert_eq!(get(&mut r, 0x0C) & (C_IRQF | C_PF), C_IRQF | C_PF);
            n += 1;
        }
        assert_eq!(n, 1024);
    }

    #[test]
    fn alarm_interrupt() {
        let (mut r, clock, line) = rtc();
        set(&mut r, 0x01, 0x05); // 00:00:05
        set(&mut r, 0x03, 0x00);
        set(&mut r, 0x05, 0x00);
        set(&mut r, 0x0B, B_24H | B_AIE);
        clock.set_ns(6_000_000_000);
        r.tick(clock.now_ns());
        assert!(!line.level(), "00:00:04");
        clock.set_ns(7_000_000_000);
        r.tick(clock.now_ns());
        assert!(line.level());
        assert_eq!(get(&mut r, 0x0C) & C_AF, C_AF);
    }

    #[test]
    fn nvram_and_garbage() {
        let (mut r, clock, _) = rtc();
        set(&mut r, 0x40, 0xAB);
        assert_eq!(get(&mut r, 0x40), 0xAB);
        let mut rng = crate::ports::test_util::Rng(0x146818);
        for _ in 0..20_000 {
            let w = rng.width();
            let off = rng.next() % 3;
            match rng.next() % 5 {
                0 => clock.advance(rng.next() >> 24),
                1 => {
                    r.next_deadline_ns();
                    r.tick(clock.now_ns());
                }
                2 => r.read(off, &mut vec![0; w]),
                _ => r.write(off, &rng.bytes(w)),
            }
        }
    }
}
