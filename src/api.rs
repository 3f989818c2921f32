//! Adapts the store to the HTTP layer's `KvStore` trait: the store's errors become API
//! errors (the HTTP layer then maps those to status codes), and its status to the wire shape.

use std::sync::Arc;

use hraftd_httpd::wire;
use hraftd_httpd::ApiError;
use hraftd_httpd::Backup;
use hraftd_httpd::CfSize;
use hraftd_httpd::CreateGroupRequest;
use hraftd_httpd::GroupInfo;
use hraftd_httpd::GroupMetrics;
use hraftd_httpd::GroupNodeInfo;
use hraftd_httpd::JoinRequest;
use hraftd_httpd::KeyRange;
use hraftd_httpd::KvStore;
use hraftd_httpd::MemberInfo;
use hraftd_httpd::NodeInfo;
use hraftd_httpd::NodeMetrics;
use hraftd_httpd::Page;
use hraftd_httpd::RangeRequest;
use hraftd_httpd::Read;
use hraftd_httpd::ReadLevel;
use hraftd_httpd::ReadOptions;
use hraftd_httpd::Status;
use hraftd_store::Error;
use hraftd_store::GroupView;
use hraftd_store::JoinProof;
use hraftd_store::Node;
use hraftd_store::Op;
use hraftd_store::Outcome;
use hraftd_store::Store;

/// The real store, as the HTTP layer sees it.
pub struct Api(pub Arc<Store>);

/// What each store error means to a client. (Status codes are chosen in one place only,
/// `hraftd_httpd::error`, from the [`ApiError`] made here.)
fn api_error(e: Error) -> ApiError {
    match e {
        Error::NotLeader { leader } => ApiError::NotLeader {
            leader_http: leader.map(|n| n.http_addr),
        },
        Error::Timeout { .. } => ApiError::Timeout(e.to_string()),
        Error::OutcomeUnknown { .. } => ApiError::OutcomeUnknown(e.to_string()),
        Error::Unavailable(_) | Error::ShuttingDown => ApiError::Unavailable(e.to_string()),
        Error::Invalid(m) => ApiError::BadRequest(m),
        Error::TooLarge(m) => ApiError::TooLarge(m),
        Error::NotFound(m) => ApiError::NotFound(m),
        Error::GroupNotFound(m) => ApiError::GroupNotFound(m),
        Error::Forbidden(m) => ApiError::Forbidden(m),
        Error::Conflict(m) => ApiError::Conflict(m),
        Error::Compacted { oldest } => ApiError::Compacted {
            message: e.to_string(),
            oldest,
        },
        Error::Storage(_) | Error::Io { .. } | Error::Raft { .. } => {
            ApiError::Internal(e.to_string())
        }
    }
}

fn level(l: ReadLevel) -> hraftd_store::ReadLevel {
    match l {
        ReadLevel::Stale => hraftd_store::ReadLevel::Stale,
        ReadLevel::Default => hraftd_store::ReadLevel::Default,
        ReadLevel::Consistent => hraftd_store::ReadLevel::Consistent,
    }
}

fn node_info(n: Node) -> NodeInfo {
    NodeInfo {
        id: n.id,
        raft_addr: n.raft_addr,
        http_addr: n.http_addr,
    }
}

fn read_opts(o: &ReadOptions) -> hraftd_store::ReadOpts {
    hraftd_store::ReadOpts {
        level: level(o.level),
        min_index: o.min_index,
        wait: o.wait,
    }
}

fn key_value(kv: hraftd_store::KeyValue, with_value: bool) -> wire::KeyValue {
    wire::KeyValue {
        key: kv.key,
        value: with_value.then_some(kv.value),
        create_index: kv.meta.create_index,
        mod_index: kv.meta.mod_index,
        version: kv.meta.version,
        lease: lease_id(kv.meta.lease),
    }
}

/// A lease id as the wire shows it (`None` for no lease).
fn lease_id(id: u64) -> Option<String> {
    (id != 0).then(|| id.to_string())
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The `412` of a compare-and-set that found `key` elsewhere than `expect`.
fn cas_failed(key: &str, expect: u64, current: Option<hraftd_store::KeyValue>) -> ApiError {
    let message = match &current {
        Some(kv) if expect == 0 => {
            format!("key {key:?} exists (mod_index {})", kv.meta.mod_index)
        }
        Some(kv) => format!(
            "key {key:?} is at mod_index {}, not {expect}",
            kv.meta.mod_index
        ),
        None => format!("key {key:?} does not exist (expected mod_index {expect})"),
    };
    ApiError::PreconditionFailed {
        message,
        current: current.map(|kv| key_value(kv, true)),
    }
}

/// A validated transaction (the HTTP layer checked every compare's value type) in the
/// store's terms.
fn txn(t: wire::TxnRequest) -> Result<hraftd_store::Txn, ApiError> {
    use hraftd_store::CmpOp;
    use hraftd_store::Target;
    use hraftd_store::TxnOp;
    let mut compare = Vec::with_capacity(t.compare.len());
    for c in t.compare {
        let bad = || {
            ApiError::BadRequest(format!(
                "compare on {:?}: value {} does not fit its target",
                c.key, c.value
            ))
        };
        let n = || c.value.as_u64().ok_or_else(bad);
        let target = match c.target {
            wire::CompareTarget::Value => {
                Target::Value(c.value.as_str().ok_or_else(bad)?.to_string())
            }
            wire::CompareTarget::Version => Target::Version(n()?),
            wire::CompareTarget::ModIndex => Target::ModIndex(n()?),
            wire::CompareTarget::CreateIndex => Target::CreateIndex(n()?),
            wire::CompareTarget::Exists => Target::Exists(c.value.as_bool().ok_or_else(bad)?),
        };
        let op = match c.op {
            wire::CompareOp::Eq => CmpOp::Eq,
            wire::CompareOp::Ne => CmpOp::Ne,
            wire::CompareOp::Lt => CmpOp::Lt,
            wire::CompareOp::Gt => CmpOp::Gt,
        };
        compare.push(hraftd_store::Compare {
            key: c.key,
            target,
            op,
        });
    }
    let ops = |ops: Vec<wire::TxnOp>| -> Result<Vec<TxnOp>, ApiError> {
        ops.into_iter()
            .map(|o| match o {
                wire::TxnOp::Put {
                    key,
                    value,
                    lease: None,
                } => Ok(TxnOp::Put { key, value }),
                // Checked by the HTTP layer: a positive integer.
                wire::TxnOp::Put {
                    key,
                    value,
                    lease: Some(l),
                } => Ok(TxnOp::PutLease {
                    key,
                    value,
                    lease: l
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| ApiError::BadRequest(format!("lease id {l:?}")))?,
                }),
                wire::TxnOp::Delete { key } => Ok(TxnOp::Delete { key }),
                wire::TxnOp::DeletePrefix { prefix } => Ok(TxnOp::DeletePrefix { prefix }),
                wire::TxnOp::Get { key } => Ok(TxnOp::Get { key }),
            })
            .collect()
    };
    Ok(hraftd_store::Txn {
        compare,
        success: ops(t.success)?,
        failure: ops(t.failure)?,
    })
}

/// A store watch, as the HTTP layer consumes it.
pub struct ApiWatch(hraftd_store::Watch);

impl hraftd_httpd::WatchStream for ApiWatch {
    fn start_index(&self) -> u64 {
        self.0.start_index()
    }

    async fn next(&mut self) -> Result<hraftd_httpd::WatchBatch, hraftd_httpd::WatchEnded> {
        use hraftd_httpd::WatchEnded;
        match self.0.next().await {
            Ok((index, changes)) => Ok(hraftd_httpd::WatchBatch {
                index,
                events: changes.into_iter().map(watch_event).collect(),
            }),
            Err(hraftd_store::WatchEnd::Compacted { oldest }) => {
                Err(WatchEnded::Compacted { oldest })
            }
            Err(hraftd_store::WatchEnd::Slow) => Err(WatchEnded::Slow),
            Err(hraftd_store::WatchEnd::Closed) => Err(WatchEnded::Closed),
        }
    }
}

fn watch_event(c: hraftd_store::Change) -> wire::WatchEvent {
    let kind = match c.value {
        Some(_) => wire::EventKind::Put,
        None => wire::EventKind::Delete,
    };
    wire::WatchEvent {
        kind,
        kv: wire::KeyValue {
            key: c.key,
            value: c.value,
            create_index: c.meta.create_index,
            mod_index: c.meta.mod_index,
            version: c.meta.version,
            lease: lease_id(c.meta.lease),
        },
    }
}

impl KvStore for Api {
    type Watch = ApiWatch;

    async fn watch(
        &self,
        group: &str,
        target: hraftd_httpd::WatchTarget,
        from: Option<u64>,
    ) -> Result<ApiWatch, ApiError> {
        let spec = match target {
            hraftd_httpd::WatchTarget::Key(k) => hraftd_store::WatchSpec::Key(k),
            hraftd_httpd::WatchTarget::Prefix(p) => hraftd_store::WatchSpec::Prefix(p),
        };
        self.0
            .group_watch(group, spec, from)
            .await
            .map(ApiWatch)
            .map_err(api_error)
    }

    async fn get_after(
        &self,
        group: &str,
        key: &str,
        opts: &ReadOptions,
        after: u64,
    ) -> Result<Read<Option<wire::KeyValue>>, ApiError> {
        let r = self
            .0
            .group_get_after(group, key, &read_opts(opts), after, opts.wait)
            .await
            .map_err(api_error)?;
        Ok(Read {
            index: r.index,
            value: r.value.map(|kv| key_value(kv, true)),
        })
    }

    async fn get(
        &self,
        group: &str,
        key: &str,
        opts: &ReadOptions,
    ) -> Result<Read<Option<wire::KeyValue>>, ApiError> {
        let r = self
            .0
            .group_get(group, key, &read_opts(opts))
            .await
            .map_err(api_error)?;
        Ok(Read {
            index: r.index,
            value: r.value.map(|kv| key_value(kv, true)),
        })
    }

    async fn range(
        &self,
        group: &str,
        range: &RangeRequest,
        opts: &ReadOptions,
    ) -> Result<Read<Page>, ApiError> {
        let mut r = match &range.keys {
            KeyRange::Prefix(p) => hraftd_store::Range::prefix(p),
            KeyRange::Between { from, to } => hraftd_store::Range {
                from: from.clone(),
                to: to.clone().map(String::into_bytes),
                after: None,
                limit: 0,
                keys_only: false,
            },
        };
        r.after = range.after.clone();
        r.limit = range.limit;
        r.keys_only = range.keys_only;
        let read = self
            .0
            .group_range(group, &r, &read_opts(opts))
            .await
            .map_err(api_error)?;
        Ok(Read {
            index: read.index,
            value: Page {
                kvs: read
                    .value
                    .kvs
                    .into_iter()
                    .map(|kv| key_value(kv, !range.keys_only))
                    .collect(),
                more: read.value.more,
            },
        })
    }

    async fn cas(
        &self,
        group: &str,
        key: String,
        value: Option<String>,
        expect: u64,
    ) -> Result<u64, ApiError> {
        let op = Op::Cas {
            key: key.clone(),
            value,
            expect,
        };
        match self.0.group_write(group, op).await.map_err(api_error)? {
            (_, Outcome::CasFailed { current }) => Err(cas_failed(&key, expect, current)),
            (index, _) => Ok(index),
        }
    }

    async fn put_leased(
        &self,
        group: &str,
        key: String,
        value: String,
        expect: Option<u64>,
        lease: hraftd_httpd::LeaseArg,
    ) -> Result<wire::WriteResponse, ApiError> {
        let (lease, ttl_ms) = match lease {
            hraftd_httpd::LeaseArg::Id(id) => (id, 0),
            hraftd_httpd::LeaseArg::Ttl(t) => (0, self.0.check_ttl(group, t).map_err(api_error)?),
        };
        let op = Op::Put {
            key: key.clone(),
            value,
            lease,
            ttl_ms,
            expect,
        };
        match self.0.group_write(group, op).await.map_err(api_error)? {
            (_, Outcome::CasFailed { current }) => {
                Err(cas_failed(&key, expect.unwrap_or(0), current))
            }
            (_, Outcome::NoLease { id }) => {
                Err(ApiError::NotFound(format!("lease {id} not found")))
            }
            (index, Outcome::LeaseGranted { id }) => Ok(wire::WriteResponse {
                index,
                lease: Some(id.to_string()),
            }),
            (index, _) => Ok(wire::WriteResponse { index, lease: None }),
        }
    }

    async fn lease_grant(
        &self,
        group: &str,
        ttl: std::time::Duration,
    ) -> Result<wire::LeaseResponse, ApiError> {
        let (id, index) = self
            .0
            .group_lease_grant(group, ttl)
            .await
            .map_err(api_error)?;
        Ok(wire::LeaseResponse {
            id: id.to_string(),
            ttl_ms: millis(ttl),
            index: Some(index),
        })
    }

    async fn lease_keepalive(&self, group: &str, id: u64) -> Result<wire::LeaseResponse, ApiError> {
        let ttl = self
            .0
            .group_lease_keepalive(group, id)
            .await
            .map_err(api_error)?;
        Ok(wire::LeaseResponse {
            id: id.to_string(),
            ttl_ms: millis(ttl),
            index: None,
        })
    }

    async fn lease(&self, group: &str, id: u64) -> Result<wire::LeaseInfo, ApiError> {
        let v = self
            .0
            .group_lease(group, id, 1000)
            .await
            .map_err(api_error)?;
        Ok(wire::LeaseInfo {
            id: v.id.to_string(),
            ttl_ms: millis(v.ttl),
            remaining_ms: millis(v.remaining),
            granted_index: v.granted_index,
            keys: v.keys,
            more: v.more,
        })
    }

    async fn lease_revoke(&self, group: &str, id: u64) -> Result<wire::DeletedResponse, ApiError> {
        let (index, deleted) = self
            .0
            .group_lease_revoke(group, id)
            .await
            .map_err(api_error)?;
        Ok(wire::DeletedResponse { index, deleted })
    }

    async fn delete_prefix(
        &self,
        group: &str,
        prefix: String,
    ) -> Result<wire::DeletedResponse, ApiError> {
        match self
            .0
            .group_write(group, Op::DeletePrefix { prefix })
            .await
            .map_err(api_error)?
        {
            (index, Outcome::Deleted { count }) => Ok(wire::DeletedResponse {
                index,
                deleted: count,
            }),
            (_, other) => Err(ApiError::Internal(format!(
                "a prefix delete was applied as {other:?}"
            ))),
        }
    }

    async fn txn(&self, group: &str, t: wire::TxnRequest) -> Result<wire::TxnResponse, ApiError> {
        let (index, outcome) = self
            .0
            .group_write(group, Op::Txn(txn(t)?))
            .await
            .map_err(api_error)?;
        if let Outcome::NoLease { id } = outcome {
            return Err(ApiError::NotFound(format!("lease {id} not found")));
        }
        let Outcome::Txn { succeeded, results } = outcome else {
            return Err(ApiError::Internal(format!(
                "a transaction was applied as {outcome:?}"
            )));
        };
        let results = results
            .into_iter()
            .map(|r| {
                use hraftd_store::TxnResult as R;
                match r {
                    R::Put { key } => wire::TxnOpResult::Put { key },
                    R::Deleted { key, count } => wire::TxnOpResult::Delete {
                        key,
                        deleted: count,
                    },
                    R::DeletedPrefix { prefix, count } => wire::TxnOpResult::DeletePrefix {
                        prefix,
                        deleted: count,
                    },
                    R::Get { key, kv } => wire::TxnOpResult::Get {
                        key,
                        kv: kv.map(|kv| key_value(kv, true)),
                    },
                }
            })
            .collect();
        Ok(wire::TxnResponse {
            succeeded,
            index,
            results,
        })
    }

    async fn set(&self, group: &str, pairs: Vec<(String, String)>) -> Result<u64, ApiError> {
        self.0.group_set(group, pairs).await.map_err(api_error)
    }

    async fn delete(&self, group: &str, key: String) -> Result<u64, ApiError> {
        self.0.group_delete(group, key).await.map_err(api_error)
    }

    async fn groups(&self) -> Result<Vec<GroupInfo>, ApiError> {
        let views = self.0.group_views().await.map_err(api_error)?;
        Ok(views.into_iter().map(group_info).collect())
    }

    async fn group(&self, id: &str) -> Result<GroupInfo, ApiError> {
        self.0
            .group_view(id)
            .await
            .map(group_info)
            .map_err(api_error)
    }

    async fn create_group(&self, req: CreateGroupRequest) -> Result<GroupInfo, ApiError> {
        self.0
            .create_group(&req.id, req.members)
            .await
            .map(group_info)
            .map_err(api_error)
    }

    async fn delete_group(&self, id: &str) -> Result<u64, ApiError> {
        self.0.delete_group(id).await.map_err(api_error)
    }

    async fn add_group_member(&self, id: &str, member: &str) -> Result<GroupInfo, ApiError> {
        self.0
            .add_group_member(id, member)
            .await
            .map(group_info)
            .map_err(api_error)
    }

    async fn transfer_leader(&self, id: &str, to: &str) -> Result<GroupInfo, ApiError> {
        self.0
            .transfer_leader(id, to)
            .await
            .map(group_info)
            .map_err(api_error)
    }

    async fn remove_group_member(&self, id: &str, member: &str) -> Result<GroupInfo, ApiError> {
        self.0
            .remove_group_member(id, member)
            .await
            .map(group_info)
            .map_err(api_error)
    }

    fn check_join(&self, proof: Option<&str>, body: &[u8]) -> Result<(), ApiError> {
        match self.0.peer_auth().cluster_key() {
            Some(key) => JoinProof::check(key, proof, body).map_err(ApiError::Forbidden),
            None => Ok(()),
        }
    }

    async fn join(&self, req: JoinRequest) -> Result<u64, ApiError> {
        let node = Node {
            id: req.id,
            raft_addr: req.addr,
            http_addr: req.http_addr,
        };
        self.0.join(node).await.map_err(api_error)
    }

    async fn remove(&self, id: &str) -> Result<(), ApiError> {
        self.0.remove(id).await.map_err(api_error)
    }

    fn status(&self) -> Status {
        status(self.0.status(), &self.0)
    }

    fn not_ready(&self) -> Option<String> {
        self.0.not_ready()
    }

    fn not_live(&self) -> Option<String> {
        self.0.not_live()
    }

    fn metrics(&self) -> NodeMetrics {
        let m = self.0.metrics();
        NodeMetrics {
            status: status(m.status, &self.0),
            ready: self.0.not_ready().is_none(),
            last_log_index: m.last_log_index,
            purged_index: m.purged_index,
            snapshot_index: m.snapshot_index,
            snapshot_bytes: m.snapshot_bytes,
            replication_lag: m.replication_lag,
            rocksdb: m
                .rocksdb
                .into_iter()
                .map(|c| CfSize {
                    cf: c.name.to_string(),
                    sst_bytes: c.sst_bytes,
                    memtable_bytes: c.memtable_bytes,
                })
                .collect(),
            peer_rejected: m.peer_rejected,
            heartbeat_frames: m.heartbeat_frames,
            heartbeats: m.heartbeats,
            groups: self
                .0
                .local_states()
                .into_iter()
                .map(|g| GroupMetrics {
                    leader: g.role == "leader",
                    has_leader: g.leader.is_some(),
                    group: g.group,
                    term: g.term,
                    commit_index: g.commit_index,
                    applied_index: g.applied_index,
                    last_log_index: g.last_log_index,
                })
                .collect(),
        }
    }

    async fn group_status(&self, group: &str) -> Result<Status, ApiError> {
        let s = self.0.group_status(group).await.map_err(api_error)?;
        Ok(status(s, &self.0))
    }

    async fn backup(&self, group: &str, l: ReadLevel) -> Result<Backup, ApiError> {
        let (b, permit) = self
            .0
            .group_backup(group, level(l))
            .await
            .map_err(api_error)?;
        Ok(Backup {
            file: b.file,
            bytes: b.bytes,
            applied_index: b.applied_index,
            keys: b.keys,
            permit: Some(Box::new(permit)),
        })
    }
}

/// A group as the cluster sees it, in the wire shape.
fn group_info(v: GroupView) -> GroupInfo {
    GroupInfo {
        id: v.id,
        members: v.members,
        leader: v.leader.map(node_info),
        term: v.term,
        nodes: v
            .nodes
            .into_iter()
            .map(|s| GroupNodeInfo {
                voter: s.voters.contains(&s.node),
                id: s.node,
                role: s.role,
                term: s.term,
                commit_index: s.commit_index,
                applied_index: s.applied_index,
            })
            .collect(),
        unreachable: v.unreachable,
    }
}

fn status(s: hraftd_store::Status, store: &Store) -> Status {
    Status {
        id: s.id,
        role: s.role.as_str().to_string(),
        term: s.term,
        leader: s.leader.map(node_info),
        members: s
            .members
            .into_iter()
            .map(|m| MemberInfo {
                id: m.node.id,
                raft_addr: m.node.raft_addr,
                http_addr: m.node.http_addr,
                voter: m.voter,
            })
            .collect(),
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        peer_auth: store.peer_auth().mode().to_string(),
    }
}
