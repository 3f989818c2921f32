//! The handlers against a fake store: every status code the API promises, and that bad
//! input never reaches (or changes) the store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;

use actix_web::body::to_bytes;
use actix_web::http::Method;
use actix_web::http::StatusCode;
use actix_web::test;
use serde_json::json;
use serde_json::Value;

use super::*;

#[derive(Debug, Clone, PartialEq)]
enum Mode {
    Leader,
    Follower {
        leader_http: Option<String>,
    },
    /// Writes and consistent reads time out / find no quorum.
    Stuck,
}

struct Fake {
    mode: Mutex<Mode>,
    data: Mutex<BTreeMap<String, String>>,
    /// The `mod_index` of keys written by `cas`.
    mods: Mutex<BTreeMap<String, u64>>,
    /// Incremented by every accepted write: proof that a request reached the store.
    index: Mutex<u64>,
    members: Mutex<Vec<String>>,
    /// What `not_ready` answers.
    not_ready: Mutex<Option<String>>,
    /// What `not_live` answers.
    not_live: Mutex<Option<String>>,
    /// Groups besides the default one, with their members.
    groups: Mutex<BTreeMap<String, Vec<String>>>,
    /// Every set and delete, for watches.
    log: Arc<FakeLog>,
    /// Granted leases: id -> TTL in ms.
    leases: Mutex<BTreeMap<u64, u64>>,
}

/// The fake's change history: (index, key, value or `None` for a delete), and the last
/// index, which watches wait on.
struct FakeLog {
    changes: Mutex<Vec<(u64, String, Option<String>)>>,
    last: tokio::sync::watch::Sender<u64>,
    /// Changes at or before this index are "compacted".
    oldest: Mutex<u64>,
}

impl FakeLog {
    fn record(&self, index: u64, key: &str, value: Option<String>) {
        self.changes
            .lock()
            .unwrap()
            .push((index, key.to_string(), value));
        self.last.send_replace(index);
    }
}

struct FakeWatch {
    log: Arc<FakeLog>,
    target: WatchTarget,
    position: u64,
    start: u64,
}

impl WatchStream for FakeWatch {
    fn start_index(&self) -> u64 {
        self.start
    }

    async fn next(&mut self) -> Result<WatchBatch, WatchEnded> {
        let mut rx = self.log.last.subscribe();
        loop {
            let found: Vec<_> = {
                let changes = self.log.changes.lock().unwrap();
                let first = changes.iter().find(|(i, k, _)| {
                    *i > self.position
                        && match &self.target {
                            WatchTarget::Key(t) => t == k,
                            WatchTarget::Prefix(p) => k.starts_with(p.as_str()),
                        }
                });
                match first {
                    None => Vec::new(),
                    Some((index, ..)) => changes
                        .iter()
                        .filter(|(i, ..)| i == index)
                        .cloned()
                        .collect(),
                }
            };
            if let Some((index, ..)) = found.first().cloned() {
                self.position = index;
                let events = found
                    .into_iter()
                    .map(|(i, key, value)| wire::WatchEvent {
                        kind: if value.is_some() {
                            wire::EventKind::Put
                        } else {
                            wire::EventKind::Delete
                        },
                        kv: wire::KeyValue {
                            key,
                            value,
                            create_index: i,
                            mod_index: i,
                            version: 1,
                            lease: None,
                        },
                    })
                    .collect();
                return Ok(WatchBatch { index, events });
            }
            if rx.changed().await.is_err() {
                return Err(WatchEnded::Closed);
            }
        }
    }
}

impl Fake {
    fn new(mode: Mode) -> Arc<Fake> {
        Arc::new(Fake {
            mode: Mutex::new(mode),
            data: Mutex::new(BTreeMap::new()),
            mods: Mutex::new(BTreeMap::new()),
            index: Mutex::new(0),
            members: Mutex::new(vec!["node0".into()]),
            not_ready: Mutex::new(None),
            not_live: Mutex::new(None),
            groups: Mutex::new(BTreeMap::new()),
            log: Arc::new(FakeLog {
                changes: Mutex::new(Vec::new()),
                last: tokio::sync::watch::channel(0).0,
                oldest: Mutex::new(0),
            }),
            leases: Mutex::new(BTreeMap::new()),
        })
    }

    /// Where the fake keeps `key` of `group`: the default group's keys as they are.
    fn slot(&self, group: &str, key: &str) -> Result<String, ApiError> {
        if group == DEFAULT_GROUP {
            return Ok(key.to_string());
        }
        if !self.groups.lock().unwrap().contains_key(group) {
            return Err(ApiError::GroupNotFound(format!("no group {group:?}")));
        }
        Ok(format!("{group}\0{key}"))
    }

    fn group_info(&self, id: &str) -> Result<GroupInfo, ApiError> {
        let members = if id == DEFAULT_GROUP {
            self.members.lock().unwrap().clone()
        } else {
            self.groups
                .lock()
                .unwrap()
                .get(id)
                .cloned()
                .ok_or_else(|| ApiError::GroupNotFound(format!("no group {id:?}")))?
        };
        Ok(GroupInfo {
            id: id.to_string(),
            members,
            leader: None,
            term: 1,
            nodes: vec![],
            unreachable: vec![],
        })
    }

    fn index(&self) -> u64 {
        *self.index.lock().unwrap()
    }

    fn leader_check(&self) -> Result<(), ApiError> {
        match self.mode.lock().unwrap().clone() {
            Mode::Leader | Mode::Stuck => Ok(()),
            Mode::Follower { leader_http } => Err(ApiError::NotLeader { leader_http }),
        }
    }

    fn read_check(&self, opts: &ReadOptions) -> Result<(), ApiError> {
        if opts.level != ReadLevel::Stale {
            self.leader_check()?;
        }
        if opts.level == ReadLevel::Consistent && self.stuck() {
            return Err(ApiError::Unavailable("no quorum".into()));
        }
        if let Some(min) = opts.min_index {
            if min > self.index() {
                return Err(ApiError::Timeout(format!(
                    "applying index {min} (min_index; applied {}) did not complete within {:?}",
                    self.index(),
                    opts.wait
                )));
            }
        }
        Ok(())
    }

    /// The key stored at `slot` if it belongs to `group`.
    fn key_of(&self, group: &str, slot: &str) -> Option<String> {
        if group == DEFAULT_GROUP {
            return (!slot.contains('\0')).then(|| slot.to_string());
        }
        slot.strip_prefix(&format!("{group}\0")).map(str::to_string)
    }

    /// The fake's `mod_index` of a key: the index of its last write through `cas` (1 for
    /// keys written otherwise).
    fn mod_of(&self, slot: &str) -> u64 {
        self.mods.lock().unwrap().get(slot).copied().unwrap_or(1)
    }

    fn kv(&self, key: &str, slot: &str, value: Option<String>) -> wire::KeyValue {
        let m = self.mod_of(slot);
        wire::KeyValue {
            key: key.to_string(),
            value,
            create_index: m,
            mod_index: m,
            version: 1,
            lease: None,
        }
    }

    fn stuck(&self) -> bool {
        *self.mode.lock().unwrap() == Mode::Stuck
    }

    fn bump(&self) -> u64 {
        let mut i = self.index.lock().unwrap();
        *i += 1;
        *i
    }
}

impl KvStore for Fake {
    type Watch = FakeWatch;

    async fn watch(
        &self,
        group: &str,
        target: WatchTarget,
        from: Option<u64>,
    ) -> Result<FakeWatch, ApiError> {
        self.slot(group, "")?;
        let oldest = *self.log.oldest.lock().unwrap();
        let start = from.unwrap_or_else(|| self.index());
        if start < oldest {
            return Err(ApiError::Compacted {
                message: format!("history starts after {oldest}"),
                oldest,
            });
        }
        Ok(FakeWatch {
            log: self.log.clone(),
            target,
            position: start,
            start,
        })
    }

    async fn put_leased(
        &self,
        group: &str,
        key: String,
        value: String,
        _expect: Option<u64>,
        lease: LeaseArg,
    ) -> Result<wire::WriteResponse, ApiError> {
        let granted = match lease {
            LeaseArg::Id(id) if !self.leases.lock().unwrap().contains_key(&id) => {
                return Err(ApiError::NotFound(format!("lease {id} not found")))
            }
            LeaseArg::Id(_) => None,
            LeaseArg::Ttl(t) => Some(self.lease_grant(group, t).await?.id),
        };
        let index = self.set(group, vec![(key, value)]).await?;
        Ok(wire::WriteResponse {
            index,
            lease: granted,
        })
    }

    async fn lease_grant(
        &self,
        group: &str,
        ttl: std::time::Duration,
    ) -> Result<wire::LeaseResponse, ApiError> {
        self.slot(group, "")?;
        self.leader_check()?;
        let index = self.bump();
        self.leases
            .lock()
            .unwrap()
            .insert(index, ttl.as_millis() as u64);
        Ok(wire::LeaseResponse {
            id: index.to_string(),
            ttl_ms: ttl.as_millis() as u64,
            index: Some(index),
        })
    }

    async fn lease_keepalive(&self, group: &str, id: u64) -> Result<wire::LeaseResponse, ApiError> {
        let info = self.lease(group, id).await?;
        Ok(wire::LeaseResponse {
            id: info.id,
            ttl_ms: info.ttl_ms,
            index: None,
        })
    }

    async fn lease(&self, group: &str, id: u64) -> Result<wire::LeaseInfo, ApiError> {
        self.slot(group, "")?;
        self.leader_check()?;
        let ttl_ms = *self
            .leases
            .lock()
            .unwrap()
            .get(&id)
            .ok_or_else(|| ApiError::NotFound(format!("lease {id} not found")))?;
        Ok(wire::LeaseInfo {
            id: id.to_string(),
            ttl_ms,
            remaining_ms: ttl_ms,
            granted_index: id,
            keys: vec![],
            more: false,
        })
    }

    async fn lease_revoke(&self, group: &str, id: u64) -> Result<wire::DeletedResponse, ApiError> {
        self.lease(group, id).await?;
        self.leases.lock().unwrap().remove(&id);
        Ok(wire::DeletedResponse {
            index: self.bump(),
            deleted: 0,
        })
    }

    async fn get_after(
        &self,
        group: &str,
        key: &str,
        opts: &ReadOptions,
        after: u64,
    ) -> Result<Read<Option<wire::KeyValue>>, ApiError> {
        let mut w = self
            .watch(group, WatchTarget::Key(key.to_string()), Some(after))
            .await?;
        let _ = tokio::time::timeout(opts.wait, w.next()).await;
        self.get(group, key, opts).await
    }

    async fn get(
        &self,
        group: &str,
        key: &str,
        opts: &ReadOptions,
    ) -> Result<Read<Option<wire::KeyValue>>, ApiError> {
        let slot = self.slot(group, key)?;
        self.read_check(opts)?;
        let value = self.data.lock().unwrap().get(&slot).cloned();
        Ok(Read {
            index: self.index(),
            value: value.map(|v| self.kv(key, &slot, Some(v))),
        })
    }

    async fn range(
        &self,
        group: &str,
        range: &RangeRequest,
        opts: &ReadOptions,
    ) -> Result<Read<Page>, ApiError> {
        self.slot(group, "")?;
        self.read_check(opts)?;
        let data = self.data.lock().unwrap().clone();
        let mut kvs = Vec::new();
        let mut more = false;
        for (slot, v) in data {
            let Some(key) = self.key_of(group, &slot) else {
                continue;
            };
            let inside = match &range.keys {
                KeyRange::Prefix(p) => key.starts_with(p.as_str()),
                KeyRange::Between { from, to } => {
                    key.as_str() >= from.as_str() && to.as_ref().is_none_or(|t| key < *t)
                }
            };
            if !inside || range.after.as_ref().is_some_and(|a| key <= *a) {
                continue;
            }
            if kvs.len() == range.limit {
                more = true;
                break;
            }
            let value = (!range.keys_only).then_some(v);
            kvs.push(self.kv(&key, &slot, value));
        }
        Ok(Read {
            index: self.index(),
            value: Page { kvs, more },
        })
    }

    async fn cas(
        &self,
        group: &str,
        key: String,
        value: Option<String>,
        expect: u64,
    ) -> Result<u64, ApiError> {
        let slot = self.slot(group, &key)?;
        self.leader_check()?;
        let cur = self.data.lock().unwrap().get(&slot).cloned();
        let at = cur.as_ref().map(|_| self.mod_of(&slot)).unwrap_or(0);
        if at != expect {
            return Err(ApiError::PreconditionFailed {
                message: format!("{key:?} is at {at}"),
                current: cur.map(|v| self.kv(&key, &slot, Some(v))),
            });
        }
        let index = self.bump();
        match value {
            Some(v) => {
                self.data.lock().unwrap().insert(slot.clone(), v);
                self.mods.lock().unwrap().insert(slot, index);
            }
            None => {
                self.data.lock().unwrap().remove(&slot);
            }
        }
        Ok(index)
    }

    async fn delete_prefix(
        &self,
        group: &str,
        prefix: String,
    ) -> Result<wire::DeletedResponse, ApiError> {
        self.slot(group, "")?;
        self.leader_check()?;
        let mut data = self.data.lock().unwrap();
        let before = data.len();
        data.retain(|slot, _| {
            self.key_of(group, slot)
                .is_none_or(|k| !k.starts_with(prefix.as_str()))
        });
        let deleted = (before - data.len()) as u64;
        drop(data);
        Ok(wire::DeletedResponse {
            index: self.bump(),
            deleted,
        })
    }

    async fn txn(
        &self,
        group: &str,
        _txn: wire::TxnRequest,
    ) -> Result<wire::TxnResponse, ApiError> {
        // Transactions are the state machine's (tested against real clusters); the fake
        // only proves that a valid one reaches the store.
        self.slot(group, "")?;
        self.leader_check()?;
        Ok(wire::TxnResponse {
            succeeded: true,
            index: self.bump(),
            results: vec![],
        })
    }

    async fn set(&self, group: &str, pairs: Vec<(String, String)>) -> Result<u64, ApiError> {
        self.slot(group, "")?;
        self.leader_check()?;
        if self.stuck() {
            return Err(ApiError::OutcomeUnknown(
                "the write did not commit within 5s; outcome unknown".into(),
            ));
        }
        let index = self.bump();
        for (k, v) in pairs {
            let slot = self.slot(group, &k)?;
            self.data.lock().unwrap().insert(slot.clone(), v.clone());
            self.log.record(index, &slot, Some(v));
        }
        Ok(index)
    }

    async fn delete(&self, group: &str, key: String) -> Result<u64, ApiError> {
        let slot = self.slot(group, &key)?;
        self.leader_check()?;
        self.data.lock().unwrap().remove(&slot);
        let index = self.bump();
        self.log.record(index, &slot, None);
        Ok(index)
    }

    async fn groups(&self) -> Result<Vec<GroupInfo>, ApiError> {
        let mut out = vec![self.group_info(DEFAULT_GROUP)?];
        let ids: Vec<String> = self.groups.lock().unwrap().keys().cloned().collect();
        for id in ids {
            out.push(self.group_info(&id)?);
        }
        Ok(out)
    }

    async fn group(&self, id: &str) -> Result<GroupInfo, ApiError> {
        self.group_info(id)
    }

    async fn create_group(&self, req: CreateGroupRequest) -> Result<GroupInfo, ApiError> {
        self.leader_check()?;
        if req.id == DEFAULT_GROUP || self.groups.lock().unwrap().contains_key(&req.id) {
            return Err(ApiError::Conflict(format!("group {:?} exists", req.id)));
        }
        self.groups
            .lock()
            .unwrap()
            .insert(req.id.clone(), req.members);
        self.bump();
        self.group_info(&req.id)
    }

    async fn delete_group(&self, id: &str) -> Result<u64, ApiError> {
        self.leader_check()?;
        self.group_info(id)?;
        self.groups.lock().unwrap().remove(id);
        Ok(self.bump())
    }

    async fn add_group_member(&self, id: &str, member: &str) -> Result<GroupInfo, ApiError> {
        self.leader_check()?;
        self.group_info(id)?;
        if let Some(m) = self.groups.lock().unwrap().get_mut(id) {
            m.push(member.to_string());
        }
        self.bump();
        self.group_info(id)
    }

    async fn transfer_leader(&self, id: &str, to: &str) -> Result<GroupInfo, ApiError> {
        self.leader_check()?;
        let info = self.group_info(id)?;
        if !info.members.iter().any(|m| m == to) {
            return Err(ApiError::BadRequest(format!("{to:?} is not a voter")));
        }
        Ok(info)
    }

    async fn remove_group_member(&self, id: &str, member: &str) -> Result<GroupInfo, ApiError> {
        self.leader_check()?;
        let info = self.group_info(id)?;
        if !info.members.iter().any(|m| m == member) {
            return Err(ApiError::NotFound(format!("{member:?} is not a member")));
        }
        if let Some(m) = self.groups.lock().unwrap().get_mut(id) {
            m.retain(|x| x != member);
        }
        self.bump();
        self.group_info(id)
    }

    /// The fake's "cluster key" is the proof `let-me-in`.
    fn check_join(&self, proof: Option<&str>, _body: &[u8]) -> Result<(), ApiError> {
        match proof {
            Some("let-me-in") | None => Ok(()),
            Some(_) => Err(ApiError::Forbidden("bad join proof".into())),
        }
    }

    async fn join(&self, req: JoinRequest) -> Result<u64, ApiError> {
        self.leader_check()?;
        if req.id == "busy" {
            return Err(ApiError::Conflict("membership change in progress".into()));
        }
        self.members.lock().unwrap().push(req.id);
        Ok(self.bump())
    }

    async fn remove(&self, id: &str) -> Result<(), ApiError> {
        self.leader_check()?;
        let mut m = self.members.lock().unwrap();
        let before = m.len();
        m.retain(|x| x != id);
        if m.len() == before {
            return Err(ApiError::NotFound(format!("no member named {id:?}")));
        }
        Ok(())
    }

    fn status(&self) -> Status {
        Status {
            id: "node0".into(),
            role: "leader".into(),
            term: 3,
            leader: None,
            members: vec![],
            commit_index: self.index(),
            applied_index: self.index(),
            peer_auth: "cluster-key".into(),
        }
    }

    fn not_ready(&self) -> Option<String> {
        self.not_ready.lock().unwrap().clone()
    }

    fn not_live(&self) -> Option<String> {
        self.not_live.lock().unwrap().clone()
    }

    fn metrics(&self) -> NodeMetrics {
        NodeMetrics {
            status: self.status(),
            ready: self.not_ready().is_none(),
            last_log_index: 12,
            purged_index: 2,
            snapshot_index: 2,
            snapshot_bytes: 4096,
            replication_lag: vec![("node1".into(), 3), ("node2".into(), 0)],
            rocksdb: vec![CfSize {
                cf: "data".into(),
                sst_bytes: 1000,
                memtable_bytes: 200,
            }],
            peer_rejected: vec![("handshake".into(), 7)],
            heartbeat_frames: 5,
            heartbeats: 40,
            groups: vec![GroupMetrics {
                group: "default".into(),
                leader: true,
                has_leader: true,
                term: 3,
                commit_index: 12,
                applied_index: 12,
                last_log_index: 12,
            }],
        }
    }

    async fn group_status(&self, group: &str) -> Result<Status, ApiError> {
        self.group_info(group)?;
        Ok(self.status())
    }

    async fn backup(&self, group: &str, level: ReadLevel) -> Result<Backup, ApiError> {
        self.slot(group, "")?;
        if level != ReadLevel::Stale {
            self.leader_check()?;
        }
        // The fake's "image": its pairs as lines, in an unlinked temporary file.
        let image: String = self
            .data
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect();
        let path = std::env::temp_dir().join(format!(
            "hraftd-fake-backup-{}-{}",
            std::process::id(),
            self.bump()
        ));
        std::fs::write(&path, &image).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        Ok(Backup {
            file,
            bytes: image.len() as u64,
            applied_index: self.index(),
            keys: self.data.lock().unwrap().len() as u64,
            permit: None,
        })
    }
}

type Headers = actix_web::http::header::HeaderMap;

/// Sends one request to an app made by `test::init_service`; evaluates to status,
/// headers and the body's bytes. (A macro: the app's request type is actix-http's, which
/// this crate does not name.)
macro_rules! send {
    ($app:expr, $method:expr, $uri:expr, $body:expr) => {{
        let req = test::TestRequest::default()
            .method($method)
            .uri($uri)
            .set_payload($body.to_vec())
            .to_request();
        let resp = test::call_service($app, req).await;
        let status = resp.status();
        let headers: Headers = resp.headers().clone();
        let bytes = to_bytes(resp.into_body()).await.unwrap_or_default();
        (status, headers, bytes.to_vec())
    }};
}

/// Sends one request to a new app over `fake`; returns status, headers and JSON body.
async fn call(
    fake: &Arc<Fake>,
    settings: Settings,
    method: Method,
    uri: &str,
    body: &[u8],
) -> (StatusCode, Headers, Value) {
    let app = test::init_service(app(fake.clone(), settings, Arc::default())).await;
    let (status, headers, bytes) = send!(&app, method.clone(), uri, body);
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("{method} {uri}: body is not JSON: {bytes:?}"));
    (status, headers, json)
}

async fn req(fake: &Arc<Fake>, method: Method, uri: &str, body: &str) -> (StatusCode, Value) {
    let (s, _, v) = call(fake, Settings::default(), method, uri, body.as_bytes()).await;
    (s, v)
}

/// Checks an error body: a message that mentions `contains`, and a known `code`.
fn assert_error(v: &Value, contains: &str) {
    let msg = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field in {v}"));
    assert!(
        msg.contains(contains),
        "error {msg:?} should mention {contains:?}"
    );
    let body: wire::ErrorBody =
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{v} is no error body: {e}"));
    assert_ne!(body.code, wire::ErrorCode::Unknown, "{v}");
}

/// Checks an error body's stable code.
fn assert_code(v: &Value, code: &str) {
    assert_eq!(v["code"], code, "{v}");
}

#[actix_web::test]
async fn write_read_delete_round_trip() {
    let f = Fake::new(Mode::Leader);
    let (s, v) = req(
        &f,
        Method::POST,
        "/key",
        r#"{"user1":"batman","user2":"robin"}"#,
    )
    .await;
    assert_eq!((s, v), (StatusCode::OK, json!({"index": 1})));
    let (s, v) = req(&f, Method::GET, "/key/user1", "").await;
    assert_eq!((s, v), (StatusCode::OK, json!({"user1": "batman"})));
    let (s, v) = req(&f, Method::GET, "/key?key=user2&level=consistent", "").await;
    assert_eq!((s, v), (StatusCode::OK, json!({"user2": "robin"})));
    let (s, v) = req(&f, Method::PUT, "/key/a/b", "raw value").await;
    assert_eq!((s, v), (StatusCode::OK, json!({"index": 2})));
    let (s, v) = req(&f, Method::GET, "/key/a/b?level=stale", "").await;
    assert_eq!((s, v), (StatusCode::OK, json!({"a/b": "raw value"})));
    let (s, _) = req(&f, Method::PUT, "/key/with%20space", "x").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        f.data.lock().unwrap().get("with space").map(String::as_str),
        Some("x")
    );
    let (s, _) = req(&f, Method::DELETE, "/key/user1", "").await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = req(&f, Method::GET, "/key/user1", "").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "user1");
    // Deleting again is fine, and the query form works too.
    let (s, _) = req(&f, Method::DELETE, "/key?key=user1", "").await;
    assert_eq!(s, StatusCode::OK);
}

#[actix_web::test]
async fn follower_redirects_leader_only_requests() {
    let f = Fake::new(Mode::Follower {
        leader_http: Some("10.0.0.1:11000".into()),
    });
    f.data.lock().unwrap().insert("k".into(), "v".into());
    for (method, uri) in [
        (Method::POST, "/key"),
        (Method::PUT, "/key/k"),
        (Method::DELETE, "/key/k"),
        (Method::GET, "/key/k"),
        (Method::GET, "/key/k?level=default"),
        (Method::GET, "/key?key=k&level=consistent"),
        (Method::POST, "/join"),
        (Method::POST, "/remove"),
    ] {
        let body: &[u8] = match uri {
            "/key" => br#"{"k":"v2"}"#,
            "/join" => br#"{"id":"n1","addr":"a:1","http_addr":"a:2"}"#,
            "/remove" => br#"{"id":"node0"}"#,
            _ => b"v2",
        };
        let (s, h, v) = call(&f, Settings::default(), method.clone(), uri, body).await;
        assert_eq!(s, StatusCode::TEMPORARY_REDIRECT, "{method} {uri}");
        let loc = h
            .get("location")
            .expect("Location header")
            .to_str()
            .unwrap();
        assert_eq!(loc, format!("http://10.0.0.1:11000{uri}"), "{method} {uri}");
        assert_eq!(v["leader"], "10.0.0.1:11000");
        assert_code(&v, "not_leader");
    }
    // Stale reads are served locally; nothing was written.
    let (s, v) = req(&f, Method::GET, "/key/k?level=stale", "").await;
    assert_eq!((s, v), (StatusCode::OK, json!({"k": "v"})));
    assert_eq!(f.index(), 0);
}

#[actix_web::test]
async fn no_leader_is_503_with_retry_after() {
    let f = Fake::new(Mode::Follower { leader_http: None });
    for (method, uri) in [(Method::POST, "/key"), (Method::GET, "/key/k")] {
        let (s, h, v) = call(&f, Settings::default(), method, uri, br#"{"k":"v"}"#).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(h.get("retry-after").is_some(), "503 must carry Retry-After");
        assert_error(&v, "no leader");
        assert_code(&v, "no_leader");
    }
    let (s, _) = req(&f, Method::GET, "/key/k?level=stale", "").await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "stale reads work without a leader"
    );
}

#[actix_web::test]
async fn stuck_cluster_answers_timeout_and_unavailable() {
    let f = Fake::new(Mode::Stuck);
    let (s, v) = req(&f, Method::POST, "/key", r#"{"k":"v"}"#).await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
    assert_error(&v, "outcome unknown");
    assert_code(&v, "outcome_unknown");
    let (s, h, v) = call(
        &f,
        Settings::default(),
        Method::GET,
        "/key/k?level=consistent",
        b"",
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.get("retry-after").is_some());
    assert_code(&v, "unavailable");
}

#[actix_web::test]
async fn bad_input_is_400_and_changes_nothing() {
    let f = Fake::new(Mode::Leader);
    f.data.lock().unwrap().insert("k".into(), "v".into());
    for (method, uri, body, says) in [
        (Method::POST, "/key", "{not json", "malformed"),
        (Method::POST, "/key", r#"{"a":1}"#, "must be a string"),
        (
            Method::POST,
            "/key",
            r#"{"a":"x","b":null}"#,
            "must be a string",
        ),
        (Method::POST, "/key", r#"["a","b"]"#, "object"),
        (Method::POST, "/key", "{}", "at least one"),
        (Method::POST, "/key", r#"{"":"x"}"#, "empty"),
        (Method::POST, "/key", "", "malformed"),
        (Method::PUT, "/key/", "x", "empty"),
        (Method::GET, "/key/k?level=bogus", "", "unknown level"),
        (Method::GET, "/key?level=stale", "", "missing"),
        (Method::GET, "/key?key=", "", "empty"),
        (Method::DELETE, "/key", "", "missing"),
        (Method::POST, "/join", r#"{"id":"n1"}"#, "malformed"),
        (
            Method::POST,
            "/join",
            r#"{"id":"","addr":"a","http_addr":"b"}"#,
            "non-empty",
        ),
        (Method::POST, "/remove", "nope", "malformed"),
        (
            Method::POST,
            "/join",
            r#"{"id":"n1","addr":"\u0001\u00e9:1","http_addr":"h:2"}"#,
            "not host:port",
        ),
        (
            Method::POST,
            "/join",
            r#"{"id":"n1","addr":"h:99999","http_addr":"h:2"}"#,
            "not host:port",
        ),
        (
            Method::POST,
            "/join",
            r#"{"id":"n1","addr":"h:1","http_addr":"ftp://h:2"}"#,
            "not host:port",
        ),
    ] {
        let (s, v) = req(&f, method.clone(), uri, body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {uri} {body:?} -> {v}");
        assert_error(&v, says);
        assert_code(&v, "bad_request");
    }
    let (s, _) = req(&f, Method::PUT, "/key/bad", "").await;
    assert_eq!(s, StatusCode::OK, "an empty value is a valid value");
    let (s, _, v) = call(
        &f,
        Settings::default(),
        Method::PUT,
        "/key/bin",
        &[0xff, 0xfe],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(f.index(), 1, "only the valid write reached the store");
    assert_eq!(
        f.data.lock().unwrap().get("k").map(String::as_str),
        Some("v")
    );
}

#[actix_web::test]
async fn oversized_body_is_413() {
    let f = Fake::new(Mode::Leader);
    let small = Settings {
        body_limit: 64,
        ..Settings::default()
    };
    let big = format!(r#"{{"k":"{}"}}"#, "x".repeat(100));
    let (s, _, v) = call(&f, small.clone(), Method::POST, "/key", big.as_bytes()).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error(&v, "64 bytes");
    assert_code(&v, "too_large");
    let (s, _, _) = call(&f, small.clone(), Method::PUT, "/key/k", &[b'x'; 65]).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, _, _) = call(&f, small, Method::PUT, "/key/k", &[b'x'; 64]).await;
    assert_eq!(s, StatusCode::OK, "exactly the limit is accepted");
    assert_eq!(f.index(), 1);
}

#[actix_web::test]
async fn wrong_method_is_405_and_unknown_path_404() {
    let f = Fake::new(Mode::Leader);
    for (method, uri) in [
        (Method::PATCH, "/key"),
        (Method::PUT, "/key"),
        (Method::POST, "/key/k"),
        (Method::GET, "/join"),
        (Method::GET, "/remove"),
        (Method::POST, "/status"),
        (Method::DELETE, "/status"),
    ] {
        let (s, v) = req(&f, method.clone(), uri, "{}").await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        assert_error(&v, "not allowed");
        assert_error(&v, uri);
        assert_code(&v, "method_not_allowed");
    }
    let (s, v) = req(&f, Method::GET, "/nope", "").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "/nope");
    assert_code(&v, "not_found");
    assert_eq!(f.index(), 0);
}

#[actix_web::test]
async fn membership_and_status() {
    let f = Fake::new(Mode::Leader);
    let (s, v) = req(
        &f,
        Method::POST,
        "/join",
        r#"{"id":"n1","addr":"h:12001","http_addr":"h:11001"}"#,
    )
    .await;
    assert_eq!(
        (s, v),
        (StatusCode::OK, json!({"joined": "n1", "index": 1}))
    );
    let (s, v) = req(
        &f,
        Method::POST,
        "/join",
        r#"{"id":"busy","addr":"h:1","http_addr":"h:2"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_error(&v, "in progress");
    assert_code(&v, "conflict");
    let (s, _) = req(&f, Method::POST, "/remove", r#"{"id":"n1"}"#).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = req(&f, Method::POST, "/remove", r#"{"id":"n1"}"#).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "n1");
    let (s, v) = req(&f, Method::GET, "/status", "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["id"], "node0");
    assert_eq!(v["role"], "leader");
    assert_eq!(v["leader"], Value::Null);
    for field in ["term", "members", "commit_index", "applied_index"] {
        assert!(v.get(field).is_some(), "status lacks {field}: {v}");
    }
}

#[actix_web::test]
async fn livez_and_readyz() {
    let f = Fake::new(Mode::Follower { leader_http: None });
    let (s, v) = req(&f, Method::GET, "/livez", "").await;
    assert_eq!((s, v), (StatusCode::OK, json!({"status": "live"})));
    let (s, v) = req(&f, Method::GET, "/readyz", "").await;
    assert_eq!((s, v), (StatusCode::OK, json!({"status": "ready"})));
    *f.not_ready.lock().unwrap() = Some("catching up: applied 3 of 9".into());
    let (s, h, v) = call(&f, Settings::default(), Method::GET, "/readyz", b"").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_error(&v, "not ready: catching up: applied 3 of 9");
    assert_eq!(h.get("retry-after").unwrap(), "1");
    // Liveness does not depend on readiness.
    let (s, _) = req(&f, Method::GET, "/livez", "").await;
    assert_eq!(s, StatusCode::OK);
}

#[actix_web::test]
async fn metrics_count_requests_by_route_and_show_the_node() {
    let f = Fake::new(Mode::Leader);
    let app = test::init_service(app(f.clone(), Settings::default(), Arc::default())).await;
    send!(&app, Method::POST, "/key", br#"{"a":"1"}"#);
    send!(&app, Method::GET, "/key/a", b"");
    send!(&app, Method::GET, "/key/secret-key-name", b"");
    send!(&app, Method::POST, "/key", b"not json");
    send!(&app, Method::GET, "/nowhere", b"");
    let (s, h, body) = send!(&app, Method::GET, "/metrics", b"");
    assert_eq!(s, StatusCode::OK);
    assert!(h
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let page = String::from_utf8(body).unwrap();
    for line in [
        r#"hraftd_http_requests_total{code="200",method="POST",route="/key"} 1"#,
        r#"hraftd_http_requests_total{code="400",method="POST",route="/key"} 1"#,
        r#"hraftd_http_requests_total{code="200",method="GET",route="/key/{key:.*}"} 1"#,
        r#"hraftd_http_requests_total{code="404",method="GET",route="/key/{key:.*}"} 1"#,
        r#"hraftd_http_requests_total{code="404",method="GET",route="unmatched"} 1"#,
        r#"hraftd_http_request_duration_seconds_count{method="POST",route="/key"} 2"#,
        r#"hraftd_raft_role{role="leader"} 1"#,
        r#"hraftd_raft_role{role="follower"} 0"#,
        "hraftd_raft_term 3",
        "hraftd_raft_commit_index 1",
        "hraftd_raft_log_entries 10",
        r#"hraftd_raft_replication_lag_entries{follower="node1"} 3"#,
        r#"hraftd_raft_replication_lag_entries{follower="node2"} 0"#,
        "hraftd_snapshot_bytes 4096",
        r#"hraftd_rocksdb_sst_bytes{cf="data"} 1000"#,
        r#"hraftd_rocksdb_memtable_bytes{cf="data"} 200"#,
        "hraftd_ready 1",
        r#"hraftd_peer_rejected_total{reason="handshake"} 7"#,
        "hraftd_peer_heartbeat_frames_total 5",
        "hraftd_peer_heartbeats_total 40",
    ] {
        assert!(
            page.lines().any(|l| l == line),
            "no line {line:?} in\n{page}"
        );
    }
    assert!(
        !page.contains("secret-key-name"),
        "keys must not become labels"
    );
}

#[actix_web::test]
async fn backup_streams_the_image_from_the_leader() {
    let f = Fake::new(Mode::Leader);
    req(&f, Method::POST, "/key", r#"{"a":"1","b":"2"}"#).await;
    let app = test::init_service(app(f.clone(), Settings::default(), Arc::default())).await;
    let (s, h, body) = send!(&app, Method::GET, "/backup", b"");
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, b"a=1\nb=2\n");
    assert_eq!(h.get("content-type").unwrap(), "application/octet-stream");
    assert_eq!(h.get("x-hraftd-keys").unwrap(), "2");
    assert_eq!(h.get("x-hraftd-applied-index").unwrap(), "2");
    assert_eq!(
        h.get("content-disposition").unwrap(),
        "attachment; filename=\"hraftd-backup-2.snap\""
    );
    let (s, _, body) = send!(&app, Method::GET, "/backup?level=nonsense", b"");
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body:?}");

    // A follower redirects by default, and serves its own image with level=stale.
    *f.mode.lock().unwrap() = Mode::Follower {
        leader_http: Some("10.0.0.1:11000".into()),
    };
    let (s, h, _) = send!(&app, Method::GET, "/backup", b"");
    assert_eq!(s, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(h.get("location").unwrap(), "http://10.0.0.1:11000/backup");
    let (s, _, body) = send!(&app, Method::GET, "/backup?level=stale", b"");
    assert_eq!((s, body.as_slice()), (StatusCode::OK, &b"a=1\nb=2\n"[..]));
}

/// The OpenAPI document and the routes agree both ways: every documented operation is
/// served, every other method on a documented path is `405`, and every route registered in
/// `routes()` is documented.
#[actix_web::test]
async fn openapi_document_matches_the_routes() {
    let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    let paths = doc["paths"].as_object().expect("paths");
    let f = Fake::new(Mode::Leader);
    let app = test::init_service(app(f.clone(), Settings::default(), Arc::default())).await;
    let (s, _, body) = send!(&app, Method::GET, "/openapi.json", b"");
    assert_eq!(s, StatusCode::OK);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), doc);

    let methods = ["get", "post", "put", "delete", "patch"];
    for (path, item) in paths {
        let uri = path
            .replace("{key}", "k")
            .replace("{group}", "default")
            .replace("{id}", "node0");
        for m in methods {
            let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
            let (s, _, body) = send!(&app, method, &uri, b"{}");
            let text = String::from_utf8_lossy(&body);
            if item.get(m).is_some() {
                assert!(
                    s != StatusCode::METHOD_NOT_ALLOWED && !text.contains("no such endpoint"),
                    "{m} {path} is documented but answered {s} {text}"
                );
            } else {
                assert_eq!(
                    s,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{m} {path} is not documented"
                );
            }
        }
    }

    // The registered routes, read from the route table's source.
    let src = include_str!("lib.rs");
    let body = &src[src.find("fn routes").unwrap()..src.find("pub fn app").unwrap()];
    let registered: Vec<String> = body
        .split("web::resource(\"")
        .skip(1)
        .map(|r| r[..r.find('"').unwrap()].replace("{key:.*}", "{key}"))
        .collect();
    assert!(registered.len() >= 10, "{registered:?}");
    let mut documented: Vec<&String> = paths.keys().collect();
    documented.sort();
    let mut reg: Vec<&String> = registered.iter().collect();
    reg.sort();
    assert_eq!(
        reg, documented,
        "routes() and openapi.json list different paths"
    );
}

/// Found by review: `%FF` and `%FE` were both decoded lossily to "\u{FFFD}", so two
/// different requests silently wrote the same key.
#[actix_web::test]
async fn keys_that_decode_to_invalid_utf8_are_400_on_every_path() {
    let f = Fake::new(Mode::Leader);
    for (method, uri) in [
        (Method::PUT, "/key/%FF"),
        (Method::PUT, "/key/a%FEb"),
        (Method::GET, "/key/%FF"),
        (Method::DELETE, "/key/%C3"),
        (Method::GET, "/key?key=%FF"),
        (Method::DELETE, "/key?key=%FE"),
        (Method::GET, "/key/k?level=%FF"),
    ] {
        let (s, v) = req(&f, method.clone(), uri, "v").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {uri}: {v}");
        assert_error(&v, "invalid UTF-8");
    }
    assert_eq!(f.index(), 0, "nothing reached the store");
    assert!(f.data.lock().unwrap().is_empty());
}

#[actix_web::test]
async fn escapes_plus_and_slash_in_keys_are_decoded_as_documented() {
    let f = Fake::new(Mode::Leader);
    // Paths: %XX decoded (UTF-8 too), %2F is a slash, + is a plus.
    assert_eq!(
        req(&f, Method::PUT, "/key/caf%C3%A9", "1").await.0,
        StatusCode::OK
    );
    assert_eq!(
        req(&f, Method::PUT, "/key/a%2Fb", "2").await.0,
        StatusCode::OK
    );
    assert_eq!(
        req(&f, Method::PUT, "/key/x+y", "3").await.0,
        StatusCode::OK
    );
    let keys: Vec<String> = f.data.lock().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["a/b", "caf\u{e9}", "x+y"]);
    let (s, v) = req(&f, Method::GET, "/key/a/b", "").await;
    assert_eq!((s, v), (StatusCode::OK, json!({"a/b": "2"})));
    // Queries: form encoding, so + is a space and %2B a plus.
    let (s, v) = req(&f, Method::GET, "/key?key=x%2By", "").await;
    assert_eq!((s, v), (StatusCode::OK, json!({"x+y": "3"})));
    let (s, _) = req(&f, Method::GET, "/key?key=x+y", "").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "x+y in a query is \"x y\"");
}

/// Found by review: a 200 KB key was accepted by `POST /key` but could never be read or
/// deleted (the request head limit answers 431 first).
#[actix_web::test]
async fn keys_over_the_limit_are_400_on_every_path() {
    let f = Fake::new(Mode::Leader);
    let settings = Settings {
        max_key_bytes: 8,
        ..Settings::default()
    };
    let long = "k".repeat(9);
    let body = format!(r#"{{"ok":"1","{long}":"v"}}"#);
    let cases = [
        (Method::POST, "/key".to_string(), body.into_bytes()),
        (Method::PUT, format!("/key/{long}"), b"v".to_vec()),
        (Method::GET, format!("/key/{long}"), vec![]),
        (Method::DELETE, format!("/key?key={long}"), vec![]),
    ];
    for (method, uri, body) in cases {
        let (s, _, v) = call(&f, settings.clone(), method.clone(), &uri, &body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {uri}");
        assert_error(&v, "limit of 8 bytes");
    }
    assert_eq!(f.index(), 0, "nothing reached the store");
    let (s, _, _) = call(&f, settings, Method::PUT, "/key/kkkkkkkk", b"v").await;
    assert_eq!(s, StatusCode::OK, "exactly the limit is accepted");
}

#[actix_web::test]
async fn a_join_without_a_valid_proof_is_403_and_changes_nothing() {
    let f = Fake::new(Mode::Leader);
    let body = br#"{"id":"n1","addr":"127.0.0.1:1","http_addr":"127.0.0.1:2"}"#;
    let app = test::init_service(app(f.clone(), Settings::default(), Arc::default())).await;
    let bad = test::TestRequest::post()
        .uri("/join")
        .insert_header(("X-Hraftd-Join-Proof", "forged"))
        .set_payload(body.to_vec())
        .to_request();
    let resp = test::call_service(&app, bad).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(*f.members.lock().unwrap(), ["node0"]);
    let good = test::TestRequest::post()
        .uri("/join")
        .insert_header(("X-Hraftd-Join-Proof", "let-me-in"))
        .set_payload(body.to_vec())
        .to_request();
    assert_eq!(
        test::call_service(&app, good).await.status(),
        StatusCode::OK
    );
    assert_eq!(*f.members.lock().unwrap(), ["node0", "n1"]);
}

#[actix_web::test]
async fn livez_fails_once_raft_has_stopped() {
    let f = Fake::new(Mode::Leader);
    let (s, _, _) = call(&f, Settings::default(), Method::GET, "/livez", b"").await;
    assert_eq!(s, StatusCode::OK);
    *f.not_live.lock().unwrap() = Some("raft stopped: storage error".into());
    let (s, _, v) = call(&f, Settings::default(), Method::GET, "/livez", b"").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_error(&v, "storage error");
}

#[actix_web::test]
async fn an_entry_too_large_for_the_log_is_413() {
    let err = ApiError::TooLarge("the request encodes to 2000000 bytes".into());
    let resp = actix_web::ResponseError::error_response(&err);
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

/// The error codes are part of the API: `/openapi.json` lists exactly the codes the server
/// sends, and each code always comes with the same status.
#[actix_web::test]
async fn error_codes_are_documented() {
    let doc: Value = serde_json::from_str(OPENAPI).unwrap();
    let documented: Vec<String> = doc["components"]["schemas"]["Error"]["properties"]["code"]
        ["enum"]
        .as_array()
        .expect("Error.code has an enum")
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let sent: Vec<String> = wire::ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_string())
        .collect();
    assert_eq!(documented, sent);
    let required = &doc["components"]["schemas"]["Error"]["required"];
    assert_eq!(*required, json!(["error", "code"]));
    for (e, status) in [
        (ApiError::BadRequest("x".into()), 400),
        (ApiError::OutcomeUnknown("x".into()), 504),
        (ApiError::Timeout("x".into()), 504),
        (ApiError::NotLeader { leader_http: None }, 503),
        (
            ApiError::NotLeader {
                leader_http: Some("h:1".into()),
            },
            307,
        ),
        (ApiError::Internal("x".into()), 500),
    ] {
        let resp = actix_web::ResponseError::error_response(&e);
        assert_eq!(resp.status().as_u16(), status, "{e:?}");
        assert_eq!(error::status_of(e.code()).as_u16(), status, "{e:?}");
    }
}

/// Users for the permission tests: one per role, and anonymous clients may read.
fn auth_settings(dir: &std::path::Path, anonymous: &str) -> Settings {
    let h = |pw: &str| auth::hash_password(pw).unwrap();
    let file = format!(
        r#"[
  {{"username": "reader", "password_hash": "{}", "perms": ["read"]}},
  {{"username": "writer", "password_hash": "{}", "perms": ["read", "write"]}},
  {{"username": "admin", "password_hash": "{}", "perms": ["read", "write", "admin"]}},
  {{"username": "ops", "password_hash": "{}", "perms": ["metrics"]}},
  {{"username": "*", "perms": {anonymous}}}
]"#,
        h("r-pw"),
        h("w-pw"),
        h("a-pw"),
        h("o-pw")
    );
    let path = dir.join("auth.json");
    std::fs::write(&path, file).unwrap();
    Settings {
        auth: Some(Arc::new(auth::Auth::load(&path).unwrap())),
        ..Settings::default()
    }
}

fn basic(user: &str, pw: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

/// One request with optional credentials against a fresh leader fake that holds `k`.
async fn as_user(
    settings: &Settings,
    who: Option<(&str, &str)>,
    method: Method,
    uri: &str,
    body: &[u8],
) -> (StatusCode, Headers) {
    let f = Fake::new(Mode::Leader);
    f.data.lock().unwrap().insert("k".into(), "v".into());
    let app = test::init_service(app(f.clone(), settings.clone(), Arc::default())).await;
    let mut req = test::TestRequest::default()
        .method(method)
        .uri(uri)
        .set_payload(body.to_vec());
    if let Some((u, p)) = who {
        req = req.insert_header(("Authorization", basic(u, p)));
    }
    let resp = test::call_service(&app, req.to_request()).await;
    let status = resp.status();
    let headers = resp.headers().clone();
    (status, headers)
}

/// The permission matrix: every route as anonymous, each role, a wrong password and an
/// unknown user, with the exact status each must get.
#[actix_web::test]
async fn every_route_answers_each_role_exactly() {
    let td = tempfile::tempdir().unwrap();
    let s = auth_settings(td.path(), "[]");
    let join = br#"{"id":"n1","addr":"h:1","http_addr":"h:2"}"#;
    // (method, uri, body, the permission it needs: None = open)
    let routes: Vec<(Method, &str, &[u8], Option<&str>)> = vec![
        (Method::GET, "/key/k", b"", Some("read")),
        (Method::GET, "/key?key=k&level=stale", b"", Some("read")),
        (Method::GET, "/status", b"", Some("read")),
        (Method::POST, "/key", br#"{"a":"1"}"#, Some("write")),
        (Method::PUT, "/key/a", b"1", Some("write")),
        (Method::DELETE, "/key/a", b"", Some("write")),
        (Method::DELETE, "/key?key=a", b"", Some("write")),
        (Method::POST, "/join", join, Some("admin")),
        (Method::POST, "/remove", br#"{"id":"node0"}"#, Some("admin")),
        (Method::GET, "/backup", b"", Some("admin")),
        (Method::GET, "/metrics", b"", Some("metrics")),
        (Method::GET, "/livez", b"", None),
        (Method::GET, "/readyz", b"", None),
        (Method::GET, "/openapi.json", b"", None),
    ];
    let roles: [(&str, &str, &[&str]); 4] = [
        ("reader", "r-pw", &["read"]),
        ("writer", "w-pw", &["read", "write"]),
        ("admin", "a-pw", &["read", "write", "admin"]),
        ("ops", "o-pw", &["metrics"]),
    ];
    for (method, uri, body, perm) in &routes {
        let what = format!("{method} {uri}");
        let (st, h) = as_user(&s, None, method.clone(), uri, body).await;
        match perm {
            None => assert_eq!(st, StatusCode::OK, "anonymous {what}"),
            Some(_) => {
                assert_eq!(st, StatusCode::UNAUTHORIZED, "anonymous {what}");
                assert_eq!(h.get("www-authenticate").unwrap(), "Basic realm=\"hraftd\"");
            }
        }
        for (user, pw, perms) in roles {
            let (st, _) = as_user(&s, Some((user, pw)), method.clone(), uri, body).await;
            let allowed = perm.is_none_or(|p| perms.contains(&p));
            let want = if allowed {
                StatusCode::OK
            } else {
                StatusCode::FORBIDDEN
            };
            assert_eq!(st, want, "{user} {what}");
        }
    }
    // Wrong password, unknown user, malformed header: 401 on a guarded route, and the
    // request never reaches the store.
    for (who, header) in [
        ("wrong password", basic("admin", "nope")),
        ("unknown user", basic("mallory", "a-pw")),
        ("not basic", "Bearer abc".to_string()),
        ("not base64", "Basic !!!".to_string()),
    ] {
        let f = Fake::new(Mode::Leader);
        let app = test::init_service(app(f.clone(), s.clone(), Arc::default())).await;
        let req = test::TestRequest::post()
            .uri("/key")
            .insert_header(("Authorization", header))
            .set_payload(&br#"{"a":"1"}"#[..])
            .to_request();
        let resp = test::call_service(&app, req).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{who}");
        let v: Value = serde_json::from_slice(&to_bytes(resp.into_body()).await.unwrap()).unwrap();
        assert_code(&v, "unauthorized");
        assert_eq!(f.index(), 0, "{who}: nothing was written");
    }
}

/// Anonymous clients get what the `*` entry grants, and no more.
#[actix_web::test]
async fn anonymous_clients_get_the_star_entry() {
    let td = tempfile::tempdir().unwrap();
    let s = auth_settings(td.path(), r#"["read", "metrics"]"#);
    assert_eq!(
        as_user(&s, None, Method::GET, "/key/k", b"").await.0,
        StatusCode::OK
    );
    assert_eq!(
        as_user(&s, None, Method::GET, "/metrics", b"").await.0,
        StatusCode::OK
    );
    assert_eq!(
        as_user(&s, None, Method::POST, "/key", br#"{"a":"1"}"#)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
}

/// A reload puts a new file in force (and empties the credential cache); a file that does
/// not parse leaves the old users in force.
#[actix_web::test]
async fn a_reload_replaces_the_users_and_a_bad_file_keeps_the_old_ones() {
    let td = tempfile::tempdir().unwrap();
    let s = auth_settings(td.path(), "[]");
    let auth = s.auth.clone().unwrap();
    let read = |who| as_user(&s, who, Method::GET, "/key/k", b"");
    assert_eq!(read(Some(("reader", "r-pw"))).await.0, StatusCode::OK);
    let fresh = auth::hash_password("new-pw").unwrap();
    std::fs::write(
        auth.path(),
        format!(r#"[{{"username":"reader","password_hash":"{fresh}","perms":["read"]}}]"#),
    )
    .unwrap();
    assert_eq!(auth.reload(), Ok(1));
    assert_eq!(
        read(Some(("reader", "r-pw"))).await.0,
        StatusCode::UNAUTHORIZED,
        "the cached old password no longer works"
    );
    assert_eq!(read(Some(("reader", "new-pw"))).await.0, StatusCode::OK);
    std::fs::write(auth.path(), "[{\"username\": \"reader\",\n oops").unwrap();
    let e = auth.reload().unwrap_err();
    assert!(e.contains("line 2"), "{e}");
    assert_eq!(
        read(Some(("reader", "new-pw"))).await.0,
        StatusCode::OK,
        "the old users stay in force"
    );
}
