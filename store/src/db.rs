//! Opens the one RocksDB instance that holds the Raft log and the state machine of every
//! Raft group on this node, and names each group's part of it ([`Keyspace`]).
//!
//! Keeping everything in one database (column families, one shared WAL) matters for
//! durability: RocksDB recovers a prefix of its WAL after a crash, so once a later log
//! append has been fsynced, every state machine write made before it is durable as well,
//! whichever group made it. The default group has the four column families `logs`,
//! `raft_meta`, `data` and `sm_meta` (so data dirs from before groups open unchanged);
//! group `g` has `g/<g>/logs` and so on, so no key of one group can be reached, iterated or
//! range-deleted through another's handles, and dropping a group drops its families.

use std::path::Path;
use std::sync::Arc;

use rocksdb::BoundColumnFamily;
use rocksdb::ColumnFamilyDescriptor;
use rocksdb::Options;

use crate::error::Result;

/// The database type: multi-threaded mode, so column families can be created for a new
/// group while the others are in use.
pub(crate) type Db = rocksdb::DBWithThreadMode<rocksdb::MultiThreaded>;
/// A point-in-time view of [`Db`].
pub(crate) type DbSnapshot<'a> = rocksdb::SnapshotWithThreadMode<'a, Db>;

/// Raft log entries, keyed by big-endian index.
pub(crate) const CF_LOGS: &str = "logs";
/// Raft metadata: vote, committed log id, last purged log id.
pub(crate) const CF_RAFT_META: &str = "raft_meta";
/// Application data: key -> value.
pub(crate) const CF_DATA: &str = "data";
/// State machine metadata: last applied log id, membership, snapshot install marker.
pub(crate) const CF_SM_META: &str = "sm_meta";
/// The families every group has, in [`Family`] order.
const FAMILIES: [&str; 4] = [CF_LOGS, CF_RAFT_META, CF_DATA, CF_SM_META];

/// The id of the group every node belongs to, which keeps the unprefixed families.
pub const DEFAULT_GROUP: &str = "default";

/// One of a group's column families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Logs = 0,
    RaftMeta = 1,
    Data = 2,
    SmMeta = 3,
}

/// Whether `id` is a valid group id: 1-64 characters of `[A-Za-z0-9_-]`, so it can name
/// column families and appear in paths and URLs as it is.
pub fn valid_group_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// [`valid_group_id`] as a `Result`: `Invalid` (a `400`) saying what an id may be.
pub(crate) fn check_group_id(id: &str) -> Result<()> {
    if valid_group_id(id) {
        return Ok(());
    }
    Err(crate::Error::Invalid(format!(
        "group id {id:?}: 1-64 characters of A-Z, a-z, 0-9, _ and -"
    )))
}

fn family_name(group: &str, family: &str) -> String {
    if group == DEFAULT_GROUP {
        family.to_string()
    } else {
        format!("g/{group}/{family}")
    }
}

/// One group's part of the shared database: its four column families. Cheap to clone;
/// every store of the group (log, state machine, readers, snapshot builders) holds one.
#[derive(Clone)]
pub(crate) struct Keyspace {
    db: Arc<Db>,
    /// The group's id, for messages.
    group: Arc<str>,
    /// Its column family names, in [`Family`] order.
    names: Arc<[String; 4]>,
}

impl std::fmt::Debug for Keyspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyspace({})", self.group)
    }
}

impl Keyspace {
    /// The default group's keyspace (its families exist from [`open`]).
    #[cfg(test)]
    pub(crate) fn default_group(db: &Arc<Db>) -> Keyspace {
        Keyspace::group(db, DEFAULT_GROUP).expect("the default group's families")
    }

    /// Group `id`'s keyspace ([`DEFAULT_GROUP`]: the unprefixed families), creating its
    /// column families where they do not exist yet.
    pub(crate) fn group(db: &Arc<Db>, id: &str) -> Result<Keyspace> {
        check_group_id(id)?;
        let names = FAMILIES.map(|f| family_name(id, f));
        for name in &names {
            if db.cf_handle(name).is_none() {
                // Another caller may have created it meanwhile: then it is there.
                if let Err(e) = db.create_cf(name, &family_options()) {
                    if db.cf_handle(name).is_none() {
                        return Err(e.into());
                    }
                }
            }
        }
        Ok(Keyspace {
            db: db.clone(),
            group: id.into(),
            names: Arc::new(names),
        })
    }

    /// The database itself (for writes that span families, snapshots and flushes).
    pub(crate) fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// The group's id.
    pub(crate) fn group_id(&self) -> &str {
        &self.group
    }

    /// How many handles of this keyspace exist (this one included): a group's families are
    /// dropped only once its stores, which openraft may keep a while after shutdown, are
    /// all gone.
    pub(crate) fn handles(&self) -> usize {
        Arc::strong_count(&self.names)
    }

    /// The handle of one of this group's column families.
    pub(crate) fn cf(&self, family: Family) -> Arc<BoundColumnFamily<'_>> {
        let name = &self.names[family as usize];
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} of group {}", self.group_id()))
    }
}

/// The ids of the groups, other than the default one, that have families in `db`.
pub(crate) fn group_ids(db: &Db) -> Result<Vec<String>> {
    let names = Db::list_cf(&Options::default(), db.path())?;
    let ids: std::collections::BTreeSet<String> = names
        .iter()
        .filter_map(|n| n.strip_prefix("g/"))
        .filter_map(|n| n.split_once('/').map(|(g, _)| g.to_string()))
        .collect();
    Ok(ids.into_iter().collect())
}

/// Drops every column family of group `id` (not the default group's). Only once no
/// [`Keyspace`] of it is left: a store that reached for a dropped family would panic.
pub(crate) fn drop_group(db: &Db, id: &str) -> Result<()> {
    if id == DEFAULT_GROUP || !valid_group_id(id) {
        return Err(crate::Error::Invalid(format!("cannot drop group {id:?}")));
    }
    for f in FAMILIES {
        let name = family_name(id, f);
        if db.cf_handle(&name).is_some() {
            db.drop_cf(&name)?;
        }
    }
    Ok(())
}

/// Options of every column family: small write buffers (many groups each have
/// memtables), and one block cache for all of them, so memory stays bounded however many
/// groups there are.
fn family_options() -> Options {
    // Process-wide (a process has one database; tests open several, which then share it).
    static BLOCK_CACHE: std::sync::LazyLock<std::sync::Mutex<rocksdb::Cache>> =
        std::sync::LazyLock::new(|| std::sync::Mutex::new(rocksdb::Cache::new_lru_cache(32 << 20)));
    let cache = BLOCK_CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut block = rocksdb::BlockBasedOptions::default();
    block.set_block_cache(&cache);
    let mut opts = Options::default();
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_block_based_table_factory(&block);
    opts.set_write_buffer_size(16 << 20);
    opts.set_max_write_buffer_number(3);
    opts
}

/// Opens (or creates) the database with the default group's families and every group
/// family it already has.
pub(crate) fn open(path: &Path) -> Result<Arc<Db>> {
    let mut opts = family_options();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Every family the database has (none for a new one), and the default group's.
    let mut names: Vec<String> = if path.join("CURRENT").exists() {
        Db::list_cf(&opts, path)?
    } else {
        Vec::new()
    };
    for f in FAMILIES {
        if !names.iter().any(|n| n == f) {
            names.push(f.to_string());
        }
    }
    let cfs = names
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, family_options()));
    let db = Db::open_cf_descriptors(&opts, path, cfs)?;
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

/// The size of each of the default group's column families, from RocksDB's own properties.
pub(crate) fn sizes(db: &Db) -> Vec<CfSize> {
    FAMILIES
        .into_iter()
        .filter_map(|name| {
            let cf = db.cf_handle(name)?;
            let prop = |p: &str| db.property_int_value_cf(&cf, p).ok().flatten().unwrap_or(0);
            Some(CfSize {
                name,
                sst_bytes: prop("rocksdb.total-sst-files-size"),
                memtable_bytes: prop("rocksdb.size-all-mem-tables"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A group's families hold its own keys only: a range delete over all of one group's
    /// log leaves the other's, and the families (and their data) are there again after a
    /// reopen, which must open every family the database has.
    #[test]
    fn groups_are_separate_families_that_survive_a_reopen() {
        let td = tempfile::tempdir().unwrap();
        let path = td.path().join("raft");
        {
            let db = open(&path).unwrap();
            let (d, g) = (
                Keyspace::default_group(&db),
                Keyspace::group(&db, "g-2_x").unwrap(),
            );
            for (ks, v) in [(&d, &b"default"[..]), (&g, b"g2")] {
                db.put_cf(&ks.cf(Family::Data), b"k", v).unwrap();
                db.put_cf(&ks.cf(Family::Logs), 7u64.to_be_bytes(), v)
                    .unwrap();
            }
            let mut batch = rocksdb::WriteBatch::default();
            batch.delete_range_cf(&g.cf(Family::Logs), [0u8; 8], [0xFFu8; 8]);
            db.write(batch).unwrap();
            assert_eq!(
                db.get_cf(&g.cf(Family::Logs), 7u64.to_be_bytes()).unwrap(),
                None
            );
        }
        let db = open(&path).unwrap();
        let d = Keyspace::default_group(&db);
        let g = Keyspace::group(&db, "g-2_x").unwrap();
        assert_eq!(
            db.get_cf(&d.cf(Family::Logs), 7u64.to_be_bytes())
                .unwrap()
                .as_deref(),
            Some(&b"default"[..])
        );
        assert_eq!(
            db.get_cf(&d.cf(Family::Data), b"k").unwrap().as_deref(),
            Some(&b"default"[..])
        );
        assert_eq!(
            db.get_cf(&g.cf(Family::Data), b"k").unwrap().as_deref(),
            Some(&b"g2"[..])
        );
        assert_eq!(g.group_id(), "g-2_x");
    }

    #[test]
    fn group_ids_are_checked() {
        for ok in ["g2", "a", "A-z_0", &"x".repeat(64)] {
            assert!(valid_group_id(ok), "{ok}");
        }
        for bad in ["", "g/2", "g 2", "..", "é", &"x".repeat(65)] {
            assert!(!valid_group_id(bad), "{bad}");
        }
        let td = tempfile::tempdir().unwrap();
        let db = open(&td.path().join("raft")).unwrap();
        assert!(Keyspace::group(&db, "../x").is_err());
    }
}
