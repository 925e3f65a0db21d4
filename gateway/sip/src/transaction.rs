//! Transactions (RFC 3261 §17, with RFC 6026's Accepted state): the four
//! state machines, without sockets or clocks. The caller feeds messages and
//! the current time in milliseconds and carries out the returned actions;
//! [`ClientTx::next_timer`] / [`ServerTx::next_timer`] say when to call
//! `on_timer` next. Over reliable transports the retransmission timers do
//! not run and the wait timers are zero, as §17 asks.
//!
//! The INVITE server transaction also does one job RFC 6026 leaves to the
//! transaction user: over UDP it retransmits a 2xx (T1 doubling up to T2)
//! until the ACK arrives or Timer L ends it (RFC 3261 §13.3.1.4).

use bytes::Bytes;

/// Timer values in milliseconds (§17.1.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    pub t1: u64,
    pub t2: u64,
    pub t4: u64,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: 500,
            t2: 4000,
            t4: 5000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Invite,
    NonInvite,
}

/// What the transport and the transaction user must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send these bytes to the transaction's peer (a retransmission, an
    /// ACK for a failure response, or a cached response).
    Send(Bytes),
    /// Hand this response to the transaction user (client side).
    Response(u16),
    /// Timer B/F (client) or H (server) fired: the peer never answered.
    Timeout,
    /// The transaction is over; forget it.
    Terminated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// INVITE: Calling; non-INVITE: Trying.
    Calling,
    Proceeding,
    Completed,
    /// 2xx to an INVITE (RFC 6026): later 2xx retransmissions still reach
    /// the transaction user, which ACKs each.
    Accepted,
    Terminated,
}

/// The three timers every transaction runs: retransmit (A/E/G, with its
/// current interval), give up (B/F/H) and leave a waiting state
/// (D/I/J/K/L/M).
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    retransmit_at: Option<u64>,
    interval: u64,
    timeout_at: Option<u64>,
    end_at: Option<u64>,
}

/// Which timer [`Deadlines::due`] found due, in the order they win.
enum Due {
    Timeout,
    End,
    Retransmit,
}

impl Deadlines {
    fn next(&self) -> Option<u64> {
        [self.retransmit_at, self.timeout_at, self.end_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// The peer answered: no more retransmissions, no giving up.
    fn answered(&mut self) {
        self.retransmit_at = None;
        self.timeout_at = None;
    }

    /// The due timer at `now`, if any; the timeout and end timers stop
    /// every timer, the retransmission one waits for [`Self::again`].
    fn due(&mut self, now: u64) -> Option<Due> {
        if self.timeout_at.is_some_and(|t| now >= t) {
            self.answered();
            self.end_at = None;
            return Some(Due::Timeout);
        }
        if self.end_at.is_some_and(|t| now >= t) {
            self.end_at = None;
            return Some(Due::End);
        }
        self.retransmit_at
            .is_some_and(|t| now >= t)
            .then_some(Due::Retransmit)
    }

    /// Schedules the next retransmission `interval` after `now`.
    fn again(&mut self, now: u64, interval: u64) {
        self.interval = interval;
        self.retransmit_at = Some(now + interval);
    }
}

/// A client transaction.
#[derive(Debug, Clone)]
pub struct ClientTx {
    kind: Kind,
    reliable: bool,
    timers: Timers,
    request: Bytes,
    state: ClientState,
    /// A/E retransmit, B/F give up, D/K/M leave Completed/Accepted.
    t: Deadlines,
    /// The ACK sent for a failure response (INVITE only), resent on its
    /// retransmissions.
    ack: Option<Bytes>,
}

impl ClientTx {
    /// Starts a transaction whose request (already sent once by the caller)
    /// is `request`.
    pub fn new(kind: Kind, request: Bytes, reliable: bool, timers: Timers, now: u64) -> Self {
        ClientTx {
            kind,
            reliable,
            timers,
            request,
            state: ClientState::Calling,
            t: Deadlines {
                retransmit_at: (!reliable).then_some(now + timers.t1),
                interval: timers.t1,
                timeout_at: Some(now + 64 * timers.t1),
                end_at: None,
            },
            ack: None,
        }
    }

    pub fn state(&self) -> ClientState {
        self.state
    }

    /// When `on_timer` must be called next.
    pub fn next_timer(&self) -> Option<u64> {
        self.t.next()
    }

    /// A response arrived. `ack` builds the ACK for a failure response to
    /// an INVITE (§17.1.1.3), called only when one is needed.
    pub fn on_response(&mut self, code: u16, now: u64, ack: impl FnOnce() -> Bytes) -> Vec<Action> {
        let provisional = code < 200;
        match (self.kind, self.state) {
            (_, ClientState::Terminated) => vec![],
            (Kind::Invite, ClientState::Calling | ClientState::Proceeding) => {
                if provisional {
                    self.state = ClientState::Proceeding;
                    self.t.answered();
                    vec![Action::Response(code)]
                } else if code < 300 {
                    self.state = ClientState::Accepted;
                    self.t.answered();
                    self.t.end_at = Some(now + 64 * self.timers.t1);
                    vec![Action::Response(code)]
                } else {
                    let ack = ack();
                    self.ack = Some(ack.clone());
                    self.state = ClientState::Completed;
                    self.t.answered();
                    self.t.end_at = Some(now + if self.reliable { 0 } else { 32_000 });
                    vec![Action::Send(ack), Action::Response(code)]
                }
            }
            (Kind::Invite, ClientState::Completed) => {
                // A retransmitted failure response: ACK it again.
                self.ack.clone().map(Action::Send).into_iter().collect()
            }
            (Kind::Invite, ClientState::Accepted) => {
                if (200..300).contains(&code) {
                    vec![Action::Response(code)]
                } else {
                    vec![]
                }
            }
            (Kind::NonInvite, ClientState::Calling | ClientState::Proceeding) => {
                if provisional {
                    self.state = ClientState::Proceeding;
                    vec![Action::Response(code)]
                } else {
                    self.state = ClientState::Completed;
                    self.t.answered();
                    self.t.end_at = Some(now + if self.reliable { 0 } else { self.timers.t4 });
                    vec![Action::Response(code)]
                }
            }
            (Kind::NonInvite, _) => vec![],
        }
    }

    /// Time passed; fires whatever timers are due.
    pub fn on_timer(&mut self, now: u64) -> Vec<Action> {
        if self.state == ClientState::Terminated {
            return vec![];
        }
        match self.t.due(now) {
            Some(Due::Timeout) => {
                self.state = ClientState::Terminated;
                vec![Action::Timeout, Action::Terminated]
            }
            Some(Due::End) => {
                self.state = ClientState::Terminated;
                vec![Action::Terminated]
            }
            Some(Due::Retransmit) => {
                let interval = match (self.kind, self.state) {
                    (Kind::Invite, _) => self.t.interval * 2,
                    (Kind::NonInvite, ClientState::Proceeding) => self.timers.t2,
                    (Kind::NonInvite, _) => (self.t.interval * 2).min(self.timers.t2),
                };
                self.t.again(now, interval);
                vec![Action::Send(self.request.clone())]
            }
            None => vec![],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Non-INVITE only: no response sent yet.
    Trying,
    Proceeding,
    Completed,
    /// INVITE: ACK to a failure response received.
    Confirmed,
    /// INVITE: a 2xx was sent (RFC 6026); retransmissions of the INVITE
    /// are absorbed.
    Accepted,
    Terminated,
}

/// A server transaction.
#[derive(Debug, Clone)]
pub struct ServerTx {
    kind: Kind,
    reliable: bool,
    timers: Timers,
    state: ServerState,
    last_response: Option<Bytes>,
    /// G retransmits a failure response, H gives up waiting for its ACK,
    /// I/J/L leave the state.
    t: Deadlines,
}

impl ServerTx {
    pub fn new(kind: Kind, reliable: bool, timers: Timers) -> Self {
        ServerTx {
            kind,
            reliable,
            timers,
            state: match kind {
                Kind::Invite => ServerState::Proceeding,
                Kind::NonInvite => ServerState::Trying,
            },
            last_response: None,
            t: Deadlines {
                retransmit_at: None,
                interval: timers.t1,
                timeout_at: None,
                end_at: None,
            },
        }
    }

    pub fn state(&self) -> ServerState {
        self.state
    }

    pub fn next_timer(&self) -> Option<u64> {
        self.t.next()
    }

    /// The request came again: what to resend (absorbing it otherwise).
    pub fn on_retransmission(&mut self) -> Vec<Action> {
        match self.state {
            ServerState::Proceeding | ServerState::Completed => self
                .last_response
                .clone()
                .map(Action::Send)
                .into_iter()
                .collect(),
            _ => vec![],
        }
    }

    /// An ACK matched this (INVITE) transaction.
    pub fn on_ack(&mut self, now: u64) -> Vec<Action> {
        if self.kind == Kind::Invite && self.state == ServerState::Accepted {
            // The 2xx arrived: stop retransmitting it.
            self.t.retransmit_at = None;
        }
        if self.kind == Kind::Invite && self.state == ServerState::Completed {
            self.state = ServerState::Confirmed;
            self.t.answered();
            self.t.end_at = Some(now + if self.reliable { 0 } else { self.timers.t4 });
        }
        vec![]
    }

    /// The transaction user sends a response.
    pub fn respond(&mut self, code: u16, bytes: Bytes, now: u64) -> Vec<Action> {
        if matches!(
            self.state,
            ServerState::Terminated | ServerState::Confirmed | ServerState::Accepted
        ) {
            return vec![];
        }
        if self.state == ServerState::Completed {
            return vec![];
        }
        self.last_response = Some(bytes.clone());
        let mut out = vec![Action::Send(bytes)];
        if code < 200 {
            self.state = ServerState::Proceeding;
            return out;
        }
        match self.kind {
            Kind::Invite if code < 300 => {
                self.state = ServerState::Accepted;
                if !self.reliable {
                    self.t.again(now, self.timers.t1);
                }
                self.t.end_at = Some(now + 64 * self.timers.t1);
            }
            Kind::Invite => {
                self.state = ServerState::Completed;
                if !self.reliable {
                    self.t.again(now, self.timers.t1);
                }
                self.t.timeout_at = Some(now + 64 * self.timers.t1);
            }
            Kind::NonInvite => {
                self.state = ServerState::Completed;
                self.t.end_at = Some(
                    now + if self.reliable {
                        0
                    } else {
                        64 * self.timers.t1
                    },
                );
                if self.reliable {
                    self.state = ServerState::Terminated;
                    out.push(Action::Terminated);
                }
            }
        }
        out
    }

    pub fn on_timer(&mut self, now: u64) -> Vec<Action> {
        if self.state == ServerState::Terminated {
            return vec![];
        }
        match self.t.due(now) {
            Some(Due::Timeout) => {
                self.state = ServerState::Terminated;
                vec![Action::Timeout, Action::Terminated]
            }
            Some(Due::End) => {
                self.state = ServerState::Terminated;
                vec![Action::Terminated]
            }
            Some(Due::Retransmit) => {
                self.t.again(now, (self.t.interval * 2).min(self.timers.t2));
                self.last_response
                    .clone()
                    .map(Action::Send)
                    .into_iter()
                    .collect()
            }
            None => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sends(actions: &[Action]) -> usize {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Send(_)))
            .count()
    }

    /// Runs the clock from `from` to `to` in 1 ms steps at the transaction's
    /// own timer instants, collecting when each action happened.
    fn run_client(tx: &mut ClientTx, to: u64) -> Vec<(u64, Action)> {
        let mut out = Vec::new();
        while let Some(t) = tx.next_timer() {
            if t > to {
                break;
            }
            out.extend(tx.on_timer(t).into_iter().map(|a| (t, a)));
        }
        out
    }

    #[test]
    fn invite_client_retransmits_with_timer_a_and_gives_up_at_timer_b() {
        let mut tx = ClientTx::new(
            Kind::Invite,
            Bytes::from_static(b"INVITE"),
            false,
            Timers::default(),
            0,
        );
        let events = run_client(&mut tx, 40_000);
        let resent: Vec<u64> = events
            .iter()
            .filter(|(_, a)| matches!(a, Action::Send(_)))
            .map(|(t, _)| *t)
            .collect();
        // A doubles from T1: 500, 1500, 3500, 7500, 15500, 31500 ms.
        assert_eq!(resent, [500, 1500, 3500, 7500, 15_500, 31_500]);
        assert_eq!(
            events.last().map(|(t, a)| (*t, a.clone())),
            Some((32_000, Action::Terminated))
        );
        assert!(
            events
                .iter()
                .any(|(t, a)| *t == 32_000 && *a == Action::Timeout)
        );
        assert_eq!(tx.state(), ClientState::Terminated);
    }

    #[test]
    fn invite_client_acks_failures_and_absorbs_their_retransmissions() {
        let mut tx = ClientTx::new(
            Kind::Invite,
            Bytes::from_static(b"INVITE"),
            false,
            Timers::default(),
            0,
        );
        assert_eq!(
            tx.on_response(180, 100, || unreachable!()),
            vec![Action::Response(180)]
        );
        // Proceeding: no more retransmissions, no timer B.
        assert_eq!(tx.next_timer(), None);
        let acts = tx.on_response(486, 5000, || Bytes::from_static(b"ACK"));
        assert_eq!(
            acts,
            vec![
                Action::Send(Bytes::from_static(b"ACK")),
                Action::Response(486)
            ]
        );
        assert_eq!(tx.state(), ClientState::Completed);
        // The 486 again: the same ACK again, not passed up.
        assert_eq!(
            tx.on_response(486, 6000, || unreachable!()),
            vec![Action::Send(Bytes::from_static(b"ACK"))]
        );
        // Timer D: 32 s.
        assert_eq!(tx.next_timer(), Some(37_000));
        assert_eq!(tx.on_timer(37_000), vec![Action::Terminated]);
    }

    #[test]
    fn invite_client_accepts_2xx_retransmissions_for_the_tu() {
        let mut tx = ClientTx::new(
            Kind::Invite,
            Bytes::from_static(b"INVITE"),
            true,
            Timers::default(),
            0,
        );
        // Reliable: no timer A.
        assert_eq!(tx.next_timer(), Some(32_000));
        assert_eq!(
            tx.on_response(200, 10, || unreachable!()),
            vec![Action::Response(200)]
        );
        assert_eq!(tx.state(), ClientState::Accepted);
        assert_eq!(
            tx.on_response(200, 20, || unreachable!()),
            vec![Action::Response(200)]
        );
        assert_eq!(tx.on_timer(10 + 32_000), vec![Action::Terminated]);
    }

    #[test]
    fn non_invite_client_caps_timer_e_at_t2() {
        let mut tx = ClientTx::new(
            Kind::NonInvite,
            Bytes::from_static(b"BYE"),
            false,
            Timers::default(),
            0,
        );
        let events = run_client(&mut tx, 40_000);
        let resent: Vec<u64> = events
            .iter()
            .filter(|(_, a)| matches!(a, Action::Send(_)))
            .map(|(t, _)| *t)
            .collect();
        // 500, 1000, 2000, 4000, then every 4000 until F at 32000.
        assert_eq!(
            resent,
            [
                500, 1500, 3500, 7500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500
            ]
        );
        assert!(
            events
                .iter()
                .any(|(t, a)| *t == 32_000 && *a == Action::Timeout)
        );

        let mut tx = ClientTx::new(
            Kind::NonInvite,
            Bytes::from_static(b"BYE"),
            false,
            Timers::default(),
            0,
        );
        assert_eq!(
            tx.on_response(200, 300, || unreachable!()),
            vec![Action::Response(200)]
        );
        // Timer K = T4, and later responses are absorbed.
        assert_eq!(tx.next_timer(), Some(5300));
        assert!(tx.on_response(200, 400, || unreachable!()).is_empty());
        assert_eq!(tx.on_timer(5300), vec![Action::Terminated]);
    }

    #[test]
    fn invite_server_retransmits_failures_until_ack_then_absorbs() {
        let mut tx = ServerTx::new(Kind::Invite, false, Timers::default());
        assert_eq!(sends(&tx.respond(100, Bytes::from_static(b"100"), 0)), 1);
        // A retransmitted INVITE gets the provisional again.
        assert_eq!(
            tx.on_retransmission(),
            vec![Action::Send(Bytes::from_static(b"100"))]
        );
        assert_eq!(sends(&tx.respond(486, Bytes::from_static(b"486"), 1000)), 1);
        // Timer G: 1500, 2500, 4500 (doubling), then ACK.
        assert_eq!(
            tx.on_timer(1500),
            vec![Action::Send(Bytes::from_static(b"486"))]
        );
        assert_eq!(tx.next_timer(), Some(2500));
        assert_eq!(sends(&tx.on_timer(2500)), 1);
        assert_eq!(tx.next_timer(), Some(4500));
        tx.on_ack(3000);
        assert_eq!(tx.state(), ServerState::Confirmed);
        // Timer I = T4, nothing resent meanwhile.
        assert_eq!(tx.next_timer(), Some(8000));
        assert!(tx.on_retransmission().is_empty());
        assert_eq!(tx.on_timer(8000), vec![Action::Terminated]);
    }

    #[test]
    fn invite_server_times_out_without_ack_at_timer_h() {
        let mut tx = ServerTx::new(Kind::Invite, false, Timers::default());
        tx.respond(480, Bytes::from_static(b"480"), 0);
        let mut t = 0;
        let mut resent = 0;
        while let Some(next) = tx.next_timer() {
            t = next;
            let acts = tx.on_timer(t);
            resent += sends(&acts);
            if acts.contains(&Action::Timeout) {
                break;
            }
        }
        assert_eq!(t, 32_000);
        // G: 500, 1500, 3500, 7500, 11500, ... 31500 (capped at T2).
        assert_eq!(resent, 10);
    }

    #[test]
    fn non_invite_server_caches_its_final_response_for_timer_j() {
        let mut tx = ServerTx::new(Kind::NonInvite, false, Timers::default());
        // Trying: a retransmission is absorbed silently.
        assert!(tx.on_retransmission().is_empty());
        tx.respond(200, Bytes::from_static(b"200"), 100);
        assert_eq!(
            tx.on_retransmission(),
            vec![Action::Send(Bytes::from_static(b"200"))]
        );
        assert_eq!(tx.next_timer(), Some(32_100));
        assert_eq!(tx.on_timer(32_100), vec![Action::Terminated]);
        // Over TCP it ends at once.
        let mut tcp = ServerTx::new(Kind::NonInvite, true, Timers::default());
        assert_eq!(
            tcp.respond(200, Bytes::from_static(b"200"), 0).last(),
            Some(&Action::Terminated)
        );
    }

    #[test]
    fn invite_server_2xx_enters_accepted_and_absorbs_the_invite() {
        let mut tx = ServerTx::new(Kind::Invite, false, Timers::default());
        tx.respond(200, Bytes::from_static(b"200"), 0);
        assert_eq!(tx.state(), ServerState::Accepted);
        assert!(tx.on_retransmission().is_empty());
        // The 2xx goes again at 500, 1500, 3500 ms until the ACK comes.
        let ok = Action::Send(Bytes::from_static(b"200"));
        assert_eq!(tx.next_timer(), Some(500));
        assert_eq!(tx.on_timer(500), vec![ok.clone()]);
        assert_eq!(tx.next_timer(), Some(1500));
        assert_eq!(tx.on_timer(1500), vec![ok]);
        assert!(tx.on_ack(2000).is_empty());
        assert_eq!(tx.next_timer(), Some(32_000));
        assert_eq!(tx.on_timer(32_000), vec![Action::Terminated]);
    }

    #[test]
    fn an_unacknowledged_2xx_is_resent_up_to_t2_apart_until_timer_l() {
        let mut tx = ServerTx::new(Kind::Invite, false, Timers::default());
        tx.respond(200, Bytes::from_static(b"200"), 0);
        let mut sends = Vec::new();
        while let Some(t) = tx.next_timer() {
            if tx.on_timer(t).contains(&Action::Terminated) {
                assert_eq!(t, 32_000);
                break;
            }
            sends.push(t);
        }
        assert_eq!(&sends[..4], &[500, 1500, 3500, 7500]);
        assert!(sends.windows(2).all(|w| w[1] - w[0] <= 4000));
        // Over TCP the transport carries it: no retransmission.
        let mut tcp = ServerTx::new(Kind::Invite, true, Timers::default());
        tcp.respond(200, Bytes::from_static(b"200"), 0);
        assert_eq!(tcp.next_timer(), Some(32_000));
    }
}
