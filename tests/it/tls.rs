//! HTTPS on the client port: a 3-node cluster joined over `https://` with `-join-ca`,
//! advertised and redirected addresses that keep `https`, a plain-HTTP request refused
//! without harm, certificate rotation on SIGHUP (and a broken pair kept out), and
//! client-certificate mode.

use std::path::Path;
use std::time::Duration;

use hraftd::harness::wait_for;
use hraftd::harness::Cluster;
use hraftd::harness::Node;
use hraftd_client::Client;
use hraftd_client::ReadLevel;

use crate::common::bin;
use crate::common::free_port;
use crate::common::DEADLINE;
use crate::security::Pki;

fn https(node: &Node) -> String {
    format!("https://{}", node.http)
}

fn client(endpoint: String, ca: &Path) -> Client {
    Client::builder([endpoint])
        .ca_pem(std::fs::read(ca).unwrap())
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

fn tls_node(dir: &Path, i: usize, pki: &Pki) -> Node {
    let (cert, key, ca) = pki.files(dir, &format!("node{i}"));
    let mut n = Node::new(
        format!("node{i}"),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
        dir.join(format!("node{i}")),
        dir.join(format!("node{i}.log")),
    );
    for (flag, file) in [("-tls-cert", cert), ("-tls-key", key), ("-join-ca", ca)] {
        n.args.push(flag.into());
        n.args.push(file.display().to_string());
    }
    n
}

async fn must_lead(c: &Client, what: &str) {
    let led = wait_for(what, DEADLINE, || async {
        c.status().await.ok().filter(|s| s.is_leader()).map(|_| ())
    })
    .await;
    led.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn an_https_cluster_keeps_https_in_redirects_and_rotates_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pki = Pki::new();
    let mut c = Cluster::new(bin().into());
    for i in 0..3 {
        c.nodes.push(tls_node(dir, i, &pki));
    }
    let ca = dir.join("node0-ca.crt");
    let bin = c.bin.clone();
    c.nodes[0].spawn(&bin, &[]).unwrap();
    let first = client(https(&c.nodes[0]), &ca);
    must_lead(&first, "node0 to lead over HTTPS").await;
    let join = [https(&c.nodes[0])];
    for i in 1..3 {
        c.nodes[i].spawn(&bin, &join).unwrap();
        let id = c.nodes[i].id.clone();
        let voter = wait_for(&format!("{id} to join over HTTPS"), DEADLINE, || async {
            first.status().await.ok()?.has_voter(&id).then_some(())
        })
        .await;
        voter.unwrap_or_else(|e| panic!("{e}\n{}", c.logs(20)));
    }
    // Every member advertises its https:// address.
    let s = first.status().await.unwrap();
    assert!(
        s.members
            .iter()
            .all(|m| m.http_addr.starts_with("https://")),
        "{s:?}"
    );

    // A follower redirects to the leader's https:// address; following it works.
    let follower = (1..3).find(|&i| c.nodes[i].id != s.id).unwrap();
    let no_follow = Client::builder([https(&c.nodes[follower])])
        .ca_pem(std::fs::read(&ca).unwrap())
        .follow_redirects(false)
        .build()
        .unwrap();
    match no_follow.put("k", "v").await.unwrap_err() {
        hraftd_client::Error::Api {
            location: Some(l), ..
        } => {
            assert_eq!(l, format!("{}/key/k", https(&c.nodes[0])))
        }
        other => panic!("expected a redirect: {other:?}"),
    }
    let via_follower = client(https(&c.nodes[follower]), &ca);
    via_follower.put("k", "v1").await.unwrap();
    assert_eq!(
        via_follower
            .get("k", ReadLevel::Consistent)
            .await
            .unwrap()
            .as_deref(),
        Some("v1")
    );

    // Plain HTTP to the HTTPS port: refused (no answer to it), and the node serves on.
    let plain = Client::new([c.nodes[0].http.clone()]);
    assert!(
        plain.status().await.is_err(),
        "plain HTTP must not be served"
    );
    assert!(first.status().await.is_ok());

    // Rotation under load: clients that trust both CAs keep writing, each request on a new
    // connection (a new handshake), while node0 gets a certificate from another CA on
    // SIGHUP; not one request fails. Afterwards new connections see the new certificate
    // (a client trusting only the new CA connects, one trusting only the old does not).
    let other = Pki::new();
    let (new_cert, new_key, new_ca) = other.files(dir, "rotated");
    let both = [std::fs::read(&ca).unwrap(), std::fs::read(&new_ca).unwrap()];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (endpoint, both, stop) = (https(&c.nodes[0]), both.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || ok < 20 {
                let fresh = Client::builder([endpoint.clone()])
                    .ca_pem(both[0].clone())
                    .ca_pem(both[1].clone())
                    .build()
                    .unwrap();
                match fresh.put(&format!("load{ok}"), "v").await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
                if failed.len() > 100 {
                    break;
                }
            }
            (ok, failed)
        })
    };
    std::fs::copy(&new_cert, dir.join("node0.crt")).unwrap();
    std::fs::copy(&new_key, dir.join("node0.key")).unwrap();
    assert!(c.nodes[0].signal(libc::SIGHUP));
    let loaded = wait_for("node0 to load the new certificate", DEADLINE, || async {
        c.nodes[0]
            .logged("SIGHUP: loaded the certificate")
            .then_some(())
    })
    .await;
    loaded.unwrap_or_else(|e| panic!("{e}\n{}", c.logs(20)));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rotation: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    let rotated = client(https(&c.nodes[0]), &new_ca);
    assert!(
        rotated.status().await.is_ok(),
        "the new certificate is served"
    );
    assert!(
        client(https(&c.nodes[0]), &ca).status().await.is_err(),
        "the old certificate is no longer served"
    );
    // A broken pair is refused and the one in force stays.
    std::fs::write(dir.join("node0.key"), "not a key").unwrap();
    assert!(c.nodes[0].signal(libc::SIGHUP));
    let kept = wait_for("node0 to refuse the broken pair", DEADLINE, || async {
        c.nodes[0]
            .logged("SIGHUP: keeping the certificate in force")
            .then_some(())
    })
    .await;
    kept.unwrap_or_else(|e| panic!("{e}\n{}", c.logs(20)));
    assert!(client(https(&c.nodes[0]), &new_ca).status().await.is_ok());
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_a_certificate_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pki = Pki::new();
    let mut n = tls_node(dir, 0, &pki);
    let ca = dir.join("node0-ca.crt");
    n.args
        .extend(["-tls-client-ca".to_string(), ca.display().to_string()]);
    n.spawn(Path::new(bin()), &[]).unwrap();
    let (cert, key, _) = pki.files(dir, "app");
    let mut identity = std::fs::read(&cert).unwrap();
    identity.extend(std::fs::read(&key).unwrap());
    let with_cert = Client::builder([https(&n)])
        .ca_pem(std::fs::read(&ca).unwrap())
        .identity_pem(identity)
        .build()
        .unwrap();
    must_lead(&with_cert, "the node to lead").await;
    with_cert.put("k", "v").await.unwrap();
    let without = client(https(&n), &ca);
    let e = without.status().await.unwrap_err();
    assert!(
        e.status().is_none(),
        "refused in the handshake, not answered: {e}"
    );
}
