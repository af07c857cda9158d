//! [`Cluster`]: the state of a kernel's cluster store that the commit,
//! journal and open code share (the replica, the client, etcd's limits).

use super::replica::{Replica, JOURNAL_SUFFIX};
use etcd_client::Client;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A kernel's cluster store: the replica, the client, the limits.
pub struct Cluster {
    pub(crate) replica: Arc<Replica>,
    pub(crate) client: Client,
    pub(crate) timeout: Duration,
    pub(crate) max_txn_ops: usize,
    pub(crate) max_request_bytes: usize,
    pub(crate) runtime: tokio::runtime::Handle,
    /// Journal keys are `<prefix>j/<instance><sequence>`: unique without coordination.
    pub(crate) instance: u64,
    pub(crate) sequence: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) in_flight: Arc<AtomicUsize>,
}

impl Cluster {
    /// The etcd key of a replica key.
    pub fn etcd_key(&self, local: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.replica.prefix.len() + local.len());
        key.extend_from_slice(&self.replica.prefix);
        key.extend_from_slice(local);
        key
    }

    /// A journal key no other commit of any kernel ever uses.
    pub fn next_journal_key(&self) -> Vec<u8> {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let mut suffix = JOURNAL_SUFFIX.to_vec();
        suffix.extend_from_slice(format!("{:016x}{sequence:012x}", self.instance).as_bytes());
        self.etcd_key(&suffix)
    }
}
