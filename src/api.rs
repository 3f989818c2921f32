//! Adapts the store to the HTTP layer's `KvStore` trait: the store's errors become API
//! errors (the HTTP layer then maps those to status codes), and its status to the wire shape.

use std::sync::Arc;

use hraftd_httpd::ApiError;
use hraftd_httpd::Backup;
use hraftd_httpd::CfSize;
use hraftd_httpd::CreateGroupRequest;
use hraftd_httpd::GroupInfo;
use hraftd_httpd::GroupMetrics;
use hraftd_httpd::GroupNodeInfo;
use hraftd_httpd::JoinRequest;
use hraftd_httpd::KvStore;
use hraftd_httpd::MemberInfo;
use hraftd_httpd::NodeInfo;
use hraftd_httpd::NodeMetrics;
use hraftd_httpd::ReadLevel;
use hraftd_httpd::Status;
use hraftd_store::Error;
use hraftd_store::GroupView;
use hraftd_store::JoinProof;
use hraftd_store::Node;
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

impl KvStore for Api {
    async fn get(&self, group: &str, key: &str, l: ReadLevel) -> Result<Option<String>, ApiError> {
        self.0
            .group_get(group, key, level(l))
            .await
            .map_err(api_error)
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
