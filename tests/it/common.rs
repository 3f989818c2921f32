//! A test cluster of real `hraftd` processes, on the shared process harness
//! (`hraftd::harness`, also used by `hraftd-torture`).
//!
//! [`TestCluster`] owns its temp dir and the nodes in it; dropping it kills every process
//! (also when a test panics) before the directory goes. It dereferences to the harness's
//! [`Cluster`] (`c.nodes[i]`, `c.logs(..)`). Helpers named `must_*` panic with context
//! (the node, what was expected, and the tail of every node's log); every wait polls a
//! condition until a deadline and never sleeps a fixed time to "let the cluster settle".

use std::collections::HashSet;
use std::future::Future;
use std::net::TcpListener;
use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::Duration;

use hraftd::harness;
use hraftd::harness::Cluster;
use hraftd::harness::Node;
use hraftd_client::Status;
use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;

/// How long cluster-level conditions (a leader, a member, replication) may take.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Log lines of each node shown when a helper fails.
const TAIL: usize = 30;

static USED_PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port that was free a moment ago and that no other test in this process was given.
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`), which outgoing
/// connections draw their source ports from: a port from that range, handed back when a
/// node stops, could be taken by any connection on the machine before the node restarts on
/// it (seen in CI: "Address already in use" restarting a node while hraftd-torture ran).
pub fn free_port() -> u16 {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let mut used = USED_PORTS.lock().unwrap();
    let used = used.get_or_insert_with(HashSet::new);
    if ephemeral_start > 12000 {
        // Test binaries of one run start at different places in the range.
        let low = 10000u32;
        let span = u32::from(ephemeral_start) - low;
        let start = (std::process::id().wrapping_mul(7919)) % span;
        for i in 0..span {
            let port = (low + (start + i) % span) as u16;
            if !used.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                used.insert(port);
                return port;
            }
        }
    }
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind 127.0.0.1:0")
            .local_addr()
            .unwrap()
            .port();
        if used.insert(port) {
            return port;
        }
    }
}

/// Checks `check` until it returns `Some`, or panics after `deadline` saying what was
/// awaited.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    harness::wait_for(what, deadline, check)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hraftd")
}

pub struct TestCluster {
    /// The nodes; declared before `tmp`, so their processes are killed before the
    /// directory holding their data is removed.
    pub cluster: Cluster,
    /// Owns every node's data dir and log.
    pub tmp: TempDir,
    /// Does not follow redirects, so tests can see 307s.
    pub client: reqwest::Client,
    /// Follows redirects, like `curl -L`.
    pub follow: reqwest::Client,
    /// Flags every new node gets (e.g. `-snapshot-threshold`).
    pub extra_args: Vec<String>,
}

impl std::ops::Deref for TestCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl std::ops::DerefMut for TestCluster {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.cluster
    }
}

impl TestCluster {
    /// A cluster with no nodes yet; `extra_args` go to every node.
    pub fn empty(extra_args: &[&str]) -> TestCluster {
        TestCluster {
            cluster: Cluster::new(bin().into()),
            tmp: tempfile::Builder::new()
                .prefix("hraftd-test")
                .tempdir()
                .expect("temp dir"),
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

    /// Adds a node (id `node<i>`, fresh ports, its directory) without starting it.
    pub fn new_node(&mut self) -> usize {
        let i = self.nodes.len();
        let mut node = Node::new(
            format!("node{i}"),
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
            self.tmp.path().join(format!("node{i}")),
            self.tmp.path().join(format!("node{i}.log")),
        );
        node.args = self.extra_args.clone();
        // Membership changes commit two configurations with fsyncs: slow on a loaded CI.
        node.set_request_timeout(Duration::from_secs(15));
        self.nodes.push(node);
        i
    }

    /// Starts node `i`'s process (again), with `-join` if given.
    pub fn spawn(&mut self, i: usize, join: Option<&str>) {
        let join: Vec<String> = join.into_iter().map(str::to_string).collect();
        let bin = self.cluster.bin.clone();
        let n = &mut self.cluster.nodes[i];
        n.spawn(&bin, &join)
            .unwrap_or_else(|e| panic!("starting {}: {e}", n.id));
    }

    /// Adds a node that joins via the current leader and waits until it is a voter.
    pub async fn must_join_new_node(&mut self) -> usize {
        let leader = self.must_leader().await;
        let i = self.add_node(Some(leader));
        let id = self.nodes[i].id.clone();
        self.must_be_voter(&id).await;
        i
    }

    /// SIGKILLs node `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Sends SIGTERM to node `i` (a graceful stop); the caller waits for the exit.
    pub fn terminate(&self, i: usize) {
        assert!(self.nodes[i].terminate(), "SIGTERM to {}", self.nodes[i].id);
    }

    /// Restarts node `i` on its data dir with only its addresses (no `-join`).
    pub fn restart(&mut self, i: usize) {
        self.spawn(i, None);
    }

    /// Waits for node `i` to exit by itself; returns its exit status.
    pub async fn must_exit(&mut self, i: usize, deadline: Duration) -> ExitStatus {
        let logs = self.logs(TAIL);
        self.nodes[i]
            .wait_exit(deadline)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{logs}"))
    }

    /// POST /remove {"id": id} on node `via`; panics unless 200.
    pub async fn must_remove(&self, via: usize, id: &str) {
        if let Err(e) = self.nodes[via].client().remove(id).await {
            panic!("removing {id} via node{via}: {e}\n{}", self.logs(TAIL));
        }
    }

    /// Waits for node `i` to exit by itself and checks it exited with status 0.
    pub async fn must_exit_cleanly(&mut self, i: usize, deadline: Duration) {
        let st = self.must_exit(i, deadline).await;
        assert!(
            st.success(),
            "node{i} should exit cleanly, got {st}\n{}",
            self.nodes[i].log_tail(TAIL)
        );
    }

    /// `/status` of node `i`, or `None` if it does not answer.
    pub async fn status(&self, i: usize) -> Option<Status> {
        self.nodes[i].status().await
    }

    /// Waits until a running node reports itself leader and every running node agrees on
    /// its id; returns its index.
    pub async fn must_leader(&self) -> usize {
        match self.cluster.wait_leader(DEADLINE).await {
            Ok(i) => i,
            Err(e) => panic!("{e}\n{}", self.logs(TAIL)),
        }
    }

    /// Waits until the leader lists `id` as a voter.
    pub async fn must_be_voter(&self, id: &str) {
        if let Err(e) = self.cluster.wait_voter(id, DEADLINE).await {
            panic!("{e}{}\n{}", self.views().await, self.logs(TAIL));
        }
    }

    /// `/metrics` of node `i` as text.
    pub async fn metrics_text(&self, i: usize) -> String {
        self.nodes[i]
            .client()
            .metrics()
            .await
            .unwrap_or_else(|e| panic!("GET /metrics on node{i}: {e}"))
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
        let n = &self.nodes[i];
        if let Err(e) =
            harness::wait_for(&what, DEADLINE, || async { n.logged(text).then_some(()) }).await
        {
            panic!("{e}\n{}", self.logs(TAIL));
        }
    }

    /// Whether node `i`'s process is still running.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.nodes[i].is_running()
    }

    /// POST /key {k: v} on node `i`, following redirects; panics unless 200.
    pub async fn must_put(&self, i: usize, k: &str, v: &str) -> u64 {
        let client = self.redirecting_client(i);
        client
            .set(&[(k, v)])
            .await
            .unwrap_or_else(|e| panic!("POST /key {k} on node{i}: {e}\n{}", self.logs(TAIL)))
    }

    /// GET /key/<k>?level=... on node `i` (following redirects): `Some(value)`, or `None` on 404.
    pub async fn must_get(&self, i: usize, k: &str, level: &str) -> Option<String> {
        let level = hraftd_client::ReadLevel::parse(level).expect("a read level");
        self.redirecting_client(i)
            .get(k, level)
            .await
            .unwrap_or_else(|e| panic!("GET {k} on node{i}: {e}\n{}", self.logs(TAIL)))
    }

    /// Like [`must_get`](Self::must_get), but `None` when the node does not answer 200 or 404
    /// (e.g. while it restarts).
    pub async fn try_get(&self, i: usize, k: &str, level: &str) -> Option<Option<String>> {
        let level = hraftd_client::ReadLevel::parse(level).expect("a read level");
        self.redirecting_client(i).get(k, level).await.ok()
    }

    /// A typed client of node `i` that follows redirects, like `curl -L`.
    pub fn redirecting_client(&self, i: usize) -> hraftd_client::Client {
        hraftd_client::Client::builder([self.nodes[i].http.clone()])
            .timeout(Duration::from_secs(15))
            .build()
            .expect("an HTTP client")
    }

    /// Makes a follower fall behind: it sees `first`=`1`, is killed, and misses `writes`
    /// keys `k000`.. (values `v0`..) written through the leader, so with a low
    /// `-snapshot-threshold` it can only catch up by snapshot. Returns (leader, follower);
    /// the follower is left stopped.
    pub async fn must_leave_a_follower_behind(&mut self, writes: usize) -> (usize, usize) {
        let leader = self.must_leader().await;
        let lagger = (leader + 1) % self.nodes.len();
        self.must_put(leader, "first", "1").await;
        self.must_see(lagger, "first", "1").await;
        self.kill(lagger);
        for i in 0..writes {
            self.must_put(leader, &format!("k{i:03}"), &format!("v{i}"))
                .await;
        }
        (leader, lagger)
    }

    /// Waits until node `i` serves `k` = `v` from its local (stale) state.
    pub async fn must_see(&self, i: usize, k: &str, v: &str) {
        let what = format!("node{i} to apply {k}={v}");
        let seen = harness::wait_for(&what, DEADLINE, || async {
            (self.try_get(i, k, "stale").await?.as_deref() == Some(v)).then_some(())
        })
        .await;
        if let Err(e) = seen {
            panic!("{e}\n{}", self.logs(TAIL));
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
