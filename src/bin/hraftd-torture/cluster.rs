//! The cluster under test: real `hraftd` processes, one per loopback address
//! (127.0.0.11, .12, ...), so that network faults can target one node's traffic. Owns the
//! processes and their data dirs; on drop every process is resumed and killed.

use std::fs::File;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use serde_json::Value;

pub const HTTP_PORT: u16 = 31000;
pub const RAFT_PORT: u16 = 32000;

pub struct Node {
    pub name: String,
    pub ip: String,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub paused: bool,
}

impl Node {
    pub fn http(&self) -> String {
        format!("{}:{HTTP_PORT}", self.ip)
    }
}

pub struct Cluster {
    /// Node processes that exited without being killed or removed by the nemesis: a crash
    /// or a node that wrongly thought it was removed. Each is a finding.
    pub unexpected_exits: Vec<String>,
    /// Where node logs are copied when the cluster is dropped.
    pub keep_logs: Option<PathBuf>,
    pub bin: PathBuf,
    pub nodes: Vec<Node>,
    pub client: reqwest::Client,
    extra: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(dir) = &self.keep_logs {
            let _ = std::fs::create_dir_all(dir);
            for n in &self.nodes {
                let _ = std::fs::copy(&n.log, dir.join(format!("{}.log", n.name)));
            }
        }
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                signal(&c, libc::SIGCONT);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

impl Cluster {
    /// Prepares `n` nodes under `root` (nothing is started yet).
    pub fn new(
        bin: PathBuf,
        root: PathBuf,
        first_ip: std::net::Ipv4Addr,
        n: usize,
        extra: &[&str],
    ) -> Cluster {
        let [a, b, c, d] = first_ip.octets();
        let nodes = (0..n)
            .map(|i| Node {
                name: format!("n{i}"),
                ip: format!("{a}.{b}.{c}.{}", d as usize + i),
                dir: root.join(format!("n{i}")),
                log: root.join(format!("n{i}.log")),
                child: None,
                paused: false,
            })
            .collect();
        Cluster {
            unexpected_exits: Vec::new(),
            keep_logs: None,
            bin,
            nodes,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(2))
                .build()
                .expect("http client"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn ips(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.ip.as_str()).collect()
    }

    /// Starts node `i`, joining via the other nodes when `join` is set.
    pub fn start(&mut self, i: usize, join: bool) -> Result<(), String> {
        let others: Vec<String> = (0..self.nodes.len())
            .filter(|j| *j != i)
            .map(|j| self.nodes[j].http())
            .collect();
        let n = &mut self.nodes[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(&n.log)
            .map_err(|e| format!("{}: {e}", n.log.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["-id", &n.name])
            .args(["-haddr", &n.http()])
            .args(["-raddr", &format!("{}:{RAFT_PORT}", n.ip)]);
        if join {
            cmd.args(["-join", &others.join(","), "-join-timeout", "60"]);
        }
        cmd.args(&self.extra)
            .arg(&n.dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        n.child = Some(
            cmd.spawn()
                .map_err(|e| format!("spawning {}: {e}", self.bin.display()))?,
        );
        n.paused = false;
        Ok(())
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            signal(&c, libc::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
        self.nodes[i].paused = false;
    }

    pub fn pause(&mut self, i: usize) {
        if let Some(c) = &self.nodes[i].child {
            signal(c, libc::SIGSTOP);
            self.nodes[i].paused = true;
        }
    }

    pub fn resume(&mut self, i: usize) {
        if let Some(c) = &self.nodes[i].child {
            signal(c, libc::SIGCONT);
        }
        self.nodes[i].paused = false;
    }

    pub fn resume_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.resume(i);
        }
    }

    /// Restarts every node whose process exited on its own, recording each as a finding.
    pub fn restart_exited(&mut self) {
        for i in 0..self.nodes.len() {
            let status = match self.nodes[i].child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(st))) => st,
                _ => continue,
            };
            self.nodes[i].child = None;
            let what = format!(
                "{} exited on its own ({status}); last log lines:\n{}",
                self.nodes[i].name,
                self.log_tail(i, 15)
            );
            println!("torture: {what}");
            self.unexpected_exits.push(what);
            // A wiped node (churn that failed midway) must join; one with state resumes.
            let join = !self.nodes[i].dir.join("raft").exists();
            if let Err(e) = self.start(i, join) {
                println!("torture: restarting {}: {e}", self.nodes[i].name);
            }
        }
    }

    /// Whether node `i`'s process has exited (reaping it if so).
    pub fn exited(&mut self, i: usize) -> bool {
        match self.nodes[i].child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) | None => {
                self.nodes[i].child = None;
                true
            }
            _ => false,
        }
    }

    pub async fn status(&self, i: usize) -> Option<Value> {
        let url = format!("http://{}/status", self.nodes[i].http());
        self.client.get(url).send().await.ok()?.json().await.ok()
    }

    /// The node that claims leadership with the highest term, if any.
    pub async fn leader(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_none() || self.nodes[i].paused {
                continue;
            }
            if let Some(s) = self.status(i).await {
                let term = s["term"].as_u64().unwrap_or(0);
                if s["role"] == "leader" && best.is_none_or(|(t, _)| term > t) {
                    best = Some((term, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// Waits for a leader that every running node agrees on.
    pub async fn wait_leader(&mut self, deadline: Duration) -> Result<usize, String> {
        let start = Instant::now();
        loop {
            self.restart_exited();
            if let Some(l) = self.leader().await {
                let name = &self.nodes[l].name;
                let mut agreed = true;
                for i in 0..self.nodes.len() {
                    if self.nodes[i].child.is_none() {
                        continue;
                    }
                    let s = self.status(i).await;
                    if s.as_ref().and_then(|s| s["leader"]["id"].as_str()) != Some(name) {
                        agreed = false;
                    }
                }
                if agreed {
                    return Ok(l);
                }
            }
            if start.elapsed() > deadline {
                let mut views = String::new();
                for i in 0..self.nodes.len() {
                    let s = self.status(i).await;
                    views.push_str(&format!(
                        "\n  {}: {}",
                        self.nodes[i].name,
                        s.map(|s| format!(
                            "role {} term {} leader {} applied {}",
                            s["role"], s["term"], s["leader"]["id"], s["applied_index"]
                        ))
                        .unwrap_or_else(|| "no answer".into())
                    ));
                }
                return Err(format!(
                    "no agreed leader within {deadline:?}; node views:{views}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the leader lists node `i` as a voter.
    pub async fn wait_voter(&self, i: usize, deadline: Duration) -> Result<(), String> {
        let start = Instant::now();
        let name = self.nodes[i].name.clone();
        loop {
            if let Some(l) = self.leader().await {
                if let Some(s) = self.status(l).await {
                    let voter = s["members"].as_array().is_some_and(|m| {
                        m.iter()
                            .any(|m| m["id"] == name.as_str() && m["voter"] == true)
                    });
                    if voter {
                        return Ok(());
                    }
                }
            }
            if start.elapsed() > deadline {
                return Err(format!("{name} did not become a voter within {deadline:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts all nodes: the first bootstraps, the rest join; waits until all are voters.
    pub async fn start_all(&mut self) -> Result<(), String> {
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
        let text = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}
