//! The data directory: claiming it (a marker file, and a registry of the dirs
//! open in this process), syncing it, and the errors that name it.

use crate::error::{KernelError, KernelResult};
use crate::proto::ErrorCode;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Written into a data dir the kernel owns; a non-empty dir without it is
/// refused as foreign.
const MARKER_FILE: &str = "KREPIS_DATA_DIR";
const MARKER: &str = "krepis data directory, format 1\n";
/// The directory of the sled store inside the data dir.
pub const STORE_DIR: &str = "store";
/// The commit log inside the data dir (see `super::wal`).
pub const COMMIT_LOG: &str = "commit.log";
/// The high-water mark of transaction ids (see `super::wal`).
pub const HWM_FILE: &str = "commit.hwm";

/// Data dirs open in this process (a second kernel gets `LOCKED`).
static OPEN_DIRS: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// Data dirs a kernel of this process closed, and when: sled releases its
/// file lock when its last internal handle goes, which can trail the close
/// by a moment. Reopening such a dir waits for that instead of reporting a
/// lock held by "another process".
static RECENTLY_CLOSED: Mutex<Option<HashMap<PathBuf, Instant>>> = Mutex::new(None);
pub const LOCK_RELEASE_WAIT: Duration = Duration::from_secs(2);

/// A `CORRUPT` error about `dir`.
pub fn corrupt(dir: &Path, what: impl std::fmt::Display) -> KernelError {
    KernelError::new(
        ErrorCode::Corrupt,
        format!("the data dir {} {what}", dir.display()),
    )
    .with_detail("path", dir.display().to_string())
}

/// An I/O error as people read it: "No space left on device (os error 28)".
/// sled hands some errors over as a debug dump of the original error; its
/// OS error code is recovered from there.
pub fn describe_io(error: &std::io::Error) -> String {
    if let Some(code) = error.raw_os_error() {
        return std::io::Error::from_raw_os_error(code).to_string();
    }
    let text = error.to_string();
    let code = text
        .split_once("code: ")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse::<i32>().ok());
    match code {
        Some(code) => std::io::Error::from_raw_os_error(code).to_string(),
        None => text,
    }
}

/// A sled error about the store in `dir`, as the typed error it means; the
/// message names the store's path.
pub fn sled_error(dir: &Path, error: sled::Error) -> KernelError {
    match error {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            KernelError::new(
                ErrorCode::Locked,
                format!(
                    "the data dir {} is locked by another process; close the other kernel or use another dataDir",
                    dir.display()
                ),
            )
            .with_detail("path", dir.display().to_string())
        }
        sled::Error::Io(io) => {
            let store = dir.join(STORE_DIR);
            let code = match io.kind() {
                std::io::ErrorKind::PermissionDenied => ErrorCode::Permission,
                _ => ErrorCode::Io,
            };
            KernelError::new(code, format!("the store {}: {}", store.display(), describe_io(&io)))
                .with_detail("path", store.display().to_string())
        }
        sled::Error::Corruption { .. } => corrupt(dir, "has a corrupt store (sled reported corruption)"),
        sled::Error::Unsupported(message) | sled::Error::ReportableBug(message) => {
            corrupt(dir, format!("has a store that cannot be opened: {message}"))
        }
        other => KernelError::new(ErrorCode::Internal, format!("store: {other}")),
    }
}

/// Another process holds sled's file lock.
pub fn lock_contended(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// What a data dir holds before opening: is it already ours?
pub fn inspect(dir: &Path) -> KernelResult<bool> {
    let marker = dir.join(MARKER_FILE);
    match std::fs::read_to_string(&marker) {
        Ok(text) if text == MARKER => return Ok(true),
        Ok(_) => return Err(corrupt(dir, format!("has an unknown {MARKER_FILE} marker"))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(KernelError::io(
                &format!("reading {}", marker.display()),
                &error,
            ))
        }
    }
    // Without the marker only our own files may be there: those of a
    // creation that was interrupted before the marker was written.
    let own = [STORE_DIR, COMMIT_LOG, HWM_FILE, "KREPIS_DATA_DIR.tmp"];
    let mut foreign: Vec<String> = std::fs::read_dir(dir)
        .map_err(|error| KernelError::io(&format!("reading {}", dir.display()), &error))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| !own.contains(&name.as_str()))
        .collect();
    if !foreign.is_empty() {
        foreign.sort();
        foreign.truncate(5);
        return Err(corrupt(
            dir,
            format!(
                "is not a krepis data directory (it contains {}); point dataDir at an empty directory",
                foreign.join(", ")
            ),
        )
        .with_detail("reason", "foreign"));
    }
    Ok(false)
}

/// Makes `dir` ours: written only once its store exists, atomically.
pub fn write_marker(dir: &Path) -> KernelResult<()> {
    let marker = dir.join(MARKER_FILE);
    let temp = dir.join(format!("{MARKER_FILE}.tmp"));
    // Sync the handle that wrote (on Windows a read-only handle cannot flush).
    std::fs::File::create(&temp)
        .and_then(|mut file| {
            std::io::Write::write_all(&mut file, MARKER.as_bytes())?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&temp, &marker))
        .map_err(|error| KernelError::io(&format!("writing {}", marker.display()), &error))?;
    sync_dir(dir);
    Ok(())
}

/// Makes a rename or a new file in `dir` survive power loss (POSIX).
pub fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Claims `dir` for this process; returns the key to [`unregister`] it with.
pub fn register(dir: &Path) -> KernelResult<PathBuf> {
    let key = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut open = OPEN_DIRS.lock().unwrap_or_else(|p| p.into_inner());
    let set = open.get_or_insert_with(HashSet::new);
    if !set.insert(key.clone()) {
        return Err(KernelError::new(
            ErrorCode::Locked,
            format!(
                "the data dir {} is already open by another kernel in this process",
                dir.display()
            ),
        )
        .with_detail("path", dir.display().to_string()));
    }
    Ok(key)
}

/// Releases a claim made by [`register`].
pub fn unregister(key: &Path) {
    let mut open = OPEN_DIRS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(set) = open.as_mut() {
        set.remove(key);
    }
    drop(open);
    let mut closed = RECENTLY_CLOSED.lock().unwrap_or_else(|p| p.into_inner());
    closed
        .get_or_insert_with(HashMap::new)
        .insert(key.to_path_buf(), Instant::now());
}

/// A kernel of this process closed `key` a moment ago (see [`RECENTLY_CLOSED`]).
pub fn closed_here_recently(key: &Path) -> bool {
    RECENTLY_CLOSED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|closed| closed.get(key))
        .is_some_and(|at| at.elapsed() < LOCK_RELEASE_WAIT * 5)
}
