//! hraftd-torture: a Jepsen-style self-test. It starts a real hraftd cluster on loopback
//! addresses, runs a concurrent workload while injecting faults (kill -9, SIGSTOP,
//! partitions, one-way cuts, membership churn) on a seeded schedule, heals everything,
//! and then checks the recorded history: per-key linearizability, no lost acknowledged
//! writes, convergence of all nodes, and availability after leader failures. A negative
//! control (stale reads from a partitioned follower) proves the checker can fail.
//!
//! Start-up order: flags -> firewall -> cluster -> negative control -> workload + faults
//! -> heal -> final reads -> convergence -> check -> report.

mod checker;
mod cluster;
mod hostile;
mod leases;
mod nemesis;
mod net;
mod secure;
mod watchers;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;

use crate::checker::Verdict;

/// Fault-injection and linearizability self-test for hraftd.
#[derive(Debug, Parser)]
#[command(name = "hraftd-torture", version)]
struct Args {
    /// How long to run the workload under faults (e.g. 2m, 30m, 1h).
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Seed for the fault schedule and the workload (printed; default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Number of hraftd nodes (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Number of concurrent logical clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// The hraftd binary. Default: `hraftd` next to this executable.
    #[arg(long)]
    hraftd: Option<PathBuf>,
    /// Loopback address of the first node; the others follow (.11, .12, .13 by default).
    #[arg(long, default_value = "127.0.0.11")]
    first_ip: std::net::Ipv4Addr,
    /// Run every node with a new cluster key (-cluster-key), so the hostile peer's frames
    /// must all be refused unread.
    #[arg(long)]
    cluster_key: bool,
    /// Serve every node's HTTP API over HTTPS (a CA and certificates made for the run
    /// with `openssl`); clients and joins use it.
    #[arg(long)]
    tls: bool,
    /// Run every node with users (`-auth`): the workload writes as a read+write user,
    /// churn joins and removes as the admin.
    #[arg(long)]
    auth: bool,
    /// Run every node with `-forward` (followers forward leader-only requests).
    #[arg(long)]
    forward: bool,
    /// Spread the keys over this many Raft groups: the default one and `tg1`.. created on
    /// every node, each led by a different node where there are enough.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    groups: u16,
    /// Where to write the report and, on a violation, the offending histories.
    #[arg(long, default_value = "torture-out")]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // On SIGINT/SIGTERM the run is dropped, and with it the cluster and firewall guards:
    // processes are killed and the network healed.
    let interrupted = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let result = tokio::select! {
        r = run(args) => r,
        _ = interrupted => Err(anyhow::anyhow!("interrupted; cluster stopped and network healed")),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("torture: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Creates groups `tg1`.. on every node (the default group is the first of the run's
/// groups) and prints who leads each; new groups go to the members leading the fewest.
async fn make_groups(cluster: &cluster::Cluster, n: u16) -> anyhow::Result<Vec<String>> {
    let mut groups = vec![hraftd_store::DEFAULT_GROUP.to_string()];
    if n <= 1 {
        return Ok(groups);
    }
    let admin = workload::builder(true)
        .timeout(Duration::from_secs(30))
        .build()
        .context("an HTTP client")?
        .to(cluster.nodes.iter().map(|n| n.endpoint()));
    let members: Vec<&str> = cluster.nodes.iter().map(|n| n.id.as_str()).collect();
    for i in 1..n {
        let id = format!("tg{i}");
        let g = admin
            .create_group(&id, &members)
            .await
            .with_context(|| format!("creating group {id}"))?;
        println!(
            "torture: group {id} on {} nodes, led by {}",
            g.members.len(),
            g.leader_id().unwrap_or("?")
        );
        groups.push(id);
    }
    Ok(groups)
}

async fn run(args: Args) -> anyhow::Result<bool> {
    // 1. Flags, seed, binary, output dir.
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let bin = match args.hraftd {
        Some(b) => b,
        None => std::env::current_exe()
            .context("finding this executable")?
            .with_file_name("hraftd"),
    };
    if !bin.exists() {
        anyhow::bail!(
            "{} not found; build it first (cargo build --bins) or pass --hraftd",
            bin.display()
        );
    }
    std::fs::create_dir_all(&args.out).with_context(|| args.out.display().to_string())?;
    println!(
        "torture: seed {seed}, {} nodes, {} clients, {:?} of faults",
        args.nodes, args.clients, args.duration
    );

    // 2. Firewall for network faults (root and iptables needed).
    let firewall = match net::Firewall::new(args.first_ip) {
        Ok(f) => Some(f),
        Err(e) => {
            println!("torture: iptables is not usable ({e}); network partitions and the negative control are SKIPPED, other faults run");
            None
        }
    };

    // 3. The cluster.
    let tmp = tempfile::Builder::new()
        .prefix("hraftd-torture")
        .tempdir()
        .context("making a temp dir")?;
    // A history that holds the whole run, so every watcher can always resume.
    let mut flags = vec![
        "-snapshot-threshold",
        "400",
        "-write-timeout",
        "2",
        "-watch-history",
        "5000000",
    ];
    let key = tmp.path().join("cluster.key");
    let key_arg = key.display().to_string();
    if args.cluster_key {
        hraftd_store::ClusterKey::generate(&key).context("making a cluster key")?;
        flags.extend(["-cluster-key", key_arg.as_str()]);
        println!("torture: peers authenticate with a cluster key");
    }
    let auth_arg;
    let mut access = workload::Access::default();
    if args.auth {
        let (file, a) = secure::users(&bin, tmp.path())?;
        auth_arg = file.display().to_string();
        flags.extend(["-auth", auth_arg.as_str(), "-join-as", "admin"]);
        access = a;
        println!("torture: clients authenticate (-auth); the workload is a read+write user");
    }
    if args.forward {
        flags.push("-forward");
        println!("torture: followers forward leader-only requests (-forward)");
    }
    let mut cluster = cluster::Cluster::new(
        bin,
        tmp.path().to_path_buf(),
        args.first_ip,
        args.nodes,
        &flags,
    );
    if args.tls {
        let (per_node, ca) = secure::certificates(tmp.path(), &cluster.ips())?;
        for (n, f) in cluster.nodes.iter_mut().zip(per_node) {
            n.args.extend(f);
            n.https = true;
        }
        access.ca = Some(ca);
        println!("torture: HTTPS on every node (a CA made for the run)");
    }
    if let Some((_, pw)) = &access.admin {
        for n in cluster.nodes.iter_mut() {
            n.env.push(("HRAFTD_JOIN_PASSWORD".into(), pw.clone()));
        }
    }
    workload::configure(access);
    // The harness watches status with the run's CA (anonymously: "*" may read).
    for n in cluster.nodes.iter_mut() {
        let observer = workload::builder(false)
            .follow_redirects(false)
            .timeout(std::time::Duration::from_secs(2))
            .build()
            .context("an HTTP client")?;
        n.set_client(observer);
    }
    cluster.keep_logs = Some(args.out.join("logs"));
    cluster.start_all().await?;
    println!("torture: cluster of {} up", args.nodes);
    let groups = make_groups(&cluster, args.groups).await?;
    workload::set_groups(groups);
    let prefix = format!("t{seed:x}");

    // 4. Negative control: the checker must reject stale reads from a cut-off follower.
    let control = match &firewall {
        Some(fw) => Some(nemesis::negative_control(&mut cluster, fw, &prefix).await?),
        None => None,
    };

    // 5. Workload under faults.
    let history = workload::History::new();
    let stop = Arc::new(AtomicBool::new(false));
    let nodes: Vec<String> = cluster.nodes.iter().map(|n| n.endpoint()).collect();
    let load = tokio::spawn(workload::run(
        prefix.clone(),
        nodes,
        args.clients,
        seed,
        history.clone(),
        stop.clone(),
    ));
    let watched = watchers::spawn(
        cluster.nodes.iter().map(|n| n.endpoint()).collect(),
        prefix.clone(),
        workload::all_groups(),
        2,
        seed,
        stop.clone(),
    );
    let lease_load = tokio::spawn(leases::run(
        cluster.nodes.iter().map(|n| n.endpoint()).collect(),
        format!("l{seed:x}"),
        seed,
        stop.clone(),
    ));
    let mut nemesis = nemesis::Nemesis::new(seed, firewall.as_ref(), args.cluster_key);
    let faults = nemesis.run(&mut cluster, &history, args.duration).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let keys = load.await.context("the workload task")?;

    // 6. Heal everything and let the cluster settle.
    nemesis.heal(&mut cluster).await;
    let leader = cluster.wait_leader(Duration::from_secs(60)).await?;
    let lease_report = lease_load.await.context("the lease checker")?;

    // The end marker in every group: watchers stop once they have seen it; then every
    // node's whole history of the run's keys, for the watch checker.
    for g in workload::all_groups() {
        let c = workload::for_group(workload::client(), &g);
        let key = watchers::marker(&prefix);
        let mut written = false;
        for _ in 0..50 {
            let at = cluster.wait_leader(Duration::from_secs(30)).await?;
            let node = cluster.nodes[at].endpoint();
            if c.to([node]).put(&key, "end").await.is_ok() {
                written = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !written {
            anyhow::bail!("could not write the end marker in group {g}");
        }
    }
    let recorded = watched.await.context("the watchers")?;
    let mut histories = std::collections::HashMap::new();
    for g in workload::all_groups() {
        let mut per_node = Vec::new();
        for n in &cluster.nodes {
            per_node.push(watchers::full_history(&n.endpoint(), &prefix, &g).await);
        }
        histories.insert(g, per_node);
    }
    let indexes = history.indexes.lock().unwrap().clone();
    let watch_report = watchers::check(
        &recorded,
        &histories,
        &history.snapshot(),
        &indexes,
        &prefix,
    );

    // 7. Final consistent reads of every key, part of the history.
    let http = workload::client();
    for key in &keys {
        let node = cluster.nodes[leader].endpoint();
        for _ in 0..20 {
            let got = workload::run_op(
                &http,
                &history,
                999,
                &node,
                key,
                checker::OpKind::Read(None),
            )
            .await;
            if got == checker::Outcome::Ok {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // 8. Convergence: every node reports the same applied state.
    let convergence = nemesis::convergence(&cluster, &keys, Duration::from_secs(60)).await;

    // 9. Check.
    let ops = history.snapshot();
    let started = Instant::now();
    let mut verdicts = Vec::new();
    for (key, h) in checker::by_key(&ops) {
        let v = checker::check_key(&h);
        if v != Verdict::Linearizable {
            let file = args.out.join(format!("{key}.history.txt"));
            let _ = std::fs::write(&file, checker::render(&h));
            println!("torture: key {key}: {v:?}; history in {}", file.display());
        }
        verdicts.push((key, v));
    }
    let final_read_missing = keys
        .iter()
        .filter(|k| {
            !ops.iter()
                .any(|o| o.client == 999 && &o.key == *k && o.outcome == checker::Outcome::Ok)
        })
        .count();

    // 10. Report.
    let report = nemesis::Report {
        seed,
        duration: args.duration,
        ops: &ops,
        faults: &faults,
        verdicts: &verdicts,
        check_time: started.elapsed(),
        control: control.as_ref(),
        convergence: &convergence,
        final_read_missing,
        availability: nemesis::availability(&faults, &ops),
        unexpected_exits: &cluster.unexpected_exits,
        hostile: nemesis.hostile,
        keyed: args.cluster_key,
        watch: &watch_report,
        leases: &lease_report,
    };
    let ok = report.print(&args.out);
    drop(cluster);
    drop(firewall);
    Ok(ok)
}
