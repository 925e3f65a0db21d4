//! The back-to-back user agent: a call from a trunk or a manager's phone
//! (the A leg) rings every registered contact of the chosen candidate at
//! once (B legs); the first to answer is bridged, the others are
//! cancelled; no answer within the ring timeout, or busy everywhere, moves
//! to the next candidate. CANCEL, BYE from either side, re-INVITE/UPDATE
//! relayed across, 3xx followed, Max-Forwards and loops checked. Every call
//! ends in events: `call.ringing`, `call.answered`, `call.ended`,
//! `call.missed`.
//!
//! Pure state: the caller passes messages and the time in, gets messages to
//! send and events out. With a media [`Anchor`] every SDP is rewritten so
//! audio flows through the relay (488 when the sides share no codec);
//! without one SDP passes through untouched.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use serde_json::{Value, json};
use switchboard_sip::message::{Message, canonical_name, param_value, reason_phrase, split_list};
use switchboard_sip::transaction::{Action, ClientTx, Kind as TxKind, ServerTx, Timers};
use switchboard_sip::{NameAddr, Text, Uri};
use switchboard_storage::{Contact, Kind};

use super::location::Transport;
use crate::media::{Anchor, Answered, MediaError};

/// Something to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    pub to: SocketAddr,
    pub bytes: Bytes,
}

/// A call event for the feed.
#[derive(Debug, Clone, PartialEq)]
pub struct CallEvent {
    pub kind: Kind,
    pub contact: Contact,
    pub manager: Option<String>,
    /// The caller's Call-ID: one conversation per call.
    pub conversation: String,
    pub payload: Value,
}

/// Who a call may ring next: one manager's (or extension's) contacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub manager: Option<String>,
    pub extension: Option<String>,
    pub targets: Vec<Target>,
    /// Whether this manager's calls are recorded; `None`: the call's.
    pub record: Option<bool>,
}

/// One phone to ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The Request-URI: the phone's registered Contact.
    pub uri: String,
    /// Where to send the INVITE: the first Path hop, else the phone.
    pub addr: SocketAddr,
    /// Route headers: the binding's Path (RFC 3327), in order.
    pub route: Vec<String>,
    /// UDP, or the TCP/TLS connection `addr` names (no retransmissions).
    pub transport: Transport,
}

impl Target {
    pub fn direct(uri: String, addr: SocketAddr) -> Self {
        Target {
            uri,
            addr,
            route: Vec::new(),
            transport: Transport::Udp,
        }
    }
}

/// What the caller knows about a new call.
#[derive(Debug, Clone)]
pub struct NewCall {
    /// `inbound` (from a trunk), `internal` (extension to extension),
    /// `outbound` (a manager to an external number).
    pub direction: &'static str,
    pub trunk: Option<String>,
    /// The customer: the caller for inbound calls, the callee for outbound.
    pub contact: Contact,
    /// The number or extension dialled.
    pub dialled: String,
    /// The extension that placed it (internal and outbound calls).
    pub from_extension: Option<String>,
    pub candidates: Vec<Candidate>,
    /// The trunk's (or placing extension's) recording setting.
    pub record: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ForkState {
    Trying,
    Ringing,
    Failed(u16),
    Answered,
    Cancelled,
}

#[derive(Debug)]
struct Fork {
    uri: String,
    addr: SocketAddr,
    branch: String,
    call_id: String,
    from_tag: String,
    invite: Bytes,
    tx: ClientTx,
    state: ForkState,
    redirects: u8,
    transport: Transport,
}

/// One side of an established call, from our point of view.
#[derive(Debug, Clone)]
struct Leg {
    call_id: String,
    /// Our From/To value for requests we send on this leg (with our tag).
    local: String,
    /// Theirs (with their tag).
    remote: String,
    target: String,
    addr: SocketAddr,
    cseq: u32,
    /// The dialog's route set (RFC 3261 §12.1): Route headers of every
    /// request we send on this leg.
    route: Vec<String>,
    transport: Transport,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Setup,
    Answered,
    Ended,
}

#[derive(Debug)]
struct Call {
    invite: Message,
    src: SocketAddr,
    /// How the caller came.
    transport: Transport,
    a_tx: ServerTx,
    a_branch: String,
    a_tag: String,
    info: NewCall,
    queue: VecDeque<Candidate>,
    current: Option<Candidate>,
    forks: Vec<Fork>,
    ring_deadline: Option<u64>,
    phase: Phase,
    busy_seen: bool,
    ringing_reported: bool,
    started_ms: u64,
    answered_ms: Option<u64>,
    a_leg: Option<Leg>,
    b_leg: Option<Leg>,
    manager: Option<String>,
    extension: Option<String>,
    /// The earliest deadline this call is queued under in `Calls::due`.
    scheduled: Option<u64>,
    /// Relayed requests still in flight for this call.
    relays: u32,
    /// The offer the phones get, when the relay anchors the call's media.
    b_offer: Option<Bytes>,
    /// Some phone was rung (a candidate had a registered contact).
    rang: bool,
}

/// A request relayed from one leg to the other (BYE, re-INVITE, UPDATE).
#[derive(Debug)]
struct Relay {
    call: u64,
    tx: ClientTx,
    /// The request as it arrived, and from where: the answer goes back.
    original: Option<(Message, SocketAddr)>,
    to: SocketAddr,
    method: String,
    /// The request came from the A leg (its answer's SDP is B's).
    from_a: bool,
    /// The deadline this relay is queued under in `Calls::relay_due`.
    scheduled: Option<u64>,
}

impl Call {
    /// Ended, and nothing left for its transactions to do (the caller's
    /// at most waits out its final timer).
    fn finished(&self, now: u64, t1: u64) -> bool {
        self.phase == Phase::Ended
            && self.a_tx.next_timer().is_none_or(|t| t > now + 64 * t1)
            && self.forks.iter().all(|f| f.tx.next_timer().is_none())
            && self.relays == 0
    }
}

/// Every call in progress.
#[derive(Debug)]
pub struct Calls {
    local: SocketAddr,
    host: String,
    ring_timeout_ms: u64,
    timers: Timers,
    next_id: u64,
    salt: u64,
    calls: HashMap<u64, Call>,
    /// A leg: (Call-ID, From tag).
    by_a: HashMap<(String, String), u64>,
    /// B legs and relays: our branch → call.
    by_branch: HashMap<String, (u64, usize)>,
    /// B leg Call-ID → call.
    by_b_call: HashMap<String, u64>,
    relays: HashMap<String, Relay>,
    /// Calls by their next timer, earliest first. Entries that no longer
    /// match the call's `scheduled` are stale and skipped: a tick visits
    /// only calls with something due, however many calls linger.
    due: DueQueue<u64>,
    relay_due: DueQueue<String>,
    /// Calls in the `Ended` phase, waiting for their transactions.
    ended: usize,
    /// B-leg transactions of all calls.
    forks: usize,
    media: Option<Box<dyn Anchor>>,
}

/// Keys queued by deadline, earliest first. A key may be queued more than
/// once; callers skip entries that no longer match what they scheduled.
#[derive(Debug)]
struct DueQueue<K>(BinaryHeap<Reverse<(u64, K)>>);

impl<K: Ord> Default for DueQueue<K> {
    fn default() -> Self {
        DueQueue(BinaryHeap::new())
    }
}

impl<K: Ord> DueQueue<K> {
    fn push(&mut self, at: u64, key: K) {
        self.0.push(Reverse((at, key)));
    }

    /// The earliest entry due at `now`, taken off the queue.
    fn pop_due(&mut self, now: u64) -> Option<(u64, K)> {
        if self.0.peek().is_some_and(|Reverse((at, _))| *at <= now) {
            self.0.pop().map(|Reverse(entry)| entry)
        } else {
            None
        }
    }
}

/// Our branch prefix: a Via with it and our address is a loop.
const BRANCH_PREFIX: &str = "z9hG4bKsb";

fn tag_of(value: &str) -> Option<String> {
    param_value(value, "tag").map(str::to_owned)
}

impl Calls {
    pub fn new(local: SocketAddr, host: String, ring_timeout_ms: u64, salt: u64) -> Self {
        Calls {
            local,
            host,
            ring_timeout_ms,
            timers: Timers::default(),
            next_id: 1,
            salt,
            calls: HashMap::new(),
            by_a: HashMap::new(),
            by_branch: HashMap::new(),
            by_b_call: HashMap::new(),
            relays: HashMap::new(),
            due: DueQueue::default(),
            relay_due: DueQueue::default(),
            ended: 0,
            forks: 0,
            media: None,
        }
    }

    /// Anchors every call's media in `media` (SDP rewritten, audio relayed).
    pub fn with_media(mut self, media: Box<dyn Anchor>) -> Self {
        self.media = Some(media);
        self
    }

    /// Lets the media relay act on the calls that ended; call after their
    /// events are queued.
    pub fn commit_media(&mut self) {
        if let Some(media) = self.media.as_mut() {
            media.commit();
        }
    }

    /// Rewrites SDP crossing an answered call; passes it through when the
    /// call has no media session or the SDP cannot be read.
    fn media_update(&mut self, id: u64, from_a: bool, body: &Bytes) -> Bytes {
        let Some(media) = self.media.as_mut().filter(|_| !body.is_empty()) else {
            return body.clone();
        };
        match media.update(id, from_a, body) {
            Ok(sdp) => Bytes::from(sdp),
            Err(MediaError::NoSession) => body.clone(),
            Err(e) => {
                tracing::warn!(call = id, error = %e, "SDP in a call passed through unchanged");
                body.clone()
            }
        }
    }

    pub fn active(&self) -> usize {
        self.calls.len() - self.ended
    }

    pub fn transactions(&self) -> usize {
        self.calls.len() + self.forks + self.relays.len()
    }

    /// Queues the call under its next deadline (a transaction timer or the
    /// ring timeout), or under `now` when it has ended and may be forgotten.
    fn schedule(&mut self, id: u64, now: u64) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let next = if call.finished(now, self.timers.t1) {
            Some(now)
        } else {
            let ring = call.ring_deadline.filter(|_| call.phase == Phase::Setup);
            call.forks
                .iter()
                .filter_map(|f| f.tx.next_timer())
                .chain(call.a_tx.next_timer())
                .chain(ring)
                .min()
        };
        if let Some(at) = next
            && call.scheduled.is_none_or(|s| at < s)
        {
            call.scheduled = Some(at);
            self.due.push(at, id);
        }
    }

    fn schedule_relay(&mut self, branch: &str) {
        let Some(relay) = self.relays.get_mut(branch) else {
            return;
        };
        if let Some(at) = relay.tx.next_timer()
            && relay.scheduled.is_none_or(|s| at < s)
        {
            relay.scheduled = Some(at);
            self.relay_due.push(at, branch.to_owned());
        }
    }

    fn unique(&mut self, what: &str) -> String {
        self.next_id += 1;
        format!("{what}{:x}{:x}", self.salt, self.next_id)
    }

    fn via(&self, branch: &str, transport: Transport) -> String {
        format!(
            "SIP/2.0/{} {}:{};branch={branch};rport",
            transport.as_str(),
            self.host,
            self.local.port()
        )
    }

    fn contact(&self) -> String {
        format!("<sip:switchboard@{}:{}>", self.host, self.local.port())
    }

    /// Whether a request already passed through us (our branch on a Via
    /// with our address): a loop.
    pub fn is_loop(&self, req: &Message) -> bool {
        let port = self.local.port();
        req.header_values("via").any(|v| {
            switchboard_sip::Via::parse(v).is_ok_and(|via| {
                via.branch
                    .as_deref()
                    .is_some_and(|b| b.starts_with(BRANCH_PREFIX))
                    && via.host == self.host
                    && via.port.unwrap_or(5060) == port
            })
        })
    }

    /// The A leg's response with our tag, Contact and body.
    fn a_response(contact: &str, call: &Call, code: u16, body: Option<(&str, &Bytes)>) -> Bytes {
        let mut r = call
            .invite
            .response(code, reason_phrase(code), Some(&call.a_tag));
        stamp_rport(&mut r, call.src);
        if (101..300).contains(&code) {
            r.push_header("contact", contact.to_owned());
        }
        if let Some((ct, body)) = body {
            r.push_header("content-type", ct.to_owned());
            r.body = body.clone();
        }
        Bytes::from(r.to_bytes())
    }

    /// A new call: answers 100 Trying and rings the first candidate.
    pub fn start(
        &mut self,
        req: Message,
        src: SocketAddr,
        transport: Transport,
        info: NewCall,
        a_tag: String,
        now: u64,
    ) -> (Vec<Send>, Vec<CallEvent>) {
        let key = (
            req.call_id().unwrap_or("").to_owned(),
            req.header("from").and_then(tag_of).unwrap_or_default(),
        );
        if self.by_a.contains_key(&key) {
            // A retransmission that overtook the original while it was
            // being planned: one call, answered as a retransmission.
            return (
                self.on_invite_retransmission(&req).unwrap_or_default(),
                Vec::new(),
            );
        }
        let id = self.next_id;
        self.next_id += 1;
        let a_branch = req.via().and_then(|v| v.branch).unwrap_or_default();
        let mut call = Call {
            src,
            a_tx: ServerTx::new(TxKind::Invite, transport.reliable(), self.timers),
            transport,
            a_branch,
            a_tag,
            queue: info.candidates.clone().into(),
            info,
            invite: req,
            current: None,
            forks: Vec::new(),
            ring_deadline: None,
            phase: Phase::Setup,
            busy_seen: false,
            ringing_reported: false,
            started_ms: now,
            answered_ms: None,
            a_leg: None,
            b_leg: None,
            manager: None,
            extension: None,
            scheduled: None,
            relays: 0,
            b_offer: None,
            rang: false,
        };
        let trying = Self::a_response(&self.contact(), &call, 100, None);
        let mut out = Vec::new();
        for a in call.a_tx.respond(100, trying, now) {
            if let Action::Send(b) = a {
                out.push(Send { to: src, bytes: b });
            }
        }
        self.by_a.insert(key, id);
        let offer = call.invite.body.clone();
        let sdp = !offer.is_empty()
            && call
                .invite
                .header("content-type")
                .is_none_or(|t| t.trim_ascii().eq_ignore_ascii_case("application/sdp"));
        self.calls.insert(id, call);
        let mut events = Vec::new();
        if sdp && let Some(media) = self.media.as_mut() {
            match media.offer(id, &offer) {
                Ok(sdp) => {
                    if let Some(call) = self.calls.get_mut(&id) {
                        call.b_offer = Some(Bytes::from(sdp));
                    }
                }
                Err(e) => {
                    let (code, why) = match e {
                        MediaError::NoPorts | MediaError::NoSession => (503, "media_unavailable"),
                        MediaError::Sdp(_) => (488, "incompatible_media"),
                    };
                    tracing::debug!(call = id, error = %e, "call refused");
                    self.fail(id, code, why, now, &mut out, &mut events);
                    self.schedule(id, now);
                    return (out, events);
                }
            }
        }
        self.ring_next(id, now, &mut out, &mut events);
        self.schedule(id, now);
        (out, events)
    }

    /// Rings the next candidate, or ends the call as missed.
    fn ring_next(&mut self, id: u64, now: u64, out: &mut Vec<Send>, events: &mut Vec<CallEvent>) {
        loop {
            let Some(call) = self.calls.get_mut(&id) else {
                return;
            };
            let Some(cand) = call.queue.pop_front() else {
                let code = if call.busy_seen {
                    486
                } else if call.current.is_none() {
                    404
                } else {
                    480
                };
                // A manager with no registered phone is not there to
                // answer: that is nobody available, not a missed ring.
                let why = if call.busy_seen {
                    "busy"
                } else if !call.rang {
                    "no_one_available"
                } else {
                    "no_answer"
                };
                self.fail(id, code, why, now, out, events);
                return;
            };
            if cand.targets.is_empty() {
                call.current = Some(cand);
                continue;
            }
            call.current = Some(cand.clone());
            call.rang = true;
            call.ring_deadline = Some(now + self.ring_timeout_ms);
            for target in cand.targets {
                self.add_fork(id, target, 0, now, out);
            }
            return;
        }
    }

    fn add_fork(&mut self, id: u64, target: Target, redirects: u8, now: u64, out: &mut Vec<Send>) {
        let Target {
            uri,
            addr,
            route,
            transport,
        } = target;
        let branch = format!("{BRANCH_PREFIX}{}", self.unique("b"));
        let call_id = self.unique("sbcall-");
        let from_tag = self.unique("t");
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let inv = &call.invite;
        let max_forwards = inv
            .header("max-forwards")
            .and_then(|m| m.parse::<u32>().ok())
            .unwrap_or(70)
            .saturating_sub(1);
        let caller = NameAddr::parse(inv.header("from").unwrap_or(""), false).ok();
        let display = caller.as_ref().and_then(|c| c.display.clone());
        let caller_user = caller
            .as_ref()
            .and_then(|c| c.uri.user.clone())
            .unwrap_or_else(|| "anonymous".into());
        let mut text = format!(
            "INVITE {uri} SIP/2.0\r\nVia: {}\r\nMax-Forwards: {max_forwards}\r\nFrom: {}<sip:{caller_user}@{}>;tag={from_tag}\r\n\
To: <{uri}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: {}\r\nAllow: {}\r\n",
            self.via(&branch, transport),
            display.map(|d| format!("\"{d}\" ")).unwrap_or_default(),
            self.host,
            self.contact(),
            switchboard_sip::ALLOWED_METHODS,
        );
        for hop in &route {
            text.push_str(&format!("Route: {hop}\r\n"));
        }
        let body = call.b_offer.as_ref().unwrap_or(&inv.body);
        if !body.is_empty() {
            text.push_str(&format!(
                "Content-Type: {}\r\n",
                inv.header("content-type").unwrap_or("application/sdp")
            ));
        }
        text.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(body);
        let invite = Bytes::from(bytes);
        out.push(Send {
            to: addr,
            bytes: invite.clone(),
        });
        let fork = Fork {
            uri,
            addr,
            branch: branch.clone(),
            call_id: call_id.clone(),
            from_tag,
            tx: ClientTx::new(
                TxKind::Invite,
                invite.clone(),
                transport.reliable(),
                self.timers,
                now,
            ),
            invite,
            state: ForkState::Trying,
            redirects,
            transport,
        };
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.forks.push(fork);
        self.forks += 1;
        let ix = call.forks.len() - 1;
        self.by_branch.insert(branch, (id, ix));
        self.by_b_call.insert(call_id, id);
    }

    /// The INVITE came again (same branch): resend what the A leg last got.
    pub fn on_invite_retransmission(&mut self, req: &Message) -> Option<Vec<Send>> {
        let id = self.a_call(req)?;
        let call = self.calls.get_mut(&id)?;
        if req.via().and_then(|v| v.branch).as_deref() != Some(call.a_branch.as_str()) {
            return None;
        }
        let src = call.src;
        Some(
            call.a_tx
                .on_retransmission()
                .into_iter()
                .filter_map(|a| match a {
                    Action::Send(b) => Some(Send { to: src, bytes: b }),
                    _ => None,
                })
                .collect(),
        )
    }

    fn a_call(&self, req: &Message) -> Option<u64> {
        let key = (
            req.call_id()?.to_owned(),
            req.header("from").and_then(tag_of)?,
        );
        self.by_a.get(&key).copied()
    }

    /// An ACK from the caller.
    pub fn on_ack(&mut self, req: &Message, now: u64) -> bool {
        let Some(id) = self.a_call(req) else {
            return false;
        };
        if let Some(call) = self.calls.get_mut(&id) {
            call.a_tx.on_ack(now);
        }
        self.schedule(id, now);
        true
    }

    /// CANCEL from the caller: 200 to it, 487 to the INVITE, CANCEL to
    /// every fork; `None` when it matches no call.
    pub fn on_cancel(
        &mut self,
        req: &Message,
        src: SocketAddr,
        now: u64,
    ) -> Option<(Vec<Send>, Vec<CallEvent>)> {
        let id = self.a_call(req)?;
        let branch = req.via().and_then(|v| v.branch)?;
        let call = self.calls.get(&id)?;
        if branch != call.a_branch {
            return None;
        }
        let mut ok = req.response(200, "OK", Some(&call.a_tag));
        stamp_rport(&mut ok, src);
        let mut out = vec![Send {
            to: src,
            bytes: Bytes::from(ok.to_bytes()),
        }];
        let mut events = Vec::new();
        if call.phase == Phase::Setup {
            self.fail(id, 487, "abandoned", now, &mut out, &mut events);
        }
        self.schedule(id, now);
        Some((out, events))
    }

    /// Ends a call that never got answered: the final answer to the
    /// caller, CANCEL to ringing forks, `call.missed`.
    fn fail(
        &mut self,
        id: u64,
        code: u16,
        why: &str,
        now: u64,
        out: &mut Vec<Send>,
        events: &mut Vec<CallEvent>,
    ) {
        self.cancel_forks(id, None, out);
        if let Some(media) = self.media.as_mut() {
            media.end(id);
        }
        let contact = self.contact();
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let resp = Self::a_response(&contact, call, code, None);
        let src = call.src;
        let call = self.calls.get_mut(&id).unwrap_or_else(|| unreachable!());
        for a in call.a_tx.respond(code, resp, now) {
            if let Action::Send(b) = a {
                out.push(Send { to: src, bytes: b });
            }
        }
        call.phase = Phase::Ended;
        self.ended += 1;
        call.ring_deadline = None;
        let payload = json!({
            "reason": why,
            "status": code,
            "ring_ms": now.saturating_sub(call.started_ms),
        });
        events.push(event(call, Kind::CallMissed, payload));
    }

    fn cancel_forks(&mut self, id: u64, except: Option<usize>, out: &mut Vec<Send>) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        for (i, f) in call.forks.iter_mut().enumerate() {
            if Some(i) == except || !matches!(f.state, ForkState::Trying | ForkState::Ringing) {
                continue;
            }
            // CANCEL only after a provisional response (RFC 3261 §9.1);
            // a fork still Trying is cancelled when its 1xx arrives.
            f.state = ForkState::Cancelled;
            if f.tx.state() == switchboard_sip::transaction::ClientState::Proceeding {
                out.push(Send {
                    to: f.addr,
                    bytes: cancel_for(&f.invite),
                });
            }
        }
    }

    /// A response from a B leg or a relayed request's far end.
    pub fn on_response(&mut self, resp: &Message, now: u64) -> Option<(Vec<Send>, Vec<CallEvent>)> {
        let branch = resp.via().and_then(|v| v.branch)?;
        let result = self.response(resp, &branch, now);
        if let Some(&(id, _)) = self.by_branch.get(&branch) {
            self.schedule(id, now);
        } else {
            self.schedule_relay(&branch);
        }
        result
    }

    fn response(
        &mut self,
        resp: &Message,
        branch: &str,
        now: u64,
    ) -> Option<(Vec<Send>, Vec<CallEvent>)> {
        let code = resp.status()?;
        let (_, method) = resp.cseq()?;
        if method == "CANCEL" {
            return Some((Vec::new(), Vec::new()));
        }
        if let Some(relay) = self.relays.get_mut(branch) {
            let actions = relay.tx.on_response(code, now, Bytes::new);
            let mut out = Vec::new();
            if actions.contains(&Action::Response(code)) {
                out.extend(self.finish_relay(branch, resp));
            }
            return Some((out, Vec::new()));
        }
        let (id, ix) = *self.by_branch.get(branch)?;
        let mut out = Vec::new();
        let mut events = Vec::new();
        let call = self.calls.get_mut(&id)?;
        let fork = call.forks.get_mut(ix)?;
        let to_value = resp.header("to").unwrap_or("").to_owned();
        let ack_target = fork.uri.clone();
        let invite_bytes = fork.invite.clone();
        let actions = fork.tx.on_response(code, now, || {
            ack_for_failure(&invite_bytes, &ack_target, &to_value)
        });
        let addr = fork.addr;
        for a in actions {
            match a {
                Action::Send(b) => out.push(Send { to: addr, bytes: b }),
                Action::Response(c) => {
                    self.fork_response(id, ix, c, resp, now, &mut out, &mut events)
                }
                _ => {}
            }
        }
        Some((out, events))
    }

    #[allow(clippy::too_many_arguments)]
    fn fork_response(
        &mut self,
        id: u64,
        ix: usize,
        code: u16,
        resp: &Message,
        now: u64,
        out: &mut Vec<Send>,
        events: &mut Vec<CallEvent>,
    ) {
        let contact = self.contact();
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let fork_state = call.forks[ix].state;
        if code < 200 {
            if fork_state == ForkState::Cancelled {
                // Cancelled before it rang: cancel it now that we may.
                out.push(Send {
                    to: call.forks[ix].addr,
                    bytes: cancel_for(&call.forks[ix].invite),
                });
                return;
            }
            if code == 100 {
                return;
            }
            call.forks[ix].state = ForkState::Ringing;
            if call.phase == Phase::Setup && !call.ringing_reported {
                call.ringing_reported = true;
                let ringing = Self::a_response(&contact, call, 180, None);
                let src = call.src;
                for a in call.a_tx.respond(180, ringing, now) {
                    if let Action::Send(b) = a {
                        out.push(Send { to: src, bytes: b });
                    }
                }
                let cand = call.current.clone();
                let payload = json!({
                    "extension": cand.as_ref().and_then(|c| c.extension.clone()),
                });
                let mut ev = event(call, Kind::CallRinging, payload);
                ev.manager = cand.and_then(|c| c.manager);
                events.push(ev);
            }
            return;
        }
        if code < 300 {
            self.fork_answered(id, ix, resp, now, out, events);
            return;
        }
        let call = self.calls.get_mut(&id).unwrap_or_else(|| unreachable!());
        if (300..400).contains(&code)
            && fork_state != ForkState::Cancelled
            && call.forks[ix].redirects < 3
        {
            // Follow the redirect's contacts (RFC 3261 §8.1.3.4).
            call.forks[ix].state = ForkState::Failed(code);
            let redirects = call.forks[ix].redirects + 1;
            let targets: Vec<Target> = resp
                .header_values("contact")
                .filter_map(|c| NameAddr::parse(c, true).ok())
                .filter_map(|c| target_addr(&c.uri).map(|a| Target::direct(c.uri_text.clone(), a)))
                .collect();
            for target in targets {
                self.add_fork(id, target, redirects, now, out);
            }
            self.after_fork_failure(id, now, out, events);
            return;
        }
        if matches!(code, 486 | 600) {
            call.busy_seen = true;
        }
        if fork_state != ForkState::Cancelled {
            call.forks[ix].state = ForkState::Failed(code);
        }
        self.after_fork_failure(id, now, out, events);
    }

    fn after_fork_failure(
        &mut self,
        id: u64,
        now: u64,
        out: &mut Vec<Send>,
        events: &mut Vec<CallEvent>,
    ) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        if call.phase != Phase::Setup {
            return;
        }
        let pending = call
            .forks
            .iter()
            .any(|f| matches!(f.state, ForkState::Trying | ForkState::Ringing));
        if !pending {
            self.ring_next(id, now, out, events);
        }
    }

    fn fork_answered(
        &mut self,
        id: u64,
        ix: usize,
        resp: &Message,
        now: u64,
        out: &mut Vec<Send>,
        events: &mut Vec<CallEvent>,
    ) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let fork = &call.forks[ix];
        let remote_target = resp
            .header("contact")
            .and_then(|c| NameAddr::parse(c, true).ok())
            .map_or_else(|| fork.uri.clone(), |c| c.uri_text);
        let remote = resp.header("to").unwrap_or("").to_owned();
        let local = format!(
            "<sip:{}@{}>;tag={}",
            "switchboard", self.host, fork.from_tag
        );
        let b_leg = Leg {
            call_id: fork.call_id.clone(),
            local: local.clone(),
            remote: remote.clone(),
            target: remote_target.clone(),
            addr: fork.addr,
            cseq: 1,
            // The route set from the 2xx's Record-Route, reversed (§12.1.2).
            route: {
                let mut rr = record_route(resp);
                rr.reverse();
                rr
            },
            transport: fork.transport,
        };
        // ACK the 2xx ourselves (it is end to end, not the transaction's).
        let ack_branch = format!("{BRANCH_PREFIX}{}", self.unique("a"));
        let ack = in_dialog(
            &self.via(&ack_branch, b_leg.transport),
            &b_leg,
            "ACK",
            1,
            None,
        );
        let call = self.calls.get_mut(&id).unwrap_or_else(|| unreachable!());
        out.push(Send {
            to: b_leg.addr,
            bytes: ack,
        });
        if call.forks[ix].state == ForkState::Answered {
            // The 2xx again: our ACK was lost; the ACK above answers it.
            return;
        }
        if call.phase != Phase::Setup || call.forks[ix].state == ForkState::Cancelled {
            // Another fork won (or the caller gave up): hang this one up.
            let mut leg = b_leg;
            leg.cseq = 2;
            let bye_branch = format!("{BRANCH_PREFIX}{}", self.unique("y"));
            let bye = in_dialog(&self.via(&bye_branch, leg.transport), &leg, "BYE", 2, None);
            out.push(Send {
                to: leg.addr,
                bytes: bye,
            });
            return;
        }
        call.forks[ix].state = ForkState::Answered;
        call.phase = Phase::Answered;
        call.answered_ms = Some(now);
        call.ring_deadline = None;
        call.manager = call.current.as_ref().and_then(|c| c.manager.clone());
        call.extension = call.current.as_ref().and_then(|c| c.extension.clone());
        call.b_leg = Some(b_leg);
        let a_remote = call.invite.header("from").unwrap_or("").to_owned();
        let a_local = format!(
            "{};tag={}",
            call.invite.header("to").unwrap_or(""),
            call.a_tag
        );
        let a_target = call
            .invite
            .header("contact")
            .and_then(|c| NameAddr::parse(c, true).ok())
            .map_or_else(|| format!("sip:{}", call.src), |c| c.uri_text);
        call.a_leg = Some(Leg {
            call_id: call.invite.call_id().unwrap_or("").to_owned(),
            local: a_local,
            remote: a_remote,
            target: a_target,
            addr: call.src,
            cseq: 1,
            // The route set from the INVITE's Record-Route, in order (§12.1.1).
            route: record_route(&call.invite),
            transport: call.transport,
        });
        self.cancel_forks(id, Some(ix), out);
        let contact = self.contact();
        let call = self.calls.get(&id).unwrap_or_else(|| unreachable!());
        let ct = resp
            .header("content-type")
            .unwrap_or("application/sdp")
            .to_owned();
        let mut body = resp.body.clone();
        if call.b_offer.is_some()
            && let Some(media) = self.media.as_mut()
        {
            let info = Answered {
                conversation: call.invite.call_id().unwrap_or("").to_owned(),
                contact: call.info.contact.clone(),
                manager: call.manager.clone(),
                direction: call.info.direction,
                customer_is_a: call.info.direction != "outbound",
                record: call
                    .current
                    .as_ref()
                    .and_then(|c| c.record)
                    .or(call.info.record),
            };
            match media.answer(id, &resp.body, &info) {
                Ok(sdp) => body = Bytes::from(sdp),
                Err(e) => {
                    // Audio then flows phone to phone, unrecorded.
                    tracing::warn!(call = id, error = %e, "answer's SDP passed through unchanged");
                }
            }
        }
        let ok = Self::a_response(
            &contact,
            call,
            200,
            (!body.is_empty()).then_some((ct.as_str(), &body)),
        );
        let call = self.calls.get_mut(&id).unwrap_or_else(|| unreachable!());
        let src = call.src;
        for a in call.a_tx.respond(200, ok.clone(), now) {
            if let Action::Send(b) = a {
                out.push(Send { to: src, bytes: b });
            }
        }
        if !call.ringing_reported {
            // Answered without a 180 (or its 180 came after the 200): the
            // phone rang all the same, and every answered call says so.
            call.ringing_reported = true;
            let payload = json!({ "extension": call.extension });
            events.push(event(call, Kind::CallRinging, payload));
        }
        let payload = json!({
            "extension": call.extension,
            "ring_ms": now.saturating_sub(call.started_ms),
        });
        events.push(event(call, Kind::CallAnswered, payload));
    }

    /// A request inside an established call (BYE, re-INVITE, UPDATE,
    /// INFO): answered or relayed to the other leg. `None`: no such dialog.
    pub fn on_in_dialog(
        &mut self,
        req: &Message,
        src: SocketAddr,
        now: u64,
    ) -> Option<(Vec<Send>, Vec<CallEvent>)> {
        let (id, from_a) = match self.a_call(req) {
            Some(id) => (id, true),
            None => (*self.by_b_call.get(req.call_id()?)?, false),
        };
        let result = self.in_dialog(id, from_a, req, src, now);
        self.schedule(id, now);
        result
    }

    /// Ends an answered call from our side (its media stopped): BYE to
    /// both legs, `call.ended` with `cause`, hung up by the system.
    pub fn hang_up(&mut self, id: u64, cause: &str, now: u64) -> (Vec<Send>, Vec<CallEvent>) {
        let mut out = Vec::new();
        let mut events = Vec::new();
        if self
            .calls
            .get(&id)
            .is_none_or(|c| c.phase != Phase::Answered)
        {
            return (out, events);
        }
        let summary = self.media.as_mut().and_then(|m| m.end(id));
        let Some(call) = self.calls.get_mut(&id) else {
            return (out, events);
        };
        call.phase = Phase::Ended;
        self.ended += 1;
        let duration_ms = now.saturating_sub(call.answered_ms.unwrap_or(now));
        let mut payload = json!({
            "duration_s": (duration_ms as f64 / 1000.0),
            "cause": cause,
            "hung_up_by": "system",
            "extension": call.extension,
        });
        add_summary(&mut payload, summary);
        events.push(event(call, Kind::CallEnded, payload));
        let legs = [(call.a_leg.clone(), false), (call.b_leg.clone(), true)];
        for (leg, from_a) in legs {
            if let Some(leg) = leg {
                self.relay(id, None, leg, "BYE", None, from_a, now, &mut out);
            }
        }
        self.schedule(id, now);
        (out, events)
    }

    fn in_dialog(
        &mut self,
        id: u64,
        from_a: bool,
        req: &Message,
        src: SocketAddr,
        now: u64,
    ) -> Option<(Vec<Send>, Vec<CallEvent>)> {
        let method = req.method()?.to_owned();
        let call = self.calls.get_mut(&id)?;
        if call.phase != Phase::Answered {
            return None;
        }
        let mut out = Vec::new();
        let mut events = Vec::new();
        let own_tag = if from_a {
            call.a_tag.clone()
        } else {
            tag_of(&call.b_leg.as_ref()?.local).unwrap_or_default()
        };
        if method == "BYE" {
            let mut ok = req.response(200, "OK", Some(&own_tag));
            stamp_rport(&mut ok, src);
            out.push(Send {
                to: src,
                bytes: Bytes::from(ok.to_bytes()),
            });
            call.phase = Phase::Ended;
            self.ended += 1;
            let summary = self.media.as_mut().and_then(|m| m.end(id));
            let call = self.calls.get_mut(&id)?;
            let duration_ms = now.saturating_sub(call.answered_ms.unwrap_or(now));
            let hung_up = match (from_a, call.info.direction) {
                (true, "inbound") | (false, "outbound") => "customer",
                (false, "inbound") | (true, "outbound") => "manager",
                (true, _) => "caller",
                (false, _) => "callee",
            };
            let mut payload = json!({
                "duration_s": (duration_ms as f64 / 1000.0),
                "cause": "normal",
                "hung_up_by": hung_up,
                "extension": call.extension,
            });
            add_summary(&mut payload, summary);
            events.push(event(call, Kind::CallEnded, payload));
            let other = if from_a {
                call.b_leg.clone()
            } else {
                call.a_leg.clone()
            }?;
            self.relay(id, None, other, "BYE", None, from_a, now, &mut out);
            return Some((out, events));
        }
        // re-INVITE, UPDATE, INFO: relay across, answer with what comes back.
        let other = if from_a {
            call.b_leg.clone()
        } else {
            call.a_leg.clone()
        }?;
        let ct = req
            .header("content-type")
            .unwrap_or("application/sdp")
            .to_owned();
        let body = if req.body.is_empty() {
            None
        } else if ct.eq_ignore_ascii_case("application/sdp") {
            Some((ct, self.media_update(id, from_a, &req.body)))
        } else {
            Some((ct, req.body.clone()))
        };
        if method == "INVITE" {
            let mut trying = req.response(100, "Trying", None);
            stamp_rport(&mut trying, src);
            out.push(Send {
                to: src,
                bytes: Bytes::from(trying.to_bytes()),
            });
        }
        self.relay(
            id,
            Some((req.clone(), src)),
            other,
            &method,
            body,
            from_a,
            now,
            &mut out,
        );
        Some((out, events))
    }

    #[allow(clippy::too_many_arguments)]
    fn relay(
        &mut self,
        id: u64,
        original: Option<(Message, SocketAddr)>,
        mut leg: Leg,
        method: &str,
        body: Option<(String, Bytes)>,
        from_a: bool,
        now: u64,
        out: &mut Vec<Send>,
    ) {
        let branch = format!("{BRANCH_PREFIX}{}", self.unique("r"));
        leg.cseq += 1;
        let cseq = leg.cseq;
        // Remember the CSeq on the call's leg.
        if let Some(call) = self.calls.get_mut(&id) {
            for l in [call.a_leg.as_mut(), call.b_leg.as_mut()]
                .into_iter()
                .flatten()
            {
                if l.call_id == leg.call_id {
                    l.cseq = cseq;
                }
            }
        }
        let bytes = in_dialog(
            &self.via(&branch, leg.transport),
            &leg,
            method,
            cseq,
            body.as_ref().map(|(ct, b)| (ct.as_str(), b)),
        );
        out.push(Send {
            to: leg.addr,
            bytes: bytes.clone(),
        });
        let kind = if method == "INVITE" {
            TxKind::Invite
        } else {
            TxKind::NonInvite
        };
        self.relays.insert(
            branch.clone(),
            Relay {
                call: id,
                tx: ClientTx::new(kind, bytes, leg.transport.reliable(), self.timers, now),
                original,
                to: leg.addr,
                method: method.to_owned(),
                from_a,
                scheduled: None,
            },
        );
        if let Some(call) = self.calls.get_mut(&id) {
            call.relays += 1;
        }
        self.schedule_relay(&branch);
    }

    /// The far end answered a relayed request: pass the final answer back.
    fn finish_relay(&mut self, branch: &str, resp: &Message) -> Vec<Send> {
        let Some((call, from_a)) = self.relays.get(branch).map(|r| (r.call, r.from_a)) else {
            return Vec::new();
        };
        let code = resp.status().unwrap_or(500);
        let mut out = Vec::new();
        if code < 200 {
            return out;
        }
        let ct = resp.header("content-type").unwrap_or("application/sdp");
        // The far side's SDP answer, for the side that asked.
        let body = if (200..300).contains(&code) && ct.eq_ignore_ascii_case("application/sdp") {
            self.media_update(call, !from_a, &resp.body)
        } else {
            resp.body.clone()
        };
        let Some(relay) = self.relays.get(branch) else {
            return out;
        };
        let call_id = self.calls.get(&relay.call).map(|c| c.phase);
        if relay.method == "INVITE" && (200..300).contains(&code) {
            // ACK the relayed re-INVITE's 2xx on that leg.
            if let Some(call) = self.calls.get(&relay.call)
                && let Some(leg) = [call.a_leg.as_ref(), call.b_leg.as_ref()]
                    .into_iter()
                    .flatten()
                    .find(|l| l.addr == relay.to)
            {
                let mut leg = leg.clone();
                leg.remote = resp.header("to").map_or(leg.remote, str::to_owned);
                let ack = in_dialog(
                    &self.via(
                        &format!("{BRANCH_PREFIX}{}", self.next_id + 1),
                        leg.transport,
                    ),
                    &leg,
                    "ACK",
                    leg.cseq,
                    None,
                );
                out.push(Send {
                    to: relay.to,
                    bytes: ack,
                });
            }
        }
        if let (Some((orig, src)), Some(_)) = (&relay.original, call_id)
            && let Some(call) = self.calls.get(&relay.call)
        {
            let own_tag = if orig.call_id() == call.invite.call_id() {
                call.a_tag.clone()
            } else {
                call.b_leg
                    .as_ref()
                    .and_then(|l| tag_of(&l.local))
                    .unwrap_or_default()
            };
            let mut r = orig.response(code, resp_reason(resp), Some(&own_tag));
            stamp_rport(&mut r, *src);
            if !resp.body.is_empty() {
                r.push_header("content-type", ct.to_owned());
                r.body = body;
            }
            if (200..300).contains(&code) {
                r.push_header("contact", self.contact());
            }
            out.push(Send {
                to: *src,
                bytes: Bytes::from(r.to_bytes()),
            });
        }
        out
    }

    /// Runs due timers: retransmissions, ring timeouts, transaction ends.
    /// Visits only the calls and relays whose next deadline has come.
    pub fn tick(&mut self, now: u64) -> (Vec<Send>, Vec<CallEvent>) {
        let mut out = Vec::new();
        let mut events = Vec::new();
        let mut ids = Vec::new();
        while let Some((at, id)) = self.due.pop_due(now) {
            if let Some(call) = self.calls.get_mut(&id)
                && call.scheduled == Some(at)
            {
                call.scheduled = None;
                ids.push(id);
            }
        }
        for id in ids {
            self.call_timers(id, now, &mut out, &mut events);
            self.schedule(id, now);
        }
        let mut branches = Vec::new();
        while let Some((at, branch)) = self.relay_due.pop_due(now) {
            if let Some(relay) = self.relays.get_mut(&branch)
                && relay.scheduled == Some(at)
            {
                relay.scheduled = None;
                branches.push(branch);
            }
        }
        for branch in branches {
            let Some(relay) = self.relays.get_mut(&branch) else {
                continue;
            };
            let mut done = false;
            for a in relay.tx.on_timer(now) {
                match a {
                    Action::Send(b) => out.push(Send {
                        to: relay.to,
                        bytes: b,
                    }),
                    Action::Terminated => done = true,
                    _ => {}
                }
            }
            if done {
                let call = relay.call;
                self.relays.remove(&branch);
                if let Some(c) = self.calls.get_mut(&call) {
                    c.relays = c.relays.saturating_sub(1);
                }
                self.schedule(call, now);
            } else {
                self.schedule_relay(&branch);
            }
        }
        (out, events)
    }

    /// One call's due timers; forgets it when it has ended and its
    /// transactions are done.
    fn call_timers(&mut self, id: u64, now: u64, out: &mut Vec<Send>, events: &mut Vec<CallEvent>) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let src = call.src;
        for a in call.a_tx.on_timer(now) {
            if let Action::Send(b) = a {
                out.push(Send { to: src, bytes: b });
            }
        }
        let mut failed_fork = false;
        for f in &mut call.forks {
            for a in f.tx.on_timer(now) {
                match a {
                    Action::Send(b) => out.push(Send {
                        to: f.addr,
                        bytes: b,
                    }),
                    Action::Timeout
                        if matches!(f.state, ForkState::Trying | ForkState::Ringing) =>
                    {
                        f.state = ForkState::Failed(408);
                        failed_fork = true;
                    }
                    _ => {}
                }
            }
        }
        let ring_over = call.phase == Phase::Setup && call.ring_deadline.is_some_and(|d| now >= d);
        if ring_over {
            // Nobody answered in time: cancel and try the next one.
            call.ring_deadline = None;
            self.cancel_forks(id, None, out);
            self.ring_next(id, now, out, events);
        } else if failed_fork {
            self.after_fork_failure(id, now, out, events);
        }
        if self
            .calls
            .get(&id)
            .is_some_and(|call| call.finished(now, self.timers.t1))
        {
            self.forget(id);
        }
    }

    fn forget(&mut self, id: u64) {
        let Some(call) = self.calls.remove(&id) else {
            return;
        };
        if let Some(media) = self.media.as_mut() {
            media.end(id);
        }
        if call.phase == Phase::Ended {
            self.ended -= 1;
        }
        self.forks -= call.forks.len();
        if let (Some(cid), Some(tag)) = (
            call.invite.call_id(),
            call.invite.header("from").and_then(tag_of),
        ) {
            self.by_a.remove(&(cid.to_owned(), tag));
        }
        for f in &call.forks {
            self.by_branch.remove(&f.branch);
            self.by_b_call.remove(&f.call_id);
        }
    }
}

/// What the relay saw, added to `call.ended`.
fn add_summary(payload: &mut Value, summary: Option<crate::media::Summary>) {
    let Some(s) = summary else { return };
    if !s.dtmf.is_empty() {
        payload["dtmf"] = json!(s.dtmf);
    }
    if let Some(path) = s.recording {
        payload["recording"] = json!(path);
    }
}

fn resp_reason(resp: &Message) -> Text {
    match &resp.start {
        switchboard_sip::StartLine::Response { reason, .. } => reason.clone(),
        switchboard_sip::StartLine::Request { .. } => Text::default(),
    }
}

fn event(call: &Call, kind: Kind, mut payload: Value) -> CallEvent {
    payload["direction"] = json!(call.info.direction);
    payload["trunk"] = json!(call.info.trunk);
    payload["dialled"] = json!(call.info.dialled);
    if let Some(ext) = &call.info.from_extension {
        payload["from_extension"] = json!(ext);
    }
    CallEvent {
        kind,
        contact: call.info.contact.clone(),
        manager: call.manager.clone(),
        conversation: call.invite.call_id().unwrap_or("").to_owned(),
        payload,
    }
}

/// Where to send requests for a URI whose host is an IP address.
pub fn target_addr(uri: &Uri) -> Option<SocketAddr> {
    let ip: std::net::IpAddr = uri.host.trim_matches(['[', ']']).parse().ok()?;
    Some(SocketAddr::new(ip, uri.port.unwrap_or(5060)))
}

/// A request inside a dialog on `leg`.
fn in_dialog(via: &str, leg: &Leg, method: &str, cseq: u32, body: Option<(&str, &Bytes)>) -> Bytes {
    let mut text = format!(
        "{method} {} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\n",
        leg.target, leg.local, leg.remote, leg.call_id
    );
    for hop in &leg.route {
        text.push_str(&format!("Route: {hop}\r\n"));
    }
    if let Some((ct, _)) = body {
        text.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    text.push_str(&format!(
        "Content-Length: {}\r\n\r\n",
        body.map_or(0, |(_, b)| b.len())
    ));
    let mut bytes = text.into_bytes();
    if let Some((_, b)) = body {
        bytes.extend_from_slice(b);
    }
    Bytes::from(bytes)
}

/// Every Record-Route entry of a message, top first.
fn record_route(msg: &Message) -> Vec<String> {
    msg.header_values("record-route")
        .flat_map(split_list)
        .map(str::to_owned)
        .collect()
}

/// CANCEL for a fork's INVITE: same branch, Request-URI, From, To, Call-ID
/// (RFC 3261 §9.1).
fn cancel_for(invite: &Bytes) -> Bytes {
    let Ok(inv) = switchboard_sip::parse(invite) else {
        return Bytes::new();
    };
    let mut text = format!("CANCEL {} SIP/2.0\r\n", inv.request_uri().unwrap_or(""));
    for name in ["via", "max-forwards", "from", "to", "call-id"] {
        if let Some(v) = inv.header(name) {
            text.push_str(&format!("{}: {v}\r\n", canonical_name(name)));
        }
    }
    // The INVITE's Route headers too (§9.1).
    for hop in inv.header_values("route") {
        text.push_str(&format!("Route: {hop}\r\n"));
    }
    text.push_str("CSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n");
    Bytes::from(text)
}

/// ACK for a failure response (same branch; To from the response).
fn ack_for_failure(invite: &Bytes, uri: &str, to: &str) -> Bytes {
    let Ok(inv) = switchboard_sip::parse(invite) else {
        return Bytes::new();
    };
    let mut text = format!("ACK {uri} SIP/2.0\r\n");
    for name in ["via", "max-forwards", "from"] {
        if let Some(v) = inv.header(name) {
            text.push_str(&format!("{}: {v}\r\n", canonical_name(name)));
        }
    }
    // The INVITE's Route headers too (§17.1.1.3).
    for hop in inv.header_values("route") {
        text.push_str(&format!("Route: {hop}\r\n"));
    }
    text.push_str(&format!(
        "To: {to}\r\nCall-ID: {}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        inv.call_id().unwrap_or("")
    ));
    Bytes::from(text)
}

/// An address as text; IPv4 (every datagram's source) without the
/// formatting machinery.
fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    let std::net::IpAddr::V4(v4) = ip else {
        // Writing into a String cannot fail.
        let _ = write!(out, "{ip}");
        return;
    };
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
}

/// `received`/`rport` on a response's top Via, as the registrar does.
pub fn stamp_rport(resp: &mut Message, src: SocketAddr) {
    let Some((_, value)) = resp.headers.iter_mut().find(|(n, _)| n == "via") else {
        return;
    };
    let mut parts = split_list(value);
    let Some(top) = parts.next() else { return };
    let Ok(via) = switchboard_sip::ViaRef::parse(top) else {
        return;
    };
    let (sent_by, existing) = top.split_once(';').unwrap_or((top, ""));
    let mut out = String::with_capacity(value.len() + 48);
    out.push_str(sent_by.trim_ascii_end());
    for p in existing
        .split(';')
        .map(str::trim_ascii)
        .filter(|p| !p.is_empty())
    {
        let key = p.split('=').next().unwrap_or("").trim_ascii();
        if !key.eq_ignore_ascii_case("rport") && !key.eq_ignore_ascii_case("received") {
            out.push(';');
            out.push_str(p);
        }
    }
    // `received` is written, then taken back when the Via already names
    // the source and no `rport` asked for it.
    const RECEIVED: &str = ";received=";
    let mark = out.len();
    out.push_str(RECEIVED);
    push_ip(&mut out, src.ip());
    if via.rport.is_none() && via.host.trim_matches(['[', ']']) == &out[mark + RECEIVED.len()..] {
        out.truncate(mark);
    }
    if via.rport.is_some() {
        out.push_str(";rport=");
        out.push_str(itoa::Buffer::new().format(src.port()));
    }
    for rest in parts {
        out.push_str(", ");
        out.push_str(rest);
    }
    *value = out.into();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.255.9",
            "192.168.100.200",
            "8.8.4.4",
            "::1",
            "2001:db8::5",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let mut text = "x".to_owned();
            push_ip(&mut text, ip);
            assert_eq!(text, format!("x{ip}"));
        }
    }

    fn invite() -> Message {
        switchboard_sip::parse(
            b"INVITE sip:+74950000000@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-race\r\nMax-Forwards: 70\r\n\
From: <sip:+79161234567@127.0.0.1>;tag=a1\r\nTo: <sip:+74950000000@127.0.0.1>\r\n\
Call-ID: race@127.0.0.1\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@127.0.0.1:5070>\r\n\
Content-Length: 0\r\n\r\n",
        )
        .unwrap()
    }

    fn new_call() -> NewCall {
        NewCall {
            direction: "inbound",
            trunk: Some("pbx".into()),
            contact: Contact {
                key: "tel:+79161234567".into(),
                phone: Some("+79161234567".into()),
                email: None,
                user_id: None,
                name: None,
            },
            dialled: "+74950000000".into(),
            from_extension: None,
            candidates: vec![Candidate {
                manager: Some("m1".into()),
                extension: Some("1001".into()),
                targets: vec![Target::direct(
                    "sip:1001@127.0.0.1:5080".into(),
                    "127.0.0.1:5080".parse().unwrap(),
                )],
                record: None,
            }],
            record: None,
        }
    }

    #[test]
    fn a_retransmission_that_overtakes_its_original_makes_no_second_call() {
        let src: SocketAddr = "127.0.0.1:5070".parse().unwrap();
        let mut calls = Calls::new(
            "127.0.0.1:5060".parse().unwrap(),
            "127.0.0.1".into(),
            2000,
            1,
        );
        let (sent, _) = calls.start(invite(), src, Transport::Udp, new_call(), "t1".into(), 0);
        // 100 Trying to the caller and an INVITE to the phone.
        assert_eq!(sent.len(), 2);
        let (again, events) =
            calls.start(invite(), src, Transport::Udp, new_call(), "t2".into(), 10);
        assert_eq!(calls.active(), 1);
        assert!(events.is_empty());
        // Only the 100 Trying again, nothing to the phone.
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].to, src);
        assert!(again[0].bytes.starts_with(b"SIP/2.0 100"));
    }
}
