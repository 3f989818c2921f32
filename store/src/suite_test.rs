//! openraft's own storage conformance suite, run against our RocksDB log store and
//! state machine.

use openraft::testing::StoreBuilder;
use openraft::testing::Suite;
use tempfile::TempDir;

use crate::log_store::LogStore;
use crate::state_machine::AppliedIndex;
use crate::state_machine::StateMachine;
use crate::types::StorageError;
use crate::types::TypeConfig;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let td = TempDir::new().expect("temp dir");
        let db = crate::db::open(&td.path().join("raft")).expect("open rocksdb");
        // The suite purges logs without applying them; our purge guard would defer that.
        let log = LogStore::unguarded(db.clone());
        let sm = StateMachine::open(db, td.path().join("snapshots"), AppliedIndex::default())
            .expect("open state machine");
        Ok((td, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(Builder)
}
