//! Coalescing of concurrent requests, so that throughput grows with concurrency:
//!
//! - Group commit: concurrent writes are packed into one Raft entry ([`Command::Batch`]),
//!   one log append and one fsync for all of them, while up to [`MAX_INFLIGHT`] batches are
//!   in flight. Each request still gets its own answer, and each request's pairs live in one
//!   entry, so every request is applied all-or-nothing.
//! - Batched read index: concurrent consistent reads share one leadership confirmation. A
//!   read joins the next round that *starts* after it arrived, so the read index it gets is
//!   at least the commit index at its arrival: still linearizable.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::CheckIsLeaderError;
use openraft::error::ClientWriteError;
use openraft::error::RaftError;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::Semaphore;

use crate::types::Command;
use crate::types::Node;
use crate::types::NodeId;
use crate::types::Raft;

/// Most requests packed into one entry.
const MAX_BATCH: usize = 512;
/// Most bytes of keys and values packed into one entry.
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Batches proposed but not yet committed; more requests wait and form the next batch.
pub(crate) const MAX_INFLIGHT: usize = 8;
/// The longest one batch may hold its in-flight slot (e.g. while quorum is lost). Its
/// clients have given up long before (their own write timeout), with "outcome unknown".
const BATCH_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest one read round may take; its readers are told it stalled.
const ROUND_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) type WriteResult = Result<u64, RaftError<NodeId, ClientWriteError<NodeId, Node>>>;
pub(crate) type ReadResult = Result<(), RaftError<NodeId, CheckIsLeaderError<NodeId, Node>>>;

struct Proposal {
    cmd: Command,
    done: oneshot::Sender<WriteResult>,
}

fn size(cmd: &Command) -> usize {
    match cmd {
        Command::Set { pairs } => pairs.iter().map(|(k, v)| k.len() + v.len()).sum(),
        Command::Delete { key } => key.len(),
        Command::Batch(cmds) => cmds.iter().map(size).sum(),
    }
}

/// Queues writes for group commit.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::UnboundedSender<Proposal>,
}

impl Writer {
    pub(crate) fn spawn(raft: Raft) -> Writer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(raft, rx));
        Writer { tx }
    }

    /// Proposes `cmd` in the next batch; resolves with its entry's log index once applied.
    /// `None` if the node is shutting down.
    pub(crate) async fn write(&self, cmd: Command) -> Option<WriteResult> {
        let (done, rx) = oneshot::channel();
        self.tx.send(Proposal { cmd, done }).ok()?;
        rx.await.ok()
    }
}

async fn write_loop(raft: Raft, mut rx: mpsc::UnboundedReceiver<Proposal>) {
    let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT));
    loop {
        // Wait for a free slot first: while all slots are busy, requests pile up in the
        // channel and the next batch gets bigger.
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut bytes = size(&first.cmd);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += size(&p.cmd);
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let (cmds, waiters): (Vec<Command>, Vec<_>) =
                batch.into_iter().map(|p| (p.cmd, p.done)).unzip();
            let cmd = if cmds.len() == 1 {
                cmds.into_iter().next().expect("one command")
            } else {
                Command::Batch(cmds)
            };
            // On timeout the waiters are dropped: they have already answered "outcome
            // unknown" to their clients.
            if let Ok(res) = tokio::time::timeout(BATCH_TIMEOUT, raft.client_write(cmd)).await {
                let res = res.map(|r| r.log_id.index);
                for w in waiters {
                    let _ = w.send(res.clone());
                }
            }
            drop(permit);
        });
    }
}

/// How a read round ended for its readers. (Short-lived and rare to move: not boxed.)
#[allow(clippy::large_enum_variant)]
pub(crate) enum Confirmed {
    Done(ReadResult),
    /// The round did not finish within its time limit.
    Stalled,
    /// The node is shutting down.
    Closed,
}

/// Shares leadership confirmations among concurrent consistent reads.
#[derive(Clone)]
pub(crate) struct ReadBarrier {
    tx: mpsc::UnboundedSender<oneshot::Sender<Option<ReadResult>>>,
}

impl ReadBarrier {
    pub(crate) fn spawn(raft: Raft) -> ReadBarrier {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(read_loop(raft, rx));
        ReadBarrier { tx }
    }

    /// Resolves once this node has confirmed its leadership with a quorum (in a round that
    /// began after this call) and applied up to that round's read index.
    pub(crate) async fn confirm(&self) -> Confirmed {
        let (done, rx) = oneshot::channel();
        if self.tx.send(done).is_err() {
            return Confirmed::Closed;
        }
        match rx.await {
            Ok(Some(res)) => Confirmed::Done(res),
            Ok(None) => Confirmed::Stalled,
            Err(_) => Confirmed::Closed,
        }
    }
}

async fn read_loop(
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<oneshot::Sender<Option<ReadResult>>>,
) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        // Every waiter arrived before this call: one confirmation serves them all.
        let res = tokio::time::timeout(ROUND_TIMEOUT, raft.ensure_linearizable())
            .await
            .ok()
            .map(|r| r.map(|_| ()));
        for w in waiters {
            let _ = w.send(res.clone());
        }
    }
}
