//! The Raft port against hostile input: forged notices and frames, garbage, oversized and
//! slow frames, and nodes without the cluster key or with a certificate from another CA.
//! Each test's forged input comes from `hraftd_store::hostile`, in the real wire format.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use crate::common::*;
use hraftd_store::hostile;
use hraftd_store::types::raft_id_for;
use reqwest::Method;
use reqwest::StatusCode;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Writes `frames` to `addr` on one connection and returns how long until the node closed
/// it (`None` if it stayed open for `wait`).
async fn send_frames(addr: &str, frames: &[Vec<u8>], wait: Duration) -> Option<Duration> {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("connect to the raft port");
    let start = Instant::now();
    for f in frames {
        if s.write_all(f).await.is_err() {
            return Some(start.elapsed());
        }
    }
    let mut buf = vec![0u8; 1 << 16];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {} // an answer (or a handshake reply); keep reading
        }
    }
}

/// A cluster of `n` nodes sharing a new cluster key (made with `hraftd gen-key`).
async fn keyed_cluster(n: usize, more: &[&str]) -> (TestCluster, PathBuf) {
    let mut c = TestCluster::empty(more);
    let key = c.tmp.path().join("cluster.key");
    gen_key(&key);
    c.extra_args
        .extend(["-cluster-key".to_string(), key.display().to_string()]);
    c.add_node(None);
    c.must_leader().await;
    for _ in 1..n {
        c.must_join_new_node().await;
    }
    (c, key)
}

fn gen_key(path: &Path) {
    let out = std::process::Command::new(bin())
        .args(["gen-key", &path.display().to_string()])
        .output()
        .expect("run hraftd gen-key");
    assert!(out.status.success(), "gen-key: {out:?}");
}

/// What must not change when hostile input arrives: who leads, in which term, who is a
/// member, and the data.
async fn cluster_view(c: &TestCluster) -> (String, u64, Vec<String>) {
    let l = c.must_leader().await;
    let s = c.status(l).await.expect("leader status");
    let mut members: Vec<String> = s
        .members
        .iter()
        .map(|m| format!("{}:{}", m.id, m.voter))
        .collect();
    members.sort();
    (s.id, s.term, members)
}

async fn must_be_ready(c: &mut TestCluster) {
    let all: Vec<usize> = (0..c.nodes.len()).collect();
    must_be_ready_running(c, &all).await;
}

/// With a cluster key, nothing an outsider sends is read past the handshake: forged
/// removals, stop notices, appends with a higher term, votes, a nested batch, garbage,
/// an oversized length and a stalled handshake all leave every node up, ready and
/// unchanged, and each is counted as refused.
#[tokio::test]
async fn with_a_cluster_key_no_unauthenticated_frame_is_obeyed() {
    let (mut c, _key) = keyed_cluster(3, &[]).await;
    for i in 0..3 {
        let s = c.status(i).await.unwrap();
        assert_eq!(s.peer_auth, "cluster-key", "node{i}: {s:?}");
    }
    c.must_put(0, "precious", "v1").await;
    let before = cluster_view(&c).await;
    let leader = raft_id_for(&before.0);
    let term = before.1;

    // Every attack on its own connection, all at once (short ones wait out the handshake
    // deadline before they are cut off).
    let mut attacks = Vec::new();
    for i in 0..3 {
        let me = raft_id_for(&c.nodes[i].id);
        let addr = c.nodes[i].raft.clone();
        let frames = [
            hostile::removed(me, u64::MAX),
            hostile::leader_stopping(leader, term),
            hostile::append(raft_id_for("intruder"), term + 100, "precious"),
            hostile::vote(raft_id_for("intruder"), term + 100),
            hostile::nested_batch_append(90_000),
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            vec![0xff; 64],
            // A handshake that never completes.
            b"HRAF".to_vec(),
        ];
        for f in frames {
            let addr = addr.clone();
            attacks.push(tokio::spawn(async move {
                (i, send_frames(&addr, &[f], Duration::from_secs(15)).await)
            }));
        }
    }
    let n = attacks.len();
    for a in attacks {
        let (i, closed) = a.await.unwrap();
        let after = closed.unwrap_or_else(|| panic!("node{i} kept a refused connection open"));
        assert!(
            after < Duration::from_secs(10),
            "node{i} cut off after {after:?}"
        );
    }

    must_be_ready(&mut c).await;
    assert_eq!(
        cluster_view(&c).await,
        before,
        "leader, term or members changed"
    );
    assert_eq!(
        c.must_get(1, "precious", "consistent").await.as_deref(),
        Some("v1")
    );
    c.must_put(2, "after", "ok").await;
    let mut refused = 0.0;
    for i in 0..3 {
        refused += c
            .metric(i, r#"hraftd_peer_rejected_total{reason="handshake"}"#)
            .await;
    }
    assert!(
        refused >= n as f64,
        "{n} attacks but {refused} handshake refusals counted"
    );
}

/// Without peer authentication, the notices are still only hints: a forged "you were
/// removed" does not stop a member, and a forged "the leader is stopping" lasts only until
/// the leader's next append. (Earlier, the first stopped the follower and the second made it
/// answer 503 for the rest of the term.) A nested batch is refused and counted.
#[tokio::test]
async fn without_auth_forged_notices_are_only_hints() {
    let mut c = TestCluster::start(3, &[]).await;
    let s = c.status(0).await.unwrap();
    assert_eq!(s.peer_auth, "none");
    c.must_put(0, "k", "v").await;
    let before = cluster_view(&c).await;
    let leader_name = before.0.clone();
    let follower = (0..3).find(|i| c.nodes[*i].id != leader_name).unwrap();
    let me = raft_id_for(&c.nodes[follower].id);
    let addr = c.nodes[follower].raft.clone();

    send_frames(
        &addr,
        &[hostile::removed(me, u64::MAX)],
        Duration::from_secs(2),
    )
    .await;
    c.must_log(follower, "ignoring a removal notice").await;

    let (_, term, _) = cluster_view(&c).await;
    send_frames(
        &addr,
        &[hostile::leader_stopping(raft_id_for(&leader_name), term)],
        Duration::from_secs(2),
    )
    .await;
    c.must_log(follower, "the leader says it is stopping").await;
    // The next heartbeat clears it: writes are redirected to the leader again.
    let start = Instant::now();
    wait_for(
        "the follower to redirect writes again",
        Duration::from_secs(5),
        || async {
            let (s, _, _) = c.raw(follower, Method::POST, "/key", r#"{"a":"b"}"#).await;
            (s == StatusCode::TEMPORARY_REDIRECT).then_some(())
        },
    )
    .await;
    assert!(start.elapsed() < Duration::from_secs(5));

    let closed = send_frames(
        &addr,
        &[hostile::nested_batch_append(90_000)],
        Duration::from_secs(10),
    )
    .await;
    assert!(closed.is_some(), "a malformed frame closes the connection");
    let malformed = c
        .metric(
            follower,
            r#"hraftd_peer_rejected_total{reason="malformed"}"#,
        )
        .await;
    assert_eq!(malformed, 1.0);

    must_be_ready(&mut c).await;
    assert_eq!(cluster_view(&c).await, before);
    assert_eq!(
        c.must_get(follower, "k", "consistent").await.as_deref(),
        Some("v")
    );
}

/// Frames are capped in size and must arrive in time, so a peer cannot make a node
/// allocate without bound or hold a connection with a trickle.
#[tokio::test]
async fn oversized_and_slow_frames_are_cut_off() {
    let mut c = TestCluster::start(1, &[]).await;
    let addr = c.nodes[0].raft.clone();
    let huge = (64u32 << 20).to_be_bytes().to_vec();
    let closed = send_frames(&addr, &[huge], Duration::from_secs(5)).await;
    assert!(closed.is_some(), "an oversized frame is refused at once");
    let mut slow = 100u32.to_be_bytes().to_vec();
    slow.extend_from_slice(&[0u8; 10]);
    let closed = send_frames(&addr, &[slow], Duration::from_secs(30)).await;
    let after = closed.expect("a frame that stops arriving is cut off");
    assert!(after < Duration::from_secs(20), "cut off after {after:?}");
    assert_eq!(
        c.metric(0, r#"hraftd_peer_rejected_total{reason="frame_too_large"}"#)
            .await,
        1.0
    );
    assert_eq!(
        c.metric(0, r#"hraftd_peer_rejected_total{reason="slow_frame"}"#)
            .await,
        1.0
    );
    // A frame of more coalesced heartbeats than any node sends.
    let too_many = hraftd_store::network::MAX_BEATS + 1;
    let closed = send_frames(
        &addr,
        &[hostile::heartbeats(too_many, "g", 7, 3)],
        Duration::from_secs(5),
    )
    .await;
    assert!(
        closed.is_some(),
        "{too_many} heartbeats in a frame are refused"
    );
    assert_eq!(
        c.metric(0, r#"hraftd_peer_rejected_total{reason="malformed"}"#)
            .await,
        1.0
    );
    must_be_ready(&mut c).await;
    c.must_put(0, "still", "fine").await;
}

/// A node with another key, or none, cannot join a keyed cluster: it is refused with 403
/// and gives up at once, and the membership is unchanged.
#[tokio::test]
async fn a_node_without_the_cluster_key_cannot_join() {
    let (mut c, _key) = keyed_cluster(1, &[]).await;
    let other = c.tmp.path().join("other.key");
    gen_key(&other);

    let wrong = c.new_node();
    c.nodes[wrong].args = vec!["-cluster-key".into(), other.display().to_string()];
    let leader_http = c.nodes[0].http.clone();
    c.spawn(wrong, Some(&leader_http));
    let st = c.must_exit(wrong, DEADLINE).await;
    assert!(!st.success(), "a node with the wrong key must not start");
    let log = std::fs::read_to_string(&c.nodes[wrong].log).unwrap();
    assert!(log.contains("403"), "the refusal says why:\n{log}");

    let keyless = c.new_node();
    c.nodes[keyless].args = vec![];
    c.spawn(keyless, Some(&leader_http));
    let st = c.must_exit(keyless, DEADLINE).await;
    assert!(!st.success(), "a node without a key must not start");

    let s = c.status(0).await.unwrap();
    assert_eq!(s.members.len(), 1, "{s:?}");
    c.must_put(0, "k", "v").await;
}

/// A short key file is a start-up error; gen-key never overwrites.
#[tokio::test]
async fn short_cluster_keys_are_refused_at_start_up() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("short.key");
    std::fs::write(&key, "too-short\n").unwrap();
    let out = std::process::Command::new(bin())
        .args(["-cluster-key", &key.display().to_string()])
        .args(["-haddr", &format!("127.0.0.1:{}", free_port())])
        .args(["-raddr", &format!("127.0.0.1:{}", free_port())])
        .arg(tmp.path().join("n"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 16 are required"), "{err}");
    let out = std::process::Command::new(bin())
        .args(["gen-key", &key.display().to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "gen-key must not overwrite a file");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "too-short\n");
}

/// Certificates for mutual TLS: a CA and, per name, a certificate for 127.0.0.1.
pub(crate) struct Pki {
    pub(crate) ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: ca.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes `<name>.crt`, `<name>.key` (for 127.0.0.1 and localhost, server and client
    /// use) and `<name>-ca.crt` into `dir`; returns their paths.
    pub(crate) fn files(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k, ca) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
            dir.join(format!("{name}-ca.crt")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        std::fs::write(&ca, &self.ca_pem).unwrap();
        (c, k, ca)
    }

    /// Writes a node's certificate files into `dir`; returns the mutual-TLS peer flags.
    fn node_flags(&self, dir: &Path, name: &str) -> Vec<String> {
        let (c, k, ca) = self.files(dir, name);
        let p = |p: PathBuf| p.display().to_string();
        vec![
            "-peer-cert".into(),
            p(c),
            "-peer-key".into(),
            p(k),
            "-peer-ca".into(),
            p(ca),
        ]
    }
}

/// Members with certificates from the cluster's CA form a cluster and replicate; a node
/// whose certificate comes from another CA cannot join, and a plain connection cannot
/// send a frame.
#[tokio::test]
async fn mutual_tls_admits_only_certificates_from_the_cluster_ca() {
    let pki = Pki::new();
    let mut c = TestCluster::empty(&[]);
    let dir = c.tmp.path().to_path_buf();
    let n0 = c.new_node();
    c.nodes[n0].args = pki.node_flags(&dir, "node0");
    c.spawn(n0, None);
    c.must_leader().await;
    let n1 = c.new_node();
    c.nodes[n1].args = pki.node_flags(&dir, "node1");
    let leader_http = c.nodes[0].http.clone();
    c.spawn(n1, Some(&leader_http));
    c.must_be_voter("node1").await;
    assert_eq!(c.status(1).await.unwrap().peer_auth, "mtls");
    c.must_put(0, "secret", "tls").await;
    c.must_see(1, "secret", "tls").await;

    let rogue = Pki::new();
    let n2 = c.new_node();
    c.nodes[n2].args = rogue.node_flags(&dir, "node2");
    c.spawn(n2, Some(&leader_http));
    let st = c.must_exit(n2, DEADLINE).await;
    assert!(
        !st.success(),
        "a node with a foreign certificate must not join"
    );
    let s = c.status(0).await.unwrap();
    assert_eq!(s.members.len(), 2, "{s:?}");

    let closed = send_frames(
        &c.nodes[1].raft,
        &[hostile::removed(raft_id_for("node1"), u64::MAX)],
        Duration::from_secs(10),
    )
    .await;
    assert!(closed.is_some());
    must_be_ready_running(&mut c, &[0, 1]).await;
    assert_eq!(
        c.must_get(1, "secret", "consistent").await.as_deref(),
        Some("tls")
    );
}

async fn must_be_ready_running(c: &mut TestCluster, nodes: &[usize]) {
    for &i in nodes {
        assert!(c.is_running(i), "node{i} exited\n{}", c.logs(30));
        wait_for(&format!("node{i} ready"), DEADLINE, || async {
            let (s, _, _) = c.raw(i, Method::GET, "/readyz", "").await;
            (s == StatusCode::OK).then_some(())
        })
        .await;
    }
}

/// Membership keeps working under peer authentication: a node restarted after a log purge
/// catches up by snapshot, a removed node stops (its removal confirmed over the
/// authenticated channel), and it re-joins under the same name with a fresh directory.
async fn membership_works_under(flags: impl Fn(&Path, &str) -> Vec<String>) {
    let mut c = TestCluster::empty(&["-snapshot-threshold", "20"]);
    let dir = c.tmp.path().to_path_buf();
    for i in 0..3 {
        let n = c.new_node();
        let mut args = c.nodes[n].args.clone();
        args.extend(flags(&dir, &format!("node{i}")));
        c.nodes[n].args = args;
        let join = (i > 0).then(|| c.nodes[0].http.clone());
        c.spawn(n, join.as_deref());
        c.must_be_voter(&format!("node{i}")).await;
    }
    let leader = c.must_leader().await;
    let lagger = (leader + 1) % 3;
    c.kill(lagger);
    for i in 0..60 {
        c.must_put(leader, &format!("k{i:02}"), "v").await;
    }
    c.restart(lagger);
    c.must_see(lagger, "k59", "v").await;
    c.must_log(lagger, "installed snapshot").await;

    let gone = (leader + 2) % 3;
    let name = c.nodes[gone].id.clone();
    c.must_remove(leader, &name).await;
    c.must_exit_cleanly(gone, DEADLINE).await;
    let n = &mut c.nodes[gone];
    n.dir = n.dir.with_extension("fresh");
    let join = c.nodes[leader].http.clone();
    c.spawn(gone, Some(&join));
    c.must_be_voter(&name).await;
    c.must_see(gone, "k59", "v").await;
    c.must_put(gone, "last", "ok").await;
    for i in 0..3 {
        c.must_see(i, "last", "ok").await;
    }
}

#[tokio::test]
async fn membership_works_with_a_cluster_key() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("k");
    gen_key(&key);
    let key = key.display().to_string();
    membership_works_under(|_, _| vec!["-cluster-key".into(), key.clone()]).await;
}

#[tokio::test]
async fn membership_works_with_mutual_tls() {
    let pki = Pki::new();
    membership_works_under(|dir, name| pki.node_flags(dir, name)).await;
}
