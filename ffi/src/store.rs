//! The store: a durable key-value store on sled in `<dataDir>/store`, owned by
//! a kernel. Everything lives in ONE sled tree under key prefixes, so a commit
//! (data + journal record + next tx id) is one atomic sled batch:
//!
//! | prefix | contents |
//! | --- | --- |
//! | `d <tree name> 0x00 <key>` | data of a named tree (the default tree is "") |
//! | `j <tx id, u64 big-endian>` | journal records (`krepis.v1.JournalRecord`) |
//! | `m <name>` | metadata: format marker, next tx id |
//!
//! Single-key `put`/`delete` run on the calling (JS) thread and are not
//! journaled; `commit` goes through the group committer ([`crate::commit`])
//! and the commit log ([`crate::wal`]). Writers lock the stripes of the keys
//! they touch ([`Store::lock_keys`]), so checks and previous values are read
//! consistently with the batch that follows.

use crate::boundary::{call, in_bytes};
use crate::error::{KernelError, KernelResult};
use crate::handles::{HandleKind, HandleTable};
use crate::kernel::kernel;
use crate::proto::{ErrorCode, StoreConfig, StoreStats};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

pub const DATA: u8 = b'd';
pub const JOURNAL: u8 = b'j';
const META_FORMAT: &[u8] = b"mformat";
pub const META_NEXT_TX: &[u8] = b"mnext_tx";
const FORMAT: &[u8] = b"krepis-store-v1";
/// Written into a data dir the kernel owns; a non-empty dir without it is
/// refused as foreign.
const MARKER_FILE: &str = "KREPIS_DATA_DIR";
const MARKER: &str = "krepis data directory, format 1\n";
pub const MAX_TREE_NAME_BYTES: usize = 255;
const DEFAULT_MAX_VALUE_BYTES: u64 = 256 << 20;
const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

/// Lock stripes per store (a power of two).
const STRIPES: usize = 64;

/// FNV-1a of a sled key, folded onto a stripe.
pub fn stripe_of(key: &[u8]) -> usize {
    let hash = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash as usize) & (STRIPES - 1)
}

/// Data dirs open in this process (a second kernel gets `LOCKED`).
static OPEN_DIRS: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// The store of one kernel.
pub struct Store {
    pub(crate) db: sled::Db,
    dir: PathBuf,
    /// The key this store holds in the process's open-dir registry.
    registered: PathBuf,
    /// Key stripes: a writer holds the stripes of every key it touches.
    stripes: Vec<Mutex<()>>,
    pub(crate) next_tx: AtomicU64,
    pub(crate) max_value_bytes: u64,
    pub(crate) journal_max_records: u64,
    pub(crate) journal_max_age_ms: u64,
    pub(crate) commits: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) committer: crate::commit::Committer,
    pub(crate) completions: Arc<crate::commit::Completions>,
    closed: std::sync::atomic::AtomicBool,
    poisoned: Mutex<Option<String>>,
}

fn corrupt(dir: &Path, what: impl std::fmt::Display) -> KernelError {
    KernelError::new(
        ErrorCode::Corrupt,
        format!("the data dir {} {what}", dir.display()),
    )
    .with_detail("path", dir.display().to_string())
}

fn sled_error(dir: &Path, error: sled::Error) -> KernelError {
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
        sled::Error::Io(io) => KernelError::io(&format!("store in {}", dir.display()), &io),
        sled::Error::Corruption { .. } => corrupt(dir, "has a corrupt store (sled reported corruption)"),
        sled::Error::Unsupported(message) | sled::Error::ReportableBug(message) => {
            corrupt(dir, format!("has a store that cannot be opened: {message}"))
        }
        other => KernelError::new(ErrorCode::Internal, format!("store: {other}")),
    }
}

impl From<sled::Error> for KernelError {
    fn from(error: sled::Error) -> Self {
        sled_error(Path::new("<store>"), error)
    }
}

/// What a data dir holds before opening: is it already ours?
fn inspect_dir(dir: &Path) -> KernelResult<bool> {
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
    let own = ["store", crate::wal::FILE_NAME, "KREPIS_DATA_DIR.tmp"];
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
fn write_marker(dir: &Path) -> KernelResult<()> {
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

fn register_dir(dir: &Path) -> KernelResult<PathBuf> {
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

fn unregister_dir(key: &Path) {
    let mut open = OPEN_DIRS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(set) = open.as_mut() {
        set.remove(key);
    }
    drop(open);
    let mut closed = RECENTLY_CLOSED.lock().unwrap_or_else(|p| p.into_inner());
    closed
        .get_or_insert_with(std::collections::HashMap::new)
        .insert(key.to_path_buf(), std::time::Instant::now());
}

/// Data dirs a kernel of this process closed, and when: sled releases its
/// file lock when its last internal handle goes, which can trail the close
/// by a moment. Reopening such a dir waits for that instead of reporting a
/// lock held by "another process".
static RECENTLY_CLOSED: Mutex<Option<std::collections::HashMap<PathBuf, std::time::Instant>>> =
    Mutex::new(None);
const LOCK_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn closed_here_recently(key: &Path) -> bool {
    RECENTLY_CLOSED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|closed| closed.get(key))
        .is_some_and(|at| at.elapsed() < LOCK_RELEASE_WAIT * 5)
}

fn lock_contended(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

impl Store {
    /// Opens (or creates) the store of `data_dir`. Never reinitialises
    /// anything it does not recognise.
    pub fn open(data_dir: &Path, config: &StoreConfig) -> KernelResult<Arc<Store>> {
        let ours = inspect_dir(data_dir)?;
        let registered = register_dir(data_dir)?;
        let opened = Self::open_registered(data_dir, config, ours, registered.clone());
        if opened.is_err() {
            unregister_dir(&registered);
        }
        opened
    }

    fn open_registered(
        data_dir: &Path,
        config: &StoreConfig,
        ours: bool,
        registered: PathBuf,
    ) -> KernelResult<Arc<Store>> {
        let path = data_dir.join("store");
        if ours && !path.is_dir() {
            return Err(corrupt(
                data_dir,
                "has lost its store (store/ is missing or empty); nothing was recreated",
            ));
        }
        let cache = match config.cache_capacity_bytes {
            0 => DEFAULT_CACHE_BYTES,
            bytes => bytes,
        };
        // sled may panic on some corrupt files; that is a corrupt store, not a crash.
        let open = || {
            std::panic::catch_unwind(|| {
                sled::Config::new()
                    .path(&path)
                    .cache_capacity(cache)
                    .flush_every_ms(Some(500))
                    .mode(sled::Mode::HighThroughput)
                    .open()
            })
            .map_err(|_| {
                corrupt(
                    data_dir,
                    "has a store sled cannot read (it panicked while opening)",
                )
            })
        };
        let started = std::time::Instant::now();
        let db = loop {
            match open()? {
                Err(error)
                    if lock_contended(&error)
                        && closed_here_recently(&registered)
                        && started.elapsed() < LOCK_RELEASE_WAIT =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                opened => break opened.map_err(|error| sled_error(data_dir, error))?,
            }
        };
        let next_tx = match db.get(META_FORMAT).map_err(|e| sled_error(data_dir, e))? {
            Some(format) if format.as_ref() == FORMAT => {
                let next = db
                    .get(META_NEXT_TX)
                    .map_err(|e| sled_error(data_dir, e))?
                    .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_ref()).ok())
                    .ok_or_else(|| {
                        corrupt(data_dir, "has a store without a valid next transaction id")
                    })?;
                // Every commit batch stores the counter; the journal's last
                // record is checked too, as a second source.
                let last = db
                    .scan_prefix([JOURNAL])
                    .next_back()
                    .transpose()
                    .map_err(|e| sled_error(data_dir, e))?
                    .and_then(|(key, _)| Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?)));
                u64::from_be_bytes(next).max(last.map_or(0, |tx| tx + 1))
            }
            Some(other) => {
                return Err(corrupt(
                    data_dir,
                    format!(
                        "has a store of an unknown format {:?}",
                        String::from_utf8_lossy(&other)
                    ),
                ))
            }
            // Never recreate the store of a data dir that had one.
            None if ours => {
                return Err(corrupt(
                    data_dir,
                    "has lost its store (store/ is missing or empty); nothing was recreated",
                ))
            }
            None if db.is_empty() => {
                let mut batch = sled::Batch::default();
                batch.insert(META_FORMAT, FORMAT);
                batch.insert(META_NEXT_TX, &1u64.to_be_bytes());
                db.apply_batch(batch).map_err(|e| sled_error(data_dir, e))?;
                db.flush().map_err(|e| sled_error(data_dir, e))?;
                1
            }
            None => return Err(corrupt(data_dir, "has a store that krepis did not create")),
        };
        // Acknowledged commits that sled had not flushed yet come back here.
        let (log, _replayed) = crate::wal::Wal::recover(&db, data_dir)?;
        if !ours {
            write_marker(data_dir)?;
        }
        let next_tx = next_tx.max(
            db.get(META_NEXT_TX)
                .map_err(|e| sled_error(data_dir, e))?
                .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_ref()).ok())
                .map_or(0, u64::from_be_bytes),
        );
        let store = Arc::new(Store {
            db,
            dir: data_dir.to_path_buf(),
            registered,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            next_tx: AtomicU64::new(next_tx),
            max_value_bytes: match config.max_value_bytes {
                0 => DEFAULT_MAX_VALUE_BYTES,
                bytes => bytes,
            },
            journal_max_records: config.journal_max_records,
            journal_max_age_ms: config.journal_max_age_ms,
            commits: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            committer: crate::commit::Committer::default(),
            completions: Arc::default(),
            closed: std::sync::atomic::AtomicBool::new(false),
            poisoned: Mutex::new(None),
        });
        crate::commit::start(&store, log)?;
        crate::journal::prune(&store)?;
        Ok(store)
    }

    /// Refuses further commits, flushes and releases the data dir. Idempotent.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.committer.stop();
        self.completions.wake();
        let _ = self.db.flush();
        unregister_dir(&self.registered);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Refuses further commits after a write failed half-way (sled applies a
    /// batch key by key in memory, so a failed batch may be partly visible
    /// until the store is reopened and recovered).
    pub fn poison(&self, why: &str) {
        let mut poisoned = self.poisoned.lock().unwrap_or_else(|p| p.into_inner());
        poisoned.get_or_insert_with(|| why.to_owned());
    }

    /// `Err` once the store is poisoned.
    pub fn check_healthy(&self) -> KernelResult<()> {
        match self.poisoned.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(why) => Err(KernelError::new(
                ErrorCode::Io,
                format!("the store refuses writes after a failed write ({why}); close and reopen the kernel to recover"),
            )),
            None => Ok(()),
        }
    }

    /// Locks the stripes of `keys` (sled keys), in stripe order so that
    /// writers never deadlock. Hold the guards across read-check-write.
    pub(crate) fn lock_keys<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> Vec<MutexGuard<'_, ()>> {
        self.lock_stripes(keys.into_iter().map(stripe_of).collect())
    }

    /// Locks `stripes` in ascending order (the order every locker uses, so
    /// two lockers never wait on each other in a cycle).
    pub(crate) fn lock_stripes(&self, mut stripes: Vec<usize>) -> Vec<MutexGuard<'_, ()>> {
        stripes.sort_unstable();
        stripes.dedup();
        stripes
            .into_iter()
            .map(|stripe| {
                self.stripes[stripe]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
            })
            .collect()
    }

    pub fn check_value(&self, len: usize) -> KernelResult<()> {
        if len as u64 > self.max_value_bytes {
            return Err(KernelError::invalid_argument(format!(
                "a value of {len} bytes exceeds the store's maximum of {} bytes (store.maxValueBytes)",
                self.max_value_bytes
            ))
            .with_detail("reason", "value_too_large"));
        }
        Ok(())
    }

    pub fn stats(&self) -> StoreStats {
        let next = self.next_tx.load(Ordering::SeqCst);
        StoreStats {
            next_tx_id: next,
            journal_records: crate::journal::count(self),
            commits: self.commits.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            size_on_disk_bytes: self.db.size_on_disk().unwrap_or(0),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// `d <tree> 0x00`: the key prefix of a named tree.
pub fn tree_prefix(tree: &str) -> KernelResult<Vec<u8>> {
    if tree.len() > MAX_TREE_NAME_BYTES || tree.as_bytes().contains(&0) {
        return Err(KernelError::invalid_argument(format!(
            "tree names are at most {MAX_TREE_NAME_BYTES} bytes without NUL, got {tree:?}"
        ))
        .with_detail("field", "tree"));
    }
    let mut prefix = Vec::with_capacity(tree.len() + 2);
    prefix.push(DATA);
    prefix.extend_from_slice(tree.as_bytes());
    prefix.push(0);
    Ok(prefix)
}

/// The sled key of `key` in the tree whose prefix is `prefix`.
pub fn data_key(prefix: &[u8], key: &[u8]) -> Vec<u8> {
    let mut composite = Vec::with_capacity(prefix.len() + key.len());
    composite.extend_from_slice(prefix);
    composite.extend_from_slice(key);
    composite
}

/// A named tree of a store, as JS holds it.
pub struct TreeRef {
    pub kernel_id: u64,
    pub store: Arc<Store>,
    pub name: String,
    pub prefix: Vec<u8>,
}

static TREES: HandleTable<TreeRef> = HandleTable::new(HandleKind::Tree);

pub fn tree(handle: u32) -> KernelResult<Arc<TreeRef>> {
    TREES.get(handle)
}

/// Releases every tree handle of a kernel (on kernel close).
pub fn release_owned(kernel_id: u64) {
    drop(TREES.drain_where(|tree| tree.kernel_id == kernel_id));
}

/// Opens the named tree `name` (UTF-8, `name_len` bytes; empty = the default
/// tree) of the kernel's store and writes its handle to `out_handle`.
///
/// # Safety
/// `name` must point to `name_len` readable bytes; `out_handle` to one u32.
#[no_mangle]
pub unsafe extern "C" fn krepis_store_tree(
    kernel: u32,
    name: *const u8,
    name_len: u32,
    out_handle: *mut u32,
) -> i32 {
    call("krepis_store_tree", || {
        if out_handle.is_null() || !out_handle.is_aligned() {
            return Err(KernelError::invalid_argument(
                "out_handle must point to one aligned u32",
            ));
        }
        // SAFETY: forwarded from this function's contract.
        let name = unsafe { in_bytes(name, name_len, "name")? };
        let name = std::str::from_utf8(name)
            .map_err(|_| KernelError::invalid_argument("tree names must be UTF-8"))?;
        let owner = self::kernel(kernel)?;
        let store = owner.store()?;
        let handle = TREES.insert(Arc::new(TreeRef {
            kernel_id: owner.id(),
            prefix: tree_prefix(name)?,
            name: name.to_owned(),
            store,
        }))?;
        // SAFETY: checked non-null and aligned above.
        unsafe { out_handle.write(handle) };
        Ok(0)
    })
}

/// Releases a tree handle.
#[no_mangle]
pub extern "C" fn krepis_store_tree_close(tree: u32) -> i32 {
    call("krepis_store_tree_close", || {
        TREES.remove(tree)?;
        Ok(0)
    })
}

/// Looks `key` up. Returns 0 when absent, else `1 + length`; when the value
/// fits in `out[offset..cap]` it is copied there (else the caller retries
/// with room, or takes it as a buffer with `krepis_store_get_buffer`).
///
/// # Safety
/// `key` must point to `key_len` readable bytes and `out` to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_store_get(
    tree: u32,
    key: *const u8,
    key_len: u32,
    out: *mut u8,
    offset: u32,
    cap: u32,
) -> i32 {
    call("krepis_store_get", || {
        // SAFETY: forwarded from this function's contract.
        let key = unsafe { in_bytes(key, key_len, "key")? };
        let tree = TREES.get(tree)?;
        let Some(value) = tree.store.db.get(data_key(&tree.prefix, key))? else {
            return Ok(0);
        };
        let length = i32::try_from(value.len()).map_err(|_| {
            KernelError::invalid_argument("value larger than 2 GiB: use krepis_store_get_buffer")
        })?;
        if offset <= cap && value.len() <= (cap - offset) as usize && !out.is_null() {
            // SAFETY: `out[offset..offset + len]` lies within the caller's `cap` bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(value.as_ptr(), out.add(offset as usize), value.len())
            };
        }
        Ok(length.saturating_add(1))
    })
}

/// Copies `key`'s current value into a new kernel buffer (for large values:
/// JS maps it once instead of growing its own buffer and retrying). Writes
/// the handle to `out[0]`, the address to `out[1]`, the length to `out[2]`.
/// Returns 1 when found, 0 when absent. Release it like a buffer.
///
/// # Safety
/// `key` must point to `key_len` readable bytes; `out` to three aligned u64.
#[no_mangle]
pub unsafe extern "C" fn krepis_store_get_buffer(
    tree: u32,
    key: *const u8,
    key_len: u32,
    out: *mut u64,
) -> i32 {
    call("krepis_store_get_buffer", || {
        if out.is_null() || !out.is_aligned() {
            return Err(KernelError::invalid_argument(
                "out must point to three aligned u64",
            ));
        }
        // SAFETY: forwarded from this function's contract.
        let key = unsafe { in_bytes(key, key_len, "key")? };
        let tree = TREES.get(tree)?;
        let Some(value) = tree.store.db.get(data_key(&tree.prefix, key))? else {
            return Ok(0);
        };
        let owner = self::kernel_of(&tree)?;
        let (handle, address, length) = crate::buffers::copy_from(&owner, &value)?;
        // SAFETY: checked non-null and aligned; the caller guarantees three u64.
        unsafe {
            out.write(u64::from(handle));
            out.add(1).write(address);
            out.add(2).write(length);
        }
        Ok(1)
    })
}

fn kernel_of(tree: &TreeRef) -> KernelResult<Arc<crate::kernel::Kernel>> {
    crate::kernel::kernel_by_id(tree.kernel_id)
}

/// Stores `value` under `key` (not journaled, durable at the next flush).
///
/// # Safety
/// `key`/`value` must point to `key_len`/`value_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_store_put(
    tree: u32,
    key: *const u8,
    key_len: u32,
    value: *const u8,
    value_len: u32,
) -> i32 {
    call("krepis_store_put", || {
        // SAFETY: forwarded from this function's contract.
        let (key, value) = unsafe {
            (
                in_bytes(key, key_len, "key")?,
                in_bytes(value, value_len, "value")?,
            )
        };
        let tree = TREES.get(tree)?;
        tree.store.check_value(value.len())?;
        let key = data_key(&tree.prefix, key);
        let _stripe = tree.store.lock_keys([key.as_slice()]);
        tree.store.db.insert(key, value)?;
        Ok(0)
    })
}

/// Deletes `key`; returns 1 when it existed, 0 when not (not journaled).
///
/// # Safety
/// `key` must point to `key_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_store_delete(tree: u32, key: *const u8, key_len: u32) -> i32 {
    call("krepis_store_delete", || {
        // SAFETY: forwarded from this function's contract.
        let key = unsafe { in_bytes(key, key_len, "key")? };
        let tree = TREES.get(tree)?;
        let key = data_key(&tree.prefix, key);
        let _stripe = tree.store.lock_keys([key.as_slice()]);
        Ok(i32::from(tree.store.db.remove(key)?.is_some()))
    })
}

/// Returns 1 when `key` exists, 0 when not.
///
/// # Safety
/// `key` must point to `key_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_store_has(tree: u32, key: *const u8, key_len: u32) -> i32 {
    call("krepis_store_has", || {
        // SAFETY: forwarded from this function's contract.
        let key = unsafe { in_bytes(key, key_len, "key")? };
        let tree = TREES.get(tree)?;
        Ok(i32::from(
            tree.store.db.contains_key(data_key(&tree.prefix, key))?,
        ))
    })
}
