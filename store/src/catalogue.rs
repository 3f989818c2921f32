//! The group catalogue: which Raft groups exist besides the default one, and which nodes
//! host each. It lives in the default group's state machine, so every node of the cluster
//! holds the same catalogue at the same log index, and it travels in the default group's
//! snapshots like any data.
//!
//! Entries are stored in the default group's `data` family under keys that start with
//! byte `0xff`. No client key can: client keys are UTF-8, and UTF-8 never contains that
//! byte. So client reads, writes and backups never see an entry, and a snapshot file (which
//! holds the whole family) carries the catalogue with it.
//!
//! The catalogue says what should run; each node's host (`node.rs`) compares it with the
//! groups it runs after every change (`Changes`) and starts or stops its own.

use std::collections::BTreeMap;
use std::io;

use tokio::sync::watch;

use crate::db::Family;
use crate::db::Keyspace;
use crate::types::GroupEntry;

/// The first byte of every catalogue key (never in UTF-8, so never in a client key).
const PREFIX: &[u8] = b"\xffgroup/";
/// Just past every catalogue key: `PREFIX` with its last byte incremented.
#[cfg(test)]
const END: &[u8] = b"\xffgroup0";
/// Every catalogue key is in this range.
#[cfg(test)]
const RANGE: (&[u8], &[u8]) = (PREFIX, END);

/// The most groups a cluster may have (each runs its own Raft on its members).
pub const MAX_GROUPS: usize = 1024;

/// The key of `group`'s entry.
pub(crate) fn key(group: &str) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(group.as_bytes());
    k
}

/// Whether `k` is a catalogue key, or another key that is no client's data (the change
/// history and leases also start with `0xFF`).
pub(crate) fn is_catalogue_key(k: &[u8]) -> bool {
    k.first() == Some(&0xff)
}

/// An entry as stored (JSON: small, and readable with `ldb` when debugging).
pub(crate) fn encode_entry(e: &GroupEntry) -> io::Result<Vec<u8>> {
    serde_json::to_vec(e).map_err(io::Error::other)
}

/// Every entry of the catalogue in `ks` (the default group's keyspace), by group id.
pub(crate) fn read(ks: &Keyspace) -> io::Result<BTreeMap<String, GroupEntry>> {
    let cf = ks.cf(Family::Data);
    let mut out = BTreeMap::new();
    let mode = rocksdb::IteratorMode::From(PREFIX, rocksdb::Direction::Forward);
    for item in ks.db().iterator_cf(&cf, mode) {
        let (k, v) = item.map_err(io::Error::other)?;
        if !k.starts_with(PREFIX) {
            break;
        }
        let id = String::from_utf8_lossy(&k[PREFIX.len()..]).into_owned();
        let entry: GroupEntry = serde_json::from_slice(&v)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        out.insert(id, entry);
    }
    Ok(out)
}

/// Tells the host that the catalogue may have changed: a counter bumped after every apply
/// that touched it and after every snapshot install (which replaces it).
#[derive(Clone)]
pub(crate) struct Changes(watch::Sender<u64>);

impl Default for Changes {
    fn default() -> Self {
        Changes(watch::Sender::new(0))
    }
}

impl Changes {
    pub(crate) fn bump(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_keys_sort_after_every_client_key_and_inside_their_range() {
        let k = key("g2");
        assert!(is_catalogue_key(&k));
        assert!(k.as_slice() >= RANGE.0 && k.as_slice() < RANGE.1);
        // The largest UTF-8 character sorts below the prefix.
        assert!("\u{10FFFF}".as_bytes() < PREFIX);
        assert!(!is_catalogue_key("zz".as_bytes()));
        for id in ["a", "Z", "0", "-", "_", &"x".repeat(64)] {
            let k = key(id);
            assert!(k.as_slice() < RANGE.1, "{id}");
        }
    }
}
