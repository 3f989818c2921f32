//! The cluster under test: real `hraftd` processes on the shared process harness
//! (`hraftd::harness`), one per loopback address (127.0.0.11, .12, ...), so that network
//! faults can target one node's traffic. Owns the processes and their data dirs; on drop
//! every process is resumed and killed (by the harness) after its log is kept.

use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use anyhow::Result;
use hraftd::harness;
use hraftd::harness::Node;
use hraftd_client::Status;

pub const HTTP_PORT: u16 = 31000;
pub const RAFT_PORT: u16 = 32000;

pub struct Cluster {
    /// Node processes that exited without being killed or removed by the nemesis: a crash
    /// or a node that wrongly thought it was removed. Each is a finding.
    pub unexpected_exits: Vec<String>,
    /// Where node logs are copied when the cluster is dropped.
    pub keep_logs: Option<PathBuf>,
    /// Each node's loopback address, which the network faults target.
    pub ips: Vec<String>,
    inner: harness::Cluster,
}

impl std::ops::Deref for Cluster {
    type Target = harness::Cluster;
    fn deref(&self) -> &harness::Cluster {
        &self.inner
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut harness::Cluster {
        &mut self.inner
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(dir) = &self.keep_logs {
            let _ = std::fs::create_dir_all(dir);
            for n in &self.inner.nodes {
                let _ = std::fs::copy(&n.log, dir.join(format!("{}.log", n.id)));
            }
        }
        // The harness's nodes resume and kill their processes as they are dropped.
    }
}

impl Cluster {
    /// Prepares `n` nodes under `root` (nothing is started yet); `extra` goes to every node.
    pub fn new(
        bin: PathBuf,
        root: PathBuf,
        first_ip: std::net::Ipv4Addr,
        n: usize,
        extra: &[&str],
    ) -> Cluster {
        let [a, b, c, d] = first_ip.octets();
        let ips: Vec<String> = (0..n)
            .map(|i| format!("{a}.{b}.{c}.{}", d as usize + i))
            .collect();
        let mut inner = harness::Cluster::new(bin);
        for (i, ip) in ips.iter().enumerate() {
            let mut node = Node::new(
                format!("n{i}"),
                format!("{ip}:{HTTP_PORT}"),
                format!("{ip}:{RAFT_PORT}"),
                root.join(format!("n{i}")),
                root.join(format!("n{i}.log")),
            );
            // Only used when joining (a wiped node); ignored on restarts.
            node.args = ["-join-timeout", "60"]
                .iter()
                .chain(extra)
                .map(|s| s.to_string())
                .collect();
            inner.nodes.push(node);
        }
        Cluster {
            unexpected_exits: Vec::new(),
            keep_logs: None,
            ips,
            inner,
        }
    }

    /// Each node's loopback address, as the firewall takes them.
    pub fn ips(&self) -> Vec<&str> {
        self.ips.iter().map(String::as_str).collect()
    }

    /// Starts node `i`, joining via the other nodes when `join` is set.
    pub fn start(&mut self, i: usize, join: bool) -> Result<()> {
        let others: Vec<String> = if join {
            (0..self.nodes.len())
                .filter(|j| *j != i)
                .map(|j| self.nodes[j].endpoint())
                .collect()
        } else {
            Vec::new()
        };
        let bin = self.inner.bin.clone();
        let n = &mut self.inner.nodes[i];
        n.spawn(&bin, &others)
            .with_context(|| format!("starting {}", n.id))
    }

    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    pub fn pause(&mut self, i: usize) {
        self.nodes[i].pause();
    }

    pub fn resume(&mut self, i: usize) {
        self.nodes[i].resume();
    }

    pub fn resume_all(&mut self) {
        for n in &mut self.inner.nodes {
            n.resume();
        }
    }

    /// Restarts every node whose process exited on its own, recording each as a finding.
    pub fn restart_exited(&mut self) {
        for i in 0..self.nodes.len() {
            let Some(status) = self.inner.nodes[i].exited() else {
                continue;
            };
            let what = format!(
                "{} exited on its own ({status}); last log lines:\n{}",
                self.nodes[i].id,
                self.nodes[i].log_tail(15)
            );
            println!("torture: {what}");
            self.unexpected_exits.push(what);
            // A wiped node (churn that failed midway) must join; one with state resumes.
            let join = !self.nodes[i].dir.join("raft").exists();
            if let Err(e) = self.start(i, join) {
                println!("torture: restarting {}: {e}", self.nodes[i].id);
            }
        }
    }

    /// Whether node `i`'s process has exited (reaping it if so), or was never started.
    pub fn exited(&mut self, i: usize) -> bool {
        let n = &mut self.inner.nodes[i];
        n.exited().is_some() || !n.is_started()
    }

    pub async fn status(&self, i: usize) -> Option<Status> {
        self.nodes[i].status().await
    }

    /// The live node that claims leadership with the highest term, if any.
    pub async fn leader(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for i in self.live() {
            if let Some(s) = self.status(i).await {
                if s.is_leader() && best.is_none_or(|(t, _)| s.term > t) {
                    best = Some((s.term, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// Waits for a leader that every running node agrees on, restarting nodes that exit
    /// on their own meanwhile.
    pub async fn wait_leader(&mut self, deadline: Duration) -> Result<usize> {
        let start = Instant::now();
        loop {
            self.restart_exited();
            if let Some(l) = self.agreed_leader().await {
                return Ok(l);
            }
            if start.elapsed() > deadline {
                bail!(
                    "no agreed leader within {deadline:?}; node views:{}",
                    self.views().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the leader lists node `i` as a voter.
    pub async fn wait_voter(&self, i: usize, deadline: Duration) -> Result<()> {
        Ok(self.inner.wait_voter(&self.nodes[i].id, deadline).await?)
    }

    /// Starts all nodes: the first bootstraps, the rest join; waits until all are voters.
    pub async fn start_all(&mut self) -> Result<()> {
        self.start(0, false)?;
        self.wait_leader(Duration::from_secs(30)).await?;
        for i in 1..self.nodes.len() {
            self.start(i, true)?;
            self.wait_voter(i, Duration::from_secs(60)).await?;
        }
        Ok(())
    }

    /// The last lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        self.nodes[i].log_tail(lines)
    }
}
