//! Stores derived from the log and kept beside it (snapshots, the local read model) are not the truth:
//! one that cannot be opened — a crash mid-write, a damaged file — is moved aside and started afresh,
//! and rebuilds itself from the log. Only another process holding it open stops a start.

use std::fmt::Display;
use std::path::{Path, PathBuf};

/// Why a derived store could not be had.
#[derive(Debug, thiserror::Error)]
pub enum DerivedError {
    #[error("cannot open {what} in {dir}: another process holds it (is a tally server running on this data directory?): {reason}")]
    Locked { what: &'static str, dir: PathBuf, reason: String },
    #[error("cannot move the damaged {what} in {dir} aside to {aside}: {source}")]
    SetAside { what: &'static str, dir: PathBuf, aside: PathBuf, source: std::io::Error },
    #[error("cannot open {what} in {dir}, even afresh: {reason}")]
    Fresh { what: &'static str, dir: PathBuf, reason: String },
}

/// Whether an open failed because another process holds the store (sled's file lock).
fn held_by_another(reason: &str) -> bool {
    reason.contains("could not acquire lock")
}

/// Opens the store `what` in `dir`; if it cannot be opened for any reason but another process holding
/// it, moves the directory aside (`<dir>.damaged-<unix ms>`, kept for a post-mortem), says so (a warning
/// and the `tally_derived_store_resets_total` counter) and opens a fresh one.
pub fn open_or_reset<T, E: Display>(what: &'static str, dir: &Path, open: impl Fn(&Path) -> Result<T, E>) -> Result<T, DerivedError> {
    let reason = match open(dir) {
        Ok(store) => return Ok(store),
        Err(error) => error.to_string(),
    };
    if held_by_another(&reason) {
        return Err(DerivedError::Locked { what, dir: dir.to_owned(), reason });
    }
    let aside = set_aside_path(dir);
    std::fs::rename(dir, &aside).map_err(|source| DerivedError::SetAside { what, dir: dir.to_owned(), aside: aside.clone(), source })?;
    tracing::warn!(store = what, dir = %dir.display(), aside = %aside.display(), %reason,
        "a derived store could not be opened; it was moved aside and starts afresh, rebuilt from the log");
    metrics::counter!("tally_derived_store_resets_total", "store" => what).increment(1);
    open(dir).map_err(|error| DerivedError::Fresh { what, dir: dir.to_owned(), reason: error.to_string() })
}

/// Deletes the store in `dir` whole when it cannot be opened (a purge of a damaged store), unless another
/// process holds it; `None` when it opened, so the caller purges it the ordinary way.
pub fn delete_if_unopenable<T, E: Display>(
    what: &'static str,
    dir: &Path,
    open: impl Fn(&Path) -> Result<T, E>,
) -> Result<Option<T>, Box<dyn std::error::Error>> {
    match open(dir) {
        Ok(store) => Ok(Some(store)),
        Err(error) if held_by_another(&error.to_string()) => {
            Err(DerivedError::Locked { what, dir: dir.to_owned(), reason: error.to_string() }.into())
        }
        Err(error) => {
            eprintln!("{what} in {} cannot be opened ({error}); deleting it whole", dir.display());
            std::fs::remove_dir_all(dir)?;
            Ok(None)
        }
    }
}

fn set_aside_path(dir: &Path) -> PathBuf {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let name = dir.file_name().map_or_else(|| "store".into(), |n| n.to_string_lossy().into_owned());
    dir.with_file_name(format!("{name}.damaged-{ms}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_that_cannot_open_is_set_aside_and_started_afresh() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("snapshots");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("data"), b"damaged").unwrap();
        let opened = open_or_reset("snapshots", &dir, |d: &Path| {
            if d.join("data").exists() { Err("corrupt") } else { Ok(std::fs::create_dir_all(d).map(|()| "fresh").unwrap()) }
        });
        assert_eq!(opened.unwrap(), "fresh");
        let aside: Vec<_> = std::fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(aside.iter().any(|n| n.starts_with("snapshots.damaged-")), "{aside:?}");
    }

    #[test]
    fn a_store_another_process_holds_is_not_touched() {
        let root = tempfile::tempdir().unwrap();
        let opened = open_or_reset("snapshots", root.path(), |_: &Path| Err::<(), _>("IO error: could not acquire lock on \"db\""));
        assert!(matches!(opened, Err(DerivedError::Locked { .. })), "{opened:?}");
        assert!(root.path().exists());
    }
}
