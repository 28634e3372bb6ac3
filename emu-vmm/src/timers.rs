//! The timer thread: every device that tells time (PIT, HPET, RTC, the local APICs) is
//! a register state machine with a next deadline on the machine's one virtual clock;
//! this thread sleeps until the earliest deadline and lets the devices fire.
//!
//! Devices' deadlines change when the guest programs them on a vCPU thread. Whoever
//! sees that happen (the local APIC's timer listener, a write to the PIT, HPET or RTC)
//! wakes the thread through a [`TimerWaker`], so a new deadline sooner than the current
//! sleep is honoured at once; the thread also looks at the devices at least every
//! [`MAX_SLEEP`] as a safety net for changes nobody reported. Interrupts reach the vCPUs
//! through the devices' own lines.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use emu_mmu::clock::VirtualClock;

/// Longest the thread sleeps without looking at the devices again.
pub const MAX_SLEEP: Duration = Duration::from_millis(1);

/// A device with timed events.
pub trait TimedDevice: Send {
    /// Virtual-clock time of the device's next event, if one is armed.
    fn next_deadline_ns(&self) -> Option<u64>;
    /// Fires every event due at or before `now_ns`.
    fn tick(&mut self, now_ns: u64);
}

/// The wake-up flag and its condition variable.
#[derive(Default)]
struct Wake {
    pending: Mutex<bool>,
    cv: Condvar,
}

/// Wakes the timer thread so it looks at the devices' deadlines now. Cheap to clone and
/// to call from any thread (it takes no device lock, so device callbacks running under
/// their own lock may use it). It exists before the thread does: the machine hands it to
/// its devices when it builds them and to each [`TimerThread`] it starts; a wake-up with
/// no thread running is kept for the next one (which looks at the devices first thing
/// anyway).
#[derive(Clone, Default)]
pub struct TimerWaker(Arc<Wake>);

impl TimerWaker {
    /// A waker not yet attached to any thread.
    pub fn new() -> TimerWaker {
        TimerWaker::default()
    }

    /// Wakes the thread (after the guest reprogrammed a timer).
    pub fn wake(&self) {
        *self.0.pending.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.0.cv.notify_one();
    }
}

impl std::fmt::Debug for TimerWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TimerWaker")
    }
}

/// The running timer thread; stops (and joins) when dropped.
pub struct TimerThread {
    stop: Arc<AtomicBool>,
    waker: TimerWaker,
    handle: Option<JoinHandle<()>>,
}

impl TimerThread {
    /// Starts the thread over `devices`, with a waker of its own.
    pub fn start(clock: VirtualClock, devices: Vec<Arc<Mutex<dyn TimedDevice>>>) -> TimerThread {
        TimerThread::start_with(clock, devices, TimerWaker::new(), MAX_SLEEP)
    }

    /// Starts the thread over `devices`, woken by `waker` and looking at the devices at
    /// least every `poll` (the machine uses [`MAX_SLEEP`]).
    pub fn start_with(
        clock: VirtualClock,
        devices: Vec<Arc<Mutex<dyn TimedDevice>>>,
        waker: TimerWaker,
        poll: Duration,
    ) -> TimerThread {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, w) = (stop.clone(), waker.clone());
        let handle = std::thread::Builder::new()
            .name("quetzal-timers".into())
            .spawn(move || run(&s, &w, clock, devices, poll))
            .expect("spawning the timer thread");
        TimerThread {
            stop,
            waker,
            handle: Some(handle),
        }
    }

    /// The thread's waker.
    pub fn waker(&self) -> TimerWaker {
        self.waker.clone()
    }

    /// Wakes the thread now (after the guest reprogrammed a timer).
    pub fn notify(&self) {
        self.waker.wake();
    }
}

impl Drop for TimerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.waker.wake();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(
    stop: &AtomicBool,
    waker: &TimerWaker,
    clock: VirtualClock,
    devices: Vec<Arc<Mutex<dyn TimedDevice>>>,
    poll: Duration,
) {
    let wake = &waker.0;
    while !stop.load(Ordering::SeqCst) {
        // A wake-up arriving from here on is seen by the wait below: the flag is cleared
        // before the devices are looked at, never after.
        *wake.pending.lock().unwrap_or_else(|e| e.into_inner()) = false;
        let now = clock.now_ns();
        let mut next = u64::MAX;
        for d in &devices {
            let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
            if d.next_deadline_ns().is_some_and(|t| t <= now) {
                d.tick(now);
            }
            if let Some(t) = d.next_deadline_ns() {
                next = next.min(t);
            }
        }
        let until = Instant::now() + poll;
        let until = if next == u64::MAX {
            until
        } else {
            until.min(clock.instant_at(next))
        };
        let mut woken = wake.pending.lock().unwrap_or_else(|e| e.into_inner());
        while !*woken && !stop.load(Ordering::SeqCst) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            woken = wake
                .cv
                .wait_timeout(woken, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fires every `period` ns and counts.
    struct Ticker {
        next: u64,
        period: u64,
        fired: Arc<Mutex<Vec<u64>>>,
    }

    impl TimedDevice for Ticker {
        fn next_deadline_ns(&self) -> Option<u64> {
            Some(self.next)
        }
        fn tick(&mut self, now: u64) {
            while self.next <= now {
                self.fired.lock().unwrap().push(now);
                self.next += self.period;
            }
        }
    }

    #[test]
    fn devices_fire_at_their_deadlines_and_the_thread_stops_on_drop() {
        let clock = VirtualClock::new();
        let fired = Arc::new(Mutex::new(Vec::new()));
        let t = Ticker {
            next: clock.now_ns() + 2_000_000,
            period: 2_000_000,
            fired: fired.clone(),
        };
        let thread = TimerThread::start(clock.clone(), vec![Arc::new(Mutex::new(t))]);
        std::thread::sleep(Duration::from_millis(30));
        drop(thread);
        let fired = fired.lock().unwrap();
        assert!(fired.len() >= 5, "fired {} times in 30 ms", fired.len());
        assert!(fired.windows(2).all(|w| w[0] <= w[1]));
    }

    /// Armed from outside at a time the thread does not know about yet.
    struct OneShot {
        at: Arc<Mutex<Option<u64>>>,
        fired: Arc<Mutex<Option<Instant>>>,
    }

    impl TimedDevice for OneShot {
        fn next_deadline_ns(&self) -> Option<u64> {
            *self.at.lock().unwrap()
        }
        fn tick(&mut self, _now: u64) {
            *self.at.lock().unwrap() = None;
            *self.fired.lock().unwrap() = Some(Instant::now());
        }
    }

    #[test]
    fn a_wake_up_makes_the_thread_see_a_new_deadline_before_its_poll() {
        let clock = VirtualClock::new();
        let at = Arc::new(Mutex::new(None));
        let fired = Arc::new(Mutex::new(None));
        let waker = TimerWaker::new();
        let device = OneShot {
            at: at.clone(),
            fired: fired.clone(),
        };
        // A poll far longer than the test: only the wake-up can make the deadline fire.
        let thread = TimerThread::start_with(
            clock.clone(),
            vec![Arc::new(Mutex::new(device))],
            waker.clone(),
            Duration::from_secs(30),
        );
        std::thread::sleep(Duration::from_millis(20));
        let armed = Instant::now();
        *at.lock().unwrap() = Some(clock.now_ns() + 200_000);
        waker.wake();
        let give_up = armed + Duration::from_secs(5);
        while fired.lock().unwrap().is_none() && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(1));
        }
        let when = fired.lock().unwrap().expect("the deadline fired");
        let after = when - armed;
        assert!(
            after >= Duration::from_micros(150),
            "fired early: {after:?}"
        );
        assert!(after < Duration::from_secs(5));
        drop(thread);
    }
}
