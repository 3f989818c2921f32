//! Forwarding (`X-Hraftd-Forward: 1`, `-forward`) on a cluster with `-auth`: a client that
//! cannot follow redirects writes and reads through a follower with its own credentials
//! (the follower checks them, the leader again); without it the follower redirects; and a
//! forward whose leader is gone answers 503 or 504, never a 200 that did not apply.

use reqwest::StatusCode;

use crate::auth::auth_file;
use crate::auth::hash;
use crate::common::TestCluster;

/// An empty cluster whose nodes get `-auth` (admin, writer, reader) and `extra`.
fn with_users(extra: &[&str]) -> TestCluster {
    let mut t = TestCluster::empty(&[]);
    let (admin, writer, reader) = (hash("admin-pw"), hash("writer-pw"), hash("reader-pw"));
    let file = t.tmp.path().join("auth.json");
    let list = [
        ("admin", admin.as_str(), &["read", "write", "admin"][..]),
        ("writer", writer.as_str(), &["read", "write"][..]),
        ("reader", reader.as_str(), &["read"][..]),
    ];
    // Anonymous clients may read (the harness watches status that way).
    std::fs::write(&file, auth_file(&list, &["read"])).unwrap();
    t.extra_args = vec!["-auth".into(), file.display().to_string()];
    t.extra_args.extend(extra.iter().map(|s| s.to_string()));
    t
}

/// A raw request with Basic credentials and no redirect following, like `curl` without `-L`.
async fn send(
    c: &TestCluster,
    i: usize,
    method: reqwest::Method,
    path: &str,
    body: &str,
    user: (&str, &str),
    forward: bool,
) -> reqwest::Response {
    let mut req = c
        .client
        .request(method, c.nodes[i].url(path))
        .basic_auth(user.0, Some(user.1))
        .body(body.to_string());
    if forward {
        req = req.header("X-Hraftd-Forward", "1");
    }
    req.send().await.unwrap()
}

async fn start(extra: &[&str]) -> TestCluster {
    let mut c = with_users(extra);
    let pw = c.tmp.path().join("admin-pw");
    std::fs::write(&pw, "admin-pw").unwrap();
    c.add_node(None);
    c.must_leader().await;
    for _ in 1..3 {
        let i = c.new_node();
        c.nodes[i].args.extend([
            "-join-as".to_string(),
            "admin".into(),
            "-join-password-file".into(),
        ]);
        c.nodes[i].args.push(pw.display().to_string());
        let join = c.nodes[0].http.clone();
        c.spawn(i, Some(&join));
        let id = c.nodes[i].id.clone();
        c.must_be_voter(&id).await;
    }
    c
}

#[tokio::test]
async fn a_follower_forwards_with_the_clients_credentials() {
    let c = start(&[]).await;
    let leader = c.must_leader().await;
    let f = (leader + 1) % 3;
    let writer = ("writer", "writer-pw");

    // Without the header: the usual 307.
    let r = send(&c, f, reqwest::Method::PUT, "/key/fw", "v0", writer, false).await;
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);

    // With it: the follower forwards, the leader answers.
    let r = send(&c, f, reqwest::Method::PUT, "/key/fw", "v1", writer, true).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers().get("x-hraftd-forwarded-by").unwrap(),
        c.nodes[leader].http.as_str()
    );
    let r = send(
        &c,
        f,
        reqwest::Method::GET,
        "/key/fw?level=consistent",
        "",
        writer,
        true,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), r#"{"fw":"v1"}"#);

    // The follower checks the client first: a reader's write is refused there (403), a
    // wrong password too (401); nothing reaches the leader.
    let r = send(
        &c,
        f,
        reqwest::Method::PUT,
        "/key/fw",
        "x",
        ("reader", "reader-pw"),
        true,
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = send(
        &c,
        f,
        reqwest::Method::PUT,
        "/key/fw",
        "x",
        ("writer", "nope"),
        true,
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // An admin's /remove of an unknown member is forwarded and the leader's 404 comes back.
    let r = send(
        &c,
        f,
        reqwest::Method::POST,
        "/remove",
        r#"{"id":"nobody"}"#,
        ("admin", "admin-pw"),
        true,
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        c.must_get(leader, "fw", "consistent").await.as_deref(),
        Some("v1")
    );
}

#[tokio::test]
async fn with_forward_a_lost_leader_is_503_or_504_never_a_wrong_200() {
    let mut c = start(&["-forward"]).await;
    let leader = c.must_leader().await;
    let f = (leader + 1) % 3;
    let writer = ("writer", "writer-pw");
    // -forward: no header needed.
    let r = send(
        &c,
        f,
        reqwest::Method::PUT,
        "/key/lost",
        "before",
        writer,
        false,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    c.kill(leader);
    // Until a new leader is elected the follower has no leader to forward to (or forwards
    // to the dead one): 503 or 504, never 200. Then a forward succeeds, and applied.
    let statuses = std::sync::Mutex::new(Vec::new());
    let n = std::sync::atomic::AtomicU32::new(0);
    let applied = crate::common::wait_for(
        "a forwarded write to succeed",
        crate::common::DEADLINE,
        || async {
            let v = format!(
                "after{}",
                n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            let r = send(&c, f, reqwest::Method::PUT, "/key/lost", &v, writer, false).await;
            let st = r.status().as_u16();
            statuses.lock().unwrap().push(st);
            if st != 200 {
                assert!(
                    [503, 504].contains(&st),
                    "a forward without a leader answered {st}: {}",
                    r.text().await.unwrap_or_default()
                );
                return None;
            }
            Some(v)
        },
    )
    .await;
    // A 200 means it applied: a consistent read on the new leader sees it.
    let l = c.must_leader().await;
    assert_eq!(
        c.must_get(l, "lost", "consistent").await.as_deref(),
        Some(applied.as_str())
    );
    let statuses = statuses.into_inner().unwrap();
    assert!(
        statuses.iter().any(|s| *s != 200),
        "the first forwards, before an election, cannot have succeeded: {statuses:?}"
    );
}
