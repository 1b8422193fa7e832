//! Durable Raft storage for the cluster-state log: an append-only file of checksummed records
//! (appends, truncations, purges) that is fsynced before openraft is told an entry is stored,
//! the vote and commit index beside it, and snapshots of the state machine.
//!
//! The state machine (the [`ClusterState`]) lives in memory and is rebuilt on start from the
//! latest snapshot plus the committed entries after it; every applied state is published on a
//! watch channel for the rest of the node.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::{Cursor, Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogState, RaftLogReader, RaftSnapshotBuilder, Snapshot, SnapshotMeta};
use openraft::{
    Entry, EntryPayload, LogId, RaftStorage, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, watch};

use super::{RaftPeer, TypeConfig};
use crate::cluster::state::{ClusterState, CommandOutcome};
use crate::durable::write_atomically;

type Membership = StoredMembership<u64, RaftPeer>;

/// One record of the log file.
#[derive(Serialize, Deserialize)]
enum LogRecord {
    Append(Box<Entry<TypeConfig>>),
    /// Entries from this index on were removed (a new leader overwrote them).
    TruncateFrom(u64),
    /// Entries up to and including this id were compacted into a snapshot.
    PurgeUpTo(LogId<u64>),
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<u64, RaftPeer>,
    state: ClusterState,
}

struct Inner {
    dir: PathBuf,
    log_file: std::fs::File,
    log: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<u64>>,
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
    applied: Option<LogId<u64>>,
    membership: Membership,
    state: ClusterState,
    snapshot: Option<(SnapshotMeta<u64, RaftPeer>, Vec<u8>)>,
    snapshot_count: u64,
    published: watch::Sender<Arc<ClusterState>>,
}

/// The log, vote and state machine of this node's Raft member. Clones share one store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
}

fn write_error(err: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write_logs(openraft::AnyError::new(&err)).into()
}

fn read_error(err: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::read_logs(openraft::AnyError::new(&err)).into()
}

impl Store {
    /// Opens (or creates) the store in `dir`, replaying the log file; a torn last record, left
    /// by a crash mid-write, is cut off.
    pub fn open(dir: &Path) -> std::io::Result<(Store, watch::Receiver<Arc<ClusterState>>)> {
        crate::durable::create_dir(dir)?;
        let log_path = dir.join("log");
        let mut bytes = Vec::new();
        if log_path.exists() {
            std::fs::File::open(&log_path)?.read_to_end(&mut bytes)?;
        }
        let mut log = BTreeMap::new();
        let mut last_purged = None;
        let mut offset = 0usize;
        while let Some((record, next)) = read_frame(&bytes, offset) {
            match rmp_serde::from_slice::<LogRecord>(record) {
                Ok(LogRecord::Append(entry)) => {
                    log.insert(entry.log_id.index, *entry);
                }
                Ok(LogRecord::TruncateFrom(index)) => {
                    log.split_off(&index);
                }
                Ok(LogRecord::PurgeUpTo(log_id)) => {
                    log = log.split_off(&(log_id.index + 1));
                    last_purged = Some(log_id);
                }
                Err(_) => break,
            }
            offset = next;
        }
        if offset < bytes.len() {
            tracing::warn!(path = %log_path.display(), kept = offset, dropped = bytes.len() - offset, "cut a torn tail off the cluster-state log");
        }
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        log_file.set_len(offset as u64)?;

        let vote = read_json(&dir.join("vote.json"))?;
        let committed = read_json(&dir.join("committed.json"))?;
        let snapshot_file: Option<SnapshotFile> = read_json(&dir.join("snapshot.json"))?;
        let (applied, membership, state, snapshot) = match snapshot_file {
            Some(file) => {
                let data = serde_json::to_vec(&file.state).map_err(std::io::Error::other)?;
                (
                    file.meta.last_log_id,
                    file.meta.last_membership.clone(),
                    file.state,
                    Some((file.meta, data)),
                )
            }
            None => (None, Membership::default(), ClusterState::default(), None),
        };
        let (published, receiver) = watch::channel(Arc::new(state.clone()));
        let inner = Inner {
            dir: dir.to_path_buf(),
            log_file,
            log,
            last_purged,
            vote,
            committed,
            applied,
            membership,
            state,
            snapshot,
            snapshot_count: 0,
            published,
        };
        Ok((
            Store {
                inner: Arc::new(Mutex::new(inner)),
            },
            receiver,
        ))
    }
}

impl Inner {
    fn write_record(&mut self, record: &LogRecord) -> std::io::Result<()> {
        let payload = rmp_serde::to_vec_named(record).map_err(std::io::Error::other)?;
        let mut frame = Vec::with_capacity(payload.len() + 8);
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        self.log_file.write_all(&frame)?;
        self.log_file.sync_data()
    }

    fn publish(&self) {
        self.published.send_replace(Arc::new(self.state.clone()));
    }
}

/// `[len u32][crc32c u32][payload]`; `None` at the end or at a torn or corrupt frame.
fn read_frame(bytes: &[u8], offset: usize) -> Option<(&[u8], usize)> {
    let header = bytes.get(offset..offset + 8)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    let payload = bytes.get(offset + 8..offset + 8 + len)?;
    (crc32c::crc32c(payload) == crc).then_some((payload, offset + 8 + len))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(std::io::Error::other),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    write_atomically(path, &bytes)
}

impl RaftLogReader<TypeConfig> for Store {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        let inner = self.inner.lock().await;
        Ok(inner
            .log
            .range(range)
            .map(|(_, entry)| entry.clone())
            .collect())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for Store {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let mut inner = self.inner.lock().await;
        inner.snapshot_count += 1;
        let snapshot_id = match inner.applied {
            Some(id) => format!(
                "{}-{}-{}",
                id.leader_id.term, id.index, inner.snapshot_count
            ),
            None => format!("empty-{}", inner.snapshot_count),
        };
        let meta = SnapshotMeta {
            last_log_id: inner.applied,
            last_membership: inner.membership.clone(),
            snapshot_id,
        };
        let data = serde_json::to_vec(&inner.state).map_err(write_error)?;
        write_json(
            &inner.dir.join("snapshot.json"),
            &SnapshotFile {
                meta: meta.clone(),
                state: inner.state.clone(),
            },
        )
        .map_err(write_error)?;
        inner.snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStorage<TypeConfig> for Store {
    type LogReader = Store;
    type SnapshotBuilder = Store;

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let mut inner = self.inner.lock().await;
        write_json(&inner.dir.join("vote.json"), vote).map_err(write_error)?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.inner.lock().await.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        let mut inner = self.inner.lock().await;
        write_json(&inner.dir.join("committed.json"), &committed).map_err(write_error)?;
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self.inner.lock().await.committed)
    }

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let inner = self.inner.lock().await;
        let last = inner.log.values().next_back().map(|entry| entry.log_id);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last.or(inner.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Store {
        self.clone()
    }

    async fn append_to_log<I>(&mut self, entries: I) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
    {
        let mut inner = self.inner.lock().await;
        for entry in entries {
            inner
                .write_record(&LogRecord::Append(Box::new(entry.clone())))
                .map_err(write_error)?;
            inner.log.insert(entry.log_id.index, entry);
        }
        Ok(())
    }

    async fn delete_conflict_logs_since(
        &mut self,
        log_id: LogId<u64>,
    ) -> Result<(), StorageError<u64>> {
        let mut inner = self.inner.lock().await;
        inner
            .write_record(&LogRecord::TruncateFrom(log_id.index))
            .map_err(write_error)?;
        inner.log.split_off(&log_id.index);
        Ok(())
    }

    async fn purge_logs_upto(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut inner = self.inner.lock().await;
        inner
            .write_record(&LogRecord::PurgeUpTo(log_id))
            .map_err(write_error)?;
        inner.log = inner.log.split_off(&(log_id.index + 1));
        inner.last_purged = Some(log_id);
        Ok(())
    }

    async fn last_applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, Membership), StorageError<u64>> {
        let inner = self.inner.lock().await;
        Ok((inner.applied, inner.membership.clone()))
    }

    async fn apply_to_state_machine(
        &mut self,
        entries: &[Entry<TypeConfig>],
    ) -> Result<Vec<CommandOutcome>, StorageError<u64>> {
        let mut inner = self.inner.lock().await;
        let mut outcomes = Vec::with_capacity(entries.len());
        for entry in entries {
            inner.applied = Some(entry.log_id);
            let outcome = match &entry.payload {
                EntryPayload::Blank => CommandOutcome {
                    version: inner.state.version,
                    rejected: None,
                },
                EntryPayload::Normal(command) => inner.state.apply(command),
                EntryPayload::Membership(membership) => {
                    inner.membership = Membership::new(Some(entry.log_id), membership.clone());
                    CommandOutcome {
                        version: inner.state.version,
                        rejected: None,
                    }
                }
            };
            outcomes.push(outcome);
        }
        inner.publish();
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Store {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, RaftPeer>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let state: ClusterState = serde_json::from_slice(&data).map_err(read_error)?;
        let mut inner = self.inner.lock().await;
        write_json(
            &inner.dir.join("snapshot.json"),
            &SnapshotFile {
                meta: meta.clone(),
                state: state.clone(),
            },
        )
        .map_err(write_error)?;
        inner.applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.state = state;
        inner.snapshot = Some((meta.clone(), data));
        inner.publish();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let inner = self.inner.lock().await;
        Ok(inner.snapshot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::state::StateCommand;
    use openraft::CommittedLeaderId;

    fn entry(index: u64, term: u64, uuid: &str) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(StateCommand::Bootstrap {
                cluster_uuid: uuid.into(),
            }),
        }
    }

    #[tokio::test]
    async fn the_log_and_vote_survive_a_restart_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut store, _) = Store::open(dir.path()).expect("open");
            store
                .append_to_log(vec![entry(1, 1, "a"), entry(2, 1, "b"), entry(3, 1, "c")])
                .await
                .expect("append");
            store
                .delete_conflict_logs_since(LogId::new(CommittedLeaderId::new(1, 1), 3))
                .await
                .expect("truncate");
            store
                .append_to_log(vec![entry(3, 2, "d")])
                .await
                .expect("append");
            store.save_vote(&Vote::new(2, 1)).await.expect("vote");
        }
        // A crash in the middle of writing one more record.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("log"))
            .expect("log file");
        file.write_all(&[200, 0, 0, 0, 1, 2]).expect("torn bytes");
        drop(file);

        let (mut store, _) = Store::open(dir.path()).expect("reopen");
        let entries = store.try_get_log_entries(1..10).await.expect("read");
        let terms: Vec<u64> = entries.iter().map(|e| e.log_id.leader_id.term).collect();
        assert_eq!(terms, vec![1, 1, 2]);
        assert_eq!(
            store.read_vote().await.expect("vote"),
            Some(Vote::new(2, 1))
        );

        store
            .append_to_log(vec![entry(4, 2, "e")])
            .await
            .expect("append after cut");
        let (mut store, _) = Store::open(dir.path()).expect("reopen again");
        assert_eq!(
            store.try_get_log_entries(1..10).await.expect("read").len(),
            4
        );

        store
            .purge_logs_upto(LogId::new(CommittedLeaderId::new(1, 1), 2))
            .await
            .expect("purge");
        let (mut store, _) = Store::open(dir.path()).expect("reopen after purge");
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id.map(|id| id.index), Some(2));
        assert_eq!(state.last_log_id.map(|id| id.index), Some(4));
    }

    #[tokio::test]
    async fn applied_commands_are_published_and_snapshots_restore_the_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, published) = Store::open(dir.path()).expect("open");
        let outcomes = store
            .apply_to_state_machine(&[entry(1, 1, "uuid-1")])
            .await
            .expect("apply");
        assert_eq!(outcomes[0].version, 1);
        assert_eq!(published.borrow().cluster_uuid.as_deref(), Some("uuid-1"));
        let snapshot = store.build_snapshot().await.expect("snapshot");
        assert_eq!(snapshot.meta.last_log_id.map(|id| id.index), Some(1));

        let (mut reopened, published) = Store::open(dir.path()).expect("reopen");
        assert_eq!(published.borrow().cluster_uuid.as_deref(), Some("uuid-1"));
        let (applied, _) = reopened.last_applied_state().await.expect("applied");
        assert_eq!(applied.map(|id| id.index), Some(1));
    }
}
