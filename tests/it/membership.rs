//! Membership: a node joining after the log was purged catches up by snapshot; a removed
//! node shuts itself down and the cluster goes on; removing the leader moves leadership.

use std::time::Duration;

use crate::common::TestCluster;

#[tokio::test]
async fn node_joining_after_log_purge_gets_a_snapshot() {
    let mut c = TestCluster::start(1, &["-snapshot-threshold", "20"]).await;
    for i in 0..120 {
        c.must_put(0, &format!("k{i:03}"), &format!("v{i}")).await;
    }
    let j = c.must_join_new_node().await;
    c.must_see(j, "k119", "v119").await;
    for i in (0..120).step_by(7) {
        assert_eq!(
            c.must_get(j, &format!("k{i:03}"), "stale").await,
            Some(format!("v{i}"))
        );
    }
    let log = std::fs::read_to_string(&c.nodes[j].log).unwrap();
    assert!(
        log.contains("installed snapshot"),
        "node{j} should have installed a snapshot:\n{}",
        c.nodes[j].log_tail(30)
    );
    // Snapshot files on disk: complete, and only the newest kept.
    let snaps: Vec<_> = std::fs::read_dir(c.nodes[0].dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        snaps.iter().filter(|n| n.ends_with(".snap")).count(),
        1,
        "{snaps:?}"
    );
    // And it keeps replicating normally afterwards.
    c.must_put(0, "later", "x").await;
    c.must_see(j, "later", "x").await;
}

#[tokio::test]
async fn removed_node_exits_and_cluster_goes_on() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.must_leader().await;
    let victim = (leader + 1) % 3;
    let name = c.nodes[victim].id.clone();
    c.must_remove(leader, &name).await;
    c.must_exit_cleanly(victim, Duration::from_secs(30)).await;
    let s = c.status(leader).await.unwrap();
    assert_eq!(s.members.len(), 2, "{s:?}");
    c.must_put(leader, "after-remove", "ok").await;
    let other = (0..3).find(|i| *i != leader && *i != victim).unwrap();
    c.must_see(other, "after-remove", "ok").await;
}

#[tokio::test]
async fn removing_the_leader_moves_leadership() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.must_leader().await;
    let name = c.nodes[leader].id.clone();
    c.must_remove(leader, &name).await;
    c.must_exit_cleanly(leader, Duration::from_secs(30)).await;
    let new = c.must_leader().await;
    assert_ne!(new, leader);
    c.must_put(new, "k", "v").await;
    let s = c.status(new).await.unwrap();
    assert_eq!(s.members.len(), 2, "{s:?}");
}

#[tokio::test]
async fn node_down_past_log_purge_catches_up_by_snapshot() {
    let mut c = TestCluster::start(3, &["-snapshot-threshold", "20"]).await;
    let (leader, lagger) = c.must_leave_a_follower_behind(150).await;
    let before = std::fs::read_to_string(&c.nodes[lagger].log).unwrap().len();
    c.restart(lagger);
    c.must_see(lagger, "k149", "v149").await;
    assert_eq!(
        c.must_get(lagger, "first", "stale").await.as_deref(),
        Some("1")
    );
    let log = std::fs::read_to_string(&c.nodes[lagger].log).unwrap();
    assert!(
        log[before..].contains("installed snapshot"),
        "the restarted node should have caught up by snapshot:\n{}",
        c.nodes[lagger].log_tail(30)
    );
    // Entries appended after the snapshot, then another crash and restart: its log must
    // still be whole (a purge skipped during the install once left a gap here, and the
    // node could not start again).
    // (Fewer entries than the snapshot threshold, so no newer snapshot tidies the log.)
    for i in 0..5 {
        c.must_put(leader, &format!("after{i}"), "x").await;
    }
    c.must_see(lagger, "after4", "x").await;
    c.kill(lagger);
    c.restart(lagger);
    c.must_put(leader, "last", "y").await;
    c.must_see(lagger, "last", "y").await;
}

#[tokio::test]
async fn same_id_with_new_addresses_replaces_the_member() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.must_leader().await;
    c.must_put(leader, "k", "v").await;
    let moved = (leader + 1) % 3;
    c.kill(moved);
    // The same node id comes back on new ports with a fresh data dir.
    let n = &mut c.nodes[moved];
    n.http = format!("127.0.0.1:{}", crate::common::free_port());
    n.raft = format!("127.0.0.1:{}", crate::common::free_port());
    n.dir = n.dir.with_extension("moved");
    let (name, raft) = (n.id.clone(), n.raft.clone());
    let join = c.nodes[leader].http.clone();
    c.spawn(moved, Some(&join));
    c.must_be_voter(&name).await;
    let s = c.status(leader).await.unwrap();
    assert_eq!(s.members.len(), 3, "{s:?}");
    let m = s.members.iter().find(|m| m.id == name).unwrap();
    assert_eq!(m.raft_addr, raft, "{s:?}");
    c.must_see(moved, "k", "v").await;
}

#[tokio::test]
async fn join_catches_up_when_log_batches_are_large() {
    // 24 values of 600 KB: a full batch of entries is far beyond what one append RPC may
    // carry, so the leader has to split it.
    let mut c = TestCluster::start(1, &["-body-limit", "2000000"]).await;
    let big = "x".repeat(600_000);
    for i in 0..24 {
        c.must_put(0, &format!("big{i}"), &big).await;
    }
    let j = c.must_join_new_node().await;
    c.must_see(j, "big23", &big).await;
}

#[tokio::test]
async fn removed_node_rejoins_fresh_under_the_same_name() {
    // Small snapshots, so the re-joining node gets one from before its removal and then
    // replays its own removal from the log: history it must not act on.
    let mut c = TestCluster::start(3, &["-snapshot-threshold", "20"]).await;
    let leader = c.must_leader().await;
    // Write until the leader's newest snapshot is close behind its log, so the removal
    // below lands after that snapshot and before the next one.
    let mut n = 0;
    loop {
        c.must_put(leader, &format!("k{n}"), "v").await;
        n += 1;
        let applied = c.status(leader).await.unwrap().applied_index;
        let snap = newest_snapshot_index(&c.nodes[leader].dir);
        if snap.is_some_and(|s| s >= 20 && applied - s <= 12) {
            break;
        }
        assert!(n < 200, "no snapshot close to the log tip after {n} writes");
    }
    let victim = (leader + 1) % 3;
    let name = c.nodes[victim].id.clone();
    c.must_remove(leader, &name).await;
    c.must_exit_cleanly(victim, Duration::from_secs(30)).await;
    std::fs::remove_dir_all(&c.nodes[victim].dir).unwrap();
    let join = c.nodes[leader].http.clone();
    c.spawn(victim, Some(&join));
    c.must_be_voter(&name).await;
    for round in 0..2 {
        c.must_put(leader, &format!("back{round}"), "v").await;
        c.must_see(victim, &format!("back{round}"), "v").await;
    }
    let still_running = c.nodes[victim].is_running();
    assert!(
        still_running,
        "the re-joined node shut itself down:\n{}",
        c.nodes[victim].log_tail(30)
    );
}

/// The log index of the newest snapshot file in a node's data dir (`<term>-<index>-<ms>.snap`).
fn newest_snapshot_index(dir: &std::path::Path) -> Option<u64> {
    std::fs::read_dir(dir.join("snapshots"))
        .ok()?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".snap")?;
            stem.split('-').nth(1)?.parse().ok()
        })
        .max()
}
