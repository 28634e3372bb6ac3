//! Privileged and system-state instructions: MOV to/from CR and DR, RDMSR/WRMSR,
//! LGDT/LIDT/SGDT/SIDT, LTR/LLDT/STR/SLDT, CLI/STI, CLTS, SWAPGS, INVLPG, WBINVD/INVD,
//! SYSCALL/SYSRET.
//!
//! Each checks privilege first (`#GP(0)` above CPL 0, or above IOPL for CLI/STI) and
//! validates values through [`crate::sysregs`]. Instructions that change how later code
//! is translated or how addresses translate end their block.

use iced_x86::Code;

use crate::cpu::{attr, reg, seg, Cpu};
use crate::descriptor::{
    descriptor_address, read_system_descriptor, system_type, Descriptor, Selector, SystemSegment,
};
use crate::events::MsrAccess;
use crate::exception::Exception;
use crate::flags;
use crate::insn::{Insn, OpEntry, OpTable, Step, Trap};
use crate::segment::load_flat_code_and_stack;
use crate::sysregs::{cr0, efer, is_canonical, msr, MsrHost, TableRegister};

const GP0: Trap = Trap::Exception(Exception::GeneralProtection(0));

/// `#GP(0)` unless running at CPL 0.
#[inline]
pub(crate) fn require_cpl0(cpu: &Cpu) -> Result<(), Trap> {
    if cpu.sys.cpl == 0 {
        Ok(())
    } else {
        Err(GP0)
    }
}

/// MOV r, CRn (`N` = 8 in 64-bit mode, 4 elsewhere).
fn mov_from_cr<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    require_cpl0(cpu)?;
    let value = match i.src {
        0 => cpu.sys.cr0,
        2 => cpu.sys.cr2,
        3 => cpu.sys.cr3,
        4 => cpu.sys.cr4,
        8 => match &cpu.apic {
            Some(apic) => (apic.lock().tpr() >> 4) as u64,
            None => cpu.sys.cr8,
        },
        _ => return Err(Exception::InvalidOpcode.into()),
    };
    cpu.set_reg::<N>(i.dst, value);
    Ok(())
}

/// MOV CRn, r. Changing CR0.PE or CR0.PG switches modes: turning paging on with
/// EFER.LME activates long mode, turning it off (allowed only outside 64-bit code)
/// deactivates it.
fn mov_to_cr<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    require_cpl0(cpu)?;
    let value = cpu.reg::<N>(i.src);
    let sys = &cpu.sys;
    let (cr0, cr3, cr4, efer) = (sys.cr0, sys.cr3, sys.cr4, sys.efer);
    match i.dst {
        0 => {
            let new = sys.check_cr0(value)?;
            let paging_on = new & cr0::PG != 0 && cr0 & cr0::PG == 0;
            let paging_off = new & cr0::PG == 0 && cr0 & cr0::PG != 0;
            // Paging may be turned off only from compatibility mode, not from 64-bit code;
            // long mode may be entered only with a CS whose L bit is clear. (The bare CPU's
            // starting state, long mode with paging off, may turn paging on.)
            if paging_off && cpu.in_64bit_mode() {
                return Err(GP0.into());
            }
            if paging_on
                && efer & (efer::LME | efer::LMA) == efer::LME
                && cpu.seg_attr[seg::CS as usize] & crate::cpu::attr::LONG != 0
            {
                return Err(GP0.into());
            }
            let efer = if paging_on && efer & efer::LME != 0 {
                efer | efer::LMA
            } else if paging_off {
                efer & !efer::LMA
            } else {
                efer
            };
            cpu.apply_paging(new, cr3, cr4, efer)?;
            cpu.sys.cr0 = new;
            cpu.sys.efer = efer;
            cpu.update_mode();
        }
        2 => cpu.sys.cr2 = value,
        3 => {
            cpu.mmu.write_cr3(value).map_err(|_| GP0)?;
            cpu.sys.cr3 = cpu.mmu.paging().cr3;
            // No jump-cache flush: its hits are checked against the fetch TLB, which
            // the MMU has just flushed as the architecture says.
        }
        4 => {
            let new = sys.check_cr4(value)?;
            cpu.apply_paging(cr0, cr3, new, efer)?;
            cpu.sys.cr4 = new;
        }
        8 => {
            cpu.sys.cr8 = sys.check_cr8(value)?;
            // CR8 is an alias of TPR[7:4]; MOV to CR8 ends the block, so an interrupt it
            // unmasks is taken right after it.
            if let Some(apic) = &cpu.apic {
                apic.lock().set_tpr((value as u8) << 4);
            }
        }
        _ => return Err(Exception::InvalidOpcode.into()),
    }
    Ok(())
}

fn mov_from_dr<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    require_cpl0(cpu)?;
    let value = cpu.sys.read_dr(i.src)?;
    cpu.set_reg::<N>(i.dst, value);
    Ok(())
}

fn mov_to_dr<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    require_cpl0(cpu)?;
    let value = cpu.reg::<N>(i.src);
    cpu.sys.write_dr(i.dst, value)?;
    Ok(())
}

/// The MSRs stored in [`Cpu`] fields outside [`crate::sysregs::SystemRegs`].
struct CpuMsrs<'a> {
    seg_base: &'a mut [u64; 8],
    kernel_gs_base: &'a mut u64,
    tsc_aux: &'a mut u64,
    tsc_offset: &'a mut u64,
    raw_tsc: u64,
}

impl MsrHost for CpuMsrs<'_> {
    fn tsc(&self) -> u64 {
        self.raw_tsc.wrapping_add(*self.tsc_offset)
    }
    fn set_tsc(&mut self, value: u64) {
        *self.tsc_offset = value.wrapping_sub(self.raw_tsc);
    }
    fn base_msr(&mut self, index: u32) -> &mut u64 {
        match index {
            msr::FS_BASE => &mut self.seg_base[seg::FS as usize],
            msr::GS_BASE => &mut self.seg_base[seg::GS as usize],
            msr::KERNEL_GS_BASE => self.kernel_gs_base,
            _ => self.tsc_aux,
        }
    }
}

fn msr_host(cpu: &mut Cpu) -> (&mut crate::sysregs::SystemRegs, CpuMsrs<'_>) {
    let raw_tsc = cpu.raw_tsc();
    (
        &mut cpu.sys,
        CpuMsrs {
            seg_base: &mut cpu.seg_base,
            kernel_gs_base: &mut cpu.kernel_gs_base,
            tsc_aux: &mut cpu.tsc_aux,
            tsc_offset: &mut cpu.tsc_offset,
            raw_tsc,
        },
    )
}

/// Whether the attached local APIC, if any, is offered MSR `index`: IA32_APIC_BASE,
/// IA32_TSC_DEADLINE and the x2APIC range.
#[inline]
fn is_apic_msr(index: u32) -> bool {
    matches!(index, msr::APIC_BASE | msr::TSC_DEADLINE | 0x800..=0x8ff)
}

/// RDMSR through the attached local APIC: `None` when there is none or it declines.
fn apic_read_msr(cpu: &mut Cpu, index: u32) -> Result<Option<u64>, Trap> {
    let Some(apic) = &cpu.apic else {
        return Ok(None);
    };
    let answer = apic.lock().read_msr(index);
    match answer {
        MsrAccess::NotMine => Ok(None),
        MsrAccess::Fault => Err(GP0),
        // The APIC counts deadlines in raw TSC units; the guest's TSC carries its offset.
        MsrAccess::Done(0) if index == msr::TSC_DEADLINE => Ok(Some(0)),
        MsrAccess::Done(v) if index == msr::TSC_DEADLINE => {
            Ok(Some(v.wrapping_add(cpu.tsc_offset)))
        }
        MsrAccess::Done(v) => Ok(Some(v)),
    }
}

/// WRMSR through the attached local APIC: `false` when there is none or it declines.
fn apic_write_msr(cpu: &mut Cpu, index: u32, mut value: u64) -> Result<bool, Trap> {
    let Some(apic) = &cpu.apic else {
        return Ok(false);
    };
    if index == msr::TSC_DEADLINE && value != 0 && cpu.tsc_offset != 0 {
        // The APIC counts in raw TSC units. A deadline already passed becomes raw 1 (it
        // fires at once; 0 would disarm the timer instead).
        let raw_now = cpu.raw_tsc();
        let tsc_now = raw_now.wrapping_add(cpu.tsc_offset);
        value = if value > tsc_now {
            raw_now.saturating_add(value - tsc_now)
        } else {
            1
        };
    }
    match apic.lock().write_msr(index, value) {
        MsrAccess::NotMine => Ok(false),
        MsrAccess::Fault => Err(GP0),
        MsrAccess::Done(_) => Ok(true),
    }
}

fn rdmsr(cpu: &mut Cpu, _: &Insn) -> Step {
    require_cpl0(cpu)?;
    let index = cpu.reg::<4>(reg::RCX) as u32;
    let routed = if is_apic_msr(index) {
        apic_read_msr(cpu, index)?
    } else {
        None
    };
    let value = match routed {
        Some(v) => v,
        None => {
            let (sys, mut host) = msr_host(cpu);
            sys.read_msr(&mut host, index)?
        }
    };
    cpu.set_reg::<4>(reg::RAX, value & 0xffff_ffff);
    cpu.set_reg::<4>(reg::RDX, value >> 32);
    Ok(())
}

fn wrmsr(cpu: &mut Cpu, _: &Insn) -> Step {
    require_cpl0(cpu)?;
    let index = cpu.reg::<4>(reg::RCX) as u32;
    let value = cpu.reg::<4>(reg::RAX) | cpu.reg::<4>(reg::RDX) << 32;
    if is_apic_msr(index) && apic_write_msr(cpu, index, value)? {
        return Ok(());
    }
    let old_efer = cpu.sys.efer;
    let (sys, mut host) = msr_host(cpu);
    sys.write_msr(&mut host, index, value)?;
    if index == msr::EFER {
        let (cr0, cr3, cr4, efer) = (cpu.sys.cr0, cpu.sys.cr3, cpu.sys.cr4, cpu.sys.efer);
        if let Err(e) = cpu.apply_paging(cr0, cr3, cr4, efer) {
            cpu.sys.efer = old_efer;
            return Err(e.into());
        }
    }
    Ok(())
}

/// LGDT/LIDT: a 2-byte limit then the base: 8 bytes (which must be canonical) in 64-bit
/// mode, 4 bytes with a 32-bit operand, 3 bytes (24 bits) with a 16-bit operand.
fn load_table<const IDT: bool, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    require_cpl0(cpu)?;
    let addr = i.ea(cpu);
    let limit = cpu.mmu.read::<2>(addr)? as u16;
    let base = match N {
        8 => cpu.mmu.read::<8>(addr.wrapping_add(2))?,
        4 => cpu.mmu.read::<4>(addr.wrapping_add(2))?,
        _ => cpu.mmu.read::<4>(addr.wrapping_add(2))? & 0xff_ffff,
    };
    if !is_canonical(base) {
        return Err(GP0.into());
    }
    let table = TableRegister { base, limit };
    if IDT {
        cpu.sys.idtr = table;
    } else {
        cpu.sys.gdtr = table;
    }
    Ok(())
}

/// SGDT/SIDT: allowed at any privilege (UMIP is not supported). Outside 64-bit mode the
/// base is stored as 4 bytes (whatever the operand size, as current processors do).
fn store_table<const IDT: bool, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let table = if IDT { cpu.sys.idtr } else { cpu.sys.gdtr };
    let addr = i.ea(cpu);
    let base_bytes = if N == 8 { 8 } else { 4 };
    cpu.mmu.check_writable(addr, 2 + base_bytes)?;
    cpu.mmu.write::<2>(addr, table.limit as u64)?;
    if N == 8 {
        cpu.mmu.write::<8>(addr.wrapping_add(2), table.base)?;
    } else {
        cpu.mmu.write::<4>(addr.wrapping_add(2), table.base)?;
    }
    Ok(())
}

/// SMSW: the low bits of CR0 (allowed at any privilege without UMIP). A register
/// destination gets all of CR0's low 32 bits at its width; memory gets 16 bits.
fn smsw<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    cpu.set_reg::<N>(i.dst, cpu.sys.cr0 & 0xffff_ffff);
    Ok(())
}

fn smsw_mem(cpu: &mut Cpu, i: &Insn) -> Step {
    Ok(super::store::<2>(cpu, i, cpu.sys.cr0 & 0xffff)?)
}

/// LMSW: loads CR0's PE, MP, EM and TS; it can set PE but never clear it.
fn lmsw<const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    require_cpl0(cpu)?;
    let value = if MEM {
        super::load::<2>(cpu, i)?
    } else {
        cpu.reg::<2>(i.dst)
    };
    let old = cpu.sys.cr0;
    let new = (old & !0xe) | (value & 0xf) | (old & cr0::PE);
    cpu.sys.cr0 = cpu.sys.check_cr0(new)?;
    cpu.update_mode();
    Ok(())
}

/// CLI/STI: `#GP(0)` when CPL > IOPL (no VME/PVI).
fn set_interrupt_flag<const ON: bool>(cpu: &mut Cpu, _: &Insn) -> Step {
    if cpu.sys.cpl > cpu.iopl() {
        return Err(GP0.into());
    }
    if ON {
        // STI holds interrupts off for one more instruction (so `sti; hlt` cannot lose
        // a wake-up), but only when it actually turns IF on.
        if cpu.rflags_other & flags::IF == 0 {
            cpu.interrupt_shadow = true;
        }
        cpu.rflags_other |= flags::IF;
    } else {
        cpu.rflags_other &= !flags::IF;
    }
    Ok(())
}

fn clts(cpu: &mut Cpu, _: &Insn) -> Step {
    require_cpl0(cpu)?;
    cpu.sys.cr0 &= !crate::sysregs::cr0::TS;
    Ok(())
}

fn swapgs(cpu: &mut Cpu, _: &Insn) -> Step {
    require_cpl0(cpu)?;
    std::mem::swap(&mut cpu.seg_base[seg::GS as usize], &mut cpu.kernel_gs_base);
    Ok(())
}

fn invlpg(cpu: &mut Cpu, i: &Insn) -> Step {
    require_cpl0(cpu)?;
    let addr = i.ea(cpu);
    // The jump cache follows the fetch TLB (see `cache::JumpEntry`): no flush needed.
    cpu.mmu.invlpg(addr);
    Ok(())
}

/// STAC/CLAC: set or clear RFLAGS.AC (SMAP's override); `#UD` above CPL 0.
fn set_ac<const ON: bool>(cpu: &mut Cpu, _: &Insn) -> Step {
    if cpu.sys.cpl != 0 {
        return Err(Exception::InvalidOpcode.into());
    }
    let f = cpu.rflags();
    cpu.set_rflags(if ON { f | flags::AC } else { f & !flags::AC });
    Ok(())
}

/// WBINVD/INVD: there are no caches to write back or drop.
fn cache_control(cpu: &mut Cpu, _: &Insn) -> Step {
    Ok(require_cpl0(cpu)?)
}

/// The selector operand of LTR/LLDT: a 16-bit register or memory word.
fn selector_operand<const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Result<Selector, Trap> {
    Ok(Selector(if MEM {
        super::load::<2>(cpu, i)?
    } else {
        cpu.reg::<2>(i.dst)
    } as u16))
}

/// A system descriptor (TSS, LDT) and its base: 16 bytes in long mode, 8 elsewhere.
fn system_descriptor(cpu: &mut Cpu, sel: Selector) -> Result<(Descriptor, u64), Trap> {
    if cpu.sys.long_mode() {
        read_system_descriptor(cpu, sel)
    } else {
        let desc = crate::descriptor::read_descriptor(cpu, sel)?;
        Ok((desc, desc.base()))
    }
}

/// `#UD` in real mode (LTR, LLDT, STR, SLDT exist only in protected mode).
fn require_protected_mode(cpu: &Cpu) -> Result<(), Trap> {
    if cpu.real_mode() {
        Err(Exception::InvalidOpcode.into())
    } else {
        Ok(())
    }
}

/// LTR: loads TR from an available TSS descriptor in the GDT (64-bit in long mode,
/// 32-bit otherwise) and marks it busy.
fn ltr<const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    require_protected_mode(cpu)?;
    require_cpl0(cpu)?;
    let sel = selector_operand::<MEM>(cpu, i)?;
    if sel.is_null() {
        return Err(GP0.into());
    }
    let gp_sel = Trap::Exception(Exception::GeneralProtection(sel.error_code()));
    if sel.in_ldt() {
        return Err(gp_sel.into());
    }
    let (desc, base) = system_descriptor(cpu, sel)?;
    if desc.is_code_or_data() || desc.kind() != system_type::TSS_AVAILABLE {
        return Err(gp_sel.into());
    }
    if !desc.present() {
        return Err(Exception::SegmentNotPresent(sel.error_code()).into());
    }
    if !is_canonical(base) {
        return Err(gp_sel.into());
    }
    // Mark the descriptor busy in the GDT (type 9 -> 11).
    let addr = descriptor_address(cpu, sel, 8)?;
    cpu.mmu.write::<8>(addr, desc.0 | (2 << 40))?;
    cpu.sys.tr = SystemSegment {
        selector: sel.0,
        base,
        limit: desc.limit(),
        attributes: Descriptor(desc.0 | (2 << 40)).attributes(),
    };
    Ok(())
}

/// LLDT: loads LDTR from an LDT descriptor in the GDT; a null selector leaves LDTR unusable.
fn lldt<const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    require_protected_mode(cpu)?;
    require_cpl0(cpu)?;
    let sel = selector_operand::<MEM>(cpu, i)?;
    if sel.is_null() {
        cpu.sys.ldtr = SystemSegment {
            selector: sel.0,
            ..SystemSegment::default()
        };
        return Ok(());
    }
    let gp_sel = Trap::Exception(Exception::GeneralProtection(sel.error_code()));
    if sel.in_ldt() {
        return Err(gp_sel.into());
    }
    let (desc, base) = system_descriptor(cpu, sel)?;
    if desc.is_code_or_data() || desc.kind() != system_type::LDT {
        return Err(gp_sel.into());
    }
    if !desc.present() {
        return Err(Exception::SegmentNotPresent(sel.error_code()).into());
    }
    if !is_canonical(base) {
        return Err(gp_sel.into());
    }
    cpu.sys.ldtr = SystemSegment {
        selector: sel.0,
        base,
        limit: desc.limit(),
        attributes: desc.attributes(),
    };
    Ok(())
}

/// STR/SLDT: a register destination of 32 or 64 bits is zero-extended; memory gets 16 bits.
fn store_selector<const TR: bool, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    require_protected_mode(cpu)?;
    let sel = if TR {
        cpu.sys.tr.selector
    } else {
        cpu.sys.ldtr.selector
    } as u64;
    cpu.set_reg::<N>(i.dst, sel);
    Ok(())
}

fn store_selector_mem<const TR: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    require_protected_mode(cpu)?;
    let sel = if TR {
        cpu.sys.tr.selector
    } else {
        cpu.sys.ldtr.selector
    } as u64;
    Ok(super::store::<2>(cpu, i, sel)?)
}

/// SYSCALL in 64-bit mode. With EFER.SCE clear the bare CPU reports it to the embedder
/// (`Trap::Syscall`, like Unicorn's syscall hook); a guest-delivery machine turns that
/// into the architectural #UD. Outside 64-bit mode it is #UD, as on Intel processors.
fn syscall(cpu: &mut Cpu, i: &Insn) -> Step {
    if !cpu.in_64bit_mode() {
        return Err(Exception::InvalidOpcode.into());
    }
    if cpu.sys.efer & efer::SCE == 0 {
        return Err(Trap::Syscall.into());
    }
    let rflags = cpu.rflags() & !(1 << 16);
    cpu.regs[reg::RCX as usize] = i.next_rip();
    cpu.regs[R11] = rflags;
    let kernel_cs = ((cpu.sys.star >> 32) & 0xfffc) as u16;
    load_flat_code_and_stack(
        cpu,
        kernel_cs,
        attr::CODE64,
        kernel_cs.wrapping_add(8),
        attr::FLAT_DATA,
    );
    cpu.set_rflags(rflags & !cpu.sys.sfmask & !(1 << 16));
    cpu.rip = cpu.sys.lstar;
    Ok(())
}

/// SYSRET: back to user code at CPL 3, 64-bit with REX.W (`LONG`), compatibility mode
/// without.
fn sysret<const LONG: bool>(cpu: &mut Cpu, _: &Insn) -> Step {
    if cpu.sys.efer & efer::SCE == 0 || !cpu.in_64bit_mode() {
        return Err(Exception::InvalidOpcode.into());
    }
    require_cpl0(cpu)?;
    let target = if LONG {
        cpu.regs[reg::RCX as usize]
    } else {
        cpu.regs[reg::RCX as usize] & 0xffff_ffff
    };
    if !is_canonical(target) {
        return Err(GP0.into());
    }
    let base = ((cpu.sys.star >> 48) & 0xffff) as u16;
    let (cs, cs_attr) = if LONG {
        (base.wrapping_add(16) | 3, USER_CODE64)
    } else {
        (base | 3, USER_CODE32)
    };
    // RF and VM cleared, bit 1 set, as the SDM's 0x3C7FD7 mask says.
    cpu.set_rflags((cpu.regs[R11] & 0x3c_7fd7) | 2);
    load_flat_code_and_stack(cpu, cs, cs_attr, base.wrapping_add(8) | 3, USER_DATA);
    cpu.rip = target;
    Ok(())
}

/// SYSENTER: to CPL 0 at SYSENTER_EIP with SYSENTER_ESP, 64-bit code in long mode and
/// 32-bit code otherwise. `#GP(0)` in real mode or with a null SYSENTER_CS.
fn sysenter(cpu: &mut Cpu, _: &Insn) -> Step {
    let cs = (cpu.sys.sysenter[0] & 0xfffc) as u16;
    if cpu.real_mode() || cs == 0 {
        return Err(GP0.into());
    }
    let long = cpu.sys.long_mode();
    let (esp, eip) = (cpu.sys.sysenter[1], cpu.sys.sysenter[2]);
    let (code_attr, width) = if long {
        (attr::CODE64, u64::MAX)
    } else {
        (KERNEL_CODE32, 0xffff_ffff)
    };
    cpu.rflags_other &= !(flags::IF | (1 << 16) | (1 << 17));
    load_flat_code_and_stack(cpu, cs, code_attr, cs.wrapping_add(8), attr::FLAT_DATA);
    cpu.regs[reg::RSP as usize] = esp & width;
    cpu.rip = eip & width;
    Ok(())
}

/// SYSEXIT: from CPL 0 to CPL 3 at RDX/EDX with RCX/ECX as the stack pointer; 64-bit
/// code with REX.W (`LONG`), 32-bit code without.
fn sysexit<const LONG: bool>(cpu: &mut Cpu, _: &Insn) -> Step {
    let base = (cpu.sys.sysenter[0] & 0xfffc) as u16;
    if cpu.real_mode() || base == 0 || cpu.sys.cpl != 0 {
        return Err(GP0.into());
    }
    let (rip, rsp) = (cpu.regs[reg::RDX as usize], cpu.regs[reg::RCX as usize]);
    if LONG && !(is_canonical(rip) && is_canonical(rsp)) {
        return Err(GP0.into());
    }
    if LONG {
        load_flat_code_and_stack(
            cpu,
            base.wrapping_add(32) | 3,
            USER_CODE64,
            base.wrapping_add(40) | 3,
            USER_DATA,
        );
        cpu.regs[reg::RSP as usize] = rsp;
        cpu.rip = rip;
    } else {
        load_flat_code_and_stack(
            cpu,
            base.wrapping_add(16) | 3,
            USER_CODE32,
            base.wrapping_add(24) | 3,
            USER_DATA,
        );
        cpu.regs[reg::RSP as usize] = rsp & 0xffff_ffff;
        cpu.rip = rip & 0xffff_ffff;
    }
    Ok(())
}

/// R11, where SYSCALL saves RFLAGS.
const R11: usize = 11;

/// Attributes of the fixed segments SYSCALL/SYSRET/SYSENTER/SYSEXIT load.
const KERNEL_CODE32: u16 = 0xc09b;
const USER_CODE64: u16 = 0x20fb;
const USER_CODE32: u16 = 0xc0fb;
const USER_DATA: u16 = 0xc0f3;

pub(crate) fn register(t: &mut OpTable) {
    t.set(Code::Syscall, OpEntry::reg(syscall).branch());
    t.set(Code::Sysretq, OpEntry::reg(sysret::<true>).branch());
    t.set(Code::Sysretd, OpEntry::reg(sysret::<false>).branch());
    t.set(Code::Sysenter, OpEntry::reg(sysenter).branch());
    t.set(Code::Sysexitq, OpEntry::reg(sysexit::<true>).branch());
    t.set(Code::Sysexitd, OpEntry::reg(sysexit::<false>).branch());
    t.set(Code::Smsw_rm16, OpEntry::rm(smsw::<2>, smsw_mem));
    t.set(Code::Smsw_r32m16, OpEntry::rm(smsw::<4>, smsw_mem));
    t.set(Code::Smsw_r64m16, OpEntry::rm(smsw::<8>, smsw_mem));
    t.set(
        Code::Lmsw_rm16,
        OpEntry::rm(lmsw::<false>, lmsw::<true>).ends_block(),
    );
    t.set(
        Code::Lmsw_r32m16,
        OpEntry::rm(lmsw::<false>, lmsw::<true>).ends_block(),
    );
    t.set(
        Code::Lmsw_r64m16,
        OpEntry::rm(lmsw::<false>, lmsw::<true>).ends_block(),
    );
    for code in [Code::Ltr_rm16, Code::Ltr_r32m16, Code::Ltr_r64m16] {
        t.set(code, OpEntry::rm(ltr::<false>, ltr::<true>));
    }
    for code in [Code::Lldt_rm16, Code::Lldt_r32m16, Code::Lldt_r64m16] {
        t.set(code, OpEntry::rm(lldt::<false>, lldt::<true>));
    }
    // STR/SLDT: a register destination of 16, 32 or 64 bits; memory always gets 16.
    let selector_stores: [(Code, crate::insn::Handler, crate::insn::Handler); 6] = [
        (
            Code::Str_rm16,
            store_selector::<true, 2>,
            store_selector_mem::<true>,
        ),
        (
            Code::Str_r32m16,
            store_selector::<true, 4>,
            store_selector_mem::<true>,
        ),
        (
            Code::Str_r64m16,
            store_selector::<true, 8>,
            store_selector_mem::<true>,
        ),
        (
            Code::Sldt_rm16,
            store_selector::<false, 2>,
            store_selector_mem::<false>,
        ),
        (
            Code::Sldt_r32m16,
            store_selector::<false, 4>,
            store_selector_mem::<false>,
        ),
        (
            Code::Sldt_r64m16,
            store_selector::<false, 8>,
            store_selector_mem::<false>,
        ),
    ];
    for (code, reg_form, mem_form) in selector_stores {
        t.set(code, OpEntry::rm(reg_form, mem_form));
    }
    t.set(Code::Mov_r64_cr, OpEntry::reg(mov_from_cr::<8>));
    t.set(Code::Mov_r32_cr, OpEntry::reg(mov_from_cr::<4>));
    t.set(Code::Mov_cr_r64, OpEntry::reg(mov_to_cr::<8>).ends_block());
    t.set(Code::Mov_cr_r32, OpEntry::reg(mov_to_cr::<4>).ends_block());
    t.set(Code::Mov_r64_dr, OpEntry::reg(mov_from_dr::<8>));
    t.set(Code::Mov_r32_dr, OpEntry::reg(mov_from_dr::<4>));
    t.set(Code::Mov_dr_r64, OpEntry::reg(mov_to_dr::<8>).ends_block());
    t.set(Code::Mov_dr_r32, OpEntry::reg(mov_to_dr::<4>).ends_block());
    t.set(Code::Rdmsr, OpEntry::reg(rdmsr));
    t.set(Code::Wrmsr, OpEntry::reg(wrmsr).ends_block());
    t.set(Code::Lgdt_m1664, OpEntry::mem(load_table::<false, 8>));
    t.set(Code::Lgdt_m1632, OpEntry::mem(load_table::<false, 4>));
    t.set(Code::Lgdt_m1632_16, OpEntry::mem(load_table::<false, 2>));
    t.set(Code::Lidt_m1664, OpEntry::mem(load_table::<true, 8>));
    t.set(Code::Lidt_m1632, OpEntry::mem(load_table::<true, 4>));
    t.set(Code::Lidt_m1632_16, OpEntry::mem(load_table::<true, 2>));
    t.set(Code::Sgdt_m1664, OpEntry::mem(store_table::<false, 8>));
    t.set(Code::Sgdt_m1632, OpEntry::mem(store_table::<false, 4>));
    t.set(Code::Sgdt_m1632_16, OpEntry::mem(store_table::<false, 2>));
    t.set(Code::Sidt_m1664, OpEntry::mem(store_table::<true, 8>));
    t.set(Code::Sidt_m1632, OpEntry::mem(store_table::<true, 4>));
    t.set(Code::Sidt_m1632_16, OpEntry::mem(store_table::<true, 2>));
    t.set(Code::Cli, OpEntry::reg(set_interrupt_flag::<false>));
    // STI ends its block so the interrupt shadow can be modelled at the block boundary.
    t.set(
        Code::Sti,
        OpEntry::reg(set_interrupt_flag::<true>).ends_block(),
    );
    t.set(Code::Clts, OpEntry::reg(clts));
    t.set(Code::Swapgs, OpEntry::reg(swapgs));
    t.set(Code::Invlpg_m, OpEntry::mem(invlpg).ends_block());
    t.set(Code::Stac, OpEntry::reg(set_ac::<true>));
    t.set(Code::Clac, OpEntry::reg(set_ac::<false>));
    t.set(Code::Wbinvd, OpEntry::reg(cache_control));
    t.set(Code::Invd, OpEntry::reg(cache_control));
}
