//! Differential tests against the host CPU (design notes section 7, layer 2): each case runs
//! natively and in emu-core from the same state and the results are compared. See
//! `harness.rs` for how, `int.rs` for the general-purpose cases, `sse.rs` for SSE, `x87.rs` for the
//! x87 FPU and FXSAVE/FXRSTOR.

mod harness;
mod int;
mod sse;
mod x87;

use std::collections::BTreeSet;

use emu_core::insn::OpTable;
use iced_x86::Code;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Every opcode-table entry must be exercised by at least one differential case (or be in
/// [`int::EXCLUDED`], the instructions whose result the host cannot show, tested in
/// `tests/non_differential.rs` instead). Cases are sampled from every form of `int.rs` and
/// `sse.rs` and decoded; a handler added without cases fails here. Encodings that exist
/// only outside 64-bit mode cannot run in the 64-bit host process; the `system_isa`
/// programs in 16- and 32-bit code (`tests/system_isa/modes.rs`) cover them.
#[test]
fn every_table_entry_has_differential_coverage() {
    let mut covered = BTreeSet::new();
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    for form in int::forms()
        .into_iter()
        .chain(sse::forms())
        .chain(x87::forms())
    {
        for _ in 0..8 {
            let case = form
                .cases
                .new_tree(&mut runner)
                .expect("form generates a case")
                .current();
            covered.extend(
                harness::decoded_codes(&case.code)
                    .into_iter()
                    .map(|c| c as u32),
            );
        }
    }
    let excluded: BTreeSet<u32> = int::EXCLUDED.iter().map(|&c| c as u32).collect();
    let missing: Vec<Code> = OpTable::global()
        .codes()
        .filter(|&c| int::runs_in_64bit_host(c))
        .filter(|&c| !covered.contains(&(c as u32)) && !excluded.contains(&(c as u32)))
        .collect();
    assert!(
        missing.is_empty(),
        "{} opcode-table entries have no differential case (add cases in tests/host_diff/int.rs \
         or sse.rs):\n{}",
        missing.len(),
        missing
            .iter()
            .map(|c| format!("  {c:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
