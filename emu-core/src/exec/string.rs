//! String instructions: MOVS, STOS, LODS, SCAS, CMPS in every width, with REP, REPE and
//! REPNE, and 64-, 32- or 16-bit addressing.
//!
//! A repeated instruction runs in chunks: after [`REP_CHUNK`] iterations it ends its block
//! with RIP still on itself, so stop requests (and, later, interrupts) are seen inside long
//! loops. A fault part-way leaves RSI/RDI/RCX describing the iterations already done, with
//! RIP on the instruction, exactly as the processor does.

use iced_x86::Code;

use crate::cpu::{mask, reg, Cpu};
use crate::flags::FlagOp;
use crate::insn::{address_mask, Insn, OpEntry, OpTable, Step, Trap, REP, REPNE};

/// Iterations a repeated string instruction runs before yielding to the run loop.
pub const REP_CHUNK: u64 = 4096;

const MOVS: u8 = 0;
const STOS: u8 = 1;
const LODS: u8 = 2;
const SCAS: u8 = 3;
const CMPS: u8 = 4;

/// An index register (RSI, RDI, RCX) at the instruction's address size (`amask`).
#[inline(always)]
pub(crate) fn addr_reg(cpu: &Cpu, r: u8, amask: u64) -> u64 {
    cpu.regs[r as usize] & amask
}

/// Steps an index register at the instruction's address size: a 32-bit result is
/// zero-extended (as any 32-bit register write), a 16-bit one leaves bits 16.. alone.
#[inline(always)]
pub(crate) fn step_reg(cpu: &mut Cpu, r: u8, delta: u64, amask: u64) {
    let old = cpu.regs[r as usize];
    let v = old.wrapping_add(delta);
    cpu.regs[r as usize] = if amask == 0xffff {
        (old & !0xffff) | (v & 0xffff)
    } else {
        v & amask
    };
}

/// The linear address of offset `offset` in segment `seg` (legacy addresses wrap at
/// 4 GiB; in 64-bit mode `seg` is FLAT, FS or GS).
#[inline(always)]
pub(crate) fn string_linear(cpu: &Cpu, seg: u8, offset: u64) -> u64 {
    let linear = offset.wrapping_add(cpu.seg_base[seg as usize]);
    if cpu.in_64bit_mode() {
        linear
    } else {
        linear & 0xffff_ffff
    }
}

/// One iteration. Returns `Ok(zf)` for SCAS/CMPS (whether the compared values were equal).
#[inline(always)]
fn iterate<const OP: u8, const N: usize>(
    cpu: &mut Cpu,
    i: &Insn,
    amask: u64,
) -> Result<bool, Trap> {
    let delta = if cpu.df() {
        (N as u64).wrapping_neg()
    } else {
        N as u64
    };
    let src = string_linear(cpu, i.seg, addr_reg(cpu, reg::RSI, amask));
    let dst = string_linear(cpu, i.imm2 as u8, addr_reg(cpu, reg::RDI, amask));
    match OP {
        MOVS => {
            let v = cpu.mmu.read::<N>(src)?;
            cpu.mmu.write::<N>(dst, v)?;
            step_reg(cpu, reg::RSI, delta, amask);
            step_reg(cpu, reg::RDI, delta, amask);
            Ok(false)
        }
        STOS => {
            let v = cpu.reg::<N>(reg::RAX);
            cpu.mmu.write::<N>(dst, v)?;
            step_reg(cpu, reg::RDI, delta, amask);
            Ok(false)
        }
        LODS => {
            let v = cpu.mmu.read::<N>(src)?;
            cpu.set_reg::<N>(reg::RAX, v);
            step_reg(cpu, reg::RSI, delta, amask);
            Ok(false)
        }
        SCAS => {
            let a = cpu.reg::<N>(reg::RAX);
            let b = cpu.mmu.read::<N>(dst)?;
            cpu.flags
                .set::<N>(FlagOp::Sub, a, b, a.wrapping_sub(b) & mask::<N>());
            step_reg(cpu, reg::RDI, delta, amask);
            Ok(a == b)
        }
        _ => {
            let a = cpu.mmu.read::<N>(src)?;
            let b = cpu.mmu.read::<N>(dst)?;
            cpu.flags
                .set::<N>(FlagOp::Sub, a, b, a.wrapping_sub(b) & mask::<N>());
            step_reg(cpu, reg::RSI, delta, amask);
            step_reg(cpu, reg::RDI, delta, amask);
            Ok(a == b)
        }
    }
}

/// Up to `limit` iterations of REP MOVS or REP STOS (DF clear) at once, as many as stay
/// inside one source and one destination page: both pages are translated once and the
/// elements copied or stored through host pointers, in order (so overlapping MOVS
/// behaves element by element, as on hardware). Returns how many iterations it did, 0
/// when the next element straddles a page, wraps the address size or is not plain RAM
/// (the caller then does one iteration the ordinary way).
#[inline(always)]
fn bulk<const OP: u8, const N: usize>(
    cpu: &mut Cpu,
    i: &Insn,
    amask: u64,
    limit: u64,
) -> Result<u64, Trap> {
    use emu_mmu::{host_access, Access, PAGE_SIZE};
    let n_bytes = N as u64;
    let room = |offset: u64, linear: u64| {
        let in_page = (PAGE_SIZE - (linear & (PAGE_SIZE - 1))) / n_bytes;
        let in_size = (amask - offset) / n_bytes + 1;
        in_page.min(in_size)
    };
    let di = addr_reg(cpu, reg::RDI, amask);
    let dst = string_linear(cpu, i.imm2 as u8, di);
    let mut n = limit.min(room(di, dst));
    let si = addr_reg(cpu, reg::RSI, amask);
    let src = string_linear(cpu, i.seg, si);
    if OP == MOVS {
        n = n.min(room(si, src));
    }
    if n == 0 {
        return Ok(0);
    }
    let len = n * n_bytes;
    // The source first: a fault there leaves the destination untouched.
    let from = if OP == MOVS {
        match cpu.mmu.host_span(src, len, Access::Read)? {
            Some(p) => p,
            None => return Ok(0),
        }
    } else {
        std::ptr::null_mut()
    };
    let Some(to) = cpu.mmu.host_span(dst, len, Access::Write)? else {
        return Ok(0);
    };
    let value = cpu.reg::<N>(reg::RAX);
    for k in 0..n as usize {
        // SAFETY: both spans are inside live RAM pages (`host_span`), `k * N + N <= len`.
        unsafe {
            let v = if OP == MOVS {
                host_access::load::<N>(from.add(k * N))
            } else {
                value
            };
            host_access::store::<N>(to.add(k * N), v);
        }
    }
    step_reg(cpu, reg::RDI, len, amask);
    if OP == MOVS {
        step_reg(cpu, reg::RSI, len, amask);
    }
    step_reg(cpu, reg::RCX, n.wrapping_neg(), amask);
    Ok(n)
}

fn string_op<const OP: u8, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let amask = address_mask(i.flags);
    if i.flags & (REP | REPNE) == 0 {
        iterate::<OP, N>(cpu, i, amask)?;
        return Ok(());
    }
    // Only SCAS and CMPS distinguish REPE from REPNE; the others treat F2 like F3.
    let compares = OP == SCAS || OP == CMPS;
    let until_equal = i.flags & REPNE != 0;
    let mut done = 0;
    loop {
        let count = addr_reg(cpu, reg::RCX, amask);
        if count == 0 {
            return Ok(());
        }
        if (OP == MOVS || OP == STOS) && !cpu.df() {
            let n = bulk::<OP, N>(cpu, i, amask, count.min(REP_CHUNK - done))?;
            if n > 0 {
                done += n;
                if done >= REP_CHUNK && count > n {
                    cpu.rip = i.rip;
                    return Err(Trap::EndBlock.into());
                }
                continue;
            }
        }
        let equal = iterate::<OP, N>(cpu, i, amask)?;
        step_reg(cpu, reg::RCX, u64::MAX, amask);
        if compares && equal == until_equal {
            return Ok(());
        }
        done += 1;
        if done == REP_CHUNK && count > 1 {
            cpu.rip = i.rip;
            return Err(Trap::EndBlock.into());
        }
    }
}

pub(crate) fn register(t: &mut OpTable) {
    let forms: [(Code, Code, Code, Code, u8); 5] = [
        (
            Code::Movsb_m8_m8,
            Code::Movsw_m16_m16,
            Code::Movsd_m32_m32,
            Code::Movsq_m64_m64,
            MOVS,
        ),
        (
            Code::Stosb_m8_AL,
            Code::Stosw_m16_AX,
            Code::Stosd_m32_EAX,
            Code::Stosq_m64_RAX,
            STOS,
        ),
        (
            Code::Lodsb_AL_m8,
            Code::Lodsw_AX_m16,
            Code::Lodsd_EAX_m32,
            Code::Lodsq_RAX_m64,
            LODS,
        ),
        (
            Code::Scasb_AL_m8,
            Code::Scasw_AX_m16,
            Code::Scasd_EAX_m32,
            Code::Scasq_RAX_m64,
            SCAS,
        ),
        (
            Code::Cmpsb_m8_m8,
            Code::Cmpsw_m16_m16,
            Code::Cmpsd_m32_m32,
            Code::Cmpsq_m64_m64,
            CMPS,
        ),
    ];
    for (b, w, d, q, op) in forms {
        let (hb, hw, hd, hq): (
            crate::insn::Handler,
            crate::insn::Handler,
            crate::insn::Handler,
            crate::insn::Handler,
        ) = match op {
            MOVS => (
                string_op::<MOVS, 1>,
                string_op::<MOVS, 2>,
                string_op::<MOVS, 4>,
                string_op::<MOVS, 8>,
            ),
            STOS => (
                string_op::<STOS, 1>,
                string_op::<STOS, 2>,
                string_op::<STOS, 4>,
                string_op::<STOS, 8>,
            ),
            LODS => (
                string_op::<LODS, 1>,
                string_op::<LODS, 2>,
                string_op::<LODS, 4>,
                string_op::<LODS, 8>,
            ),
            SCAS => (
                string_op::<SCAS, 1>,
                string_op::<SCAS, 2>,
                string_op::<SCAS, 4>,
                string_op::<SCAS, 8>,
            ),
            _ => (
                string_op::<CMPS, 1>,
                string_op::<CMPS, 2>,
                string_op::<CMPS, 4>,
                string_op::<CMPS, 8>,
            ),
        };
        // String operands are implicit (RSI/RDI), so both table slots get the handler.
        t.set(b, OpEntry::rm(hb, hb));
        t.set(w, OpEntry::rm(hw, hw));
        t.set(d, OpEntry::rm(hd, hd));
        t.set(q, OpEntry::rm(hq, hq));
    }
}
