//! `--tls`, `--auth` and `--forward`: the run's nodes serve HTTPS with certificates from a
//! CA made for the run (with the `openssl` command), require users (hashes made with
//! `hraftd hash-password`), and forward leader-only requests. The workload then writes as
//! a `read`+`write` user over HTTPS, membership churn acts as the admin, and the harness
//! watches status anonymously (the `*` entry may read).

use std::path::Path;
use std::process::Command;
use std::process::Stdio;

use anyhow::bail;
use anyhow::Context;
use anyhow::Result;

use crate::workload::Access;

/// `openssl req` arguments that make a new P-256 key (unencrypted) with the request.
const NEW_EC_KEY: [&str; 6] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-keyout",
];

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl (needed for --tls)")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Makes a CA and one certificate per node address in `dir`; returns the node flags
/// (per address) and the CA's PEM.
pub fn certificates(dir: &Path, ips: &[&str]) -> Result<(Vec<Vec<String>>, Vec<u8>)> {
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &NEW_EC_KEY,
            &[
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=hraftd-torture CA",
            ],
        ]
        .concat(),
    )?;
    let mut flags = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let (key, csr, crt, ext) = (
            format!("n{i}.key"),
            format!("n{i}.csr"),
            format!("n{i}.crt"),
            format!("n{i}.ext"),
        );
        std::fs::write(
            dir.join(&ext),
            format!(
                "subjectAltName=IP:{ip},IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
            ),
        )?;
        openssl(
            dir,
            &[
                &["req"][..],
                &NEW_EC_KEY,
                &[key.as_str(), "-out", &csr, "-subj", &format!("/CN=n{i}")],
            ]
            .concat(),
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        )?;
        let p = |f: &str| dir.join(f).display().to_string();
        flags.push(vec![
            "-tls-cert".into(),
            p(&crt),
            "-tls-key".into(),
            p(&key),
            "-join-ca".into(),
            p("ca.crt"),
        ]);
    }
    let ca = std::fs::read(dir.join("ca.crt"))?;
    Ok((flags, ca))
}

/// `hraftd hash-password` for `password`.
fn hash(bin: &Path, password: &str) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new(bin)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running hraftd hash-password")?;
    writeln!(child.stdin.take().context("stdin")?, "{password}")?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("hraftd hash-password failed: {out:?}");
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// Writes the users file; returns its path, and the admin's and the workload user's
/// credentials.
pub fn users(bin: &Path, dir: &Path) -> Result<(std::path::PathBuf, Access)> {
    let admin = (
        "admin".to_string(),
        format!("admin-{:x}", rand::random::<u64>()),
    );
    let user = (
        "torture".to_string(),
        format!("user-{:x}", rand::random::<u64>()),
    );
    let file = serde_json::json!([
        {"username": admin.0, "password_hash": hash(bin, &admin.1)?, "perms": ["read", "write", "admin"]},
        {"username": user.0, "password_hash": hash(bin, &user.1)?, "perms": ["read", "write"]},
        {"username": "*", "perms": ["read"]},
    ]);
    let path = dir.join("auth.json");
    std::fs::write(&path, serde_json::to_string_pretty(&file)?)?;
    Ok((
        path,
        Access {
            ca: None,
            user: Some(user),
            admin: Some(admin),
        },
    ))
}
