//! Shared guest programs for Quetzal's Criterion benchmarks (`cargo bench -p
//! quetzal-benches`). The benchmarks themselves are in `benches/`.

#[path = "../programs/mips_loop.rs"]
pub mod mips_loop;
