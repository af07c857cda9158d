//! Identity of the library: the version it was built as and the hash of the
//! ABI header it was built against. The loader compares both with what the
//! TypeScript bindings expect before calling anything else.

use crate::boundary::{call, out_bytes, write_out};

/// `krepis-version:<version>` — the marker prefix keeps the string findable in
/// the binary (tests patch it to produce a library with another version).
static VERSION_RECORD: &str = concat!("krepis-version:", env!("CARGO_PKG_VERSION"));
static ABI_RECORD: &str = concat!("krepis-abi:", env!("KREPIS_ABI_HASH"));

/// The package version this library was built as (lock-step with deno.json).
pub fn version() -> &'static str {
    &VERSION_RECORD["krepis-version:".len()..]
}

/// SHA-256 (hex) of ffi/include/krepis.h at build time.
pub fn abi_hash() -> &'static str {
    &ABI_RECORD["krepis-abi:".len()..]
}

/// Writes the library's version (UTF-8, no terminator) into `out`; returns its
/// length (nothing is written when that exceeds `cap`).
///
/// # Safety
/// `out` must be null or point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_version(out: *mut u8, cap: u32) -> i32 {
    call("krepis_version", || {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        write_out(version().as_bytes(), out)
    })
}

/// Writes the ABI hash (64 hex characters) into `out`; returns its length.
///
/// # Safety
/// `out` must be null or point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_abi_hash(out: *mut u8, cap: u32) -> i32 {
    call("krepis_abi_hash", || {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        write_out(abi_hash().as_bytes(), out)
    })
}
