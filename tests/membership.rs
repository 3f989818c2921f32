//! Membership: a node joining after the log was purged catches up by snapshot; a removed
//! node shuts itself down and the cluster goes on; removing the leader moves leadership.

mod common;

use std::time::Duration;

use common::TestCluster;
use reqwest::Method;
use reqwest::StatusCode;

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
        c.nodes[j].log_tail()
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
    let name = c.nodes[victim].name.clone();
    let (st, _, v) = c
        .raw(
            leader,
            Method::POST,
            "/remove",
            &format!(r#"{{"id":"{name}"}}"#),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let exit = c.must_exit(victim, Duration::from_secs(30)).await;
    assert!(
        exit.success(),
        "a removed node exits cleanly, got {exit}\n{}",
        c.nodes[victim].log_tail()
    );
    let s = c.status(leader).await.unwrap();
    assert_eq!(s["members"].as_array().unwrap().len(), 2, "{s}");
    c.must_put(leader, "after-remove", "ok").await;
    let other = (0..3).find(|i| *i != leader && *i != victim).unwrap();
    c.must_see(other, "after-remove", "ok").await;
}

#[tokio::test]
async fn removing_the_leader_moves_leadership() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.must_leader().await;
    let name = c.nodes[leader].name.clone();
    let (st, _, v) = c
        .raw(
            leader,
            Method::POST,
            "/remove",
            &format!(r#"{{"id":"{name}"}}"#),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let exit = c.must_exit(leader, Duration::from_secs(30)).await;
    assert!(
        exit.success(),
        "the removed leader exits cleanly, got {exit}\n{}",
        c.nodes[leader].log_tail()
    );
    let new = c.must_leader().await;
    assert_ne!(new, leader);
    c.must_put(new, "k", "v").await;
    let s = c.status(new).await.unwrap();
    assert_eq!(s["members"].as_array().unwrap().len(), 2, "{s}");
}
