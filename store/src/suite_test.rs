//! openraft's own storage conformance suite, run against our RocksDB log store and
//! state machine.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use openraft::testing::StoreBuilder;
use openraft::testing::Suite;
use tempfile::TempDir;

use crate::log_store::LogStore;
use crate::state_machine::StateMachine;
use crate::types::StorageError;
use crate::types::TypeConfig;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let td = TempDir::new().expect("temp dir");
        let db = crate::db::open(&td.path().join("raft")).expect("open rocksdb");
        let log = LogStore::new(db.clone(), Arc::new(AtomicU64::new(0)));
        let sm = StateMachine::open(db, td.path().join("snapshots")).expect("open state machine");
        Ok((td, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(Builder)
}
