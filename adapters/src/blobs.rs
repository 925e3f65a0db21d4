//! Content-addressed files under the data directory: `<dir>/ab/abcdef…`
//! named by their SHA-256, the same layout the CRM keeps its attachments in,
//! so a letter's attachment and a file a manager uploaded are one store.

use std::io::Write;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

#[derive(Debug, Clone)]
pub struct Blobs {
    dir: PathBuf,
}

impl Blobs {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, sha: &str) -> Option<PathBuf> {
        (sha.len() == 64
            && sha
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then(|| self.dir.join(&sha[..2]).join(sha))
    }

    /// Stores `data` (durably, once) and returns its SHA-256 in hex.
    pub fn put(&self, data: &[u8]) -> std::io::Result<String> {
        let sha = self.put_deferred(data)?;
        self.sync()?;
        Ok(sha)
    }

    /// Stores `data` once without waiting for the disk; [`Blobs::sync`]
    /// makes everything stored so far durable in one flush.
    pub fn put_deferred(&self, data: &[u8]) -> std::io::Result<String> {
        let sha = hex::encode(Sha256::digest(data));
        let Some(path) = self.path(&sha) else {
            return Err(std::io::Error::other("bad digest"));
        };
        if path.exists() {
            return Ok(sha);
        }
        let dir = path.parent().unwrap_or(&self.dir);
        let tmp = dir.join(format!(".{sha}.{}.part", std::process::id()));
        // The fan-out directory usually exists: create it only when the
        // file cannot be, rather than asking before every file.
        let mut f = match std::fs::File::create(&tmp) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)?;
                std::fs::File::create(&tmp)?
            }
            other => other?,
        };
        f.write_all(data)?;
        std::fs::rename(&tmp, &path)?;
        Ok(sha)
    }

    /// Flushes the store's file system: every file put before is on disk,
    /// with its name. One call covers a whole batch of letters.
    pub fn sync(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let dir = std::fs::File::open(&self.dir)?;
        nix::unistd::syncfs(&dir).map_err(std::io::Error::from)
    }

    /// Creates the 256 fan-out directories up front (a no-op once they
    /// exist), so that storing a file never has to: a mailbox's first
    /// catch-up would otherwise create them one attachment at a time.
    pub fn prepare(&self) -> std::io::Result<()> {
        (0..=255u8).try_for_each(|i| std::fs::create_dir_all(self.dir.join(format!("{i:02x}"))))
    }

    /// A stored file's bytes; `None` when the digest is malformed or absent.
    pub fn read(&self, sha: &str) -> Option<Vec<u8>> {
        std::fs::read(self.path(sha)?).ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn files_are_stored_once_by_content_with_or_without_the_fan_out() {
        let dir = tempfile::tempdir().unwrap();
        let lazy = Blobs::new(dir.path().join("lazy"));
        let sha = lazy.put(b"price list").unwrap();
        assert_eq!(lazy.read(&sha).unwrap(), b"price list");
        assert_eq!(lazy.put(b"price list").unwrap(), sha);

        let ready = Blobs::new(dir.path().join("a").join("ready"));
        ready.prepare().unwrap();
        ready.prepare().unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("a/ready"))
                .unwrap()
                .count(),
            256
        );
        assert_eq!(ready.put(b"price list").unwrap(), sha);
        assert_eq!(ready.read(&sha).unwrap(), b"price list");
        assert_eq!(ready.read("not-a-digest"), None);
    }
}
