//! A group of commits applied to sled as ONE atomic batch: the committer
//! stages each commit (and each undo) into the group, then applies it.

use super::db::{stripe_of, Store};
use super::keys::{journal_key, META_NEXT_TX};
use super::wal;
use crate::error::KernelResult;
use crate::proto::JournalRecord;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

/// The commits of one group, applied to sled as ONE atomic batch (one log
/// write instead of one per commit). Holds the stripes of every key the
/// group touched until the batch is applied, and an overlay of the group's
/// writes so later commits in the group see earlier ones.
pub struct Group<'a> {
    store: &'a Store,
    batch: sled::Batch,
    overlay: HashMap<Vec<u8>, Option<Vec<u8>>>,
    stripes: HashSet<usize>,
    guards: Vec<MutexGuard<'a, ()>>,
    next_tx: u64,
    /// Journal records of this group, for undo (not in sled yet).
    pub(crate) records: Vec<JournalRecord>,
    /// The framed records for the commit log.
    log: Vec<u8>,
}

impl<'a> Group<'a> {
    pub fn new(store: &'a Store) -> Group<'a> {
        Group {
            store,
            batch: sled::Batch::default(),
            overlay: HashMap::new(),
            stripes: HashSet::new(),
            guards: Vec::new(),
            next_tx: store.next_tx.load(Ordering::SeqCst),
            records: Vec::new(),
            log: Vec::new(),
        }
    }

    pub fn store(&self) -> &'a Store {
        self.store
    }

    /// Locks the stripes of `keys` not already held by this group.
    pub fn lock(&mut self, keys: &[Vec<u8>]) {
        // Each key hashed once; `insert` keeps only stripes not yet held.
        let fresh: Vec<usize> = keys
            .iter()
            .map(|key| stripe_of(key))
            .filter(|&stripe| self.stripes.insert(stripe))
            .collect();
        self.guards.extend(self.store.lock_stripes(fresh));
    }

    /// The current value of a sled key as this group sees it.
    pub fn get(&self, key: &[u8]) -> KernelResult<Option<Vec<u8>>> {
        match self.overlay.get(key) {
            Some(value) => Ok(value.clone()),
            None => Ok(self
                .store
                .db
                .get(key)
                .map_err(|error| self.store.sled_error(error))?
                .map(|value| value.to_vec())),
        }
    }

    /// The tx id the next staged commit gets: ids are contiguous, in apply
    /// order, and only the committer thread assigns them.
    pub fn next_tx_id(&self) -> u64 {
        self.next_tx
    }

    /// Stages one commit: its writes (sled key, new value or `None` to
    /// delete) and its journal record, encoded as `encoded`.
    pub fn stage(
        &mut self,
        writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        record: JournalRecord,
        encoded: &[u8],
    ) {
        for (key, value) in writes {
            match &value {
                Some(value) => self.batch.insert(key.as_slice(), value.as_slice()),
                None => self.batch.remove(key.as_slice()),
            }
            self.overlay.insert(key, value);
        }
        self.batch
            .insert(journal_key(record.tx_id).as_slice(), encoded);
        wal::frame(record.tx_id, encoded, &mut self.log);
        self.next_tx = record.tx_id + 1;
        self.records.push(record);
    }

    /// Takes the framed journal records staged so far (for the commit log).
    pub fn take_log(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.log)
    }

    /// Applies the group's batch (with the next tx id) and releases its stripes.
    pub fn finish(self) -> KernelResult<()> {
        if self.records.is_empty() {
            return Ok(());
        }
        let mut batch = self.batch;
        batch.insert(META_NEXT_TX, &self.next_tx.to_be_bytes());
        self.store
            .db
            .apply_batch(batch)
            .map_err(|error| self.store.write_error(error))?;
        self.store.next_tx.store(self.next_tx, Ordering::SeqCst);
        self.store
            .commits
            .fetch_add(self.records.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}
