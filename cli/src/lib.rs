//! Command-line front ends for Quetzal: `quetzal`, which boots a kernel with QEMU's flag
//! spellings (`-kernel`, `-initrd`, `-append`, `-m`, `-smp`, `-nographic`, ...), and later
//! `qctl`, the kubectl-style manager for VMs, nodes, tasks and the brain.

pub mod qemu_args;
pub mod terminal;
