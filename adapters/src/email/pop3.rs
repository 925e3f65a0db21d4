//! Reading a mailbox over POP3 (RFC 1939, STLS per RFC 2595): letters stay
//! on the server; each one's UIDL is remembered once it is in the feed, so
//! every poll takes only what is new.

use switchboard_config::{Mailbox, Security};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::net::{self, Conn, IO_TIMEOUT};
use super::{Email, Fetched, MailError, report};
use crate::{AdapterContext, Retries, sleep_or_shutdown};

/// Letters published per batch.
const CHUNK: usize = 100;
/// A server line longer than this is an error.
const MAX_LINE: usize = 64 * 1024;

pub(crate) async fn run(email: Email, mb: Mailbox, ctx: AdapterContext) {
    let mut retries = Retries::default();
    loop {
        let outcome = tokio::select! {
            r = poll(&email, &mb, &ctx) => r,
            () = ctx.shutdown.cancelled() => return,
        };
        let wait = match outcome {
            Ok(n) => {
                retries.reset();
                report(&mb.name, &ctx, Ok(()));
                if n > 0 {
                    tracing::debug!(mailbox = %mb.name, letters = n, "pop3 letters taken");
                }
                mb.incoming.poll_interval
            }
            Err(e) => {
                report(&mb.name, &ctx, Err(&e));
                tracing::warn!(mailbox = %mb.name, error = %e, "pop3 mailbox unavailable");
                retries.next_wait()
            }
        };
        if sleep_or_shutdown(&ctx.shutdown, wait).await {
            return;
        }
    }
}

/// One session: log in, list UIDLs, take the new letters, quit.
async fn poll(email: &Email, mb: &Mailbox, ctx: &AdapterContext) -> Result<usize, MailError> {
    let mut pop = Pop3::connect(email, mb).await?;
    let list = pop.uidl().await?;
    let sizes = pop.sizes().await?;
    let mut fresh = Vec::new();
    for (n, uidl) in list {
        if !email.state().is_known(&mb.name, &format!("uidl:{uidl}"))? {
            fresh.push((n, uidl));
        }
    }
    let limit = email.inner.config.max_letter_bytes;
    let mut taken = 0;
    for chunk in fresh.chunks(CHUNK) {
        let mut batch = Vec::with_capacity(chunk.len());
        for (n, uidl) in chunk {
            let size = sizes.iter().find(|(m, _)| m == n).map_or(0, |(_, s)| *s);
            let (raw, too_large) = if size > limit {
                (pop.multiline(&format!("TOP {n} 0")).await?, Some(size))
            } else {
                (pop.multiline(&format!("RETR {n}")).await?, None)
            };
            batch.push(Fetched {
                raw,
                arrived: None,
                too_large,
                position: uidl.clone(),
                key: Some(format!("uidl:{uidl}")),
            });
        }
        let parsed = email.parse(batch).await?;
        taken += email.take(mb, parsed, None, ctx).await?;
    }
    pop.quit().await;
    Ok(taken)
}

struct Pop3 {
    io: BufReader<Conn>,
}

impl Pop3 {
    async fn connect(email: &Email, mb: &Mailbox) -> Result<Self, MailError> {
        let server = &mb.incoming.server;
        let tcp = net::tcp(server, server.port_or(995, 110)).await?;
        let mut pop = match server.security {
            Security::Tls => Pop3 {
                io: BufReader::new(net::tls(server, tcp).await?),
            },
            Security::None => Pop3 {
                io: BufReader::new(Box::new(tcp) as Conn),
            },
            Security::Starttls => {
                let mut plain = Pop3 {
                    io: BufReader::new(Box::new(tcp) as Conn),
                };
                plain.status().await?;
                plain.command("STLS").await?;
                let tcp = plain.io.into_inner();
                let mut pop = Pop3 {
                    io: BufReader::new(net::tls(server, tcp).await?),
                };
                pop.user(&server.username, email.password(&mb.name)).await?;
                return Ok(pop);
            }
        };
        pop.status().await?;
        pop.user(&server.username, email.password(&mb.name)).await?;
        Ok(pop)
    }

    async fn user(&mut self, user: &str, password: &str) -> Result<(), MailError> {
        if user.contains(['\r', '\n']) || password.contains(['\r', '\n']) {
            return Err(MailError::Config(
                "a username or password contains a line break".into(),
            ));
        }
        self.command(&format!("USER {user}")).await?;
        self.command(&format!("PASS {password}"))
            .await
            .map_err(|e| MailError::Server(format!("login as {user} refused: {e}")))?;
        Ok(())
    }

    async fn line(&mut self) -> Result<Vec<u8>, MailError> {
        let mut line = Vec::new();
        let read = tokio::time::timeout(IO_TIMEOUT, async {
            let mut limited = (&mut self.io).take(MAX_LINE as u64);
            limited.read_until(b'\n', &mut line).await
        })
        .await
        .map_err(|_| MailError::Server("the server did not answer within 30 s".into()))?
        .map_err(|e| MailError::Server(format!("pop3: {e}")))?;
        if read == 0 {
            return Err(MailError::Server("the server closed the connection".into()));
        }
        if !line.ends_with(b"\n") {
            return Err(MailError::Server("the server sent an overlong line".into()));
        }
        Ok(line)
    }

    /// Reads a status line: `+OK …` or an error with the server's text.
    async fn status(&mut self) -> Result<String, MailError> {
        let line = self.line().await?;
        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
        if text.starts_with("+OK") {
            Ok(text)
        } else {
            Err(MailError::Server(format!("pop3 server said: {text}")))
        }
    }

    async fn command(&mut self, cmd: &str) -> Result<String, MailError> {
        let io = self.io.get_mut();
        tokio::time::timeout(IO_TIMEOUT, async {
            io.write_all(cmd.as_bytes()).await?;
            io.write_all(b"\r\n").await?;
            io.flush().await
        })
        .await
        .map_err(|_| MailError::Server("writing to the server timed out".into()))?
        .map_err(|e| MailError::Server(format!("pop3: {e}")))?;
        self.status().await
    }

    /// A multi-line answer, dot-unstuffed, without the final ".".
    async fn multiline(&mut self, cmd: &str) -> Result<Vec<u8>, MailError> {
        self.command(cmd).await?;
        let mut out = Vec::new();
        loop {
            let line = self.line().await?;
            if line == b".\r\n" || line == b".\n" {
                return Ok(out);
            }
            let body = line.strip_prefix(b".").unwrap_or(&line);
            out.extend_from_slice(body);
        }
    }

    async fn uidl(&mut self) -> Result<Vec<(u32, String)>, MailError> {
        let text = self.multiline("UIDL").await?;
        Ok(String::from_utf8_lossy(&text)
            .lines()
            .filter_map(|l| {
                let (n, id) = l.trim().split_once(' ')?;
                Some((n.parse().ok()?, id.trim().to_owned()))
            })
            .collect())
    }

    async fn sizes(&mut self) -> Result<Vec<(u32, u64)>, MailError> {
        let text = self.multiline("LIST").await?;
        Ok(String::from_utf8_lossy(&text)
            .lines()
            .filter_map(|l| {
                let (n, s) = l.trim().split_once(' ')?;
                Some((n.parse().ok()?, s.trim().parse().ok()?))
            })
            .collect())
    }

    async fn quit(mut self) {
        let _ = self.command("QUIT").await;
    }
}
