//! The threads batches run on.
//!
//! A wasm call is synchronous and may spin until its deadline, so it never
//! runs on an async worker. It runs on one of these OS threads: created on
//! demand, at most as many busy as there are instance permits (the pool's
//! slots, [`crate::EngineConfig::pool_instances`]), an idle one kept for
//! [`IDLE_THREAD_KEEP_ALIVE`]. weir owns these threads, rather than using
//! tokio's blocking pool, because of demotion: a batch that runs long moves
//! its thread to `SCHED_IDLE` (see [`crate::limits::LONG_BATCH_TICKS`]), and taking a thread out
//! of `SCHED_IDLE` needs `CAP_SYS_NICE`. A thread that cannot be given its
//! priority back is retired after its batch, so it never runs another app's
//! batch at idle priority.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

/// How long an idle batch thread waits for work before it exits: 10 s (as
/// tokio's blocking pool).
pub const IDLE_THREAD_KEEP_ALIVE: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send>;

/// The batch threads of one runtime.
#[derive(Debug, Default)]
pub(crate) struct BatchThreads {
    /// Idle threads, by id, with the sender that hands them a job.
    idle: Mutex<Vec<(u64, mpsc::Sender<Job>)>>,
    next_id: AtomicU64,
    /// Threads retired because their priority could not be restored.
    retired: AtomicU64,
}

impl BatchThreads {
    /// Run `f` on an idle thread, or on a new one; the receiver yields its
    /// result. It is closed without a value only if no thread could be
    /// started.
    pub(crate) fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> tokio::sync::oneshot::Receiver<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // WASI's blocking calls (poll) run on the caller's tokio runtime.
        let handle = tokio::runtime::Handle::try_current().ok();
        let mut job: Job = Box::new(move || {
            let _runtime = handle.as_ref().map(tokio::runtime::Handle::enter);
            let _ = tx.send(f());
        });
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            match idle {
                Some((_, sender)) => match sender.send(job) {
                    Ok(()) => return rx,
                    // That thread has just exited: try the next one.
                    Err(mpsc::SendError(back)) => job = back,
                },
                None => {
                    self.spawn(job);
                    return rx;
                }
            }
        }
    }

    /// Threads retired so far because they stayed demoted.
    pub(crate) fn retired(&self) -> u64 {
        self.retired.load(Ordering::Relaxed)
    }

    fn spawn(self: &Arc<Self>, first: Job) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let pool = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("weir-batch".into())
            .spawn(move || worker(id, first, &pool));
        if let Err(e) = spawned {
            // The job (and its result sender) is dropped: the caller sees a
            // host error for this batch, which is retried.
            tracing::error!(error = %e, "failed to start a batch thread");
        }
    }
}

fn worker(id: u64, first: Job, pool: &Weak<BatchThreads>) {
    let (tx, rx) = mpsc::channel::<Job>();
    let mut job = first;
    loop {
        job();
        if crate::priority::current_thread_demoted() {
            if let Some(pool) = pool.upgrade() {
                pool.retired.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!("batch thread stays demoted; retiring it");
            return;
        }
        let Some(p) = pool.upgrade() else { return };
        p.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((id, tx.clone()));
        drop(p);
        job = match rx.recv_timeout(IDLE_THREAD_KEEP_ALIVE) {
            Ok(next) => next,
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                let Some(p) = pool.upgrade() else { return };
                let mut idle = p.idle.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(i) = idle.iter().position(|(other, _)| *other == id) {
                    idle.swap_remove(i);
                    return;
                }
                // Taken from the idle list just now: its job is on the way.
                drop(idle);
                match rx.recv() {
                    Ok(next) => next,
                    Err(_) => return,
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_runtime as rt;

    #[test]
    fn threads_are_reused() {
        let pool = Arc::new(BatchThreads::default());
        rt().block_on(async {
            let first = pool.run(|| std::thread::current().id()).await.unwrap();
            // The worker puts itself back on the idle list after the send.
            for _ in 0..100 {
                if !pool.idle.lock().unwrap().is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let second = pool.run(|| std::thread::current().id()).await.unwrap();
            assert_eq!(first, second);
        });
    }

    #[test]
    fn a_thread_that_stays_demoted_is_retired() {
        let pool = Arc::new(BatchThreads::default());
        rt().block_on(async {
            // Demote, then fail to restore (as without CAP_SYS_NICE).
            let (demoted, thread) = pool
                .run(|| {
                    let demoted = crate::priority::demote_current_thread();
                    crate::priority::fail_next_restore();
                    crate::priority::restore_current_thread();
                    (demoted, std::thread::current().id())
                })
                .await
                .unwrap();
            assert!(demoted, "an unprivileged thread may always demote itself");
            for _ in 0..100 {
                if pool.retired() == 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(pool.retired(), 1);
            assert!(pool.idle.lock().unwrap().is_empty());
            // The next batch runs on a new thread, at normal priority.
            let (next, normal) = pool
                .run(|| {
                    (
                        std::thread::current().id(),
                        !crate::priority::current_thread_demoted()
                            && crate::priority::current_policy_is_normal(),
                    )
                })
                .await
                .unwrap();
            assert_ne!(next, thread);
            assert!(normal);
        });
    }
}
