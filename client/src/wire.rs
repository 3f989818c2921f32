//! The JSON shapes of hraftd's HTTP API, shared by the server (`hraftd-httpd` serializes
//! them) and every client (this crate, the tests, `hraftd-torture`, `hraftd-bench`,
//! `hraftd -join`), so that renaming a field is a compile error on both sides rather than
//! a silent `null` on one.

use serde::Deserialize;
use serde::Serialize;

/// Read levels, as the `level` query parameter names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadLevel {
    /// Any node, from its local applied state, even without a leader.
    Stale,
    /// The leader's local state, without a quorum round.
    Default,
    /// Linearizable: the leader confirms its leadership with a quorum first.
    Consistent,
}

impl ReadLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadLevel::Stale => "stale",
            ReadLevel::Default => "default",
            ReadLevel::Consistent => "consistent",
        }
    }

    /// Parses the `level` query parameter.
    pub fn parse(s: &str) -> Option<ReadLevel> {
        match s {
            "stale" => Some(ReadLevel::Stale),
            "default" => Some(ReadLevel::Default),
            "consistent" => Some(ReadLevel::Consistent),
            _ => None,
        }
    }
}

/// A member as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub raft_addr: String,
    pub http_addr: String,
}

/// A member and whether it votes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: String,
    pub raft_addr: String,
    pub http_addr: String,
    pub voter: bool,
}

/// The body of `GET /status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub id: String,
    /// `leader`, `follower`, `candidate`, `learner` (or `shutdown` while stopping).
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeInfo>,
    pub members: Vec<MemberInfo>,
    pub commit_index: u64,
    pub applied_index: u64,
    /// How this node authenticates its peers: `none`, `cluster-key` or `mtls`.
    pub peer_auth: String,
}

impl Status {
    pub fn is_leader(&self) -> bool {
        self.role == "leader"
    }

    /// The id of the leader this node knows of.
    pub fn leader_id(&self) -> Option<&str> {
        self.leader.as_ref().map(|l| l.id.as_str())
    }

    /// Whether `id` is listed as a voter.
    pub fn has_voter(&self, id: &str) -> bool {
        self.members.iter().any(|m| m.id == id && m.voter)
    }

    /// Whether `id` is listed at all (voter or learner).
    pub fn has_member(&self, id: &str) -> bool {
        self.members.iter().any(|m| m.id == id)
    }
}

/// `POST /join` body: the joining node's id, raft address and HTTP address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub id: String,
    pub addr: String,
    pub http_addr: String,
}

/// `POST /join` answer: the node is a voter from membership log index `index` on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResponse {
    pub joined: String,
    pub index: u64,
}

/// `POST /remove` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveRequest {
    pub id: String,
}

/// `POST /remove` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveResponse {
    pub removed: String,
}

/// The answer to a write (`POST /key`, `PUT /key/<k>`, `DELETE`): the log index of the
/// entry that applied it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResponse {
    pub index: u64,
    /// With `PUT /key/<k>?ttl=`: the id of the lease granted for the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

/// `POST /lease` body: the lease's TTL, `"10s"`, `"1500ms"` or a number of seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    pub ttl: serde_json::Value,
}

/// `POST /lease` and `POST /lease/<id>/keepalive` answer: the lease and its TTL (after a
/// keepalive: the time it has left again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseResponse {
    pub id: String,
    pub ttl_ms: u64,
    /// The log index that granted it (`POST /lease` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
}

/// `GET /lease/<id>`: the lease as its group's leader counts it, and its keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub id: String,
    pub ttl_ms: u64,
    /// Time left before it expires unless kept alive.
    pub remaining_ms: u64,
    pub granted_index: u64,
    /// The keys attached to it (at most 1000; `more` says whether there are others).
    pub keys: Vec<String>,
    pub more: bool,
}

/// One key with its metadata: `GET /key/<k>?meta=true`, range pages, `get` results of a
/// transaction, and the `current` of a failed compare-and-set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    /// Absent in a `keys_only` range page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The log index that created the key (since it last did not exist).
    pub create_index: u64,
    /// The log index of its last change: what `?cas=` and `If-Match` compare with.
    pub mod_index: u64,
    /// 1 at creation, +1 per change.
    pub version: u64,
    /// The lease the key is attached to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

/// One page of `GET /key?prefix=` (or `?from=&to=`): keys in byte order, all read at
/// applied index `index`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// More keys follow: ask again with `after=<next>`.
    pub more: bool,
    pub next: Option<String>,
    pub index: u64,
}

/// `DELETE /key?prefix=` answer: the entry's log index and how many keys it deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedResponse {
    pub index: u64,
    pub deleted: u64,
}

/// `POST /txn` body: if every compare holds, `success` runs, else `failure`; one entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnRequest {
    #[serde(default)]
    pub compare: Vec<TxnCompare>,
    #[serde(default)]
    pub success: Vec<TxnOp>,
    #[serde(default)]
    pub failure: Vec<TxnOp>,
}

/// One compare of a transaction: `target` of `key` `op` `value`. `value` is a string for
/// `value`, a number for the indexes and `version`, a boolean for `exists`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnCompare {
    pub key: String,
    pub target: CompareTarget,
    pub op: CompareOp,
    pub value: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareTarget {
    Value,
    Version,
    ModIndex,
    CreateIndex,
    Exists,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = ">")]
    Gt,
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum TxnOp {
    /// With `lease`, the key is attached to that lease (see `POST /lease`).
    Put {
        key: String,
        value: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease: Option<String>,
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
}

/// `POST /txn` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    pub succeeded: bool,
    pub index: u64,
    /// One per operation of the branch that ran, in order.
    pub results: Vec<TxnOpResult>,
}

/// What one transaction operation gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TxnOpResult {
    Put {
        key: String,
    },
    Delete {
        key: String,
        deleted: u64,
    },
    DeletePrefix {
        prefix: String,
        deleted: u64,
    },
    /// `kv` is `null` when the key does not exist.
    Get {
        key: String,
        kv: Option<KeyValue>,
    },
}

/// `POST /groups` body: a new group's id and its members (cluster node ids; 1, 3 or 5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    pub id: String,
    pub members: Vec<String>,
}

/// `POST /groups/<g>/members` body: the cluster node to add.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMemberRequest {
    pub id: String,
}

/// `POST /groups/<g>/leader` body: the voter to move the group's leadership to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    pub id: String,
}

/// One member's own view of a group, inside [`GroupInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupNodeInfo {
    pub id: String,
    /// `leader`, `follower`, `candidate`, `learner` (or `shutdown` while stopping).
    pub role: String,
    pub term: u64,
    /// Whether this member votes in the group (else it is a learner, still catching up).
    pub voter: bool,
    pub commit_index: u64,
    pub applied_index: u64,
}

/// A Raft group as `GET /groups` and `GET /groups/<g>` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    pub id: String,
    /// The cluster nodes that host the group (the catalogue).
    pub members: Vec<String>,
    pub leader: Option<NodeInfo>,
    pub term: u64,
    /// Each member that answered, with its role and indexes.
    pub nodes: Vec<GroupNodeInfo>,
    /// Members that did not answer, or do not run the group yet.
    pub unreachable: Vec<String>,
}

impl GroupInfo {
    /// The id of the group's leader, if one is known.
    pub fn leader_id(&self) -> Option<&str> {
        self.leader.as_ref().map(|l| l.id.as_str())
    }
}

/// `GET /groups` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupList {
    pub groups: Vec<GroupInfo>,
}

/// `DELETE /groups/<g>` answer: the log index (of the default group) that deleted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDeleted {
    pub deleted: String,
    pub index: u64,
}

/// `GET /livez` and `GET /readyz` when healthy: `{"status":"live"}` / `{"status":"ready"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
}

/// What went wrong, as a stable machine-readable word; the `"code"` of every error body.
/// Clients decide on this, never on the message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: malformed input; nothing changed.
    BadRequest,
    /// 401: credentials missing or wrong (`-auth`).
    Unauthorized,
    /// 403: authentication failed (e.g. a join without the cluster key).
    Forbidden,
    /// 404: no such key, member or endpoint.
    NotFound,
    /// 404: no such Raft group (never "the key is missing").
    GroupNotFound,
    /// 405: the path exists but not with this method.
    MethodNotAllowed,
    /// 409: another change is in progress; retry.
    Conflict,
    /// 412: a compare-and-set found the key elsewhere; `current` says where.
    PreconditionFailed,
    /// 413: the body or the request's log entry is too large.
    TooLarge,
    /// 307: this node is not the leader; `leader` and `Location` say where it is.
    NotLeader,
    /// 503: no leader is known right now; retry (nothing was proposed).
    NoLeader,
    /// 503: no quorum, overloaded, not ready or shutting down; retry (nothing applied).
    Unavailable,
    /// 504: a wait ran out before anything changed (e.g. a consistent read).
    Timeout,
    /// 504: a write was proposed but not seen committed: it may or may not apply.
    OutcomeUnknown,
    /// 410: a watch asked for changes the history no longer holds; `oldest_index` says
    /// from where it does (read the keys with a range, then watch from its `index`).
    Compacted,
    /// 500: a storage or Raft failure on the node.
    Internal,
    /// A code this client version does not know (a newer server).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::GroupNotFound => "group_not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PreconditionFailed => "precondition_failed",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::NotLeader => "not_leader",
            ErrorCode::NoLeader => "no_leader",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::OutcomeUnknown => "outcome_unknown",
            ErrorCode::Compacted => "compacted",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// Every code a server sends, for documentation checks.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::GroupNotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Conflict,
        ErrorCode::PreconditionFailed,
        ErrorCode::TooLarge,
        ErrorCode::NotLeader,
        ErrorCode::NoLeader,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::OutcomeUnknown,
        ErrorCode::Compacted,
        ErrorCode::Internal,
    ];
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// For people: what went wrong.
    pub error: String,
    /// For programs: what kind of failure it is.
    pub code: ErrorCode,
    /// With `not_leader`: the leader's HTTP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// With `precondition_failed`: the key as it is ([`KeyValue`]), or `null` when it does
    /// not exist (which reads back as `None`, as does its absence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<serde_json::Value>,
    /// With `compacted`: the oldest index a watch may start from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_index: Option<u64>,
}

/// What happened to a key, in a watch (the SSE `event:` name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Put,
    Delete,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Put => "put",
            EventKind::Delete => "delete",
        }
    }
}

/// One change in a watch: `event: put|delete`, `data:` the key as a [`KeyValue`] (after a
/// delete: no value, `mod_index` the delete's index, `create_index` and `version` 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub kv: KeyValue,
}

/// The `data:` of the last event of a watch that the server ended (`event: error`): why,
/// as in [`ErrorBody`] (`code` `slow_consumer`, `compacted` with `oldest_index`, or
/// `unavailable` when the node stops).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEndBody {
    pub error: String,
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_index: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_snake_case_words_and_unknown_ones_still_parse() {
        for c in ErrorCode::ALL {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), c);
        }
        let b: ErrorBody =
            serde_json::from_str(r#"{"error":"x","code":"from_the_future"}"#).unwrap();
        assert_eq!(b.code, ErrorCode::Unknown);
    }

    #[test]
    fn read_levels_round_trip() {
        for l in [ReadLevel::Stale, ReadLevel::Default, ReadLevel::Consistent] {
            assert_eq!(ReadLevel::parse(l.as_str()), Some(l));
        }
        assert_eq!(ReadLevel::parse("linearizable"), None);
    }
}
