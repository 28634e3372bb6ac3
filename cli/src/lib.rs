//! Command-line front ends for Quetzal.
//!
//! Nothing lives here yet. It will hold `quetzal`, which boots a kernel with QEMU's flag
//! spellings (`-kernel`, `-initrd`, `-append`, `-m`, `-smp`, `-nographic`, ...), and
//! `qctl`, the kubectl-style manager for VMs, nodes, tasks and the brain.
