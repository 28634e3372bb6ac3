//! The timer thread: every device that tells time (PIT, HPET, RTC, the local APICs) is
//! a register state machine with a next deadline on the machine's one virtual clock;
//! this thread sleeps until the earliest deadline and lets the devices fire.
//!
//! Devices' deadlines change when the guest programs them on a vCPU thread, so the
//! thread also wakes at least every [`MAX_SLEEP`] to pick up new deadlines (a notify
//! wakes it at once). Interrupts reach the vCPUs through the devices' own lines.

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

/// Shared between the thread and its owner.
struct Control {
    stop: AtomicBool,
    wake: Mutex<bool>,
    cv: Condvar,
}

/// The running timer thread; stops (and joins) when dropped.
pub struct TimerThread {
    control: Arc<Control>,
    handle: Option<JoinHandle<()>>,
}

impl TimerThread {
    /// Starts the thread over `devices`.
    pub fn start(clock: VirtualClock, devices: Vec<Arc<Mutex<dyn TimedDevice>>>) -> TimerThread {
        let control = Arc::new(Control {
            stop: AtomicBool::new(false),
            wake: Mutex::new(false),
            cv: Condvar::new(),
        });
        let c = control.clone();
        let handle = std::thread::Builder::new()
            .name("quetzal-timers".into())
            .spawn(move || run(c, clock, devices))
            .expect("spawning the timer thread");
        TimerThread {
            control,
            handle: Some(handle),
        }
    }

    /// Wakes the thread now (after the guest reprogrammed a timer).
    pub fn notify(&self) {
        *self.control.wake.lock().unwrap() = true;
        self.control.cv.notify_one();
    }
}

impl Drop for TimerThread {
    fn drop(&mut self) {
        self.control.stop.store(true, Ordering::SeqCst);
        self.notify();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(control: Arc<Control>, clock: VirtualClock, devices: Vec<Arc<Mutex<dyn TimedDevice>>>) {
    while !control.stop.load(Ordering::SeqCst) {
        let now = clock.now_ns();
        let mut next = u64::MAX;
        for d in &devices {
            let mut d = d.lock().unwrap();
            if d.next_deadline_ns().is_some_and(|t| t <= now) {
                d.tick(now);
            }
            if let Some(t) = d.next_deadline_ns() {
                next = next.min(t);
            }
        }
        let until = Instant::now() + MAX_SLEEP;
        let until = if next == u64::MAX {
            until
        } else {
            until.min(clock.instant_at(next))
        };
        let mut woken = control.wake.lock().unwrap();
        while !*woken && !control.stop.load(Ordering::SeqCst) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            woken = control.cv.wait_timeout(woken, left).unwrap().0;
        }
        *woken = false;
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
}
