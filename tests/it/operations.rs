//! Operating a cluster: health endpoints, metrics, backup and restore, graceful shutdown.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::process::Output;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use crate::common::bin;
use crate::common::wait_for;
use crate::common::TestCluster;
use crate::common::DEADLINE;
use reqwest::Method;
use reqwest::StatusCode;
use serde_json::json;
use serde_json::Value;

/// The value of the first sample of `name` that has every one of `labels` (e.g.
/// `role="leader"`), from a Prometheus text page.
fn sample(page: &str, name: &str, labels: &[&str]) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            (series == name || series.starts_with(&format!("{name}{{")))
                && labels.iter().all(|want| series.contains(want))
        })
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

/// Runs `hraftd restore --from FILE FLAGS DIR` to completion.
fn restore(file: &Path, flags: &[&str], dir: &Path) -> Output {
    Command::new(bin())
        .args(["restore", "--from"])
        .arg(file)
        .args(flags)
        .arg(dir)
        .output()
        .expect("run hraftd restore")
}

async fn text(c: &TestCluster, i: usize, path: &str) -> (StatusCode, String) {
    let r = c
        .client
        .get(c.nodes[i].url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} on node{i}: {e}"));
    (r.status(), r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn health_and_metrics_on_a_real_cluster() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.must_leader().await;
    c.must_put(leader, "k", "v").await;
    for i in 0..3 {
        c.must_see(i, "k", "v").await;
        let (st, _, v) = c.raw(i, Method::GET, "/livez", "").await;
        assert_eq!((st, v), (StatusCode::OK, json!({"status": "live"})));
        wait_for(&format!("node{i} /readyz 200"), DEADLINE, || async {
            (c.raw(i, Method::GET, "/readyz", "").await.0 == StatusCode::OK).then_some(())
        })
        .await;
    }

    // The leader's page: role, indexes, one lag series per follower, RocksDB sizes, and
    // the request counters of the requests above.
    let (st, page) = text(&c, leader, "/metrics").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        sample(&page, "hraftd_raft_role", &["role=\"leader\""]),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, "hraftd_raft_role", &["role=\"follower\""]),
        Some(0.0)
    );
    assert_eq!(sample(&page, "hraftd_raft_voters", &[]), Some(3.0));
    assert_eq!(sample(&page, "hraftd_ready", &[]), Some(1.0));
    let applied = sample(&page, "hraftd_raft_applied_index", &[]).unwrap();
    assert!(applied >= 1.0, "{page}");
    assert!(sample(&page, "hraftd_raft_commit_index", &[]).unwrap() >= applied);
    for f in (0..3).filter(|&f| f != leader) {
        let label = format!("follower=\"{}\"", c.nodes[f].id);
        assert!(
            sample(&page, "hraftd_raft_replication_lag_entries", &[&label]).is_some(),
            "no lag series for {label}:\n{page}"
        );
    }
    for cf in ["logs", "data"] {
        let label = format!("cf=\"{cf}\"");
        assert!(sample(&page, "hraftd_rocksdb_memtable_bytes", &[&label]).is_some_and(|b| b > 0.0));
        assert!(sample(&page, "hraftd_rocksdb_sst_bytes", &[&label]).is_some());
    }
    assert!(sample(&page, "hraftd_raft_term", &[]).unwrap() >= 1.0);
    let post_ok = ["route=\"/key\"", "method=\"POST\"", "code=\"200\""];
    assert_eq!(
        sample(&page, "hraftd_http_requests_total", &post_ok),
        Some(1.0),
        "{page}"
    );
    let post = ["route=\"/key\"", "method=\"POST\""];
    assert_eq!(
        sample(&page, "hraftd_http_request_duration_seconds_count", &post),
        Some(1.0)
    );
    // A key never becomes a label: the route pattern does.
    c.must_get(leader, "some/key", "stale").await;
    let (_, page) = text(&c, leader, "/metrics").await;
    assert!(!page.contains("some/key"), "{page}");
    assert!(page.contains("route=\"/key/{key:.*}\""), "{page}");

    // A follower restarted alone knows no leader: not ready, and says why.
    let f = (0..3).find(|&i| i != leader).unwrap();
    for i in 0..3 {
        c.kill(i);
    }
    c.restart(f);
    let (st, h, v) = wait_for("the lone node to serve /readyz", DEADLINE, || async {
        let r = c.client.get(c.nodes[f].url("/readyz")).send().await.ok()?;
        let (st, h) = (r.status(), r.headers().clone());
        Some((st, h, r.json::<Value>().await.ok()?))
    })
    .await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("no leader known"),
        "{v}"
    );
    assert_eq!(h["retry-after"], "1");
    let (st, _, _) = c.raw(f, Method::GET, "/livez", "").await;
    assert_eq!(st, StatusCode::OK, "live even when not ready");
}

#[tokio::test]
async fn backup_from_a_follower_restores_into_a_new_cluster_that_others_join() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.must_leader().await;
    // 10,000 keys in 100 requests of 100.
    let mut want = BTreeMap::new();
    for batch in 0..100 {
        let mut body = serde_json::Map::new();
        for j in 0..100 {
            let (k, v) = (
                format!("key{batch:03}-{j:02}"),
                format!("value-{batch}-{j}"),
            );
            body.insert(k.clone(), Value::String(v.clone()));
            want.insert(k, v);
        }
        let (st, _, v) = c
            .raw(
                leader,
                Method::POST,
                "/key",
                &Value::Object(body).to_string(),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    // A key written and deleted must not be in the backup.
    c.must_put(leader, "gone", "x").await;
    let (st, _, _) = c.raw(leader, Method::DELETE, "/key/gone", "").await;
    assert_eq!(st, StatusCode::OK);

    // From a follower: 307 to the leader by default, then the leader's image.
    let f = (0..3).find(|&i| i != leader).unwrap();
    let r = c
        .client
        .get(c.nodes[f].url("/backup"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        r.headers()["location"],
        format!("http://{}/backup", c.nodes[leader].http).as_str()
    );
    let r = c
        .follow
        .get(c.nodes[f].url("/backup"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-hraftd-keys"], "10000");
    let index: u64 = r.headers()["x-hraftd-applied-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(index >= 102, "applied index {index}");
    let bytes = r.bytes().await.unwrap();
    let file = c.tmp.path().join("backup.snap");
    std::fs::write(&file, &bytes).unwrap();

    // A corrupted copy is refused before anything is created.
    let bad = c.tmp.path().join("bad.snap");
    let mut b = bytes.to_vec();
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    std::fs::write(&bad, &b).unwrap();
    let bad_dir = c.tmp.path().join("never");
    let out = restore(&bad, &[], &bad_dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a valid hraftd backup"), "{err}");
    assert!(!bad_dir.exists());

    // Restore into a new single-node cluster under new addresses, then start it.
    let mut r = TestCluster::empty(&[]);
    let n = r.new_node();
    let node = &r.nodes[n];
    let flags = ["-id", &node.id, "-haddr", &node.http, "-raddr", &node.raft];
    let out = restore(&file, &flags, &node.dir);
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("restored 10000 keys"), "{said}");
    // Restoring twice into the same directory is refused.
    let again = restore(&file, &flags, &node.dir);
    assert!(!again.status.success());

    r.restart(n);
    r.must_leader().await;
    for (k, v) in want.iter().step_by(97).chain(want.iter().last()) {
        assert_eq!(
            r.must_get(n, k, "consistent").await.as_deref(),
            Some(v.as_str())
        );
    }
    assert_eq!(r.must_get(n, "gone", "consistent").await, None);
    // Every key: a backup of the restored cluster holds exactly the same pairs.
    let again = r
        .follow
        .get(r.nodes[n].url("/backup"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.headers()["x-hraftd-keys"], "10000");

    // A new node joins the restored cluster and catches up.
    let j = r.must_join_new_node().await;
    let (k, v) = want.iter().next().unwrap();
    r.must_see(j, k, v).await;
    let (k, v) = want.iter().last().unwrap();
    r.must_see(j, k, v).await;
}

#[tokio::test]
async fn sigterm_on_the_leader_keeps_every_acknowledged_write_and_a_new_leader_takes_over() {
    let mut c = TestCluster::start(3, &[]).await;
    let old = c.must_leader().await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let urls: Vec<String> = (0..3).map(|i| c.nodes[i].url("/key")).collect();

    // 4 writers of unique keys, through every node, following redirects and retrying
    // errors, until told to stop.
    let mut writers = Vec::new();
    for w in 0..4 {
        let (acked, stop, urls) = (acked.clone(), stop.clone(), urls.clone());
        let client = c.follow.clone();
        writers.push(tokio::spawn(async move {
            let (mut n, mut attempt) = (0, w);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("w{w}-{n}");
                // Each attempt through the next node, so a stopped one is only one in three.
                let url = &urls[attempt % urls.len()];
                attempt += 1;
                let r = client
                    .post(url)
                    .timeout(Duration::from_secs(5))
                    .json(&json!({ &key: "v" }))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status() == StatusCode::OK) {
                    acked.lock().unwrap().push(key);
                    n += 1;
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    let count = || acked.lock().unwrap().len();
    wait_for("100 acknowledged writes", DEADLINE, || async {
        (count() >= 100).then_some(())
    })
    .await;

    let t0 = Instant::now();
    c.terminate(old);
    c.must_exit_cleanly(old, Duration::from_secs(30)).await;
    let stopped_after = t0.elapsed();
    // Told that the leader stopped, followers send clients nowhere until a new leader is
    // elected: 503 (retry), never a redirect to the stopped node.
    for f in (0..3).filter(|&f| f != old) {
        let (st, h, v) = c.raw(f, Method::POST, "/key", r#"{"probe":"1"}"#).await;
        let to = h.get("location").map(|l| l.to_str().unwrap().to_string());
        assert!(
            st == StatusCode::SERVICE_UNAVAILABLE
                || st == StatusCode::OK
                || (st == StatusCode::TEMPORARY_REDIRECT
                    && !to.as_deref().unwrap_or("").contains(&c.nodes[old].http)),
            "node{f} answered {st} {to:?} {v} after the leader stopped"
        );
    }
    let new = c.must_leader().await;
    let elected_after = t0.elapsed();
    assert_ne!(new, old);
    assert!(
        elected_after < Duration::from_secs(10),
        "a new leader took {elected_after:?} after SIGTERM"
    );
    let before = count();
    wait_for(
        "100 more acknowledged writes after the stop",
        DEADLINE,
        || async { (count() >= before + 100).then_some(()) },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let log = std::fs::read_to_string(&c.nodes[old].log).unwrap();
    assert!(log.contains("stepping down as leader"), "{log}");
    eprintln!(
        "old leader exited {stopped_after:?} after SIGTERM; new leader agreed {elected_after:?} after it"
    );

    // Every write acknowledged before, during and after the stop is there.
    let keys = acked.lock().unwrap().clone();
    for k in &keys {
        assert_eq!(
            c.must_get(new, k, "consistent").await.as_deref(),
            Some("v"),
            "acknowledged write {k} is missing"
        );
    }
    // And the old leader, restarted on its disk, catches up with all of them.
    c.restart(old);
    for k in &keys {
        c.must_see(old, k, "v").await;
    }
}

#[tokio::test]
async fn sigterm_on_a_single_node_stops_promptly_and_keeps_its_data() {
    let mut c = TestCluster::start(1, &[]).await;
    c.must_put(0, "k", "v").await;
    let t0 = Instant::now();
    c.terminate(0);
    // Nobody to hand off to: no waiting for a voter that does not exist.
    c.must_exit_cleanly(0, Duration::from_secs(4)).await;
    eprintln!("single node exited {:?} after SIGTERM", t0.elapsed());
    c.restart(0);
    c.must_leader().await;
    assert_eq!(c.must_get(0, "k", "consistent").await.as_deref(), Some("v"));
}

/// A backup made before keys had metadata (`tests/fixtures/backup-before-metadata.snap`,
/// written by `GET /backup` of hraftd at 6996fc7: three keys, one non-ASCII, at index 5)
/// still restores: every key comes back with version 1, created at the restore's index, and
/// compare-and-set works on it from there.
#[tokio::test]
async fn a_backup_made_before_keys_had_metadata_still_restores() {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/backup-before-metadata.snap");
    let mut r = TestCluster::empty(&[]);
    let n = r.new_node();
    let node = &r.nodes[n];
    let flags = ["-id", &node.id, "-haddr", &node.http, "-raddr", &node.raft];
    let out = restore(&fixture, &flags, &node.dir);
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("restored 3 keys (backup taken at index 5)"),
        "{said}"
    );
    r.restart(n);
    r.must_leader().await;
    let client = r.redirecting_client(n);
    let opts = hraftd_client::ReadOpts::level(hraftd_client::ReadLevel::Consistent);
    let page = client
        .range(&hraftd_client::RangeQuery::prefix(""), opts)
        .await
        .unwrap();
    let got: Vec<(&str, Option<&str>, u64)> = page
        .kvs
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_deref(), kv.version))
        .collect();
    assert_eq!(
        got,
        [
            ("config/app/flags", Some(r#"{"beta":false}"#), 1),
            ("config/app/version", Some("2"), 1),
            ("users/ü", Some("ünïcode"), 1),
        ]
    );
    let restored_at = page.kvs[0].mod_index;
    assert!(page
        .kvs
        .iter()
        .all(|kv| kv.create_index == restored_at && kv.mod_index == restored_at));
    let index = client
        .put_cas("config/app/version", "3", restored_at)
        .await
        .unwrap();
    let kv = client
        .get_kv("config/app/version", opts)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (kv.value.as_deref(), kv.version, kv.mod_index),
        (Some("3"), 2, index)
    );
}
