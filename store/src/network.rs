//! The Raft peer transport on `-raddr`: length-prefixed bincode frames over persistent
//! TCP connections.
//!
//! Client side: a pool of idle connections per peer address, shared by every openraft
//! replication stream and heartbeat (openraft asks for a new client object per RPC batch,
//! so connections live in the pool, not in the client). Each call has a hard deadline.
//! Server side: one task per connection, answering requests in order.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

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
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpSocket;
use tokio::net::TcpStream;

use crate::types::decode;
use crate::types::encode;
use crate::types::Node;
use crate::types::NodeId;
use crate::types::Raft;
use crate::types::TypeConfig;

/// Frames larger than this are refused (a batch of entries is at most
/// `max_payload_entries` client requests of at most the HTTP body limit each).
const MAX_FRAME: usize = 512 << 20;
/// An append batch larger than this is refused locally with `PayloadTooLarge`, so openraft
/// sends fewer entries: openraft gives each append RPC only a heartbeat interval to finish.
const MAX_APPEND_BYTES: usize = 4 << 20;
/// Idle connections kept per peer.
const MAX_IDLE: usize = 8;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

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
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum PeerResponse {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Ack,
}

async fn write_frame(s: &mut TcpStream, body: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(body);
    s.write_all(&buf).await
}

async fn read_frame(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = s.read_u32().await? as usize;
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

/// Connection pool shared by all clients of this node. Cheap to clone.
#[derive(Clone)]
pub struct Network {
    /// Idle connections by peer address; a call takes one out and puts it back on success,
    /// so concurrent calls to one peer use separate connections.
    idle: Arc<Mutex<HashMap<String, Vec<TcpStream>>>>,
    /// The address outgoing peer connections are made from (this node's advertised IP),
    /// so that peer traffic is attributable to a node, e.g. by firewall rules.
    local_ip: Option<IpAddr>,
}

impl Network {
    /// A pool whose connections originate from `local_ip` when given.
    pub fn new(local_ip: Option<IpAddr>) -> Self {
        Network {
            idle: Arc::default(),
            local_ip,
        }
    }

    async fn connect(&self, addr: &str) -> io::Result<TcpStream> {
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

    fn take_idle(&self, addr: &str) -> Option<TcpStream> {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(addr)
            .and_then(|v| v.pop())
    }

    fn put_idle(&self, addr: &str, s: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let v = idle.entry(addr.to_string()).or_default();
        if v.len() < MAX_IDLE {
            v.push(s);
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
        let _ = s.set_nodelay(true);
        self.exchange(addr, s, &body, deadline)
            .await
            .map_err(CallError::Failed)
    }

    async fn exchange(
        &self,
        addr: &str,
        mut s: TcpStream,
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
        let n = rpc.entries.len() as u64;
        if n > 1 {
            let bytes: u64 = rpc
                .entries
                .iter()
                .map(|e| bincode::serialized_size(e).unwrap_or(0))
                .sum();
            if bytes > MAX_APPEND_BYTES as u64 {
                let fit = n * MAX_APPEND_BYTES as u64 / bytes;
                return Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(fit.clamp(1, n - 1)),
                ));
            }
        }
        match self
            .net
            .call(&self.addr, &PeerRequest::Append(rpc), option.hard_ttl())
            .await
        {
            Ok(PeerResponse::Append(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
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
        match self
            .net
            .call(&self.addr, &PeerRequest::Snapshot(rpc), option.hard_ttl())
            .await
        {
            Ok(PeerResponse::Snapshot(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(unexpected("install_snapshot")),
            Err(e) => Err(to_rpc_error(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        match self
            .net
            .call(&self.addr, &PeerRequest::Vote(rpc), option.hard_ttl())
            .await
        {
            Ok(PeerResponse::Vote(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(unexpected("vote")),
            Err(e) => Err(to_rpc_error(e)),
        }
    }
}

/// What this node has heard from leaders, beyond what openraft tracks. Shared by the
/// transport (which records it) and the `Store` (readiness, redirects).
#[derive(Clone, Default)]
pub(crate) struct LeaderContact(Arc<std::sync::Mutex<ContactState>>);

#[derive(Default)]
struct ContactState {
    /// When entries or a heartbeat were last accepted from a leader. After a restart, a
    /// stored vote names a leader that may be long gone, so knowing a leader is not the
    /// same as hearing from one.
    last: Option<std::time::Instant>,
    /// A leader that said it is stopping, and its term: until a new term, it is no leader
    /// to send clients to.
    stopped: Option<(NodeId, u64)>,
}

impl LeaderContact {
    fn state(&self) -> std::sync::MutexGuard<'_, ContactState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn touch(&self) {
        self.state().last = Some(std::time::Instant::now());
    }

    /// How long ago a leader was last heard from, if ever since start-up.
    pub(crate) fn since(&self) -> Option<Duration> {
        self.state().last.map(|t| t.elapsed())
    }

    /// Whether `leader` said it was stopping while leading in `term`.
    pub(crate) fn has_stopped(&self, leader: NodeId, term: u64) -> bool {
        self.state().stopped == Some((leader, term))
    }
}

/// Serves peer RPCs for `raft` on `listener` until `shutdown` resolves. `on_removed` is
/// called when the leader says this node has been removed (unless this node has since seen
/// a newer membership that includes it: a notice delayed past a re-join is stale).
/// Accepted appends are recorded in `contact`.
pub(crate) async fn serve(
    listener: TcpListener,
    raft: Raft,
    on_removed: Arc<dyn Fn() + Send + Sync>,
    contact: LeaderContact,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                log::warn!("raft transport: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let raft = raft.clone();
        let on_removed = on_removed.clone();
        let contact = contact.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_conn(stream, raft, on_removed, contact).await {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    log::debug!("raft transport: connection from {peer} closed: {e}");
                }
            }
        });
    }
}

async fn serve_conn(
    mut s: TcpStream,
    raft: Raft,
    on_removed: Arc<dyn Fn() + Send + Sync>,
    contact: LeaderContact,
) -> io::Result<()> {
    loop {
        let body = read_frame(&mut s).await?;
        let req: PeerRequest = decode(&body)?;
        let resp = match req {
            PeerRequest::Append(r) => {
                let resp = raft.append_entries(r).await;
                // Anything but "your vote is stale" comes from the current leader.
                if matches!(&resp, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
                    contact.touch();
                }
                PeerResponse::Append(resp)
            }
            PeerRequest::Vote(r) => PeerResponse::Vote(raft.vote(r).await),
            PeerRequest::Snapshot(r) => PeerResponse::Snapshot(raft.install_snapshot(r).await),
            PeerRequest::Removed {
                node_id,
                membership_index,
            } => {
                let (me, rejoined) = {
                    let m = raft.metrics();
                    let m = m.borrow();
                    let mem = &m.membership_config;
                    let newer = mem.log_id().is_some_and(|l| l.index > membership_index);
                    (m.id, newer && mem.membership().get_node(&m.id).is_some())
                };
                if node_id == me && !rejoined {
                    log::warn!("the leader says this node was removed from the cluster");
                    on_removed();
                }
                PeerResponse::Ack
            }
            PeerRequest::LeaderStopping { node_id, term } => {
                log::info!("the leader says it is stopping; waiting for a new one");
                contact.state().stopped = Some((node_id, term));
                PeerResponse::Ack
            }
        };
        write_frame(&mut s, &encode(&resp)?).await?;
    }
}
