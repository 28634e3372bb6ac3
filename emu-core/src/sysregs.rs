//! System registers of one vCPU: control and debug registers, EFER, descriptor-table
//! registers, the privilege level, and the model-specific registers Linux uses.
//!
//! Writes are validated here as the architecture requires (reserved bits, illegal
//! combinations, non-canonical bases): a bad value is a guest `#GP(0)`, never a host
//! error. What a write *does* (TLB flushes, mode switches) is the instruction handler's
//! business; this module only holds and checks state.

use crate::descriptor::SystemSegment;
use crate::exception::Exception;

/// CR0 bits.
pub mod cr0 {
    /// Protection enable.
    pub const PE: u64 = 1 << 0;
    /// Monitor coprocessor.
    pub const MP: u64 = 1 << 1;
    /// x87 emulation (x87 instructions raise #NM).
    pub const EM: u64 = 1 << 2;
    /// Task switched (x87/SSE instructions raise #NM).
    pub const TS: u64 = 1 << 3;
    /// Extension type: hardwired to 1.
    pub const ET: u64 = 1 << 4;
    /// Numeric error reporting through #MF.
    pub const NE: u64 = 1 << 5;
    /// Supervisor write protection.
    pub const WP: u64 = 1 << 16;
    /// Alignment mask.
    pub const AM: u64 = 1 << 18;
    /// Not write-through.
    pub const NW: u64 = 1 << 29;
    /// Cache disable.
    pub const CD: u64 = 1 << 30;
    /// Paging.
    pub const PG: u64 = 1 << 31;
    /// Every bit software may set.
    pub const WRITABLE: u64 = PE | MP | EM | TS | ET | NE | WP | AM | NW | CD | PG;
}

/// CR4 bits this CPU accepts.
pub mod cr4 {
    /// RDTSC is privileged.
    pub const TSD: u64 = 1 << 2;
    /// 4 MiB pages in 32-bit paging.
    pub const PSE: u64 = 1 << 4;
    /// Physical address extension.
    pub const PAE: u64 = 1 << 5;
    /// Global pages.
    pub const PGE: u64 = 1 << 7;
    /// Supervisor-mode execution prevention.
    pub const SMEP: u64 = 1 << 20;
    /// Supervisor-mode access prevention.
    pub const SMAP: u64 = 1 << 21;
    /// RDPMC at any privilege.
    pub const PCE: u64 = 1 << 8;
    /// The OS saves SSE state with FXSAVE.
    pub const OSFXSR: u64 = 1 << 9;
    /// The OS handles #XM.
    pub const OSXMMEXCPT: u64 = 1 << 10;
    /// RDFSBASE/RDGSBASE/WRFSBASE/WRGSBASE are enabled (at any privilege).
    pub const FSGSBASE: u64 = 1 << 16;
    /// The OS manages state with XSAVE: enables XGETBV/XSETBV/XSAVE/XRSTOR and makes
    /// CPUID.1:ECX.OSXSAVE read 1.
    pub const OSXSAVE: u64 = 1 << 18;
    /// Every bit software may set. Bits for features CPUID does not advertise (VME, DE,
    /// MCE, LA57, PCIDE, ...) are reserved and #GP when set; each joins this list with its
    /// feature.
    pub const WRITABLE: u64 =
        TSD | PSE | PAE | PGE | PCE | OSFXSR | OSXMMEXCPT | FSGSBASE | OSXSAVE | SMEP | SMAP;
}

/// XCR0 (XFEATURE_ENABLED_MASK) bits: the state components XSAVE manages.
pub mod xcr0 {
    /// x87 state (component 0); always set.
    pub const X87: u64 = 1 << 0;
    /// SSE state (component 1): XMM0-15 and MXCSR.
    pub const SSE: u64 = 1 << 1;
    /// Every component this CPU supports (CPUID.(EAX=0Dh,ECX=0):EDX:EAX reports it). AVX
    /// and later components are not implemented, so their bits are reserved.
    pub const SUPPORTED: u64 = X87 | SSE;
}

/// EFER bits.
pub mod efer {
    /// SYSCALL enable.
    pub const SCE: u64 = 1 << 0;
    /// Long mode enable.
    pub const LME: u64 = 1 << 8;
    /// Long mode active (read-only).
    pub const LMA: u64 = 1 << 10;
    /// No-execute enable.
    pub const NXE: u64 = 1 << 11;
    /// Bits WRMSR may set.
    pub const WRITABLE: u64 = SCE | LME | NXE;
}

/// Model-specific register numbers.
pub mod msr {
    /// Time-stamp counter.
    pub const TSC: u32 = 0x10;
    /// Local APIC base.
    pub const APIC_BASE: u32 = 0x1b;
    /// IA32_BIOS_SIGN_ID: the loaded microcode's revision (high 32 bits).
    pub const BIOS_SIGN_ID: u32 = 0x8b;
    /// IA32_SPEC_CTRL: speculation controls (IBRS, STIBP, SSBD).
    pub const SPEC_CTRL: u32 = 0x48;
    /// IA32_PRED_CMD: write-only IBPB command.
    pub const PRED_CMD: u32 = 0x49;
    /// IA32_ARCH_CAPABILITIES: which speculative-execution flaws the CPU does not have.
    pub const ARCH_CAPABILITIES: u32 = 0x10a;
    /// MTRR capabilities.
    pub const MTRRCAP: u32 = 0xfe;
    /// SYSENTER target CS.
    pub const SYSENTER_CS: u32 = 0x174;
    /// SYSENTER target RSP.
    pub const SYSENTER_ESP: u32 = 0x175;
    /// SYSENTER target RIP.
    pub const SYSENTER_EIP: u32 = 0x176;
    /// Miscellaneous feature enables.
    pub const MISC_ENABLE: u32 = 0x1a0;
    /// First variable-range MTRR (base/mask pairs follow).
    pub const MTRR_PHYS_BASE0: u32 = 0x200;
    /// Fixed-range MTRR for 0..0x80000.
    pub const MTRR_FIX64K: u32 = 0x250;
    /// Fixed-range MTRRs for 0x80000..0xc0000.
    pub const MTRR_FIX16K_80000: u32 = 0x258;
    /// Fixed-range MTRRs for 0xa0000..0xc0000.
    pub const MTRR_FIX16K_A0000: u32 = 0x259;
    /// First of the eight 4 KiB fixed-range MTRRs.
    pub const MTRR_FIX4K_C0000: u32 = 0x268;
    /// Page attribute table.
    pub const PAT: u32 = 0x277;
    /// Default memory type and MTRR enables.
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    /// TSC deadline for the local APIC timer.
    pub const TSC_DEADLINE: u32 = 0x6e0;
    /// Extended feature enables.
    pub const EFER: u32 = 0xc000_0080;
    /// SYSCALL segment selectors.
    pub const STAR: u32 = 0xc000_0081;
    /// SYSCALL target in 64-bit mode.
    pub const LSTAR: u32 = 0xc000_0082;
    /// SYSCALL target in compatibility mode.
    pub const CSTAR: u32 = 0xc000_0083;
    /// SYSCALL RFLAGS mask.
    pub const SFMASK: u32 = 0xc000_0084;
    /// FS base.
    pub const FS_BASE: u32 = 0xc000_0100;
    /// GS base.
    pub const GS_BASE: u32 = 0xc000_0101;
    /// The GS base SWAPGS exchanges with.
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    /// Value RDTSCP returns in ECX.
    pub const TSC_AUX: u32 = 0xc000_0103;
}

/// IA32_ARCH_CAPABILITIES as reported. An emulated CPU does not speculate, so it has none
/// of the side channels these bits rule out, and saying so truthfully spares the guest
/// their mitigations (page-table isolation with a CR3 write on every system call, VERW on
/// every return to user mode, retpolines, return thunks): RDCL_NO (0), IBRS_ALL (1),
/// SKIP_L1DFL_VMENTRY (3), SSB_NO (4), MDS_NO (5), PSCHANGE_MC_NO (6), TAA_NO (8),
/// SBDR_SSDP_NO (13), FBSDP_NO (14), PSDP_NO (15), BHI_NO (20), PBRSB_NO (24), GDS_NO (26),
/// RFDS_NO (27), ITS_NO (62).
pub const ARCH_CAPABILITIES: u64 = (1 << 0)
    | (1 << 1)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 8)
    | (1 << 13)
    | (1 << 14)
    | (1 << 15)
    | (1 << 20)
    | (1 << 24)
    | (1 << 26)
    | (1 << 27)
    | (1 << 62);

/// IA32_SPEC_CTRL bits software may set: IBRS (0), STIBP (1), SSBD (2). They change
/// nothing here (there is no speculation to control) but read back as written.
const SPEC_CTRL_WRITABLE: u64 = 0b111;

/// Number of variable-range MTRR pairs advertised in MTRRcap.
pub const VARIABLE_MTRRS: usize = 8;

/// The microcode revision IA32_BIOS_SIGN_ID reports (in its high 32 bits, EDX of RDMSR).
///
/// There is no microcode, but software expects a loaded revision: Linux reads it in
/// `early_init_intel` (after writing 0 and executing CPUID, the architectural way to
/// latch it) and prints it, and its errata tables compare it. The value has the shape of
/// a real Skylake-SP revision (the family 6 model 0x55 part CPUID describes); CPUID's
/// stepping 0 matches none of Linux's "bad microcode" or "old microcode" entries, so no
/// mitigation or warning keys off it. Nonzero because zero means "no microcode loaded".
pub const MICROCODE_REVISION: u32 = 0x0200_0065;

/// A descriptor-table register (GDTR, IDTR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableRegister {
    /// Linear base address.
    pub base: u64,
    /// Limit (last valid byte offset).
    pub limit: u16,
}

/// The memory-type registers: stored and validated, not enforced (an emulator has no
/// caches to configure; the values matter only to what the guest reads back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryTypeRegs {
    /// IA32_PAT.
    pub pat: u64,
    /// IA32_MTRR_DEF_TYPE.
    pub mtrr_def_type: u64,
    /// The 11 fixed-range MTRRs, in MSR order (64K, 16K x2, 4K x8).
    pub mtrr_fixed: [u64; 11],
    /// Variable-range MTRRs as (base, mask) pairs.
    pub mtrr_var: [(u64, u64); VARIABLE_MTRRS],
}

impl Default for MemoryTypeRegs {
    fn default() -> Self {
        MemoryTypeRegs {
            // The power-on PAT: WB, WT, UC-, UC repeated.
            pat: 0x0007_0406_0007_0406,
            mtrr_def_type: 0,
            mtrr_fixed: [0; 11],
            mtrr_var: [(0, 0); VARIABLE_MTRRS],
        }
    }
}

/// Control, debug, descriptor-table and model-specific registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemRegs {
    /// CR0.
    pub cr0: u64,
    /// CR2: the linear address of the last page fault.
    pub cr2: u64,
    /// CR3: page-table base (and PCID, when enabled).
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// CR8: the task-priority register (4 bits).
    pub cr8: u64,
    /// XCR0: the state components enabled for XSAVE (written by XSETBV).
    pub xcr0: u64,
    /// EFER.
    pub efer: u64,
    /// DR0..DR3 breakpoint addresses, then DR6 and DR7 (DR4/DR5 alias them).
    pub dr: [u64; 4],
    /// DR6.
    pub dr6: u64,
    /// DR7.
    pub dr7: u64,
    /// Current privilege level (0..3).
    pub cpl: u8,
    /// NMIs are blocked (from NMI delivery until the next IRET).
    pub nmi_blocked: bool,
    /// GDTR.
    pub gdtr: TableRegister,
    /// IDTR.
    pub idtr: TableRegister,
    /// LDTR.
    pub ldtr: SystemSegment,
    /// TR.
    pub tr: SystemSegment,
    /// IA32_STAR.
    pub star: u64,
    /// IA32_LSTAR.
    pub lstar: u64,
    /// IA32_CSTAR.
    pub cstar: u64,
    /// IA32_FMASK.
    pub sfmask: u64,
    /// IA32_SYSENTER_CS / ESP / EIP.
    pub sysenter: [u64; 3],
    /// IA32_APIC_BASE.
    pub apic_base: u64,
    /// IA32_MISC_ENABLE.
    pub misc_enable: u64,
    /// IA32_SPEC_CTRL.
    pub spec_ctrl: u64,
    /// IA32_TSC_DEADLINE.
    pub tsc_deadline: u64,
    /// PAT and MTRRs.
    pub memory_types: MemoryTypeRegs,
}

/// DR6 bits that always read as 1.
const DR6_FIXED_ONES: u64 = 0xffff_0ff0;
/// DR7 bits that always read as 1.
const DR7_FIXED_ONES: u64 = 0x400;

impl Default for SystemRegs {
    fn default() -> Self {
        SystemRegs {
            cr0: cr0::ET | cr0::CD | cr0::NW,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            cr8: 0,
            // x87 is the only component enabled at reset.
            xcr0: xcr0::X87,
            efer: 0,
            dr: [0; 4],
            dr6: DR6_FIXED_ONES,
            dr7: DR7_FIXED_ONES,
            cpl: 0,
            nmi_blocked: false,
            gdtr: TableRegister {
                base: 0,
                limit: 0xffff,
            },
            idtr: TableRegister {
                base: 0,
                limit: 0xffff,
            },
            ldtr: SystemSegment::default(),
            tr: SystemSegment::default(),
            star: 0,
            lstar: 0,
            cstar: 0,
            sfmask: 0,
            sysenter: [0; 3],
            // BSP flag, xAPIC enabled, default base.
            apic_base: 0xfee0_0000 | (1 << 8) | (1 << 11),
            misc_enable: 1, // fast strings
            spec_ctrl: 0,
            tsc_deadline: 0,
            memory_types: MemoryTypeRegs::default(),
        }
    }
}

/// Physical-address width (CPUID 0x80000008 reports the same).
pub const PHYS_ADDR_BITS: u32 = 40;

/// Whether `addr` is canonical for 48-bit linear addresses.
pub fn is_canonical(addr: u64) -> bool {
    ((addr as i64) << 16 >> 16) as u64 == addr
}

const GP0: Exception = Exception::GeneralProtection(0);

/// Whether every byte of a PAT or MTRR value names a valid memory type
/// (0 UC, 1 WC, 4 WT, 5 WP, 6 WB, and for PAT 7 UC-).
fn valid_memory_types(value: u64, allow_uc_minus: bool) -> bool {
    value
        .to_le_bytes()
        .iter()
        .all(|&t| matches!(t, 0 | 1 | 4 | 5 | 6) || (allow_uc_minus && t == 7))
}

impl SystemRegs {
    /// Whether long mode is active (EFER.LMA).
    pub fn long_mode(&self) -> bool {
        self.efer & efer::LMA != 0
    }

    /// Checks a value for CR0 against the current state.
    ///
    /// # Errors
    ///
    /// `#GP(0)` for reserved bits, PG without PE, NW without CD, or enabling paging with
    /// EFER.LME set but CR4.PAE clear.
    pub fn check_cr0(&self, value: u64) -> Result<u64, Exception> {
        let value = value | cr0::ET;
        if value & !cr0::WRITABLE != 0
            || (value & cr0::PG != 0 && value & cr0::PE == 0)
            || (value & cr0::NW != 0 && value & cr0::CD == 0)
            || (value & cr0::PG != 0
                && self.cr0 & cr0::PG == 0
                && self.efer & efer::LME != 0
                && self.cr4 & cr4::PAE == 0)
        {
            return Err(GP0);
        }
        Ok(value)
    }

    /// Checks a value for CR4.
    ///
    /// # Errors
    ///
    /// `#GP(0)` for bits this CPU does not support, or clearing PAE in long mode.
    pub fn check_cr4(&self, value: u64) -> Result<u64, Exception> {
        if value & !cr4::WRITABLE != 0 || (self.long_mode() && value & cr4::PAE == 0) {
            return Err(GP0);
        }
        Ok(value)
    }

    /// Checks a value for CR8 (the TPR).
    ///
    /// # Errors
    ///
    /// `#GP(0)` for bits above bit 3.
    pub fn check_cr8(&self, value: u64) -> Result<u64, Exception> {
        if value & !0xf != 0 {
            return Err(GP0);
        }
        Ok(value)
    }

    /// Checks a value for extended control register `index` (XSETBV) and returns it.
    /// Only XCR0 exists.
    ///
    /// # Errors
    ///
    /// `#GP(0)` for any other register, a value with bit 0 (x87) clear, or a bit for a
    /// state component this CPU does not support.
    pub fn check_xcr(&self, index: u32, value: u64) -> Result<u64, Exception> {
        if index != 0 || value & xcr0::X87 == 0 || value & !xcr0::SUPPORTED != 0 {
            return Err(GP0);
        }
        Ok(value)
    }

    /// Reads DR`n`.
    ///
    /// # Errors
    ///
    /// `#UD` for DR4/DR5 when CR4.DE is set (never here: DE is not supported) and for
    /// numbers above 7.
    pub fn read_dr(&self, n: u8) -> Result<u64, Exception> {
        match n {
            0..=3 => Ok(self.dr[n as usize]),
            4 | 6 => Ok(self.dr6),
            5 | 7 => Ok(self.dr7),
            _ => Err(Exception::InvalidOpcode),
        }
    }

    /// Writes DR`n`.
    ///
    /// # Errors
    ///
    /// `#GP(0)` for set bits in the upper half of DR6/DR7, `#UD` for numbers above 7.
    pub fn write_dr(&mut self, n: u8, value: u64) -> Result<(), Exception> {
        match n {
            0..=3 => self.dr[n as usize] = value,
            4..=7 if value >> 32 != 0 => return Err(GP0),
            4 | 6 => self.dr6 = value | DR6_FIXED_ONES,
            5 | 7 => self.dr7 = (value | DR7_FIXED_ONES) & !(0b11 << 11) & !(1 << 14) & !(1 << 15),
            _ => return Err(Exception::InvalidOpcode),
        }
        Ok(())
    }

    /// Validates a write to EFER and returns the value to store (LMA is kept: only the
    /// processor changes it).
    ///
    /// # Errors
    ///
    /// `#GP(0)` for reserved bits, or changing LME while paging is enabled.
    pub fn check_efer(&self, value: u64) -> Result<u64, Exception> {
        if value & !(efer::WRITABLE | efer::LMA) != 0 {
            return Err(GP0);
        }
        if self.cr0 & cr0::PG != 0 && (value ^ self.efer) & efer::LME != 0 {
            return Err(GP0);
        }
        Ok((value & efer::WRITABLE) | (self.efer & efer::LMA))
    }
}

/// The MSRs that live outside [`SystemRegs`] (segment bases, TSC), read and written
/// through this interface so RDMSR/WRMSR have one implementation.
pub trait MsrHost {
    /// Current TSC value.
    fn tsc(&self) -> u64;
    /// Sets the TSC (by adjusting its offset).
    fn set_tsc(&mut self, value: u64);
    /// FS_BASE, GS_BASE, KERNEL_GS_BASE, TSC_AUX storage.
    fn base_msr(&mut self, index: u32) -> &mut u64;
}

impl SystemRegs {
    /// RDMSR.
    ///
    /// # Errors
    ///
    /// `#GP(0)` for an MSR this CPU does not have.
    pub fn read_msr(&self, host: &mut impl MsrHost, index: u32) -> Result<u64, Exception> {
        let mt = &self.memory_types;
        Ok(match index {
            msr::TSC => host.tsc(),
            msr::APIC_BASE => self.apic_base,
            msr::BIOS_SIGN_ID => (MICROCODE_REVISION as u64) << 32,
            msr::SPEC_CTRL => self.spec_ctrl,
            msr::ARCH_CAPABILITIES => ARCH_CAPABILITIES,
            // Variable MTRRs, fixed MTRRs, write-combining supported.
            msr::MTRRCAP => VARIABLE_MTRRS as u64 | (1 << 8) | (1 << 10),
            msr::SYSENTER_CS..=msr::SYSENTER_EIP => {
                self.sysenter[(index - msr::SYSENTER_CS) as usize]
            }
            msr::MISC_ENABLE => self.misc_enable,
            i if (msr::MTRR_PHYS_BASE0..msr::MTRR_PHYS_BASE0 + 2 * VARIABLE_MTRRS as u32)
                .contains(&i) =>
            {
                let k = (i - msr::MTRR_PHYS_BASE0) as usize;
                if k % 2 == 0 {
                    mt.mtrr_var[k / 2].0
                } else {
                    mt.mtrr_var[k / 2].1
                }
            }
            i if fixed_mtrr_slot(i).is_some() => mt.mtrr_fixed[fixed_mtrr_slot(i).unwrap_or(0)],
            msr::PAT => mt.pat,
            msr::MTRR_DEF_TYPE => mt.mtrr_def_type,
            msr::TSC_DEADLINE => self.tsc_deadline,
            msr::EFER => self.efer,
            msr::STAR => self.star,
            msr::LSTAR => self.lstar,
            msr::CSTAR => self.cstar,
            msr::SFMASK => self.sfmask,
            msr::FS_BASE | msr::GS_BASE | msr::KERNEL_GS_BASE | msr::TSC_AUX => {
                *host.base_msr(index)
            }
            _ => return Err(GP0),
        })
    }

    /// WRMSR. The caller ends the block afterwards (EFER and bases change how later
    /// instructions behave).
    ///
    /// # Errors
    ///
    /// `#GP(0)` for an MSR this CPU does not have, reserved bits, non-canonical addresses
    /// and invalid memory types.
    pub fn write_msr(
        &mut self,
        host: &mut impl MsrHost,
        index: u32,
        value: u64,
    ) -> Result<(), Exception> {
        let canonical = || {
            if is_canonical(value) {
                Ok(value)
            } else {
                Err(GP0)
            }
        };
        match index {
            msr::TSC => host.set_tsc(value),
            msr::APIC_BASE => {
                // Bits 12..40 base, 8 BSP (read-only), 10 x2APIC (not supported), 11 enable.
                let reserved = !((((1u64 << PHYS_ADDR_BITS) - 1) & !0xfff) | (1 << 8) | (1 << 11));
                if value & reserved != 0 {
                    return Err(GP0);
                }
                self.apic_base = (value & !(1 << 8)) | (self.apic_base & (1 << 8));
            }
            // Software writes 0 before CPUID to latch the revision; the revision reads
            // back regardless (it is the microcode's, not a register's), so any value is
            // accepted and dropped, as on hardware.
            msr::BIOS_SIGN_ID => {}
            msr::SPEC_CTRL => {
                if value & !SPEC_CTRL_WRITABLE != 0 {
                    return Err(GP0);
                }
                self.spec_ctrl = value;
            }
            // IBPB (bit 0) is the only command; there are no predictors to flush.
            msr::PRED_CMD => {
                if value & !1 != 0 {
                    return Err(GP0);
                }
            }
            msr::SYSENTER_CS => self.sysenter[0] = value & 0xffff,
            msr::SYSENTER_ESP | msr::SYSENTER_EIP => {
                self.sysenter[(index - msr::SYSENTER_CS) as usize] = canonical()?
            }
            msr::MISC_ENABLE => self.misc_enable = value,
            i if (msr::MTRR_PHYS_BASE0..msr::MTRR_PHYS_BASE0 + 2 * VARIABLE_MTRRS as u32)
                .contains(&i) =>
            {
                let k = (i - msr::MTRR_PHYS_BASE0) as usize;
                let addr_bits = ((1u64 << PHYS_ADDR_BITS) - 1) & !0xfff;
                if k % 2 == 0 {
                    if value & !(addr_bits | 0xff) != 0 || !valid_memory_types(value & 0xff, false)
                    {
                        return Err(GP0);
                    }
                    self.memory_types.mtrr_var[k / 2].0 = value;
                } else {
                    if value & !(addr_bits | (1 << 11)) != 0 {
                        return Err(GP0);
                    }
                    self.memory_types.mtrr_var[k / 2].1 = value;
                }
            }
            i if fixed_mtrr_slot(i).is_some() => {
                if !valid_memory_types(value, false) {
                    return Err(GP0);
                }
                self.memory_types.mtrr_fixed[fixed_mtrr_slot(i).unwrap_or(0)] = value;
            }
            msr::PAT => {
                if !valid_memory_types(value, true) {
                    return Err(GP0);
                }
                self.memory_types.pat = value;
            }
            msr::MTRR_DEF_TYPE => {
                if value & !(0xff | (1 << 10) | (1 << 11)) != 0
                    || !valid_memory_types(value & 0xff, false)
                {
                    return Err(GP0);
                }
                self.memory_types.mtrr_def_type = value;
            }
            msr::TSC_DEADLINE => self.tsc_deadline = value,
            msr::EFER => self.efer = self.check_efer(value)?,
            msr::STAR => self.star = value,
            msr::LSTAR => self.lstar = canonical()?,
            msr::CSTAR => self.cstar = canonical()?,
            msr::SFMASK => self.sfmask = value & 0xffff_ffff,
            msr::FS_BASE | msr::GS_BASE | msr::KERNEL_GS_BASE => {
                *host.base_msr(index) = canonical()?
            }
            msr::TSC_AUX => {
                if value >> 32 != 0 {
                    return Err(GP0);
                }
                *host.base_msr(index) = value;
            }
            _ => return Err(GP0),
        }
        Ok(())
    }
}

/// Index into [`MemoryTypeRegs::mtrr_fixed`] for a fixed-range MTRR number.
fn fixed_mtrr_slot(index: u32) -> Option<usize> {
    match index {
        msr::MTRR_FIX64K => Some(0),
        msr::MTRR_FIX16K_80000 => Some(1),
        msr::MTRR_FIX16K_A0000 => Some(2),
        i if (msr::MTRR_FIX4K_C0000..msr::MTRR_FIX4K_C0000 + 8).contains(&i) => {
            Some(3 + (i - msr::MTRR_FIX4K_C0000) as usize)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Host {
        tsc: u64,
        bases: [u64; 4],
    }

    impl MsrHost for Host {
        fn tsc(&self) -> u64 {
            self.tsc
        }
        fn set_tsc(&mut self, value: u64) {
            self.tsc = value;
        }
        fn base_msr(&mut self, index: u32) -> &mut u64 {
            &mut self.bases[(index - msr::FS_BASE) as usize]
        }
    }

    #[test]
    fn cr0_rejects_illegal_combinations() {
        let s = SystemRegs::default();
        assert_eq!(s.check_cr0(cr0::PG), Err(GP0), "PG without PE");
        assert_eq!(s.check_cr0(cr0::NW), Err(GP0), "NW without CD");
        assert_eq!(s.check_cr0(1 << 32), Err(GP0), "reserved upper half");
        assert_eq!(
            s.check_cr0(cr0::PE),
            Ok(cr0::PE | cr0::ET),
            "ET is hardwired"
        );
        let mut lme = SystemRegs {
            efer: efer::LME,
            ..SystemRegs::default()
        };
        assert_eq!(
            lme.check_cr0(cr0::PE | cr0::PG),
            Err(GP0),
            "long mode needs PAE"
        );
        lme.cr4 = cr4::PAE;
        assert!(lme.check_cr0(cr0::PE | cr0::PG).is_ok());
    }

    #[test]
    fn cr4_accepts_fsgsbase_and_osxsave_and_xcr0_takes_supported_components() {
        let s = SystemRegs::default();
        assert_eq!(s.xcr0, xcr0::X87, "x87 only at reset");
        let v = cr4::FSGSBASE | cr4::OSXSAVE;
        assert_eq!(s.check_cr4(v), Ok(v));
        assert_eq!(s.check_cr4(1 << 13), Err(GP0), "VMXE is not supported");
        assert_eq!(s.check_xcr(0, 3), Ok(3));
        assert_eq!(s.check_xcr(0, 1), Ok(1));
        assert_eq!(s.check_xcr(0, 2), Err(GP0), "x87 must stay enabled");
        assert_eq!(s.check_xcr(0, 7), Err(GP0), "AVX is not supported");
        assert_eq!(s.check_xcr(1, 3), Err(GP0), "only XCR0 exists");
    }

    #[test]
    fn efer_lme_is_frozen_while_paging() {
        let s = SystemRegs::default();
        assert_eq!(s.check_efer(1 << 1), Err(GP0), "reserved bit");
        let s = SystemRegs {
            cr0: cr0::PE | cr0::PG,
            ..s
        };
        assert_eq!(s.check_efer(efer::LME), Err(GP0));
        assert_eq!(s.check_efer(efer::SCE), Ok(efer::SCE));
    }

    #[test]
    fn msrs_round_trip_and_unknown_ones_fault() {
        let mut s = SystemRegs::default();
        let mut h = Host {
            tsc: 5,
            bases: [0; 4],
        };
        s.write_msr(&mut h, msr::LSTAR, 0xffff_ffff_8100_0000)
            .unwrap();
        assert_eq!(s.read_msr(&mut h, msr::LSTAR), Ok(0xffff_ffff_8100_0000));
        assert_eq!(
            s.write_msr(&mut h, msr::LSTAR, 0x8000_0000_0000_0000),
            Err(GP0)
        );
        s.write_msr(&mut h, msr::GS_BASE, 0x1234).unwrap();
        assert_eq!(h.bases[1], 0x1234);
        assert_eq!(s.read_msr(&mut h, 0x1234_5678), Err(GP0));
        assert_eq!(
            s.write_msr(&mut h, msr::PAT, 0x0202_0202_0202_0202),
            Err(GP0),
            "type 2 is reserved"
        );
        s.write_msr(&mut h, msr::PAT, 0x0007_0406_0007_0406)
            .unwrap();
        s.write_msr(&mut h, msr::MTRR_FIX4K_C0000 + 7, 0x0606_0606_0606_0606)
            .unwrap();
        assert_eq!(
            s.read_msr(&mut h, msr::MTRR_FIX4K_C0000 + 7),
            Ok(0x0606_0606_0606_0606)
        );
        assert_eq!(s.write_msr(&mut h, msr::TSC_AUX, 1 << 32), Err(GP0));
        s.write_msr(&mut h, msr::TSC, 99).unwrap();
        assert_eq!(s.read_msr(&mut h, msr::TSC), Ok(99));
    }

    #[test]
    fn bios_sign_id_takes_writes_and_reads_the_microcode_revision() {
        let mut s = SystemRegs::default();
        let mut h = Host {
            tsc: 0,
            bases: [0; 4],
        };
        // Linux's intel_get_microcode_revision: write 0, CPUID, read EDX.
        s.write_msr(&mut h, msr::BIOS_SIGN_ID, 0).unwrap();
        let v = s.read_msr(&mut h, msr::BIOS_SIGN_ID).unwrap();
        assert_eq!(v as u32, 0, "EAX (low half) reads 0");
        assert_eq!((v >> 32) as u32, MICROCODE_REVISION);
        assert_ne!(MICROCODE_REVISION, 0);
        s.write_msr(&mut h, msr::BIOS_SIGN_ID, 0x1234 << 32)
            .unwrap();
        assert_eq!(
            s.read_msr(&mut h, msr::BIOS_SIGN_ID),
            Ok(v),
            "writes do not stick"
        );
    }

    #[test]
    fn debug_registers_keep_their_fixed_bits() {
        let mut s = SystemRegs::default();
        s.write_dr(7, 0).unwrap();
        assert_eq!(s.read_dr(7), Ok(0x400));
        s.write_dr(6, 0).unwrap();
        assert_eq!(s.read_dr(4), Ok(0xffff_0ff0));
        assert_eq!(s.write_dr(7, 1 << 32), Err(GP0));
        assert_eq!(s.read_dr(8), Err(Exception::InvalidOpcode));
    }
}
