//! Network faults with iptables: drop peer traffic between nodes' loopback addresses.
//!
//! All rules live in one chain of our own, jumped to from OUTPUT, so healing is "flush
//! the chain" and cleanup is "unhook and delete it". Client traffic (from 127.0.0.1) is
//! never touched: only traffic between the nodes' own addresses is.

use std::process::Command;

const CHAIN: &str = "HRAFTD_TORTURE";

fn iptables(args: &[&str]) -> Result<(), String> {
    let out = Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()
        .map_err(|e| format!("running iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Owns the firewall chain while it exists; removes it on drop.
pub struct Firewall {
    active: bool,
}

impl Firewall {
    /// Sets up the chain, or explains why network faults are not possible here.
    pub fn new() -> Result<Firewall, String> {
        // A chain left by a run that was killed: remove it first.
        let _ = Firewall::teardown();
        iptables(&["-N", CHAIN])?;
        if let Err(e) = iptables(&["-I", "OUTPUT", "1", "-j", CHAIN]) {
            let _ = iptables(&["-X", CHAIN]);
            return Err(e);
        }
        Ok(Firewall { active: true })
    }

    fn teardown() -> Result<(), String> {
        let _ = iptables(&["-D", "OUTPUT", "-j", CHAIN]);
        iptables(&["-F", CHAIN])?;
        iptables(&["-X", CHAIN])
    }

    /// Drops packets from `from` to `to` (one way).
    pub fn cut(&self, from: &str, to: &str) -> Result<(), String> {
        iptables(&["-A", CHAIN, "-s", from, "-d", to, "-j", "DROP"])
    }

    /// Drops traffic both ways between `a` and every address in `others`.
    pub fn isolate(&self, a: &str, others: &[&str]) -> Result<(), String> {
        for b in others {
            self.cut(a, b)?;
            self.cut(b, a)?;
        }
        Ok(())
    }

    /// Removes every rule: the network is whole again.
    pub fn heal(&self) -> Result<(), String> {
        iptables(&["-F", CHAIN])
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        if self.active {
            if let Err(e) = Firewall::teardown() {
                eprintln!("torture: could not remove iptables chain {CHAIN}: {e}");
            }
        }
    }
}
