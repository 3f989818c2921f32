//! Coalescing of concurrent requests, so that throughput grows with concurrency:
//!
//! - Group commit: concurrent writes are packed into one Raft entry ([`Command::Batch`]),
//!   one log append and one fsync for all of them, while up to [`MAX_INFLIGHT`] batches are
//!   in flight. Each request still gets its own answer, and each request's pairs live in one
//!   entry, so every request is applied all-or-nothing.
//! - Batched read index: concurrent consistent reads share one leadership confirmation. A
//!   read joins the next round that *starts* after it arrived, so the read index it gets is
//!   at least the commit index at its arrival: still linearizable.
//!
//! Both loops, and the write loop's per-batch `propose` tasks, run as the node's [`Tasks`]
//! and end on its stop signal: the write loop then proposes nothing more, drops what is
//! still queued (never proposed; its clients' futures end, which the store reports as an
//! unknown outcome, since it cannot tell them from proposed ones) and drains the
//! batches in flight, which end once Raft answers (at the latest when it shuts down).

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::CheckIsLeaderError;
use openraft::error::ClientWriteError;
use openraft::error::RaftError;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::tasks::Stop;
use crate::tasks::Tasks;
use crate::types::encoded_size;
use crate::types::Command;
use crate::types::Node;
use crate::types::NodeId;
use crate::types::Op;
use crate::types::Outcome;
use crate::types::Raft;
use crate::types::MAX_ENTRY_BYTES;

/// Most requests packed into one entry.
const MAX_BATCH: usize = 512;
/// Batches proposed but not yet committed; more requests wait and form the next batch.
pub(crate) const MAX_INFLIGHT: usize = 8;
/// Requests waiting for a batch, at most; past this (or [`MAX_QUEUED_BYTES`]) a write is
/// refused at once as busy rather than queued without bound.
pub(crate) const MAX_QUEUED: usize = 4096;
/// Encoded bytes of the requests waiting for a batch, at most.
pub(crate) const MAX_QUEUED_BYTES: u64 = 64 << 20;
/// The longest one batch may hold its in-flight slot (e.g. while quorum is lost). Its
/// clients have given up long before (their own write timeout), with "outcome unknown".
const BATCH_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest one read round may take; its readers are told it stalled.
const ROUND_TIMEOUT: Duration = Duration::from_secs(10);

/// A write's log index and what applying it did, or why Raft refused it.
pub(crate) type WriteResult =
    Result<(u64, Outcome), RaftError<NodeId, ClientWriteError<NodeId, Node>>>;
pub(crate) type ReadResult = Result<(), RaftError<NodeId, CheckIsLeaderError<NodeId, Node>>>;

struct Proposal {
    op: Op,
    /// `op`'s encoded size, counted against the entry and queue limits.
    bytes: u64,
    done: oneshot::Sender<WriteResult>,
}

/// Why a write was not queued.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The request alone encodes to more than one entry may hold.
    TooLarge { bytes: u64 },
    /// The queue is full: the node is overloaded or cannot commit; retry later.
    Busy,
    /// The node is shutting down.
    Closed,
}

/// Requests admitted and not yet taken out of the queue (proposed or dropped), counted at
/// admission so that the bound holds wherever they are (channel or queue).
#[derive(Default)]
struct Load {
    count: AtomicUsize,
    bytes: AtomicU64,
}

impl Load {
    /// Admits a request of `bytes`, unless that would pass a limit.
    fn admit(&self, bytes: u64) -> bool {
        let count = self.count.fetch_add(1, Ordering::AcqRel) + 1;
        let total = self.bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        if count > MAX_QUEUED || total > MAX_QUEUED_BYTES {
            self.release(bytes);
            return false;
        }
        true
    }

    fn release(&self, bytes: u64) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Queues writes for group commit.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::UnboundedSender<Proposal>,
    /// What is queued, shared with the write loop, which releases what it takes out.
    load: Arc<Load>,
}

impl Writer {
    /// Starts the write loop as one of `tasks`.
    pub(crate) fn spawn(raft: Raft, tasks: &Tasks) -> Writer {
        let (tx, rx) = mpsc::unbounded_channel();
        let load = Arc::new(Load::default());
        let stop = tasks.stopping();
        tasks.spawn(
            "group-commit write loop",
            write_loop(raft, rx, load.clone(), stop),
        );
        Writer { tx, load }
    }

    /// Proposes `op` in the next batch; resolves with its entry's log index once applied,
    /// or `None` if the node shut down meanwhile. Dropping the returned future (a client
    /// that timed out) withdraws the request if it has not been proposed yet.
    pub(crate) fn write(
        &self,
        op: Op,
    ) -> Result<impl std::future::Future<Output = Option<WriteResult>>, Refused> {
        let bytes = encoded_size(&op);
        if bytes > MAX_ENTRY_BYTES {
            return Err(Refused::TooLarge { bytes });
        }
        if !self.load.admit(bytes) {
            return Err(Refused::Busy);
        }
        let (done, rx) = oneshot::channel();
        if self.tx.send(Proposal { op, bytes, done }).is_err() {
            self.load.release(bytes);
            return Err(Refused::Closed);
        }
        Ok(async move { rx.await.ok() })
    }
}

/// Requests waiting for a batch, in order. Every request that leaves it is released from
/// the shared [`Load`].
struct Queue {
    items: VecDeque<Proposal>,
    load: Arc<Load>,
}

impl Queue {
    fn new(load: Arc<Load>) -> Queue {
        Queue {
            items: VecDeque::new(),
            load,
        }
    }

    fn push(&mut self, p: Proposal) {
        self.items.push_back(p);
    }

    /// Drops requests whose client has gone (timed out): they will never be proposed.
    fn drop_abandoned(&mut self) {
        let load = &self.load;
        self.items.retain(|p| {
            let live = !p.done.is_closed();
            if !live {
                load.release(p.bytes);
            }
            live
        });
    }

    /// The next batch: live requests from the front, in order, up to [`MAX_BATCH`] of
    /// them and [`MAX_ENTRY_BYTES`] encoded (a request that would cross it waits for the
    /// next batch).
    fn next_batch(&mut self) -> Vec<Proposal> {
        // A batch's encoding: 4-byte variant + 8-byte length, then each op.
        let mut size = 12;
        let mut batch = Vec::new();
        while let Some(p) = self.items.front() {
            if !p.done.is_closed()
                && (batch.len() == MAX_BATCH
                    || (!batch.is_empty() && size + p.bytes > MAX_ENTRY_BYTES))
            {
                break;
            }
            let p = self.items.pop_front().expect("front exists");
            self.load.release(p.bytes);
            if p.done.is_closed() {
                continue;
            }
            size += p.bytes;
            batch.push(p);
        }
        batch
    }
}

async fn write_loop(
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<Proposal>,
    load: Arc<Load>,
    mut stop: Stop,
) {
    let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT));
    // The batches in flight: owned here, so that they end before the loop does.
    let mut proposing = JoinSet::new();
    let mut queue = Queue::new(load);
    // Housekeeping, not a wait: nothing waits on this tick. It only bounds how long the
    // requests of clients that gave up keep their room in the queue while every slot is
    // busy (a live request never waits for it: a free slot proposes at once).
    let mut tidy = tokio::time::interval(Duration::from_millis(100));
    let mut open = true;
    loop {
        // Take requests in as they come (admission already bounded them), propose a batch
        // whenever a slot is free (while all slots are busy, requests queue and the next
        // batch grows), and now and then drop requests whose clients have given up.
        tokio::select! {
            biased;
            _ = stop.wait() => break,
            Some(done) = proposing.join_next(), if !proposing.is_empty() => reap(done),
            permit = inflight.clone().acquire_owned(), if !queue.items.is_empty() => {
                let Ok(permit) = permit else { break };
                let batch = queue.next_batch();
                if !batch.is_empty() {
                    proposing.spawn(propose(raft.clone(), batch, permit));
                }
            }
            _ = tidy.tick(), if !queue.items.is_empty() => queue.drop_abandoned(),
            p = rx.recv(), if open => match p {
                Some(p) => queue.push(p),
                None => open = false,
            },
        }
        if !open && queue.items.is_empty() && proposing.is_empty() {
            return;
        }
    }
    // Stopping: refuse what comes from now on, drop what was never proposed (its clients
    // see their futures end: an unknown outcome to the store), and let the batches in flight finish: Raft answers
    // them, at the latest when it shuts down; `Tasks::join` bounds the wait.
    rx.close();
    drop(queue);
    drop(rx);
    while let Some(done) = proposing.join_next().await {
        reap(done);
    }
}

/// Takes in the end of one `propose` task.
fn reap(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            log::error!("a group-commit batch panicked: {e}");
        }
    }
}

/// Proposes one batch as one entry and answers each of its requests.
async fn propose(raft: Raft, batch: Vec<Proposal>, permit: tokio::sync::OwnedSemaphorePermit) {
    let (ops, waiters): (Vec<Op>, Vec<_>) = batch.into_iter().map(|p| (p.op, p.done)).unzip();
    let cmd = if ops.len() == 1 {
        Command::single(ops.into_iter().next().expect("one op"))
    } else {
        Command::Batch(ops)
    };
    // On timeout the waiters are dropped: they have already answered "outcome
    // unknown" to their clients.
    if let Ok(res) = tokio::time::timeout(BATCH_TIMEOUT, raft.client_write(cmd)).await {
        match res {
            Ok(r) => {
                // One outcome per operation, in order (the state machine's promise).
                let index = r.log_id.index;
                let mut outcomes = r.data.0.into_iter();
                for w in waiters {
                    let outcome = outcomes.next().unwrap_or(Outcome::Done);
                    let _ = w.send(Ok((index, outcome)));
                }
            }
            Err(e) => {
                for w in waiters {
                    let _ = w.send(Err(e.clone()));
                }
            }
        }
    }
    drop(permit);
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
    /// Starts the read-round loop as one of `tasks`.
    pub(crate) fn spawn(raft: Raft, tasks: &Tasks) -> ReadBarrier {
        let (tx, rx) = mpsc::unbounded_channel();
        tasks.spawn("read-round loop", read_loop(raft, rx, tasks.stopping()));
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
    mut stop: Stop,
) {
    loop {
        let first = tokio::select! {
            biased;
            _ = stop.wait() => return,
            w = rx.recv() => match w {
                Some(w) => w,
                None => return,
            },
        };
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        // Every waiter arrived before this call: one confirmation serves them all. Stopping
        // ends the round: its readers are told the node is shutting down (their senders
        // are dropped), as are those still queued when the loop returns.
        let res = tokio::select! {
            biased;
            _ = stop.wait() => return,
            r = tokio::time::timeout(ROUND_TIMEOUT, raft.ensure_linearizable()) => r,
        };
        let res = res.ok().map(|r| r.map(|_| ()));
        for w in waiters {
            let _ = w.send(res.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proposal(load: &Load, value_bytes: usize) -> (Proposal, oneshot::Receiver<WriteResult>) {
        let op = Op::Set {
            pairs: vec![("k".into(), "v".repeat(value_bytes))],
        };
        let (done, rx) = oneshot::channel();
        let bytes = encoded_size(&op);
        assert!(load.admit(bytes));
        (Proposal { op, bytes, done }, rx)
    }

    /// Found by review: batches were capped by raw key+value bytes and took in the request
    /// that crossed the cap, so many tiny pairs made entries far larger than the cap.
    #[test]
    fn a_batch_never_encodes_past_the_entry_limit() {
        let load = Arc::new(Load::default());
        let mut q = Queue::new(load.clone());
        let mut keep = Vec::new();
        for _ in 0..10 {
            let (p, rx) = proposal(&load, 300 << 10);
            keep.push(rx);
            q.push(p);
        }
        let mut total = 0;
        while !q.items.is_empty() {
            let batch = q.next_batch();
            assert!(!batch.is_empty());
            total += batch.len();
            let ops: Vec<Op> = batch.into_iter().map(|p| p.op).collect();
            let n = ops.len();
            let size = encoded_size(&Command::Batch(ops));
            assert!(size <= MAX_ENTRY_BYTES, "{n} ops encode to {size} bytes");
        }
        assert_eq!(total, 10);
        assert_eq!(load.bytes.load(Ordering::Acquire), 0);
        assert_eq!(load.count.load(Ordering::Acquire), 0);
    }

    #[test]
    fn requests_whose_client_left_are_never_proposed() {
        let load = Arc::new(Load::default());
        let mut q = Queue::new(load.clone());
        let (gone, rx) = proposal(&load, 10);
        drop(rx);
        let (live, _rx) = proposal(&load, 20);
        q.push(gone);
        q.push(live);
        let batch = q.next_batch();
        assert_eq!(batch.len(), 1);
        assert!(matches!(&batch[0].op, Op::Set { pairs } if pairs[0].1.len() == 20));
        assert!(q.items.is_empty());
        assert_eq!(load.count.load(Ordering::Acquire), 0);
    }

    #[test]
    fn admission_is_bounded_and_abandoned_requests_free_their_room() {
        let load = Arc::new(Load::default());
        let mut q = Queue::new(load.clone());
        let mut live = Vec::new();
        for i in 0..MAX_QUEUED {
            let (p, rx) = proposal(&load, 1);
            if i % 2 == 0 {
                live.push(rx);
            }
            q.push(p);
        }
        assert!(!load.admit(10), "the queue is full");
        q.drop_abandoned();
        assert_eq!(q.items.len(), MAX_QUEUED / 2);
        assert!(load.admit(10), "abandoned requests made room");
        load.release(10);
        // The byte bound holds as well.
        assert!(!load.admit(MAX_QUEUED_BYTES));
    }
}
