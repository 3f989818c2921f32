//! Watches and blocking reads against real clusters: every change in order on any node,
//! resuming on another node, one event per key of a prefix delete, a bounded history that
//! answers `410` past its start and survives restarts and snapshot installs.

use std::time::Duration;

use hraftd_client::wire::EventKind;
use hraftd_client::Client;
use hraftd_client::ErrorCode;
use hraftd_client::WatchItem;
use hraftd_client::WatchTarget;
use hraftd_client::Watcher;
use reqwest::Method;
use reqwest::StatusCode;

use crate::common::TestCluster;

/// The next entry of `w`, within 15 s: (index, [(kind, key, value)]).
async fn must_next(w: &mut Watcher) -> (u64, Vec<(EventKind, String, Option<String>)>) {
    let endpoint = w.endpoint().to_string();
    let Ok(item) = tokio::time::timeout(Duration::from_secs(15), w.next()).await else {
        panic!("no watch event from {endpoint} within 15 s");
    };
    let item = item.unwrap_or_else(|e| panic!("watch on {endpoint}: {e}"));
    match item {
        Some(WatchItem::Entry { index, events }) => (
            index,
            events
                .into_iter()
                .map(|e| (e.kind, e.kv.key, e.kv.value))
                .collect(),
        ),
        other => panic!("expected an entry from {}, got {other:?}", w.endpoint()),
    }
}

fn put(k: &str, v: &str) -> (EventKind, String, Option<String>) {
    (EventKind::Put, k.into(), Some(v.into()))
}

fn del(k: &str) -> (EventKind, String, Option<String>) {
    (EventKind::Delete, k.into(), None)
}

async fn must_watch(c: &Client, target: WatchTarget, from: Option<u64>) -> Watcher {
    c.watch(&target, from)
        .await
        .unwrap_or_else(|e| panic!("starting a watch of {target:?} from {from:?}: {e}"))
}

#[tokio::test]
async fn followers_stream_every_change_in_order_and_resume_on_another_node() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.must_leader().await;
    let (f1, f2) = ((leader + 1) % 3, (leader + 2) % 3);
    let writer = c.redirecting_client(leader);
    let base = writer.put("before", "x").await.unwrap();

    let mut w = must_watch(
        &c.redirecting_client(f1),
        WatchTarget::Prefix("app/".into()),
        None,
    )
    .await;
    assert!(
        w.start_index() >= base,
        "a watch from now starts at the node's applied index"
    );
    let i1 = writer.put("app/a", "1").await.unwrap();
    writer.put("other", "no").await.unwrap();
    let i2 = writer.put("app/b", "2").await.unwrap();
    assert_eq!(must_next(&mut w).await, (i1, vec![put("app/a", "1")]));
    assert_eq!(must_next(&mut w).await, (i2, vec![put("app/b", "2")]));

    // A prefix delete is one entry with one event per key, handed out whole.
    let d = writer.delete_prefix("app/").await.unwrap();
    assert_eq!(d.deleted, 2);
    assert_eq!(
        must_next(&mut w).await,
        (d.index, vec![del("app/a"), del("app/b")])
    );

    // The client stops here, changes go on, and it resumes on the other follower from the
    // last index it saw: nothing missed, nothing twice.
    let last = w.last_index();
    drop(w);
    let i3 = writer.put("app/c", "3").await.unwrap();
    let i4 = writer.put("app/c", "4").await.unwrap();
    let mut w = must_watch(
        &c.redirecting_client(f2),
        WatchTarget::Prefix("app/".into()),
        Some(last),
    )
    .await;
    assert_eq!(must_next(&mut w).await, (i3, vec![put("app/c", "3")]));
    assert_eq!(must_next(&mut w).await, (i4, vec![put("app/c", "4")]));

    // From the very start of the history: every change again, the same on every node.
    let mut a = must_watch(
        &c.redirecting_client(f1),
        WatchTarget::Key("app/c".into()),
        Some(0),
    )
    .await;
    assert_eq!(must_next(&mut a).await, (i3, vec![put("app/c", "3")]));
    assert_eq!(must_next(&mut a).await, (i4, vec![put("app/c", "4")]));
}

#[tokio::test]
async fn a_browser_resumes_with_last_event_id_and_bad_watches_get_400() {
    let c = TestCluster::start(1, &[]).await;
    let client = c.redirecting_client(0);
    let i1 = client.put("k", "1").await.unwrap();
    let i2 = client.put("k", "2").await.unwrap();
    // Last-Event-ID wins over from=, as an EventSource reconnecting sends it.
    let resp = c
        .client
        .get(c.nodes[0].url("/watch?key=k&from=0"))
        .header("Last-Event-ID", i1.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut resp = resp;
    let mut text = String::new();
    while !text.contains("id: ") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        text.contains(&format!(
            "event: put\ndata: {{\"key\":\"k\",\"value\":\"2\",\"create_index\":{i1},\"mod_index\":{i2},\"version\":2}}\nid: {i2}\n\n"
        )),
        "{text}"
    );
    assert!(!text.contains(&format!("id: {i1}\n")), "{text}");

    for (path, why) in [
        ("/watch", "no key or prefix"),
        ("/watch?key=a&prefix=b", "both"),
        ("/watch?key=", "empty key"),
        ("/watch?key=a&from=-1", "negative from"),
        ("/watch?key=a&from=x", "non-numeric from"),
    ] {
        let (status, _, body) = c.raw(0, Method::GET, path, "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{why}: {body}");
        assert_eq!(body["code"], "bad_request", "{why}");
    }
    let r = c
        .client
        .get(c.nodes[0].url("/watch?key=a"))
        .header("Last-Event-ID", "soon")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_history_is_bounded_answers_410_and_survives_restarts_and_snapshot_installs() {
    let mut c = TestCluster::start(3, &["-watch-history", "20", "-snapshot-threshold", "10"]).await;
    let leader = c.must_leader().await;
    let writer = c.redirecting_client(leader);
    let first = writer.put("h/0", "0").await.unwrap();
    let (_, lagger) = c.must_leave_a_follower_behind(60).await;
    let mut last = 0;
    for i in 1..=5 {
        last = writer.put(&format!("h/{i}"), &i.to_string()).await.unwrap();
    }

    // 60+ changes later a history of 20 (+ slack) no longer reaches the first one.
    let err = c
        .redirecting_client(leader)
        .watch(&WatchTarget::Prefix("h/".into()), Some(first - 1))
        .await
        .expect_err("a start before the history must be refused");
    assert_eq!(err.code(), Some(ErrorCode::Compacted), "{err}");
    let (status, _, body) = c
        .raw(
            leader,
            Method::GET,
            &format!("/watch?prefix=h/&from={first}"),
            "",
        )
        .await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    let oldest = body["oldest_index"].as_u64().expect("oldest_index");
    assert!(oldest > first && oldest < last, "{body}");

    // The follower that was down catches up by snapshot (the log was purged) and serves
    // the leader's history: a watch from before its install sees the last changes.
    c.restart(lagger);
    c.must_see(lagger, "h/5", "5").await;
    let mut w = must_watch(
        &c.redirecting_client(lagger),
        WatchTarget::Prefix("h/".into()),
        Some(last - 5),
    )
    .await;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let (i, ev) = must_next(&mut w).await;
        assert!(
            i > last - 5 && i <= last,
            "index {i} outside ({}, {last}]",
            last - 5
        );
        seen.extend(ev);
    }
    let want: Vec<_> = (1..=5)
        .map(|i| put(&format!("h/{i}"), &i.to_string()))
        .collect();
    assert_eq!(seen, want);

    // A restarted node keeps its history.
    drop(w);
    c.kill(lagger);
    c.restart(lagger);
    c.must_see(lagger, "h/5", "5").await;
    let mut w = must_watch(
        &c.redirecting_client(lagger),
        WatchTarget::Key("h/5".into()),
        Some(last - 1),
    )
    .await;
    assert_eq!(must_next(&mut w).await, (last, vec![put("h/5", "5")]));
}

#[tokio::test]
async fn a_blocking_read_answers_at_the_next_change_or_after_its_wait() {
    let c = TestCluster::start(1, &[]).await;
    let client = c.redirecting_client(0);
    let i1 = client.put("b", "1").await.unwrap();
    let url = |q: &str| c.nodes[0].url(&format!("/key/b?{q}"));

    // Changed since the index given: at once.
    let r = c
        .client
        .get(url("wait_index=0&wait=10s"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["x-hraftd-index"].to_str().unwrap(),
        i1.to_string()
    );

    // Not changed since: waits for the next change.
    let started = std::time::Instant::now();
    let waiting = tokio::spawn({
        let http = c.client.clone();
        let u = url(&format!("wait_index={i1}&wait=20s"));
        async move { http.get(u).send().await.unwrap() }
    });
    crate::common::wait_for(
        "the blocking read to wait",
        Duration::from_secs(10),
        || async { (c.metric(0, "hraftd_watchers").await == 1.0).then_some(()) },
    )
    .await;
    assert!(
        !waiting.is_finished(),
        "a blocking read must wait for a change"
    );
    let i2 = client.put("b", "2").await.unwrap();
    let r = waiting.await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(
        r.headers()["x-hraftd-index"].to_str().unwrap(),
        i2.to_string()
    );
    assert_eq!(r.text().await.unwrap(), r#"{"b":"2"}"#);

    // A delete wakes it too (404, with the index).
    let waiting = tokio::spawn({
        let http = c.client.clone();
        let u = url(&format!("wait_index={i2}&wait=20s"));
        async move { http.get(u).send().await.unwrap() }
    });
    let i3 = client.delete("b").await.unwrap();
    let r = waiting.await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(
        r.headers()["x-hraftd-index"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= i3
    );

    // Nothing happens: it answers after its wait, with the state as it is.
    let started = std::time::Instant::now();
    let r = c
        .client
        .get(url(&format!("wait_index={i3}&wait=500ms")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(started.elapsed() >= Duration::from_millis(450));
}

#[tokio::test]
async fn watches_are_bounded_per_node_and_work_in_groups() {
    // A node notices a watcher has gone when it next writes to it: a keepalive of 1 s makes
    // that soon.
    let c = TestCluster::start(1, &["-max-watchers", "2", "-watch-keepalive", "1s"]).await;
    let client = c.redirecting_client(0);
    let _a = must_watch(&client, WatchTarget::Key("a".into()), None).await;
    let _b = must_watch(&client, WatchTarget::Key("b".into()), None).await;
    let err = client
        .watch(&WatchTarget::Key("c".into()), None)
        .await
        .expect_err("a third watch must be refused");
    assert_eq!(err.status(), Some(503), "{err}");
    drop(_a);
    // The place is given back once the server sees the stream closed.
    let w = crate::common::wait_for("a watch place to free up", Duration::from_secs(10), || {
        let client = &client;
        async move { client.watch(&WatchTarget::Key("c".into()), None).await.ok() }
    })
    .await;
    drop(w);
    drop(_b);

    client.create_group("g1", &["node0"]).await.unwrap();
    let g = client.in_group("g1");
    let mut w = crate::common::wait_for("a watch in group g1", Duration::from_secs(10), || {
        let g = &g;
        async move {
            g.watch(&WatchTarget::Prefix(String::new()), None)
                .await
                .ok()
        }
    })
    .await;
    let i = g.put("x", "1").await.unwrap();
    client.put("x", "default").await.unwrap();
    let i2 = g.put("y", "2").await.unwrap();
    assert_eq!(must_next(&mut w).await, (i, vec![put("x", "1")]));
    assert_eq!(must_next(&mut w).await, (i2, vec![put("y", "2")]));
}

#[tokio::test]
async fn a_watcher_that_does_not_read_is_dropped_with_a_last_event_saying_so() {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    let c = TestCluster::start(1, &["-body-limit", "2000000"]).await;
    let client = c.redirecting_client(0);
    // A raw connection that asks for a watch and then reads nothing.
    let mut sock = tokio::net::TcpStream::connect(&c.nodes[0].http)
        .await
        .unwrap();
    sock.write_all(b"GET /watch?prefix=big/ HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    crate::common::wait_for("the watch to open", Duration::from_secs(10), || async {
        (c.metric(0, "hraftd_watchers").await == 1.0).then_some(())
    })
    .await;
    // Far more than the socket buffers and the watcher's queue (32 MiB) hold.
    let value = "x".repeat(1 << 20);
    for i in 0..80 {
        client.put(&format!("big/{i}"), &value).await.unwrap();
    }
    // The node drops it: what was queued is not delivered, and the stream ends with the
    // reason; then its place is free again.
    let mut tail = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => {
                tail.extend_from_slice(&buf[..n]);
                let keep = tail.len().saturating_sub(4096);
                tail.drain(..keep);
            }
            Ok(Err(e)) => panic!("reading the stream: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&tail);
    assert!(
        text.contains("event: error\ndata: {") && text.contains("\"code\":\"slow_consumer\""),
        "the stream's end: {}",
        &text[text.len().saturating_sub(300)..]
    );
    crate::common::wait_for(
        "the slow watcher's place",
        Duration::from_secs(10),
        || async { (c.metric(0, "hraftd_watchers").await == 0.0).then_some(()) },
    )
    .await;
}
