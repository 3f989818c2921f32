//! One Raft group on this node: its openraft instance, its log store and state machine (in
//! the group's own column families, `db::Keyspace`), and everything that serves it: reads
//! at a level, writes through group commit, member changes, and its status.
//!
//! The default group and every group from the catalogue are each a [`Group`]; the process
//! around them (one RocksDB, one peer transport, the catalogue, shutdown order) is the
//! [`Store`](crate::Store) in `node.rs`. A group's background tasks (write loop, read
//! rounds, deferred purge) are its own [`Tasks`], so that one group can be stopped and
//! deleted while the others keep serving.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::ChangeMembershipError;
use openraft::error::CheckIsLeaderError;
use openraft::error::ClientWriteError;
use openraft::error::RaftError;
use openraft::ChangeMembers;
use openraft::ServerState;
use openraft::SnapshotPolicy;

use crate::batch;
use crate::db;
use crate::error::Error;
use crate::error::Result;
use crate::lease;
use crate::lease::LeaseClock;
use crate::log_store::LogStore;
use crate::log_store::WalSync;
use crate::network;
use crate::network::Network;
use crate::node::Member;
use crate::node::Options;
use crate::node::ReadLevel;
use crate::node::ReadOpts;
use crate::node::Role;
use crate::node::Status;
use crate::state_machine::AppliedIndex;
use crate::state_machine::Page;
use crate::state_machine::Range;
use crate::state_machine::Read;
use crate::state_machine::StateMachine;
use crate::state_machine::StateReader;
use crate::tasks::Tasks;
use crate::types::raft_id_for;
use crate::types::Command;
use crate::types::KeyValue;
use crate::types::Node;
use crate::types::NodeId;
use crate::types::Op;
use crate::types::Outcome;
use crate::types::Raft;
use crate::types::MAX_ENTRY_BYTES;
use crate::watch::Watch;
use crate::watch::WatchSpec;

/// The longest a membership change waits for the one before it to finish.
const MEMBERSHIP_LOCK_WAIT: Duration = Duration::from_secs(30);

/// One Raft group served by this node. Shared behind an `Arc` by the host and the
/// transport (which hands it the group's peer RPCs).
pub(crate) struct Group {
    /// The group id (`default` for the default group).
    pub(crate) id: String,
    pub(crate) raft: Raft,
    /// The group's column families (dropped when the group is deleted).
    pub(crate) ks: db::Keyspace,
    pub(crate) reader: StateReader,
    /// openraft's number for this node ([`raft_id_for`] of `me.id`).
    pub(crate) raft_id: NodeId,
    pub(crate) me: Node,
    /// Highest committed index, updated by the log store (openraft 0.9's metrics lack it).
    pub(crate) committed: Arc<AtomicU64>,
    /// The committed index saved when the group started: it is not caught up until it has
    /// applied that far.
    pub(crate) startup_commit: u64,
    /// Group commit: packs concurrent writes into shared log entries.
    writer: batch::Writer,
    /// Shares one leadership confirmation among concurrent consistent reads.
    reads: batch::ReadBarrier,
    /// When this group's leader was last heard from, and which said it is stopping;
    /// recorded by the transport.
    pub(crate) contact: network::LeaderContact,
    /// The group's background tasks (write and read loops, deferred purge).
    pub(crate) tasks: Tasks,
    /// Serializes member changes on the leader, so concurrent ones queue up instead of
    /// failing with "change in progress".
    membership_lock: tokio::sync::Mutex<()>,
    pub(crate) snapshot_dir: PathBuf,
    /// Which creation of the group this is (its catalogue entry's); 0 for the default.
    pub(crate) incarnation: u64,
    /// Set while this leader hands its leadership to another voter: writes are refused
    /// (`503`, retry) so that the target can hold the whole log when it campaigns.
    transferring: std::sync::atomic::AtomicBool,
    /// The peer transport, to tell a transfer's target to campaign.
    net: Network,
    /// When this node last became the group's leader, and in which term (kept by the
    /// "leadership clock" task): voters, this leader included, refuse every vote until its
    /// lease (`election_timeout_max`) has passed since then, so a transfer waits for it.
    led_since: Arc<std::sync::Mutex<Option<(u64, std::time::Instant)>>>,
    /// This leader's countdown of every client lease (`lease.rs`).
    lease_clock: Arc<LeaseClock>,
    /// openraft's leader lease (its `election_timeout_max`).
    lease: Duration,
    write_timeout: Duration,
    read_timeout: Duration,
    catch_up_timeout: Duration,
}

/// How long a transfer's target may take to hold the leader's whole log.
const TRANSFER_CATCH_UP: Duration = Duration::from_secs(1);
/// How long the target may take to win its election once asked.
const TRANSFER_ELECTION: Duration = Duration::from_secs(3);

impl Group {
    /// Opens (or creates) group `id`'s storage in `db` and starts its Raft on `net`.
    /// `tasks` are the group's own (the default group shares the node's).
    pub(crate) async fn open(
        db: &Arc<db::Db>,
        wal: WalSync,
        id: &str,
        snapshot_dir: PathBuf,
        opts: &Options,
        net: Network,
        tasks: Tasks,
    ) -> Result<Group> {
        let committed = Arc::new(AtomicU64::new(0));
        // Handed to both: the log store's deferred purges wait for the applied index the
        // state machine publishes.
        let applied = AppliedIndex::default();
        let ks = db::Keyspace::group(db, id)?;
        let log_store = LogStore::new(
            ks.clone(),
            wal,
            committed.clone(),
            applied.clone(),
            tasks.clone(),
        );
        let startup_commit = log_store.saved_committed().map(|c| c.index).unwrap_or(0);
        committed.store(startup_commit, Ordering::Relaxed);
        let sm = StateMachine::open(
            ks.clone(),
            snapshot_dir.clone(),
            applied,
            opts.watch_history,
        )
        .map_err(|e| Error::io(format!("opening the state machine of group {id}"), e))?;
        let reader = sm.reader();
        let config = openraft::Config {
            cluster_name: format!("hraftd/{id}"),
            heartbeat_interval: millis(opts.heartbeat),
            election_timeout_min: millis(opts.election_timeout.start),
            election_timeout_max: millis(opts.election_timeout.end),
            install_snapshot_timeout: 10_000,
            // One chunk per peer frame, well under `network::MAX_FRAME`.
            snapshot_max_chunk_size: 1 << 20,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(opts.snapshot_threshold.max(1)),
            max_in_snapshot_log_to_keep: opts.snapshot_threshold.min(1000),
            max_payload_entries: 256,
            // A catalogue group's heartbeats are sent by the node's ticker, all groups at
            // once, so the transport coalesces them per peer (`Store::spawn_heartbeats`).
            enable_heartbeat: id == db::DEFAULT_GROUP,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Invalid(format!("raft config: {e}")))?;
        let raft_id = raft_id_for(&opts.id);
        let raft = Raft::new(raft_id, Arc::new(config), net.clone(), log_store, sm)
            .await
            .map_err(|e| Error::raft(format!("starting raft for group {id}"), e))?;
        let writer = batch::Writer::spawn(raft.clone(), &tasks);
        let reads = batch::ReadBarrier::spawn(raft.clone(), &tasks);
        let led_since = Arc::default();
        spawn_leadership_clock(&raft, &tasks, raft_id, Arc::clone(&led_since));
        let lease_clock = Arc::new(LeaseClock::default());
        lease::spawn_expiry(
            &tasks,
            lease_clock.clone(),
            reader.leases.clone(),
            Arc::clone(&led_since),
            writer.clone(),
            opts.write_timeout,
        );
        Ok(Group {
            id: id.to_string(),
            raft,
            ks,
            reader,
            raft_id,
            me: Node {
                id: opts.id.clone(),
                raft_addr: opts.raft_addr.clone(),
                http_addr: opts.http_addr.clone(),
            },
            committed,
            startup_commit,
            writer,
            reads,
            // A stopping leader's notice lapses after two maximum election timeouts: by
            // then every follower has timed out on it and started an election.
            contact: network::LeaderContact::new(2 * opts.election_timeout.end),
            tasks,
            membership_lock: tokio::sync::Mutex::new(()),
            snapshot_dir,
            incarnation: 0,
            transferring: Default::default(),
            net,
            led_since,
            lease_clock,
            lease: opts.election_timeout.end,
            write_timeout: opts.write_timeout,
            read_timeout: opts.read_timeout,
            catch_up_timeout: opts.catch_up_timeout,
        })
    }

    /// Whether this group's Raft has state (it was initialized here or joined).
    pub(crate) async fn is_initialized(&self) -> Result<bool> {
        self.raft
            .is_initialized()
            .await
            .map_err(|e| Error::raft("reading whether raft has state", e))
    }

    /// Makes `members` the first voters of this group, this node among them; this node
    /// then campaigns at once, so it leads first.
    pub(crate) async fn initialize(&self, members: BTreeMap<NodeId, Node>) -> Result<()> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(e)) => Err(Error::Invalid(format!(
                "initializing group {}: {e}",
                self.id
            ))),
            Err(e) => Err(Error::raft(format!("initializing group {}", self.id), e)),
        }
    }

    /// Reads `key` with its metadata, as `opts` asks.
    pub(crate) async fn get(&self, key: &str, opts: &ReadOpts) -> Result<Read<Option<KeyValue>>> {
        self.ensure_read(opts).await?;
        self.reader.get(key).await
    }

    /// Reads one page of `range`, as `opts` asks.
    pub(crate) async fn range(&self, range: &Range, opts: &ReadOpts) -> Result<Read<Page>> {
        self.ensure_read(opts).await?;
        self.reader.range(range).await
    }

    /// Watches `spec` in this node's applied state (no leader needed), from `from` (`None`:
    /// from now).
    pub(crate) async fn watch(&self, spec: WatchSpec, from: Option<u64>) -> Result<Watch> {
        match self.reader.watch(spec, from).await? {
            Ok(Some(w)) => Ok(w),
            Ok(None) => Err(Error::ShuttingDown),
            Err(oldest) => Err(Error::Compacted { oldest }),
        }
    }

    /// A blocking read: reads `key` as `opts` asks, and if it has not changed since index
    /// `after`, waits up to `wait` for its next change; then answers its state as it is.
    pub(crate) async fn get_after(
        &self,
        key: &str,
        opts: &ReadOpts,
        after: u64,
        wait: Duration,
    ) -> Result<Read<Option<KeyValue>>> {
        let now = self.get(key, opts).await?;
        // A key that exists last changed at its mod_index: if that is after `after`, answer
        // at once; if not, only changes after now matter. A missing key may have been
        // deleted after `after`: the history says.
        let from = match &now.value {
            Some(kv) if kv.meta.mod_index > after => return Ok(now),
            Some(_) => after.max(now.index),
            None => after,
        };
        let mut w = match self
            .watch(WatchSpec::Key(key.to_string()), Some(from))
            .await
        {
            Ok(w) => w,
            // Too old to tell: answer what is there.
            Err(Error::Compacted { .. }) => return Ok(now),
            Err(e) => return Err(e),
        };
        let _ = tokio::time::timeout(wait, w.next()).await;
        self.reader.get(key).await
    }

    /// The term this node leads in, or `NotLeader`.
    fn leading_term(&self) -> Result<u64> {
        self.check_leader()?;
        self.led_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|(t, _)| t)
            .ok_or_else(|| {
                Error::Unavailable("this node has only just become leader; retry".into())
            })
    }

    /// Refuses a TTL outside [`lease::MIN_TTL`]..=[`lease::MAX_TTL`], and a grant when the
    /// group holds [`lease::MAX_LEASES`] already.
    pub(crate) fn check_grant(&self, ttl: Duration) -> Result<u64> {
        if ttl < lease::MIN_TTL || ttl > lease::MAX_TTL {
            return Err(Error::Invalid(format!(
                "ttl {ttl:?}: a lease lives 1s to {}s",
                lease::MAX_TTL.as_secs()
            )));
        }
        let n = self
            .reader
            .leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        if n >= lease::MAX_LEASES {
            return Err(Error::Unavailable(format!(
                "group {} holds {n} leases, its limit; revoke some first",
                self.id
            )));
        }
        Ok(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
    }

    /// Grants a lease of `ttl`: (its id, the log index that granted it).
    pub(crate) async fn lease_grant(&self, ttl: Duration) -> Result<(u64, u64)> {
        let ttl_ms = self.check_grant(ttl)?;
        match self.write(Op::LeaseGrant { ttl_ms }).await? {
            (index, Outcome::LeaseGranted { id }) => Ok((id, index)),
            (_, other) => Err(Error::io(
                "granting a lease",
                std::io::Error::other(format!("unexpected outcome {other:?}")),
            )),
        }
    }

    /// Restarts lease `id`'s countdown (this node must lead); returns its TTL.
    ///
    /// Leadership is confirmed with a quorum first: a deposed leader that has not noticed
    /// yet must not accept a keepalive, since the new leader, elected before it, counts
    /// from its own election and could expire the lease sooner than TTL after it. A quorum
    /// that acknowledges this leader after the keepalive arrived proves no newer leader was
    /// elected before then.
    pub(crate) async fn lease_keepalive(&self, id: u64) -> Result<Duration> {
        let arrived = std::time::Instant::now();
        let term = self.leading_term()?;
        self.lease_info(id)?;
        self.ensure_level(ReadLevel::Consistent).await?;
        if self.leading_term()? != term {
            return Err(Error::Unavailable("leadership changed; retry".into()));
        }
        // The table is held while the clock is set (the expiry loop takes them in the same
        // order), so a lease revoked or expiring meanwhile is refused, never renewed.
        let table = self.reader.leases.lock().unwrap_or_else(|e| e.into_inner());
        let info = table
            .get(&id)
            .copied()
            .ok_or_else(|| Error::NotFound(format!("lease {id} has expired or was revoked")))?;
        self.lease_clock
            .keepalive(term, id, info.ttl_ms, arrived)
            .map_err(|_| Error::NotFound(format!("lease {id} has expired")))?;
        drop(table);
        Ok(Duration::from_millis(info.ttl_ms))
    }

    fn lease_info(&self, id: u64) -> Result<crate::types::LeaseInfo> {
        self.reader
            .leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .copied()
            .ok_or_else(|| Error::NotFound(format!("lease {id} not found")))
    }

    /// Lease `id` as the leader sees it: its TTL, how long it has left, and (up to `limit`
    /// of) its keys, with whether more follow.
    pub(crate) async fn lease(&self, id: u64, limit: usize) -> Result<crate::LeaseView> {
        let term = self.leading_term()?;
        let info = self.lease_info(id)?;
        let ttl = Duration::from_millis(info.ttl_ms);
        let remaining = self
            .lease_clock
            .remaining(term, id, std::time::Instant::now())
            .unwrap_or(ttl);
        let (keys, more) = self.reader.lease_keys(id, limit).await?;
        Ok(crate::LeaseView {
            id,
            ttl,
            remaining,
            granted_index: info.granted,
            keys,
            more,
        })
    }

    /// Revokes lease `id` and deletes its keys in one entry: (the entry's index, how many
    /// keys went).
    pub(crate) async fn lease_revoke(&self, id: u64) -> Result<(u64, u64)> {
        match self.write(Op::LeaseRevoke { id }).await? {
            (index, Outcome::Deleted { count }) => Ok((index, count)),
            (_, Outcome::NoLease { .. }) => Err(Error::NotFound(format!("lease {id} not found"))),
            (_, other) => Err(Error::io(
                "revoking a lease",
                std::io::Error::other(format!("unexpected outcome {other:?}")),
            )),
        }
    }

    /// Fails unless this node may serve a read as `opts` asks; waits (bounded) for its
    /// level and for `min_index` to be applied.
    async fn ensure_read(&self, opts: &ReadOpts) -> Result<()> {
        self.ensure_level(opts.level).await?;
        if let Some(min) = opts.min_index {
            let wait = opts.wait;
            if tokio::time::timeout(wait, self.reader.applied.reached(min))
                .await
                .is_err()
            {
                return Err(Error::Timeout {
                    what: format!(
                        "applying index {min} (min_index; this node has applied {})",
                        self.reader.applied_index()
                    ),
                    after: wait,
                });
            }
        }
        Ok(())
    }

    /// Fails unless this node may serve a read at `level` now; for `Consistent`, also waits
    /// until it has applied everything committed before the read began.
    pub(crate) async fn ensure_level(&self, level: ReadLevel) -> Result<()> {
        match level {
            ReadLevel::Stale => {}
            ReadLevel::Default => self.check_leader()?,
            ReadLevel::Consistent => {
                let t = self.read_timeout;
                match tokio::time::timeout(t, self.reads.confirm()).await {
                    Ok(batch::Confirmed::Closed) => return Err(Error::ShuttingDown),
                    Err(_) | Ok(batch::Confirmed::Stalled) => {
                        return Err(Error::Timeout {
                            what: "confirming leadership for a consistent read".into(),
                            after: t,
                        })
                    }
                    Ok(batch::Confirmed::Done(Ok(()))) => {}
                    Ok(batch::Confirmed::Done(Err(RaftError::APIError(
                        CheckIsLeaderError::ForwardToLeader(f),
                    )))) => {
                        return Err(Error::NotLeader {
                            leader: f.leader_node.or_else(|| self.leader()),
                        })
                    }
                    Ok(batch::Confirmed::Done(Err(RaftError::APIError(
                        CheckIsLeaderError::QuorumNotEnough(q),
                    )))) => {
                        return Err(Error::Unavailable(format!(
                            "could not confirm leadership with a quorum: {q}"
                        )))
                    }
                    Ok(batch::Confirmed::Done(Err(RaftError::Fatal(e)))) => return Err(fatal(e)),
                }
            }
        }
        Ok(())
    }

    /// Proposes `op` through group commit and waits (bounded) for it to apply; returns
    /// its log index and what applying it did.
    pub(crate) async fn write(&self, op: Op) -> Result<(u64, Outcome)> {
        self.check_leader()?;
        self.check_not_transferring()?;
        let t = self.write_timeout;
        let pending = match self.writer.write(op) {
            Ok(p) => p,
            Err(batch::Refused::TooLarge { bytes }) => {
                return Err(Error::TooLarge(format!(
                    "the request encodes to {bytes} bytes; one log entry holds at most {MAX_ENTRY_BYTES}"
                )))
            }
            Err(batch::Refused::Busy) => {
                return Err(Error::Unavailable(
                    "too many writes are waiting to commit; retry later".into(),
                ))
            }
            Err(batch::Refused::Closed) => return Err(Error::ShuttingDown),
        };
        // On timeout `pending` is dropped, which withdraws the request if it is still queued.
        match tokio::time::timeout(t, pending).await {
            Err(_) => Err(Error::OutcomeUnknown {
                what: format!("the write did not commit within {t:?}; it may still commit"),
            }),
            Ok(None) => Err(Error::OutcomeUnknown {
                what: "the node stopped while the write was queued or in flight".into(),
            }),
            Ok(Some(Ok(done))) => Ok(done),
            Ok(Some(Err(e))) => Err(self.write_error(e)),
        }
    }

    /// Proposes `cmd` as a log entry of its own (not through group commit: for rare
    /// commands such as catalogue changes) and waits (bounded) for it to apply.
    pub(crate) async fn propose(&self, cmd: Command) -> Result<u64> {
        self.check_leader()?;
        self.check_not_transferring()?;
        let t = self.write_timeout;
        match tokio::time::timeout(t, self.raft.client_write(cmd)).await {
            Err(_) => Err(Error::OutcomeUnknown {
                what: format!("the change did not commit within {t:?}; it may still commit"),
            }),
            Ok(Ok(resp)) => Ok(resp.log_id.index),
            Ok(Err(e)) => Err(self.write_error(e)),
        }
    }

    /// What a failed proposal (a write or a membership change, already handed to Raft)
    /// means. Raft stopping meanwhile leaves the outcome unknown: entries it had appended
    /// may still commit under the next leader (found by review: this was "shutting down",
    /// which says nothing was applied).
    pub(crate) fn write_error(
        &self,
        e: RaftError<NodeId, ClientWriteError<NodeId, Node>>,
    ) -> Error {
        match e {
            RaftError::Fatal(openraft::error::Fatal::Stopped) => Error::OutcomeUnknown {
                what: "raft stopped while the change was in flight; it may still commit".into(),
            },
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::NotLeader {
                leader: f.leader_node.or_else(|| self.leader()),
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => match c {
                ChangeMembershipError::InProgress(_) => Error::Conflict(c.to_string()),
                other => Error::Invalid(other.to_string()),
            },
            RaftError::Fatal(f) => fatal(f),
        }
    }

    fn check_not_transferring(&self) -> Result<()> {
        if self.transferring.load(Ordering::Acquire) {
            return Err(Error::Unavailable(format!(
                "group {}'s leadership is being transferred; retry shortly",
                self.id
            )));
        }
        Ok(())
    }

    /// Campaigns at once (the target's side of a leadership transfer); this node must be
    /// a voter.
    pub(crate) async fn campaign(&self) -> Result<()> {
        let voter = {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.membership_config
                .membership()
                .voter_ids()
                .any(|v| v == self.raft_id)
        };
        if !voter {
            return Err(Error::Invalid(format!(
                "{} is not a voter of group {}",
                self.me.id, self.id
            )));
        }
        log::info!("group {}: campaigning, as asked by its leader", self.id);
        self.raft.trigger().elect().await.map_err(fatal)
    }

    /// Hands this node's leadership to the voter `to` (openraft 0.9 has no transfer, so:
    /// writes stop, the target catches up with the whole log, then campaigns; this
    /// leader grants its vote, which with three voters is a majority). Returns once `to`
    /// leads.
    pub(crate) async fn transfer_leadership(&self, to: &str) -> Result<Node> {
        self.check_leader()?;
        let target = raft_id_for(to);
        let (node, voters) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let mem = m.membership_config.membership();
            let voter = mem.voter_ids().any(|v| v == target);
            let node = mem
                .get_node(&target)
                .filter(|n| voter && n.id == to)
                .cloned();
            (node, mem.voter_ids().count())
        };
        let Some(node) = node else {
            return Err(Error::Invalid(format!(
                "{to:?} is not a voter of group {}",
                self.id
            )));
        };
        if target == self.raft_id {
            return Ok(node);
        }
        let _guard = self.lock_membership().await?;
        // With more than three voters, this leader's vote and the target's are no
        // majority: the followers must vote too, and they refuse while their lease on this
        // leader is fresh, so the hand-over first goes silent towards them for a lease.
        let hush = voters > 3;
        // Until this leader's lease has passed, every voter (itself too) refuses the
        // target's vote request, and a refused campaign costs an election timeout.
        // Not seen yet by the clock: it became leader just now. (The silence of a
        // hushed hand-over outlasts it.)
        let since = *self.led_since.lock().unwrap_or_else(|e| e.into_inner());
        let at = since
            .map(|(_, at)| at)
            .unwrap_or_else(std::time::Instant::now);
        let wait = (self.lease + Duration::from_millis(50)).saturating_sub(at.elapsed());
        if !wait.is_zero() && !hush {
            log::info!(
                "group {}: waiting {wait:?} for this leader's lease before the transfer",
                self.id
            );
            tokio::time::sleep(wait).await;
        }
        self.check_leader()?;
        // Cleared on every way out, also when the request is dropped midway (found by
        // review: a client that hung up left the group refusing writes).
        let _pause = Pause::new(&self.transferring);
        self.hand_over(target, &node, hush).await.map(|()| node)
    }

    async fn hand_over(&self, target: NodeId, node: &Node, hush: bool) -> Result<()> {
        let mut rx = self.raft.metrics();
        let caught_up = rx.wait_for(|m| {
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&target))
                .and_then(|l| l.as_ref())
                .map(|l| l.index);
            m.state != ServerState::Leader || matched >= m.last_log_index
        });
        tokio::time::timeout(TRANSFER_CATCH_UP, caught_up)
            .await
            .map_err(|_| Error::Timeout {
                what: format!(
                    "{} catching up with the whole log before a transfer",
                    node.id
                ),
                after: TRANSFER_CATCH_UP,
            })?
            .map_err(|_| Error::ShuttingDown)?;
        self.check_leader()?;
        let _hush = if hush {
            let h = Hush::new(&self.net, target);
            let quiet = self.lease + Duration::from_millis(50);
            log::info!(
                "group {}: sending nothing to members but {} for {quiet:?}, so that they \
                 may vote for it",
                self.id,
                node.id
            );
            tokio::time::sleep(quiet).await;
            self.check_leader()?;
            Some(h)
        } else {
            None
        };
        // Writes queued before the pause may have been appended since: the target must
        // hold the whole log when it campaigns, or its higher term only deposes this leader.
        let whole = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&target))
                .and_then(|l| l.as_ref())
                .map(|l| l.index);
            matched >= m.last_log_index
        };
        if !whole {
            return Err(Error::Unavailable(format!(
                "{} fell behind the log during the transfer; retry",
                node.id
            )));
        }
        let req = network::PeerRequest::Elect {
            group: self.id.clone(),
            incarnation: self.incarnation,
        };
        match self
            .net
            .call(&node.raft_addr, &req, TRANSFER_CATCH_UP)
            .await
        {
            Ok(network::PeerResponse::Elected(Ok(()))) => {}
            Ok(network::PeerResponse::Elected(Err(e))) => return Err(e.into()),
            Ok(_) => {
                return Err(Error::Unavailable(format!(
                    "{} does not run group {}",
                    node.id, self.id
                )))
            }
            Err(e) => {
                return Err(Error::Unavailable(format!(
                    "asking {} to campaign: {e:?}",
                    node.id
                )))
            }
        }
        self.raft
            .wait(Some(TRANSFER_ELECTION))
            .metrics(
                |m| m.current_leader == Some(target),
                "the transfer's target to lead",
            )
            .await
            .map(drop)
            .map_err(|_| Error::Timeout {
                what: format!("{} winning the election of group {}", node.id, self.id),
                after: TRANSFER_ELECTION,
            })
    }

    /// Whether this node currently believes it leads this group.
    pub(crate) fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.raft_id)
    }

    /// Fails with `NotLeader` unless this node currently believes it is the leader.
    pub(crate) fn check_leader(&self) -> Result<()> {
        if self.is_leader() {
            return Ok(());
        }
        Err(Error::NotLeader {
            leader: self.leader(),
        })
    }

    /// The leader this node knows of, with its advertised addresses.
    pub(crate) fn leader(&self) -> Option<Node> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = self.live_leader(&m)?;
        m.membership_config.membership().get_node(&id).cloned()
    }

    /// openraft's current leader, unless that leader has told us it is stopping.
    pub(crate) fn live_leader(&self, m: &openraft::RaftMetrics<NodeId, Node>) -> Option<NodeId> {
        m.current_leader
            .filter(|id| !self.contact.has_stopped(*id, m.current_term))
    }

    /// Adds `node` to this group (this node must lead it): as a learner, then, once it has
    /// caught up, as a voter. Idempotent for the same id and addresses; the same id with
    /// new addresses replaces the entry. Returns the membership log index at which the
    /// node became (or already was) a voter.
    pub(crate) async fn add_member(&self, node: Node) -> Result<u64> {
        self.check_leader()?;
        let _guard = self.lock_membership().await?;
        let id = raft_id_for(&node.id);
        let (existing, is_voter) = {
            let m = self.raft.metrics().borrow().clone();
            let mem = m.membership_config.membership();
            (mem.get_node(&id).cloned(), mem.voter_ids().any(|v| v == id))
        };
        let group = &self.id;
        if let Some(old) = &existing {
            if old.id != node.id {
                return Err(Error::Invalid(format!(
                    "id {:?} hashes like existing member {:?}; choose another id",
                    node.id, old.id
                )));
            }
            if *old == node && is_voter {
                log::info!("join ({group}): {node} is already a voter");
                let m = self.raft.metrics().borrow().clone();
                return Ok(m.membership_config.log_id().map(|l| l.index).unwrap_or(0));
            }
            if *old != node {
                log::info!(
                    "join ({group}): {} changed addresses; replacing {old}",
                    node.id
                );
                self.change_membership(removal(id, is_voter), "removing the old entry")
                    .await?;
            }
        }
        if existing.as_ref() != Some(&node) {
            let t = self.write_timeout;
            let resp = tokio::time::timeout(t, self.raft.add_learner(id, node.clone(), false))
                .await
                .map_err(|_| Error::OutcomeUnknown {
                    what: format!(
                        "adding {} as a learner did not commit within {t:?}; it may still",
                        node.id
                    ),
                })?
                .map_err(|e| self.write_error(e))?;
            log::info!(
                "join ({group}): added {node} as a learner at log {}",
                resp.log_id.index
            );
        }
        if let Err(e) = self.wait_caught_up(id, &node.id).await {
            // Do not leave a learner behind that never caught up: the leader would keep
            // replicating to it. (Only a learner: a voter's removal is explicit.)
            if !is_voter {
                log::warn!(
                    "join ({group}): {} failed ({e}); removing it as a learner",
                    node.id
                );
                let change = removal(id, false);
                if let Err(r) = self
                    .change_membership(change, "removing the learner of a failed join")
                    .await
                {
                    log::warn!(
                        "join ({group}): could not remove the learner {}: {r}",
                        node.id
                    );
                }
            }
            return Err(e);
        }
        let index = self
            .change_membership(
                ChangeMembers::AddVoterIds(BTreeSet::from([id])),
                "promoting to voter",
            )
            .await?;
        log::info!("join ({group}): {node} is a voter at log {index}");
        Ok(index)
    }

    /// Removes the member `member` (its string id) from this group (this node must lead
    /// it). Returns the removed node and the membership log index that removed it.
    pub(crate) async fn remove_member(&self, member: &str) -> Result<(Node, u64)> {
        self.check_leader()?;
        let _guard = self.lock_membership().await?;
        let id = raft_id_for(member);
        let (node, is_voter) = {
            let m = self.raft.metrics().borrow().clone();
            let mem = m.membership_config.membership();
            (mem.get_node(&id).cloned(), mem.voter_ids().any(|v| v == id))
        };
        let Some(node) = node.filter(|n| n.id == member) else {
            return Err(Error::NotFound(format!(
                "no member with id {member:?} in group {}",
                self.id
            )));
        };
        let index = self
            .change_membership(removal(id, is_voter), &format!("removing {member}"))
            .await?;
        log::info!("remove ({}): {node} removed at log {index}", self.id);
        Ok((node, index))
    }

    /// Waits (bounded) for the membership lock.
    async fn lock_membership(&self) -> Result<tokio::sync::MutexGuard<'_, ()>> {
        tokio::time::timeout(MEMBERSHIP_LOCK_WAIT, self.membership_lock.lock())
            .await
            .map_err(|_| Error::Timeout {
                what: "waiting for another membership change to finish".into(),
                after: MEMBERSHIP_LOCK_WAIT,
            })
    }

    /// Waits until the leader has replicated its whole log to `id`.
    async fn wait_caught_up(&self, id: NodeId, member: &str) -> Result<()> {
        let t = self.catch_up_timeout;
        let mut rx = self.raft.metrics();
        let wait = rx.wait_for(|m| {
            let Some(last) = m.last_log_index else {
                return true;
            };
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&id))
                .and_then(|l| l.as_ref())
                .map(|l| l.index);
            // Close enough that promotion will not stall commits.
            matched.is_some_and(|i| i + 10 >= last) || m.state != ServerState::Leader
        });
        tokio::time::timeout(t, wait)
            .await
            .map_err(|_| Error::Timeout {
                what: format!("{member} catching up with the leader's log"),
                after: t,
            })?
            .map_err(|_| Error::ShuttingDown)?;
        self.check_leader()
    }

    /// Runs a membership change in its own task, so that timing out the wait never
    /// abandons openraft's two-step change halfway (in a joint configuration).
    pub(crate) async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, Node>,
        what: &str,
    ) -> Result<u64> {
        let t = self.write_timeout * 2;
        let raft = self.raft.clone();
        let task = tokio::spawn(async move { raft.change_membership(change, false).await });
        match tokio::time::timeout(t, task).await {
            Err(_) => Err(Error::OutcomeUnknown {
                what: format!(
                    "{what}: the membership change did not finish within {t:?}; it may still"
                ),
            }),
            Ok(Err(e)) => Err(Error::raft(what, e)),
            Ok(Ok(Ok(resp))) => Ok(resp.log_id.index),
            Ok(Ok(Err(e))) => Err(self.write_error(e)),
        }
    }

    /// This node's current view of itself and the group.
    pub(crate) fn status(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        let mem = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = mem.voter_ids().collect();
        let members = mem
            .nodes()
            .map(|(id, n)| Member {
                node: n.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let role = match m.state {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        };
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        Status {
            id: self.me.id.clone(),
            role,
            term: m.current_term,
            leader: self
                .live_leader(&m)
                .and_then(|id| mem.get_node(&id).cloned()),
            members,
            commit_index: self.committed.load(Ordering::Relaxed).max(applied),
            applied_index: applied,
        }
    }

    /// Stops the group: its tasks' stop signal first (no new batch is proposed), then
    /// Raft (which answers what is in flight), then the bounded join of its tasks. Returns
    /// how many tasks had to be aborted.
    pub(crate) async fn stop(&self, bound: Duration) -> usize {
        self.tasks.stop();
        self.reader.hub.close();
        if let Err(e) = self.raft.shutdown().await {
            log::warn!("raft shutdown ({}): {e}", self.id);
        }
        self.tasks.join(bound).await
    }

    /// The write loop, for tests.
    #[cfg(test)]
    pub(crate) fn writer(&self) -> &batch::Writer {
        &self.writer
    }

    /// The read-round loop, for tests.
    #[cfg(test)]
    pub(crate) fn reads(&self) -> &batch::ReadBarrier {
        &self.reads
    }
}

/// The membership change that removes node `id`: as a voter, or as a learner.
fn removal(id: NodeId, is_voter: bool) -> ChangeMembers<NodeId, Node> {
    if is_voter {
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    }
}

/// Sets a flag for as long as it lives.
struct Pause<'a>(&'a std::sync::atomic::AtomicBool);

impl<'a> Pause<'a> {
    fn new(flag: &'a std::sync::atomic::AtomicBool) -> Self {
        flag.store(true, Ordering::Release);
        Pause(flag)
    }
}

impl Drop for Pause<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Keeps a group's appends to all members but one stopped for as long as it lives (see
/// `Network::hush`).
struct Hush<'a>(&'a Network);

impl<'a> Hush<'a> {
    fn new(net: &'a Network, except: NodeId) -> Self {
        net.hush(except);
        Hush(net)
    }
}

impl Drop for Hush<'_> {
    fn drop(&mut self) {
        self.0.unhush();
    }
}

/// Keeps `led_since`: when this node last became the leader, and in which term. It
/// watches openraft's server metrics (vote, state, leader, membership), which change only
/// with those, not the full metrics that every heartbeat round updates.
fn spawn_leadership_clock(
    raft: &Raft,
    tasks: &Tasks,
    me: NodeId,
    led_since: Arc<std::sync::Mutex<Option<(u64, std::time::Instant)>>>,
) {
    let mut rx = raft.server_metrics();
    let mut stop = tasks.stopping();
    tasks.spawn("leadership clock", async move {
        loop {
            let (leads, term) = {
                let m = rx.borrow_and_update();
                (
                    m.state == ServerState::Leader && m.current_leader == Some(me),
                    m.vote.leader_id().get_term(),
                )
            };
            {
                let mut since = led_since.lock().unwrap_or_else(|e| e.into_inner());
                match (*since, leads) {
                    (Some((t, _)), true) if t == term => {}
                    (_, true) => *since = Some((term, std::time::Instant::now())),
                    (_, false) => *since = None,
                }
            }
            tokio::select! {
                biased;
                _ = stop.wait() => return,
                r = rx.changed() => if r.is_err() { return },
            }
        }
    });
}

/// A duration in whole milliseconds, as openraft's config takes it.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn fatal(e: openraft::error::Fatal<NodeId>) -> Error {
    match e {
        openraft::error::Fatal::Stopped => Error::ShuttingDown,
        other => Error::raft("raft stopped", other),
    }
}
