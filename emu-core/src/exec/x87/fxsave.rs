//! FXSAVE/FXRSTOR and the 512-byte image they use.
//!
//! Layout: FCW (0), FSW (2), abridged FTW (4), FOP (6), FIP (8), FDP (16) (the REX.W forms
//! store 64-bit pointers; the others a 32-bit offset and a zero selector), MXCSR (24),
//! MXCSR_MASK (28), ST(0)..ST(7) in 16-byte slots (32), XMM0..XMM15 (160); bytes 416..511
//! are reserved or available to software and not written.

use iced_x86::Code;

use super::softfp80::MASK80;
use crate::cpu::Cpu;
use crate::exception::Exception;
use crate::exec::sse::gp0;
use crate::insn::{Insn, OpEntry, OpTable, Step};

/// MXCSR bits FXRSTOR and LDMXCSR accept (DAZ included), reported as MXCSR_MASK.
pub const MXCSR_MASK: u32 = 0xffff;

/// Bytes FXSAVE writes.
pub const IMAGE_LEN: usize = 416;

/// The FXSAVE image of `cpu` (`rex_w`: 64-bit instruction and data pointers).
pub fn image(cpu: &Cpu, rex_w: bool) -> [u8; IMAGE_LEN] {
    let x = &cpu.x87;
    let mut b = [0u8; IMAGE_LEN];
    b[0..2].copy_from_slice(&x.fcw.to_le_bytes());
    b[2..4].copy_from_slice(&x.status_word().to_le_bytes());
    b[4] = x.valid;
    b[6..8].copy_from_slice(&(x.fop & 0x7ff).to_le_bytes());
    if rex_w {
        b[8..16].copy_from_slice(&x.fip.to_le_bytes());
        b[16..24].copy_from_slice(&x.fdp.to_le_bytes());
    } else {
        b[8..12].copy_from_slice(&(x.fip as u32).to_le_bytes());
        b[16..20].copy_from_slice(&(x.fdp as u32).to_le_bytes());
    }
    b[24..28].copy_from_slice(&cpu.mxcsr.to_le_bytes());
    b[28..32].copy_from_slice(&MXCSR_MASK.to_le_bytes());
    for k in 0..8u8 {
        let off = 32 + 16 * k as usize;
        let v = x.regs[x.phys(k)] & MASK80;
        b[off..off + 16].copy_from_slice(&v.to_le_bytes());
    }
    for (k, v) in cpu.xmm.iter().enumerate() {
        b[160 + 16 * k..176 + 16 * k].copy_from_slice(&v.to_le_bytes());
    }
    b
}

/// Loads an FXSAVE image into `cpu`.
///
/// # Errors
///
/// #GP(0) if the image's MXCSR sets a reserved bit (nothing is loaded then).
pub fn restore(cpu: &mut Cpu, b: &[u8], rex_w: bool) -> Result<(), Exception> {
    let w = |k: usize| u16::from_le_bytes([b[k], b[k + 1]]);
    let q = |k: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[k..k + 8]);
        u64::from_le_bytes(a)
    };
    let mxcsr = u32::from_le_bytes([b[24], b[25], b[26], b[27]]);
    if mxcsr & !MXCSR_MASK != 0 {
        return Err(Exception::GeneralProtection(0));
    }
    let x = &mut cpu.x87;
    x.fcw = (w(0) & super::state::FCW_BITS) | 0x40;
    x.set_status_word(w(2));
    // ES and B follow the loaded flags and masks, whatever the image says.
    x.update_summary();
    x.valid = b[4];
    x.fop = w(6) & 0x7ff;
    x.fip = if rex_w { q(8) } else { q(8) & 0xffff_ffff };
    x.fdp = if rex_w { q(16) } else { q(16) & 0xffff_ffff };
    for k in 0..8u8 {
        let off = 32 + 16 * k as usize;
        let mut r = [0u8; 16];
        r.copy_from_slice(&b[off..off + 16]);
        let p = x.phys(k);
        x.regs[p] = u128::from_le_bytes(r) & MASK80;
    }
    cpu.mxcsr = mxcsr;
    for k in 0..16 {
        let mut r = [0u8; 16];
        r.copy_from_slice(&b[160 + 16 * k..176 + 16 * k]);
        cpu.xmm[k] = u128::from_le_bytes(r);
    }
    Ok(())
}

/// FXSAVE / FXSAVE64 m512: #NM while CR0.TS or CR0.EM is set, 16-byte alignment or
/// #GP(0). Does not wait.
fn fxsave<const REX_W: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    super::check_available(cpu)?;
    let addr = i.ea(cpu);
    if addr & 15 != 0 {
        return Err(gp0().into());
    }
    let b = image(cpu, REX_W);
    Ok(super::write_mem(cpu, addr, &b)?)
}

/// FXRSTOR / FXRSTOR64 m512.
fn fxrstor<const REX_W: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    super::check_available(cpu)?;
    let addr = i.ea(cpu);
    if addr & 15 != 0 {
        return Err(gp0().into());
    }
    let mut b = [0u8; IMAGE_LEN];
    super::read_mem(cpu, addr, &mut b)?;
    Ok(restore(cpu, &b, REX_W)?)
}

/// Registers FXSAVE and FXRSTOR.
pub(crate) fn register(t: &mut OpTable) {
    use Code::*;
    t.set(Fxsave_m512byte, OpEntry::mem(fxsave::<false>));
    t.set(Fxsave64_m512byte, OpEntry::mem(fxsave::<true>));
    t.set(Fxrstor_m512byte, OpEntry::mem(fxrstor::<false>));
    t.set(Fxrstor64_m512byte, OpEntry::mem(fxrstor::<true>));
}
