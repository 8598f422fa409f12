//! The node's lifecycle: one cancellation that every piece of background work started by the
//! node ends on, and the set of those tasks, so that a shutdown can wait for them.
//!
//! A shutdown (SIGTERM or SIGINT, see `crate::node`) goes: not ready (`/readyz` answers 503) →
//! stop accepting connections → let in-flight transfers finish within `http.shutdown_timeout`,
//! then cut them → cancel background work (swarm downloads, /blobs prefetch, the libp2p owner
//! task and its bootstrap loop, upkeep loops) and wait for it, briefly → stop the metrics
//! listener last, so the shutdown stays observable.

use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Background work of one node: cancelled together, waited for together.
#[derive(Clone, Default)]
pub struct Lifecycle {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Lifecycle {
    pub fn new() -> Self {
        Self::default()
    }

    /// Run `work` on the current (actix) arbiter until it ends or the node shuts down.
    pub fn spawn(&self, work: impl Future<Output = ()> + 'static) {
        let token = self.token.clone();
        actix_rt::spawn(self.tasks.track_future(async move {
            tokio::select! {
                _ = work => {}
                _ = token.cancelled() => {}
            }
        }));
    }

    /// Cancel all background work and wait up to `grace` for it to end. Returns whether every
    /// task ended in time.
    pub async fn shut_down(&self, grace: Duration) -> bool {
        self.token.cancel();
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }
}

/// Wait for SIGTERM or SIGINT; returns which. Fails only if the handler cannot be installed.
pub async fn termination() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[actix_rt::test]
    async fn shutdown_cancels_and_waits_for_background_work() {
        let life = Lifecycle::new();
        let ended = Arc::new(AtomicBool::new(false));
        let e = ended.clone();
        // Work that would run forever; it notices the shutdown only through the select.
        life.spawn(async move {
            struct Flag(Arc<AtomicBool>);
            impl Drop for Flag {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let _flag = Flag(e);
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        assert!(!ended.load(Ordering::SeqCst));
        assert!(life.shut_down(Duration::from_secs(5)).await, "the task ended within the grace");
        assert!(ended.load(Ordering::SeqCst), "the task was dropped at shutdown");
    }

    #[actix_rt::test]
    async fn work_that_ignores_nothing_still_counts_until_it_ends() {
        let life = Lifecycle::new();
        // Work that ends by itself before the shutdown is not waited for again.
        life.spawn(async {});
        tokio::task::yield_now().await;
        assert!(life.shut_down(Duration::from_millis(100)).await);
    }
}
