//! A test cluster of real `hraftd` processes.
//!
//! [`TestCluster`] owns its temp dirs and child processes and kills every child on `Drop`
//! (also when a test panics). Helpers named `must_*` panic with context (the node, what
//! was expected, and the tail of the node's log); every wait polls a condition until a
//! deadline and never sleeps a fixed time to "let the cluster settle".

#![allow(dead_code)]

use std::collections::HashSet;
use std::fs::File;
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::ExitStatus;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;

/// How long cluster-level conditions (a leader, a member, replication) may take.
pub const DEADLINE: Duration = Duration::from_secs(30);

static USED_PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port that was free a moment ago and that no other test in this process was given.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind 127.0.0.1:0")
            .local_addr()
            .unwrap()
            .port();
        let mut used = USED_PORTS.lock().unwrap();
        if used.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `deadline` saying
/// what was awaited.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One hraftd process (running or not) and everything needed to restart it.
pub struct TestNode {
    pub name: String,
    pub http: String,
    pub raft: String,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub extra_args: Vec<String>,
    /// Environment variables for the process (e.g. a test fail point).
    pub env: Vec<(String, String)>,
    pub child: Option<Child>,
}

impl TestNode {
    /// The last lines of this node's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }
}

pub struct TestCluster {
    /// Owns every node's data dir and log; removed on drop, after the processes are killed.
    pub tmp: TempDir,
    pub nodes: Vec<TestNode>,
    /// Does not follow redirects, so tests can see 307s.
    pub client: reqwest::Client,
    /// Follows redirects, like `curl -L`.
    pub follow: reqwest::Client,
    pub extra_args: Vec<String>,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hraftd")
}

impl TestCluster {
    /// A cluster with no nodes yet; `extra_args` go to every node (e.g. `-snapshot-threshold`).
    pub fn empty(extra_args: &[&str]) -> TestCluster {
        TestCluster {
            tmp: tempfile::Builder::new()
                .prefix("hraftd-test")
                .tempdir()
                .expect("temp dir"),
            nodes: Vec::new(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
            follow: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Starts `n` nodes: node0 bootstraps, the others join it; returns once all are voters.
    pub async fn start(n: usize, extra_args: &[&str]) -> TestCluster {
        let mut c = TestCluster::empty(extra_args);
        c.add_node(None);
        c.must_leader().await;
        for _ in 1..n {
            c.must_join_new_node().await;
        }
        c
    }

    /// Adds and starts a node; with `join`, it joins via that node's HTTP address.
    pub fn add_node(&mut self, join: Option<usize>) -> usize {
        let i = self.new_node();
        let join = join.map(|j| self.nodes[j].http.clone());
        self.spawn(i, join.as_deref());
        i
    }

    /// Adds a node (name, ports, directory) without starting it.
    pub fn new_node(&mut self) -> usize {
        let i = self.nodes.len();
        let node = TestNode {
            name: format!("node{i}"),
            http: format!("127.0.0.1:{}", free_port()),
            raft: format!("127.0.0.1:{}", free_port()),
            dir: self.tmp.path().join(format!("node{i}")),
            log: self.tmp.path().join(format!("node{i}.log")),
            extra_args: self.extra_args.clone(),
            env: Vec::new(),
            child: None,
        };
        self.nodes.push(node);
        i
    }

    /// Starts node `i`'s process (again), with `-join` if given.
    pub fn spawn(&mut self, i: usize, join: Option<&str>) {
        let n = &mut self.nodes[i];
        assert!(n.child.is_none(), "{} is already running", n.name);
        let mut cmd = Command::new(bin());
        cmd.args(["-id", &n.name, "-haddr", &n.http, "-raddr", &n.raft]);
        if let Some(j) = join {
            cmd.args(["-join", j]);
        }
        cmd.args(&n.extra_args).arg(&n.dir);
        cmd.envs(n.env.iter().cloned());
        let log = File::options()
            .create(true)
            .append(true)
            .open(&n.log)
            .expect("log file");
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
        n.child = Some(cmd.spawn().expect("spawn hraftd"));
    }

    /// Adds a node that joins via the current leader and waits until it is a voter.
    pub async fn must_join_new_node(&mut self) -> usize {
        let leader = self.must_leader().await;
        let i = self.add_node(Some(leader));
        let name = self.nodes[i].name.clone();
        self.must_be_voter(&name).await;
        i
    }

    /// SIGKILLs node `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            c.kill().expect("kill");
            c.wait().expect("wait");
        }
    }

    /// Sends SIGTERM to node `i` (a graceful stop); the caller waits for the exit.
    pub fn terminate(&self, i: usize) {
        let c = self.nodes[i].child.as_ref().expect("node is running");
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let r = unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(r, 0, "SIGTERM to {}", self.nodes[i].name);
    }

    /// Restarts node `i` on its data dir with only its addresses (no `-join`).
    pub fn restart(&mut self, i: usize) {
        self.spawn(i, None);
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].child.is_some())
            .collect()
    }

    /// Waits for node `i` to exit by itself; returns its exit status.
    pub async fn must_exit(&mut self, i: usize, deadline: Duration) -> ExitStatus {
        let name = self.nodes[i].name.clone();
        let st = wait_for(&format!("{name} to exit"), deadline, || {
            let st = self.nodes[i]
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            async move { st }
        })
        .await;
        self.nodes[i].child = None;
        st
    }

    /// POST /remove {"id": name} on node `via`; panics unless 200.
    pub async fn must_remove(&self, via: usize, name: &str) {
        let body = serde_json::json!({ "id": name }).to_string();
        let (st, _, v) = self.raw(via, reqwest::Method::POST, "/remove", &body).await;
        assert_eq!(st, StatusCode::OK, "removing {name} via node{via}: {v}");
    }

    /// Waits for node `i` to exit by itself and checks it exited with status 0.
    pub async fn must_exit_cleanly(&mut self, i: usize, deadline: Duration) {
        let st = self.must_exit(i, deadline).await;
        assert!(
            st.success(),
            "node{i} should exit cleanly, got {st}\n{}",
            self.nodes[i].log_tail()
        );
    }

    /// `/status` of node `i`, or `None` if it does not answer.
    pub async fn status(&self, i: usize) -> Option<Value> {
        let r = self
            .client
            .get(self.nodes[i].url("/status"))
            .send()
            .await
            .ok()?;
        if r.status() != StatusCode::OK {
            return None;
        }
        r.json().await.ok()
    }

    /// Waits until a running node reports itself leader and every running node agrees on
    /// its name; returns its index.
    pub async fn must_leader(&self) -> usize {
        let running = self.running();
        let what = format!("a leader agreed by nodes {running:?}");
        let found = tokio::time::timeout(
            DEADLINE,
            wait_for(&what, DEADLINE, || async {
                let mut leader = None;
                for &i in &running {
                    let s = self.status(i).await?;
                    let name = s["leader"]["id"].as_str()?.to_string();
                    if leader.get_or_insert(name.clone()) != &name {
                        return None;
                    }
                }
                let name = leader?;
                let i = self.nodes.iter().position(|n| n.name == name)?;
                let s = self.status(i).await?;
                (s["role"] == "leader").then_some(i)
            }),
        )
        .await;
        match found {
            Ok(i) => i,
            Err(_) => panic!("{what}: timed out\n{}", self.logs()),
        }
    }

    /// Waits until the leader lists `name` as a voter.
    pub async fn must_be_voter(&self, name: &str) {
        wait_for(&format!("{name} to become a voter"), DEADLINE, || async {
            let l = self.must_leader().await;
            let s = self.status(l).await?;
            let members = s["members"].as_array()?;
            members
                .iter()
                .any(|m| m["id"] == name && m["voter"] == true)
                .then_some(())
        })
        .await;
    }

    /// `/metrics` of node `i` as text.
    pub async fn metrics_text(&self, i: usize) -> String {
        self.client
            .get(self.nodes[i].url("/metrics"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /metrics on node{i}: {e}"))
            .text()
            .await
            .unwrap_or_default()
    }

    /// The value of one sample line (`name{labels}`) in node `i`'s `/metrics`, 0 if absent.
    pub async fn metric(&self, i: usize, sample: &str) -> f64 {
        self.metrics_text(i)
            .await
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until node `i`'s log contains `text`.
    pub async fn must_log(&self, i: usize, text: &str) {
        let what = format!("node{i} to log {text:?}");
        let log = self.nodes[i].log.clone();
        let found = tokio::time::timeout(
            DEADLINE,
            wait_for(&what, DEADLINE, || {
                let log = log.clone();
                async move {
                    std::fs::read_to_string(&log)
                        .ok()?
                        .contains(text)
                        .then_some(())
                }
            }),
        )
        .await;
        if found.is_err() {
            panic!("{what}: timed out\n{}", self.logs());
        }
    }

    /// Whether node `i`'s process is still running.
    pub fn is_running(&mut self, i: usize) -> bool {
        match self.nodes[i].child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Every running node's log tail.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.name, n.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// POST /key {k: v} on node `i`, following redirects; panics unless 200.
    pub async fn must_put(&self, i: usize, k: &str, v: &str) -> u64 {
        let mut body = serde_json::Map::new();
        body.insert(k.to_string(), Value::String(v.to_string()));
        let r = self
            .follow
            .post(self.nodes[i].url("/key"))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /key on node{i}: {e}\n{}", self.logs()));
        let status = r.status();
        let v: Value = r.json().await.unwrap_or_default();
        assert_eq!(
            status,
            StatusCode::OK,
            "POST /key {k} on node{i}: {v}\n{}",
            self.logs()
        );
        v["index"].as_u64().expect("index in write response")
    }

    /// GET /key/<k>?level=... on node `i` (following redirects): `Some(value)`, or `None` on 404.
    pub async fn must_get(&self, i: usize, k: &str, level: &str) -> Option<String> {
        let url = self.nodes[i].url(&format!("/key/{k}?level={level}"));
        let r = self
            .follow
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}\n{}", self.logs()));
        match r.status() {
            StatusCode::OK => {
                let v: Value = r.json().await.expect("JSON body");
                Some(v[k].as_str().expect("value is a string").to_string())
            }
            StatusCode::NOT_FOUND => None,
            s => panic!(
                "GET {url}: {s} {}\n{}",
                r.text().await.unwrap_or_default(),
                self.logs()
            ),
        }
    }

    /// Like [`must_get`](Self::must_get), but `None` when the node does not answer 200 or 404
    /// (e.g. while it restarts).
    pub async fn try_get(&self, i: usize, k: &str, level: &str) -> Option<Option<String>> {
        let url = self.nodes[i].url(&format!("/key/{k}?level={level}"));
        let r = self.follow.get(&url).send().await.ok()?;
        match r.status() {
            StatusCode::OK => {
                let v: Value = r.json().await.ok()?;
                Some(Some(v[k].as_str()?.to_string()))
            }
            StatusCode::NOT_FOUND => Some(None),
            _ => None,
        }
    }

    /// Waits until node `i` serves `k` = `v` from its local (stale) state.
    pub async fn must_see(&self, i: usize, k: &str, v: &str) {
        let what = format!("node{i} to apply {k}={v}");
        let ok = tokio::time::timeout(
            DEADLINE,
            wait_for(&what, DEADLINE, || async {
                (self.try_get(i, k, "stale").await?.as_deref() == Some(v)).then_some(())
            }),
        )
        .await;
        if ok.is_err() {
            panic!("{what}: timed out\n{}", self.logs());
        }
    }

    /// A raw request to node `i` without following redirects.
    pub async fn raw(
        &self,
        i: usize,
        method: reqwest::Method,
        path: &str,
        body: &str,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let r = self
            .client
            .request(method.clone(), self.nodes[i].url(path))
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path} on node{i}: {e}"));
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or_else(|_| {
            panic!("{method} {path} on node{i}: {status} with non-JSON body {text:?}")
        });
        (status, headers, v)
    }
}
