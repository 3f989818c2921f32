//! The hostile-peer fault: an outsider (not a cluster member, from 127.0.0.1) sends forged
//! and garbage frames to every node's Raft port: "you were removed", "the leader is
//! stopping", a nested batch, random bytes and, where a cluster key protects the port, an
//! append and a vote with a far higher term too. Its checker: with a cluster key, no node
//! may answer an outsider with a single byte (it must close the connection unread); in
//! every mode no node may exit or lose an acknowledged write (the nemesis and the
//! linearizability checker see to those).

use std::time::Duration;

use hraftd_store::hostile;
use hraftd_store::types::raft_id_for;
use rand::rngs::StdRng;
use rand::Rng;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

/// What one round of hostile traffic saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    /// Connections made and frames written.
    pub connections: u64,
    /// Connections on which a keyed node sent anything back: each is a finding.
    pub answered: u64,
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        self.connections += other.connections;
        self.answered += other.answered;
    }
}

/// The frames to send to `target` (a member's name) while `leader` leads in `term`.
fn frames(
    rng: &mut StdRng,
    target: &str,
    leader: Option<&str>,
    term: u64,
    keyed: bool,
) -> Vec<Vec<u8>> {
    let me = raft_id_for(target);
    let mut out = vec![
        hostile::removed(me, rng.random_range(0..u64::MAX)),
        hostile::removed(me, u64::MAX),
        hostile::nested_batch_append(rng.random_range(1_000..90_000)),
        (0..rng.random_range(1..4096))
            .map(|_| rng.random())
            .collect(),
    ];
    if let Some(l) = leader {
        out.push(hostile::leader_stopping(raft_id_for(l), term));
    }
    if keyed {
        // Without a key these would be obeyed (documented: the port must then be private).
        out.push(hostile::append(raft_id_for("intruder"), term + 1000, "x"));
        out.push(hostile::vote(raft_id_for("intruder"), term + 1000));
    }
    out
}

/// Sends one round of hostile frames to each `(name, raft address)`, one connection per
/// frame, and waits (bounded) for each connection to be closed.
pub async fn round(
    rng: &mut StdRng,
    nodes: &[(String, String)],
    leader: Option<&str>,
    term: u64,
    keyed: bool,
) -> Tally {
    let mut tasks = Vec::new();
    for (name, addr) in nodes {
        for f in frames(rng, name, leader, term, keyed) {
            let addr = addr.clone();
            tasks.push(tokio::spawn(async move { send(&addr, &f).await }));
        }
    }
    let mut t = Tally::default();
    for task in tasks {
        if let Ok(Some(answered)) = task.await {
            t.connections += 1;
            if keyed && answered {
                t.answered += 1;
            }
        }
    }
    t
}

/// Writes `frame` on a new connection from 127.0.0.1; `Some(answered)` once the node has
/// closed it (or 8 s passed), `None` if no connection could be made (node down).
async fn send(addr: &str, frame: &[u8]) -> Option<bool> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind("127.0.0.1:0".parse().ok()?).ok()?;
    let target = addr.parse().ok()?;
    let mut s = tokio::time::timeout(Duration::from_secs(2), socket.connect(target))
        .await
        .ok()?
        .ok()?;
    let _ = s.write_all(frame).await;
    let mut answered = false;
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        answered = true;
    }
    Some(answered)
}
