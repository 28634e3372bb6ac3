//! The virtio-blk device model.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use virtio_queue::{DescriptorChain, Queue, QueueT};

use super::request::{Chain, Stream};
use crate::virtio::features::VIRTIO_RING_F_INDIRECT_DESC;
use crate::virtio::{device_id, GuestMemory, QueueFault, VirtioDevice};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;

/// Bytes per sector: the unit of `capacity` and of request sector numbers, whatever
/// `blk_size` says.
pub const SECTOR_SIZE: u64 = 512;

/// Most data segments per request (`seg_max`): with the header and the status descriptor a
/// request still fits in the ring when the driver does not use indirect descriptors.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

/// Most descriptors accepted in one chain; longer chains (only possible through indirect
/// tables, which may hold 65535) fail with IOERR. Generous next to `SEG_MAX + 2`, because
/// the driver may also split the header and status across descriptors.
pub const MAX_CHAIN_DESCRIPTORS: usize = 1024;

/// Length of the GET_ID answer: a NUL-padded ASCII string.
pub const ID_BYTES: usize = 20;

/// Bytes moved between the image and guest memory per step; the device's host memory use
/// does not grow with request size.
pub const BOUNCE_BUFFER_SIZE: usize = 128 * 1024;

/// `max_discard_sectors`: discard is a validated no-op, so any size is cheap.
pub const MAX_DISCARD_SECTORS: u32 = u32::MAX;
/// `max_discard_seg`.
pub const MAX_DISCARD_SEG: u32 = 16;
/// `max_write_zeroes_sectors` (64 MiB): write zeroes really writes, and the vCPU that
/// kicked the queue waits for it, so one request's work is bounded.
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 17;
/// `max_write_zeroes_seg`.
pub const MAX_WRITE_ZEROES_SEG: u32 = 16;

/// Size of the configuration space the device implements (`struct virtio_blk_config` up
/// to and including the write-zeroes fields); bytes beyond read as zero.
pub const CONFIG_SIZE: usize = 60;

/// Length of the request header (`type`, `reserved`, `sector`).
const HEADER_LEN: u64 = 16;
/// Length of one discard / write-zeroes segment.
const RANGE_LEN: u64 = 16;

/// virtio-blk feature bits (VirtIO 1.2 §5.2.3).
pub mod feature {
    /// Maximum size of any single segment is in `size_max` (not offered).
    pub const SIZE_MAX: u64 = 1 << 1;
    /// Maximum number of segments in a request is in `seg_max`.
    pub const SEG_MAX: u64 = 1 << 2;
    /// The device is read-only.
    pub const RO: u64 = 1 << 5;
    /// The optimal block size is in `blk_size`.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// Cache flush command support.
    pub const FLUSH: u64 = 1 << 9;
    /// Discard command support.
    pub const DISCARD: u64 = 1 << 13;
    /// Write zeroes command support.
    pub const WRITE_ZEROES: u64 = 1 << 14;
}

/// Request types (the `type` field of the request header).
pub mod request_type {
    /// Read sectors.
    pub const IN: u32 = 0;
    /// Write sectors.
    pub const OUT: u32 = 1;
    /// Commit written data to stable storage.
    pub const FLUSH: u32 = 4;
    /// Fetch the device ID (serial) string.
    pub const GET_ID: u32 = 8;
    /// Storage lifetime information (not supported).
    pub const GET_LIFETIME: u32 = 10;
    /// Discard sector ranges.
    pub const DISCARD: u32 = 11;
    /// Write zeroes to sector ranges.
    pub const WRITE_ZEROES: u32 = 13;
    /// Secure erase (not supported).
    pub const SECURE_ERASE: u32 = 14;
}

/// Request status values (the last byte of every request).
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// Device or driver error.
    pub const IOERR: u8 = 1;
    /// Request type not supported.
    pub const UNSUPP: u8 = 2;
}

/// Flag of a write-zeroes segment: the device may deallocate the range.
const RANGE_FLAG_UNMAP: u32 = 1;

/// Why a block device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened (missing, unreadable, or not writable when a writable
    /// device was asked for).
    #[error("cannot open disk image {path} for {mode}: {source}")]
    Open {
        /// The image path.
        path: PathBuf,
        /// "reading" or "reading and writing".
        mode: &'static str,
        /// What the host said.
        #[source]
        source: io::Error,
    },
    /// The image path names a directory.
    #[error("disk image {path} is a directory, not a file")]
    NotAFile {
        /// The image path.
        path: PathBuf,
    },
    /// The image size could not be determined.
    #[error("cannot determine the size of disk image {path}: {source}")]
    Size {
        /// The image path.
        path: PathBuf,
        /// What the host said.
        #[source]
        source: io::Error,
    },
    /// A serial number that GET_ID cannot carry.
    #[error("disk serial {0:?} must be at most 20 printable ASCII characters")]
    Serial(String),
}

/// Counters for the embedder (and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Requests completed, whatever their status.
    pub requests: u64,
    /// Requests completed with VIRTIO_BLK_S_IOERR.
    pub io_errors: u64,
    /// Bytes read from the image into guest memory.
    pub bytes_read: u64,
    /// Bytes written to the image (data and zeroes).
    pub bytes_written: u64,
    /// `sync_data` calls that completed (flushes and writethrough writes).
    pub syncs: u64,
}

/// A virtio-blk device serving one raw image file.
pub struct Block {
    file: File,
    path: PathBuf,
    read_only: bool,
    /// Capacity in 512-byte sectors.
    capacity: u64,
    serial: [u8; ID_BYTES],
    config: [u8; CONFIG_SIZE],
    /// Features the driver accepted at DRIVER_OK (0 before and after reset).
    driver_features: u64,
    bounce: Vec<u8>,
    stats: BlockStats,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("path", &self.path)
            .field("read_only", &self.read_only)
            .field("capacity", &self.capacity)
            .field("driver_features", &self.driver_features)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// What a request produced: its status and how many bytes of data the device wrote into
/// the request's writable buffers.
type Outcome = (u8, u64);

/// Request failed with IOERR.
const IOERR: Outcome = (status::IOERR, 0);
/// Request type or flag not supported.
const UNSUPP: Outcome = (status::UNSUPP, 0);

impl Block {
    /// Opens the raw image at `path`; with `read_only` the image is opened for reading only
    /// and the device offers VIRTIO_BLK_F_RO. The capacity is the image size in whole
    /// 512-byte sectors (a trailing partial sector is not exposed). The serial string is
    /// empty until [`Block::with_serial`].
    ///
    /// # Errors
    ///
    /// [`BlockError`] when the image is missing, cannot be opened in the requested mode,
    /// is a directory, or its size cannot be read.
    pub fn open(path: impl AsRef<Path>, read_only: bool) -> Result<Self, BlockError> {
        let path = path.as_ref().to_path_buf();
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&path)
            .map_err(|source| BlockError::Open {
                path: path.clone(),
                mode: if read_only {
                    "reading"
                } else {
                    "reading and writing"
                },
                source,
            })?;
        let meta = file.metadata().map_err(|source| BlockError::Size {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            return Err(BlockError::NotAFile { path });
        }
        // Seeking to the end measures host block devices too, where metadata says 0.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Size {
                path: path.clone(),
                source,
            })?;
        let mut dev = Self {
            file,
            path,
            read_only,
            capacity: size / SECTOR_SIZE,
            serial: [0; ID_BYTES],
            config: [0; CONFIG_SIZE],
            driver_features: 0,
            bounce: vec![0; BOUNCE_BUFFER_SIZE],
            stats: BlockStats::default(),
        };
        dev.config = dev.build_config();
        Ok(dev)
    }

    /// Sets the string VIRTIO_BLK_T_GET_ID returns (Linux shows it as
    /// `/sys/block/vdX/serial` and `/dev/disk/by-id/virtio-<serial>`).
    ///
    /// # Errors
    ///
    /// [`BlockError::Serial`] unless `serial` is at most 20 printable ASCII characters.
    pub fn with_serial(mut self, serial: &str) -> Result<Self, BlockError> {
        let ok =
            serial.len() <= ID_BYTES && serial.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
        if !ok {
            return Err(BlockError::Serial(serial.to_owned()));
        }
        self.serial = [0; ID_BYTES];
        self.serial[..serial.len()].copy_from_slice(serial.as_bytes());
        Ok(self)
    }

    /// The image path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the device is read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Counters since the device was opened.
    pub fn stats(&self) -> BlockStats {
        self.stats
    }

    /// Features the driver accepted (0 until DRIVER_OK).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    fn build_config(&self) -> [u8; CONFIG_SIZE] {
        let mut c = [0u8; CONFIG_SIZE];
        let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &self.capacity.to_le_bytes());
        // size_max (8) is not offered and stays 0; geometry (16) too.
        put(12, &SEG_MAX.to_le_bytes());
        put(20, &(SECTOR_SIZE as u32).to_le_bytes());
        // topology (24..32) is not offered; writeback (32) is 0 as CONFIG_WCE is not.
        put(34, &1u16.to_le_bytes());
        if !self.read_only {
            put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
            put(40, &MAX_DISCARD_SEG.to_le_bytes());
            // discard_sector_alignment, in sectors.
            put(44, &1u32.to_le_bytes());
            put(48, &MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
            put(52, &MAX_WRITE_ZEROES_SEG.to_le_bytes());
            // write_zeroes_may_unmap (56) stays 0: write zeroes never deallocates.
        }
        c
    }

    /// Whether sectors `sector .. sector + count` exist; returns the byte offset.
    fn range(&self, sector: u64, count: u64) -> Option<u64> {
        let end = sector.checked_add(count)?;
        if end > self.capacity {
            return None;
        }
        sector.checked_mul(SECTOR_SIZE)
    }

    /// Whether completed writes must be stable (FLUSH offered but not accepted).
    fn writethrough(&self) -> bool {
        self.driver_features & feature::FLUSH == 0
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.stats.syncs += 1;
        Ok(())
    }

    /// Serves one chain; returns the used length, or a fault when the chain has no status
    /// byte to answer through.
    fn process<M>(
        &mut self,
        mem: &GuestMemory,
        chain: DescriptorChain<M>,
    ) -> Result<u32, QueueFault>
    where
        M: std::ops::Deref<Target = GuestMemory>,
    {
        let req = Chain::parse(mem, chain)?;
        let (st, written) = self.execute(mem, &req);
        req.write_status(mem, st)?;
        self.stats.requests += 1;
        if st == status::IOERR {
            self.stats.io_errors += 1;
        }
        // The used length counts the data written and the status byte; a failed request
        // reports only the status byte. `written` is at most a chain's length (< 4 GiB).
        Ok(if st == status::OK {
            u32::try_from(written.saturating_add(1)).unwrap_or(u32::MAX)
        } else {
            1
        })
    }

    fn execute(&mut self, mem: &GuestMemory, req: &Chain) -> Outcome {
        if req.defect.is_some() || req.readable_len < HEADER_LEN {
            return IOERR;
        }
        let mut readable = Stream::new(mem, &req.readable);
        let mut header = [0u8; HEADER_LEN as usize];
        if readable.read(&mut header).is_err() {
            return IOERR;
        }
        let ty = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        match ty {
            request_type::IN => self.read(mem, req, sector),
            request_type::OUT => self.write(req, readable, sector),
            request_type::FLUSH => self.flush(),
            request_type::GET_ID => self.get_id(mem, req),
            request_type::DISCARD if self.driver_features & feature::DISCARD != 0 => {
                self.ranges(req, readable, false)
            }
            request_type::WRITE_ZEROES if self.driver_features & feature::WRITE_ZEROES != 0 => {
                self.ranges(req, readable, true)
            }
            _ => UNSUPP,
        }
    }

    /// VIRTIO_BLK_T_IN: the data buffers must all be device-writable.
    fn read(&mut self, mem: &GuestMemory, req: &Chain, sector: u64) -> Outcome {
        let len = req.writable_len;
        if req.readable_len != HEADER_LEN || len % SECTOR_SIZE != 0 {
            return IOERR;
        }
        let Some(offset) = self.range(sector, len / SECTOR_SIZE) else {
            return IOERR;
        };
        if self.file.seek(SeekFrom::Start(offset)).is_err() {
            return IOERR;
        }
        let mut out = Stream::new(mem, &req.writable);
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(BOUNCE_BUFFER_SIZE as u64) as usize;
            let chunk = &mut self.bounce[..n];
            if self.file.read_exact(chunk).is_err() || out.write(chunk).is_err() {
                return IOERR;
            }
            done += n as u64;
            self.stats.bytes_read += n as u64;
        }
        (status::OK, len)
    }

    /// VIRTIO_BLK_T_OUT: the data follows the header in the readable buffers and nothing but
    /// the status byte may be device-writable.
    fn write(&mut self, req: &Chain, mut data: Stream<'_>, sector: u64) -> Outcome {
        // §5.2.6.2: a read-only device fails writes and writes no data.
        if self.read_only || req.writable_len != 0 {
            return IOERR;
        }
        let len = req.readable_len - HEADER_LEN;
        if len % SECTOR_SIZE != 0 {
            return IOERR;
        }
        let Some(offset) = self.range(sector, len / SECTOR_SIZE) else {
            return IOERR;
        };
        if self.file.seek(SeekFrom::Start(offset)).is_err() {
            return IOERR;
        }
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(BOUNCE_BUFFER_SIZE as u64) as usize;
            let chunk = &mut self.bounce[..n];
            if data.read(chunk).is_err() || self.file.write_all(chunk).is_err() {
                return IOERR;
            }
            done += n as u64;
            self.stats.bytes_written += n as u64;
        }
        if len > 0 && self.writethrough() && self.sync().is_err() {
            return IOERR;
        }
        (status::OK, 0)
    }

    /// VIRTIO_BLK_T_FLUSH: everything completed before is on stable storage when this
    /// completes. Any data buffers (which drivers should not send) are ignored.
    fn flush(&mut self) -> Outcome {
        if self.read_only {
            return (status::OK, 0);
        }
        match self.sync() {
            Ok(()) => (status::OK, 0),
            Err(_) => IOERR,
        }
    }

    /// VIRTIO_BLK_T_GET_ID: the serial, NUL-padded to the writable length (drivers send
    /// 20 bytes; a shorter buffer gets a prefix).
    fn get_id(&mut self, mem: &GuestMemory, req: &Chain) -> Outcome {
        let len = req.writable_len;
        if req.readable_len != HEADER_LEN || len == 0 {
            return IOERR;
        }
        let mut out = Stream::new(mem, &req.writable);
        let id = &self.serial[..(len as usize).min(ID_BYTES)];
        if out.write(id).is_err() {
            return IOERR;
        }
        // Pad anything beyond 20 bytes with NULs so that all `len` bytes were written.
        let mut left = len - id.len() as u64;
        let zeros = [0u8; 512];
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            if out.write(&zeros[..n]).is_err() {
                return IOERR;
            }
            left -= n as u64;
        }
        (status::OK, len)
    }

    /// VIRTIO_BLK_T_DISCARD (`zero == false`) and VIRTIO_BLK_T_WRITE_ZEROES: every segment
    /// is checked before any is acted on.
    fn ranges(&mut self, req: &Chain, mut data: Stream<'_>, zero: bool) -> Outcome {
        if self.read_only || req.writable_len != 0 {
            return IOERR;
        }
        let (max_seg, max_sectors) = if zero {
            (MAX_WRITE_ZEROES_SEG, MAX_WRITE_ZEROES_SECTORS)
        } else {
            (MAX_DISCARD_SEG, MAX_DISCARD_SECTORS)
        };
        let len = req.readable_len - HEADER_LEN;
        if len == 0 || len % RANGE_LEN != 0 || len / RANGE_LEN > u64::from(max_seg) {
            return IOERR;
        }
        let mut ranges = Vec::with_capacity((len / RANGE_LEN) as usize);
        for _ in 0..len / RANGE_LEN {
            let mut raw = [0u8; RANGE_LEN as usize];
            if data.read(&mut raw).is_err() {
                return IOERR;
            }
            let sector = u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes"));
            let count = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes"));
            let flags = u32::from_le_bytes(raw[12..16].try_into().expect("4 bytes"));
            ranges.push((sector, count, flags));
        }
        // §5.2.6.2: unknown flags, or unmap on a discard, are UNSUPP.
        let allowed = if zero { RANGE_FLAG_UNMAP } else { 0 };
        if ranges.iter().any(|&(_, _, flags)| flags & !allowed != 0) {
            return UNSUPP;
        }
        let mut checked = Vec::with_capacity(ranges.len());
        for &(sector, count, _) in &ranges {
            match self.range(sector, u64::from(count)) {
                Some(offset) if count <= max_sectors => checked.push((offset, count)),
                _ => return IOERR,
            }
        }
        if !zero {
            // Discard may deallocate; not deallocating is always correct.
            return (status::OK, 0);
        }
        self.bounce.fill(0);
        for (offset, count) in checked {
            if self.file.seek(SeekFrom::Start(offset)).is_err() {
                return IOERR;
            }
            let mut left = u64::from(count) * SECTOR_SIZE;
            while left > 0 {
                let n = left.min(BOUNCE_BUFFER_SIZE as u64) as usize;
                if self.file.write_all(&self.bounce[..n]).is_err() {
                    return IOERR;
                }
                left -= n as u64;
                self.stats.bytes_written += n as u64;
            }
        }
        if self.writethrough() && self.sync().is_err() {
            return IOERR;
        }
        (status::OK, 0)
    }
}

impl VirtioDevice for Block {
    fn device_id(&self) -> u32 {
        device_id::BLOCK
    }

    fn features(&self) -> u64 {
        let base =
            feature::SEG_MAX | feature::BLK_SIZE | feature::FLUSH | VIRTIO_RING_F_INDIRECT_DESC;
        if self.read_only {
            base | feature::RO
        } else {
            base | feature::DISCARD | feature::WRITE_ZEROES
        }
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Only `writeback` is writable, and only with CONFIG_WCE, which is not offered.
    }

    fn activate(&mut self, features: u64) {
        self.driver_features = features;
    }

    fn reset(&mut self) {
        self.driver_features = 0;
    }

    fn queue_notify(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, QueueFault> {
        let chains: Vec<_> = crate::virtio::take_chains(queue, mem)?;
        let mut used = false;
        for chain in chains {
            let head = chain.head_index();
            let len = self.process(mem, chain)?;
            queue.add_used(mem, head, len)?;
            used = true;
        }
        Ok(used)
    }
}
