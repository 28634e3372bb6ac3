//! Quetzal CPU.
