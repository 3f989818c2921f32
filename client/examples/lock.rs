//! A lock and a guarded config change with `hraftd-client`, against a running cluster:
//!
//! ```sh
//! cargo run -p hraftd-client --example lock -- 127.0.0.1:11000,127.0.0.1:11001
//! ```
//!
//! Takes `locks/example` with compare-and-set (`cas=0`: only if nobody holds it), bumps
//! `config/example/version` in a transaction that holds only while the lock is ours,
//! reads it back on every endpoint with `min_index` (read-your-writes), and releases the
//! lock at the index that took it.

use hraftd_client::wire::CompareOp;
use hraftd_client::wire::CompareTarget;
use hraftd_client::wire::TxnCompare;
use hraftd_client::wire::TxnOp;
use hraftd_client::wire::TxnRequest;
use hraftd_client::Client;
use hraftd_client::ReadLevel;
use hraftd_client::ReadOpts;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoints: Vec<String> = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:11000".into())
        .split(',')
        .map(String::from)
        .collect();
    let client = Client::new(endpoints.clone());

    // 1. Take the lock, or say who has it.
    let me = format!("example-{}", std::process::id());
    let taken = match client.put_cas("locks/example", &me, 0).await {
        Ok(index) => index,
        Err(e) => match e.cas_failed() {
            Some(Some(holder)) => {
                println!(
                    "locks/example is held by {:?} since index {}",
                    holder.value.unwrap_or_default(),
                    holder.mod_index
                );
                return Ok(());
            }
            _ => return Err(e.into()),
        },
    };
    println!("took locks/example at index {taken}");

    // 2. Change the config only while the lock is still ours, in one entry.
    let current = client
        .get_kv(
            "config/example/version",
            ReadOpts::level(ReadLevel::Consistent),
        )
        .await?;
    let next = current
        .and_then(|kv| kv.value)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    let txn = TxnRequest {
        compare: vec![TxnCompare {
            key: "locks/example".into(),
            target: CompareTarget::ModIndex,
            op: CompareOp::Eq,
            value: taken.into(),
        }],
        success: vec![TxnOp::Put {
            key: "config/example/version".into(),
            value: next.to_string(),
            lease: None,
        }],
        failure: vec![],
    };
    let done = client.txn(&txn).await?;
    println!(
        "transaction at index {}: {}",
        done.index,
        if done.succeeded {
            "applied"
        } else {
            "the lock was lost"
        }
    );

    // 3. Read it back on every node without the leader: a stale read at our index.
    for ep in &endpoints {
        let kv = Client::new([ep.clone()])
            .get_kv(
                "config/example/version",
                ReadOpts::level(ReadLevel::Stale).min_index(done.index),
            )
            .await?;
        println!(
            "{ep}: config/example/version = {:?}",
            kv.and_then(|kv| kv.value)
        );
    }

    // 4. Release the lock, only if it is still the one we took.
    client.delete_cas("locks/example", taken).await?;
    println!("released locks/example");
    Ok(())
}
