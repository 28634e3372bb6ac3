//! Turning a descriptor chain into a request: its readable bytes, its writable bytes and
//! where its status byte is, with every guest mistake classified as either "answer IOERR"
//! or "cannot answer at all" ([`QueueFault`]).

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::device::MAX_CHAIN_DESCRIPTORS;
use crate::virtio::{GuestMemory, QueueFault};

/// One guest buffer (or part of one) that lies wholly in guest RAM once the request has no
/// [`Defect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Why a request that can still be answered must fail with VIRTIO_BLK_S_IOERR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Defect {
    /// More than [`MAX_CHAIN_DESCRIPTORS`] descriptors.
    TooLong,
    /// A device-readable descriptor after a device-writable one (VirtIO 1.2 §2.7.4.2).
    ReadableAfterWritable,
    /// A buffer that is not wholly inside guest RAM.
    OutsideMemory,
}

/// A parsed request chain.
#[derive(Debug)]
pub(super) struct Chain {
    /// Device-readable buffers, in order (header first).
    pub readable: Vec<Segment>,
    /// Device-writable buffers in order, without the status byte.
    pub writable: Vec<Segment>,
    /// Total bytes in `readable`.
    pub readable_len: u64,
    /// Total bytes in `writable`.
    pub writable_len: u64,
    /// Guest address of the status byte (checked to be in RAM).
    pub status: GuestAddress,
    /// Set when the request must fail with IOERR whatever it asks for.
    pub defect: Option<Defect>,
}

/// Whether `len` bytes at `addr` all lie in guest RAM (no wrap-around).
fn in_ram(mem: &GuestMemory, addr: GuestAddress, len: u32) -> bool {
    addr.0.checked_add(u64::from(len)).is_some()
        && GuestMemoryBackend::check_range(mem, addr, len as usize)
}

impl Chain {
    /// Walks `chain`. Returns a [`QueueFault`] when the chain has no status byte the device
    /// can write, so the request cannot even be failed.
    pub fn parse<M>(mem: &GuestMemory, chain: DescriptorChain<M>) -> Result<Self, QueueFault>
    where
        M: Deref<Target = GuestMemory>,
    {
        let head = chain.head_index();
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        let mut defect = None;
        let mut count = 0usize;
        let mut seen_writable = false;
        let mut last = None;
        // The iterator ends after at most a queue's or an indirect table's worth of
        // descriptors, or at the first unreadable one, so this loop is bounded.
        for desc in chain {
            count += 1;
            last = Some(desc);
            if count > MAX_CHAIN_DESCRIPTORS {
                defect = Some(Defect::TooLong);
                continue;
            }
            let seg = Segment {
                addr: desc.addr(),
                len: desc.len(),
            };
            if desc.is_write_only() {
                seen_writable = true;
                writable.push(seg);
            } else if seen_writable {
                defect.get_or_insert(Defect::ReadableAfterWritable);
            } else {
                readable.push(seg);
            }
        }
        let Some(last) = last else {
            return Err(QueueFault::Ring(format!(
                "descriptor chain {head} is empty (head out of range or unreadable table)"
            )));
        };
        if last.has_next() {
            // The iterator stopped early: a loop, a `next` beyond the table, an unreadable
            // descriptor or more than 4 GiB. Where the status byte was meant to be is
            // unknown.
            return Err(QueueFault::Ring(format!(
                "descriptor chain {head} is broken (loop, bad next index or unreadable descriptor)"
            )));
        }
        if !last.is_write_only() || last.len() == 0 {
            return Err(QueueFault::Ring(format!(
                "descriptor chain {head} has no device-writable status byte"
            )));
        }
        let status = last
            .addr()
            .0
            .checked_add(u64::from(last.len()) - 1)
            .map(GuestAddress)
            .filter(|&a| in_ram(mem, a, 1))
            .ok_or(QueueFault::BadDescriptor {
                addr: last.addr().0,
                len: last.len(),
            })?;
        if defect != Some(Defect::TooLong) {
            // The last descriptor is the last writable segment; the status byte is its end.
            if let Some(seg) = writable.last_mut() {
                seg.len -= 1;
                if seg.len == 0 {
                    writable.pop();
                }
            }
        }
        if defect.is_none()
            && !readable
                .iter()
                .chain(&writable)
                .all(|s| in_ram(mem, s.addr, s.len))
        {
            defect = Some(Defect::OutsideMemory);
        }
        let total = |v: &[Segment]| v.iter().map(|s| u64::from(s.len)).sum();
        Ok(Self {
            readable_len: total(&readable),
            writable_len: total(&writable),
            readable,
            writable,
            status,
            defect,
        })
    }

    /// Writes the status byte.
    pub fn write_status(&self, mem: &GuestMemory, status: u8) -> Result<(), QueueFault> {
        mem.write_obj(status, self.status)
            .map_err(|_| QueueFault::BadDescriptor {
                addr: self.status.0,
                len: 1,
            })
    }
}

/// A guest memory access in a request's data failed (the buffers were checked to lie in
/// RAM, so this does not happen in practice; it still fails only the request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GuestAccessError;

/// A cursor over a list of segments, read or written as one byte stream.
#[derive(Debug)]
pub(super) struct Stream<'a> {
    mem: &'a GuestMemory,
    segs: &'a [Segment],
    /// Index of the current segment.
    idx: usize,
    /// Offset in the current segment.
    off: u32,
}

impl<'a> Stream<'a> {
    /// A cursor at the start of `segs`.
    pub fn new(mem: &'a GuestMemory, segs: &'a [Segment]) -> Self {
        Self {
            mem,
            segs,
            idx: 0,
            off: 0,
        }
    }

    /// Runs `f(guest address, offset in buf, length)` over the next `len` bytes of the
    /// stream and advances past them.
    fn walk(
        &mut self,
        len: usize,
        mut f: impl FnMut(GuestAddress, usize, usize) -> Result<(), GuestAccessError>,
    ) -> Result<(), GuestAccessError> {
        let mut done = 0usize;
        while done < len {
            let seg = self.segs.get(self.idx).ok_or(GuestAccessError)?;
            let left = (seg.len - self.off) as usize;
            if left == 0 {
                self.idx += 1;
                self.off = 0;
                continue;
            }
            let n = left.min(len - done);
            let addr = seg
                .addr
                .0
                .checked_add(u64::from(self.off))
                .ok_or(GuestAccessError)?;
            f(GuestAddress(addr), done, n)?;
            done += n;
            // `n <= left <= u32::MAX`.
            self.off += n as u32;
        }
        Ok(())
    }

    /// Fills `buf` from the stream.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<(), GuestAccessError> {
        let mem = self.mem;
        self.walk(buf.len(), |addr, at, n| {
            mem.read_slice(&mut buf[at..at + n], addr)
                .map_err(|_| GuestAccessError)
        })
    }

    /// Writes `buf` to the stream.
    pub fn write(&mut self, buf: &[u8]) -> Result<(), GuestAccessError> {
        let mem = self.mem;
        self.walk(buf.len(), |addr, at, n| {
            mem.write_slice(&buf[at..at + n], addr)
                .map_err(|_| GuestAccessError)
        })
    }
}
