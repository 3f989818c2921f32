//! The workload: concurrent logical clients writing unique values, deleting, and reading
//! at `consistent` level over a small rotating set of keys, recording every operation
//! with its invocation and completion time on one monotonic clock.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;
use reqwest::StatusCode;
use serde_json::Value;

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
}

impl History {
    pub fn new() -> History {
        History {
            start: Instant::now(),
            ops: Arc::default(),
        }
    }

    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn push(&self, op: Op) {
        self.ops.lock().unwrap().push(op);
    }

    pub fn snapshot(&self) -> Vec<Op> {
        self.ops.lock().unwrap().clone()
    }
}

/// An HTTP client that follows 307s to the leader (like `curl -L`).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(4))
        .timeout(OP_TIMEOUT)
        .connect_timeout(Duration::from_secs(1))
        .pool_max_idle_per_host(2)
        .build()
        .expect("http client")
}

/// Classifies a write or delete response. Only answers that prove the request never
/// reached the log are failures; anything else unclear is indeterminate.
fn write_outcome(res: &Result<(StatusCode, String), reqwest::Error>) -> Outcome {
    match res {
        Ok((s, _)) if s.is_success() => Outcome::Ok,
        Ok((s, _)) if s.is_client_error() && *s != StatusCode::REQUEST_TIMEOUT => Outcome::Fail,
        // 503 "no leader is known": refused before any proposal.
        Ok((s, body))
            if *s == StatusCode::SERVICE_UNAVAILABLE && body.contains("no leader is known") =>
        {
            Outcome::Fail
        }
        Ok(_) => Outcome::Info,
        Err(e) if e.is_connect() => Outcome::Fail,
        Err(_) => Outcome::Info,
    }
}

async fn send(req: reqwest::RequestBuilder) -> Result<(StatusCode, String), reqwest::Error> {
    let resp = req.send().await?;
    let status = resp.status();
    Ok((status, resp.text().await?))
}

/// Performs one operation against `node` (an HTTP address) and records it.
pub async fn run_op(
    http: &reqwest::Client,
    history: &History,
    client_id: usize,
    node: &str,
    key: &str,
    kind: OpKind,
) -> Outcome {
    let invoke = history.now();
    let (kind, outcome) = match kind {
        OpKind::Write(v) => {
            let req = http.put(format!("http://{node}/key/{key}")).body(v.clone());
            (OpKind::Write(v), write_outcome(&send(req).await))
        }
        OpKind::Delete => {
            let req = http.delete(format!("http://{node}/key/{key}"));
            (OpKind::Delete, write_outcome(&send(req).await))
        }
        OpKind::Read(_) => {
            let req = http.get(format!("http://{node}/key/{key}?level=consistent"));
            match send(req).await {
                Ok((StatusCode::OK, body)) => {
                    let v: Value = serde_json::from_str(&body).unwrap_or_default();
                    match v[key].as_str() {
                        Some(s) => (OpKind::Read(Some(Some(s.to_string()))), Outcome::Ok),
                        None => (OpKind::Read(None), Outcome::Info),
                    }
                }
                Ok((StatusCode::NOT_FOUND, body)) if body.contains("key not found") => {
                    (OpKind::Read(Some(None)), Outcome::Ok)
                }
                _ => (OpKind::Read(None), Outcome::Fail),
            }
        }
    };
    history.push(Op {
        client: client_id,
        key: key.to_string(),
        kind,
        invoke,
        complete: history.now(),
        outcome,
    });
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
                let key = format!(
                    "{prefix}-g{generation}-k{}",
                    rng.random_range(0..KEYS_PER_GENERATION)
                );
                let node = &nodes[rng.random_range(0..nodes.len())];
                let p: f64 = rng.random();
                let kind = if p < 0.45 {
                    n += 1;
                    OpKind::Write(format!("c{c}-{n}"))
                } else if p < 0.55 {
                    OpKind::Delete
                } else {
                    OpKind::Read(None)
                };
                if run_op(&http, &history, c, node, &key, kind).await == Outcome::Fail {
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
        .map(|(g, k)| format!("{prefix}-g{g}-k{k}"))
        .collect()
}
