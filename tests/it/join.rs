//! The joining side: a node that cannot reach any `-join` address gives up after
//! `-join-timeout` and exits non-zero with a clear message.

use std::process::Command;
use std::time::Duration;
use std::time::Instant;

use crate::common::free_port;

#[test]
fn join_that_cannot_succeed_exits_non_zero_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let nobody = free_port();
    let started = Instant::now();
    let out = Command::new(crate::common::bin())
        .args(["-haddr", &format!("127.0.0.1:{}", free_port())])
        .args(["-raddr", &format!("127.0.0.1:{}", free_port())])
        .args(["-join", &format!(":{nobody}"), "-join-timeout", "2"])
        .arg(tmp.path().join("n"))
        .output()
        .expect("run hraftd");
    assert!(
        !out.status.success(),
        "must exit non-zero: {:?}",
        out.status
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("could not join the cluster"),
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains(&nobody.to_string()),
        "names the address tried: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn busy_port_fails_fast_with_context() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(crate::common::bin())
        .args(["-haddr", &format!("127.0.0.1:{port}")])
        .args(["-raddr", &format!("127.0.0.1:{}", free_port())])
        .arg(tmp.path().join("n"))
        .output()
        .expect("run hraftd");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("binding the HTTP address"),
        "stderr: {stderr}"
    );
}
