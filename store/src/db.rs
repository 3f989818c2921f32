//! Opens the one RocksDB instance that holds both the Raft log and the state machine.
//!
//! Keeping both in one database (separate column families, one shared WAL) matters for
//! durability: RocksDB recovers a prefix of its WAL after a crash, so once a later log
//! append has been fsynced, every state machine write made before it is durable as well.

use std::path::Path;
use std::sync::Arc;

use rocksdb::ColumnFamilyDescriptor;
use rocksdb::Options;
use rocksdb::DB;

use crate::error::Result;

/// Raft log entries, keyed by big-endian index.
pub(crate) const CF_LOGS: &str = "logs";
/// Raft metadata: vote, committed log id, last purged log id.
pub(crate) const CF_RAFT_META: &str = "raft_meta";
/// Application data: key -> value.
pub(crate) const CF_DATA: &str = "data";
/// State machine metadata: last applied log id, membership, snapshot install marker.
pub(crate) const CF_SM_META: &str = "sm_meta";

pub(crate) fn open(path: &Path) -> Result<Arc<DB>> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    // Bound memory: small write buffers and a block cache shared by all families.
    let cache = rocksdb::Cache::new_lru_cache(32 << 20);
    let mut block = rocksdb::BlockBasedOptions::default();
    block.set_block_cache(&cache);
    opts.set_block_based_table_factory(&block);
    opts.set_write_buffer_size(16 << 20);
    opts.set_max_write_buffer_number(3);
    let cfs = [CF_LOGS, CF_RAFT_META, CF_DATA, CF_SM_META]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, opts.clone()));
    let db = DB::open_cf_descriptors(&opts, path, cfs)?;
    Ok(Arc::new(db))
}

/// A write-options value that makes RocksDB fsync its WAL before returning.
pub(crate) fn sync_write() -> rocksdb::WriteOptions {
    let mut w = rocksdb::WriteOptions::default();
    w.set_sync(true);
    w
}

/// One column family's footprint, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CfSize {
    pub name: &'static str,
    /// Bytes in SST files on disk.
    pub sst_bytes: u64,
    /// Bytes in memtables (not yet flushed to SST files).
    pub memtable_bytes: u64,
}

/// The size of every column family, from RocksDB's own properties.
pub(crate) fn sizes(db: &rocksdb::DB) -> Vec<CfSize> {
    [CF_LOGS, CF_RAFT_META, CF_DATA, CF_SM_META]
        .into_iter()
        .filter_map(|name| {
            let cf = db.cf_handle(name)?;
            let prop = |p: &str| db.property_int_value_cf(cf, p).ok().flatten().unwrap_or(0);
            Some(CfSize {
                name,
                sst_bytes: prop("rocksdb.total-sst-files-size"),
                memtable_bytes: prop("rocksdb.size-all-mem-tables"),
            })
        })
        .collect()
}
