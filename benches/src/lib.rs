//! Criterion benchmarks for Quetzal (see `benches/`); this library holds the shared guest programs.
