//! The content-addressed store under the data directory: files named by
//! their SHA-256, written once, kept as records appended to pack files.
//!
//! `<dir>/packs/00000001.pack` … hold the files the gateway stores
//! (attachments of letters and messages, letters kept raw): each record is
//! `SBB1`, the SHA-256 (32 bytes), the length (8 bytes, little-endian)
//! and the bytes. `<dir>/packs/index.sqlite` says where each digest is.
//! Creating one file per attachment cost this machine's ext4 100–300 µs of
//! CPU a file, more than parsing the letter; appending costs a write.
//! `docs/decisions.md` ("Attachments in packs") has the reasoning.
//!
//! A file stored as `<dir>/ab/abcdef…` (the CRM's uploads) is read as well,
//! so a letter can carry a file a manager uploaded.
//!
//! Durability: [`Blobs::sync`] writes the packs out and syncs them, then
//! records the new entries in the index. Records past the index's end of a
//! pack (a crash between the two steps) are indexed again when the store
//! is opened, each checked against its digest; a torn record at the end is
//! cut off.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

/// A record's header: magic, digest, length.
const MAGIC: &[u8; 4] = b"SBB1";
const HEADER: u64 = 4 + 32 + 8;
/// A pack is closed once it is this large; the next record starts another.
const PACK_MAX: u64 = 1 << 30;
/// Bytes buffered before they are written to the pack.
const BUFFER: usize = 1 << 20;

/// The store could not be opened or used.
#[derive(Debug, thiserror::Error)]
#[error("attachment store {}: {what}", dir.display())]
pub struct BlobError {
    dir: PathBuf,
    what: String,
}

/// Where a record's bytes are.
#[derive(Debug, Clone, Copy)]
struct Loc {
    pack: u32,
    /// Of the bytes, past the header.
    offset: u64,
    len: u64,
}

#[derive(Debug, Clone)]
pub struct Blobs {
    inner: Arc<Store>,
}

#[derive(Debug)]
struct Store {
    dir: PathBuf,
    packs: PathBuf,
    writer: Mutex<Writer>,
    /// Held while the store is open for writing: one process appends to
    /// the packs. `None` for a reader.
    lock: Option<nix::fcntl::Flock<File>>,
}

#[derive(Debug)]
struct Writer {
    index: Connection,
    /// The pack records are appended to; opened at the first put.
    active: Option<Active>,
    /// The pack the next record goes to when none is active.
    next: u32,
    /// Written but not yet in the index (nor, before `sync`, on disk).
    pending: HashMap<[u8; 32], Loc>,
    /// Packs closed since the last `sync`, already synced, whose ends the
    /// index has still to learn.
    closed: Vec<(u32, u64)>,
    /// A write failed since the last `sync`: what was appended since is
    /// given up, and the next `sync` says so.
    failed: Option<std::io::Error>,
}

#[derive(Debug)]
struct Active {
    number: u32,
    file: File,
    /// Records not yet written to the file.
    buf: Vec<u8>,
    /// The pack's length, buffered bytes included.
    len: u64,
    /// Its length at the last sync: what is on disk.
    synced: u64,
}

impl Active {
    /// Writes the buffered records to the file.
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.buf.len() + bytes.len() > BUFFER {
            self.flush()?;
        }
        if bytes.len() > BUFFER {
            self.file.write_all(bytes)
        } else {
            self.buf.extend_from_slice(bytes);
            Ok(())
        }
    }
}

impl Blobs {
    /// Opens (creating it when missing) the store in `dir`, indexing any
    /// records a crash left out of the index.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let dir = dir.into();
        let fail = |what: String| BlobError {
            dir: dir.clone(),
            what,
        };
        let packs = dir.join("packs");
        std::fs::create_dir_all(&packs).map_err(|e| fail(format!("cannot create: {e}")))?;
        let lock = File::create(packs.join("lock")).map_err(|e| fail(e.to_string()))?;
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| fail(format!("in use by another process ({e})")))?;
        let index =
            open_index(&packs.join("index.sqlite")).map_err(|e| fail(format!("index: {e}")))?;
        let mut writer = Writer::new(index);
        writer
            .recover(&packs)
            .map_err(|e| fail(format!("recovery: {e}")))?;
        Ok(Self::assemble(dir, packs, writer, Some(lock)))
    }

    /// Opens the store in `dir` for reading only, beside the process that
    /// writes it: what that process has synced can be read, nothing can be
    /// stored.
    pub fn open_read_only(dir: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let dir = dir.into();
        let packs = dir.join("packs");
        let index = Connection::open_with_flags(
            packs.join("index.sqlite"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .map_err(|e| BlobError {
            dir: dir.clone(),
            what: format!("index: {e}"),
        })?;
        Ok(Self::assemble(dir, packs, Writer::new(index), None))
    }

    fn assemble(
        dir: PathBuf,
        packs: PathBuf,
        writer: Writer,
        lock: Option<nix::fcntl::Flock<File>>,
    ) -> Self {
        Self {
            inner: Arc::new(Store {
                dir,
                packs,
                writer: Mutex::new(writer),
                lock,
            }),
        }
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.inner.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `data` (durably, once) and returns its SHA-256 in hex.
    pub fn put(&self, data: &[u8]) -> std::io::Result<String> {
        let sha = self.put_deferred(data)?;
        self.sync()?;
        Ok(sha)
    }

    /// Stores `data` once without waiting for the disk; [`Blobs::sync`]
    /// makes everything stored so far durable at once.
    pub fn put_deferred(&self, data: &[u8]) -> std::io::Result<String> {
        if self.inner.lock.is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the attachment store was opened for reading only",
            ));
        }
        let digest = sha256(data);
        let mut w = self.writer();
        if w.locate(&digest).map_err(std::io::Error::other)?.is_none() {
            w.append(&self.inner.packs, &digest, data)?;
        }
        Ok(hex::encode(digest))
    }

    /// Makes everything stored so far durable: the packs written and
    /// synced, then their records in the index.
    pub fn sync(&self) -> std::io::Result<()> {
        self.writer().sync()
    }

    /// A stored file's bytes; `None` when the digest is malformed, absent,
    /// or the bytes no longer match it.
    pub fn read(&self, sha: &str) -> Option<Vec<u8>> {
        let digest = parse_sha(sha)?;
        // A file the CRM stored on its own.
        if let Ok(bytes) = std::fs::read(self.inner.dir.join(&sha[..2]).join(sha)) {
            return Some(bytes);
        }
        let loc = {
            let mut w = self.writer();
            let loc = w.locate(&digest).ok()??;
            // A record not yet written out is in the buffer.
            if let Some(a) = w.active.as_mut().filter(|a| a.number == loc.pack) {
                a.flush().ok()?;
            }
            loc
        };
        let file = File::open(pack_path(&self.inner.packs, loc.pack)).ok()?;
        let mut bytes = vec![0; usize::try_from(loc.len).ok()?];
        file.read_exact_at(&mut bytes, loc.offset).ok()?;
        (sha256(&bytes) == digest).then_some(bytes)
    }
}

impl Writer {
    fn new(index: Connection) -> Self {
        Self {
            index,
            active: None,
            next: 1,
            pending: HashMap::new(),
            closed: Vec::new(),
            failed: None,
        }
    }

    fn locate(&self, digest: &[u8; 32]) -> rusqlite::Result<Option<Loc>> {
        match self.pending.get(digest) {
            Some(loc) => Ok(Some(*loc)),
            None => self.indexed(digest),
        }
    }

    fn indexed(&self, digest: &[u8; 32]) -> rusqlite::Result<Option<Loc>> {
        self.index
            .prepare_cached("SELECT pack, offset, len FROM blobs WHERE sha = ?1")?
            .query_row([&digest[..]], |r| {
                // Written from file offsets, which fit in an i64.
                Ok(Loc {
                    pack: r.get(0)?,
                    offset: r.get::<_, i64>(1)? as u64,
                    len: r.get::<_, i64>(2)? as u64,
                })
            })
            .optional()
    }

    /// Appends one record to the active pack, starting a new pack when
    /// this one is full.
    fn append(&mut self, packs: &Path, digest: &[u8; 32], data: &[u8]) -> std::io::Result<()> {
        if let Some(e) = &self.failed {
            return Err(std::io::Error::new(e.kind(), e.to_string()));
        }
        let appended = self.try_append(packs, digest, data);
        if let Err(e) = &appended {
            self.failed = Some(std::io::Error::new(e.kind(), e.to_string()));
        }
        appended
    }

    fn try_append(&mut self, packs: &Path, digest: &[u8; 32], data: &[u8]) -> std::io::Result<()> {
        let size = HEADER + data.len() as u64;
        if self
            .active
            .as_ref()
            .is_some_and(|a| a.len > 0 && a.len + size > PACK_MAX)
        {
            self.close_active()?;
        }
        let a = match &mut self.active {
            Some(a) => a,
            None => {
                let number = self.next;
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(pack_path(packs, number))?;
                let len = file.metadata()?.len();
                self.active.insert(Active {
                    number,
                    file,
                    buf: Vec::with_capacity(BUFFER),
                    len,
                    synced: len,
                })
            }
        };
        let mut header = [0u8; HEADER as usize];
        header[..4].copy_from_slice(MAGIC);
        header[4..36].copy_from_slice(digest);
        header[36..].copy_from_slice(&(data.len() as u64).to_le_bytes());
        let start = a.len;
        a.write(&header)?;
        a.write(data)?;
        a.len += size;
        self.pending.insert(
            *digest,
            Loc {
                pack: a.number,
                offset: start + HEADER,
                len: data.len() as u64,
            },
        );
        Ok(())
    }

    /// Writes out and syncs the active pack and forgets it; the next
    /// record starts a new one.
    fn close_active(&mut self) -> std::io::Result<()> {
        if let Some(a) = &mut self.active {
            a.flush()?;
            a.file.sync_data()?;
            self.closed.push((a.number, a.len));
            self.next = a.number + 1;
            self.active = None;
        }
        Ok(())
    }

    /// Gives up what was appended to the active pack since its last sync
    /// (after a failed write): the file is cut back and those records
    /// forgotten.
    fn roll_back(&mut self) {
        if let Some(a) = self.active.take() {
            self.pending
                .retain(|_, l| l.pack != a.number || l.offset < a.synced);
            if let Err(e) = a.file.set_len(a.synced) {
                tracing::warn!(error = %e, "attachment pack not cut back; its tail is checked when the store is opened");
            }
        }
        self.failed = None;
    }

    fn sync(&mut self) -> std::io::Result<()> {
        if let Some(e) = self.failed.take() {
            self.roll_back();
            return Err(std::io::Error::new(
                e.kind(),
                format!("storing an attachment failed: {e}"),
            ));
        }
        let mut ends = std::mem::take(&mut self.closed);
        if let Some(a) = self.active.as_mut().filter(|a| a.len > a.synced) {
            if let Err(e) = a.flush().and_then(|()| a.file.sync_data()) {
                self.closed = ends;
                self.roll_back();
                return Err(e);
            }
            a.synced = a.len;
            ends.push((a.number, a.len));
        }
        if ends.is_empty() && self.pending.is_empty() {
            return Ok(());
        }
        let recorded = (|| {
            let tx = self.index.transaction()?;
            {
                let mut put = tx.prepare_cached(
                    "INSERT OR IGNORE INTO blobs (sha, pack, offset, len) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for (digest, loc) in &self.pending {
                    put.execute(params![
                        &digest[..],
                        loc.pack,
                        loc.offset as i64,
                        loc.len as i64
                    ])?;
                }
                let mut end = tx.prepare_cached(
                    "INSERT INTO packs (pack, indexed_end) VALUES (?1, ?2) \
                     ON CONFLICT (pack) DO UPDATE SET indexed_end = max(indexed_end, excluded.indexed_end)",
                )?;
                for (pack, len) in &ends {
                    end.execute(params![pack, *len as i64])?;
                }
            }
            tx.commit()
        })();
        match recorded {
            Ok(()) => {
                self.pending.clear();
                Ok(())
            }
            Err(e) => {
                // The records are on disk; the next sync records them.
                self.closed = ends;
                Err(std::io::Error::other(format!("attachment index: {e}")))
            }
        }
    }

    /// Indexes the records of every pack past its indexed end, cutting
    /// off a torn or corrupt tail.
    fn recover(&mut self, packs: &Path) -> std::io::Result<()> {
        let mut numbers: Vec<u32> = std::fs::read_dir(packs)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                let stem = name.to_str()?.strip_suffix(".pack")?;
                (stem.len() == 8).then(|| stem.parse().ok())?
            })
            .collect();
        numbers.sort_unstable();
        for &number in &numbers {
            let indexed = self
                .index
                .query_row(
                    "SELECT indexed_end FROM packs WHERE pack = ?1",
                    [number],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
                .map_err(std::io::Error::other)?
                .map_or(0, |end| end as u64);
            let path = pack_path(packs, number);
            let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
            let len = file.metadata()?.len();
            if len <= indexed {
                continue;
            }
            let end = scan(&mut file, indexed, len, |digest, offset, size| {
                self.pending.insert(
                    digest,
                    Loc {
                        pack: number,
                        offset,
                        len: size,
                    },
                );
            })?;
            if end < len {
                tracing::warn!(pack = %path.display(), at = end, dropped = len - end,
                    "attachment pack ends in a torn record; cut off");
                file.set_len(end)?;
                file.sync_data()?;
            }
            self.closed.push((number, end));
        }
        // Records go on in the last pack while it has room.
        self.next = match numbers.last() {
            None => 1,
            Some(&n) if std::fs::metadata(pack_path(packs, n))?.len() < PACK_MAX => n,
            Some(&n) => n + 1,
        };
        self.sync()
    }
}

/// Reads records from `from` to at most `len`, handing each one's digest,
/// offset and length to `found`; returns where the last whole record that
/// matches its digest ends.
fn scan(
    file: &mut File,
    from: u64,
    len: u64,
    mut found: impl FnMut([u8; 32], u64, u64),
) -> std::io::Result<u64> {
    let mut at = from;
    file.seek(SeekFrom::Start(at))?;
    let mut input = std::io::BufReader::with_capacity(BUFFER, file);
    let mut data = Vec::new();
    while at + HEADER <= len {
        let mut header = [0u8; HEADER as usize];
        input.read_exact(&mut header)?;
        let mut size = [0u8; 8];
        size.copy_from_slice(&header[36..]);
        let size = u64::from_le_bytes(size);
        if &header[..4] != MAGIC || size > len - at - HEADER {
            break;
        }
        data.resize(usize::try_from(size).map_err(std::io::Error::other)?, 0);
        input.read_exact(&mut data)?;
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&header[4..36]);
        if sha256(&data) != digest {
            break;
        }
        found(digest, at + HEADER, size);
        at += HEADER + size;
    }
    Ok(at)
}

/// A power cut may lose the index's last commits: the packs' tails give
/// them back when the store is opened.
fn open_index(path: &Path) -> rusqlite::Result<Connection> {
    crate::open_local_db(
        path,
        "CREATE TABLE IF NOT EXISTS blobs (
             sha BLOB PRIMARY KEY, pack INTEGER NOT NULL,
             offset INTEGER NOT NULL, len INTEGER NOT NULL) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS packs (
             pack INTEGER PRIMARY KEY, indexed_end INTEGER NOT NULL);",
    )
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn pack_path(packs: &Path, number: u32) -> PathBuf {
    packs.join(format!("{number:08}.pack"))
}

/// A lower-case hex SHA-256.
fn parse_sha(sha: &str) -> Option<[u8; 32]> {
    if sha.len() != 64 || sha.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut digest = [0u8; 32];
    hex::decode_to_slice(sha, &mut digest).ok()?;
    Some(digest)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    /// A store of its own: the directory (kept alive), its path, the store.
    fn store() -> (tempfile::TempDir, PathBuf, Blobs) {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("attachments");
        let blobs = Blobs::open(&store).unwrap();
        (dir, store, blobs)
    }

    #[test]
    fn files_are_stored_once_by_content_and_read_back() {
        let (_dir, store, blobs) = store();
        let price = blobs.put(b"price list").unwrap();
        assert_eq!(price, sha(b"price list"));
        assert_eq!(blobs.put(b"price list").unwrap(), price);
        // Read before and after its sync.
        let offer = blobs.put_deferred(b"offer").unwrap();
        assert_eq!(blobs.read(&offer).unwrap(), b"offer");
        blobs.sync().unwrap();
        assert_eq!(blobs.read(&price).unwrap(), b"price list");
        assert_eq!(blobs.read(&offer).unwrap(), b"offer");
        let pack = std::fs::read(store.join("packs/00000001.pack")).unwrap();
        assert_eq!(
            pack.len() as u64,
            2 * HEADER + "price list".len() as u64 + "offer".len() as u64,
            "each file is stored once"
        );
        assert_eq!(blobs.read(&sha(b"never stored")), None);
        assert_eq!(blobs.read("not-a-digest"), None);
        assert_eq!(blobs.read(&price.to_uppercase()), None);

        // Another process cannot append to the same packs, but can read
        // what is synced.
        let err = Blobs::open(&store).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        let reader = Blobs::open_read_only(&store).unwrap();
        assert_eq!(reader.read(&offer).unwrap(), b"offer");
        assert_eq!(
            reader.put(b"contract").unwrap_err().kind(),
            std::io::ErrorKind::PermissionDenied
        );
        drop(blobs);
        let again = Blobs::open(&store).unwrap();
        assert_eq!(again.read(&offer).unwrap(), b"offer");
        // A new record goes on after the old ones.
        let contract = again.put(b"contract").unwrap();
        assert_eq!(again.read(&contract).unwrap(), b"contract");
        assert_eq!(again.read(&price).unwrap(), b"price list");
    }

    #[test]
    fn a_file_the_crm_stored_is_read_from_its_own_path() {
        let (_dir, store, blobs) = store();
        let sha = sha(b"uploaded invoice");
        std::fs::create_dir_all(store.join(&sha[..2])).unwrap();
        std::fs::write(store.join(&sha[..2]).join(&sha), b"uploaded invoice").unwrap();
        assert_eq!(blobs.read(&sha).unwrap(), b"uploaded invoice");
    }

    #[test]
    fn records_a_crash_left_out_of_the_index_are_found_and_a_torn_tail_cut() {
        let (_dir, store, blobs) = store();
        let kept = blobs.put(b"kept").unwrap();
        // Written and synced, but the index never heard of it: the crash
        // came between the pack's sync and the index's commit.
        let unindexed = blobs.put_deferred(b"unindexed").unwrap();
        {
            let mut w = blobs.writer();
            let a = w.active.as_mut().unwrap();
            a.flush().unwrap();
            a.file.sync_data().unwrap();
            w.pending.clear();
            w.active = None;
        }
        drop(blobs);
        // And a record torn halfway through its bytes.
        let pack = store.join("packs/00000001.pack");
        let whole = std::fs::metadata(&pack).unwrap().len();
        let mut torn = Vec::from(&MAGIC[..]);
        torn.extend(Sha256::digest(b"torn record"));
        torn.extend(11u64.to_le_bytes());
        torn.extend(b"torn");
        let mut f = OpenOptions::new().append(true).open(&pack).unwrap();
        f.write_all(&torn).unwrap();
        drop(f);

        let blobs = Blobs::open(&store).unwrap();
        assert_eq!(blobs.read(&kept).unwrap(), b"kept");
        assert_eq!(blobs.read(&unindexed).unwrap(), b"unindexed");
        assert_eq!(blobs.read(&sha(b"torn record")), None);
        assert_eq!(std::fs::metadata(&pack).unwrap().len(), whole);
        // The torn record can be stored again, whole.
        let again = blobs.put(b"torn record").unwrap();
        assert_eq!(blobs.read(&again).unwrap(), b"torn record");
        drop(blobs);
        let blobs = Blobs::open(&store).unwrap();
        assert_eq!(blobs.read(&again).unwrap(), b"torn record");
        assert_eq!(blobs.read(&unindexed).unwrap(), b"unindexed");
    }

    #[test]
    fn a_failed_write_gives_up_what_was_not_synced_and_says_so_at_the_sync() {
        let (_dir, store, blobs) = store();
        let kept = blobs.put(b"kept").unwrap();
        let buffered = blobs.put_deferred(b"buffered").unwrap();
        // The disk refuses the next write.
        blobs.writer().active.as_mut().unwrap().file =
            File::open(store.join("packs/00000001.pack")).unwrap();
        assert!(blobs.put_deferred(&vec![7u8; 2 * BUFFER]).is_err());
        // Nothing more is taken until the sync has reported the failure.
        assert!(blobs.put_deferred(b"later").is_err());
        let err = blobs.sync().unwrap_err();
        assert!(
            err.to_string().contains("storing an attachment failed"),
            "{err}"
        );
        assert_eq!(blobs.read(&buffered), None, "given up, not half kept");
        assert_eq!(blobs.read(&kept).unwrap(), b"kept");
        // The letters are taken again; this time the disk takes them.
        assert_eq!(blobs.put(b"buffered").unwrap(), buffered);
        drop(blobs);
        let blobs = Blobs::open(&store).unwrap();
        assert_eq!(blobs.read(&buffered).unwrap(), b"buffered");
        assert_eq!(blobs.read(&kept).unwrap(), b"kept");
    }

    #[test]
    fn bytes_that_no_longer_match_their_digest_are_not_returned() {
        let (_dir, store, blobs) = store();
        let sha = blobs.put(b"the offer, signed").unwrap();
        let pack = store.join("packs/00000001.pack");
        let mut bytes = std::fs::read(&pack).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&pack, bytes).unwrap();
        assert_eq!(blobs.read(&sha), None);
    }
}
