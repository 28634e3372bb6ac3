//! The functions compiled code calls back into: TLB misses, interpreter handlers and
//! condition evaluation from flags in memory.
//!
//! They take raw pointers because they are called from generated code with the C calling
//! convention. Each is called only with the `Cpu` and `JitCtx` the compiled block itself
//! was given, which the run loop lends it exclusively for the duration of the call.

use crate::cpu::Cpu;
use crate::insn::{Insn, Trap};

/// [`helper_exec`] / [`helper_write`] status: carry on.
pub const STATUS_OK: u64 = 0;
/// The instruction raised a trap, now in [`JitCtx::trap`]; leave the block.
pub const STATUS_TRAP: u64 = 1;
/// The instruction completed but stored into a page holding translated code: leave the
/// block after it, as the interpreter does.
pub const STATUS_CODE_WRITTEN: u64 = 2;

/// Side channel between a compiled block and its helpers.
#[repr(C)]
#[derive(Debug)]
pub struct JitCtx {
    /// Status of the last [`helper_read`] (which returns the value read).
    pub status: u64,
    /// The trap that ended the block, if any (owned: a leaked `Box<Trap>`).
    pub trap: *mut Trap,
    /// The record of the instruction that raised [`JitCtx::trap`].
    pub trap_insn: *const Insn,
    /// Instructions the blocks may still run before a direct link must return to the run
    /// loop: each block subtracts the instructions it completed as it leaves (so the
    /// run loop learns how many ran from how far it fell); at or below zero nothing
    /// links.
    pub fuel: i64,
    /// The code cache's link generation ([`crate::cache::CodeCache::link_generation`]):
    /// a link slot filled in another generation is stale.
    pub generation: u64,
    /// The link slot of the exit the last block left through without following it, for
    /// the run loop to fill (null after exits that cannot link).
    pub last_link: *mut super::LinkSlot,
    /// The vCPU's pending-event word: a block does not follow a link while it is non-zero.
    pub events: *const u32,
    /// The active jump cache and its salt ([`crate::cache::CodeCache::jump_cache_address`]),
    /// where a block leaving for a RIP known only at run time looks for the next code.
    pub jump_cache: u64,
    /// See [`JitCtx::jump_cache`].
    pub jump_salt: u64,
}

impl Default for JitCtx {
    fn default() -> Self {
        JitCtx {
            status: STATUS_OK,
            trap: std::ptr::null_mut(),
            trap_insn: std::ptr::null(),
            fuel: 0,
            generation: 0,
            last_link: std::ptr::null_mut(),
            events: std::ptr::null(),
            jump_cache: 0,
            jump_salt: 0,
        }
    }
}

impl JitCtx {
    /// Offset of [`JitCtx::status`].
    pub const STATUS_OFFSET: i32 = std::mem::offset_of!(JitCtx, status) as i32;
    /// Offset of [`JitCtx::trap_insn`].
    pub const TRAP_INSN_OFFSET: i32 = std::mem::offset_of!(JitCtx, trap_insn) as i32;
    /// Offset of [`JitCtx::fuel`].
    pub const FUEL_OFFSET: i32 = std::mem::offset_of!(JitCtx, fuel) as i32;
    /// Offset of [`JitCtx::generation`].
    pub const GENERATION_OFFSET: i32 = std::mem::offset_of!(JitCtx, generation) as i32;
    /// Offset of [`JitCtx::last_link`].
    pub const LAST_LINK_OFFSET: i32 = std::mem::offset_of!(JitCtx, last_link) as i32;
    /// Offset of [`JitCtx::events`].
    pub const EVENTS_OFFSET: i32 = std::mem::offset_of!(JitCtx, events) as i32;
    /// Offset of [`JitCtx::jump_cache`].
    pub const JUMP_CACHE_OFFSET: i32 = std::mem::offset_of!(JitCtx, jump_cache) as i32;
    /// Offset of [`JitCtx::jump_salt`].
    pub const JUMP_SALT_OFFSET: i32 = std::mem::offset_of!(JitCtx, jump_salt) as i32;

    fn set_trap(&mut self, trap: Box<Trap>) {
        if !self.trap.is_null() {
            // SAFETY: `trap` only ever holds a pointer from `Box::into_raw`.
            drop(unsafe { Box::from_raw(self.trap) });
        }
        self.trap = Box::into_raw(trap);
    }

    /// Takes the trap out, if one was raised.
    pub fn take_trap(&mut self) -> Option<Box<Trap>> {
        if self.trap.is_null() {
            return None;
        }
        // SAFETY: as in `set_trap`; the pointer is cleared so it is taken once.
        let trap = unsafe { Box::from_raw(self.trap) };
        self.trap = std::ptr::null_mut();
        Some(trap)
    }
}

impl Drop for JitCtx {
    fn drop(&mut self) {
        drop(self.take_trap());
    }
}

/// Reads `size` bytes at `addr` the slow way (TLB miss, page crossing, MMIO). On a fault
/// returns 0 with the trap in `ctx` and [`STATUS_TRAP`] in `ctx.status`.
///
/// # Safety
///
/// `cpu` and `ctx` must be valid and not otherwise borrowed.
pub unsafe extern "C" fn helper_read(cpu: *mut Cpu, ctx: *mut JitCtx, addr: u64, size: u64) -> u64 {
    // SAFETY: the caller's guarantee.
    let (cpu, ctx) = unsafe { (&mut *cpu, &mut *ctx) };
    let r = match size {
        1 => cpu.mmu.read::<1>(addr),
        2 => cpu.mmu.read::<2>(addr),
        4 => cpu.mmu.read::<4>(addr),
        _ => cpu.mmu.read::<8>(addr),
    };
    match r {
        Ok(v) => {
            ctx.status = STATUS_OK;
            v
        }
        Err(fault) => {
            ctx.set_trap(Box::new(Trap::Memory(fault)));
            ctx.status = STATUS_TRAP;
            0
        }
    }
}

/// Writes the low `size` bytes of `value` at `addr` the slow way. Returns a status.
///
/// # Safety
///
/// As [`helper_read`].
pub unsafe extern "C" fn helper_write(
    cpu: *mut Cpu,
    ctx: *mut JitCtx,
    addr: u64,
    size: u64,
    value: u64,
) -> u64 {
    // SAFETY: the caller's guarantee.
    let (cpu, ctx) = unsafe { (&mut *cpu, &mut *ctx) };
    let r = match size {
        1 => cpu.mmu.write::<1>(addr, value),
        2 => cpu.mmu.write::<2>(addr, value),
        4 => cpu.mmu.write::<4>(addr, value),
        _ => cpu.mmu.write::<8>(addr, value),
    };
    match r {
        Ok(()) if cpu.mmu.code_written() => STATUS_CODE_WRITTEN,
        Ok(()) => STATUS_OK,
        Err(fault) => {
            ctx.set_trap(Box::new(Trap::Memory(fault)));
            STATUS_TRAP
        }
    }
}

/// Runs one instruction through its interpreter handler. Returns a status.
///
/// # Safety
///
/// As [`helper_read`]; `insn` must point at a live record.
pub unsafe extern "C" fn helper_exec(cpu: *mut Cpu, ctx: *mut JitCtx, insn: *const Insn) -> u64 {
    // SAFETY: the caller's guarantee.
    let (cpu, ctx, insn) = unsafe { (&mut *cpu, &mut *ctx, &*insn) };
    let result = if insn.flags & crate::insn::LOCKED != 0 {
        crate::exec::locked::exec_locked(cpu, insn)
    } else {
        (insn.exec)(cpu, insn)
    };
    match result {
        Ok(()) if cpu.mmu.code_written() => STATUS_CODE_WRITTEN,
        Ok(()) => STATUS_OK,
        Err(trap) => {
            ctx.set_trap(trap);
            STATUS_TRAP
        }
    }
}

/// Condition `cc` (0 = O .. 15 = G) from the flags in memory.
///
/// # Safety
///
/// `cpu` must be valid.
pub unsafe extern "C" fn helper_condition(cpu: *mut Cpu, cc: u64) -> u64 {
    // SAFETY: the caller's guarantee.
    let cpu = unsafe { &*cpu };
    cpu.flags.condition(cc as u8) as u64
}
