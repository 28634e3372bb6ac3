//! Firmware for Quetzal machines.
//!
//! Nothing lives here yet. It will hold a minimal firmware, assembled in Rust with
//! iced-x86's code assembler, that takes a CPU from the reset vector through protected
//! mode into long mode and jumps to a payload, for images that need firmware.
