//! Firmware for Quetzal machines: a ROM that takes a CPU from the reset vector through
//! protected mode into 64-bit long mode and calls a payload.
//!
//! It is assembled at run time with iced-x86's code assembler by [`rom`], from a
//! [`Config`] whose values are baked into the code. The platform maps the image's
//! [`ROM_SIZE`] bytes at [`ROM_BASE`], the top 64 KiB of the 4 GiB physical space, so
//! the first fetch after reset, at physical 0xFFFF_FFF0, lands on the
//! [reset vector](layout::RESET_VECTOR).
//!
//! ```
//! let config = firmware::Config { payload_entry: 0x20_0000, ..Default::default() };
//! let image = firmware::rom(&config).unwrap();
//! assert_eq!(image.len(), firmware::ROM_SIZE);
//! // emu.map_memory(firmware::ROM_BASE, firmware::ROM_SIZE as u64)?;
//! // emu.write_memory(firmware::ROM_BASE, &image)?; load the payload; emu.reset(); ...
//! ```
//!
//! # The path
//!
//! 1. **Reset vector** (ROM offset 0xFFF0, CS:IP = F000:FFF0 with CS base 0xFFFF_0000): a
//!    near jump to the real-mode stage. Nothing here changes CS, so every 16-bit offset
//!    is a ROM offset.
//! 2. **Real mode** ([`layout::REAL_MODE`]): CLI, CLD, debug marker [`marker::REAL_MODE`];
//!    LGDT and LIDT with 32-bit operands (so the GDT's base can be 0xFFFF_xxxx) through
//!    CS-relative operands; CR0.PE set (and CD/NW cleared); far JMP ptr16:32 to the flat
//!    32-bit code segment.
//! 3. **32-bit protected mode** ([`layout::PROTECTED_MODE`]): DS, ES, FS, GS, SS loaded
//!    with the flat data segment; marker [`marker::PROTECTED_MODE`]; identity-mapping
//!    page tables built in RAM at [`Config::page_tables`]; CR4.PAE (with OSFXSR and
//!    OSXMMEXCPT), CR3, EFER.LME through WRMSR, CR0.PG (with MP and NE): compatibility
//!    mode; far JMP to the 64-bit code segment.
//! 4. **64-bit mode** ([`layout::LONG_MODE`]): data segments reloaded, RSP set, marker
//!    [`marker::LONG_MODE`], general registers cleared, CALL to the payload. If the
//!    payload returns, the firmware halts for good (CLI; HLT in a loop).
//!
//! # Handoff contract
//!
//! At the payload's first instruction, at [`Config::payload_entry`]:
//!
//! - **Mode**: 64-bit long mode, CPL 0. CS = [`CODE64_SELECTOR`]; DS, ES, FS, GS and SS =
//!   [`DATA_SELECTOR`] (flat, base 0; FS and GS bases 0). The GDT ([`GDT`], in the ROM at
//!   [`layout::GDT`]) stays valid while the ROM stays mapped; a payload that unmaps or
//!   overwrites the ROM loads its own GDT first.
//! - **Paging**: 4-level, CR3 = [`Config::page_tables`]; the first
//!   [`Config::identity_map_gib`] GiB of linear addresses are identity-mapped with 2 MiB
//!   pages, present, writable, supervisor, executable (EFER.NXE is clear), cacheable.
//!   The tables occupy [`Config::page_tables_size`] bytes of RAM: a PML4, one PDPT,
//!   then one page directory per GiB. Nothing else is mapped.
//! - **Control registers**: CR0 = PG | NE | ET | MP | PE (caches on, WP off);
//!   CR4 = PAE | OSFXSR | OSXMMEXCPT (so SSE code runs); EFER = LME | LMA.
//! - **Registers**: RSP = [`Config::stack_top`] − 8, where the firmware's return address
//!   is (the payload is entered as a function call, so the System V stack alignment
//!   holds); every other general register is 0. RFLAGS.IF = 0 and DF = 0 (interrupts
//!   stay disabled); other flags are unspecified.
//! - **IDT**: limit 0 (no entries), so any exception before the payload loads its own IDT
//!   ends in a triple fault rather than a jump through garbage. Interrupts are disabled
//!   and no interrupt controller has been touched.
//! - **Memory**: the firmware wrote only the page tables and the 8-byte return address
//!   below [`Config::stack_top`]. It needs RAM there; everything else is the
//!   payload's (the firmware neither loads nor checks it).
//! - **Debug port**: with [`Config::debug_port`] set, the firmware writes one byte per
//!   stage to it, in order: [`marker::REAL_MODE`], [`marker::PROTECTED_MODE`],
//!   [`marker::LONG_MODE`] (`R`, `P`, `L`; the last just before the call). Port 0xE9 is
//!   the Bochs/QEMU debugcon convention.

use iced_x86::code_asm::*;
use iced_x86::{Code, Instruction, MemoryOperand, Register};

/// Physical (and, once paging is on, linear) address of the ROM's first byte.
pub const ROM_BASE: u64 = 0xffff_0000;

/// Size of the ROM image [`rom`] returns: it ends at the 4 GiB boundary.
pub const ROM_SIZE: usize = 0x1_0000;

/// GDT selector of the flat 32-bit code segment (the protected-mode stage).
pub const CODE32_SELECTOR: u16 = 0x08;
/// GDT selector of the flat data segment (all data segment registers at handoff).
pub const DATA_SELECTOR: u16 = 0x10;
/// GDT selector of the 64-bit code segment (CS at handoff).
pub const CODE64_SELECTOR: u16 = 0x18;

/// The GDT in the ROM, indexed by selector / 8. Every descriptor is DPL 0, base 0,
/// limit 4 GiB, and has its accessed bit already set, so loading it never writes to the
/// ROM (which a platform may map read-only).
pub const GDT: [u64; 4] = [
    0,
    // Code, execute/read, D = 1 (32-bit), G = 1.
    0x00cf_9b00_0000_ffff,
    // Data, read/write, B = 1, G = 1.
    0x00cf_9300_0000_ffff,
    // Code, execute/read, L = 1 and D = 0 (64-bit), G = 1.
    0x00af_9b00_0000_ffff,
];

/// Where each part of the firmware lives, as offsets into the ROM (add [`ROM_BASE`] for
/// the physical address). The code sits high in the ROM so that the reset vector reaches
/// it with a plain backward near jump; every byte not listed here is 0xFF (erased flash,
/// which decodes as an invalid instruction if anything strays into it).
pub mod layout {
    /// The GDT ([`crate::GDT`]), 8-byte aligned.
    pub const GDT: usize = 0xf000;
    /// The GDTR image LGDT loads: limit (u16), then base (u32).
    pub const GDTR: usize = 0xf040;
    /// The IDTR image LIDT loads: limit 0, base 0.
    pub const IDTR: usize = 0xf048;
    /// The 16-bit real-mode stage.
    pub const REAL_MODE: usize = 0xf100;
    /// The 32-bit protected-mode stage.
    pub const PROTECTED_MODE: usize = 0xf200;
    /// The 64-bit stage, which calls the payload.
    pub const LONG_MODE: usize = 0xf400;
    /// The reset vector: the CPU's first instruction (physical 0xFFFF_FFF0).
    pub const RESET_VECTOR: usize = 0xfff0;
}

/// The bytes the firmware writes to [`Config::debug_port`], one per stage.
pub mod marker {
    /// In real mode, right after the reset vector.
    pub const REAL_MODE: u8 = b'R';
    /// In 32-bit protected mode, before building the page tables.
    pub const PROTECTED_MODE: u8 = b'P';
    /// In 64-bit mode, just before calling the payload.
    pub const LONG_MODE: u8 = b'L';
}

/// What the firmware does, baked into the ROM by [`rom`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Where the payload's first instruction is; the firmware CALLs it in 64-bit mode.
    /// It must be canonical and should be in the identity-mapped range (else the call
    /// page-faults, and with the empty IDT the CPU shuts down). Default 0x10_0000 (1 MiB).
    pub payload_entry: u64,
    /// The stack pointer before the call to the payload: 16-byte aligned, within the
    /// identity map, with writable RAM just below it. Default 0x8_0000.
    pub stack_top: u64,
    /// Physical address of the page tables the firmware builds: 4 KiB aligned,
    /// [`Config::page_tables_size`] bytes of RAM below 4 GiB. Default 0x9000.
    pub page_tables: u32,
    /// How many GiB, from address 0, the identity map covers: at least 4 (the ROM runs
    /// from the top of the fourth GiB), at most 512 (one PDPT). Default 4.
    pub identity_map_gib: u32,
    /// The port the stage markers ([`marker`]) are written to, or `None` for silence.
    /// Default `Some(0xE9)`.
    pub debug_port: Option<u16>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            payload_entry: 0x10_0000,
            stack_top: 0x8_0000,
            page_tables: 0x9000,
            identity_map_gib: 4,
            debug_port: Some(0xe9),
        }
    }
}

impl Config {
    /// Bytes of RAM the page tables take from [`Config::page_tables`]: a PML4, a PDPT and
    /// one page directory per identity-mapped GiB.
    pub fn page_tables_size(&self) -> u64 {
        (2 + u64::from(self.identity_map_gib)) * PAGE_SIZE
    }

    /// Checks the configuration against the rules on its fields.
    ///
    /// # Errors
    ///
    /// The first rule a field breaks, as a [`ConfigError`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_IDENTITY_MAP_GIB..=MAX_IDENTITY_MAP_GIB).contains(&self.identity_map_gib) {
            return Err(ConfigError::IdentityMapSize(self.identity_map_gib));
        }
        let tables = u64::from(self.page_tables);
        if tables % PAGE_SIZE != 0 || tables + self.page_tables_size() > ROM_BASE {
            return Err(ConfigError::PageTables(self.page_tables));
        }
        let mapped = u64::from(self.identity_map_gib) << 30;
        if self.stack_top % 16 != 0 || self.stack_top < 16 || self.stack_top > mapped {
            return Err(ConfigError::StackTop(self.stack_top));
        }
        // Canonical for 48-bit linear addresses: bits 63..47 all equal.
        if ((self.payload_entry as i64) << 16 >> 16) as u64 != self.payload_entry {
            return Err(ConfigError::PayloadEntry(self.payload_entry));
        }
        Ok(())
    }
}

/// Why [`rom`] refused a [`Config`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// [`Config::identity_map_gib`] is outside 4..=512.
    #[error("identity map of {0} GiB: must be 4..=512")]
    IdentityMapSize(u32),
    /// [`Config::page_tables`] is not 4 KiB aligned, or the tables would reach the ROM.
    #[error("page tables at {0:#x}: must be 4 KiB aligned and end below the ROM")]
    PageTables(u32),
    /// [`Config::stack_top`] is not 16-byte aligned or not inside the identity map.
    #[error("stack top {0:#x}: must be 16-byte aligned and inside the identity map")]
    StackTop(u64),
    /// [`Config::payload_entry`] is not a canonical address.
    #[error("payload entry {0:#x} is not canonical")]
    PayloadEntry(u64),
}

/// Assembles the firmware ROM for `config`: [`ROM_SIZE`] bytes, to be mapped at
/// [`ROM_BASE`]. See the [crate docs](crate) for what it does and the state it hands
/// the payload.
///
/// # Errors
///
/// [`ConfigError`] when `config` breaks a rule on its fields.
pub fn rom(config: &Config) -> Result<Vec<u8>, ConfigError> {
    config.validate()?;
    let mut image = vec![0xff; ROM_SIZE];
    let mut place = |offset: usize, end: usize, bytes: &[u8]| {
        // The stages are small and fixed apart from a few immediates; outgrowing a slot is
        // a bug in this file, caught by every test that builds a ROM.
        assert!(
            offset + bytes.len() <= end,
            "firmware part at {offset:#x} outgrew its slot"
        );
        image[offset..offset + bytes.len()].copy_from_slice(bytes);
    };

    let gdt: Vec<u8> = GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
    place(layout::GDT, layout::GDTR, &gdt);
    let gdt_limit = (GDT.len() * 8 - 1) as u16;
    let gdt_base = (ROM_BASE + layout::GDT as u64) as u32;
    let mut gdtr = gdt_limit.to_le_bytes().to_vec();
    gdtr.extend(gdt_base.to_le_bytes());
    place(layout::GDTR, layout::IDTR, &gdtr);
    place(layout::IDTR, layout::REAL_MODE, &[0; 6]);

    place(
        layout::REAL_MODE,
        layout::PROTECTED_MODE,
        &real_mode_stage(config),
    );
    place(
        layout::PROTECTED_MODE,
        layout::LONG_MODE,
        &protected_mode_stage(config),
    );
    place(
        layout::LONG_MODE,
        layout::RESET_VECTOR,
        &long_mode_stage(config),
    );
    place(layout::RESET_VECTOR, ROM_SIZE, &reset_vector());
    Ok(image)
}

const PAGE_SIZE: u64 = 0x1000;
const MIN_IDENTITY_MAP_GIB: u32 = 4;
const MAX_IDENTITY_MAP_GIB: u32 = 512;

// Architectural bits the stages set or clear.
const CR0_PE: u32 = 1 << 0;
const CR0_MP: u32 = 1 << 1;
const CR0_NE: u32 = 1 << 5;
const CR0_NW: u32 = 1 << 29;
const CR0_CD: u32 = 1 << 30;
const CR0_PG: u32 = 1 << 31;
const CR4_PAE: u32 = 1 << 5;
const CR4_OSFXSR: u32 = 1 << 9;
const CR4_OSXMMEXCPT: u32 = 1 << 10;
const MSR_EFER: u32 = 0xc000_0080;
const EFER_LME: u32 = 1 << 8;
/// Page-table entry bits: present, writable; PS makes a PDE map a 2 MiB page.
const PTE_PRESENT_WRITABLE: u32 = 0b11;
const PDE_PS: u32 = 1 << 7;

/// Unwraps an assembler result. Every instruction below is valid in its stage's
/// bitness, so an error is a bug here, which every ROM-building test would hit.
fn ok<T>(result: Result<T, IcedError>) -> T {
    result.expect("firmware assembly")
}

/// Writes the stage `marker` to the debug port, if there is one (clobbers DX and AL).
fn report(a: &mut CodeAssembler, config: &Config, marker: u8) {
    if let Some(port) = config.debug_port {
        ok(a.mov(dx, port as u32));
        ok(a.mov(al, marker as u32));
        ok(a.out(dx, al));
    }
}

/// The reset vector: a near jump back to the real-mode stage. It needs only IP-relative
/// addressing, so it works with whatever the CS base is (0xFFFF_0000 after reset).
fn reset_vector() -> Vec<u8> {
    let mut a = ok(CodeAssembler::new(16));
    ok(a.jmp(layout::REAL_MODE as u64));
    // Not reached; stops a runaway if someone patches the jump.
    ok(a.hlt());
    ok(a.assemble(layout::RESET_VECTOR as u64))
}

/// Real mode: IP is the ROM offset (CS base 0xFFFF_0000, never reloaded here), so the
/// descriptor-table images are addressed as CS:offset. DS is not touched: its reset base
/// (0) would not reach the ROM.
fn real_mode_stage(config: &Config) -> Vec<u8> {
    let mut a = ok(CodeAssembler::new(16));
    ok(a.cli());
    ok(a.cld());
    report(&mut a, config, marker::REAL_MODE);
    // The 0x66-prefixed forms load a 32-bit base; the 16-bit forms would keep only 24
    // bits of it, and the GDT is at 0xFFFF_Fxxx.
    let cs_relative = |offset: usize| {
        MemoryOperand::with_base_displ_size_bcst_seg(
            Register::None,
            offset as i64,
            2,
            false,
            Register::CS,
        )
    };
    ok(a.add_instruction(ok(Instruction::with1(
        Code::Lgdt_m1632,
        cs_relative(layout::GDTR),
    ))));
    ok(a.add_instruction(ok(Instruction::with1(
        Code::Lidt_m1632,
        cs_relative(layout::IDTR),
    ))));
    ok(a.mov(eax, cr0));
    ok(a.and(eax, !(CR0_CD | CR0_NW)));
    ok(a.or(eax, CR0_PE));
    ok(a.mov(cr0, eax));
    // Straight to the far jump, as the SDM asks: it loads CS from the new GDT and leaves
    // the real-mode prefetch behind. ptr16:32 because the target is above 64 KiB.
    let target = (ROM_BASE + layout::PROTECTED_MODE as u64) as u32;
    ok(a.add_instruction(ok(Instruction::with_far_branch(
        Code::Jmp_ptr1632,
        CODE32_SELECTOR,
        target,
    ))));
    ok(a.assemble(layout::REAL_MODE as u64))
}

/// 32-bit protected mode: flat segments, the identity-mapping page tables, then PAE,
/// CR3, EFER.LME and CR0.PG (compatibility mode) and the jump to 64-bit code.
fn protected_mode_stage(config: &Config) -> Vec<u8> {
    let mut a = ok(CodeAssembler::new(32));
    ok(a.mov(ax, DATA_SELECTOR as u32));
    for sreg in [ds, es, fs, gs, ss] {
        ok(a.mov(sreg, ax));
    }
    report(&mut a, config, marker::PROTECTED_MODE);

    let tables = config.page_tables;
    let pml4 = tables;
    let pdpt = tables + PAGE_SIZE as u32;
    let first_pd = tables + 2 * PAGE_SIZE as u32;
    // Clear every table (RAM contents are unknown), then fill in the present entries.
    ok(a.mov(edi, tables));
    ok(a.mov(ecx, (config.page_tables_size() / 4) as u32));
    ok(a.xor(eax, eax));
    ok(a.rep().stosd());
    ok(a.mov(dword_ptr(pml4), pdpt | PTE_PRESENT_WRITABLE));
    // PDPT[i] -> page directory i.
    ok(a.mov(edi, pdpt));
    ok(a.mov(eax, first_pd | PTE_PRESENT_WRITABLE));
    ok(a.mov(ecx, config.identity_map_gib));
    // The loops count with SUB, which keeps the stage to encodings every mode shares:
    // the one-byte DEC r32 exists only outside 64-bit mode (0x48..0x4F are REX there).
    let mut pdpt_loop = a.create_label();
    ok(a.set_label(&mut pdpt_loop));
    ok(a.mov(dword_ptr(edi), eax));
    ok(a.add(edi, 8));
    ok(a.add(eax, PAGE_SIZE as u32));
    ok(a.sub(ecx, 1));
    ok(a.jnz(pdpt_loop));
    // The page directories, back to back: entry j maps the 2 MiB page at j << 21, a
    // 64-bit value built in EDX:EAX (the carry moves into EDX above 4 GiB).
    ok(a.mov(edi, first_pd));
    ok(a.mov(eax, PDE_PS | PTE_PRESENT_WRITABLE));
    ok(a.xor(edx, edx));
    ok(a.mov(ecx, config.identity_map_gib * 512));
    let mut pd_loop = a.create_label();
    ok(a.set_label(&mut pd_loop));
    ok(a.mov(dword_ptr(edi), eax));
    ok(a.mov(dword_ptr(edi + 4), edx));
    ok(a.add(edi, 8));
    ok(a.add(eax, 0x20_0000));
    ok(a.adc(edx, 0));
    ok(a.sub(ecx, 1));
    ok(a.jnz(pd_loop));

    ok(a.mov(eax, cr4));
    ok(a.or(eax, CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT));
    ok(a.mov(cr4, eax));
    ok(a.mov(eax, pml4));
    ok(a.mov(cr3, eax));
    ok(a.mov(ecx, MSR_EFER));
    ok(a.rdmsr());
    ok(a.or(eax, EFER_LME));
    ok(a.wrmsr());
    // PG with LME on activates long mode (EFER.LMA); CS is still the 32-bit segment, so
    // this runs on in compatibility mode until the far jump loads the 64-bit one.
    ok(a.mov(eax, cr0));
    ok(a.or(eax, CR0_PG | CR0_NE | CR0_MP));
    ok(a.mov(cr0, eax));
    let target = (ROM_BASE + layout::LONG_MODE as u64) as u32;
    ok(a.add_instruction(ok(Instruction::with_far_branch(
        Code::Jmp_ptr1632,
        CODE64_SELECTOR,
        target,
    ))));
    ok(a.assemble(ROM_BASE + layout::PROTECTED_MODE as u64))
}

/// 64-bit mode: the stack, cleared registers and the call to the payload.
fn long_mode_stage(config: &Config) -> Vec<u8> {
    let mut a = ok(CodeAssembler::new(64));
    // The selectors are already flat data, but their hidden parts came from protected
    // mode; reloading gives the payload exactly the 64-bit-mode state the contract states.
    ok(a.mov(ax, DATA_SELECTOR as u32));
    for sreg in [ds, es, fs, gs, ss] {
        ok(a.mov(sreg, ax));
    }
    ok(a.mov(rsp, config.stack_top));
    report(&mut a, config, marker::LONG_MODE);
    for r in [
        eax, ecx, edx, ebx, ebp, esi, edi, r8d, r9d, r10d, r11d, r12d, r13d, r14d, r15d,
    ] {
        ok(a.xor(r, r));
    }
    // The entry point comes from memory, so no register has to hold it.
    let mut entry = a.create_label();
    ok(a.call(qword_ptr(entry)));
    let mut halt = a.create_label();
    ok(a.set_label(&mut halt));
    ok(a.cli());
    ok(a.hlt());
    ok(a.jmp(halt));
    ok(a.set_label(&mut entry));
    ok(a.dq(&[config.payload_entry]));
    ok(a.assemble(ROM_BASE + layout::LONG_MODE as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic};

    /// Decodes the instructions at ROM `offset` in `bitness`, with IPs as the code sees
    /// them (ROM offsets in real mode, physical addresses afterwards), up to `until`.
    fn disassemble(image: &[u8], bitness: u32, offset: usize, until: usize) -> Vec<Instruction> {
        let ip = if bitness == 16 {
            offset as u64
        } else {
            ROM_BASE + offset as u64
        };
        let mut decoder =
            Decoder::with_ip(bitness, &image[offset..until], ip, DecoderOptions::NONE);
        let mut out = Vec::new();
        while decoder.can_decode() {
            let insn = decoder.decode();
            if insn.is_invalid() {
                break; // the 0xFF filler after the stage
            }
            out.push(insn);
        }
        out
    }

    fn default_rom() -> Vec<u8> {
        rom(&Config::default()).unwrap()
    }

    #[test]
    fn rom_is_exactly_rom_size_and_ends_at_4_gib() {
        assert_eq!(default_rom().len(), ROM_SIZE);
        assert_eq!(ROM_BASE + ROM_SIZE as u64, 1 << 32);
    }

    #[test]
    fn reset_vector_is_a_near_jump_to_the_real_mode_stage() {
        let image = default_rom();
        let code = disassemble(&image, 16, layout::RESET_VECTOR, ROM_SIZE);
        let jump = code[0];
        assert_eq!(jump.mnemonic(), Mnemonic::Jmp);
        assert_eq!(jump.flow_control(), FlowControl::UnconditionalBranch);
        assert!(
            jump.is_jmp_short_or_near(),
            "a far jump would reload CS: {jump}"
        );
        assert_eq!(jump.near_branch_target(), layout::REAL_MODE as u64);
    }

    #[test]
    fn real_mode_stage_loads_the_gdt_with_a_32_bit_base_and_far_jumps_to_code32() {
        let image = default_rom();
        let code = disassemble(&image, 16, layout::REAL_MODE, layout::PROTECTED_MODE);
        assert_eq!(code[0].mnemonic(), Mnemonic::Cli);
        assert_eq!(code[1].mnemonic(), Mnemonic::Cld);
        let lgdt = code
            .iter()
            .find(|i| i.mnemonic() == Mnemonic::Lgdt)
            .unwrap();
        assert_eq!(
            lgdt.code(),
            Code::Lgdt_m1632,
            "needs the operand-size prefix"
        );
        assert_eq!(lgdt.memory_segment(), Register::CS);
        assert_eq!(lgdt.memory_displacement64(), layout::GDTR as u64);
        let far = code.last().unwrap();
        assert_eq!(far.code(), Code::Jmp_ptr1632);
        assert_eq!(far.far_branch_selector(), CODE32_SELECTOR);
        assert_eq!(
            u64::from(far.far_branch32()),
            ROM_BASE + layout::PROTECTED_MODE as u64
        );
        let to_cr0 = &code[code.len() - 2];
        assert_eq!(
            to_cr0.op0_register(),
            Register::CR0,
            "PE is set right before the jump"
        );
    }

    #[test]
    fn gdtr_image_points_at_the_gdt_the_selectors_index() {
        let image = default_rom();
        let limit = u16::from_le_bytes(image[layout::GDTR..][..2].try_into().unwrap());
        let base = u32::from_le_bytes(image[layout::GDTR + 2..][..4].try_into().unwrap());
        assert_eq!(u64::from(base), ROM_BASE + layout::GDT as u64);
        assert_eq!(usize::from(limit) + 1, GDT.len() * 8);
        let descriptor = |selector: u16| {
            let at = layout::GDT + usize::from(selector);
            u64::from_le_bytes(image[at..at + 8].try_into().unwrap())
        };
        for selector in [0, CODE32_SELECTOR, DATA_SELECTOR, CODE64_SELECTOR] {
            assert_eq!(descriptor(selector), GDT[usize::from(selector) / 8]);
        }
        let (present, code, l, d) = (1 << 47, 1 << 43, 1 << 53, 1 << 54);
        let code32 = descriptor(CODE32_SELECTOR);
        assert!(code32 & present != 0 && code32 & code != 0 && code32 & d != 0 && code32 & l == 0);
        let data = descriptor(DATA_SELECTOR);
        assert!(data & present != 0 && data & code == 0);
        let code64 = descriptor(CODE64_SELECTOR);
        assert!(code64 & present != 0 && code64 & code != 0 && code64 & l != 0 && code64 & d == 0);
        let accessed = 1 << 40;
        assert!(
            GDT[1..].iter().all(|d| d & accessed != 0),
            "no descriptor write to the ROM"
        );
        let idtr = &image[layout::IDTR..layout::IDTR + 6];
        assert_eq!(idtr, [0; 6], "an empty IDT");
    }

    #[test]
    fn protected_mode_stage_enables_long_mode_and_far_jumps_to_code64() {
        let image = default_rom();
        let code = disassemble(&image, 32, layout::PROTECTED_MODE, layout::LONG_MODE);
        let far = code.last().unwrap();
        assert_eq!(far.code(), Code::Jmp_ptr1632);
        assert_eq!(far.far_branch_selector(), CODE64_SELECTOR);
        assert_eq!(
            u64::from(far.far_branch32()),
            ROM_BASE + layout::LONG_MODE as u64
        );
        let mnemonics: Vec<Mnemonic> = code.iter().map(|i| i.mnemonic()).collect();
        let wrmsr = mnemonics
            .iter()
            .position(|&m| m == Mnemonic::Wrmsr)
            .unwrap();
        let to_cr = |cr| {
            code.iter()
                .rposition(|i| i.mnemonic() == Mnemonic::Mov && i.op0_register() == cr)
        };
        let (set_cr4, set_cr3, set_cr0) = (
            to_cr(Register::CR4).unwrap(),
            to_cr(Register::CR3).unwrap(),
            to_cr(Register::CR0).unwrap(),
        );
        assert!(
            set_cr4 < set_cr0 && set_cr3 < set_cr0 && wrmsr < set_cr0,
            "PAE, CR3 and LME come before PG"
        );
    }

    #[test]
    fn long_mode_stage_calls_the_configured_payload_entry() {
        let config = Config {
            payload_entry: 0x20_3040,
            stack_top: 0x7_0000,
            ..Config::default()
        };
        let image = rom(&config).unwrap();
        let code = disassemble(&image, 64, layout::LONG_MODE, layout::RESET_VECTOR);
        let set_rsp = code
            .iter()
            .find(|i| i.op0_register() == Register::RSP)
            .unwrap();
        assert_eq!(set_rsp.immediate(1), 0x7_0000);
        let call = code
            .iter()
            .find(|i| i.mnemonic() == Mnemonic::Call)
            .unwrap();
        assert!(call.is_ip_rel_memory_operand());
        let slot = (call.ip_rel_memory_address() - ROM_BASE) as usize;
        assert_eq!(
            u64::from_le_bytes(image[slot..slot + 8].try_into().unwrap()),
            0x20_3040
        );
    }

    #[test]
    fn debug_port_markers_follow_the_config() {
        let outs = |config: &Config| {
            let image = rom(config).unwrap();
            [
                (16, layout::REAL_MODE, layout::PROTECTED_MODE),
                (32, layout::PROTECTED_MODE, layout::LONG_MODE),
                (64, layout::LONG_MODE, layout::RESET_VECTOR),
            ]
            .into_iter()
            .flat_map(|(bitness, from, to)| disassemble(&image, bitness, from, to))
            .filter(|i| i.mnemonic() == Mnemonic::Out)
            .count()
        };
        assert_eq!(outs(&Config::default()), 3);
        assert_eq!(
            outs(&Config {
                debug_port: None,
                ..Config::default()
            }),
            0
        );
    }

    #[test]
    fn unused_rom_is_erased_flash() {
        let image = default_rom();
        assert!(image[..layout::GDT].iter().all(|&b| b == 0xff));
    }

    #[test]
    fn bad_configs_are_refused() {
        let bad = |change: fn(&mut Config)| {
            let mut config = Config::default();
            change(&mut config);
            rom(&config).unwrap_err()
        };
        assert_eq!(
            bad(|c| c.identity_map_gib = 3),
            ConfigError::IdentityMapSize(3)
        );
        assert_eq!(
            bad(|c| c.identity_map_gib = 513),
            ConfigError::IdentityMapSize(513)
        );
        assert_eq!(
            bad(|c| c.page_tables = 0x9800),
            ConfigError::PageTables(0x9800)
        );
        assert_eq!(
            bad(|c| c.page_tables = 0xffff_a000),
            ConfigError::PageTables(0xffff_a000)
        );
        assert_eq!(
            bad(|c| c.stack_top = 0x8_0008),
            ConfigError::StackTop(0x8_0008)
        );
        assert_eq!(
            bad(|c| c.stack_top = 5 << 30),
            ConfigError::StackTop(5 << 30)
        );
        assert_eq!(
            bad(|c| c.payload_entry = 1 << 47),
            ConfigError::PayloadEntry(1 << 47)
        );
    }

    #[test]
    fn the_largest_identity_map_still_fits() {
        let config = Config {
            identity_map_gib: 512,
            stack_top: 0x1_0000_0000,
            ..Config::default()
        };
        assert_eq!(config.page_tables_size(), 514 * 4096);
        assert_eq!(rom(&config).unwrap().len(), ROM_SIZE);
    }
}
