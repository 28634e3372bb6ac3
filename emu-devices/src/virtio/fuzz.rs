//! Arbitrary bytes as a VirtIO driver: the entry point of the `virtqueue` cargo-fuzz
//! target (`emu-devices/fuzz`) and of a seeded test that runs the same code in CI.
//!
//! [`run`] reads its input as a little program. The first bytes choose a device
//! (virtio-rng, virtio-blk on a small temporary image, read-write or read-only,
//! virtio-console, virtio-balloon), the features the driver accepts, whether the device
//! is brought up as Linux does and each queue's size. The rest is a list of driver
//! actions: write a descriptor (in compact form, with addresses that mostly land in guest
//! RAM, near the end of a region or across the hole between the two RAM regions, or in
//! raw form), fill an indirect table, publish a chain head, set the available index to
//! anything, notify a queue, read or write any transport register at any width, scribble
//! over memory, and the host's own actions (console input, a balloon target, a statistics
//! request). Everything goes through [`MmioTransport`], as a guest's accesses do.
//!
//! Whatever the input, the host must not panic or hang, and all guest memory accesses go
//! through `vm-memory`, which cannot reach outside the two RAM regions (the fuzzer's
//! AddressSanitizer checks the rest). After the run the interrupt line must still mirror
//! InterruptStatus.

use std::sync::Arc;

use emu_mmu::BusDevice;
use vm_memory::{Bytes, GuestAddress};

use super::balloon::Balloon;
use super::block::Block;
use super::console::Console;
use super::mmio::MmioTransport;
use super::rng::Rng;
use super::{features, status, GuestMemory, VirtioDevice};
use crate::irq::RecordingLine;

/// First RAM region: rings, indirect tables and buffers.
const LOW: (u64, usize) = (0, 0x1_0000);
/// Second RAM region, after a hole, so buffers can straddle memory that does not exist.
const HIGH: (u64, usize) = (0x2_0000, 0x8000);
/// Where queue `q`'s rings go: descriptors at `ring_base(q)`, available ring 0x400 and
/// used ring 0x800 above (room for 64 entries each).
fn ring_base(q: usize) -> u64 {
    0x1000 * (q as u64 + 1)
}
/// Indirect descriptor tables.
const INDIRECT: u64 = 0x6000;
/// Largest queue size the script sets up (so the rings fit their slots).
const MAX_QUEUE: u16 = 64;
/// Most actions per run: bounds the run time whatever the input length.
const MAX_ACTIONS: usize = 4096;
/// Sectors in the temporary disk image.
const DISK_SECTORS: usize = 16;

/// Reads the input front to back; past its end every read is zero.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// An address that usually lies in RAM: inside the first region, just below its end,
/// or inside the second region.
fn buffer_addr(v: u16) -> u64 {
    match v >> 14 {
        0 | 1 => 0x4000 + u64::from(v & 0x7fff),
        2 => LOW.1 as u64 - 0x200 + u64::from(v & 0x3ff),
        _ => HIGH.0 + u64::from(v & 0x3fff) * 2,
    }
}

fn write_desc(mem: &GuestMemory, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    let _ = mem.write_slice(&d, GuestAddress(at));
}

/// What one run reached, so the seeded test can check that its inputs get past the
/// transport into the devices' queue code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    /// The device completed at least one buffer (the used-buffer interrupt was raised).
    pub used_buffers: bool,
    /// The device ended up asking for a reset.
    pub needs_reset: bool,
}

/// The driver's view of one queue.
#[derive(Clone, Copy, Default)]
struct DriverQueue {
    size: u16,
    avail_idx: u16,
}

/// Runs one input (see the module docs). Never panics for any input; a panic is a bug.
pub fn run(data: &[u8]) -> RunReport {
    let mut input = Input { data };
    let Ok(mem) =
        GuestMemory::from_ranges(&[(GuestAddress(LOW.0), LOW.1), (GuestAddress(HIGH.0), HIGH.1)])
    else {
        return RunReport::default();
    };
    let line = Arc::new(RecordingLine::default());
    match input.u8() % 5 {
        0 => drive(
            MmioTransport::new(Rng::new(), mem.clone(), line.clone()),
            &mem,
            &line,
            &mut input,
            |_, _| {},
        ),
        kind @ (1 | 2) => {
            let Some(block) = temporary_disk(kind == 2) else {
                return RunReport::default();
            };
            drive(
                MmioTransport::new(block, mem.clone(), line.clone()),
                &mem,
                &line,
                &mut input,
                |_, _| {},
            )
        }
        3 => drive(
            MmioTransport::new(
                Console::new(Box::new(std::io::sink())),
                mem.clone(),
                line.clone(),
            ),
            &mem,
            &line,
            &mut input,
            |t, input| {
                let len = usize::from(input.u8() % 64);
                let bytes: Vec<u8> = (0..len).map(|_| input.u8()).collect();
                t.receive_input(&bytes);
            },
        ),
        _ => drive(
            MmioTransport::new(Balloon::new(input.u8() & 1 != 0), mem.clone(), line.clone()),
            &mem,
            &line,
            &mut input,
            |t, input| match input.u8() % 3 {
                0 => t.set_target_pages(input.u32()),
                1 => {
                    t.request_stats();
                }
                _ => {
                    let b = t.device();
                    assert!(b.inflated_pages() <= (LOW.1 + HIGH.1) / 4096);
                    if let Some(s) = b.stats() {
                        assert!(s.entries.len() <= super::balloon::MAX_STATS);
                    }
                }
            },
        ),
    }
}

/// A virtio-blk device on a fresh zeroed image. The file is removed at once where the
/// OS allows it (the open handle keeps it alive), so runs leave nothing behind.
fn temporary_disk(read_only: bool) -> Option<Block> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(
        "quetzal-virtio-fuzz-{}-{n}.img",
        std::process::id()
    ));
    std::fs::write(&path, vec![0u8; DISK_SECTORS * 512]).ok()?;
    let block = Block::open(&path, read_only);
    let _ = std::fs::remove_file(&path);
    block.ok()
}

fn drive<D: VirtioDevice>(
    mut t: MmioTransport<D>,
    mem: &GuestMemory,
    line: &RecordingLine,
    input: &mut Input<'_>,
    mut host: impl FnMut(&mut MmioTransport<D>, &mut Input<'_>),
) -> RunReport {
    let mut report = RunReport::default();
    let nq = t.device().queue_max_sizes().len();
    let mut queues = vec![DriverQueue::default(); nq];
    let wr = |t: &mut MmioTransport<D>, off: u64, v: u32| t.write(off, &v.to_le_bytes());
    let rd = |t: &mut MmioTransport<D>, off: u64| {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    };

    // Linux's bring-up, unless the input wants to start from a raw device.
    if input.u8() & 7 != 0 {
        wr(&mut t, 0x070, 0);
        wr(&mut t, 0x070, status::ACKNOWLEDGE);
        wr(&mut t, 0x070, status::ACKNOWLEDGE | status::DRIVER);
        let accept = input.u64() | features::VIRTIO_F_VERSION_1;
        let want = t.offered_features() & accept;
        wr(&mut t, 0x024, 1);
        wr(&mut t, 0x020, (want >> 32) as u32);
        wr(&mut t, 0x024, 0);
        wr(&mut t, 0x020, want as u32);
        let st = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        wr(&mut t, 0x070, st);
        for (q, dq) in queues.iter_mut().enumerate() {
            wr(&mut t, 0x030, q as u32);
            let max = rd(&mut t, 0x034) as u16;
            let size = (1u16 << (input.u8() % 7)).min(max).min(MAX_QUEUE);
            let base = ring_base(q);
            wr(&mut t, 0x038, u32::from(size));
            for (reg, addr) in [(0x080, base), (0x090, base + 0x400), (0x0a0, base + 0x800)] {
                wr(&mut t, reg, addr as u32);
                wr(&mut t, reg + 4, (addr >> 32) as u32);
            }
            wr(&mut t, 0x044, 1);
            dq.size = size;
        }
        wr(&mut t, 0x070, st | status::DRIVER_OK);
    }

    for _ in 0..MAX_ACTIONS {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        let q = usize::from(input.u8()) % nq.max(1);
        let table = ring_base(q);
        match op % 10 {
            0 => {
                let idx = u64::from(input.u8() % MAX_QUEUE as u8);
                let addr = buffer_addr(input.u16());
                let len = u32::from(input.u16() % 0x2000);
                let flags = u16::from(input.u8() & 7);
                let next = u16::from(input.u8() % MAX_QUEUE as u8);
                write_desc(mem, table + 16 * idx, addr, len, flags, next);
            }
            1 => {
                let idx = u64::from(input.u8() % MAX_QUEUE as u8);
                let (addr, len, flags, next) = (input.u64(), input.u32(), input.u16(), input.u16());
                write_desc(mem, table + 16 * idx, addr, len, flags, next);
            }
            2 => {
                let dq = &mut queues[q];
                let head = u16::from(input.u8());
                let slot = u64::from(dq.avail_idx % dq.size.max(1));
                let _ = mem.write_obj(head, GuestAddress(table + 0x400 + 4 + 2 * slot));
                dq.avail_idx = dq.avail_idx.wrapping_add(1);
                let _ = mem.write_obj(dq.avail_idx, GuestAddress(table + 0x400 + 2));
            }
            3 => {
                let idx = input.u16();
                queues[q].avail_idx = idx;
                let _ = mem.write_obj(idx, GuestAddress(table + 0x400 + 2));
            }
            4 => {
                let v = if op & 0x80 != 0 {
                    input.u32()
                } else {
                    q as u32
                };
                wr(&mut t, 0x050, v);
            }
            5 | 6 => {
                let off = u64::from(input.u16() % 0x180);
                let width = [1usize, 2, 4, 8][usize::from(input.u8() & 3)];
                if op % 10 == 5 {
                    let v = input.u64();
                    t.write(off, &v.to_le_bytes()[..width]);
                } else {
                    let mut b = [0u8; 8];
                    t.read(off, &mut b[..width]);
                }
            }
            7 => {
                let addr = buffer_addr(input.u16()) & !7;
                let _ = mem.write_obj(input.u64(), GuestAddress(addr));
            }
            8 => host(&mut t, input),
            _ => {
                let idx = u64::from(input.u8() % 32);
                let addr = buffer_addr(input.u16());
                let len = u32::from(input.u16() % 0x2000);
                let flags = u16::from(input.u8() & 7);
                let next = u16::from(input.u8() % 32);
                write_desc(mem, INDIRECT + 16 * idx, addr, len, flags, next);
            }
        }
        report.used_buffers |= t.interrupt_status() & super::interrupt::USED_BUFFER != 0;
    }
    assert_eq!(line.level(), t.interrupt_status() != 0);
    report.needs_reset = t.status() & status::DEVICE_NEEDS_RESET != 0;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: deterministic inputs without a dev-dependency.
    struct Noise(u64);

    impl Noise {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    /// A program for [`run`] in its input format, biased the way a driver behaves
    /// (descriptors that are mostly plain readable or writable buffers, chain heads
    /// published and queues kicked, host actions) with a sprinkling of raw garbage, so
    /// that random programs get past the transport into the devices' queue code.
    fn program(noise: &mut Noise, kind: u8) -> Vec<u8> {
        let mut p = vec![kind];
        if kind == 4 {
            p.push(noise.next() as u8); // deflate-on-oom
        }
        p.push(u8::from(noise.next() % 8 != 0)); // Linux bring-up, mostly
        p.extend_from_slice(&noise.next().to_le_bytes()); // features accepted
        let queues = [1, 1, 1, 2, 3][usize::from(kind)];
        for _ in 0..queues {
            p.push(2 + (noise.next() % 5) as u8); // queue sizes 4..64
        }
        // Descriptor indices mostly inside the smallest queue.
        let index = |v: u64| {
            if v & 0xf0 == 0 {
                v as u8 % 16
            } else {
                v as u8 % 4
            }
        };
        // One compact descriptor: (index, flags, next) and length, at an address mostly
        // well inside RAM and sometimes near or across a region's end.
        fn descriptor(p: &mut Vec<u8>, noise: &mut Noise, q: u8, d: (u8, u8, u8), len: u16) {
            let r = noise.next();
            let addr = r as u16 & if r >> 62 == 0 { 0xffff } else { 0x7fff };
            p.extend_from_slice(&[0, q, d.0]);
            p.extend_from_slice(&addr.to_le_bytes());
            p.extend_from_slice(&len.to_le_bytes());
            p.extend_from_slice(&[d.1, d.2]);
        }
        let ops = noise.next() % 200;
        for _ in 0..ops {
            let r = noise.next();
            let q = (r >> 8) as u8 % 3;
            match r % 20 {
                0..=3 => {
                    let flags = [0u8, 2, 1, 3, 2, 0, 4, 7][(r >> 16) as usize % 8];
                    let d = (index(r >> 40), flags, index(r >> 48));
                    let len = (noise.next() % 0x300) as u16;
                    descriptor(&mut p, noise, q, d, len);
                }
                4..=6 => {
                    // A whole chain of three at 0..3 or 4..7, shaped as a block request
                    // (header, data, status), then published and kicked.
                    let at = if r & (1 << 20) == 0 { 0 } else { 4 };
                    let data = if r & (1 << 21) == 0 { 2 } else { 0 };
                    let shape = [(16u16, 0u8), (512, data), (1, 2)];
                    for (i, (len, flags)) in shape.into_iter().enumerate() {
                        let i = at + i as u8;
                        let flags = if i < at + 2 { flags | 1 } else { flags };
                        descriptor(&mut p, noise, q, (i, flags, i + 1), len);
                    }
                    p.extend_from_slice(&[2, q, at, 4, q]);
                }
                7..=10 => {
                    // Usually kicked at once: a ring holds at most a queue's worth.
                    p.extend_from_slice(&[2, q, index(r >> 16)]);
                    if r & (3 << 56) != 0 {
                        p.extend_from_slice(&[4, q]);
                    }
                }
                11..=14 => p.extend_from_slice(&[4, q]),
                15..=16 => {
                    p.extend_from_slice(&[8, q]);
                    match kind {
                        3 => {
                            let len = (noise.next() % 64) as u8;
                            p.push(len);
                            p.extend((0..len).map(|_| noise.next() as u8));
                        }
                        4 => {
                            let sel = (noise.next() % 3) as u8;
                            p.push(sel);
                            if sel == 0 {
                                let pages = (noise.next() % 0x20) as u32;
                                p.extend_from_slice(&pages.to_le_bytes());
                            }
                        }
                        _ => {}
                    }
                }
                _ => {
                    // Any other action with random operands: raw descriptors, indices,
                    // registers, scribbles. Each takes exactly its operands, so the
                    // program stays in step.
                    let op = [1u8, 3, 0x86, 5, 6, 7, 9][(r >> 16) as usize % 7];
                    let operands = match op % 10 {
                        1 => 17,
                        3 => 2,
                        4 => 4,
                        5 => 11,
                        6 => 3,
                        7 => 10,
                        _ => 7,
                    };
                    p.extend_from_slice(&[op, q]);
                    p.extend((0..operands).map(|_| noise.next() as u8));
                }
            }
        }
        p
    }

    /// The fuzz target's entry point over a few thousand seeded random programs for every
    /// device, so CI exercises it without cargo-fuzz; half are driver-like programs, half
    /// plain random bytes. `QUETZAL_FUZZ_CASES=N` runs more.
    #[test]
    fn seeded_random_drivers_never_panic() {
        let cases: u64 = std::env::var("QUETZAL_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000);
        let mut noise = Noise(0x5eed_f022_0000_0001);
        // Per device: driver-like runs that completed buffers, runs that broke it.
        let mut reached = [(0u64, 0u64); 5];
        for case in 0..cases {
            let kind = (case % 5) as u8;
            if case % 2 == 0 {
                let report = run(&program(&mut noise, kind));
                reached[usize::from(kind)].0 += u64::from(report.used_buffers);
                reached[usize::from(kind)].1 += u64::from(report.needs_reset);
            } else {
                let len = 1 + (noise.next() % 2048) as usize;
                let mut data: Vec<u8> = (0..len).map(|_| noise.next() as u8).collect();
                data[0] = kind;
                run(&data);
            }
        }
        // Both completed requests and the guest-error paths must be reached, or this
        // test tests nothing.
        if cases >= 1000 {
            let per_device = cases / 10;
            for (kind, &(used, broken)) in reached.iter().enumerate() {
                assert!(
                    used >= per_device / 4,
                    "device {kind}: {used} of {per_device} runs used buffers"
                );
                assert!(
                    broken >= per_device / 20,
                    "device {kind}: {broken} of {per_device} runs broke it"
                );
            }
        }
    }

    #[test]
    fn empty_and_tiny_inputs_are_fine() {
        run(&[]);
        for kind in 0..5u8 {
            run(&[kind]);
            run(&[kind, 1]);
        }
    }
}
