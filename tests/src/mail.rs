//! Mail peers for the email tests and benchmark: a Dovecot (IMAP and POP3)
//! from `tests/peers/dovecot/dovecot.conf.in` on loopback ports, an
//! `aiosmtpd` SMTP server writing what it receives into a Maildir, and a
//! small IMAP client to put letters into mailboxes and look into them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_imap::Session;
use futures::TryStreamExt;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::free_port;

static NEXT_FILE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A Dovecot serving IMAP and POP3 on loopback, killed on drop.
#[derive(Debug)]
pub struct Dovecot {
    child: Child,
    dir: tempfile::TempDir,
    pub imap_port: u16,
    pub pop3_port: u16,
    /// Implicit-TLS ports, when started with [`Dovecot::start_tls`].
    pub imaps_port: u16,
    pub pop3s_port: u16,
}

/// A test certificate authority and a server certificate it signed for
/// 127.0.0.1 and localhost, made with `openssl`.
#[derive(Debug)]
pub struct TestCa {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn make(dir: &Path) -> Result<Self> {
        let p = |n: &str| dir.join(n);
        std::fs::write(
            p("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )?;
        let run = |args: &[&str]| -> Result<()> {
            let out = std::process::Command::new("openssl").args(args).output()?;
            if !out.status.success() {
                bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        let s = |p: PathBuf| p.display().to_string();
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=Switchboard Test CA",
            "-keyout",
            &s(p("ca.key")),
            "-out",
            &s(p("ca.pem")),
        ])?;
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &s(p("key.pem")),
            "-out",
            &s(p("req.csr")),
        ])?;
        run(&[
            "x509",
            "-req",
            "-in",
            &s(p("req.csr")),
            "-CA",
            &s(p("ca.pem")),
            "-CAkey",
            &s(p("ca.key")),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &s(p("ext.cnf")),
            "-out",
            &s(p("cert.pem")),
        ])?;
        Ok(Self {
            ca: p("ca.pem"),
            cert: p("cert.pem"),
            key: p("key.pem"),
        })
    }
}

/// The unprivileged account mail is kept as: `nobody` when the tests run
/// as root (Dovecot refuses root), else the current user.
fn mail_account() -> (String, String, Option<(u32, u32)>) {
    let uid = nix::unistd::getuid();
    if uid.is_root() {
        ("nobody".into(), "nogroup".into(), Some((65534, 65534)))
    } else {
        let user = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map_or_else(|| uid.to_string(), |u| u.name);
        let group = nix::unistd::Group::from_gid(nix::unistd::getgid())
            .ok()
            .flatten()
            .map_or_else(|| user.clone(), |g| g.name);
        (user, group, None)
    }
}

impl Dovecot {
    /// Starts Dovecot with `users` (name, password) and waits until IMAP
    /// answers.
    pub async fn start(users: &[(&str, &str)]) -> Result<Self> {
        Self::launch(users, None).await
    }

    /// Like [`Dovecot::start`], with TLS from `ca`'s server certificate:
    /// STARTTLS/STLS on the plain ports, and IMAPS and POP3S.
    pub async fn start_tls(users: &[(&str, &str)], ca: &TestCa) -> Result<Self> {
        Self::launch(users, Some(ca)).await
    }

    /// The master process's id (its workers are its children).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn launch(users: &[(&str, &str)], tls: Option<&TestCa>) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("dovecot").tempdir()?;
        let root = dir.path();
        let (user, group, owner) = mail_account();
        std::fs::create_dir_all(root.join("mail"))?;
        for sub in ["run", "state"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        std::fs::write(
            root.join("users"),
            users
                .iter()
                .map(|(u, p)| format!("{u}:{{PLAIN}}{p}\n"))
                .collect::<String>(),
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))?;
        if let Some((uid, gid)) = owner {
            for (u, _) in users {
                let home = root.join("mail").join(u);
                std::fs::create_dir_all(&home)?;
                std::os::unix::fs::chown(&home, Some(uid), Some(gid))?;
            }
        }
        let (imap_port, pop3_port) = (free_port()?, free_port()?);
        let (imaps_port, pop3s_port, ssl) = match tls {
            Some(ca) => {
                // Dovecot reads the key as root before dropping privileges.
                (
                    free_port()?,
                    free_port()?,
                    format!(
                        "ssl = yes\nssl_cert = <{}\nssl_key = <{}",
                        ca.cert.display(),
                        ca.key.display()
                    ),
                )
            }
            None => (0, 0, "ssl = no".to_owned()),
        };
        let (internal, login) = if owner.is_some() {
            ("dovecot".to_owned(), "dovenull".to_owned())
        } else {
            (user.clone(), user.clone())
        };
        let template = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/dovecot/dovecot.conf.in"),
        )?;
        let conf = template
            .replace("@DIR@", &root.display().to_string())
            .replace("@IMAP_PORT@", &imap_port.to_string())
            .replace("@POP3_PORT@", &pop3_port.to_string())
            .replace("@IMAPS_PORT@", &imaps_port.to_string())
            .replace("@POP3S_PORT@", &pop3s_port.to_string())
            .replace("@SSL@", &ssl)
            .replace("@MAIL_USER@", &user)
            .replace("@MAIL_GROUP@", &group)
            .replace("@INTERNAL_USER@", &internal)
            .replace("@LOGIN_USER@", &login);
        std::fs::write(root.join("dovecot.conf"), conf)?;
        let child = spawn_master(root)?;
        let mut d = Dovecot {
            child,
            dir,
            imap_port,
            pop3_port,
            imaps_port,
            pop3s_port,
        };
        d.wait_listening().await?;
        Ok(d)
    }

    async fn wait_listening(&mut self) -> Result<()> {
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.imap_port))
            .await
            .is_err()
        {
            if started.elapsed() > Duration::from_secs(15) {
                bail!("dovecot did not listen within 15 s: {}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Stops the server the way an operator does (SIGTERM: every connection
    /// is closed) and waits for it to exit.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(pid)?),
                nix::sys::signal::Signal::SIGTERM,
            )?;
        }
        tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await??;
        Ok(())
    }

    /// Starts the server again on the same ports and mail.
    pub async fn restart(&mut self) -> Result<()> {
        self.child = spawn_master(self.dir.path())?;
        self.wait_listening().await
    }

    /// Dovecot's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    pub fn maildir(&self, user: &str) -> PathBuf {
        self.dir.path().join("mail").join(user).join("Maildir")
    }

    /// Logs in over IMAP.
    pub async fn imap(&self, user: &str, password: &str) -> Result<Session<TcpStream>> {
        let tcp = TcpStream::connect(("127.0.0.1", self.imap_port)).await?;
        let mut client = async_imap::Client::new(tcp);
        client.read_response().await?.context("no IMAP greeting")?;
        client
            .login(user, password)
            .await
            .map_err(|(e, _)| anyhow::anyhow!("imap login: {e}"))
    }

    /// Puts letters into `folder` (created if missing), in order.
    pub async fn append(
        &self,
        user: &str,
        password: &str,
        folder: &str,
        letters: &[Vec<u8>],
    ) -> Result<()> {
        let mut s = self.imap(user, password).await?;
        let _ = s.create(folder).await;
        for raw in letters {
            s.append(folder, None, None, raw).await?;
        }
        s.logout().await?;
        Ok(())
    }

    /// Every letter in `folder` (empty when the folder does not exist).
    pub async fn letters(&self, user: &str, password: &str, folder: &str) -> Result<Vec<Vec<u8>>> {
        let mut s = self.imap(user, password).await?;
        let Ok(mb) = s.select(folder).await else {
            return Ok(Vec::new());
        };
        if mb.exists == 0 {
            return Ok(Vec::new());
        }
        let fetched: Vec<_> = s.fetch("1:*", "BODY.PEEK[]").await?.try_collect().await?;
        let out = fetched
            .iter()
            .filter_map(|f| f.body().map(<[u8]>::to_vec))
            .collect();
        s.logout().await?;
        Ok(out)
    }

    /// Writes letters straight into `user`'s INBOX Maildir (as a delivery
    /// agent would), for loading many quickly.
    pub fn fill_maildir(
        &self,
        user: &str,
        letters: impl IntoIterator<Item = Vec<u8>>,
    ) -> Result<usize> {
        let maildir = self.maildir(user);
        let owner = mail_account().2;
        for sub in ["", "cur", "new", "tmp"] {
            let d = maildir.join(sub);
            std::fs::create_dir_all(&d)?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&d, Some(uid), Some(gid))?;
            }
        }
        let mut n = 0;
        for (i, raw) in letters.into_iter().enumerate() {
            let path = maildir.join("new").join(format!(
                "{}.M{i}P{}.test",
                std::process::id(),
                NEXT_FILE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            std::fs::write(&path, raw)?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
            }
            n += 1;
        }
        Ok(n)
    }

    /// Makes the server give `user`'s INBOX a new UIDVALIDITY, as a server
    /// does after its index is rebuilt: every letter gets a new UID.
    pub async fn renumber(&self, user: &str, password: &str) -> Result<()> {
        let before = self
            .imap(user, password)
            .await?
            .select("INBOX")
            .await?
            .uid_validity;
        // UIDVALIDITY is the rebuild's time in seconds.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let maildir = self.maildir(user);
        for entry in std::fs::read_dir(&maildir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.starts_with("dovecot") && path.is_file() {
                std::fs::remove_file(&path)?;
            }
        }
        let after = self
            .imap(user, password)
            .await?
            .select("INBOX")
            .await?
            .uid_validity;
        if before == after {
            bail!("UIDVALIDITY did not change ({before:?})");
        }
        Ok(())
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn spawn_master(root: &Path) -> Result<Child> {
    Command::new(dovecot_bin())
        .arg("-c")
        .arg(root.join("dovecot.conf"))
        .arg("-F")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting dovecot (apt-get install dovecot-imapd dovecot-pop3d)")
}

fn dovecot_bin() -> PathBuf {
    std::env::var_os("DOVECOT_BIN")
        .map_or_else(|| PathBuf::from("/usr/sbin/dovecot"), PathBuf::from)
}

/// An SMTP server (Python's `aiosmtpd`) that writes each letter it accepts
/// into a Maildir; killed on drop.
#[derive(Debug)]
pub struct SmtpSink {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl SmtpSink {
    pub async fn start() -> Result<Self> {
        Self::launch(None).await
    }

    /// Requires STARTTLS with `ca`'s server certificate before any mail.
    pub async fn start_tls(ca: &TestCa) -> Result<Self> {
        Self::launch(Some(ca)).await
    }

    async fn launch(tls: Option<&TestCa>) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("smtp").tempdir()?;
        let port = free_port()?;
        let python = std::env::var_os("AIOSMTPD_PYTHON").unwrap_or_else(|| "python3".into());
        let mut cmd = Command::new(python);
        cmd.args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"));
        if let Some(ca) = tls {
            cmd.arg("--tlscert")
                .arg(&ca.cert)
                .arg("--tlskey")
                .arg(&ca.key);
        }
        let child = cmd
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(dir.path().join("Maildir"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting aiosmtpd (pip install aiosmtpd, or set AIOSMTPD_PYTHON)")?;
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if started.elapsed() > Duration::from_secs(15) {
                bail!("aiosmtpd did not listen within 15 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self { child, dir, port })
    }

    /// The letters received so far, oldest first.
    pub fn received(&self) -> Result<Vec<Vec<u8>>> {
        let new = self.dir.path().join("Maildir/new");
        let mut files: Vec<_> = match std::fs::read_dir(&new) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(_) => return Ok(Vec::new()),
        };
        files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        files.iter().map(|p| Ok(std::fs::read(p)?)).collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A plain letter.
pub fn letter(from: &str, subject: &str, message_id: &str, body: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: sales@example.com\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\n\
         Date: Wed, 02 Dec 2026 10:00:00 +0300\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

/// Letters built to break mail parsers, by name: truncated MIME, wrong
/// boundaries, a 50 MB attachment, header bombs, bad encodings, deep
/// nesting, garbage. Deterministic.
pub fn hostile_corpus() -> Vec<(&'static str, Vec<u8>)> {
    let head = |id: &str, extra: &str| {
        format!(
            "From: hostile@example.ru\r\nTo: sales@example.com\r\nSubject: {id}\r\nMessage-ID: <{id}@hostile.example>\r\n{extra}"
        )
    };
    let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();
    out.push((
        "truncated MIME",
        format!(
            "{}MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"cut\"\r\n\r\n--cut\r\n\
             Content-Type: text/plain\r\n\r\nbeginning\r\n--cut\r\nContent-Type: application/pdf\r\n\
             Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJcfs",
            head("truncated", "")
        )
        .into_bytes(),
    ));
    out.push((
        "wrong boundaries",
        format!(
            "{}MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"AAA\"\r\n\r\n--BBB\r\n\
             Content-Type: text/plain\r\n\r\nlost part\r\n--BBB--\r\n",
            head("boundary", "")
        )
        .into_bytes(),
    ));
    let mut big = format!(
        "{}MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"big\"\r\n\r\n--big\r\n\
         Content-Type: text/plain\r\n\r\nthe price list is attached\r\n--big\r\n\
         Content-Type: application/octet-stream; name=\"huge.bin\"\r\n\
         Content-Disposition: attachment; filename=\"huge.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n",
        head("big", "")
    )
    .into_bytes();
    // 50,000,004 bytes of "AAA…" in base64, 76 characters a line.
    let line = "QUFB".repeat(19);
    for _ in 0..(50_000_004 / 57) + 1 {
        big.extend_from_slice(line.as_bytes());
        big.extend_from_slice(b"\r\n");
    }
    big.extend_from_slice(b"--big--\r\n");
    out.push(("50 MB attachment", big));
    let mut bomb = head("bomb", "");
    for i in 0..20_000 {
        bomb.push_str(&format!("X-Bomb-{i}: {}\r\n", "x".repeat(40)));
    }
    bomb.push_str("\r\nbody after twenty thousand headers\r\n");
    out.push(("header bomb", bomb.into_bytes()));
    out.push((
        "one enormous header",
        format!(
            "{}X-Long: {}\r\n\r\nbody\r\n",
            head("long", ""),
            "y".repeat(2_000_000)
        )
        .into_bytes(),
    ));
    out.push((
        "bad encodings",
        b"From: =?utf-8?B?!!!notbase64?= <enc@example.ru>\r\nSubject: =?x-unknown?Q?=ZZ=?=\r\n\
          Message-ID: <enc@hostile.example>\r\nMIME-Version: 1.0\r\n\
          Content-Type: text/plain; charset=x-no-such-charset\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
          broken =ZZ escape =\r\n=E9t=C3\r\n"
            .to_vec(),
    ));
    let mut invalid_utf8 =
        head("utf8", "Content-Type: text/plain; charset=utf-8\r\n\r\n").into_bytes();
    invalid_utf8.extend_from_slice(b"\xff\xfe\xc3\x28 invalid \xe2\x82 utf-8\r\n");
    out.push(("invalid UTF-8", invalid_utf8));
    let mut nested = head("nested", "MIME-Version: 1.0\r\n");
    for i in 0..200 {
        nested.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"n{i}\"\r\n\r\n--n{i}\r\n"
        ));
    }
    nested.push_str("Content-Type: text/plain\r\n\r\ndeep\r\n");
    out.push(("200 nested multiparts", nested.into_bytes()));
    out.push((
        "no sender",
        b"Subject: who sent this\r\nMessage-ID: <nosender@hostile.example>\r\n\r\nanonymous\r\n"
            .to_vec(),
    ));
    // Bytes without a header line (and without NUL, which IMAP forbids).
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            match (state % 255) as u8 + 1 {
                b':' | b'\n' | b'\r' => b'#',
                b => b,
            }
        })
        .collect();
    out.push(("binary garbage", garbage));
    out
}
