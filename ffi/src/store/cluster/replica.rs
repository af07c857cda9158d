//! The local replica of a cluster store: a snapshot of the prefix taken at
//! open, then kept current from an etcd watch, applied to an in-memory sled
//! database that the ordinary store reads (`get`/`has`/`scan`/`watch` run
//! unchanged against it, at local speed).
//!
//! etcd key → replica key:
//! - `<prefix>d<tree>\0<key>` (data) → the same key without the prefix;
//! - `<prefix>j/<commit id>` (a journal record, written in its commit's
//!   transaction) → `j<revision>`: the record's tx id is the revision of the
//!   transaction that wrote it, known only once etcd committed it;
//! - `<prefix>m/last` (rewritten by every commit: its mod revision is the
//!   latest commit on the prefix, what a linearizable read waits for) → not kept.
//!
//! Every watch response holds whole revisions; it is applied as ONE sled
//! batch and only then is `applied` advanced, so a reader never sees half a
//! transaction. When the watch falls behind a compaction the replica takes a
//! new snapshot and applies the difference as one batch (a clean resync).

use super::client::{etcd_error, retryable, MAX_DECODING_BYTES};
use crate::error::{KernelError, KernelResult};
use crate::proto::{ErrorCode, JournalRecord, ReplicaState};
use crate::store::db::Store;
use crate::store::keys::{journal_key, DATA, JOURNAL};
use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions};
use prost::Message;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// The etcd key suffix of journal records.
pub const JOURNAL_SUFFIX: &[u8] = b"j/";
/// The etcd key suffix every commit rewrites (see the module docs).
pub const LAST_COMMIT_SUFFIX: &[u8] = b"m/last";
/// Keys per page of a snapshot read.
const SNAPSHOT_PAGE: i64 = 2000;
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// The end of the etcd range of keys starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// etcd keys of journal records and the tx ids (revisions) they hold.
#[derive(Default)]
pub struct JournalKeys {
    pub by_tx: BTreeMap<u64, Vec<u8>>,
    by_key: HashMap<Vec<u8>, u64>,
}

#[derive(Default)]
struct Health {
    stale_since: Option<u64>,
    reason: String,
}

/// The replica of one prefix.
pub struct Replica {
    pub(crate) store: Arc<Store>,
    pub(crate) prefix: Vec<u8>,
    pub(crate) endpoints: Vec<String>,
    applied: watch::Sender<i64>,
    health: Mutex<Health>,
    resyncs: AtomicU64,
    pub(crate) journal: Mutex<JournalKeys>,
    /// Diagnostics: the watch is held off (simulates a partitioned kernel).
    paused: AtomicBool,
    wake: Notify,
    stopped: AtomicBool,
}

impl Replica {
    pub fn new(store: Arc<Store>, prefix: Vec<u8>, endpoints: Vec<String>) -> Replica {
        Replica {
            store,
            prefix,
            endpoints,
            applied: watch::channel(0).0,
            health: Mutex::new(Health {
                stale_since: Some(crate::store::journal::now_ms()),
                reason: "not synced yet".to_owned(),
            }),
            resyncs: AtomicU64::new(0),
            journal: Mutex::new(JournalKeys::default()),
            paused: AtomicBool::new(false),
            wake: Notify::new(),
            stopped: AtomicBool::new(false),
        }
    }

    /// The revision whose changes the replica has applied.
    pub fn applied(&self) -> i64 {
        *self.applied.borrow()
    }

    /// Waits until the replica applied `revision`; false at `deadline`.
    pub async fn wait_applied(&self, revision: i64, deadline: Instant) -> bool {
        let mut receiver = self.applied.subscribe();
        loop {
            if *receiver.borrow_and_update() >= revision {
                return true;
            }
            match tokio::time::timeout_at(deadline.into(), receiver.changed()).await {
                Ok(Ok(())) => continue,
                _ => return *receiver.borrow() >= revision,
            }
        }
    }

    pub fn state(&self) -> ReplicaState {
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        ReplicaState {
            revision: self.applied(),
            stale: health.stale_since.is_some(),
            stale_since_unix_ms: health.stale_since.unwrap_or(0),
            resyncs: self.resyncs.load(Ordering::Relaxed),
            reason: health.reason.clone(),
        }
    }

    fn mark_stale(&self, reason: impl Into<String>) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        health
            .stale_since
            .get_or_insert_with(crate::store::journal::now_ms);
        health.reason = reason.into();
    }

    fn mark_following(&self) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        health.stale_since = None;
        health.reason.clear();
    }

    /// Diagnostics: holds the watch off (`true`) or lets it resume.
    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    /// The replica key of an etcd key, and whether it is a journal record.
    fn local_key(&self, key: &[u8]) -> Option<(Vec<u8>, bool)> {
        let rest = key.strip_prefix(self.prefix.as_slice())?;
        match rest.first() {
            Some(&DATA) => Some((rest.to_vec(), false)),
            Some(&JOURNAL) if rest.starts_with(JOURNAL_SUFFIX) => Some((Vec::new(), true)),
            _ => None,
        }
    }

    /// The replica form of a journal record written at `kv`'s revision.
    fn journal_entry(kv: &KeyValue) -> Option<(u64, Vec<u8>)> {
        let mut record = JournalRecord::decode(kv.value()).ok()?;
        let tx_id = kv.create_revision() as u64;
        record.tx_id = tx_id;
        Some((tx_id, record.encode_to_vec()))
    }

    /// Applies the events of whole revisions as one batch.
    fn apply_events(&self, events: &[etcd_client::Event]) -> KernelResult<()> {
        let mut batch = sled::Batch::default();
        let mut last = 0;
        let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        for event in events {
            let Some(kv) = event.kv() else { continue };
            last = last.max(kv.mod_revision());
            let Some((local, is_journal)) = self.local_key(kv.key()) else {
                continue;
            };
            match (event.event_type(), is_journal) {
                (EventType::Put, false) => batch.insert(local, kv.value()),
                (EventType::Delete, false) => batch.remove(local),
                (EventType::Put, true) => {
                    if let Some((tx_id, encoded)) = Self::journal_entry(kv) {
                        batch.insert(journal_key(tx_id).as_slice(), encoded);
                        journal.by_tx.insert(tx_id, kv.key().to_vec());
                        journal.by_key.insert(kv.key().to_vec(), tx_id);
                    }
                }
                (EventType::Delete, true) => {
                    if let Some(tx_id) = journal.by_key.remove(kv.key()) {
                        journal.by_tx.remove(&tx_id);
                        batch.remove(journal_key(tx_id).as_slice());
                    }
                }
            }
        }
        self.store
            .db
            .apply_batch(batch)
            .map_err(|error| self.store.sled_error(error))?;
        drop(journal);
        if last > self.applied() {
            self.applied.send_replace(last);
        }
        Ok(())
    }

    /// Replaces the replica's contents with a snapshot taken at `revision`,
    /// as one batch holding only the differences (watchers see what changed).
    fn apply_snapshot(&self, revision: i64, kvs: Vec<KeyValue>) -> KernelResult<()> {
        let mut batch = sled::Batch::default();
        let mut data: HashSet<Vec<u8>> = HashSet::new();
        let mut fresh = JournalKeys::default();
        for kv in &kvs {
            match self.local_key(kv.key()) {
                Some((local, false)) => {
                    let current = self
                        .store
                        .db
                        .get(&local)
                        .map_err(|error| self.store.sled_error(error))?;
                    if current.as_deref() != Some(kv.value()) {
                        batch.insert(local.as_slice(), kv.value());
                    }
                    data.insert(local);
                }
                Some((_, true)) => {
                    if let Some((tx_id, encoded)) = Self::journal_entry(kv) {
                        if !self
                            .store
                            .db
                            .contains_key(journal_key(tx_id))
                            .map_err(|error| self.store.sled_error(error))?
                        {
                            batch.insert(journal_key(tx_id).as_slice(), encoded);
                        }
                        fresh.by_tx.insert(tx_id, kv.key().to_vec());
                        fresh.by_key.insert(kv.key().to_vec(), tx_id);
                    }
                }
                None => {}
            }
        }
        for entry in self.store.db.iter() {
            let (key, _) = entry.map_err(|error| self.store.sled_error(error))?;
            let gone = match key.first() {
                Some(&DATA) => !data.contains(key.as_ref()),
                Some(&JOURNAL) => crate::store::keys::tx_of(&key)
                    .is_none_or(|tx_id| !fresh.by_tx.contains_key(&tx_id)),
                _ => false,
            };
            if gone {
                batch.remove(key);
            }
        }
        let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        self.store
            .db
            .apply_batch(batch)
            .map_err(|error| self.store.sled_error(error))?;
        *journal = fresh;
        drop(journal);
        self.applied.send_replace(revision);
        Ok(())
    }

    /// Reads the whole prefix at one revision, page by page.
    pub async fn snapshot(&self, client: &Client) -> KernelResult<(i64, Vec<KeyValue>)> {
        let mut kv = client
            .kv_client()
            .max_decoding_message_size(MAX_DECODING_BYTES);
        let end = prefix_end(&self.prefix);
        let mut start = self.prefix.clone();
        let mut revision = 0;
        let mut kvs = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(SNAPSHOT_PAGE);
            if revision != 0 {
                options = options.with_revision(revision);
            }
            let mut page = kv
                .get(start.clone(), Some(options))
                .await
                .map_err(|error| {
                    etcd_error("reading the store's snapshot", &self.endpoints, &error)
                })?;
            if revision == 0 {
                revision = page.header().map_or(0, |header| header.revision());
            }
            let more = page.more();
            let page_kvs = page.take_kvs();
            if let Some(last) = page_kvs.last() {
                start = last.key().to_vec();
                start.push(0);
            }
            kvs.extend(page_kvs);
            if !more {
                return Ok((revision, kvs));
            }
        }
    }

    /// Takes a snapshot and applies it (at open, and after a compaction).
    pub async fn resync(&self, client: &Client) -> KernelResult<()> {
        let (revision, kvs) = self.snapshot(client).await?;
        self.apply_snapshot(revision, kvs)
    }

    /// Follows the cluster until stopped: watch from the applied revision
    /// on, reconnect after failures, resync after a compaction.
    pub async fn follow(self: Arc<Self>, client: Client) {
        let mut backoff = Duration::from_millis(20);
        let mut must_resync = false;
        while !self.stopped.load(Ordering::SeqCst) {
            if self.paused.load(Ordering::SeqCst) {
                self.mark_stale("paused (diagnostics)");
                let woken = self.wake.notified();
                if self.paused.load(Ordering::SeqCst) && !self.stopped.load(Ordering::SeqCst) {
                    woken.await;
                }
                continue;
            }
            if must_resync {
                match tokio::time::timeout(Duration::from_secs(10), self.resync(&client)).await {
                    Ok(Ok(())) => {
                        must_resync = false;
                        self.resyncs.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(error)) => {
                        self.mark_stale(format!("resync failed: {}", error.message));
                        self.sleep(&mut backoff).await;
                        continue;
                    }
                    Err(_) => {
                        self.mark_stale("resync timed out");
                        self.sleep(&mut backoff).await;
                        continue;
                    }
                }
            }
            match self.watch_once(&client).await {
                Ok(Ended::Compacted) => must_resync = true,
                Ok(Ended::Stopped) => {}
                Ok(Ended::Lost(reason)) | Err(reason) => {
                    self.mark_stale(reason);
                    self.sleep(&mut backoff).await;
                    continue;
                }
            }
            backoff = Duration::from_millis(20);
        }
    }

    async fn sleep(&self, backoff: &mut Duration) {
        let woken = self.wake.notified();
        let _ = tokio::time::timeout(*backoff, woken).await;
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
    }

    /// One watch stream, from the revision after the applied one.
    async fn watch_once(&self, client: &Client) -> Result<Ended, String> {
        let start = self.applied() + 1;
        let options = WatchOptions::new()
            .with_range(prefix_end(&self.prefix))
            .with_start_revision(start)
            .with_progress_notify();
        let mut watch_client = client
            .watch_client()
            .max_decoding_message_size(MAX_DECODING_BYTES);
        let (mut watcher, mut stream) = tokio::time::timeout(
            Duration::from_secs(2),
            watch_client.watch(self.prefix.clone(), Some(options)),
        )
        .await
        .map_err(|_| "starting the watch timed out".to_owned())?
        .map_err(|error| format!("starting the watch failed: {error}"))?;
        // etcd-client returns once etcd confirmed the watch (`created`).
        self.mark_following();
        loop {
            let woken = self.wake.notified();
            let message = tokio::select! {
                message = stream.message() => message,
                () = woken => {
                    if self.stopped.load(Ordering::SeqCst) {
                        let _ = watcher.cancel().await;
                        return Ok(Ended::Stopped);
                    }
                    if self.paused.load(Ordering::SeqCst) {
                        let _ = watcher.cancel().await;
                        return Ok(Ended::Stopped);
                    }
                    continue;
                }
            };
            match message {
                Ok(Some(response)) => {
                    if response.compact_revision() > 0 {
                        self.mark_stale(format!(
                            "the cluster compacted revisions up to {} before the replica read them; resyncing",
                            response.compact_revision()
                        ));
                        return Ok(Ended::Compacted);
                    }
                    if response.canceled() {
                        return Ok(Ended::Lost(format!(
                            "the cluster canceled the watch: {}",
                            response.cancel_reason()
                        )));
                    }
                    if response.created() {
                        self.mark_following();
                    }
                    if !response.events().is_empty() {
                        if let Err(error) = self.apply_events(response.events()) {
                            return Ok(Ended::Lost(format!(
                                "applying changes to the replica failed: {}",
                                error.message
                            )));
                        }
                    }
                }
                Ok(None) => return Ok(Ended::Lost("the watch stream ended".to_owned())),
                Err(error) => {
                    return Ok(Ended::Lost(if retryable(&error) {
                        format!("the cluster connection was lost: {error}")
                    } else {
                        format!("the watch failed: {error}")
                    }))
                }
            }
        }
    }
}

enum Ended {
    Compacted,
    Stopped,
    Lost(String),
}

/// `CONNECTION` for a commit etcd acknowledged whose revision the replica
/// could not apply before the deadline (its watch is down).
pub fn not_applied(tx_id: i64, replica: &Replica) -> KernelError {
    KernelError::new(
        ErrorCode::Connection,
        format!(
            "transaction {tx_id} was committed by the cluster, but the local replica has not applied it yet (it is at revision {}: {}); reads here stay stale until the watch reconnects",
            replica.applied(),
            replica.state().reason
        ),
    )
    .with_detail("txId", tx_id.to_string())
    .with_detail("committed", "true")
    .with_detail("reason", "replica_behind")
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"/shop/"), b"/shop0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
