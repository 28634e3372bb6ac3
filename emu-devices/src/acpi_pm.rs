//! ACPI fixed-hardware registers: the PM1a event and control blocks, the PM timer, and
//! the reset register at I/O 0xCF9.
//!
//! The layout the FADT (written in emu-boot) must describe:
//!
//! | register  | port  | width | notes |
//! |-----------|-------|-------|-------|
//! | PM1a_EVT  | 0x600 | 4     | PM1_STS at 0x600, PM1_EN at 0x602 |
//! | PM1a_CNT  | 0x604 | 2     | SCI_EN always set (no SMI_CMD: ACPI mode is always on) |
//! | PM_TMR    | 0x608 | 4     | 3.579545 MHz, 32 bits wide: set TMR_VAL_EXT |
//! | RESET_REG | 0xCF9 | 1     | RESET_VALUE 6 |
//!
//! SCI is ISA IRQ 9, level, high while an enabled status bit is set. Sleep type 5 is S5:
//! `poweroff` writes SLP_TYP=5 | SLP_EN to PM1a_CNT, which calls the injected power-off
//! [`Signal`]; other sleep states are not offered, and requests for them are ignored.
//!
//! The timer is derived from the machine's [`VirtualClock`]. Its status bit (TMR_STS, set
//! each time bit 31 of the counter flips) is computed when read; the SCI it may cause is
//! raised by [`AcpiPm::tick`] at [`AcpiPm::next_deadline_ns`], as for the other timers
//! (only when the guest enables it; Linux does not).

use std::sync::Arc;

use emu_mmu::clock::VirtualClock;

use crate::irq::IrqLine;
use crate::legacy::Signal;
use crate::ports::PortIo;

/// PM1a event block (PM1_STS, then PM1_EN).
pub const PM1A_EVT_BLK: u16 = 0x600;
/// PM1a control block.
pub const PM1A_CNT_BLK: u16 = 0x604;
/// PM timer block.
pub const PM_TMR_BLK: u16 = 0x608;
/// The reset register (FADT RESET_REG, in I/O space).
pub const RESET_REG: u16 = 0xCF9;
/// The value the FADT tells the OS to write to [`RESET_REG`].
pub const RESET_VALUE: u8 = 0x06;
/// The ISA IRQ of the SCI.
pub const SCI_IRQ: u8 = 9;
/// SLP_TYP of S5 (soft off), for the DSDT's `\_S5` package.
pub const SLP_TYP_S5: u8 = 5;
/// The PM timer's frequency in Hz.
pub const PM_TIMER_HZ: u64 = 3_579_545;

// PM1_STS / PM1_EN bits.
const TMR: u16 = 1 << 0;
const GBL: u16 = 1 << 5;
const PWRBTN: u16 = 1 << 8;
const SLPBTN: u16 = 1 << 9;
const RTC: u16 = 1 << 10;
const WAK_STS: u16 = 1 << 15;
/// Status bits this model can set (and so the guest can clear).
const STS_MASK: u16 = TMR | GBL | PWRBTN | SLPBTN | RTC | WAK_STS;
const EN_MASK: u16 = TMR | GBL | PWRBTN | SLPBTN | RTC;

// PM1_CNT bits.
const SCI_EN: u16 = 1 << 0;
const SLP_EN: u16 = 1 << 13;

/// The PM1a blocks, the PM timer and the reset register.
pub struct AcpiPm {
    clock: VirtualClock,
    /// PM1_STS bits other than TMR_STS.
    sts: u16,
    /// Which flip of counter bit 31 TMR_STS was last cleared at.
    tmr_epoch_cleared: u64,
    en: u16,
    /// PM1_CNT as written (SCI_EN is forced on when read; SLP_EN is write-only).
    cnt: u16,
    /// 0xCF9 as written (bits 1 and 3; bit 2 self-clears).
    reset_ctl: u8,
    sci_level: bool,
    sci: Arc<dyn IrqLine>,
    power_off: Signal,
    reset: Signal,
}

impl AcpiPm {
    /// The I/O ranges to map with a [`PortWindow`](crate::ports::PortWindow) each.
    pub const PORT_RANGES: &'static [(u16, u16)] = &[(PM1A_EVT_BLK, 12), (RESET_REG, 1)];

    /// The registers, timed by `clock`, raising `sci` (ISA IRQ 9), calling `power_off` on an
    /// S5 request and `reset` on a write of the reset value to 0xCF9.
    pub fn new(
        clock: VirtualClock,
        sci: Arc<dyn IrqLine>,
        power_off: Signal,
        reset: Signal,
    ) -> Self {
        AcpiPm {
            clock,
            sts: 0,
            tmr_epoch_cleared: 0,
            en: 0,
            cnt: SCI_EN,
            reset_ctl: 0,
            sci_level: false,
            sci,
            power_off,
            reset,
        }
    }

    /// The PM timer's full count at `now_ns` (the register shows its low 32 bits).
    fn ticks(now_ns: u64) -> u64 {
        (now_ns as u128 * PM_TIMER_HZ as u128 / 1_000_000_000) as u64
    }

    /// The PM timer register at `now_ns`.
    pub fn timer_value(now_ns: u64) -> u32 {
        Self::ticks(now_ns) as u32
    }

    /// Presses the power button: sets PWRBTN_STS, an SCI if the guest enabled it (an
    /// ACPI-aware guest then shuts down cleanly).
    pub fn press_power_button(&mut self) {
        self.sts |= PWRBTN;
        self.update_sci(self.clock.now_ns());
    }

    /// When TMR_STS will next cause an SCI, if the guest enabled it.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        if self.en & TMR == 0 || self.tmr_sts(self.clock.now_ns()) {
            return None;
        }
        // The next flip of bit 31 after the last one seen.
        let flip = (self.tmr_epoch_cleared + 1) << 31;
        Some((flip as u128 * 1_000_000_000).div_ceil(PM_TIMER_HZ as u128) as u64)
    }

    /// Raises the SCI if a timer-overflow status has come due by `now_ns`.
    pub fn tick(&mut self, now_ns: u64) {
        self.update_sci(now_ns);
    }

    fn tmr_sts(&self, now_ns: u64) -> bool {
        Self::ticks(now_ns) >> 31 != self.tmr_epoch_cleared
    }

    fn pm1_sts(&self, now_ns: u64) -> u16 {
        self.sts | if self.tmr_sts(now_ns) { TMR } else { 0 }
    }

    fn update_sci(&mut self, now_ns: u64) {
        let level = self.pm1_sts(now_ns) & self.en != 0;
        if level != self.sci_level {
            self.sci_level = level;
            self.sci.set_level(level);
        }
    }

    fn read8(&mut self, port: u16, now: u64) -> u8 {
        let byte = |v: u32, i: u16| (v >> (8 * i)) as u8;
        match port {
            0x600..=0x601 => byte(self.pm1_sts(now) as u32, port - 0x600),
            0x602..=0x603 => byte(self.en as u32, port - 0x602),
            0x604..=0x605 => byte(((self.cnt | SCI_EN) & !SLP_EN) as u32, port - 0x604),
            0x608..=0x60B => byte(Self::timer_value(now), port - 0x608),
            RESET_REG => self.reset_ctl,
            _ => 0xFF,
        }
    }

    fn write8(&mut self, port: u16, value: u8, now: u64) {
        let shift = 8 * (port & 1);
        let lane = 0xFFu16 << shift;
        let v = (value as u16) << shift;
        match port {
            0x600..=0x601 => {
                // Write 1 to clear.
                let clear = v & STS_MASK;
                if clear & TMR != 0 {
                    self.tmr_epoch_cleared = Self::ticks(now) >> 31;
                }
                self.sts &= !clear;
            }
            0x602..=0x603 => self.en = (self.en & !lane) | (v & EN_MASK),
            0x604..=0x605 => {
                self.cnt = (self.cnt & !lane) | v;
                if self.cnt & SLP_EN != 0 {
                    self.cnt &= !SLP_EN;
                    let slp_typ = (self.cnt >> 10) & 7;
                    if slp_typ == SLP_TYP_S5 as u16 {
                        (self.power_off)();
                    }
                }
            }
            RESET_REG => {
                // RST_CPU (bit 2) starts the reset; it reads back clear.
                if value & 0x04 != 0 {
                    (self.reset)();
                }
                self.reset_ctl = value & 0x0A;
            }
            _ => {}
        }
    }
}

impl PortIo for AcpiPm {
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
        self.update_sci(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::RecordingLine;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Rig {
        pm: AcpiPm,
        clock: VirtualClock,
        sci: Arc<RecordingLine>,
        offs: Arc<AtomicUsize>,
        resets: Arc<AtomicUsize>,
    }

    fn rig() -> Rig {
        let clock = VirtualClock::manual();
        let sci = Arc::new(RecordingLine::default());
        let offs = Arc::new(AtomicUsize::new(0));
        let resets = Arc::new(AtomicUsize::new(0));
        let (o, r) = (offs.clone(), resets.clone());
        let pm = AcpiPm::new(
            clock.clone(),
            sci.clone(),
            Arc::new(move || {
                o.fetch_add(1, Ordering::SeqCst);
            }),
            Arc::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }),
        );
        Rig {
            pm,
            clock,
            sci,
            offs,
            resets,
        }
    }

    fn read32(pm: &mut AcpiPm, port: u16) -> u32 {
        let mut b = [0u8; 4];
        pm.port_read(port, &mut b);
        u32::from_le_bytes(b)
    }

    fn read16(pm: &mut AcpiPm, port: u16) -> u16 {
        let mut b = [0u8; 2];
        pm.port_read(port, &mut b);
        u16::from_le_bytes(b)
    }

    #[test]
    fn pm_timer_runs_at_3_579545_mhz() {
        let mut r = rig();
        assert_eq!(read32(&mut r.pm, PM_TMR_BLK), 0);
        r.clock.advance(1_000_000_000);
        assert_eq!(read32(&mut r.pm, PM_TMR_BLK), 3_579_545);
        r.clock.advance(1_000_000);
        assert_eq!(read32(&mut r.pm, PM_TMR_BLK), 3_583_124);
        // Byte reads see the same value.
        let mut b = [0u8; 1];
        r.pm.port_read(PM_TMR_BLK + 2, &mut b);
        assert_eq!(b[0], (3_583_124u32 >> 16) as u8);
        // 32 bits wide: it wraps after 2^32 ticks (about 20 minutes).
        let wrap_ns = (1u128 << 32) * 1_000_000_000 / PM_TIMER_HZ as u128 + 1;
        r.clock.set_ns(wrap_ns as u64 + 1_000_000_000);
        assert!(read32(&mut r.pm, PM_TMR_BLK) < 3_579_547);
    }

    #[test]
    fn s5_powers_off_and_other_sleep_types_do_not() {
        let mut r = rig();
        assert_eq!(read16(&mut r.pm, PM1A_CNT_BLK) & SCI_EN, SCI_EN);
        // SLP_TYP=3 with SLP_EN: not offered, ignored.
        r.pm.port_write(PM1A_CNT_BLK, &(3u16 << 10 | SLP_EN).to_le_bytes());
        assert_eq!(r.offs.load(Ordering::SeqCst), 0);
        // SLP_TYP=5 alone: nothing yet.
        r.pm.port_write(PM1A_CNT_BLK, &(5u16 << 10).to_le_bytes());
        assert_eq!(r.offs.load(Ordering::SeqCst), 0);
        assert_eq!(read16(&mut r.pm, PM1A_CNT_BLK), 5 << 10 | SCI_EN);
        // Linux's acpi_hw_legacy_sleep: SLP_TYP, then SLP_TYP | SLP_EN.
        r.pm.port_write(PM1A_CNT_BLK, &(5u16 << 10 | SLP_EN | SCI_EN).to_le_bytes());
        assert_eq!(r.offs.load(Ordering::SeqCst), 1);
        assert_eq!(read16(&mut r.pm, PM1A_CNT_BLK) & SLP_EN, 0, "write-only");
    }

    #[test]
    fn reset_register() {
        let mut r = rig();
        r.pm.port_write(RESET_REG, &[0x02]);
        assert_eq!(r.resets.load(Ordering::SeqCst), 0);
        r.pm.port_write(RESET_REG, &[RESET_VALUE]);
        assert_eq!(r.resets.load(Ordering::SeqCst), 1);
        let mut b = [0u8];
        r.pm.port_read(RESET_REG, &mut b);
        assert_eq!(b[0], 0x02);
    }

    #[test]
    fn power_button_and_timer_status_raise_sci_when_enabled() {
        let mut r = rig();
        r.pm.press_power_button();
        assert!(!r.sci.level(), "not enabled");
        assert_eq!(read16(&mut r.pm, PM1A_EVT_BLK) & PWRBTN, PWRBTN);
        r.pm.port_write(PM1A_EVT_BLK + 2, &PWRBTN.to_le_bytes());
        assert!(r.sci.level());
        r.pm.port_write(PM1A_EVT_BLK, &PWRBTN.to_le_bytes());
        assert!(!r.sci.level(), "write 1 to clear");
        assert_eq!(read16(&mut r.pm, PM1A_EVT_BLK), 0);
        // Timer overflow: bit 31 flips after 2^31 ticks (10 minutes).
        r.pm.port_write(PM1A_EVT_BLK + 2, &TMR.to_le_bytes());
        let due = r.pm.next_deadline_ns().unwrap();
        assert_eq!(AcpiPm::ticks(due) >> 31, 1);
        assert_eq!(AcpiPm::ticks(due - 1) >> 31, 0);
        r.clock.set_ns(due);
        r.pm.tick(due);
        assert!(r.sci.level());
        assert_eq!(r.pm.next_deadline_ns(), None, "pending until cleared");
        r.pm.port_write(PM1A_EVT_BLK, &TMR.to_le_bytes());
        assert!(!r.sci.level());
        assert!(r.pm.next_deadline_ns().unwrap() > due);
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = crate::ports::test_util::Rng(0xAC91);
        let mut r = rig();
        for _ in 0..20_000 {
            let port = 0x600 + (rng.next() % 14) as u16;
            let port = if rng.next() % 8 == 0 { RESET_REG } else { port };
            let w = rng.width();
            match rng.next() % 5 {
                0 => r.clock.advance(rng.next() >> 20),
                1 => r.pm.tick(r.clock.now_ns()),
                2 => r.pm.port_read(port, &mut vec![0; w]),
                _ => r.pm.port_write(port, &rng.bytes(w)),
            }
        }
    }
}
