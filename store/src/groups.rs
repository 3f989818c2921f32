//! The catalogue's Raft groups on this node, and how the cluster manages them.
//!
//! Every node applies the catalogue (`catalogue.rs`, in the default group) and runs a
//! reconciler: after every change it starts the groups this node is a member of and
//! does not run yet, stops the ones it should no longer run and deletes their data.
//! Management requests (`create_group`, `add_group_member`, ...) are served by the
//! default group's leader: it commits catalogue changes itself and asks a group's leader,
//! over the peer transport, for that group's member changes. A request for a group this
//! node does not run is sent on: leader-only ones to the group's leader (found by asking
//! the members), stale reads to a member.
//!
//! A new group is initialized by one member only, the one named in its catalogue entry
//! (`GroupEntry::init`, the member leading the fewest groups then), which campaigns at
//! once and so leads first; the others start empty and wait to be contacted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use serde::Serialize;

use crate::db;
use crate::error::Error;
use crate::error::Result;
use crate::group::Group;
use crate::network::GroupHost;
use crate::network::MemberChange;
use crate::network::PeerRequest;
use crate::network::PeerResponse;
use crate::node::ReadLevel;
use crate::node::ReadOpts;
use crate::node::Store;
use crate::state_machine::Page;
use crate::state_machine::Range;
use crate::state_machine::Read;
use crate::types::raft_id_for;
use crate::types::GroupEntry;
use crate::types::KeyValue;
use crate::types::Node;
use crate::types::Op;
use crate::types::Outcome;

/// How long a node is given to answer "which groups do you run" before it counts as
/// unreachable.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a group's stores may take to be released after its Raft stopped, before its
/// families are dropped (else they are left, and dropped at the next start).
const RELEASE_WAIT: Duration = Duration::from_secs(10);
/// How soon the reconciler runs again when it could not finish (catching up, a removal
/// not yet confirmed by the group's leader).
const RETRY: Duration = Duration::from_secs(1);
/// How often it runs anyway.
const RECHECK: Duration = Duration::from_secs(30);
/// At most this many members in a group.
pub const MAX_GROUP_MEMBERS: usize = 5;
/// How long a group's stop may take (its tasks' join).
const GROUP_STOP_WAIT: Duration = Duration::from_secs(5);

/// One node's view of one group it runs: what `GET /groups` shows per member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    pub group: String,
    /// The answering node's member id.
    pub node: String,
    /// `leader`, `follower`, `candidate`, `learner`, `shutdown`.
    pub role: String,
    pub term: u64,
    /// The group's leader as this node knows it.
    pub leader: Option<Node>,
    /// The group's voters and learners (member ids), as this node knows them.
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    pub commit_index: u64,
    pub applied_index: u64,
    /// The index of the last entry in this node's log of the group.
    pub last_log_index: u64,
    /// Which creation of the group this node runs (0 for the default group).
    pub incarnation: u64,
}

/// One group as the cluster sees it: its catalogue entry and what each member says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    pub id: String,
    /// The members that host it (the catalogue).
    pub members: Vec<String>,
    /// The leader, as the member in the highest term says.
    pub leader: Option<Node>,
    pub term: u64,
    /// Each member's own state, for those that answered.
    pub nodes: Vec<GroupState>,
    /// Members that did not answer, or do not run the group (yet).
    pub unreachable: Vec<String>,
}

/// A lease as its group's leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    pub id: u64,
    pub ttl: std::time::Duration,
    /// How long until it expires unless kept alive (the full TTL while this leader has not
    /// started counting it yet).
    pub remaining: std::time::Duration,
    pub granted_index: u64,
    pub keys: Vec<String>,
    /// More keys are attached than `keys` lists.
    pub more: bool,
}

/// A store error as it travels back over the peer transport from a group's leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    pub kind: WireErrorKind,
    pub message: String,
    pub leader: Option<Node>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireErrorKind {
    NotLeader,
    NotFound,
    Invalid,
    Conflict,
    Unavailable,
    Timeout,
    OutcomeUnknown,
    Internal,
}

impl From<Error> for WireError {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::NotLeader { .. } => WireErrorKind::NotLeader,
            Error::NotFound(_) | Error::GroupNotFound(_) | Error::Compacted { .. } => {
                WireErrorKind::NotFound
            }
            Error::Invalid(_) | Error::TooLarge(_) => WireErrorKind::Invalid,
            Error::Conflict(_) => WireErrorKind::Conflict,
            Error::Unavailable(_) | Error::ShuttingDown | Error::Forbidden(_) => {
                WireErrorKind::Unavailable
            }
            Error::Timeout { .. } => WireErrorKind::Timeout,
            Error::OutcomeUnknown { .. } => WireErrorKind::OutcomeUnknown,
            Error::Storage(_) | Error::Io { .. } | Error::Raft { .. } => WireErrorKind::Internal,
        };
        let leader = match &e {
            Error::NotLeader { leader } => leader.clone(),
            _ => None,
        };
        WireError {
            kind,
            message: e.to_string(),
            leader,
        }
    }
}

impl From<WireError> for Error {
    fn from(w: WireError) -> Self {
        match w.kind {
            WireErrorKind::NotLeader => Error::NotLeader { leader: w.leader },
            WireErrorKind::NotFound => Error::NotFound(w.message),
            WireErrorKind::Invalid => Error::Invalid(w.message),
            WireErrorKind::Conflict => Error::Conflict(w.message),
            WireErrorKind::Unavailable => Error::Unavailable(w.message),
            WireErrorKind::Timeout => Error::Timeout {
                what: w.message,
                after: Duration::ZERO,
            },
            WireErrorKind::OutcomeUnknown => Error::OutcomeUnknown { what: w.message },
            WireErrorKind::Internal => Error::Unavailable(w.message),
        }
    }
}

/// What the transport asks of the groups (a weak handle: the transport must not keep the
/// store alive).
struct Host(std::sync::Weak<Store>);

impl Host {
    /// Group `id` if this node runs that creation of it (`incarnation`).
    fn running(&self, id: &str, incarnation: u64) -> Option<Arc<Group>> {
        let store = self.0.upgrade()?;
        let g = store
            .groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .filter(|g| g.incarnation == incarnation)
            .cloned();
        g
    }
}

impl GroupHost for Host {
    fn raft(
        &self,
        id: &str,
        incarnation: u64,
    ) -> Option<(crate::types::Raft, crate::network::LeaderContact)> {
        self.running(id, incarnation)
            .map(|g| (g.raft.clone(), g.contact.clone()))
    }

    fn states(&self) -> Vec<GroupState> {
        self.0
            .upgrade()
            .map(|s| s.local_states())
            .unwrap_or_default()
    }

    fn change_members(
        &self,
        id: String,
        incarnation: u64,
        change: MemberChange,
    ) -> BoxFuture<'static, Option<std::result::Result<u64, WireError>>> {
        let group = self.running(&id, incarnation);
        Box::pin(async move {
            let group = group?;
            let r = match change {
                MemberChange::Add(node) => group.add_member(node).await,
                MemberChange::Remove(member) => group.remove_member(&member).await.map(|(_, i)| i),
            };
            Some(r.map_err(WireError::from))
        })
    }

    fn elect(
        &self,
        id: &str,
        incarnation: u64,
    ) -> BoxFuture<'static, Option<std::result::Result<(), WireError>>> {
        // The default group too: a transfer may move its leadership.
        let group = match id {
            db::DEFAULT_GROUP => self.0.upgrade().map(|s| s.default_group().clone()),
            _ => self.running(id, incarnation),
        };
        Box::pin(async move {
            let group = group?;
            Some(group.campaign().await.map_err(WireError::from))
        })
    }
}

/// The state `group` (run here) is in, as `node` sees it.
fn state_of(group: &Group) -> GroupState {
    let s = group.status();
    let last_log_index = group.raft.metrics().borrow().last_log_index.unwrap_or(0);
    let (voters, learners): (Vec<_>, Vec<_>) = s.members.iter().partition(|m| m.voter);
    GroupState {
        group: group.id.clone(),
        node: s.id,
        role: s.role.as_str().to_string(),
        term: s.term,
        leader: s.leader,
        voters: voters.into_iter().map(|m| m.node.id.clone()).collect(),
        learners: learners.into_iter().map(|m| m.node.id.clone()).collect(),
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        last_log_index,
        incarnation: group.incarnation,
    }
}

impl Store {
    /// The group `id` if this node runs it (the default group always).
    pub(crate) fn local_group(&self, id: &str) -> Option<Arc<Group>> {
        if id == db::DEFAULT_GROUP {
            return Some(self.default_group().clone());
        }
        self.groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// The transport's view of this node's groups.
    pub(crate) fn group_host(self: &Arc<Self>) -> Arc<dyn GroupHost> {
        Arc::new(Host(Arc::downgrade(self)))
    }

    /// The state of every group this node runs, the default one first.
    pub fn local_states(&self) -> Vec<GroupState> {
        let mut groups: Vec<Arc<Group>> = vec![self.default_group().clone()];
        groups.extend(
            self.groups
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned(),
        );
        groups.iter().map(|g| state_of(g)).collect()
    }

    /// Starts the reconciler: runs once now, then after every catalogue change.
    pub(crate) fn spawn_reconciler(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let mut changes = self.default_group().reader.catalogue_changes();
        let mut stop = self.tasks.stopping();
        self.tasks.spawn("group reconciler", async move {
            loop {
                changes.borrow_and_update();
                let settled = match weak.upgrade() {
                    Some(store) => store.reconcile().await,
                    None => return,
                };
                // Unsettled (still catching up, or a removal not yet confirmed): try again
                // soon even without a catalogue change.
                let retry = if settled { RECHECK } else { RETRY };
                tokio::select! {
                    biased;
                    _ = stop.wait() => return,
                    r = changes.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep(retry) => {}
                }
            }
        });
    }

    /// The cluster's nodes (the default group's applied membership), by member id.
    fn cluster_nodes(&self) -> BTreeMap<String, Node> {
        match self.default_group().reader.membership() {
            Ok((_, m)) => m
                .membership()
                .nodes()
                .map(|(_, n)| (n.id.clone(), n.clone()))
                .collect(),
            Err(e) => {
                log::warn!("reading the cluster's membership: {e}");
                BTreeMap::new()
            }
        }
    }

    /// Where group `id` keeps its files.
    fn group_dir(&self, id: &str) -> std::path::PathBuf {
        self.opts.data_dir.join("groups").join(id)
    }

    /// Brings the groups this node runs in line with the applied catalogue; says whether
    /// it is settled (else it is run again soon).
    ///
    /// Only once the default group has applied everything this node knows committed: a
    /// node replaying the log (a new or re-joined one) would otherwise act on history,
    /// e.g. start a group, delete it, and start it again, while the group's leader already
    /// counts the first instance's acknowledgements (found by hraftd-torture: acknowledged
    /// writes lost). And a group's data is deleted only once its Raft no longer lists this
    /// node (`left_group`), so a voter never forgets what it acknowledged.
    async fn reconcile(self: &Arc<Self>) -> bool {
        let d = self.default_group();
        let applied = d.status().applied_index;
        let committed = d.committed.load(std::sync::atomic::Ordering::Relaxed);
        if applied < committed {
            return false;
        }
        let catalogue = match d.reader.catalogue() {
            Ok(c) => c,
            Err(Error::Unavailable(_)) => return false,
            Err(e) => {
                log::error!("{e}");
                return false;
            }
        };
        let me = self.me.id.clone();
        let wanted = |id: &str| {
            catalogue
                .get(id)
                .filter(|e| e.members.contains(&me))
                .map(|e| e.incarnation)
        };
        let mut settled = true;
        // Stop what should not run (deleted, this node removed, or re-created).
        let running: Vec<Arc<Group>> = self
            .groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for group in running {
            let id = group.id.clone();
            if wanted(&id) == Some(group.incarnation) {
                continue;
            }
            let gone = catalogue.get(&id).map(|e| e.incarnation) != Some(group.incarnation);
            if gone || self.left_group(&group).await {
                drop(group);
                self.stop_group(&id, true).await;
            } else {
                settled = false;
            }
        }
        // Start what should run, and initialize a new group where this node is named.
        for (id, entry) in &catalogue {
            if !entry.members.contains(&me) || self.tasks.is_stopping() {
                continue;
            }
            let group = match self.local_group(id) {
                Some(g) => g,
                None => match self.start_group(id, entry.incarnation).await {
                    Ok(g) => g,
                    Err(e) => {
                        log::error!("starting group {id}: {e}");
                        continue;
                    }
                },
            };
            if entry.init.as_deref() == Some(me.as_str()) {
                if let Err(e) = self.initialize_group(&group, entry).await {
                    log::error!("initializing group {id}: {e}");
                }
            }
        }
        // Data of groups this node no longer has (left from a stop that could not drop it).
        match db::group_ids(&self.db) {
            Ok(ids) => {
                // Only groups that no longer exist: a member removed while it was down
                // keeps its copy until the group is deleted (its Raft may still list it).
                for id in ids {
                    if !catalogue.contains_key(&id) && self.local_group(&id).is_none() {
                        self.delete_group_data(&id);
                    }
                }
            }
            Err(e) => log::warn!("listing the groups on disk: {e}"),
        }
        settled
    }

    /// Whether group `group`'s Raft no longer lists this node: its own instance says so
    /// (or never had state), or the group's leader does.
    async fn left_group(&self, group: &Group) -> bool {
        let (listed, initialized, leader) = {
            let m = group.raft.metrics();
            let m = m.borrow();
            let mem = m.membership_config.membership();
            let leader = m
                .current_leader
                .filter(|l| *l != group.raft_id)
                .and_then(|l| mem.get_node(&l).cloned());
            (
                mem.get_node(&group.raft_id).is_some(),
                m.last_log_index.is_some(),
                leader,
            )
        };
        if !listed || !initialized {
            return true;
        }
        let Some(leader) = leader else {
            return false;
        };
        match self
            .net
            .call(&leader.raft_addr, &PeerRequest::Groups, ASK_TIMEOUT)
            .await
        {
            Ok(PeerResponse::Groups(states)) => states.iter().any(|s| {
                s.group == group.id
                    && s.role == "leader"
                    && !s.voters.contains(&self.me.id)
                    && !s.learners.contains(&self.me.id)
            }),
            _ => false,
        }
    }

    /// Opens group `id` (incarnation `incarnation`) and registers it with the transport.
    async fn start_group(&self, id: &str, incarnation: u64) -> Result<Arc<Group>> {
        let dir = self.group_dir(id);
        let marker = dir.join("incarnation");
        let on_disk = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if self
            .unreleased
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
        {
            return Err(Error::Unavailable(format!(
                "an earlier group {id}'s stores are still in use; restart this node"
            )));
        }
        if on_disk.is_some_and(|n| n != incarnation) {
            log::info!("group {id}: dropping the data of an earlier group of that name");
            self.delete_group_data(id);
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        std::fs::write(&marker, format!("{incarnation}\n"))
            .map_err(|e| Error::io(format!("writing {}", marker.display()), e))?;
        let mut group = Group::open(
            &self.db,
            self.wal.clone(),
            id,
            dir.join("snapshots"),
            &self.opts,
            self.net.for_group(id, incarnation),
            crate::tasks::Tasks::new(),
        )
        .await?;
        group.incarnation = incarnation;
        let group = Arc::new(group);
        self.groups
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), group.clone());
        // Shutdown may have taken the list of groups to stop while this one was opening.
        if self.tasks.is_stopping() {
            self.stop_group(id, false).await;
            return Err(Error::ShuttingDown);
        }
        log::info!("group {id}: started");
        Ok(group)
    }

    /// Initializes a new group's Raft with its members, if it has no state yet.
    async fn initialize_group(&self, group: &Group, entry: &GroupEntry) -> Result<()> {
        if group.is_initialized().await? {
            return Ok(());
        }
        let nodes = self.cluster_nodes();
        let mut members = BTreeMap::new();
        for m in &entry.members {
            let node = nodes
                .get(m)
                .ok_or_else(|| Error::Invalid(format!("member {m:?} is not a cluster node")))?;
            members.insert(raft_id_for(m), node.clone());
        }
        group.initialize(members).await?;
        log::info!("group {}: initialized with {:?}", group.id, entry.members);
        Ok(())
    }

    /// Stops group `id` here; with `delete`, also drops its data once its stores are
    /// released.
    pub(crate) async fn stop_group(&self, id: &str, delete: bool) {
        let Some(group) = self
            .groups
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
        else {
            return;
        };
        let aborted = group.stop(GROUP_STOP_WAIT).await;
        if aborted > 0 {
            log::warn!("group {id}: {aborted} task(s) had to be aborted");
        }
        if !delete {
            return;
        }
        // openraft's state-machine worker and replication tasks may hold the stores a
        // little after shutdown: wait (bounded) for the last of them.
        let ks = group.ks.clone();
        drop(group);
        let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
        while ks.handles() > 1 && tokio::time::Instant::now() < deadline {
            // Polls a count that has no change notification; bounded by RELEASE_WAIT.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if ks.handles() > 1 {
            self.unreleased
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.to_string());
            return log::warn!(
                "group {id}: its stores are still in use after {RELEASE_WAIT:?}; its data is \
                 dropped at the next start"
            );
        }
        drop(ks);
        self.delete_group_data(id);
        log::info!("group {id}: stopped and its data deleted");
    }

    /// Drops group `id`'s families and files (it must not be running), unless a store of
    /// it is still alive somewhere (then at the next start).
    fn delete_group_data(&self, id: &str) {
        if self
            .unreleased
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
        {
            return log::warn!("group {id}: its stores are still in use; not deleting its data");
        }
        if let Err(e) = db::drop_group(&self.db, id) {
            log::error!("group {id}: dropping its column families: {e}");
            return;
        }
        let dir = self.group_dir(id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("group {id}: removing {}: {e}", dir.display());
            }
        }
    }

    /// Asks every node in `nodes` (this one locally) which groups it runs; `None` for
    /// those that did not answer in time.
    async fn ask_groups(&self, nodes: &[Node]) -> Vec<(String, Option<Vec<GroupState>>)> {
        let asks = nodes.iter().map(|n| async move {
            if n.id == self.me.id {
                return (n.id.clone(), Some(self.local_states()));
            }
            let answer = match self
                .net
                .call(&n.raft_addr, &PeerRequest::Groups, ASK_TIMEOUT)
                .await
            {
                Ok(PeerResponse::Groups(states)) => Some(states),
                _ => None,
            };
            (n.id.clone(), answer)
        });
        futures::future::join_all(asks).await
    }

    /// The catalogue entry of group `id`, or `NotFound`.
    fn entry(&self, id: &str) -> Result<GroupEntry> {
        db::check_group_id(id)?;
        self.default_group()
            .reader
            .catalogue()?
            .remove(id)
            .ok_or_else(|| Error::GroupNotFound(format!("no group {id:?}")))
    }

    /// Group `id` as the cluster sees it (its members are asked).
    pub async fn group_view(&self, id: &str) -> Result<GroupView> {
        if id == db::DEFAULT_GROUP {
            // Every node of the cluster is a member; each is asked for its own view.
            let nodes: Vec<Node> = self.cluster_nodes().into_values().collect();
            let entry = GroupEntry {
                members: nodes.iter().map(|n| n.id.clone()).collect(),
                init: None,
                incarnation: 0,
            };
            let answers = self.ask_groups(&nodes).await;
            return Ok(view(id, &entry, answers));
        }
        let entry = match self.entry(id) {
            // This node's catalogue may lag: only the default group's leader says no.
            Err(Error::GroupNotFound(_)) if !self.default_group().is_leader() => {
                return Err(Error::NotLeader {
                    leader: self.default_group().leader(),
                })
            }
            other => other?,
        };
        let all = self.cluster_nodes();
        let nodes: Vec<Node> = entry
            .members
            .iter()
            .filter_map(|m| all.get(m).cloned())
            .collect();
        let answers = self.ask_groups(&nodes).await;
        Ok(view(id, &entry, answers))
    }

    /// Every group (the default one first) as the cluster sees it.
    pub async fn group_views(&self) -> Result<Vec<GroupView>> {
        let catalogue = self.default_group().reader.catalogue()?;
        let all: Vec<Node> = self.cluster_nodes().into_values().collect();
        let answers = self.ask_groups(&all).await;
        let everyone = GroupEntry {
            members: all.iter().map(|n| n.id.clone()).collect(),
            init: None,
            incarnation: 0,
        };
        let mut out = vec![view(db::DEFAULT_GROUP, &everyone, answers.clone())];
        for (id, entry) in &catalogue {
            let mine: Vec<(String, Option<Vec<GroupState>>)> = answers
                .iter()
                .filter(|(n, _)| entry.members.contains(n))
                .cloned()
                .collect();
            out.push(view(id, entry, mine));
        }
        Ok(out)
    }

    /// The leader of group `id`, found by asking its members (`None`: none known).
    async fn find_leader(&self, id: &str, entry: &GroupEntry) -> Option<Node> {
        let all = self.cluster_nodes();
        let nodes: Vec<Node> = entry
            .members
            .iter()
            .filter_map(|m| all.get(m).cloned())
            .collect();
        view(id, entry, self.ask_groups(&nodes).await).leader
    }

    /// Why this node cannot serve group `id` itself, as the error that sends the client
    /// on: to the leader, or for a stale read to a member; `NotFound` for no such group.
    pub(crate) async fn elsewhere(&self, id: &str, level: ReadLevel) -> Error {
        let entry = match self.entry(id) {
            Ok(e) => e,
            // This node's catalogue may lag (it is catching up, or the group is brand
            // new): only the default group's leader may say a group does not exist, except
            // to a stale read. Found by hraftd-torture: a re-joining node answered 404, which
            // a client takes for a missing key.
            Err(Error::GroupNotFound(_))
                if level != ReadLevel::Stale && !self.default_group().is_leader() =>
            {
                return Error::NotLeader {
                    leader: self.default_group().leader(),
                };
            }
            // The leader, too, only once it has applied everything committed before it
            // was asked (a new leader may not have yet).
            Err(Error::GroupNotFound(_)) if level != ReadLevel::Stale => {
                if let Err(e) = self
                    .default_group()
                    .ensure_level(ReadLevel::Consistent)
                    .await
                {
                    return e;
                }
                match self.entry(id) {
                    Ok(e) => e,
                    Err(e) => return e,
                }
            }
            Err(e) => return e,
        };
        if level == ReadLevel::Stale {
            let all = self.cluster_nodes();
            let member = entry
                .members
                .iter()
                .filter(|m| **m != self.me.id)
                .find_map(|m| all.get(m).cloned());
            return Error::NotLeader { leader: member };
        }
        Error::NotLeader {
            leader: self.find_leader(id, &entry).await,
        }
    }

    /// Reads `key` with its metadata in group `id`, as `opts` asks.
    pub async fn group_get(
        &self,
        id: &str,
        key: &str,
        opts: &ReadOpts,
    ) -> Result<Read<Option<KeyValue>>> {
        match self.local_group(id) {
            Some(g) => g.get(key, opts).await,
            None => Err(self.elsewhere(id, opts.level).await),
        }
    }

    /// Reads one page of `range` in group `id`, as `opts` asks.
    pub async fn group_range(
        &self,
        id: &str,
        range: &Range,
        opts: &ReadOpts,
    ) -> Result<Read<Page>> {
        match self.local_group(id) {
            Some(g) => g.range(range, opts).await,
            None => Err(self.elsewhere(id, opts.level).await),
        }
    }

    /// Grants a lease of `ttl` in group `id`: (its id, the granting log index).
    pub async fn group_lease_grant(
        &self,
        id: &str,
        ttl: std::time::Duration,
    ) -> Result<(u64, u64)> {
        match self.local_group(id) {
            Some(g) => g.lease_grant(ttl).await,
            None => Err(self.elsewhere(id, ReadLevel::Default).await),
        }
    }

    /// Restarts a lease's countdown in group `id` (its leader only); returns its TTL.
    pub async fn group_lease_keepalive(&self, id: &str, lease: u64) -> Result<std::time::Duration> {
        match self.local_group(id) {
            Some(g) => g.lease_keepalive(lease).await,
            None => Err(self.elsewhere(id, ReadLevel::Default).await),
        }
    }

    /// A lease of group `id` as its leader sees it, with up to `limit` of its keys.
    pub async fn group_lease(&self, id: &str, lease: u64, limit: usize) -> Result<LeaseView> {
        match self.local_group(id) {
            Some(g) => g.lease(lease, limit).await,
            None => Err(self.elsewhere(id, ReadLevel::Default).await),
        }
    }

    /// Revokes a lease of group `id` and deletes its keys: (log index, keys deleted).
    pub async fn group_lease_revoke(&self, id: &str, lease: u64) -> Result<(u64, u64)> {
        match self.local_group(id) {
            Some(g) => g.lease_revoke(lease).await,
            None => Err(self.elsewhere(id, ReadLevel::Default).await),
        }
    }

    /// Checks a TTL for a put's one-key lease (`?ttl=`) in group `id`: its milliseconds.
    pub fn check_ttl(&self, id: &str, ttl: std::time::Duration) -> Result<u64> {
        match self.local_group(id) {
            Some(g) => g.check_grant(ttl),
            // Checked again by the node that has the group.
            None => Ok(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// Watches keys of group `id` from this node's applied state (any member serves it; a
    /// node that is not one sends the client on to one).
    pub async fn group_watch(
        &self,
        id: &str,
        spec: crate::WatchSpec,
        from: Option<u64>,
    ) -> Result<crate::Watch> {
        match self.local_group(id) {
            Some(g) => g.watch(spec, from).await,
            None => Err(self.elsewhere(id, ReadLevel::Stale).await),
        }
    }

    /// A blocking read of `key` in group `id` (see `Group::get_after`).
    pub async fn group_get_after(
        &self,
        id: &str,
        key: &str,
        opts: &ReadOpts,
        after: u64,
        wait: std::time::Duration,
    ) -> Result<Read<Option<KeyValue>>> {
        match self.local_group(id) {
            Some(g) => g.get_after(key, opts, after, wait).await,
            None => Err(self.elsewhere(id, opts.level).await),
        }
    }

    /// Sets every pair in group `id` in one log entry; returns its log index once applied.
    pub async fn group_set(&self, id: &str, pairs: Vec<(String, String)>) -> Result<u64> {
        Ok(self.group_write(id, Op::Set { pairs }).await?.0)
    }

    /// Deletes `key` in group `id`; returns the log index once applied.
    pub async fn group_delete(&self, id: &str, key: String) -> Result<u64> {
        Ok(self.group_write(id, Op::Delete { key }).await?.0)
    }

    /// Applies any client operation in group `id`; returns its log index once applied, and
    /// what it did (a compare-and-set may not have changed anything).
    pub async fn group_write(&self, id: &str, op: Op) -> Result<(u64, Outcome)> {
        match self.local_group(id) {
            Some(g) => g.write(op).await,
            None => Err(self.elsewhere(id, ReadLevel::Default).await),
        }
    }

    /// Commits a catalogue change through the default group (this node must lead it).
    async fn write_catalogue(&self, id: &str, entry: Option<GroupEntry>) -> Result<u64> {
        self.default_group()
            .propose(crate::types::Command::Catalogue {
                group: id.to_string(),
                entry,
            })
            .await
    }

    /// Waits (bounded) until every node of the cluster has applied the default group's
    /// log up to `index`, as far as this leader's replication shows.
    async fn wait_replicated(&self, index: u64) {
        let mut rx = self.default_group().raft.metrics();
        let wait = rx.wait_for(|m| {
            m.replication
                .iter()
                .flatten()
                .all(|(_, l)| l.is_some_and(|l| l.index >= index))
        });
        let _ = tokio::time::timeout(self.opts.write_timeout, wait).await;
    }

    /// Creates group `id` on `members` (cluster node ids; 1, 3 or 5 of them), led first by
    /// the member leading the fewest groups; resolves once it has a leader.
    pub async fn create_group(&self, id: &str, members: Vec<String>) -> Result<GroupView> {
        self.check_leader()?;
        db::check_group_id(id)?;
        if id == db::DEFAULT_GROUP {
            return Err(Error::Conflict("the default group always exists".into()));
        }
        if ![1, 3, 5].contains(&members.len()) {
            return Err(Error::Invalid(format!(
                "a group has 1, 3 or 5 members, not {}",
                members.len()
            )));
        }
        let all = self.cluster_nodes();
        for (i, m) in members.iter().enumerate() {
            if !all.contains_key(m) {
                return Err(Error::Invalid(format!(
                    "{m:?} is not a node of this cluster"
                )));
            }
            if members[..i].contains(m) {
                return Err(Error::Invalid(format!("{m:?} is listed twice")));
            }
        }
        let _guard = self.lock_groups().await?;
        let catalogue = self.default_group().reader.catalogue()?;
        if let Some(e) = catalogue.get(id) {
            return Err(Error::Conflict(format!(
                "group {id:?} exists already, on {:?}",
                e.members
            )));
        }
        if catalogue.len() >= crate::catalogue::MAX_GROUPS {
            return Err(Error::Invalid(format!(
                "the cluster has {} groups, the most it may have",
                catalogue.len()
            )));
        }
        // Leaders are spread: the member leading the fewest groups (the default group
        // counts) leads the new one first; ties go to the earliest listed.
        let everyone: Vec<Node> = all.values().cloned().collect();
        let answers = self.ask_groups(&everyone).await;
        // A group of this name deleted a moment ago may still run somewhere: a new one
        // must not meet it (its instances would take the old one's log for their own).
        if let Some((n, _)) = answers
            .iter()
            .find(|(_, s)| s.as_ref().is_some_and(|s| s.iter().any(|s| s.group == id)))
        {
            return Err(Error::Conflict(format!(
                "a group {id:?} deleted earlier still runs on {n}; retry shortly"
            )));
        }
        // Each member's own states, the default group's included.
        let leads = |m: &str| {
            answers
                .iter()
                .find(|(n, _)| n == m)
                .and_then(|(_, s)| s.as_ref())
                .map(|s| s.iter().filter(|s| s.role == "leader").count())
                .unwrap_or(usize::MAX / 2)
        };
        let init = members
            .iter()
            .min_by_key(|m| leads(m))
            .cloned()
            .expect("members is not empty");
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id());
        let entry = GroupEntry {
            members: members.clone(),
            init: Some(init.clone()),
            incarnation,
        };
        let index = self.write_catalogue(id, Some(entry.clone())).await?;
        log::info!("group {id}: created on {members:?} at log {index}, led first by {init}");
        self.wait_group_leader(id, &entry).await
    }

    /// Waits (bounded) until group `id` has a leader that every member knows (so that a
    /// client's next request to any member is served or redirected, not refused); its
    /// view then. At the deadline a leader that only some know is enough.
    async fn wait_group_leader(&self, id: &str, entry: &GroupEntry) -> Result<GroupView> {
        let t = self.opts.write_timeout * 2;
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let v = self.group_view(id).await?;
            let agreed = v.leader.is_some()
                && v.unreachable.is_empty()
                && v.nodes.iter().all(|n| n.leader == v.leader);
            let late = tokio::time::Instant::now() >= deadline;
            if agreed || (late && v.leader.is_some()) {
                return Ok(v);
            }
            if late {
                return Err(Error::Timeout {
                    what: format!(
                        "group {id} on {:?} electing its first leader",
                        entry.members
                    ),
                    after: t,
                });
            }
            // Asks the members again: there is no cross-node notification to wait on.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deletes group `id`: its catalogue entry now, its data on every member as each
    /// applies that. Returns the log index of the deletion.
    pub async fn delete_group(&self, id: &str) -> Result<u64> {
        self.check_leader()?;
        if id == db::DEFAULT_GROUP {
            return Err(Error::Invalid("the default group cannot be deleted".into()));
        }
        let _guard = self.lock_groups().await?;
        self.entry(id)?;
        let index = self.write_catalogue(id, None).await?;
        self.wait_replicated(index).await;
        log::info!("group {id}: deleted at log {index}");
        Ok(index)
    }

    /// Adds cluster node `member` to group `id`: the catalogue first (so the node starts
    /// the group, empty), then the group's leader adds it as a learner and, once caught
    /// up, as a voter.
    pub async fn add_group_member(&self, id: &str, member: &str) -> Result<GroupView> {
        self.check_leader()?;
        if id == db::DEFAULT_GROUP {
            return Err(Error::Invalid(
                "nodes join the default group with /join".into(),
            ));
        }
        let _guard = self.lock_groups().await?;
        let mut entry = self.entry(id)?;
        let all = self.cluster_nodes();
        let node = all
            .get(member)
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("{member:?} is not a node of this cluster")))?;
        if !entry.members.iter().any(|m| m == member) {
            if entry.members.len() >= MAX_GROUP_MEMBERS {
                return Err(Error::Invalid(format!(
                    "group {id} has {MAX_GROUP_MEMBERS} members, the most a group may have"
                )));
            }
            entry.members.push(member.to_string());
            entry.init = None;
            self.write_catalogue(id, Some(entry.clone())).await?;
        }
        // The node must run the group (from the catalogue that lists it) before the
        // group's leader counts it: else the leader could count an instance that the
        // node's reconciler is about to replace.
        self.wait_member_runs(id, entry.incarnation, &node).await?;
        self.ask_group_leader(id, &entry, MemberChange::Add(node))
            .await?;
        self.group_view(id).await
    }

    /// Removes `member` from group `id`: the group's leader removes it from the group's
    /// Raft, then the catalogue drops it, and the node stops the group and deletes its data.
    pub async fn remove_group_member(&self, id: &str, member: &str) -> Result<GroupView> {
        self.check_leader()?;
        if id == db::DEFAULT_GROUP {
            return Err(Error::Invalid(
                "nodes leave the default group with /remove".into(),
            ));
        }
        let _guard = self.lock_groups().await?;
        let mut entry = self.entry(id)?;
        if !entry.members.iter().any(|m| m == member) {
            return Err(Error::NotFound(format!(
                "{member:?} is not a member of group {id}"
            )));
        }
        if entry.members.len() == 1 {
            return Err(Error::Invalid(format!(
                "{member:?} is group {id}'s last member; delete the group instead"
            )));
        }
        match self
            .ask_group_leader(id, &entry, MemberChange::Remove(member.to_string()))
            .await
        {
            // Already gone from the group's Raft (an earlier attempt got that far).
            Ok(_) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        entry.members.retain(|m| m != member);
        entry.init = None;
        let index = self.write_catalogue(id, Some(entry)).await?;
        self.wait_replicated(index).await;
        self.group_view(id).await
    }

    /// Waits (bounded) until `node` reports that it runs group `id`.
    async fn wait_member_runs(&self, id: &str, incarnation: u64, node: &Node) -> Result<()> {
        let t = self.opts.write_timeout * 2;
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let answers = self.ask_groups(std::slice::from_ref(node)).await;
            let runs = answers.iter().any(|(_, s)| {
                s.as_ref().is_some_and(|s| {
                    s.iter()
                        .any(|s| s.group == id && s.incarnation == incarnation)
                })
            });
            if runs {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "{} has not started group {id} within {t:?} (is it up and caught up?); \
                     retry",
                    node.id
                )));
            }
            // Asks again: the node's reconciler gives no cross-node notification.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asks group `id`'s leader (this node, or another over the transport) to carry out
    /// `change`, retrying (bounded) while the group has no leader or it moves.
    async fn ask_group_leader(
        &self,
        id: &str,
        entry: &GroupEntry,
        change: MemberChange,
    ) -> Result<u64> {
        let t = self.opts.write_timeout * 2;
        let deadline = tokio::time::Instant::now() + t;
        let ttl = self.opts.catch_up_timeout + self.opts.write_timeout * 3;
        loop {
            let result = match self.local_group(id).filter(|g| g.is_leader()) {
                Some(g) => match &change {
                    MemberChange::Add(n) => g.add_member(n.clone()).await,
                    MemberChange::Remove(m) => g.remove_member(m).await.map(|(_, i)| i),
                },
                None => match self.find_leader(id, entry).await {
                    None => Err(Error::NotLeader { leader: None }),
                    Some(leader) => {
                        let req = PeerRequest::GroupMember {
                            group: id.to_string(),
                            incarnation: entry.incarnation,
                            change: change.clone(),
                        };
                        match self.net.call(&leader.raft_addr, &req, ttl).await {
                            Ok(PeerResponse::GroupMember(r)) => r.map_err(Error::from),
                            Ok(PeerResponse::NoGroup) => Err(Error::NotLeader { leader: None }),
                            Ok(_) => Err(Error::Unavailable(format!(
                                "{} gave an unexpected answer",
                                leader.id
                            ))),
                            Err(e) => Err(Error::Unavailable(format!(
                                "asking group {id}'s leader {}: {e:?}",
                                leader.id
                            ))),
                        }
                    }
                },
            };
            match result {
                Err(Error::NotLeader { .. }) if tokio::time::Instant::now() < deadline => {
                    // A backoff between asks while the group elects, not a wait for an event
                    // this node could observe.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(Error::NotLeader { .. }) => {
                    return Err(Error::Unavailable(format!(
                        "group {id} has had no leader for {t:?}; retry later"
                    )))
                }
                other => return other,
            }
        }
    }

    /// This node's view of group `id` (as `/status` is of the default group); a node that
    /// does not run it sends the client to a member.
    pub async fn group_status(&self, id: &str) -> Result<crate::Status> {
        match self.local_group(id) {
            Some(g) => Ok(g.status()),
            None => Err(self.elsewhere(id, ReadLevel::Stale).await),
        }
    }

    /// Removes `member` from every group that lists it (before it leaves the cluster);
    /// refused if it is some group's only member.
    pub(crate) async fn leave_groups(&self, member: &str) -> Result<()> {
        let catalogue = self.default_group().reader.catalogue()?;
        let mine: Vec<(&String, &GroupEntry)> = catalogue
            .iter()
            .filter(|(_, e)| e.members.iter().any(|m| m == member))
            .collect();
        if let Some((g, _)) = mine.iter().find(|(_, e)| e.members.len() == 1) {
            return Err(Error::Conflict(format!(
                "{member:?} is the only member of group {g}; delete the group or add a \
                 member to it first"
            )));
        }
        for (g, _) in mine {
            self.remove_group_member(g, member).await?;
            log::info!("remove: {member} left group {g}");
        }
        Ok(())
    }

    /// Moves group `id`'s leadership to its voter `to` (served by the group's leader; the
    /// default group's too).
    pub async fn transfer_leader(&self, id: &str, to: &str) -> Result<GroupView> {
        let Some(group) = self.local_group(id) else {
            return Err(self.elsewhere(id, ReadLevel::Default).await);
        };
        let new = group.transfer_leadership(to).await?;
        log::info!("group {id}: leadership moved to {}", new.id);
        self.group_view(id).await
    }

    /// Serializes catalogue changes on the leader (bounded wait).
    async fn lock_groups(&self) -> Result<tokio::sync::MutexGuard<'_, ()>> {
        let t = Duration::from_secs(30);
        tokio::time::timeout(t, self.groups_lock.lock())
            .await
            .map_err(|_| Error::Timeout {
                what: "waiting for another group change to finish".into(),
                after: t,
            })
    }
}

/// Combines a group's catalogue entry with its members' answers.
fn view(
    id: &str,
    entry: &GroupEntry,
    answers: Vec<(String, Option<Vec<GroupState>>)>,
) -> GroupView {
    let mut nodes = Vec::new();
    let mut unreachable = Vec::new();
    for (member, states) in answers {
        let this = |s: &GroupState| s.group == id && s.incarnation == entry.incarnation;
        match states.and_then(|s| s.into_iter().find(this)) {
            Some(s) => nodes.push(s),
            None => unreachable.push(member),
        }
    }
    let best = nodes
        .iter()
        .filter(|s| s.leader.is_some())
        .max_by_key(|s| (s.term, s.role == "leader"));
    GroupView {
        id: id.to_string(),
        members: entry.members.clone(),
        leader: best.and_then(|s| s.leader.clone()),
        term: nodes.iter().map(|s| s.term).max().unwrap_or(0),
        nodes,
        unreachable,
    }
}
