//! A harness for real `hraftd` processes, shared by the integration tests (`tests/it`)
//! and the fault-injection tool (`hraftd-torture`), so both spawn, signal, observe and
//! clean up nodes the same way.
//!
//! - [`Node`]: one process and everything needed to (re)start it: its id, addresses,
//!   data dir, extra flags and environment, and a log file that every run appends to.
//!   Dropping a `Node` kills its process (resuming it first if it was paused).
//! - [`Cluster`]: the nodes of one cluster, with the questions every caller asks: who
//!   leads (as every running node agrees), is this node a voter yet, what do the logs say.
//! - [`wait_for`]: polls a condition until a deadline and fails saying what it waited for;
//!   nothing here sleeps a fixed time to "let the cluster settle".
//!
//! Observations use the typed client ([`hraftd_client`]), so a renamed field in `/status`
//! is a compile error here rather than a silent `null`.

use std::fs::File;
use std::future::Future;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::ExitStatus;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use hraftd_client::Client;
use hraftd_client::Status;

/// How often [`wait_for`] checks its condition.
const POLL: Duration = Duration::from_millis(50);

/// A condition that did not hold in time.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {after:?} waiting for {what}")]
pub struct Timeout {
    pub what: String,
    pub after: Duration,
}

/// Checks `check` every 50 ms until it returns `Some`, for at most `deadline` (one check
/// that hangs is cut off at the deadline too).
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T, Timeout>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let poll = async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::time::timeout(deadline, poll)
        .await
        .map_err(|_| Timeout {
            what: what.to_string(),
            after: deadline,
        })
}

/// The last `lines` lines of the file at `path` (empty if it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Sends `sig` to the process `child`, which must not have been reaped (see `Node::exit`);
/// false if it could not be delivered.
fn signal(child: &Child, sig: libc::c_int) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions. The pid is that of a child we
    // spawned and (callers check `Node::exit`) have not reaped, so it cannot have been
    // reused by another process.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) == 0 }
}

/// A client that watches one node: no redirects followed, requests cut off after `t`.
fn observer(t: Duration) -> Client {
    Client::builder(Vec::<String>::new())
        .follow_redirects(false)
        .timeout(t)
        .connect_timeout(Duration::from_secs(1))
        .build()
        .expect("an HTTP client")
}

/// One hraftd process (running or not) and everything needed to (re)start it.
pub struct Node {
    /// The member id (`-id`).
    pub id: String,
    /// HTTP address, `host:port`.
    pub http: String,
    /// Raft (peer) address, `host:port`.
    pub raft: String,
    pub dir: PathBuf,
    /// Every run of this node appends its output here.
    pub log: PathBuf,
    /// Flags given to every run, after the identity flags and before DATA_DIR.
    pub args: Vec<String>,
    /// Environment variables for every run (e.g. a test fail point).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    /// How `child` exited, once [`Node::is_running`] has seen it (and so reaped it): from
    /// then on its pid may belong to another process, so no signal is sent to it.
    exit: Option<ExitStatus>,
    paused: bool,
    /// Does not follow redirects, so a caller sees exactly what this node answers; pointed
    /// at the node's current `http` for each use ([`Node::client`]).
    base: Client,
    /// Whether the node serves HTTPS (`-tls-cert`): its client then uses `https://`.
    pub https: bool,
}

impl Node {
    /// A node that is not started yet. Its requests ([`Node::client`]) time out after 2 s;
    /// see [`Node::set_request_timeout`].
    pub fn new(
        id: impl Into<String>,
        http: impl Into<String>,
        raft: impl Into<String>,
        dir: PathBuf,
        log: PathBuf,
    ) -> Node {
        let base = observer(Duration::from_secs(2));
        Node {
            id: id.into(),
            http: http.into(),
            raft: raft.into(),
            dir,
            log,
            args: Vec::new(),
            env: Vec::new(),
            child: None,
            exit: None,
            paused: false,
            base,
            https: false,
        }
    }

    /// Replaces the client this node is observed with (e.g. one that trusts a test CA);
    /// it should not follow redirects.
    pub fn set_client(&mut self, base: Client) {
        self.base = base;
    }

    /// How long each request of [`Node::client`] may take (a fault injector wants it short,
    /// so a frozen node does not stall it; a test that removes members wants it long).
    pub fn set_request_timeout(&mut self, t: Duration) {
        self.base = observer(t);
    }

    /// Sends `sig` to the process, unless it has been seen to exit (then its pid may
    /// belong to another process already).
    fn send(&self, sig: libc::c_int) -> bool {
        match (&self.child, self.exit) {
            (Some(c), None) => signal(c, sig),
            _ => false,
        }
    }

    /// `http://<http addr><path>` (`https://` when the node serves HTTPS).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint())
    }

    /// The node's HTTP endpoint with its scheme.
    pub fn endpoint(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.http)
    }

    /// A client of this node alone (no redirects followed).
    pub fn client(&self) -> Client {
        self.base.to([self.endpoint()])
    }

    /// Starts the process of `bin` (again): `-id -haddr -raddr`, `-join` when `join` is
    /// not empty, then [`Node::args`] and the data dir; output appended to [`Node::log`].
    pub fn spawn(&mut self, bin: &Path, join: &[String]) -> std::io::Result<()> {
        self.exited();
        if self.child.is_some() {
            return Err(std::io::Error::other(format!(
                "{} is already running",
                self.id
            )));
        }
        let log = File::options().create(true).append(true).open(&self.log)?;
        let mut cmd = Command::new(bin);
        cmd.args(["-id", &self.id, "-haddr", &self.http, "-raddr", &self.raft]);
        if !join.is_empty() {
            cmd.args(["-join", &join.join(",")]);
        }
        cmd.args(&self.args)
            .arg(&self.dir)
            .envs(self.env.iter().cloned())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(
            cmd.spawn()
                .map_err(|e| std::io::Error::other(format!("spawning {}: {e}", bin.display())))?,
        );
        self.exit = None;
        self.paused = false;
        Ok(())
    }

    /// Takes over a process the caller started itself (e.g. with the README's exact
    /// command line), so that it is observed, signalled and cleaned up like the others.
    pub fn attach(&mut self, child: Child) {
        self.kill();
        self.child = Some(child);
        self.exit = None;
    }

    /// Whether a process was started and has not been seen to exit.
    pub fn is_started(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the process was started and is paused (SIGSTOP).
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The process id, while started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// If the process has exited, takes it (the node is then not started) and returns how
    /// it exited; `None` while it runs, or if it was never started.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = match self.exit {
            Some(st) => st,
            None => self.child.as_mut()?.try_wait().ok().flatten()?,
        };
        self.child = None;
        self.exit = None;
        self.paused = false;
        Some(status)
    }

    /// Whether the process is running. Unlike [`Node::exited`] this keeps an exited
    /// process, so a later [`Node::wait_exit`] still learns how it exited.
    pub fn is_running(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        let Some(c) = self.child.as_mut() else {
            return false;
        };
        match c.try_wait() {
            Ok(None) => true,
            Ok(Some(st)) => {
                self.exit = Some(st);
                false
            }
            Err(_) => false,
        }
    }

    /// SIGKILLs the process (resuming it first if paused) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.exit.is_none() {
                signal(&c, libc::SIGCONT);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.exit = None;
        self.paused = false;
    }

    /// Sends SIGTERM (a graceful stop); the caller waits for the exit.
    pub fn terminate(&self) -> bool {
        self.send(libc::SIGTERM)
    }

    /// Sends `sig` (e.g. `libc::SIGHUP`); false if the node is not running.
    pub fn signal(&self, sig: libc::c_int) -> bool {
        self.child.as_ref().is_some_and(|c| signal(c, sig))
    }

    /// SIGSTOP: the process stays, frozen.
    pub fn pause(&mut self) {
        self.paused = self.send(libc::SIGSTOP);
    }

    /// SIGCONT after [`Node::pause`].
    pub fn resume(&mut self) {
        self.send(libc::SIGCONT);
        self.paused = false;
    }

    /// Waits for the process to exit by itself; returns how it exited (and takes it, as
    /// [`Node::exited`] does).
    pub async fn wait_exit(&mut self, deadline: Duration) -> Result<ExitStatus, Timeout> {
        let what = if self.child.is_some() {
            format!("{} to exit", self.id)
        } else {
            format!("{} to exit (it is not running)", self.id)
        };
        let start = Instant::now();
        loop {
            if let Some(st) = self.exited() {
                return Ok(st);
            }
            if self.child.is_none() || start.elapsed() > deadline {
                return Err(Timeout {
                    what,
                    after: start.elapsed(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The last `lines` lines of this node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Whether this node's log contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains(text))
    }

    /// `/status`, or `None` if the node does not answer.
    pub async fn status(&self) -> Option<Status> {
        self.client().status().await.ok()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The nodes of one cluster and the binary they run.
pub struct Cluster {
    pub bin: PathBuf,
    pub nodes: Vec<Node>,
}

impl Cluster {
    pub fn new(bin: PathBuf) -> Cluster {
        Cluster {
            bin,
            nodes: Vec::new(),
        }
    }

    /// Indexes of the nodes that are started and not paused.
    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_started() && !self.nodes[i].is_paused())
            .collect()
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// The leader every live node names, if they all name the same one and it says it
    /// leads.
    pub async fn agreed_leader(&self) -> Option<usize> {
        let mut leader: Option<String> = None;
        for i in self.live() {
            let s = self.nodes[i].status().await?;
            let id = s.leader_id()?.to_string();
            if *leader.get_or_insert_with(|| id.clone()) != id {
                return None;
            }
        }
        let i = self.index_of(&leader?)?;
        self.nodes[i].status().await?.is_leader().then_some(i)
    }

    /// Waits for [`Cluster::agreed_leader`]; on timeout the error lists each node's view.
    pub async fn wait_leader(&self, deadline: Duration) -> Result<usize, String> {
        let what = format!("a leader agreed by nodes {:?}", self.live());
        match wait_for(&what, deadline, || self.agreed_leader()).await {
            Ok(i) => Ok(i),
            Err(e) => Err(format!("{e}; node views:{}", self.views().await)),
        }
    }

    /// The leader's `/status`, once there is an agreed leader.
    pub async fn leader_status(&self) -> Option<Status> {
        let l = self.agreed_leader().await?;
        self.nodes[l].status().await
    }

    /// Waits until the agreed leader lists `id` as a voter.
    pub async fn wait_voter(&self, id: &str, deadline: Duration) -> Result<(), Timeout> {
        wait_for(&format!("{id} to become a voter"), deadline, || async {
            self.leader_status().await?.has_voter(id).then_some(())
        })
        .await
    }

    /// One line per node: its role, term, leader and applied index as it reports them.
    pub async fn views(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let view = match n.status().await {
                Some(s) => format!(
                    "role {} term {} leader {} applied {}",
                    s.role,
                    s.term,
                    s.leader_id().unwrap_or("none"),
                    s.applied_index
                ),
                None => "no answer".into(),
            };
            out.push_str(&format!("\n  {}: {view}", n.id));
        }
        out
    }

    /// Every node's log tail, for failure messages.
    pub fn logs(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.id, n.log_tail(lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
