//! Leader failure: a new leader is elected, takes writes, and the old leader, restarted on
//! its data dir with only its addresses, rejoins and catches up.

use crate::common::TestCluster;

#[tokio::test]
async fn leader_kill_elects_new_leader_and_old_leader_catches_up() {
    let mut c = TestCluster::start(3, &[]).await;
    let old = c.must_leader().await;
    c.must_put(old, "before", "1").await;

    c.kill(old);
    let new = c.must_leader().await;
    assert_ne!(new, old);
    for i in 0..20 {
        c.must_put(new, &format!("after{i}"), &i.to_string()).await;
    }
    assert_eq!(
        c.must_get(new, "before", "consistent").await.as_deref(),
        Some("1")
    );

    c.restart(old);
    c.must_see(old, "after19", "19").await;
    c.must_see(old, "before", "1").await;
    // It is a follower of the new leader, and redirects there.
    let s = c.status(old).await.expect("status");
    assert_eq!(s.leader_id(), Some(c.nodes[new].id.as_str()), "{s:?}");
    assert_eq!(s.role, "follower", "{s:?}");
}
