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
use crate::snapshot;
use crate::snapshot::KEY_LAST_APPLIED;
use crate::snapshot::KEY_MEMBERSHIP;
use crate::types::encode;
use crate::types::Applied;
use crate::types::Command;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::Op;
use crate::types::SnapshotFile;
use crate::types::SnapshotMeta;
use crate::types::StorageError;
use crate::types::StoredMembership;
use crate::types::TypeConfig;

/// Names the snapshot file whose installation had begun; present only while installing,
/// so a crash mid-install is finished at the next start.
const KEY_INSTALLING: &[u8] = b"installing";
/// Every valid UTF-8 key sorts below this byte, so `[b"", DATA_END)` covers all data.
const DATA_END: &[u8] = b"\xff";
const DATA_START: &[u8] = b"";
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
}

/// Read access to the applied state, shared by the HTTP read path.
#[derive(Clone)]
pub struct StateReader {
    /// The group's column families.
    ks: Keyspace,
    install: InstallLock,
    /// Bumped whenever the catalogue may have changed (only the default group has one).
    catalogue: catalogue::Changes,
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
            // Client keys only: the catalogue's entries travel along but are never restored.
            let keys = records - catalogue::count_in(&ks, &snap)?;
            let applied = meta.last_log_id.map(|l| l.index).unwrap_or(0);
            backup::handed_out(&path, applied, keys)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// The value of `key` in the locally applied state. Refused (not delayed) while a
    /// snapshot install is replacing the state: that can take long, and the half-installed
    /// state must never be read.
    pub async fn get(&self, key: &str) -> crate::Result<Option<String>> {
        let Ok(_guard) = self.install.try_read() else {
            return Err(crate::Error::Unavailable(
                "a snapshot from the leader is being installed; retry shortly".into(),
            ));
        };
        let cf = self.ks.cf(Family::Data);
        match self.ks.db().get_pinned_cf(&cf, key.as_bytes())? {
            None => Ok(None),
            Some(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
        }
    }
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
    ) -> io::Result<Self> {
        std::fs::create_dir_all(&snapshot_dir)?;
        let sm = StateMachine {
            reader: StateReader {
                ks: ks.clone(),
                install: Arc::new(tokio::sync::RwLock::new(())),
                catalogue: catalogue::Changes::default(),
            },
            ks,
            snapshot_dir,
            files: Arc::new(Mutex::new(())),
            receiving: Arc::new(Mutex::new(None)),
            applied,
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
        drop(cf);
        sm.applied.publish(last.map(|l| l.index));
        Ok(sm)
    }

    pub fn reader(&self) -> StateReader {
        self.reader.clone()
    }
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
    batch.delete_range_cf(data, DATA_START, DATA_END);
    batch.delete_range_cf(data, catalogue::RANGE.0, catalogue::RANGE.1);
    db.write_opt(batch, &db::sync_write())
        .map_err(io::Error::other)?;
    let mut batch = WriteBatch::default();
    while let Some((k, v)) = r.next_record()? {
        batch.put_cf(data, k, v);
        if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
            db.write(std::mem::take(&mut batch))
                .map_err(io::Error::other)?;
        }
    }
    let meta = r.meta;
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

/// Adds the effect of `cmd` to `batch`; says whether it touched the catalogue.
fn apply_command(
    batch: &mut WriteBatch,
    data: &impl rocksdb::AsColumnFamilyRef,
    cmd: Command,
) -> io::Result<bool> {
    if let Command::Catalogue { group, entry } = cmd {
        match entry {
            Some(e) => batch.put_cf(data, catalogue::key(&group), catalogue::encode_entry(&e)?),
            None => batch.delete_cf(data, catalogue::key(&group)),
        }
        return Ok(true);
    }
    for op in cmd.into_ops() {
        match op {
            Op::Set { pairs } => {
                for (k, v) in pairs {
                    batch.put_cf(data, k.as_bytes(), v.as_bytes());
                }
            }
            Op::Delete { key } => batch.delete_cf(data, key.as_bytes()),
        }
    }
    Ok(false)
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
        let mut out = Vec::new();
        let mut last = None;
        let mut catalogue_changed = false;
        for entry in entries {
            last = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(cmd) => {
                    catalogue_changed |= apply_command(&mut batch, data, cmd).map_err(sm_err)?
                }
                EntryPayload::Membership(m) => {
                    let sm = StoredMembership::new(Some(entry.log_id), m);
                    batch.put_cf(meta, KEY_MEMBERSHIP, encode(&sm).map_err(sm_err)?);
                }
            }
            out.push(Applied);
        }
        if let Some(last) = last {
            batch.put_cf(meta, KEY_LAST_APPLIED, encode(&Some(last)).map_err(sm_err)?);
            // Not fsynced on its own: the log entries are, and the shared WAL recovers a
            // prefix, so a crash can only roll `last_applied` back to entries still in the
            // log (see db.rs).
            self.ks.db().write(batch).map_err(sm_err)?;
            self.applied.publish(Some(last.index));
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
        self.applied.publish(meta.last_log_id.map(|l| l.index));
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
