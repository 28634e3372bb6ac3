//! Delivery of exceptions and interrupts, and IRET, in every mode.
//!
//! * Real mode: the interrupt vector table (4-byte CS:IP entries at IDTR.base), FLAGS, CS
//!   and IP pushed as words, no error codes.
//! * Protected mode: 8-byte IDT gates (16- and 32-bit interrupt and trap gates), a stack
//!   switch to SSn:ESPn from the 32-bit TSS on a privilege change, frames of words or
//!   dwords. Task gates (hardware task switching) are not supported: they raise #GP with
//!   the IDT error code (see the README's known deviations).
//! * Long mode (64-bit and compatibility code alike): 16-byte gates, 64-bit interrupt and
//!   trap gates only, a stack switch to TSS.RSPn on a privilege change or to TSS.IST[n]
//!   whenever the gate names an IST slot, the stack aligned to 16 bytes, and SS, RSP,
//!   RFLAGS, CS, RIP (and an error code) pushed as quadwords.
//!
//! Nothing is committed until the frame is written, so a fault during delivery leaves the
//! interrupted state intact for the double-fault logic. Descriptor-table and TSS reads are
//! implicit supervisor accesses, as are the frame writes of a handler below ring 3.

use crate::cpu::{attr, reg, seg, Cpu};
use crate::descriptor::{system_type, Descriptor, Selector};
use crate::exception::Exception;
use crate::exec::stack::{check_push_room, peek_value, pop_value, push_value, set_stack_offset};
use crate::flags;
use crate::insn::Trap;
use crate::segment::{
    as_supervisor, check_code_target, check_return_stack, commit_code_segment, commit_segment,
    commit_stack_segment, drop_inaccessible_data_segments, fetch_descriptor, load_real_segment,
    FarKind,
};

/// What kind of event is being delivered; it decides the gate-DPL check and the EXT bit
/// of error codes raised during delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A processor exception.
    Exception,
    /// An interrupt from outside (the interrupt line, NMI).
    External,
    /// INT n, INT3, INTO: the gate's DPL must allow the current privilege level.
    Software,
}

/// Error code for a fault that refers to IDT entry `vector`.
fn idt_error(vector: u8, kind: EventKind) -> u32 {
    (vector as u32) << 3 | 2 | (kind == EventKind::External) as u32
}

fn selector_error(sel: Selector, kind: EventKind) -> u32 {
    sel.error_code() | (kind == EventKind::External) as u32
}

/// Reads RSPn (n = 0..2) or IST slot n (n = 1..7, passed as 3 + n - 1 here) from the
/// 64-bit TSS.
fn tss_stack(cpu: &mut Cpu, offset: u64, kind: EventKind) -> Result<u64, Trap> {
    let tr = cpu.sys.tr;
    if Selector(tr.selector).is_null() || offset + 7 > tr.limit as u64 {
        return Err(Exception::InvalidTss(selector_error(Selector(tr.selector), kind)).into());
    }
    Ok(as_supervisor(cpu, |cpu| {
        cpu.mmu.read::<8>(tr.base.wrapping_add(offset))
    })?)
}

/// Delivers `vector` in the current mode. RIP must already be the address to return to
/// (the faulting instruction for faults, the next one for traps, software and external
/// interrupts).
///
/// # Errors
///
/// The exception that delivery itself raised (#GP, #NP, #TS, #SS, #PF, ...), with no
/// state changed; the caller applies the double-fault rules.
pub fn deliver(
    cpu: &mut Cpu,
    vector: u8,
    error_code: Option<u32>,
    kind: EventKind,
) -> Result<(), Trap> {
    if cpu.real_mode() {
        deliver_real(cpu, vector)
    } else if cpu.sys.long_mode() {
        deliver_long(cpu, vector, error_code, kind)
    } else {
        deliver_protected(cpu, vector, error_code, kind)
    }
}

/// Real mode: through the interrupt vector table.
fn deliver_real(cpu: &mut Cpu, vector: u8) -> Result<(), Trap> {
    let idtr = cpu.sys.idtr;
    let offset = vector as u64 * 4;
    if offset + 3 > idtr.limit as u64 {
        return Err(Exception::GeneralProtection(0).into());
    }
    let entry = cpu
        .mmu
        .read::<4>(idtr.base.wrapping_add(offset) & 0xffff_ffff)?;
    check_push_room(cpu, 6)?;
    let flags_image = cpu.rflags() & 0xffff;
    let cs = cpu.seg_sel[seg::CS as usize] as u64;
    push_value::<2>(cpu, flags_image)?;
    push_value::<2>(cpu, cs)?;
    push_value::<2>(cpu, cpu.rip & 0xffff)?;
    cpu.rflags_other &= !(flags::IF | flags::TF | flags::AC);
    load_real_segment(cpu, seg::CS, (entry >> 16) as u16);
    cpu.rip = entry & 0xffff;
    Ok(())
}

/// Writes `frame` (first value at the highest address) as `width`-byte slots below
/// offset `sp` of a stack with linear base `base` and offset mask `mask`, checking every
/// slot before writing any. Returns the new stack offset.
fn write_frame(
    cpu: &mut Cpu,
    base: u64,
    mask: u64,
    sp: u64,
    frame: &[u64],
    width: u64,
    supervisor: bool,
) -> Result<u64, Trap> {
    let slot = |k: usize| {
        let offset = sp.wrapping_sub(width * (k as u64 + 1)) & mask;
        let linear = base.wrapping_add(offset);
        if mask == u64::MAX {
            linear
        } else {
            linear & 0xffff_ffff
        }
    };
    let write = |cpu: &mut Cpu| -> Result<(), Trap> {
        for k in 0..frame.len() {
            cpu.mmu.check_writable(slot(k), width)?;
        }
        for (k, &value) in frame.iter().enumerate() {
            match width {
                2 => cpu.mmu.write::<2>(slot(k), value)?,
                4 => cpu.mmu.write::<4>(slot(k), value)?,
                _ => cpu.mmu.write::<8>(slot(k), value)?,
            }
        }
        Ok(())
    };
    if supervisor {
        as_supervisor(cpu, write)?;
    } else {
        write(cpu)?;
    }
    Ok(sp.wrapping_sub(width * frame.len() as u64) & mask)
}

/// The linear address of the `size`-byte IDT gate for `vector`.
///
/// # Errors
///
/// `#GP` with the IDT error code when the gate lies beyond the IDT's limit.
fn gate_address(cpu: &Cpu, vector: u8, size: u64, kind: EventKind) -> Result<u64, Trap> {
    let idtr = cpu.sys.idtr;
    let offset = vector as u64 * size;
    if offset + size - 1 > idtr.limit as u64 {
        return Err(Exception::GeneralProtection(idt_error(vector, kind)).into());
    }
    Ok(idtr.base.wrapping_add(offset))
}

/// Protected mode (not long mode): 8-byte gates and the 32-bit TSS.
fn deliver_protected(
    cpu: &mut Cpu,
    vector: u8,
    error_code: Option<u32>,
    kind: EventKind,
) -> Result<(), Trap> {
    let gp_idt = || Trap::Exception(Exception::GeneralProtection(idt_error(vector, kind)));
    let gate_at = gate_address(cpu, vector, 8, kind)? & 0xffff_ffff;
    let raw = as_supervisor(cpu, |cpu| cpu.mmu.read::<8>(gate_at))?;
    let gate = Descriptor(raw);
    let gate_type = gate.kind();
    // 0x6/0x7: 16-bit interrupt/trap gate; 0xE/0xF: 32-bit. Task gates (0x5) would need
    // hardware task switching, which this CPU does not do.
    if gate.is_code_or_data() || !matches!(gate_type, 0x6 | 0x7 | 0xe | 0xf) {
        return Err(gp_idt());
    }
    let cpl = cpu.sys.cpl;
    if kind == EventKind::Software && gate.dpl() < cpl {
        return Err(gp_idt());
    }
    if !gate.present() {
        return Err(Exception::SegmentNotPresent(idt_error(vector, kind)).into());
    }
    let width: u64 = if gate_type & 8 != 0 { 4 } else { 2 };
    let target = (raw & 0xffff) | ((raw >> 32) & 0xffff_0000);
    let target = if width == 2 { target & 0xffff } else { target };
    let cs = Selector((raw >> 16) as u16);
    let (code, new_cpl) = interrupt_code_segment(cpu, cs, kind)?;

    let rflags = cpu.rflags();
    let mut frame = Vec::with_capacity(6);
    let mut new_stack = None;
    if new_cpl < cpl {
        // The inner stack from the 32-bit TSS: ESPn at 4 + 8n, SSn at 8 + 8n.
        let tr = cpu.sys.tr;
        let ts = |sel: Selector| Trap::Exception(Exception::InvalidTss(selector_error(sel, kind)));
        let at = 4 + 8 * new_cpl as u64;
        if Selector(tr.selector).is_null() || at + 5 > tr.limit as u64 {
            return Err(ts(Selector(tr.selector)));
        }
        let (esp, ss_raw) = as_supervisor(cpu, |cpu| -> Result<(u64, u64), Trap> {
            let esp = cpu.mmu.read::<4>(tr.base.wrapping_add(at))?;
            let ss = cpu.mmu.read::<2>(tr.base.wrapping_add(at + 4))?;
            Ok((esp, ss))
        })?;
        let ss = Selector(ss_raw as u16);
        if ss.is_null() || ss.rpl() != new_cpl {
            return Err(ts(ss));
        }
        let stack = fetch_descriptor(cpu, ss)?;
        if !stack.is_writable_data() || stack.dpl() != new_cpl {
            return Err(ts(ss));
        }
        if !stack.present() {
            return Err(Exception::StackFault(selector_error(ss, kind)).into());
        }
        frame.push(cpu.seg_sel[seg::SS as usize] as u64);
        frame.push(cpu.regs[reg::RSP as usize] & cpu.stack_mask);
        new_stack = Some((ss, stack, esp));
    }
    frame.push(rflags);
    frame.push(cpu.seg_sel[seg::CS as usize] as u64);
    frame.push(cpu.rip);
    if let Some(code) = error_code {
        frame.push(code as u64);
    }
    let (base, mask, sp) = match new_stack {
        Some((_, stack, esp)) => {
            let mask = if stack.default_big() {
                0xffff_ffff
            } else {
                0xffff
            };
            (stack.base(), mask, esp)
        }
        None => (
            cpu.seg_base[seg::SS as usize],
            cpu.stack_mask,
            cpu.regs[reg::RSP as usize],
        ),
    };
    let top = write_frame(cpu, base, mask, sp, &frame, width, new_cpl < 3)?;

    // Commit.
    if let Some((ss, stack, esp)) = new_stack {
        commit_segment(cpu, seg::SS, ss.0, stack);
        cpu.regs[reg::RSP as usize] = esp;
    }
    set_stack_offset(cpu, top);
    commit_code_segment(cpu, cs, code, new_cpl);
    let mut cleared = flags::TF | (1 << 14) | (1 << 16) | (1 << 17); // TF, NT, RF, VM
    if gate_type & 1 == 0 {
        cleared |= flags::IF;
    }
    cpu.rflags_other &= !cleared;
    cpu.rip = target;
    Ok(())
}

/// Checks the code segment an interrupt gate names; returns it and the handler's CPL.
fn interrupt_code_segment(
    cpu: &mut Cpu,
    cs: Selector,
    kind: EventKind,
) -> Result<(Descriptor, u8), Trap> {
    if cs.is_null() {
        return Err(Exception::GeneralProtection((kind == EventKind::External) as u32).into());
    }
    let code = fetch_descriptor(cpu, cs)?;
    if !code.is_code() || code.dpl() > cpu.sys.cpl {
        return Err(Exception::GeneralProtection(selector_error(cs, kind)).into());
    }
    if !code.present() {
        return Err(Exception::SegmentNotPresent(selector_error(cs, kind)).into());
    }
    let new_cpl = if code.is_conforming() {
        cpu.sys.cpl
    } else {
        code.dpl()
    };
    Ok((code, new_cpl))
}

/// Long mode: 16-byte gates, 64-bit frames.
fn deliver_long(
    cpu: &mut Cpu,
    vector: u8,
    error_code: Option<u32>,
    kind: EventKind,
) -> Result<(), Trap> {
    let gp_idt = || Trap::Exception(Exception::GeneralProtection(idt_error(vector, kind)));
    let gate_at = gate_address(cpu, vector, 16, kind)?;
    let (lo, hi) = as_supervisor(cpu, |cpu| -> Result<(u64, u64), Trap> {
        let lo = cpu.mmu.read::<8>(gate_at)?;
        let hi = cpu.mmu.read::<8>(gate_at.wrapping_add(8))?;
        Ok((lo, hi))
    })?;
    let gate = Descriptor(lo);
    let gate_type = gate.kind();
    if gate.is_code_or_data()
        || (gate_type != system_type::INTERRUPT_GATE && gate_type != system_type::TRAP_GATE)
    {
        return Err(gp_idt());
    }
    let cpl = cpu.sys.cpl;
    if kind == EventKind::Software && gate.dpl() < cpl {
        return Err(gp_idt());
    }
    if !gate.present() {
        return Err(Exception::SegmentNotPresent(idt_error(vector, kind)).into());
    }
    let target = (lo & 0xffff) | ((lo >> 32) & 0xffff_0000) | (hi & 0xffff_ffff) << 32;
    let ist = (lo >> 32) & 7;
    let cs = Selector((lo >> 16) as u16);

    // The target code segment: 64-bit code only.
    let (code, new_cpl) = interrupt_code_segment(cpu, cs, kind)?;
    if !code.long() || code.default_big() {
        return Err(Exception::GeneralProtection(selector_error(cs, kind)).into());
    }
    if !crate::sysregs::is_canonical(target) {
        return Err(Exception::GeneralProtection(0).into());
    }

    // The stack: IST if named, else RSPn on a privilege change, else the current one.
    let old_rsp = cpu.regs[reg::RSP as usize];
    let mut rsp = if ist != 0 {
        tss_stack(cpu, 0x24 + 8 * (ist - 1), kind)?
    } else if new_cpl < cpl {
        tss_stack(cpu, 4 + 8 * new_cpl as u64, kind)?
    } else {
        old_rsp
    };
    if !crate::sysregs::is_canonical(rsp) {
        return Err(Exception::StackFault(0).into());
    }
    rsp &= !0xf;
    let new_ss = if new_cpl < cpl {
        new_cpl as u16
    } else {
        cpu.seg_sel[seg::SS as usize]
    };

    let rflags = cpu.rflags();
    let mut frame = vec![
        cpu.seg_sel[seg::SS as usize] as u64,
        old_rsp,
        rflags,
        cpu.seg_sel[seg::CS as usize] as u64,
        cpu.rip,
    ];
    if let Some(code) = error_code {
        frame.push(code as u64);
    }
    let top = write_frame(cpu, 0, u64::MAX, rsp, &frame, 8, new_cpl < 3)?;

    // Commit.
    cpu.regs[reg::RSP as usize] = top;
    if new_cpl < cpl {
        // SS becomes a null selector with RPL = the new CPL.
        cpu.seg_sel[seg::SS as usize] = new_ss;
        cpu.seg_attr[seg::SS as usize] =
            attr::BIG | attr::PRESENT | 0x13 | ((new_cpl as u16) << attr::DPL_SHIFT);
        cpu.seg_base[seg::SS as usize] = 0;
    }
    commit_code_segment(cpu, cs, code, new_cpl);
    let mut cleared = flags::TF | (1 << 14) | (1 << 16); // TF, NT, RF
    if gate_type == system_type::INTERRUPT_GATE {
        cleared |= flags::IF;
    }
    cpu.rflags_other &= !cleared;
    cpu.rip = target;
    Ok(())
}

/// The RFLAGS an IRET installs: IOPL changes only at CPL 0, IF only when CPL <= IOPL, VM
/// never; a 16-bit IRET leaves the upper half alone.
fn iret_flags<const N: usize>(cpu: &Cpu, popped: u64) -> u64 {
    let cpl = cpu.sys.cpl;
    let mut writable =
        flags::ARITH | flags::TF | flags::DF | (1 << 14) | (1 << 16) | flags::AC | flags::ID;
    if cpl == 0 {
        writable |= 3 << 12;
    }
    if cpl <= cpu.iopl() {
        writable |= flags::IF;
    }
    if N == 2 {
        writable &= 0xffff;
    }
    (cpu.rflags() & !writable) | (popped & writable)
}

/// IRET in long mode (from 64-bit or compatibility code) with an `N`-byte operand size:
/// pops RIP, CS, RFLAGS, RSP and SS and returns to 64-bit or compatibility code at the
/// same or an outer privilege level.
///
/// # Errors
///
/// `#GP`/`#NP`/`#SS` for selectors and descriptors the return may not use; memory faults
/// from the pops. Nothing is committed on error.
pub fn iret_long<const N: usize>(cpu: &mut Cpu) -> Result<(), Trap> {
    if cpu.rflags_other & (1 << 14) != 0 {
        // NT: a task return, which does not exist in long mode.
        return Err(Exception::GeneralProtection(0).into());
    }
    let mut popped = [0u64; 5];
    for (k, slot) in popped.iter_mut().enumerate() {
        *slot = peek_value::<N>(cpu, k as u64)?;
    }
    let [rip, cs_raw, rflags, new_rsp, ss_raw] = popped;
    let cs = Selector(cs_raw as u16);
    let (code, new_cpl) = check_code_target(cpu, cs, FarKind::Return)?;
    let to_64bit = code.long();
    let stack = check_return_stack(cpu, Selector(ss_raw as u16), new_cpl, to_64bit)?;
    if to_64bit && !crate::sysregs::is_canonical(rip) {
        return Err(Exception::GeneralProtection(0).into());
    }
    let merged = iret_flags::<N>(cpu, rflags);
    let outer = new_cpl > cpu.sys.cpl;

    cpu.set_rflags(merged);
    cpu.sys.nmi_blocked = false;
    commit_code_segment(cpu, cs, code, new_cpl);
    commit_stack_segment(cpu, ss_raw as u16, stack);
    cpu.regs[reg::RSP as usize] = new_rsp;
    cpu.rip = if to_64bit { rip } else { rip & 0xffff_ffff };
    if outer {
        drop_inaccessible_data_segments(cpu);
    }
    Ok(())
}

/// IRET in protected mode (not long mode) with an `N`-byte operand size: to the same
/// privilege level, or to an outer one with SS:ESP popped as well. Task returns (NT set)
/// and returns to virtual-8086 mode are not supported and raise #GP(0).
///
/// # Errors
///
/// As [`iret_long`].
pub fn iret_protected<const N: usize>(cpu: &mut Cpu) -> Result<(), Trap> {
    if cpu.rflags_other & (1 << 14) != 0 {
        return Err(Exception::GeneralProtection(0).into());
    }
    let ip = peek_value::<N>(cpu, 0)?;
    let cs = Selector(peek_value::<N>(cpu, 1)? as u16);
    let popped_flags = peek_value::<N>(cpu, 2)?;
    if N == 4 && popped_flags & (1 << 17) != 0 && cpu.sys.cpl == 0 {
        return Err(Exception::GeneralProtection(0).into());
    }
    let (code, new_cpl) = check_code_target(cpu, cs, FarKind::Return)?;
    let merged = iret_flags::<N>(cpu, popped_flags);
    let outer = new_cpl > cpu.sys.cpl;
    let mut inner_stack = None;
    if outer {
        let sp = peek_value::<N>(cpu, 3)?;
        let ss = Selector(peek_value::<N>(cpu, 4)? as u16);
        let stack = check_return_stack(cpu, ss, new_cpl, false)?;
        inner_stack = Some((ss, stack, sp));
    }

    cpu.set_rflags(merged);
    cpu.sys.nmi_blocked = false;
    commit_code_segment(cpu, cs, code, new_cpl);
    match inner_stack {
        Some((ss, stack, sp)) => {
            commit_stack_segment(cpu, ss.0, stack);
            set_stack_offset(cpu, sp);
            drop_inaccessible_data_segments(cpu);
        }
        None => {
            for _ in 0..3 {
                pop_value::<N>(cpu)?;
            }
        }
    }
    cpu.rip = if N == 2 {
        ip & 0xffff
    } else {
        ip & 0xffff_ffff
    };
    Ok(())
}

/// The double-fault classes of the SDM (Table "Conditions for Generating a Double Fault").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultClass {
    /// Everything else.
    Benign,
    /// #DE, #TS, #NP, #SS, #GP.
    Contributory,
    /// #PF.
    PageFault,
    /// #DF itself.
    DoubleFault,
}

/// The class of an exception for the double-fault rules.
pub fn fault_class(e: Exception) -> FaultClass {
    match e {
        Exception::DivideError
        | Exception::InvalidTss(_)
        | Exception::SegmentNotPresent(_)
        | Exception::StackFault(_)
        | Exception::GeneralProtection(_) => FaultClass::Contributory,
        Exception::PageFault { .. } => FaultClass::PageFault,
        Exception::DoubleFault => FaultClass::DoubleFault,
        _ => FaultClass::Benign,
    }
}

/// What happens when `second` is raised while delivering an event of class `first`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escalation {
    /// Deliver `second` instead.
    Serial,
    /// Deliver #DF.
    DoubleFault,
    /// Shut down: a fault while delivering #DF.
    TripleFault,
}

/// Applies the double-fault table.
pub fn escalate(first: FaultClass, second: Exception) -> Escalation {
    let second = fault_class(second);
    match (first, second) {
        (
            FaultClass::DoubleFault,
            FaultClass::Contributory | FaultClass::PageFault | FaultClass::DoubleFault,
        ) => Escalation::TripleFault,
        (FaultClass::Contributory, FaultClass::Contributory)
        | (FaultClass::PageFault, FaultClass::Contributory | FaultClass::PageFault) => {
            Escalation::DoubleFault
        }
        _ => Escalation::Serial,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn double_fault_table() {
        let gp = Exception::GeneralProtection(0);
        let pf = Exception::PageFault { addr: 0, code: 0 };
        assert_eq!(
            escalate(FaultClass::Contributory, gp),
            Escalation::DoubleFault
        );
        assert_eq!(escalate(FaultClass::Benign, gp), Escalation::Serial);
        assert_eq!(escalate(FaultClass::PageFault, pf), Escalation::DoubleFault);
        assert_eq!(escalate(FaultClass::Contributory, pf), Escalation::Serial);
        assert_eq!(
            escalate(FaultClass::DoubleFault, gp),
            Escalation::TripleFault
        );
        assert_eq!(
            escalate(FaultClass::DoubleFault, Exception::InvalidOpcode),
            Escalation::Serial
        );
    }
}
