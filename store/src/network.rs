//! The Raft peer transport on `-raddr`: length-prefixed bincode frames over persistent
//! connections, each authenticated first (`peer_auth.rs`: cluster key or mutual TLS).
//!
//! Client side: a pool of idle connections per peer address, shared by every openraft
//! replication stream and heartbeat (openraft asks for a new client object per RPC batch,
//! so connections live in the pool, not in the client). Each call has a hard deadline.
//! Server side: one task per connection, answering requests in order, owned by the serving
//! task (a `JoinSet`): at shutdown it stops accepting, closes idle connections at once, lets
//! requests being answered finish for `DRAIN_TIMEOUT` and aborts what is left, so that no
//! connection task outlives it. Everything a peer
//! sends is bounded before it is trusted: at most `MAX_CONNS` connections, a handshake
//! deadline, frames of at most `MAX_FRAME` bytes that must arrive within
//! `FRAME_TIMEOUT`, decoding that never recurses nor reads past the frame, and idle
//! connections closed after `IDLE_TIMEOUT`. Every refusal closes the connection, is
//! logged at warn with the peer's address (rate-limited) and counted in [`PeerStats`].
//!
//! Heartbeats of catalogue groups are coalesced per peer: the node's heartbeat ticker
//! (`Store::spawn_heartbeats`) makes every group it leads send its heartbeats at the same
//! instant, and `Network::beat` queues each empty append on that peer's *lane*, whose
//! task sends what has queued as one `PeerRequest::Beats` frame. A hundred idle groups
//! then cost a few frames per peer per heartbeat interval, not a hundred.
//!
//! The "removed" and "leader stopping" notices are hints, never orders: a removal is acted
//! on only once this node's applied membership, or the leader asked over this same
//! authenticated channel, confirms it (see `Store`); a stopping notice only makes the node
//! stop redirecting clients to that leader, until the next append or an election timeout.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use openraft::error::InstallSnapshotError;
use openraft::error::NetworkError;
use openraft::error::PayloadTooLarge;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::RemoteError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::network::RaftNetwork;
use openraft::network::RaftNetworkFactory;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use serde::Deserialize;
use serde::Serialize;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpSocket;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::peer_auth::PeerAuth;
use crate::peer_auth::PeerStream;
use crate::types::decode;
use crate::types::encode;
use crate::types::Node;
use crate::types::NodeId;
use crate::types::Raft;
use crate::types::TypeConfig;
use crate::types::MAX_ENTRY_BYTES;

/// Frames larger than this are refused. The largest legal frame is an append of one
/// maximal entry ([`MAX_ENTRY_BYTES`]) or one snapshot chunk (1 MiB, set in `Store::open`);
/// the margin admits the up-to-4 MiB entries earlier versions could write.
pub(crate) const MAX_FRAME: usize = 4 << 20;
/// An append batch larger than this is refused locally with `PayloadTooLarge`, so openraft
/// sends fewer entries: openraft gives each append RPC only a heartbeat interval to finish.
const MAX_APPEND_BYTES: u64 = MAX_ENTRY_BYTES;
/// Idle connections kept per peer.
const MAX_IDLE: usize = 8;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Peer connections served at once; more are closed at once.
pub(crate) const MAX_CONNS: usize = 128;
/// The longest a connection may take to authenticate.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest one frame may take to arrive once its length has been read.
pub(crate) const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no request for this long is closed (the client's pool reconnects).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// At shutdown, how long connections may take to finish the request they are answering
/// before they are aborted.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed accept (e.g. EMFILE: out of file descriptors), how long to back off
/// before accepting again, so that a persistent error does not spin a core. A backoff
/// after an error, not a wait for an event.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The most heartbeats one `PeerRequest::Beats` frame may carry (a frame with more is
/// refused); each is about 200 bytes, so a full frame stays far below `MAX_FRAME`.
pub const MAX_BEATS: usize = 1024;
/// Heartbeats queued for one peer at most; past that a heartbeat goes in a call of its own.
const BEAT_QUEUE: usize = 4096;
/// Heartbeat frames in flight to one peer at once; while they are, later heartbeats queue
/// up and leave together in the next frame.
const BEAT_FRAMES_IN_FLIGHT: usize = 2;
/// How long after the node's heartbeat tick a lane waits before sending, so that the
/// heartbeats the tick set off (one per group, each from its own Raft task) leave in one
/// frame. Outside that window a heartbeat leaves at once.
const BEAT_GATHER: Duration = Duration::from_millis(2);
/// The longest a peer spends answering the heartbeats of one frame, whatever it is asked.
const MAX_BEAT_TTL: Duration = Duration::from_secs(5);

/// Counts of coalesced heartbeats, for `/metrics`: `beats / frames` is how many group
/// heartbeats one peer frame carried on average.
#[derive(Default)]
pub struct BeatStats {
    frames: std::sync::atomic::AtomicU64,
    beats: std::sync::atomic::AtomicU64,
}

impl BeatStats {
    /// (frames sent, heartbeats they carried) so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.frames.load(Ordering::Relaxed),
            self.beats.load(Ordering::Relaxed),
        )
    }
}

/// Refused peer connections by reason, for `hraftd_peer_rejected_total{reason}`, and the
/// rate limit on logging them (a flood of refusals must not become a flood of log lines).
#[derive(Default)]
pub struct PeerStats {
    counts: Mutex<BTreeMap<&'static str, u64>>,
    logged: Mutex<HashMap<&'static str, Instant>>,
}

impl PeerStats {
    /// Counts a refusal and logs it at warn (at most once a second per reason).
    pub(crate) fn reject(
        &self,
        reason: &'static str,
        peer: SocketAddr,
        detail: &dyn std::fmt::Display,
    ) {
        *self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if logged
            .get(reason)
            .is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            logged.insert(reason, now);
            log::warn!("raft transport: refused {peer} ({reason}): {detail}");
        }
    }

    /// Refusals so far, by reason.
    pub fn rejected(&self) -> Vec<(String, u64)> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(r, n)| (r.to_string(), *n))
            .collect()
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum PeerRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// The leader tells a node it has been removed from the cluster by the membership
    /// change at log index `membership_index`.
    Removed {
        node_id: NodeId,
        membership_index: u64,
    },
    /// The leader of `term` is stopping (a graceful shutdown): followers stop sending
    /// clients to it until a new leader is elected.
    LeaderStopping {
        node_id: NodeId,
        term: u64,
    },
    /// Asks for the membership this node has applied (committed) and whether it leads:
    /// how a node checks a removal notice with the leader.
    Membership,
    /// An openraft RPC of catalogue group `group` (the first three variants are the
    /// default group's, so that nodes of earlier versions still understand each other).
    Group {
        group: String,
        /// Which creation of the group (`GroupEntry::incarnation`): an instance of an
        /// earlier group of the same name must not take part (found by review).
        incarnation: u64,
        rpc: GroupRpc,
    },
    /// Asks for the state of every group this node runs (the default one first).
    Groups,
    /// Asks this node, as the leader of `group`, to change that group's members.
    GroupMember {
        group: String,
        incarnation: u64,
        change: MemberChange,
    },
    /// Asks this node to campaign in `group` at once: the last step of a leadership
    /// transfer, sent by the leader once this node holds its whole log.
    Elect {
        group: String,
        incarnation: u64,
    },
    /// Heartbeats (empty appends) of several catalogue groups, coalesced into one frame;
    /// the peer answers each within `ttl_ms` (else [`PeerResponse::Late`]), in order, with
    /// one [`PeerResponse::Beats`]. At most [`MAX_BEATS`].
    Beats {
        ttl_ms: u64,
        beats: Vec<Beat>,
    },
}

/// One group's heartbeat in a [`PeerRequest::Beats`] frame.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Beat {
    pub(crate) group: String,
    pub(crate) incarnation: u64,
    pub(crate) rpc: AppendEntriesRequest<TypeConfig>,
}

/// The openraft RPCs, as carried for a catalogue group.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum GroupRpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

/// A change of one group's members, asked of that group's leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum MemberChange {
    /// Add the node: as a learner, then, once caught up, as a voter.
    Add(Node),
    /// Remove the member with this id.
    Remove(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum PeerResponse {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Ack,
    Membership(MembershipAnswer),
    /// This node does not run the group a [`PeerRequest::Group`] or
    /// [`PeerRequest::GroupMember`] named.
    NoGroup,
    Groups(Vec<crate::groups::GroupState>),
    GroupMember(Result<u64, crate::groups::WireError>),
    Elected(Result<(), crate::groups::WireError>),
    /// The answers to a [`PeerRequest::Beats`], one per heartbeat, in order: `Append`,
    /// `NoGroup` or `Late`.
    Beats(Vec<PeerResponse>),
    /// The group did not answer this heartbeat within the frame's `ttl_ms`.
    Late,
}

/// A node's answer to [`PeerRequest::Membership`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MembershipAnswer {
    /// Whether the answering node is the leader.
    pub leader: bool,
    /// The log index of the applied membership.
    pub index: u64,
    /// Its members (voters and learners).
    pub members: Vec<NodeId>,
}

async fn write_frame(s: &mut (impl AsyncWrite + Unpin), body: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(body);
    s.write_all(&buf).await?;
    s.flush().await
}

async fn read_frame(s: &mut (impl AsyncRead + Unpin)) -> io::Result<Vec<u8>> {
    let len = s.read_u32().await? as usize;
    read_body(s, len).await
}

async fn read_body(s: &mut (impl AsyncRead + Unpin), len: usize) -> io::Result<Vec<u8>> {
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("peer frame of {len} bytes exceeds {MAX_FRAME}"),
        ));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    Ok(body)
}

/// A failed call: could we not reach the peer at all, or did it fail midway?
#[derive(Debug)]
pub(crate) enum CallError {
    Unreachable(io::Error),
    Failed(io::Error),
}

impl CallError {
    /// The same failure, for another caller (`io::Error` is not `Clone`).
    fn copy(&self) -> CallError {
        let c = |e: &io::Error| io::Error::new(e.kind(), e.to_string());
        match self {
            CallError::Unreachable(e) => CallError::Unreachable(c(e)),
            CallError::Failed(e) => CallError::Failed(c(e)),
        }
    }
}

/// A heartbeat waiting on a lane, with its caller's deadline and where its answer goes.
struct QueuedBeat {
    beat: Beat,
    deadline: tokio::time::Instant,
    reply: tokio::sync::oneshot::Sender<Result<PeerResponse, CallError>>,
}

/// Connection pool shared by all clients of this node. Cheap to clone.
#[derive(Clone)]
pub struct Network {
    /// Idle connections by peer address; a call takes one out and puts it back on success,
    /// so concurrent calls to one peer use separate connections.
    idle: Arc<Mutex<HashMap<String, Vec<PeerStream>>>>,
    /// The address outgoing peer connections are made from (this node's advertised IP),
    /// so that peer traffic is attributable to a node, e.g. by firewall rules.
    local_ip: Option<IpAddr>,
    /// How every new connection authenticates itself and its peer.
    auth: PeerAuth,
    /// Set when this node, as a leader, has said it is stopping: openraft's own RPCs
    /// (heartbeats) then stop, so that followers keep treating it as gone.
    quiet: Arc<AtomicBool>,
    /// The catalogue group (and its incarnation) whose openraft RPCs this handle carries;
    /// `None`: the default group's. Clones for each group share the pool.
    group: Option<(Arc<str>, u64)>,
    /// Each peer's heartbeat lane (its queue; a task drains it, see [`Network::beat`]),
    /// by peer address. Shared by every group's handle, so that their heartbeats to one
    /// peer meet in one queue. A lane's task ends after [`IDLE_TIMEOUT`] without a
    /// heartbeat; its closed queue is then replaced on the next one.
    lanes: Arc<Mutex<HashMap<String, tokio::sync::mpsc::Sender<QueuedBeat>>>>,
    /// While set (by a leadership transfer in a group of more than three voters), this
    /// group's appends go to no member but the one named: its followers' leader leases must
    /// lapse before they vote for the transfer's target. Each group's handle has its own.
    hush: Arc<Mutex<Option<NodeId>>>,
    /// Until when lanes gather heartbeats before sending (set by [`Network::gather_beats`]
    /// at each heartbeat tick; shared by every handle, the lanes' own included).
    gather_until: Arc<Mutex<Option<tokio::time::Instant>>>,
    beat_stats: Arc<BeatStats>,
}

impl Network {
    /// A pool whose connections originate from `local_ip` when given and authenticate
    /// with `auth`.
    pub fn new(local_ip: Option<IpAddr>, auth: PeerAuth) -> Self {
        Network {
            idle: Arc::default(),
            local_ip,
            auth,
            quiet: Arc::default(),
            group: None,
            lanes: Arc::default(),
            gather_until: Arc::default(),
            beat_stats: Arc::default(),
            hush: Arc::default(),
        }
    }

    /// Stops this group's appends (heartbeats included) to every member but `except`,
    /// until [`Network::unhush`].
    pub(crate) fn hush(&self, except: NodeId) {
        *self.hush.lock().unwrap_or_else(|e| e.into_inner()) = Some(except);
    }

    pub(crate) fn unhush(&self) {
        *self.hush.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn is_hushed_for(&self, target: NodeId) -> bool {
        self.hush
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|except| except != target)
    }

    /// Called by the node's heartbeat ticker just before it sets off every group's
    /// heartbeats: for [`BEAT_GATHER`], lanes wait for the rest before sending.
    pub(crate) fn gather_beats(&self) {
        *self.gather_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(tokio::time::Instant::now() + BEAT_GATHER);
    }

    /// How many heartbeat frames this node has sent and how many heartbeats they carried.
    pub(crate) fn beat_stats(&self) -> (u64, u64) {
        self.beat_stats.get()
    }

    /// Sends a catalogue group's heartbeat (an empty append) to `addr` on that peer's
    /// lane, together with the other groups' heartbeats queued there, and waits (within
    /// `ttl`) for its own answer.
    async fn beat(&self, addr: &str, beat: Beat, ttl: Duration) -> Result<PeerResponse, CallError> {
        let deadline = tokio::time::Instant::now() + ttl;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let mut item = QueuedBeat {
            beat,
            deadline,
            reply,
        };
        // A lane that idled out is replaced once; a full one is bypassed.
        for _ in 0..2 {
            let lane = self.lane(addr);
            match lane.try_send(item) {
                Ok(()) => {
                    return match tokio::time::timeout_at(deadline, answer).await {
                        Ok(Ok(r)) => r,
                        Ok(Err(_)) => Err(CallError::Failed(io::Error::other(format!(
                            "the heartbeat lane to {addr} stopped"
                        )))),
                        Err(_) => Err(CallError::Failed(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("heartbeat to {addr} timed out"),
                        ))),
                    };
                }
                Err(tokio::sync::mpsc::error::TrySendError::Full(i)) => {
                    item = i;
                    break;
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(i)) => item = i,
            }
        }
        let req = self.request(GroupRpc::Append(item.beat.rpc));
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.call(addr, &req, left).await
    }

    /// The heartbeat lane to `addr`, started if there is none or its task has ended.
    fn lane(&self, addr: &str) -> tokio::sync::mpsc::Sender<QueuedBeat> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = lanes.get(addr).filter(|l| !l.is_closed()) {
            return l.clone();
        }
        let (tx, rx) = tokio::sync::mpsc::channel(BEAT_QUEUE);
        // The lane's own handle has no lanes: the map holds the only senders, so the task
        // never keeps its own queue open.
        let net = Network {
            lanes: Arc::default(),
            group: None,
            ..self.clone()
        };
        tokio::spawn(run_lane(net, addr.to_string(), rx));
        lanes.insert(addr.to_string(), tx.clone());
        tx
    }

    /// The same pool, carrying the openraft RPCs of catalogue group `group`.
    pub(crate) fn for_group(&self, group: &str, incarnation: u64) -> Network {
        Network {
            group: Some((group.into(), incarnation)),
            hush: Arc::default(),
            ..self.clone()
        }
    }

    /// The request that carries `rpc` for this handle's group.
    fn request(&self, rpc: GroupRpc) -> PeerRequest {
        match &self.group {
            Some((g, incarnation)) => PeerRequest::Group {
                group: g.to_string(),
                incarnation: *incarnation,
                rpc,
            },
            None => match rpc {
                GroupRpc::Append(r) => PeerRequest::Append(r),
                GroupRpc::Vote(r) => PeerRequest::Vote(r),
                GroupRpc::Snapshot(r) => PeerRequest::Snapshot(r),
            },
        }
    }

    /// Stops openraft's RPCs from this node (see `quiet`).
    pub(crate) fn go_quiet(&self) {
        self.quiet.store(true, Ordering::Relaxed);
    }

    fn is_quiet(&self) -> bool {
        self.quiet.load(Ordering::Relaxed)
    }

    /// A new, authenticated connection to `addr`.
    async fn connect(&self, addr: &str) -> io::Result<PeerStream> {
        let s = self.connect_tcp(addr).await?;
        let _ = s.set_nodelay(true);
        self.auth.connect(s, addr).await
    }

    async fn connect_tcp(&self, addr: &str) -> io::Result<TcpStream> {
        let Some(ip) = self.local_ip else {
            return TcpStream::connect(addr).await;
        };
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            format!("{addr} resolves to nothing"),
        );
        for target in tokio::net::lookup_host(addr).await? {
            if target.is_ipv4() != ip.is_ipv4() {
                continue;
            }
            let socket = if ip.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Err(e) = socket.bind(SocketAddr::new(ip, 0)) {
                log::debug!("binding peer connection to {ip}: {e}; connecting unbound");
                return TcpStream::connect(addr).await;
            }
            match socket.connect(target).await {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn take_idle(&self, addr: &str) -> Option<PeerStream> {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(addr)
            .and_then(|v| v.pop())
    }

    fn put_idle(&self, addr: &str, s: PeerStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let v = idle.entry(addr.to_string()).or_default();
        if v.len() < MAX_IDLE {
            v.push(s);
        }
    }

    /// Opens and authenticates a connection to `addr` within `ttl`, then closes it.
    pub(crate) async fn probe(&self, addr: &str, ttl: Duration) -> io::Result<()> {
        match tokio::time::timeout(ttl, self.connect(addr)).await {
            Ok(r) => r.map(drop),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no authenticated connection to {addr} within {ttl:?}"),
            )),
        }
    }

    /// Sends one request to `addr` and waits for its response, within `ttl`.
    pub(crate) async fn call(
        &self,
        addr: &str,
        req: &PeerRequest,
        ttl: Duration,
    ) -> Result<PeerResponse, CallError> {
        let body = encode(req).map_err(CallError::Failed)?;
        let deadline = tokio::time::Instant::now() + ttl;
        // A pooled connection may have been closed by a restarted peer; on an I/O error
        // with one, try once more on a fresh connection (but not after a timeout: the
        // deadline is spent).
        if let Some(s) = self.take_idle(addr) {
            match self.exchange(addr, s, &body, deadline).await {
                Ok(resp) => return Ok(resp),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(CallError::Failed(e)),
                Err(_) => {}
            }
        }
        let s = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + CONNECT_TIMEOUT),
            self.connect(addr),
        )
        .await
        .map_err(|_| {
            CallError::Unreachable(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {addr} timed out"),
            ))
        })?
        .map_err(CallError::Unreachable)?;
        self.exchange(addr, s, &body, deadline)
            .await
            .map_err(CallError::Failed)
    }

    async fn exchange(
        &self,
        addr: &str,
        mut s: PeerStream,
        body: &[u8],
        deadline: tokio::time::Instant,
    ) -> io::Result<PeerResponse> {
        let resp = tokio::time::timeout_at(deadline, async {
            write_frame(&mut s, body).await?;
            read_frame(&mut s).await
        })
        .await
        .map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, format!("rpc to {addr} timed out"))
        })??;
        let resp: PeerResponse = decode(&resp)?;
        self.put_idle(addr, s);
        Ok(resp)
    }
}

/// Drains one peer's heartbeat lane: takes what has queued (at most [`MAX_BEATS`]) and
/// sends it as one frame, with at most [`BEAT_FRAMES_IN_FLIGHT`] frames in flight; ends
/// after [`IDLE_TIMEOUT`] without a heartbeat, sending what raced in first.
async fn run_lane(net: Network, addr: String, mut rx: tokio::sync::mpsc::Receiver<QueuedBeat>) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(BEAT_FRAMES_IN_FLIGHT));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = match tokio::time::timeout(IDLE_TIMEOUT, rx.recv()).await {
            Ok(Some(b)) => vec![b],
            Ok(None) => return,
            // Idle: no more heartbeats are taken; those that raced in are still sent
            // (a closed queue yields what it holds, then `None`).
            Err(_) => {
                rx.close();
                continue;
            }
        };
        // Just after a tick: let the other groups' heartbeats arrive.
        let gather = *net.gather_until.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(until) = gather.filter(|t| *t > tokio::time::Instant::now()) {
            tokio::time::sleep_until(until).await;
        }
        while batch.len() < MAX_BEATS {
            match rx.try_recv() {
                Ok(b) => batch.push(b),
                Err(_) => break,
            }
        }
        // Callers that gave up need no answer.
        batch.retain(|b| !b.reply.is_closed());
        if !batch.is_empty() {
            let net = net.clone();
            let addr = addr.clone();
            tokio::spawn(async move {
                send_beats(&net, &addr, batch).await;
                drop(permit);
            });
        }
    }
}

/// Sends `batch` to `addr` as one [`PeerRequest::Beats`] frame and hands each heartbeat's
/// caller its answer.
async fn send_beats(net: &Network, addr: &str, batch: Vec<QueuedBeat>) {
    let now = tokio::time::Instant::now();
    let deadline = batch.iter().map(|b| b.deadline).min().unwrap_or(now);
    let ttl = deadline.saturating_duration_since(now);
    let (beats, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|b| (b.beat, b.reply)).unzip();
    net.beat_stats.frames.fetch_add(1, Ordering::Relaxed);
    net.beat_stats
        .beats
        .fetch_add(beats.len() as u64, Ordering::Relaxed);
    // The peer answers late heartbeats as such within 3/4 of the time left, so that the
    // frame's answer is back before the first caller's deadline.
    let req = PeerRequest::Beats {
        ttl_ms: u64::try_from((ttl * 3 / 4).as_millis()).unwrap_or(u64::MAX),
        beats,
    };
    match net.call(addr, &req, ttl).await {
        Ok(PeerResponse::Beats(answers)) if answers.len() == replies.len() => {
            for (a, r) in answers.into_iter().zip(replies) {
                let _ = r.send(Ok(a));
            }
        }
        Ok(_) => {
            for r in replies {
                let _ = r.send(Err(CallError::Failed(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected answer from {addr} to a heartbeat frame"),
                ))));
            }
        }
        Err(e) => {
            for r in replies {
                let _ = r.send(Err(e.copy()));
            }
        }
    }
}

/// The client openraft uses for one target.
pub struct PeerClient {
    net: Network,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        PeerClient {
            net: self.clone(),
            target,
            addr: node.raft_addr.clone(),
        }
    }
}

fn to_rpc_error<E: std::error::Error>(e: CallError) -> RPCError<NodeId, Node, E> {
    match e {
        CallError::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
        CallError::Failed(e) => RPCError::Network(NetworkError::new(&e)),
    }
}

fn quiet<E: std::error::Error>() -> RPCError<NodeId, Node, E> {
    let e = io::Error::other("this node is stopping");
    RPCError::Unreachable(Unreachable::new(&e))
}

/// The peer does not run this group (yet, or any more): as unreachable as a closed port.
fn no_group<E: std::error::Error>() -> RPCError<NodeId, Node, E> {
    let e = io::Error::other("the peer does not run this group");
    RPCError::Unreachable(Unreachable::new(&e))
}

/// The peer's group did not answer a coalesced heartbeat in time.
fn late<E: std::error::Error>() -> RPCError<NodeId, Node, E> {
    let e = io::Error::new(
        io::ErrorKind::TimedOut,
        "the peer's group did not answer the heartbeat in time",
    );
    RPCError::Network(NetworkError::new(&e))
}

fn unexpected<E: std::error::Error>(what: &str) -> RPCError<NodeId, Node, E> {
    let e = io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected peer response to {what}"),
    );
    RPCError::Network(NetworkError::new(&e))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        if self.net.is_quiet() || self.net.is_hushed_for(self.target) {
            return Err(quiet());
        }
        let n = rpc.entries.len() as u64;
        if n > 1 {
            let bytes: u64 = rpc
                .entries
                .iter()
                .map(|e| bincode::serialized_size(e).unwrap_or(0))
                .sum();
            if bytes > MAX_APPEND_BYTES {
                let fit = n * MAX_APPEND_BYTES / bytes;
                return Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(fit.clamp(1, n - 1)),
                ));
            }
        }
        let answer = match &self.net.group {
            // A catalogue group's heartbeat: coalesced with the other groups' to this peer.
            Some((group, incarnation)) if n == 0 => {
                let beat = Beat {
                    group: group.to_string(),
                    incarnation: *incarnation,
                    rpc,
                };
                self.net.beat(&self.addr, beat, option.hard_ttl()).await
            }
            _ => {
                let req = self.net.request(GroupRpc::Append(rpc));
                self.net.call(&self.addr, &req, option.hard_ttl()).await
            }
        };
        match answer {
            Ok(PeerResponse::Append(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(PeerResponse::NoGroup) => Err(no_group()),
            Ok(PeerResponse::Late) => Err(late()),
            Ok(_) => Err(unexpected("append_entries")),
            Err(e) => Err(to_rpc_error(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        if self.net.is_quiet() {
            return Err(quiet());
        }
        match self
            .net
            .call(
                &self.addr,
                &self.net.request(GroupRpc::Snapshot(rpc)),
                option.hard_ttl(),
            )
            .await
        {
            Ok(PeerResponse::Snapshot(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(PeerResponse::NoGroup) => Err(no_group()),
            Ok(_) => Err(unexpected("install_snapshot")),
            Err(e) => Err(to_rpc_error(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        if self.net.is_quiet() {
            return Err(quiet());
        }
        match self
            .net
            .call(
                &self.addr,
                &self.net.request(GroupRpc::Vote(rpc)),
                option.hard_ttl(),
            )
            .await
        {
            Ok(PeerResponse::Vote(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(PeerResponse::NoGroup) => Err(no_group()),
            Ok(_) => Err(unexpected("vote")),
            Err(e) => Err(to_rpc_error(e)),
        }
    }
}

/// How long after a leader's stopping notice its own appends are taken for ones sent before
/// the notice (see `LeaderContact::touch`).
const STRAGGLER_GRACE: Duration = Duration::from_secs(1);

/// What this node has heard from leaders, beyond what openraft tracks. Shared by the
/// transport (which records it) and the `Store` (readiness, redirects).
#[derive(Clone)]
pub(crate) struct LeaderContact {
    state: Arc<std::sync::Mutex<ContactState>>,
    /// How long a "leader stopping" notice counts without a later append: long enough that
    /// every follower has timed out on that leader by then and elects anew anyway.
    stop_notice_ttl: Duration,
}

#[derive(Default)]
struct ContactState {
    /// When entries or a heartbeat were last accepted from a leader. After a restart, a
    /// stored vote names a leader that may be long gone, so knowing a leader is not the
    /// same as hearing from one.
    last: Option<Instant>,
    /// A leader that said it is stopping, its term and when it said so: until the next
    /// accepted append or the notice's time-to-live, it is no leader to send clients to.
    stopped: Option<(NodeId, u64, Instant)>,
}

impl LeaderContact {
    pub(crate) fn new(stop_notice_ttl: Duration) -> Self {
        LeaderContact {
            state: Arc::default(),
            stop_notice_ttl,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ContactState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An append from `leader` in `term` was accepted: that leader is alive, whatever
    /// anyone said, so a stopping notice is cleared. Except just after a notice from that
    /// very leader: its appends sent before the notice may still arrive after it (each is
    /// bounded by its RPC deadline, one heartbeat interval), and they prove nothing.
    fn touch(&self, leader: Option<NodeId>, term: u64) {
        let mut s = self.state();
        s.last = Some(Instant::now());
        let straggler = s.stopped.is_some_and(|(l, t, at)| {
            Some(l) == leader && t == term && at.elapsed() < STRAGGLER_GRACE
        });
        if !straggler {
            s.stopped = None;
        }
    }

    fn leader_stopping(&self, leader: NodeId, term: u64) {
        self.state().stopped = Some((leader, term, Instant::now()));
    }

    /// How long ago a leader was last heard from, if ever since start-up.
    pub(crate) fn since(&self) -> Option<Duration> {
        self.state().last.map(|t| t.elapsed())
    }

    /// Whether `leader` said it was stopping while leading in `term`, recently enough
    /// that the notice still counts.
    pub(crate) fn has_stopped(&self, leader: NodeId, term: u64) -> bool {
        self.state().stopped.is_some_and(|(l, t, at)| {
            l == leader && t == term && at.elapsed() < self.stop_notice_ttl
        })
    }
}

/// What the transport needs from the rest of the node beyond openraft.
pub(crate) struct Hooks {
    /// Called with a removal notice (the removed node's id and the membership log index
    /// that removed it): the `Store` checks it before acting on it.
    pub(crate) removal_notice: Box<dyn Fn(NodeId, u64) + Send + Sync>,
    /// This node's answer to a membership query.
    pub(crate) membership: Box<dyn Fn() -> io::Result<MembershipAnswer> + Send + Sync>,
    /// Accepted appends are recorded here; stopping notices too.
    pub(crate) contact: LeaderContact,
    /// The catalogue groups this node runs.
    pub(crate) groups: Arc<dyn GroupHost>,
    /// Refusals are counted here.
    pub(crate) stats: Arc<PeerStats>,
    pub(crate) auth: PeerAuth,
}

/// What the transport asks of the catalogue groups this node runs (`groups.rs`).
pub(crate) trait GroupHost: Send + Sync {
    /// The Raft and leader contact of group `id`, if this node runs it.
    fn raft(&self, id: &str, incarnation: u64) -> Option<(Raft, LeaderContact)>;
    /// The state of every group this node runs, the default one first.
    fn states(&self) -> Vec<crate::groups::GroupState>;
    /// Carries out a member change of group `id`, which this node leads; `None`: it does
    /// not run that group.
    fn change_members(
        &self,
        id: String,
        incarnation: u64,
        change: MemberChange,
    ) -> futures::future::BoxFuture<'static, Option<Result<u64, crate::groups::WireError>>>;
    /// Starts an election in group `id` now (a leadership transfer to this node).
    fn elect(
        &self,
        id: &str,
        incarnation: u64,
    ) -> futures::future::BoxFuture<'static, Option<Result<(), crate::groups::WireError>>>;
}

/// Serves peer RPCs for `raft` on `listener` until `shutdown` resolves; then stops
/// accepting, and returns once every connection task has ended (idle ones at once, busy ones
/// after their current request, or aborted after [`DRAIN_TIMEOUT`]).
pub(crate) async fn serve(
    listener: TcpListener,
    raft: Raft,
    hooks: Arc<Hooks>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNS));
    // The connection tasks, owned here so that none outlives the transport; and the
    // signal that tells them to close once their current request is answered.
    let mut conns = JoinSet::new();
    let (closing, closed) = tokio::sync::watch::channel(false);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(done) = conns.join_next(), if !conns.is_empty() => {
                reap_conn(done);
                continue;
            }
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                log::warn!("raft transport: accept failed: {e}");
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            hooks.stats.reject(
                "connection_limit",
                peer,
                &format!("{MAX_CONNS} peer connections are open already"),
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        let raft = raft.clone();
        let hooks = hooks.clone();
        let mut closed = closed.clone();
        conns.spawn(async move {
            let authed = tokio::select! {
                biased;
                _ = closed.wait_for(|c| *c) => return,
                a = tokio::time::timeout(HANDSHAKE_TIMEOUT, hooks.auth.accept(stream)) => a,
            };
            let s = match authed {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return hooks.stats.reject("handshake", peer, &e),
                Err(_) => {
                    return hooks.stats.reject(
                        "handshake",
                        peer,
                        &format!("no handshake within {HANDSHAKE_TIMEOUT:?}"),
                    )
                }
            };
            serve_conn(s, peer, raft, &hooks, closed).await;
            drop(slot);
        });
    }
    drop(listener);
    closing.send_replace(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(done) = conns.join_next().await {
            reap_conn(done);
        }
    })
    .await;
    if drained.is_err() {
        log::warn!(
            "raft transport: aborting {} peer connection(s) still busy after {DRAIN_TIMEOUT:?}",
            conns.len()
        );
        conns.shutdown().await;
    }
}

/// Takes in the end of one connection task.
fn reap_conn(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            log::error!("raft transport: a connection task panicked: {e}");
        }
    }
}

/// Answers one authenticated connection's requests in order, until it closes, idles out,
/// sends something that is refused, or `closed` says the transport is stopping (then it
/// closes between requests, never in the middle of answering one).
async fn serve_conn(
    mut s: PeerStream,
    peer: SocketAddr,
    raft: Raft,
    hooks: &Hooks,
    mut closed: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let next = tokio::select! {
            biased;
            _ = closed.wait_for(|c| *c) => return,
            n = tokio::time::timeout(IDLE_TIMEOUT, s.read_u32()) => n,
        };
        let len = match next {
            Err(_) => return log::debug!("raft transport: closing idle connection from {peer}"),
            Ok(Err(e)) => {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    log::debug!("raft transport: connection from {peer} closed: {e}");
                }
                return;
            }
            Ok(Ok(len)) => len as usize,
        };
        if len > MAX_FRAME {
            return hooks.stats.reject(
                "frame_too_large",
                peer,
                &format!("a frame of {len} bytes (at most {MAX_FRAME})"),
            );
        }
        let body = match tokio::time::timeout(FRAME_TIMEOUT, read_body(&mut s, len)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return hooks.stats.reject("frame_read", peer, &e),
            Err(_) => {
                return hooks.stats.reject(
                    "slow_frame",
                    peer,
                    &format!("a {len}-byte frame did not arrive within {FRAME_TIMEOUT:?}"),
                )
            }
        };
        let req: PeerRequest = match decode(&body) {
            Ok(r) => r,
            Err(e) => return hooks.stats.reject("malformed", peer, &e),
        };
        if let PeerRequest::Beats { beats, .. } = &req {
            if beats.len() > MAX_BEATS {
                let n = beats.len();
                return hooks.stats.reject(
                    "malformed",
                    peer,
                    &format!("a frame of {n} heartbeats (at most {MAX_BEATS})"),
                );
            }
        }
        let resp = match handle(req, &raft, hooks).await {
            Ok(r) => r,
            Err(e) => return log::warn!("raft transport: answering {peer}: {e}"),
        };
        let sent = match encode(&resp) {
            Ok(b) => tokio::time::timeout(FRAME_TIMEOUT, write_frame(&mut s, &b)).await,
            Err(e) => return log::warn!("raft transport: encoding a response to {peer}: {e}"),
        };
        if !matches!(sent, Ok(Ok(()))) {
            return log::debug!("raft transport: could not answer {peer}");
        }
    }
}

/// Hands one openraft RPC to `raft`, recording accepted appends in `contact`.
async fn handle_rpc(rpc: GroupRpc, raft: &Raft, contact: &LeaderContact) -> PeerResponse {
    match rpc {
        GroupRpc::Append(r) => {
            let from = r.vote.leader_id().voted_for();
            let term = r.vote.leader_id().get_term();
            let resp = raft.append_entries(r).await;
            // Anything but "your vote is stale" comes from the current leader.
            if matches!(&resp, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
                contact.touch(from, term);
            }
            PeerResponse::Append(resp)
        }
        GroupRpc::Vote(r) => PeerResponse::Vote(raft.vote(r).await),
        GroupRpc::Snapshot(r) => PeerResponse::Snapshot(raft.install_snapshot(r).await),
    }
}

async fn handle(req: PeerRequest, raft: &Raft, hooks: &Hooks) -> io::Result<PeerResponse> {
    Ok(match req {
        PeerRequest::Append(r) => handle_rpc(GroupRpc::Append(r), raft, &hooks.contact).await,
        PeerRequest::Vote(r) => handle_rpc(GroupRpc::Vote(r), raft, &hooks.contact).await,
        PeerRequest::Snapshot(r) => handle_rpc(GroupRpc::Snapshot(r), raft, &hooks.contact).await,
        PeerRequest::Group {
            group,
            incarnation,
            rpc,
        } => match hooks.groups.raft(&group, incarnation) {
            Some((raft, contact)) => handle_rpc(rpc, &raft, &contact).await,
            None => PeerResponse::NoGroup,
        },
        PeerRequest::Groups => PeerResponse::Groups(hooks.groups.states()),
        PeerRequest::Beats { ttl_ms, beats } => {
            let ttl = Duration::from_millis(ttl_ms).min(MAX_BEAT_TTL);
            let answers = beats.into_iter().map(|b| async move {
                let Some((raft, contact)) = hooks.groups.raft(&b.group, b.incarnation) else {
                    return PeerResponse::NoGroup;
                };
                let rpc = handle_rpc(GroupRpc::Append(b.rpc), &raft, &contact);
                tokio::time::timeout(ttl, rpc)
                    .await
                    .unwrap_or(PeerResponse::Late)
            });
            PeerResponse::Beats(futures::future::join_all(answers).await)
        }
        PeerRequest::GroupMember {
            group,
            incarnation,
            change,
        } => {
            match hooks
                .groups
                .change_members(group, incarnation, change)
                .await
            {
                Some(r) => PeerResponse::GroupMember(r),
                None => PeerResponse::NoGroup,
            }
        }
        PeerRequest::Elect { group, incarnation } => {
            match hooks.groups.elect(&group, incarnation).await {
                Some(r) => PeerResponse::Elected(r),
                None => PeerResponse::NoGroup,
            }
        }
        PeerRequest::Removed {
            node_id,
            membership_index,
        } => {
            (hooks.removal_notice)(node_id, membership_index);
            PeerResponse::Ack
        }
        PeerRequest::LeaderStopping { node_id, term } => {
            let current = {
                let m = raft.metrics();
                let m = m.borrow();
                m.current_leader == Some(node_id) && m.current_term == term
            };
            // Only the leader this node follows, in its current term, can be stopping.
            if current {
                log::info!("the leader says it is stopping; waiting for a new one");
                hooks.contact.leader_stopping(node_id, term);
            }
            PeerResponse::Ack
        }
        PeerRequest::Membership => PeerResponse::Membership((hooks.membership)()?),
    })
}
