//! Bounded resources and crash safety on the storage side: entries too large to replicate,
//! backups that could fill the disk, a fatal storage error, a crash in the middle of a
//! snapshot install, and a restore that fails midway.

use std::process::Command;

use crate::common::*;
use reqwest::Method;
use reqwest::StatusCode;

/// Found by review: a 1 MiB body of many tiny pairs encoded to far more than an entry can
/// carry inside openraft's per-append deadline. It now gets 413 and changes nothing, and
/// a body of the same size with few pairs is accepted.
#[tokio::test]
async fn a_request_too_large_for_one_entry_is_413_and_changes_nothing() {
    let c = TestCluster::start(1, &[]).await;
    let mut body = serde_json::Map::new();
    for i in 0..75_000 {
        body.insert(format!("k{i:06}"), serde_json::Value::String(String::new()));
    }
    let body = serde_json::Value::Object(body).to_string();
    assert!(body.len() < 1 << 20, "within the HTTP body limit");
    let (s, _, v) = c.raw(0, Method::POST, "/key", &body).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("one log entry"),
        "{v}"
    );
    assert_eq!(c.must_get(0, "k000000", "consistent").await, None);
    let big = serde_json::json!({ "big": "x".repeat(1_000_000) }).to_string();
    let (s, _, v) = c.raw(0, Method::POST, "/key", &big).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// Each `/backup` is a full copy of the data on disk until its reader is done: at most two
/// exist at once, so readers that stall cannot fill the disk. A third gets 503 until one
/// of them goes away.
#[tokio::test]
async fn two_stalled_backup_readers_cannot_fill_the_disk() {
    let c = TestCluster::start(1, &[]).await;
    // Larger than the socket buffers, so a reader that does not read stalls the sender.
    for i in 0..12 {
        c.must_put(0, &format!("big{i}"), &"v".repeat(1_000_000))
            .await;
    }
    let url = c.nodes[0].url("/backup");
    let first = c.client.get(&url).send().await.unwrap();
    let second = c.client.get(&url).send().await.unwrap();
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    let third = c.client.get(&url).send().await.unwrap();
    assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(third.headers().contains_key("retry-after"));
    let v: serde_json::Value = third.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("backups"), "{v}");
    // One reader leaves: its slot frees.
    drop(first);
    let again = wait_for("a backup slot to free", DEADLINE, || async {
        let r = c.client.get(&url).send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(r)
    })
    .await;
    let bytes = again.bytes().await.unwrap();
    assert!(bytes.len() > 12_000_000);
    drop(second);
}

/// A node whose disk fills up stops on openraft's fatal storage error and exits non-zero
/// (so an orchestrator restarts it), instead of running on without Raft.
#[tokio::test]
async fn a_fatal_storage_error_ends_the_process_non_zero() {
    let mnt = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(mnt.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED a_fatal_storage_error_ends_the_process_non_zero: cannot mount a small tmpfs (needs root)");
        return;
    }
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _unmount = Unmount(mnt.path());
    let mut c = TestCluster::empty(&[]);
    let i = c.new_node();
    c.nodes[i].dir = mnt.path().join("node0");
    c.spawn(i, None);
    c.must_leader().await;
    let value = "x".repeat(1_000_000);
    let mut n = 0;
    let exited = loop {
        if !c.is_running(i) {
            break true;
        }
        if n > 200 {
            break false;
        }
        let body = serde_json::json!({ format!("k{n}"): value }).to_string();
        let _ = c
            .client
            .post(c.nodes[i].url("/key"))
            .body(body)
            .send()
            .await;
        n += 1;
    };
    assert!(
        exited,
        "the node kept running after {n} writes to a full disk"
    );
    let st = c.must_exit(i, DEADLINE).await;
    assert!(!st.success(), "exit status {st}\n{}", c.logs(30));
    let log = std::fs::read_to_string(&c.nodes[i].log).unwrap();
    assert!(
        log.contains("fatal"),
        "the reason is logged:\n{}",
        c.nodes[i].log_tail(30)
    );
}

/// Found by review: a crash between publishing a received snapshot and marking its install
/// left snapshot metadata ahead of the applied state. A crash injected exactly there (a
/// test fail point) now recovers: the node restarts, finishes or redoes the install, and
/// serves every key.
#[tokio::test]
async fn a_crash_between_snapshot_publish_and_install_recovers() {
    let mut c = TestCluster::start(3, &["-snapshot-threshold", "20"]).await;
    let (leader, lagger) = c.must_leave_a_follower_behind(100).await;
    c.nodes[lagger].env = vec![(
        "HRAFTD_TEST_FAILPOINT".into(),
        "after-snapshot-publish".into(),
    )];
    c.restart(lagger);
    let st = c.must_exit(lagger, DEADLINE).await;
    assert!(!st.success(), "the fail point aborts the process");
    c.must_log(lagger, "test fail point after-snapshot-publish")
        .await;
    c.nodes[lagger].env.clear();
    c.restart(lagger);
    c.must_see(lagger, "k099", "v99").await;
    assert_eq!(
        c.must_get(lagger, "first", "stale").await.as_deref(),
        Some("1")
    );
    c.must_put(leader, "after", "x").await;
    c.must_see(lagger, "after", "x").await;
}

/// A restore that is killed midway leaves no DATA_DIR a node could start on (it builds
/// beside it and renames at the end), and the next restore cleans up and succeeds.
#[tokio::test]
async fn a_restore_killed_midway_leaves_nothing_startable() {
    let c = TestCluster::start(1, &[]).await;
    for chunk in 0..20 {
        let mut body = serde_json::Map::new();
        for i in 0..500 {
            body.insert(
                format!("k{chunk:02}-{i:03}"),
                serde_json::Value::String("v".repeat(100)),
            );
        }
        let (s, _, v) = c
            .raw(
                0,
                Method::POST,
                "/key",
                &serde_json::Value::Object(body).to_string(),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let backup = c.tmp.path().join("b.snap");
    let bytes = c
        .follow
        .get(c.nodes[0].url("/backup"))
        .send()
        .await
        .unwrap();
    std::fs::write(&backup, bytes.bytes().await.unwrap()).unwrap();

    let target = c.tmp.path().join("restored");
    let building = c.tmp.path().join(".restored.restoring");
    let mut child = Command::new(bin())
        .args(["restore", "--from"])
        .arg(&backup)
        .arg(&target)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let seen = wait_for("the restore to start building", DEADLINE, || {
        let done = child.try_wait().ok().flatten().is_some();
        let started = building.join("raft").exists();
        async move { (started || done).then_some(started) }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    if seen {
        assert!(
            !target.exists(),
            "a killed restore left {}",
            target.display()
        );
    }
    // The next restore removes the leftovers and completes.
    let out = Command::new(bin())
        .args(["restore", "--from"])
        .arg(&backup)
        .arg(&target)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!building.exists());
    assert!(target.join("raft").exists());
    let again = Command::new(bin())
        .args(["restore", "--from"])
        .arg(&backup)
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "a second restore into it is refused"
    );
}

/// The write queue is bounded: when the leader cannot commit (its only follower is down),
/// writes pile up to the queue's limit (64 MiB here, with 1 MB values) and further writes
/// are refused at once with 503 + Retry-After instead of queueing without bound.
#[tokio::test]
async fn a_full_write_queue_answers_503() {
    let mut c = TestCluster::start(2, &[]).await;
    let leader = c.must_leader().await;
    let follower = 1 - leader;
    c.kill(follower);
    let url = c.nodes[leader].url("/key");
    let value = "v".repeat(1_000_000);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let client = c.client.clone();
        let url = url.clone();
        let body = serde_json::json!({ format!("q{i}"): value }).to_string();
        tasks.push(tokio::spawn(async move {
            let r = client.post(&url).body(body).send().await.ok()?;
            let retry = r.headers().contains_key("retry-after");
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            Some((status, retry, text))
        }));
    }
    let mut busy = 0;
    let mut timed_out = 0;
    for t in tasks {
        let Some((status, retry, text)) = t.await.unwrap() else {
            continue;
        };
        match status {
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(retry, "503 without Retry-After: {text}");
                assert!(text.contains("too many writes"), "{text}");
                busy += 1;
            }
            StatusCode::GATEWAY_TIMEOUT => timed_out += 1,
            other => panic!("unexpected {other}: {text}"),
        }
    }
    assert!(
        busy > 0,
        "no write was refused as busy ({timed_out} timed out)"
    );
    assert!(timed_out > 0, "the queue took nothing ({busy} refused)");
    // Once the follower is back, the leader commits again.
    c.restart(follower);
    c.must_put(leader, "after", "ok").await;
}
