//! One call's relay task: four sockets (RTP and RTCP per side), latching,
//! forwarding, DTMF, the recording and the media timeout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::Digest;
use switchboard_storage::{Channel as FeedChannel, Interaction, Kind};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::recorder::{Channel, Recorder};
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
    Peer {
        side: Side,
        audio: Audio,
    },
    /// Record from now on.
    Record {
        path: PathBuf,
        rel: String,
        info: Answered,
    },
    Stop,
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

#[derive(Debug, Default)]
struct Counts {
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
    fn publish(&mut self) {
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

struct Recording {
    recorder: Recorder,
    rel: String,
    info: Answered,
    started: Instant,
}

struct State {
    legs: [Leg; 2],
    counts: Counts,
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
    ) -> Option<SocketAddr> {
        let leg = &mut self.legs[side as usize];
        if !leg.open {
            self.counts.no_peer += 1;
            return None;
        }
        let learned = if rtcp {
            &mut leg.rtcp_src
        } else {
            &mut leg.rtp_src
        };
        match learned {
            Some(s) if *s != src => {
                self.counts.strict += 1;
                return None;
            }
            Some(_) => {}
            None => *learned = Some(src),
        }
        if !rtcp {
            let Ok(rtp) = rtp_rs::RtpReader::new(pkt) else {
                self.counts.malformed += 1;
                return None;
            };
            self.last_rx = Instant::now();
            self.media(side, &rtp);
        }
        let other = &self.legs[1 - side as usize];
        let to = if rtcp {
            other.rtcp_src.or(other.rtcp_peer)
        } else {
            other.rtp_src.or(other.rtp_peer)
        };
        if to.is_none() || !other.open {
            self.counts.no_peer += 1;
            return None;
        }
        if rtcp {
            self.counts.rtcp += 1;
            self.counts.rtcp_bytes += pkt.len() as u64;
        } else {
            self.counts.rtp += 1;
            self.counts.rtp_bytes += pkt.len() as u64;
        }
        to
    }

    /// Records the packet's audio and notes DTMF.
    fn media(&mut self, side: Side, rtp: &rtp_rs::RtpReader<'_>) {
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
                let decode = if law == "PCMU" {
                    g711::ulaw
                } else {
                    g711::alaw
                };
                let mut samples = [0i16; 480];
                let n = rtp.payload().len().min(samples.len());
                for (s, b) in samples.iter_mut().zip(rtp.payload()) {
                    *s = decode(*b);
                }
                let customer = (side == Side::A) == rec.info.customer_is_a;
                let ch = if customer {
                    Channel::Customer
                } else {
                    Channel::Manager
                };
                let now = u64::try_from(rec.started.elapsed().as_millis()).unwrap_or(u64::MAX);
                rec.recorder
                    .mixer
                    .push(ch, now, rtp.ssrc(), rtp.timestamp(), &samples[..n]);
            }
            _ => {}
        }
    }

    fn peer(&mut self, side: Side, audio: Audio) {
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
        self.last_rx = Instant::now();
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

/// Runs a call's relay until `Stop` (or the B2BUA is gone).
pub(super) async fn run(
    call: u64,
    sockets: [(std::net::UdpSocket, std::net::UdpSocket); 2],
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
    digits: Arc<Mutex<String>>,
    shared: Arc<Shared>,
) {
    let [(a_rtp, a_rtcp), (b_rtp, b_rtcp)] = sockets;
    let open = |s: std::net::UdpSocket| UdpSocket::from_std(s);
    let (Ok(a_rtp), Ok(a_rtcp), Ok(b_rtp), Ok(b_rtcp)) =
        (open(a_rtp), open(a_rtcp), open(b_rtp), open(b_rtcp))
    else {
        warn!(call, "media sockets could not join the runtime");
        return;
    };
    let socks = [[&a_rtp, &a_rtcp], [&b_rtp, &b_rtcp]];
    let mut st = State {
        legs: [
            Leg {
                open: true,
                ..Leg::default()
            },
            Leg::default(),
        ],
        counts: Counts::default(),
        recording: None,
        digits,
        last_rx: Instant::now(),
        timed_out: false,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut bufs = [[0u8; 1500]; 4];
    let [b0, b1, b2, b3] = &mut bufs;
    loop {
        let (side, rtcp, res, buf): (Side, bool, std::io::Result<(usize, SocketAddr)>, &[u8]) = tokio::select! {
            r = a_rtp.recv_from(b0) => (Side::A, false, r, &b0[..]),
            r = b_rtp.recv_from(b1) => (Side::B, false, r, &b1[..]),
            r = a_rtcp.recv_from(b2) => (Side::A, true, r, &b2[..]),
            r = b_rtcp.recv_from(b3) => (Side::B, true, r, &b3[..]),
            c = ctl.recv() => {
                match c {
                    Some(Ctl::Peer { side, audio }) => st.peer(side, audio),
                    Some(Ctl::Record { path, rel, info }) => match Recorder::create(&path) {
                        Ok(recorder) => {
                            st.recording = Some(Recording { recorder, rel, info, started: Instant::now() });
                        }
                        Err(e) => {
                            m::RECORDING_ERRORS.with_label_values(&["create"]).inc();
                            warn!(call, file = %path.display(), error = %e, "recording not started");
                        }
                    },
                    Some(Ctl::Stop) | None => break,
                }
                continue;
            }
            _ = tick.tick() => {
                st.counts.publish();
                if let Some(rec) = st.recording.as_mut() {
                    let now = u64::try_from(rec.started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    if let Err(e) = rec.recorder.flush(now) {
                        m::RECORDING_ERRORS.with_label_values(&["write"]).inc();
                        warn!(call, error = %e, "recording write failed; recording stopped");
                        st.recording = None;
                    }
                }
                let held = st.legs.iter().any(|l| l.hold);
                if st.legs[1].open && !held && !st.timed_out && st.last_rx.elapsed() > shared.rtp_timeout {
                    st.timed_out = true;
                    debug!(call, "no RTP within the timeout");
                    let _ = shared.timeouts.send(call);
                }
                continue;
            }
        };
        let Ok((n, src)) = res else { continue };
        let pkt = &buf[..n];
        if let Some(to) = st.inbound(side, rtcp, src, pkt) {
            let out = socks[1 - side as usize][usize::from(rtcp)];
            if out.try_send_to(pkt, to).is_err() {
                st.counts.send_failed += 1;
            }
        }
    }
    st.counts.publish();
    drop((a_rtp, a_rtcp, b_rtp, b_rtcp));
    if let Some(rec) = st.recording.take() {
        finish(rec, &shared).await;
    }
}

/// Writes the rest of the recording, then `recording.ready`.
async fn finish(rec: Recording, shared: &Shared) {
    let end_ms = u64::try_from(rec.started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let Recording {
        recorder,
        rel,
        info,
        ..
    } = rec;
    let work = move || {
        let done = recorder.finish(end_ms)?;
        let mut hasher = sha2::Sha256::new();
        let mut file = std::fs::File::open(&done.path)?;
        std::io::copy(&mut file, &mut hasher)?;
        Ok::<_, std::io::Error>((done, hex(&hasher.finalize())))
    };
    // Up to 10 s of audio (320 kB) is written and hashed here, in well
    // under a millisecond; longer recordings on the blocking pool.
    let done = if end_ms <= 10_000 {
        Ok(work())
    } else {
        tokio::task::spawn_blocking(work).await
    };
    let (done, sha256) = match done {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            m::RECORDING_ERRORS.with_label_values(&["finish"]).inc();
            warn!(file = %rel, error = %e, "recording not finished");
            return;
        }
        Err(e) => {
            m::RECORDING_ERRORS.with_label_values(&["finish"]).inc();
            warn!(file = %rel, error = %e, "recording task failed");
            return;
        }
    };
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
    if shared.events.send(ev).is_err() {
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
