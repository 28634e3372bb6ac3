//! Architectural state of one vCPU.

use emu_mmu::Mmu;

use crate::flags::{self, LazyFlags};
use crate::sysregs::{cr0, efer, SystemRegs};

/// General-purpose register numbers, as used in [`Cpu::regs`] and instruction records.
pub mod reg {
    /// RAX.
    pub const RAX: u8 = 0;
    /// RCX.
    pub const RCX: u8 = 1;
    /// RDX.
    pub const RDX: u8 = 2;
    /// RBX.
    pub const RBX: u8 = 3;
    /// RSP.
    pub const RSP: u8 = 4;
    /// RBP.
    pub const RBP: u8 = 5;
    /// RSI.
    pub const RSI: u8 = 6;
    /// RDI.
    pub const RDI: u8 = 7;
    /// R8 (R9..R15 follow).
    pub const R8: u8 = 8;
    /// A register that always reads zero: the "no base / no index" of address forms.
    pub const ZERO: u8 = 16;
    /// Flag on an 8-bit register number meaning "bits 8..15 of register (n & 3)"
    /// (AH, CH, DH, BH).
    pub const HIGH_BYTE: u8 = 0x20;
}

/// Segment register numbers, as used in [`Cpu::seg_base`].
pub mod seg {
    /// ES.
    pub const ES: u8 = 0;
    /// CS.
    pub const CS: u8 = 1;
    /// SS.
    pub const SS: u8 = 2;
    /// DS.
    pub const DS: u8 = 3;
    /// FS.
    pub const FS: u8 = 4;
    /// GS.
    pub const GS: u8 = 5;
    /// A segment whose base is always zero (flat segments in 64-bit mode).
    pub const FLAT: u8 = 6;
}

/// Hidden segment attributes ([`Cpu::seg_attr`]), packed as
/// [`crate::descriptor::Descriptor::attributes`]: the access byte in bits 0..7, AVL, L, D/B
/// and G in bits 12..15.
pub mod attr {
    /// Accessed bit of the type field.
    pub const ACCESSED: u16 = 1 << 0;
    /// Bit 0 of the DPL field.
    pub const DPL_SHIFT: u16 = 5;
    /// Present.
    pub const PRESENT: u16 = 1 << 7;
    /// L: 64-bit code.
    pub const LONG: u16 = 1 << 13;
    /// D/B: 32-bit code or a 32-bit stack pointer.
    pub const BIG: u16 = 1 << 14;
    /// G: limit in pages.
    pub const GRANULAR: u16 = 1 << 15;
    /// A present, DPL 0, 64-bit code segment (what the bare CPU starts in).
    pub const CODE64: u16 = 0x209b;
    /// A present, DPL 0, 4 GiB writable data segment with a 32-bit stack pointer.
    pub const FLAT_DATA: u16 = 0xc093;
    /// A present, writable, accessed 16-bit data segment: the real-mode attributes.
    pub const REAL_DATA: u16 = 0x0093;
    /// A present, readable, accessed 16-bit code segment: CS after reset.
    pub const REAL_CODE: u16 = 0x009b;
}

/// Default MXCSR after reset: all exceptions masked, round to nearest.
pub const MXCSR_DEFAULT: u32 = 0x1f80;

/// One vCPU: registers, flags, SSE state, and its path to memory.
#[derive(Debug)]
pub struct Cpu {
    /// RAX..R15, then [`reg::ZERO`] (always 0).
    pub regs: [u64; 17],
    /// Instruction pointer. Inside a block it is stale; it is exact between blocks and
    /// whenever an instruction faults.
    pub rip: u64,
    /// Lazily computed arithmetic flags.
    pub flags: LazyFlags,
    /// RFLAGS bits other than the six arithmetic ones (DF, IF, TF, AC, ID, bit 1...).
    pub rflags_other: u64,
    /// XMM0..XMM15.
    pub xmm: [u128; 16],
    /// SSE control and status register.
    pub mxcsr: u32,
    /// The x87 FPU (FNINIT state at creation).
    pub x87: crate::exec::x87::X87,
    /// Segment selectors ES, CS, SS, DS, FS, GS.
    pub seg_sel: [u16; 6],
    /// Segment bases ES, CS, SS, DS, FS, GS, then a flat (zero) base and a spare zero.
    /// In 64-bit mode only FS and GS bases are used.
    pub seg_base: [u64; 8],
    /// Hidden limits of ES, CS, SS, DS, FS, GS (in bytes, granularity applied). Kept
    /// for the embedder and for SGDT-style inspection; accesses are not limit-checked
    /// (see the README's known deviations).
    pub seg_limit: [u32; 6],
    /// Hidden attributes of ES, CS, SS, DS, FS, GS, packed as
    /// [`crate::descriptor::Descriptor::attributes`].
    pub seg_attr: [u16; 6],
    /// Decoder bitness of the code now running: 16, 32 or 64 (from CR0.PE, EFER.LMA and
    /// the CS descriptor's L and D bits; see [`Cpu::update_mode`]).
    pub code_bits: u32,
    /// Linear base that instruction addresses are relative to: CS's base outside 64-bit
    /// mode, 0 in it.
    pub code_base: u64,
    /// Width of the stack pointer: all ones in 64-bit mode, else 0xffff_ffff or 0xffff
    /// from SS's B bit.
    pub stack_mask: u64,
    /// Kernel GS base (swapped in by SWAPGS).
    pub kernel_gs_base: u64,
    /// Instructions retired since creation.
    pub icount: u64,
    /// Offset added to the virtual clock to form the TSC (written through the TSC MSR).
    pub tsc_offset: u64,
    /// TSC_AUX, returned in ECX by RDTSCP (32 bits wide).
    pub tsc_aux: u64,
    /// The machine's virtual clock (shared with the devices that tell time).
    pub clock: emu_mmu::clock::VirtualClock,
    /// Control, debug, descriptor-table and model-specific registers.
    pub sys: SystemRegs,
    /// Set when the mapping from linear to physical addresses or the privilege of
    /// instruction fetches may have changed (paging registers, INVLPG, CPL): the run loop
    /// then drops its RIP-indexed jump cache, whose hits skip the fetch translation.
    pub fetch_mapping_changed: bool,
    /// Set when the CPL changed: the run loop switches to the jump cache of the new
    /// privilege class (user or supervisor).
    pub privilege_changed: bool,
    /// Interrupts are held off until the next instruction completes (after STI set IF).
    pub interrupt_shadow: bool,
    /// The local APIC, when one is attached
    /// ([`crate::Emulator::set_interrupt_controller`]): external interrupts, the APIC
    /// MSRs and CR8 go through it.
    pub apic: Option<crate::events::AttachedController>,
    /// The initial APIC ID CPUID reports (leaf 1 EBX[31:24], leaf 0xB EDX); the
    /// platform sets it to the ID of the attached local APIC.
    pub apic_id: u32,
    /// Logical processors in the package, for CPUID leaf 0xB (one thread per core).
    pub package_cpus: u32,
    /// The port I/O bus IN/OUT/INS/OUTS reach (unassigned ports read as all ones).
    pub io: std::sync::Arc<emu_mmu::Bus>,
    /// This vCPU's path to guest memory.
    pub mmu: Mmu,
    /// The machine's exclusive-section gate when it has several vCPUs (split locks take
    /// it; see [`crate::smp`]).
    pub gate: Option<std::sync::Arc<crate::smp::Gate>>,
}

impl Cpu {
    /// A vCPU in 64-bit mode with flat segments, registers zero, over `mmu`.
    pub fn new(mmu: Mmu) -> Self {
        Cpu {
            regs: [0; 17],
            rip: 0,
            flags: LazyFlags::default(),
            rflags_other: 1 << 1,
            xmm: [0; 16],
            mxcsr: MXCSR_DEFAULT,
            x87: crate::exec::x87::X87::new(),
            seg_sel: [0; 6],
            seg_base: [0; 8],
            seg_limit: [u32::MAX; 6],
            seg_attr: [
                attr::FLAT_DATA,
                attr::CODE64,
                attr::FLAT_DATA,
                attr::FLAT_DATA,
                attr::FLAT_DATA,
                attr::FLAT_DATA,
            ],
            code_bits: 64,
            code_base: 0,
            stack_mask: u64::MAX,
            kernel_gs_base: 0,
            icount: 0,
            tsc_offset: 0,
            tsc_aux: 0,
            clock: emu_mmu::clock::VirtualClock::new(),
            sys: SystemRegs {
                // The bare CPU's non-architectural starting point: 64-bit code with flat
                // segments and paging off (virtual addresses are physical), at CPL 0.
                cr0: cr0::PE | cr0::ET | cr0::NE,
                // Long mode is active, so CR4.PAE is set as the architecture requires.
                cr4: crate::sysregs::cr4::PAE,
                efer: efer::LME | efer::LMA,
                ..SystemRegs::default()
            },
            fetch_mapping_changed: false,
            privilege_changed: false,
            interrupt_shadow: false,
            apic: None,
            apic_id: 0,
            package_cpus: 1,
            io: std::sync::Arc::new(emu_mmu::Bus::new()),
            mmu,
            gate: None,
        }
    }

    /// Puts the vCPU in the architectural power-on state (SDM Vol. 3 §9.1.1): real
    /// mode, CS:IP = F000:FFF0 with CS's base at 0xFFFF_0000 (so the first fetch is at
    /// 0xFFFF_FFF0), EDX holding the processor signature, every other register and all
    /// control state at its reset value, paging off. Memory, devices and the virtual
    /// clock are untouched.
    pub fn reset(&mut self) {
        self.regs = [0; 17];
        self.regs[reg::RDX as usize] = crate::cpuid::cpuid(1, 0)[0] as u64;
        self.rip = 0xfff0;
        self.flags = LazyFlags::default();
        self.rflags_other = 1 << 1;
        self.xmm = [0; 16];
        self.mxcsr = MXCSR_DEFAULT;
        self.x87 = crate::exec::x87::X87::new();
        self.seg_sel = [0, 0xf000, 0, 0, 0, 0];
        self.seg_base = [0, 0xffff_0000, 0, 0, 0, 0, 0, 0];
        self.seg_limit = [0xffff; 6];
        self.seg_attr = [attr::REAL_DATA; 6];
        self.seg_attr[seg::CS as usize] = attr::REAL_CODE;
        self.kernel_gs_base = 0;
        self.tsc_aux = 0;
        self.sys = SystemRegs::default();
        self.interrupt_shadow = false;
        let sys = &self.sys;
        // Paging is off at reset, which the MMU always accepts.
        let _ = self.apply_paging(sys.cr0, sys.cr3, sys.cr4, sys.efer);
        self.sys.cpl = u8::MAX;
        self.set_cpl(0);
        self.update_mode();
        self.fetch_mapping_changed = true;
    }

    /// The full RFLAGS value (materializes the lazy flags).
    pub fn rflags(&self) -> u64 {
        self.rflags_other | self.flags.compute()
    }

    /// Sets RFLAGS. Bit 1 always reads 1; reserved bits read 0.
    pub fn set_rflags(&mut self, value: u64) {
        const WRITABLE: u64 = flags::ARITH
            | flags::TF
            | flags::IF
            | flags::DF
            | (3 << 12) // IOPL
            | (1 << 14) // NT
            | (1 << 16) // RF
            | flags::AC
            | flags::ID;
        self.flags.set_materialized(value);
        let old_ac = self.rflags_other & flags::AC;
        self.rflags_other = (value & WRITABLE & !flags::ARITH) | (1 << 1);
        if self.rflags_other & flags::AC != old_ac {
            self.mmu
                .set_privilege(self.sys.cpl, self.rflags_other & flags::AC != 0);
        }
    }

    /// The time-stamp counter: virtual-clock nanoseconds at [`crate::cpuid::TSC_HZ`]
    /// plus the offset.
    pub fn tsc(&self) -> u64 {
        self.raw_tsc().wrapping_add(self.tsc_offset)
    }

    /// The virtual clock in TSC ticks, without the offset.
    pub fn raw_tsc(&self) -> u64 {
        let ns = self.clock.now_ns();
        (ns as u128 * crate::cpuid::TSC_HZ as u128 / 1_000_000_000) as u64
    }

    /// Changes the current privilege level, telling the MMU (U/S, SMAP checks) and the run
    /// loop (fetch permissions).
    pub fn set_cpl(&mut self, cpl: u8) {
        if self.sys.cpl != cpl {
            self.sys.cpl = cpl;
            self.mmu
                .set_privilege(cpl, self.rflags_other & flags::AC != 0);
            self.privilege_changed = true;
        }
    }

    /// Installs CR0, CR3, CR4 and EFER into the MMU's paging state.
    ///
    /// # Errors
    ///
    /// `#GP(0)` if the MMU refuses them (invalid PAE PDPTEs); the caller keeps the old
    /// register values then.
    pub fn apply_paging(
        &mut self,
        cr0: u64,
        cr3: u64,
        cr4: u64,
        efer: u64,
    ) -> Result<(), crate::exception::Exception> {
        let ctx = emu_mmu::paging::PagingContext {
            cr0,
            cr3,
            cr4,
            efer,
        };
        self.mmu
            .set_paging(ctx)
            .map_err(|_| crate::exception::Exception::GeneralProtection(0))?;
        self.fetch_mapping_changed = true;
        Ok(())
    }

    /// RFLAGS.IOPL.
    pub fn iopl(&self) -> u8 {
        ((self.rflags_other >> 12) & 3) as u8
    }

    /// Whether the direction flag is set (string instructions step downwards).
    #[inline(always)]
    pub fn df(&self) -> bool {
        self.rflags_other & flags::DF != 0
    }

    /// Reads an `N`-byte general register operand (8-bit numbers may carry
    /// [`reg::HIGH_BYTE`]), zero-extended.
    #[inline(always)]
    pub fn reg<const N: usize>(&self, r: u8) -> u64 {
        match N {
            1 => {
                if r & reg::HIGH_BYTE != 0 {
                    (self.regs[(r & 3) as usize] >> 8) & 0xff
                } else {
                    self.regs[r as usize & 15] & 0xff
                }
            }
            2 => self.regs[r as usize & 15] & 0xffff,
            4 => self.regs[r as usize & 15] & 0xffff_ffff,
            _ => self.regs[r as usize & 15],
        }
    }

    /// Writes an `N`-byte general register operand with x86-64 semantics: 32-bit writes
    /// zero the upper half, 8- and 16-bit writes leave the other bits alone.
    #[inline(always)]
    pub fn set_reg<const N: usize>(&mut self, r: u8, value: u64) {
        match N {
            1 => {
                if r & reg::HIGH_BYTE != 0 {
                    let slot = &mut self.regs[(r & 3) as usize];
                    *slot = (*slot & !0xff00) | ((value & 0xff) << 8);
                } else {
                    let slot = &mut self.regs[r as usize & 15];
                    *slot = (*slot & !0xff) | (value & 0xff);
                }
            }
            2 => {
                let slot = &mut self.regs[r as usize & 15];
                *slot = (*slot & !0xffff) | (value & 0xffff);
            }
            4 => self.regs[r as usize & 15] = value & 0xffff_ffff,
            _ => self.regs[r as usize & 15] = value,
        }
    }
}

/// Mask of the low `N` bytes.
#[inline(always)]
pub const fn mask<const N: usize>() -> u64 {
    if N >= 8 {
        u64::MAX
    } else {
        (1u64 << (N * 8)) - 1
    }
}

/// Sign bit of an `N`-byte value.
#[inline(always)]
pub const fn sign_bit<const N: usize>() -> u64 {
    1u64 << (N * 8 - 1)
}

/// Sign-extends the low `N` bytes of `v` to 64 bits.
#[inline(always)]
pub const fn sext<const N: usize>(v: u64) -> u64 {
    let shift = 64 - N as u32 * 8;
    (((v << shift) as i64) >> shift) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_register_writes_follow_x86_64_rules() {
        let mut cpu = Cpu::new(Mmu::default());
        cpu.regs[0] = 0x1122_3344_5566_7788;
        cpu.set_reg::<1>(reg::HIGH_BYTE, 0xaa);
        assert_eq!(cpu.regs[0], 0x1122_3344_5566_aa88);
        cpu.set_reg::<1>(0, 0xbb);
        assert_eq!(cpu.regs[0], 0x1122_3344_5566_aabb);
        cpu.set_reg::<2>(0, 0xcccc);
        assert_eq!(cpu.regs[0], 0x1122_3344_5566_cccc);
        cpu.set_reg::<4>(0, 0xdddd_dddd);
        assert_eq!(cpu.regs[0], 0xdddd_dddd);
        assert_eq!(cpu.reg::<1>(reg::HIGH_BYTE), 0xdd);
    }

    #[test]
    fn rflags_round_trip_keeps_reserved_bits_fixed() {
        let mut cpu = Cpu::new(Mmu::default());
        cpu.set_rflags(u64::MAX);
        let f = cpu.rflags();
        assert_eq!(f & (1 << 1), 2);
        assert_eq!(f & (1 << 3 | 1 << 5 | 1 << 15), 0);
        assert!(cpu.df());
        assert_eq!(sext::<1>(0x80), 0xffff_ffff_ffff_ff80);
        assert_eq!(mask::<4>(), 0xffff_ffff);
    }
}
