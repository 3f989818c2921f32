//! Lease expiry: only the leader decides that a lease has expired, and it says so through
//! the log (`Op::LeaseRevoke`), so every node deletes the same keys at the same index and
//! applying never reads a clock.
//!
//! The leases themselves (id, TTL, attached keys) are state machine data (`kv.rs`); every
//! node keeps the table of them in memory (`StateReader::leases`). What only the leader
//! has is the `LeaseClock`: a deadline per lease, set to now + TTL when it first sees the
//! lease in its term and at every keepalive. A new term starts every countdown again at
//! its full TTL (etcd's rule), so a lease never expires early because leadership moved;
//! it may expire up to about one election later than its TTL.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use crate::batch;
use crate::tasks::Tasks;
use crate::types::LeaseInfo;
use crate::types::Op;

/// The shortest TTL a lease may have.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// The longest TTL a lease may have.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 86_400);
/// Most leases one group holds; grants past it are refused (`503`).
pub const MAX_LEASES: usize = 100_000;
/// How often the leader looks for expired leases.
const TICK: Duration = Duration::from_millis(100);

type Table = Arc<Mutex<BTreeMap<u64, LeaseInfo>>>;

#[derive(Default)]
struct ClockInner {
    /// The term these deadlines belong to (`None`: not leading).
    term: Option<u64>,
    deadlines: HashMap<u64, Instant>,
    /// Proposed for revocation and not yet applied (or failed): no keepalive saves them.
    expiring: HashSet<u64>,
}

/// The leader's countdowns (see the module docs).
#[derive(Default)]
pub(crate) struct LeaseClock {
    inner: Mutex<ClockInner>,
}

/// Why a keepalive was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KeepaliveRefused {
    /// Its expiry is already being proposed.
    Expiring,
}

impl LeaseClock {
    fn lock(&self) -> std::sync::MutexGuard<'_, ClockInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts over when the term changes (or leadership ends).
    fn enter(inner: &mut ClockInner, term: Option<u64>) {
        if inner.term != term {
            inner.term = term;
            inner.deadlines.clear();
            inner.expiring.clear();
        }
    }

    /// One tick: brings the deadlines in line with `table` for `term` (`None`: this node
    /// does not lead) and returns the leases that expired, now marked as expiring.
    pub(crate) fn tick(
        &self,
        term: Option<u64>,
        table: &BTreeMap<u64, LeaseInfo>,
        now: Instant,
    ) -> Vec<u64> {
        let mut inner = self.lock();
        Self::enter(&mut inner, term);
        if term.is_none() {
            return Vec::new();
        }
        let inner = &mut *inner;
        inner.deadlines.retain(|id, _| table.contains_key(id));
        inner.expiring.retain(|id| table.contains_key(id));
        let mut expired = Vec::new();
        for (id, info) in table {
            let deadline = *inner
                .deadlines
                .entry(*id)
                .or_insert_with(|| now + Duration::from_millis(info.ttl_ms));
            if deadline <= now && inner.expiring.insert(*id) {
                expired.push(*id);
            }
        }
        expired
    }

    /// A keepalive for `id` (of `ttl_ms`) at the leader of `term`: its countdown restarts.
    pub(crate) fn keepalive(
        &self,
        term: u64,
        id: u64,
        ttl_ms: u64,
        now: Instant,
    ) -> Result<(), KeepaliveRefused> {
        let mut inner = self.lock();
        Self::enter(&mut inner, Some(term));
        if inner.expiring.contains(&id) {
            return Err(KeepaliveRefused::Expiring);
        }
        inner
            .deadlines
            .insert(id, now + Duration::from_millis(ttl_ms));
        Ok(())
    }

    /// How long `id` has left, as this leader counts; `None` if it has no countdown yet.
    pub(crate) fn remaining(&self, term: u64, id: u64, now: Instant) -> Option<Duration> {
        let inner = self.lock();
        if inner.term != Some(term) {
            return None;
        }
        inner
            .deadlines
            .get(&id)
            .map(|d| d.saturating_duration_since(now))
    }

    /// A revocation proposal failed: the lease may be looked at again.
    fn unmark(&self, id: u64) {
        self.lock().expiring.remove(&id);
    }
}

/// Starts the group's expiry loop: each tick, while this node leads (`led_since` holds its
/// term), proposes the revocation of every lease past its deadline.
pub(crate) fn spawn_expiry(
    tasks: &Tasks,
    clock: Arc<LeaseClock>,
    table: Table,
    led_since: Arc<Mutex<Option<(u64, Instant)>>>,
    writer: batch::Writer,
    write_timeout: Duration,
) {
    let mut stop = tasks.stopping();
    tasks.spawn("lease expiry", async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.wait() => return,
                _ = tick.tick() => {}
            }
            let term = led_since
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .map(|(t, _)| t);
            let expired = {
                let table = table.lock().unwrap_or_else(|e| e.into_inner());
                clock.tick(term, &table, Instant::now())
            };
            if expired.is_empty() {
                continue;
            }
            log::info!("leases expired, revoking: {expired:?}");
            let mut pending = Vec::new();
            for id in expired {
                match writer.write(Op::LeaseRevoke { id }) {
                    Ok(p) => pending.push((id, p)),
                    Err(_) => clock.unmark(id),
                }
            }
            for (id, p) in pending {
                match tokio::time::timeout(write_timeout, p).await {
                    Ok(Some(Ok(_))) => {}
                    // Not applied (lost leadership, timed out): if this node still leads,
                    // the next tick tries again.
                    _ => clock.unmark(id),
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(leases: &[(u64, u64)]) -> BTreeMap<u64, LeaseInfo> {
        leases
            .iter()
            .map(|(id, ttl_ms)| {
                (
                    *id,
                    LeaseInfo {
                        ttl_ms: *ttl_ms,
                        granted: 1,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn leases_expire_after_their_ttl_and_keepalives_and_new_terms_restart_them() {
        let clock = LeaseClock::default();
        let t0 = Instant::now();
        let ms = |n| Duration::from_millis(n);
        let leases = table(&[(1, 1000), (2, 3000)]);
        assert!(clock.tick(Some(5), &leases, t0).is_empty());
        // A keepalive at 900 ms keeps lease 1 past its first deadline.
        clock.keepalive(5, 1, 1000, t0 + ms(900)).unwrap();
        assert!(clock.tick(Some(5), &leases, t0 + ms(1500)).is_empty());
        assert_eq!(clock.tick(Some(5), &leases, t0 + ms(1900)), vec![1]);
        // Proposed once, not again; and no keepalive saves it now.
        assert!(clock.tick(Some(5), &leases, t0 + ms(2000)).is_empty());
        assert_eq!(
            clock.keepalive(5, 1, 1000, t0 + ms(2000)),
            Err(KeepaliveRefused::Expiring)
        );
        // A new leader (term 6) starts lease 2's countdown again at its full TTL.
        assert!(clock.tick(None, &leases, t0 + ms(2500)).is_empty());
        assert!(clock.tick(Some(6), &leases, t0 + ms(2900)).is_empty());
        // Lease 1's expiry proposal was not applied in term 5: term 6 counts it afresh.
        assert_eq!(clock.tick(Some(6), &leases, t0 + ms(3900)), vec![1]);
        assert!(clock.tick(Some(6), &leases, t0 + ms(5800)).is_empty());
        assert_eq!(
            clock.remaining(6, 2, t0 + ms(5800)),
            Some(ms(100)),
            "3000 ms from 2900 ms"
        );
        assert_eq!(clock.tick(Some(6), &leases, t0 + ms(5900)), vec![2]);
        // Revoked: gone from the table, gone from the clock.
        assert!(clock.tick(Some(6), &table(&[]), t0 + ms(6000)).is_empty());
        assert_eq!(clock.remaining(6, 2, t0 + ms(6000)), None);
    }
}
