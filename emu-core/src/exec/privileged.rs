//! Privileged and system-state instructions: MOV to/from CR and DR, RDMSR/WRMSR,
//! LGDT/LIDT/SGDT/SIDT, LTR/LLDT/STR/SLDT, CLI/STI, CLTS, SWAPGS, INVLPG, WBINVD/INVD,
//! SYSCALL/SYSRET.
//!
//! Each checks privilege first (`#GP(0)` above CPL 0, or above IOPL for CLI/STI) and
//! validates values through [`crate::sysregs`]. Instructions that change how later code
//! is translated or how addresses translate end their block.

use iced_x86::Code;

use crate::cpu::{reg, seg, Cpu};
use crate::descriptor::{
    descriptor_address, read_system_descriptor, system_type, Descriptor, Selector, SystemSegment,
};
use crate::exception::Exception;
use crate::flags;
use crate::insn::{Insn, OpEntry, OpTable, Step, Trap};
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

fn mov_from_cr(cpu: &mut Cpu, i: &Insn) -> Step {
    require_cpl0(cpu)?;
    let value = match i.src {
        0 => cpu.sys.cr0,
        2 => cpu.sys.cr2,
        3 => cpu.sys.cr3,
        4 => cpu.sys.cr4,
        8 => cpu.sys.cr8,
        _ => return Err(Exception::InvalidOpcode.into()),
    };
    cpu.set_reg::<8>(i.dst, value);
    Ok(())
}

fn mov_to_cr(cpu: &mut Cpu, i: &Insn) -> Step {
    require_cpl0(cpu)?;
    let value = cpu.reg::<8>(i.src);
    let sys = &cpu.sys;
    let (cr0, cr3, cr4, efer) = (sys.cr0, sys.cr3, sys.cr4, sys.efer);
    match i.dst {
        0 => {
            let new = sys.check_cr0(value)?;
            // Paging may be turned off only from compatibility mode, not from 64-bit code.
            if cr0 & cr0::PG != 0 && new & cr0::PG == 0 && sys.long_mode() {
                return Err(GP0);
            }
            // Turning paging on with EFER.LME set activates long mode.
            let efer = if new & cr0::PG != 0 && cr0 & cr0::PG == 0 && efer & efer::LME != 0 {
                efer | efer::LMA
            } else {
                efer
            };
            cpu.apply_paging(new, cr3, cr4, efer)?;
            cpu.sys.cr0 = new;
            cpu.sys.efer = efer;
        }
        2 => cpu.sys.cr2 = value,
        3 => {
            cpu.mmu.write_cr3(value).map_err(|_| GP0)?;
            cpu.sys.cr3 = cpu.mmu.paging().cr3;
            cpu.fetch_mapping_changed = true;
        }
        4 => {
            let new = sys.check_cr4(value)?;
            cpu.apply_paging(cr0, cr3, new, efer)?;
            cpu.sys.cr4 = new;
        }
        8 => cpu.sys.cr8 = sys.check_cr8(value)?,
        _ => return Err(Exception::InvalidOpcode.into()),
    }
    Ok(())
}

fn mov_from_dr(cpu: &mut Cpu, i: &Insn) -> Step {
    require_cpl0(cpu)?;
    let value = cpu.sys.read_dr(i.src)?;
    cpu.set_reg::<8>(i.dst, value);
    Ok(())
}

fn mov_to_dr(cpu: &mut Cpu, i: &Insn) -> Step {
    require_cpl0(cpu)?;
    let value = cpu.reg::<8>(i.src);
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

fn rdmsr(cpu: &mut Cpu, _: &Insn) -> Step {
    require_cpl0(cpu)?;
    let index = cpu.reg::<4>(reg::RCX) as u32;
    let (sys, mut host) = msr_host(cpu);
    let value = sys.read_msr(&mut host, index)?;
    cpu.set_reg::<4>(reg::RAX, value & 0xffff_ffff);
    cpu.set_reg::<4>(reg::RDX, value >> 32);
    Ok(())
}

fn wrmsr(cpu: &mut Cpu, _: &Insn) -> Step {
    require_cpl0(cpu)?;
    let index = cpu.reg::<4>(reg::RCX) as u32;
    let value = cpu.reg::<4>(reg::RAX) | cpu.reg::<4>(reg::RDX) << 32;
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

/// LGDT/LIDT m16&64: a 2-byte limit then an 8-byte base, which must be canonical.
fn load_table<const IDT: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    require_cpl0(cpu)?;
    let addr = i.ea(cpu);
    let limit = cpu.mmu.read::<2>(addr)? as u16;
    let base = cpu.mmu.read::<8>(addr.wrapping_add(2))?;
    if !is_canonical(base) {
        return Err(GP0);
    }
    let table = TableRegister { base, limit };
    if IDT {
        cpu.sys.idtr = table;
    } else {
        cpu.sys.gdtr = table;
    }
    Ok(())
}

/// SGDT/SIDT: allowed at any privilege (UMIP is not supported).
fn store_table<const IDT: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let table = if IDT { cpu.sys.idtr } else { cpu.sys.gdtr };
    let addr = i.ea(cpu);
    cpu.mmu.check_writable(addr, 10)?;
    cpu.mmu.write::<2>(addr, table.limit as u64)?;
    cpu.mmu.write::<8>(addr.wrapping_add(2), table.base)?;
    Ok(())
}

/// CLI/STI: `#GP(0)` when CPL > IOPL (no VME/PVI).
fn set_interrupt_flag<const ON: bool>(cpu: &mut Cpu, _: &Insn) -> Step {
    if cpu.sys.cpl > cpu.iopl() {
        return Err(GP0);
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
    cpu.mmu.invlpg(addr);
    cpu.fetch_mapping_changed = true;
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
    require_cpl0(cpu)
}

/// The selector operand of LTR/LLDT: a 16-bit register or memory word.
fn selector_operand<const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Result<Selector, Trap> {
    Ok(Selector(if MEM {
        super::load::<2>(cpu, i)?
    } else {
        cpu.reg::<2>(i.dst)
    } as u16))
}

/// LTR: loads TR from an available 64-bit TSS descriptor in the GDT and marks it busy.
fn ltr<const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    require_cpl0(cpu)?;
    let sel = selector_operand::<MEM>(cpu, i)?;
    if sel.is_null() {
        return Err(GP0);
    }
    let gp_sel = Trap::Exception(Exception::GeneralProtection(sel.error_code()));
    if sel.in_ldt() {
        return Err(gp_sel);
    }
    let (desc, base) = read_system_descriptor(cpu, sel)?;
    if desc.is_code_or_data() || desc.kind() != system_type::TSS_AVAILABLE {
        return Err(gp_sel);
    }
    if !desc.present() {
        return Err(Exception::SegmentNotPresent(sel.error_code()).into());
    }
    if !is_canonical(base) {
        return Err(gp_sel);
    }
    // Mark the descriptor busy in the GDT (type 9 -> 11).
    let addr = descriptor_address(cpu, sel, 16)?;
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
        return Err(gp_sel);
    }
    let (desc, base) = read_system_descriptor(cpu, sel)?;
    if desc.is_code_or_data() || desc.kind() != system_type::LDT {
        return Err(gp_sel);
    }
    if !desc.present() {
        return Err(Exception::SegmentNotPresent(sel.error_code()).into());
    }
    if !is_canonical(base) {
        return Err(gp_sel);
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
    let sel = if TR {
        cpu.sys.tr.selector
    } else {
        cpu.sys.ldtr.selector
    } as u64;
    cpu.set_reg::<N>(i.dst, sel);
    Ok(())
}

fn store_selector_mem<const TR: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let sel = if TR {
        cpu.sys.tr.selector
    } else {
        cpu.sys.ldtr.selector
    } as u64;
    super::store::<2>(cpu, i, sel)
}

/// SYSCALL in 64-bit mode. With EFER.SCE clear the bare CPU reports it to the embedder
/// (`Trap::Syscall`, like Unicorn's syscall hook); a guest-delivery machine turns that
/// into the architectural #UD.
fn syscall(cpu: &mut Cpu, i: &Insn) -> Step {
    if cpu.sys.efer & efer::SCE == 0 {
        return Err(Trap::Syscall);
    }
    let rflags = cpu.rflags() & !(1 << 16);
    cpu.regs[reg::RCX as usize] = i.next_rip();
    cpu.regs[R11] = rflags;
    let kernel_cs = ((cpu.sys.star >> 32) & 0xfffc) as u16;
    cpu.seg_sel[seg::CS as usize] = kernel_cs;
    cpu.seg_sel[seg::SS as usize] = kernel_cs.wrapping_add(8);
    cpu.sys.cs_attributes = KERNEL_CODE_ATTRIBUTES;
    cpu.set_rflags(rflags & !cpu.sys.sfmask & !(1 << 16));
    cpu.set_cpl(0);
    cpu.rip = cpu.sys.lstar;
    Ok(())
}

/// SYSRET with REX.W: back to 64-bit user code at CPL 3. (The 32-bit form returns to
/// compatibility mode, which does not exist yet, so it is not registered and raises #UD.)
fn sysretq(cpu: &mut Cpu, _: &Insn) -> Step {
    if cpu.sys.efer & efer::SCE == 0 {
        return Err(Exception::InvalidOpcode.into());
    }
    require_cpl0(cpu)?;
    let target = cpu.regs[reg::RCX as usize];
    if !is_canonical(target) {
        return Err(GP0);
    }
    let base = ((cpu.sys.star >> 48) & 0xffff) as u16;
    cpu.seg_sel[seg::CS as usize] = base.wrapping_add(16) | 3;
    cpu.seg_sel[seg::SS as usize] = base.wrapping_add(8) | 3;
    cpu.sys.cs_attributes = USER_CODE_ATTRIBUTES;
    // RF and VM cleared, bit 1 set, as the SDM's 0x3C7FD7 mask says.
    cpu.set_rflags((cpu.regs[R11] & 0x3c_7fd7) | 2);
    cpu.set_cpl(3);
    cpu.rip = target;
    Ok(())
}

/// R11, where SYSCALL saves RFLAGS.
const R11: usize = 11;

/// Attributes SYSCALL loads into CS: present, DPL 0, 64-bit code.
const KERNEL_CODE_ATTRIBUTES: u16 = 0x209b;
/// Attributes SYSRET loads into CS: present, DPL 3, 64-bit code.
const USER_CODE_ATTRIBUTES: u16 = 0x20fb;

pub(crate) fn register(t: &mut OpTable) {
    t.set(Code::Syscall, OpEntry::reg(syscall).branch());
    t.set(Code::Sysretq, OpEntry::reg(sysretq).branch());
    for code in [Code::Ltr_rm16, Code::Ltr_r32m16, Code::Ltr_r64m16] {
        t.set(code, OpEntry::rm(ltr::<false>, ltr::<true>));
    }
    for code in [Code::Lldt_rm16, Code::Lldt_r32m16, Code::Lldt_r64m16] {
        t.set(code, OpEntry::rm(lldt::<false>, lldt::<true>));
    }
    t.set(
        Code::Str_rm16,
        OpEntry::rm(store_selector::<true, 2>, store_selector_mem::<true>),
    );
    t.set(
        Code::Str_r32m16,
        OpEntry::rm(store_selector::<true, 4>, store_selector_mem::<true>),
    );
    t.set(
        Code::Str_r64m16,
        OpEntry::rm(store_selector::<true, 8>, store_selector_mem::<true>),
    );
    t.set(
        Code::Sldt_rm16,
        OpEntry::rm(store_selector::<false, 2>, store_selector_mem::<false>),
    );
    t.set(
        Code::Sldt_r32m16,
        OpEntry::rm(store_selector::<false, 4>, store_selector_mem::<false>),
    );
    t.set(
        Code::Sldt_r64m16,
        OpEntry::rm(store_selector::<false, 8>, store_selector_mem::<false>),
    );
    t.set(Code::Mov_r64_cr, OpEntry::reg(mov_from_cr));
    t.set(Code::Mov_cr_r64, OpEntry::reg(mov_to_cr).ends_block());
    t.set(Code::Mov_r64_dr, OpEntry::reg(mov_from_dr));
    t.set(Code::Mov_dr_r64, OpEntry::reg(mov_to_dr).ends_block());
    t.set(Code::Rdmsr, OpEntry::reg(rdmsr));
    t.set(Code::Wrmsr, OpEntry::reg(wrmsr).ends_block());
    t.set(Code::Lgdt_m1664, OpEntry::mem(load_table::<false>));
    t.set(Code::Lidt_m1664, OpEntry::mem(load_table::<true>));
    t.set(Code::Sgdt_m1664, OpEntry::mem(store_table::<false>));
    t.set(Code::Sidt_m1664, OpEntry::mem(store_table::<true>));
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
