//! openraft's own storage conformance suite, run against our RocksDB log store and
//! state machine.

use openraft::testing::StoreBuilder;
use openraft::testing::Suite;
use tempfile::TempDir;

use crate::db::Family;
use crate::db::Keyspace;
use crate::log_store::LogStore;
use crate::state_machine::AppliedIndex;
use crate::state_machine::StateMachine;
use crate::types::StorageError;
use crate::types::TypeConfig;

/// Builds the stores of one group on a fresh database: the default group, or (with
/// `Some(id)`) group `id` beside a default group whose families are full of records that
/// are not valid entries or state, so any read, iteration or deletion that strayed from
/// the group's own families would fail the suite or change what the neighbour holds.
struct Builder(Option<&'static str>);

/// The suite's per-test state: the temp dir and, for a second group, its neighbour, which
/// must still hold exactly its junk when the test is over (checked on drop).
struct Dir {
    /// Dropped last, after the check.
    _td: TempDir,
    neighbour: Option<Keyspace>,
}

impl Drop for Dir {
    fn drop(&mut self) {
        if let Some(ks) = &self.neighbour {
            if !std::thread::panicking() {
                assert_eq!(
                    junk_in(ks),
                    JUNK_RECORDS,
                    "the default group's junk changed"
                );
            }
        }
    }
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, Dir> for Builder {
    async fn build(&self) -> Result<(Dir, LogStore, StateMachine), StorageError> {
        let td = TempDir::new().expect("temp dir");
        let db = crate::db::open(&td.path().join("raft")).expect("open rocksdb");
        let (ks, neighbour) = match self.0 {
            None => (Keyspace::default_group(&db), None),
            Some(id) => {
                let neighbour = Keyspace::default_group(&db);
                fill_with_junk(&neighbour);
                let ks = Keyspace::group(&db, id).expect("group families");
                (ks, Some(neighbour))
            }
        };
        // The suite purges logs without applying them; our purge guard would defer that.
        let log = LogStore::unguarded(ks.clone());
        let sm = StateMachine::open(
            ks,
            td.path().join("snapshots"),
            AppliedIndex::default(),
            crate::watch::DEFAULT_HISTORY,
        )
        .expect("open state machine");
        Ok((Dir { _td: td, neighbour }, log, sm))
    }
}

/// Log indexes 0..=100 and a data key and meta keys of the suite's own names, none of them
/// decodable as what the suite expects.
fn fill_with_junk(ks: &Keyspace) {
    let mut batch = rocksdb::WriteBatch::default();
    for i in 0..=100u64 {
        batch.put_cf(&ks.cf(Family::Logs), i.to_be_bytes(), b"junk");
    }
    for k in [&b"vote"[..], b"committed", b"last_purged", b"purge_pending"] {
        batch.put_cf(&ks.cf(Family::RaftMeta), k, b"junk");
    }
    for k in [&b"last_applied"[..], b"membership", b"installing"] {
        batch.put_cf(&ks.cf(Family::SmMeta), k, b"junk");
    }
    batch.put_cf(&ks.cf(Family::Data), b"k", b"junk");
    ks.db().write(batch).expect("write junk");
}

/// How many records [`fill_with_junk`] writes.
const JUNK_RECORDS: usize = 101 + 4 + 3 + 1;

/// How many records of `ks` are junk, in all; anything else there counts against it.
fn junk_in(ks: &Keyspace) -> usize {
    let mut junk = 0;
    for f in [Family::Logs, Family::RaftMeta, Family::SmMeta, Family::Data] {
        for item in ks.db().iterator_cf(&ks.cf(f), rocksdb::IteratorMode::Start) {
            let (_, v) = item.expect("read the neighbour");
            assert_eq!(
                &*v, b"junk",
                "a record in the default group that is not junk"
            );
            junk += 1;
        }
    }
    junk
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(Builder(None))
}

/// The same suite for a second group's stores in a database shared with the default group.
#[test]
fn openraft_storage_suite_for_a_group_beside_the_default_one() -> Result<(), StorageError> {
    Suite::test_all(Builder(Some("g2")))
}
