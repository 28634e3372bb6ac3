//! Loads Debian 12's stock kernels (cached by `test-images` under `$QUETZAL_CACHE` or
//! `~/.cache/quetzal`) through the full Linux boot path, when they are there; prints a
//! note and passes when they are not, so the suite runs on a fresh machine.

use std::path::PathBuf;

use emu_boot::acpi::AcpiConfig;
use emu_boot::bzimage::{self, SetupHeader, XLF_KERNEL_64};
use emu_boot::layout::ZERO_PAGE_ADDR;
use emu_boot::memory::SparseMemory;
use emu_boot::{boot, BootRequest, Protocol};

fn cache_dir() -> Option<PathBuf> {
    std::env::var_os("QUETZAL_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/quetzal")))
}

fn image(flavour: &str, file: &str) -> Option<Vec<u8>> {
    let path = cache_dir()?.join("images").join(flavour).join(file);
    match std::fs::read(&path) {
        Ok(b) => Some(b),
        Err(_) => {
            eprintln!(
                "note: {} absent; skipping (run test-images to fetch it)",
                path.display()
            );
            None
        }
    }
}

fn check(flavour: &str) {
    let Some(kernel) = image(flavour, "vmlinuz") else {
        return;
    };
    let initrd = image(flavour, "initramfs.cpio").unwrap_or_else(|| vec![0u8; 4096]);

    let hdr = SetupHeader::parse(&kernel).expect("Debian kernel header parses");
    assert!(hdr.version >= 0x020f, "protocol {:#x}", hdr.version);
    assert_ne!(hdr.xloadflags & XLF_KERNEL_64, 0);
    assert!(hdr.relocatable);
    assert!(hdr.init_size as u64 >= hdr.kernel_size());

    let mut mem = SparseMemory::new(512 << 20);
    let out = boot(
        &mut mem,
        &BootRequest {
            kernel: &kernel,
            initrd: Some(&initrd),
            cmdline: "console=ttyS0 earlyprintk=ttyS0 panic=-1",
            acpi: Some(AcpiConfig {
                cpus: 2,
                ..Default::default()
            }),
        },
    )
    .expect("Debian kernel boots through emu-boot");
    assert_eq!(out.protocol, Protocol::Linux64);
    assert_eq!(out.entry.rip, hdr.pref_address + 0x200);
    assert_eq!(out.entry.rsi, ZERO_PAGE_ADDR);
    // The protected-mode kernel is where the entry point says.
    let setup = hdr.setup_size() as usize;
    assert_eq!(
        mem.read(hdr.pref_address, 4096),
        kernel[setup..setup + 4096]
    );
    // The initrd sits above the kernel's init_size and below initrd_addr_max.
    let ird = out.initrd.unwrap();
    assert!(ird.addr >= hdr.pref_address + hdr.init_size as u64);
    assert!(ird.addr + ird.size - 1 <= hdr.initrd_addr_max as u64);
    assert_eq!(mem.read(ird.addr, 6), initrd[..6]);
    // boot_params kept the kernel's header and got our fields.
    assert_eq!(mem.read(ZERO_PAGE_ADDR + 0x202, 4), b"HdrS");
    assert_eq!(mem.read_u32(ZERO_PAGE_ADDR + 0x218) as u64, ird.addr);
    eprintln!(
        "{flavour}: protocol {}.{:02}, pref {:#x}, init_size {:#x}, initrd at {:#x}",
        hdr.version >> 8,
        hdr.version & 0xff,
        hdr.pref_address,
        hdr.init_size,
        ird.addr
    );

    // Truncating the real image is caught.
    let cut = &kernel[..kernel.len() / 2];
    let mut mem = SparseMemory::new(512 << 20);
    assert!(matches!(
        bzimage::load(&mut mem, cut),
        Err(bzimage::Error::Truncated { .. })
    ));
}

#[test]
fn debian_cloud_kernel_loads() {
    check("cloud");
}

#[test]
fn debian_generic_kernel_loads() {
    check("generic");
}
