//! A small ext4 image writer (and reader), in pure Rust, so the tests that mount ext4 in
//! the guest need no `mke2fs` on the host (Linux or macOS).
//!
//! [`write_ext4_image`] lays out a single-block-group ext4 filesystem with 4 KiB blocks
//! (up to 128 MiB): the superblock at byte 1024, one 32-byte group descriptor (no `64bit`
//! feature), the block and inode bitmaps, the inode table (256-byte inodes with 32 bytes
//! of extra fields), the root directory (inode 2) with `lost+found` (inode 11) and the
//! given regular files. Features: `filetype` and `extents` (incompatible), `sparse_super`,
//! `large_file` and `extra_isize` (read-only compatible); no journal, no checksums, no
//! `flex_bg`, no htree directories. Every file's data is contiguous, so each one is a
//! single extent held in the inode (depth 0). The layout follows the kernel's
//! `Documentation/filesystems/ext4/` (superblock, group descriptors, inodes, extent
//! tree, linear directories); `e2fsck -fn` finds nothing to fix on what it writes.
//!
//! [`read_ext4_file`] reads a regular file back out of the root directory of such an
//! image after a guest has changed it (any extent-tree depth, linear directories), so
//! a test can check on the host what a guest wrote.

use std::fs;
use std::io;
use std::path::Path;

use sha2::{Digest, Sha256};

/// The block size.
pub const BLOCK_SIZE: u64 = 4096;
/// Blocks per group: one bitmap block's worth of bits. The image is a single group, so
/// this bounds its size (128 MiB).
pub const BLOCKS_PER_GROUP: u64 = BLOCK_SIZE * 8;
/// The inode size.
pub const INODE_SIZE: u64 = 256;
/// Bytes of the inode beyond the original 128 that are in use (`i_extra_isize`).
const EXTRA_ISIZE: u16 = 32;
/// The ext2/3/4 magic number.
pub const MAGIC: u16 = 0xEF53;
/// The root directory's inode.
pub const ROOT_INO: u32 = 2;
/// `lost+found`'s inode (the first non-reserved inode).
pub const LOST_FOUND_INO: u32 = 11;

const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_EXTENTS: u32 = 0x40;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_LARGE_FILE: u32 = 0x2;
const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;
const EXTENTS_FL: u32 = 0x8_0000;
const EXTENT_MAGIC: u16 = 0xF30A;
/// The longest initialised extent, in blocks.
const MAX_EXTENT_LEN: u64 = 32768;
/// A fixed timestamp (2023-11-14), so the image is a function of its inputs only.
const TIMESTAMP: u32 = 1_700_000_000;

const FT_REG_FILE: u8 = 1;
const FT_DIR: u8 = 2;
const S_IFREG: u16 = 0o100_000;
const S_IFDIR: u16 = 0o040_000;

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn put16(buf: &mut [u8], off: usize, v: u16) {
    buf[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn get16(buf: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([buf[off], buf[off + 1]])
}

fn get32(buf: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]])
}

fn set_bit(bitmap: &mut [u8], bit: u64) {
    bitmap[(bit / 8) as usize] |= 1 << (bit % 8);
}

/// Blocks needed for `len` bytes.
fn blocks_for(len: u64) -> u64 {
    len.div_ceil(BLOCK_SIZE)
}

/// Linear directory blocks holding `entries` (inode, file type, name), each block's last
/// entry stretched to the block's end.
fn directory_blocks(entries: &[(u32, u8, &[u8])]) -> Vec<u8> {
    let bs = BLOCK_SIZE as usize;
    let mut out = Vec::new();
    let mut block = vec![0u8; bs];
    let mut pos = 0usize;
    let mut last: Option<usize> = None;
    for &(ino, ft, name) in entries {
        let len = (8 + name.len()).next_multiple_of(4);
        if pos + len > bs {
            let l = last.expect("an entry fits in an empty block");
            put16(&mut block, l + 4, (bs - l) as u16);
            out.extend_from_slice(&block);
            block.fill(0);
            pos = 0;
        }
        put32(&mut block, pos, ino);
        put16(&mut block, pos + 4, len as u16);
        block[pos + 6] = name.len() as u8;
        block[pos + 7] = ft;
        block[pos + 8..pos + 8 + name.len()].copy_from_slice(name);
        last = Some(pos);
        pos += len;
    }
    if let Some(l) = last {
        put16(&mut block, l + 4, (bs - l) as u16);
        out.extend_from_slice(&block);
    }
    out
}

/// One inode: `mode`, `links`, `size` bytes held in `nblocks` blocks from `start`
/// (one extent, or none when `nblocks` is 0).
fn inode(mode: u16, links: u16, size: u64, start: u64, nblocks: u64) -> [u8; INODE_SIZE as usize] {
    let mut ino = [0u8; INODE_SIZE as usize];
    put16(&mut ino, 0x0, mode);
    put32(&mut ino, 0x4, size as u32);
    put32(&mut ino, 0x8, TIMESTAMP);
    put32(&mut ino, 0xC, TIMESTAMP);
    put32(&mut ino, 0x10, TIMESTAMP);
    put16(&mut ino, 0x1A, links);
    put32(&mut ino, 0x1C, (nblocks * (BLOCK_SIZE / 512)) as u32);
    put32(&mut ino, 0x20, EXTENTS_FL);
    // i_block: the extent header, then the extents (at most 4 in the inode).
    let extents: Vec<(u64, u64)> = (0..nblocks)
        .step_by(MAX_EXTENT_LEN as usize)
        .map(|first| (first, (nblocks - first).min(MAX_EXTENT_LEN)))
        .collect();
    assert!(extents.len() <= 4, "a file of more than 4 extents");
    put16(&mut ino, 0x28, EXTENT_MAGIC);
    put16(&mut ino, 0x2A, extents.len() as u16);
    put16(&mut ino, 0x2C, 4);
    put16(&mut ino, 0x2E, 0);
    for (i, &(first, len)) in extents.iter().enumerate() {
        let e = 0x28 + 12 + 12 * i;
        let phys = start + first;
        put32(&mut ino, e, first as u32);
        put16(&mut ino, e + 4, len as u16);
        put16(&mut ino, e + 6, (phys >> 32) as u16);
        put32(&mut ino, e + 8, phys as u32);
    }
    put32(&mut ino, 0x6C, (size >> 32) as u32);
    put16(&mut ino, 0x80, EXTRA_ISIZE);
    ino
}

/// Writes an ext4 filesystem of `size_bytes` (rounded down to whole 4 KiB blocks; at
/// most 128 MiB, one block group) to `path`, holding `files` (name, contents) as regular
/// files (mode 0644, root-owned) in the root directory, next to an empty `lost+found`.
///
/// # Errors
///
/// A name that is empty, longer than 255 bytes, `.`/`..`/`lost+found`, repeated or
/// contains `/` or NUL; an image too small for the files or larger than one block
/// group; or writing the file failing.
pub fn write_ext4_image(path: &Path, size_bytes: u64, files: &[(&str, &[u8])]) -> io::Result<()> {
    let image = ext4_image(size_bytes, files)?;
    fs::write(path, image)
}

/// [`write_ext4_image`]'s image, in memory.
///
/// # Errors
///
/// As [`write_ext4_image`], except writing.
pub fn ext4_image(size_bytes: u64, files: &[(&str, &[u8])]) -> io::Result<Vec<u8>> {
    let mut names = std::collections::HashSet::new();
    for (name, _) in files {
        if name.is_empty()
            || name.len() > 255
            || name.contains(['/', '\0'])
            || matches!(*name, "." | ".." | "lost+found")
            || !names.insert(*name)
        {
            return Err(invalid(format!("ext4: bad or repeated file name {name:?}")));
        }
    }
    let blocks = size_bytes / BLOCK_SIZE;
    if blocks > BLOCKS_PER_GROUP {
        return Err(invalid(format!(
            "ext4: {size_bytes} bytes is more than one block group ({} bytes)",
            BLOCKS_PER_GROUP * BLOCK_SIZE
        )));
    }
    // One inode per 16 KiB, whole inode-table blocks, room for the files.
    let per_block = BLOCK_SIZE / INODE_SIZE;
    let inodes = (blocks / 4)
        .max(LOST_FOUND_INO as u64 + files.len() as u64)
        .max(64)
        .next_multiple_of(per_block)
        .min(BLOCKS_PER_GROUP);
    let table_blocks = inodes / per_block;
    if LOST_FOUND_INO as u64 + files.len() as u64 > inodes {
        return Err(invalid("ext4: too many files".into()));
    }

    // Block 0: boot sector + superblock; 1: group descriptors; 2: block bitmap;
    // 3: inode bitmap; then the inode table, the root directory, lost+found, the files.
    let (block_bitmap, inode_bitmap, inode_table) = (2u64, 3u64, 4u64);
    let mut root_entries: Vec<(u32, u8, &[u8])> = vec![
        (ROOT_INO, FT_DIR, b"."),
        (ROOT_INO, FT_DIR, b".."),
        (LOST_FOUND_INO, FT_DIR, b"lost+found"),
    ];
    for (i, (name, _)) in files.iter().enumerate() {
        root_entries.push((LOST_FOUND_INO + 1 + i as u32, FT_REG_FILE, name.as_bytes()));
    }
    let root_dir = directory_blocks(&root_entries);
    let lf_dir = directory_blocks(&[(LOST_FOUND_INO, FT_DIR, b"."), (ROOT_INO, FT_DIR, b"..")]);
    let root_start = inode_table + table_blocks;
    let lf_start = root_start + blocks_for(root_dir.len() as u64);
    let mut next = lf_start + blocks_for(lf_dir.len() as u64);
    let mut file_starts = Vec::with_capacity(files.len());
    for (_, data) in files {
        file_starts.push(next);
        next += blocks_for(data.len() as u64);
    }
    let used_blocks = next;
    if used_blocks > blocks {
        return Err(invalid(format!(
            "ext4: {size_bytes} bytes is too small: the metadata and files need {} bytes",
            used_blocks * BLOCK_SIZE
        )));
    }
    let used_inodes = LOST_FOUND_INO as u64 + files.len() as u64;

    let bs = BLOCK_SIZE as usize;
    let mut img = vec![0u8; (blocks * BLOCK_SIZE) as usize];

    // The superblock.
    let uuid = {
        let mut h = Sha256::new();
        h.update(b"quetzal-ext4");
        h.update(size_bytes.to_le_bytes());
        for (name, data) in files {
            h.update(name.as_bytes());
            h.update((data.len() as u64).to_le_bytes());
        }
        let d = h.finalize();
        let mut u = [0u8; 16];
        u.copy_from_slice(&d[..16]);
        u[6] = (u[6] & 0x0F) | 0x40; // version 4
        u[8] = (u[8] & 0x3F) | 0x80; // RFC 4122 variant
        u
    };
    {
        let sb = &mut img[1024..2048];
        put32(sb, 0x0, inodes as u32);
        put32(sb, 0x4, blocks as u32);
        put32(sb, 0xC, (blocks - used_blocks) as u32);
        put32(sb, 0x10, (inodes - used_inodes) as u32);
        put32(sb, 0x14, 0); // s_first_data_block (0 for blocks > 1 KiB)
        put32(sb, 0x18, 2); // s_log_block_size: 1024 << 2
        put32(sb, 0x1C, 2); // s_log_cluster_size (= block size without bigalloc)
        put32(sb, 0x20, BLOCKS_PER_GROUP as u32);
        put32(sb, 0x24, BLOCKS_PER_GROUP as u32);
        put32(sb, 0x28, inodes as u32);
        put32(sb, 0x30, TIMESTAMP); // s_wtime
        put16(sb, 0x36, 0xFFFF); // s_max_mnt_count: -1, no forced checks
        put16(sb, 0x38, MAGIC);
        put16(sb, 0x3A, 1); // s_state: cleanly unmounted
        put16(sb, 0x3C, 1); // s_errors: continue
        put32(sb, 0x40, TIMESTAMP); // s_lastcheck
        put32(sb, 0x48, 0); // s_creator_os: Linux
        put32(sb, 0x4C, 1); // s_rev_level: dynamic
        put32(sb, 0x54, LOST_FOUND_INO); // s_first_ino
        put16(sb, 0x58, INODE_SIZE as u16);
        put32(sb, 0x5C, 0); // compat
        put32(sb, 0x60, INCOMPAT_FILETYPE | INCOMPAT_EXTENTS);
        put32(
            sb,
            0x64,
            RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE | RO_COMPAT_EXTRA_ISIZE,
        );
        sb[0x68..0x78].copy_from_slice(&uuid);
        sb[0x78..0x78 + 7].copy_from_slice(b"quetzal");
        for i in 0..4 {
            // s_hash_seed, for htree directories should the kernel build any.
            sb[0xEC + 4 * i..0xF0 + 4 * i].copy_from_slice(&uuid[4 * i..4 * i + 4]);
        }
        sb[0xFC] = 1; // s_def_hash_version: half MD4
        put32(sb, 0x108, TIMESTAMP); // s_mkfs_time
        put16(sb, 0x15C, EXTRA_ISIZE); // s_min_extra_isize
        put16(sb, 0x15E, EXTRA_ISIZE); // s_want_extra_isize
        put32(sb, 0x160, 1); // s_flags: signed directory hash
    }

    // The group descriptor.
    {
        let gd = &mut img[bs..bs + 32];
        put32(gd, 0x0, block_bitmap as u32);
        put32(gd, 0x4, inode_bitmap as u32);
        put32(gd, 0x8, inode_table as u32);
        put16(gd, 0xC, (blocks - used_blocks) as u16);
        put16(gd, 0xE, (inodes - used_inodes) as u16);
        put16(gd, 0x10, 2); // used directories: / and lost+found
    }

    // The bitmaps: used blocks and inodes, plus the bits past the end of the group.
    {
        let bm = &mut img[block_bitmap as usize * bs..][..bs];
        for b in (0..used_blocks).chain(blocks..BLOCKS_PER_GROUP) {
            set_bit(bm, b);
        }
    }
    {
        let im = &mut img[inode_bitmap as usize * bs..][..bs];
        for i in (0..used_inodes).chain(inodes..BLOCKS_PER_GROUP) {
            set_bit(im, i);
        }
    }

    // The inodes (inode n is entry n - 1 of the table).
    let put_inode = |img: &mut [u8], ino: u32, raw: [u8; INODE_SIZE as usize]| {
        let off = (inode_table * BLOCK_SIZE + (ino as u64 - 1) * INODE_SIZE) as usize;
        img[off..off + INODE_SIZE as usize].copy_from_slice(&raw);
    };
    let dir_inode = |mode: u16, links: u16, start: u64, bytes: usize| {
        inode(
            S_IFDIR | mode,
            links,
            bytes as u64,
            start,
            blocks_for(bytes as u64),
        )
    };
    put_inode(
        &mut img,
        ROOT_INO,
        dir_inode(0o755, 3, root_start, root_dir.len()),
    );
    put_inode(
        &mut img,
        LOST_FOUND_INO,
        dir_inode(0o700, 2, lf_start, lf_dir.len()),
    );
    for (i, ((_, data), &start)) in files.iter().zip(&file_starts).enumerate() {
        let raw = inode(
            S_IFREG | 0o644,
            1,
            data.len() as u64,
            start,
            blocks_for(data.len() as u64),
        );
        put_inode(&mut img, LOST_FOUND_INO + 1 + i as u32, raw);
    }

    // The data.
    let mut place = |start: u64, data: &[u8]| {
        let off = (start * BLOCK_SIZE) as usize;
        img[off..off + data.len()].copy_from_slice(data);
    };
    place(root_start, &root_dir);
    place(lf_start, &lf_dir);
    for ((_, data), &start) in files.iter().zip(&file_starts) {
        place(start, data);
    }
    Ok(img)
}

/// What [`check_ext4_image`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Summary {
    /// `s_blocks_count`.
    pub blocks: u64,
    /// `s_inodes_count`.
    pub inodes: u64,
    /// Free blocks (superblock, group descriptor and bitmap agree).
    pub free_blocks: u64,
    /// Free inodes (superblock, group descriptor and bitmap agree).
    pub free_inodes: u64,
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("ext4: {msg}"))
}

/// The parts of a single-group, 4 KiB-block image this module reads.
struct Geometry<'a> {
    img: &'a [u8],
    block_size: u64,
    inode_size: u64,
    inodes: u64,
    inode_table: u64,
}

impl<'a> Geometry<'a> {
    fn new(img: &'a [u8]) -> io::Result<Self> {
        if img.len() < 2048 {
            return Err(corrupt("image shorter than a superblock".into()));
        }
        let sb = &img[1024..2048];
        if get16(sb, 0x38) != MAGIC {
            return Err(corrupt(format!("bad magic {:#x}", get16(sb, 0x38))));
        }
        let block_size = 1024u64 << get32(sb, 0x18).min(6);
        let inodes_per_group = get32(sb, 0x28) as u64;
        let inodes = get32(sb, 0x0) as u64;
        if inodes != inodes_per_group {
            return Err(corrupt("more than one block group".into()));
        }
        let gdt = (get32(sb, 0x14) as u64 + 1) * block_size;
        let inode_table = get32(img, gdt as usize + 0x8) as u64;
        Ok(Geometry {
            img,
            block_size,
            inode_size: get16(sb, 0x58) as u64,
            inodes,
            inode_table,
        })
    }

    fn block(&self, n: u64) -> io::Result<&'a [u8]> {
        let off = n * self.block_size;
        let end = off + self.block_size;
        if end > self.img.len() as u64 {
            return Err(corrupt(format!("block {n} past the end of the image")));
        }
        Ok(&self.img[off as usize..end as usize])
    }

    fn inode(&self, ino: u32) -> io::Result<&'a [u8]> {
        if ino == 0 || ino as u64 > self.inodes {
            return Err(corrupt(format!("inode {ino} out of range")));
        }
        let off = self.inode_table * self.block_size + (ino as u64 - 1) * self.inode_size;
        self.img
            .get(off as usize..(off + 128) as usize)
            .ok_or_else(|| corrupt(format!("inode {ino} past the end of the image")))
    }

    /// `(logical block, physical block, length, initialised)` of every extent under
    /// the extent-tree node `node`.
    fn extents(
        &self,
        node: &[u8],
        depth_left: u32,
        out: &mut Vec<(u64, u64, u64, bool)>,
    ) -> io::Result<()> {
        if get16(node, 0) != EXTENT_MAGIC {
            return Err(corrupt("bad extent header".into()));
        }
        let entries = get16(node, 2) as usize;
        let depth = get16(node, 6);
        if depth as u32 > depth_left || 12 + 12 * entries > node.len() {
            return Err(corrupt("bad extent tree".into()));
        }
        for i in 0..entries {
            let e = &node[12 + 12 * i..24 + 12 * i];
            if depth == 0 {
                let len = get16(e, 4) as u64;
                let phys = (get16(e, 6) as u64) << 32 | get32(e, 8) as u64;
                let (len, init) = if len > MAX_EXTENT_LEN {
                    (len - MAX_EXTENT_LEN, false)
                } else {
                    (len, true)
                };
                out.push((get32(e, 0) as u64, phys, len, init));
            } else {
                let child = (get16(e, 8) as u64) << 32 | get32(e, 4) as u64;
                self.extents(self.block(child)?, depth as u32 - 1, out)?;
            }
        }
        Ok(())
    }

    /// The contents of inode `ino` (regular file or directory).
    fn contents(&self, ino: u32) -> io::Result<Vec<u8>> {
        let raw = self.inode(ino)?;
        let size = get32(raw, 0x4) as u64 | (get32(raw, 0x6C) as u64) << 32;
        if get32(raw, 0x20) & EXTENTS_FL == 0 {
            return Err(corrupt(format!("inode {ino} does not use extents")));
        }
        let mut extents = Vec::new();
        self.extents(&raw[0x28..0x28 + 60], 5, &mut extents)?;
        let mut data = vec![0u8; size as usize];
        for (logical, phys, len, init) in extents {
            if !init {
                continue;
            }
            for k in 0..len {
                let at = (logical + k) * self.block_size;
                if at >= size {
                    break;
                }
                let n = (size - at).min(self.block_size) as usize;
                data[at as usize..at as usize + n].copy_from_slice(&self.block(phys + k)?[..n]);
            }
        }
        Ok(data)
    }

    /// The entries (inode, file type, name) of directory `ino` (linear directories).
    fn dir_entries(&self, ino: u32) -> io::Result<Vec<(u32, u8, Vec<u8>)>> {
        let data = self.contents(ino)?;
        let mut out = Vec::new();
        for block in data.chunks(self.block_size as usize) {
            let mut pos = 0;
            while pos + 8 <= block.len() {
                let rec_len = get16(block, pos + 4) as usize;
                let name_len = block[pos + 6] as usize;
                if rec_len < 8 + name_len
                    || pos + rec_len > block.len()
                    || !rec_len.is_multiple_of(4)
                {
                    return Err(corrupt(format!("bad directory entry in inode {ino}")));
                }
                let child = get32(block, pos);
                if child != 0 {
                    out.push((
                        child,
                        block[pos + 7],
                        block[pos + 8..pos + 8 + name_len].to_vec(),
                    ));
                }
                pos += rec_len;
            }
        }
        Ok(out)
    }
}

/// Reads regular file `name` from the root directory of the single-group ext4 image
/// `img` (such as [`write_ext4_image`] writes, perhaps changed since by a guest).
///
/// # Errors
///
/// No such file, or the image is not a form this reader understands.
pub fn read_ext4_file(img: &[u8], name: &str) -> io::Result<Vec<u8>> {
    let g = Geometry::new(img)?;
    let (ino, _, _) = g
        .dir_entries(ROOT_INO)?
        .into_iter()
        .find(|(_, _, n)| n == name.as_bytes())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("ext4: no /{name}")))?;
    g.contents(ino)
}

/// Checks the invariants of an image [`write_ext4_image`] wrote that need no e2fsprogs:
/// the magic and revision, free counts that agree between superblock, group descriptor
/// and bitmaps, padding bits set, and a root directory holding `.`, `..` and
/// `lost+found` whose link count matches its subdirectories.
///
/// # Errors
///
/// The first invariant that does not hold.
pub fn check_ext4_image(img: &[u8]) -> io::Result<Ext4Summary> {
    let g = Geometry::new(img)?;
    let sb = &img[1024..2048];
    if get32(sb, 0x4C) != 1
        || get32(sb, 0x54) != LOST_FOUND_INO
        || get16(sb, 0x58) != INODE_SIZE as u16
    {
        return Err(corrupt(
            "not a dynamic-revision superblock with 256-byte inodes".into(),
        ));
    }
    if g.block_size != BLOCK_SIZE {
        return Err(corrupt("not 4 KiB blocks".into()));
    }
    let blocks = get32(sb, 0x4) as u64;
    if blocks > BLOCKS_PER_GROUP || blocks * BLOCK_SIZE > img.len() as u64 {
        return Err(corrupt(
            "block count does not fit the group or the image".into(),
        ));
    }
    let gd = g.block(1)?;
    let bitmap_free = |bm: &[u8], n: u64| -> io::Result<u64> {
        for b in n..BLOCKS_PER_GROUP {
            if bm[(b / 8) as usize] & (1 << (b % 8)) == 0 {
                return Err(corrupt(format!("padding bit {b} of a bitmap is clear")));
            }
        }
        Ok((0..n)
            .filter(|&b| bm[(b / 8) as usize] & (1 << (b % 8)) == 0)
            .count() as u64)
    };
    let free_blocks = bitmap_free(g.block(get32(gd, 0x0) as u64)?, blocks)?;
    let free_inodes = bitmap_free(g.block(get32(gd, 0x4) as u64)?, g.inodes)?;
    if get32(sb, 0xC) as u64 != free_blocks || get16(gd, 0xC) as u64 != free_blocks {
        return Err(corrupt(format!(
            "free block counts disagree with the bitmap ({free_blocks})"
        )));
    }
    if get32(sb, 0x10) as u64 != free_inodes || get16(gd, 0xE) as u64 != free_inodes {
        return Err(corrupt(format!(
            "free inode counts disagree with the bitmap ({free_inodes})"
        )));
    }
    let root = g.dir_entries(ROOT_INO)?;
    let names: Vec<&[u8]> = root.iter().map(|(_, _, n)| n.as_slice()).collect();
    if names.len() < 3 || names[..3] != [b".".as_slice(), b"..", b"lost+found"] {
        return Err(corrupt(
            "the root directory does not start with ., .., lost+found".into(),
        ));
    }
    let subdirs = root
        .iter()
        .filter(|(_, ft, n)| *ft == FT_DIR && n != b"." && n != b"..")
        .count();
    if get16(g.inode(ROOT_INO)?, 0x1A) as usize != 2 + subdirs {
        return Err(corrupt("the root directory's link count is wrong".into()));
    }
    Ok(Ext4Summary {
        blocks,
        inodes: g.inodes,
        free_blocks,
        free_inodes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (x >> 56) as u8
            })
            .collect()
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("quetzal-ext4-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Runs `e2fsck -fn` and `debugfs` on the image when e2fsprogs is installed (an
    /// extra check on developer machines; the structural checks never need it).
    fn e2fsprogs_check(path: &Path, files: &[(&str, &[u8])]) {
        let e2fsck = Path::new("/usr/sbin/e2fsck");
        let debugfs = Path::new("/usr/sbin/debugfs");
        if !e2fsck.exists() {
            eprintln!("no {}; skipping the e2fsck check", e2fsck.display());
            return;
        }
        let out = std::process::Command::new(e2fsck)
            .arg("-fn")
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "e2fsck -fn found problems:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !debugfs.exists() {
            return;
        }
        for (name, data) in files {
            let out = std::process::Command::new(debugfs)
                .arg("-R")
                .arg(format!("cat /{name}"))
                .arg(path)
                .output()
                .unwrap();
            assert!(out.stdout == *data, "debugfs reads /{name} differently");
        }
    }

    #[test]
    fn an_image_holds_its_files_and_its_counts_agree() {
        let big = noise(300 << 10, 7);
        let odd = noise(4097, 8);
        let files: Vec<(&str, &[u8])> = vec![
            ("hello.bin", &big),
            ("greeting.txt", b"hello from the host\n"),
            ("empty", b""),
            ("odd-size", &odd),
        ];
        let img = ext4_image(16 << 20, &files).unwrap();
        assert_eq!(img.len(), 16 << 20);
        assert_eq!(get16(&img, 1024 + 0x38), MAGIC);
        let s = check_ext4_image(&img).unwrap();
        assert_eq!(s.blocks, 4096);
        assert_eq!(s.inodes, 1024);
        assert_eq!(s.free_inodes, s.inodes - 11 - files.len() as u64);
        let data_blocks: u64 = files.iter().map(|(_, d)| blocks_for(d.len() as u64)).sum();
        // boot+sb, gdt, 2 bitmaps, inode table, root, lost+found, data.
        assert_eq!(s.free_blocks, s.blocks - (4 + 1024 / 16 + 2 + data_blocks));
        for (name, data) in &files {
            assert_eq!(read_ext4_file(&img, name).unwrap(), *data, "/{name}");
        }
        assert!(read_ext4_file(&img, "missing").is_err());

        let dir = scratch("check");
        let path = dir.join("fs.img");
        write_ext4_image(&path, 16 << 20, &files).unwrap();
        assert_eq!(fs::read(&path).unwrap(), img);
        e2fsprogs_check(&path, &files);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn many_files_spill_the_root_directory_into_more_blocks() {
        let names: Vec<String> = (0..300)
            .map(|i| format!("file-with-a-longish-name-{i:04}"))
            .collect();
        let contents: Vec<Vec<u8>> = (0..300)
            .map(|i| format!("contents {i}\n").into_bytes())
            .collect();
        let files: Vec<(&str, &[u8])> = names
            .iter()
            .map(String::as_str)
            .zip(contents.iter().map(Vec::as_slice))
            .collect();
        let img = ext4_image(8 << 20, &files).unwrap();
        check_ext4_image(&img).unwrap();
        for (name, data) in &files {
            assert_eq!(read_ext4_file(&img, name).unwrap(), *data);
        }
        let dir = scratch("many");
        let path = dir.join("fs.img");
        fs::write(&path, &img).unwrap();
        e2fsprogs_check(&path, &files[..3]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_names_and_sizes_are_refused() {
        assert!(ext4_image(1 << 20, &[("a/b", b"x")]).is_err());
        assert!(ext4_image(1 << 20, &[("lost+found", b"x")]).is_err());
        assert!(ext4_image(1 << 20, &[("a", b"x"), ("a", b"y")]).is_err());
        assert!(ext4_image(1 << 20, &[("big", &vec![0u8; 2 << 20])]).is_err());
        assert!(ext4_image(256 << 20, &[]).is_err());
    }
}
