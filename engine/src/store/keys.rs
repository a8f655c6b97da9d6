//! Keys for customers' personal data (`crate::personal`), kept beside the log and never in it, so that
//! destroying one erases what it sealed while the log stays as written. Each backend keeps them in its
//! own place (PostgreSQL: the `tally_personal_keys` table; the embedded log: [`KeysDir`]; the in-memory
//! store: a map); to the store they are opaque bytes under a stream id.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{StoreError, StreamId};

/// A wallet's key for its personal data: 32 random bytes. Its `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct PersonalKey([u8; 32]);

impl PersonalKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, StoreError> {
        let mut bytes = [0; 32];
        getrandom::fill(&mut bytes).map_err(|e| StoreError::Unavailable { reason: format!("no random bytes for a key: {e}") })?;
        Ok(Self(bytes))
    }

    /// A key as stored; `None` unless it is 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for PersonalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PersonalKey(..)")
    }
}

/// The embedded log's keys: one file of 32 bytes per wallet, `keys/<2 hex>/<64 hex>` under the log's
/// folder, named by the SHA-256 of the stream id. A key is written to a temporary file, fsynced, linked
/// into place (never over an existing one) and its folder fsynced; erasing unlinks it and fsyncs the
/// folder, so both survive a crash once answered. What the file system keeps of unlinked blocks is the
/// disk's business (see the README's "Erasure").
#[derive(Debug)]
pub struct KeysDir {
    dir: PathBuf,
}

impl KeysDir {
    /// Opens the folder (made with the first key kept), removing what a crash left of a key being kept:
    /// a temporary copy would otherwise outlive the key's erasure.
    pub fn open(dir: PathBuf) -> Result<Self, StoreError> {
        if !dir.exists() {
            return Ok(Self { dir });
        }
        for folder in fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, e))? {
            let folder = folder.map_err(|e| StoreError::io(&dir, e))?.path();
            if !folder.is_dir() {
                continue;
            }
            let mut removed = false;
            for file in fs::read_dir(&folder).map_err(|e| StoreError::io(&folder, e))? {
                let file = file.map_err(|e| StoreError::io(&folder, e))?.path();
                if file.extension().is_some_and(|e| e == TEMPORARY) {
                    fs::remove_file(&file).map_err(|e| StoreError::io(&file, e))?;
                    removed = true;
                }
            }
            if removed {
                sync_dir(&folder)?;
            }
        }
        Ok(Self { dir })
    }

    fn path(&self, subject: &StreamId) -> PathBuf {
        let name: String = Sha256::digest(subject.as_str().as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(&name[..2]).join(name)
    }

    pub fn get(&self, subject: &StreamId) -> Result<Option<PersonalKey>, StoreError> {
        let path = self.path(subject);
        match fs::read(&path) {
            Ok(bytes) => PersonalKey::from_bytes(&bytes).map(Some).ok_or_else(|| StoreError::Corrupt {
                file: path,
                offset: 0,
                reason: format!("a personal data key of {} bytes, not 32", bytes.len()),
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(path, e)),
        }
    }

    /// Stores `key` for `subject` unless it has one; the key it has afterwards.
    pub fn keep(&self, subject: &StreamId, key: &PersonalKey) -> Result<PersonalKey, StoreError> {
        if let Some(kept) = self.get(subject)? {
            return Ok(kept);
        }
        let path = self.path(subject);
        let folder = path.parent().expect("a key's path has its folder");
        if !self.dir.exists() {
            fs::create_dir_all(&self.dir).map_err(|e| StoreError::io(&self.dir, e))?;
            sync_dir(self.dir.parent().unwrap_or(Path::new(".")))?;
        }
        fs::create_dir_all(folder).map_err(|e| StoreError::io(folder, e))?;
        // A name of this call's own: two callers never share a temporary file.
        let mut nonce = [0; 8];
        getrandom::fill(&mut nonce).map_err(|e| StoreError::Unavailable { reason: format!("no random bytes for a file name: {e}") })?;
        let temporary = path.with_extension(format!("{:016x}.{TEMPORARY}", u64::from_le_bytes(nonce)));
        let mut file = File::options().write(true).create_new(true).open(&temporary).map_err(|e| StoreError::io(&temporary, e))?;
        let written = file.write_all(key.as_bytes()).and_then(|()| file.sync_all());
        drop(file);
        // A hard link never replaces: a key another caller kept meanwhile wins, and is the one returned.
        let linked = written.and_then(|()| fs::hard_link(&temporary, &path));
        let removed = fs::remove_file(&temporary);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return self.get(subject)?.ok_or_else(|| StoreError::io(&path, e)),
            Err(e) => return Err(StoreError::io(&path, e)),
        }
        removed.map_err(|e| StoreError::io(&temporary, e))?;
        sync_dir(folder)?;
        sync_dir(&self.dir)?;
        Ok(key.clone())
    }

    /// Destroys `subject`'s key; true if it had one.
    pub fn erase(&self, subject: &StreamId) -> Result<bool, StoreError> {
        let path = self.path(subject);
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(path.parent().expect("a key's path has its folder"))?;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io(path, e)),
        }
    }
}

/// The extension of a key being written, before it is linked into place.
const TEMPORARY: &str = "tmp";

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::io(dir, e))
}
