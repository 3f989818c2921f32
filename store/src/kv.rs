//! The key-value model on top of RocksDB: how a value and its metadata are stored, and
//! how client operations (sets, deletes, compare-and-set, prefix deletes, transactions)
//! are applied to it.
//!
//! A stored value is `0xFF | version | create_index | mod_index | value` (the numbers u64
//! big-endian). `0xFF` never begins valid UTF-8, so a value written before metadata
//! existed (plain UTF-8) is told apart and converted ([`legacy`]) wherever one can still
//! appear: an old data directory at start-up, an old snapshot file or backup.
//!
//! [`Applier`] applies the operations of one `apply` call. Every operation reads the
//! current state (to keep versions and check compares), and must see what earlier
//! operations of the same call did, which is not in RocksDB yet: the call's changes are
//! held in `pending` and written with `last_applied` in one batch at the end. Metadata is
//! derived from log indexes only, so every node computes the same.

use std::collections::BTreeMap;
use std::io;

use rocksdb::WriteBatch;

use crate::db::Db;
use crate::types::CmpOp;
use crate::types::Compare;
use crate::types::KeyMeta;
use crate::types::KeyValue;
use crate::types::Op;
use crate::types::Outcome;
use crate::types::Target;
use crate::types::Txn;
use crate::types::TxnOp;
use crate::types::TxnResult;

/// The first byte of every stored value.
const TAG: u8 = 0xff;
const HEADER: usize = 1 + 3 * 8;
/// Just past every user key: keys are UTF-8, which never holds the byte `0xFF`.
pub(crate) const USER_END: &[u8] = b"\xff";

/// A value and its metadata as stored.
pub(crate) fn encode(meta: &KeyMeta, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + value.len());
    out.push(TAG);
    out.extend_from_slice(&meta.version.to_be_bytes());
    out.extend_from_slice(&meta.create_index.to_be_bytes());
    out.extend_from_slice(&meta.mod_index.to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// Splits a stored value into its metadata and value; an error for anything [`encode`]
/// did not write (a legacy value must have been converted before it is read).
pub(crate) fn decode(stored: &[u8]) -> io::Result<(KeyMeta, &[u8])> {
    if stored.len() < HEADER || stored[0] != TAG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "stored value has no metadata header",
        ));
    }
    let n = |i: usize| u64::from_be_bytes(stored[1 + 8 * i..9 + 8 * i].try_into().unwrap());
    Ok((
        KeyMeta {
            version: n(0),
            create_index: n(1),
            mod_index: n(2),
        },
        &stored[HEADER..],
    ))
}

/// Whether `stored` was written before values had metadata (plain UTF-8, no header).
pub(crate) fn is_legacy(stored: &[u8]) -> bool {
    stored.first() != Some(&TAG)
}

/// A legacy value in the current format: version 1, created and changed at `index` (the
/// index of the snapshot, backup or data directory it comes from).
pub(crate) fn legacy(value: &[u8], index: u64) -> Vec<u8> {
    let meta = KeyMeta {
        create_index: index,
        mod_index: index,
        version: 1,
    };
    encode(&meta, value)
}

/// A decoded value as a client sees it.
pub(crate) fn key_value(key: &[u8], stored: &[u8], with_value: bool) -> io::Result<KeyValue> {
    let (meta, v) = decode(stored)?;
    let text = |b: &[u8]| {
        String::from_utf8(b.to_vec())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "stored text is not UTF-8"))
    };
    Ok(KeyValue {
        key: text(key)?,
        value: if with_value { text(v)? } else { String::new() },
        meta,
    })
}

/// The first key after every key that starts with `prefix` (`None`: the end of the user
/// keys).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    USER_END.to_vec()
}

/// Applies the client operations of one `apply` call (see the module docs).
pub(crate) struct Applier<'a> {
    db: &'a Db,
    data: &'a std::sync::Arc<rocksdb::BoundColumnFamily<'a>>,
    /// Changes made in this call and not yet in RocksDB: key -> value and metadata, or
    /// `None` where it was deleted.
    pending: BTreeMap<String, Option<(KeyMeta, String)>>,
}

impl<'a> Applier<'a> {
    pub(crate) fn new(
        db: &'a Db,
        data: &'a std::sync::Arc<rocksdb::BoundColumnFamily<'a>>,
    ) -> Self {
        Applier {
            db,
            data,
            pending: BTreeMap::new(),
        }
    }

    /// `key`'s current value and metadata, as this call has left it so far.
    fn current(&self, key: &str) -> io::Result<Option<(KeyMeta, String)>> {
        if let Some(p) = self.pending.get(key) {
            return Ok(p.clone());
        }
        let Some(stored) = self
            .db
            .get_pinned_cf(self.data, key.as_bytes())
            .map_err(io::Error::other)?
        else {
            return Ok(None);
        };
        let (meta, v) = decode(&stored)?;
        Ok(Some((meta, String::from_utf8_lossy(v).into_owned())))
    }

    fn current_kv(&self, key: &str) -> io::Result<Option<KeyValue>> {
        Ok(self.current(key)?.map(|(meta, value)| KeyValue {
            key: key.to_string(),
            value,
            meta,
        }))
    }

    fn put(&mut self, key: String, value: String, index: u64) -> io::Result<()> {
        let current = self.current(&key)?.map(|(m, _)| m);
        self.put_over(key, value, index, current);
        Ok(())
    }

    /// Sets `key`, whose metadata is `current` (`None`: it does not exist), at `index`.
    fn put_over(&mut self, key: String, value: String, index: u64, current: Option<KeyMeta>) {
        let meta = match current {
            Some(m) => KeyMeta {
                create_index: m.create_index,
                mod_index: index,
                version: m.version + 1,
            },
            None => KeyMeta {
                create_index: index,
                mod_index: index,
                version: 1,
            },
        };
        self.pending.insert(key, Some((meta, value)));
    }

    /// Deletes `key`; says whether it existed.
    fn delete(&mut self, key: String) -> io::Result<bool> {
        let existed = self.current(&key)?.is_some();
        if existed {
            self.pending.insert(key, None);
        }
        Ok(existed)
    }

    /// Deletes every key under `prefix`; says how many there were.
    fn delete_prefix(&mut self, prefix: &str) -> io::Result<u64> {
        let end = prefix_end(prefix.as_bytes());
        let mut keys = Vec::new();
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(end.clone());
        let mode = rocksdb::IteratorMode::From(prefix.as_bytes(), rocksdb::Direction::Forward);
        for item in self.db.iterator_cf_opt(self.data, opts, mode) {
            let (k, _) = item.map_err(io::Error::other)?;
            let k = String::from_utf8(k.into_vec())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "key is not UTF-8"))?;
            if !self.pending.contains_key(&k) {
                keys.push(k);
            }
        }
        // What this call set under the prefix (its deletes are already not there).
        for (k, v) in self.pending.range(prefix.to_string()..) {
            if !k.starts_with(prefix) {
                break;
            }
            if v.is_some() {
                keys.push(k.clone());
            }
        }
        let count = keys.len() as u64;
        for k in keys {
            self.pending.insert(k, None);
        }
        Ok(count)
    }

    fn holds(&self, c: &Compare) -> io::Result<bool> {
        let cur = self.current(&c.key)?;
        let meta = cur.as_ref().map(|(m, _)| *m).unwrap_or_default();
        let ord = |a: u64, b: u64| match c.op {
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
            CmpOp::Lt => a < b,
            CmpOp::Gt => a > b,
        };
        Ok(match &c.target {
            Target::Value(want) => match &cur {
                None => false,
                Some((_, v)) => match c.op {
                    CmpOp::Eq => v == want,
                    CmpOp::Ne => v != want,
                    CmpOp::Lt => v.as_bytes() < want.as_bytes(),
                    CmpOp::Gt => v.as_bytes() > want.as_bytes(),
                },
            },
            Target::Version(n) => ord(meta.version, *n),
            Target::ModIndex(n) => ord(meta.mod_index, *n),
            Target::CreateIndex(n) => ord(meta.create_index, *n),
            Target::Exists(want) => match c.op {
                CmpOp::Ne => cur.is_some() != *want,
                _ => cur.is_some() == *want,
            },
        })
    }

    fn txn(&mut self, txn: Txn, index: u64) -> io::Result<Outcome> {
        let mut succeeded = true;
        for c in &txn.compare {
            if !self.holds(c)? {
                succeeded = false;
                break;
            }
        }
        let branch = if succeeded { txn.success } else { txn.failure };
        let mut results = Vec::with_capacity(branch.len());
        for op in branch {
            results.push(match op {
                TxnOp::Put { key, value } => {
                    self.put(key.clone(), value, index)?;
                    TxnResult::Put { key }
                }
                TxnOp::Delete { key } => {
                    let count = u64::from(self.delete(key.clone())?);
                    TxnResult::Deleted { key, count }
                }
                TxnOp::DeletePrefix { prefix } => TxnResult::DeletedPrefix {
                    count: self.delete_prefix(&prefix)?,
                    prefix,
                },
                TxnOp::Get { key } => TxnResult::Get {
                    kv: self.current_kv(&key)?,
                    key,
                },
            });
        }
        Ok(Outcome::Txn { succeeded, results })
    }

    /// Applies `op`, part of the entry at log `index`.
    pub(crate) fn apply(&mut self, op: Op, index: u64) -> io::Result<Outcome> {
        Ok(match op {
            Op::Set { pairs } => {
                for (k, v) in pairs {
                    self.put(k, v, index)?;
                }
                Outcome::Done
            }
            Op::Delete { key } => {
                self.delete(key)?;
                Outcome::Done
            }
            Op::Cas { key, value, expect } => {
                let cur = self.current_kv(&key)?;
                let meta = cur.as_ref().map(|kv| kv.meta);
                if meta.map(|m| m.mod_index).unwrap_or(0) != expect {
                    return Ok(Outcome::CasFailed { current: cur });
                }
                // The key was just read: set or delete it without reading it again.
                match (value, meta) {
                    (Some(v), _) => self.put_over(key, v, index, meta),
                    (None, Some(_)) => {
                        self.pending.insert(key, None);
                    }
                    (None, None) => {}
                }
                Outcome::Done
            }
            Op::DeletePrefix { prefix } => Outcome::Deleted {
                count: self.delete_prefix(&prefix)?,
            },
            Op::Txn(txn) => self.txn(txn, index)?,
            Op::NestedBatch(never) => match never {},
        })
    }

    /// Adds this call's changes to `batch`.
    pub(crate) fn finish(self, batch: &mut WriteBatch) {
        for (k, v) in self.pending {
            match v {
                Some((meta, value)) => {
                    batch.put_cf(self.data, k.as_bytes(), encode(&meta, value.as_bytes()))
                }
                None => batch.delete_cf(self.data, k.as_bytes()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_legacy_ones_are_told_apart() {
        let m = KeyMeta {
            create_index: 3,
            mod_index: 9,
            version: 4,
        };
        let s = encode(&m, "héllo".as_bytes());
        assert!(!is_legacy(&s));
        let (got, v) = decode(&s).unwrap();
        assert_eq!(got, m);
        assert_eq!(v, "héllo".as_bytes());
        // Every UTF-8 string is legacy, the empty one included; none decodes as current.
        for old in ["", "x", "\u{10ffff}", "ÿ"] {
            assert!(is_legacy(old.as_bytes()), "{old:?}");
            assert!(decode(old.as_bytes()).is_err());
            let converted = legacy(old.as_bytes(), 7);
            let (m, v) = decode(&converted).unwrap();
            assert_eq!((m.version, m.create_index, m.mod_index), (1, 7, 7));
            assert_eq!(v, old.as_bytes());
        }
    }

    #[test]
    fn prefix_ends_cover_exactly_the_prefix() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b""), USER_END.to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        let end = prefix_end("é".as_bytes());
        assert!("é/x".as_bytes() < end.as_slice() && "ê".as_bytes() >= end.as_slice());
    }
}
