//! Behaviour of the run loop and block cache: stop conditions, #UD for unknown
//! instructions, self-modifying code, hooks, and random code never panicking the host.

use emu_core::{Emulator, Exception, HookAction, InterruptEvent, Register, RunOptions, StopReason};
use iced_x86::code_asm::*;

const CODE: u64 = 0x1000;
const DATA: u64 = 0x10_0000;
const STACK_TOP: u64 = 0x20_0000;

fn machine(code: &[u8]) -> Emulator {
    let mut emu = Emulator::new();
    emu.map_memory(0, 0x20_0000).unwrap();
    emu.write_memory(CODE, code).unwrap();
    emu.set_reg(Register::RSP, STACK_TOP - 0x100).unwrap();
    emu
}

fn assemble(build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    build(&mut a).unwrap();
    a.assemble(CODE).unwrap()
}

#[test]
fn loop_with_calls_computes_the_right_sum() {
    let code = assemble(|a| {
        let mut top = a.create_label();
        let mut func = a.create_label();
        let mut done = a.create_label();
        a.xor(rax, rax)?;
        a.mov(rcx, 100u64)?;
        a.set_label(&mut top)?;
        a.call(func)?;
        a.dec(rcx)?;
        a.jnz(top)?;
        a.jmp(done)?;
        a.set_label(&mut func)?;
        a.add(rax, rcx)?;
        a.ret()?;
        a.set_label(&mut done)?;
        a.hlt()
    });
    let mut emu = machine(&code);
    assert_eq!(emu.run(CODE, &RunOptions::default()), StopReason::Halted);
    assert_eq!(emu.reg(Register::RAX).unwrap(), 5050);
    assert_eq!(emu.reg(Register::RSP).unwrap(), STACK_TOP - 0x100);
}

#[test]
fn unknown_instruction_is_a_guest_invalid_opcode() {
    // 0F 0B is UD2; 0F 04 is not an x86-64 instruction at all.
    for bytes in [&[0x90u8, 0x0f, 0x0b][..], &[0x90, 0x0f, 0x04][..]] {
        let mut emu = machine(bytes);
        let stop = emu.run(CODE, &RunOptions::default());
        assert_eq!(
            stop,
            StopReason::Exception {
                exception: Exception::InvalidOpcode,
                rip: CODE + 1
            }
        );
        assert_eq!(emu.reg(Register::RIP).unwrap(), CODE + 1);
    }
}

#[test]
fn invalid_opcode_reaches_the_interrupt_hook_which_can_resume() {
    let code = [0x0f, 0x0b, 0xf4]; // ud2; hlt
    let mut emu = machine(&code);
    emu.add_interrupt_hook(Box::new(|cpu, event| {
        assert_eq!(event, InterruptEvent::Exception(Exception::InvalidOpcode));
        cpu.rip += 2;
        true
    }));
    assert_eq!(emu.run(CODE, &RunOptions::default()), StopReason::Halted);
}

#[test]
fn self_modifying_loop_runs_the_new_code() {
    // The loop body's `add rax, imm8` immediate is rewritten by the loop itself each
    // iteration: iteration k adds k. Sum over k = 1..=10 is 55.
    let code = assemble(|a| {
        let mut top = a.create_label();
        let mut patch = a.create_label();
        a.xor(rax, rax)?;
        a.mov(rcx, 1u64)?;
        a.set_label(&mut top)?;
        a.lea(rdx, ptr(patch))?;
        a.mov(byte_ptr(rdx + 3), cl)?; // the imm8 of the `add rax, imm8` below
        a.set_label(&mut patch)?;
        a.db(&[0x48, 0x83, 0xc0, 0x7f])?; // add rax, imm8
        a.inc(rcx)?;
        a.cmp(rcx, 11)?;
        a.jne(top)?;
        a.hlt()
    });
    let mut emu = machine(&code);
    assert_eq!(emu.run(CODE, &RunOptions::default()), StopReason::Halted);
    assert_eq!(emu.reg(Register::RAX).unwrap(), 55);
}

#[test]
fn code_written_by_the_host_between_runs_is_retranslated() {
    let mut emu = machine(&[0xb8, 1, 0, 0, 0, 0xf4]); // mov eax, 1; hlt
    emu.run(CODE, &RunOptions::default());
    assert_eq!(emu.reg(Register::RAX).unwrap(), 1);
    emu.write_memory(CODE + 1, &[2]).unwrap();
    emu.run(CODE, &RunOptions::default());
    assert_eq!(emu.reg(Register::RAX).unwrap(), 2);
}

#[test]
fn stops_at_until_address_and_instruction_count() {
    let code = assemble(|a| {
        a.mov(eax, 1u32)?;
        a.mov(ebx, 2u32)?;
        a.mov(ecx, 3u32)?;
        a.hlt()
    });
    let mut emu = machine(&code);
    let until = CODE + 5; // after the first mov
    let stop = emu.run(
        CODE,
        &RunOptions {
            until: Some(until),
            ..Default::default()
        },
    );
    assert_eq!(stop, StopReason::ReachedEnd);
    assert_eq!(emu.reg(Register::RIP).unwrap(), until);
    assert_eq!(emu.reg(Register::RBX).unwrap(), 0);
    let stop = emu.run(
        CODE,
        &RunOptions {
            max_instructions: Some(2),
            ..Default::default()
        },
    );
    assert_eq!(stop, StopReason::InstructionLimit);
    assert_eq!(emu.reg(Register::RBX).unwrap(), 2);
    assert_eq!(emu.reg(Register::RCX).unwrap(), 0);
}

#[test]
fn infinite_loop_stops_on_timeout_and_on_request_from_another_thread() {
    let mut emu = machine(&[0xeb, 0xfe]); // jmp $
    let stop = emu.run(
        CODE,
        &RunOptions {
            timeout: Some(std::time::Duration::from_millis(50)),
            ..Default::default()
        },
    );
    assert_eq!(stop, StopReason::Timeout);
    let handle = emu.stop_handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        handle.stop();
    });
    assert_eq!(
        emu.run(CODE, &RunOptions::default()),
        StopReason::StopRequested
    );
    stopper.join().unwrap();
}

#[test]
fn code_hook_sees_each_instruction_and_can_stop() {
    let code = assemble(|a| {
        a.nop()?;
        a.nop()?;
        a.nop()?;
        a.hlt()
    });
    let mut emu = machine(&code);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    emu.add_code_hook(Box::new(move |_, rip, _| {
        s.lock().unwrap().push(rip);
        if rip == CODE + 2 {
            HookAction::Stop
        } else {
            HookAction::Continue
        }
    }));
    assert_eq!(
        emu.run(CODE, &RunOptions::default()),
        StopReason::HookRequested
    );
    assert_eq!(*seen.lock().unwrap(), vec![CODE, CODE + 1, CODE + 2]);
    assert_eq!(emu.reg(Register::RIP).unwrap(), CODE + 2);
}

#[test]
fn memory_hook_sees_loads_and_stores() {
    let code = assemble(|a| {
        a.mov(rax, DATA)?;
        a.mov(qword_ptr(rax), 0x1234)?;
        a.mov(rbx, qword_ptr(rax))?;
        a.hlt()
    });
    let mut emu = machine(&code);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    emu.add_mem_hook(Box::new(move |e| {
        s.lock().unwrap().push((e.access, e.addr, e.value))
    }));
    emu.run(CODE, &RunOptions::default());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0], (emu_mmu::Access::Write, DATA, 0x1234));
    assert_eq!(seen[1], (emu_mmu::Access::Read, DATA, 0x1234));
}

#[test]
fn unmapped_fetch_and_data_access_stop_cleanly() {
    let mut emu = machine(&[0xff, 0xe0]); // jmp rax
    emu.set_reg(Register::RAX, 0x4000_0000).unwrap();
    let stop = emu.run(CODE, &RunOptions::default());
    assert!(
        matches!(
            stop,
            StopReason::Unmapped {
                rip: 0x4000_0000,
                ..
            }
        ),
        "{stop:?}"
    );
    let mut emu = machine(&[0x48, 0x8b, 0x00]); // mov rax, [rax]
    emu.set_reg(Register::RAX, 0x4000_0000).unwrap();
    let stop = emu.run(CODE, &RunOptions::default());
    assert!(
        matches!(stop, StopReason::Unmapped { rip: CODE, .. }),
        "{stop:?}"
    );
    assert_eq!(
        emu.reg(Register::RAX).unwrap(),
        0x4000_0000,
        "faulting load changed nothing"
    );
}

#[test]
fn divide_by_zero_is_a_guest_exception_with_no_effect() {
    let code = assemble(|a| {
        a.mov(eax, 7u32)?;
        a.xor(ecx, ecx)?;
        a.div(ecx)?;
        a.hlt()
    });
    let mut emu = machine(&code);
    let stop = emu.run(CODE, &RunOptions::default());
    assert_eq!(
        stop,
        StopReason::Exception {
            exception: Exception::DivideError,
            rip: CODE + 7
        }
    );
    assert_eq!(emu.reg(Register::RAX).unwrap(), 7);
}

mod random_code {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Arbitrary bytes as guest code: the run ends with some stop reason and the
        /// host never panics.
        #[test]
        fn random_bytes_never_panic_the_host(bytes in proptest::collection::vec(any::<u8>(), 1..64),
                                             regs in proptest::array::uniform4(any::<u64>())) {
            let mut emu = machine(&bytes);
            emu.set_reg(Register::RAX, regs[0]).unwrap();
            emu.set_reg(Register::RBX, regs[1] & 0x1f_ffff).unwrap();
            emu.set_reg(Register::RCX, regs[2] & 0xffff).unwrap();
            emu.set_reg(Register::RSI, regs[3]).unwrap();
            emu.run(CODE, &RunOptions { max_instructions: Some(10_000), ..Default::default() });
        }
    }
}

#[test]
fn unassigned_mmio_reads_all_ones_once_asked_and_fetches_still_stop() {
    let code = assemble(|a| {
        a.mov(rbx, 0x4000_0000u64)?;
        a.mov(eax, dword_ptr(rbx))?;
        a.mov(dword_ptr(rbx + 8), ecx)?;
        a.hlt()
    });
    let mut emu = machine(&code);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    emu.set_unassigned_mmio(Some(std::sync::Arc::new(
        move |a: &emu_mmu::UnassignedAccess| log.lock().unwrap().push(*a),
    )));
    emu.set_reg(Register::RCX, 0x55).unwrap();
    assert_eq!(emu.run(CODE, &RunOptions::default()), StopReason::Halted);
    assert_eq!(emu.reg(Register::RAX).unwrap(), 0xffff_ffff);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        (seen[0].addr, seen[0].size, seen[0].written),
        (0x4000_0000, 4, None)
    );
    assert_eq!(seen[1].written, Some(0x55));
    let stop = emu.run(0x4000_0000, &RunOptions::default());
    assert!(matches!(stop, StopReason::Unmapped { .. }), "{stop:?}");
}

#[test]
fn block_hooks_see_each_block_once_when_translated() {
    let code = assemble(|a| {
        let mut top = a.create_label();
        a.mov(ecx, 10u32)?;
        a.set_label(&mut top)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    let mut emu = machine(&code);
    let blocks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = blocks.clone();
    emu.add_block_hook(Box::new(move |_, start, end| {
        log.lock().unwrap().push((start, end))
    }));
    assert_eq!(emu.run(CODE, &RunOptions::default()), StopReason::Halted);
    // mov+dec+jnz, the loop body (dec+jnz) from its label, then hlt.
    assert_eq!(
        *blocks.lock().unwrap(),
        vec![
            (CODE, CODE + 9),
            (CODE + 5, CODE + 9),
            (CODE + 9, CODE + 10)
        ]
    );
}

#[test]
fn rep_movs_and_stos_in_bulk_keep_element_order_page_crossings_and_faults_exact() {
    // Overlapping forward MOVSB (dst = src + 1) smears the first byte, as element-wise
    // copying does; it crosses a page boundary on the way. Then REP STOSQ runs into
    // unmapped memory: the stores before the fault stay, RCX/RDI count them, and the
    // fault reports the first address that is not there.
    let code = assemble(|a| {
        a.mov(rsi, DATA + 0xff0)?;
        a.mov(rdi, DATA + 0xff1)?;
        a.mov(rcx, 0x40u64)?;
        a.rep().movsb()?;
        a.mov(rdi, 0x1f_ffe0u64)?;
        a.mov(rax, 0x1122_3344_5566_7788u64)?;
        a.mov(rcx, 100u64)?;
        a.rep().stosq()?;
        a.hlt()
    });
    let mut emu = machine(&code);
    emu.write_memory(DATA + 0xff0, &[0xab]).unwrap();
    let stop = emu.run(CODE, &RunOptions::default());
    let mut smeared = [0u8; 0x41];
    emu.read_memory(DATA + 0xff0, &mut smeared).unwrap();
    assert!(smeared.iter().all(|&b| b == 0xab), "{smeared:x?}");
    assert!(
        matches!(
            stop,
            StopReason::Unmapped { .. } | StopReason::Exception { .. }
        ),
        "{stop:?}"
    );
    assert_eq!(
        emu.reg(Register::RDI).unwrap(),
        0x20_0000,
        "four stores fit"
    );
    assert_eq!(emu.reg(Register::RCX).unwrap(), 96);
    let mut tail = [0u8; 32];
    emu.read_memory(0x1f_ffe0, &mut tail).unwrap();
    assert_eq!(&tail[..8], &0x1122_3344_5566_7788u64.to_le_bytes());
    assert_eq!(&tail[24..], &0x1122_3344_5566_7788u64.to_le_bytes());
}

/// Runs `code` from [`CODE`] to its HLT on each tier (interpreter only, every block
/// compiled at first entry, and blocks compiled at their third entry, by when a loop's
/// blocks are known and compile into one region), returning `regs` from each.
fn on_every_tier(code: &[u8], regs: &[Register]) -> Vec<Vec<u64>> {
    [(false, 1), (true, 1), (true, 3)]
        .into_iter()
        .map(|(enabled, threshold)| {
            let mut emu = machine(code);
            emu.set_jit_config(emu_core::jit::JitConfig {
                enabled,
                threshold,
                background: false,
                ..Default::default()
            });
            assert_eq!(emu.run(CODE, &RunOptions::default()), StopReason::Halted);
            regs.iter().map(|&r| emu.reg(r).unwrap()).collect()
        })
        .collect()
}

#[test]
fn loop_regions_carry_registers_and_flags_from_block_to_block() {
    // A loop of three blocks. The flags DEC leaves pending at the bottom are read by
    // SETP at the top of the next iteration, and those of CMP by the ADC after the join.
    let code = assemble(|a| {
        let mut top = a.create_label();
        let mut skip = a.create_label();
        a.mov(rcx, 100u64)?;
        a.xor(edx, edx)?;
        a.xor(esi, esi)?;
        a.xor(edi, edi)?;
        a.set_label(&mut top)?;
        a.setp(al)?;
        a.movzx(ebx, al)?;
        a.add(rdx, rbx)?;
        a.cmp(rcx, 37)?;
        a.jb(skip)?;
        a.add(rsi, rcx)?;
        a.cmp(rsi, 2000)?;
        a.set_label(&mut skip)?;
        a.adc(rdi, 0)?;
        a.dec(rcx)?;
        a.jnz(top)?;
        a.hlt()
    });
    // The same in Rust.
    let (mut parities, mut sum, mut carries) = (0u64, 0u64, 0u64);
    let mut pf = true; // from XOR EDI, EDI
    for count in (1..=100u64).rev() {
        parities += pf as u64;
        let carry = if count < 37 {
            true
        } else {
            sum += count;
            sum < 2000
        };
        carries += carry as u64;
        pf = ((count - 1) as u8).count_ones() % 2 == 0;
    }
    let expected = vec![parities, sum, carries];
    for (tier, got) in on_every_tier(&code, &[Register::RDX, Register::RSI, Register::RDI])
        .into_iter()
        .enumerate()
    {
        assert_eq!(got, expected, "tier {tier}");
    }
}

#[test]
fn indirect_calls_and_returns_reach_the_right_code_through_the_jump_cache() {
    // Two functions whose addresses share a jump-cache slot ((rip ^ rip >> 12) mod 4096
    // is 2 for both), called alternately through a register: each return and each
    // indirect call looks the next code up at run time.
    const F: u64 = 0x2000;
    const G: u64 = 0x3001;
    let mut code = assemble(|a| {
        let mut top = a.create_label();
        a.mov(rcx, 1000u64)?;
        a.xor(eax, eax)?;
        a.set_label(&mut top)?;
        a.mov(rdx, F)?;
        a.mov(rbx, G)?;
        a.test(cl, 1)?;
        a.cmovnz(rdx, rbx)?;
        a.call(rdx)?;
        a.dec(rcx)?;
        a.jnz(top)?;
        a.hlt()
    });
    code.resize((G - CODE) as usize + 16, 0x90);
    let f = [0x48, 0x83, 0xc0, 0x03, 0xc3]; // add rax, 3; ret
    let g = [0x48, 0x6b, 0xc0, 0x05, 0x48, 0x83, 0xf0, 0x55, 0xc3]; // imul rax, rax, 5; xor rax, 0x55; ret
    code[(F - CODE) as usize..][..f.len()].copy_from_slice(&f);
    code[(G - CODE) as usize..][..g.len()].copy_from_slice(&g);
    let mut expected = 0u64;
    for count in (1..=1000u64).rev() {
        expected = if count & 1 != 0 {
            expected.wrapping_mul(5) ^ 0x55
        } else {
            expected + 3
        };
    }
    for (tier, got) in on_every_tier(&code, &[Register::RAX])
        .into_iter()
        .enumerate()
    {
        assert_eq!(got, vec![expected], "tier {tier}");
    }
}
