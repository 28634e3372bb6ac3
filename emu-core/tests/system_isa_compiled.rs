//! The `system_isa` programs again, with every block compiled by the JIT tier the first
//! time it runs whole (`common::emulator` picks the tier from this target's name): faults,
//! interrupt delivery, privilege changes and mode switches in and around compiled code
//! must behave exactly as in the interpreter.

#[path = "system_isa/main.rs"]
mod system_isa;
