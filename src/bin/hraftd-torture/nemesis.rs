//! The nemesis: a seeded schedule of faults (kill -9, SIGSTOP, partitions, one-way cuts,
//! membership churn), each healed before the next; plus the negative control, the
//! convergence check, availability figures and the final report.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use std::time::Instant;

use hraftd_client::ReadLevel;
use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;
use serde_json::json;

use crate::checker;
use crate::checker::Op;
use crate::checker::OpKind;
use crate::checker::Outcome;
use crate::checker::Verdict;
use crate::cluster::Cluster;
use crate::hostile;
use crate::net::Firewall;
use crate::workload;
use crate::workload::History;

/// One injected fault.
#[derive(Debug, Clone)]
pub struct Fault {
    /// When it began, on the history's clock (ns).
    pub at: u64,
    pub kind: &'static str,
    pub target: String,
    /// Whether it took the leader away (for availability figures).
    pub leader_fault: bool,
}

pub struct Nemesis<'a> {
    rng: StdRng,
    fw: Option<&'a Firewall>,
    /// Whether the cluster runs with a cluster key (changes what the hostile peer sends
    /// and what it checks).
    keyed: bool,
    /// What the hostile-peer faults saw.
    pub hostile: hostile::Tally,
}

fn secs(rng: &mut StdRng, lo: f64, hi: f64) -> Duration {
    Duration::from_secs_f64(rng.random_range(lo..hi))
}

impl<'a> Nemesis<'a> {
    pub fn new(seed: u64, fw: Option<&'a Firewall>, keyed: bool) -> Self {
        Nemesis {
            rng: StdRng::seed_from_u64(seed ^ 0x006e_656d_6573_6973),
            fw,
            keyed,
            hostile: hostile::Tally::default(),
        }
    }

    /// Injects faults until `duration` has passed; returns what was done.
    pub async fn run(
        &mut self,
        c: &mut Cluster,
        history: &History,
        duration: Duration,
    ) -> Vec<Fault> {
        let end = Instant::now() + duration;
        let mut faults = Vec::new();
        loop {
            let quiet = secs(&mut self.rng, 1.5, 3.5);
            if Instant::now() + quiet >= end {
                break;
            }
            tokio::time::sleep(quiet).await;
            self.heal(c).await;
            let n = c.nodes.len();
            let leader = c.leader().await;
            let net = self.fw.is_some();
            // The last choice is the hostile peer; the others are as before.
            let kinds = if net { 9 } else { 5 };
            let choice = self.rng.random_range(0..kinds);
            let at = history.now();
            let mut fault = match choice {
                k if k == kinds - 1 => self.hostile_peer(c, leader).await,
                0 | 1 => {
                    let i = match leader {
                        Some(l) if choice == 0 => l,
                        _ => self.rng.random_range(0..n),
                    };
                    c.kill(i);
                    tokio::time::sleep(secs(&mut self.rng, 1.0, 4.0)).await;
                    let _ = c.start(i, false);
                    let kind = if leader == Some(i) {
                        "kill -9 + restart (leader)"
                    } else {
                        "kill -9 + restart (follower)"
                    };
                    Fault {
                        at,
                        kind,
                        target: c.nodes[i].id.clone(),
                        leader_fault: leader == Some(i),
                    }
                }
                2 => {
                    let i = if self.rng.random_bool(0.5) {
                        leader.unwrap_or(0)
                    } else {
                        self.rng.random_range(0..n)
                    };
                    c.pause(i);
                    tokio::time::sleep(secs(&mut self.rng, 2.0, 5.0)).await;
                    c.resume(i);
                    Fault {
                        at,
                        kind: "SIGSTOP/SIGCONT",
                        target: c.nodes[i].id.clone(),
                        leader_fault: leader == Some(i),
                    }
                }
                3 => {
                    let i = self.rng.random_range(0..n);
                    self.churn(c, i).await
                }
                4 | 5 => {
                    let fw = self.fw.expect("network faults need the firewall");
                    let i = leader.unwrap_or_else(|| self.rng.random_range(0..n));
                    let (kind, isolated) = if choice == 4 {
                        ("partition: isolate leader", vec![i])
                    } else {
                        let k = (n - 1) / 2;
                        let mut pick: Vec<usize> = (0..n).collect();
                        for j in 0..n {
                            let r = self.rng.random_range(j..n);
                            pick.swap(j, r);
                        }
                        ("partition: isolate minority", pick[..k].to_vec())
                    };
                    let ips = c.ips();
                    for &a in &isolated {
                        let others: Vec<&str> = (0..n)
                            .filter(|j| !isolated.contains(j))
                            .map(|j| ips[j])
                            .collect();
                        if let Err(e) = fw.isolate(ips[a], &others) {
                            println!("torture: {e}");
                        }
                    }
                    tokio::time::sleep(secs(&mut self.rng, 3.0, 8.0)).await;
                    let _ = fw.heal();
                    let names: Vec<String> =
                        isolated.iter().map(|&j| c.nodes[j].id.clone()).collect();
                    Fault {
                        at,
                        kind,
                        target: names.join(","),
                        leader_fault: leader.is_some_and(|l| isolated.contains(&l)),
                    }
                }
                _ => {
                    let fw = self.fw.expect("network faults need the firewall");
                    let a = self.rng.random_range(0..n);
                    let b = (a + self.rng.random_range(1..n)) % n;
                    let ips = c.ips();
                    if let Err(e) = fw.cut(ips[a], ips[b]) {
                        println!("torture: {e}");
                    }
                    tokio::time::sleep(secs(&mut self.rng, 3.0, 8.0)).await;
                    let _ = fw.heal();
                    Fault {
                        at,
                        kind: "one-way cut",
                        target: format!("{}->{}", c.nodes[a].id, c.nodes[b].id),
                        leader_fault: false,
                    }
                }
            };
            fault.at = at;
            println!(
                "torture: {:>7.1}s {} {}",
                fault.at as f64 / 1e9,
                fault.kind,
                fault.target
            );
            faults.push(fault);
        }
        faults
    }

    /// Forged and garbage frames from outside the cluster, for a few seconds, to every node.
    async fn hostile_peer(&mut self, c: &Cluster, leader: Option<usize>) -> Fault {
        let nodes: Vec<(String, String)> = c
            .nodes
            .iter()
            .map(|n| (n.id.clone(), n.raft.clone()))
            .collect();
        let leader_name = leader.map(|l| c.nodes[l].id.clone());
        let term = match leader {
            Some(l) => c.status(l).await.map(|s| s.term).unwrap_or(0),
            None => 0,
        };
        let until = Instant::now() + secs(&mut self.rng, 2.0, 5.0);
        let mut tally = hostile::Tally::default();
        while Instant::now() < until {
            let t = hostile::round(
                &mut self.rng,
                &nodes,
                leader_name.as_deref(),
                term,
                self.keyed,
            )
            .await;
            tally.add(t);
        }
        self.hostile.add(tally);
        Fault {
            at: 0,
            kind: "hostile peer (forged + garbage frames)",
            target: format!("all ({} connections)", tally.connections),
            leader_fault: false,
        }
    }

    /// Removes node `i` from the cluster, waits for it to exit, wipes its data and joins
    /// it back as a new member under the same name.
    async fn churn(&mut self, c: &mut Cluster, i: usize) -> Fault {
        let at_name = c.nodes[i].id.clone();
        let fault = |kind| Fault {
            at: 0,
            kind,
            target: at_name.clone(),
            leader_fault: false,
        };
        let Some(leader) = c.leader().await else {
            return fault("churn skipped (no leader)");
        };
        let leader_fault = leader == i;
        let remover = workload::builder(true)
            .timeout(Duration::from_secs(20))
            .build()
            .expect("an HTTP client")
            .to([c.nodes[leader].endpoint()]);
        let removed = remover.remove(&c.nodes[i].id).await.is_ok();
        if !removed {
            // The answer was lost, but the removal may have committed: then the node
            // leaves, and that is no finding.
            let name = c.nodes[i].id.clone();
            tokio::time::sleep(Duration::from_secs(3)).await;
            let still_member = match c.leader().await {
                Some(l) => c.status(l).await.is_none_or(|s| s.has_member(&name)),
                None => true,
            };
            if still_member {
                return fault("churn skipped (remove failed)");
            }
        }
        let start = Instant::now();
        while !c.exited(i) && start.elapsed() < Duration::from_secs(35) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !c.exited(i) {
            println!(
                "torture: {} did not exit within 35 s of its removal; killing it",
                c.nodes[i].id
            );
            c.kill(i);
        }
        let _ = std::fs::remove_dir_all(&c.nodes[i].dir);
        if let Err(e) = c.start(i, true) {
            println!("torture: restarting {}: {e}", c.nodes[i].id);
        } else if let Err(e) = c.wait_voter(i, Duration::from_secs(90)).await {
            println!("torture: {e}\n{}", c.log_tail(i, 20));
        } else {
            // Leaving the cluster took it out of every group; an operator adds it back.
            rejoin_groups(c, i).await;
        }
        Fault {
            at: 0,
            kind: "membership churn (remove, wipe, re-join)",
            target: c.nodes[i].id.clone(),
            leader_fault,
        }
    }

    /// Heals every fault: network whole, every process resumed and running.
    pub async fn heal(&mut self, c: &mut Cluster) {
        if let Some(fw) = self.fw {
            let _ = fw.heal();
        }
        c.resume_all();
        c.restart_exited();
    }
}

/// Adds node `i` back to every group of the run (after churn), retrying for a while.
async fn rejoin_groups(c: &Cluster, i: usize) {
    let admin = workload::builder(true)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client");
    let eps: Vec<String> = c.nodes.iter().map(|n| n.endpoint()).collect();
    for g in workload::extra_groups() {
        let mut done = false;
        for _ in 0..10 {
            if admin
                .to(eps.clone())
                .add_group_member(&g, &c.nodes[i].id)
                .await
                .is_ok()
            {
                done = true;
                break;
            }
            // A backoff between retries of a failed request.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if !done {
            println!("torture: could not add {} back to group {g}", c.nodes[i].id);
        }
    }
}

/// The negative control's result.
pub struct Control {
    pub caught: bool,
    pub stale_value: Option<String>,
}

/// Writes a value, cuts a follower off, writes a new value through the leader, and reads
/// at `stale` level from the cut-off follower: a history the checker must reject.
pub async fn negative_control(
    c: &mut Cluster,
    fw: &Firewall,
    prefix: &str,
) -> anyhow::Result<Control> {
    let key = format!("{prefix}-control");
    let leader = c.wait_leader(Duration::from_secs(30)).await?;
    let f = (leader + 1) % c.nodes.len();
    let history = History::new();
    let http = workload::client();
    let lead = c.nodes[leader].endpoint();
    let follower = c.nodes[f].endpoint();
    let write = |v: &str| OpKind::Write(v.to_string());
    if workload::run_op(&http, &history, 0, &lead, &key, write("c1")).await != Outcome::Ok {
        anyhow::bail!("negative control: first write failed");
    }
    let stale = http.to([follower]);
    let start = Instant::now();
    loop {
        let seen = stale.get(&key, ReadLevel::Stale).await.ok().flatten();
        if seen.as_deref() == Some("c1") {
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            anyhow::bail!("negative control: follower never applied the first write");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ips = c.ips();
    let others: Vec<&str> = (0..ips.len()).filter(|j| *j != f).map(|j| ips[j]).collect();
    fw.isolate(ips[f], &others)?;
    let wrote = workload::run_op(&http, &history, 0, &lead, &key, write("c2")).await;
    let invoke = history.now();
    let stale_value = stale.get(&key, ReadLevel::Stale).await.ok().flatten();
    history.push(Op {
        client: 1,
        key: key.clone(),
        kind: OpKind::Read(Some(stale_value.clone())),
        invoke,
        complete: history.now(),
        outcome: if stale_value.is_some() {
            Outcome::Ok
        } else {
            Outcome::Fail
        },
    });
    fw.heal()?;
    if wrote != Outcome::Ok {
        anyhow::bail!("negative control: second write failed with a follower cut off");
    }
    let verdict = checker::check_key(&history.snapshot());
    let caught = verdict == Verdict::NotLinearizable;
    println!(
        "torture: negative control: stale read of {key} on cut-off {} returned {:?} after \"c2\" was acknowledged; checker says {verdict:?} ({})",
        c.nodes[f].id,
        stale_value,
        if caught { "caught, as it must be" } else { "NOT CAUGHT" }
    );
    c.wait_leader(Duration::from_secs(30)).await?;
    Ok(Control {
        caught,
        stale_value,
    })
}

/// Whether all nodes converged on the same applied state.
pub struct Convergence {
    pub converged: bool,
    pub waited: Duration,
    pub detail: String,
}

/// Waits until every node has applied the same index and serves the same value for
/// every key from its local state.
pub async fn convergence(c: &Cluster, keys: &[String], deadline: Duration) -> Convergence {
    let start = Instant::now();
    let http = workload::client();
    let mut detail = String::new();
    while start.elapsed() < deadline {
        let mut applied = Vec::new();
        for i in 0..c.nodes.len() {
            let s = c.status(i).await;
            applied.push(s.map(|s| (s.applied_index, s.commit_index)));
        }
        let same = applied.iter().all(|a| a.is_some() && *a == applied[0]);
        if !same {
            detail = format!("applied/commit index per node: {applied:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let mut mismatch = None;
        'keys: for key in keys {
            let mut first: Option<Option<String>> = None;
            for n in &c.nodes {
                let node = workload::for_key(http.to([n.endpoint()]), key);
                let v = match node.get(key, ReadLevel::Stale).await {
                    Ok(v) => v,
                    Err(_) => Some("<unreachable>".into()),
                };
                if *first.get_or_insert(v.clone()) != v {
                    mismatch = Some(format!("{key}: {first:?} vs {v:?} on {}", n.id));
                    break 'keys;
                }
            }
        }
        match mismatch {
            None => {
                return Convergence {
                    converged: true,
                    waited: start.elapsed(),
                    detail: format!(
                        "all nodes at applied index {:?}, {} keys equal",
                        applied[0],
                        keys.len()
                    ),
                }
            }
            Some(m) => detail = m,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Convergence {
        converged: false,
        waited: start.elapsed(),
        detail,
    }
}

/// For each fault that took the leader away: the time until the next acknowledged write
/// invoked after it completed.
pub fn availability(faults: &[Fault], ops: &[Op]) -> Vec<Duration> {
    faults
        .iter()
        .filter(|f| f.leader_fault && f.at > 0)
        .filter_map(|f| {
            ops.iter()
                .filter(|o| o.outcome == Outcome::Ok && o.invoke >= f.at)
                .filter(|o| {
                    matches!(
                        o.kind,
                        OpKind::Write(_)
                            | OpKind::Delete
                            | OpKind::Cas {
                                applied: Some(true),
                                ..
                            }
                    )
                })
                .map(|o| o.complete)
                .min()
                .map(|done| Duration::from_nanos(done - f.at))
        })
        .collect()
}

pub struct Report<'a> {
    pub seed: u64,
    pub duration: Duration,
    pub ops: &'a [Op],
    pub faults: &'a [Fault],
    pub verdicts: &'a [(String, Verdict)],
    pub check_time: Duration,
    pub control: Option<&'a Control>,
    pub convergence: &'a Convergence,
    pub final_read_missing: usize,
    pub availability: Vec<Duration>,
    pub unexpected_exits: &'a [String],
    /// The hostile-peer faults' tally, and whether the cluster had a key.
    pub hostile: hostile::Tally,
    pub keyed: bool,
    pub watch: &'a crate::watchers::WatchReport,
    pub leases: &'a crate::leases::LeaseReport,
}

impl Report<'_> {
    /// Prints the report, writes `summary.json` into `out`; returns whether the run passed.
    pub fn print(&self, out: &Path) -> bool {
        let mut by: BTreeMap<String, usize> = BTreeMap::new();
        for o in self.ops {
            let kind = match o.kind {
                OpKind::Write(_) => "write",
                OpKind::Delete => "delete",
                OpKind::Read(_) => "read",
                OpKind::Cas {
                    applied: Some(false),
                    ..
                } => "cas-refused",
                OpKind::Cas { .. } => "cas",
            };
            *by.entry(format!("{kind} {:?}", o.outcome).to_lowercase())
                .or_default() += 1;
        }
        let mut faults: BTreeMap<&str, usize> = BTreeMap::new();
        for f in self.faults {
            *faults.entry(f.kind).or_default() += 1;
        }
        let count = |v: Verdict| self.verdicts.iter().filter(|(_, x)| *x == v).count();
        let (lin, bad, unknown) = (
            count(Verdict::Linearizable),
            count(Verdict::NotLinearizable),
            count(Verdict::Unknown),
        );
        let mut avail = self.availability.clone();
        avail.sort();
        let median = avail.get(avail.len() / 2).copied();
        let control_ok = self.control.is_none_or(|c| c.caught);
        let pass = bad == 0
            && unknown == 0
            && control_ok
            && self.convergence.converged
            && self.final_read_missing == 0
            && self.unexpected_exits.is_empty()
            && self.hostile.answered == 0
            && self.watch.violations.is_empty()
            && self.watch.finished > 0
            && self.leases.violations.is_empty()
            && self.leases.cycles > 0;

        println!(
            "\n=== hraftd-torture report (seed {}, {:?}) ===",
            self.seed, self.duration
        );
        println!("operations: {} total", self.ops.len());
        for (k, n) in &by {
            println!("  {k:<14} {n}");
        }
        println!("faults: {} total", self.faults.len());
        for (k, n) in &faults {
            println!("  {k:<42} {n}");
        }
        println!(
            "linearizability: {} keys checked in {:.1?}: {lin} linearizable, {bad} NOT linearizable, {unknown} unknown",
            self.verdicts.len(),
            self.check_time
        );
        println!(
            "final consistent reads missing: {}",
            self.final_read_missing
        );
        println!(
            "nodes that exited on their own: {}",
            self.unexpected_exits.len()
        );
        println!(
            "convergence: {} after {:.1?} ({})",
            if self.convergence.converged {
                "yes"
            } else {
                "NO"
            },
            self.convergence.waited,
            self.convergence.detail
        );
        println!(
            "hostile peer: {} connections with forged or garbage frames; {} answered by a node{}",
            self.hostile.connections,
            self.hostile.answered,
            if self.keyed {
                " (with -cluster-key: must be 0)"
            } else {
                " (no cluster key: not checked)"
            }
        );
        let w = self.watch;
        println!(
            "watches: {} watchers ({} saw the end), {} reconnects, {} events seen, {} entries in the final histories: {} violations",
            w.watchers,
            w.finished,
            w.reconnects,
            w.events_seen,
            w.history_entries,
            w.violations.len()
        );
        for v in w.violations.iter().take(10) {
            println!("  {v}");
        }
        let l = self.leases;
        let mut vanish = l.vanish_after_ms.clone();
        vanish.sort();
        println!(
            "leases: {} cycles (TTL {:?}), {} keepalives ok, {} failed, {} reads; abandoned keys gone after median {:?} ms, max {:?} ms: {} violations",
            l.cycles,
            crate::leases::TTL,
            l.keepalives_ok,
            l.keepalives_failed,
            l.reads,
            vanish.get(vanish.len() / 2),
            vanish.last(),
            l.violations.len()
        );
        for v in l.violations.iter().take(10) {
            println!("  {v}");
        }
        match self.control {
            Some(c) => println!(
                "negative control (stale read on a partitioned follower): {} (read {:?})",
                if c.caught { "caught" } else { "NOT CAUGHT" },
                c.stale_value
            ),
            None => println!("negative control: skipped (iptables not usable)"),
        }
        println!(
            "availability after leader faults: {} samples, median {:?}, max {:?}",
            avail.len(),
            median,
            avail.last()
        );
        println!("verdict: {}", if pass { "PASS" } else { "FAIL" });

        let summary = json!({
            "seed": self.seed,
            "duration_s": self.duration.as_secs_f64(),
            "ops": by,
            "faults": faults,
            "keys": self.verdicts.len(),
            "linearizable": lin,
            "not_linearizable": bad,
            "unknown": unknown,
            "final_reads_missing": self.final_read_missing,
            "unexpected_exits": self.unexpected_exits,
            "hostile_connections": self.hostile.connections,
            "hostile_answered": self.hostile.answered,
            "cluster_key": self.keyed,
            "converged": self.convergence.converged,
            "control": self.control.map(|c| c.caught),
            "availability_ms": avail.iter().map(|d| d.as_millis() as u64).collect::<Vec<_>>(),
            "watchers": w.watchers,
            "watchers_finished": w.finished,
            "watch_reconnects": w.reconnects,
            "watch_events_seen": w.events_seen,
            "watch_history_entries": w.history_entries,
            "watch_violations": w.violations,
            "lease_cycles": l.cycles,
            "lease_keepalives_ok": l.keepalives_ok,
            "lease_keepalives_failed": l.keepalives_failed,
            "lease_vanish_after_ms": vanish,
            "lease_violations": l.violations,
            "pass": pass,
        });
        let _ = std::fs::write(
            out.join("summary.json"),
            serde_json::to_string_pretty(&summary).unwrap_or_default(),
        );
        pass
    }
}
