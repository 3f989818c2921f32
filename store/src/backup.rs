//! Backups: a consistent point-in-time image of the applied key-value state, for
//! `GET /backup`, and reading one back, for `hraftd restore`.
//!
//! A backup is a snapshot file (the format of `snapshot.rs`, CRC-checked end to end)
//! written from one RocksDB snapshot, so it is exactly the state at one applied index.
//! It is built into a private temporary directory and handed out as an open, already
//! unlinked file: a client that disconnects halfway leaves nothing behind on disk.

use std::fs::File;
use std::io;
use std::path::Path;

use crate::error::Error;
use crate::error::Result;
use crate::snapshot;

/// A backup ready to be streamed.
#[derive(Debug)]
pub struct Backup {
    /// The backup file, open at its start; no longer linked into the file system.
    pub file: File,
    /// Its length in bytes.
    pub bytes: u64,
    /// The log index the image was taken at (everything applied up to it, nothing after).
    pub applied_index: u64,
    /// How many keys it holds.
    pub keys: u64,
}

/// What a backup file holds, from [`verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupInfo {
    pub applied_index: u64,
    pub keys: u64,
}

/// Turns the built image of `snapshot::build` into a [`Backup`]: opens the file and unlinks it.
pub(crate) fn handed_out(path: &Path, applied_index: u64, keys: u64) -> io::Result<Backup> {
    let file = File::open(path)?;
    std::fs::remove_file(path)?;
    let bytes = file.metadata()?.len();
    Ok(Backup {
        file,
        bytes,
        applied_index,
        keys,
    })
}

fn bad_file(path: &Path, e: io::Error) -> Error {
    Error::Invalid(format!(
        "{} is not a valid hraftd backup: {e}",
        path.display()
    ))
}

/// Reads a whole backup file, checking its structure, record count and checksum.
///
/// `keys` counts client keys only: the file also holds the catalogue, the change history
/// and leases (keys past `0xFF`), which a restore leaves out.
pub fn verify(path: &Path) -> Result<BackupInfo> {
    let mut r = snapshot::Reader::open(path).map_err(|e| bad_file(path, e))?;
    let mut keys = 0u64;
    while let Some((k, _)) = r.next_record().map_err(|e| bad_file(path, e))? {
        keys += u64::from(!crate::catalogue::is_catalogue_key(&k));
    }
    let meta = r.meta;
    Ok(BackupInfo {
        applied_index: meta.last_log_id.map(|l| l.index).unwrap_or(0),
        keys,
    })
}

/// Reads a backup's key-value pairs in key order, a bounded chunk at a time.
pub struct BackupReader {
    r: snapshot::Reader,
    /// The trailer has been read (and checked): there is nothing more.
    done: bool,
}

impl BackupReader {
    pub fn open(path: &Path) -> Result<BackupReader> {
        let r = snapshot::Reader::open(path).map_err(|e| bad_file(path, e))?;
        Ok(BackupReader { r, done: false })
    }

    /// The next pairs, up to about `max_bytes` of keys and values; empty at the end.
    pub fn next_chunk(&mut self, max_bytes: usize) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        let mut size = 0;
        while size < max_bytes && !self.done {
            let Some((k, v)) = self
                .r
                .next_record()
                .map_err(|e| Error::io("reading the backup", e))?
            else {
                self.done = true;
                break;
            };
            // The group catalogue is the cluster's topology, not data: never restored.
            if crate::catalogue::is_catalogue_key(&k) {
                continue;
            }
            size += k.len() + v.len();
            // Restored values start again at version 1, created at the restore's index:
            // a restored cluster has a log of its own.
            let (_, v) = crate::kv::decode(&v).map_err(|e| Error::io("reading the backup", e))?;
            let text = |b: &[u8]| {
                String::from_utf8(b.to_vec()).map_err(|_| {
                    Error::Invalid("backup holds a key or value that is not UTF-8".into())
                })
            };
            out.push((text(&k)?, text(v)?));
        }
        Ok(out)
    }
}
