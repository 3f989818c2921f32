//! Multi-Raft groups, end to end with real processes: the walkthrough of issue 11 (a group
//! on some of the nodes, its keys separate from the default group's, non-members sending
//! clients on, members added and removed one at a time, the group deleted), and a member
//! that restarts bringing its groups back.

use reqwest::Method;
use reqwest::StatusCode;
use serde_json::json;
use serde_json::Value;

use crate::common::wait_for;
use crate::common::TestCluster;
use crate::common::DEADLINE;

impl TestCluster {
    /// A request to node `i` that follows redirects (like `curl -L`); status and JSON.
    async fn follow_json(
        &self,
        i: usize,
        method: Method,
        path: &str,
        body: &str,
    ) -> (StatusCode, Value) {
        let r = self
            .follow
            .request(method.clone(), self.nodes[i].url(path))
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path} on node{i}: {e}"));
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    /// Creates group `id` on the given nodes through node `via`; panics unless `201` with a
    /// leader. Returns the group as the answer shows it.
    async fn must_create_group(&self, via: usize, id: &str, members: &[usize]) -> Value {
        let ids: Vec<&str> = members.iter().map(|m| self.nodes[*m].id.as_str()).collect();
        let body = json!({"id": id, "members": ids}).to_string();
        let (s, v) = self.follow_json(via, Method::POST, "/groups", &body).await;
        assert_eq!(
            s,
            StatusCode::CREATED,
            "POST /groups {body}: {v}\n{}",
            self.logs(30)
        );
        assert!(
            v["leader"]["id"].is_string(),
            "a new group has a leader: {v}"
        );
        v
    }

    /// Writes `k` = `v` in group `g` through node `i` (following redirects), retrying
    /// while the group elects a leader; panics unless it succeeds within the deadline.
    async fn must_put_in(&self, i: usize, g: &str, k: &str, v: &str) {
        let path = format!("/groups/{g}/key/{k}");
        wait_for(&format!("PUT {path} via node{i}"), DEADLINE, || async {
            let r = self
                .follow
                .put(self.nodes[i].url(&path))
                .body(v.to_string())
                .send()
                .await;
            r.ok().filter(|r| r.status() == StatusCode::OK).map(drop)
        })
        .await;
    }

    /// Waits until node `i` serves `k` = `v` in group `g` from its own state.
    async fn must_see_in(&self, i: usize, g: &str, k: &str, v: &str) {
        let path = format!("/groups/{g}/key/{k}?level=stale");
        wait_for(
            &format!("node{i} to serve {k}={v} in group {g}"),
            DEADLINE,
            || async {
                let (s, _, body) = self.raw_any(i, Method::GET, &path, "").await?;
                (s == StatusCode::OK && body[k] == v).then_some(())
            },
        )
        .await;
    }

    /// Like `raw`, but `None` while the node does not answer.
    async fn raw_any(
        &self,
        i: usize,
        method: Method,
        path: &str,
        body: &str,
    ) -> Option<(StatusCode, reqwest::header::HeaderMap, Value)> {
        let r = self
            .client
            .request(method, self.nodes[i].url(path))
            .body(body.to_string())
            .send()
            .await
            .ok()?;
        let (s, h) = (r.status(), r.headers().clone());
        let v = r.json().await.unwrap_or(Value::Null);
        Some((s, h, v))
    }

    /// Moves group `g`'s leadership, through node `via` (following redirects), to a voter
    /// other than its leader; panics unless the answer is `200` naming that voter. Returns
    /// the old leader and the new one.
    async fn must_move_leader(&self, via: usize, g: &str) -> (String, String) {
        let (_, v) = self
            .follow_json(0, Method::GET, &format!("/groups/{g}"), "")
            .await;
        let old = v["leader"]["id"].as_str().expect("a leader").to_string();
        let target = self.nodes.iter().find(|n| n.id != old).unwrap().id.clone();
        let body = json!({"id": target}).to_string();
        let started = std::time::Instant::now();
        let (s, v) = self
            .follow_json(via, Method::POST, &format!("/groups/{g}/leader"), &body)
            .await;
        assert_eq!(s, StatusCode::OK, "{g}: {v}\n{}", self.logs(30));
        assert_eq!(v["leader"]["id"], json!(target), "{g}: {v}");
        println!(
            "{g}: leadership moved from {old} to {target} in {:?}",
            started.elapsed()
        );
        (old, target)
    }

    /// Waits until node `i` no longer runs group `g` (its data directory is gone).
    async fn must_not_run(&self, i: usize, g: &str) {
        let dir = self.nodes[i].dir.join("groups").join(g);
        wait_for(&format!("node{i} to drop group {g}"), DEADLINE, || async {
            (!dir.exists()).then_some(())
        })
        .await;
    }
}

/// Issue 11's walkthrough, adapted: a cluster of four nodes; `mykey` in the default group;
/// group g2 on three of them; `mykey` in g2 read from its members; the fourth node sends
/// clients on; a member removed and another added; the group deleted.
#[tokio::test]
async fn the_multi_group_walkthrough() {
    let c = TestCluster::start(4, &[]).await;
    let leader = c.must_leader().await;
    c.must_put(leader, "mykey", "in-default").await;

    // Group g2 on three nodes, not on `outsider`. Its first leader is a member leading
    // no group (the default group's leader leads one already).
    let outsider = (leader + 1) % 4;
    let members: Vec<usize> = (0..4).filter(|i| *i != outsider).collect();
    let g2 = c.must_create_group(outsider, "g2", &members).await;
    let ids: Vec<&str> = members.iter().map(|m| c.nodes[*m].id.as_str()).collect();
    assert_eq!(g2["members"], json!(ids), "{g2}");
    assert_ne!(
        g2["leader"]["id"], c.nodes[leader].id,
        "g2's first leader is not the default group's: {g2}"
    );
    c.must_put_in(members[0], "g2", "mykey", "in-g2").await;
    for m in &members {
        c.must_see_in(*m, "g2", "mykey", "in-g2").await;
    }
    // The groups' keys are separate.
    assert_eq!(
        c.must_get(outsider, "mykey", "consistent").await.as_deref(),
        Some("in-default")
    );
    let (s, v) = c
        .follow_json(
            members[1],
            Method::GET,
            "/groups/g2/key/mykey?level=consistent",
            "",
        )
        .await;
    assert_eq!((s, &v["mykey"]), (StatusCode::OK, &json!("in-g2")), "{v}");

    // A node outside the group sends clients on: leader-only requests to g2's leader,
    // stale reads to a member, with the same path.
    let g2_leader = c
        .follow_json(outsider, Method::GET, "/groups/g2", "")
        .await
        .1["leader"]["http_addr"]
        .as_str()
        .expect("g2 has a leader")
        .to_string();
    for (method, path) in [
        (Method::GET, "/groups/g2/key/mykey"),
        (Method::PUT, "/groups/g2/key/mykey"),
        (Method::GET, "/groups/g2/key/mykey?level=consistent"),
    ] {
        let (s, h, v) = c.raw(outsider, method.clone(), path, "x").await;
        assert_eq!(s, StatusCode::TEMPORARY_REDIRECT, "{method} {path}: {v}");
        let loc = h["location"].to_str().unwrap();
        assert!(
            loc.ends_with(&format!("{g2_leader}{path}")),
            "{method} {path} -> {loc}"
        );
    }
    let (s, h, v) = c
        .raw(
            outsider,
            Method::GET,
            "/groups/g2/key/mykey?level=stale",
            "",
        )
        .await;
    assert_eq!(s, StatusCode::TEMPORARY_REDIRECT, "{v}");
    let loc = h["location"].to_str().unwrap();
    assert!(
        members
            .iter()
            .any(|m| loc.starts_with(&c.nodes[*m].url("/groups/g2/key/mykey"))),
        "a stale read goes to a member: {loc}"
    );
    // Unknown groups are 404, malformed ids 400; nothing is created by asking.
    let (s, _, v) = c
        .raw(leader, Method::GET, "/groups/nope/key/mykey", "")
        .await;
    assert_eq!(
        (s, &v["code"]),
        (StatusCode::NOT_FOUND, &json!("group_not_found")),
        "{v}"
    );
    // A follower of the default group cannot know a group does not exist: it sends the
    // client to the default group's leader (a stale read it answers itself).
    let (s, h, v) = c
        .raw(outsider, Method::GET, "/groups/nope/key/mykey", "")
        .await;
    assert_eq!(s, StatusCode::TEMPORARY_REDIRECT, "{v}");
    assert!(h["location"]
        .to_str()
        .unwrap()
        .starts_with(&c.nodes[leader].url("/groups/nope")));
    let (s, _, v) = c
        .raw(
            outsider,
            Method::GET,
            "/groups/nope/key/mykey?level=stale",
            "",
        )
        .await;
    assert_eq!(
        (s, &v["code"]),
        (StatusCode::NOT_FOUND, &json!("group_not_found")),
        "{v}"
    );
    let (s, _, v) = c
        .raw(leader, Method::PUT, "/groups/no%20pe/key/mykey", "x")
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _, v) = c.raw(leader, Method::GET, "/groups", "").await;
    assert_eq!(s, StatusCode::OK);
    let listed: Vec<&str> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["default", "g2"], "{v}");
    assert_eq!(
        v["groups"][0]["nodes"].as_array().map(Vec::len),
        Some(4),
        "every node reports its view of the default group: {v}"
    );

    // Per-group status, metrics and backup on a member.
    let (s, _, v) = c
        .raw(members[1], Method::GET, "/groups/g2/status", "")
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["members"].as_array().map(Vec::len), Some(3), "{v}");
    let text = c.metrics_text(members[1]).await;
    assert!(
        text.contains("hraftd_group_applied_index{group=\"g2\"}")
            && text.contains("hraftd_group_applied_index{group=\"default\"}"),
        "per-group metrics: {text}"
    );
    let r = c
        .follow
        .get(c.nodes[members[1]].url("/groups/g2/backup?level=stale"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["x-hraftd-keys"],
        "1",
        "g2's backup holds g2's one key"
    );
    let (s, h, _) = c.raw(outsider, Method::GET, "/groups/g2/status", "").await;
    assert_eq!(s, StatusCode::TEMPORARY_REDIRECT, "{h:?}");

    // Remove a member: it leaves g2 only (its data goes), and keeps serving the default
    // group; g2 goes on with the others.
    let leaving = members[2];
    let path = format!("/groups/g2/members/{}", c.nodes[leaving].id);
    let (s, v) = c.follow_json(outsider, Method::DELETE, &path, "").await;
    assert_eq!(s, StatusCode::OK, "{v}\n{}", c.logs(30));
    assert!(
        !v["members"]
            .as_array()
            .unwrap()
            .contains(&json!(c.nodes[leaving].id)),
        "{v}"
    );
    c.must_not_run(leaving, "g2").await;
    let (s, _, _) = c
        .raw(leaving, Method::GET, "/groups/g2/key/mykey?level=stale", "")
        .await;
    assert_eq!(
        s,
        StatusCode::TEMPORARY_REDIRECT,
        "a former member sends clients on"
    );
    assert_eq!(
        c.must_get(leaving, "mykey", "stale").await.as_deref(),
        Some("in-default")
    );
    c.must_put_in(members[0], "g2", "after", "removal").await;
    c.must_see_in(members[1], "g2", "after", "removal").await;

    // Add the outsider: learner, then voter; it catches up with everything.
    let body = json!({"id": c.nodes[outsider].id}).to_string();
    let (s, v) = c
        .follow_json(leader, Method::POST, "/groups/g2/members", &body)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}\n{}", c.logs(30));
    c.must_see_in(outsider, "g2", "mykey", "in-g2").await;
    c.must_see_in(outsider, "g2", "after", "removal").await;
    let (s, v) = c.follow_json(outsider, Method::GET, "/groups/g2", "").await;
    assert_eq!(s, StatusCode::OK);
    let voter = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["id"] == json!(c.nodes[outsider].id) && n["voter"] == json!(true));
    assert!(voter, "the added node votes in g2: {v}");

    // Delete the group: gone from the catalogue and from every member's disk.
    let (s, v) = c
        .follow_json(outsider, Method::DELETE, "/groups/g2", "")
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _, _) = c.raw(leader, Method::GET, "/groups/g2", "").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    for i in 0..4 {
        c.must_not_run(i, "g2").await;
    }
    assert_eq!(
        c.must_get(leader, "mykey", "consistent").await.as_deref(),
        Some("in-default")
    );
}

/// A member that is killed and restarted brings its groups back, and catches up with what
/// was written while it was down.
#[tokio::test]
async fn a_restarted_member_brings_its_groups_back() {
    let mut c = TestCluster::start(3, &[]).await;
    c.must_create_group(0, "ga", &[0, 1, 2]).await;
    c.must_create_group(0, "gb", &[0, 1, 2]).await;
    for g in ["ga", "gb"] {
        c.must_put_in(0, g, "k", g).await;
    }
    c.must_see_in(2, "ga", "k", "ga").await;
    c.kill(2);
    for g in ["ga", "gb"] {
        c.must_put_in(0, g, "later", g).await;
    }
    c.restart(2);
    for g in ["ga", "gb"] {
        c.must_see_in(2, g, "k", g).await;
        c.must_see_in(2, g, "later", g).await;
    }
}

/// `POST /groups/<g>/leader` moves a group's leadership to the voter named, and the
/// default group's too; what was written before is still there, and writes go on.
#[tokio::test]
async fn leadership_moves_to_the_voter_named() {
    let c = TestCluster::start(3, &[]).await;
    c.must_create_group(0, "gt", &[0, 1, 2]).await;
    c.must_put_in(0, "gt", "before", "1").await;
    for g in ["gt", "default"] {
        c.must_move_leader(2, g).await;
        // Not a voter: 400, and nothing moves.
        let (s, _, v) = c
            .raw(
                0,
                Method::POST,
                &format!("/groups/{g}/leader"),
                r#"{"id":"nobody"}"#,
            )
            .await;
        assert!(
            s == StatusCode::BAD_REQUEST || s == StatusCode::TEMPORARY_REDIRECT,
            "{g}: {s} {v}"
        );
    }
    c.must_put_in(1, "gt", "after", "2").await;
    let (s, v) = c
        .follow_json(0, Method::GET, "/groups/gt/key/before?level=consistent", "")
        .await;
    assert_eq!((s, &v["before"]), (StatusCode::OK, &json!("1")), "{v}");
    assert_eq!(c.must_get(0, "mykey", "consistent").await, None);
}

/// A member that was down while its groups purged their logs catches up each of them by
/// snapshot when it comes back.
#[tokio::test]
async fn a_member_down_past_a_purge_catches_up_every_group_by_snapshot() {
    let mut c = TestCluster::start(3, &["-snapshot-threshold", "20"]).await;
    c.must_create_group(0, "gs1", &[0, 1, 2]).await;
    c.must_create_group(0, "gs2", &[0, 1, 2]).await;
    c.must_put_in(0, "gs1", "first", "1").await;
    c.must_see_in(2, "gs1", "first", "1").await;
    c.kill(2);
    for g in ["gs1", "gs2"] {
        for i in 0..60 {
            c.must_put_in(0, g, &format!("k{i:02}"), &format!("{g}-{i}"))
                .await;
        }
    }
    c.restart(2);
    for g in ["gs1", "gs2"] {
        c.must_see_in(2, g, "k59", &format!("{g}-59")).await;
        c.must_see_in(2, g, "k07", &format!("{g}-7")).await;
    }
    let log = std::fs::read_to_string(&c.nodes[2].log).unwrap();
    assert!(
        log.matches("installed snapshot").count() >= 2,
        "node2 installs a snapshot of each group:\n{}",
        c.nodes[2].log_tail(40)
    );
}

/// A group's backup (`GET /groups/<g>/backup`) restores into another group with
/// `hraftd load`, through the HTTP API; the catalogue never travels in a backup.
#[tokio::test]
async fn a_group_backup_loads_into_another_group() {
    let c = TestCluster::start(3, &[]).await;
    c.must_create_group(0, "src", &[0, 1, 2]).await;
    c.must_create_group(0, "dst", &[0, 1, 2]).await;
    for i in 0..50 {
        c.must_put_in(0, "src", &format!("k{i:02}"), &format!("v{i}"))
            .await;
    }
    let r = c
        .follow
        .get(c.nodes[1].url("/groups/src/backup?level=consistent"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let file = c.tmp.path().join("src.snap");
    std::fs::write(&file, r.bytes().await.unwrap()).unwrap();
    let out = std::process::Command::new(crate::common::bin())
        .args([
            "load",
            "--from",
            file.to_str().unwrap(),
            "--group",
            "dst",
            "--to",
        ])
        .arg(
            c.nodes
                .iter()
                .map(|n| n.http.clone())
                .collect::<Vec<_>>()
                .join(","),
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("loaded 50 keys"), "{said}");
    c.must_see_in(2, "dst", "k49", "v49").await;
    c.must_see_in(2, "dst", "k00", "v0").await;
    // A backup of the default group holds the catalogue; loading it restores no group
    // and no key that was not a client's.
    let r = c
        .follow
        .get(c.nodes[0].url("/backup"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["x-hraftd-keys"],
        "0",
        "no client keys in the default group"
    );
}

/// Idle groups keep their leaders on the node's heartbeat ticker alone (openraft's own
/// heartbeat timers are off for catalogue groups), and their heartbeats to a peer travel
/// together, several to a frame.
#[tokio::test]
async fn idle_groups_keep_their_leaders_on_coalesced_heartbeats() {
    let c = TestCluster::start(3, &[]).await;
    let ids: Vec<String> = (0..9).map(|i| format!("hb{i}")).collect();
    for g in &ids {
        c.must_create_group(0, g, &[0, 1, 2]).await;
    }
    let leaders = || async {
        let (s, v) = c.follow_json(0, Method::GET, "/groups", "").await;
        assert_eq!(s, StatusCode::OK, "GET /groups: {v}");
        let list: hraftd_client::wire::GroupList = serde_json::from_value(v).expect("a group list");
        list.groups
            .into_iter()
            .filter(|g| g.id.starts_with("hb"))
            .map(|g| (g.id.clone(), (g.term, g.leader_id().map(str::to_string))))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let counts = || async {
        let mut frames = 0.0;
        let mut beats = 0.0;
        for i in 0..3 {
            frames += c.metric(i, "hraftd_peer_heartbeat_frames_total").await;
            beats += c.metric(i, "hraftd_peer_heartbeats_total").await;
        }
        (frames, beats)
    };
    let before = leaders().await;
    assert_eq!(before.len(), ids.len(), "{before:?}");
    let (f0, b0) = counts().await;
    // 20 heartbeat intervals' worth (9 groups, 2 followers each): 3 s, past the longest
    // leader lease and election timeout (1.4 s) twice over, so a follower left without heartbeats would
    // have started an election.
    let want = (ids.len() * 2 * 20) as f64;
    let (f1, b1) = wait_for(
        &format!("the nodes to send {want} more group heartbeats"),
        DEADLINE,
        || async {
            let (f, b) = counts().await;
            (b - b0 >= want).then_some((f, b))
        },
    )
    .await;
    let after = leaders().await;
    assert_eq!(
        before,
        after,
        "idle groups keep their terms and leaders\n{}",
        c.logs(30)
    );
    let (frames, beats) = (f1 - f0, b1 - b0);
    println!(
        "{beats} group heartbeats in {frames} frames ({:.1} per frame)",
        beats / frames
    );
    assert!(
        beats >= 2.0 * frames,
        "heartbeats of different groups share frames: {beats} heartbeats in {frames} frames"
    );
}

/// In a group of five voters the old leader's vote and the target's are no majority, and
/// openraft 0.9's followers refuse to vote while they hear from their leader: the transfer
/// goes silent towards them for a lease first, and the named voter leads, twice in a row.
#[tokio::test]
async fn leadership_moves_in_a_group_of_five_voters() {
    let c = TestCluster::start(5, &[]).await;
    c.must_create_group(0, "g5", &[0, 1, 2, 3, 4]).await;
    c.must_put_in(0, "g5", "before", "1").await;
    for _ in 0..2 {
        c.must_move_leader(1, "g5").await;
    }
    c.must_put_in(2, "g5", "after", "2").await;
    let (s, v) = c
        .follow_json(0, Method::GET, "/groups/g5/key/before?level=consistent", "")
        .await;
    assert_eq!((s, &v["before"]), (StatusCode::OK, &json!("1")), "{v}");
}
