//! A linearizability checker for a key-value register history (Wing & Gong's search with
//! Lowe's memoization), applied per key: a history is linearizable iff each key's
//! sub-history is (P-compositionality), so keys are checked one at a time.
//!
//! Model: each key is a register holding a value or nothing. `Write(v)` sets it, `Delete`
//! clears it, `Read` must observe the current value. `Cas` is compare-and-set: the
//! workload reads a key's value and `mod_index` and sets it only at that `mod_index`;
//! since every value is written once, "at that `mod_index`" is "while the register holds
//! the value read" (or nothing, for `cas=0`). A CAS that succeeded must have found the
//! register holding `expect` (and left `new`); one refused with `412` must have found it
//! holding something else (and changed nothing). Ops that failed definitely are
//! dropped; indeterminate (`info`) writes may or may not have taken effect at any point
//! after their invocation, so they never return and the search may leave them out;
//! indeterminate reads say nothing and are dropped.
//!
//! Indeterminate writes are what make the search blow up (each one left out or put in at
//! any point doubles the states), so before searching they are narrowed, without changing
//! the verdict: one whose value no read saw is dropped (leaving it out is always a valid
//! choice, since nothing can tell it happened), and one whose value is unique and was seen
//! must have happened before the first read that saw it completed, so it becomes an
//! ordinary write that completed then.

use std::collections::HashMap;
use std::collections::HashSet;

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    Write(String),
    Delete,
    /// A read; `Some(v)` once it completed: the value seen, or `None` for "not found".
    Read(Option<Option<String>>),
    /// Compare-and-set of `new` over `expect` (`None`: the key must not exist).
    /// `applied`: `Some(true)` succeeded, `Some(false)` refused (`412`), `None` unknown.
    Cas {
        expect: Option<String>,
        new: String,
        applied: Option<bool>,
    },
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Completed; its effect (and, for reads, its result) is known.
    Ok,
    /// Definitely had no effect.
    Fail,
    /// Unknown: it may or may not have taken effect (timeout, lost connection, 5xx).
    Info,
}

/// One operation of the history. Times are nanoseconds on one monotonic clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub client: usize,
    pub key: String,
    pub kind: OpKind,
    pub invoke: u64,
    pub complete: u64,
    pub outcome: Outcome,
}

/// The verdict for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The search gave up after exploring too many states.
    Unknown,
}

/// States explored per key before giving up.
const MAX_STATES: usize = 2_000_000;

struct Search<'a> {
    ops: Vec<&'a Op>,
    /// Completion time used for ordering; `u64::MAX` for ops that may never have happened.
    ends: Vec<u64>,
    values: HashMap<Option<&'a str>, u32>,
    seen: HashSet<(Vec<u64>, u32)>,
    explored: usize,
}

impl<'a> Search<'a> {
    fn intern(&mut self, v: Option<&'a str>) -> u32 {
        let n = self.values.len() as u32;
        *self.values.entry(v).or_insert(n)
    }

    /// The register value after applying op `i` to `state`, or `None` if a read of op `i`
    /// cannot observe `state`.
    fn step(&mut self, i: usize, state: u32) -> Option<u32> {
        let op = self.ops[i];
        match &op.kind {
            OpKind::Write(v) => Some(self.intern(Some(v.as_str()))),
            OpKind::Delete => Some(self.intern(None)),
            OpKind::Read(Some(seen)) => (self.intern(seen.as_deref()) == state).then_some(state),
            OpKind::Read(None) => Some(state),
            OpKind::Cas {
                expect,
                new,
                applied,
            } => {
                let holds = self.intern(expect.as_deref()) == state;
                match applied {
                    // Succeeded, or (unknown) took effect: only from `expect`.
                    Some(true) | None => holds.then(|| self.intern(Some(new.as_str()))),
                    Some(false) => (!holds).then_some(state),
                }
            }
        }
    }

    /// Depth-first search for a linearization of the ops not yet in `done`.
    fn dfs(&mut self, done: &mut Vec<u64>, state: u32) -> Option<bool> {
        self.explored += 1;
        if self.explored > MAX_STATES {
            return None;
        }
        let is_done = |done: &Vec<u64>, i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        // The earliest completion among ops that must still be linearized: every op
        // invoked after it must come later.
        let deadline = (0..self.ops.len())
            .filter(|&i| !is_done(done, i) && self.ends[i] != u64::MAX)
            .map(|i| self.ends[i])
            .min();
        let Some(deadline) = deadline else {
            return Some(true);
        };
        for i in 0..self.ops.len() {
            if self.ops[i].invoke > deadline {
                break;
            }
            if is_done(done, i) {
                continue;
            }
            let Some(next) = self.step(i, state) else {
                continue;
            };
            done[i / 64] |= 1 << (i % 64);
            if self.seen.insert((done.clone(), next)) {
                match self.dfs(done, next) {
                    Some(true) => return Some(true),
                    None => return None,
                    Some(false) => {}
                }
            }
            done[i / 64] &= !(1 << (i % 64));
        }
        Some(false)
    }
}

/// Checks one key's history. The register starts empty.
pub fn check_key(history: &[Op]) -> Verdict {
    // For each value: how many writes wrote it, and when the first read that saw it
    // completed.
    let mut writers: HashMap<&str, usize> = HashMap::new();
    let mut first_seen: HashMap<&str, u64> = HashMap::new();
    for op in history {
        match (&op.kind, op.outcome) {
            (OpKind::Write(v), Outcome::Ok | Outcome::Info) => *writers.entry(v).or_default() += 1,
            (
                OpKind::Cas {
                    new,
                    applied: Some(true) | None,
                    ..
                },
                Outcome::Ok | Outcome::Info,
            ) => *writers.entry(new).or_default() += 1,
            (OpKind::Read(Some(Some(v))), Outcome::Ok) => {
                let at = first_seen.entry(v).or_insert(u64::MAX);
                *at = (*at).min(op.complete);
            }
            _ => {}
        }
    }
    // A compare-and-set refused with 412 saw the register holding something other than
    // what it expected: perhaps a value no read saw. An unseen indeterminate write invoked
    // before such a refusal completed may be what it saw, so it is kept (found by a 30-minute
    // run: a `cas=0` refused after a timed-out write nobody read was called a violation).
    let last_refusal = history
        .iter()
        .filter(|op| {
            op.outcome == Outcome::Ok
                && matches!(
                    op.kind,
                    OpKind::Cas {
                        applied: Some(false),
                        ..
                    }
                )
        })
        .map(|op| op.complete)
        .max();
    let unseen = |op: &Op| {
        last_refusal
            .is_some_and(|t| op.invoke < t)
            .then_some(u64::MAX)
    };
    // Each op with the time by which it must have taken effect (`u64::MAX`: maybe never).
    let mut ops: Vec<(&Op, u64)> = history
        .iter()
        .filter_map(|op| match (op.outcome, &op.kind) {
            (Outcome::Ok, _) => Some((op, op.complete)),
            (Outcome::Fail, _) | (Outcome::Info, OpKind::Read(_)) => None,
            (Outcome::Info, OpKind::Write(v)) => match first_seen.get(v.as_str()) {
                None => unseen(op).map(|end| (op, end)),
                Some(&seen) if writers[v.as_str()] == 1 => Some((op, seen)),
                Some(_) => Some((op, u64::MAX)),
            },
            (Outcome::Info, OpKind::Delete) => Some((op, u64::MAX)),
            // As an indeterminate write of `new`, which it is if it took effect.
            (Outcome::Info, OpKind::Cas { new, .. }) => match first_seen.get(new.as_str()) {
                None => unseen(op).map(|end| (op, end)),
                Some(&seen) if writers[new.as_str()] == 1 => Some((op, seen)),
                Some(_) => Some((op, u64::MAX)),
            },
        })
        .collect();
    ops.sort_by_key(|(op, _)| op.invoke);
    let (ops, ends): (Vec<&Op>, Vec<u64>) = ops.into_iter().unzip();
    let words = ops.len().div_ceil(64).max(1);
    let mut search = Search {
        ops,
        ends,
        values: HashMap::new(),
        seen: HashSet::new(),
        explored: 0,
    };
    let empty = search.intern(None);
    match search.dfs(&mut vec![0; words], empty) {
        Some(true) => Verdict::Linearizable,
        Some(false) => Verdict::NotLinearizable,
        None => Verdict::Unknown,
    }
}

/// Groups a history by key.
pub fn by_key(history: &[Op]) -> HashMap<String, Vec<Op>> {
    let mut out: HashMap<String, Vec<Op>> = HashMap::new();
    for op in history {
        out.entry(op.key.clone()).or_default().push(op.clone());
    }
    out
}

/// A readable rendering of one key's history, in invocation order.
pub fn render(history: &[Op]) -> String {
    let mut ops: Vec<&Op> = history.iter().collect();
    ops.sort_by_key(|op| op.invoke);
    let mut out = String::from("# invoke_ms complete_ms client outcome op\n");
    for op in ops {
        let what = match &op.kind {
            OpKind::Write(v) => format!("write {v:?}"),
            OpKind::Delete => "delete".to_string(),
            OpKind::Read(Some(Some(v))) => format!("read -> {v:?}"),
            OpKind::Read(Some(None)) => "read -> not found".to_string(),
            OpKind::Read(None) => "read -> ?".to_string(),
            OpKind::Cas {
                expect,
                new,
                applied,
            } => format!(
                "cas {expect:?} -> {new:?}: {}",
                match applied {
                    Some(true) => "set",
                    Some(false) => "refused (412)",
                    None => "?",
                }
            ),
        };
        let complete = if op.outcome == Outcome::Info {
            "?".to_string()
        } else {
            format!("{:.3}", op.complete as f64 / 1e6)
        };
        out.push_str(&format!(
            "{:.3} {} c{} {:?} {}\n",
            op.invoke as f64 / 1e6,
            complete,
            op.client,
            op.outcome,
            what
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, kind: OpKind, invoke: u64, complete: u64, outcome: Outcome) -> Op {
        Op {
            client,
            key: "k".into(),
            kind,
            invoke,
            complete,
            outcome,
        }
    }
    fn w(c: usize, v: &str, i: u64, e: u64) -> Op {
        op(c, OpKind::Write(v.into()), i, e, Outcome::Ok)
    }
    fn cas(c: usize, expect: Option<&str>, new: &str, applied: Option<bool>, i: u64, e: u64) -> Op {
        let outcome = if applied.is_some() {
            Outcome::Ok
        } else {
            Outcome::Info
        };
        op(
            c,
            OpKind::Cas {
                expect: expect.map(String::from),
                new: new.into(),
                applied,
            },
            i,
            e,
            outcome,
        )
    }

    #[test]
    fn a_compare_and_set_must_find_what_it_compared_against() {
        // Set from "a" while the register held "b": impossible.
        let h = [
            w(0, "a", 0, 1),
            w(0, "b", 2, 3),
            cas(1, Some("a"), "c", Some(true), 4, 5),
        ];
        assert_eq!(check_key(&h), Verdict::NotLinearizable);
        // Refused while it held "a": impossible too.
        let h = [w(0, "a", 0, 1), cas(1, Some("a"), "c", Some(false), 2, 3)];
        assert_eq!(check_key(&h), Verdict::NotLinearizable);
        // Two creations (cas=0) from the empty register cannot both succeed...
        let h = [
            cas(0, None, "x", Some(true), 0, 10),
            cas(1, None, "y", Some(true), 0, 10),
        ];
        assert_eq!(check_key(&h), Verdict::NotLinearizable);
        // ...but one succeeding and one refused, concurrently, is fine either way round.
        let h = [
            cas(0, None, "x", Some(true), 0, 10),
            cas(1, None, "y", Some(false), 0, 10),
            r(2, Some("x"), 11, 12),
        ];
        assert_eq!(check_key(&h), Verdict::Linearizable);
        // A success that is then read, and an unknown one that was seen.
        let h = [
            w(0, "a", 0, 1),
            cas(1, Some("a"), "c", Some(true), 2, 3),
            cas(2, Some("c"), "d", None, 4, 5),
            r(0, Some("d"), 6, 7),
        ];
        assert_eq!(check_key(&h), Verdict::Linearizable);
        // An unknown one seen although the register never held what it expected.
        let h = [
            w(0, "a", 0, 1),
            cas(2, Some("z"), "d", None, 2, 3),
            r(0, Some("d"), 6, 7),
        ];
        assert_eq!(check_key(&h), Verdict::NotLinearizable);
    }

    /// Found by a 30-minute run (seed 1313): a write that timed out and that no read saw,
    /// then `cas=0` refused: the refusal saw that write, which must not be dropped.
    #[test]
    fn a_refused_compare_and_set_may_have_seen_a_write_nobody_read() {
        let info = op(1, OpKind::Write("x".into()), 1, 0, Outcome::Info);
        let h = [
            r(0, None, 0, 2),
            info.clone(),
            cas(0, None, "y", Some(false), 3, 4),
        ];
        assert_eq!(check_key(&h), Verdict::Linearizable);
        // Without the write the refusal is impossible.
        let h = [r(0, None, 0, 2), cas(0, None, "y", Some(false), 3, 4)];
        assert_eq!(check_key(&h), Verdict::NotLinearizable);
        // And a write invoked only after the refusal completed cannot explain it.
        let late = op(1, OpKind::Write("x".into()), 5, 0, Outcome::Info);
        let h = [r(0, None, 0, 2), cas(0, None, "y", Some(false), 3, 4), late];
        assert_eq!(check_key(&h), Verdict::NotLinearizable);
    }

    fn r(c: usize, v: Option<&str>, i: u64, e: u64) -> Op {
        op(
            c,
            OpKind::Read(Some(v.map(String::from))),
            i,
            e,
            Outcome::Ok,
        )
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            r(0, None, 0, 1),
            w(0, "a", 2, 3),
            r(1, Some("a"), 4, 5),
            op(0, OpKind::Delete, 6, 7, Outcome::Ok),
            r(1, None, 8, 9),
        ];
        assert_eq!(check_key(&h), Verdict::Linearizable);
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        for seen in [Some("a"), Some("b")] {
            let h = [w(0, "a", 0, 1), w(1, "b", 2, 6), r(2, seen, 3, 5)];
            assert_eq!(check_key(&h), Verdict::Linearizable, "{seen:?}");
        }
    }

    #[test]
    fn stale_read_after_a_completed_write_is_caught() {
        let h = [w(0, "a", 0, 1), w(0, "b", 2, 3), r(1, Some("a"), 4, 5)];
        assert_eq!(check_key(&h), Verdict::NotLinearizable);
    }

    #[test]
    fn reading_a_value_never_written_is_caught() {
        let h = [w(0, "a", 0, 1), r(1, Some("z"), 2, 3)];
        assert_eq!(check_key(&h), Verdict::NotLinearizable);
    }

    #[test]
    fn reads_must_not_go_back_in_time() {
        // "b" is overwritten by "a"? No: a then b concurrently, then two sequential reads
        // that see b and then a: impossible, since a cannot be written after b was seen.
        let h = [
            w(0, "a", 0, 10),
            w(1, "b", 0, 10),
            r(2, Some("b"), 11, 12),
            r(2, Some("a"), 13, 14),
        ];
        assert_eq!(check_key(&h), Verdict::NotLinearizable);
    }

    #[test]
    fn indeterminate_writes_may_or_may_not_happen() {
        let info = |v: &str, i| op(0, OpKind::Write(v.into()), i, 0, Outcome::Info);
        // It happened (seen later)...
        let h = [w(1, "a", 0, 1), info("b", 2), r(2, Some("b"), 10, 11)];
        assert_eq!(check_key(&h), Verdict::Linearizable);
        // ...or it did not.
        let h = [w(1, "a", 0, 1), info("b", 2), r(2, Some("a"), 10, 11)];
        assert_eq!(check_key(&h), Verdict::Linearizable);
        // But it cannot take effect before it was invoked.
        let h = [w(1, "a", 0, 1), r(2, Some("b"), 2, 3), info("b", 5)];
        assert_eq!(check_key(&h), Verdict::NotLinearizable);
    }

    #[test]
    fn seen_indeterminate_writes_happened_before_the_first_read_saw_them() {
        let info = |v: &str, i| op(0, OpKind::Write(v.into()), i, 0, Outcome::Info);
        // "b" was seen by a read that ended at 5, so it happened by then: a read that
        // began after that and sees the older "a" went back in time.
        let h = [
            w(1, "a", 0, 1),
            info("b", 2),
            r(2, Some("b"), 3, 5),
            r(3, Some("a"), 6, 7),
        ];
        assert_eq!(check_key(&h), Verdict::NotLinearizable);
        // A value written twice proves less: the seen "b" may be the second write.
        let h = [
            w(1, "a", 0, 1),
            info("b", 2),
            r(2, Some("b"), 3, 5),
            r(3, Some("a"), 6, 7),
            w(4, "b", 8, 9),
            r(3, Some("b"), 10, 11),
        ];
        assert_eq!(check_key(&h), Verdict::NotLinearizable);
        let h = [
            w(1, "a", 0, 1),
            info("b", 2),
            w(4, "b", 3, 9),
            r(2, Some("b"), 3, 10),
            r(3, Some("b"), 11, 12),
        ];
        assert_eq!(check_key(&h), Verdict::Linearizable);
    }

    #[test]
    fn many_indeterminate_writes_do_not_exhaust_the_search() {
        // 400 timed-out writes, a third of them seen, between acknowledged writes and
        // reads: without narrowing, every subset of the unseen ones is a separate state.
        let mut h = Vec::new();
        for round in 0..100u64 {
            let t = round * 100;
            for c in 0..4 {
                let v = format!("i{round}-{c}");
                h.push(op(c, OpKind::Write(v), t, 0, Outcome::Info));
            }
            let seen = format!("i{round}-{}", round % 4);
            if round % 3 == 0 {
                h.push(r(5, Some(&seen), t + 10, t + 20));
            }
            h.push(w(6, &format!("v{round}"), t + 30, t + 40));
            h.push(r(7, Some(&format!("v{round}")), t + 50, t + 60));
        }
        assert_eq!(check_key(&h), Verdict::Linearizable);
        // And the narrowed search still catches a read that goes back in time.
        h.push(r(7, Some("v3"), 100_000, 100_001));
        assert_eq!(check_key(&h), Verdict::NotLinearizable);
    }

    #[test]
    fn failed_ops_are_ignored_and_lost_writes_are_caught() {
        let failed = op(0, OpKind::Write("x".into()), 2, 3, Outcome::Fail);
        let h = [w(1, "a", 0, 1), failed, r(2, Some("a"), 4, 5)];
        assert_eq!(check_key(&h), Verdict::Linearizable);
        // An acknowledged write that a later read does not see is lost.
        let h = [w(1, "a", 0, 1), r(2, None, 4, 5)];
        assert_eq!(check_key(&h), Verdict::NotLinearizable);
    }

    #[test]
    fn many_concurrent_ops_finish_quickly() {
        // 10 clients, 40 rounds of overlapping writes and reads of the latest round.
        let mut h = Vec::new();
        for round in 0..40u64 {
            let t = round * 100;
            for c in 0..5 {
                h.push(w(c, &format!("v{round}-{c}"), t, t + 50));
            }
            for c in 5..10 {
                h.push(r(c, Some(&format!("v{round}-4")), t + 60, t + 70));
            }
        }
        assert_eq!(check_key(&h), Verdict::Linearizable);
    }
}
