//! Runs the README's quick start with the real binary: `hraftd gen-key`, Go-style flags,
//! `:port` addresses, a cluster key, a positional data dir, `-join`, and `curl -L`-style
//! reads on every node.

use std::process::Command;
use std::process::Stdio;

use crate::common::free_port;
use crate::common::TestCluster;

#[tokio::test]
async fn readme_quick_start() {
    let mut c = TestCluster::empty(&[]);
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let first_http = ports[0].0;
    // hraftd gen-key ~/hraftd.key
    let key = c.tmp.path().join("hraftd.key").display().to_string();
    let made = Command::new(crate::common::bin())
        .args(["gen-key", &key])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    for (i, (h, r)) in ports.iter().enumerate() {
        // hraftd -cluster-key ~/hraftd.key -haddr :11001 -raddr :12001 -join :11000 ~/node1
        let dir = c.tmp.path().join(format!("node{i}"));
        let log = std::fs::File::create(c.tmp.path().join(format!("node{i}.log"))).unwrap();
        let mut cmd = Command::new(crate::common::bin());
        cmd.args(["-cluster-key", &key]);
        cmd.args(["-haddr", &format!(":{h}"), "-raddr", &format!(":{r}")]);
        if i > 0 {
            cmd.args(["-join", &format!(":{first_http}")]);
        }
        cmd.arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().expect("spawn hraftd");
        // The default id is the advertised raft address.
        let mut node = hraftd::harness::Node::new(
            format!("127.0.0.1:{r}"),
            format!("127.0.0.1:{h}"),
            format!("127.0.0.1:{r}"),
            dir,
            c.tmp.path().join(format!("node{i}.log")),
        );
        node.attach(child);
        c.nodes.push(node);
        let name = c.nodes[i].id.clone();
        c.must_be_voter(&name).await;
    }
    // curl -XPOST localhost:11000/key -d '{"user1":"batman"}'
    let r = c
        .follow
        .post(format!("http://localhost:{first_http}/key"))
        .body(r#"{"user1":"batman"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // curl -L 'localhost:11001/key/user1?level=consistent', on every node
    for i in 0..3 {
        assert_eq!(
            c.must_get(i, "user1", "consistent").await.as_deref(),
            Some("batman")
        );
    }
    // --help documents the flags.
    let help = Command::new(crate::common::bin())
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--haddr",
        "--raddr",
        "--hadv",
        "--radv",
        "--join",
        "--id",
        "--snapshot-threshold",
        "--cluster-key",
        "--peer-cert",
        "--max-key-bytes",
        "gen-key",
        "DATA_DIR",
        "--data-dir",
        "--auth",
        "--tls-cert",
        "--join-ca",
        "--join-as",
        "hash-password",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
}
