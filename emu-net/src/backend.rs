//! [`UserNet`]: the stack on its own I/O thread, seen by the virtio-net device as a
//! [`NetBackend`].

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use emu_devices::virtio::net::{GuestOffloads, NetBackend, RxFrame, RxNotifier};

use crate::config::UserNetConfig;
use crate::stack::{Stack, MAX_POLL, MIN_POLL};
use crate::NetError;

/// Frames from the guest waiting for the thread; beyond this they are dropped.
const TO_STACK_CAP: usize = 1024;
/// Frames for the guest waiting for receive buffers; the stack holds the rest.
const TO_GUEST_CAP: usize = 256;
/// Longest the thread sleeps when nothing at all is armed.
const IDLE_SLEEP: Duration = Duration::from_secs(1);

/// What the device and the thread share.
#[derive(Default)]
struct State {
    to_stack: VecDeque<Vec<u8>>,
    to_guest: VecDeque<RxFrame>,
    /// Something for the thread to look at (frames in, room out, offloads, results).
    wake: bool,
    stop: bool,
    offloads: Option<GuestOffloads>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        let mut st = self.lock();
        Self::wake_locked(&mut st, &self.cv);
    }

    /// Sets the wake flag; only the first setter signals the condition variable (the
    /// thread looks at everything once it wakes, and a signal is a system call).
    fn wake_locked(st: &mut State, cv: &Condvar) {
        if !st.wake {
            st.wake = true;
            cv.notify_one();
        }
    }
}

/// User-mode networking behind a virtio-net device: a [`NetBackend`] whose frames go to and
/// come from the stack running on its own thread (see the crate docs). Dropping it stops
/// the thread and closes every host socket, listeners included.
pub struct UserNet {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    thread_id: ThreadId,
}

impl std::fmt::Debug for UserNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserNet").finish_non_exhaustive()
    }
}

impl UserNet {
    /// Starts the network `config` describes for a guest whose MAC is `guest_mac`; frames
    /// waiting for the guest are announced through `notifier`.
    ///
    /// # Errors
    ///
    /// [`NetError::Listen`] when a host-forwarding port cannot be bound,
    /// [`NetError::Thread`] when the thread cannot be started.
    pub fn start(
        config: &UserNetConfig,
        guest_mac: [u8; 6],
        notifier: RxNotifier,
    ) -> Result<Self, NetError> {
        let shared = Arc::new(Shared::default());
        let wake = {
            let shared = shared.clone();
            Arc::new(move || shared.wake())
        };
        let stack = Stack::new(config, guest_mac, wake)?;
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("quetzal-net".into())
                .spawn(move || run(stack, &shared, &notifier))
                .map_err(NetError::Thread)?
        };
        Ok(Self {
            shared,
            thread_id: thread.thread().id(),
            thread: Some(thread),
        })
    }
}

impl NetBackend for UserNet {
    fn send(&mut self, frame: &[u8]) {
        let mut st = self.shared.lock();
        if st.to_stack.len() < TO_STACK_CAP {
            st.to_stack.push_back(frame.to_vec());
        }
        Shared::wake_locked(&mut st, &self.shared.cv);
    }

    fn recv(&mut self) -> Option<RxFrame> {
        let mut st = self.shared.lock();
        let frame = st.to_guest.pop_front();
        // The queue running dry (or dropping below half) is room for the stack's next
        // frames: let the thread refill it.
        let refill =
            frame.is_some() && (st.to_guest.is_empty() || st.to_guest.len() == TO_GUEST_CAP / 2);
        if refill {
            Shared::wake_locked(&mut st, &self.shared.cv);
        }
        frame
    }

    /// smoltcp takes a TCP segment of any size that fits its window.
    fn takes_tcp_segments(&self) -> bool {
        true
    }

    fn set_guest_offloads(&mut self, offloads: GuestOffloads) {
        let mut st = self.shared.lock();
        st.offloads = Some(offloads);
        Shared::wake_locked(&mut st, &self.shared.cv);
    }
}

impl Drop for UserNet {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.cv.notify_one();
        // The last reference to the device can go on the thread itself (while it delivers
        // frames); it then ends on its own once this returns.
        if std::thread::current().id() != self.thread_id {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// The I/O thread: waits for frames, results or the next poll, runs the stack, hands
/// frames over and notifies the device.
fn run(mut stack: Stack, shared: &Shared, notifier: &RxNotifier) {
    let mut idle = MIN_POLL;
    let mut progress = false;
    let mut inbox: Vec<Vec<u8>> = Vec::new();
    loop {
        let now = Instant::now();
        let timeout = if progress {
            Duration::ZERO
        } else {
            let timer = stack.poll_delay(now).unwrap_or(IDLE_SLEEP);
            let host = if stack.has_host_sockets() {
                idle
            } else {
                IDLE_SLEEP
            };
            timer.min(host).min(IDLE_SLEEP)
        };
        {
            let mut st = shared.lock();
            if !st.wake && !st.stop && !timeout.is_zero() {
                st = shared
                    .cv
                    .wait_timeout_while(st, timeout, |s| !s.wake && !s.stop)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            if st.stop {
                return;
            }
            st.wake = false;
            inbox.extend(st.to_stack.drain(..));
            if let Some(o) = st.offloads.take() {
                stack.set_tso(o.tso4);
            }
        }
        let now = Instant::now();
        progress = !inbox.is_empty();
        for frame in inbox.drain(..) {
            stack.handle_guest_frame(&frame, now);
        }
        progress |= stack.poll(now);
        let mut handed = 0usize;
        {
            let mut st = shared.lock();
            while st.to_guest.len() < TO_GUEST_CAP {
                let Some(frame) = stack.pop_frame() else {
                    break;
                };
                st.to_guest.push_back(frame);
                handed += 1;
            }
        }
        if handed > 0 {
            // Outside the lock: the device takes it again to pull the frames.
            notifier.notify();
            progress = true;
        }
        idle = if progress {
            MIN_POLL
        } else {
            (idle * 2).min(MAX_POLL)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HostForward;
    use smoltcp::wire::{
        ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
        EthernetRepr,
    };
    use std::net::{Ipv4Addr, TcpListener};
    use std::sync::atomic::{AtomicUsize, Ordering};

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn arp_request(target: Ipv4Addr) -> Vec<u8> {
        let arp = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress(MAC),
            source_protocol_addr: Ipv4Addr::new(10, 0, 2, 15),
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: target,
        };
        let mut f = vec![0u8; 14 + arp.buffer_len()];
        EthernetRepr {
            src_addr: EthernetAddress(MAC),
            dst_addr: EthernetAddress::BROADCAST,
            ethertype: EthernetProtocol::Arp,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
        arp.emit(&mut ArpPacket::new_unchecked(&mut f[14..]));
        f
    }

    #[test]
    fn the_thread_answers_and_notifies_and_dropping_it_frees_forwarded_ports() {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let cfg = UserNetConfig {
            host_forwards: vec![HostForward {
                host_addr: Ipv4Addr::LOCALHOST,
                host_port: port,
                guest_addr: None,
                guest_port: 22,
            }],
            ..UserNetConfig::default()
        };
        let notified = Arc::new(AtomicUsize::new(0));
        let notifier = RxNotifier::new();
        {
            let n = notified.clone();
            notifier.connect(move || {
                n.fetch_add(1, Ordering::SeqCst);
            });
        }
        let mut net = UserNet::start(&cfg, MAC, notifier).unwrap();
        // The port is taken while the network runs.
        assert!(TcpListener::bind(("127.0.0.1", port)).is_err());
        net.send(&arp_request(Ipv4Addr::new(10, 0, 2, 2)));
        let deadline = Instant::now() + Duration::from_secs(10);
        while notified.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(notified.load(Ordering::SeqCst) >= 1, "no notification");
        let reply = net.recv().expect("the ARP reply");
        let eth = EthernetFrame::new_checked(&reply.data[..]).unwrap();
        assert_eq!(eth.dst_addr(), EthernetAddress(MAC));
        assert_eq!(eth.ethertype(), EthernetProtocol::Arp);
        assert!(net.recv().is_none());
        drop(net);
        assert!(TcpListener::bind(("127.0.0.1", port)).is_ok());
    }
}
