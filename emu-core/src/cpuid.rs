//! CPUID: the description of the CPU the guest sees.
//!
//! CPUID tells the truth: a feature bit is set only if every instruction it covers is
//! implemented and passes the host differential suite. glibc and the kernel choose code
//! paths from these bits, so an advertised but missing feature is a guest crash. When a
//! feature lands, its bit is turned on here and nowhere else.
//!
//! Every leaf is a constant ([`cpuid`]) except the bits that mirror CPU state
//! (CPUID.1:ECX.OSXSAVE follows CR4.OSXSAVE), which [`cpuid_for`] fills in; the CPUID
//! instruction executes that.
//!
//! The vendor string is "GenuineIntel" because Linux and glibc interpret the frequency
//! leaves (0x15/0x16) and cache leaves only for Intel parts; the brand string and the
//! hypervisor leaves (0x40000000..) say what the CPU really is.

/// Frequency of the time-stamp counter the guest sees, in Hz.
pub const TSC_HZ: u64 = 1_000_000_000;

/// Frequency of the local APIC timer's input clock, in Hz (used from the system ISA on).
pub const APIC_TIMER_HZ: u64 = 1_000_000_000;

/// Leaf 1 EDX bits.
mod edx1 {
    /// On-chip local APIC (advertised only with one attached; see [`super::ApicInfo`]).
    pub const APIC: u32 = 1 << 9;
    pub const FPU: u32 = 1 << 0;
    pub const PSE: u32 = 1 << 3;
    pub const TSC: u32 = 1 << 4;
    pub const MSR: u32 = 1 << 5;
    pub const PAE: u32 = 1 << 6;
    pub const CX8: u32 = 1 << 8;
    pub const SEP: u32 = 1 << 11;
    pub const MTRR: u32 = 1 << 12;
    pub const PGE: u32 = 1 << 13;
    pub const CMOV: u32 = 1 << 15;
    pub const PAT: u32 = 1 << 16;
    pub const PSE36: u32 = 1 << 17;
    pub const CLFSH: u32 = 1 << 19;
    pub const FXSR: u32 = 1 << 24;
    pub const SSE: u32 = 1 << 25;
    pub const SSE2: u32 = 1 << 26;
}

/// Leaf 1 ECX bits.
mod ecx1 {
    pub const SSE3: u32 = 1 << 0;
    pub const SSSE3: u32 = 1 << 9;
    pub const CX16: u32 = 1 << 13;
    pub const SSE41: u32 = 1 << 19;
    pub const SSE42: u32 = 1 << 20;
    /// x2APIC mode (with a local APIC).
    pub const X2APIC: u32 = 1 << 21;
    /// The TSC-deadline mode of the local APIC timer (with a local APIC).
    pub const TSC_DEADLINE: u32 = 1 << 24;
    pub const MOVBE: u32 = 1 << 22;
    pub const POPCNT: u32 = 1 << 23;
    pub const XSAVE: u32 = 1 << 26;
    /// Not a capability: a copy of CR4.OSXSAVE, set by [`super::cpuid_for`].
    pub const OSXSAVE: u32 = 1 << 27;
    pub const HYPERVISOR: u32 = 1 << 31;
}

/// Leaf 1 EDX as advertised.
pub const LEAF1_EDX: u32 = edx1::FPU
    | edx1::FXSR
    | edx1::PSE
    | edx1::TSC
    | edx1::MSR
    | edx1::PAE
    | edx1::CX8
    | edx1::SEP
    | edx1::MTRR
    | edx1::PGE
    | edx1::PAT
    | edx1::PSE36
    | edx1::CMOV
    | edx1::CLFSH
    | SSE_EDX;
/// Leaf 1 ECX as advertised.
/// (OSXSAVE is added by [`cpuid_for`] while CR4.OSXSAVE is set.)
pub const LEAF1_ECX: u32 =
    ecx1::CX16 | ecx1::MOVBE | ecx1::POPCNT | ecx1::XSAVE | ecx1::HYPERVISOR | SSE_ECX;
/// Leaf 7 subleaf 0 EBX as advertised: FSGSBASE, BMI1, SMEP, SMAP.
pub const LEAF7_EBX: u32 = (1 << 0) | (1 << 3) | (1 << 7) | (1 << 20);
/// Leaf 7 subleaf 0 EDX as advertised: IA32_SPEC_CTRL/PRED_CMD (IBRS and IBPB, bit 26) and
/// IA32_ARCH_CAPABILITIES (bit 29), which says this CPU has none of the speculation
/// flaws (see [`crate::sysregs::ARCH_CAPABILITIES`]).
pub const LEAF7_EDX: u32 = (1 << 26) | (1 << 29);
/// Leaf 0xD subleaf 1 EAX: XSAVEOPT (bit 0, executed as XSAVE, which the architecture
/// allows: its optimizations are optional) and XGETBV with ECX = 1 (bit 2). XSAVEC and
/// XSAVES (bits 1 and 3) are not implemented.
pub const LEAF_D1_EAX: u32 = (1 << 0) | (1 << 2);
/// Leaf 0x80000001 ECX: LAHF/SAHF in 64-bit mode, LZCNT, PREFETCHW (a hint, executed as
/// a no-op).
pub const EXT1_ECX: u32 = (1 << 0) | (1 << 5) | (1 << 8);
/// Leaf 0x80000001 EDX: SYSCALL/SYSRET, NX, 1 GiB pages, RDTSCP, long mode.
pub const EXT1_EDX: u32 = (1 << 11) | (1 << 20) | (1 << 26) | (1 << 27) | (1 << 29);

/// SSE-family bits in leaf 1 EDX.
const SSE_EDX: u32 = edx1::SSE | edx1::SSE2;
/// SSE-family bits in leaf 1 ECX: SSE3, SSSE3, SSE4.1 and SSE4.2 (with CRC32, PCMPGTQ and
/// the PCMPxSTRx string instructions) are implemented and pass the differential suite.
const SSE_ECX: u32 = ecx1::SSE3 | ecx1::SSSE3 | ecx1::SSE41 | ecx1::SSE42;

const VENDOR: &[u8; 12] = b"GenuineIntel";
const BRAND: &[u8; 48] = b"Quetzal x86-64 software CPU\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
const HYPERVISOR_VENDOR: &[u8; 12] = b"QuetzalQtzl ";

fn words(bytes: &[u8]) -> [u32; 4] {
    let mut out = [0u32; 4];
    for (i, chunk) in bytes.chunks(4).take(4).enumerate() {
        out[i] = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    out
}

/// Size in bytes of a standard-format XSAVE area: the 512-byte legacy region and the
/// 64-byte header. x87 and SSE, the only supported components, both live in the legacy
/// region, so every valid XCR0 needs exactly this much (leaf 0xD's EBX and ECX agree).
pub const XSAVE_AREA_SIZE: u32 = crate::exec::xsave::AREA_LEN as u32;

/// Leaf 6 EAX bit 2, ARAT: the APIC timer runs at a constant rate in every C-state (ours
/// simply always runs), so Linux needs no broadcast clock device in idle.
const LEAF6_ARAT: u32 = 1 << 2;

/// The local APIC of a vCPU that has one, as CPUID describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApicInfo {
    /// The initial (x2)APIC ID: leaf 1 EBX[31:24] (its low 8 bits) and leaf 0xB EDX.
    pub id: u32,
    /// Logical processors in the package (leaf 0xB; one thread per core).
    pub package_cpus: u32,
}

/// The CPUID result `[eax, ebx, ecx, edx]` for `leaf` / `subleaf` as the vCPU with system
/// registers `sys` and local APIC `apic` (if one is attached) reports it: [`cpuid`] plus
/// the bits that mirror CPU state, and with a local APIC its features (APIC, x2APIC,
/// TSC-deadline timer, ARAT), its ID and the x2APIC topology leaf 0xB.
pub fn cpuid_for(
    sys: &crate::sysregs::SystemRegs,
    apic: Option<ApicInfo>,
    leaf: u32,
    subleaf: u32,
) -> [u32; 4] {
    let mut r = cpuid(leaf, subleaf);
    if leaf == 1 && sys.cr4 & crate::sysregs::cr4::OSXSAVE != 0 {
        r[2] |= ecx1::OSXSAVE;
    }
    if let Some(apic) = apic {
        match leaf {
            1 => {
                r[1] = (r[1] & 0x00ff_ffff) | (apic.id & 0xff) << 24;
                r[2] |= ecx1::X2APIC | ecx1::TSC_DEADLINE;
                r[3] |= edx1::APIC;
            }
            6 => r[0] |= LEAF6_ARAT,
            0xb => {
                // Level 0: SMT, one thread per core (shift 0); level 1: cores, enough
                // x2APIC ID bits for the package's processors; then an invalid level.
                let core_bits = 32 - apic.package_cpus.max(1).saturating_sub(1).leading_zeros();
                r = match subleaf {
                    0 => [0, 1, 1 << 8, apic.id],
                    1 => [core_bits, apic.package_cpus.max(1), 2 << 8 | 1, apic.id],
                    _ => [0, 0, subleaf & 0xff, apic.id],
                };
            }
            _ => {}
        }
    }
    r
}

/// The CPUID result `[eax, ebx, ecx, edx]` for `leaf` / `subleaf`, for a vCPU in its reset
/// state (CR4.OSXSAVE clear).
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    match leaf {
        0 => {
            let v = words(VENDOR);
            // EBX, EDX, ECX spell the vendor in that order.
            [0x16, v[0], v[2], v[1]]
        }
        // Family 6, model 0x55 (a Skylake-class family 6 part), stepping 0; CLFLUSH line
        // size 8 qwords; one logical processor.
        1 => [0x0005_0650, 0x0001_0800, LEAF1_ECX, LEAF1_EDX],
        7 if subleaf == 0 => [0, LEAF7_EBX, 0, LEAF7_EDX],
        // XSAVE: supported XCR0 bits in EDX:EAX, the area size for the components XCR0
        // enables in EBX and for all supported ones in ECX (the same here).
        0xd if subleaf == 0 => {
            let all = crate::sysregs::xcr0::SUPPORTED;
            [
                all as u32,
                XSAVE_AREA_SIZE,
                XSAVE_AREA_SIZE,
                (all >> 32) as u32,
            ]
        }
        // EBX (the XSAVES area size) and ECX/EDX (IA32_XSS bits) are 0: no XSAVES.
        0xd if subleaf == 1 => [LEAF_D1_EAX, 0, 0, 0],
        0x15 => {
            // TSC = crystal * EBX / EAX, with a 1 GHz "crystal" so the ratio is 1.
            [1, 1, TSC_HZ as u32, 0]
        }
        0x16 => {
            let mhz = (TSC_HZ / 1_000_000) as u32;
            [mhz, mhz, (APIC_TIMER_HZ / 1_000_000) as u32, 0]
        }
        0x4000_0000 => {
            let v = words(HYPERVISOR_VENDOR);
            [0x4000_0010, v[0], v[1], v[2]]
        }
        // The de-facto standard timing leaf: TSC and APIC bus frequency in kHz.
        0x4000_0010 => [(TSC_HZ / 1000) as u32, (APIC_TIMER_HZ / 1000) as u32, 0, 0],
        0x8000_0000 => [0x8000_0008, 0, 0, 0],
        0x8000_0001 => [0, 0, EXT1_ECX, EXT1_EDX],
        0x8000_0002..=0x8000_0004 => {
            let part = (leaf - 0x8000_0002) as usize;
            words(&BRAND[part * 16..part * 16 + 16])
        }
        // 48-bit virtual and 40-bit physical addresses.
        0x8000_0008 => [0x0000_3028, 0, 0, 0],
        _ => [0, 0, 0, 0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_and_brand_read_back() {
        let [max, b, c, d] = cpuid(0, 0);
        assert!(max >= 0x16);
        let mut vendor = Vec::new();
        for w in [b, d, c] {
            vendor.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(&vendor, b"GenuineIntel");
        let mut brand = Vec::new();
        for leaf in 0x8000_0002..=0x8000_0004 {
            for w in cpuid(leaf, 0) {
                brand.extend_from_slice(&w.to_le_bytes());
            }
        }
        assert!(brand.starts_with(b"Quetzal"));
    }

    /// Where CPUID reports a feature: `(leaf, subleaf, register index eax=0..edx=3, bit)`,
    /// or `None` for features every x86-64 CPU has.
    fn feature_location(f: iced_x86::CpuidFeature) -> Option<Option<(u32, u32, usize, u32)>> {
        use iced_x86::CpuidFeature as F;
        Some(match f {
            F::INTEL8086
            | F::INTEL186
            | F::INTEL286
            | F::INTEL386
            | F::INTEL486
            | F::X64
            | F::CPUID
            | F::MULTIBYTENOP
            | F::PAUSE
            // Hint NOPs on a processor without the feature, which is not advertised:
            // ENDBR and RDSSP (CET), CLDEMOTE, PREFETCHIT0/1.
            | F::CET_IBT
            | F::CET_SS
            | F::CLDEMOTE
            | F::PREFETCHITI
            | F::PREFETCHWT1 => None,
            F::FPU | F::FPU287 | F::FPU387 => Some((1, 0, 3, 0)),
            F::FXSR => Some((1, 0, 3, 24)),
            F::TSC => Some((1, 0, 3, 4)),
            F::MSR => Some((1, 0, 3, 5)),
            F::CX8 => Some((1, 0, 3, 8)),
            F::SEP => Some((1, 0, 3, 11)),
            F::CMOV => Some((1, 0, 3, 15)),
            F::CLFSH => Some((1, 0, 3, 19)),
            F::SSE => Some((1, 0, 3, 25)),
            F::SSE2 => Some((1, 0, 3, 26)),
            F::SSE3 => Some((1, 0, 2, 0)),
            F::SSSE3 => Some((1, 0, 2, 9)),
            F::CMPXCHG16B => Some((1, 0, 2, 13)),
            F::SSE4_1 => Some((1, 0, 2, 19)),
            F::SSE4_2 => Some((1, 0, 2, 20)),
            F::MOVBE => Some((1, 0, 2, 22)),
            F::POPCNT => Some((1, 0, 2, 23)),
            F::BMI1 => Some((7, 0, 1, 3)),
            F::SMAP => Some((7, 0, 1, 20)),
            F::SYSCALL => Some((0x8000_0001, 0, 3, 11)),
            F::LZCNT => Some((0x8000_0001, 0, 2, 5)),
            F::PREFETCHW => Some((0x8000_0001, 0, 2, 8)),
            F::RDTSCP => Some((0x8000_0001, 0, 3, 27)),
            F::XSAVE => Some((1, 0, 2, 26)),
            F::XSAVEOPT => Some((0xd, 1, 0, 0)),
            F::FSGSBASE => Some((7, 0, 1, 0)),
            _ => return None,
        })
    }

    /// CPUID tells the truth: every instruction the translator accepts needs only features
    /// that CPUID advertises.
    #[test]
    fn every_implemented_instruction_is_advertised() {
        let mut missing = Vec::new();
        for code in crate::insn::OpTable::global().codes() {
            for &feature in code.cpuid_features() {
                match feature_location(feature) {
                    None => {
                        missing.push(format!("{code:?}: {feature:?} has no CPUID mapping here"))
                    }
                    Some(None) => {}
                    Some(Some((leaf, subleaf, reg, bit))) => {
                        if cpuid(leaf, subleaf)[reg] & (1 << bit) == 0 {
                            missing.push(format!("{code:?}: {feature:?} not advertised"));
                        }
                    }
                }
            }
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }

    #[test]
    fn osxsave_and_the_xsave_size_follow_cpu_state() {
        use crate::sysregs::{cr4, SystemRegs};
        let mut sys = SystemRegs::default();
        assert_eq!(cpuid_for(&sys, None, 1, 0)[2] & (1 << 27), 0);
        assert_ne!(
            cpuid_for(&sys, None, 1, 0)[2] & (1 << 26),
            0,
            "XSAVE is always advertised"
        );
        sys.cr4 |= cr4::OSXSAVE;
        assert_ne!(cpuid_for(&sys, None, 1, 0)[2] & (1 << 27), 0);
        sys.xcr0 = 3;
        assert_eq!(cpuid_for(&sys, None, 0xd, 0), [3, 576, 576, 0]);
        assert_eq!(cpuid_for(&sys, None, 0xd, 1), [0b101, 0, 0, 0]);
        assert_eq!(cpuid_for(&sys, None, 0xd, 2), [0; 4], "no AVX component");
        assert!(
            cpuid(0, 0)[0] >= 0xd,
            "the maximum basic leaf covers leaf 0xD"
        );
    }

    #[test]
    fn apic_features_id_and_topology_appear_only_with_a_local_apic() {
        let sys = crate::sysregs::SystemRegs::default();
        let bare = cpuid_for(&sys, None, 1, 0);
        assert_eq!(bare[3] & (1 << 9), 0, "no APIC without a controller");
        assert_eq!(bare[2] & (1 << 21 | 1 << 24), 0);
        assert_eq!(cpuid_for(&sys, None, 0xb, 0), [0; 4]);
        let apic = Some(ApicInfo {
            id: 3,
            package_cpus: 4,
        });
        let [_, b, c, d] = cpuid_for(&sys, apic, 1, 0);
        assert_ne!(d & (1 << 9), 0, "APIC");
        assert_ne!(c & (1 << 21), 0, "x2APIC");
        assert_ne!(c & (1 << 24), 0, "TSC-deadline");
        assert_eq!(b >> 24, 3, "initial APIC ID");
        assert_eq!(
            b & 0xffff,
            cpuid(1, 0)[1] & 0xffff,
            "the rest of EBX is kept"
        );
        assert_ne!(cpuid_for(&sys, apic, 6, 0)[0] & (1 << 2), 0, "ARAT");
        assert_eq!(cpuid_for(&sys, apic, 0xb, 0), [0, 1, 0x100, 3]);
        assert_eq!(cpuid_for(&sys, apic, 0xb, 1), [2, 4, 0x201, 3]);
        assert_eq!(cpuid_for(&sys, apic, 0xb, 2), [0, 0, 2, 3]);
        assert!(cpuid(0, 0)[0] >= 0xb);
    }

    #[test]
    fn long_mode_and_hypervisor_are_advertised() {
        assert_ne!(cpuid(0x8000_0001, 0)[3] & (1 << 29), 0);
        assert_ne!(cpuid(1, 0)[2] & (1 << 31), 0);
        assert_eq!(cpuid(0x4000_0010, 0)[0] as u64, TSC_HZ / 1000);
    }
}
