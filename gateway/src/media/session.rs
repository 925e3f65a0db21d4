//! One call's relay: four sockets (RTP and RTCP per side), latching,
//! forwarding, DTMF, the recording and the media timeout. The engine's
//! threads (`engine`) drive it.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::Digest;
use switchboard_storage::{Channel as FeedChannel, Interaction, Kind};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::recorder::{Channel, Finished, Recorder};
use super::sdp::Audio;
use super::{Answered, Shared, g711};
use crate::metrics as m;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    A = 0,
    B = 1,
}

#[derive(Debug)]
pub(super) enum Ctl {
    /// Where a side says it receives (its offer or answer).
    Peer { side: Side, audio: Audio },
    /// Record from now on.
    Record {
        path: PathBuf,
        rel: String,
        info: Answered,
    },
}

#[derive(Debug, Default)]
struct Leg {
    /// From its SDP.
    rtp_peer: Option<SocketAddr>,
    rtcp_peer: Option<SocketAddr>,
    /// Learned from its first packets; then the only source accepted.
    rtp_src: Option<SocketAddr>,
    rtcp_src: Option<SocketAddr>,
    /// Side B opens when the call is answered.
    open: bool,
    hold: bool,
    audio: Option<Audio>,
    /// The timestamp of the last DTMF event counted (end packets repeat).
    dtmf_ts: Option<u32>,
}

/// Packets counted by a relay thread between two metric updates.
#[derive(Debug, Default)]
pub(super) struct Counts {
    rtp: u64,
    rtp_bytes: u64,
    rtcp: u64,
    rtcp_bytes: u64,
    strict: u64,
    no_peer: u64,
    malformed: u64,
    send_failed: u64,
}

impl Counts {
    pub(super) fn publish(&mut self) {
        let c = std::mem::take(self);
        for (kind, n, bytes) in [("rtp", c.rtp, c.rtp_bytes), ("rtcp", c.rtcp, c.rtcp_bytes)] {
            if n > 0 {
                m::MEDIA_PACKETS.with_label_values(&[kind]).inc_by(n);
                m::MEDIA_BYTES.with_label_values(&[kind]).inc_by(bytes);
            }
        }
        for (reason, n) in [
            ("strict_source", c.strict),
            ("no_peer", c.no_peer),
            ("malformed", c.malformed),
            ("send_failed", c.send_failed),
        ] {
            if n > 0 {
                m::MEDIA_DROPPED.with_label_values(&[reason]).inc_by(n);
            }
        }
    }
}

#[derive(Debug)]
struct Recording {
    recorder: Recorder,
    rel: String,
    info: Answered,
    started: Instant,
}

#[derive(Debug)]
struct State {
    legs: [Leg; 2],
    recording: Option<Recording>,
    digits: Arc<Mutex<String>>,
    last_rx: Instant,
    timed_out: bool,
}

impl State {
    /// One packet from `side`; returns where to send it and from which of
    /// the other side's sockets (rtcp or not).
    fn inbound(
        &mut self,
        side: Side,
        rtcp: bool,
        src: SocketAddr,
        pkt: &[u8],
        now: Instant,
        counts: &mut Counts,
    ) -> Option<SocketAddr> {
        let leg = &mut self.legs[side as usize];
        if !leg.open {
            counts.no_peer += 1;
            return None;
        }
        let learned = if rtcp {
            &mut leg.rtcp_src
        } else {
            &mut leg.rtp_src
        };
        match learned {
            Some(s) if *s != src => {
                counts.strict += 1;
                return None;
            }
            Some(_) => {}
            None => *learned = Some(src),
        }
        if !rtcp {
            let Ok(rtp) = rtp_rs::RtpReader::new(pkt) else {
                counts.malformed += 1;
                return None;
            };
            self.last_rx = now;
            self.media(side, &rtp, now);
        }
        let other = &self.legs[1 - side as usize];
        let to = if rtcp {
            other.rtcp_src.or(other.rtcp_peer)
        } else {
            other.rtp_src.or(other.rtp_peer)
        };
        if to.is_none() || !other.open {
            counts.no_peer += 1;
            return None;
        }
        if rtcp {
            counts.rtcp += 1;
            counts.rtcp_bytes += pkt.len() as u64;
        } else {
            counts.rtp += 1;
            counts.rtp_bytes += pkt.len() as u64;
        }
        to
    }

    /// Records the packet's audio and notes DTMF.
    fn media(&mut self, side: Side, rtp: &rtp_rs::RtpReader<'_>, now: Instant) {
        let leg = &mut self.legs[side as usize];
        let pt = rtp.payload_type();
        let codec = match pt {
            0 => Some("PCMU"),
            8 => Some("PCMA"),
            _ => leg.audio.as_ref().and_then(|a| a.codec(pt)),
        };
        match codec {
            Some("TELEPHONE-EVENT") => {
                // RFC 4733: event, E bit; the end packet is sent three times.
                let p = rtp.payload();
                if p.len() >= 4 && p[1] & 0x80 != 0 && leg.dtmf_ts != Some(rtp.timestamp()) {
                    leg.dtmf_ts = Some(rtp.timestamp());
                    if let Some(d) = dtmf_digit(p[0]) {
                        self.digits
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(d);
                    }
                }
            }
            Some(law @ ("PCMU" | "PCMA")) => {
                let Some(rec) = self.recording.as_mut() else {
                    return;
                };
                let law = if law == "PCMU" {
                    g711::Law::Ulaw
                } else {
                    g711::Law::Alaw
                };
                let mut samples = [0i16; 480];
                let n = g711::decode(law, rtp.payload(), &mut samples);
                let customer = (side == Side::A) == rec.info.customer_is_a;
                let ch = if customer {
                    Channel::Customer
                } else {
                    Channel::Manager
                };
                rec.recorder.mixer.push(
                    ch,
                    ms_since(rec.started, now),
                    rtp.ssrc(),
                    rtp.timestamp(),
                    &samples[..n],
                );
            }
            _ => {}
        }
    }

    fn peer(&mut self, side: Side, audio: Audio, now: Instant) {
        let leg = &mut self.legs[side as usize];
        let rtp = audio.addr.map(|ip| SocketAddr::new(ip, audio.rtp_port));
        let rtcp = audio.addr.map(|ip| SocketAddr::new(ip, audio.rtcp_port));
        if leg.rtp_peer.is_some() && rtp.is_some() && leg.rtp_peer != rtp {
            // The side moved: learn it again.
            leg.rtp_src = None;
            leg.rtcp_src = None;
        }
        if rtp.is_some() {
            leg.rtp_peer = rtp;
            leg.rtcp_peer = rtcp;
        }
        leg.hold = audio.on_hold;
        leg.audio = Some(audio);
        if side == Side::B {
            leg.open = true;
        }
        // A new offer or answer (an answer, a resume) starts the media
        // timeout afresh.
        self.last_rx = now;
    }
}

fn dtmf_digit(event: u8) -> Option<char> {
    match event {
        0..=9 => Some(char::from(b'0' + event)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + event - 12)),
        _ => None,
    }
}

/// One call's relay, driven by the thread of the engine that owns it.
#[derive(Debug)]
pub(super) struct Relay {
    call: u64,
    /// `[side][rtcp]`.
    socks: [[UdpSocket; 2]; 2],
    st: State,
}

impl Relay {
    /// Side A (the caller, described by its offer `a`) is open at once.
    pub(super) fn new(
        call: u64,
        sockets: [(UdpSocket, UdpSocket); 2],
        a: Audio,
        digits: Arc<Mutex<String>>,
        now: Instant,
    ) -> Self {
        let [(a_rtp, a_rtcp), (b_rtp, b_rtcp)] = sockets;
        let mut relay = Relay {
            call,
            socks: [[a_rtp, a_rtcp], [b_rtp, b_rtcp]],
            st: State {
                legs: [
                    Leg {
                        open: true,
                        ..Leg::default()
                    },
                    Leg::default(),
                ],
                recording: None,
                digits,
                last_rx: now,
                timed_out: false,
            },
        };
        relay.st.peer(Side::A, a, now);
        relay
    }

    pub(super) fn socket(&self, side: Side, rtcp: bool) -> &UdpSocket {
        &self.socks[side as usize][usize::from(rtcp)]
    }

    /// Its four sockets, each with its side and whether it is RTCP's.
    pub(super) fn sockets(&self) -> impl Iterator<Item = (Side, bool, &UdpSocket)> {
        [Side::A, Side::B].into_iter().flat_map(move |side| {
            [false, true]
                .into_iter()
                .map(move |rtcp| (side, rtcp, self.socket(side, rtcp)))
        })
    }

    /// The socket of `side` (`rtcp` or not) became readable (its epoll
    /// registration is edge-triggered): relays what it holds, up to
    /// [`DRAIN`] datagrams. True when it may hold more: the caller comes
    /// back to it after the other sockets' turn.
    pub(super) fn readable(
        &mut self,
        side: Side,
        rtcp: bool,
        now: Instant,
        buf: &mut [u8],
        counts: &mut Counts,
    ) -> bool {
        for _ in 0..DRAIN {
            let (n, src) = match self.socket(side, rtcp).recv_from(buf) {
                Ok(got) => got,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // WouldBlock: drained.
                Err(_) => return false,
            };
            let pkt = &buf[..n];
            if let Some(to) = self.st.inbound(side, rtcp, src, pkt, now, counts) {
                let out = &self.socks[1 - side as usize][usize::from(rtcp)];
                if out.send_to(pkt, to).is_err() {
                    counts.send_failed += 1;
                }
            }
        }
        true
    }

    pub(super) fn control(&mut self, ctl: Ctl, now: Instant) {
        match ctl {
            Ctl::Peer { side, audio } => self.st.peer(side, audio, now),
            Ctl::Record { path, rel, info } => match Recorder::create(&path) {
                Ok(recorder) => {
                    self.st.recording = Some(Recording {
                        recorder,
                        rel,
                        info,
                        started: now,
                    });
                }
                Err(e) => {
                    m::RECORDING_ERRORS.with_label_values(&["create"]).inc();
                    warn!(call = self.call, file = %path.display(), error = %e, "recording not started");
                }
            },
        }
    }

    /// Every [`TICK`]: writes the recording out, watches the media timeout.
    pub(super) fn tick(&mut self, now: Instant, shared: &Shared) {
        let st = &mut self.st;
        if let Some(rec) = st.recording.as_mut()
            && let Err(e) = rec.recorder.flush(ms_since(rec.started, now))
        {
            m::RECORDING_ERRORS.with_label_values(&["write"]).inc();
            warn!(call = self.call, error = %e, "recording write failed; recording stopped");
            st.recording = None;
        }
        let held = st.legs.iter().any(|l| l.hold);
        if st.legs[1].open
            && !held
            && !st.timed_out
            && now.saturating_duration_since(st.last_rx) > shared.rtp_timeout
        {
            st.timed_out = true;
            debug!(call = self.call, "no RTP within the timeout");
            let _ = shared.timeouts.send(self.call);
        }
    }

    /// The call is over: closes the sockets, then finishes the recording
    /// and writes `recording.ready`.
    pub(super) fn close(self, now: Instant, shared: &Shared) {
        let Relay { socks, st, .. } = self;
        drop(socks);
        if let Some(rec) = st.recording {
            finish(rec, now, shared);
        }
    }
}

/// Datagrams read from one socket per readiness event: enough to catch
/// up after a busy moment, few enough that one flooded port cannot starve
/// the other calls.
const DRAIN: usize = 64;

/// How often each relay writes its recording out and checks its timeout.
/// With the jitter window (200 ms) a `kill -9` loses at most 0.7 s of
/// audio.
pub(super) const TICK: Duration = Duration::from_millis(500);

fn ms_since(start: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(start).as_millis()).unwrap_or(u64::MAX)
}

/// Writes the rest of the recording, then `recording.ready`.
fn finish(rec: Recording, now: Instant, shared: &Shared) {
    let end_ms = ms_since(rec.started, now);
    let Recording {
        recorder,
        rel,
        info,
        ..
    } = rec;
    let events = shared.events.clone();
    let work = move || {
        let done = (|| {
            let done = recorder.finish(end_ms)?;
            let mut hasher = sha2::Sha256::new();
            let mut file = std::fs::File::open(&done.path)?;
            std::io::copy(&mut file, &mut hasher)?;
            Ok::<_, std::io::Error>((done, hex(&hasher.finalize())))
        })();
        match done {
            Ok((done, sha256)) => ready(done, &sha256, rel, info, &events),
            Err(e) => {
                m::RECORDING_ERRORS.with_label_values(&["finish"]).inc();
                warn!(file = %rel, error = %e, "recording not finished");
            }
        }
    };
    // Up to 10 s of audio (320 kB) is written and hashed here, in well
    // under a millisecond; longer recordings on the blocking pool.
    if end_ms <= 10_000 {
        work();
    } else {
        drop(shared.runtime.spawn_blocking(work));
    }
}

fn ready(
    done: Finished,
    sha256: &str,
    rel: String,
    info: Answered,
    events: &mpsc::UnboundedSender<Interaction>,
) {
    m::RECORDING_SECONDS.inc_by(done.duration_ms / 1000);
    let payload = json!({
        "call_id": info.conversation,
        "path": rel,
        "duration_s": done.duration_ms as f64 / 1000.0,
        "size": done.size,
        "sha256": sha256,
        "format": "audio/wav",
        "sample_rate": 8000,
        "channels": { "left": "customer", "right": "manager" },
        "direction": info.direction,
    });
    let mut ev = Interaction::new(
        Kind::RecordingReady,
        FeedChannel::Sip,
        info.contact,
        time::OffsetDateTime::now_utc(),
        payload,
    );
    ev.manager = info.manager;
    ev.conversation = Some(info.conversation);
    if events.send(ev).is_err() {
        warn!(file = %rel, "recording.ready not written: the feed writer stopped");
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
