//! ACPI tables (built with the `acpi_tables` crate): RSDP → XSDT → FADT (→ FACS, DSDT),
//! MADT, HPET, written at [`ACPI_TABLES_ADDR`] in the reserved BIOS area, where Linux
//! also finds the RSDP by scanning 0xE0000–0xFFFFF.
//!
//! # The platform these tables describe (the contract with `emu-devices`)
//!
//! | what | where | notes |
//! | --- | --- | --- |
//! | PM1a event block | I/O 0x600, 4 bytes | PM1_STS (16 bits) at 0x600, PM1_EN at 0x602 |
//! | PM1a control block | I/O 0x604, 2 bytes | reads SCI_EN (bit 0) = 1: always in ACPI mode (no SMI_CMD) |
//! | power off | PM1a_CNT write | with SLP_EN (bit 13) set and SLP_TYP (bits 10–12) = [`S5_SLP_TYP`] (5): e.g. 0x3400 |
//! | PM timer | I/O 0x608, 4 bytes | 3.579545 MHz, **32-bit** counter (FADT TMR_VAL_EXT set) |
//! | reset register | I/O 0xCF9, write 0x06 | FADT RESET_REG_SUP; Linux falls back to the i8042 (0x64 ← 0xFE) |
//! | SCI | IRQ 9, level, active high | MADT override 9 → GSI 9 |
//! | local APICs | MMIO 0xFEE00000 | one MADT entry per vCPU, processor UID = APIC ID = index |
//! | IOAPIC | MMIO 0xFEC00000 | ID = number of vCPUs, GSI base 0 (24 pins) |
//! | ISA overrides | IRQ 0 → GSI 2 (edge, high); IRQ 9 → GSI 9 (level, high) | as on PCs, PIT on pin 2 |
//! | local APIC NMI | LINT1 of every CPU, edge, high | |
//! | 8259 pair | present | MADT flag PCAT_COMPAT |
//! | HPET | MMIO 0xFED00000 | if [`AcpiConfig::hpet`]; event timer block ID from the config |
//! | COM1 | I/O 0x3F8–0x3FF, IRQ 4 | DSDT device `\_SB.COM1`, `PNP0501` |
//! | virtio-mmio | per [`VirtioMmioDevice`] | DSDT devices `\_SB.VRnn`, `LNRO0005`, level/high interrupt |
//!
//! The FADT is a full (not hardware-reduced) revision 6.5 one, so Linux uses the PM timer,
//! the SCI and fixed-hardware sleep: `poweroff` evaluates `\_S5_` and writes
//! `SLP_TYP << 10 | SLP_EN` to PM1a_CNT.

use acpi_tables::{
    aml,
    facs::FACS,
    fadt::{FADTBuilder, Flags, PmProfile},
    gas::{AccessSize, AddressSpace, GAS},
    madt::{EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT},
    rsdp::Rsdp,
    sdt::Sdt,
    xsdt::XSDT,
};

use acpi_tables::Aml;

use crate::config::ConfigError;
use crate::layout::{ACPI_TABLES_ADDR, ACPI_TABLES_END, HPET_ADDR, IOAPIC_ADDR, LAPIC_ADDR};
use crate::memory::GuestMemory;

/// PM1a event block I/O port.
pub const PM1A_EVT_PORT: u16 = 0x600;
/// PM1a control block I/O port.
pub const PM1A_CNT_PORT: u16 = 0x604;
/// PM timer I/O port.
pub const PM_TMR_PORT: u16 = 0x608;
/// The SLP_TYP value for S5 (soft off) in `\_S5_`.
pub const S5_SLP_TYP: u8 = 5;
/// PM1_CNT.SLP_EN.
pub const SLP_EN: u16 = 1 << 13;
/// The SCI interrupt (ISA IRQ and GSI).
pub const SCI_IRQ: u8 = 9;
/// Reset register I/O port.
pub const RESET_PORT: u16 = 0xcf9;
/// Value written to the reset register.
pub const RESET_VALUE: u8 = 0x06;
/// COM1 base port.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1 IRQ.
pub const COM1_IRQ: u32 = 4;

const OEM_ID: [u8; 6] = *b"QUETZL";
const OEM_TABLE_ID: [u8; 8] = *b"QUETZAL ";
const OEM_REVISION: u32 = 1;

/// One virtio-mmio transport to describe in the DSDT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioDevice {
    /// MMIO base.
    pub base: u64,
    /// MMIO window size.
    pub size: u64,
    /// Its GSI (level-triggered, active high). Use 16–23 so no ISA default applies; an
    /// IRQ below 16 also gets a MADT override to level/high.
    pub irq: u32,
}

/// What the tables describe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// vCPUs (1–254): one local APIC each, APIC IDs 0..n.
    pub cpus: u32,
    /// HPET event timer block ID (its GCAP_ID low 32 bits), or `None` for no HPET table.
    pub hpet: Option<u32>,
    /// Whether an i8042 keyboard controller exists (FADT IAPC_BOOT_ARCH bit 1).
    pub i8042: bool,
    /// Whether a CMOS RTC exists at 0x70/0x71 (else IAPC_BOOT_ARCH "CMOS RTC not present").
    pub cmos_rtc: bool,
    /// virtio-mmio transports.
    pub virtio_mmio: Vec<VirtioMmioDevice>,
}

impl Default for AcpiConfig {
    /// One CPU, an HPET like QEMU's (vendor 0x8086, 3 timers, 64-bit, legacy route
    /// capable: 0x8086A201), i8042 and RTC present, no virtio.
    fn default() -> Self {
        Self {
            cpus: 1,
            hpet: Some(0x8086_a201),
            i8042: true,
            cmos_rtc: true,
            virtio_mmio: Vec::new(),
        }
    }
}

/// The tables as bytes with their addresses (for tests and for tools that dump them).
#[derive(Clone, Debug)]
pub struct AcpiTables {
    /// `(address, signature, bytes)` of every table, the RSDP first (signature "RSD ").
    pub tables: Vec<(u64, [u8; 4], Vec<u8>)>,
}

impl AcpiTables {
    /// Address of the RSDP.
    pub fn rsdp_addr(&self) -> u64 {
        self.tables[0].0
    }

    /// Bytes of the table with this signature.
    pub fn get(&self, sig: &[u8; 4]) -> Option<&[u8]> {
        self.tables
            .iter()
            .find(|t| &t.1 == sig)
            .map(|t| t.2.as_slice())
    }
}

fn bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

fn io_gas(port: u16, bits: u8, access: AccessSize) -> GAS {
    GAS::new(AddressSpace::SystemIo, bits, 0, access, u64::from(port))
}

/// The DSDT's AML body: `\_SB.COM1`, one `\_SB.VRnn` per virtio-mmio device, `\_S5_`.
pub fn dsdt_aml(virtio: &[VirtioMmioDevice]) -> Vec<u8> {
    // Each device is serialized within one statement: the builders borrow temporaries.
    let com1 = bytes(&aml::Device::new(
        "COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(COM1_PORT, COM1_PORT, 1, 8),
                    &aml::Interrupt::new(true, true, false, false, COM1_IRQ),
                ]),
            ),
        ],
    ));
    let mut sb_children = vec![RawAml(com1)];
    for (i, d) in virtio.iter().enumerate() {
        let name = format!("VR{i:02X}");
        let uid = i as u32;
        sb_children.push(RawAml(bytes(&aml::Device::new(
            name.as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"LNRO0005"),
                &aml::Name::new("_UID".into(), &uid),
                &aml::Name::new("_CCA".into(), &aml::ONE),
                &aml::Name::new(
                    "_CRS".into(),
                    &aml::ResourceTemplate::new(vec![
                        &aml::Memory32Fixed::new(true, d.base as u32, d.size as u32),
                        &aml::Interrupt::new(true, false, false, false, d.irq),
                    ]),
                ),
            ],
        ))));
    }
    let mut out = bytes(&aml::Scope::new(
        "\\_SB_".into(),
        sb_children.iter().map(|r| r as &dyn Aml).collect(),
    ));
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&S5_SLP_TYP, &S5_SLP_TYP, &aml::ZERO, &aml::ZERO]),
    )
    .to_aml_bytes(&mut out);
    out
}

/// Already-serialized AML, so children built in a loop can go into one scope.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// MADT flag: the platform also has dual 8259s.
const PCAT_COMPAT: u32 = 1;

/// An interrupt source override entry (MADT type 2).
fn iso(source: u8, gsi: u32, flags: u16) -> Vec<u8> {
    let mut e = vec![2, 10, 0, source];
    e.extend_from_slice(&gsi.to_le_bytes());
    e.extend_from_slice(&flags.to_le_bytes());
    e
}

/// MPS INTI flags: active high (01), edge (01 << 2) / level (11 << 2).
const INTI_EDGE_HIGH: u16 = 0x5;
const INTI_LEVEL_HIGH: u16 = 0xd;

fn madt(cfg: &AcpiConfig) -> Vec<u8> {
    // acpi_tables' MADT has no setter for the flags word and no override entries, so
    // take its header and entries as bytes and finish the table with `Sdt`.
    let mut m = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR as u32),
    );
    for i in 0..cfg.cpus {
        m.add_structure(ProcessorLocalApic::new(
            i as u8,
            i as u8,
            EnabledStatus::Enabled,
        ));
    }
    m.add_structure(IoApic::new(cfg.cpus as u8, IOAPIC_ADDR as u32, 0));
    let mut raw = bytes(&m);
    raw[40..44].copy_from_slice(&PCAT_COMPAT.to_le_bytes());
    let mut sdt = Sdt::new(*b"APIC", 36, 5, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    sdt.append_slice(&raw[36..]);
    sdt.append_slice(&iso(0, 2, INTI_EDGE_HIGH));
    sdt.append_slice(&iso(SCI_IRQ, u32::from(SCI_IRQ), INTI_LEVEL_HIGH));
    for d in &cfg.virtio_mmio {
        if d.irq < 16 && d.irq != u32::from(SCI_IRQ) {
            sdt.append_slice(&iso(d.irq as u8, d.irq, INTI_LEVEL_HIGH));
        }
    }
    // Local APIC NMI on LINT1 of every processor (UID 0xff).
    sdt.append_slice(&[4, 6, 0xff, 0x05, 0x00, 1]);
    sdt.as_slice().to_vec()
}

fn hpet(block_id: u32) -> Vec<u8> {
    let mut sdt = Sdt::new(*b"HPET", 36, 1, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    sdt.append_slice(&block_id.to_le_bytes());
    // Base address: system memory, 64-bit register width.
    sdt.append_slice(&bytes(&GAS::new(
        AddressSpace::SystemMemory,
        64,
        0,
        AccessSize::Undefined,
        HPET_ADDR,
    )));
    sdt.append_slice(&[0]); // HPET number
    sdt.append_slice(&0x80u16.to_le_bytes()); // minimum clock tick in periodic mode
    sdt.append_slice(&[0]); // page protection: none
    sdt.as_slice().to_vec()
}

fn fadt(cfg: &AcpiConfig, facs: u64, dsdt: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .firmware_ctrl_64(facs)
        .dsdt_64(dsdt)
        .preferred_pm_profile(PmProfile::EnterpriseServer)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::PwrButton) // no fixed-feature power button
        .flag(Flags::SlpButton) // no fixed-feature sleep button
        .flag(Flags::TmrValExt)
        .flag(Flags::ResetRegSup);
    // Both 32- and 64-bit pointers, equal: old parsers read the former.
    f.firmware_ctrl = (facs as u32).into();
    f.dsdt = (dsdt as u32).into();
    f.sci_int = u16::from(SCI_IRQ).into();
    f.pm1a_evt_blk = u32::from(PM1A_EVT_PORT).into();
    f.pm1a_cnt_blk = u32::from(PM1A_CNT_PORT).into();
    f.pm_tmr_blk = u32::from(PM_TMR_PORT).into();
    f.pm1_evt_len = 4;
    f.pm1_cnt_len = 2;
    f.pm_tmr_len = 4;
    f.x_pm1a_evt_blk = io_gas(PM1A_EVT_PORT, 32, AccessSize::WordAccess);
    f.x_pm1a_cnt_blk = io_gas(PM1A_CNT_PORT, 16, AccessSize::WordAccess);
    f.x_pm_tmr_blk = io_gas(PM_TMR_PORT, 32, AccessSize::DwordAccess);
    f.reset_reg = io_gas(RESET_PORT, 8, AccessSize::ByteAccess);
    f.reset_value = RESET_VALUE;
    // C2/C3 are not supported (latencies above 100 / 1000 us).
    f.p_lvl2_lat = 101.into();
    f.p_lvl3_lat = 1001.into();
    f.century = if cfg.cmos_rtc { 0x32 } else { 0 };
    // IAPC_BOOT_ARCH: legacy devices, 8042, VGA not present, MSI not supported (no PCI),
    // CMOS RTC not present.
    let mut arch: u16 = 1 | (1 << 2) | (1 << 3);
    if cfg.i8042 {
        arch |= 1 << 1;
    }
    if !cfg.cmos_rtc {
        arch |= 1 << 5;
    }
    f.iapc_boot_arch = arch.into();
    bytes(&f.finalize())
}

/// Builds every table for `cfg`, laid out from [`ACPI_TABLES_ADDR`], without writing
/// them.
///
/// # Errors
///
/// [`ConfigError::BadCpuCount`] or [`ConfigError::AcpiTooLarge`].
pub fn build_tables(cfg: &AcpiConfig) -> Result<AcpiTables, ConfigError> {
    if cfg.cpus == 0 || cfg.cpus > 254 {
        return Err(ConfigError::BadCpuCount(cfg.cpus));
    }
    // Fixed order: RSDP, XSDT, FADT, FACS (64-byte aligned), MADT, HPET, DSDT. The XSDT's
    // size depends only on how many tables it lists, so addresses are known up front.
    let rsdp_addr = ACPI_TABLES_ADDR;
    let xsdt_addr = rsdp_addr + 64;
    let n_entries = 2 + u64::from(cfg.hpet.is_some());
    let fadt_addr = xsdt_addr + ((36 + 8 * n_entries + 63) & !63);
    let fadt_len = acpi_tables::fadt::FADT::len() as u64;
    let facs_addr = (fadt_addr + fadt_len + 63) & !63;
    let madt_addr = facs_addr + 64;
    let madt = madt(cfg);
    let hpet_addr = (madt_addr + madt.len() as u64 + 15) & !15;
    let hpet = cfg.hpet.map(hpet);
    let dsdt_addr = (hpet_addr + hpet.as_ref().map_or(0, |h| h.len() as u64) + 15) & !15;
    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&dsdt_aml(&cfg.virtio_mmio));
    let end = dsdt_addr + dsdt.len() as u64;
    if end > ACPI_TABLES_END {
        return Err(ConfigError::AcpiTooLarge(end - ACPI_TABLES_ADDR));
    }

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    if hpet.is_some() {
        xsdt.add_entry(hpet_addr);
    }

    let mut tables = vec![
        (rsdp_addr, *b"RSD ", bytes(&Rsdp::new(OEM_ID, xsdt_addr))),
        (xsdt_addr, *b"XSDT", bytes(&xsdt)),
        (fadt_addr, *b"FACP", fadt(cfg, facs_addr, dsdt_addr)),
        (facs_addr, *b"FACS", bytes(&FACS::new())),
        (madt_addr, *b"APIC", madt),
    ];
    if let Some(h) = hpet {
        tables.push((hpet_addr, *b"HPET", h));
    }
    tables.push((dsdt_addr, *b"DSDT", dsdt.as_slice().to_vec()));
    Ok(AcpiTables { tables })
}

/// Builds the tables and writes them into guest memory; returns the RSDP address for
/// `boot_params.acpi_rsdp_addr` / `hvm_start_info.rsdp_paddr`.
///
/// # Errors
///
/// As [`build_tables`], or a memory error if 0xE0000–0xFFFFF is not RAM.
pub fn write_tables(mem: &mut dyn GuestMemory, cfg: &AcpiConfig) -> Result<u64, ConfigError> {
    let t = build_tables(cfg)?;
    for (addr, _, b) in &t.tables {
        mem.write(*addr, b)?;
    }
    Ok(t.rsdp_addr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::SparseMemory;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }
    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }
    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    fn cfg(cpus: u32) -> AcpiConfig {
        AcpiConfig {
            cpus,
            virtio_mmio: vec![
                VirtioMmioDevice {
                    base: 0xd000_0000,
                    size: 0x200,
                    irq: 16,
                },
                VirtioMmioDevice {
                    base: 0xd000_0200,
                    size: 0x200,
                    irq: 5,
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn every_table_checksums_to_zero_and_has_its_length() {
        let t = build_tables(&cfg(4)).unwrap();
        for (addr, sig, b) in &t.tables {
            assert_eq!(addr % 16, 0, "{}", String::from_utf8_lossy(sig));
            if sig == b"RSD " {
                assert_eq!(&b[..8], b"RSD PTR ");
                assert_eq!(sum(&b[..20]), 0, "RSDP v1 checksum");
                assert_eq!(sum(b), 0, "RSDP extended checksum");
                assert_eq!(b[15], 2, "revision 2");
            } else if sig == b"FACS" {
                assert_eq!(&b[..4], b"FACS");
                assert_eq!(addr % 64, 0);
            } else {
                assert_eq!(&b[..4], sig);
                assert_eq!(u32_at(b, 4) as usize, b.len());
                assert_eq!(sum(b), 0, "{} checksum", String::from_utf8_lossy(sig));
            }
        }
        // Tables do not overlap.
        for w in t.tables.windows(2) {
            assert!(w[0].0 + w[0].2.len() as u64 <= w[1].0);
        }
    }

    #[test]
    fn pointers_chain_rsdp_to_every_table() {
        let t = build_tables(&cfg(2)).unwrap();
        let addr_of = |s: &[u8; 4]| t.tables.iter().find(|x| &x.1 == s).unwrap().0;
        let rsdp = t.get(b"RSD ").unwrap();
        assert_eq!(u64_at(rsdp, 24), addr_of(b"XSDT"));
        let xsdt = t.get(b"XSDT").unwrap();
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(xsdt, o))
            .collect();
        assert_eq!(
            entries,
            vec![addr_of(b"FACP"), addr_of(b"APIC"), addr_of(b"HPET")]
        );
        let fadt = t.get(b"FACP").unwrap();
        assert_eq!(u32_at(fadt, 36) as u64, addr_of(b"FACS"));
        assert_eq!(u32_at(fadt, 40) as u64, addr_of(b"DSDT"));
        assert_eq!(u64_at(fadt, 140), addr_of(b"DSDT"), "X_DSDT");
    }

    #[test]
    fn fadt_describes_the_pm_ports_sci_and_reset() {
        let t = build_tables(&cfg(1)).unwrap();
        let f = t.get(b"FACP").unwrap();
        assert_eq!(u16::from_le_bytes([f[46], f[47]]), 9, "SCI_INT");
        assert_eq!(u32_at(f, 48), 0, "no SMI_CMD: always in ACPI mode");
        assert_eq!(u32_at(f, 56), 0x600, "PM1a_EVT_BLK");
        assert_eq!(u32_at(f, 64), 0x604, "PM1a_CNT_BLK");
        assert_eq!(u32_at(f, 76), 0x608, "PM_TMR_BLK");
        assert_eq!((f[88], f[89], f[91]), (4, 2, 4), "block lengths");
        let flags = u32_at(f, 112);
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_ne!(flags & (1 << 8), 0, "TMR_VAL_EXT");
        assert_eq!(flags & (1 << 20), 0, "not hardware-reduced");
        assert_eq!(f[116], 1, "reset register in I/O space");
        assert_eq!(u64_at(f, 120), 0xcf9);
        assert_eq!(f[128], 0x06);
        assert_eq!(
            u16::from_le_bytes([f[109], f[110]]) & 0b10,
            0b10,
            "8042 present"
        );
    }

    #[test]
    fn madt_lists_every_cpu_the_ioapic_and_the_overrides() {
        let t = build_tables(&cfg(3)).unwrap();
        let m = t.get(b"APIC").unwrap();
        assert_eq!(u32_at(m, 36), 0xfee0_0000);
        assert_eq!(u32_at(m, 40), 1, "PCAT_COMPAT");
        let mut off = 44;
        let (mut lapics, mut ioapics, mut isos, mut nmis) = (vec![], vec![], vec![], 0);
        while off < m.len() {
            let (ty, len) = (m[off], m[off + 1] as usize);
            assert!(len >= 2 && off + len <= m.len());
            match ty {
                0 => {
                    assert_eq!(u32_at(m, off + 4), 1, "enabled");
                    lapics.push((m[off + 2], m[off + 3]));
                }
                1 => ioapics.push((m[off + 2], u32_at(m, off + 4), u32_at(m, off + 8))),
                2 => isos.push((
                    m[off + 3],
                    u32_at(m, off + 4),
                    u16::from_le_bytes([m[off + 8], m[off + 9]]),
                )),
                4 => nmis += 1,
                _ => panic!("unexpected MADT entry {ty}"),
            }
            off += len;
        }
        assert_eq!(lapics, vec![(0, 0), (1, 1), (2, 2)]);
        assert_eq!(ioapics, vec![(3, 0xfec0_0000, 0)]);
        assert_eq!(isos, vec![(0, 2, 0x5), (9, 9, 0xd), (5, 5, 0xd)]);
        assert_eq!(nmis, 1);
    }

    #[test]
    fn hpet_table_points_at_the_hpet() {
        let t = build_tables(&cfg(1)).unwrap();
        let h = t.get(b"HPET").unwrap();
        assert_eq!(h.len(), 56);
        assert_eq!(u32_at(h, 36), 0x8086_a201);
        assert_eq!(h[40], 0, "system memory");
        assert_eq!(u64_at(h, 44), 0xfed0_0000);
        let none = build_tables(&AcpiConfig {
            hpet: None,
            ..Default::default()
        })
        .unwrap();
        assert!(none.get(b"HPET").is_none());
        assert_eq!(none.get(b"XSDT").unwrap().len(), 36 + 16);
    }

    #[test]
    fn dsdt_has_com1_s5_and_the_virtio_devices() {
        let t = build_tables(&cfg(1)).unwrap();
        let d = t.get(b"DSDT").unwrap();
        for name in [
            &b"_SB_"[..],
            b"COM1",
            b"_S5_",
            b"VR00",
            b"VR01",
            b"LNRO0005",
            b"_CRS",
        ] {
            assert!(contains(d, name), "{}", String::from_utf8_lossy(name));
        }
        // PNP0501 as an EISA id: 0x0105D041 little-endian.
        assert!(contains(d, &0x0105_d041u32.to_le_bytes()));
        // COM1 IO descriptor: 0x47, decode16, 0x3f8, 0x3f8, align 1, length 8.
        assert!(contains(d, &[0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8]));
        // Virtio window: Memory32Fixed (0x86) with base 0xd0000200, length 0x200.
        assert!(contains(
            d,
            &[0x00, 0x02, 0x00, 0xd0, 0x00, 0x02, 0x00, 0x00]
        ));
        // _S5_ package: PackageOp, length, 4 elements, BytePrefix 5, BytePrefix 5, 0, 0.
        assert!(contains(
            d,
            &[b'_', b'S', b'5', b'_', 0x12, 0x08, 4, 0x0a, 5, 0x0a, 5, 0, 0]
        ));
        let plain = build_tables(&AcpiConfig::default()).unwrap();
        assert!(!contains(plain.get(b"DSDT").unwrap(), b"LNRO0005"));
    }

    #[test]
    fn tables_land_in_memory_and_bad_cpu_counts_are_refused() {
        let mut mem = SparseMemory::new(16 << 20);
        let rsdp = write_tables(&mut mem, &cfg(2)).unwrap();
        assert_eq!(rsdp, 0xe0000);
        assert_eq!(mem.read(rsdp, 8), b"RSD PTR ".to_vec());
        assert_eq!(
            build_tables(&AcpiConfig {
                cpus: 0,
                ..Default::default()
            })
            .unwrap_err(),
            ConfigError::BadCpuCount(0)
        );
        assert!(build_tables(&AcpiConfig {
            cpus: 255,
            ..Default::default()
        })
        .is_err());
        let many = AcpiConfig {
            virtio_mmio: (0..200)
                .map(|i| VirtioMmioDevice {
                    base: 0xd000_0000 + i * 0x200,
                    size: 0x200,
                    irq: 16,
                })
                .collect(),
            ..Default::default()
        };
        assert!(build_tables(&many).is_ok());
    }
}
