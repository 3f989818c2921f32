//! The openraft type configuration and the values that travel through the Raft log.
//!
//! Everything here is serialized into the log and onto the wire, so changing a type is a
//! change of the on-disk and peer formats.

use std::fmt;
use std::io;

use serde::Deserialize;
use serde::Serialize;

/// openraft's node id. Users only ever see [`Node::name`]; the id is derived from it
/// with [`node_id_for`] so that every member computes the same id for the same name.
pub type NodeId = u64;

/// What the cluster knows about one member: its user-facing name and the addresses it
/// advertises to peers (`raft_addr`) and to clients (`http_addr`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub raft_addr: String,
    pub http_addr: String,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (raft {}, http {})",
            self.name, self.raft_addr, self.http_addr
        )
    }
}

/// A state machine command: one log entry, applied atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set one or more keys; all pairs become visible together.
    Set { pairs: Vec<(String, String)> },
    /// Delete a key; deleting a missing key is not an error.
    Delete { key: String },
    /// Several client requests committed together (group commit), applied in order.
    Batch(Vec<Command>),
}

/// What applying a [`Command`] returns. The log index is carried by openraft itself,
/// so there is nothing more to say yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied;

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

/// Maps a member name to openraft's u64 id: 64-bit FNV-1a, stable across versions and
/// platforms. A collision between two names is detected at join time and refused.
pub fn node_id_for(name: &str) -> NodeId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Encodes a value for the log or the wire (bincode: compact and fast).
pub(crate) fn encode<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    bincode::serialize(v).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Decodes what [`encode`] wrote.
pub(crate) fn decode<T: for<'a> Deserialize<'a>>(b: &[u8]) -> io::Result<T> {
    bincode::deserialize(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(node_id_for("node0"), node_id_for("node0"));
        assert_ne!(node_id_for("node0"), node_id_for("node1"));
        // FNV-1a test vector: the empty string hashes to the offset basis.
        assert_eq!(node_id_for(""), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn commands_round_trip() {
        let c = Command::Set {
            pairs: vec![("a/b".into(), "ü".into())],
        };
        assert_eq!(decode::<Command>(&encode(&c).unwrap()).unwrap(), c);
    }
}
