//! The x87 FPU: 80-bit extended precision in software, and FXSAVE/FXRSTOR.
//!
//! * `softfp80.rs`: the double-extended format with x87 semantics (precision and rounding
//!   control, flags, C1, the unmasked overflow/underflow responses, unsupported encodings).
//! * `state.rs`: [`X87`] (register file, TOP, status/control/tag words, last-instruction
//!   pointers) and the stack/exception mechanics.
//! * `arith.rs`: FADD..FDIVR in every form, compares (FCOM, FUCOM, FCOMI, FICOM, FTST),
//!   FXAM and the one-operand operations (FCHS, FABS, FSQRT, FRNDINT, FSCALE, FXTRACT).
//! * `load_store.rs`: FLD/FST/FSTP, FILD/FIST/FISTP/FISTTP, the constants, FXCH, FCMOVcc.
//! * `control.rs`: FNSTSW, FNSTCW/FLDCW, FNCLEX, FNINIT, FNSTENV/FLDENV, FNSAVE/FRSTOR,
//!   FWAIT, FNOP, FFREE, FINCSTP/FDECSTP.
//! * `fxsave.rs`: FXSAVE/FXRSTOR and the 512-byte image.
//!
//! * `transcendental.rs` and `wide.rs`: FSIN..FYL2XP1 in 128-bit arithmetic.
//!
//! Exceptions follow the hardware: an instruction that detects an unmasked exception
//! records it, sets ES and B, and completes (writing no result for IE, DE and ZE; the
//! wrapped result for OE and UE); the #MF is raised by the next waiting x87 instruction
//! or FWAIT, before it does anything. Control instructions (FNINIT, FNCLEX, FNSTSW,
//! FNSTCW, FNSTENV, FNSAVE) and FXSAVE/FXRSTOR do not wait.
//!
//! #NM comes before everything else: every x87 instruction raises it while CR0.EM or
//! CR0.TS is set, FXSAVE/FXRSTOR too, and WAIT/FWAIT while both CR0.TS and CR0.MP are.
//! CR0.NE=0 (reporting through FERR# and an external interrupt controller, the PC/AT
//! convention) is treated like NE=1: the #MF is always raised directly.
//!
//! Not implemented: MMX.

pub mod softfp80;
pub mod state;

mod arith;
mod control;
pub mod fxsave;
mod load_store;
pub mod transcendental;
pub mod wide;

pub use state::X87;

use crate::cpu::Cpu;
use crate::exception::Exception;
use crate::insn::{Insn, OpTable, Trap};
use crate::sysregs::cr0;

/// Registers the x87 instructions and FXSAVE/FXRSTOR.
pub(crate) fn register(t: &mut OpTable) {
    arith::register(t);
    load_store::register(t);
    control::register(t);
    fxsave::register(t);
}

/// #NM if the FPU is unavailable (CR0.EM or CR0.TS set): the first check of every x87
/// instruction and of FXSAVE/FXRSTOR.
#[inline]
pub(crate) fn check_available(cpu: &Cpu) -> Result<(), Trap> {
    if cpu.sys.cr0 & (cr0::EM | cr0::TS) != 0 {
        return Err(Trap::Exception(Exception::DeviceNotAvailable));
    }
    Ok(())
}

/// Start of every waiting x87 instruction: #NM if the FPU is unavailable, #MF if an
/// exception is pending, then record the instruction's address (and its memory
/// operand's, when `mem`) as the last x87 instruction.
#[inline]
pub(crate) fn begin(cpu: &mut Cpu, i: &Insn, mem: bool) -> Result<(), Trap> {
    check_available(cpu)?;
    cpu.x87.check_pending()?;
    cpu.x87.fip = i.rip;
    if mem {
        cpu.x87.fdp = i.ea(cpu);
    }
    Ok(())
}

/// Reads `buf.len()` bytes of guest memory at `addr` (8 at a time where possible).
pub(crate) fn read_mem(cpu: &mut Cpu, addr: u64, buf: &mut [u8]) -> Result<(), Trap> {
    let mut k = 0;
    while k < buf.len() {
        let a = addr.wrapping_add(k as u64);
        if buf.len() - k >= 8 {
            buf[k..k + 8].copy_from_slice(&cpu.mmu.read::<8>(a)?.to_le_bytes());
            k += 8;
        } else {
            buf[k] = cpu.mmu.read::<1>(a)? as u8;
            k += 1;
        }
    }
    Ok(())
}

/// Writes `data` to guest memory at `addr`, all or nothing.
pub(crate) fn write_mem(cpu: &mut Cpu, addr: u64, data: &[u8]) -> Result<(), Trap> {
    cpu.mmu.check_writable(addr, data.len() as u64)?;
    let mut k = 0;
    while k < data.len() {
        let a = addr.wrapping_add(k as u64);
        if data.len() - k >= 8 {
            let mut w = [0u8; 8];
            w.copy_from_slice(&data[k..k + 8]);
            cpu.mmu.write::<8>(a, u64::from_le_bytes(w))?;
            k += 8;
        } else {
            cpu.mmu.write::<1>(a, data[k] as u64)?;
            k += 1;
        }
    }
    Ok(())
}

/// Reads an 80-bit memory operand.
pub(crate) fn load80(cpu: &mut Cpu, addr: u64) -> Result<u128, Trap> {
    let lo = cpu.mmu.read::<8>(addr)?;
    let hi = cpu.mmu.read::<2>(addr.wrapping_add(8))?;
    Ok(lo as u128 | (hi as u128) << 64)
}

/// Writes an 80-bit memory operand, all or nothing.
pub(crate) fn store80(cpu: &mut Cpu, addr: u64, v: u128) -> Result<(), Trap> {
    let bytes = v.to_le_bytes();
    write_mem(cpu, addr, &bytes[..10])
}
