//! The relay's threads: each owns the sessions of some calls and waits on
//! all their sockets with one edge-triggered epoll set. An event reads the
//! socket until it is empty, so when the thread is busy, packets queued on
//! a socket meanwhile are taken with one wake-up; there is no task to wake
//! per packet. The B2BUA talks to a thread through a channel and an
//! eventfd that wakes it.
//!
//! A call always lives on the same thread (chosen by its number), so its
//! commands arrive in the order they were sent.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::os::fd::AsFd;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use tracing::{error, warn};

use super::Shared;
use super::sdp::Audio;
use super::session::{Counts, Ctl, Relay, Side, TICK};

/// What the B2BUA asks of the thread that owns a call.
#[derive(Debug)]
pub(super) enum Cmd {
    /// Starts relaying with these sockets (`[side](rtp, rtcp)`), which
    /// hold the pairs at `ports`.
    Open {
        sockets: [(UdpSocket, UdpSocket); 2],
        ports: [u16; 2],
        /// The caller's side, as its offer describes it.
        a: Audio,
        digits: Arc<Mutex<String>>,
    },
    Ctl(Box<Ctl>),
    /// The call is over: its ports go back, its recording is finished.
    Stop,
}

#[derive(Debug)]
struct Worker {
    tx: Sender<(u64, Option<Cmd>)>,
    wake: Arc<EventFd>,
}

/// The relay threads (`media.threads`).
#[derive(Debug)]
pub(super) struct Engine {
    workers: Vec<Worker>,
}

/// The eventfd's epoll token; a socket's is [`token`]'s.
const WAKE: u64 = u64::MAX;

/// A socket's epoll token, and back.
fn token(slot: usize, side: Side, rtcp: bool) -> u64 {
    (slot as u64) << 2 | (side as u64) << 1 | u64::from(rtcp)
}

fn untoken(token: u64) -> (usize, Side, bool) {
    let slot = usize::try_from(token >> 2).unwrap_or(usize::MAX);
    let side = if token & 2 == 0 { Side::A } else { Side::B };
    (slot, side, token & 1 == 1)
}
/// A relay writes its recording out and checks its timeout every `TICK`,
/// a tenth of the relays at a time so the writes do not come in one burst.
const PHASES: usize = 10;

impl Engine {
    /// Starts `threads` relay threads (0: one per CPU).
    pub(super) fn start(threads: usize, shared: &Arc<Shared>) -> std::io::Result<Self> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            threads
        };
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
            let wake = Arc::new(EventFd::from_flags(
                EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
            )?);
            epoll.add(wake.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, WAKE))?;
            let (tx, rx) = mpsc::channel();
            let thread = Thread {
                epoll,
                wake: Arc::clone(&wake),
                rx,
                shared: Arc::clone(shared),
                slots: Vec::new(),
                free: Vec::new(),
                calls: HashMap::new(),
                counts: Counts::default(),
            };
            std::thread::Builder::new()
                .name(format!("media-{i}"))
                .spawn(move || thread.run())?;
            workers.push(Worker { tx, wake });
        }
        Ok(Engine { workers })
    }

    /// Hands `cmd` to the thread that owns `call`.
    pub(super) fn send(&self, call: u64, cmd: Cmd) {
        // Call numbers need not be spread evenly (they may all be even):
        // a multiplicative hash spreads them over the threads.
        let spread = call.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
        let w = &self.workers[(spread % self.workers.len() as u64) as usize];
        if w.tx.send((call, Some(cmd))).is_ok() {
            let _ = w.wake.write(1);
        }
    }
}

impl Drop for Engine {
    /// The threads finish their calls' recordings and stop.
    fn drop(&mut self) {
        for w in &self.workers {
            if w.tx.send((0, None)).is_ok() {
                let _ = w.wake.write(1);
            }
        }
    }
}

#[derive(Debug)]
struct Slot {
    relay: Relay,
    ports: [u16; 2],
}

struct Thread {
    epoll: Epoll,
    wake: Arc<EventFd>,
    rx: Receiver<(u64, Option<Cmd>)>,
    shared: Arc<Shared>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    calls: HashMap<u64, usize>,
    counts: Counts,
}

impl Thread {
    fn run(mut self) {
        let mut events = vec![EpollEvent::empty(); 1024];
        let mut buf = vec![0u8; 65_536];
        let mut next_tick = Instant::now() + TICK / PHASES as u32;
        let mut phase = 0;
        // Sockets left with datagrams after their turn (see `readable`).
        let mut again: Vec<u64> = Vec::new();
        let mut busy: Vec<u64> = Vec::new();
        loop {
            // Rounded up to whole milliseconds: never a busy loop; no wait
            // at all while some socket still has datagrams.
            let wait = next_tick.saturating_duration_since(Instant::now());
            let wait_ms = if again.is_empty() {
                u16::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(u16::MAX)
            } else {
                0
            };
            let n = match self.epoll.wait(&mut events, EpollTimeout::from(wait_ms)) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => {
                    error!(error = %e, "media relay thread stopped: epoll failed");
                    self.close_all();
                    return;
                }
            };
            let now = Instant::now();
            let mut commands = false;
            let tokens = events[..n].iter().map(EpollEvent::data);
            for token in tokens.chain(std::mem::take(&mut again)) {
                if token == WAKE {
                    commands = true;
                    continue;
                }
                let (slot, side, rtcp) = untoken(token);
                if let Some(Some(s)) = self.slots.get_mut(slot)
                    && s.relay
                        .readable(side, rtcp, now, &mut buf, &mut self.counts)
                {
                    busy.push(token);
                }
            }
            // A socket may be both in `again` and a new event: once is enough.
            busy.sort_unstable();
            busy.dedup();
            std::mem::swap(&mut again, &mut busy);
            if commands && !self.commands(now) {
                self.close_all();
                return;
            }
            if now >= next_tick {
                for s in self.slots.iter_mut().skip(phase).step_by(PHASES).flatten() {
                    s.relay.tick(now, &self.shared);
                }
                self.counts.publish();
                phase = (phase + 1) % PHASES;
                next_tick = now + TICK / PHASES as u32;
            }
        }
    }

    /// Carries out what the B2BUA sent; false when the engine is gone.
    fn commands(&mut self, now: Instant) -> bool {
        // Read before draining: a command sent after this read wakes the
        // next wait.
        let _ = self.wake.read();
        loop {
            match self.rx.try_recv() {
                Ok((call, Some(cmd))) => self.command(call, cmd, now),
                Ok((_, None)) | Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    fn command(&mut self, call: u64, cmd: Cmd, now: Instant) {
        match cmd {
            Cmd::Open {
                sockets,
                ports,
                a,
                digits,
            } => {
                // A call offered again starts afresh.
                self.stop(call, now);
                let slot = self.free.pop().unwrap_or_else(|| {
                    self.slots.push(None);
                    self.slots.len() - 1
                });
                let relay = Relay::new(call, sockets, a, digits, now);
                if let Err(e) = self.watch(slot, &relay) {
                    warn!(call, error = %e, "media sockets could not be watched");
                    self.free.push(slot);
                    relay.close(now, &self.shared);
                    self.give(ports);
                    return;
                }
                self.slots[slot] = Some(Slot { relay, ports });
                self.calls.insert(call, slot);
            }
            Cmd::Ctl(ctl) => {
                if let Some(s) = self.calls.get(&call).and_then(|&i| self.slots[i].as_mut()) {
                    s.relay.control(*ctl, now);
                }
            }
            Cmd::Stop => self.stop(call, now),
        }
    }

    fn watch(&self, slot: usize, relay: &Relay) -> nix::Result<()> {
        for (side, rtcp, socket) in relay.sockets() {
            let event = EpollFlags::EPOLLIN | EpollFlags::EPOLLET;
            let event = EpollEvent::new(event, token(slot, side, rtcp));
            self.epoll.add(socket.as_fd(), event)?;
        }
        Ok(())
    }

    fn stop(&mut self, call: u64, now: Instant) {
        let Some(slot) = self.calls.remove(&call) else {
            return;
        };
        let Some(s) = self.slots[slot].take() else {
            return;
        };
        for (_, _, socket) in s.relay.sockets() {
            let _ = self.epoll.delete(socket.as_fd());
        }
        self.free.push(slot);
        // Closes the sockets before their ports go back.
        s.relay.close(now, &self.shared);
        self.give(s.ports);
    }

    fn give(&self, ports: [u16; 2]) {
        let mut pool = self.shared.pool.lock().unwrap_or_else(|p| p.into_inner());
        for port in ports {
            pool.give(port);
        }
    }

    fn close_all(&mut self) {
        let now = Instant::now();
        let calls: Vec<u64> = self.calls.keys().copied().collect();
        for call in calls {
            self.stop(call, now);
        }
        self.counts.publish();
    }
}
