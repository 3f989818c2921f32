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
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A free-form label stored with the JSON result (e.g. the repetition).
    #[arg(long, default_value = "")]
    label: String,
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
async fn op(
    args: &RunArgs,
    http: &reqwest::Client,
    ep: &str,
    key: u64,
    write: bool,
    value: &str,
) -> Result<(), String> {
    let key = format!("bench-{key:08}");
    let req = match (args.target, write) {
        (Target::Hraftd, true) => http
            .put(format!("http://{ep}{}", hraftd_client::key_path(&key)))
            .body(value.to_string()),
        (Target::Hraftd, false) => {
            let level = match args.level {
                Level::Stale => hraftd_client::ReadLevel::Stale,
                Level::Default => hraftd_client::ReadLevel::Default,
                Level::Consistent => hraftd_client::ReadLevel::Consistent,
            };
            http.get(format!(
                "http://{ep}{}?level={}",
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
    let resp = req.send().await.map_err(|e| {
        if e.is_timeout() {
            "timeout".to_string()
        } else if e.is_connect() {
            "connect".to_string()
        } else {
            "transport".to_string()
        }
    })?;
    let status = resp.status();
    // Read the whole body, as a real client would.
    let _ = resp.bytes().await.map_err(|_| "body".to_string())?;
    if status.is_success() || (!write && status == reqwest::StatusCode::NOT_FOUND) {
        Ok(())
    } else {
        Err(format!("http {}", status.as_u16()))
    }
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

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let http = connection();
    let ep = leader(&args, &http).await?;
    let value: String = "v".repeat(args.value_size);
    if args.preload {
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..args.connections.max(8) {
            let (args, ep, value, next) = (args.clone(), ep.clone(), value.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let http = connection();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= args.keys {
                        return Ok::<_, anyhow::Error>(());
                    }
                    op(&args, &http, &ep, k, true, &value)
                        .await
                        .map_err(|kind| anyhow::anyhow!("preloading key {k}: {kind}"))?;
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
            loop {
                let now = Instant::now();
                if now >= end || args.ops.is_some_and(|n| done.load(Ordering::Relaxed) >= n) {
                    break;
                }
                let write = match args.workload {
                    Workload::Put => true,
                    Workload::Get => false,
                    Workload::Mixed => rng.random_bool(args.write_ratio),
                };
                let key = rng.random_range(0..args.keys);
                let t = Instant::now();
                let r = op(&args, &http, &ep, key, write, &value).await;
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
        if args.workload == Workload::Put { "-".to_string() } else { level.clone() },
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
            "loadavg": load.trim(), "label": args.label,
        });
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| path.display().to_string())?;
        writeln!(f, "{line}").with_context(|| path.display().to_string())?;
    }
    Ok(())
}

async fn noop(_req: actix_web::HttpRequest) -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().json(json!({"k": "v"}))
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(args) => tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(run(args)),
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
