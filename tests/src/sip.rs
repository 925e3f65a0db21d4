//! A small SIP user agent for the end-to-end tests: sends requests over UDP
//! from a loopback address of the test's choosing (or over TCP with
//! [`SipStream`]), answers digest challenges, and reads replies with a
//! timeout (a dropped request is `None`). Also the SIPp and Kamailio peers
//! the tests and benchmarks share.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use switchboard_sip::digest::{self, Algorithm, Credentials};
use switchboard_sip::message::{Message, param_value, parse};
use tokio::net::UdpSocket;

/// Where the checked-in peer files live (`tests/peers`).
pub fn peers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers")
}

#[derive(Debug)]
pub struct SipClient {
    socket: UdpSocket,
    pub server: SocketAddr,
    counter: u64,
}

impl SipClient {
    /// A client on an ephemeral port of `ip` (any 127.0.0.0/8 address works
    /// on Linux, so tests can play several sources).
    pub async fn bind(ip: IpAddr, server: SocketAddr) -> Result<Self> {
        let socket = UdpSocket::bind((ip, 0))
            .await
            .context("binding the SIP test client")?;
        Ok(Self {
            socket,
            server,
            counter: 0,
        })
    }

    pub fn local(&self) -> SocketAddr {
        self.socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Sends raw bytes and waits up to `wait` for one reply.
    pub async fn exchange(&self, bytes: &[u8], wait: Duration) -> Result<Option<Message>> {
        self.socket.send_to(bytes, self.server).await?;
        self.recv(wait).await
    }

    /// Sends raw bytes without waiting.
    pub async fn send(&self, bytes: &[u8]) -> Result<()> {
        self.socket.send_to(bytes, self.server).await?;
        Ok(())
    }

    pub async fn recv(&self, wait: Duration) -> Result<Option<Message>> {
        let mut buf = vec![0u8; 65536];
        match tokio::time::timeout(wait, self.socket.recv_from(&mut buf)).await {
            Err(_) => Ok(None),
            Ok(r) => {
                let (n, _) = r?;
                Ok(Some(
                    parse(&buf[..n]).map_err(|e| anyhow!("unparseable reply: {e}"))?,
                ))
            }
        }
    }

    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// A request from this client, with fresh branch and the given headers.
    pub fn request(
        &mut self,
        method: &str,
        uri: &str,
        user: &str,
        call_id: &str,
        cseq: u32,
        extra: &str,
    ) -> String {
        let n = self.next();
        let local = self.local();
        format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-t{n}-{cseq};rport\r\nMax-Forwards: 70\r\n\
From: <sip:{user}@switchboard.test>;tag=t{n}\r\nTo: <sip:{user}@switchboard.test>\r\nCall-ID: {call_id}\r\n\
CSeq: {cseq} {method}\r\n{extra}Content-Length: 0\r\n\r\n"
        )
    }

    /// REGISTER `user` with `password` (answering the challenge with the
    /// first algorithm offered); returns the final reply.
    pub async fn register(&mut self, user: &str, password: &str, extra: &str) -> Result<Message> {
        let call_id = format!("reg-{user}-{}", self.local().port());
        self.register_in(user, password, &call_id, 1, extra).await
    }

    pub async fn register_in(
        &mut self,
        user: &str,
        password: &str,
        call_id: &str,
        cseq: u32,
        extra: &str,
    ) -> Result<Message> {
        Ok(self
            .register_signed(user, password, call_id, cseq, extra)
            .await?
            .1)
    }

    /// Like [`Self::register_in`], also returning the signed REGISTER as
    /// sent (empty when no challenge came), for replaying it.
    pub async fn register_signed(
        &mut self,
        user: &str,
        password: &str,
        call_id: &str,
        cseq: u32,
        extra: &str,
    ) -> Result<(String, Message)> {
        let uri = format!("sip:{}", self.server);
        let first = self.request("REGISTER", &uri, user, call_id, cseq, extra);
        let challenge = self
            .exchange(first.as_bytes(), Duration::from_secs(2))
            .await?
            .ok_or_else(|| anyhow!("no answer to REGISTER"))?;
        if challenge.status() != Some(401) {
            return Ok((String::new(), challenge));
        }
        let auth = authorization(
            &challenge,
            "www-authenticate",
            "REGISTER",
            &uri,
            user,
            password,
        )?;
        let second = self.request(
            "REGISTER",
            &uri,
            user,
            call_id,
            cseq + 1,
            &format!("{extra}Authorization: {auth}\r\n"),
        );
        let reply = self
            .exchange(second.as_bytes(), Duration::from_secs(2))
            .await?
            .ok_or_else(|| anyhow!("no answer to the authenticated REGISTER"))?;
        Ok((second, reply))
    }
}

/// An Authorization value answering the first challenge in `header`.
pub fn authorization(
    challenge: &Message,
    header: &str,
    method: &str,
    uri: &str,
    user: &str,
    password: &str,
) -> Result<String> {
    let value = challenge
        .header(header)
        .ok_or_else(|| anyhow!("no {header} in the challenge"))?;
    let field = |name: &str| -> String {
        value
            .split(',')
            .find_map(|p| {
                let (k, v) = p.trim().trim_start_matches("Digest ").split_once('=')?;
                (k.trim() == name).then(|| v.trim().trim_matches('"').to_owned())
            })
            .unwrap_or_default()
    };
    let alg = Algorithm::parse(&field("algorithm")).unwrap_or(Algorithm::Md5);
    let realm = field("realm");
    let creds = Credentials {
        username: user.into(),
        realm: realm.as_str().into(),
        nonce: field("nonce").into(),
        uri: uri.into(),
        response: "".into(),
        algorithm: Some(alg.name().into()),
        qop: Some("auth".into()),
        nc: "00000001".into(),
        cnonce: "0a4f113b".into(),
    };
    let ha1 = digest::ha1(alg, user, &realm, password);
    let response = digest::response(alg, &ha1, &creds, method);
    Ok(format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{}\", uri=\"{uri}\", response=\"{response}\", algorithm={}, qop=auth, nc=00000001, cnonce=\"0a4f113b\"",
        creds.nonce,
        alg.name()
    ))
}

/// The `expires` parameter of each Contact in a REGISTER's 200.
pub fn contact_expiries(reply: &Message) -> Vec<(String, u32)> {
    reply
        .header_values("contact")
        .map(|c| {
            let uri = c
                .trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or("")
                .to_owned();
            let exp = param_value(c, "expires")
                .and_then(|e| e.parse().ok())
                .unwrap_or(0);
            (uri, exp)
        })
        .collect()
}

/// Successful and failed calls in a SIPp `-trace_stat` file (its last line).
pub fn sipp_totals(stat_csv: &std::path::Path) -> (u64, u64) {
    let stat = std::fs::read_to_string(stat_csv).unwrap_or_default();
    let mut lines = stat.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(';').collect();
    let last: Vec<&str> = lines.last().unwrap_or("").split(';').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .and_then(|i| last.get(i))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (col("SuccessfulCall(C)"), col("FailedCall(C)"))
}

/// A Kamailio started from one of `tests/peers/kamailio/*.cfg` on a free
/// port, stopped with SIGTERM (so its worker processes stop too) on drop.
#[derive(Debug)]
pub struct Kamailio {
    child: tokio::process::Child,
    pub addr: SocketAddr,
}

impl Kamailio {
    /// `edit` adjusts the configuration text; `args` follow `-f FILE`.
    pub async fn start(
        work: &std::path::Path,
        cfg: &str,
        edit: impl FnOnce(String) -> String,
        args: &[&str],
    ) -> Result<Self> {
        let port = crate::free_port()?;
        let text = std::fs::read_to_string(peers_dir().join("kamailio").join(cfg))?
            .replace("127.0.0.1:5070", &format!("127.0.0.1:{port}"));
        let file = work.join(cfg);
        std::fs::write(&file, edit(text))?;
        let child = tokio::process::Command::new("kamailio")
            .arg("-f")
            .arg(&file)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("kamailio (apt-get install kamailio)")?;
        let kamailio = Kamailio {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut probe =
            SipClient::bind(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), kamailio.addr).await?;
        loop {
            let req = probe.request(
                "OPTIONS",
                &format!("sip:{}", kamailio.addr),
                "bench",
                "ping",
                1,
                "",
            );
            if probe
                .exchange(req.as_bytes(), Duration::from_millis(200))
                .await?
                .is_some()
            {
                return Ok(kamailio);
            }
            if std::time::Instant::now() > deadline {
                return Err(anyhow!("kamailio did not answer on {}", kamailio.addr));
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// A SIP connection over TCP: messages framed by Content-Length.
#[derive(Debug)]
pub struct SipStream {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl SipStream {
    pub async fn connect(server: SocketAddr) -> Result<Self> {
        let stream = tokio::net::TcpStream::connect(server)
            .await
            .context("connecting to the SIP TCP listener")?;
        Ok(Self {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn local(&self) -> SocketAddr {
        self.stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// The next message, or `None` after `wait`.
    pub async fn recv(&mut self, wait: Duration) -> Result<Option<Message>> {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]);
                let body: usize = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(name, _)| {
                        name.trim().eq_ignore_ascii_case("content-length")
                            || name.trim().eq_ignore_ascii_case("l")
                    })
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + body {
                    let msg = parse(&self.buf[..end + 4 + body])
                        .map_err(|e| anyhow!("unparseable message: {e}"))?;
                    self.buf.drain(..end + 4 + body);
                    return Ok(Some(msg));
                }
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Ok(None),
                Ok(r) => {
                    let n = r?;
                    if n == 0 {
                        return Err(anyhow!("the server closed the connection"));
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
}

/// Where the tests read SIP messages from: a UDP client or a TCP stream.
#[allow(async_fn_in_trait)]
pub trait SipReceiver {
    /// The next message, or `None` after `wait`.
    async fn receive(&mut self, wait: Duration) -> Result<Option<Message>>;

    /// The next `method` request within 5 s, skipping anything else
    /// (responses, retransmissions of earlier requests).
    async fn next_request(&mut self, method: &str) -> Result<Message> {
        self.next_matching(method, |m| m.method() == Some(method))
            .await
    }

    /// The next final response to `method` within 5 s.
    async fn final_response(&mut self, method: &str) -> Result<Message> {
        self.next_matching(method, |m| {
            m.status().is_some_and(|c| c >= 200) && m.cseq().is_some_and(|(_, m)| m == method)
        })
        .await
    }

    async fn next_matching(
        &mut self,
        what: &str,
        wanted: impl Fn(&Message) -> bool,
    ) -> Result<Message> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let msg = self
                .receive(left)
                .await?
                .ok_or_else(|| anyhow!("nothing for {what} within 5 s"))?;
            if wanted(&msg) {
                return Ok(msg);
            }
        }
    }
}

impl SipReceiver for SipClient {
    async fn receive(&mut self, wait: Duration) -> Result<Option<Message>> {
        self.recv(wait).await
    }
}

impl SipReceiver for SipStream {
    async fn receive(&mut self, wait: Duration) -> Result<Option<Message>> {
        self.recv(wait).await
    }
}

/// SIPp on loopback with its own control port, no keyboard, working and
/// writing its files in `dir` (its complaints in `sipp.stderr`, which
/// [`sipp_finished`] reads back), killed when dropped; to be completed with
/// its target and scenario.
fn sipp(dir: &std::path::Path) -> Result<tokio::process::Command> {
    let mut cmd = tokio::process::Command::new("sipp");
    cmd.arg("-nostdin")
        .args(["-i", "127.0.0.1", "-ci", "127.0.0.1", "-cp"])
        .arg(crate::free_port()?.to_string())
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("sipp.stderr"))?)
        .kill_on_drop(true);
    Ok(cmd)
}

/// Waits (at most `within`) for a SIPp started in `dir` to end. When it did
/// not play its scenario through, says how it ended and what it wrote to
/// its standard error (why it aborted, or could not start).
pub async fn sipp_finished(
    child: &mut tokio::process::Child,
    dir: &std::path::Path,
    within: Duration,
) -> std::result::Result<(), String> {
    let status = tokio::time::timeout(within, child.wait())
        .await
        .map_err(|_| format!("SIPp still running after {within:?}"))?
        .map_err(|e| format!("SIPp: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let file = dir.join("sipp.stderr");
    let stderr = std::fs::read_to_string(&file).unwrap_or_else(|e| e.to_string());
    Err(format!(
        "SIPp {status}\n--- {}:\n{}",
        file.display(),
        stderr.trim_end()
    ))
}

/// A SIPp load process for the benchmarks ([`sipp`] with a 4 MiB socket
/// buffer, so bursts wait instead of being dropped).
pub fn sipp_load(dir: &std::path::Path) -> Result<tokio::process::Command> {
    let mut cmd = sipp(dir)?;
    cmd.args(["-buff_size", "4194304"]);
    Ok(cmd)
}

/// SIPp for one call in a test ([`sipp`] with its own media port), failing
/// when a message is `timeout` late (e.g. "20s").
pub fn sipp_once(dir: &std::path::Path, timeout: &str) -> Result<tokio::process::Command> {
    let mut cmd = sipp(dir)?;
    // SIPp binds the media port and, for video, the one two above it.
    cmd.arg("-mp").arg(crate::free_ports(3)?.to_string()).args([
        "-m",
        "1",
        "-timeout",
        timeout,
        "-timeout_error",
    ]);
    Ok(cmd)
}
