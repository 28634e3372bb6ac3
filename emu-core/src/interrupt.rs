//! Delivery of exceptions and interrupts through the IDT, and IRETQ, in 64-bit mode.
//!
//! Delivery follows the SDM's IA-32e rules: 16-byte gates, 64-bit interrupt and trap gates
//! only, a stack switch to TSS.RSPn on a privilege change or to TSS.IST[n] whenever the gate
//! names an IST slot, the stack aligned to 16 bytes, and SS, RSP, RFLAGS, CS, RIP (and an
//! error code) pushed as quadwords. Nothing is committed until the frame is written, so a
//! fault during delivery leaves the interrupted state intact for the double-fault logic.
//! Legacy and compatibility-mode delivery arrive with those modes.

use crate::cpu::{reg, seg, Cpu};
use crate::descriptor::{read_descriptor, system_type, Descriptor, Selector};
use crate::exception::Exception;
use crate::flags;
use crate::insn::Trap;

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
    Ok(cpu.mmu.read::<8>(tr.base.wrapping_add(offset))?)
}

/// Delivers `vector` through the IDT in 64-bit mode. RIP must already be the address to
/// return to (the faulting instruction for faults, the next one for traps, software and
/// external interrupts).
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
    let gp_idt = || Trap::Exception(Exception::GeneralProtection(idt_error(vector, kind)));
    let idtr = cpu.sys.idtr;
    let offset = vector as u64 * 16;
    if offset + 15 > idtr.limit as u64 {
        return Err(gp_idt());
    }
    let lo = cpu.mmu.read::<8>(idtr.base.wrapping_add(offset))?;
    let hi = cpu.mmu.read::<8>(idtr.base.wrapping_add(offset + 8))?;
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

    // The target code segment.
    if cs.is_null() {
        return Err(Exception::GeneralProtection((kind == EventKind::External) as u32).into());
    }
    let code = read_descriptor(cpu, cs)?;
    if !code.is_code() || !code.long() || code.default_big() || code.dpl() > cpl {
        return Err(Exception::GeneralProtection(selector_error(cs, kind)).into());
    }
    if !code.present() {
        return Err(Exception::SegmentNotPresent(selector_error(cs, kind)).into());
    }
    let new_cpl = if code.is_conforming() {
        cpl
    } else {
        code.dpl()
    };
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
    let frame_size = frame.len() as u64 * 8;
    let top = rsp.wrapping_sub(frame_size);
    cpu.mmu.check_writable(top, frame_size)?;
    for (k, value) in frame.iter().enumerate() {
        cpu.mmu
            .write::<8>(rsp.wrapping_sub(8 * (k as u64 + 1)), *value)?;
    }

    // Commit.
    cpu.regs[reg::RSP as usize] = top;
    cpu.seg_sel[seg::SS as usize] = new_ss;
    cpu.seg_sel[seg::CS as usize] = (cs.0 & !3) | new_cpl as u16;
    cpu.sys.cs_attributes = code.attributes();
    let mut cleared = flags::TF | (1 << 14) | (1 << 16); // TF, NT, RF
    if gate_type == system_type::INTERRUPT_GATE {
        cleared |= flags::IF;
    }
    cpu.rflags_other &= !cleared;
    cpu.set_cpl(new_cpl);
    cpu.rip = target;
    Ok(())
}

/// IRETQ in 64-bit mode: pops RIP, CS, RFLAGS, RSP and SS and returns to the same or an
/// outer privilege level.
///
/// # Errors
///
/// `#GP`/`#NP`/`#SS` for selectors and descriptors the return may not use; memory faults
/// from the pops. Nothing is committed on error. A return to compatibility mode (a code
/// segment with L = 0) is refused with `#GP(selector)` until compatibility mode exists.
pub fn iretq(cpu: &mut Cpu) -> Result<(), Trap> {
    let rsp = cpu.regs[reg::RSP as usize];
    let mut popped = [0u64; 5];
    for (k, slot) in popped.iter_mut().enumerate() {
        *slot = cpu.mmu.read::<8>(rsp.wrapping_add(8 * k as u64))?;
    }
    let [rip, cs_raw, rflags, new_rsp, ss_raw] = popped;
    let cpl = cpu.sys.cpl;
    let cs = Selector(cs_raw as u16);
    let gp = |sel: Selector| Trap::Exception(Exception::GeneralProtection(sel.error_code()));
    if cs.is_null() {
        return Err(Exception::GeneralProtection(0).into());
    }
    let new_cpl = cs.rpl();
    if new_cpl < cpl {
        return Err(gp(cs));
    }
    cpu.mmu.set_implicit_supervisor(true);
    let code = read_descriptor(cpu, cs);
    cpu.mmu.set_implicit_supervisor(false);
    let code = code?;
    let dpl_ok = if code.is_conforming() {
        code.dpl() <= new_cpl
    } else {
        code.dpl() == new_cpl
    };
    if !code.is_code() || !dpl_ok || !code.long() || code.default_big() {
        return Err(gp(cs));
    }
    if !code.present() {
        return Err(Exception::SegmentNotPresent(cs.error_code()).into());
    }
    let ss = Selector(ss_raw as u16);
    if ss.is_null() {
        // A null SS is allowed only when staying in ring 0..2 of 64-bit mode.
        if new_cpl == 3 {
            return Err(gp(ss));
        }
    } else {
        if ss.rpl() != new_cpl {
            return Err(gp(ss));
        }
        cpu.mmu.set_implicit_supervisor(true);
        let stack = read_descriptor(cpu, ss);
        cpu.mmu.set_implicit_supervisor(false);
        let stack = stack?;
        if !stack.is_writable_data() || stack.dpl() != new_cpl {
            return Err(gp(ss));
        }
        if !stack.present() {
            return Err(Exception::StackFault(ss.error_code()).into());
        }
    }
    if !crate::sysregs::is_canonical(rip) {
        return Err(Exception::GeneralProtection(0).into());
    }

    // RFLAGS: IOPL changes only at CPL 0, IF only when CPL <= IOPL; VM stays clear.
    let iopl = cpu.iopl();
    let mut writable =
        flags::ARITH | flags::TF | flags::DF | (1 << 14) | (1 << 16) | flags::AC | flags::ID;
    if cpl == 0 {
        writable |= 3 << 12;
    }
    if cpl <= iopl {
        writable |= flags::IF;
    }
    let current = cpu.rflags();
    let merged = (current & !writable) | (rflags & writable);

    cpu.set_rflags(merged);
    cpu.sys.nmi_blocked = false;
    cpu.rip = rip;
    cpu.regs[reg::RSP as usize] = new_rsp;
    cpu.seg_sel[seg::CS as usize] = cs.0;
    cpu.seg_sel[seg::SS as usize] = ss.0;
    cpu.sys.cs_attributes = code.attributes();
    cpu.set_cpl(new_cpl);
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
