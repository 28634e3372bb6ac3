//! Segment registers in every mode: the code and stack sizes they imply, loading a
//! selector with the checks of real, protected, compatibility and 64-bit mode, and the
//! far-transfer checks on a new CS.
//!
//! The visible selectors live in [`Cpu::seg_sel`], the hidden descriptor cache in
//! [`Cpu::seg_base`], [`Cpu::seg_limit`] and [`Cpu::seg_attr`]. Everything the translator
//! and the stack helpers need per instruction is derived once, when CS, SS, CR0 or EFER
//! change, by [`Cpu::update_mode`]: the decoder bitness, the linear base of instruction
//! addresses and the stack-pointer width. Segment limits are recorded but not enforced on
//! accesses (as QEMU's TCG, which checks them only in a few places); see the README.

use crate::cpu::{attr, seg, Cpu};
use crate::descriptor::{descriptor_address, read_descriptor, Descriptor, Selector};
use crate::exception::Exception;
use crate::insn::Trap;
use crate::sysregs::cr0;

impl Cpu {
    /// Recomputes the decoder bitness, code base and stack width from CR0.PE, EFER.LMA
    /// and the hidden CS and SS attributes. Must be called after anything that changes
    /// them; tells the run loop when code must be looked up afresh.
    pub fn update_mode(&mut self) {
        let cs = self.seg_attr[seg::CS as usize];
        let protected = self.sys.cr0 & cr0::PE != 0;
        let bits = if protected && self.sys.long_mode() && cs & attr::LONG != 0 {
            64
        } else if cs & attr::BIG != 0 {
            32
        } else {
            16
        };
        let code_base = if bits == 64 {
            0
        } else {
            self.seg_base[seg::CS as usize] & 0xffff_ffff
        };
        let stack_mask = if bits == 64 {
            u64::MAX
        } else if self.seg_attr[seg::SS as usize] & attr::BIG != 0 {
            0xffff_ffff
        } else {
            0xffff
        };
        if bits != self.code_bits || code_base != self.code_base {
            self.fetch_mapping_changed = true;
        }
        self.code_bits = bits;
        self.code_base = code_base;
        self.stack_mask = stack_mask;
    }

    /// What, besides the bytes and their address, decides how code decodes: the bitness
    /// and the code-segment base (part of every cached block's key).
    #[inline]
    pub fn mode_key(&self) -> u64 {
        (self.code_base << 8) | self.code_bits as u64
    }

    /// Whether the CPU is in real-address mode (CR0.PE clear).
    #[inline]
    pub fn real_mode(&self) -> bool {
        self.sys.cr0 & cr0::PE == 0
    }

    /// Whether 64-bit code is running (long mode with a CS whose L bit is set).
    #[inline(always)]
    pub fn in_64bit_mode(&self) -> bool {
        self.code_bits == 64
    }

    /// The linear address of the instruction at offset `ip` in the current code segment.
    #[inline(always)]
    pub fn code_linear(&self, ip: u64) -> u64 {
        if self.code_bits == 64 {
            ip
        } else {
            self.code_base.wrapping_add(ip) & 0xffff_ffff
        }
    }

    /// The linear address of stack offset `sp` (masked to the stack width) in SS.
    #[inline(always)]
    pub fn stack_linear(&self, sp: u64) -> u64 {
        if self.stack_mask == u64::MAX {
            sp
        } else {
            self.seg_base[seg::SS as usize].wrapping_add(sp & self.stack_mask) & 0xffff_ffff
        }
    }
}

/// Runs `f` with the MMU treating accesses as implicit supervisor accesses (descriptor
/// tables, the TSS), restoring the previous setting afterwards.
pub fn as_supervisor<T>(cpu: &mut Cpu, f: impl FnOnce(&mut Cpu) -> T) -> T {
    let before = cpu.mmu.privilege().implicit_supervisor;
    cpu.mmu.set_implicit_supervisor(true);
    let result = f(cpu);
    cpu.mmu.set_implicit_supervisor(before);
    result
}

/// Reads the descriptor `sel` names as a supervisor access.
///
/// # Errors
///
/// `#GP(selector)` beyond the table limit; memory faults from the read.
pub fn fetch_descriptor(cpu: &mut Cpu, sel: Selector) -> Result<Descriptor, Trap> {
    as_supervisor(cpu, |cpu| read_descriptor(cpu, sel))
}

/// Sets the accessed bit of a descriptor that lacks it, as the processor does on a
/// segment load (a locked supervisor write of the type byte).
fn mark_accessed(cpu: &mut Cpu, sel: Selector, desc: Descriptor) -> Result<Descriptor, Trap> {
    if desc.0 & (1 << 40) != 0 {
        return Ok(desc);
    }
    let marked = Descriptor(desc.0 | 1 << 40);
    as_supervisor(cpu, |cpu| -> Result<(), Trap> {
        let addr = descriptor_address(cpu, sel, 8)?;
        cpu.mmu.write::<1>(addr + 5, (marked.0 >> 40) & 0xff)?;
        Ok(())
    })?;
    Ok(marked)
}

/// Loads segment register `sreg` with `sel` and the descriptor cache with `desc` as it
/// stands (no checks), then refreshes the mode if CS or SS changed.
pub fn commit_segment(cpu: &mut Cpu, sreg: u8, sel: u16, desc: Descriptor) {
    let i = sreg as usize;
    cpu.seg_sel[i] = sel;
    cpu.seg_base[i] = desc.base();
    cpu.seg_limit[i] = desc.limit();
    cpu.seg_attr[i] = desc.attributes();
    if sreg == seg::CS || sreg == seg::SS {
        cpu.update_mode();
    }
}

/// Loads a segment register the real-mode way: base = selector * 16, limit and
/// attributes kept (which is what makes "unreal mode" work).
pub fn load_real_segment(cpu: &mut Cpu, sreg: u8, sel: u16) {
    let i = sreg as usize;
    cpu.seg_sel[i] = sel;
    cpu.seg_base[i] = (sel as u64) << 4;
    if sreg == seg::CS || sreg == seg::SS {
        cpu.update_mode();
    }
}

/// Loads a null selector into a data segment register: it becomes unusable (its
/// attributes say not present); in 64-bit mode FS and GS keep their bases.
fn load_null(cpu: &mut Cpu, sreg: u8, sel: u16) {
    let i = sreg as usize;
    cpu.seg_sel[i] = sel;
    cpu.seg_attr[i] = 0;
    if !(cpu.in_64bit_mode() && (sreg == seg::FS || sreg == seg::GS)) {
        cpu.seg_base[i] = 0;
    }
    if sreg == seg::SS {
        // A null SS in 64-bit mode: the stack keeps working (its base is ignored).
        cpu.seg_attr[i] = attr::BIG | ((cpu.sys.cpl as u16) << attr::DPL_SHIFT);
        cpu.update_mode();
    }
}

fn gp(sel: Selector) -> Trap {
    Trap::Exception(Exception::GeneralProtection(sel.error_code()))
}

/// Loads DS, ES, FS, GS or SS from `sel` the way MOV, POP and LDS/LES/LFS/LGS/LSS do,
/// with every check of the current mode. Loading SS sets nothing else (the caller sets
/// the interrupt shadow).
///
/// # Errors
///
/// `#GP(selector)` for a selector beyond its table, a descriptor of the wrong kind or
/// privilege, `#GP(0)` for a null SS where one is not allowed, `#NP(selector)` (`#SS` for
/// SS) for a segment not present; memory faults from reading the descriptor.
pub fn load_data_segment(cpu: &mut Cpu, sreg: u8, sel: u16) -> Result<(), Trap> {
    if cpu.real_mode() {
        load_real_segment(cpu, sreg, sel);
        return Ok(());
    }
    let selector = Selector(sel);
    let cpl = cpu.sys.cpl;
    if selector.is_null() {
        if sreg == seg::SS && !(cpu.in_64bit_mode() && cpl < 3 && selector.rpl() == cpl) {
            return Err(Exception::GeneralProtection(0).into());
        }
        load_null(cpu, sreg, sel);
        return Ok(());
    }
    let desc = fetch_descriptor(cpu, selector)?;
    if sreg == seg::SS {
        if selector.rpl() != cpl || !desc.is_writable_data() || desc.dpl() != cpl {
            return Err(gp(selector));
        }
        if !desc.present() {
            return Err(Exception::StackFault(selector.error_code()).into());
        }
    } else {
        let readable = desc.is_code_or_data() && (!desc.is_code() || desc.kind() & 2 != 0);
        if !readable {
            return Err(gp(selector));
        }
        if !desc.is_conforming() && (selector.rpl() > desc.dpl() || cpl > desc.dpl()) {
            return Err(gp(selector));
        }
        if !desc.present() {
            return Err(Exception::SegmentNotPresent(selector.error_code()).into());
        }
    }
    let desc = mark_accessed(cpu, selector, desc)?;
    commit_segment(cpu, sreg, sel, desc);
    Ok(())
}

/// How a far transfer reaches its new code segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FarKind {
    /// JMP or CALL: the new CPL is the current one.
    JumpOrCall,
    /// RET or IRET: the selector's RPL is the new CPL (equal or outer).
    Return,
}

/// Checks a protected-mode far-transfer target code segment and returns its descriptor
/// and the CPL the transfer runs at. Gates and task segments are not supported as far
/// targets and raise `#GP(selector)` (see the README's deviations).
///
/// # Errors
///
/// `#GP(0)` for a null selector, `#GP(selector)` for anything the SDM's JMP/CALL/RET
/// rules refuse, `#NP(selector)` when the segment is not present.
pub fn check_code_target(
    cpu: &mut Cpu,
    sel: Selector,
    kind: FarKind,
) -> Result<(Descriptor, u8), Trap> {
    if sel.is_null() {
        return Err(Exception::GeneralProtection(0).into());
    }
    let desc = fetch_descriptor(cpu, sel)?;
    let cpl = cpu.sys.cpl;
    if !desc.is_code() {
        return Err(gp(sel));
    }
    let new_cpl = match kind {
        FarKind::JumpOrCall => {
            let ok = if desc.is_conforming() {
                desc.dpl() <= cpl
            } else {
                sel.rpl() <= cpl && desc.dpl() == cpl
            };
            if !ok {
                return Err(gp(sel));
            }
            cpl
        }
        FarKind::Return => {
            let rpl = sel.rpl();
            let ok = rpl >= cpl
                && if desc.is_conforming() {
                    desc.dpl() <= rpl
                } else {
                    desc.dpl() == rpl
                };
            if !ok {
                return Err(gp(sel));
            }
            rpl
        }
    };
    // L and D together are reserved in long mode.
    if cpu.sys.long_mode() && desc.long() && desc.default_big() {
        return Err(gp(sel));
    }
    if !desc.present() {
        return Err(Exception::SegmentNotPresent(sel.error_code()).into());
    }
    let desc = mark_accessed(cpu, sel, desc)?;
    Ok((desc, new_cpl))
}

/// Checks the SS a return to an outer privilege level (RET far, IRET) pops.
///
/// # Errors
///
/// `#GP(selector)` (or `#GP(0)` for a null SS where not allowed) and `#SS(selector)` as
/// the SDM says; memory faults from the descriptor read.
pub fn check_return_stack(
    cpu: &mut Cpu,
    sel: Selector,
    new_cpl: u8,
    to_64bit: bool,
) -> Result<Option<Descriptor>, Trap> {
    if sel.is_null() {
        // Only 64-bit code below ring 3 may run with a null SS.
        if to_64bit && new_cpl < 3 {
            return Ok(None);
        }
        return Err(Exception::GeneralProtection(0).into());
    }
    if sel.rpl() != new_cpl {
        return Err(gp(sel));
    }
    let desc = fetch_descriptor(cpu, sel)?;
    if !desc.is_writable_data() || desc.dpl() != new_cpl {
        return Err(gp(sel));
    }
    if !desc.present() {
        return Err(Exception::StackFault(sel.error_code()).into());
    }
    Ok(Some(mark_accessed(cpu, sel, desc)?))
}

/// Loads SS for a privilege change after its checks passed (`None` is a null SS).
pub fn commit_stack_segment(cpu: &mut Cpu, sel: u16, desc: Option<Descriptor>) {
    match desc {
        Some(d) => commit_segment(cpu, seg::SS, sel, d),
        None => load_null(cpu, seg::SS, sel),
    }
}

/// After a return to an outer privilege level, data segment registers the new level
/// may not use are nulled (the SDM's "RET/IRET to outer level" step).
pub fn drop_inaccessible_data_segments(cpu: &mut Cpu) {
    let cpl = cpu.sys.cpl;
    for sreg in [seg::ES, seg::DS, seg::FS, seg::GS] {
        let a = cpu.seg_attr[sreg as usize];
        let dpl = ((a >> attr::DPL_SHIFT) & 3) as u8;
        let is_data_or_nonconforming_code = a & 0x10 != 0 && (a & 0x8 == 0 || a & 0x4 == 0);
        if is_data_or_nonconforming_code && dpl < cpl {
            load_null(cpu, sreg, 0);
        }
    }
}

/// Loads CS for a checked protected-mode far transfer and switches to `new_cpl`.
pub fn commit_code_segment(cpu: &mut Cpu, sel: Selector, desc: Descriptor, new_cpl: u8) {
    cpu.set_cpl(new_cpl);
    commit_segment(cpu, seg::CS, (sel.0 & !3) | new_cpl as u16, desc);
}

/// Loads CS and SS with fixed flat descriptors, as SYSCALL, SYSRET, SYSENTER and SYSEXIT
/// do (no descriptor-table reads), and switches to the CPL in CS's selector.
pub fn load_flat_code_and_stack(cpu: &mut Cpu, cs: u16, cs_attr: u16, ss: u16, ss_attr: u16) {
    for (sreg, sel, attributes) in [(seg::CS, cs, cs_attr), (seg::SS, ss, ss_attr)] {
        let i = sreg as usize;
        cpu.seg_sel[i] = sel;
        cpu.seg_base[i] = 0;
        cpu.seg_limit[i] = u32::MAX;
        cpu.seg_attr[i] = attributes;
    }
    cpu.set_cpl((cs & 3) as u8);
    cpu.update_mode();
}
