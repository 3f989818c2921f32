//! The store crate's one error type. Callers (the HTTP layer, via its adapter) turn each
//! variant into a wire status; nothing in this crate knows about HTTP.
//!
//! Two questions every caller must be able to answer without parsing a message: did the
//! request perhaps take effect ([`Error::outcome_unknown`]), and may the same request
//! simply be sent again ([`Error::retry_safe`])? Failures from RocksDB, I/O and openraft
//! keep their source error, so logs and `{:#}` chains show the real cause.

use std::time::Duration;

use crate::types::Node;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed source error (openraft's errors are generic; we keep them as they are).
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This node cannot serve the request because it is not the leader. `leader` is the
    /// leader this node knows of, if any, so the caller can be redirected.
    #[error("not the leader; leader is {}", .leader.as_ref().map(|n| n.to_string()).unwrap_or_else(|| "unknown".into()))]
    NotLeader { leader: Option<Node> },

    /// A bounded wait ran out before anything changed (e.g. confirming leadership for a
    /// read, or waiting for the membership lock). Nothing was applied.
    #[error("{what} did not complete within {after:?}")]
    Timeout { what: String, after: Duration },

    /// A change was proposed to Raft but not seen committed: it may still commit, or may
    /// never. The caller must find out (read) before assuming either.
    #[error("outcome unknown: {what}")]
    OutcomeUnknown { what: String },

    /// No quorum could be reached, or the node is overloaded; nothing was applied and
    /// retrying later may succeed.
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

    /// No such Raft group.
    #[error("{0}")]
    GroupNotFound(String),

    /// A watch asked for changes the history no longer holds: it keeps those after
    /// `oldest` (read the keys with a range, then watch from its index).
    #[error("the change history starts after index {oldest}; changes up to it are gone")]
    Compacted { oldest: u64 },

    /// Another change is in progress; retrying later may succeed.
    #[error("conflict: {0}")]
    Conflict(String),

    /// The Raft node has stopped or is shutting down; nothing was proposed.
    #[error("raft node is shutting down")]
    ShuttingDown,

    /// Reading or writing RocksDB failed.
    #[error("storage error: {0}")]
    Storage(#[from] rocksdb::Error),

    /// An I/O failure with what we were doing at the time.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// Any other failure reported by openraft, with what we were doing at the time.
    #[error("{context}: {source}")]
    Raft {
        context: String,
        #[source]
        source: Source,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn raft(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Raft {
            context: context.into(),
            source: Box::new(source),
        }
    }

    /// Whether the request may have taken effect although it failed (a write that timed
    /// out after it was proposed, or whose node stopped meanwhile).
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Error::OutcomeUnknown { .. })
    }

    /// Whether the request certainly did not take effect and the same request may be sent
    /// again, later or to the leader, without risk of applying it twice.
    pub fn retry_safe(&self) -> bool {
        match self {
            Error::NotLeader { .. }
            | Error::Timeout { .. }
            | Error::Unavailable(_)
            | Error::Conflict(_)
            | Error::ShuttingDown => true,
            Error::OutcomeUnknown { .. }
            | Error::Invalid(_)
            | Error::TooLarge(_)
            | Error::Forbidden(_)
            | Error::NotFound(_)
            | Error::GroupNotFound(_)
            | Error::Compacted { .. }
            | Error::Storage(_)
            | Error::Io { .. }
            | Error::Raft { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_source() {
        let e = Error::io(
            "opening the state machine",
            std::io::Error::other("disk on fire"),
        );
        let src = std::error::Error::source(&e).expect("a source");
        assert_eq!(src.to_string(), "disk on fire");
        let e = Error::raft("bootstrap", std::io::Error::other("core stopped"));
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(e.to_string(), "bootstrap: core stopped");
    }

    #[test]
    fn an_unknown_outcome_is_never_safe_to_retry() {
        let unknown = Error::OutcomeUnknown {
            what: "write timed out".into(),
        };
        assert!(unknown.outcome_unknown() && !unknown.retry_safe());
        let timeout = Error::Timeout {
            what: "confirming leadership".into(),
            after: Duration::from_secs(1),
        };
        assert!(!timeout.outcome_unknown() && timeout.retry_safe());
        assert!(Error::NotLeader { leader: None }.retry_safe());
        assert!(!Error::Invalid("x".into()).retry_safe());
    }
}
