//! The fixed guest program behind the MIPS figure (`cargo run --release -p emu-core
//! --example mips`) and the `mips_loop` Criterion bench: a loop mixing ALU work, loads and
//! stores over a 64 KiB buffer, branches and calls. Shared by source inclusion
//! (`#[path]`) so the example and the bench run byte-identical code.

use iced_x86::code_asm::*;

/// Where the program is loaded.
pub const CODE_ADDR: u64 = 0x1000;
/// The 64 KiB buffer the loop walks.
pub const BUFFER_ADDR: u64 = 0x10_0000;
/// Size of the buffer.
pub const BUFFER_SIZE: u64 = 64 * 1024;
/// Top of the stack.
pub const STACK_TOP: u64 = 0x20_0000;
/// Bytes of guest RAM to map from 0 (covers code, buffer and stack).
pub const RAM_SIZE: u64 = 0x20_0000;

/// Assembles the program. It runs `outer` passes over the buffer and ends with HLT.
/// Each pass retires about 94,000 instructions.
pub fn mips_program(outer: u32) -> Vec<u8> {
    assemble(outer).expect("the fixed program assembles")
}

fn assemble(outer: u32) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut pass = a.create_label();
    let mut element = a.create_label();
    let mut no_call = a.create_label();
    let mut mix = a.create_label();
    let mut done = a.create_label();
    a.mov(rbx, BUFFER_ADDR)?;
    a.mov(r12d, outer)?;
    a.mov(rdx, 0x9e37_79b9_7f4a_7c15u64)?;
    a.xor(r8d, r8d)?;
    a.xor(r9d, r9d)?;
    a.set_label(&mut pass)?;
    a.xor(ecx, ecx)?;
    a.set_label(&mut element)?;
    // Load, mix with a running value, store back.
    a.mov(rax, qword_ptr(rbx + rcx * 8))?;
    a.add(rax, rdx)?;
    a.xor(rdx, rax)?;
    a.lea(rsi, qword_ptr(rax + rcx * 4 + 0x11))?;
    a.shr(rsi, 3)?;
    a.sub(rdx, rsi)?;
    a.and(rax, 0x7fff_ffff)?;
    a.mov(qword_ptr(rbx + rcx * 8), rax)?;
    // Every eighth element, call a small function.
    a.test(cl, 7)?;
    a.jnz(no_call)?;
    a.call(mix)?;
    a.set_label(&mut no_call)?;
    a.inc(rcx)?;
    a.cmp(rcx, (BUFFER_SIZE / 8) as i32)?;
    a.jb(element)?;
    a.dec(r12d)?;
    a.jnz(pass)?;
    a.jmp(done)?;
    a.set_label(&mut mix)?;
    a.add(r8, rax)?;
    a.imul_2(r9, r8)?;
    a.ret()?;
    a.set_label(&mut done)?;
    a.hlt()?;
    a.assemble(CODE_ADDR)
}
