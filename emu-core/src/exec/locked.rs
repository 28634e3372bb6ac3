//! LOCK-prefixed instructions and XCHG with memory: atomic against every other vCPU.
//!
//! The handler runs as usual between [`emu_mmu::Mmu::begin_locked`] and
//! [`emu_mmu::Mmu::end_locked`], which turn its read and write of the operand into one
//! host compare-exchange of the aligned word holding it. If the word changed in between
//! (another vCPU or a device wrote it) nothing was stored, and the instruction runs again
//! from the register state it started with; the handler's register and flag results are
//! simply overwritten by the rerun. An operand no compare-exchange covers (one that
//! straddles an 8-byte word, and so possibly a cache line or a page: a "split lock") runs
//! again as a plain read-modify-write while every other vCPU is held at a block
//! boundary ([`crate::smp::Gate`]), which is what real processors do with a bus lock.

use crate::cpu::Cpu;
use crate::insn::{Insn, Step};
use emu_mmu::LockedOutcome;

/// What a locked handler may change before its store, saved for a rerun.
struct Saved {
    regs: [u64; 17],
    flags: crate::flags::LazyFlags,
    rflags_other: u64,
}

/// Executes locked instruction `i` atomically (see the module docs).
pub(crate) fn exec_locked(cpu: &mut Cpu, i: &Insn) -> Step {
    loop {
        let saved = Saved {
            regs: cpu.regs,
            flags: cpu.flags,
            rflags_other: cpu.rflags_other,
        };
        cpu.mmu.begin_locked();
        let result = (i.exec)(cpu, i);
        let outcome = cpu.mmu.end_locked();
        if result.is_err() || outcome == LockedOutcome::Done {
            return result;
        }
        cpu.regs = saved.regs;
        cpu.flags = saved.flags;
        cpu.rflags_other = saved.rflags_other;
        if outcome == LockedOutcome::NeedsExclusive {
            return match cpu.gate.clone() {
                Some(gate) => gate.exclusive(|| (i.exec)(cpu, i)),
                // Alone in the machine: a plain read-modify-write is atomic already.
                None => (i.exec)(cpu, i),
            };
        }
        // Retry: another party won the race for the word; spin hint and go again.
        std::hint::spin_loop();
    }
}
