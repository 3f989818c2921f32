//! The [`Store`] handle the rest of hraftd uses: reads at a chosen level, writes with a
//! bounded wait, membership changes, and status. It owns the openraft instance, the
//! RocksDB-backed storage and the peer transport, and hides openraft's types from callers,
//! so a later move to another openraft version stays inside this crate. It also owns the
//! node's background tasks (`tasks.rs`), which [`Store::shutdown`] stops and joins.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::RaftError;
use openraft::ServerState;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::db;
use crate::error::Error;
use crate::error::Result;
use crate::group::fatal;
use crate::group::Group;
use crate::log_store::WalSync;
use crate::network;
use crate::network::MembershipAnswer;
use crate::network::Network;
use crate::network::PeerRequest;
use crate::network::PeerResponse;
use crate::peer_auth::PeerAuth;
use crate::snapshot;
use crate::state_machine::StateReader;
use crate::tasks::Tasks;
use crate::types::raft_id_for;
use crate::types::Node;
use crate::types::NodeId;
use crate::types::Op;

/// Backups built or streamed at once, at most.
pub const MAX_BACKUPS: usize = 2;
/// At shutdown, the longest the background tasks may take, in all, to end once told to
/// (the peer transport alone may take `network::DRAIN_TIMEOUT`); any left then is aborted.
const TASKS_STOP_WAIT: Duration = Duration::from_secs(5);

/// How a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadLevel {
    /// Any node, from its local applied state, even without a leader.
    Stale,
    /// Only a node that believes it is the leader, from local state, no quorum round trip.
    Default,
    /// Linearizable: the leader confirms leadership with a quorum and waits until it has
    /// applied up to the read index.
    Consistent,
}

/// Everything needed to open a node.
#[derive(Debug, Clone)]
pub struct Options {
    /// The member's user-facing id (`-id`).
    pub id: String,
    /// Advertised peer address (`-radv`, or `-raddr`).
    pub raft_addr: String,
    /// Advertised client address (`-hadv`, or `-haddr`).
    pub http_addr: String,
    pub data_dir: PathBuf,
    /// Build a snapshot and purge the log every this many applied entries.
    pub snapshot_threshold: u64,
    /// The longest a write waits to commit before answering "outcome unknown".
    pub write_timeout: Duration,
    /// The longest a consistent read waits for leadership confirmation.
    pub read_timeout: Duration,
    /// The longest the leader waits for a joining node to catch up with its log before
    /// promoting it to voter; a node that does not is removed again as a learner. (Not the
    /// joining node's own retry deadline, `-join-timeout`, which lives in the CLI.)
    pub catch_up_timeout: Duration,
    /// How often the leader sends heartbeats; also openraft's deadline for one append RPC.
    pub heartbeat: Duration,
    /// A follower that hears no heartbeat for a random time in this range starts an
    /// election (openraft's `election_timeout_min..election_timeout_max`).
    pub election_timeout: std::ops::Range<Duration>,
    /// How peer connections (and joins) are authenticated.
    pub peer_auth: PeerAuth,
    /// Changes each group keeps for watches (`-watch-history`).
    pub watch_history: u64,
}

impl Options {
    /// Options with hraftd's defaults for the given identity and directory.
    pub fn new(id: &str, raft_addr: &str, http_addr: &str, data_dir: impl Into<PathBuf>) -> Self {
        Options {
            id: id.to_string(),
            raft_addr: raft_addr.to_string(),
            http_addr: http_addr.to_string(),
            data_dir: data_dir.into(),
            snapshot_threshold: 10_000,
            write_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(5),
            catch_up_timeout: Duration::from_secs(60),
            heartbeat: Duration::from_millis(150),
            // openraft 0.9 makes the maximum the leader lease too: a follower campaigns
            // only after a lease and an election timeout without a heartbeat (1.0-1.4 s,
            // 7 or more heartbeats), and a leadership transfer that must wait out a lease
            // (a young leader, five voters) takes just over 0.7 s.
            election_timeout: Duration::from_millis(300)..Duration::from_millis(700),
            peer_auth: PeerAuth::None,
            watch_history: crate::watch::DEFAULT_HISTORY,
        }
    }
}

/// How a read is served: at which level, and after which index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOpts {
    pub level: ReadLevel,
    /// Serve only once this node has applied this index (read-your-writes), waiting at
    /// most `wait` for it.
    pub min_index: Option<u64>,
    pub wait: Duration,
}

impl ReadOpts {
    /// The longest `wait` a client may ask for.
    pub const MAX_WAIT: Duration = Duration::from_secs(60);
    /// `wait` when the client gives none.
    pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);
}

impl From<ReadLevel> for ReadOpts {
    fn from(level: ReadLevel) -> Self {
        ReadOpts {
            level,
            min_index: None,
            wait: ReadOpts::DEFAULT_WAIT,
        }
    }
}

/// The role of this node, as `/status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
        }
    }
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node: Node,
    pub voter: bool,
}

/// A point-in-time view of this node, for `/status`.
#[derive(Debug, Clone)]
pub struct Status {
    pub id: String,
    pub role: Role,
    pub term: u64,
    pub leader: Option<Node>,
    pub members: Vec<Member>,
    pub commit_index: u64,
    pub applied_index: u64,
}

/// Numbers about this node for `/metrics`, read at one instant.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub status: Status,
    /// The index of the last entry in this node's log.
    pub last_log_index: u64,
    /// Entries up to this index have been purged from the log (covered by a snapshot).
    pub purged_index: u64,
    /// The last log index covered by this node's newest snapshot.
    pub snapshot_index: u64,
    /// The size of the newest snapshot file, in bytes.
    pub snapshot_bytes: u64,
    /// On the leader: each follower's id and how many entries it lags behind the log.
    pub replication_lag: Vec<(String, u64)>,
    /// RocksDB sizes by column family.
    pub rocksdb: Vec<db::CfSize>,
    /// Refused peer connections by reason.
    pub peer_rejected: Vec<(String, u64)>,
    /// Coalesced heartbeats of catalogue groups sent so far: frames, and heartbeats in them.
    pub heartbeat_frames: u64,
    pub heartbeats: u64,
}

/// A running hraftd node: the process around its Raft groups. Cheap to share behind an
/// `Arc`.
pub struct Store {
    /// The default group: the cluster's membership, the catalogue, and `/key`.
    default: Arc<Group>,
    /// The catalogue's groups this node is a member of and runs, by id. Changed only by
    /// the reconciler task (`groups.rs`); read by every request for a group.
    pub(crate) groups: std::sync::RwLock<BTreeMap<String, Arc<Group>>>,
    /// Kept to open groups, and to flush and quiesce RocksDB at shutdown, so the process
    /// never exits while RocksDB's background threads are still running.
    pub(crate) db: Arc<db::Db>,
    /// The WAL sync thread every group's log store shares.
    pub(crate) wal: WalSync,
    pub(crate) me: Node,
    pub(crate) opts: Options,
    pub(crate) net: Network,
    /// Becomes `true` once this node learns it was removed from the cluster.
    removed: watch::Sender<bool>,
    /// The membership log index from which this node's own view of membership counts
    /// (`u64::MAX` until start-up says; see `spawn_removal_watch`). A channel, so that the
    /// removal watch re-checks as soon as it is set.
    removal_floor: watch::Sender<u64>,
    /// The node's background tasks (the default group's write and read loops, transport,
    /// removal watch, deferred purge, group reconciler, ...): stopped and joined by
    /// [`Store::shutdown`].
    pub(crate) tasks: Tasks,
    /// Refused peer connections by reason (for `/metrics`).
    peer_stats: Arc<network::PeerStats>,
    /// Backups being built or streamed; at most [`MAX_BACKUPS`] at once, since each holds
    /// a full copy of the data on disk until its reader is done.
    backups: Arc<tokio::sync::Semaphore>,
    /// Set while a removal notice is being checked, so a flood of notices runs one check.
    checking_removal: Arc<std::sync::atomic::AtomicBool>,
    /// Serializes catalogue changes on the leader (`groups.rs`).
    pub(crate) groups_lock: tokio::sync::Mutex<()>,
    /// Groups whose stores were still held after they stopped: their families are left
    /// until the next start (dropping them would make such a store panic).
    pub(crate) unreleased: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// This node's own view of membership, as the removal watch sees it.
#[derive(Debug, Default)]
struct MembershipView {
    /// Seen listed in a membership at or after the floor.
    was_member: bool,
}

impl MembershipView {
    /// Takes in one observed membership (its log index, whether it lists this node) and
    /// says whether this node has been removed. Memberships older than `floor` are history
    /// and count for nothing; `u64::MAX` means "not watching yet".
    fn removed(&mut self, floor: u64, index: Option<u64>, present: bool) -> bool {
        if floor == u64::MAX || index.unwrap_or(0) < floor {
            return false;
        }
        if present {
            self.was_member = true;
            return false;
        }
        self.was_member
    }
}

/// Reads the member id stored in `data_dir` by an earlier run, if any.
pub fn stored_id(data_dir: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(data_dir.join("node-id"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

impl Store {
    /// Opens (or creates) the node's storage under `opts.data_dir` and starts openraft.
    /// The peer transport is started separately with [`Store::serve_raft`].
    pub async fn open(opts: Options) -> Result<Arc<Store>> {
        let dir = &opts.data_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        match stored_id(dir) {
            Some(n) if n != opts.id => {
                return Err(Error::Invalid(format!(
                    "{} belongs to node {n:?}, not {:?}",
                    dir.display(),
                    opts.id
                )))
            }
            Some(_) => {}
            None => std::fs::write(dir.join("node-id"), format!("{}\n", opts.id))
                .map_err(|e| Error::io("writing node-id", e))?,
        }
        // Backups being built when the process last stopped are of no use to anyone.
        let _ = std::fs::remove_dir_all(dir.join("backups"));
        let db = db::open(&dir.join("raft"))?;
        let wal = WalSync::start(db.clone());
        // Peer connections leave from our advertised IP when it is a concrete address.
        let local_ip = opts
            .raft_addr
            .rsplit_once(':')
            .and_then(|(h, _)| {
                h.trim_matches(|c| c == '[' || c == ']')
                    .parse::<std::net::IpAddr>()
                    .ok()
            })
            .filter(|ip| !ip.is_unspecified());
        let net = Network::new(local_ip, opts.peer_auth.clone());
        let tasks = Tasks::new();
        let default = Group::open(
            &db,
            wal.clone(),
            db::DEFAULT_GROUP,
            dir.join("snapshots"),
            &opts,
            net.clone(),
            tasks.clone(),
        )
        .await?;
        let (removed, _) = watch::channel(false);
        let me = default.me.clone();
        let store = Arc::new(Store {
            default: Arc::new(default),
            groups: std::sync::RwLock::default(),
            db,
            wal,
            me,
            opts,
            net,
            peer_stats: Arc::default(),
            backups: Arc::new(tokio::sync::Semaphore::new(MAX_BACKUPS)),
            checking_removal: Arc::default(),
            removed,
            removal_floor: watch::Sender::new(u64::MAX),
            tasks,
            groups_lock: tokio::sync::Mutex::new(()),
            unreleased: Default::default(),
        });
        store.spawn_removal_watch();
        store.spawn_reconciler();
        store.spawn_heartbeats();
        Ok(store)
    }

    /// Every heartbeat interval, has each catalogue group this node leads send its
    /// heartbeats, all at the same instant, so that the transport carries them to each
    /// peer in one frame (`network.rs`). openraft's own per-group timers, off for
    /// catalogue groups, would spread them over the interval. The default group keeps its
    /// own timer.
    fn spawn_heartbeats(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let mut stop = self.tasks.stopping();
        let every = self.opts.heartbeat;
        self.tasks.spawn("group heartbeats", async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    _ = stop.wait() => return,
                    _ = tick.tick() => {}
                }
                let leading: Vec<crate::types::Raft> = match weak.upgrade() {
                    Some(store) => {
                        store.net.gather_beats();
                        store
                            .groups
                            .read()
                            .unwrap_or_else(|e| e.into_inner())
                            .values()
                            .filter(|g| g.is_leader())
                            .map(|g| g.raft.clone())
                            .collect()
                    }
                    None => return,
                };
                for raft in leading {
                    // Fails only for a group stopped meanwhile (deleted or shutting down).
                    let _ = raft.trigger().heartbeat().await;
                }
            }
        });
    }

    /// Watches this node's own view of membership, from the membership log index set by
    /// [`Store::watch_removal_after`] on: once it has seen itself listed there, a later
    /// membership that no longer lists it means it has been removed. Older memberships are
    /// history: a node that re-joins under its old id replays its own earlier removal
    /// (from the log, after a snapshot taken while it was a member) and must not act on it.
    fn spawn_removal_watch(self: &Arc<Self>) {
        let mut rx = self.default.raft.metrics();
        let id = self.default.raft_id;
        let removed = self.removed.clone();
        let mut floor = self.removal_floor.subscribe();
        let reader = self.default.reader.clone();
        let mut stop = self.tasks.stopping();
        self.tasks.spawn("removal watch", async move {
            let mut view = MembershipView::default();
            loop {
                let (index, present) = {
                    let m = rx.borrow_and_update();
                    let mem = &m.membership_config;
                    (
                        mem.log_id().map(|l| l.index),
                        mem.membership().get_node(&id).is_some(),
                    )
                };
                // The membership openraft reports may not be committed yet: act only once the
                // applied (committed) one agrees.
                let floor_now = *floor.borrow_and_update();
                if view.removed(floor_now, index, present)
                    && applied_without(&reader, id, index.unwrap_or(0))
                {
                    log::warn!("this node is no longer in the cluster's committed membership");
                    removed.send_replace(true);
                    return;
                }
                // Re-check on every metrics change (an applied entry is one) and on a new
                // floor.
                tokio::select! {
                    biased;
                    _ = stop.wait() => return,
                    r = rx.changed() => if r.is_err() { return },
                    r = floor.changed() => if r.is_err() { return },
                }
            }
        });
    }

    /// Starts acting on this node's own view of membership from log index `index` on: 0
    /// for a node that bootstrapped or resumed, the index that made it a voter for a node
    /// that just joined.
    pub fn watch_removal_after(&self, index: u64) {
        self.removal_floor.send_replace(index);
    }

    /// Serves the peer transport on `listener` until [`Store::shutdown`], which stops it
    /// (after a leader's hand-off, so peers are answered until then) and waits for it to end.
    pub fn serve_raft(self: &Arc<Self>, listener: TcpListener) {
        let weak = Arc::downgrade(self);
        let reader = self.default.reader.clone();
        let raft = self.default.raft.clone();
        let hooks = network::Hooks {
            removal_notice: Box::new(move |node_id, index| {
                if let Some(store) = weak.upgrade() {
                    store.on_removal_notice(node_id, index);
                }
            }),
            membership: Box::new(move || {
                let (index, m) = reader.membership()?;
                let leader = raft.metrics().borrow().state == ServerState::Leader;
                Ok(MembershipAnswer {
                    leader,
                    index,
                    members: m.membership().nodes().map(|(id, _)| *id).collect(),
                })
            }),
            contact: self.default.contact.clone(),
            groups: self.group_host(),
            stats: self.peer_stats.clone(),
            auth: self.opts.peer_auth.clone(),
        };
        let mut stop = self.tasks.stopping();
        let shutdown = async move { stop.wait().await };
        self.tasks.spawn(
            "peer transport",
            network::serve(
                listener,
                self.default.raft.clone(),
                Arc::new(hooks),
                shutdown,
            ),
        );
    }

    /// A peer says this node was removed by the membership change at log index `index`.
    /// That is only a hint: it is acted on once this node's applied membership, or the
    /// leader asked over the authenticated channel, confirms it.
    fn on_removal_notice(self: &Arc<Self>, node_id: NodeId, index: u64) {
        if node_id != self.default.raft_id {
            return log::warn!("ignoring a removal notice for another node ({node_id})");
        }
        if self.checking_removal.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = self.clone();
        let mut stop = self.tasks.stopping();
        let started = self.tasks.spawn("removal notice check", async move {
            let confirmed = tokio::select! {
                biased;
                _ = stop.wait() => Err("shutting down".into()),
                c = store.removal_confirmed(index) => c,
            };
            store.checking_removal.store(false, Ordering::Release);
            match confirmed {
                Ok(()) => {
                    log::warn!("removed from the cluster at log {index} (confirmed)");
                    store.removed.send_replace(true);
                }
                Err(why) => log::warn!("ignoring a removal notice: {why}"),
            }
        });
        if !started {
            self.checking_removal.store(false, Ordering::Release);
        }
    }

    /// Whether this node's removal at `index` is confirmed, and if not, why.
    async fn removal_confirmed(&self, index: u64) -> std::result::Result<(), String> {
        if *self.removal_floor.borrow() == u64::MAX {
            return Err("this node is still joining".into());
        }
        if applied_without(&self.default.reader, self.default.raft_id, index) {
            return Ok(());
        }
        let (leader, addr) = {
            let m = self.default.raft.metrics();
            let m = m.borrow();
            let leader = m.current_leader.filter(|l| *l != self.default.raft_id);
            let addr = leader.and_then(|l| {
                m.membership_config
                    .membership()
                    .get_node(&l)
                    .map(|n| n.raft_addr.clone())
            });
            (leader, addr)
        };
        let (Some(_), Some(addr)) = (leader, addr) else {
            return Err(
                "this node's applied membership still lists it and no other leader is known to ask"
                    .into(),
            );
        };
        match self
            .net
            .call(&addr, &PeerRequest::Membership, Duration::from_secs(2))
            .await
        {
            Ok(PeerResponse::Membership(a)) if a.leader && a.index >= index => {
                if a.members.contains(&self.default.raft_id) {
                    Err(format!("the leader at {addr} still lists this node"))
                } else {
                    Ok(())
                }
            }
            Ok(PeerResponse::Membership(_)) => Err(format!(
                "{addr} is not the leader or has not applied log {index}"
            )),
            Ok(_) => Err(format!("{addr} gave an unexpected answer")),
            Err(e) => Err(format!("could not ask the leader at {addr}: {e:?}")),
        }
    }

    /// How this node authenticates peers: `none`, `cluster-key` or `mtls`.
    pub fn peer_auth(&self) -> &PeerAuth {
        &self.opts.peer_auth
    }

    /// Why this node is not alive, if so: openraft stopped on a fatal error.
    pub fn not_live(&self) -> Option<String> {
        let m = self.default.raft.metrics();
        let m = m.borrow();
        match &m.running_state {
            Err(e) => Some(format!("raft stopped: {e}")),
            Ok(()) => None,
        }
    }

    /// Resolves with the reason if openraft stops on a fatal (e.g. storage) error.
    pub async fn fatal_error(&self) -> String {
        let mut rx = self.default.raft.metrics();
        let r = rx
            .wait_for(|m| m.running_state.is_err())
            .await
            .map(|m| m.running_state.clone());
        match r {
            Ok(Err(e)) => e.to_string(),
            _ => "raft stopped".into(),
        }
    }

    /// Whether this node has Raft state (it bootstrapped or joined before).
    pub async fn is_initialized(&self) -> Result<bool> {
        self.default
            .raft
            .is_initialized()
            .await
            .map_err(|e| Error::raft("reading whether raft has state", e))
    }

    /// Makes this node the single voter of a new cluster.
    pub async fn bootstrap(&self) -> Result<()> {
        let members = BTreeMap::from([(self.default.raft_id, self.me.clone())]);
        match self.default.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(e)) => Err(Error::Invalid(format!("bootstrap: {e}"))),
            Err(e) => Err(Error::raft("bootstrapping", e)),
        }
    }

    /// Resolves once this node has been removed from the cluster.
    pub async fn removed(&self) {
        let mut rx = self.removed.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Reads `key` at `level`.
    pub async fn get(&self, key: &str, level: ReadLevel) -> Result<Option<String>> {
        let read = self.default.get(key, &level.into()).await?;
        Ok(read.value.map(|kv| kv.value))
    }

    /// Streams a consistent image of the applied state, taken at `level` (as for reads:
    /// `Default` and `Consistent` only on the leader).
    ///
    /// At most [`MAX_BACKUPS`] exist at once: the returned permit must be held until the
    /// backup has been sent (each one is a full copy of the data on disk until then).
    pub async fn backup(
        &self,
        level: ReadLevel,
    ) -> Result<(crate::Backup, tokio::sync::OwnedSemaphorePermit)> {
        self.group_backup(db::DEFAULT_GROUP, level).await
    }

    /// As [`Store::backup`], of group `group`; a node that does not run it sends the
    /// client on (to the leader, or for a stale backup to a member).
    pub async fn group_backup(
        &self,
        group: &str,
        level: ReadLevel,
    ) -> Result<(crate::Backup, tokio::sync::OwnedSemaphorePermit)> {
        let Some(g) = self.local_group(group) else {
            return Err(self.elsewhere(group, level).await);
        };
        let Ok(permit) = self.backups.clone().try_acquire_owned() else {
            return Err(Error::Unavailable(format!(
                "{MAX_BACKUPS} backups are already being sent; retry later"
            )));
        };
        g.ensure_level(level).await?;
        let b = g
            .reader
            .backup(self.opts.data_dir.join("backups"))
            .await
            .map_err(|e| Error::io("building a backup", e))?;
        Ok((b, permit))
    }

    /// Sets every pair in one log entry; returns its log index once applied.
    pub async fn set(&self, pairs: Vec<(String, String)>) -> Result<u64> {
        self.write(Op::Set { pairs }).await
    }

    /// Deletes `key` (a no-op if it is absent); returns the log index once applied.
    pub async fn delete(&self, key: String) -> Result<u64> {
        self.write(Op::Delete { key }).await
    }

    async fn write(&self, op: Op) -> Result<u64> {
        Ok(self.default.write(op).await?.0)
    }

    /// Fails with `NotLeader` unless this node currently believes it leads the default
    /// group.
    pub(crate) fn check_leader(&self) -> Result<()> {
        self.default.check_leader()
    }

    /// The default group.
    pub(crate) fn default_group(&self) -> &Arc<Group> {
        &self.default
    }

    /// The default group's leader this node knows of, with its advertised addresses.
    pub fn leader(&self) -> Option<Node> {
        self.default.leader()
    }

    /// Adds a node to the cluster (the default group): as a learner, then, once it has
    /// caught up, as a voter. Idempotent for the same id and addresses; the same id with
    /// new addresses replaces the entry. Returns the membership log index at which the
    /// node became (or already was) a voter.
    pub async fn join(&self, node: Node) -> Result<u64> {
        if node.id.is_empty() || node.raft_addr.is_empty() || node.http_addr.is_empty() {
            return Err(Error::Invalid(
                "id, addr and http_addr must be non-empty".into(),
            ));
        }
        self.check_leader()?;
        self.probe_peer(&node).await?;
        self.default.add_member(node).await
    }

    /// Dials a joining node's Raft address through the peer handshake: only a node that
    /// holds the cluster key (or a certificate from the cluster's CA) can become a member.
    async fn probe_peer(&self, node: &Node) -> Result<()> {
        match self
            .net
            .probe(&node.raft_addr, Duration::from_secs(5))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                Err(Error::Forbidden(format!(
                    "{} at {} failed peer authentication ({}): {e}",
                    node.id,
                    node.raft_addr,
                    self.opts.peer_auth.mode()
                )))
            }
            Err(e)
                if self.opts.peer_auth.mode() == "mtls"
                    && e.kind() == std::io::ErrorKind::InvalidData =>
            {
                Err(Error::Forbidden(format!(
                    "{} at {} failed mutual TLS: {e}",
                    node.id, node.raft_addr
                )))
            }
            Err(e) => Err(Error::Unavailable(format!(
                "cannot reach {} at its raft address {}: {e}",
                node.id, node.raft_addr
            ))),
        }
    }

    /// Removes the member `member` (its string id) from the cluster. The removed node is
    /// told, and shuts itself down.
    ///
    /// It leaves every group first (a node that left the cluster must not stay a voter
    /// anywhere: if it came back with an empty data directory it would have forgotten
    /// its votes); it must not be the last member of one.
    pub async fn remove(&self, member: &str) -> Result<()> {
        self.check_leader()?;
        self.leave_groups(member).await?;
        let (node, membership_index) = self.default.remove_member(member).await?;
        let id = raft_id_for(member);
        if id != self.default.raft_id {
            let net = self.net.clone();
            let mut stop = self.tasks.stopping();
            let tell = async move {
                for _ in 0..5 {
                    let req = PeerRequest::Removed {
                        node_id: id,
                        membership_index,
                    };
                    if net
                        .call(&node.raft_addr, &req, Duration::from_secs(2))
                        .await
                        .is_ok()
                    {
                        return;
                    }
                    // A backoff between retries of a failed call, not a wait for an event.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                log::warn!("could not tell {node} it was removed");
            };
            self.tasks.spawn("removal notice", async move {
                tokio::select! {
                    biased;
                    _ = stop.wait() => {}
                    _ = tell => {}
                }
            });
        }
        Ok(())
    }

    /// This node's current view of itself and the cluster (the default group).
    pub fn status(&self) -> Status {
        self.default.status()
    }

    /// Why this node should not get traffic yet, if so: it must be the leader or have heard
    /// from one recently, and have applied everything that was committed when it started.
    pub fn not_ready(&self) -> Option<String> {
        let m = self.default.raft.metrics().borrow().clone();
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        if m.state == ServerState::Shutdown {
            return Some("shutting down".into());
        }
        // Heartbeats come every `heartbeat`; two election timeouts without one means the
        // leader is gone (or this node is cut off).
        let recent = 2 * self.opts.election_timeout.end;
        let leads =
            m.state == ServerState::Leader && m.current_leader == Some(self.default.raft_id);
        let heard = self.default.contact.since().is_some_and(|t| t < recent);
        if self.default.live_leader(&m).is_none() || !(leads || heard) {
            return Some("no leader known".into());
        }
        if applied < self.default.startup_commit {
            return Some(format!(
                "catching up: applied {applied} of the {} committed at start-up",
                self.default.startup_commit
            ));
        }
        None
    }

    /// Numbers for `/metrics`.
    pub fn metrics(&self) -> Metrics {
        let status = self.status();
        let m = self.default.raft.metrics().borrow().clone();
        let last_log_index = m.last_log_index.unwrap_or(0);
        let mem = m.membership_config.membership();
        let replication_lag = m
            .replication
            .iter()
            .flatten()
            .filter(|(id, _)| **id != self.default.raft_id)
            .map(|(id, matched)| {
                let member = mem
                    .get_node(id)
                    .map(|n| n.id.clone())
                    .unwrap_or_else(|| id.to_string());
                let matched = matched.map(|l| l.index).unwrap_or(0);
                (member, last_log_index.saturating_sub(matched))
            })
            .collect();
        let snapshot_bytes = std::fs::read_dir(&self.default.snapshot_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some(snapshot::SUFFIX))
            .filter_map(|e| e.metadata().ok().map(|md| md.len()))
            .max()
            .unwrap_or(0);
        let (heartbeat_frames, heartbeats) = self.net.beat_stats();
        Metrics {
            status,
            last_log_index,
            purged_index: m.purged.map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            snapshot_bytes,
            replication_lag,
            rocksdb: db::sizes(&self.db),
            peer_rejected: self.peer_stats.rejected(),
            heartbeat_frames,
            heartbeats,
        }
    }

    /// Loads every pair of the backup at `path` through the Raft log (this node must lead),
    /// then builds a snapshot so that nodes joining later catch up from it.
    pub async fn restore(&self, path: &std::path::Path) -> Result<crate::BackupInfo> {
        let info = crate::backup::verify(path)?;
        let mut reader = crate::backup::BackupReader::open(path)?;
        loop {
            // Well under the 4 MiB a single append may carry to a follower.
            let pairs = reader.next_chunk(256 << 10)?;
            if pairs.is_empty() {
                break;
            }
            self.set(pairs).await?;
        }
        let applied = self.status().applied_index;
        self.default
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(fatal)?;
        let t = Duration::from_secs(120);
        self.default
            .raft
            .wait(Some(t))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied),
                "a snapshot of the restored state",
            )
            .await
            .map_err(|e| Error::Timeout {
                what: format!("building a snapshot of the restored state ({e})"),
                after: t,
            })?;
        Ok(info)
    }

    /// Prepares a leader's stop: a last heartbeat (so followers learn the final commit
    /// index), a bounded wait until some voter holds this node's whole log, so that the
    /// election after it stops has a complete candidate, and a notice to every member that
    /// it is stopping. Returns the id of the voter that holds the whole log.
    ///
    /// openraft 0.9 has no leadership transfer: the followers elect a new leader once this
    /// node's lease (election_timeout_max) has lapsed after its last heartbeat.
    pub async fn hand_off(&self, deadline: Duration) -> Option<String> {
        if self.check_leader().is_err() {
            return None;
        }
        let _ = self.default.raft.trigger().heartbeat().await;
        let me = self.default.raft_id;
        let mut rx = self.default.raft.metrics();
        let caught_up = rx.wait_for(|m| {
            let single_voter = m
                .membership_config
                .membership()
                .voter_ids()
                .all(|v| v == me);
            m.state != ServerState::Leader || single_voter || full_log_voter(m, me).is_some()
        });
        let m = match tokio::time::timeout(deadline, caught_up).await {
            Ok(Ok(m)) => m.clone(),
            _ => self.default.raft.metrics().borrow().clone(),
        };
        // Tell the others, so that until they elect a new leader they answer clients
        // "no leader" (503, retry) instead of redirecting them here; no heartbeat may
        // follow the notice (an append clears it).
        self.net.go_quiet();
        let req = PeerRequest::LeaderStopping {
            node_id: me,
            term: m.current_term,
        };
        let mem = m.membership_config.membership();
        let told = mem.nodes().filter(|(id, _)| **id != me).map(|(_, n)| {
            self.net
                .call(&n.raft_addr, &req, Duration::from_millis(500))
        });
        futures::future::join_all(told).await;
        full_log_voter(&m, me).and_then(|id| mem.get_node(&id).map(|n| n.id.clone()))
    }

    /// Waits until this node is the leader (as after [`Store::bootstrap`] of a single-node
    /// cluster), `timeout` at most.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<()> {
        let id = self.default.raft_id;
        self.default
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| m.state == ServerState::Leader && m.current_leader == Some(id),
                "this node to lead",
            )
            .await
            .map(drop)
            .map_err(|e| match e {
                openraft::metrics::WaitError::Timeout(..) => Error::Timeout {
                    what: "this node becoming the leader".into(),
                    after: timeout,
                },
                openraft::metrics::WaitError::ShuttingDown => Error::ShuttingDown,
            })
    }

    /// Tells the background tasks to stop, stops Raft, waits (bounded) for the tasks to
    /// end, then syncs the RocksDB WAL and stops RocksDB's background work.
    pub async fn shutdown(&self) {
        let aborted = self.stop_tasks_and_raft().await;
        if aborted > 0 {
            log::warn!("{aborted} background task(s) had to be aborted at shutdown");
        }
        let db = self.db.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            let r = db.flush_wal(true);
            db.cancel_all_background_work(true);
            r
        })
        .await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!("flushing RocksDB at shutdown: {e}"),
            Err(e) => log::warn!("flushing RocksDB at shutdown: {e}"),
        }
    }

    /// The first half of [`Store::shutdown`]: the stop signal first (no new batch is
    /// proposed, the transport stops accepting), then Raft (which answers the batches and
    /// rounds still in flight), then the bounded join. Returns how many tasks were aborted.
    async fn stop_tasks_and_raft(&self) -> usize {
        self.tasks.stop();
        // The catalogue groups first: each is a Raft of its own, with its own tasks.
        let ids: Vec<String> = self
            .groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        futures::future::join_all(ids.iter().map(|id| self.stop_group(id, false))).await;
        self.default.reader.hub.close();
        if let Err(e) = self.default.raft.shutdown().await {
            log::warn!("raft shutdown: {e}");
        }
        self.tasks.join(TASKS_STOP_WAIT).await
    }
}

/// Whether the applied (committed) membership, from log index `at_least` on, no longer
/// lists `id`.
fn applied_without(reader: &StateReader, id: NodeId, at_least: u64) -> bool {
    match reader.membership() {
        Ok((index, m)) => index >= at_least && m.membership().get_node(&id).is_none(),
        Err(e) => {
            log::warn!("reading the applied membership: {e}");
            false
        }
    }
}

/// A voter other than `me` that, as the leader's replication metrics say, holds the
/// leader's whole log.
fn full_log_voter(m: &openraft::RaftMetrics<NodeId, Node>, me: NodeId) -> Option<NodeId> {
    let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
    let last = m.last_log_index;
    m.replication
        .iter()
        .flatten()
        .find(|(id, matched)| **id != me && voters.contains(id) && matched.map(|l| l.index) >= last)
        .map(|(id, _)| *id)
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::batch;

    /// A single-node store in `dir`, serving its transport on a free port, leading.
    async fn leading_store(dir: &std::path::Path) -> (Arc<Store>, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut opts = Options::new("n1", &addr.to_string(), "127.0.0.1:1", dir);
        opts.heartbeat = Duration::from_millis(50);
        opts.election_timeout = Duration::from_millis(150)..Duration::from_millis(300);
        let store = Store::open(opts).await.unwrap();
        store.serve_raft(listener);
        store.bootstrap().await.unwrap();
        store.wait_leader(Duration::from_secs(10)).await.unwrap();
        (store, addr)
    }

    /// Shutdown ends every background task by itself, within its bound (none is
    /// aborted): the write loop and its batches, the read-round loop, the transport with a
    /// peer connection still open, and the removal watch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_ends_every_background_task() {
        let td = tempfile::tempdir().unwrap();
        let (store, addr) = leading_store(td.path()).await;
        store.set(vec![("k".into(), "v".into())]).await.unwrap();
        let got = store.get("k", ReadLevel::Consistent).await.unwrap();
        assert_eq!(got.as_deref(), Some("v"));
        // A peer that connected and then says nothing: the transport must not wait for it.
        let mut peer = tokio::net::TcpStream::connect(addr).await.unwrap();

        let started = std::time::Instant::now();
        assert_eq!(
            store.stop_tasks_and_raft().await,
            0,
            "a task had to be aborted"
        );
        assert!(started.elapsed() < TASKS_STOP_WAIT);

        // The write loop and the read loop are gone: requests are refused at once.
        let op = Op::Delete { key: "k".into() };
        assert!(matches!(
            store.default.writer().write(op),
            Err(batch::Refused::Closed)
        ));
        assert!(matches!(
            store.default.reads().confirm().await,
            batch::Confirmed::Closed
        ));
        // The peer connection was closed.
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), peer.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the peer connection is still open: {read:?}"
        );
    }

    /// Writes queued when shutdown begins are answered "shutting down" (they were never
    /// proposed), not left waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_answers_queued_writes() {
        let td = tempfile::tempdir().unwrap();
        let (store, _) = leading_store(td.path()).await;
        let pending: Vec<_> = (0..64)
            .map(|i| {
                let op = Op::Set {
                    pairs: vec![(format!("k{i}"), "v".into())],
                };
                store.default.writer().write(op).expect("queued")
            })
            .collect();
        store.shutdown().await;
        let answered =
            tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(pending))
                .await
                .expect("every queued write is answered");
        // Each was either committed before the stop, or told the node stopped.
        for a in &answered {
            assert!(
                matches!(a, None | Some(Ok(_)) | Some(Err(RaftError::Fatal(_)))),
                "{a:?}"
            );
        }
    }

    /// A node re-joining under its old id replays history: a snapshot whose membership
    /// lists its old self, then its own earlier removal, then its new addition. Found by
    /// hraftd-torture: acting on that history made re-joined nodes shut themselves down.
    #[test]
    fn replayed_history_before_the_join_is_not_a_removal() {
        let mut v = MembershipView::default();
        // Still joining: nothing counts yet.
        assert!(!v.removed(u64::MAX, Some(40), true));
        assert!(!v.removed(u64::MAX, Some(42), false));
        // Joined as a voter at 50: replayed memberships before 50 are history.
        assert!(!v.removed(50, Some(40), true));
        assert!(!v.removed(50, Some(42), false));
        assert!(!v.removed(50, Some(50), true));
        // A later membership without this node is a real removal.
        assert!(v.removed(50, Some(60), false));
    }

    #[test]
    fn a_bootstrapped_or_resumed_node_watches_from_the_start() {
        let mut v = MembershipView::default();
        assert!(!v.removed(0, Some(1), true));
        assert!(!v.removed(0, Some(7), true));
        assert!(v.removed(0, Some(9), false));
        // Never listed (e.g. a snapshot from before this node existed): not a removal.
        let mut fresh = MembershipView::default();
        assert!(!fresh.removed(0, Some(3), false));
    }
}
