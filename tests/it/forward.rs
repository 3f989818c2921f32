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
    forward: impl Into<Option<&str>>,
) -> reqwest::Response {
    let mut req = c
        .client
        .request(method, c.nodes[i].url(path))
        .basic_auth(user.0, Some(user.1))
        .body(body.to_string());
    if let Some(v) = forward.into() {
        req = req.header("X-Hraftd-Forward", v);
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
    let r = send(&c, f, reqwest::Method::PUT, "/key/fw", "v0", writer, None).await;
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);

    // A value that is neither yes nor no is refused, not guessed at, and changes nothing:
    // sent to the leader itself (which would apply it if it fell through to the handler)
    // and to a follower, on a key nobody else writes.
    for node in [leader, f] {
        let r = send(
            &c,
            node,
            reqwest::Method::PUT,
            "/key/badfw",
            "bad",
            writer,
            "yes",
        )
        .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "node {node}");
        let body = r.text().await.unwrap();
        assert!(body.contains(r#""code":"bad_request""#), "{body}");
    }
    assert_eq!(c.must_get(leader, "badfw", "consistent").await, None);

    // With it: the follower forwards, the leader answers.
    let r = send(&c, f, reqwest::Method::PUT, "/key/fw", "v1", writer, "1").await;
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
        "1",
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
        "1",
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
        "1",
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
        "1",
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        c.must_get(leader, "fw", "consistent").await.as_deref(),
        Some("v1")
    );
}

/// What one role's forwarded request may answer while the leader is being replaced: the
/// statuses it may get, and whether the run is over once it has one of `done`.
struct Probe {
    role: &'static str,
    user: (&'static str, &'static str),
    method: reqwest::Method,
    path: &'static str,
    body: &'static str,
    /// Answers that say "no leader to forward to right now", and the final answer.
    allowed: &'static [u16],
    done: &'static [u16],
}

#[tokio::test]
async fn forwarding_as_every_role_while_the_leader_changes() {
    let mut c = start(&["-forward"]).await;
    let leader = c.must_leader().await;
    let f = (leader + 1) % 3;
    let writer = ("writer", "writer-pw");
    // -forward: no header needed; `X-Hraftd-Forward: 0` still asks for the redirect.
    let r = send(
        &c,
        f,
        reqwest::Method::PUT,
        "/key/lost",
        "before",
        writer,
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = send(&c, f, reqwest::Method::PUT, "/key/lost", "x", writer, "0").await;
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    c.kill(leader);

    // Every role, against the follower, until a new leader serves each of them. Checks
    // made on the follower itself (who the client is, what it may do) answer the same
    // throughout; what needs the leader is 503/504 until there is one, then its answer.
    let probes = [
        Probe {
            role: "reader reads",
            user: ("reader", "reader-pw"),
            method: reqwest::Method::GET,
            path: "/key/lost?level=consistent",
            body: "",
            allowed: &[200, 503, 504],
            done: &[200],
        },
        Probe {
            role: "reader writes",
            user: ("reader", "reader-pw"),
            method: reqwest::Method::PUT,
            path: "/key/lost",
            body: "by-reader",
            allowed: &[403],
            done: &[403],
        },
        Probe {
            role: "admin removes an unknown member",
            user: ("admin", "admin-pw"),
            method: reqwest::Method::POST,
            path: "/remove",
            body: r#"{"id":"nobody"}"#,
            allowed: &[404, 503, 504],
            done: &[404],
        },
        Probe {
            role: "wrong password",
            user: ("writer", "nope"),
            method: reqwest::Method::PUT,
            path: "/key/lost",
            body: "by-nobody",
            allowed: &[401],
            done: &[401],
        },
    ];
    let statuses = std::sync::Mutex::new(Vec::new());
    let n = std::sync::atomic::AtomicU32::new(0);
    let applied = crate::common::wait_for(
        "a forwarded write, and every role's forward, to get the new leader's answer",
        crate::common::DEADLINE,
        || async {
            let v = format!(
                "after{}",
                n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            let r = send(&c, f, reqwest::Method::PUT, "/key/lost", &v, writer, None).await;
            let st = r.status().as_u16();
            statuses.lock().unwrap().push(st);
            assert!(
                [200, 503, 504].contains(&st),
                "a writer's forward while the leader changes answered {st}: {}",
                r.text().await.unwrap_or_default()
            );
            let mut all_done = st == 200;
            for p in &probes {
                let r = send(&c, f, p.method.clone(), p.path, p.body, p.user, None).await;
                let st = r.status().as_u16();
                let body = r.text().await.unwrap_or_default();
                assert!(
                    p.allowed.contains(&st),
                    "{} through the follower while the leader changes: {st} {body}",
                    p.role
                );
                if st == 200 {
                    // A read answered by a leader sees a value some acknowledged write set.
                    assert!(
                        body.starts_with(r#"{"lost":"#) && !body.contains("by-"),
                        "{}: {body}",
                        p.role
                    );
                }
                all_done &= p.done.contains(&st);
            }
            all_done.then_some(v)
        },
    )
    .await;
    // A 200 means it applied: a consistent read on the new leader, and one forwarded as
    // the reader, see it; the refused writes left nothing.
    let l = c.must_leader().await;
    assert_eq!(
        c.must_get(l, "lost", "consistent").await.as_deref(),
        Some(applied.as_str())
    );
    let r = send(
        &c,
        f,
        reqwest::Method::GET,
        "/key/lost?level=consistent",
        "",
        ("reader", "reader-pw"),
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.text().await.unwrap(),
        format!(r#"{{"lost":"{applied}"}}"#)
    );
    let statuses = statuses.into_inner().unwrap();
    assert!(
        statuses.iter().any(|s| *s != 200),
        "the first forwards, before an election, cannot have succeeded: {statuses:?}"
    );
}

/// Found by review: a follower forwarded only some request headers, so `If-None-Match: *`
/// reached the leader as a plain `PUT` and took a lock someone held. The conditions of a
/// compare-and-set travel with the request, and a forwarded read keeps its `ETag`.
#[tokio::test]
async fn a_forwarded_compare_and_set_keeps_its_condition() {
    let c = start(&[]).await;
    let leader = c.must_leader().await;
    let f = (leader + 1) % 3;
    let writer = ("writer", "writer-pw");
    let put = |value: &'static str, cond: (&'static str, String)| {
        c.client
            .put(c.nodes[f].url("/key/lock"))
            .basic_auth(writer.0, Some(writer.1))
            .header("X-Hraftd-Forward", "1")
            .header(cond.0, cond.1)
            .body(value)
            .send()
    };
    let r = put("alice", ("If-None-Match", "*".into())).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().contains_key("x-hraftd-forwarded-by"));
    let index = r.json::<serde_json::Value>().await.unwrap()["index"]
        .as_u64()
        .unwrap();
    let r = put("bob", ("If-None-Match", "*".into())).await.unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let r = put("bob", ("If-Match", format!("\"{}\"", index + 1)))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        c.must_get(leader, "lock", "consistent").await.as_deref(),
        Some("alice")
    );

    let r = send(&c, f, reqwest::Method::GET, "/key/lock", "", writer, "1").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["etag"].to_str().unwrap(),
        format!("\"{index}\"")
    );
    assert!(r.headers().contains_key("x-hraftd-index"));
}
