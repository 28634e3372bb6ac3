//! Segment-register instructions and far transfers: MOV to and from segment registers,
//! PUSH/POP of segment registers, LDS/LES/LFS/LGS/LSS, far JMP/CALL/RET and IRET in every
//! mode, and the selector probes LAR, LSL, VERR and VERW. The checks themselves live in
//! [`crate::segment`].
//!
//! Loading SS (MOV SS, POP SS, LSS) holds interrupts off for one instruction, like STI;
//! those instructions end their block so the run loop can model the shadow.

use iced_x86::Code;

use super::stack::{check_push_room, peek_value, pop_value, push_value, set_stack_offset};
use crate::cpu::{reg, seg, Cpu};
use crate::descriptor::Selector;
use crate::exception::Exception;
use crate::insn::{Insn, OpEntry, OpTable, Step, Trap};
use crate::segment::{
    check_code_target, check_return_stack, commit_code_segment, commit_stack_segment,
    drop_inaccessible_data_segments, load_data_segment, load_real_segment, FarKind,
};
use crate::sysregs::is_canonical;

const GP0: Trap = Trap::Exception(Exception::GeneralProtection(0));

/// Loads data segment `sreg` (never CS), setting the interrupt shadow for SS.
fn load_sreg(cpu: &mut Cpu, sreg: u8, sel: u16) -> Step {
    if sreg == seg::CS || sreg > seg::GS {
        return Err(Exception::InvalidOpcode.into());
    }
    load_data_segment(cpu, sreg, sel)?;
    if sreg == seg::SS {
        cpu.interrupt_shadow = true;
    }
    Ok(())
}

fn mov_to_sreg_reg(cpu: &mut Cpu, i: &Insn) -> Step {
    let sel = cpu.reg::<2>(i.src) as u16;
    load_sreg(cpu, i.dst, sel)
}

fn mov_to_sreg_mem(cpu: &mut Cpu, i: &Insn) -> Step {
    let sel = super::load::<2>(cpu, i)? as u16;
    load_sreg(cpu, i.dst, sel)
}

/// MOV r, Sreg: the selector, zero-extended to the register's width.
fn mov_from_sreg_reg<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let sel = cpu.seg_sel[i.src as usize % 6] as u64;
    cpu.set_reg::<N>(i.dst, sel);
    Ok(())
}

/// MOV m16, Sreg (the memory form always stores 16 bits).
fn mov_from_sreg_mem(cpu: &mut Cpu, i: &Insn) -> Step {
    // The memory form keeps its register operand in `dst`.
    let sel = cpu.seg_sel[i.dst as usize % 6] as u64;
    Ok(super::store::<2>(cpu, i, sel)?)
}

fn push_sreg<const SREG: u8, const N: usize>(cpu: &mut Cpu, _: &Insn) -> Step {
    let sel = cpu.seg_sel[SREG as usize] as u64;
    Ok(push_value::<N>(cpu, sel)?)
}

/// POP Sreg: the segment is loaded (and checked) before the stack pointer moves.
fn pop_sreg<const SREG: u8, const N: usize>(cpu: &mut Cpu, _: &Insn) -> Step {
    let sel = peek_value::<N>(cpu, 0)? as u16;
    // The stack pointer steps at the width in force when the value was read, even if
    // the load changes SS's.
    let m = cpu.stack_mask;
    let rsp = cpu.regs[reg::RSP as usize];
    let popped = (rsp & !m) | (rsp.wrapping_add(N as u64) & m);
    load_sreg(cpu, SREG, sel)?;
    cpu.regs[reg::RSP as usize] = popped;
    Ok(())
}

/// LDS/LES/LFS/LGS/LSS r, m16:N: offset then selector from memory; the segment is
/// loaded first, so a failed load leaves the register alone.
fn load_far_pointer<const SREG: u8, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let addr = i.ea(cpu);
    let offset = cpu.mmu.read::<N>(addr)?;
    let sel = cpu.mmu.read::<2>(addr.wrapping_add(N as u64))? as u16;
    load_sreg(cpu, SREG, sel)?;
    cpu.set_reg::<N>(i.dst, offset);
    Ok(())
}

/// Where a far transfer goes: offset then selector.
#[derive(Clone, Copy)]
struct FarPointer {
    offset: u64,
    selector: u16,
}

fn immediate_pointer(i: &Insn) -> FarPointer {
    FarPointer {
        offset: i.imm,
        selector: i.imm2 as u16,
    }
}

fn memory_pointer<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Result<FarPointer, Trap> {
    let addr = i.ea(cpu);
    let offset = cpu.mmu.read::<N>(addr)?;
    let selector = cpu.mmu.read::<2>(addr.wrapping_add(N as u64))? as u16;
    Ok(FarPointer { offset, selector })
}

/// Checks a protected-mode far JMP/CALL target; returns the descriptor and CPL to
/// commit with [`commit_code_segment`].
fn checked_target(
    cpu: &mut Cpu,
    target: FarPointer,
) -> Result<(crate::descriptor::Descriptor, u8), Trap> {
    let (desc, cpl) = check_code_target(cpu, Selector(target.selector), FarKind::JumpOrCall)?;
    if cpu.sys.long_mode() && desc.long() && !is_canonical(target.offset) {
        return Err(GP0);
    }
    Ok((desc, cpl))
}

fn far_jump(cpu: &mut Cpu, target: FarPointer) -> Step {
    if cpu.real_mode() {
        load_real_segment(cpu, seg::CS, target.selector);
    } else {
        let (desc, cpl) = checked_target(cpu, target)?;
        commit_code_segment(cpu, Selector(target.selector), desc, cpl);
    }
    cpu.rip = target.offset;
    Ok(())
}

/// Far CALL with an `N`-byte operand size: pushes CS and the return offset on the
/// current stack, then jumps. Nothing changes if the target or the pushes would fault.
fn far_call<const N: usize>(cpu: &mut Cpu, i: &Insn, target: FarPointer) -> Step {
    let checked = if cpu.real_mode() {
        None
    } else {
        Some(checked_target(cpu, target)?)
    };
    check_push_room(cpu, 2 * N as u64)?;
    let cs = cpu.seg_sel[seg::CS as usize] as u64;
    push_value::<N>(cpu, cs)?;
    push_value::<N>(cpu, i.next_rip())?;
    match checked {
        None => load_real_segment(cpu, seg::CS, target.selector),
        Some((desc, cpl)) => commit_code_segment(cpu, Selector(target.selector), desc, cpl),
    }
    cpu.rip = target.offset;
    Ok(())
}

fn jmp_far_imm(cpu: &mut Cpu, i: &Insn) -> Step {
    far_jump(cpu, immediate_pointer(i))
}

fn jmp_far_mem<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let target = memory_pointer::<N>(cpu, i)?;
    far_jump(cpu, target)
}

fn call_far_imm<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    far_call::<N>(cpu, i, immediate_pointer(i))
}

fn call_far_mem<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let target = memory_pointer::<N>(cpu, i)?;
    far_call::<N>(cpu, i, target)
}

/// Far RET (optionally releasing `imm` bytes of parameters) with an `N`-byte operand
/// size: to the same privilege level, or to an outer one with SS:ESP popped as well.
fn ret_far<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let n = N as u64;
    let release = i.imm & 0xffff;
    let offset = peek_value::<N>(cpu, 0)?;
    let selector = Selector(peek_value::<N>(cpu, 1)? as u16);
    let sp = cpu.regs[reg::RSP as usize];
    if cpu.real_mode() {
        load_real_segment(cpu, seg::CS, selector.0);
        set_stack_offset(cpu, sp.wrapping_add(2 * n + release));
        cpu.rip = offset;
        return Ok(());
    }
    let cpl = cpu.sys.cpl;
    let (desc, new_cpl) = check_code_target(cpu, selector, FarKind::Return)?;
    let to_64bit = cpu.sys.long_mode() && desc.long();
    if to_64bit && !is_canonical(offset) {
        return Err(GP0.into());
    }
    if new_cpl == cpl {
        commit_code_segment(cpu, selector, desc, new_cpl);
        set_stack_offset(cpu, sp.wrapping_add(2 * n + release));
        cpu.rip = offset;
        return Ok(());
    }
    // Outer level: the caller's SS:ESP sits above the released parameters.
    let above = sp.wrapping_add(2 * n + release);
    let new_sp = cpu.mmu.read::<N>(cpu.stack_linear(above))?;
    let ss = Selector(cpu.mmu.read::<N>(cpu.stack_linear(above.wrapping_add(n)))? as u16);
    let stack = check_return_stack(cpu, ss, new_cpl, to_64bit)?;
    commit_code_segment(cpu, selector, desc, new_cpl);
    commit_stack_segment(cpu, ss.0, stack);
    cpu.regs[reg::RSP as usize] = if N == 8 { new_sp } else { new_sp & 0xffff_ffff };
    let sp = cpu.regs[reg::RSP as usize].wrapping_add(release);
    set_stack_offset(cpu, sp);
    drop_inaccessible_data_segments(cpu);
    cpu.rip = offset;
    Ok(())
}

/// IRET with an `N`-byte operand size, in every mode.
fn iret<const N: usize>(cpu: &mut Cpu, _: &Insn) -> Step {
    if cpu.real_mode() {
        return iret_real::<N>(cpu);
    }
    if cpu.sys.long_mode() {
        return Ok(crate::interrupt::iret_long::<N>(cpu)?);
    }
    Ok(crate::interrupt::iret_protected::<N>(cpu)?)
}

/// IRET in real mode: IP, CS and FLAGS come off the stack; every flag is writable.
fn iret_real<const N: usize>(cpu: &mut Cpu) -> Step {
    let ip = peek_value::<N>(cpu, 0)?;
    let cs = peek_value::<N>(cpu, 1)? as u16;
    let flags = peek_value::<N>(cpu, 2)?;
    for _ in 0..3 {
        pop_value::<N>(cpu)?;
    }
    let flags = if N == 2 {
        (cpu.rflags() & !0xffff) | flags
    } else {
        flags
    };
    cpu.set_rflags(flags);
    load_real_segment(cpu, seg::CS, cs);
    cpu.sys.nmi_blocked = false;
    cpu.rip = ip;
    Ok(())
}

/// What LAR, LSL, VERR and VERW ask of a selector.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Probe {
    AccessRights,
    Limit,
    Readable,
    Writable,
}

/// The descriptor `sel` names if the current privilege may inspect it with `probe`;
/// `None` (ZF = 0) for a null or out-of-table selector, a type the probe does not accept,
/// or a privilege mismatch. Memory faults from the table read still fault.
fn probe_descriptor(
    cpu: &mut Cpu,
    sel: Selector,
    probe: Probe,
) -> Result<Option<crate::descriptor::Descriptor>, Trap> {
    if sel.is_null() {
        return Ok(None);
    }
    let desc = match crate::segment::fetch_descriptor(cpu, sel) {
        Ok(d) => d,
        Err(Trap::Exception(Exception::GeneralProtection(_))) => return Ok(None),
        Err(e) => return Err(e),
    };
    let type_ok = if desc.is_code_or_data() {
        match probe {
            Probe::AccessRights | Probe::Limit => true,
            Probe::Readable => !desc.is_code() || desc.kind() & 2 != 0,
            Probe::Writable => desc.is_writable_data(),
        }
    } else {
        let long = cpu.sys.long_mode();
        match (probe, desc.kind()) {
            (Probe::Readable | Probe::Writable, _) => false,
            (_, 0x2 | 0x9 | 0xb) => true,
            (Probe::AccessRights, 0xc) => true,
            (Probe::AccessRights, 0x1 | 0x3 | 0x4 | 0x5) if !long => true,
            (Probe::Limit, 0x1 | 0x3) if !long => true,
            _ => false,
        }
    };
    let privilege_ok = desc.is_conforming() && probe != Probe::Writable
        || desc.dpl() >= cpu.sys.cpl.max(sel.rpl());
    Ok((type_ok && privilege_ok).then_some(desc))
}

fn probe_selector<const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Result<Selector, Trap> {
    if cpu.real_mode() {
        return Err(Exception::InvalidOpcode.into());
    }
    // Register forms of LAR/LSL have the selector in `src`; VERR/VERW have one operand.
    Ok(Selector(if MEM {
        super::load::<2>(cpu, i)?
    } else {
        cpu.reg::<2>(i.src)
    } as u16))
}

fn set_zf(cpu: &mut Cpu, on: bool) {
    let f = cpu.flags.compute();
    let zf = crate::flags::ZF;
    cpu.flags
        .set_materialized(if on { f | zf } else { f & !zf });
}

/// LAR (`LIMIT` = false) / LSL r, r/m16: the access rights (descriptor bits 40..55 in
/// place, limit bits masked) or the byte-granular limit, with ZF = 1; ZF = 0 and the
/// destination unchanged when the selector may not be inspected.
fn lar_lsl<const LIMIT: bool, const MEM: bool, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let sel = probe_selector::<MEM>(cpu, i)?;
    let probe = if LIMIT {
        Probe::Limit
    } else {
        Probe::AccessRights
    };
    match probe_descriptor(cpu, sel, probe)? {
        Some(desc) => {
            let value = if LIMIT {
                desc.limit() as u64
            } else {
                (desc.0 >> 32) & 0x00f0_ff00
            };
            cpu.set_reg::<N>(i.dst, value);
            set_zf(cpu, true);
        }
        None => set_zf(cpu, false),
    }
    Ok(())
}

/// VERR (`WRITE` = false) / VERW r/m16: ZF = whether the segment is readable / writable
/// at the current privilege and the selector's RPL.
fn verify<const WRITE: bool, const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    if cpu.real_mode() {
        return Err(Exception::InvalidOpcode.into());
    }
    let sel = Selector(if MEM {
        super::load::<2>(cpu, i)?
    } else {
        cpu.reg::<2>(i.dst)
    } as u16);
    let probe = if WRITE {
        Probe::Writable
    } else {
        Probe::Readable
    };
    let ok = probe_descriptor(cpu, sel, probe)?.is_some();
    set_zf(cpu, ok);
    Ok(())
}

pub(crate) fn register(t: &mut OpTable) {
    use Code::*;
    let probes: [(Code, crate::insn::Handler, crate::insn::Handler); 12] = [
        (
            Lar_r16_rm16,
            lar_lsl::<false, false, 2>,
            lar_lsl::<false, true, 2>,
        ),
        (
            Lar_r32_r32m16,
            lar_lsl::<false, false, 4>,
            lar_lsl::<false, true, 4>,
        ),
        (
            Lar_r64_r64m16,
            lar_lsl::<false, false, 8>,
            lar_lsl::<false, true, 8>,
        ),
        (
            Lsl_r16_rm16,
            lar_lsl::<true, false, 2>,
            lar_lsl::<true, true, 2>,
        ),
        (
            Lsl_r32_r32m16,
            lar_lsl::<true, false, 4>,
            lar_lsl::<true, true, 4>,
        ),
        (
            Lsl_r64_r64m16,
            lar_lsl::<true, false, 8>,
            lar_lsl::<true, true, 8>,
        ),
        (Verr_rm16, verify::<false, false>, verify::<false, true>),
        (Verr_r32m16, verify::<false, false>, verify::<false, true>),
        (Verr_r64m16, verify::<false, false>, verify::<false, true>),
        (Verw_rm16, verify::<true, false>, verify::<true, true>),
        (Verw_r32m16, verify::<true, false>, verify::<true, true>),
        (Verw_r64m16, verify::<true, false>, verify::<true, true>),
    ];
    for (code, reg_form, mem_form) in probes {
        t.set(code, OpEntry::rm(reg_form, mem_form));
    }
    // MOV Sreg ends its block: loading SS opens an interrupt shadow.
    for code in [Mov_Sreg_rm16, Mov_Sreg_r32m16, Mov_Sreg_r64m16] {
        t.set(
            code,
            OpEntry::rm(mov_to_sreg_reg, mov_to_sreg_mem).ends_block(),
        );
    }
    t.set(
        Mov_rm16_Sreg,
        OpEntry::rm(mov_from_sreg_reg::<2>, mov_from_sreg_mem),
    );
    t.set(
        Mov_r32m16_Sreg,
        OpEntry::rm(mov_from_sreg_reg::<4>, mov_from_sreg_mem),
    );
    t.set(
        Mov_r64m16_Sreg,
        OpEntry::rm(mov_from_sreg_reg::<8>, mov_from_sreg_mem),
    );
    const ES: u8 = seg::ES;
    const CS: u8 = seg::CS;
    const SS: u8 = seg::SS;
    const DS: u8 = seg::DS;
    const FS: u8 = seg::FS;
    const GS: u8 = seg::GS;
    let pushes: [(Code, crate::insn::Handler); 16] = [
        (Pushw_ES, push_sreg::<ES, 2>),
        (Pushd_ES, push_sreg::<ES, 4>),
        (Pushw_CS, push_sreg::<CS, 2>),
        (Pushd_CS, push_sreg::<CS, 4>),
        (Pushw_SS, push_sreg::<SS, 2>),
        (Pushd_SS, push_sreg::<SS, 4>),
        (Pushw_DS, push_sreg::<DS, 2>),
        (Pushd_DS, push_sreg::<DS, 4>),
        (Pushw_FS, push_sreg::<FS, 2>),
        (Pushd_FS, push_sreg::<FS, 4>),
        (Pushq_FS, push_sreg::<FS, 8>),
        (Pushw_GS, push_sreg::<GS, 2>),
        (Pushd_GS, push_sreg::<GS, 4>),
        (Pushq_GS, push_sreg::<GS, 8>),
        (Popw_FS, pop_sreg::<FS, 2>),
        (Popq_FS, pop_sreg::<FS, 8>),
    ];
    for (code, handler) in pushes {
        t.set(code, OpEntry::reg(handler));
    }
    let pops: [(Code, crate::insn::Handler, bool); 10] = [
        (Popw_ES, pop_sreg::<ES, 2>, false),
        (Popd_ES, pop_sreg::<ES, 4>, false),
        (Popw_SS, pop_sreg::<SS, 2>, true),
        (Popd_SS, pop_sreg::<SS, 4>, true),
        (Popw_DS, pop_sreg::<DS, 2>, false),
        (Popd_DS, pop_sreg::<DS, 4>, false),
        (Popd_FS, pop_sreg::<FS, 4>, false),
        (Popw_GS, pop_sreg::<GS, 2>, false),
        (Popd_GS, pop_sreg::<GS, 4>, false),
        (Popq_GS, pop_sreg::<GS, 8>, false),
    ];
    for (code, handler, shadow) in pops {
        let entry = OpEntry::reg(handler);
        t.set(code, if shadow { entry.ends_block() } else { entry });
    }
    let loads: [(Code, crate::insn::Handler, bool); 13] = [
        (Lds_r16_m1616, load_far_pointer::<DS, 2>, false),
        (Lds_r32_m1632, load_far_pointer::<DS, 4>, false),
        (Les_r16_m1616, load_far_pointer::<ES, 2>, false),
        (Les_r32_m1632, load_far_pointer::<ES, 4>, false),
        (Lfs_r16_m1616, load_far_pointer::<FS, 2>, false),
        (Lfs_r32_m1632, load_far_pointer::<FS, 4>, false),
        (Lfs_r64_m1664, load_far_pointer::<FS, 8>, false),
        (Lgs_r16_m1616, load_far_pointer::<GS, 2>, false),
        (Lgs_r32_m1632, load_far_pointer::<GS, 4>, false),
        (Lgs_r64_m1664, load_far_pointer::<GS, 8>, false),
        (Lss_r16_m1616, load_far_pointer::<SS, 2>, true),
        (Lss_r32_m1632, load_far_pointer::<SS, 4>, true),
        (Lss_r64_m1664, load_far_pointer::<SS, 8>, true),
    ];
    for (code, handler, shadow) in loads {
        let entry = OpEntry::mem(handler);
        t.set(code, if shadow { entry.ends_block() } else { entry });
    }
    t.set(Jmp_ptr1616, OpEntry::reg(jmp_far_imm).branch());
    t.set(Jmp_ptr1632, OpEntry::reg(jmp_far_imm).branch());
    t.set(Jmp_m1616, OpEntry::mem(jmp_far_mem::<2>).branch());
    t.set(Jmp_m1632, OpEntry::mem(jmp_far_mem::<4>).branch());
    t.set(Jmp_m1664, OpEntry::mem(jmp_far_mem::<8>).branch());
    t.set(Call_ptr1616, OpEntry::reg(call_far_imm::<2>).branch());
    t.set(Call_ptr1632, OpEntry::reg(call_far_imm::<4>).branch());
    t.set(Call_m1616, OpEntry::mem(call_far_mem::<2>).branch());
    t.set(Call_m1632, OpEntry::mem(call_far_mem::<4>).branch());
    t.set(Call_m1664, OpEntry::mem(call_far_mem::<8>).branch());
    t.set(Retfw, OpEntry::reg(ret_far::<2>).branch());
    t.set(Retfd, OpEntry::reg(ret_far::<4>).branch());
    t.set(Retfq, OpEntry::reg(ret_far::<8>).branch());
    t.set(Retfw_imm16, OpEntry::reg(ret_far::<2>).branch());
    t.set(Retfd_imm16, OpEntry::reg(ret_far::<4>).branch());
    t.set(Retfq_imm16, OpEntry::reg(ret_far::<8>).branch());
    t.set(Iretw, OpEntry::reg(iret::<2>).branch());
    t.set(Iretd, OpEntry::reg(iret::<4>).branch());
    t.set(Iretq, OpEntry::reg(iret::<8>).branch());
}
