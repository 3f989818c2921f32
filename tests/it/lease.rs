//! Leases against real clusters: keys that live while their lease is kept alive, vanish
//! (through the log, with watch events) once it is not, no sooner than its TTL, also
//! across a leader kill; revocation; `?ttl=`; leases in transactions and groups; bad
//! input.

use std::time::Duration;
use std::time::Instant;

use hraftd_client::wire;
use hraftd_client::wire::EventKind;
use hraftd_client::ErrorCode;
use hraftd_client::ReadLevel;
use hraftd_client::WatchItem;
use hraftd_client::WatchTarget;
use reqwest::Method;
use reqwest::StatusCode;

use crate::common::wait_for;
use crate::common::TestCluster;

/// How often the tests keep a lease alive (a quarter of its 2 s TTL), the cadence a
/// client would use.
const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(500);
/// How often a test reads a key it expects to stay, to see that it does.
const READ_INTERVAL: Duration = Duration::from_millis(200);

/// Waits (bounded) until `key` is gone on node `i` (consistent read through the leader);
/// returns when it saw it gone.
async fn must_vanish(c: &TestCluster, i: usize, key: &str, within: Duration) -> Instant {
    let client = c.redirecting_client(i);
    wait_for(&format!("{key} to vanish"), within, || async {
        match client.get(key, ReadLevel::Consistent).await {
            Ok(None) => Some(Instant::now()),
            _ => None,
        }
    })
    .await
}

#[tokio::test]
async fn keys_live_while_their_lease_is_kept_alive_and_vanish_after_its_ttl() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.must_leader().await;
    let client = c.redirecting_client((leader + 1) % 3);
    let lease = client.lease_grant(Duration::from_secs(2)).await.unwrap();
    assert_eq!(lease.ttl_ms, 2000);
    client
        .put_leased("svc/a", "1", &lease.id, None)
        .await
        .unwrap();
    client
        .put_leased("svc/b", "2", &lease.id, None)
        .await
        .unwrap();
    let kv = client
        .get_kv(
            "svc/a",
            hraftd_client::ReadOpts::level(ReadLevel::Consistent),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kv.lease.as_deref(), Some(lease.id.as_str()));
    let info = client.lease_info(&lease.id).await.unwrap();
    assert_eq!(info.keys, vec!["svc/a".to_string(), "svc/b".to_string()]);
    assert!(info.remaining_ms <= 2000);

    let mut w = client
        .watch(&WatchTarget::Prefix("svc/".into()), None)
        .await
        .unwrap();
    // Kept alive for three TTLs: the keys stay.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let r = client.lease_keepalive(&lease.id).await.unwrap();
        assert_eq!(r.ttl_ms, 2000);
        assert!(client
            .get("svc/a", ReadLevel::Consistent)
            .await
            .unwrap()
            .is_some());
        tokio::time::sleep(KEEPALIVE_INTERVAL).await;
    }
    // Abandoned: gone no sooner than the TTL after the last keepalive, and soon after it.
    let last = Instant::now();
    client.lease_keepalive(&lease.id).await.unwrap();
    let gone = must_vanish(&c, leader, "svc/a", Duration::from_secs(10)).await;
    let after = gone - last;
    assert!(
        after >= Duration::from_millis(1900),
        "vanished {after:?} after the last keepalive"
    );
    assert!(client
        .get("svc/b", ReadLevel::Consistent)
        .await
        .unwrap()
        .is_none());
    // One entry deleted both, and the watch saw it.
    match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
        Ok(Ok(Some(WatchItem::Entry { events, .. }))) => {
            let keys: Vec<_> = events.iter().map(|e| (e.kind, e.kv.key.as_str())).collect();
            assert_eq!(
                keys,
                vec![(EventKind::Delete, "svc/a"), (EventKind::Delete, "svc/b")]
            );
        }
        other => panic!("expected the expiry's deletes, got {other:?}"),
    }
    let err = client.lease_keepalive(&lease.id).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
}

#[tokio::test]
async fn a_leader_kill_restarts_the_countdown_and_never_expires_a_lease_early() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.must_leader().await;
    let other = (leader + 1) % 3;
    let client = c.redirecting_client(other);
    let lease = client.lease_grant(Duration::from_secs(3)).await.unwrap();
    client
        .put_leased("lock", "me", &lease.id, Some(0))
        .await
        .unwrap();
    let last = Instant::now();
    client.lease_keepalive(&lease.id).await.unwrap();
    c.kill(leader);
    let new_leader = c.must_leader().await;
    assert_ne!(new_leader, leader);
    // The new leader counts the full TTL from when it took over: still there at 3 s
    // after the last keepalive at the old leader is allowed; before it, it must be.
    while last.elapsed() < Duration::from_millis(2800) {
        let v = client.get("lock", ReadLevel::Consistent).await;
        if let Ok(v) = v {
            assert!(
                v.is_some(),
                "expired after {:?}, before its TTL",
                last.elapsed()
            );
        }
        tokio::time::sleep(READ_INTERVAL).await;
    }
    // The new leader takes keepalives for it.
    client.lease_keepalive(&lease.id).await.unwrap();
    let last = Instant::now();
    let gone = must_vanish(&c, new_leader, "lock", Duration::from_secs(15)).await;
    assert!(
        gone - last >= Duration::from_millis(2900),
        "{:?}",
        gone - last
    );
}

#[tokio::test]
async fn revoking_deletes_the_keys_in_one_entry_and_ttl_puts_get_their_own_lease() {
    let c = TestCluster::start(1, &[]).await;
    let client = c.redirecting_client(0);
    let lease = client.lease_grant(Duration::from_secs(60)).await.unwrap();
    for k in ["r/1", "r/2", "r/3"] {
        client.put_leased(k, "v", &lease.id, None).await.unwrap();
    }
    // A put without a lease detaches the key.
    client.put("r/3", "kept").await.unwrap();
    let done = client.lease_revoke(&lease.id).await.unwrap();
    assert_eq!(done.deleted, 2);
    assert_eq!(
        client
            .get("r/3", ReadLevel::Default)
            .await
            .unwrap()
            .as_deref(),
        Some("kept")
    );
    assert!(client
        .get("r/1", ReadLevel::Default)
        .await
        .unwrap()
        .is_none());
    let err = client.lease_info(&lease.id).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));

    // ?ttl= makes a lease for the key.
    let w = client
        .put_ttl("t", "x", Duration::from_secs(1))
        .await
        .unwrap();
    let id = w.lease.expect("the lease of the ttl put");
    assert_eq!(
        client.lease_info(&id).await.unwrap().keys,
        vec!["t".to_string()]
    );
    must_vanish(&c, 0, "t", Duration::from_secs(10)).await;

    // In a transaction: lock-if-free with a lease.
    let l2 = client.lease_grant(Duration::from_secs(60)).await.unwrap();
    let txn = wire::TxnRequest {
        compare: vec![wire::TxnCompare {
            key: "lk".into(),
            target: wire::CompareTarget::Exists,
            op: wire::CompareOp::Eq,
            value: serde_json::json!(false),
        }],
        success: vec![wire::TxnOp::Put {
            key: "lk".into(),
            value: "a".into(),
            lease: Some(l2.id.clone()),
        }],
        failure: vec![],
    };
    assert!(client.txn(&txn).await.unwrap().succeeded);
    assert_eq!(
        client.lease_info(&l2.id).await.unwrap().keys,
        vec!["lk".to_string()]
    );
    let mut bad = txn.clone();
    bad.compare.clear();
    bad.success = vec![wire::TxnOp::Put {
        key: "lk2".into(),
        value: "a".into(),
        lease: Some("999999".into()),
    }];
    let err = client.txn(&bad).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
    assert!(client
        .get("lk2", ReadLevel::Default)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn bad_ttls_get_400_and_unknown_leases_404() {
    let c = TestCluster::start(1, &[]).await;
    for body in [
        r#"{"ttl":"500ms"}"#,
        r#"{"ttl":"0"}"#,
        r#"{"ttl":"soon"}"#,
        r#"{"ttl":"8000000s"}"#,
        r#"{"ttl":-1}"#,
        r#"{"ttl":true}"#,
        r#"{}"#,
        r#"{"ttl":"10s","id":"5"}"#,
        r#"[]"#,
    ] {
        let (status, _, v) = c.raw(0, Method::POST, "/lease", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
    }
    let (status, _, v) = c.raw(0, Method::POST, "/lease", r#"{"ttl":2}"#).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["ttl_ms"], 2000);
    for (method, path) in [
        (Method::POST, "/lease/424242/keepalive"),
        (Method::GET, "/lease/424242"),
        (Method::DELETE, "/lease/424242"),
        (Method::PUT, "/key/x?lease=424242"),
    ] {
        let (status, _, v) = c.raw(0, method.clone(), path, "v").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {v}");
    }
    for (method, path) in [
        (Method::GET, "/lease/abc"),
        (Method::GET, "/lease/0"),
        (Method::PUT, "/key/x?lease=-3"),
        (Method::PUT, "/key/x?ttl=0.2s"),
        (Method::PUT, "/key/x?ttl=5s&lease=1"),
    ] {
        let (status, _, v) = c.raw(0, method.clone(), path, "v").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {v}");
    }
    let (status, _, _) = c.raw(0, Method::GET, "/key/x?level=stale", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was written");

    // Leases in a group belong to it.
    let client = c.redirecting_client(0);
    client.create_group("g1", &["node0"]).await.unwrap();
    let g = client.in_group("g1");
    let l = wait_for("a lease in group g1", Duration::from_secs(10), || {
        let g = &g;
        async move { g.lease_grant(Duration::from_secs(30)).await.ok() }
    })
    .await;
    g.put_leased("k", "v", &l.id, None).await.unwrap();
    assert_eq!(
        g.lease_info(&l.id).await.unwrap().keys,
        vec!["k".to_string()]
    );
    // Ids are per group: the default group's lease of the same number (if any) is another.
    let (status, _, v) = c.raw(0, Method::GET, &format!("/lease/{}", l.id), "").await;
    assert!(
        status == StatusCode::NOT_FOUND || v["keys"] == serde_json::json!([]),
        "{status} {v}"
    );
}
