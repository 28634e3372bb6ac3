//! The Quetzal CPU: x86-64 decoded once by iced-x86 into cached blocks, then executed.
//!
//! # How it runs
//!
//! 1. [`translate::translate_block`] decodes guest bytes at RIP into a [`translate::Block`]:
//!    a straight-line run of [`insn::Insn`] records, ending at a control transfer, a page end
//!    or 64 instructions. Each record carries the handler the opcode table
//!    ([`insn::OpTable`]) chose for it and its operands already resolved (register numbers,
//!    immediates, the parts of a memory address), so execution never looks at iced's
//!    `Instruction` again.
//! 2. [`cache::CodeCache`] keeps blocks keyed by physical and virtual address, behind a
//!    direct-mapped jump cache indexed by RIP. Pages holding translated code are marked in
//!    `emu-mmu`; a store to one drops that page's blocks (self-modifying code).
//! 3. The run loop ([`Emulator::run`]) looks up the block at RIP and calls its handlers in
//!    order. Handlers return `Result<(), Trap>`; exceptions are values, never panics, and
//!    a faulting instruction has no effect.
//! 4. Arithmetic flags are lazy ([`flags::LazyFlags`]): ALU handlers record operands and
//!    result; flags are computed only when read, and conditional instructions evaluate
//!    their condition straight from the record.
//!
//! # Known deviations from hardware
//!
//! See the README's "Known deviations" section; every one is also noted at its handler.

pub mod cache;
pub mod cpu;
pub mod cpuid;
pub mod descriptor;
pub mod emulator;
pub mod events;
pub mod exception;
pub mod exec;
pub mod flags;
pub mod insn;
pub mod interrupt;
pub mod jit;
pub mod segment;
pub mod smp;
pub mod sysregs;
pub mod translate;

pub use cpu::Cpu;
pub use emulator::{
    Activity, BlockHook, CodeHook, Delivery, DeliveryHook, EmuError, Emulator, HookAction,
    InterruptDelivery, InterruptEvent, InterruptHook, RunOptions, SegmentState, StopHandle,
    StopReason,
};
pub use events::{InterruptLine, LocalInterruptController, MsrAccess};
pub use exception::Exception;
pub use iced_x86::Register;
pub use interrupt::EventKind;
