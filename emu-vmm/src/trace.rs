//! QEMU-style `-d` tracing: `in_asm`, `int`, `mmu` and `guest_errors`, written to
//! standard error or the `-D` file.
//!
//! Everything here observes; nothing changes what the guest sees. The hooks used are the
//! emulator's observational ones: a block hook (run when a block is translated, so cached
//! code keeps its speed) and a delivery hook (run when an event is delivered through the
//! guest's IDT, external interrupts included). Interrupt hooks, which can "handle" an
//! event and so swallow it, are deliberately not used.
//!
//! Line formats (modelled on QEMU's):
//!
//! ```text
//! ----------------
//! IN:
//! 0x0000000000100000:  0f 0b                          ud2
//!
//!      0: v=06 e=0000 i=0 cpl=0 IP=0010:0000000000100000 pc=0000000000100000 SP=0018:0000000000090000 env->regs[R_EAX]=0000000000000000
//!      1: v=0e e=0002 i=0 cpl=0 IP=0010:0000000000100010 pc=0000000000100010 SP=0018:0000000000090000 CR2=0000000040000000
//! mmu: #PF CR2=0000000040000000 error=0002 (not-present write supervisor) IP=0010:0000000000100010
//! guest_errors: #UD at 0010:0000000000100000: 0f 0b (ud2)
//! guest_errors: rdmsr of unknown MSR 0x0000abcd -> #GP at 0010:0000000000100020
//! Invalid read at addr 0xF0000000, size 4, region '(none)', reason: unassigned
//! ```

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use emu_core::{Cpu, Delivery, Emulator, EventKind, Exception};
use iced_x86::{Code, Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter};

use crate::config::TraceFlags;

/// Where trace lines go, shared by every hook of a machine.
pub struct Tracer {
    flags: TraceFlags,
    out: Mutex<Box<dyn Write + Send>>,
    /// End lines with CR LF: standard error on a terminal that the serial console has put
    /// in raw mode (no output post-processing) would otherwise show a staircase.
    crlf: bool,
    /// Numbers `int` lines, as QEMU does.
    events: AtomicU64,
}

impl Tracer {
    /// A tracer for `flags` writing to `out`.
    pub fn new(flags: TraceFlags, out: Box<dyn Write + Send>) -> Tracer {
        Tracer {
            flags,
            out: Mutex::new(out),
            crlf: false,
            events: AtomicU64::new(0),
        }
    }

    /// A tracer for `flags` writing to `file` or to standard error. The file is appended
    /// to, so that the machines of a reboot loop write one trace; a caller wanting QEMU's
    /// fresh file per process truncates it once first (`quetzal` does).
    ///
    /// # Errors
    ///
    /// The file cannot be created.
    pub fn open(flags: TraceFlags, file: Option<&std::path::Path>) -> std::io::Result<Tracer> {
        Ok(match file {
            Some(path) => Tracer::new(
                flags,
                Box::new(std::io::BufWriter::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)?,
                )),
            ),
            None => Tracer {
                crlf: std::io::stderr().is_terminal(),
                ..Tracer::new(flags, Box::new(std::io::stderr()))
            },
        })
    }

    /// What is traced.
    pub fn flags(&self) -> TraceFlags {
        self.flags
    }

    /// Writes one line (or several, separated by `\n`).
    pub fn line(&self, text: &str) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // Tracing must never take the machine down: a full disk loses lines, not the guest.
        let _ = if self.crlf {
            write!(out, "{}\r\n", text.replace('\n', "\r\n"))
        } else {
            writeln!(out, "{text}")
        };
    }

    /// Flushes buffered lines.
    pub fn flush(&self) {
        let _ = self.out.lock().unwrap_or_else(|e| e.into_inner()).flush();
    }

    /// Installs the hooks the flags ask for on `emu`.
    pub fn install(self: &Arc<Self>, emu: &mut Emulator) {
        let f = self.flags;
        if f.in_asm {
            let t = self.clone();
            emu.add_block_hook(Box::new(move |cpu, start, end| {
                t.line(&describe_block(cpu, start, end))
            }));
        }
        if f.int || f.mmu || f.guest_errors {
            let t = self.clone();
            emu.add_delivery_hook(Box::new(move |cpu, event| t.delivery(cpu, event)));
        }
    }

    /// Lines for one event about to be delivered.
    fn delivery(&self, cpu: &mut Cpu, event: &Delivery) {
        let f = self.flags;
        if f.int {
            let n = self.events.fetch_add(1, Ordering::Relaxed);
            self.line(&int_line(n, cpu, event));
        }
        match event.exception {
            Some(Exception::PageFault { addr, code }) if f.mmu => self.line(&format!(
                "mmu: #PF CR2={addr:016x} error={code:04x} ({}) IP={}",
                describe_pf_code(code),
                cs_ip(cpu)
            )),
            Some(Exception::InvalidOpcode) if f.guest_errors => {
                let (bytes, text) = insn_at_rip(cpu);
                self.line(&format!(
                    "guest_errors: #UD at {}: {} ({})",
                    cs_ip(cpu),
                    hex_bytes(&bytes),
                    text.as_deref().unwrap_or("not an instruction in this mode")
                ));
            }
            Some(Exception::GeneralProtection(0)) if f.guest_errors => {
                if let Some(line) = msr_fault(cpu) {
                    self.line(&line);
                }
            }
            _ => {}
        }
    }

    /// Logs an access to an unassigned physical address (under `guest_errors`).
    pub fn unassigned(&self, access: &emu_mmu::UnassignedAccess) {
        if !self.flags.guest_errors {
            return;
        }
        self.line(&match access.written {
            None => format!(
                "Invalid read at addr {:#X}, size {}, region '(none)', reason: unassigned",
                access.addr, access.size
            ),
            Some(v) => format!(
                "Invalid write at addr {:#X}, size {}, value {v:#x}, region '(none)', reason: unassigned",
                access.addr, access.size
            ),
        });
    }
}

/// `CS:RIP` as QEMU prints it.
fn cs_ip(cpu: &Cpu) -> String {
    format!("{:04x}:{:016x}", cpu.seg_sel[1], cpu.rip)
}

/// QEMU's `-d int` line: count, vector, error code, software flag, CPL, CS:RIP, linear
/// PC, SS:RSP, then CR2 for a page fault or RAX otherwise.
fn int_line(n: u64, cpu: &Cpu, event: &Delivery) -> String {
    let tail = match event.exception {
        Some(Exception::PageFault { addr, .. }) => format!("CR2={addr:016x}"),
        _ => format!("env->regs[R_EAX]={:016x}", cpu.regs[0]),
    };
    format!(
        "{n:6}: v={:02x} e={:04x} i={} cpl={} IP={} pc={:016x} SP={:04x}:{:016x} {tail}",
        event.vector,
        event.error_code.unwrap_or(0),
        u8::from(event.kind == EventKind::Software),
        cpu.sys.cpl,
        cs_ip(cpu),
        cpu.code_linear(cpu.rip),
        cpu.seg_sel[2],
        cpu.regs[4],
    )
}

/// The #PF error code in words.
fn describe_pf_code(code: u32) -> String {
    let mut words = vec![
        if code & 1 != 0 {
            "protection"
        } else {
            "not-present"
        },
        if code & 0x10 != 0 {
            "fetch"
        } else if code & 2 != 0 {
            "write"
        } else {
            "read"
        },
        if code & 4 != 0 { "user" } else { "supervisor" },
    ];
    if code & 8 != 0 {
        words.push("reserved-bit");
    }
    if code & 0x20 != 0 {
        words.push("protection-key");
    }
    words.join(" ")
}

fn hex_bytes(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Decodes the instruction at `rip` from `bytes` in the CPU's mode.
fn decode(cpu: &Cpu, bytes: &[u8], rip: u64) -> Instruction {
    Decoder::with_ip(cpu.code_bits, bytes, rip, DecoderOptions::NONE).decode()
}

/// The bytes of the instruction at RIP (its length when it decodes, else what could be
/// fetched, up to 15) and its disassembly when it decodes.
fn insn_at_rip(cpu: &mut Cpu) -> (Vec<u8>, Option<String>) {
    let mut buf = [0u8; 15];
    let n = cpu.mmu.fetch_code(cpu.code_linear(cpu.rip), &mut buf);
    let insn = decode(cpu, &buf[..n], cpu.rip);
    if insn.is_invalid() {
        return (buf[..n].to_vec(), None);
    }
    let mut text = String::new();
    IntelFormatter::new().format(&insn, &mut text);
    (buf[..insn.len()].to_vec(), Some(text))
}

/// The `guest_errors` line for a #GP(0) raised by RDMSR/WRMSR, if that is what it was.
fn msr_fault(cpu: &mut Cpu) -> Option<String> {
    let mut buf = [0u8; 15];
    let n = cpu.mmu.fetch_code(cpu.code_linear(cpu.rip), &mut buf);
    let msr = cpu.regs[1] as u32;
    let value = (cpu.regs[2] << 32) | (cpu.regs[0] & 0xffff_ffff);
    let at = cs_ip(cpu);
    match decode(cpu, &buf[..n], cpu.rip).code() {
        Code::Rdmsr => Some(format!(
            "guest_errors: rdmsr of unknown MSR {msr:#010x} -> #GP at {at}"
        )),
        Code::Wrmsr => Some(format!(
            "guest_errors: wrmsr of MSR {msr:#010x} value {value:#018x} -> #GP at {at}"
        )),
        _ => None,
    }
}

/// QEMU's `-d in_asm` block: a separator, `IN:`, then one line per instruction with its
/// address, bytes and Intel-syntax disassembly.
fn describe_block(cpu: &mut Cpu, start: u64, end: u64) -> String {
    let len = end.wrapping_sub(start).min(4096) as usize;
    let mut bytes = vec![0u8; len];
    let n = cpu.mmu.fetch_code(cpu.code_linear(start), &mut bytes);
    bytes.truncate(n);
    let width = if cpu.code_bits == 64 { 16 } else { 8 };
    let mut s = String::from("----------------\nIN:\n");
    let mut decoder = Decoder::with_ip(cpu.code_bits, &bytes, start, DecoderOptions::NONE);
    let mut formatter = IntelFormatter::new();
    let mut insn = Instruction::default();
    let mut text = String::new();
    while decoder.can_decode() {
        let offset = decoder.position();
        decoder.decode_out(&mut insn);
        text.clear();
        if insn.is_invalid() {
            text.push_str("(bad)");
        } else {
            formatter.format(&insn, &mut text);
        }
        let raw = &bytes[offset..(offset + insn.len().max(1)).min(bytes.len())];
        s.push_str(&format!(
            "0x{:0width$x}:  {:<30} {text}\n",
            insn.ip(),
            hex_bytes(raw),
        ));
        if insn.is_invalid() {
            break;
        }
    }
    s
}
