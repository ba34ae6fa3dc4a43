//! The owner of the server's background work. Every loop that runs for the life of the server
//! (presence flushing, the change-log follower, the rollout evaluator, command expiry, the
//! MQTT adapter's loops) is spawned here: `stop` cancels them all and waits for them, so that
//! nothing keeps running once a server (or a test's server) has stopped, and the final
//! presence flush at shutdown races no loop.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Tasks {
    /// Runs `work` until it ends or the tasks are stopped, whichever comes first.
    pub fn spawn<F>(&self, name: &'static str, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => tracing::debug!(task = name, "background task stopped"),
                _ = work => tracing::debug!(task = name, "background task ended"),
            }
        });
    }

    /// Runs `work` to its end, which it chooses itself (watching `cancelled`): for loops that
    /// write something once more when the server stops. `stop` waits for it like for others.
    pub fn spawn_until_done<F>(&self, name: &'static str, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(async move {
            work.await;
            tracing::debug!(task = name, "background task ended");
        });
    }

    /// Resolves once `stop` was called (for work that stops at a point of its own choosing).
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.cancel.clone().cancelled_owned()
    }

    pub fn is_stopped(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Stops every task and waits up to `grace` for them to finish; false if some did not.
    pub async fn stop(&self, grace: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait()).await.is_ok()
    }

    /// Tasks still running.
    pub fn running(&self) -> usize {
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_ends_every_loop_and_waits_for_it() {
        let tasks = Tasks::default();
        for _ in 0..3 {
            tasks.spawn("forever", async { std::future::pending::<()>().await });
        }
        tasks.spawn("short", async {});
        tokio::task::yield_now().await;
        assert!(tasks.running() >= 3);
        assert!(tasks.stop(Duration::from_secs(5)).await);
        assert_eq!(tasks.running(), 0);
        assert!(tasks.is_stopped());
    }
}
