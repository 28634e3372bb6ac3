//! Platform and VirtIO devices for Quetzal machines.
//!
//! The register state machines of the platform devices (16550A UART, local APIC, IOAPIC,
//! 8259 PIC, 8254 PIT, CMOS RTC, HPET / ACPI PM timer, i8042, the debug-exit port), and
//! later the VirtIO devices on a single virtio-mmio transport and the software SIMT GPU.
//! Each device is reached through one small bus trait (`emu_mmu::BusDevice`:
//! `read(offset, &mut [u8])` / `write(offset, &[u8])`) and has its interrupt line
//! ([`irq::IrqLine`]) and output injected, following `vm-superio`; time comes from the
//! machine's one `emu_mmu::clock::VirtualClock`. See `../shared/DESIGN.md`, section 4.

pub mod acpi_pm;
pub mod hpet;
pub mod i8042;
pub mod ioapic;
pub mod irq;
pub mod lapic;
pub mod legacy;
pub mod pic;
pub mod pit;
pub mod ports;
pub mod rtc;
pub mod serial;
pub mod virtio;
