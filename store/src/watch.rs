//! Watches: every change to the keys a client names, in index order, from any index still
//! in the change history.
//!
//! Two parts, both per group:
//!
//! - The **change history** (`History`): each change the state machine applies (one per
//!   key per log entry: a put with its new value and metadata, or a delete) is also written
//!   as a record in the group's `data` family, in the same batch as the change itself, under
//!   keys past every client key (`0xFF h / index / seq`). So it is as durable as the data,
//!   travels in snapshots (a node that installs one gets the leader's history), and is the
//!   same on every node. It is bounded: past `limit` changes (or [`MAX_HISTORY_BYTES`]) the
//!   oldest whole entries are dropped, and `start` says from which index on it is complete.
//! - The **hub** (`Hub`): live delivery. After each apply batch is written, the state
//!   machine hands the batch's changes to the hub, which looks up the watchers whose key or
//!   prefix they touch (a hash lookup per change, not a scan of the watchers) and queues
//!   the batch for each of them. Queues are bounded in messages and bytes: a watcher that
//!   does not keep up is dropped and told so ([`WatchEnd::Slow`]), never allowed to grow
//!   memory. Idle watchers cost nothing per write.
//!
//! A [`Watch`] registers with the hub first, then reads the history from its `from` up to
//! the index at which it registered, then follows its queue; so it sees every change once,
//! in order, however it races with applies. A snapshot install skips entries: the hub then
//! tells every watcher to read the (installed) history again from where it is.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;

use rocksdb::WriteBatch;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::db::Db;
use crate::types::KeyMeta;

/// The first bytes of every history record's key; `0xFF` keeps them past client keys.
const RECORD_PREFIX: &[u8] = b"\xffh/";
/// Just past every record key.
const RECORD_END: &[u8] = b"\xffh0";
/// Where the history's [`HistoryState`] is kept (also in `data`, so snapshots carry it).
pub(crate) const STATE_KEY: &[u8] = b"\xffhstate";
/// The most bytes of records the history keeps, whatever its `limit` in changes.
pub const MAX_HISTORY_BYTES: u64 = 256 << 20;
/// The default `limit`: changes kept (`-watch-history`).
pub const DEFAULT_HISTORY: u64 = 100_000;
/// Messages a watcher's queue holds before it counts as slow.
const QUEUE_MESSAGES: usize = 256;
/// Bytes of changes a watcher may have queued before it counts as slow.
const QUEUE_BYTES: usize = 32 << 20;
/// How many records one catch-up read takes at most (whole entries, so it may take more).
const CATCH_UP_RECORDS: usize = 512;

/// One change to one key at one log index, as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub key: String,
    /// The new value; `None` for a delete.
    pub value: Option<String>,
    /// The key's metadata after a put; after a delete, `mod_index` is the delete's index and
    /// the rest 0.
    pub meta: KeyMeta,
}

impl Change {
    /// The log index of the change.
    pub fn index(&self) -> u64 {
        self.meta.mod_index
    }

    fn bytes(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, String::len) + 32
    }
}

/// Which keys a watch follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchSpec {
    Key(String),
    /// Every key that starts with this (`""`: every key).
    Prefix(String),
}

impl WatchSpec {
    fn matches(&self, key: &str) -> bool {
        match self {
            WatchSpec::Key(k) => k == key,
            WatchSpec::Prefix(p) => key.starts_with(p.as_str()),
        }
    }
}

/// What the history holds: every change with index > `start`, `count` of them in
/// `bytes` bytes of records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HistoryState {
    pub(crate) start: u64,
    pub(crate) count: u64,
    pub(crate) bytes: u64,
}

fn record_key(index: u64, seq: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(RECORD_PREFIX.len() + 12);
    k.extend_from_slice(RECORD_PREFIX);
    k.extend_from_slice(&index.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn record_index(k: &[u8]) -> io::Result<u64> {
    k.strip_prefix(RECORD_PREFIX)
        .and_then(|r| r.get(..8))
        .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad history record key"))
}

/// Reads the history's state through `get`; `None` where there is none (a data directory
/// or snapshot from before watches).
pub(crate) fn read_state(
    get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error>,
) -> io::Result<Option<HistoryState>> {
    match get(STATE_KEY).map_err(io::Error::other)? {
        None => Ok(None),
        Some(b) => crate::types::decode(&b).map(Some),
    }
}

/// The encoded state, for a batch.
pub(crate) fn encode_state(s: &HistoryState) -> io::Result<Vec<u8>> {
    crate::types::encode(s)
}

/// The apply side of the history: appends each batch's changes and trims the oldest.
pub(crate) struct History {
    /// Changes to keep (`-watch-history`).
    limit: u64,
    /// As in RocksDB after the last write (reloaded after a snapshot install).
    pub(crate) state: HistoryState,
}

impl History {
    pub(crate) fn new(limit: u64, state: HistoryState) -> History {
        History {
            limit: limit.max(1),
            state,
        }
    }

    /// Adds `changes` (in index order) to `batch`, with the state, and drops the oldest
    /// entries from the history if it has grown past its bounds.
    pub(crate) fn append(
        &mut self,
        db: &Db,
        data: &impl rocksdb::AsColumnFamilyRef,
        batch: &mut WriteBatch,
        changes: &[Change],
    ) -> io::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut seq = 0u32;
        let mut last = None;
        for c in changes {
            if last != Some(c.index()) {
                seq = 0;
                last = Some(c.index());
            }
            let v = crate::types::encode(c)?;
            let k = record_key(c.index(), seq);
            self.state.count += 1;
            self.state.bytes += (k.len() + v.len()) as u64;
            batch.put_cf(data, k, v);
            seq += 1;
        }
        let slack = (self.limit / 16).max(1);
        if self.state.count > self.limit + slack || self.state.bytes > MAX_HISTORY_BYTES {
            self.trim(db, data, batch)?;
        }
        batch.put_cf(data, STATE_KEY, encode_state(&self.state)?);
        Ok(())
    }

    /// Drops whole entries, oldest first, until the history is within its bounds (only
    /// records already in RocksDB: those of this batch are newer than all of them).
    fn trim(
        &mut self,
        db: &Db,
        data: &impl rocksdb::AsColumnFamilyRef,
        batch: &mut WriteBatch,
    ) -> io::Result<()> {
        let byte_goal = MAX_HISTORY_BYTES / 16 * 15;
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(RECORD_END.to_vec());
        let mut it = db.raw_iterator_cf_opt(data, opts);
        it.seek(RECORD_PREFIX);
        let mut dropped: Option<u64> = None;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let index = record_index(k)?;
            let over = self.state.count > self.limit || self.state.bytes > byte_goal;
            if !over && dropped != Some(index) {
                break;
            }
            self.state.count -= 1;
            self.state.bytes = self.state.bytes.saturating_sub((k.len() + v.len()) as u64);
            dropped = Some(index);
            it.next();
        }
        it.status().map_err(io::Error::other)?;
        if let Some(index) = dropped {
            batch.delete_range_cf(data, RECORD_PREFIX.to_vec(), record_key(index + 1, 0));
            self.state.start = self.state.start.max(index);
        }
        Ok(())
    }
}

/// One page of the history read by a watch.
pub struct HistoryPage {
    /// The history's `start` when read: changes at or before it are gone.
    pub(crate) start: u64,
    pub(crate) changes: Vec<Change>,
    /// The page covers every change up to this index.
    pub(crate) through: u64,
}

/// Reads the changes with `after < index <= upto` from `snap`, about
/// [`CATCH_UP_RECORDS`] of them (always whole entries).
pub(crate) fn read_page(
    snap: &crate::db::DbSnapshot<'_>,
    data: &impl rocksdb::AsColumnFamilyRef,
    after: u64,
    upto: u64,
) -> io::Result<HistoryPage> {
    let state = read_state(|k| snap.get_cf(data, k))?.unwrap_or_default();
    let mut page = HistoryPage {
        start: state.start,
        changes: Vec::new(),
        through: upto,
    };
    if after >= upto {
        return Ok(page);
    }
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(record_key(upto.saturating_add(1), 0));
    let mut it = snap.raw_iterator_cf_opt(data, opts);
    it.seek(record_key(after + 1, 0));
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        let index = record_index(k)?;
        if page.changes.len() >= CATCH_UP_RECORDS
            && page.changes.last().map(Change::index) != Some(index)
        {
            page.through = index - 1;
            return Ok(page);
        }
        page.changes.push(crate::types::decode(v)?);
        it.next();
    }
    it.status().map_err(io::Error::other)?;
    Ok(page)
}

/// Why a watch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEnd {
    /// The history no longer holds the changes after where the watch is (it was trimmed,
    /// or a snapshot replaced it): re-read with a range and watch from its index.
    Compacted { oldest: u64 },
    /// The watcher did not take its changes fast enough and was dropped.
    Slow,
    /// The group stopped on this node (shutdown, or it moved away).
    Closed,
}

/// What the hub queues for a watcher.
enum Msg {
    /// Every change of one apply batch (the watcher picks its own).
    Changes(Arc<Vec<Change>>, usize),
    /// A snapshot was installed at this index: read the history again.
    Reset(u64),
}

/// Shared between the hub and one watcher: how full its queue is, and whether it was
/// dropped for being slow.
#[derive(Default)]
struct SlotState {
    queued_bytes: AtomicUsize,
    slow: AtomicBool,
}

struct Slot {
    spec: WatchSpec,
    tx: mpsc::Sender<Msg>,
    state: Arc<SlotState>,
}

#[derive(Default)]
struct HubInner {
    /// The index of the last batch handed over (every change up to it is in RocksDB).
    last: u64,
    next_id: u64,
    watchers: HashMap<u64, Slot>,
    /// Watchers of one key, by key.
    exact: HashMap<String, Vec<u64>>,
    /// Watchers of a prefix, by prefix, and how many prefixes there are of each length (so
    /// a change looks up only the lengths in use).
    prefixes: HashMap<String, Vec<u64>>,
    prefix_lens: BTreeMap<usize, usize>,
    /// The group stopped: no new watchers.
    closed: bool,
}

impl HubInner {
    fn remove(&mut self, id: u64) {
        let Some(slot) = self.watchers.remove(&id) else {
            return;
        };
        let (map, key) = match &slot.spec {
            WatchSpec::Key(k) => (&mut self.exact, k),
            WatchSpec::Prefix(p) => {
                if let Some(n) = self.prefix_lens.get_mut(&p.len()) {
                    *n -= 1;
                    if *n == 0 {
                        self.prefix_lens.remove(&p.len());
                    }
                }
                (&mut self.prefixes, p)
            }
        };
        if let Some(ids) = map.get_mut(key) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                map.remove(key);
            }
        }
    }

    /// Queues `msg` for watcher `id`; drops it (as slow) if its queue is full.
    fn send(&mut self, id: u64, msg: Msg, bytes: usize) {
        let Some(slot) = self.watchers.get(&id) else {
            return;
        };
        let queued = slot.state.queued_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let ok = queued <= QUEUE_BYTES && slot.tx.try_send(msg).is_ok();
        if !ok {
            slot.state
                .slow
                .store(!slot.tx.is_closed(), Ordering::Relaxed);
            self.remove(id);
        }
    }
}

/// Live delivery of a group's changes to its watchers (see the module docs).
#[derive(Default)]
pub(crate) struct Hub {
    inner: Mutex<HubInner>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn new(applied: u64) -> Hub {
        let hub = Hub::default();
        hub.lock().last = applied;
        hub
    }

    /// Hands over the changes of an apply batch that ended at index `last`, once it is in
    /// RocksDB.
    pub(crate) fn publish(&self, last: u64, changes: Vec<Change>) {
        let mut inner = self.lock();
        inner.last = last;
        if inner.watchers.is_empty() || changes.is_empty() {
            return;
        }
        let mut ids = Vec::new();
        for c in &changes {
            if let Some(w) = inner.exact.get(&c.key) {
                ids.extend_from_slice(w);
            }
            for len in inner.prefix_lens.keys() {
                if *len > c.key.len() {
                    break;
                }
                if let Some(w) = c.key.get(..*len).and_then(|p| inner.prefixes.get(p)) {
                    ids.extend_from_slice(w);
                }
            }
        }
        if ids.is_empty() {
            return;
        }
        ids.sort_unstable();
        ids.dedup();
        let bytes = changes.iter().map(Change::bytes).sum();
        let changes = Arc::new(changes);
        for id in ids {
            inner.send(id, Msg::Changes(changes.clone(), bytes), bytes);
        }
    }

    /// A snapshot was installed at `index`: every watcher reads the history again.
    pub(crate) fn reset(&self, index: u64) {
        let mut inner = self.lock();
        inner.last = index;
        let ids: Vec<u64> = inner.watchers.keys().copied().collect();
        for id in ids {
            inner.send(id, Msg::Reset(index), 0);
        }
    }

    /// The group stopped here: every watch ends ([`WatchEnd::Closed`]), none starts.
    pub(crate) fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.watchers.clear();
        inner.exact.clear();
        inner.prefixes.clear();
        inner.prefix_lens.clear();
    }

    /// How many watches are registered.
    #[cfg(test)]
    pub(crate) fn watchers(&self) -> usize {
        self.lock().watchers.len()
    }

    /// Registers a watcher; returns its id, queue and the index after which the queue
    /// starts (every change up to it is in RocksDB).
    fn register(
        &self,
        spec: &WatchSpec,
    ) -> Option<(u64, mpsc::Receiver<Msg>, Arc<SlotState>, u64)> {
        let mut inner = self.lock();
        if inner.closed {
            return None;
        }
        let (tx, rx) = mpsc::channel(QUEUE_MESSAGES);
        let state = Arc::new(SlotState::default());
        inner.next_id += 1;
        let id = inner.next_id;
        match spec {
            WatchSpec::Key(k) => inner.exact.entry(k.clone()).or_default().push(id),
            WatchSpec::Prefix(p) => {
                inner.prefixes.entry(p.clone()).or_default().push(id);
                *inner.prefix_lens.entry(p.len()).or_default() += 1;
            }
        }
        inner.watchers.insert(
            id,
            Slot {
                spec: spec.clone(),
                tx,
                state: state.clone(),
            },
        );
        Some((id, rx, state, inner.last))
    }
}

/// Reads pages of a group's history (the state machine's reader implements it; the
/// tests, an in-memory one).
pub trait HistorySource: Send + Sync {
    fn page(
        &self,
        after: u64,
        upto: u64,
    ) -> impl std::future::Future<Output = crate::Result<HistoryPage>> + Send;
}

/// One client's watch: changes to its keys after `from`, one entry at a time.
pub struct Watch<H: HistorySource = crate::state_machine::StateReader> {
    id: u64,
    hub: Arc<Hub>,
    rx: mpsc::Receiver<Msg>,
    slot: Arc<SlotState>,
    spec: WatchSpec,
    history: H,
    /// Every change up to here has been handed out (or was before `from`).
    position: u64,
    /// The history must be read up to here before the queue is.
    catch_up: Option<u64>,
    /// Entries read but not handed out yet: (index, its changes to watched keys).
    ready: VecDeque<(u64, Vec<Change>)>,
    start: u64,
}

impl<H: HistorySource> Watch<H> {
    /// Starts a watch of `spec` after index `from` (`None`: after the last applied index).
    /// `Err(oldest)` when the history no longer goes back to `from`; `Ok(None)` when the
    /// group is stopping.
    pub(crate) async fn start(
        hub: &Arc<Hub>,
        history: H,
        spec: WatchSpec,
        from: Option<u64>,
    ) -> crate::Result<Result<Option<Watch<H>>, u64>> {
        let Some((id, rx, slot, registered)) = hub.register(&spec) else {
            return Ok(Ok(None));
        };
        let mut w = Watch {
            id,
            hub: hub.clone(),
            rx,
            slot,
            spec,
            history,
            position: from.unwrap_or(registered),
            catch_up: None,
            ready: VecDeque::new(),
            start: from.unwrap_or(registered),
        };
        if w.position < registered {
            // Check now, so the client gets a clear refusal rather than a stream that ends.
            let page = w.history.page(w.position, w.position).await?;
            if page.start > w.position {
                return Ok(Err(page.start));
            }
            w.catch_up = Some(registered);
        }
        Ok(Ok(Some(w)))
    }

    /// The index the watch started after: changes with larger indexes follow.
    pub fn start_index(&self) -> u64 {
        self.start
    }

    /// The changes to watched keys of the next entry that has any, and its index.
    pub async fn next(&mut self) -> Result<(u64, Vec<Change>), WatchEnd> {
        loop {
            if self.slot.slow.load(Ordering::Relaxed) {
                // Dropped for being slow: what it has queued is freed now, not delivered.
                self.ready.clear();
                self.rx.close();
                while self.rx.try_recv().is_ok() {}
                return Err(WatchEnd::Slow);
            }
            if let Some((index, changes)) = self.ready.pop_front() {
                self.position = index;
                return Ok((index, changes));
            }
            if let Some(upto) = self.catch_up {
                let page = self
                    .history
                    .page(self.position, upto)
                    .await
                    .map_err(|_| WatchEnd::Closed)?;
                if page.start > self.position {
                    return Err(WatchEnd::Compacted { oldest: page.start });
                }
                self.take(page.changes.iter());
                if page.through >= upto {
                    self.catch_up = None;
                }
                if self.ready.is_empty() {
                    // Nothing of ours in the page: move on past it.
                    self.position = self.position.max(page.through.min(upto));
                }
                continue;
            }
            match self.rx.recv().await {
                Some(Msg::Changes(changes, bytes)) => {
                    self.slot.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                    self.take(changes.iter());
                }
                Some(Msg::Reset(index)) => {
                    if index > self.position {
                        self.catch_up = Some(index);
                    }
                }
                None if self.slot.slow.load(Ordering::Relaxed) => return Err(WatchEnd::Slow),
                None => return Err(WatchEnd::Closed),
            }
        }
    }

    /// Queues, entry by entry, the changes to watched keys that are past `position` and
    /// not yet queued.
    fn take<'a>(&mut self, changes: impl Iterator<Item = &'a Change>) {
        let mut floor = self.ready.back().map_or(self.position, |(i, _)| *i);
        for c in changes {
            if c.index() <= floor && self.ready.back().map(|(i, _)| *i) != Some(c.index()) {
                continue;
            }
            if !self.spec.matches(&c.key) {
                continue;
            }
            match self.ready.back_mut() {
                Some((i, v)) if *i == c.index() => v.push(c.clone()),
                _ => self.ready.push_back((c.index(), vec![c.clone()])),
            }
            floor = c.index();
        }
    }
}

impl<H: HistorySource> Drop for Watch<H> {
    fn drop(&mut self) {
        self.hub.lock().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, index: u64) -> Change {
        Change {
            key: key.into(),
            value: Some(format!("v{index}")),
            meta: KeyMeta {
                create_index: index,
                mod_index: index,
                version: 1,
                lease: 0,
            },
        }
    }

    /// A history held in memory, as a vector of changes, starting after `start`.
    #[derive(Clone, Default)]
    struct Mem(Arc<Mutex<(u64, Vec<Change>)>>);

    impl HistorySource for Mem {
        async fn page(&self, after: u64, upto: u64) -> crate::Result<HistoryPage> {
            let g = self.0.lock().unwrap();
            Ok(HistoryPage {
                start: g.0,
                changes: g
                    .1
                    .iter()
                    .filter(|c| c.index() > after && c.index() <= upto)
                    .cloned()
                    .collect(),
                through: upto,
            })
        }
    }

    #[tokio::test]
    async fn a_watch_reads_the_history_then_follows_live_changes_once_each() {
        let hub = Arc::new(Hub::new(3));
        let mem = Mem::default();
        mem.0.lock().unwrap().1 = vec![put("a/1", 1), put("b", 2), put("a/2", 3)];
        let spec = WatchSpec::Prefix("a/".into());
        let mut w = Watch::start(&hub, mem.clone(), spec, Some(0))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // Applied after registering: live, and also in the history by then.
        mem.0.lock().unwrap().1.push(put("a/3", 4));
        hub.publish(4, vec![put("a/3", 4), put("c", 4)]);
        let mut got = Vec::new();
        for _ in 0..3 {
            let (i, cs) = w.next().await.unwrap();
            got.push((i, cs.iter().map(|c| c.key.clone()).collect::<Vec<_>>()));
        }
        assert_eq!(
            got,
            vec![
                (1, vec!["a/1".to_string()]),
                (3, vec!["a/2".to_string()]),
                (4, vec!["a/3".to_string()]),
            ]
        );
        // An idle key watcher is not woken by other keys' changes.
        let mut k = Watch::start(&hub, mem.clone(), WatchSpec::Key("z".into()), None)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(k.start_index(), 4);
        hub.publish(5, vec![put("a/4", 5)]);
        hub.publish(6, vec![put("z", 6)]);
        assert_eq!(k.next().await.unwrap().0, 6);
        assert_eq!(w.next().await.unwrap().0, 5);
        assert_eq!(hub.watchers(), 2);
        drop(k);
        assert_eq!(hub.watchers(), 1);
        hub.close();
        assert_eq!(w.next().await, Err(WatchEnd::Closed));
    }

    #[tokio::test]
    async fn a_trimmed_history_refuses_old_starts_and_slow_watchers_are_dropped() {
        let hub = Arc::new(Hub::new(10));
        let mem = Mem::default();
        mem.0.lock().unwrap().0 = 5;
        let spec = WatchSpec::Key("k".into());
        assert_eq!(
            Watch::start(&hub, mem.clone(), spec.clone(), Some(4))
                .await
                .unwrap()
                .err(),
            Some(5)
        );
        let mut w = Watch::start(&hub, mem.clone(), spec, None)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        for i in 0..=QUEUE_MESSAGES as u64 {
            hub.publish(11 + i, vec![put("k", 11 + i)]);
        }
        // Dropped at once: what it had queued is not delivered.
        assert_eq!(w.next().await, Err(WatchEnd::Slow));
        assert_eq!(hub.watchers(), 0);
    }

    #[tokio::test]
    async fn after_a_snapshot_install_a_watch_reads_the_installed_history() {
        let hub = Arc::new(Hub::new(2));
        let mem = Mem::default();
        let mut w = Watch::start(&hub, mem.clone(), WatchSpec::Prefix(String::new()), None)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // Entries 3..=9 arrive in a snapshot, never applied one by one here.
        mem.0.lock().unwrap().1 = vec![put("x", 3), put("y", 9)];
        hub.reset(9);
        hub.publish(10, vec![put("z", 10)]);
        let idx: Vec<u64> = [w.next().await, w.next().await, w.next().await]
            .into_iter()
            .map(|r| r.unwrap().0)
            .collect();
        assert_eq!(idx, vec![3, 9, 10]);
        // A snapshot whose history starts past the watch: it ends, saying from where.
        mem.0.lock().unwrap().0 = 15;
        hub.reset(20);
        assert_eq!(w.next().await, Err(WatchEnd::Compacted { oldest: 15 }));
    }
}
