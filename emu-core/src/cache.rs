//! The block cache: translated blocks keyed by where their code came from, a per-vCPU
//! direct-mapped jump cache in front, and invalidation by physical page.

use rustc_hash::FxHashMap as HashMap;

use crate::jit::{BlockTier, CompiledBlock};
use crate::translate::Block;

/// Entries in the jump cache (a power of two).
const JUMP_CACHE_ENTRIES: usize = 4096;

/// Key of a block: the physical address of its first byte, its code-segment offset and
/// the mode it was decoded in. The offset is part of the key because RIP-relative
/// operands and branch targets are resolved at translate time; the mode
/// ([`crate::Cpu::mode_key`]: bitness and code-segment base) because the same bytes
/// decode differently in 16-, 32- and 64-bit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct BlockKey {
    phys: u64,
    virt: u64,
    mode: u64,
}

/// One jump-cache slot: the tag (`rip ^ salt`), the physical page the block's first byte
/// came from, the block, and the block's compiled code if it has some, so that running
/// compiled code from RIP touches one cache line.
///
/// A hit counts only if the current fetch translation of RIP still reaches `page` (the
/// caller looks that up in the fetch TLB): so page-table switches and INVLPG, which the
/// TLB already follows, need not empty the jump cache, and a process switch does not
/// cost every block a hash lookup.
#[derive(Clone, Copy)]
#[repr(C)]
struct JumpEntry {
    tag: u64,
    page: u64,
    idx: u32,
    code: Option<CompiledBlock>,
}

const EMPTY_JUMP: JumpEntry = JumpEntry {
    tag: u64::MAX,
    page: u64::MAX,
    idx: 0,
    code: None,
};

/// Translated blocks of one vCPU.
pub struct CodeCache {
    blocks: Vec<Option<(BlockKey, Block)>>,
    free: Vec<u32>,
    by_key: HashMap<BlockKey, u32>,
    by_page: HashMap<u64, Vec<u32>>,
    /// `(rip, block index)` for the current privilege class; `rip == u64::MAX` marks an
    /// empty slot. A hit skips the fetch translation, including its user/supervisor
    /// check, so user and supervisor code each have their own jump cache: a CPL change
    /// swaps them instead of flushing (system calls and interrupts would otherwise empty
    /// it every time).
    jump_cache: Box<[JumpEntry]>,
    /// The jump cache of the other privilege class.
    other_jump_cache: Box<[JumpEntry]>,
    /// Whether `jump_cache` is user mode's.
    user_active: bool,
    /// Jump-cache tags are `rip ^ salt`; a new salt empties both caches at once (the
    /// guest writes CR3 on every context switch). The salt is `epoch << 48` with a 15-bit
    /// epoch: canonical addresses and legacy-mode offsets differ from each other only by
    /// all-zero or all-one top 16 bits, so tags of different epochs can never meet.
    salt: u64,
    /// The current epoch (1..0x8000); wrapping around clears the caches for real.
    epoch: u64,
    /// Bumped with every jump-cache flush (a block dropped, paging or mode changed, the
    /// compiled code freed): direct links filled before are stale
    /// ([`crate::jit::LinkSlot`]). Never wraps, unlike `epoch`.
    link_generation: u64,
    /// Blocks translated since creation (a statistic).
    pub translated: u64,
}

impl Default for CodeCache {
    fn default() -> Self {
        CodeCache {
            blocks: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::default(),
            by_page: HashMap::default(),
            jump_cache: vec![EMPTY_JUMP; JUMP_CACHE_ENTRIES].into_boxed_slice(),
            other_jump_cache: vec![EMPTY_JUMP; JUMP_CACHE_ENTRIES].into_boxed_slice(),
            user_active: false,
            salt: 1 << 48,
            epoch: 1,
            link_generation: 1,
            translated: 0,
        }
    }
}

/// Where compiled code finds what it needs of the jump cache to go straight on to the
/// block at a RIP known only at run time (a return or an indirect branch); see
/// [`CodeCache::jump_cache_address`].
pub mod jump_layout {
    /// Bytes per entry.
    pub const ENTRY_SIZE: i64 = std::mem::size_of::<super::JumpEntry>() as i64;
    /// Mask of the entry index.
    pub const INDEX_MASK: i64 = super::JUMP_CACHE_ENTRIES as i64 - 1;
    /// Offset of the tag (`rip ^ salt`) in an entry.
    pub const TAG: i32 = std::mem::offset_of!(super::JumpEntry, tag) as i32;
    /// Offset of the physical page of the block's first byte.
    pub const PAGE: i32 = std::mem::offset_of!(super::JumpEntry, page) as i32;
    /// Offset of the compiled code (0 if none).
    pub const CODE: i32 = std::mem::offset_of!(super::JumpEntry, code) as i32;
}

impl CodeCache {
    /// Address of the active jump cache's first entry and the current salt: the entry
    /// for `rip` is at index `(rip ^ rip >> 12) & INDEX_MASK` and matches if its tag is
    /// `rip ^ salt` (see [`jump_layout`]). Both stay valid until the run loop next
    /// changes privilege class or flushes the jump cache.
    pub fn jump_cache_address(&self) -> (u64, u64) {
        (self.jump_cache.as_ptr() as u64, self.salt)
    }

    #[inline(always)]
    fn jump_slot(rip: u64) -> usize {
        (rip ^ (rip >> 12)) as usize & (JUMP_CACHE_ENTRIES - 1)
    }

    /// The block for `rip`, from the jump cache only; `page` is the physical page RIP's
    /// fetches reach now.
    #[inline(always)]
    pub fn lookup_fast(&self, rip: u64, page: u64) -> Option<u32> {
        let e = &self.jump_cache[Self::jump_slot(rip)];
        (e.tag == rip ^ self.salt && e.page == page).then_some(e.idx)
    }

    /// The block for `rip` and its compiled code, if the jump cache has both.
    #[inline(always)]
    pub fn lookup_compiled(&self, rip: u64, page: u64) -> Option<(u32, CompiledBlock)> {
        let e = &self.jump_cache[Self::jump_slot(rip)];
        match e.code {
            Some(code) if e.tag == rip ^ self.salt && e.page == page => Some((e.idx, code)),
            _ => None,
        }
    }

    /// Points the jump cache at block `idx` for `rip`, with its compiled code if any.
    fn fill_jump(&mut self, rip: u64, idx: u32) {
        let Some((key, block)) = self.blocks[idx as usize].as_ref() else {
            return;
        };
        let code = match block.tier {
            BlockTier::Compiled(f) => Some(f),
            _ => None,
        };
        self.jump_cache[Self::jump_slot(rip)] = JumpEntry {
            tag: rip ^ self.salt,
            page: key.phys & emu_mmu::PAGE_MASK,
            idx,
            code,
        };
    }

    /// Block `idx` has just been compiled: jump-cache slots that lead to it (in either
    /// privilege class) get its code.
    pub fn note_compiled(&mut self, idx: u32) {
        let Some((_, block)) = self.blocks.get(idx as usize).and_then(|b| b.as_ref()) else {
            return;
        };
        let BlockTier::Compiled(code) = block.tier else {
            return;
        };
        let rip = block.rip;
        let slot = Self::jump_slot(rip);
        let tag = rip ^ self.salt;
        for cache in [&mut self.jump_cache, &mut self.other_jump_cache] {
            let e = &mut cache[slot];
            if e.tag == tag && e.idx == idx {
                e.code = Some(code);
            }
        }
    }

    /// The block translated from physical `phys` at offset `rip` in mode `mode`, if
    /// cached; refills the jump cache on a hit. (The jump cache is keyed by `rip` alone:
    /// the run loop flushes it whenever the mode changes.)
    pub fn lookup(&mut self, phys: u64, rip: u64, mode: u64) -> Option<u32> {
        let idx = *self.by_key.get(&BlockKey {
            phys,
            virt: rip,
            mode,
        })?;
        self.fill_jump(rip, idx);
        Some(idx)
    }

    /// The block translated from physical `phys` at offset `rip` in mode `mode`, if
    /// cached (a look-up that changes nothing).
    pub fn find(&self, phys: u64, rip: u64, mode: u64) -> Option<u32> {
        self.by_key
            .get(&BlockKey {
                phys,
                virt: rip,
                mode,
            })
            .copied()
    }

    /// Adds a block translated from physical `phys` in mode `mode`, returning its index.
    pub fn insert(&mut self, phys: u64, mode: u64, block: Block) -> u32 {
        let rip = block.rip;
        let key = BlockKey {
            phys,
            virt: rip,
            mode,
        };
        let pages = block.pages.clone();
        let idx = match self.free.pop() {
            Some(i) => {
                self.blocks[i as usize] = Some((key, block));
                i
            }
            None => {
                self.blocks.push(Some((key, block)));
                (self.blocks.len() - 1) as u32
            }
        };
        if let Some(old) = self.by_key.insert(key, idx) {
            self.remove(old);
        }
        for page in pages {
            self.by_page.entry(page).or_default().push(idx);
        }
        self.fill_jump(rip, idx);
        self.translated += 1;
        idx
    }

    /// The block at `idx`, for updating its compiled tier.
    ///
    /// # Panics
    ///
    /// As [`CodeCache::block`].
    #[inline(always)]
    pub fn block_mut(&mut self, idx: u32) -> &mut Block {
        &mut self.blocks[idx as usize]
            .as_mut()
            .expect("live block index")
            .1
    }

    /// The block at `idx` if that slot holds one.
    pub fn get_block_mut(&mut self, idx: u32) -> Option<&mut Block> {
        self.blocks
            .get_mut(idx as usize)
            .and_then(|b| b.as_mut())
            .map(|(_, block)| block)
    }

    /// Calls `f` on every live block.
    pub fn for_each_block_mut(&mut self, mut f: impl FnMut(&mut Block)) {
        for (_, block) in self.blocks.iter_mut().flatten() {
            f(block);
        }
    }

    /// The block at `idx`.
    ///
    /// # Panics
    ///
    /// If `idx` does not name a live block (indices come only from this cache, and the
    /// jump cache is flushed whenever a block is dropped).
    #[inline(always)]
    pub fn block(&self, idx: u32) -> &Block {
        &self.blocks[idx as usize]
            .as_ref()
            .expect("live block index")
            .1
    }

    /// Drops every block translated from physical page `page`.
    pub fn invalidate_page(&mut self, page: u64) {
        let Some(list) = self.by_page.remove(&page) else {
            return;
        };
        for idx in list {
            self.remove(idx);
        }
        // Stale indices may sit in the jump cache; dropping all of it is cheap and rare.
        self.clear_jump_caches();
    }

    /// Forgets every RIP-to-block shortcut (after paging or privilege changes, when the
    /// same RIP may now mean other code or may no longer be executable). The blocks stay.
    pub fn flush_jump_cache(&mut self) {
        self.clear_jump_caches();
    }

    /// Makes user mode's (`true`) or supervisor mode's jump cache the active one.
    #[inline]
    pub fn set_user_mode(&mut self, user: bool) {
        if user != self.user_active {
            std::mem::swap(&mut self.jump_cache, &mut self.other_jump_cache);
            self.user_active = user;
        }
    }

    /// The current link generation (see [`crate::jit::LinkSlot`]).
    #[inline(always)]
    pub fn link_generation(&self) -> u64 {
        self.link_generation
    }

    fn clear_jump_caches(&mut self) {
        self.link_generation += 1;
        self.epoch += 1;
        if self.epoch == 0x8000 {
            self.epoch = 1;
            self.jump_cache.fill(EMPTY_JUMP);
            self.other_jump_cache.fill(EMPTY_JUMP);
        }
        self.salt = self.epoch << 48;
    }

    /// Drops every block.
    pub fn flush(&mut self) {
        self.blocks.clear();
        self.free.clear();
        self.by_key.clear();
        self.by_page.clear();
        self.clear_jump_caches();
    }

    /// Number of live blocks.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether no block is cached.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    fn remove(&mut self, idx: u32) {
        // Links into the block's code must not be followed any more.
        self.link_generation += 1;
        let Some((key, block)) = self.blocks[idx as usize].take() else {
            return;
        };
        if self.by_key.get(&key) == Some(&idx) {
            self.by_key.remove(&key);
        }
        for page in &block.pages {
            if let Some(list) = self.by_page.get_mut(page) {
                list.retain(|&i| i != idx);
            }
        }
        self.free.push(idx);
        self.clear_jump_caches();
    }
}
