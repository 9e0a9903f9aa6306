//! Demoting the thread of a long-running batch (Linux scheduling policy).
//!
//! A batch still running after [`crate::limits::LONG_BATCH_TICKS`] (or any
//! batch of an app whose last batch ran that long) moves its thread to
//! `SCHED_IDLE`, which the kernel preempts as soon as a normal thread wants
//! the core: guests spinning towards their deadline on every core do not slow
//! other apps' short batches or the host's own threads. (A nice value alone,
//! see [`crate::limits::LONG_BATCH_NICE`], is the fallback where `SCHED_IDLE`
//! is refused; it still lets a spinner finish its time slice, ~3 ms.) After
//! the batch the thread gets its policy and nice value back, which needs
//! `CAP_SYS_NICE` or a matching `RLIMIT_NICE` (sched(7)); without them the
//! thread stays demoted (logged once), which only costs that blocking thread
//! priority under contention. Policies are set with the `thread-priority`
//! crate, nice values with `rustix`.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::limits::LONG_BATCH_NICE;

/// The highest (weakest) nice value on Linux.
const MAX_NICE: i32 = 19;

thread_local! {
    /// This thread's nice value before it was demoted (`Some` while demoted).
    static ORIGINAL: Cell<Option<i32>> = const { Cell::new(None) };
    /// Test hook: the next restore on this thread fails as if unprivileged.
    static FAIL_NEXT_RESTORE: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is demoted (a restore was refused, or none
/// was tried yet).
pub(crate) fn current_thread_demoted() -> bool {
    ORIGINAL.get().is_some()
}

/// Whether the current thread runs under the normal policy (`SCHED_OTHER`).
pub(crate) fn current_policy_is_normal() -> bool {
    thread_priority::thread_schedule_policy().is_ok_and(|p| {
        p == thread_priority::ThreadSchedulePolicy::Normal(
            thread_priority::NormalThreadSchedulePolicy::Other,
        )
    })
}

/// Make the next [`restore_current_thread`] on this thread fail as it does
/// without `CAP_SYS_NICE` (for tests of what happens then).
#[cfg(test)]
pub(crate) fn fail_next_restore() {
    FAIL_NEXT_RESTORE.set(true);
}

static RESTORE_WARNED: AtomicBool = AtomicBool::new(false);

/// Raise the current thread's nice value by [`LONG_BATCH_NICE`]; true if it
/// was changed now (false if already demoted or not permitted).
pub fn demote_current_thread() -> bool {
    if ORIGINAL.get().is_some() {
        return false;
    }
    let tid = rustix::thread::gettid();
    let Ok(current) = rustix::process::getpriority_process(Some(tid)) else {
        return false;
    };
    let idle = thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        thread_priority::ThreadPriority::Min,
        thread_priority::ThreadSchedulePolicy::Normal(
            thread_priority::NormalThreadSchedulePolicy::Idle,
        ),
    );
    if idle.is_err() {
        let demoted = (current + LONG_BATCH_NICE).min(MAX_NICE);
        if demoted == current || rustix::process::setpriority_process(Some(tid), demoted).is_err() {
            return false;
        }
    }
    ORIGINAL.set(Some(current));
    true
}

/// Give the current thread back the nice value it had before
/// [`demote_current_thread`].
pub(crate) fn restore_current_thread() {
    let Some(original) = ORIGINAL.get() else {
        return;
    };
    if FAIL_NEXT_RESTORE.replace(false) {
        return;
    }
    let policy = thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        thread_priority::ThreadPriority::Min,
        thread_priority::ThreadSchedulePolicy::Normal(
            thread_priority::NormalThreadSchedulePolicy::Other,
        ),
    );
    let back_to_other = current_policy_is_normal();
    let nice = rustix::process::setpriority_process(Some(rustix::thread::gettid()), original);
    match (back_to_other, nice) {
        (true, Ok(())) => ORIGINAL.set(None),
        (false, _) => {
            if !RESTORE_WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    error = ?policy.err(),
                    "cannot take a demoted thread out of SCHED_IDLE (needs CAP_SYS_NICE or RLIMIT_NICE); it stays demoted"
                );
            }
        }
        (true, Err(e)) => {
            if !RESTORE_WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    error = %e,
                    "cannot restore a demoted thread's nice value (needs CAP_SYS_NICE or RLIMIT_NICE); it stays demoted"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demote_then_restore_round_trips() {
        std::thread::spawn(|| {
            let tid = rustix::thread::gettid();
            let before = rustix::process::getpriority_process(Some(tid)).unwrap();
            // Lowering one's own priority needs no privilege.
            assert!(demote_current_thread(), "demotion refused");
            let idle = thread_priority::thread_schedule_policy().unwrap()
                == thread_priority::ThreadSchedulePolicy::Normal(
                    thread_priority::NormalThreadSchedulePolicy::Idle,
                );
            let niced = rustix::process::getpriority_process(Some(tid)).unwrap()
                == (before + LONG_BATCH_NICE).min(MAX_NICE);
            assert!(idle || niced, "demoted by policy or nice value");
            assert!(current_thread_demoted());
            assert!(!demote_current_thread(), "demoted once only");
            restore_current_thread();
            // Restoring needs privileges: either the thread is back to normal,
            // or it says it is still demoted (and its pool retires it).
            if current_thread_demoted() {
                assert!(!current_policy_is_normal() || niced);
            } else {
                assert!(current_policy_is_normal());
                let after = rustix::process::getpriority_process(Some(tid)).unwrap();
                assert_eq!(after, before);
            }
        })
        .join()
        .unwrap();
    }
}
