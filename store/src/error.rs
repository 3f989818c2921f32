//! The store crate's one error type. Callers (the HTTP layer, via its adapter) turn each
//! variant into a wire status; nothing in this crate knows about HTTP.

use std::time::Duration;

use crate::types::Node;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This node cannot serve the request because it is not the leader. `leader` is the
    /// leader this node knows of, if any, so the caller can be redirected.
    #[error("not the leader; leader is {}", .leader.as_ref().map(|n| n.to_string()).unwrap_or_else(|| "unknown".into()))]
    NotLeader { leader: Option<Node> },

    /// A bounded wait ran out. For writes the outcome is unknown: the entry may still commit.
    #[error("{what} did not complete within {after:?}")]
    Timeout { what: String, after: Duration },

    /// No quorum could be reached (e.g. to confirm leadership); retrying later may succeed.
    #[error("unavailable: {0}")]
    Unavailable(String),

    /// The request is malformed or contradicts the cluster's state.
    #[error("invalid request: {0}")]
    Invalid(String),

    /// The request is too large to be one log entry (see `types::MAX_ENTRY_BYTES`).
    #[error("too large: {0}")]
    TooLarge(String),

    /// The caller failed authentication (e.g. a joining node without the cluster key).
    #[error("forbidden: {0}")]
    Forbidden(String),

    /// The named thing (e.g. a member) does not exist.
    #[error("not found: {0}")]
    NotFound(String),

    /// Another change is in progress; retrying later may succeed.
    #[error("conflict: {0}")]
    Conflict(String),

    /// The Raft node has stopped or is shutting down.
    #[error("raft node is shutting down")]
    ShuttingDown,

    /// Reading or writing local storage failed.
    #[error("storage error: {0}")]
    Storage(String),

    /// An I/O failure with what we were doing at the time.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// Any other failure reported by openraft.
    #[error("raft error: {0}")]
    Raft(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        Error::Storage(e.to_string())
    }
}
