//! System-flavoured instructions available to user code: CPUID, RDTSC, RDTSCP.

use iced_x86::Code;

use crate::cpu::{reg, Cpu};
use crate::cpuid;
use crate::insn::{Insn, OpEntry, OpTable, Step};

fn cpuid_insn(cpu: &mut Cpu, _: &Insn) -> Step {
    let leaf = cpu.reg::<4>(reg::RAX) as u32;
    let subleaf = cpu.reg::<4>(reg::RCX) as u32;
    let apic = cpu.apic.as_ref().map(|_| cpuid::ApicInfo {
        id: cpu.apic_id,
        package_cpus: cpu.package_cpus,
    });
    let [a, b, c, d] = cpuid::cpuid_for(&cpu.sys, apic, leaf, subleaf);
    cpu.set_reg::<4>(reg::RAX, a as u64);
    cpu.set_reg::<4>(reg::RBX, b as u64);
    cpu.set_reg::<4>(reg::RCX, c as u64);
    cpu.set_reg::<4>(reg::RDX, d as u64);
    Ok(())
}

fn rdtsc(cpu: &mut Cpu, _: &Insn) -> Step {
    let tsc = cpu.tsc();
    cpu.set_reg::<4>(reg::RAX, tsc & 0xffff_ffff);
    cpu.set_reg::<4>(reg::RDX, tsc >> 32);
    Ok(())
}

fn rdtscp(cpu: &mut Cpu, i: &Insn) -> Step {
    rdtsc(cpu, i)?;
    let aux = cpu.tsc_aux;
    cpu.set_reg::<4>(reg::RCX, aux);
    Ok(())
}

pub(crate) fn register(t: &mut OpTable) {
    t.set(Code::Cpuid, OpEntry::reg(cpuid_insn));
    t.set(Code::Rdtsc, OpEntry::reg(rdtsc));
    t.set(Code::Rdtscp, OpEntry::reg(rdtscp));
}
