//! Three nodes: joining, redirects from followers, stale reads, rejoin idempotence.

use crate::common::TestCluster;
use reqwest::Method;
use reqwest::StatusCode;
use std::time::Duration;
use std::time::Instant;

#[tokio::test]
async fn three_nodes_join_redirect_and_replicate() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.must_leader().await;
    let s = c.status(leader).await.unwrap();
    assert_eq!(s.members.len(), 3, "{s:?}");
    assert!(s.members.iter().all(|m| m.voter), "{s:?}");
    let follower = (leader + 1) % 3;
    let leader_http = c.nodes[leader].http.clone();

    // Writes and leader-only reads on a follower: 307 to the leader, same path and query.
    for (method, path, body) in [
        (Method::POST, "/key", r#"{"a":"1"}"#),
        (Method::PUT, "/key/a?x=y", "1"),
        (Method::DELETE, "/key/a", ""),
        (Method::GET, "/key/a", ""),
        (Method::GET, "/key/a?level=default", ""),
        (Method::GET, "/key?key=a&level=consistent", ""),
        (Method::POST, "/remove", r#"{"id":"node9"}"#),
    ] {
        let (st, h, v) = c.raw(follower, method.clone(), path, body).await;
        assert_eq!(st, StatusCode::TEMPORARY_REDIRECT, "{method} {path}: {v}");
        let loc = h.get("location").expect("Location").to_str().unwrap();
        assert_eq!(
            loc,
            format!("http://{leader_http}{path}"),
            "{method} {path}"
        );
    }

    // Following the redirect (curl -L) works for writes and consistent reads.
    c.must_put(follower, "user1", "batman").await;
    assert_eq!(
        c.must_get(follower, "user1", "consistent").await.as_deref(),
        Some("batman")
    );
    // Every node applies it and serves it stale.
    for i in 0..3 {
        c.must_see(i, "user1", "batman").await;
    }

    // Joining again with the same id and addresses is a no-op.
    let n = &c.nodes[follower];
    let body = format!(
        r#"{{"id":"{}","addr":"{}","http_addr":"{}"}}"#,
        n.id, n.raft, n.http
    );
    let (st, _, v) = c.raw(leader, Method::POST, "/join", &body).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let s = c.status(leader).await.unwrap();
    assert_eq!(s.members.len(), 3, "{s:?}");
}

#[tokio::test]
async fn stale_reads_work_without_a_leader() {
    let mut c = TestCluster::start(3, &[]).await;
    c.must_put(0, "k", "v").await;
    for i in 0..3 {
        c.must_see(i, "k", "v").await;
    }
    let leader = c.must_leader().await;
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    c.kill(leader);
    c.kill(others[0]);
    let survivor = others[1];
    // With two of three gone, the survivor soon knows no leader...
    crate::common::wait_for(
        "the survivor to know no leader",
        crate::common::DEADLINE,
        || async {
            let s = c.status(survivor).await?;
            s.leader.is_none().then_some(())
        },
    )
    .await;
    // ...yet serves stale reads, and refuses leader-only ones with 503 + Retry-After.
    assert_eq!(
        c.must_get(survivor, "k", "stale").await.as_deref(),
        Some("v")
    );
    let (st, h, v) = c.raw(survivor, Method::GET, "/key/k", "").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(h.get("retry-after").is_some());
    let (st, _, _) = c.raw(survivor, Method::POST, "/key", r#"{"k":"w"}"#).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn write_without_quorum_fails_in_bounded_time() {
    let mut c = TestCluster::start(3, &["-write-timeout", "2"]).await;
    let leader = c.must_leader().await;
    c.must_put(leader, "k", "v").await;
    for i in (0..3).filter(|i| *i != leader) {
        c.kill(i);
    }
    let started = Instant::now();
    let (st, _, v) = c.raw(leader, Method::POST, "/key", r#"{"k":"w"}"#).await;
    let took = started.elapsed();
    assert!(st.is_server_error(), "{st} {v}");
    assert!(
        v["error"].as_str().unwrap().contains("outcome unknown"),
        "{v}"
    );
    assert!(
        took < Duration::from_secs(6),
        "a 2 s write timeout took {took:?}"
    );
    assert_eq!(c.must_get(leader, "k", "stale").await.as_deref(), Some("v"));
    let started = Instant::now();
    let (st, _, v) = c
        .raw(leader, Method::GET, "/key/k?level=consistent", "")
        .await;
    assert!(
        st.is_server_error(),
        "a consistent read without quorum must fail: {st} {v}"
    );
    assert!(started.elapsed() < Duration::from_secs(6));
}

/// Consistent reads are batched (one leadership confirmation serves many reads) and
/// writes are group-committed; under that concurrency every consistent read must still
/// observe every write acknowledged before it began.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consistent_reads_see_every_acknowledged_write_under_concurrency() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.must_leader().await;
    let follower = (leader + 1) % 3;
    let mut tasks = Vec::new();
    for t in 0..16 {
        let client = c.follow.clone();
        // Half the tasks go through a follower (307 to the leader).
        let base = if t % 2 == 0 {
            c.nodes[leader].url("")
        } else {
            c.nodes[follower].url("")
        };
        tasks.push(tokio::spawn(async move {
            for n in 0..40 {
                let put = client
                    .put(format!("{base}/key/rw{t}"))
                    .body(n.to_string())
                    .send()
                    .await
                    .expect("PUT");
                assert_eq!(put.status(), StatusCode::OK, "PUT rw{t}={n}");
                let got: serde_json::Value = client
                    .get(format!("{base}/key/rw{t}?level=consistent"))
                    .send()
                    .await
                    .expect("GET")
                    .json()
                    .await
                    .expect("JSON");
                assert_eq!(
                    got[format!("rw{t}")],
                    n.to_string(),
                    "consistent read after acknowledged write"
                );
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
}
