//! Snapshot files: a consistent point-in-time image of the state machine on disk.
//!
//! A snapshot is built from a RocksDB snapshot (so data, `last_applied` and membership are
//! read at one instant), streamed record by record into a temporary file, fsynced and
//! renamed into place. The same file is what openraft streams to a follower, and what a
//! follower installs, so memory stays bounded however large the data grows.
//!
//! Layout: `MAGIC | u32 meta_len | meta (JSON) | records | END | u64 count`, where a record
//! is `u32 key_len | key | u32 value_len | value` (lengths big-endian).

use std::fs;
use std::fs::File;
use std::io;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Read;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::time::SystemTime;

use rocksdb::DB;

use crate::db;
use crate::types::decode;
use crate::types::LogId;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;

const MAGIC: &[u8; 10] = b"HRAFTSNAP1";
const END: u32 = u32::MAX;
pub(crate) const SUFFIX: &str = "snap";

pub(crate) const KEY_LAST_APPLIED: &[u8] = b"last_applied";
pub(crate) const KEY_MEMBERSHIP: &[u8] = b"membership";

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads `last_applied` and membership as seen by `get` (the live DB or a snapshot).
pub(crate) fn read_applied(
    get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error>,
) -> io::Result<(Option<LogId>, StoredMembership)> {
    let applied = match get(KEY_LAST_APPLIED).map_err(io::Error::other)? {
        Some(b) => decode(&b)?,
        None => None,
    };
    let membership = match get(KEY_MEMBERSHIP).map_err(io::Error::other)? {
        Some(b) => decode(&b)?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

/// Builds a snapshot file in `dir` from a point-in-time view of `db`. Blocking.
pub(crate) fn build(db: &DB, dir: &Path) -> io::Result<(SnapshotMeta, PathBuf)> {
    let snap = db.snapshot();
    let sm_meta = db.cf_handle(db::CF_SM_META).expect("sm_meta column family");
    let data = db.cf_handle(db::CF_DATA).expect("data column family");
    let (last_applied, membership) = read_applied(|k| snap.get_cf(sm_meta, k))?;
    let millis = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let snapshot_id = match &last_applied {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, millis),
        None => format!("0-0-{millis}"),
    };
    let meta = SnapshotMeta {
        last_log_id: last_applied,
        last_membership: membership,
        snapshot_id,
    };
    let tmp = dir.join(format!("{}.building", meta.snapshot_id));
    let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    write_header(&mut w, &meta)?;
    let mut count: u64 = 0;
    for item in snap.iterator_cf(data, rocksdb::IteratorMode::Start) {
        let (k, v) = item.map_err(io::Error::other)?;
        write_record(&mut w, &k, &v)?;
        count += 1;
    }
    w.write_all(&END.to_be_bytes())?;
    w.write_all(&count.to_be_bytes())?;
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    drop(f);
    let path = final_path(dir, &meta);
    fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    Ok((meta, path))
}

pub(crate) fn final_path(dir: &Path, meta: &SnapshotMeta) -> PathBuf {
    dir.join(format!("{}.{SUFFIX}", meta.snapshot_id))
}

fn write_header(w: &mut impl Write, meta: &SnapshotMeta) -> io::Result<()> {
    let meta = serde_json::to_vec(meta)?;
    w.write_all(MAGIC)?;
    w.write_all(&(meta.len() as u32).to_be_bytes())?;
    w.write_all(&meta)
}

fn write_record(w: &mut impl Write, k: &[u8], v: &[u8]) -> io::Result<()> {
    w.write_all(&(k.len() as u32).to_be_bytes())?;
    w.write_all(k)?;
    w.write_all(&(v.len() as u32).to_be_bytes())?;
    w.write_all(v)
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A snapshot file opened for reading: its metadata, then its records in key order.
pub(crate) struct Reader {
    r: BufReader<File>,
    pub(crate) meta: SnapshotMeta,
    seen: u64,
}

impl Reader {
    pub(crate) fn open(path: &Path) -> io::Result<Reader> {
        let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
        let mut magic = [0u8; 10];
        r.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(invalid(format!(
                "{}: not an hraftd snapshot",
                path.display()
            )));
        }
        let len = read_u32(&mut r)? as usize;
        let mut meta = vec![0u8; len];
        r.read_exact(&mut meta)?;
        let meta: SnapshotMeta = serde_json::from_slice(&meta)?;
        Ok(Reader { r, meta, seen: 0 })
    }

    /// The next record, or `None` after the trailer (whose count is checked).
    pub(crate) fn next_record(&mut self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        let klen = read_u32(&mut self.r)?;
        if klen == END {
            let mut c = [0u8; 8];
            self.r.read_exact(&mut c)?;
            let count = u64::from_be_bytes(c);
            if count != self.seen {
                return Err(invalid(format!(
                    "snapshot trailer says {count} records, read {}",
                    self.seen
                )));
            }
            return Ok(None);
        }
        let mut k = vec![0u8; klen as usize];
        self.r.read_exact(&mut k)?;
        let vlen = read_u32(&mut self.r)? as usize;
        let mut v = vec![0u8; vlen];
        self.r.read_exact(&mut v)?;
        self.seen += 1;
        Ok(Some((k, v)))
    }
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

/// Finds the newest complete snapshot in `dir` and deletes every other file there
/// (older snapshots, half-built or half-received ones).
pub(crate) fn newest_and_cleanup(dir: &Path) -> io::Result<Option<(SnapshotMeta, PathBuf)>> {
    let mut best: Option<(SnapshotMeta, PathBuf)> = None;
    let mut others = Vec::new();
    for ent in fs::read_dir(dir)? {
        let path = ent?.path();
        let is_snap = path.extension().and_then(|e| e.to_str()) == Some(SUFFIX);
        let meta = if is_snap {
            Reader::open(&path).ok().map(|r| r.meta)
        } else {
            None
        };
        match meta {
            Some(m)
                if best
                    .as_ref()
                    .is_none_or(|(b, _)| m.last_log_id > b.last_log_id) =>
            {
                if let Some((_, old)) = best.replace((m, path)) {
                    others.push(old);
                }
            }
            _ => others.push(path),
        }
    }
    for p in others {
        let _ = fs::remove_file(p);
    }
    Ok(best)
}

/// Deletes every snapshot file in `dir` except `keep`.
pub(crate) fn remove_except(dir: &Path, keep: &Path) -> io::Result<()> {
    for ent in fs::read_dir(dir)? {
        let path = ent?.path();
        let done = path.extension().and_then(|e| e.to_str()) == Some(SUFFIX);
        if done && path != keep {
            fs::remove_file(path)?;
        }
    }
    Ok(())
}
