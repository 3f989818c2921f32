//! The key-value model on top of RocksDB: how a value and its metadata are stored, and
//! how client operations (sets, deletes, compare-and-set, prefix deletes, transactions)
//! are applied to it.
//!
//! A stored value is `0xFF | version | create_index | mod_index | value` (the numbers u64
//! big-endian), or, for a key attached to a lease, `0xFE | version | create_index |
//! mod_index | lease | value`. Neither byte ever begins valid UTF-8, so a value written
//! before metadata existed (plain UTF-8) is told apart and converted ([`legacy`]) wherever
//! one can still appear: an old data directory at start-up, an old snapshot file or backup.
//!
//! Leases live in the same family, past every client key: `0xFF l / id` holds a lease's
//! [`LeaseInfo`], `0xFF k / id / key` marks a key attached to it (so revoking finds its
//! keys without a scan), and `0xFF lnext` the next lease id. Snapshots carry them all.
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
use crate::types::LeaseInfo;
use crate::types::Op;
use crate::types::Outcome;
use crate::types::Target;
use crate::types::Txn;
use crate::types::TxnOp;
use crate::types::TxnResult;
use crate::watch::Change;

/// The first byte of every stored value without a lease.
const TAG: u8 = 0xff;
const HEADER: usize = 1 + 3 * 8;
/// The first byte of a stored value attached to a lease (one more number: the lease).
const TAG_LEASED: u8 = 0xfe;
const HEADER_LEASED: usize = HEADER + 8;
const LEASE_PREFIX: &[u8] = b"\xffl/";
const LEASE_END: &[u8] = b"\xffl0";
const ATTACH_PREFIX: &[u8] = b"\xffk/";
const NEXT_LEASE: &[u8] = b"\xfflnext";
/// Just past every user key: keys are UTF-8, which never holds the byte `0xFF`.
pub(crate) const USER_END: &[u8] = b"\xff";

/// A value and its metadata as stored.
pub(crate) fn encode(meta: &KeyMeta, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEASED + value.len());
    out.push(if meta.lease == 0 { TAG } else { TAG_LEASED });
    out.extend_from_slice(&meta.version.to_be_bytes());
    out.extend_from_slice(&meta.create_index.to_be_bytes());
    out.extend_from_slice(&meta.mod_index.to_be_bytes());
    if meta.lease != 0 {
        out.extend_from_slice(&meta.lease.to_be_bytes());
    }
    out.extend_from_slice(value);
    out
}

/// Splits a stored value into its metadata and value; an error for anything [`encode`]
/// did not write (a legacy value must have been converted before it is read).
pub(crate) fn decode(stored: &[u8]) -> io::Result<(KeyMeta, &[u8])> {
    let header = match stored.first() {
        Some(&TAG) => HEADER,
        Some(&TAG_LEASED) => HEADER_LEASED,
        _ => 0,
    };
    if header == 0 || stored.len() < header {
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
            lease: if header == HEADER_LEASED { n(3) } else { 0 },
        },
        &stored[header..],
    ))
}

/// Whether `stored` was written before values had metadata (plain UTF-8, no header).
pub(crate) fn is_legacy(stored: &[u8]) -> bool {
    !matches!(stored.first(), Some(&TAG) | Some(&TAG_LEASED))
}

fn lease_key(id: u64) -> Vec<u8> {
    let mut k = LEASE_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn attach_key(id: u64, key: &str) -> Vec<u8> {
    let mut k = ATTACH_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Every lease in a group's data family, by id.
pub(crate) fn read_leases(
    db: &Db,
    data: &impl rocksdb::AsColumnFamilyRef,
) -> io::Result<BTreeMap<u64, LeaseInfo>> {
    let mut out = BTreeMap::new();
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(LEASE_END.to_vec());
    let mode = rocksdb::IteratorMode::From(LEASE_PREFIX, rocksdb::Direction::Forward);
    for item in db.iterator_cf_opt(data, opts, mode) {
        let (k, v) = item.map_err(io::Error::other)?;
        let id = k
            .get(LEASE_PREFIX.len()..)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| invalid("bad lease key"))?;
        out.insert(id, crate::types::decode(&v)?);
    }
    Ok(out)
}

/// The keys attached to lease `id` in `snap`, in order, at most `limit`; and whether more
/// follow.
pub(crate) fn lease_keys(
    snap: &crate::db::DbSnapshot<'_>,
    data: &impl rocksdb::AsColumnFamilyRef,
    id: u64,
    limit: usize,
) -> io::Result<(Vec<String>, bool)> {
    let prefix = attach_key(id, "");
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(prefix_end(&prefix));
    let mut it = snap.raw_iterator_cf_opt(data, opts);
    it.seek(&prefix);
    let mut keys = Vec::new();
    while let Some(k) = it.key() {
        if keys.len() == limit {
            return Ok((keys, true));
        }
        let key = String::from_utf8(k[prefix.len()..].to_vec())
            .map_err(|_| invalid("key is not UTF-8"))?;
        keys.push(key);
        it.next();
    }
    it.status().map_err(io::Error::other)?;
    Ok((keys, false))
}

/// A legacy value in the current format: version 1, created and changed at `index` (the
/// index of the snapshot, backup or data directory it comes from).
pub(crate) fn legacy(value: &[u8], index: u64) -> Vec<u8> {
    let meta = KeyMeta {
        create_index: index,
        mod_index: index,
        version: 1,
        lease: 0,
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

/// Leases an `apply` call granted (`Some`) or revoked (`None`), by id.
pub(crate) type LeaseChanges = BTreeMap<u64, Option<LeaseInfo>>;

/// Applies the client operations of one `apply` call (see the module docs).
pub(crate) struct Applier<'a> {
    db: &'a Db,
    data: &'a std::sync::Arc<rocksdb::BoundColumnFamily<'a>>,
    /// Changes made in this call and not yet in RocksDB: key -> value and metadata, or
    /// `None` where it was deleted.
    pending: BTreeMap<String, Option<(KeyMeta, String)>>,
    /// What the current entry changed, per key (its last change to each), for watchers.
    entry: BTreeMap<String, Change>,
    /// What the entries before it changed, in index order, then key order.
    changes: Vec<Change>,
    /// Leases granted (`Some`) or revoked (`None`) in this call.
    leases: LeaseChanges,
    /// Keys attached to (`true`) or detached from (`false`) a lease in this call.
    attached: BTreeMap<(u64, String), bool>,
    /// The next lease id, once this call has granted one.
    next_lease: Option<u64>,
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
            entry: BTreeMap::new(),
            changes: Vec::new(),
            leases: BTreeMap::new(),
            attached: BTreeMap::new(),
            next_lease: None,
        }
    }

    /// Lease `id` as this call has left it so far.
    fn lease(&self, id: u64) -> io::Result<Option<LeaseInfo>> {
        if let Some(l) = self.leases.get(&id) {
            return Ok(*l);
        }
        match self
            .db
            .get_pinned_cf(self.data, lease_key(id))
            .map_err(io::Error::other)?
        {
            None => Ok(None),
            Some(v) => crate::types::decode(&v).map(Some),
        }
    }

    /// Grants a lease of `ttl_ms` at `index`; returns its id.
    fn grant(&mut self, ttl_ms: u64, index: u64) -> io::Result<u64> {
        let id = match self.next_lease {
            Some(n) => n,
            None => match self
                .db
                .get_pinned_cf(self.data, NEXT_LEASE)
                .map_err(io::Error::other)?
            {
                Some(v) => crate::types::decode(&v)?,
                None => 1,
            },
        };
        self.next_lease = Some(id + 1);
        self.leases.insert(
            id,
            Some(LeaseInfo {
                ttl_ms,
                granted: index,
            }),
        );
        Ok(id)
    }

    /// Revokes lease `id` and deletes its keys at `index`; `None` if there is no such lease.
    fn revoke(&mut self, id: u64, index: u64) -> io::Result<Option<u64>> {
        if self.lease(id)?.is_none() {
            return Ok(None);
        }
        let prefix = attach_key(id, "");
        let mut keys = std::collections::BTreeSet::new();
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(prefix_end(&prefix));
        let mode = rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward);
        for item in self.db.iterator_cf_opt(self.data, opts, mode) {
            let (k, _) = item.map_err(io::Error::other)?;
            let key = String::from_utf8(k[prefix.len()..].to_vec())
                .map_err(|_| invalid("key is not UTF-8"))?;
            keys.insert(key);
        }
        for ((l, key), on) in &self.attached {
            if *l == id {
                if *on {
                    keys.insert(key.clone());
                } else {
                    keys.remove(key);
                }
            }
        }
        let mut count = 0;
        for key in keys {
            if self.delete(key, index)? {
                count += 1;
            }
        }
        self.leases.insert(id, None);
        Ok(Some(count))
    }

    /// Moves `key`'s attachment from lease `from` to lease `to` (0: none).
    fn reattach(&mut self, key: &str, from: u64, to: u64) {
        if from == to {
            return;
        }
        if from != 0 {
            self.attached.insert((from, key.to_string()), false);
        }
        if to != 0 {
            self.attached.insert((to, key.to_string()), true);
        }
    }

    /// Records that `key` now holds `now` (`None`: it was deleted) at `index`.
    fn set_pending(&mut self, key: String, now: Option<(KeyMeta, String)>, index: u64) {
        let change = match &now {
            Some((meta, value)) => Change {
                key: key.clone(),
                value: Some(value.clone()),
                meta: *meta,
            },
            None => Change {
                key: key.clone(),
                value: None,
                meta: KeyMeta {
                    mod_index: index,
                    ..KeyMeta::default()
                },
            },
        };
        self.entry.insert(key.clone(), change);
        self.pending.insert(key, now);
    }

    /// Ends the current entry: its changes join those of the call.
    pub(crate) fn end_entry(&mut self) {
        let entry = std::mem::take(&mut self.entry);
        self.changes.extend(entry.into_values());
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
        self.put_over(key, value, index, current, 0);
        Ok(())
    }

    /// Sets `key`, whose metadata is `current` (`None`: it does not exist), at `index`,
    /// attached to `lease` (0: none; a put without a lease detaches the key, as in etcd).
    fn put_over(
        &mut self,
        key: String,
        value: String,
        index: u64,
        current: Option<KeyMeta>,
        lease: u64,
    ) {
        let meta = match current {
            Some(m) => KeyMeta {
                create_index: m.create_index,
                mod_index: index,
                version: m.version + 1,
                lease,
            },
            None => KeyMeta {
                create_index: index,
                mod_index: index,
                version: 1,
                lease,
            },
        };
        self.reattach(&key, current.map_or(0, |m| m.lease), lease);
        self.set_pending(key, Some((meta, value)), index);
    }

    /// Deletes `key` at `index`; says whether it existed.
    fn delete(&mut self, key: String, index: u64) -> io::Result<bool> {
        let Some((meta, _)) = self.current(&key)? else {
            return Ok(false);
        };
        self.remove(key, meta.lease, index);
        Ok(true)
    }

    /// Deletes `key`, which exists attached to `lease`, at `index`.
    fn remove(&mut self, key: String, lease: u64, index: u64) {
        self.reattach(&key, lease, 0);
        self.set_pending(key, None, index);
    }

    /// Deletes every key under `prefix` at `index`; says how many there were.
    fn delete_prefix(&mut self, prefix: &str, index: u64) -> io::Result<u64> {
        let end = prefix_end(prefix.as_bytes());
        let mut keys = Vec::new();
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(end.clone());
        let mode = rocksdb::IteratorMode::From(prefix.as_bytes(), rocksdb::Direction::Forward);
        for item in self.db.iterator_cf_opt(self.data, opts, mode) {
            let (k, v) = item.map_err(io::Error::other)?;
            let k = String::from_utf8(k.into_vec())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "key is not UTF-8"))?;
            if !self.pending.contains_key(&k) {
                keys.push((k, decode(&v)?.0.lease));
            }
        }
        // What this call set under the prefix (its deletes are already not there).
        for (k, v) in self.pending.range(prefix.to_string()..) {
            if !k.starts_with(prefix) {
                break;
            }
            if let Some((meta, _)) = v {
                keys.push((k.clone(), meta.lease));
            }
        }
        let count = keys.len() as u64;
        for (k, lease) in keys {
            self.remove(k, lease, index);
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
        for op in &branch {
            if let TxnOp::PutLease { lease, .. } = op {
                if *lease != 0 && self.lease(*lease)?.is_none() {
                    return Ok(Outcome::NoLease { id: *lease });
                }
            }
        }
        let mut results = Vec::with_capacity(branch.len());
        for op in branch {
            results.push(match op {
                TxnOp::Put { key, value } => {
                    self.put(key.clone(), value, index)?;
                    TxnResult::Put { key }
                }
                TxnOp::Delete { key } => {
                    let count = u64::from(self.delete(key.clone(), index)?);
                    TxnResult::Deleted { key, count }
                }
                TxnOp::DeletePrefix { prefix } => TxnResult::DeletedPrefix {
                    count: self.delete_prefix(&prefix, index)?,
                    prefix,
                },
                TxnOp::Get { key } => TxnResult::Get {
                    kv: self.current_kv(&key)?,
                    key,
                },
                TxnOp::PutLease { key, value, lease } => {
                    let current = self.current(&key)?.map(|(m, _)| m);
                    self.put_over(key.clone(), value, index, current, lease);
                    TxnResult::Put { key }
                }
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
                self.delete(key, index)?;
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
                    (Some(v), _) => self.put_over(key, v, index, meta, 0),
                    (None, Some(m)) => self.remove(key, m.lease, index),
                    (None, None) => {}
                }
                Outcome::Done
            }
            Op::Put {
                key,
                value,
                lease,
                ttl_ms,
                expect,
            } => {
                let cur = self.current_kv(&key)?;
                let meta = cur.as_ref().map(|kv| kv.meta);
                if expect.is_some_and(|e| meta.map_or(0, |m| m.mod_index) != e) {
                    return Ok(Outcome::CasFailed { current: cur });
                }
                if lease != 0 && self.lease(lease)?.is_none() {
                    return Ok(Outcome::NoLease { id: lease });
                }
                if ttl_ms > 0 {
                    let id = self.grant(ttl_ms, index)?;
                    self.put_over(key, value, index, meta, id);
                    return Ok(Outcome::LeaseGranted { id });
                }
                self.put_over(key, value, index, meta, lease);
                Outcome::Done
            }
            Op::LeaseGrant { ttl_ms } => Outcome::LeaseGranted {
                id: self.grant(ttl_ms, index)?,
            },
            Op::LeaseRevoke { id } => match self.revoke(id, index)? {
                Some(count) => Outcome::Deleted { count },
                None => Outcome::NoLease { id },
            },
            Op::DeletePrefix { prefix } => Outcome::Deleted {
                count: self.delete_prefix(&prefix, index)?,
            },
            Op::Txn(txn) => self.txn(txn, index)?,
            Op::NestedBatch(never) => match never {},
        })
    }

    /// Adds this call's changes to `batch`; returns them, entry by entry, for the change
    /// history and watchers, and the leases granted or revoked.
    pub(crate) fn finish(
        mut self,
        batch: &mut WriteBatch,
    ) -> io::Result<(Vec<Change>, LeaseChanges)> {
        self.end_entry();
        for ((id, key), on) in &self.attached {
            let k = attach_key(*id, key);
            if *on {
                batch.put_cf(self.data, k, b"");
            } else {
                batch.delete_cf(self.data, k);
            }
        }
        for (id, l) in &self.leases {
            match l {
                Some(info) => batch.put_cf(self.data, lease_key(*id), crate::types::encode(info)?),
                None => batch.delete_cf(self.data, lease_key(*id)),
            }
        }
        if let Some(n) = self.next_lease {
            batch.put_cf(self.data, NEXT_LEASE, crate::types::encode(&n)?);
        }
        for (k, v) in self.pending {
            match v {
                Some((meta, value)) => {
                    batch.put_cf(self.data, k.as_bytes(), encode(&meta, value.as_bytes()))
                }
                None => batch.delete_cf(self.data, k.as_bytes()),
            }
        }
        Ok((self.changes, self.leases))
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
            lease: 0,
        };
        let s = encode(&m, "héllo".as_bytes());
        assert!(!is_legacy(&s));
        let (got, v) = decode(&s).unwrap();
        assert_eq!(got, m);
        assert_eq!(v, "héllo".as_bytes());
        // With a lease: one more number, told apart by its first byte.
        let leased = KeyMeta { lease: 77, ..m };
        let s = encode(&leased, b"v");
        assert!(!is_legacy(&s));
        assert_eq!(decode(&s).unwrap(), (leased, &b"v"[..]));
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
