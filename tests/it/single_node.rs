//! One node: bootstrap, CRUD through every route, and bad input against the real server.

use crate::common::TestCluster;
use reqwest::Method;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn bootstrap_and_crud() {
    let c = TestCluster::start(1, &[]).await;
    let s = c.status(0).await.expect("status");
    assert_eq!(s.id, "node0");
    assert_eq!(s.role, "leader");
    assert_eq!(s.members.len(), 1);
    assert!(s.members[0].voter);

    let (st, _, v) = c
        .raw(
            0,
            Method::POST,
            "/key",
            r#"{"user1":"batman","user2":"robin"}"#,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let first = v["index"].as_u64().expect("index");
    for level in ["stale", "default", "consistent"] {
        assert_eq!(
            c.must_get(0, "user1", level).await.as_deref(),
            Some("batman"),
            "{level}"
        );
    }
    let (st, _, v) = c
        .raw(0, Method::GET, "/key?key=user2&level=consistent", "")
        .await;
    assert_eq!((st, v), (StatusCode::OK, json!({"user2": "robin"})));

    let (st, _, v) = c
        .raw(0, Method::PUT, "/key/dir/sub%20key", "raw bytes")
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(v["index"].as_u64().unwrap() > first, "indexes grow");
    // Percent-encoded bytes in the path are decoded: the key is "dir/sub key".
    let (st, _, v) = c.raw(0, Method::GET, "/key/dir/sub%20key", "").await;
    assert_eq!(
        (st, v),
        (StatusCode::OK, json!({"dir/sub key": "raw bytes"}))
    );

    let (st, _, _) = c.raw(0, Method::DELETE, "/key/user1", "").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(c.must_get(0, "user1", "consistent").await, None);
    let (st, _, _) = c.raw(0, Method::DELETE, "/key?key=user1", "").await;
    assert_eq!(st, StatusCode::OK, "delete is idempotent");
    let (st, _, v) = c.raw(0, Method::GET, "/key/user1", "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(v["error"].is_string());

    // Status metrics trail the apply slightly; they converge.
    crate::common::wait_for(
        "applied_index to reach commit_index",
        crate::common::DEADLINE,
        || async {
            let s = c.status(0).await?;
            (s.applied_index == s.commit_index && s.commit_index >= 5).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn bad_input_gets_json_errors_and_changes_nothing() {
    let c = TestCluster::start(1, &["-body-limit", "1024"]).await;
    c.must_put(0, "k", "v").await;
    let before = settled_index(&c).await;
    let big = format!(r#"{{"k":"{}"}}"#, "x".repeat(2000));
    for (method, path, body, want) in [
        (Method::POST, "/key", "{nope", StatusCode::BAD_REQUEST),
        (Method::POST, "/key", r#"{"k":1}"#, StatusCode::BAD_REQUEST),
        (Method::POST, "/key", "{}", StatusCode::BAD_REQUEST),
        (Method::POST, "/key", r#"{"":"x"}"#, StatusCode::BAD_REQUEST),
        (Method::PUT, "/key/", "x", StatusCode::BAD_REQUEST),
        (
            Method::GET,
            "/key/k?level=fresh",
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/key",
            big.as_str(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (Method::PATCH, "/key/k", "x", StatusCode::METHOD_NOT_ALLOWED),
        (Method::GET, "/join", "", StatusCode::METHOD_NOT_ALLOWED),
        (
            Method::POST,
            "/join",
            r#"{"id":"x"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/remove",
            r#"{"id":"ghost"}"#,
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (st, _, v) = c.raw(0, method.clone(), path, body).await;
        assert_eq!(st, want, "{method} {path}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: {v}"
        );
    }
    assert_eq!(c.must_get(0, "k", "consistent").await.as_deref(), Some("v"));
    let after = settled_index(&c).await;
    // A consistent read may add no entry; nothing else may have been applied.
    assert_eq!(before, after, "bad requests must not reach the log");
}

/// The applied index once status has caught up with the commit index.
async fn settled_index(c: &TestCluster) -> u64 {
    crate::common::wait_for("status to settle", crate::common::DEADLINE, || async {
        let s = c.status(0).await?;
        (s.applied_index == s.commit_index).then_some(s.applied_index)
    })
    .await
}
