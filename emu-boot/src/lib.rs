//! Kernel loaders and boot-protocol configurators for Quetzal machines.
//!
//! Nothing lives here yet. Loaders (`bzimage`, `elf` via goblin, `pvh`, `multiboot`) will
//! place an image into guest memory and return what they found; configurators will write
//! `boot_params`, the e820 map, the command line, the initrd and the ACPI tables. Loading
//! and configuring stay separate steps (`../shared/DESIGN.md`, section 5).
