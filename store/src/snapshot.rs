//! Snapshot files: a consistent point-in-time image of the state machine on disk.
//!
//! A snapshot is built from a RocksDB snapshot (so data, `last_applied` and membership are
//! read at one instant), streamed record by record into a temporary file, fsynced and
//! renamed into place. The same file is what openraft streams to a follower, and what a
//! follower installs, so memory stays bounded however large the data grows.
//!
//! Layout: `MAGIC | u32 meta_len | meta (JSON) | records | END | u64 count | u32 crc`,
//! where a record is `u32 key_len | key | u32 value_len | value` (lengths big-endian) and
//! `crc` is the CRC-32 of all record bytes. [`verify`] checks a whole file before anything
//! is replaced with it.

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

use crate::db;
use crate::types::decode;
use crate::types::LogId;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;

/// Since values carry metadata (see `kv.rs`): every record's value is in that format.
const MAGIC: &[u8; 10] = b"HRAFTSNAP3";
/// Before values carried metadata: values are plain UTF-8, converted as they are read.
const MAGIC_LEGACY: &[u8; 10] = b"HRAFTSNAP2";
/// Upper bound for one key or value, so a corrupt length cannot ask for gigabytes.
const MAX_FIELD: u32 = 256 << 20;
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

/// Writes a snapshot file into `dir` from `snap`, a point-in-time view of `db`, under a
/// temporary name; [`publish`] moves it into place. Returns its metadata, path and record
/// count. Blocking.
pub(crate) fn build(
    ks: &db::Keyspace,
    snap: &db::DbSnapshot<'_>,
    dir: &Path,
) -> io::Result<(SnapshotMeta, PathBuf, u64)> {
    let sm_meta = ks.cf(db::Family::SmMeta);
    let data = ks.cf(db::Family::Data);
    let (last_applied, membership) = read_applied(|k| snap.get_cf(&sm_meta, k))?;
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
    check_id(&meta.snapshot_id)?;
    let tmp = dir.join(format!("{}.building", meta.snapshot_id));
    let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    write_header(&mut w, &meta)?;
    let mut count: u64 = 0;
    let mut crc = crc32fast::Hasher::new();
    for item in snap.iterator_cf(&data, rocksdb::IteratorMode::Start) {
        let (k, v) = item.map_err(io::Error::other)?;
        write_record(&mut w, &mut crc, &k, &v)?;
        count += 1;
    }
    w.write_all(&END.to_be_bytes())?;
    w.write_all(&count.to_be_bytes())?;
    w.write_all(&crc.finalize().to_be_bytes())?;
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    Ok((meta, tmp, count))
}

/// Refuses a snapshot id that could not safely be part of a file name: ids arrive from the
/// network, and `../x` or `/etc/x` must never become a path. Ours look like `7-1234-1700000000000`.
pub(crate) fn check_id(id: &str) -> io::Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "snapshot id {:?} is not 1-64 letters, digits, '-' or '_'",
            id.chars().take(80).collect::<String>()
        )))
    }
}

/// Renames a complete, fsynced file into place as the snapshot `meta` and syncs the
/// directory. Returns the final path.
pub(crate) fn publish(tmp: &Path, dir: &Path, meta: &SnapshotMeta) -> io::Result<PathBuf> {
    check_id(&meta.snapshot_id)?;
    let path = final_path(dir, meta);
    fs::rename(tmp, &path)?;
    sync_dir(dir)?;
    Ok(path)
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

fn write_record(
    w: &mut impl Write,
    crc: &mut crc32fast::Hasher,
    k: &[u8],
    v: &[u8],
) -> io::Result<()> {
    for field in [k, v] {
        let len = (field.len() as u32).to_be_bytes();
        crc.update(&len);
        crc.update(field);
        w.write_all(&len)?;
        w.write_all(field)?;
    }
    Ok(())
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A snapshot file opened for reading: its metadata, then its records in key order.
pub(crate) struct Reader {
    r: BufReader<File>,
    pub(crate) meta: SnapshotMeta,
    /// Written before values had metadata ([`MAGIC_LEGACY`]): [`Reader::next_record`]
    /// converts each client value, created at the snapshot's index.
    legacy: bool,
    seen: u64,
    crc: crc32fast::Hasher,
}

impl Reader {
    pub(crate) fn open(path: &Path) -> io::Result<Reader> {
        let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
        let mut magic = [0u8; 10];
        r.read_exact(&mut magic)?;
        let legacy = &magic == MAGIC_LEGACY;
        if &magic != MAGIC && !legacy {
            return Err(invalid(format!(
                "{}: not an hraftd snapshot",
                path.display()
            )));
        }
        let len = read_u32(&mut r)?;
        if len > MAX_FIELD {
            return Err(invalid(format!("{}: corrupt header", path.display())));
        }
        let mut meta = vec![0u8; len as usize];
        r.read_exact(&mut meta)?;
        let meta: SnapshotMeta = serde_json::from_slice(&meta)?;
        Ok(Reader {
            r,
            meta,
            legacy,
            seen: 0,
            crc: crc32fast::Hasher::new(),
        })
    }

    /// Reads one length-prefixed field into `buf` (or, with `None`, only checksums it).
    fn field(&mut self, len: u32, buf: Option<&mut Vec<u8>>) -> io::Result<()> {
        if len > MAX_FIELD {
            return Err(invalid(format!("snapshot field of {len} bytes is corrupt")));
        }
        self.crc.update(&len.to_be_bytes());
        match buf {
            Some(buf) => {
                buf.resize(len as usize, 0);
                self.r.read_exact(buf)?;
                self.crc.update(buf);
            }
            None => {
                let mut sink = CrcSink(&mut self.crc);
                let n = io::copy(&mut (&mut self.r).take(u64::from(len)), &mut sink)?;
                if n != u64::from(len) {
                    return Err(invalid("snapshot file is truncated"));
                }
            }
        }
        Ok(())
    }

    /// Reads the next record (into `kv` when given); `false` after a valid trailer.
    fn advance(&mut self, kv: Option<(&mut Vec<u8>, &mut Vec<u8>)>) -> io::Result<bool> {
        let klen = read_u32(&mut self.r)?;
        if klen == END {
            let mut c = [0u8; 8];
            self.r.read_exact(&mut c)?;
            let count = u64::from_be_bytes(c);
            let crc = read_u32(&mut self.r)?;
            if count != self.seen {
                return Err(invalid(format!(
                    "snapshot trailer says {count} records, read {}",
                    self.seen
                )));
            }
            if crc != self.crc.clone().finalize() {
                return Err(invalid("snapshot checksum mismatch"));
            }
            return Ok(false);
        }
        match kv {
            Some((k, v)) => {
                self.field(klen, Some(k))?;
                let vlen = read_u32(&mut self.r)?;
                self.field(vlen, Some(v))?;
            }
            None => {
                self.field(klen, None)?;
                let vlen = read_u32(&mut self.r)?;
                self.field(vlen, None)?;
            }
        }
        self.seen += 1;
        Ok(true)
    }

    /// The next record, or `None` after the trailer (whose count and checksum are checked).
    /// Client values are always in the current format (see `kv.rs`).
    pub(crate) fn next_record(&mut self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        let (mut k, mut v) = (Vec::new(), Vec::new());
        if !self.advance(Some((&mut k, &mut v)))? {
            return Ok(None);
        }
        if self.legacy && !crate::catalogue::is_catalogue_key(&k) {
            let index = self.meta.last_log_id.map(|l| l.index).unwrap_or(0);
            v = crate::kv::legacy(&v, index);
        }
        Ok(Some((k, v)))
    }
}

struct CrcSink<'a>(&'a mut crc32fast::Hasher);

impl Write for CrcSink<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads a whole snapshot file, checking its structure, count and checksum, without
/// holding more than a buffer in memory. Returns its metadata and record count.
pub(crate) fn verify(path: &Path) -> io::Result<(SnapshotMeta, u64)> {
    let mut r = Reader::open(path)?;
    while r.advance(None)? {}
    Ok((r.meta, r.seen))
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

/// Deletes a file, treating "already gone" as success.
fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Keeps only the newest snapshot (by last log id) in `dir` and returns it. With
/// `all_files`, also deletes anything else there (half-built or half-received files):
/// only safe when nothing is being built or received, i.e. at start-up.
/// Callers hold the snapshot directory lock.
pub(crate) fn retain_newest(
    dir: &Path,
    all_files: bool,
) -> io::Result<Option<(SnapshotMeta, PathBuf)>> {
    let mut best: Option<(SnapshotMeta, PathBuf)> = None;
    let mut others = Vec::new();
    for ent in fs::read_dir(dir)? {
        let path = ent?.path();
        let is_snap = path.extension().and_then(|e| e.to_str()) == Some(SUFFIX);
        if !is_snap {
            if all_files {
                others.push(path);
            }
            continue;
        }
        match Reader::open(&path).map(|r| r.meta) {
            Ok(m) => {
                let newer = best.as_ref().is_none_or(|(b, _)| {
                    (&m.last_log_id, &m.snapshot_id) > (&b.last_log_id, &b.snapshot_id)
                });
                if newer {
                    if let Some((_, old)) = best.replace((m, path)) {
                        others.push(old);
                    }
                } else {
                    others.push(path);
                }
            }
            Err(_) => others.push(path),
        }
    }
    for p in others {
        remove(&p)?;
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_file(dir: &Path, records: &[(&[u8], &[u8])]) -> PathBuf {
        let meta = SnapshotMeta::default();
        let path = dir.join("t.snap");
        let mut w = File::create(&path).unwrap();
        write_header(&mut w, &meta).unwrap();
        let mut crc = crc32fast::Hasher::new();
        for (k, v) in records {
            write_record(&mut w, &mut crc, k, v).unwrap();
        }
        w.write_all(&END.to_be_bytes()).unwrap();
        w.write_all(&(records.len() as u64).to_be_bytes()).unwrap();
        w.write_all(&crc.finalize().to_be_bytes()).unwrap();
        path
    }

    /// A snapshot (or backup) written before values had metadata: its values come out in
    /// the current format, version 1 at the snapshot's index; catalogue records as they are.
    #[test]
    fn snapshots_from_before_metadata_are_converted_as_they_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let cat = crate::catalogue::key("g1");
        let path = write_file(dir.path(), &[(b"k", b"old"), (&cat, b"entry")]);
        let mut bytes = fs::read(&path).unwrap();
        bytes[..MAGIC.len()].copy_from_slice(MAGIC_LEGACY);
        fs::write(&path, &bytes).unwrap();
        verify(&path).expect("a legacy file verifies");
        let mut r = Reader::open(&path).unwrap();
        let (k, v) = r.next_record().unwrap().unwrap();
        assert_eq!(k, b"k");
        let (meta, value) = crate::kv::decode(&v).unwrap();
        assert_eq!((meta.version, meta.mod_index, value), (1, 0, &b"old"[..]));
        assert_eq!(r.next_record().unwrap(), Some((cat, b"entry".to_vec())));
        assert_eq!(r.next_record().unwrap(), None);
    }

    #[test]
    fn snapshot_ids_from_the_network_never_become_paths() {
        assert!(check_id("7-1234-1700000000000").is_ok());
        for bad in [
            "",
            "../x",
            "/etc/passwd",
            "a/b",
            "..",
            "a.b",
            "x\0",
            &"9".repeat(65),
        ] {
            assert!(check_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn round_trip_and_corruption_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), &[(b"a", b"1"), (b"b/c", b"")]);
        verify(&path).expect("valid file verifies");
        let mut r = Reader::open(&path).unwrap();
        assert_eq!(
            r.next_record().unwrap(),
            Some((b"a".to_vec(), b"1".to_vec()))
        );
        assert_eq!(r.next_record().unwrap(), Some((b"b/c".to_vec(), vec![])));
        assert_eq!(r.next_record().unwrap(), None);

        // Flip one byte of a value: the checksum catches it.
        let mut bytes = fs::read(&path).unwrap();
        // From the end: crc 4, count 8, END 4, then record (b"b/c", "") 4+3+4, then "1".
        let at = bytes.len() - 4 - 8 - 4 - (4 + 3 + 4) - 1;
        assert_eq!(bytes[at], b'1');
        bytes[at] = b'2';
        fs::write(&path, &bytes).unwrap();
        assert!(verify(&path).is_err());

        // A truncated file fails too.
        let path = write_file(dir.path(), &[(b"a", b"1")]);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        assert!(verify(&path).is_err());
    }
}
