//! hraftd's storage and consensus layer: one Raft node per process.
//!
//! The model: every change is a [`Command`] in the Raft log (openraft 0.9, storage v2).
//! The log, the vote and the committed index live in RocksDB ([`log_store`]); the
//! key-value data and its `last_applied` live in the same RocksDB instance
//! ([`state_machine`]) and change in one atomic batch per apply; snapshots are
//! point-in-time files (`snapshot`); peers talk over a binary TCP transport
//! ([`network`]), authenticated by a cluster key or mutual TLS ([`peer_auth`]). [`Store`] ([`node`]) ties these together and is the only thing the rest of
//! hraftd uses. Background work waits on events (watch channels, openraft's metrics), not
//! on timers, and every background task is owned by the node's `tasks` registry, which
//! stops and joins them at shutdown.

// openraft's StorageError is large and is what its storage traits return; boxing it
// everywhere would fight the trait signatures.
#![allow(clippy::result_large_err)]

pub mod backup;
mod batch;
pub mod catalogue;
mod db;
pub mod error;
mod group;
pub mod groups;
#[doc(hidden)]
pub mod hostile;
mod kv;
pub mod lease;
pub mod log_store;
pub mod network;
pub mod node;
pub mod peer_auth;
mod snapshot;
pub mod state_machine;
mod tasks;
pub mod types;
pub mod watch;

pub use backup::Backup;
pub use backup::BackupInfo;
pub use db::valid_group_id;
pub use db::CfSize;
pub use db::DEFAULT_GROUP;
pub use error::Error;
pub use error::Result;
pub use groups::GroupState;
pub use groups::GroupView;
pub use groups::LeaseView;
pub use node::stored_id;
pub use node::Member;
pub use node::Metrics;
pub use node::Options;
pub use node::ReadLevel;
pub use node::ReadOpts;
pub use node::Role;
pub use node::Status;
pub use node::Store;
pub use node::MAX_BACKUPS;
pub use peer_auth::ClusterKey;
pub use peer_auth::JoinProof;
pub use peer_auth::Mtls;
pub use peer_auth::PeerAuth;
pub use state_machine::Page;
pub use state_machine::Range;
pub use state_machine::Read;
pub use types::CmpOp;
pub use types::Command;
pub use types::Compare;
pub use types::GroupEntry;
pub use types::KeyMeta;
pub use types::KeyValue;
pub use types::Node;
pub use types::Op;
pub use types::Outcome;
pub use types::Target;
pub use types::Txn;
pub use types::TxnOp;
pub use types::TxnResult;
pub use types::MAX_ENTRY_BYTES;
pub use watch::Change;
pub use watch::Watch;
pub use watch::WatchEnd;
pub use watch::WatchSpec;

#[cfg(test)]
mod suite_test;
