//! Trees: named key spaces of the store, as JS holds them (by handle), and
//! the single-key operations on them. Single-key `put`/`delete` run on the
//! calling (JS) thread and are not journaled; they lock the stripe of their
//! key, so a commit's checks and previous values are read consistently.

use super::db::{self, Store};
use super::keys::{data_key, tree_prefix};
use crate::boundary::{call, in_bytes};
use crate::error::{KernelError, KernelResult};
use crate::handles::{HandleKind, HandleTable};
use std::sync::atomic::Ordering;
use std::sync::Arc;

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
pub fn release_trees(kernel_id: u64) {
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
        let owner = crate::kernel::kernel(kernel)?;
        let store = db::of(&owner)?;
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
        let Some(value) = tree
            .store
            .db
            .get(data_key(&tree.prefix, key))
            .map_err(|error| tree.store.sled_error(error))?
        else {
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
        let Some(value) = tree
            .store
            .db
            .get(data_key(&tree.prefix, key))
            .map_err(|error| tree.store.sled_error(error))?
        else {
            return Ok(0);
        };
        let owner = crate::kernel::kernel_by_id(tree.kernel_id)?;
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

/// Stores `value` under `key` (not journaled, durable at the next flush:
/// until then a crash or a failed flush loses it, and the flush says so).
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
        let store = &tree.store;
        store.check_local_write("put")?;
        store.check_value(value.len())?;
        store.check_healthy()?;
        let key = data_key(&tree.prefix, key);
        let _stripe = store.lock_keys([key.as_slice()]);
        store
            .db
            .insert(key, value)
            .map_err(|error| store.write_error(error))?;
        store.unflushed.fetch_add(1, Ordering::Relaxed);
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
        let store = &tree.store;
        store.check_local_write("delete")?;
        store.check_healthy()?;
        let key = data_key(&tree.prefix, key);
        let _stripe = store.lock_keys([key.as_slice()]);
        let existed = store
            .db
            .remove(key)
            .map_err(|error| store.write_error(error))?
            .is_some();
        store.unflushed.fetch_add(1, Ordering::Relaxed);
        Ok(i32::from(existed))
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
            tree.store
                .db
                .contains_key(data_key(&tree.prefix, key))
                .map_err(|error| tree.store.sled_error(error))?,
        ))
    })
}
