//! Streaming scans: a scan handle owns a sled iterator; each
//! `krepis_store_scan_next` call fills the caller's batch buffer with as many
//! entries as fit, so a scan of any size never loads everything at once.
//!
//! Batch layout: entries back to back, each `[key_len u32][value_len u32]
//! [key][value]` padded to 8 bytes (little-endian), keys without the tree prefix.

use super::keys::data_key;
use super::tree::tree;
use crate::boundary::{call, in_bytes};
use crate::error::{KernelError, KernelResult};
use crate::handles::{HandleKind, HandleTable};
use crate::proto::ScanOptions;
use prost::Message;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

/// Bytes of one scan entry's header (key length, value length: u32 LE each)
/// in `krepis_store_scan_next` output; entries are padded to 8 bytes.
pub const SCAN_ENTRY_HEADER_BYTES: u32 = 8;

struct ScanState {
    iter: sled::Iter,
    /// An entry that did not fit the previous batch.
    pending: Option<(sled::IVec, sled::IVec)>,
    remaining: u64,
    done: bool,
}

pub struct Scan {
    kernel_id: u64,
    /// The data dir, named by errors.
    dir: std::path::PathBuf,
    prefix_len: usize,
    reverse: bool,
    state: Mutex<ScanState>,
}

static SCANS: HandleTable<Scan> = HandleTable::new(HandleKind::Scan);

pub fn release_scans(kernel_id: u64) {
    drop(SCANS.drain_where(|scan| scan.kernel_id == kernel_id));
}

/// The smallest byte string greater than every string starting with `prefix`.
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut next = prefix.to_vec();
    while let Some(last) = next.pop() {
        if last != 0xff {
            next.push(last + 1);
            return Some(next);
        }
    }
    None
}

fn entry_size(key: usize, value: usize) -> usize {
    (SCAN_ENTRY_HEADER_BYTES as usize + key + value).div_ceil(8) * 8
}

impl Scan {
    /// Writes entries into `out`; returns (entries, bytes needed by an entry
    /// that does not fit an empty batch, 0 if none).
    fn fill(&self, out: &mut [u8]) -> KernelResult<(u32, u32)> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut offset = 0usize;
        let mut count = 0u32;
        loop {
            if state.remaining == 0 {
                state.done = true;
            }
            let entry = match state.pending.take() {
                Some(entry) => Some(entry),
                None if state.done => None,
                None => {
                    let next = if self.reverse {
                        state.iter.next_back()
                    } else {
                        state.iter.next()
                    };
                    next.transpose()
                        .map_err(|error| super::dir::sled_error(&self.dir, error))?
                }
            };
            let Some((key, value)) = entry else {
                state.done = true;
                return Ok((count, 0));
            };
            let user_key = &key[self.prefix_len..];
            let size = entry_size(user_key.len(), value.len());
            if offset + size > out.len() {
                let needed = if count == 0 {
                    u32::try_from(size).unwrap_or(u32::MAX)
                } else {
                    0
                };
                state.pending = Some((key, value));
                return Ok((count, needed));
            }
            out[offset..offset + 4].copy_from_slice(&(user_key.len() as u32).to_le_bytes());
            out[offset + 4..offset + 8].copy_from_slice(&(value.len() as u32).to_le_bytes());
            let key_at = offset + SCAN_ENTRY_HEADER_BYTES as usize;
            out[key_at..key_at + user_key.len()].copy_from_slice(user_key);
            out[key_at + user_key.len()..key_at + user_key.len() + value.len()]
                .copy_from_slice(&value);
            offset += size;
            count += 1;
            state.remaining -= 1;
        }
    }
}

/// Opens a scan of `tree` configured by `options` (an encoded
/// `krepis.v1.ScanOptions`: prefix, start/end bounds, limit, reverse).
///
/// # Safety
/// `options` must point to `options_len` readable bytes; `out_handle` to one u32.
#[no_mangle]
pub unsafe extern "C" fn krepis_store_scan(
    tree_handle: u32,
    options: *const u8,
    options_len: u32,
    out_handle: *mut u32,
) -> i32 {
    call("krepis_store_scan", || {
        if out_handle.is_null() || !out_handle.is_aligned() {
            return Err(KernelError::invalid_argument(
                "out_handle must point to one aligned u32",
            ));
        }
        // SAFETY: forwarded from this function's contract.
        let options = unsafe { in_bytes(options, options_len, "options")? };
        let options = ScanOptions::decode(options).map_err(|error| {
            KernelError::invalid_argument(format!("not a krepis.v1.ScanOptions: {error}"))
        })?;
        let tree = tree(tree_handle)?;
        let mut lower = data_key(&tree.prefix, &options.prefix);
        let mut upper = successor(&lower);
        if let Some(start) = &options.start {
            lower = lower.max(data_key(&tree.prefix, start));
        }
        if let Some(end) = &options.end {
            let bound = data_key(&tree.prefix, end);
            upper = Some(match upper {
                Some(current) => current.min(bound),
                None => bound,
            });
        }
        let upper_bound = match upper {
            Some(upper) => Bound::Excluded(upper),
            None => Bound::Unbounded,
        };
        let empty = matches!(&upper_bound, Bound::Excluded(upper) if *upper <= lower);
        let iter = tree.store.db.range((Bound::Included(lower), upper_bound));
        let handle = SCANS.insert(Arc::new(Scan {
            kernel_id: tree.kernel_id,
            dir: tree.store.dir().to_path_buf(),
            prefix_len: tree.prefix.len(),
            reverse: options.reverse,
            state: Mutex::new(ScanState {
                iter,
                pending: None,
                remaining: if options.limit == 0 {
                    u64::MAX
                } else {
                    u64::from(options.limit)
                },
                done: empty,
            }),
        }))?;
        // SAFETY: checked non-null and aligned above.
        unsafe { out_handle.write(handle) };
        Ok(0)
    })
}

/// Fills `out` with the next entries of a scan. Writes the number of entries
/// to `info[0]` and, when the next entry alone does not fit `cap`, the bytes
/// it needs to `info[1]`. Zero entries and `info[1] == 0` = the scan is done.
///
/// # Safety
/// `out` must point to `cap` writable bytes; `info` to two aligned u32.
#[no_mangle]
pub unsafe extern "C" fn krepis_store_scan_next(
    scan: u32,
    out: *mut u8,
    cap: u32,
    info: *mut u32,
) -> i32 {
    call("krepis_store_scan_next", || {
        if info.is_null() || !info.is_aligned() {
            return Err(KernelError::invalid_argument(
                "info must point to two aligned u32",
            ));
        }
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { crate::boundary::out_bytes(out, cap, "out")? };
        let (count, needed) = SCANS.get(scan)?.fill(out)?;
        // SAFETY: checked non-null and aligned; the caller guarantees two u32.
        unsafe {
            info.write(count);
            info.add(1).write(needed);
        }
        Ok(0)
    })
}

/// Ends a scan early (scans that reached their end may be closed too).
#[no_mangle]
pub extern "C" fn krepis_store_scan_close(scan: u32) -> i32 {
    call("krepis_store_scan_close", || {
        SCANS.remove(scan)?;
        Ok(0)
    })
}
