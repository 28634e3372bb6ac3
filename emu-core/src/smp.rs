//! What the vCPUs of one machine share to run on several host threads at once.
//!
//! Each vCPU is an [`crate::Emulator`] on its own host thread, created with
//! [`crate::Emulator::new_vcpu`]: they share guest RAM, the code-page marks (so code one
//! vCPU writes is dropped by every vCPU that translated it, see `emu_mmu::code`), the
//! device-write log, the virtual clock (one TSC for all) and a [`Gate`].
//!
//! The [`Gate`] is how one party gets the machine to itself for a moment: a vCPU whose
//! locked instruction cannot be done with one host compare-exchange (a split lock across
//! a cache line or page), or the embedder pausing the machine ([`Gate::pause`]) to
//! inspect or snapshot it. vCPUs count themselves in while they run guest code and out
//! while they sleep (HLT, waiting for a start-up IPI) or have returned from their run. An
//! exclusive section waits until no vCPU is counted in: running ones are kicked through
//! their event word and step out at their next block boundary, so the wait is at most a
//! block (or a chain of compiled blocks, which also looks at the event word between
//! blocks) long; sleeping ones are already out and cannot come back in until the section
//! ends.

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use crate::events::{self, Events};

#[derive(Debug, Default)]
struct GateState {
    /// vCPUs counted in (running guest code).
    running: usize,
    /// Someone holds (or is getting) the machine to itself.
    exclusive: bool,
    /// vCPUs asleep that only another processor can wake (halted with interrupts off,
    /// waiting for a start-up IPI).
    dormant: usize,
}

/// Exclusive sections and pauses across the vCPUs of a machine (see the module docs).
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
    /// Every vCPU's event word, to kick them out of their run loops.
    members: Mutex<Vec<Weak<Events>>>,
}

impl Gate {
    /// Adds a vCPU's event word to the ones kicked by exclusive sections.
    pub(crate) fn add_member(&self, events: &Arc<Events>) {
        self.members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(events));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A vCPU starts running guest code: waits while a section is held. Returns `false`
    /// if `events` asks the vCPU to stop meanwhile: it is counted in all the same (and
    /// leaves as usual), but must return from its run without running guest code.
    pub(crate) fn enter(&self, events: &Events) -> bool {
        let mut state = self.lock();
        while state.exclusive {
            if events.pending() & events::STOP != 0 {
                state.running += 1;
                return false;
            }
            // A stop request does not notify this condition variable: look again now
            // and then.
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(5))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        state.running += 1;
        true
    }

    /// A vCPU stops running guest code (it sleeps or returns from its run).
    pub(crate) fn leave(&self) {
        let mut state = self.lock();
        state.running -= 1;
        self.changed.notify_all();
    }

    /// Takes the machine: waits until nobody else holds it and no vCPU runs. `from_vcpu`
    /// is whether the caller is a vCPU counted in (it is counted out meanwhile).
    fn start_exclusive(&self, from_vcpu: bool) {
        let mut state = self.lock();
        if from_vcpu {
            state.running -= 1;
            self.changed.notify_all();
        }
        while state.exclusive {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.exclusive = true;
        drop(state);
        for member in self
            .members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            // The caller's own kick is answered by a harmless step out and in later.
            if let Some(events) = member.upgrade() {
                events.kick();
            }
        }
        let mut state = self.lock();
        while state.running > 0 {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Gives the machine back (see [`Gate::start_exclusive`]).
    fn end_exclusive(&self, from_vcpu: bool) {
        let mut state = self.lock();
        state.exclusive = false;
        if from_vcpu {
            state.running += 1;
        }
        self.changed.notify_all();
    }

    /// A running vCPU goes to sleep (counted out). `dormant`: see [`GateState::dormant`].
    /// Returns `false` if that leaves every vCPU dormant: the caller must not sleep (the
    /// machine is dead), but still calls [`Gate::sleep_end`].
    pub(crate) fn sleep_begin(&self, dormant: bool) -> bool {
        let members = self.members.lock().unwrap_or_else(|e| e.into_inner()).len();
        let mut state = self.lock();
        state.running -= 1;
        self.changed.notify_all();
        if dormant {
            state.dormant += 1;
            return state.dormant < members;
        }
        true
    }

    /// The vCPU woke from [`Gate::sleep_begin`] and counts itself in again (see
    /// [`Gate::enter`] for the result).
    pub(crate) fn sleep_end(&self, dormant: bool, events: &Events) -> bool {
        if dormant {
            self.lock().dormant -= 1;
        }
        self.enter(events)
    }

    /// Runs `f` while no other vCPU runs; called by a running vCPU between two of its
    /// instructions.
    pub(crate) fn exclusive<R>(&self, f: impl FnOnce() -> R) -> R {
        self.start_exclusive(true);
        let r = f();
        self.end_exclusive(true);
        r
    }

    /// A running vCPU that was kicked steps out and back in, letting a section run.
    pub(crate) fn checkpoint(&self, events: &Events) -> bool {
        self.leave();
        self.enter(events)
    }

    /// Pauses every vCPU of the machine: returns once none runs guest code (each stops
    /// at its next block boundary; halted ones stay halted). They stay paused until
    /// [`Gate::resume`]. Must not be called from a vCPU's own thread while it runs.
    pub fn pause(&self) {
        self.start_exclusive(false);
    }

    /// Lets the vCPUs run again after [`Gate::pause`].
    pub fn resume(&self) {
        self.end_exclusive(false);
    }

    /// How many vCPUs are running guest code right now (0 while paused).
    pub fn running(&self) -> usize {
        self.lock().running
    }
}
