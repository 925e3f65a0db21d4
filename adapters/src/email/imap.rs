//! Reading a mailbox over IMAP: select the folder, take every letter above
//! the remembered UID (all of them again, deduplicated, when UIDVALIDITY
//! changed), then wait with IDLE — or poll — and repeat. Any failure drops
//! the connection and reconnects with backoff; the cursor only moves after
//! the letters are in the feed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_imap::{Client, Session};
use switchboard_config::{Mailbox, Security};
use tokio::sync::mpsc;

use super::net::{self, Conn, IO_TIMEOUT};
use super::{Email, Fetched, Known, MailError, Parsed, Published, fetch, report};
use crate::{AdapterContext, backoff, sleep_or_shutdown};

/// Letters downloaded and published at once.
const GROUP_LETTERS: usize = 500;
/// Letters whose sizes one command asks for: the first group downloads
/// after one window's sizes, and a huge folder's first pass never holds
/// more than a window of parsed responses.
const SIZE_WINDOW: usize = 2 * GROUP_LETTERS;
/// Bytes of letters downloaded and published at once.
const BATCH_BYTES: u64 = 32 * 1024 * 1024;
/// The longest header section taken of a letter over the size limit.
const MAX_HEADER: u64 = 4 * 1024 * 1024;
/// IDLE is restarted this often (servers drop it after 30 minutes).
const IDLE_FOR: Duration = Duration::from_secs(25 * 60);

pub(crate) async fn run(email: Email, mb: Mailbox, ctx: AdapterContext) {
    let mut attempt = 0u32;
    loop {
        let outcome = tokio::select! {
            r = read(&email, &mb, &ctx, &mut attempt) => r,
            () = ctx.shutdown.cancelled() => return,
        };
        let Err(e) = outcome else { return };
        report(&mb.name, &ctx, Err(&e));
        tracing::warn!(mailbox = %mb.name, error = %e, retry_in = ?backoff(attempt), "imap mailbox unavailable");
        if sleep_or_shutdown(&ctx.shutdown, backoff(attempt)).await {
            return;
        }
        attempt = attempt.saturating_add(1);
    }
}

/// Logs in over the mailbox's transport.
pub(crate) async fn login(email: &Email, mb: &Mailbox) -> Result<Session<Conn>, MailError> {
    let server = &mb.incoming.server;
    let tcp = net::tcp(server, server.port_or(993, 143)).await?;
    let client = match server.security {
        Security::Tls => greeted(Client::new(net::tls(server, tcp).await?)).await?,
        Security::None => greeted(Client::new(Box::new(tcp) as Conn)).await?,
        Security::Starttls => {
            let mut plain = greeted(Client::new(tcp)).await?;
            timed(plain.run_command_and_check_ok("STARTTLS", None)).await?;
            Client::new(net::tls(server, plain.into_inner()).await?)
        }
    };
    let session = tokio::time::timeout(
        IO_TIMEOUT,
        client.login(&server.username, email.password(&mb.name)),
    )
    .await
    .map_err(|_| MailError::Server("login timed out".into()))?
    .map_err(|(e, _)| MailError::Server(format!("login as {} refused: {e}", server.username)))?;
    Ok(session)
}

async fn greeted<T>(mut client: Client<T>) -> Result<Client<T>, MailError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + std::fmt::Debug,
{
    match tokio::time::timeout(IO_TIMEOUT, client.read_response()).await {
        Ok(Ok(Some(_))) => Ok(client),
        Ok(Ok(None)) => Err(MailError::Server("server closed before greeting".into())),
        Ok(Err(e)) => Err(MailError::Server(format!("no greeting: {e}"))),
        Err(_) => Err(MailError::Server("no greeting within 30 s".into())),
    }
}

async fn timed<T>(f: impl Future<Output = async_imap::error::Result<T>>) -> Result<T, MailError> {
    within(IO_TIMEOUT, async {
        f.await.map_err(|e| MailError::Server(format!("imap: {e}")))
    })
    .await
}

/// `f`, or an error once `limit` has passed.
async fn within<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, MailError>>,
) -> Result<T, MailError> {
    tokio::time::timeout(limit, f).await.map_err(|_| {
        MailError::Server(format!(
            "the server did not answer within {} s",
            limit.as_secs()
        ))
    })?
}

/// One connection's life: returns `Ok` only at shutdown.
async fn read(
    email: &Email,
    mb: &Mailbox,
    ctx: &AdapterContext,
    attempt: &mut u32,
) -> Result<(), MailError> {
    let mut session = login(email, mb).await?;
    let folder = timed(session.select(&mb.incoming.folder)).await?;
    let validity = folder.uid_validity.unwrap_or(0);
    let mut last = match email.state().cursor(&mb.name)? {
        Some((v, uid)) if v == validity => uid,
        Some((v, _)) => {
            tracing::info!(mailbox = %mb.name, old = v, new = validity,
                "UIDVALIDITY changed; reading the folder again (letters already taken are skipped)");
            0
        }
        None => 0,
    };
    let idle = mb.incoming.idle && timed(session.capabilities()).await?.has_str("IDLE");
    report(&mb.name, ctx, Ok(()));
    *attempt = 0;
    tracing::info!(mailbox = %mb.name, folder = %mb.incoming.folder, idle, "imap mailbox connected");
    loop {
        let news;
        (last, news) = catch_up(email, mb, ctx, &mut session, validity, last).await?;
        // Something arrived while we were fetching: fetch again first.
        let mut changed = news;
        while let Ok(_news) = session.unsolicited_responses.try_recv() {
            changed = true;
        }
        if changed {
            continue;
        }
        if idle {
            let mut handle = session.idle();
            timed(handle.init()).await?;
            let woke = {
                let (wait, _stop) = handle.wait_with_timeout(IDLE_FOR);
                tokio::select! {
                    r = wait => Some(r),
                    () = ctx.shutdown.cancelled() => None,
                }
            };
            match woke {
                None => return Ok(()),
                Some(r) => {
                    r.map_err(|e| MailError::Server(format!("idle: {e}")))?;
                }
            }
            session = timed(handle.done()).await?;
        } else {
            tokio::select! {
                () = tokio::time::sleep(mb.incoming.poll_interval) => {}
                () = ctx.shutdown.cancelled() => return Ok(()),
            }
            timed(session.noop()).await?;
        }
    }
}

/// Downloads a group of letters: whole when within `limit`, headers only
/// beyond it. Also says whether the server announced a change meanwhile.
async fn download(
    session: &mut Session<Conn>,
    group: &[(u32, u64)],
    limit: u64,
) -> Result<(Vec<Fetched>, bool), MailError> {
    let (small, large): (Vec<_>, Vec<_>) = group.iter().partition(|(_, s)| *s <= limit);
    let mut batch = Vec::with_capacity(group.len());
    let mut news = false;
    for (uids, query, too_large) in [
        (small, "(UID INTERNALDATE BODY.PEEK[])", false),
        (
            large,
            "(UID INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER])",
            true,
        ),
    ] {
        if uids.is_empty() {
            continue;
        }
        let set = uid_set(uids.iter().map(|(u, _)| *u));
        // A group of up to 32 MiB may take a slow server a while.
        let fetched = within(
            Duration::from_secs(300),
            fetch::uid_fetch(session.get_mut(), &set, query, limit.max(MAX_HEADER)),
        )
        .await?;
        news |= fetched.news;
        for f in fetched.items {
            let Some(uid) = f.uid else { continue };
            batch.push(Fetched {
                raw: f.body.unwrap_or_default(),
                arrived: f.internal_date,
                too_large: too_large.then(|| f.size.unwrap_or(0)),
                position: uid.to_string(),
                key: None,
            });
        }
    }
    batch.sort_by_key(|f| f.position.parse::<u32>().unwrap_or(0));
    Ok((batch, news))
}

/// A UID set in ranges: `3:7,9,12:20`.
fn uid_set(uids: impl IntoIterator<Item = u32>) -> String {
    let mut out = String::new();
    let mut run: Option<(u32, u32)> = None;
    let flush = |out: &mut String, (a, b): (u32, u32)| {
        if !out.is_empty() {
            out.push(',');
        }
        if a == b {
            out.push_str(&a.to_string());
        } else {
            out.push_str(&format!("{a}:{b}"));
        }
    };
    for u in uids {
        run = match run {
            Some((a, b)) if u == b + 1 => Some((a, u)),
            Some(r) => {
                flush(&mut out, r);
                Some((u, u))
            }
            None => Some((u, u)),
        };
    }
    if let Some(r) = run {
        flush(&mut out, r);
    }
    out
}

/// Takes every letter above UID `last`; returns the new last UID and
/// whether the server announced a change to the folder meanwhile.
///
/// The new letters are listed; then, a window of `SIZE_WINDOW` UIDs at a
/// time, their sizes are asked and they are downloaded in groups (at most
/// `GROUP_LETTERS` letters and `BATCH_BYTES` bytes). Groups are published
/// and their cursor committed strictly in order. Downloading (with the
/// size questions), parsing, filing and recording overlap, and the first
/// download starts after one window's sizes rather than the whole
/// folder's. A group is handed to the feed as soon as it is filed; the
/// feed commits it after the groups before it (together with them when
/// they queue up), and its state and cursor are committed only after
/// that, with those of any group filed meanwhile.
async fn catch_up(
    email: &Email,
    mb: &Mailbox,
    ctx: &AdapterContext,
    session: &mut Session<Conn>,
    validity: u32,
    mut last: u32,
) -> Result<(u32, bool), MailError> {
    let started = std::time::Instant::now();
    let mut uids: Vec<u32> = timed(session.uid_search(format!("UID {}:*", last.saturating_add(1))))
        .await?
        .into_iter()
        // "n:*" names the last letter even when its UID is below n.
        .filter(|&u| u > last)
        .collect();
    uids.sort_unstable();
    let limit = email.inner.config.max_letter_bytes;
    let mut news = false;
    let mut letters = 0usize;
    // Four stages run at once, each on its own group, strictly in order:
    // download, parse, file (dedupe, thread, build the records, hand them
    // to the feed) and record (once the feed has committed them, commit
    // the state and the cursor). Each stage owns its ends of the channels,
    // so when one fails and returns, the stage before it stops at its next
    // hand-over and the ones after it finish what they were given.
    let (downloaded, to_parse) = mpsc::channel::<(u32, Vec<Fetched>)>(1);
    let (parsed, to_file) = mpsc::channel::<(u32, Parsed)>(1);
    let (published, to_record) = mpsc::channel::<(u32, Published)>(2);
    // Groups recorded so far: filing needs to look, beside the state, only
    // at the groups after these.
    let recorded = AtomicUsize::new(0);
    let fetch = async {
        let downloaded = downloaded;
        for window in uids.chunks(SIZE_WINDOW) {
            let (groups, changed) = sized_groups(session, window, limit).await?;
            news |= changed;
            for group in groups {
                let top = group.iter().map(|(u, _)| *u).max().unwrap_or(0);
                letters += group.len();
                let (batch, changed) = download(session, &group, limit).await?;
                news |= changed;
                if downloaded.send((top, batch)).await.is_err() {
                    return Ok(());
                }
            }
        }
        Ok::<(), MailError>(())
    };
    let parse = async {
        let (mut to_parse, parsed) = (to_parse, parsed);
        while let Some((top, batch)) = to_parse.recv().await {
            if parsed.send((top, email.parse(batch).await?)).await.is_err() {
                break;
            }
        }
        Ok::<(), MailError>(())
    };
    let file = async {
        let (mut to_file, published) = (to_file, published);
        let mut unsaved: VecDeque<(usize, Arc<Vec<Known>>)> = VecDeque::new();
        let mut group = 0usize;
        while let Some((top, batch)) = to_file.recv().await {
            // Read before the state is: a group recorded later is still
            // looked at here, which is harmless.
            let done = recorded.load(Ordering::Acquire);
            unsaved.retain(|(g, _)| *g >= done);
            let earlier = unsaved.iter().map(|(_, k)| Arc::clone(k)).collect();
            let f = email.file(mb, batch, earlier).await?;
            unsaved.push_back((group, Arc::clone(&f.known)));
            group += 1;
            // The feed keeps the order batches are handed over in; a batch
            // need not wait for the one before it to be committed.
            let p = email.publish(f, ctx).await?;
            if published.send((top, p)).await.is_err() {
                break;
            }
        }
        Ok::<(), MailError>(())
    };
    let record = async {
        let mut to_record = to_record;
        while let Some((top, first)) = to_record.recv().await {
            // Groups that are waiting too are remembered in the same state
            // transaction.
            let (mut top, mut batches) = (top, vec![first]);
            while let Ok((t, more)) = to_record.try_recv() {
                top = top.max(t);
                batches.push(more);
            }
            let n = batches.len();
            email.remember(mb, batches, Some((validity, top))).await?;
            last = last.max(top);
            recorded.fetch_add(n, Ordering::Release);
        }
        Ok::<(), MailError>(())
    };
    let (downloading, parsing, filing, recording) = tokio::join!(fetch, parse, file, record);
    // A later stage stops only because of its own failure, and an earlier
    // one may stop because of it: the latest failure is the cause.
    recording.and(filing).and(parsing).and(downloading)?;
    if letters > 0 {
        tracing::info!(
            mailbox = %mb.name,
            letters,
            ms = started.elapsed().as_millis() as u64,
            "letters taken"
        );
    }
    Ok((last, news))
}

/// Asks the sizes of a window of UIDs (ascending) and splits the letters
/// into download groups; also says whether the server announced a change
/// meanwhile.
async fn sized_groups(
    session: &mut Session<Conn>,
    window: &[u32],
    limit: u64,
) -> Result<(Vec<Vec<(u32, u64)>>, bool), MailError> {
    let (Some(&first), Some(&end)) = (window.first(), window.last()) else {
        return Ok((Vec::new(), false));
    };
    let fetched = within(
        IO_TIMEOUT,
        fetch::uid_fetch(
            session.get_mut(),
            &format!("{first}:{end}"),
            "(UID RFC822.SIZE)",
            0,
        ),
    )
    .await?;
    let mut sizes: Vec<(u32, u64)> = fetched
        .items
        .iter()
        .filter_map(|f| Some((f.uid?, f.size?)))
        .filter(|(uid, _)| (first..=end).contains(uid))
        .collect();
    sizes.sort_unstable();
    let mut groups: Vec<Vec<(u32, u64)>> = Vec::new();
    let mut bytes = 0u64;
    for (uid, size) in sizes {
        // A letter over the limit costs only its headers.
        let cost = if size > limit { 64 * 1024 } else { size };
        match groups.last_mut() {
            Some(g) if bytes + cost <= BATCH_BYTES && g.len() < GROUP_LETTERS => {
                g.push((uid, size));
            }
            _ => {
                groups.push(vec![(uid, size)]);
                bytes = 0;
            }
        }
        bytes += cost;
    }
    Ok((groups, fetched.news))
}

#[cfg(test)]
mod tests {
    use super::uid_set;

    #[test]
    fn uid_sets_are_written_as_ranges() {
        assert_eq!(uid_set([3, 4, 5, 6, 7, 9, 12, 13]), "3:7,9,12:13");
        assert_eq!(uid_set([1]), "1");
        assert_eq!(uid_set([]), "");
    }
}
