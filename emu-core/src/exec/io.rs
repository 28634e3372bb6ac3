//! Port I/O: IN, OUT, INS, OUTS (with REP), through the CPU's I/O bus.
//!
//! Above IOPL, each access is checked against the TSS I/O permission bitmap, as in
//! protected mode: every port byte the access touches must have its bit clear, and the
//! bitmap bytes must lie within the TSS limit; otherwise #GP(0). Unassigned ports read as
//! all ones and swallow writes, as on a PC.

use iced_x86::Code;

use super::string::{addr_reg, step_reg, string_linear};
use crate::cpu::{reg, Cpu};
use crate::exception::Exception;
use crate::insn::{address_mask, Insn, OpEntry, OpTable, Step, Trap, REP, REPNE};

const GP0: Trap = Trap::Exception(Exception::GeneralProtection(0));

/// Checks that the current privilege may access `size` ports from `port`.
fn check_io_permission(cpu: &mut Cpu, port: u16, size: u64) -> Result<(), Trap> {
    if cpu.sys.cpl <= cpu.iopl() {
        return Ok(());
    }
    let tr = cpu.sys.tr;
    // A 64-bit TSS holds the bitmap offset at 0x66.
    if crate::descriptor::Selector(tr.selector).is_null() || tr.limit < 0x67 {
        return Err(GP0);
    }
    cpu.mmu.set_implicit_supervisor(true);
    let result = (|| {
        let base = cpu.mmu.read::<2>(tr.base.wrapping_add(0x66))?;
        let byte = base + port as u64 / 8;
        if byte + 1 > tr.limit as u64 {
            return Err(GP0);
        }
        let bits = cpu.mmu.read::<2>(tr.base.wrapping_add(byte))?;
        let mask = ((1u64 << size) - 1) << (port % 8);
        if bits & mask != 0 {
            return Err(GP0);
        }
        Ok(())
    })();
    cpu.mmu.set_implicit_supervisor(false);
    result
}

fn port_in<const N: usize>(cpu: &mut Cpu, port: u16) -> Result<u64, Trap> {
    check_io_permission(cpu, port, N as u64)?;
    let mut data = [0xffu8; 8];
    cpu.io.read(port as u64, &mut data[..N]);
    Ok(u64::from_le_bytes(data) & crate::cpu::mask::<N>())
}

fn port_out<const N: usize>(cpu: &mut Cpu, port: u16, value: u64) -> Result<(), Trap> {
    check_io_permission(cpu, port, N as u64)?;
    cpu.io.write(port as u64, &value.to_le_bytes()[..N]);
    Ok(())
}

/// IN accumulator, imm8 (`DX` = false) or DX.
fn in_acc<const N: usize, const DX: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let port = if DX {
        cpu.reg::<2>(reg::RDX) as u16
    } else {
        i.imm as u8 as u16
    };
    let v = port_in::<N>(cpu, port)?;
    cpu.set_reg::<N>(reg::RAX, v);
    Ok(())
}

/// OUT imm8 or DX, accumulator.
fn out_acc<const N: usize, const DX: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let port = if DX {
        cpu.reg::<2>(reg::RDX) as u16
    } else {
        i.imm as u8 as u16
    };
    let v = cpu.reg::<N>(reg::RAX);
    Ok(port_out::<N>(cpu, port, v)?)
}

/// INS (`OUT` = false) / OUTS, optionally repeated. Each iteration completes before the
/// next may fault, so a fault leaves RCX/RSI/RDI describing the work done.
fn string_io<const N: usize, const OUT: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let amask = address_mask(i.flags);
    let repeat = i.flags & (REP | REPNE) != 0;
    let delta = if cpu.df() {
        (N as u64).wrapping_neg()
    } else {
        N as u64
    };
    let mut done = 0u64;
    loop {
        if repeat && addr_reg(cpu, reg::RCX, amask) == 0 {
            return Ok(());
        }
        let port = cpu.reg::<2>(reg::RDX) as u16;
        // The permission check comes before any memory access, as on hardware.
        check_io_permission(cpu, port, N as u64)?;
        if OUT {
            let src = string_linear(cpu, i.seg, addr_reg(cpu, reg::RSI, amask));
            let v = cpu.mmu.read::<N>(src)?;
            cpu.io.write(port as u64, &v.to_le_bytes()[..N]);
            step_reg(cpu, reg::RSI, delta, amask);
        } else {
            let dst = string_linear(cpu, i.imm2 as u8, addr_reg(cpu, reg::RDI, amask));
            // The destination is checked before the port is read: a port read may have
            // side effects that must not happen twice when the instruction restarts.
            cpu.mmu.check_writable(dst, N as u64)?;
            let mut data = [0xffu8; 8];
            cpu.io.read(port as u64, &mut data[..N]);
            cpu.mmu.write::<N>(dst, u64::from_le_bytes(data))?;
            step_reg(cpu, reg::RDI, delta, amask);
        }
        if !repeat {
            return Ok(());
        }
        step_reg(cpu, reg::RCX, u64::MAX, amask);
        done += 1;
        if done == super::string::REP_CHUNK && addr_reg(cpu, reg::RCX, amask) != 0 {
            cpu.rip = i.rip;
            return Err(Trap::EndBlock.into());
        }
    }
}

pub(crate) fn register(t: &mut OpTable) {
    t.set(Code::In_AL_imm8, OpEntry::reg(in_acc::<1, false>));
    t.set(Code::In_AX_imm8, OpEntry::reg(in_acc::<2, false>));
    t.set(Code::In_EAX_imm8, OpEntry::reg(in_acc::<4, false>));
    t.set(Code::In_AL_DX, OpEntry::reg(in_acc::<1, true>));
    t.set(Code::In_AX_DX, OpEntry::reg(in_acc::<2, true>));
    t.set(Code::In_EAX_DX, OpEntry::reg(in_acc::<4, true>));
    t.set(Code::Out_imm8_AL, OpEntry::reg(out_acc::<1, false>));
    t.set(Code::Out_imm8_AX, OpEntry::reg(out_acc::<2, false>));
    t.set(Code::Out_imm8_EAX, OpEntry::reg(out_acc::<4, false>));
    t.set(Code::Out_DX_AL, OpEntry::reg(out_acc::<1, true>));
    t.set(Code::Out_DX_AX, OpEntry::reg(out_acc::<2, true>));
    t.set(Code::Out_DX_EAX, OpEntry::reg(out_acc::<4, true>));
    // String forms: the operands are implicit, so both table slots get the handler.
    t.set(
        Code::Insb_m8_DX,
        OpEntry::rm(string_io::<1, false>, string_io::<1, false>),
    );
    t.set(
        Code::Insw_m16_DX,
        OpEntry::rm(string_io::<2, false>, string_io::<2, false>),
    );
    t.set(
        Code::Insd_m32_DX,
        OpEntry::rm(string_io::<4, false>, string_io::<4, false>),
    );
    t.set(
        Code::Outsb_DX_m8,
        OpEntry::rm(string_io::<1, true>, string_io::<1, true>),
    );
    t.set(
        Code::Outsw_DX_m16,
        OpEntry::rm(string_io::<2, true>, string_io::<2, true>),
    );
    t.set(
        Code::Outsd_DX_m32,
        OpEntry::rm(string_io::<4, true>, string_io::<4, true>),
    );
}
