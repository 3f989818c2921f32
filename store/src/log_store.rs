//! openraft's `RaftLogStorage` on RocksDB: log entries, the vote and the committed log id.
//!
//! Every write that openraft relies on for safety is fsynced before openraft is told it is
//! durable. Votes and truncations are synchronous (fsynced) write batches. Appends are
//! written at once (so replication can read them) and then fsynced by a dedicated thread,
//! which calls openraft's `LogFlushed` callback only after the WAL sync returns, and lets
//! appends that queue up behind one sync share the next. (openraft 0.9.25's core waits for
//! each append's callback before its next command, so in practice one append waits at a
//! time and the leader's fsync precedes replication of that entry; the thread keeps the
//! sync off openraft's task and is ready for a core that pipelines appends.)
//!
//! A purge beyond what the state machine has applied is deferred (see `LogStore::purge`):
//! recorded durably, then carried out by a background task that waits on the state
//! machine's `AppliedIndex` channel and ends with the node's other tasks (`Tasks`).

use std::fmt::Debug;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Weak;

use openraft::storage::LogFlushed;
use openraft::storage::LogState;
use openraft::storage::RaftLogStorage;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::StorageIOError;
use rocksdb::WriteBatch;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::db;
use crate::db::Db;
use crate::db::Family;
use crate::db::Keyspace;
use crate::state_machine::AppliedIndex;
use crate::tasks::Stop;
use crate::tasks::Tasks;
use crate::types::decode;
use crate::types::encode;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::StorageError;
use crate::types::TypeConfig;
use crate::types::Vote;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
/// A purge that waits for the state machine (see `LogStore::purge`), kept so that a
/// restart carries it out.
const KEY_PURGE_PENDING: &[u8] = b"purge_pending";
/// How long a deferred purge whose write failed waits before it tries again: a backoff
/// after an error, not a poll (the state machine is waited for on [`AppliedIndex`]).
const PURGE_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// The log store handle openraft owns (one per Raft group); clones share the database.
#[derive(Clone)]
pub struct LogStore {
    /// The group's column families in the node's one database.
    ks: Keyspace,
    /// The last committed index openraft told us about, for `/status` (openraft 0.9's
    /// metrics do not carry it). Shared with the node handle.
    committed: Arc<AtomicU64>,
    /// Whether purges wait for the state machine (see `purge`). Off only where the log
    /// store is exercised on its own, without a state machine (openraft's test suite).
    guard_purge: bool,
    /// The deferred purge's target, if one waits for the state machine; shared by clones
    /// (openraft's handle and the background task that carries it out). `Some` exactly
    /// while that task runs: a deferral that finds `None` starts it.
    pending_purge: Arc<std::sync::Mutex<Option<LogId>>>,
    /// The state machine's applied index, which a deferred purge waits for; published by
    /// the state machine that shares this handle.
    applied: AppliedIndex,
    /// Where the deferred purge task is started, so that the node's shutdown stops it.
    tasks: Tasks,
    /// Hands appends to the database's WAL sync thread, which acknowledges them once
    /// durable.
    wal: WalSync,
}

/// The WAL sync thread of one database, shared by the log stores of every group on it:
/// one `flush_wal(true)` makes every append written before it durable, whichever group
/// wrote it, so appends of many groups share syncs. Clones send to the same thread, which
/// ends when the last clone is dropped.
///
/// The thread holds the database weakly: the last strong reference goes with the store,
/// on the thread that drops it, so RocksDB is closed before the process exits. (Had the
/// thread held the last one, it would close RocksDB while `main` returned and C++'s
/// static destructors ran: "pthread lock: Invalid argument" and `SIGABRT` after a clean
/// shutdown, seen once in the test suite.)
#[derive(Clone)]
pub(crate) struct WalSync {
    tx: Arc<std::sync::Mutex<std::sync::mpsc::Sender<LogFlushed<TypeConfig>>>>,
}

impl WalSync {
    /// Starts the sync thread for `db`.
    pub(crate) fn start(db: Arc<Db>) -> WalSync {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("hraftd-wal-sync".into())
            .spawn({
                let db = Arc::downgrade(&db);
                move || wal_sync_loop(db, rx)
            })
            .expect("spawning the WAL sync thread");
        WalSync {
            tx: Arc::new(std::sync::Mutex::new(tx)),
        }
    }

    /// Queues `callback` to be called once the WAL is synced; hands it back if the thread
    /// has stopped.
    fn send(&self, callback: LogFlushed<TypeConfig>) -> Result<(), LogFlushed<TypeConfig>> {
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(callback)
            .map_err(|std::sync::mpsc::SendError(cb)| cb)
    }
}

/// Syncs the WAL for queued appends, in order, and only then acknowledges them. One sync
/// covers every append written before it started.
fn wal_sync_loop(db: Weak<Db>, rx: std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        while let Ok(cb) = rx.try_recv() {
            waiting.push(cb);
        }
        let res = match db.upgrade() {
            Some(db) => db.flush_wal(true).map_err(|e| e.to_string()),
            None => Err("the database is closed".to_string()),
        };
        for cb in waiting {
            cb.log_io_completed(res.clone().map_err(std::io::Error::other));
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn index_of(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[..8]);
    u64::from_be_bytes(b)
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

impl LogStore {
    /// A log store on the group keyspace `ks`, syncing through `wal` (the sync thread of
    /// the same database). Deferred purges wait for `applied`, which must be the handle the
    /// state machine of the same group publishes on, and run as one of `tasks`.
    pub(crate) fn new(
        ks: Keyspace,
        wal: WalSync,
        committed: Arc<AtomicU64>,
        applied: AppliedIndex,
        tasks: Tasks,
    ) -> Self {
        LogStore {
            ks,
            committed,
            guard_purge: true,
            pending_purge: Arc::default(),
            applied,
            tasks,
            wal,
        }
    }

    /// Deletes the log up to `log_id`, recording the purge point in the same batch, so a
    /// crash never leaves a log whose start is unknown; drops a pending purge it covers.
    fn purge_now(&self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            &self.cf_meta(),
            KEY_LAST_PURGED,
            encode(&log_id).map_err(write_err)?,
        );
        let pending: Option<LogId> = self.get_meta(KEY_PURGE_PENDING)?;
        if pending.is_some_and(|p| p.index <= log_id.index) {
            batch.delete_cf(&self.cf_meta(), KEY_PURGE_PENDING);
        }
        batch.delete_range_cf(&self.cf_logs(), index_key(0), index_key(log_id.index + 1));
        self.ks.db().write(batch).map_err(write_err)
    }

    /// Records `log_id` as the purge to carry out once the state machine has applied that
    /// far, and makes sure a task is waiting to do it. Never blocks.
    fn defer_purge(&self, log_id: LogId) -> Result<(), StorageError> {
        self.ks
            .db()
            .put_cf_opt(
                &self.cf_meta(),
                KEY_PURGE_PENDING,
                encode(&log_id).map_err(write_err)?,
                &db::sync_write(),
            )
            .map_err(write_err)?;
        let start = {
            let mut p = self.pending_purge.lock().unwrap_or_else(|e| e.into_inner());
            let start = p.is_none();
            if p.is_none_or(|old| old.index < log_id.index) {
                *p = Some(log_id);
            }
            start
        };
        if start {
            let task = self.clone().finish_deferred_purges(self.tasks.stopping());
            if !self.tasks.spawn("deferred log purge", task) {
                // Shutting down: the purge stays recorded, and the next start carries it out.
                *self.pending_purge.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
        Ok(())
    }

    /// Carries out the pending purge once the state machine has reached it, until none is
    /// left, or until the node stops (the purge stays recorded for the next start).
    async fn finish_deferred_purges(self, mut stop: Stop) {
        // Stopping leaves the purge recorded for the next start; `pending_purge` is cleared
        // so that it stays `Some` only while this task runs (nothing starts a new one then).
        let stopped = || *self.pending_purge.lock().unwrap_or_else(|e| e.into_inner()) = None;
        loop {
            let Some(target) = *self.pending_purge.lock().unwrap_or_else(|e| e.into_inner()) else {
                return;
            };
            tokio::select! {
                biased;
                _ = stop.wait() => return stopped(),
                _ = self.applied.reached(target.index) => {}
            }
            if let Err(e) = self.purge_now(target) {
                log::warn!("deferred log purge to {target}: {e}");
                tokio::select! {
                    biased;
                    _ = stop.wait() => return stopped(),
                    _ = tokio::time::sleep(PURGE_RETRY) => continue,
                }
            }
            // Done unless a later purge was deferred meanwhile (checked and cleared under one
            // lock, so a deferral never finds `Some` and then goes unserved).
            let mut p = self.pending_purge.lock().unwrap_or_else(|e| e.into_inner());
            if *p == Some(target) {
                *p = None;
                return;
            }
        }
    }

    /// A log store whose purges do not wait for a state machine.
    #[cfg(test)]
    pub(crate) fn unguarded(ks: Keyspace) -> Self {
        LogStore {
            guard_purge: false,
            ..LogStore::new(
                ks.clone(),
                WalSync::start(ks.db().clone()),
                Arc::new(AtomicU64::new(0)),
                AppliedIndex::default(),
                Tasks::new(),
            )
        }
    }

    fn cf_logs(&self) -> Arc<rocksdb::BoundColumnFamily<'_>> {
        self.ks.cf(Family::Logs)
    }

    fn cf_meta(&self) -> Arc<rocksdb::BoundColumnFamily<'_>> {
        self.ks.cf(Family::RaftMeta)
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self
            .ks
            .db()
            .get_cf(&self.cf_meta(), key)
            .map_err(read_err)?
        {
            None => Ok(None),
            Some(b) => Ok(Some(decode(&b).map_err(read_err)?)),
        }
    }

    fn put_meta_sync<T: Serialize>(&self, key: &[u8], v: &T) -> Result<(), std::io::Error> {
        let mut batch = WriteBatch::default();
        batch.put_cf(&self.cf_meta(), key, encode(v)?);
        self.ks
            .db()
            .write_opt(batch, &db::sync_write())
            .map_err(std::io::Error::other)
    }

    /// The state machine's `last_applied` index, from the same database.
    fn applied_index(&self) -> std::io::Result<Option<u64>> {
        let cf = self.ks.cf(Family::SmMeta);
        let (applied, _) = crate::snapshot::read_applied(|k| self.ks.db().get_cf(&cf, k))?;
        Ok(applied.map(|l| l.index))
    }

    /// The committed log id openraft last saved, read at start-up.
    pub(crate) fn saved_committed(&self) -> Option<LogId> {
        // Stored as `Option<LogId>` (what openraft hands to `save_committed`).
        let saved: Option<Option<LogId>> = self.get_meta(KEY_COMMITTED).ok().flatten();
        saved.flatten()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => *x + 1,
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        let cf = self.cf_logs();
        let it = self.ks.db().iterator_cf(
            &cf,
            rocksdb::IteratorMode::From(&index_key(start), rocksdb::Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(read_err)?;
            let index = index_of(&k);
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = decode(&v).map_err(read_err)?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        // A purge deferred before a restart: carry it out now if the state machine has
        // caught up (a crash must not leave the log with the gap a snapshot jumped over),
        // else keep waiting for it in the background.
        if let Some(p) = self.get_meta::<LogId>(KEY_PURGE_PENDING)? {
            let applied = self.applied_index().map_err(read_err)?;
            if applied.is_some_and(|a| a >= p.index) {
                self.purge_now(p)?;
            } else if self
                .pending_purge
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none()
            {
                self.defer_purge(p)?;
            }
        }
        let last_purged: Option<LogId> = self.get_meta(KEY_LAST_PURGED)?;
        let last = self
            .ks
            .db()
            .iterator_cf(&self.cf_logs(), rocksdb::IteratorMode::End)
            .next();
        let last_log_id = match last {
            None => last_purged,
            Some(item) => {
                let (_, v) = item.map_err(read_err)?;
                let entry: Entry = decode(&v).map_err(read_err)?;
                Some(entry.log_id)
            }
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta_sync(KEY_VOTE, vote)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(c) = committed {
            self.committed.fetch_max(c.index, Ordering::Relaxed);
        }
        // Not fsynced: losing it only means re-applying from an older point after a crash.
        let mut batch = WriteBatch::default();
        batch.put_cf(
            &self.cf_meta(),
            KEY_COMMITTED,
            encode(&committed).map_err(write_err)?,
        );
        self.ks.db().write(batch).map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let c: Option<Option<LogId>> = self.get_meta(KEY_COMMITTED)?;
        Ok(c.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let cf = self.cf_logs();
        for entry in entries {
            batch.put_cf(
                &cf,
                index_key(entry.log_id.index),
                encode(&entry).map_err(write_err)?,
            );
        }
        // Written now (readable by replication at once), durable once the sync thread
        // has synced the WAL; only then is openraft told.
        drop(cf);
        if let Err(e) = self.ks.db().write(batch) {
            callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            return Err(write_err(e));
        }
        if let Err(callback) = self.wal.send(callback) {
            let e = std::io::Error::other("the WAL sync thread has stopped");
            callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            return Err(write_err(e));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            &self.cf_logs(),
            index_key(log_id.index),
            index_key(u64::MAX),
        );
        self.ks
            .db()
            .write_opt(batch, &db::sync_write())
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // openraft asks to purge up to a snapshot that the state machine may still be
        // installing (it does not wait for the install). Purging first could leave, after a
        // crash, a log that starts beyond the state machine; skipping the purge would leave
        // a gap in the log (the entries the snapshot jumped over were never received). And
        // waiting here would block openraft's core, so that the node answered no Raft RPC
        // during a long install. So the purge is deferred: recorded, and carried out by a
        // background task once the state machine has applied that far (the log may keep
        // entries longer than asked; it never loses one too early).
        if self.guard_purge {
            let applied = self.applied_index().map_err(read_err)?;
            if applied.is_none_or(|a| a < log_id.index) {
                return self.defer_purge(log_id);
            }
        }
        self.purge_now(log_id)
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::testing::log_id;
    use openraft::EntryPayload;
    use openraft::RaftLogReader;

    use super::*;
    use crate::state_machine::StateMachine;

    /// Turns of the (current-thread) test runtime within which an event-driven purge must
    /// have run: far too short for any timer-based poll to fire.
    const PROMPT_TURNS: usize = 100;

    fn blank(index: u64) -> Entry {
        Entry {
            log_id: log_id(1, 0, index),
            payload: EntryPayload::Blank,
        }
    }

    fn new_log(db: &Arc<Db>, applied: &AppliedIndex, tasks: &Tasks) -> LogStore {
        LogStore::new(
            Keyspace::default_group(db),
            WalSync::start(db.clone()),
            Arc::new(AtomicU64::new(0)),
            applied.clone(),
            tasks.clone(),
        )
    }

    /// The committed log id survives a reopen and reads back as saved (it is stored as an
    /// `Option<LogId>`; reading it as a bare `LogId` once produced garbage indexes).
    #[tokio::test]
    async fn committed_index_round_trips() {
        let td = tempfile::tempdir().unwrap();
        let db = db::open(&td.path().join("raft")).unwrap();
        let mut log = new_log(&db, &AppliedIndex::default(), &Tasks::new());
        log.save_committed(Some(log_id(3, 7, 42))).await.unwrap();
        assert_eq!(log.saved_committed(), Some(log_id(3, 7, 42)));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(3, 7, 42)));
    }

    /// A log store holding blank entries 1..=10 and an empty state machine, on one database
    /// and sharing one applied index, as `Store::open` wires them.
    struct Fixture {
        _td: tempfile::TempDir,
        db: Arc<Db>,
        applied: AppliedIndex,
        tasks: Tasks,
        log: LogStore,
        sm: StateMachine,
    }

    fn ten_entries_and_a_state_machine() -> Fixture {
        let td = tempfile::tempdir().unwrap();
        let db = db::open(&td.path().join("raft")).unwrap();
        let (applied, tasks) = (AppliedIndex::default(), Tasks::new());
        let log = new_log(&db, &applied, &tasks);
        let sm = StateMachine::open(
            Keyspace::default_group(&db),
            td.path().join("snapshots"),
            applied.clone(),
            crate::watch::DEFAULT_HISTORY,
        )
        .unwrap();
        let mut batch = WriteBatch::default();
        for i in 1..=10 {
            batch.put_cf(&log.cf_logs(), index_key(i), encode(&blank(i)).unwrap());
        }
        db.write(batch).unwrap();
        Fixture {
            _td: td,
            db,
            applied,
            tasks,
            log,
            sm,
        }
    }

    async fn last_purged(log: &mut LogStore) -> Option<LogId> {
        log.get_log_state().await.unwrap().last_purged_log_id
    }

    /// Lets the runtime run other tasks (the deferred purge) for a few turns, until
    /// `last_purged` is `want` or the turns are spent; returns what it is then.
    async fn settle_purge(log: &mut LogStore, want: Option<LogId>) -> Option<LogId> {
        for _ in 0..PROMPT_TURNS {
            if last_purged(log).await == want {
                break;
            }
            tokio::task::yield_now().await;
        }
        last_purged(log).await
    }

    /// A purge beyond what the state machine has applied waits for it, so a crash can never
    /// leave a log that starts after the state machine's last applied entry, and the log
    /// never gets a gap (found by hraftd-torture: a snapshot install jumped over entries
    /// the node never had, a deferred purge kept the older ones, and the node could not
    /// restart).
    #[tokio::test]
    async fn purge_waits_for_the_state_machine() {
        let Fixture {
            mut log, mut sm, ..
        } = ten_entries_and_a_state_machine();

        // The purge returns at once (openraft's core must not wait on it) but deletes
        // nothing while the state machine is behind the purge point, even once its task has
        // had every chance to run, and even as the state machine applies short of it.
        let purged = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            log.purge(log_id(1, 0, 5)),
        )
        .await;
        assert!(matches!(purged, Ok(Ok(()))), "purge must not block");
        for _ in 0..PROMPT_TURNS {
            tokio::task::yield_now().await;
        }
        sm.apply((1..=4).map(blank)).await.unwrap();
        for _ in 0..PROMPT_TURNS {
            tokio::task::yield_now().await;
        }
        assert_eq!(last_purged(&mut log).await, None);
        assert_eq!(log.try_get_log_entries(1..=10).await.unwrap().len(), 10);

        // Once the state machine has applied that far, the deferred purge happens.
        sm.apply((5..=6).map(blank)).await.unwrap();
        let want = Some(log_id(1, 0, 5));
        assert_eq!(settle_purge(&mut log, want).await, want);
        assert_eq!(log.try_get_log_entries(1..=10).await.unwrap().len(), 5);
    }

    /// The deferred purge is woken by the state machine's apply, not by a timer: it runs
    /// within a few turns of the runtime after the apply that reaches it.
    #[tokio::test]
    async fn a_deferred_purge_runs_promptly_once_applied_reaches_it() {
        let Fixture {
            mut log, mut sm, ..
        } = ten_entries_and_a_state_machine();
        log.purge(log_id(1, 0, 3)).await.unwrap();
        for _ in 0..PROMPT_TURNS {
            tokio::task::yield_now().await;
        }
        // A later, larger purge while the first waits: both are carried out, in order.
        log.purge(log_id(1, 0, 8)).await.unwrap();
        sm.apply((1..=3).map(blank)).await.unwrap();
        let want = Some(log_id(1, 0, 3));
        assert_eq!(settle_purge(&mut log, want).await, want);
        sm.apply((4..=9).map(blank)).await.unwrap();
        let want = Some(log_id(1, 0, 8));
        assert_eq!(settle_purge(&mut log, want).await, want);
        assert_eq!(log.try_get_log_entries(1..=10).await.unwrap().len(), 2);
        assert_eq!(log.get_meta::<LogId>(KEY_PURGE_PENDING).unwrap(), None);
    }

    /// Shutdown ends a waiting deferred purge at once; the purge stays recorded, and the
    /// next start carries it out.
    #[tokio::test]
    async fn shutdown_ends_a_waiting_purge_and_keeps_it_recorded() {
        let Fixture {
            db,
            tasks,
            mut log,
            mut sm,
            ..
        } = ten_entries_and_a_state_machine();
        log.purge(log_id(1, 0, 5)).await.unwrap();
        let bound = std::time::Duration::from_secs(5);
        let started = std::time::Instant::now();
        assert_eq!(tasks.join(bound).await, 0, "the purge task ended by itself");
        assert!(started.elapsed() < bound);
        assert_eq!(last_purged(&mut log).await, None);
        assert_eq!(
            log.get_meta::<LogId>(KEY_PURGE_PENDING).unwrap(),
            Some(log_id(1, 0, 5))
        );
        // "Restart" once the state machine has caught up.
        sm.apply((1..=5).map(blank)).await.unwrap();
        let mut reopened = new_log(&db, &AppliedIndex::default(), &Tasks::new());
        assert_eq!(last_purged(&mut reopened).await, Some(log_id(1, 0, 5)));
    }

    /// A purge deferred before a crash is carried out at the next start once the state
    /// machine has reached it (the log must not keep a gap a snapshot jumped over).
    #[tokio::test]
    async fn a_deferred_purge_survives_a_restart() {
        let Fixture {
            db,
            mut log,
            mut sm,
            ..
        } = ten_entries_and_a_state_machine();
        log.purge(log_id(1, 0, 7)).await.unwrap();
        // "Restart": a new handle on the same database, after the state machine caught up.
        sm.apply((1..=8).map(blank)).await.unwrap();
        let mut reopened = new_log(&db, &AppliedIndex::default(), &Tasks::new());
        let state = reopened.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 0, 7)));
        assert_eq!(reopened.try_get_log_entries(1..=10).await.unwrap().len(), 3);
    }

    /// A purge recorded before a restart that the state machine has not reached yet is
    /// resumed at start-up and waits for the state machine, as before the restart.
    #[tokio::test]
    async fn a_resumed_purge_waits_for_the_state_machine() {
        let Fixture {
            db,
            applied,
            tasks,
            mut log,
            mut sm,
            ..
        } = ten_entries_and_a_state_machine();
        log.purge(log_id(1, 0, 6)).await.unwrap();
        tasks.join(std::time::Duration::from_secs(5)).await;
        // "Restart" before the state machine caught up: the purge waits again.
        let mut reopened = new_log(&db, &applied, &Tasks::new());
        assert_eq!(last_purged(&mut reopened).await, None);
        for _ in 0..PROMPT_TURNS {
            tokio::task::yield_now().await;
        }
        assert_eq!(last_purged(&mut reopened).await, None);
        sm.apply((1..=6).map(blank)).await.unwrap();
        let want = Some(log_id(1, 0, 6));
        assert_eq!(settle_purge(&mut reopened, want).await, want);
        assert_eq!(reopened.try_get_log_entries(1..=10).await.unwrap().len(), 4);
    }
}
