//! hraftd-bench: a closed-loop HTTP load generator for hraftd and etcd, driving both with
//! the identical client: N keep-alive connections, each issuing one request at a time, for a
//! fixed duration (after a warm-up) or op count. Latencies go into an HDR histogram;
//! the report is a table and, with `--json`, one JSON line per run.
//!
//! Targets: `hraftd` (PUT/GET /key, writes and leader reads sent to the leader), `etcd` (the
//! v3 JSON gateway: POST /v3/kv/put and /v3/kv/range, base64 keys and values,
//! `serializable` for the stale-read equivalent, sent to the leader), and `noop` (a
//! do-nothing actix handler from `hraftd-bench noop-server`, the ceiling for reads).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use base64::Engine;
use clap::Parser;
use clap::Subcommand;
use clap::ValueEnum;
use hdrhistogram::Histogram;
use rand::Rng;
use rand::SeedableRng;
use serde_json::json;
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(name = "hraftd-bench", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run one benchmark.
    Run(RunArgs),
    /// Serve a no-op HTTP handler (the ceiling for read throughput).
    NoopServer {
        #[arg(long, default_value = "127.0.0.1:18999")]
        listen: String,
    },
    /// The cost of idle Raft groups: create `--groups` groups on every node, let them sit,
    /// and report each node's CPU (share of one core) and RSS over `--measure`.
    IdleGroups(IdleArgs),
    /// The cost of watches: PUT throughput (the `put` workload) before and while
    /// `--watchers` idle watch streams are open on one node, that node's RSS for them, and,
    /// under the same load, `--active` watchers of every written key: events per second and
    /// the latency from a write's acknowledgement to its event's delivery.
    Watch(WatchArgs),
}

#[derive(Debug, Clone, Parser)]
struct WatchArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Idle watchers (each on a key nobody writes, its own connection) on `--node`.
    #[arg(long, default_value_t = 10_000)]
    watchers: usize,
    /// Watchers of the whole `bench-` prefix (they see every PUT).
    #[arg(long, default_value_t = 2)]
    active: usize,
    /// Which endpoint (0-based) holds the watchers.
    #[arg(long, default_value_t = 0)]
    node: usize,
    /// That node's process id, for its RSS (from /proc).
    #[arg(long)]
    pid: Option<u32>,
}

#[derive(Debug, Clone, Parser)]
struct IdleArgs {
    /// Member addresses (host:port), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// The nodes' process ids, in the same order (CPU and RSS are read from /proc).
    #[arg(long, value_delimiter = ',', required = true)]
    pids: Vec<u32>,
    /// Groups to create (named idle0, idle1, ...), each on every node.
    #[arg(long, default_value_t = 100)]
    groups: usize,
    /// How long to let them settle before measuring.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// How long to measure.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    measure: Duration,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Hraftd,
    Etcd,
    Noop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    Put,
    Get,
    Mixed,
    /// hraftd: compare-and-set writes (`PUT ?cas=`), each at the index its connection last
    /// wrote the key at, so every one applies: the cost of the compare against `put`.
    Cas,
    /// hraftd: range pages (`GET /key?prefix=bench-&after=<random key>&limit=--page`).
    Range,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Level {
    Stale,
    Default,
    Consistent,
}

#[derive(Debug, Clone, Parser)]
#[command(args_override_self = true)]
struct RunArgs {
    #[arg(long, value_enum, default_value = "hraftd")]
    target: Target,
    /// Member addresses (host:port), comma-separated; the leader is found among them.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Concurrent keep-alive connections, one request in flight each.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Measured time (after the warm-up).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop after this many measured ops instead of after --duration.
    #[arg(long)]
    ops: Option<u64>,
    #[arg(long, value_enum, default_value = "put")]
    workload: Workload,
    /// Read level (etcd: stale = serializable, otherwise linearizable).
    #[arg(long, value_enum, default_value = "consistent")]
    level: Level,
    /// Share of writes in the mixed workload.
    #[arg(long, default_value_t = 0.5)]
    write_ratio: f64,
    /// Key space.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Write every key once before measuring (so reads find values).
    #[arg(long)]
    preload: bool,
    /// Pairs per preload request (`POST /key` with this many keys; hraftd only).
    #[arg(long, default_value_t = 1)]
    preload_batch: u64,
    /// Keys per page of the `range` workload.
    #[arg(long, default_value_t = 1000)]
    page: usize,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A free-form label stored with the JSON result (e.g. the repetition).
    #[arg(long, default_value = "")]
    label: String,
    /// hraftd: spread the keys over this many Raft groups (`bench1`.. created on every
    /// node if missing, led by different nodes), each request sent to its group's leader;
    /// 1 is the default group alone.
    #[arg(long, default_value_t = 1)]
    groups: usize,
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Finds the leader's address among the endpoints (the first endpoint for `noop`).
async fn leader(args: &RunArgs, http: &reqwest::Client) -> anyhow::Result<String> {
    for ep in &args.endpoints {
        match args.target {
            Target::Noop => return Ok(ep.clone()),
            Target::Hraftd => {
                let Ok(s) = hraftd_client::Client::new([ep.clone()]).status().await else {
                    continue;
                };
                if let Some(l) = s.leader {
                    return Ok(l.http_addr);
                }
            }
            Target::Etcd => {
                let s: Value = match http
                    .post(format!("http://{ep}/v3/maintenance/status"))
                    .body("{}")
                    .send()
                    .await
                {
                    Ok(r) => r.json().await.unwrap_or_default(),
                    Err(_) => continue,
                };
                if s["header"]["member_id"].is_string() && s["header"]["member_id"] == s["leader"] {
                    return Ok(ep.clone());
                }
            }
        }
    }
    anyhow::bail!("no leader found among {:?}", args.endpoints)
}

/// One request of the workload; `Ok` when the server answered as expected, else the kind
/// of error (counted by kind in the report).
/// One `cas` operation: `PUT ?cas=` of key `k` of this connection at the index it last
/// wrote it at (`0` before its first write), remembered in `last`.
async fn cas_op(
    args: &RunArgs,
    http: &reqwest::Client,
    ep: &str,
    run: u64,
    k: u64,
    last: &mut std::collections::HashMap<u64, u64>,
    value: &str,
) -> Result<(), String> {
    let (ep, prefix) = route(args, ep, k);
    let key = format!("bench-cas-{run:x}-{k:08}");
    let expect = last.get(&k).copied().unwrap_or(0);
    let url = format!(
        "http://{ep}{prefix}{}?cas={expect}",
        hraftd_client::key_path(&key)
    );
    let resp = http
        .put(url)
        .body(value.to_string())
        .send()
        .await
        .map_err(|e| transport(&e))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|_| "body".to_string())?;
    if !status.is_success() {
        // Whatever happened, start this key over from its current state.
        last.remove(&k);
        return Err(format!("http {}", status.as_u16()));
    }
    let w: hraftd_client::wire::WriteResponse =
        serde_json::from_slice(&body).map_err(|_| "decode".to_string())?;
    last.insert(k, w.index);
    Ok(())
}

/// One `range` operation: a page of `--page` keys after a random one.
async fn range_op(
    args: &RunArgs,
    http: &reqwest::Client,
    ep: &str,
    after: u64,
) -> Result<(), String> {
    let level = match args.level {
        Level::Stale => "stale",
        Level::Default => "default",
        Level::Consistent => "consistent",
    };
    let url = format!(
        "http://{ep}/key?prefix=bench-&after=bench-{after:08}&limit={}&level={level}",
        args.page
    );
    let resp = http.get(url).send().await.map_err(|e| transport(&e))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|_| "body".to_string())?;
    if !status.is_success() {
        return Err(format!("http {}", status.as_u16()));
    }
    // Count what came back, so that a short page (too few keys loaded) is seen.
    let page: hraftd_client::wire::RangeResponse =
        serde_json::from_slice(&body).map_err(|_| "decode".to_string())?;
    if page.kvs.len() < args.page && page.more {
        return Err("short page".into());
    }
    Ok(())
}

fn transport(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".to_string()
    } else if e.is_connect() {
        "connect".to_string()
    } else {
        "transport".to_string()
    }
}

/// Preloads keys `from..to` in one `POST /key`.
async fn preload_batch(
    args: &RunArgs,
    http: &reqwest::Client,
    ep: &str,
    from: u64,
    to: u64,
    value: &str,
) -> Result<(), String> {
    let (ep, prefix) = route(args, ep, from);
    let body: serde_json::Map<String, serde_json::Value> = (from..to)
        .map(|k| (format!("bench-{k:08}"), value.into()))
        .collect();
    let resp = http
        .post(format!("http://{ep}{prefix}/key"))
        .body(serde_json::Value::Object(body).to_string())
        .send()
        .await
        .map_err(|e| transport(&e))?;
    let status = resp.status();
    let _ = resp.bytes().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("http {}", status.as_u16()))
    }
}

async fn op(
    args: &RunArgs,
    http: &reqwest::Client,
    ep: &str,
    key: u64,
    write: bool,
    value: &str,
) -> Result<(), String> {
    let (ep, prefix) = route(args, ep, key);
    let key = format!("bench-{key:08}");
    let req = match (args.target, write) {
        (Target::Hraftd, true) => http
            .put(format!(
                "http://{ep}{prefix}{}",
                hraftd_client::key_path(&key)
            ))
            .body(value.to_string()),
        (Target::Hraftd, false) => {
            let level = match args.level {
                Level::Stale => hraftd_client::ReadLevel::Stale,
                Level::Default => hraftd_client::ReadLevel::Default,
                Level::Consistent => hraftd_client::ReadLevel::Consistent,
            };
            http.get(format!(
                "http://{ep}{prefix}{}?level={}",
                hraftd_client::key_path(&key),
                level.as_str()
            ))
        }
        (Target::Etcd, true) => http
            .post(format!("http://{ep}/v3/kv/put"))
            .body(json!({"key": b64(key.as_bytes()), "value": b64(value.as_bytes())}).to_string()),
        (Target::Etcd, false) => http.post(format!("http://{ep}/v3/kv/range")).body(
            json!({"key": b64(key.as_bytes()), "serializable": args.level == Level::Stale})
                .to_string(),
        ),
        (Target::Noop, _) => http.get(format!("http://{ep}/key/{key}")),
    };
    let resp = req.send().await.map_err(|e| transport(&e))?;
    let status = resp.status();
    // Read the whole body, as a real client would.
    let _ = resp.bytes().await.map_err(|_| "body".to_string())?;
    if status.is_success() || (!write && status == reqwest::StatusCode::NOT_FOUND) {
        Ok(())
    } else {
        Err(format!("http {}", status.as_u16()))
    }
}

/// Each group's leader (HTTP address) and path prefix, with `--groups` above 1.
static GROUP_LEADERS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

/// Where key `key` goes: its group's leader and path prefix (`/groups/<g>`), or `ep` and
/// the default group.
fn route<'a>(_args: &RunArgs, ep: &'a str, key: u64) -> (std::borrow::Cow<'a, str>, String) {
    match GROUP_LEADERS.get() {
        Some(l) if !l.is_empty() => {
            let (leader, prefix) = &l[(key % l.len() as u64) as usize];
            (leader.clone().into(), prefix.clone())
        }
        _ => (ep.into(), String::new()),
    }
}

/// Creates groups `bench1`..`benchN` on every node (where missing) and finds their
/// leaders; prints who leads each.
async fn set_up_groups(args: &RunArgs) -> anyhow::Result<()> {
    let client = hraftd_client::Client::builder(args.endpoints.clone())
        .timeout(Duration::from_secs(30))
        .build()?;
    let status = client.status().await.context("GET /status")?;
    let members: Vec<&str> = status.members.iter().map(|m| m.id.as_str()).collect();
    let existing: Vec<String> = client.groups().await?.into_iter().map(|g| g.id).collect();
    let mut leaders = Vec::new();
    for i in 1..=args.groups {
        let id = format!("bench{i}");
        let g = if existing.contains(&id) {
            client.group(&id).await?
        } else {
            client
                .create_group(&id, &members)
                .await
                .with_context(|| format!("creating {id}"))?
        };
        // Leaders on different nodes: group i is moved to member i (round robin).
        let want = members[(i - 1) % members.len()];
        let g = if g.leader_id() == Some(want) {
            g
        } else {
            client
                .transfer_leader(&id, want)
                .await
                .with_context(|| format!("moving {id}'s leadership to {want}"))?
        };
        let leader = g.leader.with_context(|| format!("{id} has no leader"))?;
        println!("group {id}: led by {}", leader.id);
        let http = leader.http_addr.trim_start_matches("http://").to_string();
        leaders.push((http, format!("/groups/{id}")));
    }
    let _ = GROUP_LEADERS.set(leaders);
    Ok(())
}

/// CPU time (user + system, in clock ticks) and RSS (bytes) of process `pid`.
fn proc_usage(pid: u32) -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let rss_pages: u64 = f.get(21).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok((ticks, rss_pages * 4096))
}

/// (heartbeat frames, group heartbeats) the node at `ep` has sent so far, from its
/// `/metrics` (0 where it has no such counters).
async fn heartbeat_counts(ep: &str) -> anyhow::Result<(f64, f64)> {
    let client = hraftd_client::Client::builder(vec![ep.to_string()])
        .timeout(Duration::from_secs(10))
        .build()?;
    let text = client
        .metrics()
        .await
        .with_context(|| format!("GET /metrics on {ep}"))?;
    let get = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((
        get("hraftd_peer_heartbeat_frames_total"),
        get("hraftd_peer_heartbeats_total"),
    ))
}

/// `hraftd-bench idle-groups`.
async fn idle_groups(a: IdleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.pids.len() == a.endpoints.len(),
        "one --pids entry per endpoint"
    );
    let client = hraftd_client::Client::builder(a.endpoints.clone())
        .timeout(Duration::from_secs(30))
        .build()?;
    let status = client.status().await.context("GET /status")?;
    let members: Vec<&str> = status.members.iter().map(|m| m.id.as_str()).collect();
    anyhow::ensure!(
        [1, 3, 5].contains(&members.len()),
        "groups need 1, 3 or 5 nodes, the cluster has {}",
        members.len()
    );
    let existing: Vec<String> = client.groups().await?.into_iter().map(|g| g.id).collect();
    let made = Instant::now();
    for i in 0..a.groups {
        let id = format!("idle{i}");
        if !existing.contains(&id) {
            client
                .create_group(&id, &members)
                .await
                .with_context(|| format!("creating {id}"))?;
        }
    }
    let groups = client.groups().await?;
    let mut leads: std::collections::BTreeMap<String, usize> = Default::default();
    for g in &groups {
        if let Some(l) = g.leader_id() {
            *leads.entry(l.to_string()).or_default() += 1;
        }
    }
    println!(
        "{} groups (the default one included) made in {:.1?}; leaders per node: {leads:?}",
        groups.len(),
        made.elapsed()
    );
    tokio::time::sleep(a.settle).await;
    let mut beats_before = Vec::new();
    for ep in &a.endpoints {
        beats_before.push(heartbeat_counts(ep).await?);
    }
    let before: Vec<(u64, u64)> = a
        .pids
        .iter()
        .map(|p| proc_usage(*p))
        .collect::<Result<_, _>>()?;
    let t = Instant::now();
    tokio::time::sleep(a.measure).await;
    let secs = t.elapsed().as_secs_f64();
    let after: Vec<(u64, u64)> = a
        .pids
        .iter()
        .map(|p| proc_usage(*p))
        .collect::<Result<_, _>>()?;
    // Clock ticks per second: 100 on Linux.
    let hz = 100.0;
    let mut rows = Vec::new();
    for (i, ep) in a.endpoints.iter().enumerate() {
        let cpu = (after[i].0 - before[i].0) as f64 / hz / secs * 100.0;
        let rss = after[i].1 as f64 / (1 << 20) as f64;
        let (frames, beats) = heartbeat_counts(ep).await?;
        let frames = (frames - beats_before[i].0) / secs;
        let beats = (beats - beats_before[i].1) / secs;
        let per_frame = if frames > 0.0 { beats / frames } else { 0.0 };
        println!(
            "{ep}: {cpu:.1}% of one core, RSS {rss:.0} MB; group heartbeats {beats:.0}/s in \
             {frames:.0} frames/s ({per_frame:.1} per frame)"
        );
        rows.push(json!({"endpoint": ep, "cpu_percent": cpu, "rss_mb": rss,
            "heartbeats_per_s": beats, "heartbeat_frames_per_s": frames}));
    }
    if let Some(path) = &a.json {
        let line = json!({"bench": "idle-groups", "groups": groups.len(), "seconds": secs,
            "leaders": leads, "nodes": rows,
            "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()});
        append_json(path, &line)?;
    }
    Ok(())
}

fn connection() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .http1_only()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// Appends `line` to the JSON-lines file at `path`.
fn append_json(path: &std::path::Path, line: &Value) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| path.display().to_string())?;
    writeln!(f, "{line}").with_context(|| path.display().to_string())
}

/// A process's resident set, in MB (from /proc).
fn rss_mb(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// `hraftd-bench watch` (see [`Cmd::Watch`]).
async fn watch_bench(a: WatchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.run.target == Target::Hraftd,
        "watch is an hraftd benchmark"
    );
    let node = a
        .run
        .endpoints
        .get(a.node)
        .context("--node is not one of --endpoints")?
        .clone();
    let mut put = a.run.clone();
    put.workload = Workload::Put;
    put.label = format!("{} no watchers", a.run.label);
    let before = run(put.clone()).await?;
    let rss_before = a.pid.and_then(rss_mb);

    // Idle watchers: a key each that nobody writes, each its own connection.
    let http = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(0)
        .build()?;
    let mut idle = Vec::with_capacity(a.watchers);
    let opened = Instant::now();
    for i in 0..a.watchers {
        let url = format!("http://{node}/watch?key=idle-{i:06}");
        let resp = http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("opening idle watcher {i}"))?;
        anyhow::ensure!(
            resp.status().is_success(),
            "idle watcher {i}: {}",
            resp.status()
        );
        idle.push(resp);
    }
    let open_secs = opened.elapsed().as_secs_f64();
    let rss_idle = a.pid.and_then(rss_mb);

    // Active watchers count events; a probe measures acknowledgement-to-delivery latency.
    let client = hraftd_client::Client::builder([node.clone()])
        .timeout(Duration::from_secs(10))
        .build()?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut counters = Vec::new();
    for _ in 0..a.active {
        let mut w = client
            .watch(&hraftd_client::WatchTarget::Prefix("bench-".into()), None)
            .await?;
        let stop = stop.clone();
        counters.push(tokio::spawn(async move {
            let mut events = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), w.next()).await {
                    Ok(Ok(Some(hraftd_client::WatchItem::Entry { events: e, .. }))) => {
                        events += e.len() as u64
                    }
                    Ok(_) => break,
                    Err(_) => {}
                }
            }
            events
        }));
    }
    let writer = hraftd_client::Client::builder(a.run.endpoints.clone())
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut probe = client
        .watch(&hraftd_client::WatchTarget::Key("wprobe".into()), None)
        .await?;
    let probe_stop = stop.clone();
    let prober = tokio::spawn(async move {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
        let mut n = 0u64;
        while !probe_stop.load(Ordering::Relaxed) {
            n += 1;
            if writer.put("wprobe", &n.to_string()).await.is_err() {
                continue;
            }
            let acked = Instant::now();
            // The event may arrive before the acknowledgement does: then it counts as 0.
            loop {
                match tokio::time::timeout(Duration::from_secs(5), probe.next()).await {
                    Ok(Ok(Some(hraftd_client::WatchItem::Entry { events, .. })))
                        if events
                            .iter()
                            .any(|e| e.kv.value.as_deref() == Some(&n.to_string())) =>
                    {
                        let _ = hist.record(acked.elapsed().as_micros().max(1) as u64);
                        break;
                    }
                    Ok(Ok(Some(hraftd_client::WatchItem::Entry { .. }))) => {}
                    _ => return hist,
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        hist
    });
    put.label = format!("{} {} idle watchers", a.run.label, a.watchers);
    let during = run(put).await?;
    stop.store(true, Ordering::Relaxed);
    let mut events = 0;
    for c in counters {
        events += c.await?;
    }
    let hist = prober.await?;
    let rss_after = a.pid.and_then(rss_mb);
    drop(idle);
    let secs = a.run.warmup.as_secs_f64() + a.run.duration.as_secs_f64();
    let events_per_s = events as f64 / secs / a.active.max(1) as f64;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let ratio = during / before;
    println!(
        "watch: {} idle watchers opened in {open_secs:.1}s; PUT {before:.0} -> {during:.0} ops/s ({ratio:.3}x);          RSS {rss_before:?} -> {rss_idle:?} -> {rss_after:?} MB; {events_per_s:.0} events/s per active watcher;          ack-to-delivery p50 {:.2}ms p99 {:.2}ms ({} probes)",
        a.watchers,
        ms(0.5),
        ms(0.99),
        hist.len()
    );
    if let Some(path) = &a.run.json {
        let line = json!({
            "bench": "watch", "watchers": a.watchers, "active": a.active,
            "connections": a.run.connections, "put_before": before, "put_during": during,
            "put_ratio": ratio, "rss_before_mb": rss_before, "rss_idle_mb": rss_idle,
            "rss_after_mb": rss_after, "open_seconds": open_secs,
            "events_per_s_per_watcher": events_per_s, "ack_to_delivery_p50_ms": ms(0.5),
            "ack_to_delivery_p99_ms": ms(0.99), "probes": hist.len(), "label": a.run.label,
            "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        });
        append_json(path, &line)?;
    }
    Ok(())
}

/// Runs one benchmark; returns its throughput (ops/s).
async fn run(args: RunArgs) -> anyhow::Result<f64> {
    let http = connection();
    let ep = leader(&args, &http).await?;
    if args.groups > 1 {
        anyhow::ensure!(args.target == Target::Hraftd, "--groups is for hraftd");
        set_up_groups(&args).await?;
    }
    let value: String = "v".repeat(args.value_size);
    if matches!(args.workload, Workload::Cas | Workload::Range) {
        anyhow::ensure!(
            args.target == Target::Hraftd,
            "cas and range are hraftd workloads"
        );
    }
    anyhow::ensure!(
        args.preload_batch == 1 || (args.target == Target::Hraftd && args.groups == 1),
        "--preload-batch is for hraftd's default group"
    );
    // Names this run's cas keys, so that keys of an earlier run never fail their compare.
    let run_id: u64 = rand::random();
    if args.preload {
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..args.connections.max(8) {
            let (args, ep, value, next) = (args.clone(), ep.clone(), value.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let http = connection();
                let batch = args.preload_batch.max(1);
                loop {
                    let k = next.fetch_add(batch, Ordering::Relaxed);
                    if k >= args.keys {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let r = if batch == 1 {
                        op(&args, &http, &ep, k, true, &value).await
                    } else {
                        let to = (k + batch).min(args.keys);
                        preload_batch(&args, &http, &ep, k, to, &value).await
                    };
                    r.map_err(|kind| anyhow::anyhow!("preloading key {k}: {kind}"))?;
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
    }

    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let (args, ep, value, done) = (args.clone(), ep.clone(), value.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let http = connection();
            let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut errors: std::collections::BTreeMap<String, u64> = Default::default();
            let mut last_cas = std::collections::HashMap::new();
            let connections = args.connections as u64;
            loop {
                let now = Instant::now();
                if now >= end || args.ops.is_some_and(|n| done.load(Ordering::Relaxed) >= n) {
                    break;
                }
                let write = match args.workload {
                    Workload::Put | Workload::Cas => true,
                    Workload::Get | Workload::Range => false,
                    Workload::Mixed => rng.random_bool(args.write_ratio),
                };
                let key = rng.random_range(0..args.keys);
                let t = Instant::now();
                let r = match args.workload {
                    // Each connection its own keys (c, c + connections, ...): no contention.
                    Workload::Cas => {
                        let k = (key / connections) * connections + c as u64;
                        cas_op(&args, &http, &ep, run_id, k, &mut last_cas, &value).await
                    }
                    Workload::Range => {
                        let after = key.min(args.keys.saturating_sub(args.page as u64 + 1));
                        range_op(&args, &http, &ep, after).await
                    }
                    _ => op(&args, &http, &ep, key, write, &value).await,
                };
                if t >= measure_from {
                    match r {
                        Ok(()) => {
                            let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => *errors.entry(e).or_default() += 1,
                    }
                }
            }
            (hist, errors)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut errors: std::collections::BTreeMap<String, u64> = Default::default();
    for t in tasks {
        let (h, e) = t.await?;
        hist.add(h)?;
        for (k, v) in e {
            *errors.entry(k).or_default() += v;
        }
    }
    let elapsed = Instant::now()
        .saturating_duration_since(measure_from)
        .as_secs_f64();
    let throughput = hist.len() as f64 / elapsed;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load1: f64 = load
        .split_whitespace()
        .next()
        .and_then(|x| x.parse().ok())
        .unwrap_or(0.0);
    let target = format!("{:?}", args.target).to_lowercase();
    let workload = format!("{:?}", args.workload).to_lowercase();
    let level = format!("{:?}", args.level).to_lowercase();
    println!(
        "{:<7} {:<6} {:<11} conns={:<3} {:>9.0} ops/s  p50 {:>7.2}ms  p90 {:>7.2}ms  p99 {:>7.2}ms  p99.9 {:>7.2}ms  max {:>8.2}ms  errors {:?}  load1 {load1}",
        target,
        workload,
        if matches!(args.workload, Workload::Put | Workload::Cas) { "-".to_string() } else { level.clone() },
        args.connections,
        throughput,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        hist.max() as f64 / 1000.0,
        errors,
    );
    if let Some(path) = &args.json {
        let line = json!({
            "target": target, "workload": workload, "level": level,
            "connections": args.connections, "keys": args.keys, "value_size": args.value_size,
            "write_ratio": args.write_ratio, "seconds": elapsed, "ops": hist.len(),
            "throughput": throughput, "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99),
            "p999_ms": ms(0.999), "max_ms": hist.max() as f64 / 1000.0, "errors": errors,
            "loadavg": load.trim(), "label": args.label, "groups": args.groups,
        });
        append_json(path, &line)?;
    }
    Ok(throughput)
}

async fn noop(_req: actix_web::HttpRequest) -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().json(json!({"k": "v"}))
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(args) => tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(run(args))
            .map(|_| ()),
        Cmd::Watch(args) => tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(watch_bench(args)),
        Cmd::IdleGroups(args) => tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(idle_groups(args)),
        Cmd::NoopServer { listen } => actix_web::rt::System::new().block_on(async move {
            actix_web::HttpServer::new(|| {
                actix_web::App::new().default_service(actix_web::web::route().to(noop))
            })
            .workers(2)
            .bind(&listen)
            .with_context(|| format!("binding {listen}"))?
            .run()
            .await
            .context("the no-op server")
        }),
    };
    if let Err(e) = result {
        eprintln!("hraftd-bench: {e:#}");
        std::process::exit(1);
    }
}
