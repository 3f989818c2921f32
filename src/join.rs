//! The joining node's side of `/join`: POST to each `-join` address in turn, follow 307s
//! to the leader, retry with backoff until a deadline, then give up with a clear error.

use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use hraftd_store::JoinProof;
use hraftd_store::PeerAuth;
use serde_json::json;

use crate::cli::dial_addr;

/// How long one `/join` request may take: the leader answers only once we have caught up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);

/// Asks the cluster reachable at `targets` to add this node, until `deadline` has passed.
/// Returns the membership log index that made this node a voter.
pub async fn join(
    targets: &[String],
    id: &str,
    raft_addr: &str,
    http_addr: &str,
    auth: &PeerAuth,
    deadline: Duration,
) -> anyhow::Result<u64> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(5))
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .build()?;
    let body = serde_json::to_vec(&json!({ "id": id, "addr": raft_addr, "http_addr": http_addr }))?;
    let start = Instant::now();
    let mut backoff = Duration::from_millis(200);
    let mut last_error = String::from("no attempt made");
    loop {
        for target in targets {
            let url = format!("http://{}/join", dial_addr(target));
            let mut req = client
                .post(&url)
                .header("Content-Type", "application/json")
                .body(body.clone());
            // Signed afresh for each attempt: a proof is only valid for a few minutes.
            if let Some(key) = auth.cluster_key() {
                req = req.header(JoinProof::HEADER, JoinProof::make(key, &body));
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    let body: serde_json::Value = resp.json().await.unwrap_or_default();
                    let index = body["index"].as_u64().unwrap_or(0);
                    log::info!("joined the cluster via {url} (voter at log {index})");
                    return Ok(index);
                }
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    last_error = format!("{url}: {status} {text}");
                    if matches!(status.as_u16(), 400 | 403) {
                        bail!("the cluster refused to add this node: {last_error}");
                    }
                }
                Err(e) => last_error = format!("{url}: {e}"),
            }
            log::warn!("join attempt failed: {last_error}");
        }
        if start.elapsed() + backoff > deadline {
            bail!(
                "could not join the cluster via {} within {:?}; last error: {last_error}",
                targets.join(","),
                deadline
            );
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
