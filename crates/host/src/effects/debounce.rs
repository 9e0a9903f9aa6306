//! Effect debounce across batches (`[app.effects] debounce_ms`).
//!
//! A storm does not arrive in one batch: NS8's node join comes at 6
//! instants over 61 s, and each batch that touches an app would restart its
//! services again. With a window set, an effect a batch asks for is not
//! executed with the batch; it is recorded as *pending* in the replicated
//! `WEIR_PENDING` bucket ([`super::PendingStore`]) before the batch's
//! events are acked, and identical effects asked for while it waits join
//! it. It is executed once, on the trailing edge: `debounce_ms` after the
//! last request, and never later than `debounce_max_ms` after the first
//! (default [`DEFAULT_MAX_WAIT_FACTOR`] × the window, so a storm that never
//! pauses cannot postpone it forever). Then the idempotency records of
//! every event that asked for it are stored and the pending entry removed.
//!
//! A host killed inside a window loses nothing: the entry is durable, and
//! the next host of the node schedules every entry of its node at start
//! ([`EffectRunner::recover_pending`](super::EffectRunner::recover_pending)).
//! A kill between executing an effect and removing its entry executes it
//! again at start, with the same idempotency keys (`WEIR_EFFECT_KEYS`):
//! effects are at least once, as without debounce. An execution that fails
//! is retried (1 s doubling to [`MAX_RETRY_BACKOFF`]), never dropped.
//!
//! Without a NATS connection (in-process use, `weir invoke`) there is no
//! durable store, and effects run with their batch as if `debounce_ms` were
//! 0.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::PendingStore;

/// Longest debounce window: 3,600,000 ms (1 h). A longer one would outlive
/// the operator's patience and comes close to the bucket's 24 h TTL.
pub const MAX_DEBOUNCE_MS: u64 = 3_600_000;

/// Default longest wait of a pending effect, as a multiple of its window:
/// 10 (a 5 s window waits at most 50 s from its first request).
pub const DEFAULT_MAX_WAIT_FACTOR: u64 = 10;

/// Most event ids kept with one pending effect: 1,000 (about 40 KB). The
/// events past it are still acked with the effect pending and counted in
/// `requests`; only a redelivery of one of them after the effect ran would
/// ask for it again.
pub const MAX_PENDING_EVENTS: usize = 1_000;

/// Compare-and-set rounds before a join gives up (the batch is retried):
/// 16. Each round loses only to another writer of the same key.
pub const MAX_CAS_ROUNDS: usize = 16;

/// Longest pause between retries of a pending effect whose execution
/// fails: 300 s (first 1 s, doubling).
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(300);

/// `[app.effects]`: when an app's effects are executed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AppEffects {
    /// Debounce window in ms: an effect is executed once, this long after
    /// the last batch that asked for it. Default 0: executed with its batch.
    /// At most [`MAX_DEBOUNCE_MS`].
    pub debounce_ms: u64,
    /// Longest wait in ms from the first request of a window to its
    /// execution. Default [`DEFAULT_MAX_WAIT_FACTOR`] × `debounce_ms`; at
    /// least `debounce_ms`.
    pub debounce_max_ms: Option<u64>,
    /// Rate limits (`[[app.effects.limit]]`); the first that matches an
    /// effect applies. Default none.
    #[serde(default)]
    pub limit: Vec<super::limit::EffectLimit>,
}

impl AppEffects {
    /// Every problem with this section (empty if valid), unprefixed.
    pub fn problems(&self) -> Vec<String> {
        let mut p: Vec<String> = self.limit.iter().flat_map(|l| l.problems()).collect();
        if self.debounce_ms > MAX_DEBOUNCE_MS {
            p.push(format!(
                "debounce_ms = {} is above the most, {MAX_DEBOUNCE_MS} (1 h)",
                self.debounce_ms
            ));
        }
        if let Some(max) = self.debounce_max_ms {
            if max < self.debounce_ms {
                p.push(format!(
                    "debounce_max_ms = {max} is below debounce_ms = {}",
                    self.debounce_ms
                ));
            }
            if max > MAX_DEBOUNCE_MS * DEFAULT_MAX_WAIT_FACTOR {
                p.push(format!(
                    "debounce_max_ms = {max} is above the most, {}",
                    MAX_DEBOUNCE_MS * DEFAULT_MAX_WAIT_FACTOR
                ));
            }
        }
        p
    }

    /// The longest wait in ms (see [`AppEffects::debounce_max_ms`]).
    pub fn max_wait_ms(&self) -> u64 {
        self.debounce_max_ms
            .unwrap_or(self.debounce_ms.saturating_mul(DEFAULT_MAX_WAIT_FACTOR))
    }
}

/// The host's pending effects: the durable store and the in-memory schedule
/// of their due times (the store is the truth; the schedule only says when
/// to look).
#[derive(Debug)]
pub struct Debouncer {
    pub(super) store: PendingStore,
    schedule: Mutex<Schedule>,
    pub(super) wake: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Schedule {
    by_due: BTreeSet<(u64, String)>,
    due_of: HashMap<String, u64>,
    failures: HashMap<String, u32>,
    /// Keys found in the store at start (an earlier process's).
    recovered: std::collections::HashSet<String>,
}

/// The app of a pending key `n<node>.<app>.<digest>`.
pub(super) fn app_of(key: &str) -> &str {
    key.split('.').nth(1).unwrap_or("")
}

impl Debouncer {
    /// A debouncer over `store`, with nothing scheduled.
    pub fn new(store: PendingStore) -> Self {
        Self {
            store,
            schedule: Mutex::new(Schedule::default()),
            wake: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Look at `key` at `due_ms` (ms since the Unix epoch), replacing an
    /// earlier plan for it; returns how many keys of its app are scheduled.
    pub(super) fn schedule(&self, key: &str, due_ms: u64) -> usize {
        let count = {
            let mut s = self.lock();
            if let Some(old) = s.due_of.insert(key.to_owned(), due_ms) {
                s.by_due.remove(&(old, key.to_owned()));
            }
            s.by_due.insert((due_ms, key.to_owned()));
            Self::count(&s, app_of(key))
        };
        self.wake.notify_one();
        count
    }

    /// `key` was executed or is gone: forget its failures; returns how many
    /// keys of its app are scheduled. (Its schedule entry was taken by
    /// [`Debouncer::take_due`]; one present now was made by a batch that
    /// joined since, and stays.)
    pub(super) fn done(&self, key: &str) -> usize {
        let mut s = self.lock();
        s.failures.remove(key);
        s.recovered.remove(key);
        Self::count(&s, app_of(key))
    }

    /// `key` was left in the store by an earlier process.
    pub(super) fn mark_recovered(&self, key: &str) {
        self.lock().recovered.insert(key.to_owned());
    }

    /// Whether `key` was left by an earlier process (it may have been
    /// executed already, its records stored, before that process died).
    pub(super) fn recovered(&self, key: &str) -> bool {
        self.lock().recovered.contains(key)
    }

    /// One more failed execution of `key`: the pause before the next try
    /// (1 s doubling, at most [`MAX_RETRY_BACKOFF`]).
    pub(super) fn failed(&self, key: &str) -> Duration {
        let mut s = self.lock();
        let n = s.failures.entry(key.to_owned()).or_default();
        *n = n.saturating_add(1);
        retry_backoff(*n)
    }

    fn count(s: &Schedule, app: &str) -> usize {
        s.due_of.keys().filter(|k| app_of(k) == app).count()
    }

    /// The keys due at `now_ms` (taken off the schedule), and when the next
    /// one is due.
    pub(super) fn take_due(&self, now_ms: u64) -> (Vec<String>, Option<u64>) {
        let mut s = self.lock();
        let mut due = Vec::new();
        while let Some((at, key)) = s.by_due.first().cloned() {
            if at > now_ms {
                return (due, Some(at));
            }
            s.by_due.pop_first();
            s.due_of.remove(&key);
            due.push(key);
        }
        (due, None)
    }

    /// Keys scheduled now (for tests and `/stats`).
    pub fn scheduled(&self) -> usize {
        self.lock().due_of.len()
    }
}

/// The pause after the `failures`-th failed execution in a row: 1 s
/// doubling, at most [`MAX_RETRY_BACKOFF`].
pub(super) fn retry_backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(16)).min(MAX_RETRY_BACKOFF)
}

/// When `pending` is due after a request joins it at `now_ms`: the
/// request's window end (`now_ms` + the window) but never past the first
/// request + the longest wait, or not before `not_before` (a rate limit's
/// next window); never earlier than it already was.
pub(super) fn joined_due(
    pending: &super::pending::PendingEffect,
    now_ms: u64,
    not_before: Option<u64>,
) -> u64 {
    match not_before {
        Some(at) => at.max(pending.due_ms),
        None => (now_ms + pending.window_ms)
            .min(pending.first_ms + pending.max_wait_ms)
            .max(pending.due_ms),
    }
}

/// Merge `ids` into `into` (no repeats, at most [`MAX_PENDING_EVENTS`]).
pub(super) fn merge_ids(into: &mut Vec<String>, ids: &[&str]) {
    for id in ids {
        if into.len() >= MAX_PENDING_EVENTS {
            return;
        }
        if !into.iter().any(|x| x == id) {
            into.push((*id).to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_and_max_wait() {
        let e = AppEffects {
            debounce_ms: 5_000,
            ..AppEffects::default()
        };
        assert!(e.problems().is_empty());
        assert_eq!(e.max_wait_ms(), 50_000);
        let e = AppEffects {
            debounce_ms: MAX_DEBOUNCE_MS + 1,
            debounce_max_ms: Some(10),
            ..AppEffects::default()
        };
        let p = e.problems();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("above the most"), "{p:?}");
        assert!(p[1].contains("below debounce_ms"), "{p:?}");
    }

    #[test]
    fn ids_merge_without_repeats_and_bounded() {
        let mut v = vec!["a".to_owned()];
        merge_ids(&mut v, &["a", "b", "b"]);
        assert_eq!(v, ["a", "b"]);
        let many: Vec<String> = (0..MAX_PENDING_EVENTS + 5).map(|i| i.to_string()).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        merge_ids(&mut v, &refs);
        assert_eq!(v.len(), MAX_PENDING_EVENTS);
    }

    #[test]
    fn joins_push_the_trailing_edge_up_to_the_longest_wait() {
        let mut p = crate::effects::pending::PendingEffect {
            app: "mail".into(),
            effect: crate::effects::pending::StoredEffect::Restart {
                unit: "dovecot.service".into(),
            },
            event_ids: Vec::new(),
            requests: 1,
            first_ms: 1_000,
            due_ms: 6_000,
            window_ms: 5_000,
            max_wait_ms: 50_000,
            limit: None,
            failures: 0,
            shared: false,
            trace: None,
        };
        // A request 2 s later moves the trailing edge to 5 s after it.
        assert_eq!(joined_due(&p, 3_000, None), 8_000);
        // A storm that never pauses is executed at first + longest wait.
        p.due_ms = 50_900;
        assert_eq!(joined_due(&p, 49_000, None), 51_000);
        assert_eq!(joined_due(&p, 90_000, None), 51_000);
        // A rate limit's next window postpones it; never earlier than due.
        assert_eq!(joined_due(&p, 3_000, Some(60_000)), 60_000);
        assert_eq!(joined_due(&p, 3_000, Some(10)), 50_900);
    }

    #[test]
    fn failed_executions_back_off_to_five_minutes() {
        let pauses: Vec<u64> = (1..=11).map(|n| retry_backoff(n).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(retry_backoff(u32::MAX), MAX_RETRY_BACKOFF);
    }

    #[test]
    fn app_of_pending_keys() {
        assert_eq!(app_of("n1.mail.0123"), "mail");
        assert_eq!(app_of("bad"), "");
    }
}
