//! What the gateway answers to each SIP request: the checks every request
//! goes through (scanners, bans, rate limits, RFC 3261 rules), the
//! registrar with digest authentication, OPTIONS, and the refusals the
//! torture tests expect. Replies go back where the request came from (the
//! source port, as `rport` asks and NATs need).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use switchboard_config::{ConfigError, SipConfig, SipNumber, SipTrunk};
use switchboard_sip::digest::{
    self, Algorithm, CountCheck, Credentials, Hex, NonceCheck, NonceCounts, Nonces,
};
use switchboard_sip::message::{self, Message, ParseError, split_list};
use switchboard_sip::registrar::{self, ExpiryPolicy, RegisterError};
use switchboard_sip::{ALLOWED_METHODS, NameAddr, Text, Uri, is_known_method};
use switchboard_storage::{Channel, Contact, ContactKey, FeedLog, Interaction, NewRecord};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::SipError;
use super::b2bua::{CallEvent, Calls, Candidate, NewCall, Send, Target, stamp_rport, target_addr};
use super::fnv;
use super::guard::{Guard, Verdict};
use super::location::{Location, LocationError, Secs, Transport, Update};
use crate::dispatch::Dispatcher;
use crate::media::Media;
use crate::metrics as m;

/// One extension's (or trunk's) precomputed secrets.
#[derive(Debug, Clone)]
struct User {
    ha1_md5: String,
    ha1_sha256: String,
    manager: String,
    /// Set for a trunk's credentials: calls from it are inbound.
    trunk: Option<String>,
    /// Whether this extension's calls are recorded (`sip.users[].record`).
    record: Option<bool>,
}

/// The extensions, swapped whole on reload.
#[derive(Debug, Default)]
pub struct Users {
    by_extension: HashMap<String, User>,
}

impl Users {
    /// Reads passwords (files included) and precomputes HA1s for `realm`.
    pub fn from_config(cfg: &SipConfig) -> Result<Self, ConfigError> {
        let mut by_extension = HashMap::new();
        for u in &cfg.users {
            let password = u.resolve_password()?;
            by_extension.insert(
                u.extension.clone(),
                User {
                    ha1_md5: digest::ha1(Algorithm::Md5, &u.extension, &cfg.realm, &password),
                    ha1_sha256: digest::ha1(Algorithm::Sha256, &u.extension, &cfg.realm, &password),
                    manager: u.manager.clone(),
                    trunk: None,
                    record: u.record,
                },
            );
        }
        for t in cfg.trunks.iter().filter(|t| !t.username.is_empty()) {
            by_extension.insert(
                t.username.clone(),
                User {
                    ha1_md5: digest::ha1(Algorithm::Md5, &t.username, &cfg.realm, &t.password),
                    ha1_sha256: digest::ha1(
                        Algorithm::Sha256,
                        &t.username,
                        &cfg.realm,
                        &t.password,
                    ),
                    manager: String::new(),
                    trunk: Some(t.name.clone()),
                    record: t.record,
                },
            );
        }
        Ok(Users { by_extension })
    }

    pub fn len(&self) -> usize {
        self.by_extension
            .values()
            .filter(|u| u.trunk.is_none())
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.by_extension.is_empty()
    }
}

const NONCE_SHARDS: usize = 16;

enum Auth {
    /// Authenticated as this extension.
    Ok(String),
    /// Answer with a challenge (no credentials, unknown scheme, stale nonce).
    Challenge { stale: bool },
    /// Wrong credentials: counted toward a ban, answered like `Challenge`.
    Failed,
}

/// The SIP request handler shared by every transport task.
pub struct Core<L> {
    realm: String,
    domains: Vec<String>,
    algorithms: Vec<Algorithm>,
    policy: ExpiryPolicy,
    users: RwLock<Arc<Users>>,
    nonces: Nonces,
    serial: AtomicU64,
    counts: Box<[Mutex<NonceCounts>]>,
    guard: Guard,
    location: L,
    dispatcher: Option<Dispatcher>,
    epoch: Instant,
    calls: Mutex<Calls>,
    socket: OnceLock<Arc<UdpSocket>>,
    /// Open TCP and TLS connections by peer: what the B2BUA sends to one
    /// of these addresses goes down that connection, not over UDP.
    flows: Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Bytes>>>,
    trunks: Vec<SipTrunk>,
    numbers: Vec<SipNumber>,
    country: phonenumber::country::Id,
    events: mpsc::UnboundedSender<Interaction>,
    events_rx: Mutex<Option<mpsc::UnboundedReceiver<Interaction>>>,
    /// Calls whose media stopped, from the relay.
    media_timeouts: Mutex<Option<mpsc::UnboundedReceiver<u64>>>,
}

/// Writes call events to the feed in order, a batch per commit, until
/// `done`; then closes the queue and writes whatever is left in it.
pub async fn publish_events(
    mut rx: mpsc::UnboundedReceiver<Interaction>,
    feed: FeedLog,
    done: CancellationToken,
) {
    let mut batch = Vec::with_capacity(256);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, 256) => n,
            () = done.cancelled(), if !rx.is_closed() => {
                rx.close();
                continue;
            }
        };
        if n == 0 {
            return;
        }
        let records: Vec<NewRecord> = batch
            .drain(..)
            .filter_map(|ev| NewRecord::interaction(&ev).ok())
            .collect();
        if let Err(e) = feed.append_batch(records).await {
            warn!(error = %e, "call events not written to the feed");
        }
    }
}

/// What the core needs from the rest of the gateway.
#[derive(Debug, Clone)]
pub struct CoreContext {
    /// Our UDP address, for Via and Contact (the host may be overridden).
    pub local: SocketAddr,
    pub host: String,
    pub dispatcher: Option<Dispatcher>,
    pub feed: Option<FeedLog>,
    pub country: phonenumber::country::Id,
    /// Anchor calls' media (and record them under this data directory).
    pub media: Option<(switchboard_config::MediaConfig, std::path::PathBuf)>,
}

impl<L> std::fmt::Debug for Core<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("realm", &self.realm)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> Secs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The method labels of the request and response counters.
const METHOD_LABELS: [&str; 9] = [
    "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "UPDATE", "INFO", "other",
];

/// A request method's place in [`METHOD_LABELS`] (the last for any other).
fn method_index(method: &str) -> usize {
    METHOD_LABELS[..METHOD_LABELS.len() - 1]
        .iter()
        .position(|l| *l == method)
        .unwrap_or(METHOD_LABELS.len() - 1)
}

/// The status classes of the response counter.
const CLASS_LABELS: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx"];

/// Each method's request counter and each method and class's response
/// counter, looked up by label once: a labelled lookup hashes the labels
/// under a lock, and every request counts twice. A series appears in
/// `/metrics` when first counted, as before.
struct MethodCounters {
    requests: [OnceLock<prometheus::IntCounter>; METHOD_LABELS.len()],
    responses: [[OnceLock<prometheus::IntCounter>; CLASS_LABELS.len()]; METHOD_LABELS.len()],
}

static METHOD_COUNTERS: MethodCounters = MethodCounters {
    requests: [const { OnceLock::new() }; METHOD_LABELS.len()],
    responses: [const { [const { OnceLock::new() }; CLASS_LABELS.len()] }; METHOD_LABELS.len()],
};

impl MethodCounters {
    fn request(&self, method: usize) {
        self.requests[method]
            .get_or_init(|| m::SIP_REQUESTS.with_label_values(&[METHOD_LABELS[method]]))
            .inc();
    }

    fn response(&self, method: usize, code: u16) {
        let class = usize::from(code / 100).clamp(1, 6) - 1;
        self.responses[method][class]
            .get_or_init(|| {
                m::SIP_RESPONSES.with_label_values(&[METHOD_LABELS[method], CLASS_LABELS[class]])
            })
            .inc();
    }
}

impl<L: Location> Core<L> {
    pub fn new(
        cfg: &SipConfig,
        users: Users,
        location: L,
        ctx: CoreContext,
    ) -> Result<Self, SipError> {
        let secret: [u8; 32] = if cfg.nonce_secret.is_empty() {
            let mut s = [0u8; 32];
            s[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            s[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            s
        } else {
            use sha2::Digest;
            sha2::Sha256::digest(cfg.nonce_secret.as_bytes()).into()
        };
        let salt = uuid::Uuid::new_v4().as_u64_pair().1 & 0xffff_ffff;
        let (events, events_rx) = mpsc::unbounded_channel();
        let mut calls = Calls::new(
            ctx.local,
            ctx.host.clone(),
            u64::try_from(cfg.ring_timeout.as_millis()).unwrap_or(30_000),
            salt,
        );
        let mut media_timeouts = None;
        if let Some((media, data_dir)) = ctx.media.as_ref().filter(|(m, _)| m.enabled) {
            let advertised = ctx.host.parse().unwrap_or(ctx.local.ip());
            let (anchor, timeouts) =
                Media::new(media, ctx.local.ip(), advertised, data_dir, events.clone())
                    .map_err(|e| SipError::Media(e.to_string()))?;
            calls = calls.with_media(Box::new(anchor));
            media_timeouts = Some(timeouts);
        }
        let algorithms = cfg
            .algorithms
            .iter()
            .filter_map(|a| Algorithm::parse(a))
            .collect();
        Ok(Core {
            realm: cfg.realm.clone(),
            domains: cfg.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            algorithms,
            policy: ExpiryPolicy {
                default_s: cfg.default_expires,
                min_s: cfg.min_expires,
                max_s: cfg.max_expires,
            },
            users: RwLock::new(Arc::new(users)),
            nonces: Nonces::new(secret, cfg.nonce_lifetime.as_secs()),
            // A random start keeps a restarted node from reusing serials.
            serial: AtomicU64::new(u64::from(uuid::Uuid::new_v4().as_u64_pair().0 as u32) << 16),
            counts: (0..NONCE_SHARDS)
                .map(|_| Mutex::new(NonceCounts::new(1 << 16)))
                .collect(),
            guard: Guard::new(&cfg.security),
            location,
            dispatcher: ctx.dispatcher,
            epoch: Instant::now(),
            calls: Mutex::new(calls),
            socket: OnceLock::new(),
            flows: Mutex::new(HashMap::new()),
            trunks: cfg.trunks.clone(),
            numbers: cfg.numbers.clone(),
            country: ctx.country,
            events,
            events_rx: Mutex::new(Some(events_rx)),
            media_timeouts: Mutex::new(media_timeouts),
        })
    }

    /// The socket calls' messages leave from.
    pub fn set_socket(&self, socket: Arc<UdpSocket>) {
        let _ = self.socket.set(socket);
    }

    /// A TCP or TLS connection from `peer` opened: requests and responses
    /// for it arrive on the returned receiver until [`Self::close_flow`].
    pub fn open_flow(&self, peer: SocketAddr) -> mpsc::UnboundedReceiver<Bytes> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.flows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, tx);
        rx
    }

    pub fn close_flow(&self, peer: SocketAddr) {
        self.flows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&peer);
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the calls and, still holding the lock (so two workers
    /// never reorder one call's messages or events), sends what it produced
    /// and queues its events for the feed. False when `f` found nothing.
    fn with_calls(
        &self,
        f: impl FnOnce(&mut Calls) -> Option<(Vec<Send>, Vec<CallEvent>)>,
    ) -> bool {
        let mut calls = self.calls();
        let Some((sends, events)) = f(&mut calls) else {
            return false;
        };
        if !sends.is_empty() {
            let flows = self.flows.lock().unwrap_or_else(|p| p.into_inner());
            for s in sends {
                if let Some(flow) = flows.get(&s.to) {
                    // The connection's task writes it; a closed one drops it.
                    let _ = flow.send(s.bytes);
                } else if let Some(socket) = self.socket.get() {
                    // UDP sends do not block; a full buffer loses this copy
                    // and the transaction's retransmission recovers it.
                    if let Err(e) = socket.try_send_to(&s.bytes, s.to) {
                        debug!(to = %s.to, error = %e, "SIP send failed");
                    }
                }
            }
        }
        for ev in events {
            let mut i = Interaction::new(
                ev.kind,
                Channel::Sip,
                ev.contact,
                time::OffsetDateTime::now_utc(),
                ev.payload,
            );
            i.manager = ev.manager;
            i.conversation = Some(ev.conversation);
            debug!(kind = ev.kind.as_str(), conversation = ?i.conversation, "call event");
            if self.events.send(i).is_err() {
                warn!("call event not written: the feed writer stopped");
            }
        }
        // Only now do ended calls' recordings finish: their
        // `recording.ready` follows `call.ended` in the queue.
        calls.commit_media();
        true
    }

    /// Takes the receiving end of the call events (once), for
    /// [`publish_events`].
    pub fn take_events(&self) -> Option<mpsc::UnboundedReceiver<Interaction>> {
        self.events_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Timers of calls in progress; call every few tens of milliseconds.
    pub async fn tick(&self) {
        let now = self.monotonic_ms();
        let mut counts = (0, 0);
        let stopped: Vec<u64> = {
            let mut rx = self
                .media_timeouts
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            std::iter::from_fn(|| rx.as_mut()?.try_recv().ok()).collect()
        };
        self.with_calls(|calls| {
            let (mut out, mut events) = calls.tick(now);
            for id in stopped {
                let (o, e) = calls.hang_up(id, "media_timeout", now);
                out.extend(o);
                events.extend(e);
            }
            counts = (calls.active(), calls.transactions());
            Some((out, events))
        });
        m::SIP_CALLS.set(i64::try_from(counts.0).unwrap_or(i64::MAX));
        m::SIP_TRANSACTIONS.set(i64::try_from(counts.1).unwrap_or(i64::MAX));
    }

    pub fn location(&self) -> &L {
        &self.location
    }

    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// Replaces the extensions (SIGHUP). Bindings are kept.
    pub fn set_users(&self, users: Users) {
        *self.users.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(users);
    }

    fn users(&self) -> Arc<Users> {
        Arc::clone(&self.users.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn monotonic_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Handles one message; returns the reply to send back, if any.
    pub async fn handle(
        &self,
        data: &[u8],
        src: SocketAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let now_ms = self.monotonic_ms();
        match self.guard.admit(src.ip(), now_ms) {
            Verdict::Pass => {}
            Verdict::Banned => {
                m::SIP_DROPPED.with_label_values(&["banned"]).inc();
                return None;
            }
            Verdict::RateLimited => {
                m::SIP_DROPPED.with_label_values(&["rate_limited"]).inc();
                return None;
            }
        }
        let msg = match message::parse(data) {
            Ok(msg) => msg,
            Err(e) => {
                m::SIP_DROPPED.with_label_values(&["malformed"]).inc();
                debug!(%src, error = %e, "unanswerable SIP message dropped");
                return None;
            }
        };
        let Some(method) = msg.method() else {
            if !self.with_calls(|calls| calls.on_response(&msg, now_ms)) {
                m::SIP_DROPPED.with_label_values(&["stray_response"]).inc();
            }
            return None;
        };
        if self.guard.is_scanner(msg.header("user-agent")) {
            m::SIP_DROPPED.with_label_values(&["scanner"]).inc();
            return None;
        }
        let index = method_index(method);
        METHOD_COUNTERS.request(index);
        let reply = self.respond(&msg, method, src, transport, now_ms).await?;
        METHOD_COUNTERS.response(index, reply.status().unwrap_or(500));
        Some(reply.to_bytes())
    }

    /// Our To tag for a request's dialog: 12 hex digits of a hash of what
    /// identifies the request, so a retransmission gets the same tag; on
    /// the stack, as every reply needs one.
    fn to_tag(&self, req: &Message) -> Hex {
        let hash = fnv(&[
            req.call_id().unwrap_or(""),
            req.header("from").unwrap_or(""),
            req.top_branch().unwrap_or(""),
        ]);
        Hex::of(&hash.to_be_bytes()[2..])
    }

    /// A response with Via, From, To, Call-ID and CSeq copied, a To tag
    /// that is the same for retransmissions, and the top Via stamped with
    /// `received`/`rport` (RFC 3581).
    fn reply(&self, req: &Message, code: u16, src: SocketAddr) -> Message {
        let tag = self.to_tag(req);
        let mut resp = req.response(code, message::reason_phrase(code), Some(tag.as_str()));
        stamp_rport(&mut resp, src);
        resp.push_header("server", "Switchboard");
        resp
    }

    async fn respond(
        &self,
        req: &Message,
        method: &str,
        src: SocketAddr,
        transport: Transport,
        now_ms: u64,
    ) -> Option<Message> {
        if method == "ACK" {
            // Ends a failed INVITE's transaction, or confirms an answered
            // call; either way nothing is sent back.
            self.calls().on_ack(req, now_ms);
            return None;
        }
        if !is_known_method(method) {
            let mut r = self.reply(req, 501, src);
            r.push_header("allow", ALLOWED_METHODS);
            return Some(r);
        }
        if let Err(e) = req.validate() {
            let (code, why) = match e {
                ParseError::Invalid { code, reason } => (code, reason),
                other => (400, other.to_string()),
            };
            debug!(%src, code, reason = %why, "SIP request refused");
            let mut r = self.reply(req, code, src);
            r.push_header(
                "warning",
                format!("399 switchboard \"{}\"", why.replace('"', "'")),
            );
            return Some(r);
        }
        let unsupported: Vec<&str> = req
            .header_values("require")
            .chain(req.header_values("proxy-require"))
            .filter(|opt| !opt.eq_ignore_ascii_case("path"))
            .collect();
        if !unsupported.is_empty() && method != "CANCEL" {
            let mut r = self.reply(req, 420, src);
            r.push_header("unsupported", unsupported.join(", "));
            return Some(r);
        }
        // validate() checked the whole Request-URI; only its scheme matters here.
        let scheme = req
            .request_uri()
            .and_then(|u| u.split_once(':'))
            .map(|(s, _)| s)?;
        if !["sip", "sips", "tel"]
            .iter()
            .any(|known| scheme.eq_ignore_ascii_case(known))
        {
            return Some(self.reply(req, 416, src));
        }
        let has_to_tag = req
            .header("to")
            .is_some_and(|t| message::has_param(t, "tag"));
        match method {
            "INVITE" if has_to_tag => self.in_dialog(req, src, now_ms).await,
            "INVITE" => {
                if self.with_calls(|calls| {
                    calls.on_invite_retransmission(req).map(|s| (s, Vec::new()))
                }) {
                    return None;
                }
                self.invite(req, src, transport, now_ms).await
            }
            "CANCEL" => {
                if self.with_calls(|calls| calls.on_cancel(req, src, now_ms)) {
                    None
                } else {
                    Some(self.reply(req, 481, src))
                }
            }
            "BYE" | "UPDATE" | "INFO" => self.in_dialog(req, src, now_ms).await,
            "REGISTER" => Some(self.register(req, src, transport, now_ms).await),
            "OPTIONS" => {
                let mut r = self.reply(req, 200, src);
                r.push_header("allow", ALLOWED_METHODS);
                r.push_header("accept", "application/sdp");
                r.push_header("supported", "path");
                Some(r)
            }
            _ => Some(self.reply(req, 481, src)),
        }
    }

    async fn in_dialog(&self, req: &Message, src: SocketAddr, now_ms: u64) -> Option<Message> {
        if self.with_calls(|calls| calls.on_in_dialog(req, src, now_ms)) {
            None
        } else {
            Some(self.reply(req, 481, src))
        }
    }

    async fn invite(
        &self,
        req: &Message,
        src: SocketAddr,
        transport: Transport,
        now_ms: u64,
    ) -> Option<Message> {
        if !req.body.is_empty() {
            let ct = req.header("content-type").unwrap_or("");
            let media = ct.split(';').next().unwrap_or("").trim_ascii();
            if !media.eq_ignore_ascii_case("application/sdp") {
                let mut r = self.reply(req, 415, src);
                r.push_header("accept", "application/sdp");
                return Some(r);
            }
        }
        if req.count("accept") > 0
            && !req.header_values("accept").any(|a| {
                let a = a.split(';').next().unwrap_or("").trim_ascii();
                a.eq_ignore_ascii_case("application/sdp")
                    || a == "*/*"
                    || a.eq_ignore_ascii_case("application/*")
            })
        {
            let mut r = self.reply(req, 406, src);
            r.push_header("accept", "application/sdp");
            r.push_header(
                "warning",
                "399 switchboard \"only application/sdp is supported\"",
            );
            return Some(r);
        }
        // A trunk's address makes a call inbound only when it dials a
        // company number; anything else from there (a softphone on the same
        // host calling an extension) must authenticate like any phone.
        let dialled_number = Uri::parse(req.request_uri().unwrap_or(""))
            .ok()
            .and_then(|u| u.user_unescaped())
            .and_then(|d| switchboard_adapters::contact::normalize_phone(&d, self.country).ok());
        let company = dialled_number
            .as_ref()
            .is_some_and(|n| self.numbers.iter().any(|c| &c.number == n))
            || (self.dispatcher.is_some() && dialled_number.is_some());
        let trunk = self
            .trunks
            .iter()
            .find(|t| company && t.addresses.contains(&src.ip()))
            .map(|t| t.name.clone());
        let (trunk, extension) = match trunk {
            Some(t) => (Some(t), None),
            None => match self.authenticate(req, "proxy-authorization", src, now_ms) {
                Auth::Ok(user) => {
                    let trunk = self
                        .users()
                        .by_extension
                        .get(&user)
                        .and_then(|u| u.trunk.clone());
                    if trunk.is_some() {
                        (trunk, None)
                    } else {
                        (None, Some(user))
                    }
                }
                Auth::Challenge { stale } => return Some(self.challenge(req, 407, stale, src)),
                // Wrong credentials: refused outright, never routed (no
                // toll fraud through a guessed password).
                Auth::Failed => return Some(self.reply(req, 403, src)),
            },
        };
        if req
            .header("max-forwards")
            .is_some_and(|m| m.trim_ascii().parse::<u32>().is_ok_and(|n| n == 0))
        {
            return Some(self.reply(req, 483, src));
        }
        if self.calls().is_loop(req) {
            return Some(self.reply(req, 482, src));
        }
        let uri = Uri::parse(req.request_uri().unwrap_or("")).ok()?;
        let dialled = uri.user_unescaped().unwrap_or_default();
        let Some(call) = self.plan(req, &dialled, trunk, extension).await else {
            return Some(self.reply(req, 404, src));
        };
        let tag = self.to_tag(req).as_str().to_owned();
        self.with_calls(|calls| Some(calls.start(req.clone(), src, transport, call, tag, now_ms)));
        None
    }

    /// Who a new call rings, by where it came from and what was dialled.
    async fn plan(
        &self,
        req: &Message,
        dialled: &str,
        trunk: Option<String>,
        extension: Option<String>,
    ) -> Option<NewCall> {
        let users = self.users();
        let caller_user = NameAddr::parse(req.header("from").unwrap_or(""), false)
            .ok()
            .and_then(|a| a.uri.user_unescaped())
            .unwrap_or_default();
        if let Some(trunk) = trunk {
            // Inbound: the caller is the customer, the number a company line.
            let number =
                switchboard_adapters::contact::normalize_phone(dialled, self.country).ok()?;
            let contact = self.contact_for(&caller_user);
            let mut managers = Vec::new();
            if let Some(d) = &self.dispatcher {
                let key = switchboard_routing::RouteKey {
                    channel: Some(Channel::Sip),
                    line: Some(&number),
                    campaign_source: None,
                    language: None,
                };
                match d
                    .plan_call(
                        &contact.key,
                        &key,
                        crate::dispatch::now_ms(),
                        &[],
                        crate::dispatch::now_ms(),
                    )
                    .await
                {
                    Ok((_, ids)) => managers = ids,
                    Err(e) => {
                        warn!(error = %e, "routing state unavailable; using the number's manager")
                    }
                }
            }
            let configured = self.numbers.iter().find(|n| n.number == number);
            if let Some(n) = configured
                && !managers.contains(&n.manager)
            {
                managers.push(n.manager.clone());
            }
            if managers.is_empty() {
                return None;
            }
            let mut candidates = Vec::new();
            for m in managers {
                for (ext, _) in users
                    .by_extension
                    .iter()
                    .filter(|(_, u)| u.manager == m && u.trunk.is_none())
                {
                    candidates.push(self.candidate(Some(m.clone()), ext).await);
                }
            }
            let record = self
                .trunks
                .iter()
                .find(|t| t.name == trunk)
                .and_then(|t| t.record);
            return Some(NewCall {
                direction: "inbound",
                trunk: Some(trunk),
                contact,
                dialled: number,
                from_extension: None,
                candidates,
                record,
            });
        }
        let from = extension?;
        if let Some(target) = users
            .by_extension
            .get(dialled)
            .filter(|u| u.trunk.is_none())
        {
            let manager = (!target.manager.is_empty()).then(|| target.manager.clone());
            return Some(NewCall {
                direction: "internal",
                trunk: None,
                contact: Contact {
                    key: ContactKey::account(Channel::Sip, &from).into_string(),
                    phone: None,
                    email: None,
                    user_id: Some(from.clone()),
                    name: None,
                },
                dialled: dialled.to_owned(),
                record: users.by_extension.get(&from).and_then(|u| u.record),
                from_extension: Some(from),
                candidates: vec![self.candidate(manager, dialled).await],
            });
        }
        // A manager calling out: through the first trunk that takes calls.
        let number = switchboard_adapters::contact::normalize_phone(dialled, self.country).ok()?;
        let trunk = self.trunks.iter().find(|t| !t.outbound.is_empty())?;
        let addr: SocketAddr = trunk.outbound.parse().ok()?;
        let manager = users
            .by_extension
            .get(&from)
            .map(|u| u.manager.clone())
            .filter(|m| !m.is_empty());
        // The placing manager's setting wins over the trunk's.
        let record = users
            .by_extension
            .get(&from)
            .and_then(|u| u.record)
            .or(trunk.record);
        let mut call = NewCall {
            direction: "outbound",
            trunk: Some(trunk.name.clone()),
            contact: self.contact_for(&number),
            dialled: number.clone(),
            from_extension: Some(from),
            candidates: vec![Candidate {
                manager: None,
                extension: None,
                targets: vec![Target::direct(format!("sip:{number}@{addr}"), addr)],
                record,
            }],
            record,
        };
        call.candidates[0].manager = manager;
        Some(call)
    }

    /// An extension's registered contacts, each with where to send to: the
    /// first hop of the binding's Path; else the contact's own address
    /// unless it is behind NAT (its IP differs from the one the REGISTER
    /// came from), then the REGISTER's source.
    async fn candidate(&self, manager: Option<String>, extension: &str) -> Candidate {
        let bindings = self
            .location
            .lookup(extension, unix_now())
            .await
            .unwrap_or_default();
        let targets = bindings
            .iter()
            .map(|b| {
                let route: Vec<String> = b
                    .path
                    .iter()
                    .flat_map(|p| split_list(p))
                    .map(str::to_owned)
                    .collect();
                // Through the first Path hop when there is one (RFC 3327).
                let first_hop = route
                    .first()
                    .and_then(|hop| NameAddr::parse(hop, true).ok())
                    .and_then(|hop| target_addr(&hop.uri));
                // A phone registered over TCP or TLS is reached down the
                // connection it registered on (the flow, as RFC 5626 does).
                let transport = if route.is_empty() {
                    b.transport
                } else {
                    Transport::Udp
                };
                let flow = transport.reliable().then_some(b.received);
                let addr = first_hop.or(flow).unwrap_or_else(|| {
                    Uri::parse(&b.contact)
                        .ok()
                        .and_then(|u| target_addr(&u))
                        .filter(|a| a.ip() == b.received.ip())
                        .unwrap_or(b.received)
                });
                Target {
                    uri: b.contact.to_string(),
                    addr,
                    route,
                    transport,
                }
            })
            .collect();
        Candidate {
            manager,
            extension: Some(extension.to_owned()),
            targets,
            record: self
                .users()
                .by_extension
                .get(extension)
                .and_then(|u| u.record),
        }
    }

    /// The customer as the feed knows them: E.164 when the caller id is a
    /// number, else the SIP user.
    fn contact_for(&self, user: &str) -> Contact {
        match switchboard_adapters::contact::normalize_phone(user, self.country) {
            Ok(e164) => Contact {
                key: ContactKey::phone(&e164).into_string(),
                phone: Some(e164),
                email: None,
                user_id: None,
                name: None,
            },
            Err(_) => Contact {
                key: ContactKey::account(Channel::Sip, user).into_string(),
                phone: None,
                email: None,
                user_id: Some(user.to_owned()),
                name: None,
            },
        }
    }

    fn challenge(&self, req: &Message, code: u16, stale: bool, src: SocketAddr) -> Message {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let nonce = self.nonces.issue(unix_now(), serial);
        self.counts[(serial % NONCE_SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .issued(serial / NONCE_SHARDS as u64);
        let mut r = self.reply(req, code, src);
        let header = if code == 407 {
            "proxy-authenticate"
        } else {
            "www-authenticate"
        };
        for alg in &self.algorithms {
            r.push_header(header, digest::challenge(*alg, &self.realm, &nonce, stale));
        }
        r
    }

    fn authenticate(&self, req: &Message, header: &str, src: SocketAddr, now_ms: u64) -> Auth {
        let mut offered = None;
        for value in req
            .headers
            .iter()
            .filter(|(n, _)| n == header)
            .map(|(_, v)| v)
        {
            match Credentials::parse(value) {
                Ok(Some(c)) if c.realm == self.realm => {
                    offered = Some(c);
                    break;
                }
                Ok(_) => {}
                Err(_) => return self.failed(src, now_ms, "malformed credentials"),
            }
        }
        let Some(c) = offered else {
            return Auth::Challenge { stale: false };
        };
        let Some(alg) = c.algorithm().filter(|a| self.algorithms.contains(a)) else {
            return Auth::Challenge { stale: false };
        };
        let now = unix_now();
        match self.nonces.check(&c.nonce, now) {
            NonceCheck::Fresh { .. } => {}
            NonceCheck::Stale => return Auth::Challenge { stale: true },
            NonceCheck::Unknown => return Auth::Challenge { stale: false },
        }
        let Some(nc) = c.nonce_count() else {
            return Auth::Challenge { stale: false };
        };
        let users = self.users();
        let Some(user) = users.by_extension.get(&*c.username) else {
            // Same work as for a known user, then the same answer.
            let _ = digest::response(alg, "0", &c, req.method().unwrap_or(""));
            return self.failed(src, now_ms, "unknown user");
        };
        let ha1 = match alg {
            Algorithm::Md5 => &user.ha1_md5,
            Algorithm::Sha256 => &user.ha1_sha256,
        };
        let expected = digest::response(alg, ha1, &c, req.method().unwrap_or(""));
        if !digest::constant_time_eq(expected.as_str().as_bytes(), c.response.as_bytes()) {
            return self.failed(src, now_ms, "wrong password");
        }
        let Some(serial) = Nonces::serial(&c.nonce) else {
            return Auth::Challenge { stale: false };
        };
        let branch = fnv(&[req.top_branch().unwrap_or(""), req.call_id().unwrap_or("")]);
        let check = self.counts[(serial % NONCE_SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(serial / NONCE_SHARDS as u64, nc, branch);
        match check {
            CountCheck::Advanced | CountCheck::Retransmission => Auth::Ok(c.username.into_owned()),
            CountCheck::Forgotten => Auth::Challenge { stale: true },
            CountCheck::Replay => {
                m::SIP_AUTH_FAILURES.with_label_values(&["replay"]).inc();
                Auth::Challenge { stale: false }
            }
        }
    }

    fn failed(&self, src: SocketAddr, now_ms: u64, why: &'static str) -> Auth {
        m::SIP_AUTH_FAILURES.with_label_values(&[why]).inc();
        if self.guard.auth_failed(src.ip(), now_ms) {
            m::SIP_BANS.inc();
            warn!(source = %src.ip(), "banned after repeated SIP authentication failures");
        }
        Auth::Failed
    }

    async fn register(
        &self,
        req: &Message,
        src: SocketAddr,
        transport: Transport,
        now_ms: u64,
    ) -> Message {
        let reg = match registrar::interpret(req, &self.policy) {
            Ok(r) => r,
            Err(RegisterError::Bad(why)) => {
                let mut r = self.reply(req, 400, src);
                r.push_header(
                    "warning",
                    format!("399 switchboard \"{}\"", why.replace('"', "'")),
                );
                return r;
            }
            Err(RegisterError::TooBrief { min_s }) => {
                let mut r = self.reply(req, 423, src);
                r.push_header("min-expires", min_s.to_string());
                return r;
            }
        };
        if !self.domains.is_empty() && !self.domains.iter().any(|d| *d == *reg.domain) {
            return self.reply(req, 403, src);
        }
        let username = match self.authenticate(req, "authorization", src, now_ms) {
            Auth::Ok(u) => u,
            Auth::Challenge { stale } => return self.challenge(req, 401, stale, src),
            Auth::Failed => return self.challenge(req, 401, false, src),
        };
        if *username != *reg.user {
            // Authenticated, but for another extension's address of record.
            return self.reply(req, 403, src);
        }
        let now = unix_now();
        let update = Update {
            aor: &reg.user,
            call_id: reg.call_id,
            cseq: reg.cseq,
            change: &reg.change,
            received: src,
            transport,
            path: &reg.path,
            now,
        };
        let updated = match self.location.update(&update).await {
            Ok(u) => u,
            Err(LocationError::OutOfOrder) => {
                let mut r = self.reply(req, 500, src);
                r.push_header("warning", "399 switchboard \"out-of-order REGISTER\"");
                return r;
            }
            Err(e) => {
                warn!(error = %e, "location service unavailable");
                let mut r = self.reply(req, 503, src);
                r.push_header("retry-after", "5");
                return r;
            }
        };
        let registered = !updated.bindings.is_empty();
        if registered != updated.was_registered {
            m::SIP_REGISTRATIONS.set(i64::try_from(self.location.count()).unwrap_or(i64::MAX));
            info!(extension = %reg.user, registered, source = %src, "SIP registration changed");
            if let Some(d) = &self.dispatcher
                && let Some(user) = self.users().by_extension.get(&*reg.user)
                && !user.manager.is_empty()
                && let Err(e) = d.set_registered(&user.manager, registered).await
            {
                warn!(error = %e, "could not record the manager's registration for routing");
            }
        }
        let mut r = self.reply(req, 200, src);
        for b in &updated.bindings {
            let mut contact = String::with_capacity(b.contact.len() + 20);
            contact.push('<');
            contact.push_str(&b.contact);
            contact.push_str(">;expires=");
            contact.push_str(itoa::Buffer::new().format(b.expires_at.saturating_sub(now)));
            r.push_header("contact", contact);
        }
        for p in &reg.path {
            r.push_header("path", (*p).to_owned());
        }
        r.push_header("date", httpdate(now));
        r
    }

    /// Registration changes for managers whose bindings expired.
    pub async fn expire(&self) {
        let emptied = self.location.expire(unix_now()).await;
        m::SIP_REGISTRATIONS.set(i64::try_from(self.location.count()).unwrap_or(i64::MAX));
        m::SIP_BANNED.set(i64::try_from(self.guard.banned(self.monotonic_ms())).unwrap_or(0));
        self.guard.sweep(self.monotonic_ms());
        let Some(d) = &self.dispatcher else { return };
        let users = self.users();
        for aor in emptied {
            if let Some(u) = users.by_extension.get(&aor)
                && !u.manager.is_empty()
            {
                let _ = d.set_registered(&u.manager, false).await;
            }
        }
    }
}

/// RFC 7231 date (SIP's Date header, RFC 3261 §20.17), formatted once a
/// second per thread.
fn httpdate(unix: Secs) -> Text {
    thread_local! {
        static LAST: std::cell::RefCell<(Secs, Text)> =
            std::cell::RefCell::new((0, Text::default()));
    }
    LAST.with_borrow_mut(|(at, text)| {
        if *at != unix || text.is_empty() {
            *at = unix;
            *text = Text::from(std::sync::Arc::<str>::from(format_httpdate(unix)));
        }
        text.clone()
    })
}

fn format_httpdate(unix: Secs) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix).unwrap_or(0))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.format(&fmt).unwrap_or_default()
}
