//! `hraftctl`, the command-line client, against a real cluster: every command, its table
//! and `--json` output, the endpoint list (`-H`, `HRAFTD_ENDPOINTS`) with a dead node in
//! it, and the exit codes scripts rely on (0 ok, 1 not found, 2 usage, 3 unavailable).

use std::process::Output;

use crate::common::free_port;
use crate::common::TestCluster;

/// Runs `hraftctl` with `args`, `HRAFTD_ENDPOINTS` set to `env` (when given) and a
/// deadline; panics if it cannot run or hangs.
async fn hraftctl(env: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hraftctl"));
    cmd.args(args)
        .env_remove("HRAFTD_ENDPOINTS")
        .kill_on_drop(true);
    if let Some(e) = env {
        cmd.env("HRAFTD_ENDPOINTS", e);
    }
    tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("hraftctl {args:?} did not finish within 60 s"))
        .unwrap_or_else(|e| panic!("running hraftctl {args:?}: {e}"))
}

/// Runs `hraftctl` and requires exit code `code`; returns its standard output.
async fn must(code: i32, env: Option<&str>, args: &[&str]) -> String {
    let out = hraftctl(env, args).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "hraftctl {args:?}: stdout {stdout:?}, stderr {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn hraftctl_reads_writes_and_manages_a_cluster() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.must_leader().await;
    let follower = (leader + 1) % 3;
    let dead = format!("127.0.0.1:{}", free_port());
    // A dead endpoint first, then a follower: writes follow the 307 to the leader.
    let eps = format!("{dead},{}", c.nodes[follower].http);
    let h = ["-H", eps.as_str()];

    let out = must(0, None, &[&h[..], &["put", "user1", "batman"]].concat()).await;
    assert!(out.starts_with("OK index "), "{out}");
    let out = must(
        0,
        None,
        &[&h[..], &["get", "user1", "--level", "consistent"]].concat(),
    )
    .await;
    assert_eq!(out, "batman\n");
    // The same through HRAFTD_ENDPOINTS, as JSON.
    let out = must(0, Some(&eps), &["get", "user1", "--json"]).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::json!({"user1": "batman"})
    );
    // A stale read from the follower itself.
    let out = must(
        0,
        None,
        &[
            "-H",
            &c.nodes[follower].http,
            "get",
            "user1",
            "--level",
            "stale",
        ],
    )
    .await;
    assert_eq!(out, "batman\n");

    // Not found is 1; a bad level and a bad key (empty) are usage errors, 2.
    must(1, None, &[&h[..], &["get", "nobody"]].concat()).await;
    must(
        2,
        None,
        &[&h[..], &["get", "user1", "--level", "eventual"]].concat(),
    )
    .await;
    must(2, None, &[&h[..], &["put", "", "v"]].concat()).await;
    must(0, None, &[&h[..], &["del", "user1"]].concat()).await;
    must(
        1,
        None,
        &[&h[..], &["get", "user1", "--level", "consistent"]].concat(),
    )
    .await;

    // status and members.
    let out = must(0, None, &[&h[..], &["status", "--json"]].concat()).await;
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        s["leader"]["id"],
        serde_json::json!(c.nodes[leader].id),
        "{s}"
    );
    let out = must(0, None, &[&h[..], &["members"]].concat()).await;
    assert_eq!(out.lines().count(), 4, "a header and three members: {out}");
    for n in &c.nodes {
        assert!(out.contains(&n.id), "{} missing: {out}", n.id);
    }

    // backup: a whole file, which `hraftd` can verify.
    must(0, None, &[&h[..], &["put", "kept", "yes"]].concat()).await;
    let file = c.tmp.path().join("hraftctl.backup");
    let f = file.to_str().unwrap();
    let out = must(
        0,
        None,
        &[&h[..], &["backup", f, "--level", "consistent"]].concat(),
    )
    .await;
    assert!(out.starts_with("wrote "), "{out}");
    let info = hraftd_store::backup::verify(&file).expect("a whole backup");
    assert_eq!(info.keys, 1, "{info:?}");
    // --group: the default group named, through /groups/default/key.
    let out = must(
        0,
        None,
        &[&h[..], &["--group", "default", "get", "kept"]].concat(),
    )
    .await;
    assert_eq!(out, "yes\n");
    must(
        2,
        None,
        &[&h[..], &["--group", "bad group!", "get", "kept"]].concat(),
    )
    .await;

    // join (of a member: a no-op that answers as a join does) and remove (of a fourth node).
    let n = &c.nodes[follower];
    let (id, raft, http) = (n.id.clone(), n.raft.clone(), n.http.clone());
    let out = must(0, None, &[&h[..], &["join", &id, &raft, &http]].concat()).await;
    assert!(out.starts_with(&format!("joined {id} at index ")), "{out}");
    let i = c.must_join_new_node().await;
    let id = c.nodes[i].id.clone();
    let out = must(0, None, &[&h[..], &["remove", &id]].concat()).await;
    assert_eq!(out, format!("removed {id}\n"));
    let s = c.status(leader).await.unwrap();
    assert!(s.members.iter().all(|m| m.id != id), "{s:?}");

    // No endpoint answers: unavailable, 3.
    must(3, None, &["-H", &dead, "--timeout", "5", "get", "kept"]).await;
}
