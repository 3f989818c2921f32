//! The typed client (`hraftd-client`) against a real cluster: `307`s followed with the
//! method and body kept, an endpoint list that skips nodes that are down, and failures
//! that carry the server's error code.

use hraftd_client::Client;
use hraftd_client::Error;
use hraftd_client::ErrorCode;
use hraftd_client::ReadLevel;

use crate::common::free_port;
use crate::common::TestCluster;

#[tokio::test]
async fn the_client_follows_redirects_and_skips_dead_endpoints() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.must_leader().await;
    let follower = (leader + 1) % 3;
    let dead = format!("127.0.0.1:{}", free_port());
    let client = Client::new([dead.clone(), c.nodes[follower].http.clone()]);

    // The first endpoint refuses connections; the follower answers 307 and the client
    // follows it to the leader with the method and the body.
    let index = client.put("via/follower", "the body").await.unwrap();
    assert!(index > 0);
    assert_eq!(
        client
            .get("via/follower", ReadLevel::Consistent)
            .await
            .unwrap()
            .as_deref(),
        Some("the body")
    );
    let index2 = client.set(&[("a", "1"), ("b", "2")]).await.unwrap();
    assert!(index2 > index);
    client.delete("a").await.unwrap();
    assert_eq!(client.get("a", ReadLevel::Consistent).await.unwrap(), None);
    assert_eq!(
        client
            .get("b", ReadLevel::Default)
            .await
            .unwrap()
            .as_deref(),
        Some("2")
    );
    let s = client.status().await.unwrap();
    assert_eq!(s.members.len(), 3, "{s:?}");
    assert!(s.members.iter().all(|m| m.voter), "{s:?}");

    // Without following redirects the follower's answer is a `not_leader` error that
    // names the leader; nothing was applied, so it is not an unknown outcome.
    let no_follow = Client::builder([c.nodes[follower].http.clone()])
        .follow_redirects(false)
        .build()
        .unwrap();
    let e = no_follow.put("k", "v").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotLeader), "{e}");
    assert_eq!(e.status(), Some(307));
    assert!(!e.outcome_unknown());
    match &e {
        Error::Api {
            location: Some(l),
            body,
            ..
        } => {
            assert_eq!(*l, format!("http://{}/key/k", c.nodes[leader].http));
            assert_eq!(body.leader.as_deref(), Some(c.nodes[leader].http.as_str()));
        }
        other => panic!("expected a redirect, got {other:?}"),
    }
    assert_eq!(
        no_follow.get("k", ReadLevel::Stale).await.unwrap(),
        None,
        "stale reads are served by the follower itself"
    );

    // Bad input: a stable code, nothing unknown about it.
    let e = client.get("", ReadLevel::Stale).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::BadRequest), "{e}");
    assert!(!e.outcome_unknown());

    // Nobody to talk to: a connection error, certainly not applied.
    let e = Client::new([dead]).status().await.unwrap_err();
    assert!(e.is_connect(), "{e}");
    assert!(!e.outcome_unknown());
}
