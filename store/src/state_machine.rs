//! openraft's `RaftStateMachine` on RocksDB: the key-value data itself, plus
//! `last_applied` and membership, always changed together in one atomic write batch.
//!
//! Data lives only in RocksDB (never in an in-memory map). Readers go straight to RocksDB
//! through [`StateReader`]; the `install` lock keeps them (and snapshot builds) from seeing
//! a half-installed snapshot. Everything that renames, picks or deletes snapshot files holds
//! the `files` lock, because openraft builds snapshots concurrently with installing and
//! serving them. After every apply batch and snapshot install the state machine publishes
//! its applied index on an `AppliedIndex` channel, for those who wait for it to reach an
//! index (the log store's deferred purge) instead of polling RocksDB.

use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;

use openraft::storage::RaftStateMachine;
use openraft::storage::Snapshot;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::StorageIOError;
use rocksdb::WriteBatch;
use tokio::sync::watch;

use crate::backup;
use crate::backup::Backup;
use crate::catalogue;
use crate::db;
use crate::db::Family;
use crate::db::Keyspace;
use crate::kv;
use crate::snapshot;
use crate::snapshot::KEY_LAST_APPLIED;
use crate::snapshot::KEY_MEMBERSHIP;
use crate::types::encode;
use crate::types::Applied;
use crate::types::Command;
use crate::types::Entry;
use crate::types::KeyValue;
use crate::types::LeaseInfo;
use crate::types::LogId;
use crate::types::SnapshotFile;
use crate::types::SnapshotMeta;
use crate::types::StorageError;
use crate::types::StoredMembership;
use crate::types::TypeConfig;
use crate::watch as changes;
use crate::watch::History;
use crate::watch::HistoryPage;
use crate::watch::Hub;

/// Names the snapshot file whose installation had begun; present only while installing,
/// so a crash mid-install is finished at the next start.
const KEY_INSTALLING: &[u8] = b"installing";
/// Every valid UTF-8 key sorts below this byte, so `[b"", DATA_END)` covers all data.
const DATA_END: &[u8] = kv::USER_END;
/// Present once every value in the data family carries metadata (`kv.rs`); a data
/// directory written before then is converted when it is opened.
const KEY_FORMAT: &[u8] = b"value_format";
const FORMAT_META: &[u8] = b"2";
/// Most keys one range page holds ([`StateReader::range`]).
pub const MAX_RANGE_LIMIT: usize = 10_000;
/// Most key and value bytes one range page holds; past them the page ends early (`more`).
pub const MAX_PAGE_BYTES: usize = 8 << 20;
const DATA_START: &[u8] = b"";
/// Past every key of the `data` family (client keys, catalogue, change history).
const ALL_END: &[u8] = b"\xff\xff";
/// How many bytes of records an install writes per batch, to keep memory bounded.
const INSTALL_BATCH_BYTES: usize = 4 << 20;

/// Held for writing while a snapshot replaces the data, so that reads and snapshot builds
/// never see a mix of the old and new state. An async lock: readers wait without blocking
/// a runtime thread.
type InstallLock = Arc<tokio::sync::RwLock<()>>;

/// Serializes renaming, choosing and deleting snapshot files.
type FilesLock = Arc<Mutex<()>>;

fn lock_files(l: &FilesLock) -> std::sync::MutexGuard<'_, ()> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

/// The state machine's last applied log index (`None` before anything was applied), as
/// published by the state machine after each apply batch, each snapshot install, and when
/// it opens. Made before the log store and the state machine and handed to both, so the
/// log store can wait for the state machine without owning it. Clones share one channel.
///
/// What it says is never ahead of RocksDB: it is published only after the write that
/// records `last_applied`.
#[derive(Clone)]
pub(crate) struct AppliedIndex {
    tx: watch::Sender<Option<u64>>,
}

impl Default for AppliedIndex {
    fn default() -> Self {
        AppliedIndex {
            tx: watch::channel(None).0,
        }
    }
}

impl AppliedIndex {
    fn publish(&self, index: Option<u64>) {
        self.tx
            .send_if_modified(|v| std::mem::replace(v, index) != index);
    }

    /// Resolves once the state machine has applied up to `index` (at once if it has).
    pub(crate) async fn reached(&self, index: u64) {
        let mut rx = self.tx.subscribe();
        // The channel cannot close while `self` holds its sender.
        let _ = rx.wait_for(|a| a.is_some_and(|a| a >= index)).await;
    }

    /// The index last published.
    pub(crate) fn current(&self) -> Option<u64> {
        *self.tx.borrow()
    }
}

/// A read's answer and the applied index it was read at (all of it from one RocksDB
/// snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read<T> {
    pub index: u64,
    pub value: T,
}

/// Which keys a range read covers: `[from, to)` in byte order (`to: None`: to the end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub from: String,
    /// Bytes, not text: the end of a prefix need not be UTF-8.
    pub to: Option<Vec<u8>>,
    /// Start after this key (the `next` of the page before).
    pub after: Option<String>,
    /// At most this many keys (1 to [`MAX_RANGE_LIMIT`]).
    pub limit: usize,
    /// Leave values out (empty strings).
    pub keys_only: bool,
}

impl Range {
    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: &str) -> Range {
        Range {
            from: prefix.to_string(),
            to: Some(kv::prefix_end(prefix.as_bytes())),
            after: None,
            limit: 1000,
            keys_only: false,
        }
    }
}

/// One page of a range read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub kvs: Vec<KeyValue>,
    /// More keys follow: read on with `after` = the last key of this page.
    pub more: bool,
}

/// Read access to the applied state, shared by the HTTP read path.
#[derive(Clone)]
pub struct StateReader {
    /// The group's column families.
    ks: Keyspace,
    /// What has been applied, for reads that wait for an index (`min_index`).
    pub(crate) applied: AppliedIndex,
    install: InstallLock,
    /// Bumped whenever the catalogue may have changed (only the default group has one).
    catalogue: catalogue::Changes,
    /// Hands each apply batch's changes to this group's watchers (`watch.rs`).
    pub(crate) hub: Arc<Hub>,
    /// Every lease in the applied state, by id: what the leader counts down (`lease.rs`).
    /// Kept in memory on every node (bounded by `lease::MAX_LEASES`) so a new leader
    /// starts its countdowns at once.
    pub(crate) leases: Arc<Mutex<std::collections::BTreeMap<u64, LeaseInfo>>>,
}

impl StateReader {
    /// Writes a point-in-time image of the applied state (never a half-installed one) into
    /// a private directory under `dir`, and hands it out open and unlinked.
    pub(crate) async fn backup(&self, dir: PathBuf) -> io::Result<Backup> {
        let guard = self.install.clone().read_owned().await;
        let ks = self.ks.clone();
        tokio::task::spawn_blocking(move || {
            let snap = ks.db().snapshot();
            drop(guard);
            std::fs::create_dir_all(&dir)?;
            let tmp = tempfile::tempdir_in(&dir)?;
            let (meta, path, records) = snapshot::build(&ks, &snap, tmp.path())?;
            // Client keys only: the catalogue and the change history travel along but are
            // never restored.
            let keys = records - internal_count(&ks, &snap)?;
            let applied = meta.last_log_id.map(|l| l.index).unwrap_or(0);
            backup::handed_out(&path, applied, keys)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// `key` with its metadata in the locally applied state, and the index it was read at.
    /// Refused (not delayed) while a snapshot install is replacing the state: that can
    /// take long, and the half-installed state must never be read.
    pub async fn get(&self, key: &str) -> crate::Result<Read<Option<KeyValue>>> {
        let Ok(_guard) = self.install.try_read() else {
            return Err(installing());
        };
        let db = self.ks.db();
        let snap = db.snapshot();
        let index = self.index_in(&snap)?;
        let cf = self.ks.cf(Family::Data);
        let value = match snap.get_pinned_cf(&cf, key.as_bytes())? {
            None => None,
            Some(v) => Some(
                kv::key_value(key.as_bytes(), &v, true)
                    .map_err(|e| crate::Error::io(format!("reading key {key:?}"), e))?,
            ),
        };
        Ok(Read { index, value })
    }

    /// One page of the keys in `range`, in byte order, all from one snapshot.
    pub async fn range(&self, range: &Range) -> crate::Result<Read<Page>> {
        let Ok(_guard) = self.install.try_read() else {
            return Err(installing());
        };
        let limit = range.limit.clamp(1, MAX_RANGE_LIMIT);
        let mut start = range.from.as_bytes().to_vec();
        if let Some(after) = &range.after {
            let mut next = after.as_bytes().to_vec();
            next.push(0);
            start = start.max(next);
        }
        let end = match &range.to {
            Some(to) if to.as_slice() < DATA_END => to.clone(),
            _ => DATA_END.to_vec(),
        };
        let db = self.ks.db();
        let snap = db.snapshot();
        let index = self.index_in(&snap)?;
        let mut page = Page {
            kvs: Vec::new(),
            more: false,
        };
        if start >= end {
            return Ok(Read { index, value: page });
        }
        let cf = self.ks.cf(Family::Data);
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(end);
        let mut it = snap.raw_iterator_cf_opt(&cf, opts);
        it.seek(&start);
        let mut bytes = 0;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if page.kvs.len() == limit || (bytes > 0 && bytes + k.len() + v.len() > MAX_PAGE_BYTES)
            {
                page.more = true;
                break;
            }
            bytes += k.len() + if range.keys_only { 0 } else { v.len() };
            let kv = kv::key_value(k, v, !range.keys_only)
                .map_err(|e| crate::Error::io("reading a range", e))?;
            page.kvs.push(kv);
            it.next();
        }
        it.status()?;
        Ok(Read { index, value: page })
    }

    /// The applied index as `snap` sees it.
    fn index_in(&self, snap: &db::DbSnapshot<'_>) -> crate::Result<u64> {
        let cf = self.ks.cf(Family::SmMeta);
        let (last, _) = snapshot::read_applied(|k| snap.get_cf(&cf, k))
            .map_err(|e| crate::Error::io("reading the applied index", e))?;
        Ok(last.map(|l| l.index).unwrap_or(0))
    }

    /// The index this node has applied, as last published.
    pub fn applied_index(&self) -> u64 {
        self.applied.current().unwrap_or(0)
    }
}

/// How many records of `snap` are not client keys (the catalogue, the change history).
fn internal_count(ks: &Keyspace, snap: &db::DbSnapshot<'_>) -> io::Result<u64> {
    let cf = ks.cf(Family::Data);
    let mode = rocksdb::IteratorMode::From(DATA_END, rocksdb::Direction::Forward);
    let mut n = 0;
    for item in snap.iterator_cf(&cf, mode) {
        item.map_err(io::Error::other)?;
        n += 1;
    }
    Ok(n)
}

impl StateReader {
    /// Up to `limit` keys attached to lease `id`, from one snapshot; and whether more follow.
    pub(crate) async fn lease_keys(
        &self,
        id: u64,
        limit: usize,
    ) -> crate::Result<(Vec<String>, bool)> {
        let Ok(_guard) = self.install.try_read() else {
            return Err(installing());
        };
        let snap = self.ks.db().snapshot();
        let cf = self.ks.cf(Family::Data);
        kv::lease_keys(&snap, &cf, id, limit)
            .map_err(|e| crate::Error::io(format!("reading the keys of lease {id}"), e))
    }
}

impl changes::HistorySource for StateReader {
    /// Waits out a snapshot install (a watch may wait; a read may not).
    async fn page(&self, after: u64, upto: u64) -> crate::Result<HistoryPage> {
        let _guard = self.install.read().await;
        let snap = self.ks.db().snapshot();
        let cf = self.ks.cf(Family::Data);
        changes::read_page(&snap, &cf, after, upto)
            .map_err(|e| crate::Error::io("reading the change history", e))
    }
}

impl StateReader {
    /// Watches `spec` from `from` (see [`changes::Watch::start`]).
    pub(crate) async fn watch(
        &self,
        spec: changes::WatchSpec,
        from: Option<u64>,
    ) -> crate::Result<Result<Option<changes::Watch>, u64>> {
        changes::Watch::start(&self.hub, self.clone(), spec, from).await
    }
}

fn installing() -> crate::Error {
    crate::Error::Unavailable("a snapshot from the leader is being installed; retry shortly".into())
}

impl StateReader {
    /// The catalogue in the applied state (meaningful in the default group only).
    /// Refused while a snapshot install replaces the state (the catalogue is cleared
    /// first and written last then: found by review, a reconciler that read it mid-install
    /// saw every group gone).
    pub(crate) fn catalogue(
        &self,
    ) -> crate::Result<std::collections::BTreeMap<String, crate::types::GroupEntry>> {
        let Ok(_guard) = self.install.try_read() else {
            return Err(crate::Error::Unavailable(
                "a snapshot from the leader is being installed; retry shortly".into(),
            ));
        };
        catalogue::read(&self.ks).map_err(|e| crate::Error::io("reading the group catalogue", e))
    }

    /// Changes as soon as the applied catalogue may have changed.
    pub(crate) fn catalogue_changes(&self) -> watch::Receiver<u64> {
        self.catalogue.subscribe()
    }

    /// The membership in the applied state (committed, since only committed entries are
    /// applied) and the log index it comes from.
    pub(crate) fn membership(&self) -> io::Result<(u64, StoredMembership)> {
        let cf = self.ks.cf(Family::SmMeta);
        let (_, m) = snapshot::read_applied(|k| self.ks.db().get_cf(&cf, k))?;
        Ok((m.log_id().map(|l| l.index).unwrap_or(0), m))
    }
}

/// The state machine handle openraft owns.
pub struct StateMachine {
    /// The group's column families.
    ks: Keyspace,
    reader: StateReader,
    snapshot_dir: PathBuf,
    files: FilesLock,
    /// The file the current snapshot transfer is being received into.
    receiving: Arc<Mutex<Option<PathBuf>>>,
    /// Where the applied index is published, shared with the log store.
    applied: AppliedIndex,
    /// The change history's bound and state, appended to by every apply.
    history: History,
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

fn snap_err(meta: Option<&SnapshotMeta>, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(meta.map(|m| m.signature()), &e).into()
}

impl StateMachine {
    /// Opens the state machine, finishing any snapshot install a crash interrupted, and
    /// publishes its applied index on `applied`.
    pub(crate) fn open(
        ks: Keyspace,
        snapshot_dir: PathBuf,
        applied: AppliedIndex,
        history_limit: u64,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(&snapshot_dir)?;
        let mut sm = StateMachine {
            reader: StateReader {
                ks: ks.clone(),
                applied: applied.clone(),
                install: Arc::new(tokio::sync::RwLock::new(())),
                catalogue: catalogue::Changes::default(),
                hub: Arc::default(),
                leases: Arc::default(),
            },
            ks,
            snapshot_dir,
            files: Arc::new(Mutex::new(())),
            receiving: Arc::new(Mutex::new(None)),
            applied,
            history: History::new(history_limit, Default::default()),
        };
        let cf = sm.ks.cf(Family::SmMeta);
        if let Some(name) = sm
            .ks
            .db()
            .get_cf(&cf, KEY_INSTALLING)
            .map_err(io::Error::other)?
        {
            let name = String::from_utf8_lossy(&name).into_owned();
            let id = name
                .strip_suffix(&format!(".{}", snapshot::SUFFIX))
                .unwrap_or("");
            snapshot::check_id(id)?;
            let path = sm.snapshot_dir.join(&name);
            if path.exists() {
                log::warn!(
                    "finishing interrupted snapshot install from {}",
                    path.display()
                );
                install_file(&sm.ks, &path)?;
            } else {
                // The crash came before the snapshot was published: nothing was changed.
                log::warn!("dropping the install of {name}, which never started");
                sm.ks
                    .db()
                    .delete_cf_opt(&cf, KEY_INSTALLING, &db::sync_write())
                    .map_err(io::Error::other)?;
            }
        }
        snapshot::retain_newest(&sm.snapshot_dir, true)?;
        let (last, _) = snapshot::read_applied(|k| sm.ks.db().get_cf(&cf, k))?;
        if sm
            .ks
            .db()
            .get_cf(&cf, KEY_FORMAT)
            .map_err(io::Error::other)?
            .is_none()
        {
            convert_legacy(&sm.ks, last.map(|l| l.index).unwrap_or(0))?;
        }
        drop(cf);
        let index = last.map(|l| l.index).unwrap_or(0);
        sm.history.state = open_history(&sm.ks, index)?;
        sm.reader.hub = Arc::new(Hub::new(index));
        sm.reload_leases()?;
        sm.applied.publish(last.map(|l| l.index));
        Ok(sm)
    }

    pub fn reader(&self) -> StateReader {
        self.reader.clone()
    }

    /// Fills the lease table from RocksDB (at open, and after a snapshot install).
    fn reload_leases(&self) -> io::Result<()> {
        let data = self.ks.cf(Family::Data);
        let all = kv::read_leases(self.ks.db(), &data)?;
        *self.reader.leases.lock().unwrap_or_else(|e| e.into_inner()) = all;
        Ok(())
    }
}

/// Gives every value of a data directory written before values had metadata its
/// metadata (version 1, created at `index`, the applied index), in bounded batches, then
/// records that the data is converted. Idempotent: converted values are recognised, so a
/// crash midway is finished at the next start.
fn convert_legacy(ks: &Keyspace, index: u64) -> io::Result<()> {
    let db = ks.db();
    let (data, meta_cf) = (ks.cf(Family::Data), ks.cf(Family::SmMeta));
    let mut batch = WriteBatch::default();
    let mut converted = 0u64;
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(DATA_END.to_vec());
    for item in db.iterator_cf_opt(&data, opts, rocksdb::IteratorMode::Start) {
        let (k, v) = item.map_err(io::Error::other)?;
        if kv::is_legacy(&v) {
            batch.put_cf(&data, &k, kv::legacy(&v, index));
            converted += 1;
        }
        if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
            db.write(std::mem::take(&mut batch))
                .map_err(io::Error::other)?;
        }
    }
    batch.put_cf(&meta_cf, KEY_FORMAT, FORMAT_META);
    db.write_opt(batch, &db::sync_write())
        .map_err(io::Error::other)?;
    if converted > 0 {
        log::warn!(
            "group {}: gave {converted} values written by an earlier version their metadata (version 1, index {index})",
            ks.group_id()
        );
    }
    Ok(())
}

/// The change history's state; a data directory from before watches gets one that starts
/// at its applied index.
fn open_history(ks: &Keyspace, index: u64) -> io::Result<changes::HistoryState> {
    let data = ks.cf(Family::Data);
    if let Some(s) = changes::read_state(|k| ks.db().get_cf(&data, k))? {
        return Ok(s);
    }
    let s = changes::HistoryState {
        start: index,
        ..Default::default()
    };
    ks.db()
        .put_cf_opt(
            &data,
            changes::STATE_KEY,
            changes::encode_state(&s)?,
            &db::sync_write(),
        )
        .map_err(io::Error::other)?;
    Ok(s)
}

/// Replaces the whole state with the contents of a snapshot file. Blocking.
///
/// The first batch records an "installing" marker and clears the data; records follow in
/// bounded batches; the last batch sets `last_applied` and membership and drops the marker,
/// fsynced. A crash in between leaves the marker, and [`StateMachine::open`] re-runs this.
fn install_file(ks: &Keyspace, path: &Path) -> io::Result<SnapshotMeta> {
    // Check the whole file before the first destructive write.
    snapshot::verify(path)?;
    let mut r = snapshot::Reader::open(path)?;
    let db = ks.db();
    let (data, meta_cf) = (ks.cf(Family::Data), ks.cf(Family::SmMeta));
    let (data, meta_cf) = (&data, &meta_cf);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut batch = WriteBatch::default();
    batch.put_cf(meta_cf, KEY_INSTALLING, name.as_bytes());
    // Client keys, the catalogue and the change history: everything in the family.
    batch.delete_range_cf(data, DATA_START, ALL_END);
    db.write_opt(batch, &db::sync_write())
        .map_err(io::Error::other)?;
    let mut batch = WriteBatch::default();
    let mut has_history = false;
    while let Some((k, v)) = r.next_record()? {
        has_history |= k == changes::STATE_KEY;
        batch.put_cf(data, k, v);
        if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
            db.write(std::mem::take(&mut batch))
                .map_err(io::Error::other)?;
        }
    }
    let meta = r.meta;
    if !has_history {
        // From before watches: the history starts at the snapshot.
        let s = changes::HistoryState {
            start: meta.last_log_id.map(|l| l.index).unwrap_or(0),
            ..Default::default()
        };
        batch.put_cf(data, changes::STATE_KEY, changes::encode_state(&s)?);
    }
    batch.put_cf(meta_cf, KEY_LAST_APPLIED, encode(&meta.last_log_id)?);
    batch.put_cf(meta_cf, KEY_MEMBERSHIP, encode(&meta.last_membership)?);
    batch.delete_cf(meta_cf, KEY_INSTALLING);
    db.write_opt(batch, &db::sync_write())
        .map_err(io::Error::other)?;
    Ok(meta)
}

/// A crash injected for tests: when `HRAFTD_TEST_FAILPOINT` names this point, the
/// process aborts here, as a power cut would stop it.
fn failpoint(name: &str) {
    if std::env::var("HRAFTD_TEST_FAILPOINT").is_ok_and(|v| v == name) {
        log::error!("test fail point {name}: aborting");
        std::process::abort();
    }
}

/// Whether `file` is the file at `path` (same device and inode).
async fn same_file(file: &tokio::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata().await, tokio::fs::metadata(path).await) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Copies all of `file`, from its start, into a new file at `path`.
async fn copy_to(file: &mut tokio::fs::File, path: &Path) -> io::Result<()> {
    use tokio::io::AsyncSeekExt;
    file.seek(io::SeekFrom::Start(0)).await?;
    let mut out = tokio::fs::File::create(path).await?;
    tokio::io::copy(file, &mut out).await?;
    out.sync_all().await
}

/// Applies `cmd`, the entry at `index`: client operations through `applier`, catalogue
/// changes straight into `batch`. Returns each client operation's outcome, and whether
/// the catalogue changed.
fn apply_command(
    applier: &mut kv::Applier<'_>,
    batch: &mut WriteBatch,
    data: &impl rocksdb::AsColumnFamilyRef,
    cmd: Command,
    index: u64,
) -> io::Result<(Vec<crate::types::Outcome>, bool)> {
    if let Command::Catalogue { group, entry } = cmd {
        match entry {
            Some(e) => batch.put_cf(data, catalogue::key(&group), catalogue::encode_entry(&e)?),
            None => batch.delete_cf(data, catalogue::key(&group)),
        }
        return Ok((Vec::new(), true));
    }
    let ops = cmd.into_ops();
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        out.push(applier.apply(op, index)?);
    }
    Ok((out, false))
}

/// Builds snapshots; a separate handle so openraft can build while applying continues.
pub struct SnapshotBuilder {
    /// The group's column families.
    ks: Keyspace,
    snapshot_dir: PathBuf,
    install: InstallLock,
    files: FilesLock,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let ks = self.ks.clone();
        let dir = self.snapshot_dir.clone();
        let (install, files) = (self.install.clone(), self.files.clone());
        let (meta, file) = tokio::task::spawn_blocking(move || {
            // Never image a half-installed state.
            let snap = {
                let _guard = install.blocking_read();
                ks.db().snapshot()
            };
            let (meta, tmp, _) = snapshot::build(&ks, &snap, &dir)?;
            drop(snap);
            let _files = lock_files(&files);
            let path = snapshot::publish(&tmp, &dir, &meta)?;
            // Opened before pruning: even if a newer snapshot was installed meanwhile and
            // this one is deleted, the open file stays readable.
            let file = std::fs::File::open(&path)?;
            snapshot::retain_newest(&dir, false)?;
            Ok::<_, io::Error>((meta, file))
        })
        .await
        .map_err(|e| snap_err(None, io::Error::other(e)))?
        .map_err(|e| snap_err(None, e))?;
        log::info!(
            "built snapshot {} at {:?}",
            meta.snapshot_id,
            meta.last_log_id
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let cf = self.ks.cf(Family::SmMeta);
        snapshot::read_applied(|k| self.ks.db().get_cf(&cf, k))
            .map_err(|e| StorageIOError::read_state_machine(&e).into())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let (data, meta) = (self.ks.cf(Family::Data), self.ks.cf(Family::SmMeta));
        let (data, meta) = (&data, &meta);
        let mut batch = WriteBatch::default();
        let mut applier = kv::Applier::new(self.ks.db(), data);
        let mut out = Vec::new();
        let mut last = None;
        let mut catalogue_changed = false;
        for entry in entries {
            last = Some(entry.log_id);
            let mut outcomes = Vec::new();
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(cmd) => {
                    let (o, cat) =
                        apply_command(&mut applier, &mut batch, data, cmd, entry.log_id.index)
                            .map_err(sm_err)?;
                    outcomes = o;
                    catalogue_changed |= cat;
                    applier.end_entry();
                }
                EntryPayload::Membership(m) => {
                    let sm = StoredMembership::new(Some(entry.log_id), m);
                    batch.put_cf(meta, KEY_MEMBERSHIP, encode(&sm).map_err(sm_err)?);
                }
            }
            out.push(Applied(outcomes));
        }
        let (changes, leases) = applier.finish(&mut batch).map_err(sm_err)?;
        self.history
            .append(self.ks.db(), data, &mut batch, &changes)
            .map_err(sm_err)?;
        if let Some(last) = last {
            batch.put_cf(meta, KEY_LAST_APPLIED, encode(&Some(last)).map_err(sm_err)?);
            // Not fsynced on its own: the log entries are, and the shared WAL recovers a
            // prefix, so a crash can only roll `last_applied` back to entries still in the
            // log (see db.rs).
            self.ks.db().write(batch).map_err(sm_err)?;
            self.applied.publish(Some(last.index));
            self.reader.hub.publish(last.index, changes);
            if !leases.is_empty() {
                let mut table = self.reader.leases.lock().unwrap_or_else(|e| e.into_inner());
                for (id, l) in leases {
                    match l {
                        Some(info) => table.insert(id, info),
                        None => table.remove(&id),
                    };
                }
            }
            if catalogue_changed {
                self.reader.catalogue.bump();
            }
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            ks: self.ks.clone(),
            snapshot_dir: self.snapshot_dir.clone(),
            install: self.reader.install.clone(),
            files: self.files.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let path = self.snapshot_dir.join(format!("{n}.incoming"));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| snap_err(None, e))?;
        let old = self
            .receiving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(path);
        if let Some(old) = old {
            let _ = tokio::fs::remove_file(old).await;
        }
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        snapshot::check_id(&meta.snapshot_id).map_err(|e| snap_err(Some(meta), e))?;
        // Normally `snapshot` is the file `begin_receiving_snapshot` created; then it is
        // renamed into place. Any other handle (openraft only promises *a* SnapshotData) is
        // copied into a new file first.
        let receiving = self
            .receiving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let mut file = *snapshot;
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(|e| snap_err(Some(meta), e))?;
        let incoming = match receiving {
            Some(path) if same_file(&file, &path).await => path,
            other => {
                if let Some(stale) = other {
                    let _ = tokio::fs::remove_file(stale).await;
                }
                let path = self
                    .snapshot_dir
                    .join(format!("{}.incoming", meta.snapshot_id));
                copy_to(&mut file, &path)
                    .await
                    .map_err(|e| snap_err(Some(meta), e))?;
                path
            }
        };
        file.sync_all().await.map_err(|e| snap_err(Some(meta), e))?;
        drop(file);
        let incoming_file = tokio::fs::File::open(&incoming)
            .await
            .map_err(|e| snap_err(Some(meta), e))?;
        incoming_file
            .sync_all()
            .await
            .map_err(|e| snap_err(Some(meta), e))?;
        drop(incoming_file);

        let ks = self.ks.clone();
        let dir = self.snapshot_dir.clone();
        let (install, files) = (self.reader.install.clone(), self.files.clone());
        let want = meta.clone();
        tokio::task::spawn_blocking(move || {
            let (got, _) = snapshot::verify(&incoming)?;
            if got.snapshot_id != want.snapshot_id || got.last_log_id != want.last_log_id {
                return Err(io::Error::other(format!(
                    "received snapshot {} does not match {}",
                    got.snapshot_id, want.snapshot_id
                )));
            }
            // The "installing" marker goes down before the file is published: a snapshot
            // in `snapshots/` is what openraft is told it has, so a crash must never leave
            // one there that is ahead of the applied state without the marker that
            // finishes its install at start-up (`StateMachine::open`).
            let final_path = snapshot::final_path(&dir, &want);
            let name = final_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let meta_cf = ks.cf(Family::SmMeta);
            ks.db()
                .put_cf_opt(&meta_cf, KEY_INSTALLING, name.as_bytes(), &db::sync_write())
                .map_err(io::Error::other)?;
            drop(meta_cf);
            let path = {
                let _files = lock_files(&files);
                snapshot::publish(&incoming, &dir, &want)?
            };
            failpoint("after-snapshot-publish");
            {
                let _guard = install.blocking_write();
                install_file(&ks, &path)?;
            }
            let _files = lock_files(&files);
            snapshot::retain_newest(&dir, false)?;
            Ok(())
        })
        .await
        .map_err(|e| snap_err(Some(meta), io::Error::other(e)))?
        .map_err(|e| snap_err(Some(meta), e))?;
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        self.history.state = open_history(&self.ks, index).map_err(|e| snap_err(Some(meta), e))?;
        self.reload_leases().map_err(|e| snap_err(Some(meta), e))?;
        self.applied.publish(meta.last_log_id.map(|l| l.index));
        self.reader.hub.reset(index);
        self.reader.catalogue.bump();
        log::info!(
            "installed snapshot {} at {:?}",
            meta.snapshot_id,
            meta.last_log_id
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let dir = self.snapshot_dir.clone();
        let files = self.files.clone();
        let found = tokio::task::spawn_blocking(move || {
            let _files = lock_files(&files);
            match snapshot::retain_newest(&dir, false)? {
                None => Ok(None),
                Some((meta, path)) => Ok::<_, io::Error>(Some((meta, std::fs::File::open(path)?))),
            }
        })
        .await
        .map_err(|e| snap_err(None, io::Error::other(e)))?
        .map_err(|e| snap_err(None, e))?;
        Ok(found.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;
    use openraft::EntryPayload;

    use super::*;
    use crate::types::CmpOp;
    use crate::types::Compare;
    use crate::types::KeyMeta;
    use crate::types::Op;
    use crate::types::Outcome;
    use crate::types::Target;
    use crate::types::Txn;
    use crate::types::TxnOp;
    use crate::types::TxnResult;

    fn open(dir: &Path) -> (Arc<db::Db>, StateMachine) {
        let db = db::open(&dir.join("raft")).unwrap();
        let ks = Keyspace::default_group(&db);
        let sm = StateMachine::open(
            ks,
            dir.join("snapshots"),
            AppliedIndex::default(),
            changes::DEFAULT_HISTORY,
        )
        .unwrap();
        (db, sm)
    }

    fn entry(index: u64, op: Op) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
            payload: EntryPayload::Normal(Command::Batch(vec![op])),
        }
    }

    async fn apply(sm: &mut StateMachine, index: u64, op: Op) -> Outcome {
        let mut out = sm.apply([entry(index, op)]).await.unwrap();
        out.pop().unwrap().0.pop().unwrap()
    }

    fn set(k: &str, v: &str) -> Op {
        Op::Set {
            pairs: vec![(k.into(), v.into())],
        }
    }

    async fn meta(sm: &StateMachine, key: &str) -> Option<(String, KeyMeta)> {
        let r = sm.reader().get(key).await.unwrap();
        r.value.map(|kv| (kv.value, kv.meta))
    }

    const fn m(create_index: u64, mod_index: u64, version: u64) -> KeyMeta {
        KeyMeta {
            create_index,
            mod_index,
            version,
            lease: 0,
        }
    }

    #[tokio::test]
    async fn applying_keeps_versions_and_checks_compares_at_apply_time() {
        let td = tempfile::tempdir().unwrap();
        let (_db, mut sm) = open(td.path());
        assert_eq!(apply(&mut sm, 1, set("a", "1")).await, Outcome::Done);
        apply(&mut sm, 2, set("a", "2")).await;
        assert_eq!(meta(&sm, "a").await, Some(("2".into(), m(1, 2, 2))));
        let r = sm.reader().get("a").await.unwrap();
        assert_eq!(r.index, 2);

        // Compare-and-set: a stale expectation changes nothing and says what is there.
        let cas = |expect, value: Option<&str>| Op::Cas {
            key: "a".into(),
            value: value.map(str::to_string),
            expect,
        };
        match apply(&mut sm, 3, cas(1, Some("x"))).await {
            Outcome::CasFailed { current: Some(kv) } => assert_eq!(kv.meta, m(1, 2, 2)),
            other => panic!("{other:?}"),
        }
        assert_eq!(apply(&mut sm, 4, cas(2, Some("3"))).await, Outcome::Done);
        assert_eq!(meta(&sm, "a").await, Some(("3".into(), m(1, 4, 3))));
        assert_eq!(apply(&mut sm, 5, cas(4, None)).await, Outcome::Done);
        assert_eq!(meta(&sm, "a").await, None);
        assert_eq!(apply(&mut sm, 6, cas(0, Some("new"))).await, Outcome::Done);
        assert_eq!(meta(&sm, "a").await, Some(("new".into(), m(6, 6, 1))));

        // Several operations in one entry see each other (not yet in RocksDB).
        let entries = vec![Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), 7),
            payload: EntryPayload::Normal(Command::Batch(vec![
                set("p/1", "x"),
                set("p/2", "y"),
                Op::Cas {
                    key: "p/1".into(),
                    value: Some("z".into()),
                    expect: 7,
                },
                Op::DeletePrefix {
                    prefix: "p/".into(),
                },
                set("p/3", "w"),
            ])),
        }];
        let out = sm.apply(entries).await.unwrap();
        assert_eq!(
            out[0].0,
            vec![
                Outcome::Done,
                Outcome::Done,
                Outcome::Done,
                Outcome::Deleted { count: 2 },
                Outcome::Done
            ]
        );
        assert_eq!(meta(&sm, "p/1").await, None);
        assert_eq!(meta(&sm, "p/3").await, Some(("w".into(), m(7, 7, 1))));
        // A prefix delete counts what RocksDB holds as well.
        apply(&mut sm, 8, set("p/4", "v")).await;
        assert_eq!(
            apply(
                &mut sm,
                9,
                Op::DeletePrefix {
                    prefix: "p/".into()
                }
            )
            .await,
            Outcome::Deleted { count: 2 }
        );

        // A transaction: compares on what is there, then one branch.
        let txn = |version| {
            Op::Txn(Txn {
                compare: vec![
                    Compare {
                        key: "a".into(),
                        target: Target::Version(version),
                        op: CmpOp::Eq,
                    },
                    Compare {
                        key: "none".into(),
                        target: Target::Value("x".into()),
                        op: CmpOp::Ne,
                    },
                ],
                success: vec![TxnOp::Put {
                    key: "b".into(),
                    value: "1".into(),
                }],
                failure: vec![TxnOp::Get { key: "a".into() }],
            })
        };
        // A value compare on a missing key is false, even `!=`.
        match apply(&mut sm, 10, txn(1)).await {
            Outcome::Txn {
                succeeded: false,
                results,
            } => match &results[..] {
                [TxnResult::Get { key, kv: Some(kv) }] => {
                    assert_eq!((key.as_str(), kv.value.as_str()), ("a", "new"))
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        assert_eq!(meta(&sm, "b").await, None);
    }

    #[tokio::test]
    async fn a_data_directory_from_before_metadata_is_converted_once() {
        let td = tempfile::tempdir().unwrap();
        {
            // What an earlier version left: plain values, `last_applied` at 7, no marker.
            let db = db::open(&td.path().join("raft")).unwrap();
            let ks = Keyspace::default_group(&db);
            let mut b = WriteBatch::default();
            b.put_cf(&ks.cf(Family::Data), b"k", b"old");
            b.put_cf(&ks.cf(Family::Data), b"e", b"");
            let last = Some(LogId::new(CommittedLeaderId::new(1, 0), 7));
            b.put_cf(
                &ks.cf(Family::SmMeta),
                KEY_LAST_APPLIED,
                encode(&last).unwrap(),
            );
            db.write(b).unwrap();
        }
        let (db, mut sm) = open(td.path());
        assert_eq!(meta(&sm, "k").await, Some(("old".into(), m(7, 7, 1))));
        assert_eq!(meta(&sm, "e").await, Some(("".into(), m(7, 7, 1))));
        apply(&mut sm, 8, set("k", "new")).await;
        drop(sm);
        drop(db);
        // Opened again: nothing converted twice.
        let (_db, sm) = open(td.path());
        assert_eq!(meta(&sm, "k").await, Some(("new".into(), m(7, 8, 2))));
    }

    #[tokio::test]
    async fn ranges_page_by_key_from_one_snapshot() {
        let td = tempfile::tempdir().unwrap();
        let (_db, mut sm) = open(td.path());
        for (i, k) in ["a", "b/1", "b/2", "b/3", "c"].iter().enumerate() {
            apply(&mut sm, i as u64 + 1, set(k, "v")).await;
        }
        let mut r = Range::prefix("b/");
        r.limit = 2;
        let p = sm.reader().range(&r).await.unwrap();
        let keys: Vec<_> = p.value.kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!((keys, p.value.more, p.index), (vec!["b/1", "b/2"], true, 5));
        r.after = Some("b/2".into());
        let p = sm.reader().range(&r).await.unwrap();
        let keys: Vec<_> = p.value.kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!((keys, p.value.more), (vec!["b/3"], false));
        // Everything, and the catalogue (past every UTF-8 key) is never listed.
        let mut all = Range::prefix("");
        all.keys_only = true;
        let p = sm.reader().range(&all).await.unwrap();
        assert_eq!(p.value.kvs.len(), 5);
        assert!(p.value.kvs.iter().all(|kv| kv.value.is_empty()));
    }
}
