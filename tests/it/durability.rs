//! `kill -9` of every node while clients write: every acknowledged write is there after
//! all nodes restart, and every request (concurrent ones are group-committed into shared
//! log entries) was applied all-or-nothing.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use crate::common::TestCluster;

const WRITERS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9_of_all_nodes() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.must_leader().await;
    let url = c.nodes[leader].url("/key");
    // Per writer: requests sent, and which of them were acknowledged.
    let sent: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(vec![0; WRITERS]));
    let acked: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, url, sent, acked, stop) = (
            c.client.clone(),
            url.clone(),
            sent.clone(),
            acked.clone(),
            stop.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Two keys per request: both must be applied, or neither.
                let body = serde_json::json!({
                    format!("w{w}-{n}-a"): format!("v{n}"),
                    format!("w{w}-{n}-b"): format!("v{n}"),
                });
                sent.lock().unwrap()[w] = n + 1;
                let ok = client
                    .post(&url)
                    .timeout(Duration::from_secs(3))
                    .json(&body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    acked.lock().unwrap().push((w, n));
                }
                n += 1;
            }
        }));
    }
    // Let the writers get some writes acknowledged, then kill everything mid-stream.
    crate::common::wait_for(
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
    let sent = sent.lock().unwrap().clone();

    for i in 0..3 {
        c.restart(i);
    }
    let leader = c.must_leader().await;
    let started = Instant::now();
    for &(w, n) in &acked {
        for half in ["a", "b"] {
            let k = format!("w{w}-{n}-{half}");
            assert_eq!(
                c.must_get(leader, &k, "consistent").await,
                Some(format!("v{n}")),
                "acknowledged write {k} lost after kill -9 of all nodes"
            );
        }
    }
    // Unacknowledged requests (in flight at the kill) may or may not have been applied,
    // but never half of one.
    let mut in_flight = 0;
    for (w, &count) in sent.iter().enumerate() {
        for n in count.saturating_sub(20)..count {
            let a = c
                .must_get(leader, &format!("w{w}-{n}-a"), "consistent")
                .await;
            let b = c
                .must_get(leader, &format!("w{w}-{n}-b"), "consistent")
                .await;
            assert_eq!(
                a, b,
                "request w{w}-{n} was applied partially: a={a:?} b={b:?}"
            );
            in_flight += 1;
        }
    }
    eprintln!(
        "verified {} acknowledged requests and {in_flight} recent ones in {:?}",
        acked.len(),
        started.elapsed()
    );
}
