//! The node's background tasks and the one signal that stops them all.
//!
//! Every long-lived task the store starts (the group-commit write loop, the read-round
//! loop, the peer transport, the removal watch, the deferred log purge, ...) is spawned
//! through [`Tasks`], which keeps its `JoinHandle`. At shutdown, [`Tasks::stop`] raises the
//! stop signal that each of them selects on, and [`Tasks::join`] awaits them with a bound,
//! aborting (and logging) any that has not ended in time, so that none outlives the node
//! (in particular none writes to RocksDB after it has been quiesced).

use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The background tasks of one node. Cheap to clone: clones share the tasks and the signal.
#[derive(Clone, Default)]
pub(crate) struct Tasks {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Becomes `true` once, when the node starts shutting down; every task selects on it.
    stop: watch::Sender<bool>,
    /// The tasks started and not yet joined, by name (for the log). Behind the same lock
    /// as the check of the stop signal in [`Tasks::spawn`], so that no task can be added
    /// after [`Tasks::join`] has taken the list.
    running: Mutex<Vec<(&'static str, JoinHandle<()>)>>,
}

/// Resolves once the node is stopping. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Waits for the stop signal (at once if it was given already).
    pub(crate) async fn wait(&mut self) {
        // An error means the signal's owner is gone: nothing is left to keep running for.
        let _ = self.0.wait_for(|s| *s).await;
    }
}

impl Tasks {
    pub(crate) fn new() -> Tasks {
        Tasks::default()
    }

    /// A handle that resolves once [`Tasks::stop`] has been called.
    pub(crate) fn stopping(&self) -> Stop {
        Stop(self.inner.stop.subscribe())
    }

    /// Whether [`Tasks::stop`] has been called.
    pub(crate) fn is_stopping(&self) -> bool {
        *self.inner.stop.borrow()
    }

    /// Starts `task` and keeps its handle until [`Tasks::join`]. `task` must end soon after
    /// the stop signal (see [`Tasks::stopping`]). Once stopping, nothing new is started:
    /// returns `false` then.
    pub(crate) fn spawn<F>(&self, name: &'static str, task: F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut running = self.lock();
        if *self.inner.stop.borrow() {
            log::debug!("not starting {name}: shutting down");
            return false;
        }
        // Forget the tasks that have ended, so short-lived ones do not pile up.
        running.retain(|(_, h)| !h.is_finished());
        running.push((name, tokio::spawn(task)));
        true
    }

    /// Gives the stop signal. Idempotent.
    pub(crate) fn stop(&self) {
        let _running = self.lock();
        self.inner.stop.send_replace(true);
    }

    /// Gives the stop signal, then waits, `bound` at most in all, for every task to end;
    /// aborts and logs any that has not. Returns how many had to be aborted.
    pub(crate) async fn join(&self, bound: Duration) -> usize {
        let running = {
            let mut running = self.lock();
            self.inner.stop.send_replace(true);
            std::mem::take(&mut *running)
        };
        let deadline = tokio::time::Instant::now() + bound;
        let mut aborted = 0;
        for (name, mut handle) in running {
            match tokio::time::timeout_at(deadline, &mut handle).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.is_panic() => log::error!("background task {name} panicked: {e}"),
                Ok(Err(_)) => {}
                Err(_) => {
                    log::warn!("background task {name} did not stop within {bound:?}; aborting it");
                    handle.abort();
                    let _ = handle.await;
                    aborted += 1;
                }
            }
        }
        aborted
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(&'static str, JoinHandle<()>)>> {
        self.inner.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn join_ends_tasks_that_watch_the_signal_and_aborts_the_rest() {
        let tasks = Tasks::new();
        let (ended_tx, mut ended_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut stop = tasks.stopping();
        assert!(tasks.spawn("polite", async move {
            stop.wait().await;
            let _ = ended_tx.send(());
        }));
        assert!(tasks.spawn("stubborn", futures::future::pending()));
        let started = tokio::time::Instant::now();
        assert_eq!(tasks.join(Duration::from_millis(200)).await, 1);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            ended_rx.try_recv().is_ok(),
            "the polite task ran to its end"
        );
        // Nothing starts once stopping.
        assert!(!tasks.spawn("late", async {}));
        // And the signal stays given for those who look later.
        tokio::time::timeout(Duration::from_secs(1), tasks.stopping().wait())
            .await
            .expect("the stop signal is given");
    }
}
