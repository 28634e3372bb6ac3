//! The Quetzal "brain": resource policy for workloads.
//!
//! Nothing lives here yet. It will choose how many vCPUs, how much memory and how many
//! GPU threads each workload gets, learn from measured outcomes, and keep that knowledge
//! on disk. The mechanism crates expose knobs and metrics; only this crate decides sizing.
