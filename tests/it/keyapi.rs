//! The coordination key API against real clusters: per-key metadata (the same on every
//! node, through restarts and snapshots), compare-and-set, transactions, ranges, prefix
//! deletes and read-your-writes with `min_index`.

use std::time::Duration;

use hraftd_client::wire;
use hraftd_client::wire::CompareOp;
use hraftd_client::wire::CompareTarget;
use hraftd_client::wire::TxnCompare;
use hraftd_client::wire::TxnOp;
use hraftd_client::wire::TxnOpResult;
use hraftd_client::wire::TxnRequest;
use hraftd_client::Client;
use hraftd_client::ErrorCode;
use hraftd_client::RangeQuery;
use hraftd_client::ReadLevel;
use hraftd_client::ReadOpts;
use reqwest::Method;
use reqwest::StatusCode;

use crate::common::wait_for;
use crate::common::TestCluster;

const STALE: ReadOpts = ReadOpts {
    level: ReadLevel::Stale,
    min_index: None,
    wait: None,
};
const CONSISTENT: ReadOpts = ReadOpts {
    level: ReadLevel::Consistent,
    min_index: None,
    wait: None,
};

/// Node `i`'s own view of `key` once it has applied `index` (a stale read with
/// `min_index`: read-your-writes without the leader).
async fn kv_at(c: &TestCluster, i: usize, key: &str, index: u64) -> Option<wire::KeyValue> {
    let opts = ReadOpts::level(ReadLevel::Stale).min_index(index);
    c.redirecting_client(i)
        .get_kv(key, opts)
        .await
        .unwrap_or_else(|e| panic!("GET {key} on node{i} at index {index}: {e}"))
}

#[tokio::test]
async fn metadata_counts_versions_and_is_the_same_on_every_node_after_a_restart() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.must_leader().await;
    let client = c.redirecting_client(leader);

    let i1 = client.put("cfg", "a").await.unwrap();
    let i2 = client.put("cfg", "b").await.unwrap();
    let kv = client.get_kv("cfg", CONSISTENT).await.unwrap().unwrap();
    assert_eq!(kv.value.as_deref(), Some("b"));
    assert_eq!((kv.create_index, kv.mod_index, kv.version), (i1, i2, 2));

    // Deleting and creating again starts over.
    client.delete("cfg").await.unwrap();
    let i4 = client.put("cfg", "c").await.unwrap();
    let kv = client.get_kv("cfg", CONSISTENT).await.unwrap().unwrap();
    assert_eq!((kv.create_index, kv.mod_index, kv.version), (i4, i4, 1));

    // Every node derives the same metadata from the log.
    for i in 0..3 {
        assert_eq!(kv_at(&c, i, "cfg", i4).await.as_ref(), Some(&kv), "node{i}");
    }

    // Headers: the ETag is the mod_index, X-Hraftd-Index the applied index.
    let (status, h, body) = c
        .raw(leader, Method::GET, "/key/cfg?level=consistent", "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({"cfg": "c"}));
    assert_eq!(h["etag"].to_str().unwrap(), format!("\"{i4}\""));
    let at: u64 = h["x-hraftd-index"].to_str().unwrap().parse().unwrap();
    assert!(at >= i4, "read at {at}, before the write at {i4}");
    let (status, h, _) = c.raw(leader, Method::GET, "/key/nope", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(h.contains_key("x-hraftd-index"), "404s carry the index too");

    // kill -9 of every node: the metadata comes back with the data.
    for i in 0..3 {
        c.kill(i);
    }
    for i in 0..3 {
        c.restart(i);
    }
    c.must_leader().await;
    for i in 0..3 {
        assert_eq!(
            kv_at(&c, i, "cfg", i4).await.as_ref(),
            Some(&kv),
            "node{i} after restart"
        );
    }
}

#[tokio::test]
async fn a_follower_that_catches_up_by_snapshot_has_the_same_metadata() {
    let mut c = TestCluster::start(3, &["-snapshot-threshold", "20"]).await;
    let (leader, lagger) = c.must_leave_a_follower_behind(60).await;
    let client = c.redirecting_client(leader);
    let last = client.put("k000", "again").await.unwrap();
    c.restart(lagger);
    let want = client.get_kv("k000", CONSISTENT).await.unwrap().unwrap();
    assert_eq!(want.version, 2);
    // Once the restarted node answers, and has applied the last write (by snapshot).
    let lagging = c.redirecting_client(lagger);
    let opts = ReadOpts::level(ReadLevel::Stale).min_index(last);
    let got = wait_for(
        "the restarted follower to answer",
        Duration::from_secs(20),
        || async { lagging.get_kv("k000", opts).await.ok() },
    )
    .await;
    assert_eq!(got, Some(want));
    let want = client.get_kv("k059", CONSISTENT).await.unwrap().unwrap();
    assert_eq!(kv_at(&c, lagger, "k059", last).await, Some(want));
}

#[tokio::test]
async fn compare_and_set_applies_only_at_the_expected_index() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.must_leader().await;
    let follower = (leader + 1) % 3;
    // Through a follower: the 307 is followed with the query kept.
    let client = c.redirecting_client(follower);

    let created = client.put_cas("lock", "me", 0).await.unwrap();
    let e = client.put_cas("lock", "you", 0).await.unwrap_err();
    assert_eq!(e.status(), Some(412), "{e}");
    let current = e.cas_failed().expect("a failed compare").expect("the key");
    assert_eq!(current.value.as_deref(), Some("me"));
    assert_eq!(current.mod_index, created);

    let e = client
        .put_cas("lock", "you", created + 1000)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PreconditionFailed));
    let moved = client.put_cas("lock", "me2", created).await.unwrap();
    assert!(moved > created);
    let e = client.delete_cas("lock", created).await.unwrap_err();
    assert_eq!(e.status(), Some(412));
    client.delete_cas("lock", moved).await.unwrap();
    assert_eq!(client.get_kv("lock", CONSISTENT).await.unwrap(), None);
    let e = client.put_cas("missing", "x", 7).await.unwrap_err();
    assert_eq!(
        e.cas_failed(),
        Some(None),
        "the current of a missing key is null"
    );

    // The HTTP forms: If-None-Match: * and If-Match: "<mod_index>"; the 412 body.
    let url = c.nodes[leader].url("/key/h");
    let put = |h: (&'static str, String), v: &'static str| {
        c.client.put(&url).header(h.0, h.1).body(v).send()
    };
    let r = put(("If-None-Match", "*".into()), "1").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let index = r.json::<wire::WriteResponse>().await.unwrap().index;
    let r = put(("If-None-Match", "*".into()), "2").await.unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "precondition_failed");
    assert_eq!(body["current"]["value"], "1");
    assert_eq!(body["current"]["mod_index"], index);
    let r = put(("If-Match", format!("\"{index}\"")), "3")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Bad input changes nothing.
    for bad in ["/key/h?cas=abc", "/key/h?cas=-1", "/key/h?cas=1.5"] {
        let (status, _, body) = c.raw(leader, Method::PUT, bad, "4").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let r = put(("If-Match", "42".into()), "5").await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "an unquoted If-Match");
    let kv = client.get_kv("h", CONSISTENT).await.unwrap().unwrap();
    assert_eq!((kv.value.as_deref(), kv.version), (Some("3"), 2));
}

/// Concurrent increments by compare-and-set: every one that succeeded saw the value it
/// replaced, so none is lost and the counter ends at the number of successes.
#[tokio::test]
async fn concurrent_compare_and_set_increments_lose_nothing() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.must_leader().await;
    let endpoints: Vec<String> = c.nodes.iter().map(|n| n.http.clone()).collect();
    let client = Client::new(endpoints.clone());
    client.put("counter", "0").await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..6 {
        let client = Client::new([endpoints[w % 3].clone()]);
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            let mut conflicts = 0;
            while done < 10 {
                let kv = client.get_kv("counter", CONSISTENT).await.unwrap().unwrap();
                let n: u64 = kv.value.unwrap().parse().unwrap();
                match client
                    .put_cas("counter", &(n + 1).to_string(), kv.mod_index)
                    .await
                {
                    Ok(_) => done += 1,
                    Err(e) if e.cas_failed().is_some() => conflicts += 1,
                    Err(e) => panic!("increment: {e}"),
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let kv = c
        .redirecting_client(leader)
        .get_kv("counter", CONSISTENT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        kv.value.as_deref(),
        Some("60"),
        "{conflicts} conflicts on the way"
    );
    assert_eq!(kv.version, 61);
}

fn cmp(key: &str, target: CompareTarget, op: CompareOp, value: serde_json::Value) -> TxnCompare {
    TxnCompare {
        key: key.into(),
        target,
        op,
        value,
    }
}

#[tokio::test]
async fn transactions_run_one_branch_atomically() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.must_leader().await;
    let client = c.redirecting_client((leader + 2) % 3);

    // Take a lock only if nobody holds it, and record the owner, in one entry.
    let take = |owner: &str| TxnRequest {
        compare: vec![cmp(
            "lock",
            CompareTarget::Exists,
            CompareOp::Eq,
            false.into(),
        )],
        success: vec![
            TxnOp::Put {
                key: "lock".into(),
                value: owner.into(),
                lease: None,
            },
            TxnOp::Put {
                key: "owners/last".into(),
                value: owner.into(),
                lease: None,
            },
        ],
        failure: vec![TxnOp::Get { key: "lock".into() }],
    };
    let a = client.txn(&take("a")).await.unwrap();
    assert!(a.succeeded);
    assert_eq!(a.results.len(), 2);
    let b = client.txn(&take("b")).await.unwrap();
    assert!(!b.succeeded);
    match &b.results[..] {
        [TxnOpResult::Get { key, kv: Some(kv) }] => {
            assert_eq!(key, "lock");
            assert_eq!(kv.value.as_deref(), Some("a"));
            assert_eq!((kv.create_index, kv.mod_index), (a.index, a.index));
        }
        other => panic!("failure branch gave {other:?}"),
    }
    assert_eq!(
        client
            .get_kv("owners/last", CONSISTENT)
            .await
            .unwrap()
            .unwrap()
            .value
            .as_deref(),
        Some("a")
    );

    // Compares on versions and values; a delete_prefix that counts.
    client.set(&[("cfg/a", "1"), ("cfg/b", "2")]).await.unwrap();
    let t = TxnRequest {
        compare: vec![
            cmp("cfg/a", CompareTarget::Version, CompareOp::Eq, 1.into()),
            cmp("cfg/b", CompareTarget::Value, CompareOp::Gt, "1".into()),
            cmp("cfg/none", CompareTarget::ModIndex, CompareOp::Lt, 1.into()),
        ],
        success: vec![
            TxnOp::DeletePrefix {
                prefix: "cfg/".into(),
            },
            TxnOp::Get {
                key: "cfg/a".into(),
            },
            TxnOp::Delete { key: "lock".into() },
        ],
        failure: vec![],
    };
    let r = client.txn(&t).await.unwrap();
    assert!(r.succeeded, "{r:?}");
    assert_eq!(
        r.results,
        vec![
            TxnOpResult::DeletePrefix {
                prefix: "cfg/".into(),
                deleted: 2
            },
            TxnOpResult::Get {
                key: "cfg/a".into(),
                kv: None
            },
            TxnOpResult::Delete {
                key: "lock".into(),
                deleted: 1
            },
        ]
    );

    // Bad transactions are refused whole, before anything is proposed.
    let index = c.status(leader).await.unwrap().applied_index;
    let too_many = TxnRequest {
        success: (0..129)
            .map(|i| TxnOp::Put {
                key: format!("t{i}"),
                value: "x".into(),
                lease: None,
            })
            .collect(),
        ..Default::default()
    };
    let e = client.txn(&too_many).await.unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    for bad in [
        r#"{"compare":[{"key":"k","target":"colour","op":"==","value":"x"}]}"#,
        r#"{"compare":[{"key":"k","target":"version","op":"~","value":1}]}"#,
        r#"{"compare":[{"key":"k","target":"version","op":"==","value":"1"}]}"#,
        r#"{"compare":[{"key":"k","target":"exists","op":"<","value":true}]}"#,
        r#"{"success":[{"op":"rename","key":"k"}]}"#,
        r#"{"success":[{"op":"delete_prefix","prefix":""}]}"#,
        r#"{"success":[{"op":"put","key":"","value":"x"}]}"#,
        r#"{"sucess":[]}"#,
        r#"[]"#,
    ] {
        let (status, _, body) = c.raw(leader, Method::POST, "/txn", bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["code"], "bad_request");
    }
    assert_eq!(
        c.status(leader).await.unwrap().applied_index,
        index,
        "nothing was proposed"
    );
}

#[tokio::test]
async fn ranges_page_through_one_snapshot_each_and_prefix_deletes_count() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.must_leader().await;
    let client = c.redirecting_client(leader);
    let pairs: Vec<(String, String)> = (0..25)
        .map(|i| (format!("r/{i:02}"), format!("v{i}")))
        .collect();
    client.set(&pairs).await.unwrap();
    client
        .set(&[("r0", "outside"), ("q", "before"), ("r/é", "utf8")])
        .await
        .unwrap();

    let mut q = RangeQuery::prefix("r/");
    q.limit = Some(10);
    let first = client.range(&q, CONSISTENT).await.unwrap();
    assert_eq!(first.kvs.len(), 10);
    assert!(first.more);
    assert_eq!(first.next.as_deref(), Some("r/09"));
    assert_eq!(first.kvs[0].key, "r/00");
    assert_eq!(first.kvs[0].value.as_deref(), Some("v0"));
    let all = client.range_all(&q, CONSISTENT).await.unwrap();
    let keys: Vec<&str> = all.iter().map(|kv| kv.key.as_str()).collect();
    let mut want: Vec<String> = pairs.iter().map(|(k, _)| k.clone()).collect();
    want.push("r/é".into());
    assert_eq!(keys, want);

    // keys_only, from/to (half-open), stale on a follower with min_index.
    let follower = (leader + 1) % 3;
    let mut q = RangeQuery {
        keys: hraftd_client::Keys::Between {
            from: "r/05".into(),
            to: Some("r/08".into()),
        },
        after: None,
        limit: None,
        keys_only: true,
    };
    let index = client.put("r/06", "new").await.unwrap();
    let page = c
        .redirecting_client(follower)
        .range(&q, ReadOpts::level(ReadLevel::Stale).min_index(index))
        .await
        .unwrap();
    let keys: Vec<&str> = page.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["r/05", "r/06", "r/07"]);
    assert!(page.kvs.iter().all(|kv| kv.value.is_none()));
    assert!(page.index >= index);
    assert_eq!(page.kvs[1].mod_index, index);
    q.keys_only = false;

    // Bad ranges are 400s.
    for bad in [
        "/key?prefix=r/&limit=0",
        "/key?prefix=r/&limit=10001",
        "/key?prefix=r/&limit=x",
        "/key?prefix=r/&from=a",
        "/key?prefix=r/&key=a",
        "/key?to=b",
        "/key?prefix=r/&keys_only=maybe",
        "/key?prefix=r/&min_index=-3",
        "/key?prefix=r/&wait=61",
    ] {
        let (status, _, body) = c.raw(leader, Method::GET, bad, "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, _, _) = c.raw(leader, Method::DELETE, "/key?prefix=", "").await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "an empty prefix would delete everything"
    );

    // A prefix delete: one entry, counted; the neighbours stay.
    let done = client.delete_prefix("r/").await.unwrap();
    assert_eq!(done.deleted, 26);
    let left = client
        .range(&RangeQuery::prefix("r/"), CONSISTENT)
        .await
        .unwrap();
    assert!(left.kvs.is_empty() && !left.more && left.next.is_none());
    assert!(left.index >= done.index);
    assert!(client.get_kv("r0", STALE).await.unwrap().is_some());
    assert!(client.get_kv("q", STALE).await.unwrap().is_some());
}

#[tokio::test]
async fn min_index_waits_for_the_index_or_says_how_far_it_got() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.must_leader().await;
    let follower = (leader + 1) % 3;
    let index = c
        .redirecting_client(leader)
        .put("ryw", "mine")
        .await
        .unwrap();
    // Read-your-writes on a follower, at once after the write: never the old state.
    let kv = kv_at(&c, follower, "ryw", index).await.expect("the write");
    assert_eq!(kv.value.as_deref(), Some("mine"));

    let far = index + 1_000_000;
    let started = std::time::Instant::now();
    let (status, _, body) = c
        .raw(
            follower,
            Method::GET,
            &format!("/key/ryw?level=stale&min_index={far}&wait=300ms"),
            "",
        )
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["code"], "timeout");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains(&far.to_string()) && msg.contains("applied"),
        "{msg}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test]
async fn the_key_api_works_inside_a_group() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.must_leader().await;
    let admin = c.redirecting_client(leader);
    let ids: Vec<&str> = c.nodes.iter().map(|n| n.id.as_str()).collect();
    admin.create_group("g1", &ids).await.unwrap();
    let g = Client::new(c.nodes.iter().map(|n| n.http.clone())).in_group("g1");
    // Every member learns of the new group's leader soon after it is elected.
    let i = wait_for(
        "the first write in group g1",
        Duration::from_secs(10),
        || async {
            match g.put_cas("svc/a", "1", 0).await {
                Ok(i) => Some(i),
                Err(e) if e.code() == Some(ErrorCode::NoLeader) => None,
                Err(e) => panic!("PUT svc/a in g1: {e}"),
            }
        },
    )
    .await;
    let kv = g.get_kv("svc/a", CONSISTENT).await.unwrap().unwrap();
    assert_eq!((kv.create_index, kv.version), (i, 1));
    assert!(
        admin.get_kv("svc/a", CONSISTENT).await.unwrap().is_none(),
        "groups are apart"
    );
    let t = TxnRequest {
        compare: vec![cmp(
            "svc/a",
            CompareTarget::ModIndex,
            CompareOp::Eq,
            i.into(),
        )],
        success: vec![TxnOp::Put {
            key: "svc/b".into(),
            value: "2".into(),
            lease: None,
        }],
        failure: vec![],
    };
    assert!(g.txn(&t).await.unwrap().succeeded);
    let page = g
        .range(&RangeQuery::prefix("svc/"), CONSISTENT)
        .await
        .unwrap();
    assert_eq!(page.kvs.len(), 2);
    assert_eq!(g.delete_prefix("svc/").await.unwrap().deleted, 2);
}
