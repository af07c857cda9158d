//! The transaction journal: one `krepis.v1.JournalRecord` per commit, written
//! in the same atomic batch as the commit's data, under `j <tx id>`.
//! Records carry the explicit request context, every key touched, its value
//! before and after. Undo reverts a transaction when nothing touched those
//! keys since (it returns the inverse ops; the committer applies them as a
//! new transaction); retention drops the oldest records by count and age.

use super::db::{self, Store};
use super::group::Group;
use super::keys::{data_key, journal_key, prefixes_for, show_key, tx_of, JOURNAL};
use super::queue::Job;
use crate::boundary::{call, in_bytes, out_bytes, write_out, write_u64};
use crate::error::{KernelError, KernelResult};
use crate::proto::{
    self, op::Kind, CommitRequest, ErrorCode, JournalBatch, JournalQuery, JournalRecord, Op,
    UndoRequest,
};
use prost::Message;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

/// Most records pruned per group (the rest go with the next groups).
const PRUNE_BATCH: usize = 10_000;

/// Wall-clock time of a journal record.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

fn decode(bytes: &[u8]) -> KernelResult<JournalRecord> {
    JournalRecord::decode(bytes).map_err(|error| {
        KernelError::new(
            ErrorCode::Corrupt,
            format!("a journal record does not decode: {error}"),
        )
    })
}

/// The oldest tx id still in the journal.
fn oldest(store: &Store) -> Option<u64> {
    store
        .db
        .scan_prefix([JOURNAL])
        .next()
        .and_then(|entry| entry.ok())
        .and_then(|(key, _)| tx_of(&key))
}

/// Records in the journal (tx ids are contiguous from the oldest kept).
pub fn count(store: &Store) -> u64 {
    match oldest(store) {
        Some(first) => store.next_tx.load(Ordering::SeqCst).saturating_sub(first),
        None => 0,
    }
}

/// Drops records beyond the retention limits.
pub fn prune(store: &Store) -> KernelResult<()> {
    if store.journal_max_records == 0 && store.journal_max_age_ms == 0 {
        return Ok(());
    }
    let cutoff = now_ms().saturating_sub(store.journal_max_age_ms);
    let mut excess = match store.journal_max_records {
        0 => 0,
        max => count(store).saturating_sub(max),
    };
    let mut batch = sled::Batch::default();
    let mut pruned = 0;
    for entry in store.db.scan_prefix([JOURNAL]) {
        let (key, value) = entry.map_err(|error| store.sled_error(error))?;
        let too_old = store.journal_max_age_ms != 0 && decode(&value)?.time_unix_ms < cutoff;
        if excess == 0 && !too_old {
            break;
        }
        batch.remove(key);
        excess = excess.saturating_sub(1);
        pruned += 1;
        if pruned == PRUNE_BATCH {
            break;
        }
    }
    if pruned > 0 {
        // Journal keys are only ever written once, by their own commit.
        store
            .db
            .apply_batch(batch)
            .map_err(|error| store.write_error(error))?;
    }
    Ok(())
}

/// The ops that revert `tx_id`, to be applied in `group` as a new journaled
/// transaction (the stripes of its keys are held from here on). Refuses
/// (`CONFLICT`) when a later transaction touched one of its keys, naming it,
/// or when a key no longer holds the value the transaction wrote (an
/// unjournaled `put`/`delete` changed it since).
pub fn undo(
    group: &mut Group<'_>,
    tx_id: u64,
    ctx: Option<proto::Context>,
) -> KernelResult<CommitRequest> {
    let store = group.store();
    // The record may be in sled, or earlier in this very group.
    let record = match group.records.iter().find(|record| record.tx_id == tx_id) {
        Some(record) => record.clone(),
        None => match store
            .db
            .get(journal_key(tx_id))
            .map_err(|error| store.sled_error(error))?
        {
            Some(bytes) => decode(&bytes)?,
            None => return Err(not_found(tx_id)),
        },
    };
    let prefixes = prefixes_for(record.changes.iter().map(|change| change.tree.as_str()))?;
    let keys: Vec<Vec<u8>> = record
        .changes
        .iter()
        .map(|change| data_key(&prefixes[&change.tree], &change.key))
        .collect();
    group.lock(&keys);
    let touched: HashSet<(&str, &[u8])> = record
        .changes
        .iter()
        .map(|change| (change.tree.as_str(), change.key.as_slice()))
        .collect();
    // Every later transaction, in order: those in sled, then those earlier
    // in this group. The first that touched one of the keys is the conflict.
    let conflict_with = |later: &JournalRecord| -> KernelResult<()> {
        if let Some(change) = later
            .changes
            .iter()
            .find(|change| touched.contains(&(change.tree.as_str(), change.key.as_slice())))
        {
            return Err(KernelError::new(
                ErrorCode::Conflict,
                format!(
                    "cannot undo transaction {tx_id}: transaction {} changed key {:?} in tree {:?} later",
                    later.tx_id,
                    show_key(&change.key),
                    change.tree
                ),
            )
            .with_detail("conflictingTxId", later.tx_id.to_string())
            .with_detail("key", show_key(&change.key))
            .with_detail("tree", change.tree.clone()));
        }
        Ok(())
    };
    for entry in store
        .db
        .range(journal_key(tx_id + 1)..journal_key(u64::MAX))
    {
        let (_, bytes) = entry.map_err(|error| store.sled_error(error))?;
        conflict_with(&decode(&bytes)?)?;
    }
    for later in group.records.iter().filter(|later| later.tx_id > tx_id) {
        conflict_with(later)?;
    }
    for (change, composite) in record.changes.iter().zip(&keys) {
        if group.get(composite)?.as_deref() != change.value.as_deref() {
            return Err(KernelError::new(
                ErrorCode::Conflict,
                format!(
                    "cannot undo transaction {tx_id}: key {:?} in tree {:?} was changed since by an unjournaled put or delete",
                    show_key(&change.key),
                    change.tree
                ),
            )
            .with_detail("key", show_key(&change.key))
            .with_detail("tree", change.tree.clone()));
        }
    }
    let ops: Vec<Op> = record
        .changes
        .iter()
        .map(|change| Op {
            kind: if change.previous.is_some() {
                Kind::Put
            } else {
                Kind::Delete
            } as i32,
            key: change.key.clone(),
            value: change.previous.clone().unwrap_or_default(),
            tree: Some(change.tree.clone()),
        })
        .collect();
    Ok(CommitRequest {
        ops,
        checks: Vec::new(),
        ctx,
    })
}

fn not_found(tx_id: u64) -> KernelError {
    KernelError::new(
        ErrorCode::NotFound,
        format!(
            "transaction {tx_id} is not in the journal (never committed, or pruned by retention)"
        ),
    )
    .with_detail("txId", tx_id.to_string())
}

/// Reads journal records from `query.since` (an encoded
/// `krepis.v1.JournalQuery`) into `out` as a `krepis.v1.JournalBatch`, as many
/// as fit in `cap` bytes (at least one, growing the answer if needed).
/// Returns the batch's length.
///
/// # Safety
/// `query` must point to `query_len` readable bytes; `out` to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_journal_read(
    kernel: u32,
    query: *const u8,
    query_len: u32,
    out: *mut u8,
    cap: u32,
) -> i32 {
    call("krepis_journal_read", || {
        // SAFETY: forwarded from this function's contract.
        let (query, out) = unsafe {
            (
                in_bytes(query, query_len, "query")?,
                out_bytes(out, cap, "out")?,
            )
        };
        let query = JournalQuery::decode(query).map_err(|error| {
            KernelError::invalid_argument(format!("not a krepis.v1.JournalQuery: {error}"))
        })?;
        let store = db::of(&*crate::kernel::kernel(kernel)?)?;
        let mut batch = JournalBatch::default();
        let mut size = 0usize;
        let budget = (cap as usize).saturating_sub(64).max(1);
        for entry in store
            .db
            .range(journal_key(query.since)..journal_key(u64::MAX))
        {
            let (entry_key, bytes) = entry.map_err(|error| store.sled_error(error))?;
            let tx_id = tx_of(&entry_key).unwrap_or(0);
            if (query.limit != 0 && batch.records.len() as u32 >= query.limit)
                || (!batch.records.is_empty() && size + bytes.len() + 8 > budget)
            {
                batch.next = tx_id;
                break;
            }
            let record = decode(&bytes)?;
            if !query.tenant_id.is_empty()
                && record.ctx.as_ref().map(|ctx| ctx.tenant_id.as_str())
                    != Some(query.tenant_id.as_str())
            {
                continue;
            }
            size += bytes.len() + 8;
            batch.records.push(record);
        }
        write_out(&batch.encode_to_vec(), out)
    })
}

/// Queues the undo of a transaction (an encoded `krepis.v1.UndoRequest`) as
/// a new durable transaction and writes its ticket to `out_ticket[0]`. The
/// result (a `krepis.v1.CommitResult`: the new tx id, or a
/// `CONFLICT`/`NOT_FOUND` error) arrives through `krepis_store_completions`.
///
/// # Safety
/// `request` must point to `request_len` readable bytes; `out_ticket` to one aligned u64.
#[no_mangle]
pub unsafe extern "C" fn krepis_journal_undo(
    kernel: u32,
    request: *const u8,
    request_len: u32,
    out_ticket: *mut u64,
) -> i32 {
    call("krepis_journal_undo", || {
        // SAFETY: forwarded from this function's contract.
        let request = unsafe { in_bytes(request, request_len, "request")? };
        let request = UndoRequest::decode(request).map_err(|error| {
            KernelError::invalid_argument(format!("not a krepis.v1.UndoRequest: {error}"))
        })?;
        let store = db::of(&*crate::kernel::kernel(kernel)?)?;
        let ticket = store.submit(|ticket| Job::Undo {
            tx_id: request.tx_id,
            ctx: request.ctx,
            ticket,
        })?;
        // SAFETY: forwarded from this function's contract.
        unsafe { write_u64(out_ticket, ticket, "out_ticket")? };
        Ok(0)
    })
}
