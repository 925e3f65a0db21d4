//! Media anchoring: every call's RTP and RTCP pass through a relay session
//! the B2BUA opens with the caller's offer, so both sides only ever see our
//! address; the session records the call.
//!
//! A session has two sides, each with an RTP/RTCP port pair from
//! `media.port_min..=port_max`: side A faces the caller, side B the phone
//! that answered. Symmetric RTP: a side's first packet teaches the relay
//! where that side really is (NAT), and from then on only that source is
//! accepted; anything else is dropped and counted. Side B opens when the
//! call is answered (forks ring with one offer; only the winner is heard).
//! No RTP from either side for `media.rtp_timeout` (not while on hold)
//! asks the B2BUA to hang the call up.

mod engine;
pub mod g711;
pub mod recorder;
pub mod sdp;
mod session;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_config::MediaConfig;
use switchboard_storage::{Contact, Interaction};
use tokio::sync::mpsc;
use tracing::{info, warn};

use self::engine::{Cmd, Engine};
use self::sdp::{Audio, SdpError};
use self::session::{Ctl, Side};

/// What the relay is told when a call is answered.
#[derive(Debug, Clone)]
pub struct Answered {
    /// The caller's Call-ID: the recording's name and the event's conversation.
    pub conversation: String,
    pub contact: Contact,
    pub manager: Option<String>,
    pub direction: &'static str,
    /// The caller is the customer (inbound calls): A is the left channel.
    pub customer_is_a: bool,
    /// The trunk's or user's setting; `None`: `media.record`.
    pub record: Option<bool>,
}

/// What the relay saw of a call, for `call.ended`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// RFC 4733 digits either side pressed, in order.
    pub dtmf: String,
    /// The recording's path under the data directory, when recording.
    pub recording: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error(transparent)]
    Sdp(#[from] SdpError),
    #[error("no free RTP ports in the configured range")]
    NoPorts,
    #[error("no media session for this call")]
    NoSession,
}

/// The B2BUA's view of the relay (a trait so its state machine stays
/// testable without sockets).
pub trait Anchor: Send + std::fmt::Debug {
    /// The caller's offer: opens the call's session; returns the offer the
    /// phones get. `NoCommonCodec` means 488.
    fn offer(&mut self, call: u64, sdp: &[u8]) -> Result<Vec<u8>, MediaError>;
    /// The answering phone's SDP: opens side B; returns the caller's answer.
    fn answer(&mut self, call: u64, sdp: &[u8], info: &Answered) -> Result<Vec<u8>, MediaError>;
    /// SDP crossing an answered call (re-INVITE, UPDATE, or their
    /// answers), written by side A when `from_a`: the other side's copy.
    fn update(&mut self, call: u64, from_a: bool, sdp: &[u8]) -> Result<Vec<u8>, MediaError>;
    /// The call is over: its ports are freed and its recording finished
    /// at the next [`Anchor::commit`].
    fn end(&mut self, call: u64) -> Option<Summary>;
    /// Carries out the ends since the last commit. The B2BUA's caller
    /// commits after queueing the calls' events, so `recording.ready`
    /// always follows its `call.ended` in the feed.
    fn commit(&mut self);
}

/// Even ports of the range, each the RTP half of a pair.
#[derive(Debug)]
struct PortPool {
    free: VecDeque<u16>,
}

impl PortPool {
    fn new(min: u16, max: u16) -> Self {
        let first = min + min % 2;
        PortPool {
            free: (first..max).step_by(2).collect(),
        }
    }

    /// Binds an RTP/RTCP pair, skipping ports someone else holds.
    fn take(&mut self, ip: IpAddr) -> Option<(std::net::UdpSocket, std::net::UdpSocket, u16)> {
        for _ in 0..self.free.len().min(64) {
            let port = self.free.pop_front()?;
            let bind = |p: u16| {
                let s = std::net::UdpSocket::bind(SocketAddr::new(ip, p))?;
                s.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(s)
            };
            match (bind(port), bind(port + 1)) {
                (Ok(rtp), Ok(rtcp)) => return Some((rtp, rtcp, port)),
                _ => self.free.push_back(port),
            }
        }
        None
    }

    fn give(&mut self, port: u16) {
        self.free.push_back(port);
    }
}

/// Settings and channels every session shares.
#[derive(Debug)]
struct Shared {
    bind: IpAddr,
    advertised: IpAddr,
    codecs: Vec<String>,
    rtp_timeout: Duration,
    record: bool,
    data_dir: PathBuf,
    pool: Mutex<PortPool>,
    /// Calls whose media stopped: the B2BUA hangs them up.
    timeouts: mpsc::UnboundedSender<u64>,
    /// `recording.ready` events, into the same queue as call events.
    events: mpsc::UnboundedSender<Interaction>,
    /// Finishes long recordings off the relay threads.
    runtime: tokio::runtime::Handle,
}

#[derive(Debug)]
struct Session {
    /// The caller's last SDP (cut to the codecs offered to the phones),
    /// for the answer's codecs.
    a: Audio,
    digits: Arc<Mutex<String>>,
    recording: Option<String>,
    a_port: u16,
    b_port: u16,
}

/// The relay: one session per call with media.
#[derive(Debug)]
pub struct Media {
    shared: Arc<Shared>,
    engine: Engine,
    sessions: HashMap<u64, Session>,
    /// Calls ended but whose sessions are not yet told to stop (see
    /// `Anchor::commit`).
    ending: Vec<u64>,
}

impl Media {
    /// Starts the relay threads. Must be called inside a Tokio runtime
    /// (long recordings are finished on its blocking pool). `bind` is the
    /// address RTP binds to when `media.bind_address` is empty;
    /// `advertised` likewise for `media.advertised_address`.
    pub fn new(
        cfg: &MediaConfig,
        bind: IpAddr,
        advertised: IpAddr,
        data_dir: &Path,
        events: mpsc::UnboundedSender<Interaction>,
    ) -> std::io::Result<(Self, mpsc::UnboundedReceiver<u64>)> {
        let bind = cfg.bind_address.parse().unwrap_or(bind);
        let advertised = cfg
            .advertised_address
            .parse()
            .unwrap_or(if cfg.bind_address.is_empty() {
                advertised
            } else {
                bind
            });
        let (timeouts, timeouts_rx) = mpsc::unbounded_channel();
        // Shown from the start, not only after the first call.
        crate::metrics::MEDIA_SESSIONS.set(0);
        crate::metrics::RECORDING_SECONDS.inc_by(0);
        let shared = Shared {
            bind,
            advertised,
            codecs: cfg.codecs.clone(),
            rtp_timeout: cfg.rtp_timeout,
            record: cfg.record,
            data_dir: data_dir.to_owned(),
            pool: Mutex::new(PortPool::new(cfg.port_min, cfg.port_max)),
            timeouts,
            events,
            runtime: tokio::runtime::Handle::current(),
        };
        let shared = Arc::new(shared);
        let engine = Engine::start(cfg.threads, &shared)?;
        Ok((
            Media {
                shared,
                engine,
                sessions: HashMap::new(),
                ending: Vec::new(),
            },
            timeouts_rx,
        ))
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, PortPool> {
        self.shared.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn active(&self) -> usize {
        self.sessions.len()
    }
}

impl Anchor for Media {
    fn offer(&mut self, call: u64, sdp: &[u8]) -> Result<Vec<u8>, MediaError> {
        let (a_rtp, a_rtcp, a_port, b_rtp, b_rtcp, b_port) = {
            let mut pool = self.pool();
            let Some((a_rtp, a_rtcp, a_port)) = pool.take(self.shared.bind) else {
                return Err(MediaError::NoPorts);
            };
            let Some((b_rtp, b_rtcp, b_port)) = pool.take(self.shared.bind) else {
                pool.give(a_port);
                return Err(MediaError::NoPorts);
            };
            (a_rtp, a_rtcp, a_port, b_rtp, b_rtcp, b_port)
        };
        // The phones' offer, cut to the codecs both sides may use; the
        // caller's side as that offer describes it.
        let (offer, a) = match sdp::rewrite(
            sdp,
            self.shared.advertised,
            b_port,
            Some(&self.shared.codecs),
        ) {
            Ok(rewritten) => rewritten,
            Err(e) => {
                drop((a_rtp, a_rtcp, b_rtp, b_rtcp));
                let mut pool = self.pool();
                pool.give(a_port);
                pool.give(b_port);
                return Err(e.into());
            }
        };
        let digits = Arc::new(Mutex::new(String::new()));
        // An earlier session of the call stops on its thread first.
        self.engine.send(
            call,
            Cmd::Open {
                sockets: [(a_rtp, a_rtcp), (b_rtp, b_rtcp)],
                ports: [a_port, b_port],
                a: a.clone(),
                digits: Arc::clone(&digits),
            },
        );
        self.sessions.insert(
            call,
            Session {
                a,
                digits,
                recording: None,
                a_port,
                b_port,
            },
        );
        crate::metrics::MEDIA_SESSIONS.set(i64::try_from(self.sessions.len()).unwrap_or(i64::MAX));
        Ok(offer)
    }

    fn answer(&mut self, call: u64, sdp: &[u8], info: &Answered) -> Result<Vec<u8>, MediaError> {
        let advertised = self.shared.advertised;
        let record = info.record.unwrap_or(self.shared.record);
        let data_dir = self.shared.data_dir.clone();
        let session = self.sessions.get_mut(&call).ok_or(MediaError::NoSession)?;
        // The answer may only hold codecs the caller offered.
        let offered: Vec<String> = session.a.payloads.iter().map(|p| p.name.clone()).collect();
        let (answer, b) = sdp::rewrite(sdp, advertised, session.a_port, Some(&offered))?;
        self.engine.send(
            call,
            Cmd::Ctl(Box::new(Ctl::Peer {
                side: Side::B,
                audio: b,
            })),
        );
        if record {
            let now = time::OffsetDateTime::now_utc();
            let rel = format!(
                "recordings/{:04}/{:02}/{:02}/{}.wav",
                now.year(),
                u8::from(now.month()),
                now.day(),
                file_name(&info.conversation)
            );
            self.engine.send(
                call,
                Cmd::Ctl(Box::new(Ctl::Record {
                    path: data_dir.join(&rel),
                    rel: rel.clone(),
                    info: info.clone(),
                })),
            );
            session.recording = Some(rel);
        }
        Ok(answer)
    }

    fn update(&mut self, call: u64, from_a: bool, sdp: &[u8]) -> Result<Vec<u8>, MediaError> {
        let advertised = self.shared.advertised;
        let session = self.sessions.get_mut(&call).ok_or(MediaError::NoSession)?;
        // What A writes goes to B: it names the port B sends to (B's side).
        let port = if from_a {
            session.b_port
        } else {
            session.a_port
        };
        let (out, audio) = sdp::rewrite(sdp, advertised, port, None)?;
        if from_a {
            session.a = audio.clone();
        }
        let side = if from_a { Side::A } else { Side::B };
        self.engine
            .send(call, Cmd::Ctl(Box::new(Ctl::Peer { side, audio })));
        Ok(out)
    }

    fn end(&mut self, call: u64) -> Option<Summary> {
        let session = self.sessions.remove(&call)?;
        self.ending.push(call);
        crate::metrics::MEDIA_SESSIONS.set(i64::try_from(self.sessions.len()).unwrap_or(i64::MAX));
        let dtmf = session
            .digits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Some(Summary {
            dtmf,
            // Set only on the answer.
            recording: session.recording,
        })
    }

    fn commit(&mut self) {
        for call in self.ending.drain(..) {
            self.engine.send(call, Cmd::Stop);
        }
    }
}

/// A Call-ID made safe as a file name.
fn file_name(call_id: &str) -> String {
    let name: String = call_id
        .chars()
        .take(128)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with('.') || name.is_empty() {
        format!("_{name}")
    } else {
        name
    }
}

/// Housekeeping of `<data_dir>/recordings`: deletes days older than
/// `retention_days` (0: none) and, with `repair` (at start-up, before any
/// call is recorded), fixes the headers of the last days' recordings a
/// crash cut short.
pub fn tidy_recordings(data_dir: &Path, retention_days: u32, repair: bool) {
    let root = data_dir.join("recordings");
    let Ok(years) = std::fs::read_dir(&root) else {
        return;
    };
    let today = time::OffsetDateTime::now_utc().date();
    let mut days = Vec::new();
    for y in years.flatten() {
        for m in std::fs::read_dir(y.path()).into_iter().flatten().flatten() {
            for d in std::fs::read_dir(m.path()).into_iter().flatten().flatten() {
                days.push(d.path());
            }
        }
    }
    for day in days {
        let date = day
            .strip_prefix(&root)
            .ok()
            .map(|p| {
                p.iter()
                    .filter_map(|c| c.to_str()?.parse::<i32>().ok())
                    .collect::<Vec<_>>()
            })
            .and_then(|v| match v[..] {
                [y, m, d] => time::Date::from_calendar_date(
                    y,
                    time::Month::try_from(u8::try_from(m).ok()?).ok()?,
                    u8::try_from(d).ok()?,
                )
                .ok(),
                _ => None,
            });
        let Some(date) = date else { continue };
        let age = (today - date).whole_days();
        if retention_days > 0 && age > i64::from(retention_days) {
            match std::fs::remove_dir_all(&day) {
                Ok(()) => info!(dir = %day.display(), "recordings past retention deleted"),
                Err(e) => {
                    warn!(dir = %day.display(), error = %e, "recordings past retention not deleted")
                }
            }
            continue;
        }
        if !repair || age > 2 {
            continue;
        }
        for f in std::fs::read_dir(&day).into_iter().flatten().flatten() {
            let path = f.path();
            if path.extension().is_some_and(|e| e == "wav") {
                match recorder::repair(&path) {
                    Ok(true) => {
                        warn!(file = %path.display(), "recording cut short by a crash repaired")
                    }
                    Ok(false) => {}
                    Err(e) => warn!(file = %path.display(), error = %e, "recording not checked"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_become_safe_file_names() {
        assert_eq!(file_name("abc@192.0.2.1"), "abc@192.0.2.1");
        assert_eq!(file_name("../../etc/passwd"), "_.._.._etc_passwd");
        assert_eq!(file_name(""), "_");
    }

    fn sdp(port: u16) -> Vec<u8> {
        format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        )
        .into_bytes()
    }

    fn rtp(seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend_from_slice(&[0xff; 160]);
        p
    }

    /// A burst far larger than one turn's reads (`session::DRAIN`) queued
    /// on a socket all comes out the other side, in order, with no later
    /// packet to wake the relay again; then the call's ports come back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_burst_queued_on_a_socket_is_relayed_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = MediaConfig {
            port_min: 41_200,
            port_max: 41_300,
            threads: 1,
            ..MediaConfig::default()
        };
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let (events, _events_rx) = mpsc::unbounded_channel();
        let (mut media, _timeouts) = Media::new(&cfg, lo, lo, dir.path(), events).unwrap();
        let caller = std::net::UdpSocket::bind((lo, 0)).unwrap();
        let phone = std::net::UdpSocket::bind((lo, 0)).unwrap();
        phone
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket2::SockRef::from(&phone)
            .set_recv_buffer_size(1 << 20)
            .unwrap();
        let to_phones = media
            .offer(7, &sdp(caller.local_addr().unwrap().port()))
            .unwrap();
        let info = Answered {
            conversation: "burst".into(),
            contact: Contact {
                key: "tel:+74950000001".into(),
                phone: Some("+74950000001".into()),
                email: None,
                user_id: None,
                name: None,
            },
            manager: None,
            direction: "inbound",
            customer_is_a: true,
            record: Some(false),
        };
        let to_caller = media
            .answer(7, &sdp(phone.local_addr().unwrap().port()), &info)
            .unwrap();
        let a_port = sdp::parse(&to_caller).unwrap().rtp_port;
        assert_ne!(a_port, sdp::parse(&to_phones).unwrap().rtp_port);
        // Both commands reach the relay's thread before the burst.
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Under what the relay's socket holds (the system's default
        // receive buffer), over what one turn reads.
        let n: u16 = 120;
        for seq in 0..n {
            caller.send_to(&rtp(seq), (lo, a_port)).unwrap();
        }
        let mut buf = [0u8; 512];
        for seq in 0..n {
            let (len, _) = phone
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("packet {seq} of {n}: {e}"));
            assert_eq!(&buf[..len], &rtp(seq)[..], "packet {seq}");
        }
        media.end(7).unwrap();
        media.commit();
        // The thread closes the sockets, then gives the ports back.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::UdpSocket::bind((lo, a_port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "port {a_port} still held"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn ports_come_in_pairs_and_come_back() {
        let mut pool = PortPool::new(41_000, 41_010);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let (rtp, rtcp, port) = pool.take(ip).unwrap();
        assert_eq!(port % 2, 0);
        assert_eq!(rtp.local_addr().unwrap().port(), port);
        assert_eq!(rtcp.local_addr().unwrap().port(), port + 1);
        // A port someone else holds is skipped.
        let (_r2, _c2, second) = pool.take(ip).unwrap();
        assert_ne!(second, port);
        drop((rtp, rtcp));
        pool.give(port);
        assert!(pool.free.contains(&port));
    }
}
