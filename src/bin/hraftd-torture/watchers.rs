//! The watch checker: watchers that follow the workload's keys through every fault,
//! resuming with the last index they saw on whichever node answers, and a check of what
//! they saw against the final change history.
//!
//! Each watcher watches the run's prefix in one group. When its stream ends (node killed,
//! paused, partitioned, slow, stopping) it reconnects to a random node from its last index.
//! After the run a marker key is written in every group; watchers stop once they have seen
//! it. The final history of each group is then read from index 0 on every node:
//!
//! - every node's history is the same;
//! - each watcher saw exactly the final history's changes between where it started and
//!   where it stopped: no gap, no duplicate, nothing out of order;
//! - every change is one the workload made (a put of a value some client wrote and did not
//!   see fail; a delete of a key some client deleted), and every acknowledged write is in
//!   the history at the index its answer gave.

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hraftd_client::Client;
use hraftd_client::ErrorCode;
use hraftd_client::WatchItem;
use hraftd_client::WatchTarget;
use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;

use crate::checker::Op;
use crate::checker::OpKind;
use crate::checker::Outcome;
use crate::workload;

/// One change: (key, value; `None` for a delete).
pub type Change = (String, Option<String>);
/// One entry's changes, at its index.
pub type Entry = (u64, Vec<Change>);

/// What one watcher saw.
#[derive(Debug, Default)]
pub struct Recorded {
    pub group: String,
    /// The index its first stream started after.
    pub first: Option<u64>,
    pub entries: Vec<Entry>,
    pub reconnects: usize,
    /// The server said its history no longer reached where the watcher was.
    pub compacted: bool,
    /// It saw the end marker (else it stopped at the deadline).
    pub finished: bool,
}

/// The marker key written in each group after the run.
pub fn marker(prefix: &str) -> String {
    format!("{prefix}-zz-end")
}

fn client_for(group: &str) -> Client {
    workload::for_group(
        workload::builder(false).build().expect("an HTTP client"),
        group,
    )
}

/// Starts `per_group` watchers of `prefix` in each group; they run until they see the
/// marker, or `done` is set and `deadline` has passed since.
pub fn spawn(
    nodes: Vec<String>,
    prefix: String,
    groups: Vec<String>,
    per_group: usize,
    seed: u64,
    done: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Recorded>> {
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for (gi, g) in groups.iter().enumerate() {
            for w in 0..per_group {
                let rng = StdRng::seed_from_u64(seed ^ ((gi as u64) << 32) ^ (w as u64 + 1));
                tasks.push(tokio::spawn(watch(
                    nodes.clone(),
                    prefix.clone(),
                    g.clone(),
                    rng,
                    done.clone(),
                )));
            }
        }
        let mut out = Vec::new();
        for t in tasks {
            if let Ok(r) = t.await {
                out.push(r);
            }
        }
        out
    })
}

/// How long watchers keep going for the marker once the run is over.
const FINISH: Duration = Duration::from_secs(180);

async fn watch(
    nodes: Vec<String>,
    prefix: String,
    group: String,
    mut rng: StdRng,
    done: Arc<AtomicBool>,
) -> Recorded {
    let http = client_for(&group);
    let end = marker(&prefix);
    let mut rec = Recorded {
        group: group.clone(),
        ..Recorded::default()
    };
    let mut done_at: Option<std::time::Instant> = None;
    let mut from: Option<u64> = None;
    loop {
        if done.load(Ordering::Relaxed) {
            let t = *done_at.get_or_insert_with(std::time::Instant::now);
            if t.elapsed() > FINISH {
                return rec;
            }
        }
        let node = &nodes[rng.random_range(0..nodes.len())];
        let target = WatchTarget::Prefix(prefix.clone());
        let started = tokio::time::timeout(
            workload::OP_TIMEOUT,
            http.to([node.clone()]).watch(&target, from),
        )
        .await;
        let mut w = match started {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => {
                if e.code() == Some(ErrorCode::Compacted) {
                    rec.compacted = true;
                    return rec;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(_) => continue,
        };
        w.set_idle(Duration::from_secs(12));
        if rec.first.is_none() {
            rec.first = Some(w.start_index());
        }
        from = Some(w.last_index());
        loop {
            let next = tokio::time::timeout(Duration::from_secs(1), w.next()).await;
            match next {
                // Nothing for a second: see whether the run is over, then go on waiting.
                Err(_) => {
                    if done.load(Ordering::Relaxed) && done_at.is_some_and(|t| t.elapsed() > FINISH)
                    {
                        return rec;
                    }
                    if done.load(Ordering::Relaxed) && done_at.is_none() {
                        done_at = Some(std::time::Instant::now());
                    }
                }
                Ok(Ok(Some(WatchItem::Entry { index, events }))) => {
                    let changes: Vec<Change> =
                        events.into_iter().map(|e| (e.kv.key, e.kv.value)).collect();
                    let last = changes.iter().any(|(k, _)| *k == end);
                    rec.entries.push((index, changes));
                    from = Some(index);
                    if last {
                        rec.finished = true;
                        return rec;
                    }
                }
                Ok(Ok(Some(WatchItem::End(e)))) => {
                    if e.code == "compacted" {
                        rec.compacted = true;
                        return rec;
                    }
                    break;
                }
                Ok(Ok(None)) | Ok(Err(_)) => break,
            }
        }
        rec.reconnects += 1;
    }
}

/// Reads group `group`'s whole history of `prefix` from `node`, up to the marker.
pub async fn full_history(node: &str, prefix: &str, group: &str) -> Result<Vec<Entry>, String> {
    let http = client_for(group).to([node.to_string()]);
    let end = marker(prefix);
    let mut out = Vec::new();
    let mut w = tokio::time::timeout(
        Duration::from_secs(10),
        http.watch(&WatchTarget::Prefix(prefix.to_string()), Some(0)),
    )
    .await
    .map_err(|_| format!("{node}: no answer to a watch from 0"))?
    .map_err(|e| format!("{node}: watch from 0: {e}"))?;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), w.next()).await {
            Ok(Ok(Some(WatchItem::Entry { index, events }))) => {
                let changes: Vec<Change> =
                    events.into_iter().map(|e| (e.kv.key, e.kv.value)).collect();
                let last = changes.iter().any(|(k, _)| *k == end);
                out.push((index, changes));
                if last {
                    return Ok(out);
                }
            }
            other => return Err(format!("{node}: the history from 0 ended early: {other:?}")),
        }
    }
}

/// The watch checker's findings.
#[derive(Debug, Default)]
pub struct WatchReport {
    pub watchers: usize,
    pub finished: usize,
    pub reconnects: usize,
    pub events_seen: usize,
    pub history_entries: usize,
    pub violations: Vec<String>,
}

/// Checks every watcher against the groups' final histories (`histories`: per group, one
/// per node) and the histories against the workload's `ops` and `indexes`.
pub fn check(
    recorded: &[Recorded],
    histories: &HashMap<String, Vec<Result<Vec<Entry>, String>>>,
    ops: &[Op],
    indexes: &HashMap<String, u64>,
    prefix: &str,
) -> WatchReport {
    let mut r = WatchReport {
        watchers: recorded.len(),
        ..Default::default()
    };
    let end = marker(prefix);
    let mut truth: HashMap<&str, &Vec<Entry>> = HashMap::new();
    for (g, per_node) in histories {
        let mut first: Option<&Vec<Entry>> = None;
        for (i, h) in per_node.iter().enumerate() {
            match h {
                Err(e) => r.violations.push(format!("group {g}: node {i}: {e}")),
                Ok(h) => match first {
                    None => first = Some(h),
                    Some(f) if f != h => {
                        let at = f
                            .iter()
                            .zip(h.iter())
                            .position(|(a, b)| a != b)
                            .unwrap_or(f.len().min(h.len()));
                        r.violations.push(format!(
                            "group {g}: node {i}'s history differs from node 0's at entry {at}: {:?} vs {:?}",
                            h.get(at),
                            f.get(at)
                        ));
                    }
                    Some(_) => {}
                },
            }
        }
        if let Some(f) = first {
            truth.insert(g.as_str(), f);
            r.history_entries += f.len();
        }
    }

    // Each watcher against its group's history.
    for (wi, w) in recorded.iter().enumerate() {
        r.reconnects += w.reconnects;
        r.events_seen += w.entries.iter().map(|(_, c)| c.len()).sum::<usize>();
        r.finished += usize::from(w.finished);
        if w.compacted {
            r.violations.push(format!(
                "watcher {wi} (group {}): told its history was compacted",
                w.group
            ));
        }
        let Some(h) = truth.get(w.group.as_str()) else {
            continue;
        };
        let (Some(first), Some(last)) = (w.first, w.entries.last().map(|e| e.0)) else {
            continue;
        };
        let want: Vec<&Entry> = h.iter().filter(|(i, _)| *i > first && *i <= last).collect();
        let got: Vec<&Entry> = w.entries.iter().collect();
        if want != got {
            let at = want
                .iter()
                .zip(got.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(want.len().min(got.len()));
            r.violations.push(format!(
                "watcher {wi} (group {}, after {first}, {} reconnects): entry {at}: saw {:?}, the history has {:?} ({} vs {} entries)",
                w.group,
                w.reconnects,
                got.get(at),
                want.get(at),
                got.len(),
                want.len()
            ));
        }
    }

    // The histories against what the workload did.
    let mut written: HashSet<(&str, &str)> = HashSet::new();
    let mut deleted: HashSet<&str> = HashSet::new();
    for o in ops.iter().filter(|o| o.outcome != Outcome::Fail) {
        match &o.kind {
            OpKind::Write(v) => {
                written.insert((o.key.as_str(), v.as_str()));
            }
            OpKind::Cas {
                new,
                applied: Some(true) | None,
                ..
            } => {
                written.insert((o.key.as_str(), new.as_str()));
            }
            OpKind::Delete => {
                deleted.insert(o.key.as_str());
            }
            _ => {}
        }
    }
    let mut at: HashMap<(&str, u64), Option<&str>> = HashMap::new();
    for h in truth.values() {
        for (index, changes) in h.iter() {
            for (k, v) in changes {
                at.insert((k.as_str(), *index), v.as_deref());
                // Not the workload's: the end marker, and the negative control's key.
                if *k == end || *k == format!("{prefix}-control") {
                    continue;
                }
                let known = match v {
                    Some(v) => written.contains(&(k.as_str(), v.as_str())),
                    None => deleted.contains(k.as_str()),
                };
                if !known {
                    r.violations.push(format!(
                        "index {index}: {k} {} is a change no client made (or one that failed)",
                        match v {
                            Some(v) => format!("= {v}"),
                            None => "deleted".into(),
                        }
                    ));
                }
            }
        }
    }
    for o in ops.iter().filter(|o| o.outcome == Outcome::Ok) {
        let v = match &o.kind {
            OpKind::Write(v) => v,
            OpKind::Cas {
                new,
                applied: Some(true),
                ..
            } => new,
            _ => continue,
        };
        let Some(index) = indexes.get(v) else {
            continue;
        };
        // Two writes of one key in one entry show as its last one, at that index.
        match at.get(&(o.key.as_str(), *index)) {
            Some(Some(_)) => {}
            other => r.violations.push(format!(
                "{} = {v} was acknowledged at index {index}, but the history has {other:?} there",
                o.key
            )),
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(key: &str, kind: OpKind) -> Op {
        Op {
            client: 0,
            key: key.into(),
            kind,
            invoke: 0,
            complete: 1,
            outcome: Outcome::Ok,
        }
    }

    #[test]
    fn gaps_duplicates_and_phantom_changes_are_caught() {
        let p = "t";
        let h: Vec<Entry> = vec![
            (3, vec![("t-a".into(), Some("v1".into()))]),
            (5, vec![("t-a".into(), None)]),
            (7, vec![(marker(p), Some("end".into()))]),
        ];
        let ops = vec![
            op("t-a", OpKind::Write("v1".into())),
            op("t-a", OpKind::Delete),
        ];
        let indexes = HashMap::from([("v1".to_string(), 3)]);
        let histories =
            HashMap::from([("default".to_string(), vec![Ok(h.clone()), Ok(h.clone())])]);
        let good = Recorded {
            group: "default".into(),
            first: Some(2),
            entries: h[..2].to_vec(),
            finished: false,
            ..Default::default()
        };
        let r = check(&[good], &histories, &ops, &indexes, p);
        assert!(r.violations.is_empty(), "{:?}", r.violations);

        // A watcher that missed index 3, one that saw 5 twice, a node that differs, and a
        // value nobody wrote.
        let gap = Recorded {
            group: "default".into(),
            first: Some(2),
            entries: vec![h[1].clone()],
            ..Default::default()
        };
        let dup = Recorded {
            group: "default".into(),
            first: Some(4),
            entries: vec![h[1].clone(), h[1].clone()],
            ..Default::default()
        };
        let mut other = h.clone();
        other[0].1[0].1 = Some("ghost".into());
        let histories = HashMap::from([("default".to_string(), vec![Ok(h.clone()), Ok(other)])]);
        let r = check(&[gap, dup], &histories, &ops, &indexes, p);
        assert_eq!(r.violations.len(), 3, "{:?}", r.violations);
        let one = |index, v: &str| {
            HashMap::from([(
                "default".to_string(),
                vec![Ok(vec![(
                    index,
                    vec![("t-a".to_string(), Some(v.to_string()))],
                )])],
            )])
        };
        let r = check(&[], &one(3, "ghost"), &ops, &indexes, p);
        assert_eq!(
            r.violations.len(),
            1,
            "a put nobody made: {:?}",
            r.violations
        );
        let r = check(&[], &one(4, "v1"), &ops, &indexes, p);
        assert_eq!(
            r.violations.len(),
            1,
            "v1 not at its index: {:?}",
            r.violations
        );
    }
}
