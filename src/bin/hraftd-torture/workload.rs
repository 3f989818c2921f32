//! The workload: concurrent logical clients writing unique values (plainly and by
//! compare-and-set), deleting (single keys and by prefix), and reading at `consistent`
//! level over a small rotating set of keys, recording every operation
//! with its invocation and completion time on one monotonic clock.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use hraftd_client as client;
use hraftd_client::Client;
use hraftd_client::ErrorCode;
use hraftd_client::ReadLevel;
use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;

use crate::checker::Op;
use crate::checker::OpKind;
use crate::checker::Outcome;

/// Keys in use at once; all clients work on the same few so that they contend.
pub const KEYS_PER_GENERATION: u64 = 3;
/// Operations (over all clients) before moving on to fresh keys.
pub const OPS_PER_GENERATION: u64 = 300;
/// Per-operation timeout; past it the outcome is indeterminate.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// The shared, append-only record of what every client did.
#[derive(Clone)]
pub struct History {
    pub start: Instant,
    pub ops: Arc<Mutex<Vec<Op>>>,
    /// The log index of every acknowledged write, by its (unique) value: the watch
    /// checker finds each one in the change history there.
    pub indexes: Arc<Mutex<std::collections::HashMap<String, u64>>>,
}

impl History {
    pub fn new() -> History {
        History {
            start: Instant::now(),
            ops: Arc::default(),
            indexes: Arc::default(),
        }
    }

    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn push(&self, op: Op) {
        self.ops.lock().unwrap().push(op);
    }

    /// Records what client `client` did to `key` from `invoke` until now.
    pub fn record(&self, client: usize, key: &str, kind: OpKind, invoke: u64, outcome: Outcome) {
        self.push(Op {
            client,
            key: key.to_string(),
            kind,
            invoke,
            complete: self.now(),
            outcome,
        });
    }

    pub fn snapshot(&self) -> Vec<Op> {
        self.ops.lock().unwrap().clone()
    }
}

/// How clients reach the nodes: HTTPS with the run's CA, and as which user (`--tls`,
/// `--auth`). Set once at start-up.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub ca: Option<Vec<u8>>,
    pub user: Option<(String, String)>,
    pub admin: Option<(String, String)>,
}

static ACCESS: std::sync::OnceLock<Access> = std::sync::OnceLock::new();

/// Sets how clients reach the nodes (before any client is made).
pub fn configure(access: Access) {
    let _ = ACCESS.set(access);
}

fn access() -> Access {
    ACCESS.get().cloned().unwrap_or_default()
}

/// A client builder with the run's CA and, with `as_admin`, the admin's credentials
/// (else the workload user's).
pub fn builder(as_admin: bool) -> hraftd_client::Builder {
    let a = access();
    let mut b = Client::builder(Vec::<String>::new())
        .timeout(OP_TIMEOUT)
        .connect_timeout(Duration::from_secs(1));
    if let Some(ca) = a.ca {
        b = b.ca_pem(ca);
    }
    if let Some((u, p)) = if as_admin { a.admin } else { a.user } {
        b = b.basic_auth(u, p);
    }
    b
}

/// A typed client that follows 307s to the leader (like `curl -L`); pointed at one node
/// per operation with [`Client::to`] and the node's endpoint (`harness::Node::endpoint`,
/// which knows whether it serves HTTPS).
pub fn client() -> Client {
    builder(false).build().expect("http client")
}

/// Classifies a write or delete. Only answers that prove the request never reached the
/// log are failures: a refusal in the 4xx range, `no_leader` or `unavailable` (the store
/// answers these only before proposing: no leader, a full queue, stopping; a forwarding
/// follower only when the leader could not be reached), or a connection that was never
/// made. Anything else unclear (`outcome_unknown`, `timeout`, 5xx, a lost answer) is
/// indeterminate.
fn write_outcome(res: &Result<u64, client::Error>) -> Outcome {
    match res {
        Ok(_) => Outcome::Ok,
        Err(e) if e.is_connect() => Outcome::Fail,
        Err(e) => match (e.status(), e.code()) {
            (_, Some(ErrorCode::NoLeader | ErrorCode::Unavailable)) => Outcome::Fail,
            (Some(s), _) if (400..500).contains(&s) && s != 408 => Outcome::Fail,
            _ => Outcome::Info,
        },
    }
}

/// The Raft groups the workload spreads its keys over (`--groups`): index 0 is the
/// default group, `tg1`.. the ones the run creates. Set once at start-up.
static GROUPS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// Sets the groups keys are spread over (before the workload starts).
pub fn set_groups(groups: Vec<String>) {
    let _ = GROUPS.set(groups);
}

fn groups() -> &'static [String] {
    GROUPS.get().map(Vec::as_slice).unwrap_or(&[])
}

/// Every group of the run, the default one first.
pub fn all_groups() -> Vec<String> {
    match groups() {
        [] => vec![hraftd_store::DEFAULT_GROUP.to_string()],
        g => g.to_vec(),
    }
}

/// `http`, scoped to `group`.
pub fn for_group(http: Client, group: &str) -> Client {
    if group == hraftd_store::DEFAULT_GROUP {
        http
    } else {
        http.in_group(group)
    }
}

/// The groups the run created (every one but the default group).
pub fn extra_groups() -> Vec<String> {
    groups()
        .iter()
        .filter(|g| *g != hraftd_store::DEFAULT_GROUP)
        .cloned()
        .collect()
}

/// The group `key` lives in: keys name their group's index (`<prefix>-G<i>-...`).
pub fn group_of(key: &str) -> Option<&'static str> {
    let i: usize = key.split("-G").nth(1)?.split('-').next()?.parse().ok()?;
    groups()
        .get(i)
        .map(String::as_str)
        .filter(|g| *g != hraftd_store::DEFAULT_GROUP)
}

/// `http`, scoped to the group `key` lives in.
pub fn for_key(http: Client, key: &str) -> Client {
    match group_of(key) {
        Some(g) => http.in_group(g),
        None => http,
    }
}

/// Performs one operation against `node` (an endpoint with its scheme) and records it.
pub async fn run_op(
    http: &Client,
    history: &History,
    client_id: usize,
    node: &str,
    key: &str,
    kind: OpKind,
) -> Outcome {
    if let OpKind::Cas { new, .. } = kind {
        return run_cas(http, history, client_id, node, key, new).await;
    }
    let http = for_key(http.to([node]), key);
    let invoke = history.now();
    let (kind, outcome) = match kind {
        OpKind::Write(v) => {
            let res = http.put(key, &v).await;
            if let Ok(i) = res {
                history.indexes.lock().unwrap().insert(v.clone(), i);
            }
            (OpKind::Write(v), write_outcome(&res))
        }
        OpKind::Delete => (OpKind::Delete, write_outcome(&http.delete(key).await)),
        OpKind::Read(_) => match http.get(key, ReadLevel::Consistent).await {
            Ok(v) => (OpKind::Read(Some(v)), Outcome::Ok),
            Err(_) => (OpKind::Read(None), Outcome::Fail),
        },
        OpKind::Cas { .. } => unreachable!("taken by run_cas above"),
    };
    history.record(client_id, key, kind, invoke, outcome);
    outcome
}

/// A compare-and-set against `node`: a consistent read of `key`'s value and `mod_index`
/// (recorded as a read), then `PUT ?cas=<mod_index>` of `new` (recorded as a CAS over the
/// value read). Returns how the CAS ended (a failed read ends it there).
pub async fn run_cas(
    http: &Client,
    history: &History,
    client_id: usize,
    node: &str,
    key: &str,
    new: String,
) -> Outcome {
    let http = for_key(http.to([node]), key);
    let invoke = history.now();
    let read = http
        .get_kv(key, client::ReadOpts::level(ReadLevel::Consistent))
        .await;
    let record = |kind, invoke, outcome| history.record(client_id, key, kind, invoke, outcome);
    let current = match read {
        Ok(kv) => kv,
        Err(_) => {
            record(OpKind::Read(None), invoke, Outcome::Fail);
            return Outcome::Fail;
        }
    };
    let expect = current.as_ref().and_then(|kv| kv.value.clone());
    record(OpKind::Read(Some(expect.clone())), invoke, Outcome::Ok);
    let at = current.map(|kv| kv.mod_index).unwrap_or(0);
    let invoke = history.now();
    let res = http.put_cas(key, &new, at).await;
    if let Ok(i) = res {
        history.indexes.lock().unwrap().insert(new.clone(), i);
    }
    let (applied, outcome) = match &res {
        Ok(_) => (Some(true), Outcome::Ok),
        Err(e) if e.cas_failed().is_some() => (Some(false), Outcome::Ok),
        Err(_) => match write_outcome(&res) {
            Outcome::Info => (None, Outcome::Info),
            other => (Some(false), other),
        },
    };
    record(
        OpKind::Cas {
            expect,
            new,
            applied,
        },
        invoke,
        outcome,
    );
    outcome
}

/// `DELETE ?prefix=` of the keys of one generation that live in one group (the prefix
/// names both); recorded as a delete of each of them, all with the request's times.
pub async fn run_prefix_delete(
    http: &Client,
    history: &History,
    client_id: usize,
    node: &str,
    prefix: &str,
    generation: u64,
    k: u64,
) -> Outcome {
    let key = key_name(prefix, generation, k);
    let Some((covering, _)) = key.rsplit_once("-k") else {
        return Outcome::Fail;
    };
    let covering = format!("{covering}-k");
    let covered: Vec<String> = (0..KEYS_PER_GENERATION)
        .map(|k| key_name(prefix, generation, k))
        .filter(|name| name.starts_with(&covering))
        .collect();
    let http = for_key(http.to([node]), &key);
    let invoke = history.now();
    let res = http.delete_prefix(&covering).await.map(|d| d.index);
    let outcome = write_outcome(&res);
    let complete = history.now();
    for key in covered {
        history.push(Op {
            client: client_id,
            key,
            kind: OpKind::Delete,
            invoke,
            complete,
            outcome,
        });
    }
    outcome
}

/// Runs `clients` logical clients against `nodes` until `stop` is set.
pub async fn run(
    prefix: String,
    nodes: Vec<String>,
    clients: usize,
    seed: u64,
    history: History,
    stop: Arc<AtomicBool>,
) -> Vec<String> {
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (prefix, nodes, history, stop, counter) = (
            prefix.clone(),
            nodes.clone(),
            history.clone(),
            stop.clone(),
            counter.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(c as u64 * 7919));
            let http = client();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let generation = counter.fetch_add(1, Ordering::Relaxed) / OPS_PER_GENERATION;
                let k = rng.random_range(0..KEYS_PER_GENERATION);
                let key = key_name(&prefix, generation, k);
                let node = &nodes[rng.random_range(0..nodes.len())];
                let p: f64 = rng.random();
                n += 1;
                let value = format!("c{c}-{n}");
                let outcome = if p < 0.33 {
                    run_op(&http, &history, c, node, &key, OpKind::Write(value)).await
                } else if p < 0.45 {
                    run_cas(&http, &history, c, node, &key, value).await
                } else if p < 0.52 {
                    run_op(&http, &history, c, node, &key, OpKind::Delete).await
                } else if p < 0.55 {
                    run_prefix_delete(&http, &history, c, node, &prefix, generation, k).await
                } else {
                    run_op(&http, &history, c, node, &key, OpKind::Read(None)).await
                };
                if outcome == Outcome::Fail {
                    // Nobody to talk to right now; do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let generations = counter.load(Ordering::Relaxed) / OPS_PER_GENERATION;
    (0..=generations)
        .flat_map(|g| (0..KEYS_PER_GENERATION).map(move |k| (g, k)))
        .map(|(g, k)| key_name(&prefix, g, k))
        .collect()
}

/// Key `k` of generation `generation`: each key lives in one group (round robin over the
/// run's groups), and its name says which.
fn key_name(prefix: &str, generation: u64, k: u64) -> String {
    let n = groups().len().max(1) as u64;
    let group = (generation * KEYS_PER_GENERATION + k) % n;
    format!("{prefix}-G{group}-g{generation}-k{k}")
}
