//! The virtio-balloon device model and its host-side controls.

use std::collections::HashSet;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::backend;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::{device_id, GuestMemory, QueueFault, VirtioDevice};

/// Index of the inflate queue (pages the guest gives up).
pub const INFLATEQ: usize = 0;
/// Index of the deflate queue (pages the guest takes back).
pub const DEFLATEQ: usize = 1;
/// Index of the statistics queue (present when VIRTIO_BALLOON_F_STATS_VQ is negotiated).
pub const STATSQ: usize = 2;
/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 128;
/// The balloon's page size: frame numbers count 4 KiB pages.
pub const PAGE_SIZE: u64 = 4096;
/// Most frame numbers taken from one inflate or deflate chain.
pub const MAX_PFNS_PER_CHAIN: usize = 4096;
/// Most statistics entries read from one statsq buffer (Linux sends about ten).
pub const MAX_STATS: usize = 64;
/// Size of the configuration space: `num_pages` (u32) and `actual` (u32).
pub const CONFIG_SIZE: usize = 8;

/// Balloon feature bits (VirtIO 1.2 §5.5.3).
pub mod feature {
    /// The host must be told before the guest reuses deflated pages (not offered).
    pub const MUST_TELL_HOST: u64 = 1 << 0;
    /// A statistics queue exists.
    pub const STATS_VQ: u64 = 1 << 1;
    /// The guest may deflate on its own when it runs out of memory.
    pub const DEFLATE_ON_OOM: u64 = 1 << 2;
}

/// Statistics tags (VirtIO 1.2 §5.5.6.3; values in bytes unless noted).
pub mod stat_tag {
    /// Memory swapped in.
    pub const SWAP_IN: u16 = 0;
    /// Memory swapped out.
    pub const SWAP_OUT: u16 = 1;
    /// Major page faults (a count).
    pub const MAJOR_FAULTS: u16 = 2;
    /// Minor page faults (a count).
    pub const MINOR_FAULTS: u16 = 3;
    /// Memory the guest is not using at all.
    pub const FREE_MEMORY: u16 = 4;
    /// Memory the guest has (MemTotal).
    pub const TOTAL_MEMORY: u16 = 5;
    /// Memory available for new work without swapping (MemAvailable).
    pub const AVAILABLE_MEMORY: u16 = 6;
    /// Disk caches that could be dropped.
    pub const DISK_CACHES: u16 = 7;
    /// Successful huge page allocations (a count).
    pub const HUGETLB_ALLOCATIONS: u16 = 8;
    /// Failed huge page allocations (a count).
    pub const HUGETLB_FAILURES: u16 = 9;
}

/// The latest statistics the guest reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BalloonStats {
    /// `(tag, value)` in the order the guest sent them (see [`stat_tag`]).
    pub entries: Vec<(u16, u64)>,
    /// How many statistics buffers the guest has sent since the device was created; it
    /// grows by one for each answer to [`MmioTransport::request_stats`].
    pub updates: u64,
}

impl BalloonStats {
    /// The value of `tag`, if the guest reported it.
    pub fn get(&self, tag: u16) -> Option<u64> {
        self.entries
            .iter()
            .rev()
            .find(|&&(t, _)| t == tag)
            .map(|&(_, v)| v)
    }
}

/// The balloon device.
#[derive(Debug)]
pub struct Balloon {
    deflate_on_oom: bool,
    release: bool,
    num_pages: u32,
    actual: u32,
    /// Frame numbers currently in the balloon.
    inflated: HashSet<u64>,
    released_bytes: u64,
    stats: Option<BalloonStats>,
    stats_updates: u64,
    /// The statistics buffer the device holds, to hand back when the host wants news.
    stats_head: Option<u16>,
    activated: bool,
}

impl Balloon {
    /// A balloon that releases inflated pages on the host, offering
    /// VIRTIO_BALLOON_F_DEFLATE_ON_OOM when `deflate_on_oom` is set.
    pub fn new(deflate_on_oom: bool) -> Self {
        Self {
            deflate_on_oom,
            release: true,
            num_pages: 0,
            actual: 0,
            inflated: HashSet::new(),
            released_bytes: 0,
            stats: None,
            stats_updates: 0,
            stats_head: None,
            activated: false,
        }
    }

    /// Only records inflated pages instead of releasing them (for hosts or embedders that
    /// manage RAM themselves).
    pub fn without_release(mut self) -> Self {
        self.release = false;
        self
    }

    /// Whether the driver has set DRIVER_OK since the last reset.
    pub fn activated(&self) -> bool {
        self.activated
    }

    /// The target the host set, in 4 KiB pages.
    pub fn target_pages(&self) -> u32 {
        self.num_pages
    }

    /// Sets the target in the configuration space. Use
    /// [`MmioTransport::set_target_pages`], which also tells the driver.
    pub fn set_target(&mut self, pages: u32) {
        self.num_pages = pages;
    }

    /// How many pages the driver says the balloon holds (its `actual` field).
    pub fn actual_pages(&self) -> u32 {
        self.actual
    }

    /// How many distinct pages the guest has inflated and not deflated.
    pub fn inflated_pages(&self) -> usize {
        self.inflated.len()
    }

    /// Whether 4 KiB frame `pfn` is in the balloon.
    pub fn is_inflated(&self, pfn: u64) -> bool {
        self.inflated.contains(&pfn)
    }

    /// Bytes released to the host OS so far (see [`backend::release`]).
    pub fn released_bytes(&self) -> u64 {
        self.released_bytes
    }

    /// The latest statistics, once the guest has sent any.
    pub fn stats(&self) -> Option<&BalloonStats> {
        self.stats.as_ref()
    }

    /// Whether the device holds a statistics buffer it can hand back.
    pub fn stats_request_possible(&self) -> bool {
        self.stats_head.is_some()
    }

    /// Reads up to [`MAX_PFNS_PER_CHAIN`] frame numbers from the readable buffers of a
    /// chain.
    fn read_pfns<M>(
        mem: &GuestMemory,
        chain: virtio_queue::DescriptorChain<M>,
    ) -> Result<Vec<u64>, QueueFault>
    where
        M: std::ops::Deref<Target = GuestMemory>,
    {
        let mut pfns = Vec::new();
        for desc in chain.readable() {
            let bad = QueueFault::BadDescriptor {
                addr: desc.addr().0,
                len: desc.len(),
            };
            let room = MAX_PFNS_PER_CHAIN - pfns.len();
            let count = (desc.len() as usize / 4).min(room);
            let mut raw = vec![0u8; count * 4];
            mem.read_slice(&mut raw, desc.addr()).map_err(|_| bad)?;
            pfns.extend(
                raw.chunks_exact(4)
                    .map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            );
            if pfns.len() == MAX_PFNS_PER_CHAIN {
                break;
            }
        }
        Ok(pfns)
    }

    /// Whether the 4 KiB page of `pfn` is guest RAM.
    fn is_ram(mem: &GuestMemory, pfn: u64) -> bool {
        GuestMemoryBackend::check_range(mem, GuestAddress(pfn * PAGE_SIZE), PAGE_SIZE as usize)
    }

    fn inflate(&mut self, mem: &GuestMemory, mut pfns: Vec<u64>) {
        pfns.retain(|&p| Self::is_ram(mem, p) && self.inflated.insert(p));
        if !self.release {
            return;
        }
        // Release runs of contiguous frames at once: fewer system calls, and host pages
        // larger than 4 KiB are released when the run covers them.
        pfns.sort_unstable();
        let mut i = 0;
        while i < pfns.len() {
            let mut j = i + 1;
            while j < pfns.len() && pfns[j] == pfns[j - 1] + 1 {
                j += 1;
            }
            let addr = GuestAddress(pfns[i] * PAGE_SIZE);
            self.released_bytes += backend::release(mem, addr, (j - i) as u64 * PAGE_SIZE);
            i = j;
        }
    }

    fn deflate(&mut self, pfns: Vec<u64>) {
        for p in pfns {
            self.inflated.remove(&p);
        }
    }

    /// Serves an inflate or deflate kick.
    fn pages(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, QueueFault> {
        let chains: Vec<_> = crate::virtio::take_chains(queue, mem)?;
        let mut used = false;
        for chain in chains {
            let head = chain.head_index();
            let pfns = Self::read_pfns(mem, chain)?;
            if index == INFLATEQ {
                self.inflate(mem, pfns);
            } else {
                self.deflate(pfns);
            }
            queue.add_used(mem, head, 0)?;
            used = true;
        }
        Ok(used)
    }

    /// Takes the statistics buffers the driver posted: the values of each are read and the
    /// last buffer is kept for the next host request (earlier ones, which a correct driver
    /// never sends, are handed back at once).
    fn take_stats(&mut self, queue: &mut Queue, mem: &GuestMemory) -> Result<bool, QueueFault> {
        let chains: Vec<_> = crate::virtio::take_chains(queue, mem)?;
        let mut used = false;
        for chain in chains {
            let head = chain.head_index();
            let mut raw = Vec::new();
            for desc in chain.readable() {
                let want = (MAX_STATS * 10 - raw.len()).min(desc.len() as usize);
                let mut buf = vec![0u8; want];
                let bad = QueueFault::BadDescriptor {
                    addr: desc.addr().0,
                    len: desc.len(),
                };
                mem.read_slice(&mut buf, desc.addr()).map_err(|_| bad)?;
                raw.extend_from_slice(&buf);
                if raw.len() == MAX_STATS * 10 {
                    break;
                }
            }
            self.stats_updates += 1;
            self.stats = Some(BalloonStats {
                entries: raw
                    .chunks_exact(10)
                    .map(|e| {
                        let tag = u16::from_le_bytes([e[0], e[1]]);
                        let mut v = [0u8; 8];
                        v.copy_from_slice(&e[2..10]);
                        (tag, u64::from_le_bytes(v))
                    })
                    .collect(),
                updates: self.stats_updates,
            });
            if let Some(old) = self.stats_head.replace(head) {
                queue.add_used(mem, old, 0)?;
                used = true;
            }
        }
        Ok(used)
    }

    /// Hands the held statistics buffer back so the driver refills it.
    fn return_stats_buffer(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, QueueFault> {
        let Some(head) = self.stats_head.take() else {
            return Ok(false);
        };
        queue.add_used(mem, head, 0)?;
        Ok(true)
    }

    fn config_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut c = [0u8; CONFIG_SIZE];
        c[..4].copy_from_slice(&self.num_pages.to_le_bytes());
        c[4..].copy_from_slice(&self.actual.to_le_bytes());
        c
    }
}

impl VirtioDevice for Balloon {
    fn device_id(&self) -> u32 {
        device_id::BALLOON
    }

    fn features(&self) -> u64 {
        let oom = if self.deflate_on_oom {
            feature::DEFLATE_ON_OOM
        } else {
            0
        };
        feature::STATS_VQ | oom
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (bytes 4..8) belongs to the driver.
        let mut config = self.config_bytes();
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        for (i, &b) in data.iter().enumerate() {
            if let Some(at @ 4..=7) = start.checked_add(i) {
                config[at] = b;
            }
        }
        self.actual = u32::from_le_bytes([config[4], config[5], config[6], config[7]]);
    }

    fn activate(&mut self, _features: u64) {
        self.activated = true;
    }

    fn reset(&mut self) {
        // The guest owns all its memory again; the host's target stays.
        self.activated = false;
        self.actual = 0;
        self.inflated.clear();
        self.stats_head = None;
    }

    fn queue_notify(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, QueueFault> {
        match index {
            INFLATEQ | DEFLATEQ => self.pages(index, queue, mem),
            STATSQ => self.take_stats(queue, mem),
            _ => Ok(false),
        }
    }
}

impl MmioTransport<Balloon> {
    /// Asks the guest to make the balloon `pages` 4 KiB pages big: updates `num_pages` and
    /// raises the configuration-change interrupt (once the driver is up; before that it
    /// reads the target when it starts).
    pub fn set_target_pages(&mut self, pages: u32) {
        self.device_mut().set_target(pages);
        self.notify_config_change();
    }

    /// Asks the guest for fresh statistics by handing back the buffer it posted on statsq;
    /// the answer shows up in [`Balloon::stats`] (its `updates` grows) once the driver has
    /// refilled and re-posted it. Buffers posted but not yet read are read first: Linux
    /// primes statsq before it sets DRIVER_OK, a notification the transport ignores, so
    /// the first request also brings in the statistics of the driver's probe. Returns
    /// whether a request went out (false when the driver is not up, did not negotiate
    /// statistics, or has not answered the previous request yet).
    pub fn request_stats(&mut self) -> bool {
        let mut sent = false;
        self.process_queue(STATSQ, |balloon, queue, mem| {
            let returned_extra = balloon.take_stats(queue, mem)?;
            sent = balloon.return_stats_buffer(queue, mem)?;
            Ok(sent || returned_extra)
        });
        sent
    }
}

/// Address arithmetic on frame numbers never overflows: they come from 32-bit fields.
const _: () = assert!((u32::MAX as u64) * PAGE_SIZE < u64::MAX);
