//! The lease checker: a client that grants leases, attaches a key to each, keeps it alive
//! for a while, then abandons it, reading the key all along, under every fault.
//!
//! Two guarantees are checked, from the client's own clock:
//!
//! - **Never early.** A key may vanish only once its lease's TTL has passed since the
//!   invocation of every keepalive (and of the grant) that succeeded: the leader counts
//!   from when a keepalive reached it, a new leader from its election, which is later
//!   (keepalives confirm leadership with a quorum first). So a consistent read that found
//!   the key gone and completed less than a TTL after such an invocation is a violation.
//! - **Not late.** Once abandoned, the key is gone within TTL + 2 election timeouts (plus
//!   one second for the expiry tick, commit and this client's read cadence) after the last
//!   keepalive completed, except for time in which this client could not read at all (no
//!   leader, no quorum: nobody can expire anything then). A read that began past that
//!   bound and still found the key is a violation.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use hraftd_client::ReadLevel;
use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;

use crate::workload;

/// TTL of every lease the checker grants.
pub const TTL: Duration = Duration::from_secs(2);
/// hraftd's default maximum election timeout.
const ELECTION_TIMEOUT: Duration = Duration::from_millis(700);
/// How long a lease is kept alive before it is abandoned.
const KEEP: Duration = Duration::from_secs(8);
const KEEPALIVE_EVERY: Duration = Duration::from_millis(400);
const READ_EVERY: Duration = Duration::from_millis(150);
/// The longest the checker waits for an abandoned lease's key to go.
const GIVE_UP: Duration = Duration::from_secs(60);

/// The lease checker's findings.
#[derive(Debug, Default)]
pub struct LeaseReport {
    pub cycles: usize,
    pub keepalives_ok: usize,
    pub keepalives_failed: usize,
    pub reads: usize,
    /// Per abandoned lease: how long after its last keepalive completed its key was seen
    /// gone, in ms.
    pub vanish_after_ms: Vec<u64>,
    pub violations: Vec<String>,
}

/// One read of the key: when, and what it found (`None`: the read failed).
struct Read {
    invoke: Instant,
    complete: Instant,
    found: Option<bool>,
}

/// Runs lease cycles until `stop` is set; keys are `<prefix>-<n>` (outside the
/// workload's prefix, so the watch checker does not see them).
pub async fn run(
    nodes: Vec<String>,
    prefix: String,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> LeaseReport {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x1ea5e);
    let http = workload::client();
    let mut report = LeaseReport::default();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("{prefix}-{n}");
        let pick = |rng: &mut StdRng| http.to([nodes[rng.random_range(0..nodes.len())].clone()]);
        // Grant and attach; a cycle whose set-up fails is simply tried again.
        let granted_at = Instant::now();
        let Ok(lease) = pick(&mut rng).lease_grant(TTL).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if pick(&mut rng)
            .put_leased(&key, "held", &lease.id, Some(0))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let attached = Instant::now();
        report.cycles += 1;
        // Successful keepalives' invocation and completion times, the grant first.
        let mut kept: Vec<(Instant, Instant)> = vec![(granted_at, attached)];
        let mut reads: Vec<Read> = Vec::new();
        let mut next_keepalive = Instant::now();
        let mut keep_until = Instant::now() + KEEP;
        let mut gone = false;
        // Kept alive for a while, then abandoned; read all along until the key is gone.
        loop {
            let now = Instant::now();
            if stop.load(Ordering::Relaxed) {
                // The run is over: abandon the lease now and see it go.
                keep_until = keep_until.min(now);
            }
            if now < keep_until && now >= next_keepalive && !gone {
                next_keepalive = now + KEEPALIVE_EVERY;
                let invoke = Instant::now();
                match pick(&mut rng).lease_keepalive(&lease.id).await {
                    Ok(_) => {
                        kept.push((invoke, Instant::now()));
                        report.keepalives_ok += 1;
                    }
                    Err(_) => report.keepalives_failed += 1,
                }
            }
            let invoke = Instant::now();
            let found = match pick(&mut rng).get(&key, ReadLevel::Consistent).await {
                Ok(v) => Some(v.is_some()),
                Err(_) => None,
            };
            reads.push(Read {
                invoke,
                complete: Instant::now(),
                found,
            });
            report.reads += 1;
            if found == Some(false) {
                gone = true;
                if Instant::now() >= keep_until {
                    break;
                }
            }
            if Instant::now() > keep_until + GIVE_UP {
                break;
            }
            tokio::time::sleep(READ_EVERY).await;
        }
        check_cycle(&key, &kept, &reads, &mut report);
    }
    report
}

fn check_cycle(key: &str, kept: &[(Instant, Instant)], reads: &[Read], r: &mut LeaseReport) {
    // Never early.
    for rd in reads.iter().filter(|rd| rd.found == Some(false)) {
        if let Some((s, _)) = kept
            .iter()
            .filter(|(s, _)| *s < rd.complete)
            .max_by_key(|(s, _)| *s)
        {
            if rd.complete < *s + TTL {
                r.violations.push(format!(
                    "{key}: found gone {:?} after a keepalive that succeeded was sent (TTL {TTL:?})",
                    rd.complete - *s
                ));
                return;
            }
        }
    }
    // Not late.
    let last_kept = kept.iter().map(|(_, c)| *c).max().expect("the grant");
    let first_gone = reads
        .iter()
        .find(|rd| rd.found == Some(false) && rd.invoke > last_kept);
    let Some(first_gone) = first_gone.or_else(|| reads.iter().find(|rd| rd.found == Some(false)))
    else {
        r.violations.push(format!(
            "{key}: still there {GIVE_UP:?} after its lease was abandoned"
        ));
        return;
    };
    r.vanish_after_ms.push(
        first_gone
            .complete
            .saturating_duration_since(last_kept)
            .as_millis() as u64,
    );
    // Outages: from the last read that succeeded before a run of failed ones to the next
    // read that succeeded (no leader or no quorum: nobody could expire anything then).
    let mut unavailable = Duration::ZERO;
    let mut ok_at = last_kept;
    let mut down = false;
    for rd in reads.iter().filter(|rd| rd.invoke >= last_kept) {
        match rd.found {
            None => down = true,
            Some(_) => {
                if down {
                    unavailable += rd.invoke.saturating_duration_since(ok_at);
                    down = false;
                }
                ok_at = rd.complete;
            }
        }
    }
    let bound = last_kept + TTL + 2 * ELECTION_TIMEOUT + Duration::from_secs(1) + unavailable;
    if let Some(late) = reads
        .iter()
        .find(|rd| rd.found == Some(true) && rd.invoke > bound)
    {
        r.violations.push(format!(
            "{key}: still there {:?} after its last keepalive (bound {:?}, of which {unavailable:?} unavailable)",
            late.invoke - last_kept,
            bound - last_kept
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(t0: Instant, ms: u64, found: Option<bool>) -> Read {
        Read {
            invoke: t0 + Duration::from_millis(ms),
            complete: t0 + Duration::from_millis(ms + 5),
            found,
        }
    }

    #[test]
    fn early_and_late_expiries_are_caught() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let kept = vec![(at(0), at(5)), (at(1000), at(1005))];
        let mut r = LeaseReport::default();
        // Gone 2.5 s after the last keepalive: fine.
        check_cycle(
            "ok",
            &kept,
            &[read(t0, 1500, Some(true)), read(t0, 3500, Some(false))],
            &mut r,
        );
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        // Gone 1.5 s after a keepalive: early.
        check_cycle("early", &kept, &[read(t0, 2500, Some(false))], &mut r);
        assert_eq!(r.violations.len(), 1);
        // Still there 6 s later with the cluster up: late; with it down for 3 s: not.
        check_cycle(
            "late",
            &kept,
            &[read(t0, 7000, Some(true)), read(t0, 7200, Some(false))],
            &mut r,
        );
        assert_eq!(r.violations.len(), 2);
        let down: Vec<Read> = (0..20)
            .map(|i| read(t0, 1100 + i * 150, None))
            .chain([read(t0, 7000, Some(true)), read(t0, 7200, Some(false))])
            .collect();
        check_cycle("down", &kept, &down, &mut r);
        assert_eq!(r.violations.len(), 2, "{:?}", r.violations);
    }
}
