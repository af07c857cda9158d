//! Commits on a cluster store: each is ONE etcd transaction (its checks
//! become compares; its writes, its journal record and the prefix's
//! last-commit marker are the success branch), resolved once etcd committed
//! it AND the local replica applied its revision (read-your-writes).
//!
//! The transaction also compares every written key with the value the
//! replica holds, so the journal's previous values are exactly what the
//! transaction replaced; when the replica was behind, the commit waits for it
//! and tries again. Each commit has one journal key for all its attempts and
//! requires it to be absent: an attempt whose answer was lost (a member
//! killed mid-request) is found by the next attempt instead of applied twice.

use super::client::{connection_error, etcd_error, retryable};
use super::replica::{not_applied, Replica, LAST_COMMIT_SUFFIX};
use super::shared::Cluster;
use crate::error::{KernelError, KernelResult};
use crate::proto::{op::Kind, Change, CommitRequest, ErrorCode, JournalRecord};
use crate::store::commit::prefixes_of;
use crate::store::journal::now_ms;
use crate::store::keys::{data_key, show_key};
use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use prost::Message;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Bytes a request may carry beyond its keys and values (protobuf framing,
/// the header etcd adds): what the size estimate keeps in reserve.
const REQUEST_OVERHEAD_BYTES: usize = 4096;
/// Longest wait for one attempt: a member that lost its leader holds a
/// request until its own timeout (5 s and more) while the survivors elect a
/// new one; trying again (safe: see the module docs) reaches it sooner.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(2000);
/// Per key, value or compare: tags, lengths, the target.
const ITEM_OVERHEAD_BYTES: usize = 16;

/// A key whose mod revision must still be `revision` (an undo's keys).
pub struct Unchanged {
    pub tree: String,
    pub key: Vec<u8>,
    pub revision: i64,
}

/// The deadline of a request: its context's, else the cluster's timeout.
pub fn deadline_of(ctx: Option<&crate::proto::Context>, timeout: Duration) -> Instant {
    let now = Instant::now();
    match ctx.map_or(0, |ctx| ctx.deadline_unix_ms) {
        0 => now + timeout,
        at => now + Duration::from_millis(at.saturating_sub(now_ms())),
    }
}

/// A check: its tree, etcd key, and the value required (`None`: absent).
type CheckOn = (String, Vec<u8>, Option<Vec<u8>>);

struct Write {
    tree: String,
    key: Vec<u8>,
    etcd_key: Vec<u8>,
    local: Vec<u8>,
    value: Option<Vec<u8>>,
}

/// Commits `request` (on `default_tree`) as one etcd transaction. `undo_of`
/// and `unchanged` are set by undo. Returns the tx id: the revision etcd
/// committed it at.
pub async fn commit(
    cluster: &Cluster,
    request: &CommitRequest,
    default_tree: &str,
    undo_of: u64,
    unchanged: &[Unchanged],
) -> KernelResult<u64> {
    let replica = &cluster.replica;
    let store = &replica.store;
    if request.ops.is_empty() {
        return Err(
            KernelError::invalid_argument("a commit needs at least one op")
                .with_detail("field", "ops"),
        );
    }
    let prefixes = prefixes_of(request, default_tree)?;
    let tree_of = |tree: &Option<String>| tree.clone().unwrap_or_else(|| default_tree.to_owned());
    // One write per key (etcd refuses a key twice in one transaction): the
    // last op on a key wins, as it would applied in order.
    let mut writes: Vec<Write> = Vec::with_capacity(request.ops.len());
    let mut index_of: HashMap<Vec<u8>, usize> = HashMap::new();
    for (index, op) in request.ops.iter().enumerate() {
        let value = match Kind::try_from(op.kind) {
            Ok(Kind::Put) => {
                store.check_value(op.value.len())?;
                Some(op.value.clone())
            }
            Ok(Kind::Delete) => None,
            _ => {
                return Err(KernelError::invalid_argument(format!(
                    "ops[{index}].type must be \"put\" or \"delete\""
                )))
            }
        };
        let tree = tree_of(&op.tree);
        let local = data_key(&prefixes[&tree], &op.key);
        match index_of.get(&local) {
            Some(&at) => writes[at].value = value,
            None => {
                index_of.insert(local.clone(), writes.len());
                writes.push(Write {
                    etcd_key: cluster.etcd_key(&local),
                    tree,
                    key: op.key.clone(),
                    local,
                    value,
                });
            }
        }
    }
    let checks: Vec<CheckOn> = request
        .checks
        .iter()
        .map(|check| {
            let tree = tree_of(&check.tree);
            let local = data_key(&prefixes[&tree], &check.key);
            (
                tree,
                cluster.etcd_key(&local),
                (!check.absent).then(|| check.value.clone()),
            )
        })
        .collect();
    let unchanged_keys: Vec<Vec<u8>> = unchanged
        .iter()
        .map(|item| {
            let prefix = crate::store::keys::tree_prefix(&item.tree)?;
            Ok(cluster.etcd_key(&data_key(&prefix, &item.key)))
        })
        .collect::<KernelResult<_>>()?;
    let journal_key = cluster.next_journal_key();
    let last_key = cluster.etcd_key(LAST_COMMIT_SUFFIX);
    check_limits(cluster, &writes, &checks, unchanged.len(), &journal_key)?;

    let deadline = deadline_of(request.ctx.as_ref(), cluster.timeout);
    let mut kv = cluster.client.kv_client();
    let mut last_cause = String::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        if Instant::now() >= deadline {
            return Err(connection_error("commit", &replica.endpoints, &last_cause)
                .with_detail("journalKey", show_key(&journal_key)));
        }
        // The replica's view of every written key: the journal's previous
        // values, required by the compares to be the cluster's too.
        let mut changes: Vec<Change> = Vec::with_capacity(writes.len());
        let mut compares = vec![Compare::version(journal_key.clone(), CompareOp::Equal, 0)];
        for (_, etcd_key, value) in &checks {
            compares.push(match value {
                Some(value) => Compare::value(etcd_key.clone(), CompareOp::Equal, value.clone()),
                None => Compare::version(etcd_key.clone(), CompareOp::Equal, 0),
            });
        }
        for (item, etcd_key) in unchanged.iter().zip(&unchanged_keys) {
            compares.push(Compare::mod_revision(
                etcd_key.clone(),
                CompareOp::Equal,
                item.revision,
            ));
        }
        let mut success: Vec<TxnOp> = Vec::with_capacity(writes.len() + 2);
        for write in &writes {
            let previous = store
                .db
                .get(&write.local)
                .map_err(|error| store.sled_error(error))?
                .map(|value| value.to_vec());
            compares.push(match &previous {
                Some(value) => {
                    Compare::value(write.etcd_key.clone(), CompareOp::Equal, value.clone())
                }
                None => Compare::version(write.etcd_key.clone(), CompareOp::Equal, 0),
            });
            success.push(match &write.value {
                Some(value) => TxnOp::put(write.etcd_key.clone(), value.clone(), None),
                None => TxnOp::delete(write.etcd_key.clone(), None),
            });
            changes.push(Change {
                tree: write.tree.clone(),
                key: write.key.clone(),
                previous,
                value: write.value.clone(),
            });
        }
        let record = JournalRecord {
            tx_id: 0,
            time_unix_ms: now_ms(),
            ctx: request.ctx.clone(),
            changes,
            undo_of,
        };
        success.push(TxnOp::put(
            journal_key.clone(),
            record.encode_to_vec(),
            None,
        ));
        success.push(TxnOp::put(last_key.clone(), Vec::new(), None));
        let mut failure = vec![TxnOp::get(journal_key.clone(), None)];
        failure.extend(
            checks
                .iter()
                .map(|(_, key, _)| TxnOp::get(key.clone(), None)),
        );
        failure.extend(
            unchanged_keys
                .iter()
                .map(|key| TxnOp::get(key.clone(), None)),
        );
        failure.push(TxnOp::get(last_key.clone(), None));
        let txn = Txn::new().when(compares).and_then(success).or_else(failure);
        let attempt_deadline = deadline.min(Instant::now() + ATTEMPT_TIMEOUT);
        let response = match tokio::time::timeout_at(attempt_deadline.into(), kv.txn(txn)).await {
            Err(_) => {
                last_cause = format!("no answer within {ATTEMPT_TIMEOUT:?} per attempt");
                continue;
            }
            Ok(Err(error)) if retryable(&error) => {
                last_cause = error.to_string();
                let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
                continue;
            }
            Ok(Err(error)) => return Err(etcd_error("commit", &replica.endpoints, &error)),
            Ok(Ok(response)) => response,
        };
        if response.succeeded() {
            let revision = response.header().map_or(0, |header| header.revision());
            return applied(replica, revision, deadline).await;
        }
        let gets: Vec<Option<etcd_client::KeyValue>> = response
            .op_responses()
            .into_iter()
            .map(|op| match op {
                TxnOpResponse::Get(mut get) => get.take_kvs().into_iter().next(),
                _ => None,
            })
            .collect();
        // An earlier attempt of this commit went through (its answer was lost).
        if let Some(Some(kv)) = gets.first() {
            return applied(replica, kv.create_revision(), deadline).await;
        }
        let latest = gets
            .last()
            .cloned()
            .flatten()
            .map_or(0, |kv| kv.mod_revision());
        for (index, (tree, _, expected)) in checks.iter().enumerate() {
            let found = gets.get(1 + index).cloned().flatten();
            let holds = match (&found, expected) {
                (None, None) => true,
                (Some(kv), Some(value)) => kv.value() == value.as_slice(),
                _ => false,
            };
            if !holds {
                // Let the replica show the value that won before answering,
                // so a retry reads it (bounded: the answer is the conflict).
                replica
                    .wait_applied(
                        latest,
                        deadline.min(Instant::now() + Duration::from_secs(1)),
                    )
                    .await;
                let key = &request.checks[index].key;
                let (expected, found) = match (&found, expected) {
                    (Some(_), None) => ("no value", "a value"),
                    (None, _) => ("the given value", "no value"),
                    _ => ("the given value", "a different value"),
                };
                return Err(KernelError::new(
                    ErrorCode::Conflict,
                    format!(
                        "check failed for key {:?} in tree {tree:?}: expected {expected}, found {found}; nothing was written",
                        show_key(key),
                    ),
                )
                .with_detail("key", show_key(key))
                .with_detail("tree", tree.clone()));
            }
        }
        for (index, item) in unchanged.iter().enumerate() {
            let found = gets.get(1 + checks.len() + index).cloned().flatten();
            let revision = found.as_ref().map_or(0, |kv| kv.mod_revision());
            if revision != item.revision {
                return Err(undo_conflict(
                    undo_of,
                    &item.tree,
                    &item.key,
                    (revision != 0).then_some(revision as u64),
                ));
            }
        }
        // Only the replica was behind on a written key: catch up, retry.
        if !replica.wait_applied(latest, deadline).await {
            last_cause = format!(
                "the local replica did not catch up with revision {latest}: {}",
                replica.state().reason
            );
        }
    }
}

/// `CONFLICT`: undoing `tx_id` would overwrite a later change of `key`.
pub fn undo_conflict(tx_id: u64, tree: &str, key: &[u8], later: Option<u64>) -> KernelError {
    let error = match later {
        Some(later) => KernelError::new(
            ErrorCode::Conflict,
            format!(
                "cannot undo transaction {tx_id}: transaction {later} changed key {:?} in tree {tree:?} later",
                show_key(key)
            ),
        )
        .with_detail("conflictingTxId", later.to_string()),
        None => KernelError::new(
            ErrorCode::Conflict,
            format!(
                "cannot undo transaction {tx_id}: key {:?} in tree {tree:?} was changed since",
                show_key(key)
            ),
        ),
    };
    error
        .with_detail("key", show_key(key))
        .with_detail("tree", tree.to_owned())
}

/// Resolves a committed transaction once the replica applied it.
async fn applied(replica: &Replica, revision: i64, deadline: Instant) -> KernelResult<u64> {
    if replica.wait_applied(revision, deadline).await {
        Ok(revision as u64)
    } else {
        Err(not_applied(revision, replica))
    }
}

/// etcd's limits, checked before sending: ops and compares per transaction
/// (`--max-txn-ops`) and the request size (`--max-request-bytes`).
fn check_limits(
    cluster: &Cluster,
    writes: &[Write],
    checks: &[CheckOn],
    unchanged: usize,
    journal_key: &[u8],
) -> KernelResult<()> {
    let max_ops = cluster.max_txn_ops;
    // Success: the writes, the journal record, the last-commit marker.
    // Compares: the journal key, checks, undo keys, one per write.
    // Failure: the journal key, checks, undo keys, the marker.
    let success = writes.len() + 2;
    let compares = 1 + checks.len() + unchanged + writes.len();
    let failure = 2 + checks.len() + unchanged;
    let most = success.max(compares).max(failure);
    if most > max_ops {
        return Err(KernelError::invalid_argument(format!(
            "this commit needs {most} operations in one etcd transaction ({} distinct keys written, {} checks), more than the cluster's limit of {max_ops} (--max-txn-ops, store.cluster.maxTxnOps); on a cluster a commit writes at most {} distinct keys with no checks: split it into several commits",
            writes.len(),
            checks.len(),
            max_ops.saturating_sub(2),
        ))
        .with_detail("reason", "too_many_ops")
        .with_detail("limit", max_ops.to_string())
        .with_detail("needed", most.to_string()));
    }
    // Values travel up to three times: the compare on the previous value,
    // the put and, with the previous value, the journal record.
    let mut bytes = REQUEST_OVERHEAD_BYTES + 2 * (journal_key.len() + ITEM_OVERHEAD_BYTES);
    for write in writes {
        let previous = cluster
            .replica
            .store
            .db
            .get(&write.local)
            .map_err(|error| cluster.replica.store.sled_error(error))?
            .map_or(0, |value| value.len());
        let value = write.value.as_ref().map_or(0, Vec::len);
        bytes += 2 * write.etcd_key.len() + write.key.len() + write.tree.len();
        bytes += 2 * previous + 2 * value + 4 * ITEM_OVERHEAD_BYTES;
    }
    for (tree, key, value) in checks {
        bytes += 2 * key.len() + tree.len() + value.as_ref().map_or(0, Vec::len);
        bytes += 2 * ITEM_OVERHEAD_BYTES;
    }
    bytes += unchanged * 128;
    let max_bytes = cluster.max_request_bytes;
    if bytes > max_bytes {
        return Err(KernelError::invalid_argument(format!(
            "this commit would send about {bytes} bytes in one etcd transaction (values count up to three times: the compare on the previous value, the write, and the journal record with both), more than the cluster's limit of {max_bytes} (--max-request-bytes, store.cluster.maxRequestBytes): split it into smaller commits or keep large values outside the store"
        ))
        .with_detail("reason", "request_too_large")
        .with_detail("limit", max_bytes.to_string())
        .with_detail("needed", bytes.to_string()));
    }
    Ok(())
}
