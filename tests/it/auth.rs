//! Users and permissions (`-auth`) on a real cluster: `hraftd hash-password`, joining as
//! an admin (and being refused without credentials), readers and writers through a
//! follower (the client keeps its credentials across the redirect), anonymous clients,
//! SIGHUP reloads, and a file that does not parse refused at start.

use std::io::Write;
use std::process::Command;
use std::process::Stdio;

use hraftd_client::Client;
use hraftd_client::ErrorCode;
use hraftd_client::ReadLevel;

use crate::common::bin;
use crate::common::TestCluster;
use crate::common::DEADLINE;

/// `hraftd hash-password` with `password` on stdin.
pub(crate) fn hash(password: &str) -> String {
    let mut child = Command::new(bin())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let h = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(h.starts_with("$argon2id$"), "{h}");
    assert!(!h.contains(password));
    h
}

pub(crate) fn auth_file(users: &[(&str, &str, &[&str])], anonymous: &[&str]) -> String {
    let mut entries: Vec<String> = users
        .iter()
        .map(|(u, h, perms)| {
            serde_json::json!({"username": u, "password_hash": h, "perms": perms}).to_string()
        })
        .collect();
    entries.push(serde_json::json!({"username": "*", "perms": anonymous}).to_string());
    format!("[\n{}\n]\n", entries.join(",\n"))
}

fn as_user(c: &TestCluster, i: usize, user: &str, pw: &str) -> Client {
    Client::builder([c.nodes[i].http.clone()])
        .basic_auth(user, pw)
        .build()
        .unwrap()
}

#[tokio::test]
async fn users_and_permissions_on_a_cluster() {
    let mut c = TestCluster::empty(&[]);
    let (admin_h, reader_h, writer_h) = (hash("admin-pw"), hash("reader-pw"), hash("writer-pw"));
    let file = c.tmp.path().join("auth.json");
    let users = [
        ("admin", admin_h.as_str(), &["read", "write", "admin"][..]),
        ("reader", reader_h.as_str(), &["read"][..]),
        ("writer", writer_h.as_str(), &["read", "write"][..]),
    ];
    // Anonymous clients may read status (the harness watches the cluster with it).
    std::fs::write(&file, auth_file(&users, &["read"])).unwrap();
    let pw_file = c.tmp.path().join("join-password");
    std::fs::write(&pw_file, "admin-pw\n").unwrap();
    let auth = file.display().to_string();
    c.extra_args = vec!["-auth".into(), auth.clone()];
    c.add_node(None);
    c.must_leader().await;

    // A node joining without credentials is refused and exits non-zero, saying why.
    let lone = c.new_node();
    let leader_http = c.nodes[0].http.clone();
    c.spawn(lone, Some(&leader_http));
    let st = c.must_exit(lone, DEADLINE).await;
    assert!(!st.success());
    assert!(
        c.nodes[lone].logged("401"),
        "{}",
        c.nodes[lone].log_tail(10)
    );

    // Two nodes join as the admin: one with a password file, one from the environment.
    let n1 = c.new_node();
    c.nodes[n1]
        .args
        .extend(["-join-as", "admin", "-join-password-file"].map(String::from));
    c.nodes[n1].args.push(pw_file.display().to_string());
    c.spawn(n1, Some(&leader_http));
    let n2 = c.new_node();
    c.nodes[n2]
        .args
        .extend(["-join-as", "admin"].map(String::from));
    c.nodes[n2]
        .env
        .push(("HRAFTD_JOIN_PASSWORD".into(), "admin-pw".into()));
    c.spawn(n2, Some(&leader_http));
    for i in [n1, n2] {
        let id = c.nodes[i].id.clone();
        c.must_be_voter(&id).await;
    }
    assert!(
        !std::fs::read_to_string(&c.nodes[n2].log)
            .unwrap()
            .contains("admin-pw"),
        "the password is never logged"
    );

    let leader = c.must_leader().await;
    let follower = [0, n1, n2].into_iter().find(|&i| i != leader).unwrap();
    // A writer writes through a follower: the client follows the 307 with its credentials.
    let writer = as_user(&c, follower, "writer", "writer-pw");
    writer.put("config/db", "postgres://db1").await.unwrap();
    let reader = as_user(&c, follower, "reader", "reader-pw");
    assert_eq!(
        reader
            .get("config/db", ReadLevel::Consistent)
            .await
            .unwrap()
            .as_deref(),
        Some("postgres://db1")
    );
    // A reader may not write; a wrong password and anonymous writes are 401.
    let e = reader.put("config/db", "x").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}");
    let e = as_user(&c, leader, "reader", "nope")
        .get("config/db", ReadLevel::Stale)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Unauthorized), "{e}");
    let anonymous = Client::new([c.nodes[leader].http.clone()]);
    let e = anonymous.put("config/db", "x").await.unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(401), Some(ErrorCode::Unauthorized)),
        "{e}"
    );
    assert!(
        anonymous.get("config/db", ReadLevel::Stale).await.is_ok(),
        "anonymous may read"
    );
    assert!(anonymous.livez().await.is_ok(), "/livez is open");
    let e = as_user(&c, leader, "writer", "writer-pw")
        .remove("node1")
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(ErrorCode::Forbidden),
        "/remove needs admin: {e}"
    );

    // SIGHUP: a new file is in force at once (a new user; the reader may now write) ...
    let ops_h = hash("ops-pw");
    let mut more = users.to_vec();
    more[1] = ("reader", reader_h.as_str(), &["read", "write"][..]);
    more.push(("ops", ops_h.as_str(), &["metrics"][..]));
    std::fs::write(&file, auth_file(&more, &["read"])).unwrap();
    assert!(c.nodes[leader].signal(libc::SIGHUP));
    c.must_log(leader, "SIGHUP: reloaded 4 users").await;
    let reader_at_leader = as_user(&c, leader, "reader", "reader-pw");
    reader_at_leader
        .put("config/db", "postgres://db2")
        .await
        .unwrap();
    as_user(&c, leader, "ops", "ops-pw")
        .metrics()
        .await
        .unwrap();
    // ... and one that does not parse leaves the users in force.
    std::fs::write(&file, "[{\"username\": \"ops\",\n broken").unwrap();
    assert!(c.nodes[leader].signal(libc::SIGHUP));
    c.must_log(leader, "SIGHUP: keeping the users in force")
        .await;
    reader_at_leader
        .put("config/db", "postgres://db3")
        .await
        .unwrap();
}

#[tokio::test]
async fn an_auth_file_that_does_not_parse_is_refused_at_start() {
    let c = TestCluster::empty(&[]);
    let file = c.tmp.path().join("auth.json");
    std::fs::write(&file, "[\n  {\"username\": \"a\", \"perms\": [\"fly\"]}\n]").unwrap();
    let out = Command::new(bin())
        .args([
            "-auth",
            &file.display().to_string(),
            "-haddr",
            "127.0.0.1:0",
            "-raddr",
            "127.0.0.1:0",
        ])
        .arg(c.tmp.path().join("node"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2"), "{err}");
    assert!(err.contains("fly"), "{err}");
    assert!(
        !c.tmp.path().join("node").join("raft").exists(),
        "no node was made"
    );
}
