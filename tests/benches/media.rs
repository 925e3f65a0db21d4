//! Concurrent recorded calls through the media relay, beside rtpengine
//! (Debian `rtpengine-daemon`, userspace forwarding, no recording) under
//! the same RTP load in the same run.
//!
//! Calls are added in steps (`MEDIA_LEVELS`, default 500, 1000, then
//! finer up to 2000), in `MEDIA_ROUNDS` (3) rounds that ramp both relays
//! afresh; each side's figure is its best round. Switchboard's calls are set up over SIP
//! (a trunk calls the company number, the bench answers as extension
//! 1001's phone) and recorded; rtpengine's with ng-protocol offers and
//! answers. At each step every call carries G.711 μ-law both ways (20 ms
//! packets, 50 a second each way) from a generator in this process for
//! `MEDIA_SECONDS` (5); then sending pauses, and loss is what was sent
//! and never came back out of the relay. A server's capacity is the
//! largest step it relayed with no packet lost. SIPp 3.6 plays pcap audio
//! with a thread per call, which two cores cannot carry at these counts,
//! so the RTP comes from this bench's own generator (one sending thread
//! and one reading thread, batches of packets per 20 ms tick; the reader
//! polls its sockets instead of sleeping on them, so the relays' sends do
//! not pay for waking it, as they would not on a real network).
//!
//! Needs `rtpengine` and the release binary: `cargo build --release -p
//! switchboard && cargo bench -p switchboard-tests --bench media`.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use switchboard_tests::budget::cpu_seconds;
use switchboard_tests::media::{rtp, sdp, sdp_audio, tone_frame};
use switchboard_tests::sip::{SipClient, SipReceiver};
use switchboard_tests::{Switchboard, bench_gateway, env_usize, free_port};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Source sockets per side; calls take them in turn.
const SOCKETS: usize = 2;

/// Where a call's two streams go: to the relay's port for the customer and
/// the relay's port for the manager.
#[derive(Debug, Clone, Copy)]
struct Streams {
    customer_to: SocketAddr,
    manager_to: SocketAddr,
}

/// The RTP generator: sends every call's two streams each 20 ms and
/// counts what comes back.
struct Generator {
    calls: Arc<RwLock<Vec<Streams>>>,
    customer: Vec<UdpSocket>,
    manager: Vec<UdpSocket>,
    sending: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

fn big_socket() -> UdpSocket {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    let _ = s.set_recv_buffer_size(16 << 20);
    let _ = s.set_send_buffer_size(16 << 20);
    s.bind(&SocketAddr::new(LOCAL, 0).into()).unwrap();
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

impl Generator {
    fn start() -> Self {
        let g = Generator {
            calls: Arc::default(),
            customer: (0..SOCKETS).map(|_| big_socket()).collect(),
            manager: (0..SOCKETS).map(|_| big_socket()).collect(),
            sending: Arc::new(AtomicBool::new(false)),
            sent: Arc::default(),
            received: Arc::default(),
            stop: Arc::default(),
        };
        // One reader for every socket. It never sleeps on a socket: it
        // drains each (up to 64 datagrams a system call, recvmmsg) and
        // naps a millisecond when all were empty. A relay's send then
        // costs what it would on a real network, where the receiver's
        // wake-up happens on another machine; on loopback a reader blocked
        // in recv would make every relayed packet pay for waking it.
        let socks: Vec<UdpSocket> = g
            .customer
            .iter()
            .chain(&g.manager)
            .map(|s| s.try_clone().unwrap())
            .collect();
        let (received, stop) = (Arc::clone(&g.received), Arc::clone(&g.stop));
        std::thread::spawn(move || {
            use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrIn, recvmmsg};
            use std::os::fd::AsRawFd;
            let mut bufs = vec![[0u8; 512]; 64];
            let mut headers = MultiHeaders::<SockaddrIn>::preallocate(64, None);
            while !stop.load(Ordering::Relaxed) {
                let mut idle = true;
                for sock in &socks {
                    loop {
                        let mut iovs: Vec<[std::io::IoSliceMut<'_>; 1]> = bufs
                            .iter_mut()
                            .map(|b| [std::io::IoSliceMut::new(b)])
                            .collect();
                        let got = recvmmsg(
                            sock.as_raw_fd(),
                            &mut headers,
                            iovs.iter_mut(),
                            MsgFlags::MSG_DONTWAIT,
                            None,
                        )
                        .map_or(0, |got| got.count());
                        if got == 0 {
                            break;
                        }
                        idle = false;
                        received.fetch_add(got as u64, Ordering::Relaxed);
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        let customer: Vec<UdpSocket> = g.customer.iter().map(|s| s.try_clone().unwrap()).collect();
        let manager: Vec<UdpSocket> = g.manager.iter().map(|s| s.try_clone().unwrap()).collect();
        let (calls, sending, sent, stop) = (
            Arc::clone(&g.calls),
            Arc::clone(&g.sending),
            Arc::clone(&g.sent),
            Arc::clone(&g.stop),
        );
        std::thread::spawn(move || {
            let frame = tone_frame(1000.0, 0);
            let mut next = Instant::now();
            let mut tick: u32 = 0;
            while !stop.load(Ordering::Relaxed) {
                next += Duration::from_millis(20);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if !sending.load(Ordering::Relaxed) {
                    continue;
                }
                tick = tick.wrapping_add(1);
                let calls = calls.read().unwrap().clone();
                // Each socket's packets of this tick, sent 256 to a system
                // call (sendmmsg).
                let mut batches: Vec<Vec<(Vec<u8>, SocketAddr)>> = vec![Vec::new(); 2 * SOCKETS];
                for (i, c) in calls.iter().enumerate() {
                    let ssrc = i as u32;
                    let a = rtp(0, false, tick as u16, tick * 160, ssrc * 2, &frame);
                    let b = rtp(0, false, tick as u16, tick * 160, ssrc * 2 + 1, &frame);
                    batches[i % SOCKETS].push((a, c.customer_to));
                    batches[SOCKETS + i % SOCKETS].push((b, c.manager_to));
                }
                let mut n = 0;
                for (k, batch) in batches.iter().enumerate() {
                    let sock = if k < SOCKETS {
                        &customer[k]
                    } else {
                        &manager[k - SOCKETS]
                    };
                    n += send_batch(sock, batch);
                }
                sent.fetch_add(n, Ordering::Relaxed);
            }
        });
        g
    }

    fn customer_addr(&self, i: usize) -> SocketAddr {
        self.customer[i % SOCKETS].local_addr().unwrap()
    }

    fn manager_addr(&self, i: usize) -> SocketAddr {
        self.manager[i % SOCKETS].local_addr().unwrap()
    }

    fn calls(&self) -> usize {
        self.calls.read().unwrap().len()
    }

    fn add(&self, s: Streams) {
        self.calls.write().unwrap().push(s);
    }

    /// Runs every call for `seconds`, then pauses and lets the last packets
    /// arrive: (sent, lost, CPU % of `pid` while sending).
    async fn measure(&self, seconds: u64, pid: u32) -> (u64, u64, f64) {
        // Settle: the relay learns the new calls' sources.
        self.sending.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.sending.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(400)).await;
        self.sent.store(0, Ordering::Relaxed);
        self.received.store(0, Ordering::Relaxed);
        let cpu0 = cpu_seconds(pid);
        let t0 = Instant::now();
        self.sending.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        self.sending.store(false, Ordering::Relaxed);
        let cpu = (cpu_seconds(pid) - cpu0) * 100.0 / t0.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sent = self.sent.load(Ordering::Relaxed);
        let received = self.received.load(Ordering::Relaxed);
        (sent, sent.saturating_sub(received), cpu)
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sends every packet of `batch` from `sock`, many to a system call;
/// returns how many went out.
fn send_batch(sock: &UdpSocket, batch: &[(Vec<u8>, SocketAddr)]) -> u64 {
    use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrIn, sendmmsg};
    use std::os::fd::AsRawFd;
    let mut sent = 0u64;
    for chunk in batch.chunks(256) {
        let iovs: Vec<[std::io::IoSlice<'_>; 1]> = chunk
            .iter()
            .map(|(p, _)| [std::io::IoSlice::new(p)])
            .collect();
        let addrs: Vec<Option<SockaddrIn>> = chunk
            .iter()
            .map(|(_, to)| match to {
                SocketAddr::V4(v4) => Some(SockaddrIn::from(*v4)),
                SocketAddr::V6(_) => None,
            })
            .collect();
        let mut headers = MultiHeaders::<SockaddrIn>::preallocate(chunk.len(), None);
        let mut from = 0;
        while from < chunk.len() {
            match sendmmsg(
                sock.as_raw_fd(),
                &mut headers,
                &iovs[from..],
                &addrs[from..],
                [],
                MsgFlags::empty(),
            ) {
                Ok(done) => {
                    let k = done.count();
                    if k == 0 {
                        break;
                    }
                    from += k;
                    sent += k as u64;
                }
                Err(_) => break,
            }
        }
    }
    sent
}

/// Pins every thread of `pid` (and the threads it starts later) to `cpu`.
fn pin(pid: u32, cpu: usize) {
    let ok = std::process::Command::new("taskset")
        .args(["-apc", &cpu.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "taskset (util-linux) could not pin {pid} to CPU {cpu}");
}

/// A relay under test: sets up one more call.
#[allow(async_fn_in_trait)]
trait Relay {
    async fn add(&mut self, g: &Generator) -> Streams;
}

/// Switchboard's side: calls set up over SIP, one at a time.
struct OurCalls {
    trunk: SipClient,
    phone: SipClient,
    server: SocketAddr,
    n: usize,
}

impl OurCalls {
    async fn new(sb: &Switchboard) -> Self {
        let server = sb.sip_udp.unwrap();
        let mut phone = SipClient::bind(LOCAL, server).await.unwrap();
        let contact = format!("Contact: <sip:1001@{}>\r\n", phone.local());
        let ok = phone
            .register("1001", "secret-1001", &contact)
            .await
            .unwrap();
        assert_eq!(ok.status(), Some(200), "{ok:?}");
        OurCalls {
            trunk: SipClient::bind(LOCAL, server).await.unwrap(),
            phone,
            server,
            n: 0,
        }
    }
}

impl Relay for OurCalls {
    async fn add(&mut self, g: &Generator) -> Streams {
        let i = g.calls();
        self.n += 1;
        let call_id = format!("bench-media-{}", self.n);
        let uri = format!("sip:+74950000000@{}", self.server);
        let body = sdp(g.customer_addr(i), "0 101");
        let invite = self
            .trunk
            .request("INVITE", &uri, "+79161234567", &call_id, 1, "")
            .replace(
                "Max-Forwards: 70\r\n",
                &format!(
                    "Max-Forwards: 70\r\nContact: <sip:trunk@{}>\r\n",
                    self.trunk.local()
                ),
            )
            .replace(
                "Content-Length: 0\r\n\r\n",
                &format!(
                    "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ),
            );
        self.trunk.send(invite.as_bytes()).await.unwrap();
        let inv = self.phone.next_request("INVITE").await.unwrap();
        let manager_to = sdp_audio(&inv.body).unwrap();
        let mut ok = inv.response(200, "OK", Some("p"));
        ok.push_header("contact", format!("<sip:1001@{}>", self.phone.local()));
        ok.push_header("content-type", "application/sdp");
        ok.body = sdp(g.manager_addr(i), "0 101").into_bytes().into();
        self.phone.send(&ok.to_bytes()).await.unwrap();
        let answered = self.trunk.final_response("INVITE").await.unwrap();
        assert_eq!(answered.status(), Some(200));
        let customer_to = sdp_audio(&answered.body).unwrap();
        let from = invite
            .lines()
            .find_map(|l| l.strip_prefix("From: "))
            .unwrap();
        let ack = format!(
            "ACK {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-{call_id}-ack;rport\r\n\
Max-Forwards: 70\r\nFrom: {from}\r\nTo: {}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            self.trunk.local(),
            answered.header("to").unwrap()
        );
        self.trunk.send(ack.as_bytes()).await.unwrap();
        Streams {
            customer_to,
            manager_to,
        }
    }
}

/// Bencode (the ng protocol's encoding) of a dictionary of strings.
fn bencode(d: &BTreeMap<&str, &str>) -> Vec<u8> {
    let mut out = b"d".to_vec();
    for (k, v) in d {
        out.extend_from_slice(format!("{}:{k}{}:", k.len(), v.len()).as_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out.push(b'e');
    out
}

/// A string value of a bencoded reply, by key (the reply is a flat dict
/// for our purposes).
fn bvalue(reply: &[u8], key: &str) -> Option<String> {
    let needle = format!("{}:{key}", key.len());
    let at = reply
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())?
        + needle.len();
    let rest = &reply[at..];
    let colon = rest.iter().position(|&b| b == b':')?;
    let len: usize = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
    Some(String::from_utf8_lossy(rest.get(colon + 1..colon + 1 + len)?).into_owned())
}

/// rtpengine's side: calls set up with ng offers and answers.
struct Rtpengine {
    child: tokio::process::Child,
    ng: tokio::net::UdpSocket,
    n: usize,
}

impl Rtpengine {
    async fn start(port_min: u16, port_max: u16) -> Self {
        let ng_port = free_port().unwrap();
        let child = tokio::process::Command::new("rtpengine")
            .args([
                "--foreground",
                "--log-stderr",
                "--table=-1",
                "--interface=127.0.0.1",
            ])
            .arg(format!("--listen-ng=127.0.0.1:{ng_port}"))
            .arg(format!("--port-min={port_min}"))
            .arg(format!("--port-max={port_max}"))
            .args(["--log-level=3", "--timeout=120", "--num-threads=2"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("rtpengine (Debian package rtpengine-daemon)");
        let ng = tokio::net::UdpSocket::bind((LOCAL, 0)).await.unwrap();
        ng.connect((LOCAL, ng_port)).await.unwrap();
        let mut r = Rtpengine { child, ng, n: 0 };
        let started = Instant::now();
        loop {
            let mut d = BTreeMap::new();
            d.insert("command", "ping");
            if let Ok(reply) = r.request(&d).await
                && bvalue(&reply, "result").as_deref() == Some("pong")
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "rtpengine did not answer ping"
            );
        }
        r
    }

    async fn request(&mut self, d: &BTreeMap<&str, &str>) -> anyhow::Result<Vec<u8>> {
        self.n += 1;
        let cookie = format!("c{}", self.n);
        let mut msg = format!("{cookie} ").into_bytes();
        msg.extend_from_slice(&bencode(d));
        self.ng.send(&msg).await?;
        let mut buf = vec![0u8; 65_536];
        let n = tokio::time::timeout(Duration::from_millis(500), self.ng.recv(&mut buf)).await??;
        let reply = &buf[..n];
        anyhow::ensure!(reply.starts_with(cookie.as_bytes()), "stray ng reply");
        Ok(reply[cookie.len() + 1..].to_vec())
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }
}

impl Relay for Rtpengine {
    async fn add(&mut self, g: &Generator) -> Streams {
        let i = g.calls();
        let call_id = format!("bench-rtpengine-{i}");
        let offer = sdp(g.customer_addr(i), "0 101");
        let mut d = BTreeMap::new();
        d.insert("command", "offer");
        d.insert("call-id", call_id.as_str());
        d.insert("from-tag", "customer");
        d.insert("sdp", offer.as_str());
        let reply = self.request(&d).await.unwrap();
        let to_manager = bvalue(&reply, "sdp").expect("offer answered with SDP");
        let manager_to = sdp_audio(to_manager.as_bytes()).unwrap();
        let answer = sdp(g.manager_addr(i), "0 101");
        d.insert("command", "answer");
        d.insert("to-tag", "manager");
        d.insert("sdp", answer.as_str());
        let reply = self.request(&d).await.unwrap();
        let to_customer = bvalue(&reply, "sdp").expect("answer answered with SDP");
        Streams {
            customer_to: sdp_audio(to_customer.as_bytes()).unwrap(),
            manager_to,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Capacity {
    calls: usize,
    loss_pct: f64,
    cpu_pct: f64,
    /// CPU at the first step (well under either relay's limit): what the
    /// same calls cost each relay.
    first_cpu: Option<f64>,
}

/// Adds calls step by step, measuring each step; stops at the first step
/// that loses packets, or that the generator cannot offer in full (then
/// the step says nothing about the relay). Returns the largest lossless
/// step.
async fn ramp(
    name: &str,
    levels: &[usize],
    seconds: u64,
    pid: u32,
    g: &Generator,
    relay: &mut impl Relay,
) -> Capacity {
    let mut best = Capacity::default();
    for &level in levels {
        let t = Instant::now();
        while g.calls() < level {
            let s = relay.add(g).await;
            g.add(s);
        }
        let setup = t.elapsed();
        let (sent, lost, cpu) = g.measure(seconds, pid).await;
        let loss_pct = lost as f64 * 100.0 / sent.max(1) as f64;
        // 50 packets a second each way.
        let offered = sent as f64 / (level as f64 * 100.0 * seconds as f64);
        println!(
            "{name}: {level} calls (set up in {:.1} s): {sent} packets sent ({:.0} % of 50/s each way), {lost} lost ({loss_pct:.3} %), CPU {cpu:.0} %",
            setup.as_secs_f64(),
            offered * 100.0
        );
        if offered < 0.97 {
            println!("{name}: the generator could not offer {level} calls in full; stopping there");
            break;
        }
        if lost > 0 {
            break;
        }
        best = Capacity {
            calls: level,
            loss_pct,
            cpu_pct: cpu,
            first_cpu: best.first_cpu.or(Some(cpu)),
        };
    }
    best
}

#[tokio::main]
async fn main() {
    let levels: Vec<usize> = std::env::var("MEDIA_LEVELS")
        .unwrap_or_else(|_| {
            "500,1000,1100,1200,1250,1300,1350,1400,1450,1500,1600,1750,2000".into()
        })
        .split(',')
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let seconds = env_usize("MEDIA_SECONDS", 5) as u64;
    // Each round ramps both relays afresh; a side's figure is its best
    // round (the host's noise is larger than the differences measured).
    let rounds = env_usize("MEDIA_ROUNDS", 3).max(1);
    // The relay gets CPU 1 to itself, the generator (this process) CPU 0:
    // a relay's capacity is then what one core carries, not what is left
    // after the generator. MEDIA_PIN=0 lets both float.
    let pinned = env_usize("MEDIA_PIN", 1) != 0;
    if pinned {
        pin(std::process::id(), 0);
    }
    println!("relay pinned to CPU 1, generator to CPU 0: {pinned}");

    let (mut ours_best, mut theirs_best) = (Capacity::default(), Capacity::default());
    for round in 1..=rounds {
        println!("round {round} of {rounds}");
        let work = tempfile::tempdir().unwrap();
        let ours = {
            let config = "[sip]\nalgorithms = [\"MD5\"]\n[sip.security]\nrequests_per_second = 0\n\
[media]\nport_min = 20000\nport_max = 30000\nrtp_timeout = \"120s\"\n\
[[sip.users]]\nextension = \"1001\"\npassword = \"secret-1001\"\nmanager = \"m1\"\n\
[[sip.trunks]]\nname = \"bench\"\naddresses = [\"127.0.0.1\"]\n\
[[sip.numbers]]\nnumber = \"+74950000000\"\nmanager = \"m1\"\n";
            let sb = bench_gateway(work.path(), config).await.unwrap();
            if pinned {
                pin(sb.pid().unwrap(), 1);
            }
            let g = Generator::start();
            let mut calls = OurCalls::new(&sb).await;
            let cap = ramp(
                "switchboard (recording)",
                &levels,
                seconds,
                sb.pid().unwrap(),
                &g,
                &mut calls,
            )
            .await;
            let recordings = walk_size(&work.path().join("data/recordings"));
            println!(
                "switchboard wrote {:.1} MB of recordings",
                recordings as f64 / 1e6
            );
            drop(g);
            drop(sb);
            cap
        };
        let theirs = {
            let mut engine = Rtpengine::start(30_000, 40_000).await;
            let pid = engine.pid();
            if pinned {
                pin(pid, 1);
            }
            let g = Generator::start();
            let cap = ramp(
                "rtpengine (no recording)",
                &levels,
                seconds,
                pid,
                &g,
                &mut engine,
            )
            .await;
            drop(g);
            cap
        };
        // The lowest CPU any round saw at the first step.
        let low = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let first_cpu = (
            low(ours_best.first_cpu, ours.first_cpu),
            low(theirs_best.first_cpu, theirs.first_cpu),
        );
        if ours.calls > ours_best.calls {
            ours_best = ours;
        }
        if theirs.calls > theirs_best.calls {
            theirs_best = theirs;
        }
        (ours_best.first_cpu, theirs_best.first_cpu) = first_cpu;
    }
    let (ours, theirs) = (ours_best, theirs_best);
    if let (Some(a), Some(b), Some(level)) = (ours.first_cpu, theirs.first_cpu, levels.first()) {
        println!(
            "CPU for {level} calls (lowest round): switchboard {a:.0} % with recording, rtpengine {b:.0} % without"
        );
    }
    println!(
        "BENCH recorded_calls={} rtp_loss_pct={:.3} cpu_pct={:.0} rtpengine_calls={} calls_ratio={:.2}",
        ours.calls,
        ours.loss_pct,
        ours.cpu_pct,
        theirs.calls,
        ours.calls as f64 / theirs.calls.max(1) as f64
    );
}

fn walk_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                walk_size(&p)
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}
