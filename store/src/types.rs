//! The openraft type configuration and the values that travel through the Raft log.
//!
//! Everything here is serialized into the log and onto the wire, so changing a type is a
//! change of the on-disk and peer formats.

use std::fmt;
use std::io;

use serde::Deserialize;
use serde::Serialize;

/// openraft's numeric node id. Users only ever see a member's string id ([`Node::id`],
/// `-id`); this number is derived from it with [`raft_id_for`] so that every member
/// computes the same number for the same id.
pub type NodeId = u64;

/// What the cluster knows about one member: its user-facing id (`-id`; `"id"` in the
/// HTTP API's `NodeInfo`) and the addresses it advertises to peers (`raft_addr`) and to
/// clients (`http_addr`).
///
/// The field `id` was once called `name`, and it keeps that name in serde: the log and the
/// peer frames are bincode (positional, names do not matter), but a snapshot file's header
/// (its membership among it) is JSON, and every snapshot and backup written before the
/// rename says `"name"`. Renaming it there would make those unreadable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    #[serde(rename = "name")]
    pub id: String,
    pub raft_addr: String,
    pub http_addr: String,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (raft {}, http {})",
            self.id, self.raft_addr, self.http_addr
        )
    }
}

/// One client operation.
///
/// New variants go last: the numbers of the earlier ones are in every log and snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Set one or more keys; all pairs become visible together.
    Set { pairs: Vec<(String, String)> },
    /// Delete a key; deleting a missing key is not an error.
    Delete { key: String },
    /// Never decodes: variant 2 is where a batch nested inside a batch would be (the old
    /// recursive `Batch` was variant 2 of the command), and a batch never holds a batch.
    /// Kept so that such a frame is refused as malformed rather than read as another op.
    NestedBatch(Never),
    /// Compare-and-set: sets `key` to `value` (or deletes it, for `None`) only if its
    /// `mod_index` is `expect` when the entry is applied (`0`: only if it does not exist).
    Cas {
        key: String,
        value: Option<String>,
        expect: u64,
    },
    /// Deletes every key that starts with `prefix`.
    DeletePrefix { prefix: String },
    /// Compares, then one of two lists of operations, all in this entry.
    Txn(Txn),
    /// Grants a lease of `ttl_ms`; its id is the group's next lease number.
    LeaseGrant { ttl_ms: u64 },
    /// Revokes lease `id` (a client's request, or the leader's decision that it expired)
    /// and deletes every key attached to it.
    LeaseRevoke { id: u64 },
    /// Sets `key` attached to lease `lease` (0: to none), or, with `ttl_ms` > 0, to a new
    /// lease of that TTL granted with it; with `expect`, only if the key's `mod_index` is
    /// that (as [`Op::Cas`]).
    Put {
        key: String,
        value: String,
        lease: u64,
        ttl_ms: u64,
        expect: Option<u64>,
    },
}

/// A type with no values: what cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Never {}

/// Per-key metadata, kept with every value and identical on every node: the state
/// machine derives it from log indexes only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMeta {
    /// The log index of the entry that created the key (since it last did not exist).
    pub create_index: u64,
    /// The log index of the entry that last changed it.
    pub mod_index: u64,
    /// 1 at creation, +1 per change; a deleted and re-created key starts again at 1.
    pub version: u64,
    /// The lease the key is attached to (0: none); it goes when the lease does.
    pub lease: u64,
}

/// One key with its value (empty when only keys were asked for) and metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    pub meta: KeyMeta,
}

/// A transaction: every compare holds, then `success` runs, else `failure`; one entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// One condition of a [`Txn`] on one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: String,
    pub target: Target,
    pub op: CmpOp,
}

/// What a [`Compare`] looks at, with the operand. A key that does not exist has version,
/// `mod_index` and `create_index` 0, and no value: every value comparison on it is false.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    Value(String),
    Version(u64),
    ModIndex(u64),
    CreateIndex(u64),
    /// Only `Eq` and `Ne` apply.
    Exists(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Gt,
}

/// One operation of a [`Txn`] branch. Flat: a transaction never holds a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    DeletePrefix {
        prefix: String,
    },
    Get {
        key: String,
    },
    /// A put attached to lease `lease`.
    PutLease {
        key: String,
        value: String,
        lease: u64,
    },
}

/// What one [`Op`] did when applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Set or deleted as asked.
    Done,
    /// A compare-and-set whose key was not at the expected `mod_index`: nothing changed.
    CasFailed { current: Option<KeyValue> },
    /// A prefix delete: how many keys went.
    Deleted { count: u64 },
    /// A transaction: which branch ran and what each of its operations gave.
    Txn {
        succeeded: bool,
        results: Vec<TxnResult>,
    },
    /// A lease was granted (by `LeaseGrant`, or by a `Put` with a TTL).
    LeaseGranted { id: u64 },
    /// The operation names a lease that does not exist (any more): nothing changed.
    NoLease { id: u64 },
}

/// A lease as the state machine keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub ttl_ms: u64,
    /// The log index that granted it.
    pub granted: u64,
}

/// What one [`TxnOp`] gave, naming the key (or prefix) it was about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnResult {
    Put {
        key: String,
    },
    /// Whether the key existed (0 or 1).
    Deleted {
        key: String,
        count: u64,
    },
    /// How many keys under the prefix were deleted.
    DeletedPrefix {
        prefix: String,
        count: u64,
    },
    Get {
        key: String,
        kv: Option<KeyValue>,
    },
}

/// One Raft group in the catalogue: who should host it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupEntry {
    /// The member ids (`-id`) of the nodes that run this group, in the order given.
    pub members: Vec<String>,
    /// The member that initializes the group's Raft (and so leads it first); cleared by
    /// the first change of members, so that a member added later never initializes.
    pub init: Option<String>,
    /// Chosen when the group is created: a group deleted and created again under the same
    /// id is a new group, and a member still holding the old one's data drops it.
    pub incarnation: u64,
}

/// A state machine command: one log entry, applied atomically.
///
/// Flat by construction: a batch holds operations, never other batches, so decoding and
/// applying an entry never recurse (a nested batch from the network could otherwise
/// overflow the stack). `Set` and `Delete` have the same variant numbers in [`Op`] and
/// here, so a batch encodes exactly as the earlier `Batch(Vec<Command>)` of single ops did
/// and existing logs and snapshots still decode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set one or more keys; all pairs become visible together.
    Set { pairs: Vec<(String, String)> },
    /// Delete a key; deleting a missing key is not an error.
    Delete { key: String },
    /// Several client requests committed together (group commit), applied in order.
    Batch(Vec<Op>),
    /// Sets (`Some`) or removes (`None`) one entry of the group catalogue, which only the
    /// default group's state machine holds (see `catalogue.rs`). Never inside a batch (a
    /// batch holds client operations only), and last, so that the variants before it
    /// keep their numbers in logs and snapshots.
    Catalogue {
        group: String,
        entry: Option<GroupEntry>,
    },
}

impl Command {
    /// The command for one operation. Operations newer than `Set` and `Delete` travel as
    /// a batch of one, so that `Command` keeps its variants.
    pub fn single(op: Op) -> Command {
        match op {
            Op::Set { pairs } => Command::Set { pairs },
            Op::Delete { key } => Command::Delete { key },
            other => Command::Batch(vec![other]),
        }
    }

    /// The client operations this command applies, in order (none for a catalogue
    /// change).
    pub fn into_ops(self) -> Vec<Op> {
        match self {
            Command::Set { pairs } => vec![Op::Set { pairs }],
            Command::Delete { key } => vec![Op::Delete { key }],
            Command::Batch(ops) => ops,
            Command::Catalogue { .. } => Vec::new(),
        }
    }
}

/// Bytes an entry's command may take once encoded ([`encoded_size`]). One entry must be
/// replicable inside openraft's per-append deadline (one heartbeat interval, 150 ms): at
/// 100 Mbit/s this many bytes take about 90 ms on the wire. A request that alone is larger
/// is refused before it is proposed; group commit never packs a batch past it.
pub const MAX_ENTRY_BYTES: u64 = (1 << 20) + (64 << 10);

/// The size of `v` as `encode` writes it (bincode).
pub fn encoded_size<T: Serialize>(v: &T) -> u64 {
    bincode::serialized_size(v).unwrap_or(u64::MAX)
}

/// What applying a [`Command`] returns: one [`Outcome`] per client operation, in order
/// (none for a catalogue change, a membership change or a blank entry). The log index is
/// carried by openraft itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied(pub Vec<Outcome>);

/// Snapshot payloads are files on disk (see `snapshot.rs`), so that neither building,
/// sending nor installing a snapshot holds the whole state in memory.
pub type SnapshotFile = tokio::fs::File;

openraft::declare_raft_types!(
    /// hraftd's Raft type configuration.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = NodeId,
        Node = Node,
        SnapshotData = SnapshotFile,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type StorageError = openraft::StorageError<NodeId>;

/// Maps a member's string id to openraft's u64 id: 64-bit FNV-1a, stable across versions
/// and platforms. A collision between two ids is detected at join time and refused.
pub fn raft_id_for(id: &str) -> NodeId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The bincode settings of [`encode`] and [`decode`]: those of `bincode::serialize`
/// (fixed-size integers, trailing bytes allowed), so stored data keeps its format, plus a
/// limit on what one decode may consume.
fn options(limit: u64) -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(limit)
}

/// Encodes a value for the log or the wire (bincode: compact and fast).
pub(crate) fn encode<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    bincode::serialize(v).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Decodes what [`encode`] wrote. Decoding never reads past `b`, so nothing it allocates
/// is larger than the input (lengths inside are checked against what is left).
pub(crate) fn decode<T: for<'a> Deserialize<'a>>(b: &[u8]) -> io::Result<T> {
    use bincode::Options;
    options(b.len() as u64)
        .deserialize(b)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(raft_id_for("node0"), raft_id_for("node0"));
        assert_ne!(raft_id_for("node0"), raft_id_for("node1"));
        // FNV-1a test vector: the empty string hashes to the offset basis.
        assert_eq!(raft_id_for(""), 0xcbf2_9ce4_8422_2325);
    }

    /// Found by review: snapshot headers and backups are JSON, and renaming `Node::name` to
    /// `id` made every earlier one unreadable (and a node then dropped its own snapshot at
    /// start-up). The JSON name stays `name`.
    #[test]
    fn members_in_snapshot_headers_written_before_the_rename_still_decode() {
        let old = r#"{"name":"node0","raft_addr":"127.0.0.1:12000","http_addr":"127.0.0.1:11000"}"#;
        let n: Node = serde_json::from_str(old).unwrap();
        assert_eq!(n.id, "node0");
        assert_eq!(serde_json::to_string(&n).unwrap(), old);
        // And bincode, positional, is unchanged too.
        #[derive(Serialize)]
        struct OldNode {
            name: String,
            raft_addr: String,
            http_addr: String,
        }
        let o = OldNode {
            name: "node0".into(),
            raft_addr: "127.0.0.1:12000".into(),
            http_addr: "127.0.0.1:11000".into(),
        };
        assert_eq!(encode(&o).unwrap(), encode(&n).unwrap());
    }

    #[test]
    fn commands_round_trip() {
        let c = Command::Set {
            pairs: vec![("a/b".into(), "ü".into())],
        };
        assert_eq!(decode::<Command>(&encode(&c).unwrap()).unwrap(), c);
    }

    /// The wire and log format of the earlier recursive `Batch(Vec<Command>)`, as it was
    /// written by group commit (single operations inside one batch).
    #[derive(Serialize)]
    enum OldCommand {
        Set { pairs: Vec<(String, String)> },
        Delete { key: String },
        Batch(Vec<OldCommand>),
    }

    #[test]
    fn batches_written_by_earlier_versions_still_decode() {
        let old = OldCommand::Batch(vec![
            OldCommand::Set {
                pairs: vec![("k".into(), "v".into())],
            },
            OldCommand::Delete { key: "d".into() },
        ]);
        let new = Command::Batch(vec![
            Op::Set {
                pairs: vec![("k".into(), "v".into())],
            },
            Op::Delete { key: "d".into() },
        ]);
        let bytes = bincode::serialize(&old).unwrap();
        assert_eq!(bytes, encode(&new).unwrap());
        assert_eq!(decode::<Command>(&bytes).unwrap(), new);
    }

    /// Found by review: a ~1 MB frame of batches nested in batches overflowed the stack
    /// while decoding and aborted the process. A batch now holds only operations, so a
    /// nested batch is refused as malformed, without recursion.
    #[test]
    fn a_nested_batch_is_refused_without_recursion() {
        let mut nested = OldCommand::Delete { key: "k".into() };
        for _ in 0..200 {
            nested = OldCommand::Batch(vec![nested]);
        }
        let bytes = bincode::serialize(&nested).unwrap();
        assert!(decode::<Command>(&bytes).is_err());
        // The hostile shape: 4-byte "Batch" tag + 8-byte length 1, repeated ~1 MB deep.
        let mut deep = Vec::new();
        for _ in 0..87_000 {
            deep.extend_from_slice(&2u32.to_le_bytes());
            deep.extend_from_slice(&1u64.to_le_bytes());
        }
        assert!(decode::<Command>(&deep).is_err());
    }

    #[test]
    fn a_length_larger_than_the_input_is_refused_without_allocating_it() {
        // Set with a claimed 2^40 pairs and nothing behind it.
        let mut b = 0u32.to_le_bytes().to_vec();
        b.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(decode::<Command>(&b).is_err());
        // A string claiming 2^40 bytes.
        let mut b = 1u32.to_le_bytes().to_vec();
        b.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(decode::<Command>(&b).is_err());
    }
}
