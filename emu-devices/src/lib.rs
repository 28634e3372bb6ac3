//! Platform and VirtIO devices for Quetzal machines.
//!
//! Nothing lives here yet. This crate will hold the register state machines of the
//! platform devices (16550A UART, local APIC, IOAPIC, 8259 PIC, 8254 PIT, CMOS RTC,
//! HPET / ACPI PM timer, i8042, the debug-exit port), the VirtIO devices on a single
//! virtio-mmio transport (block, net, rng, console, balloon), and the software SIMT GPU.
//! Each device is reached through one small bus trait (`read(offset, &mut [u8])` /
//! `write(offset, &[u8])`) and has its interrupt line and output injected, following
//! `vm-superio`; see `../shared/DESIGN.md`, section 4.
