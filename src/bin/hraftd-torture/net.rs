//! Network faults with iptables: drop peer traffic between nodes' loopback addresses.
//!
//! All rules live in one chain of our own (per run address range), jumped to from OUTPUT, so healing is "flush
//! the chain" and cleanup is "unhook and delete it". Client traffic (from 127.0.0.1) is
//! never touched: only traffic between the nodes' own addresses is.

use std::process::Command;

use anyhow::bail;
use anyhow::Context;
use anyhow::Result;

fn iptables(args: &[&str]) -> Result<()> {
    let out = Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()
        .context("running iptables")?;
    if !out.status.success() {
        bail!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Owns the firewall chain while it exists; removes it on drop.
pub struct Firewall {
    /// Our chain's name, one per first node address, so concurrent runs on different
    /// addresses do not touch each other's rules.
    chain: String,
}

impl Firewall {
    /// Sets up the chain, or explains why network faults are not possible here.
    pub fn new(first_ip: std::net::Ipv4Addr) -> Result<Firewall> {
        let chain = format!("HRAFTD_T_{}", first_ip.to_string().replace('.', "_"));
        // A chain left by a run that was killed: remove it first.
        let _ = teardown(&chain);
        iptables(&["-N", &chain])?;
        if let Err(e) = iptables(&["-I", "OUTPUT", "1", "-j", &chain]) {
            let _ = iptables(&["-X", &chain]);
            return Err(e);
        }
        Ok(Firewall { chain })
    }

    /// Drops packets from `from` to `to` (one way).
    pub fn cut(&self, from: &str, to: &str) -> Result<()> {
        iptables(&["-A", &self.chain, "-s", from, "-d", to, "-j", "DROP"])
    }

    /// Drops traffic both ways between `a` and every address in `others`.
    pub fn isolate(&self, a: &str, others: &[&str]) -> Result<()> {
        for b in others {
            self.cut(a, b)?;
            self.cut(b, a)?;
        }
        Ok(())
    }

    /// Removes every rule: the network is whole again.
    pub fn heal(&self) -> Result<()> {
        iptables(&["-F", &self.chain])
    }
}

fn teardown(chain: &str) -> Result<()> {
    let _ = iptables(&["-D", "OUTPUT", "-j", chain]);
    iptables(&["-F", chain])?;
    iptables(&["-X", chain])
}

impl Drop for Firewall {
    fn drop(&mut self) {
        if let Err(e) = teardown(&self.chain) {
            eprintln!(
                "torture: could not remove iptables chain {}: {e}",
                self.chain
            );
        }
    }
}
