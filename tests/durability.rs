//! `kill -9` of every node while clients write: every acknowledged write is there after
//! all nodes restart.

mod common;

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use common::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9_of_all_nodes() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.must_leader().await;
    let url = c.nodes[leader].url("/key");
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let mut writers = Vec::new();
    for w in 0..8 {
        let (client, url, acked, stop) =
            (c.client.clone(), url.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (k, v) = (format!("w{w}-{n}"), format!("v{n}"));
                let mut body = serde_json::Map::new();
                body.insert(k.clone(), serde_json::Value::String(v.clone()));
                let ok = client
                    .post(&url)
                    .timeout(Duration::from_secs(3))
                    .json(&body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    acked.lock().unwrap().push((k, v));
                }
                n += 1;
            }
        }));
    }
    // Let the writers get some writes acknowledged, then kill everything mid-stream.
    common::wait_for(
        "writers to get 500 writes acknowledged",
        Duration::from_secs(60),
        || {
            let n = acked.lock().unwrap().len();
            async move { (n >= 500).then_some(()) }
        },
    )
    .await;
    for i in 0..3 {
        c.kill(i);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    for i in 0..3 {
        c.restart(i);
    }
    let leader = c.must_leader().await;
    let started = Instant::now();
    for (k, v) in &acked {
        assert_eq!(
            c.must_get(leader, k, "consistent").await.as_deref(),
            Some(v.as_str()),
            "acknowledged write {k}={v} lost after kill -9 of all nodes"
        );
    }
    eprintln!(
        "verified {} acknowledged writes in {:?}",
        acked.len(),
        started.elapsed()
    );
}
