//! Scratch: boots a bzImage with a minimal loader and a polled UART stub, to find CPU gaps.
use emu_core::{Emulator, InterruptDelivery, RunOptions, StopReason};
use std::sync::{Arc, Mutex};

struct Uart;
impl emu_mmu::BusDevice for Uart {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 5 {
            data[0] = 0x60;
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            use std::io::Write;
            let mut o = std::io::stdout();
            let _ = o.write_all(&data[..1]);
            let _ = o.flush();
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let image = std::fs::read(&args[1]).unwrap();
    let cmdline = args
        .get(2)
        .cloned()
        .unwrap_or("console=ttyS0 earlyprintk=serial,ttyS0,115200".into());
    let mem: u64 = 512 << 20;
    let mut emu = Emulator::new();
    emu.map_memory(0, mem).unwrap();
    emu.add_io_device(0x3f8, 8, Arc::new(Mutex::new(Uart)))
        .unwrap();
    emu.set_interrupt_delivery(InterruptDelivery::Guest);
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let kernel = &image[(setup_sects + 1) * 512..];
    let load = 0x100_0000u64;
    emu.write_memory(load, kernel).unwrap();
    let mut bp = vec![0u8; 4096];
    bp[0x1f1..0x290].copy_from_slice(&image[0x1f1..0x290]);
    bp[0x210] = 0xff;
    bp[0x211] |= 0x01;
    bp[0x228..0x22c].copy_from_slice(&0x20000u32.to_le_bytes());
    let e820: [(u64, u64, u32); 3] = [
        (0, 0x9fc00, 1),
        (0x9fc00, 0x100000 - 0x9fc00, 2),
        (0x100000, mem - 0x100000, 1),
    ];
    bp[0x1e8] = e820.len() as u8;
    for (k, (a, s, t)) in e820.iter().enumerate() {
        let o = 0x2d0 + 20 * k;
        bp[o..o + 8].copy_from_slice(&a.to_le_bytes());
        bp[o + 8..o + 16].copy_from_slice(&s.to_le_bytes());
        bp[o + 16..o + 20].copy_from_slice(&t.to_le_bytes());
    }
    emu.write_memory(0x7000, &bp).unwrap();
    let mut c = cmdline.into_bytes();
    c.push(0);
    emu.write_memory(0x20000, &c).unwrap();
    // GDT and identity-mapped page tables (4 GiB, 2 MiB pages).
    let gdt: [u64; 4] = [0, 0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff];
    for (k, d) in gdt.iter().enumerate() {
        emu.write_memory(0x500 + 8 * k as u64, &d.to_le_bytes())
            .unwrap();
    }
    emu.write_memory(0x9000, &(0xa000u64 | 3).to_le_bytes())
        .unwrap();
    for g in 0..4u64 {
        emu.write_memory(0xa000 + 8 * g, &((0xb000 + g * 0x1000) | 3).to_le_bytes())
            .unwrap();
        for e in 0..512u64 {
            let addr = (g << 30) | (e << 21);
            emu.write_memory(0xb000 + g * 0x1000 + 8 * e, &(addr | 0x83).to_le_bytes())
                .unwrap();
        }
    }
    {
        let cpu = emu.cpu_mut();
        cpu.sys.gdtr = emu_core::sysregs::TableRegister {
            base: 0x500,
            limit: 0x1f,
        };
        cpu.seg_sel = [0x18, 0x10, 0x18, 0x18, 0x18, 0x18];
        cpu.sys.cr0 = 0x8000_0033;
        cpu.sys.cr4 = 0x20;
        cpu.sys.cr3 = 0x9000;
        cpu.sys.efer = 0x500;
        let (a, b, c, d) = (cpu.sys.cr0, cpu.sys.cr3, cpu.sys.cr4, cpu.sys.efer);
        cpu.apply_paging(a, b, c, d).unwrap();
        cpu.regs[6] = 0x7000;
        cpu.update_mode();
    }
    let start = std::time::Instant::now();
    let mut rip = load + 0x200;
    loop {
        let stop = emu.run(
            rip,
            &RunOptions {
                timeout: Some(std::time::Duration::from_secs(60)),
                ..Default::default()
            },
        );
        let cpu = emu.cpu();
        eprintln!(
            "\n[{:?}] stop: {stop:x?} rip={:#x} icount={} cr2={:#x}",
            start.elapsed(),
            cpu.rip,
            cpu.icount,
            cpu.sys.cr2
        );
        match stop {
            StopReason::Timeout => {
                rip = cpu.rip;
                continue;
            }
            _ => break,
        }
    }
}
