//! Instruction handlers, one file per class, and the registration of each class into the
//! opcode table ([`crate::insn::OpTable`]).
//!
//! Handlers are generic over operand width (`const N: usize` = 1, 2, 4 or 8 bytes) where
//! the logic is shared; register and memory forms are separate handlers chosen at
//! translate time. A handler commits architectural state only after everything that can
//! fault has succeeded, so a faulting instruction leaves no trace.

pub mod arith;
pub mod bit;
pub mod control;
pub mod data;
pub mod io;
pub mod legacy;
pub mod locked;
pub mod logic;
pub mod muldiv;
pub mod privileged;
pub mod segment;
pub mod shift;
pub mod sse;
pub mod stack;
pub mod string;
pub mod system;
pub mod x87;
pub mod xsave;

use crate::cpu::Cpu;
use crate::insn::{Insn, OpTable, Trap};

/// Registers every implemented instruction.
pub(crate) fn register_all(t: &mut OpTable) {
    arith::register(t);
    logic::register(t);
    shift::register(t);
    bit::register(t);
    muldiv::register(t);
    data::register(t);
    stack::register(t);
    control::register(t);
    string::register(t);
    system::register(t);
    privileged::register(t);
    segment::register(t);
    io::register(t);
    legacy::register(t);
    sse::register(t);
    x87::register(t);
    xsave::register(t);
}

/// Reads the `N`-byte memory operand of `i`.
#[inline(always)]
pub(crate) fn load<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Result<u64, Trap> {
    let addr = i.ea(cpu);
    Ok(cpu.mmu.read::<N>(addr)?)
}

/// Writes the `N`-byte memory operand of `i`.
#[inline(always)]
pub(crate) fn store<const N: usize>(cpu: &mut Cpu, i: &Insn, value: u64) -> Result<(), Trap> {
    let addr = i.ea(cpu);
    Ok(cpu.mmu.write::<N>(addr, value)?)
}
