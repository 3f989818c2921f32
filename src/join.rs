//! The joining node's side of `/join`: POST to each `-join` address in turn (the typed
//! client follows 307s to the leader), retry with backoff until a deadline, then give up
//! with a clear error.

use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use hraftd_client::Client;
use hraftd_client::ErrorCode;
use hraftd_client::JoinRequest;
use hraftd_store::JoinProof;
use hraftd_store::PeerAuth;

/// Where to join, and as whom.
pub struct Target<'a> {
    /// `-join`: HTTP addresses of members.
    pub addrs: &'a [String],
    /// `-join-as` and its password, for a cluster that uses `-auth`.
    pub credentials: Option<(&'a str, &'a str)>,
    /// `-join-ca`: the CA (PEM) to trust for `https://` addresses.
    pub ca: Option<Vec<u8>>,
}

/// Asks the cluster reachable at `target` to add this node, until `deadline` has passed.
/// Returns the membership log index that made this node a voter.
pub async fn join(
    target: Target<'_>,
    id: &str,
    raft_addr: &str,
    http_addr: &str,
    auth: &PeerAuth,
    deadline: Duration,
) -> anyhow::Result<u64> {
    // One client per target, so that every target is tried (and reported) each round.
    // One request may take the whole deadline: the leader answers only once this node has
    // caught up (within its own -catch-up-timeout, which this node cannot know).
    let targets = target.addrs;
    let clients = targets
        .iter()
        .map(|t| {
            let mut b = Client::builder([t.clone()])
                .timeout(deadline)
                .connect_timeout(Duration::from_secs(2));
            if let Some((user, password)) = target.credentials {
                b = b.basic_auth(user, password);
            }
            if let Some(ca) = &target.ca {
                b = b.ca_pem(ca.clone());
            }
            b.build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let req = JoinRequest {
        id: id.into(),
        addr: raft_addr.into(),
        http_addr: http_addr.into(),
    };
    // Signed afresh for each attempt: a proof is only valid for a few minutes.
    let sign = |body: &[u8]| {
        auth.cluster_key()
            .map(|key| (JoinProof::HEADER, JoinProof::make(key, body)))
    };
    let start = Instant::now();
    let mut backoff = Duration::from_millis(200);
    let mut last_error = String::from("no attempt made");
    loop {
        for (target, client) in targets.iter().zip(&clients) {
            match client.join(&req, sign).await {
                Ok(joined) => {
                    log::info!(
                        "joined the cluster via {target} (voter at log {})",
                        joined.index
                    );
                    return Ok(joined.index);
                }
                Err(e) => {
                    last_error = e.to_string();
                    if matches!(
                        e.code(),
                        Some(
                            ErrorCode::BadRequest | ErrorCode::Forbidden | ErrorCode::Unauthorized
                        )
                    ) {
                        bail!("the cluster refused to add this node: {last_error}");
                    }
                }
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
