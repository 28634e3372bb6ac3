//! x87 control instructions: status and control words, FNCLEX, FNINIT, the environment
//! and full-state save/restore (the protected-mode formats, 32- and 16-bit operand size),
//! FWAIT, FNOP, FFREE, FINCSTP/FDECSTP.

use iced_x86::Code;

use super::softfp80::MASK80;
use super::state::{C1, FCW_BITS, SF, X87};
use super::{begin, check_available, read_mem, write_mem};
use crate::cpu::{reg, Cpu};
use crate::exception::Exception;
use crate::exec::sse::softfp::ALL_FLAGS;
use crate::insn::Trap;
use crate::insn::{Insn, OpEntry, OpTable, Step};
use crate::sysregs::cr0;

/// FNSTSW AX.
fn fstsw_ax(cpu: &mut Cpu, _: &Insn) -> Step {
    check_available(cpu)?;
    let sw = cpu.x87.status_word();
    cpu.set_reg::<2>(reg::RAX, sw as u64);
    Ok(())
}

/// FNSTSW m16.
fn fstsw_mem(cpu: &mut Cpu, i: &Insn) -> Step {
    check_available(cpu)?;
    let sw = cpu.x87.status_word();
    Ok(crate::exec::store::<2>(cpu, i, sw as u64)?)
}

/// FNSTCW m16.
fn fstcw(cpu: &mut Cpu, i: &Insn) -> Step {
    check_available(cpu)?;
    let cw = cpu.x87.fcw;
    Ok(crate::exec::store::<2>(cpu, i, cw as u64)?)
}

/// FLDCW m16: unmasking a raised flag makes it pending (ES).
fn fldcw(cpu: &mut Cpu, i: &Insn) -> Step {
    check_available(cpu)?;
    cpu.x87.check_pending()?;
    let cw = crate::exec::load::<2>(cpu, i)? as u16;
    cpu.x87.fcw = (cw & FCW_BITS) | 0x40;
    cpu.x87.update_summary();
    Ok(())
}

/// FNCLEX: clears the flags, SF, ES and B.
fn fclex(cpu: &mut Cpu, _: &Insn) -> Step {
    check_available(cpu)?;
    cpu.x87.fsw &= !(ALL_FLAGS as u16 | SF | super::state::ES | super::state::B);
    Ok(())
}

/// The FNINIT state change: everything but the register contents is reset.
fn init(x: &mut X87) {
    let regs = x.regs;
    *x = X87::new();
    x.regs = regs;
}

/// FNINIT.
fn finit(cpu: &mut Cpu, _: &Insn) -> Step {
    check_available(cpu)?;
    init(&mut cpu.x87);
    Ok(())
}

/// FWAIT: #NM when CR0.TS and CR0.MP are both set (EM does not matter), then a pending
/// #MF.
fn fwait(cpu: &mut Cpu, _: &Insn) -> Step {
    if cpu.sys.cr0 & (cr0::TS | cr0::MP) == cr0::TS | cr0::MP {
        return Err(Trap::Exception(Exception::DeviceNotAvailable).into());
    }
    Ok(cpu.x87.check_pending()?)
}

/// FNOP.
fn fnop(cpu: &mut Cpu, i: &Insn) -> Step {
    Ok(begin(cpu, i, false)?)
}

/// FFREE ST(i) (and FFREEP, which also pops).
fn ffree<const POP: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    begin(cpu, i, false)?;
    cpu.x87.free(i.dst);
    if POP {
        cpu.x87.pop();
    }
    Ok(())
}

/// FINCSTP / FDECSTP: TOP moves, tags stay.
fn fstp_step<const DELTA: u8>(cpu: &mut Cpu, i: &Insn) -> Step {
    begin(cpu, i, false)?;
    cpu.x87.top = (cpu.x87.top + DELTA) & 7;
    cpu.x87.fsw &= !C1;
    Ok(())
}

/// Bytes of the protected-mode environment: 28 with a 32- or 64-bit operand size, 14
/// with a 16-bit one (66h prefix).
const fn env_len(short: bool) -> usize {
    if short {
        14
    } else {
        28
    }
}

/// The protected-mode environment (`short`: the 16-bit-operand format: FCW, FSW, FTW,
/// FIP offset, FIP selector, FDP offset, FDP selector, one word each; otherwise the same
/// as doublewords with the upper halves of the control words reserved (all ones), and
/// FOP beside the FIP selector).
fn env_bytes(x: &X87, short: bool) -> [u8; 28] {
    let mut b = [0u8; 28];
    let words: [u16; 3] = [x.fcw, x.status_word(), x.tag_word()];
    if short {
        for (k, w) in words.iter().enumerate() {
            b[2 * k..2 * k + 2].copy_from_slice(&w.to_le_bytes());
        }
        b[6..8].copy_from_slice(&(x.fip as u16).to_le_bytes());
        b[10..12].copy_from_slice(&(x.fdp as u16).to_le_bytes());
        return b;
    }
    for (k, w) in words.iter().enumerate() {
        b[4 * k..4 * k + 2].copy_from_slice(&w.to_le_bytes());
        b[4 * k + 2..4 * k + 4].copy_from_slice(&0xffffu16.to_le_bytes());
    }
    b[12..16].copy_from_slice(&(x.fip as u32).to_le_bytes());
    b[18..20].copy_from_slice(&(x.fop & 0x7ff).to_le_bytes());
    b[20..24].copy_from_slice(&(x.fdp as u32).to_le_bytes());
    b[26..28].copy_from_slice(&0xffffu16.to_le_bytes());
    b
}

/// Loads an environment in either format.
fn load_env(x: &mut X87, b: &[u8], short: bool) {
    let w = |k: usize| u16::from_le_bytes([b[k], b[k + 1]]);
    let d = |k: usize| u32::from_le_bytes([b[k], b[k + 1], b[k + 2], b[k + 3]]);
    let stride = if short { 2 } else { 4 };
    x.fcw = (w(0) & FCW_BITS) | 0x40;
    x.set_status_word(w(stride));
    x.set_tag_word(w(2 * stride));
    if short {
        x.fip = w(6) as u64;
        x.fdp = w(10) as u64;
    } else {
        x.fip = d(12) as u64;
        x.fop = w(18) & 0x7ff;
        x.fdp = d(20) as u64;
    }
    x.update_summary();
}

/// FNSTENV m28 (m14 with `SHORT`): stores the environment, then masks every exception.
fn fstenv<const SHORT: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    check_available(cpu)?;
    let addr = i.ea(cpu);
    let b = env_bytes(&cpu.x87, SHORT);
    write_mem(cpu, addr, &b[..env_len(SHORT)])?;
    cpu.x87.fcw |= ALL_FLAGS as u16;
    cpu.x87.update_summary();
    Ok(())
}

/// FLDENV m28 (m14).
fn fldenv<const SHORT: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    check_available(cpu)?;
    cpu.x87.check_pending()?;
    let addr = i.ea(cpu);
    let mut b = [0u8; 28];
    read_mem(cpu, addr, &mut b[..env_len(SHORT)])?;
    load_env(&mut cpu.x87, &b, SHORT);
    Ok(())
}

/// FNSAVE m108 (m94): the environment and the registers in stack order, then FNINIT.
fn fsave<const SHORT: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    check_available(cpu)?;
    let addr = i.ea(cpu);
    let env = env_len(SHORT);
    let mut b = [0u8; 108];
    b[..env].copy_from_slice(&env_bytes(&cpu.x87, SHORT)[..env]);
    for k in 0..8u8 {
        let v = cpu.x87.regs[cpu.x87.phys(k)];
        let off = env + 10 * k as usize;
        b[off..off + 10].copy_from_slice(&v.to_le_bytes()[..10]);
    }
    write_mem(cpu, addr, &b[..env + 80])?;
    init(&mut cpu.x87);
    Ok(())
}

/// FRSTOR m108 (m94).
fn frstor<const SHORT: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    check_available(cpu)?;
    cpu.x87.check_pending()?;
    let addr = i.ea(cpu);
    let env = env_len(SHORT);
    let mut b = [0u8; 108];
    read_mem(cpu, addr, &mut b[..env + 80])?;
    let mut x = cpu.x87.clone();
    load_env(&mut x, &b, SHORT);
    for k in 0..8u8 {
        let off = env + 10 * k as usize;
        let mut r = [0u8; 16];
        r[..10].copy_from_slice(&b[off..off + 10]);
        let p = x.phys(k);
        x.regs[p] = u128::from_le_bytes(r) & MASK80;
    }
    cpu.x87 = x;
    Ok(())
}

/// Registers the control instructions.
///
/// The waiting forms (FSTSW, FSTCW, FCLEX, FINIT, FSTENV, FSAVE) are WAIT followed by
/// the non-waiting instruction, and the decoder returns them as those two instructions,
/// so only the non-waiting forms have handlers.
pub(crate) fn register(t: &mut OpTable) {
    use Code::*;
    t.set(Fnstsw_AX, OpEntry::reg(fstsw_ax));
    t.set(Fnstsw_m2byte, OpEntry::mem(fstsw_mem));
    t.set(Fnstcw_m2byte, OpEntry::mem(fstcw));
    t.set(Fldcw_m2byte, OpEntry::mem(fldcw));
    t.set(Fnclex, OpEntry::reg(fclex));
    t.set(Fninit, OpEntry::reg(finit));
    t.set(Wait, OpEntry::reg(fwait));
    t.set(Fnop, OpEntry::reg(fnop));
    t.set(Ffree_sti, OpEntry::reg(ffree::<false>));
    t.set(Ffreep_sti, OpEntry::reg(ffree::<true>));
    t.set(Fincstp, OpEntry::reg(fstp_step::<1>));
    t.set(Fdecstp, OpEntry::reg(fstp_step::<7>));
    t.set(Fnstenv_m28byte, OpEntry::mem(fstenv::<false>));
    t.set(Fnstenv_m14byte, OpEntry::mem(fstenv::<true>));
    t.set(Fldenv_m28byte, OpEntry::mem(fldenv::<false>));
    t.set(Fldenv_m14byte, OpEntry::mem(fldenv::<true>));
    t.set(Fnsave_m108byte, OpEntry::mem(fsave::<false>));
    t.set(Fnsave_m94byte, OpEntry::mem(fsave::<true>));
    t.set(Frstor_m108byte, OpEntry::mem(frstor::<false>));
    t.set(Frstor_m94byte, OpEntry::mem(frstor::<true>));
}
