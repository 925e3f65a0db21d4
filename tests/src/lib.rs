//! Support for Switchboard's end-to-end tests and benchmarks: start the real
//! `switchboard` binary and real peers (a Kafka-protocol broker) on
//! loopback ports the OS picks, talk to them as a user would, and stop only
//! the processes started here.

pub mod budget;
pub mod doubles;
pub mod mail;
pub mod media;
pub mod sip;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The `switchboard` binary cargo built beside this test
/// (`target/<profile>/switchboard`), or `SWITCHBOARD_BIN`.
pub fn switchboard_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SWITCHBOARD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test binary> → target/<profile>/switchboard
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected test binary location {}", exe.display()))?;
    let bin = profile_dir.join("switchboard");
    if !bin.exists() {
        bail!(
            "{} does not exist; build it first (`cargo build -p switchboard`, \
             which `cargo nextest run --workspace` does)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A running `switchboard` process.
#[derive(Debug)]
pub struct Switchboard {
    child: Child,
    /// The gateway's HTTP address, when this process runs the gateway.
    pub gateway: Option<SocketAddr>,
    /// The CRM API's HTTP address, when this process runs it.
    pub crm: Option<SocketAddr>,
    /// SIP over UDP and TCP, when this process runs the gateway with SIP.
    pub sip_udp: Option<SocketAddr>,
    pub sip_tcp: Option<SocketAddr>,
    pub sip_tls: Option<SocketAddr>,
    logs: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
    /// An administrator's CRM API token, made with `crm-admin token`.
    pub token: String,
}

/// How to start `switchboard`.
#[derive(Debug, Clone)]
pub struct Launch {
    pub command: &'static str,
    pub data_dir: PathBuf,
    pub env: Vec<(String, String)>,
    pub config: Option<PathBuf>,
}

impl Launch {
    /// Both services on `data_dir`, on ports the OS picks, logging JSON.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            command: "run",
            data_dir: data_dir.to_path_buf(),
            env: Vec::new(),
            config: None,
        }
    }

    /// Starts with `--config file`.
    pub fn config(mut self, file: &Path) -> Self {
        self.config = Some(file.to_path_buf());
        self
    }

    pub fn command(mut self, command: &'static str) -> Self {
        self.command = command;
        self
    }

    /// A `SWITCHBOARD_*` override.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    fn base_command(&self) -> Result<Command> {
        let mut cmd = Command::new(switchboard_bin()?);
        if let Some(file) = &self.config {
            cmd.arg("--config").arg(file);
        }
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("SWITCHBOARD_NODE__DATA_DIR", &self.data_dir)
            .env("SWITCHBOARD_GATEWAY__HTTP_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_CRM__HTTP_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_SIP__UDP_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_SIP__TCP_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_SIP__TLS_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_LOG__FORMAT", "json")
            .env("SWITCHBOARD_LOG__LEVEL", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        Ok(cmd)
    }

    /// An administrator token for the CRM store this launch uses.
    pub async fn admin_token(&self) -> Result<String> {
        let out = self
            .base_command()?
            .args([
                "crm-admin",
                "token",
                "--user",
                "e2e-admin",
                "--role",
                "admin",
            ])
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "crm-admin token failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// Starts the process and waits until it says it is ready.
    pub async fn start(self) -> Result<Switchboard> {
        let token = if self.command == "gateway" {
            String::new()
        } else {
            self.admin_token().await?
        };
        let mut cmd = self.base_command()?;
        cmd.arg(self.command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("spawning switchboard")?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
        let sink = Arc::clone(&logs);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        let mut gateway = None;
        let mut crm = None;
        let (mut sip_udp, mut sip_tcp, mut sip_tls) = (None, None, None);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let line = tokio::time::timeout_at(deadline, rx.recv()).await;
            let Ok(Some(v)) = line else {
                let status = child.try_wait()?;
                let logs = logs.lock().unwrap_or_else(|p| p.into_inner()).join("\n");
                bail!("switchboard did not become ready (exit: {status:?}); its log:\n{logs}");
            };
            match v["message"].as_str() {
                Some("listening") => {
                    let addr: SocketAddr = v["addr"]
                        .as_str()
                        .ok_or_else(|| anyhow!("listening line without addr: {v}"))?
                        .parse()?;
                    match (v["service"].as_str(), v["transport"].as_str()) {
                        (Some("gateway"), _) => gateway = Some(addr),
                        (Some("crm-api"), _) => crm = Some(addr),
                        (Some("sip"), Some("udp")) => sip_udp = Some(addr),
                        (Some("sip"), Some("tcp")) => sip_tcp = Some(addr),
                        (Some("sip"), Some("tls")) => sip_tls = Some(addr),
                        other => bail!("unknown listener {other:?}"),
                    }
                }
                Some("switchboard is ready") => break,
                _ => {}
            }
        }
        Ok(Switchboard {
            child,
            gateway,
            crm,
            sip_udp,
            sip_tcp,
            sip_tls,
            logs,
            http: reqwest::Client::builder().no_proxy().build()?,
            token,
        })
    }
}

impl Switchboard {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Everything it logged so far.
    pub fn logs(&self) -> String {
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    pub fn gateway_url(&self, path: &str) -> Result<String> {
        Ok(format!(
            "http://{}{path}",
            self.gateway
                .ok_or_else(|| anyhow!("no gateway in this process"))?
        ))
    }

    fn crm_url(&self, path: &str) -> Result<String> {
        Ok(format!(
            "http://{}{path}",
            self.crm
                .ok_or_else(|| anyhow!("no CRM API in this process"))?
        ))
    }

    /// Posts the widget lead form as JSON; returns status and body.
    pub async fn post_lead(&self, form: &Value) -> Result<(u16, Value)> {
        let resp = self
            .http
            .post(self.gateway_url("/v1/leads/widget")?)
            .json(form)
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// A raw request to the gateway.
    pub async fn gateway_request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<reqwest::RequestBuilder> {
        Ok(self.http.request(method, self.gateway_url(path)?))
    }

    /// POST of a JSON body on the CRM API as an administrator; status and
    /// JSON body.
    pub async fn crm_post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let resp = self
            .http
            .post(self.crm_url(path)?)
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// A raw request to the CRM API as an administrator.
    pub fn crm_request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<reqwest::RequestBuilder> {
        Ok(self
            .http
            .request(method, self.crm_url(path)?)
            .bearer_auth(&self.token))
    }

    /// GET on the CRM API as an administrator; status and JSON body.
    pub async fn crm_get(&self, path: &str) -> Result<(u16, Value)> {
        let resp = self
            .http
            .get(self.crm_url(path)?)
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// GET returning text, on either service.
    pub async fn get_text(&self, service: &str, path: &str) -> Result<(u16, String)> {
        let url = match service {
            "gateway" => self.gateway_url(path)?,
            _ => self.crm_url(path)?,
        };
        let resp = self.http.get(url).bearer_auth(&self.token).send().await?;
        Ok((resp.status().as_u16(), resp.text().await?))
    }

    /// Polls the contact's timeline until it holds `id`, for at most `within`.
    pub async fn wait_for_timeline(&self, key: &str, id: &str, within: Duration) -> Result<Value> {
        let started = Instant::now();
        loop {
            let (status, body) = self
                .crm_get(&format!("/v1/contacts/{key}/timeline"))
                .await?;
            if status == 200
                && body["items"]
                    .as_array()
                    .is_some_and(|items| items.iter().any(|i| i["id"] == id))
            {
                return Ok(body);
            }
            if started.elapsed() > within {
                bail!(
                    "interaction {id} not in {key}'s timeline after {within:?} (last answer {status}: {body})"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A manager answers `ev` from the CRM, once the CRM has it in `key`'s
    /// timeline: `POST /v1/conversations/<ev's conversation>/replies` with
    /// `text`. Fails unless the CRM accepts it (202).
    pub async fn answer(
        &self,
        key: &str,
        ev: &switchboard_storage::Interaction,
        text: &str,
    ) -> Result<()> {
        self.wait_for_timeline(key, &ev.id.to_string(), Duration::from_secs(10))
            .await?;
        let conversation = ev
            .conversation
            .as_deref()
            .ok_or_else(|| anyhow!("interaction {} has no conversation", ev.id))?;
        let (status, body) = self
            .crm_post(
                &format!("/v1/conversations/{conversation}/replies"),
                &serde_json::json!({ "text": text }),
            )
            .await?;
        if status != 202 {
            bail!("reply to {conversation} answered {status}: {body}");
        }
        Ok(())
    }

    /// Polls the embedded feed under `data_dir` until it holds at least
    /// `at_least` interactions `keep` accepts; returns them in feed order.
    /// Fails after `within` with what it found and the daemon's log.
    pub async fn feed_until(
        &self,
        data_dir: &Path,
        keep: impl Fn(&switchboard_storage::Interaction) -> bool,
        at_least: usize,
        within: Duration,
    ) -> Result<Vec<switchboard_storage::Interaction>> {
        let started = Instant::now();
        loop {
            let found: Vec<_> = feed_interactions(data_dir)
                .await?
                .into_iter()
                .filter(|e| keep(e))
                .collect();
            if found.len() >= at_least {
                return Ok(found);
            }
            if started.elapsed() > within {
                bail!(
                    "{} of {at_least} wanted interactions in the feed after {within:?}: {found:#?}\n{}",
                    found.len(),
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls `key`'s timeline until an item `keep` accepts is of kind
    /// `last`; returns the items `keep` accepts, oldest first. Fails after
    /// `within` with the last answer and the daemon's log.
    pub async fn timeline_until(
        &self,
        key: &str,
        keep: impl Fn(&Value) -> bool,
        last: &str,
        within: Duration,
    ) -> Result<Vec<Value>> {
        let started = Instant::now();
        loop {
            let (_, body) = self
                .crm_get(&format!("/v1/contacts/{key}/timeline"))
                .await?;
            let mut items: Vec<Value> = body["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|i| keep(i))
                .cloned()
                .collect();
            if items.iter().any(|i| i["kind"] == last) {
                items.reverse();
                return Ok(items);
            }
            if started.elapsed() > within {
                bail!(
                    "no {last} in {key}'s timeline after {within:?}: {body:#}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every interaction id the CRM holds, through all pages.
    pub async fn all_interaction_ids(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        let mut path = "/v1/interactions?limit=200".to_owned();
        loop {
            let (status, body) = self.crm_get(&path).await?;
            if status != 200 {
                bail!("GET {path}: {status} {body}");
            }
            for item in body["items"].as_array().into_iter().flatten() {
                ids.push(item["id"].as_str().unwrap_or_default().to_owned());
            }
            match body["next_cursor"].as_str() {
                Some(c) => path = format!("/v1/interactions?limit=200&cursor={c}"),
                None => return Ok(ids),
            }
        }
    }

    /// SIGTERM, then waits for the exit status (at most `within`).
    pub async fn terminate(mut self, within: Duration) -> Result<std::process::ExitStatus> {
        if let Some(pid) = self.pid() {
            kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGTERM)?;
        }
        Ok(tokio::time::timeout(within, self.child.wait())
            .await
            .map_err(|_| {
                anyhow!(
                    "switchboard did not exit within {within:?} of SIGTERM; log:\n{}",
                    self.logs()
                )
            })??)
    }

    /// Sends SIGHUP (reload).
    pub fn hangup(&self) -> Result<()> {
        if let Some(pid) = self.pid() {
            kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGHUP)?;
        }
        Ok(())
    }

    /// Waits until the log has a line containing `text`.
    pub async fn wait_for_log(&self, text: &str, within: Duration) -> Result<()> {
        let started = Instant::now();
        while !self.logs().contains(text) {
            if started.elapsed() > within {
                bail!(
                    "no log line with {text:?} after {within:?}; log:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// The value of the gateway's Prometheus sample `name` with (at least)
    /// these labels, 0 when absent.
    pub async fn gateway_metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        let (_, text) = self.get_text("gateway", "/metrics").await?;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((sample, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (metric, rest) = sample.split_once('{').unwrap_or((sample, ""));
            if metric != name {
                continue;
            }
            if labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            {
                return Ok(value.parse()?);
            }
        }
        Ok(0.0)
    }

    /// SIGKILL: a crash.
    pub async fn kill9(mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// The gateway alone for a benchmark: `config` written to
/// `work/switchboard.toml`, data under `work/data`, only warnings logged
/// (and the lines that say it is ready).
pub async fn bench_gateway(work: &Path, config: &str) -> Result<Switchboard> {
    let file = work.join("switchboard.toml");
    std::fs::write(&file, config)?;
    Launch::new(&work.join("data"))
        .config(&file)
        .command("gateway")
        .env("SWITCHBOARD_LOG__LEVEL", "warn,switchboard=info")
        .start()
        .await
}

/// A lead form with a phone derived from `n`, so every lead is distinct.
pub fn lead_form(n: u32) -> Value {
    serde_json::json!({
        "name": format!("Client {n}"),
        "phone": format!("+7916{:07}", n % 10_000_000),
        "message": format!("lead {n}"),
        "page_url": "https://example.com/price",
        "utm_source": "test",
    })
}

/// The `i`-th of a set of distinct `lead.received` interactions, shaped like
/// what the widget produces (for tests and benchmarks that write the feed
/// directly).
pub fn sample_lead(i: usize) -> switchboard_storage::Interaction {
    use switchboard_storage::{Campaign, Channel, Contact, ContactKey, Interaction, Kind};
    let phone = format!("+7916{:07}", i % 10_000_000);
    let mut ev = Interaction::new(
        Kind::LeadReceived,
        Channel::Widget,
        Contact {
            key: ContactKey::phone(&phone).into_string(),
            phone: Some(phone),
            email: None,
            user_id: None,
            name: Some(format!("Client {i}")),
        },
        time::OffsetDateTime::now_utc(),
        serde_json::json!({
            "form": "widget",
            "message": "Please call me back about the annual plan",
            "page_url": "https://example.com/pricing?plan=annual",
        }),
    );
    ev.campaign = Some(Campaign {
        source: Some("yandex".into()),
        medium: Some("cpc".into()),
        campaign: Some("winter".into()),
        ..Campaign::default()
    });
    ev
}

/// A size from the environment (benchmarks' knobs), or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Every interaction in the embedded feed under `data_dir`, in feed order
/// (repeats included: a test that counts them sees duplicates), read as a
/// fresh consumer group.
pub async fn feed_interactions(data_dir: &Path) -> Result<Vec<switchboard_storage::Interaction>> {
    use switchboard_storage::{FeedSource, LogConsumer, LogOptions, Topic};
    static READER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let group = format!(
        "test-reader-{}-{}",
        std::process::id(),
        READER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut c = LogConsumer::open(
        &data_dir.join("feed.sqlite"),
        &group,
        &[Topic::Interactions],
        LogOptions::default(),
    )?;
    let mut out = Vec::new();
    loop {
        let batch = c.poll(10_000, Duration::from_millis(1)).await?;
        if batch.is_empty() {
            return Ok(out);
        }
        for r in batch {
            out.push(serde_json::from_slice(&r.value)?);
        }
    }
}

/// A loopback port nothing holds now over TCP or UDP, for a peer that will
/// bind it itself; see [`free_ports`].
pub fn free_port() -> Result<u16> {
    free_ports(1)
}

/// The first of `n` consecutive loopback ports that nothing holds now, over
/// TCP or UDP (SIPp binds its media port and the port two above it; baresip
/// listens for TLS one above its SIP port).
///
/// They are picked at random from 20000–32767: above the gateway's default
/// RTP range and below the kernel's ephemeral range, so no socket bound to
/// port 0, nor any outgoing connection, is handed one of them between this
/// check and the peer's own bind. (A port the kernel picked for a TCP
/// listener could be a UDP socket's port already, which once made a SIPp
/// phone fail to start.)
pub fn free_ports(n: u16) -> Result<u16> {
    use std::hash::{BuildHasher, RandomState};
    const FIRST: u16 = 20_000;
    const END: u16 = 32_768;
    let n = n.max(1);
    let span = u64::from(END - FIRST - n + 1);
    let free = |p: u16| {
        std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
    };
    for attempt in 0..1_000_u32 {
        // RandomState's keys are random per process and differ per call.
        let offset = RandomState::new().hash_one(attempt) % span;
        let first = FIRST + u16::try_from(offset)?;
        if (first..first + n).all(free) {
            return Ok(first);
        }
    }
    bail!("no {n} free loopback ports in a row between {FIRST} and {END}")
}

/// The Tansu broker binary: `TANSU_BIN`, or where `.ci/run` caches it.
pub fn tansu_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set"))?;
    let bin = PathBuf::from(home).join(".cache/tansu/bin/tansu");
    if !bin.exists() {
        bail!(
            "the Tansu broker is not installed at {}; `scripts/install-peers` installs it \
             (or set TANSU_BIN)",
            bin.display()
        );
    }
    Ok(bin)
}

/// How a broker keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerStorage {
    /// In memory: fast, lost on restart (benchmarks).
    Memory,
    /// In an SQLite file: survives restarts (outage tests).
    Durable,
}

/// A Kafka-protocol broker (Tansu) on a loopback port.
#[derive(Debug)]
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    storage: BrokerStorage,
    dir: tempfile::TempDir,
}

impl Broker {
    pub async fn start(storage: BrokerStorage) -> Result<Self> {
        let mut b = Self {
            child: None,
            port: free_port()?,
            storage,
            dir: tempfile::tempdir()?,
        };
        b.launch().await?;
        Ok(b)
    }

    /// `127.0.0.1:<port>`, for `feed.kafka.brokers`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn launch(&mut self) -> Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let storage = match self.storage {
            BrokerStorage::Memory => "memory://tansu/".to_owned(),
            // Tansu resolves sqlite:// paths against its working directory.
            BrokerStorage::Durable => "sqlite://tansu.db".to_owned(),
        };
        let child = Command::new(tansu_bin()?)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", &storage])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting tansu")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("tansu did not listen on port {} within 20 s", self.port);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Kills the broker (SIGKILL: nothing is flushed on the way out).
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().await?;
        }
        Ok(())
    }

    /// Starts it again on the same port with the same storage.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.launch().await
    }
}

/// What one `wrk` run measured.
#[derive(Debug, Clone, Copy)]
pub struct WrkResult {
    /// Requests per second, all statuses.
    pub rps: f64,
    pub p99_ms: f64,
    /// Responses that were not 2xx or 3xx.
    pub errors: u64,
    /// Requests completed.
    pub requests: u64,
}

fn parse_ms(text: &str) -> f64 {
    let t = text.trim();
    let (num, factor) = if let Some(v) = t.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = t.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = t.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (t, 1.0)
    };
    num.parse::<f64>().unwrap_or(f64::NAN) * factor
}

/// Runs `wrk` (Debian package `wrk`) with the Lua `script` against `base`
/// for `seconds` on 2 threads and `connections` connections.
///
/// # Panics
/// When wrk is missing or its output cannot be read.
#[allow(clippy::expect_used)]
pub fn wrk(base: &str, script: &str, seconds: usize, connections: usize) -> WrkResult {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("script.lua");
    std::fs::write(&path, script).expect("the wrk script written");
    let out = std::process::Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(&path)
        .arg(base)
        .output()
        .expect("wrk (Debian package wrk) must be installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("cannot read wrk output:\n{text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(parse_ms)
        .unwrap_or(f64::NAN);
    let errors = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let requests = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.trim().to_owned())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    WrkResult {
        rps,
        p99_ms: p99,
        errors,
        requests,
    }
}
