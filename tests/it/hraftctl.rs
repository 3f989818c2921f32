//! `hraftctl`, the command-line client, against a real cluster: every command, its table
//! and `--json` output, the endpoint list (`-H`, `HRAFTD_ENDPOINTS`) with a dead node in
//! it, and the exit codes scripts rely on (0 ok, 1 not found, 2 usage, 3 unavailable).

use std::process::Output;

use crate::auth::auth_file;
use crate::auth::hash;
use crate::common::free_port;
use crate::common::TestCluster;

/// Runs `hraftctl` with `args`, the environment variables `env` (and no inherited
/// `HRAFTD_*`), `stdin` as its standard input (none: empty) and a deadline; panics if it
/// cannot run or hangs.
async fn hraftctl_with(env: &[(&str, &str)], args: &[&str], stdin: &str) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hraftctl"));
    cmd.args(args)
        .env_remove("HRAFTD_ENDPOINTS")
        .env_remove("HRAFTD_PASSWORD")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("running hraftctl {args:?}: {e}"));
    let mut input = child.stdin.take().expect("stdin is piped");
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("hraftctl {args:?} did not finish within 60 s"))
        .unwrap_or_else(|e| panic!("running hraftctl {args:?}: {e}"))
}

async fn hraftctl(env: &[(&str, &str)], args: &[&str]) -> Output {
    hraftctl_with(env, args, "").await
}

/// Runs `hraftctl` with `stdin` and requires exit code `code`; returns its standard output.
async fn must_with_stdin(code: i32, env: &[(&str, &str)], args: &[&str], stdin: &str) -> String {
    let out = hraftctl_with(env, args, stdin).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "hraftctl {args:?}: stdout {stdout:?}, stderr {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs `hraftctl` and requires exit code `code`; returns its standard output.
async fn must(code: i32, env: &[(&str, &str)], args: &[&str]) -> String {
    must_with_stdin(code, env, args, "").await
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

    let out = must(0, &[], &[&h[..], &["put", "user1", "batman"]].concat()).await;
    assert!(out.starts_with("OK index "), "{out}");
    let out = must(
        0,
        &[],
        &[&h[..], &["get", "user1", "--level", "consistent"]].concat(),
    )
    .await;
    assert_eq!(out, "batman\n");
    // The same through HRAFTD_ENDPOINTS, as JSON.
    let out = must(
        0,
        &[("HRAFTD_ENDPOINTS", &eps)],
        &["get", "user1", "--json"],
    )
    .await;
    let kv: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&kv["key"], &kv["value"], &kv["version"]),
        (&"user1".into(), &"batman".into(), &1.into()),
        "{kv}"
    );
    assert!(kv["mod_index"].as_u64().is_some_and(|i| i > 0), "{kv}");
    // A stale read from the follower itself.
    let out = must(
        0,
        &[],
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
    must(1, &[], &[&h[..], &["get", "nobody"]].concat()).await;
    must(
        2,
        &[],
        &[&h[..], &["get", "user1", "--level", "eventual"]].concat(),
    )
    .await;
    must(2, &[], &[&h[..], &["put", "", "v"]].concat()).await;
    must(0, &[], &[&h[..], &["del", "user1"]].concat()).await;
    must(
        1,
        &[],
        &[&h[..], &["get", "user1", "--level", "consistent"]].concat(),
    )
    .await;

    // status and members.
    let out = must(0, &[], &[&h[..], &["status", "--json"]].concat()).await;
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        s["leader"]["id"],
        serde_json::json!(c.nodes[leader].id),
        "{s}"
    );
    let out = must(0, &[], &[&h[..], &["members"]].concat()).await;
    assert_eq!(out.lines().count(), 4, "a header and three members: {out}");
    for n in &c.nodes {
        assert!(out.contains(&n.id), "{} missing: {out}", n.id);
    }

    // backup: a whole file, which `hraftd` can verify.
    must(0, &[], &[&h[..], &["put", "kept", "yes"]].concat()).await;
    let file = c.tmp.path().join("hraftctl.backup");
    let f = file.to_str().unwrap();
    let out = must(
        0,
        &[],
        &[&h[..], &["backup", f, "--level", "consistent"]].concat(),
    )
    .await;
    assert!(out.starts_with("wrote "), "{out}");
    let partial = c.tmp.path().join("hraftctl.backup.partial");
    assert!(!partial.exists(), "the partial file is renamed into place");
    let info = hraftd_store::backup::verify(&file).expect("a whole backup");
    assert_eq!(info.keys, 1, "{info:?}");
    // --group: the default group named, through /groups/default/key.
    let out = must(
        0,
        &[],
        &[&h[..], &["--group", "default", "get", "kept"]].concat(),
    )
    .await;
    assert_eq!(out, "yes\n");
    must(
        2,
        &[],
        &[&h[..], &["--group", "bad group!", "get", "kept"]].concat(),
    )
    .await;

    // join (of a member: a no-op that answers as a join does) and remove (of a fourth node).
    let n = &c.nodes[follower];
    let (id, raft, http) = (n.id.clone(), n.raft.clone(), n.http.clone());
    let out = must(0, &[], &[&h[..], &["join", &id, &raft, &http]].concat()).await;
    assert!(out.starts_with(&format!("joined {id} at index ")), "{out}");
    let i = c.must_join_new_node().await;
    let id = c.nodes[i].id.clone();
    let out = must(0, &[], &[&h[..], &["remove", &id]].concat()).await;
    assert_eq!(out, format!("removed {id}\n"));
    let s = c.status(leader).await.unwrap();
    assert!(s.members.iter().all(|m| m.id != id), "{s:?}");

    // No endpoint answers: unavailable, 3.
    must(3, &[], &["-H", &dead, "--timeout", "5", "get", "kept"]).await;
}

#[tokio::test]
async fn hraftctl_acts_as_the_user_given_with_the_password_never_on_the_command_line() {
    let mut c = TestCluster::empty(&[]);
    let (reader_h, writer_h) = (hash("reader-pw"), hash("writer-pw"));
    let users = [
        ("reader", reader_h.as_str(), &["read"][..]),
        ("writer", writer_h.as_str(), &["read", "write"][..]),
    ];
    let file = c.tmp.path().join("auth.json");
    // Anonymous clients may read status (the harness watches the cluster with it).
    std::fs::write(&file, auth_file(&users, &["read"])).unwrap();
    c.extra_args = vec!["-auth".into(), file.display().to_string()];
    c.add_node(None);
    c.must_leader().await;
    let http = c.nodes[0].http.clone();
    let h = ["-H", http.as_str()];
    let pw_file = c.tmp.path().join("writer-password");
    std::fs::write(&pw_file, "writer-pw\n").unwrap();
    let pw = pw_file.to_str().unwrap();

    // The writer writes, with the password from the environment or from a file.
    let writer_env = [("HRAFTD_PASSWORD", "writer-pw")];
    must(
        0,
        &writer_env,
        &[&h[..], &["--user", "writer", "put", "k", "v"]].concat(),
    )
    .await;
    let as_writer = ["--user", "writer", "--password-file", pw];
    let out = must(0, &[], &[&h[..], &as_writer, &["get", "k"]].concat()).await;
    assert_eq!(out, "v\n");
    // Refusals are usage errors (2): no credentials (401), a reader writing (403), a
    // wrong password (401), and --user with no password to be found.
    must(2, &[], &[&h[..], &["put", "k", "w"]].concat()).await;
    let reader_env = [("HRAFTD_PASSWORD", "reader-pw")];
    must(
        2,
        &reader_env,
        &[&h[..], &["--user", "reader", "put", "k", "w"]].concat(),
    )
    .await;
    let wrong = [("HRAFTD_PASSWORD", "not-it")];
    must(
        2,
        &wrong,
        &[&h[..], &["--user", "writer", "get", "k"]].concat(),
    )
    .await;
    let out = hraftctl(&[], &[&h[..], &["--user", "writer", "get", "k"]].concat()).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HRAFTD_PASSWORD"),
        "{out:?}"
    );
    // The reader reads; nothing it tried changed the key.
    let out = must(
        0,
        &reader_env,
        &[&h[..], &["--user", "reader", "get", "k"]].concat(),
    )
    .await;
    assert_eq!(out, "v\n");
}

/// The README's coordination recipes, step by step: a lock with `--cas 0` and a release
/// at the holder's index; a config rollout read with `ls` and applied with `txn` (exit
/// code 1 once its compare no longer holds); read-your-writes with `--min-index`.
#[tokio::test]
async fn hraftctl_builds_a_lock_and_a_config_rollout_as_the_readme_shows() {
    let c = TestCluster::start(3, &[]).await;
    let eps: Vec<String> = c.nodes.iter().map(|n| n.http.clone()).collect();
    let eps = eps.join(",");
    let env = [("HRAFTD_ENDPOINTS", eps.as_str())];
    let index_of = |out: &str| -> u64 {
        out.trim()
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no index in {out:?}"))
    };

    // A lock: the first taker wins, the second is told (exit code 1), the holder releases.
    let taken = index_of(&must(0, &env, &["put", "locks/deploy", "alice", "--cas", "0"]).await);
    must(1, &env, &["put", "locks/deploy", "bob", "--cas", "0"]).await;
    must(
        1,
        &env,
        &["del", "locks/deploy", "--cas", &(taken + 1).to_string()],
    )
    .await;
    must(
        0,
        &env,
        &["del", "locks/deploy", "--cas", &taken.to_string()],
    )
    .await;
    must(1, &env, &["get", "locks/deploy", "--level", "consistent"]).await;

    // A config rollout.
    must(0, &env, &["put", "config/app/version", "1"]).await;
    must(0, &env, &["put", "config/app/flags", r#"{"beta":false}"#]).await;
    let table = must(0, &env, &["ls", "config/app/", "--level", "consistent"]).await;
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(rows[0].starts_with("KEY\tVERSION"), "{table}");
    assert!(rows[1].starts_with("config/app/flags\t1\t"), "{table}");
    assert!(
        rows[2].starts_with("config/app/version\t1\t") && rows[2].ends_with("\t1"),
        "{table}"
    );
    let rollout = r#"{"compare":[{"key":"config/app/version","target":"value","op":"==","value":"1"}],
        "success":[{"op":"put","key":"config/app/version","value":"2"},
                   {"op":"put","key":"config/app/flags","value":"{\"beta\":true}"}],
        "failure":[{"op":"get","key":"config/app/version"}]}"#;
    let out = must_with_stdin(0, &env, &["txn", "--json"], rollout).await;
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["succeeded"], true, "{r}");
    let index = r["index"].as_u64().unwrap();
    // Run again, the compare fails: the failure branch shows what is there; exit code 1.
    let out = must_with_stdin(1, &env, &["txn"], rollout).await;
    assert!(out.starts_with("FAILED index "), "{out}");
    assert!(out.contains(r#""value":"2""#), "{out}");

    // Read-your-writes on every node, stale (no leader round trip).
    for n in &c.nodes {
        let out = must(
            0,
            &[],
            &[
                "-H",
                &n.http,
                "get",
                "config/app/flags",
                "--level",
                "stale",
                "--min-index",
                &index.to_string(),
            ],
        )
        .await;
        assert_eq!(out, "{\"beta\":true}\n");
    }
    let listed = must(0, &env, &["ls", "config/", "--json", "--keys-only"]).await;
    let kvs: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(kvs.as_array().map(Vec::len), Some(2), "{kvs}");
    assert!(kvs[0].get("value").is_none(), "{kvs}");
    // A prefix delete says how many went.
    let out = must(0, &env, &["del", "config/", "--prefix"]).await;
    assert!(out.starts_with("OK deleted 2 index "), "{out}");
    // Bad input is a usage error (2), and nothing is sent.
    must(2, &env, &["put", "k", "v", "--cas", "abc"]).await;
    must_with_stdin(2, &env, &["txn"], "not json").await;
}

#[tokio::test]
async fn hraftctl_elects_a_leader_with_a_lease_and_a_watch_as_the_readme_shows() {
    let c = TestCluster::start(3, &[]).await;
    let eps: Vec<String> = c.nodes.iter().map(|n| n.http.clone()).collect();
    let eps = eps.join(",");
    let env = [("HRAFTD_ENDPOINTS", eps.as_str())];

    // Two candidates, each with a lease; the first to put with cas 0 leads.
    let l1 = must(0, &env, &["lease", "grant", "5s"])
        .await
        .trim()
        .to_string();
    let l2 = must(0, &env, &["lease", "grant", "5s"])
        .await
        .trim()
        .to_string();
    assert_ne!(l1, l2);
    must(
        0,
        &env,
        &[
            "put",
            "election/leader",
            "me1",
            "--lease",
            &l1,
            "--cas",
            "0",
        ],
    )
    .await;
    must(
        1,
        &env,
        &[
            "put",
            "election/leader",
            "me2",
            "--lease",
            &l2,
            "--cas",
            "0",
        ],
    )
    .await;
    let kv: serde_json::Value =
        serde_json::from_str(&must(0, &env, &["get", "election/leader", "--json"]).await).unwrap();
    assert_eq!(kv["lease"], serde_json::json!(l1));
    let at = kv["mod_index"].as_u64().unwrap().to_string();

    // The second waits for the key's next change from its own index; the first steps down.
    let waiting = tokio::spawn({
        let eps = eps.clone();
        async move {
            let env = [("HRAFTD_ENDPOINTS", eps.as_str())];
            must(
                0,
                &env,
                &["watch", "election/leader", "--from", &at, "--count", "1"],
            )
            .await
        }
    });
    must(0, &env, &["lease", "keepalive", &l1, "--once"]).await;
    let out = must(0, &env, &["lease", "revoke", &l1]).await;
    assert!(out.starts_with("OK revoked, deleted 1 index "), "{out}");
    let seen = waiting.await.unwrap();
    assert!(seen.starts_with("DELETE election/leader index "), "{seen}");
    must(
        0,
        &env,
        &[
            "put",
            "election/leader",
            "me2",
            "--lease",
            &l2,
            "--cas",
            "0",
        ],
    )
    .await;
    let show = must(0, &env, &["lease", "show", &l2]).await;
    assert!(show.contains("\nelection/leader\n"), "{show}");

    // The history from the start, as JSON lines: put, delete, put.
    let out = must(
        0,
        &env,
        &[
            "watch",
            "election/",
            "--prefix",
            "--from",
            "0",
            "--count",
            "3",
            "--json",
        ],
    )
    .await;
    let kinds: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["type"].to_string())
        .collect();
    assert_eq!(kinds, vec!["\"put\"", "\"delete\"", "\"put\""], "{out}");

    // A key with a lease of its own goes by itself.
    let out = must(0, &env, &["put", "session/x", "here", "--ttl", "1s"]).await;
    assert!(out.contains(" lease "), "{out}");
    crate::common::wait_for(
        "session/x to expire",
        std::time::Duration::from_secs(15),
        || async move {
            let out = hraftctl(&env, &["get", "session/x", "--level", "consistent"]).await;
            (out.status.code() == Some(1)).then_some(())
        },
    )
    .await;
    // Bad input: exit code 2.
    must(2, &env, &["lease", "grant", "100ms"]).await;
    must(1, &env, &["lease", "show", "999999"]).await;
}
