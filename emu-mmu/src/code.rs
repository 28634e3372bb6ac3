//! Code-page marks shared by the vCPUs of one machine.
//!
//! Each [`crate::Mmu`] keeps its own set of pages that hold translated code (looked at on
//! every write-TLB fill, so it must be cheap and lock-free) and its own list of written
//! code pages for its own code cache. With several vCPUs those sets must agree: a page
//! one vCPU translated code from must not sit in another vCPU's write TLB, and a store by
//! any vCPU (or a device) to a page any vCPU translated code from must drop every vCPU's
//! blocks on it (cross-modifying code).
//!
//! [`CodeShare`] is the shared side: the machine-wide set of marked pages and a bounded
//! log of changes (a page was marked, a page was written, devices wrote a range), each
//! with a sequence number. A vCPU publishes its own changes, and at every block boundary
//! compares one atomic counter with the last sequence number it has seen
//! ([`crate::Mmu::memory_changed`]); when they differ it replays the others' entries into
//! its own set, TLB and written list ([`crate::Mmu::catch_up`]). A vCPU that falls so far
//! behind that the log no longer holds what it missed starts over from the shared set and
//! drops all of its translations.
//!
//! With a single member nothing is logged and the counter never moves, so a
//! uniprocessor machine pays one relaxed load per block and nothing else.
//!
//! # Ordering and its limit
//!
//! A writer stores into guest RAM first and publishes afterwards, under the log's mutex;
//! a reader replays under the same mutex before it runs its next block, so a vCPU that
//! learns of a cross-modification (through an IPI, a flag in memory, anything that makes
//! it look) never runs the stale translation. The window the design leaves open is the
//! opposite race: while vCPU A translates a page, vCPU B stores into it through a write
//! TLB entry filled before A's mark reached B (B flushes it at its next block boundary,
//! at most one block later). A store that races with the first translation of the code it
//! modifies, without any synchronisation between the two CPUs, has no defined outcome on
//! real hardware either (Intel SDM vol. 3 §8.1.3: the modifying processor must
//! synchronise with the executing one), but here the stale block can outlive that moment;
//! the next store to the page or a code-cache flush drops it.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Entries the change log keeps; a member further behind resynchronises from scratch.
const LOG_CAPACITY: usize = 1 << 16;

/// One logged change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Member `by` translated code from page `page`.
    Marked { page: u64, by: usize },
    /// Member `by` stored into code page `page`.
    Written { page: u64, by: usize },
    /// A device wrote `first..=last` (page-aligned bounds); any code there is stale.
    DeviceWrote { first: u64, last: u64 },
}

#[derive(Debug, Default)]
struct Log {
    /// Every page some member translated code from and nobody has written since.
    marks: HashSet<u64>,
    /// Recent changes; `entries[0]` has sequence number `first_seq`.
    entries: VecDeque<Change>,
    first_seq: u64,
}

/// The shared side of the code-page marks (see the module docs).
#[derive(Debug, Default)]
pub struct CodeShare {
    /// Sequence number of the next change (the number of changes logged so far).
    next_seq: AtomicU64,
    /// How many `Mmu`s share this; with one, nothing is logged.
    members: AtomicUsize,
    log: Mutex<Log>,
}

/// What a member learns when it catches up ([`CodeShare::replay`]).
pub(crate) enum Replay {
    /// These changes by others, in order.
    Changes(Vec<Change>),
    /// The log no longer reaches back far enough: here is the whole shared set.
    Resync(HashSet<u64>),
}

impl CodeShare {
    /// Joins a new member; returns its number.
    pub(crate) fn join(&self) -> usize {
        self.members.fetch_add(1, Ordering::AcqRel)
    }

    /// Joins a member created from member `creator`, whose own marks are `creator_marks`:
    /// returns the new member's number, the marks it starts with and the sequence number
    /// it has seen. While there was one member nothing was shared, so the first sibling
    /// seeds the shared set with its creator's marks.
    pub(crate) fn join_sibling(&self, creator_marks: &HashSet<u64>) -> (usize, HashSet<u64>, u64) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if !self.shared() {
            log.marks = creator_marks.clone();
        }
        let member = self.join();
        (
            member,
            log.marks.clone(),
            self.next_seq.load(Ordering::Acquire),
        )
    }

    /// Whether more than one `Mmu` shares the marks.
    #[inline(always)]
    pub(crate) fn shared(&self) -> bool {
        self.members.load(Ordering::Relaxed) > 1
    }

    /// The sequence number the next change will get.
    #[inline(always)]
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq.load(Ordering::Relaxed)
    }

    /// Logs `change`. `seen` is the publisher's last seen sequence number: if nobody else
    /// published since, it moves past this entry too (a member never replays its own
    /// changes unless others' are interleaved, and then skips them by `by`).
    pub(crate) fn publish(&self, change: Change, seen: &mut u64) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        match change {
            Change::Marked { page, .. } => {
                log.marks.insert(page);
            }
            Change::Written { page, .. } => {
                log.marks.remove(&page);
            }
            Change::DeviceWrote { first, last } => log.marks.retain(|&p| p < first || p > last),
        }
        if log.entries.len() == LOG_CAPACITY {
            log.entries.pop_front();
            log.first_seq += 1;
        }
        log.entries.push_back(change);
        let seq = self.next_seq.fetch_add(1, Ordering::AcqRel);
        if *seen == seq {
            *seen = seq + 1;
        }
    }

    /// The changes since sequence number `seen` (which moves to the newest).
    pub(crate) fn replay(&self, seen: &mut u64) -> Replay {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let next = self.next_seq.load(Ordering::Acquire);
        let replay = if *seen < log.first_seq {
            Replay::Resync(log.marks.clone())
        } else {
            let skip = (*seen - log.first_seq) as usize;
            Replay::Changes(log.entries.iter().skip(skip).copied().collect())
        };
        *seen = next;
        replay
    }

    /// Whether any member translated code from `page` (and nobody wrote it since).
    #[cfg(test)]
    pub(crate) fn is_marked(&self, page: u64) -> bool {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.marks.contains(&page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_publisher_never_falls_behind_itself() {
        let share = CodeShare::default();
        share.join();
        let mut seen = 0;
        share.publish(
            Change::Marked {
                page: 0x1000,
                by: 0,
            },
            &mut seen,
        );
        share.publish(
            Change::Written {
                page: 0x1000,
                by: 0,
            },
            &mut seen,
        );
        assert_eq!(seen, share.next_seq());
    }

    #[test]
    fn others_see_every_change_in_order_and_the_set_follows() {
        let share = CodeShare::default();
        share.join();
        share.join();
        let (mut a, mut b) = (0, 0);
        share.publish(
            Change::Marked {
                page: 0x1000,
                by: 0,
            },
            &mut a,
        );
        share.publish(
            Change::Marked {
                page: 0x2000,
                by: 0,
            },
            &mut a,
        );
        share.publish(
            Change::DeviceWrote {
                first: 0x2000,
                last: 0x2000,
            },
            &mut a,
        );
        assert!(share.is_marked(0x1000));
        assert!(!share.is_marked(0x2000));
        let Replay::Changes(c) = share.replay(&mut b) else {
            panic!("the log holds everything")
        };
        assert_eq!(c.len(), 3);
        assert_eq!(
            c[0],
            Change::Marked {
                page: 0x1000,
                by: 0
            }
        );
        assert_eq!(b, share.next_seq());
        // B's own change while A is up to date: A must still replay it.
        share.publish(
            Change::Written {
                page: 0x1000,
                by: 1,
            },
            &mut b,
        );
        let Replay::Changes(c) = share.replay(&mut a) else {
            panic!("the log holds everything")
        };
        assert_eq!(
            c,
            vec![Change::Written {
                page: 0x1000,
                by: 1
            }]
        );
    }

    #[test]
    fn a_member_left_behind_by_the_log_resynchronises_from_the_set() {
        let share = CodeShare::default();
        share.join();
        share.join();
        let (mut a, mut b) = (0, 0);
        for i in 0..LOG_CAPACITY as u64 + 10 {
            share.publish(
                Change::Marked {
                    page: i << 12,
                    by: 0,
                },
                &mut a,
            );
        }
        match share.replay(&mut b) {
            Replay::Resync(set) => assert_eq!(set.len(), LOG_CAPACITY + 10),
            Replay::Changes(_) => panic!("the oldest entries are gone"),
        }
        assert_eq!(b, share.next_seq());
    }
}
