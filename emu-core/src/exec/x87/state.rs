//! The x87 register file and status/control/tag words, and the stack and exception
//! mechanics every x87 instruction shares.

use super::softfp80::{self, Class, Ctx, INDEFINITE};
use crate::exception::Exception;
use crate::exec::sse::softfp::{ALL_FLAGS, DE, IE, ZE};
use crate::insn::Trap;

/// Status word: C0.
pub const C0: u16 = 1 << 8;
/// Status word: C1.
pub const C1: u16 = 1 << 9;
/// Status word: C2.
pub const C2: u16 = 1 << 10;
/// Status word: C3.
pub const C3: u16 = 1 << 14;
/// Status word: stack fault (with IE).
pub const SF: u16 = 1 << 6;
/// Status word: exception summary.
pub const ES: u16 = 1 << 7;
/// Status word: busy (mirrors ES on every FPU since the 387).
pub const B: u16 = 1 << 15;
/// Status word: where TOP sits.
pub const TOP_SHIFT: u16 = 11;
/// Control word after FNINIT: all exceptions masked, 64-bit precision, round to nearest.
pub const FCW_INIT: u16 = 0x037f;
/// Control word bits that exist (the rest read as their FNINIT values: bit 6 reads 1).
pub const FCW_BITS: u16 = 0x1f3f;

/// The x87 FPU state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct X87 {
    /// The physical registers R0..R7, 80-bit encodings in the low bits. ST(i) is
    /// R((TOP + i) mod 8).
    pub regs: [u128; 8],
    /// Top-of-stack pointer (0..7).
    pub top: u8,
    /// Status word without the TOP field.
    pub fsw: u16,
    /// Control word.
    pub fcw: u16,
    /// Bit i set: R(i) is not empty (the FXSAVE "abridged" tag word; the full 2-bit tags
    /// are derived from the register contents, as the hardware does).
    pub valid: u8,
    /// Opcode of the last non-control instruction (low 11 bits).
    pub fop: u16,
    /// Address of the last non-control instruction.
    pub fip: u64,
    /// Address of its memory operand.
    pub fdp: u64,
}

impl Default for X87 {
    fn default() -> Self {
        Self::new()
    }
}

impl X87 {
    /// The state after FNINIT (also the state at CPU creation).
    pub fn new() -> Self {
        X87 {
            regs: [0; 8],
            top: 0,
            fsw: 0,
            fcw: FCW_INIT,
            valid: 0,
            fop: 0,
            fip: 0,
            fdp: 0,
        }
    }

    /// The status word with TOP.
    pub fn status_word(&self) -> u16 {
        (self.fsw & !(7 << TOP_SHIFT)) | ((self.top as u16 & 7) << TOP_SHIFT)
    }

    /// Loads a status word (TOP included).
    pub fn set_status_word(&mut self, fsw: u16) {
        self.top = ((fsw >> TOP_SHIFT) & 7) as u8;
        self.fsw = fsw & !(7 << TOP_SHIFT);
    }

    /// Recomputes ES and B from the flags and masks (after loading a control or status
    /// word: an unmasked pending flag then raises #MF at the next waiting instruction).
    pub fn update_summary(&mut self) {
        if self.fsw & !self.fcw & ALL_FLAGS as u16 != 0 {
            self.fsw |= ES | B;
        } else {
            self.fsw &= !(ES | B);
        }
    }

    /// The physical register number of ST(i).
    #[inline]
    pub fn phys(&self, i: u8) -> usize {
        ((self.top + i) & 7) as usize
    }

    /// ST(i), or `None` if that register is empty.
    #[inline]
    pub fn st(&self, i: u8) -> Option<u128> {
        let p = self.phys(i);
        (self.valid & (1 << p) != 0).then_some(self.regs[p])
    }

    /// Writes ST(i) and tags it valid.
    #[inline]
    pub fn set_st(&mut self, i: u8, v: u128) {
        let p = self.phys(i);
        self.regs[p] = v & softfp80::MASK80;
        self.valid |= 1 << p;
    }

    /// Tags ST(i) empty.
    #[inline]
    pub fn free(&mut self, i: u8) {
        let p = self.phys(i);
        self.valid &= !(1 << p);
    }

    /// Pops: ST(0) becomes empty and TOP increments.
    #[inline]
    pub fn pop(&mut self) {
        self.free(0);
        self.top = (self.top + 1) & 7;
    }

    /// Pushes `v` (the caller has checked for overflow).
    #[inline]
    pub fn push(&mut self, v: u128) {
        self.top = (self.top + 7) & 7;
        self.set_st(0, v);
    }

    /// The full tag word: 00 valid, 01 zero, 10 special (NaN, infinity, denormal,
    /// unsupported), 11 empty, for R0..R7.
    pub fn tag_word(&self) -> u16 {
        (0..8).fold(0u16, |acc, p| {
            let tag = if self.valid & (1 << p) == 0 {
                3
            } else {
                match softfp80::classify(self.regs[p]) {
                    Class::Normal => 0,
                    Class::Zero => 1,
                    _ => 2,
                }
            };
            acc | tag << (2 * p)
        })
    }

    /// Loads a full tag word: only "empty" or not matters.
    pub fn set_tag_word(&mut self, ftw: u16) {
        self.valid = (0..8).fold(0u8, |acc, p| acc | (((ftw >> (2 * p)) & 3 != 3) as u8) << p);
    }

    /// The rounding context of the control word (`use_pc`: whether precision control
    /// applies to this instruction).
    #[inline]
    pub fn ctx(&self, use_pc: bool) -> Ctx {
        Ctx::new(self.fcw, use_pc)
    }

    /// #MF if an unmasked exception is pending: what every waiting x87 instruction (and
    /// FWAIT) checks first, after #NM (see [`super::check_available`]).
    #[inline]
    pub fn check_pending(&self) -> Result<(), Trap> {
        if self.fsw & ES != 0 {
            return Err(Trap::Exception(Exception::FloatingPoint));
        }
        Ok(())
    }

    /// Records the exceptions of an instruction and decides whether its result is
    /// delivered: `false` when IE, DE or ZE is raised and unmasked (then only those
    /// are recorded). C1 is set from `c1` (stack faults: overflow 1, underflow 0;
    /// otherwise "rounded up" when PE is raised).
    pub fn commit(&mut self, ctx: &Ctx, c1_up: bool) -> bool {
        let mut flags = ctx.flags as u16 & ALL_FLAGS as u16;
        // An invalid operation hides a denormal operand (the operation ends before the
        // denormal check).
        if flags & IE as u16 != 0 {
            flags &= !(DE as u16);
        }
        let unmasked = flags & !self.fcw & ALL_FLAGS as u16;
        let pre = flags & (IE | DE | ZE) as u16;
        self.fsw &= !C1;
        if pre & unmasked != 0 {
            self.fsw |= pre | ES | B;
            return false;
        }
        self.fsw |= flags;
        if unmasked != 0 {
            self.fsw |= ES | B;
        }
        if c1_up && ctx.rounded_up && flags & crate::exec::sse::softfp::PE as u16 != 0 {
            self.fsw |= C1;
        }
        true
    }

    /// Stack fault: IE and SF, C1 = `overflow`. Returns whether the masked response
    /// (write the indefinite) applies.
    pub fn stack_fault(&mut self, overflow: bool) -> bool {
        self.fsw = (self.fsw & !C1) | IE as u16 | SF | if overflow { C1 } else { 0 };
        if self.fcw & IE as u16 == 0 {
            self.fsw |= ES | B;
            return false;
        }
        true
    }

    /// Pushes `v` computed under `ctx`, handling stack overflow and the exception
    /// response (a load that raised an unmasked IE pushes nothing; a denormal source
    /// is loaded even with DE unmasked, as the hardware does).
    pub fn push_result(&mut self, v: u128, ctx: &Ctx) {
        if self.st(7).is_some() {
            if self.stack_fault(true) {
                self.push(INDEFINITE);
            }
            return;
        }
        if self.commit(ctx, true) || ctx.flags & IE == 0 {
            self.push(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_pop_and_tags() {
        let mut x = X87::new();
        x.push(softfp80::ONE);
        assert_eq!(x.top, 7);
        assert_eq!(x.st(0), Some(softfp80::ONE));
        assert_eq!(x.tag_word(), 0x3fff);
        x.push(0);
        assert_eq!(x.tag_word(), 0x1fff);
        x.pop();
        x.pop();
        assert_eq!(x.tag_word(), 0xffff);
        assert_eq!(x.status_word(), 0);
    }

    #[test]
    fn overflowing_the_stack_pushes_the_indefinite_when_masked() {
        let mut x = X87::new();
        for _ in 0..8 {
            x.push(softfp80::ONE);
        }
        x.push_result(0, &x.ctx(false));
        assert_eq!(x.st(0), Some(INDEFINITE));
        assert_eq!(x.status_word() & (IE as u16 | SF | C1), IE as u16 | SF | C1);
        assert_eq!(x.fsw & ES, 0);
    }
}
