//! The journal of a cluster store: records live in etcd next to the data
//! (written by their commit's transaction) and in the replica under their
//! tx id, so `journal.read` reads the replica. Undo, linearizable reads and
//! retention talk to etcd.

use super::client::{connection_error, etcd_error, retryable};
use super::commit::{commit, deadline_of, undo_conflict, Unchanged, ATTEMPT_TIMEOUT};
use super::replica::LAST_COMMIT_SUFFIX;
use super::shared::Cluster;
use crate::error::{KernelError, KernelResult};
use crate::proto::{self, op::Kind, CommitRequest, ErrorCode, JournalRecord, Op};
use crate::store::keys::journal_key;
use etcd_client::{DeleteOptions, Txn, TxnOp};
use prost::Message;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Most journal records one retention transaction deletes.
const PRUNE_BATCH: usize = 100;

/// Waits until the replica reflects every commit made on the prefix before
/// this call (a linearizable read of the last-commit marker, then the
/// replica catching up with it). Returns the replica's revision.
pub async fn sync(cluster: &Cluster, deadline: Instant) -> KernelResult<i64> {
    let replica = &cluster.replica;
    let mut kv = cluster.client.kv_client();
    let marker = cluster.etcd_key(LAST_COMMIT_SUFFIX);
    let mut last_cause = String::from("no answer before the deadline");
    loop {
        if Instant::now() >= deadline {
            return Err(connection_error(
                "a linearizable read",
                &replica.endpoints,
                &last_cause,
            ));
        }
        let attempt_deadline = deadline.min(Instant::now() + ATTEMPT_TIMEOUT);
        match tokio::time::timeout_at(attempt_deadline.into(), kv.get(marker.clone(), None)).await {
            Err(_) => {
                last_cause = format!("no answer within {ATTEMPT_TIMEOUT:?} per attempt");
                continue;
            }
            Ok(Err(error)) if retryable(&error) => {
                last_cause = error.to_string();
                tokio::time::sleep(
                    Duration::from_millis(20)
                        .min(deadline.saturating_duration_since(Instant::now())),
                )
                .await;
            }
            Ok(Err(error)) => {
                return Err(etcd_error(
                    "a linearizable read",
                    &replica.endpoints,
                    &error,
                ))
            }
            Ok(Ok(response)) => {
                let latest = response.kvs().first().map_or(0, |kv| kv.mod_revision());
                if replica.wait_applied(latest, deadline).await {
                    return Ok(replica.applied());
                }
                return Err(KernelError::new(
                    ErrorCode::Connection,
                    format!(
                        "a linearizable read: the cluster is at revision {latest} but the local replica did not catch up before the deadline (it is at {}: {})",
                        replica.applied(),
                        replica.state().reason
                    ),
                )
                .with_detail("reason", "replica_behind"));
            }
        }
    }
}

fn decode(bytes: &[u8]) -> KernelResult<JournalRecord> {
    JournalRecord::decode(bytes).map_err(|error| {
        KernelError::new(
            ErrorCode::Corrupt,
            format!("a journal record does not decode: {error}"),
        )
    })
}

/// Reverts `tx_id` as a new transaction, with the local store's rules: a
/// later journal record touching one of its keys is a conflict (checked on
/// the synced replica), and etcd re-checks atomically that each key it
/// wrote still has the revision it wrote.
pub async fn undo(cluster: &Cluster, tx_id: u64, ctx: Option<proto::Context>) -> KernelResult<u64> {
    let deadline = deadline_of(ctx.as_ref(), cluster.timeout);
    sync(cluster, deadline).await?;
    let db = &cluster.replica.store.db;
    let sled_error = |error| cluster.replica.store.sled_error(error);
    let record = match db.get(journal_key(tx_id)).map_err(sled_error)? {
        Some(bytes) => decode(&bytes)?,
        None => {
            return Err(KernelError::new(
                ErrorCode::NotFound,
                format!(
                    "transaction {tx_id} is not in the journal (never committed, or pruned by retention)"
                ),
            )
            .with_detail("txId", tx_id.to_string()))
        }
    };
    let touched: HashSet<(&str, &[u8])> = record
        .changes
        .iter()
        .map(|change| (change.tree.as_str(), change.key.as_slice()))
        .collect();
    for entry in db.range(journal_key(tx_id + 1)..journal_key(u64::MAX)) {
        let (_, bytes) = entry.map_err(sled_error)?;
        let later = decode(&bytes)?;
        if let Some(change) = later
            .changes
            .iter()
            .find(|change| touched.contains(&(change.tree.as_str(), change.key.as_slice())))
        {
            return Err(undo_conflict(
                tx_id,
                &change.tree,
                &change.key,
                Some(later.tx_id),
            ));
        }
    }
    let unchanged: Vec<Unchanged> = record
        .changes
        .iter()
        .filter(|change| change.value.is_some())
        .map(|change| Unchanged {
            tree: change.tree.clone(),
            key: change.key.clone(),
            revision: tx_id as i64,
        })
        .collect();
    let inverse = CommitRequest {
        ops: record
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
            .collect(),
        checks: Vec::new(),
        ctx,
    };
    commit(cluster, &inverse, "", tx_id, &unchanged).await
}

/// Deletes journal records beyond the retention limits (by count, then by
/// age), at most [`PRUNE_BATCH`] per call. Any kernel may prune; deleting a
/// record another kernel deleted already changes nothing.
pub async fn prune(cluster: &Cluster) -> KernelResult<()> {
    let store = &cluster.replica.store;
    if store.journal_max_records == 0 && store.journal_max_age_ms == 0 {
        return Ok(());
    }
    let cutoff = crate::store::journal::now_ms().saturating_sub(store.journal_max_age_ms);
    let doomed: Vec<Vec<u8>> = {
        let journal = cluster
            .replica
            .journal
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut excess = match store.journal_max_records {
            0 => 0,
            max => (journal.by_tx.len() as u64).saturating_sub(max),
        };
        let mut doomed = Vec::new();
        for (&tx_id, etcd_key) in &journal.by_tx {
            let too_old = store.journal_max_age_ms != 0
                && store
                    .db
                    .get(journal_key(tx_id))
                    .map_err(|error| store.sled_error(error))?
                    .and_then(|bytes| decode(&bytes).ok())
                    .is_some_and(|record| record.time_unix_ms < cutoff);
            if excess == 0 && !too_old {
                break;
            }
            excess = excess.saturating_sub(1);
            doomed.push(etcd_key.clone());
            if doomed.len() == PRUNE_BATCH {
                break;
            }
        }
        doomed
    };
    if doomed.is_empty() {
        return Ok(());
    }
    let txn = Txn::new().and_then(
        doomed
            .into_iter()
            .map(|key| TxnOp::delete(key, None::<DeleteOptions>))
            .collect::<Vec<_>>(),
    );
    cluster
        .client
        .kv_client()
        .txn(txn)
        .await
        .map_err(|error| etcd_error("pruning the journal", &cluster.replica.endpoints, &error))?;
    Ok(())
}
