//! Invoking a deployed app's handler on a batch: a fresh `Store` and
//! instance per batch, on a batch thread so a spinning guest never stalls the
//! async runtime, with fuel, memory, deadline, hostcall-byte, log and effect
//! caps; the handler's answer validated into [`Handled`].

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use wasmtime::{Store, UpdateDeadline};

use crate::Runtime;
use crate::bindings::{BatchResult, Effect, Event, HandlerPre, Outcome};
use crate::check::CheckReport;
use crate::error::{InvokeError, truncate};
use crate::guest_log::{LogCounts, LogSink, LogWindow};
use crate::limits::{EPOCH_TICK, LONG_BATCH_TICKS, Limits, MAX_REJECT_REASON_BYTES};
use crate::state::{AppIdentity, HostState};

/// A deployed app: its prepared component and caps. Cheap to clone.
#[derive(Clone)]
pub struct App {
    inner: Arc<AppInner>,
}

/// What a deployed app holds (built by [`Runtime::deploy`]).
pub(super) struct AppInner {
    pub(super) runtime: Runtime,
    pub(super) pre: HandlerPre<HostState>,
    pub(super) identity: Arc<AppIdentity>,
    pub(super) limits: Limits,
    pub(super) log_window: Arc<LogWindow>,
    pub(super) report: CheckReport,
    /// The last batch ran past [`LONG_BATCH_TICKS`]: the next one starts
    /// demoted (a spinning app never competes at full priority).
    pub(super) long_running: std::sync::atomic::AtomicBool,
}

impl App {
    pub(super) fn new(inner: AppInner) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("name", &self.name())
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

/// Counters of one invocation, reported whether it succeeded or not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvokeStats {
    /// Events in the batch.
    pub events: usize,
    /// Fuel consumed (instantiation included).
    pub fuel_consumed: u64,
    /// Highest total linear memory of the instance, in bytes.
    pub memory_high_water: usize,
    /// Wall-clock time from store creation to result, instantiation included.
    pub elapsed: Duration,
    /// Logging counts (lines written and dropped).
    pub log: LogCounts,
    /// Effects removed because an identical one was already in the batch.
    pub effects_collapsed: usize,
    /// `weir:handler/kv` calls the batch made.
    pub kv_calls: u32,
    /// Of those, calls that returned an error (denied, invalid key, too
    /// large, over budget, conflict, unavailable).
    pub kv_errors: u32,
}

/// The handler's answer to one batch, validated: one outcome per event,
/// reject reasons truncated to [`MAX_REJECT_REASON_BYTES`], identical effects
/// collapsed (first occurrence kept, order preserved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    /// One outcome per event, in batch order.
    pub outcomes: Vec<Outcome>,
    /// Distinct effects, in order of first request.
    pub effects: Vec<Effect>,
}

/// The result of one invocation plus its counters.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The handler's validated answer, or why the batch failed.
    pub result: Result<Handled, InvokeError>,
    /// Counters, filled in either case.
    pub stats: InvokeStats,
}

impl App {
    /// Give the app's batches their key-value store (the `kv` import; its
    /// grant was fixed at deploy). Only the first call counts. Until then a
    /// `kv` call answers `unavailable`.
    pub fn attach_kv(&self, backend: std::sync::Arc<dyn crate::kv::KvBackend>) {
        self.inner.identity.kv.attach(backend);
    }

    /// The buckets the app may use.
    pub fn kv_grant(&self) -> &crate::kv::KvGrant {
        self.inner.identity.kv.grant()
    }

    /// The app's name.
    pub fn name(&self) -> &str {
        &self.inner.identity.app
    }

    /// The app's caps.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The check report from deploy (imports with their grants, exports).
    pub fn report(&self) -> &CheckReport {
        &self.inner.report
    }

    /// Run the handler on `events` (a `Vec<Event>` or a shared `Arc<[Event]>`,
    /// which the caller may keep) on one of the runtime's batch threads
    /// ([`crate::threads`]), after taking one of its instance permits. While
    /// all are in use the batch waits; waiting batches get permits in arrival
    /// order, so no app starves another.
    ///
    /// Cancel safety: dropping the future before it completes gives up the
    /// result, but a call already started runs to completion or to its caps
    /// (deadline, fuel) on its thread.
    pub async fn invoke(&self, events: impl Into<Arc<[Event]>>) -> Invocation {
        let events: Arc<[Event]> = events.into();
        let stats = InvokeStats {
            events: events.len(),
            ..InvokeStats::default()
        };
        let permit = match self
            .inner
            .runtime
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
        {
            Ok(p) => p,
            Err(_) => {
                return Invocation {
                    result: Err(InvokeError::Host("runtime shut down".into())),
                    stats,
                };
            }
        };
        let app = self.clone();
        let threads = self.inner.runtime.inner.threads.clone();
        match threads
            .run(move || {
                let _permit = permit;
                app.invoke_blocking(&events)
            })
            .await
        {
            Ok(invocation) => invocation,
            Err(e) => Invocation {
                result: Err(InvokeError::Host(format!("invocation thread failed: {e}"))),
                stats,
            },
        }
    }

    /// Run the handler on `events` on the current thread, on a fresh store
    /// and instance with the app's caps. Blocks for up to the deadline: never
    /// call it on an async worker thread (use [`App::invoke`]).
    ///
    /// A batch that runs past [`LONG_BATCH_TICKS`] moves the calling thread
    /// to `SCHED_IDLE` and restores it afterwards; without `CAP_SYS_NICE`
    /// (or a `RLIMIT_NICE` that allows it) the thread stays at idle priority,
    /// so later calls on it run only when a core is otherwise idle.
    /// [`App::invoke`]'s threads are retired instead; a caller with its own
    /// loop of long batches should use a thread per batch.
    pub fn invoke_blocking(&self, events: &[Event]) -> Invocation {
        let inner = &*self.inner;
        let _span = tracing::debug_span!("batch", app = %inner.identity.app, events = events.len())
            .entered();
        let limits = &inner.limits;
        let start = Instant::now();
        let log = LogSink::new(inner.identity.app.clone(), inner.log_window.clone(), limits);
        let state = HostState::new(inner.identity.clone(), limits, log);
        let mut store = Store::new(&inner.runtime.inner.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(limits.hostcall_bytes);
        store.set_max_component_handles(limits.resource_table_entries);
        // The first epoch callback comes after LONG_BATCH_TICKS: the batch is
        // demoted and runs on to its deadline, where it is interrupted.
        let deadline = limits.deadline_ticks();
        let mut ticks = LONG_BATCH_TICKS.min(deadline);
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_callback(move |mut ctx| {
            if ticks >= deadline {
                return Ok(UpdateDeadline::Interrupt);
            }
            if !ctx.data().demoted {
                ctx.data_mut().demoted = crate::priority::demote_current_thread();
            }
            let rest = deadline - ticks;
            ticks = deadline;
            Ok(UpdateDeadline::Continue(rest))
        });
        let mut stats = InvokeStats {
            events: events.len(),
            ..InvokeStats::default()
        };
        let raw = match store.set_fuel(limits.fuel) {
            Ok(()) => inner.pre.instantiate(&mut store).and_then(|handler| {
                // Demote only once instantiated: the pool's locks are never
                // held by an idle-priority thread (no priority inversion).
                if inner.long_running.load(Ordering::Relaxed) {
                    store.data_mut().demoted = crate::priority::demote_current_thread();
                }
                handler.call_handle(&mut store, events)
            }),
            Err(e) => Err(e),
        };
        stats.fuel_consumed = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        stats.memory_high_water = store.data().limiter.memory_high_water;
        let result = match raw {
            Ok(result) => validate(result, events.len(), limits.max_effects, &mut stats),
            Err(e) => Err(InvokeError::classify(&e, store.data(), limits)),
        };
        stats.log = store.data().log.finish();
        stats.kv_calls = store.data().kv_budget.calls;
        stats.kv_errors = store.data().kv_budget.errors;
        let ran_long =
            store.data().demoted || start.elapsed() >= EPOCH_TICK * LONG_BATCH_TICKS as u32;
        inner.long_running.store(ran_long, Ordering::Relaxed);
        if store.data().demoted {
            crate::priority::restore_current_thread();
        }
        drop(store);
        stats.elapsed = start.elapsed();
        Invocation { result, stats }
    }
}

/// Validate a handler's raw answer to a batch of `events` events (what
/// every invocation does after the call): one outcome per event, reject
/// reasons truncated to [`MAX_REJECT_REASON_BYTES`], identical effects
/// collapsed (first kept, order preserved, the count in
/// `stats.effects_collapsed`).
///
/// # Errors
///
/// [`InvokeError::ContractViolation`] for a wrong number of outcomes,
/// [`InvokeError::EffectLimit`] for more than `max_effects` distinct
/// effects.
pub fn validate(
    result: BatchResult,
    events: usize,
    max_effects: usize,
    stats: &mut InvokeStats,
) -> Result<Handled, InvokeError> {
    let BatchResult { outcomes, effects } = result;
    if outcomes.len() != events {
        return Err(InvokeError::ContractViolation(format!(
            "{} outcomes for a batch of {events} events",
            outcomes.len()
        )));
    }
    let outcomes = outcomes
        .into_iter()
        .map(|o| match o {
            Outcome::Reject(reason) => Outcome::Reject(truncate(reason, MAX_REJECT_REASON_BYTES)),
            other => other,
        })
        .collect();
    // At most `max_effects` distinct effects are kept, so a linear scan of
    // the kept ones is cheap; hashing is only needed to size the error.
    let requested = effects.len();
    let mut kept: Vec<Effect> = Vec::with_capacity(requested.min(max_effects));
    let mut rest = effects.into_iter();
    while let Some(effect) = rest.next() {
        if kept.contains(&effect) {
            continue;
        }
        if kept.len() == max_effects {
            let mut distinct: HashSet<Effect> = kept.into_iter().collect();
            distinct.insert(effect);
            distinct.extend(rest);
            return Err(InvokeError::EffectLimit {
                limit: max_effects,
                requested: distinct.len(),
            });
        }
        kept.push(effect);
    }
    stats.effects_collapsed = requested - kept.len();
    Ok(Handled {
        outcomes,
        effects: kept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restart(u: &str) -> Effect {
        Effect::Restart(u.into())
    }

    #[test]
    fn validate_collapses_identical_effects_in_order() {
        let mut stats = InvokeStats::default();
        let r = BatchResult {
            outcomes: vec![Outcome::Done, Outcome::Retry(5)],
            effects: vec![
                restart("a"),
                restart("b"),
                restart("a"),
                Effect::Reload("a".into()),
                restart("b"),
            ],
        };
        let h = validate(r, 2, 64, &mut stats).unwrap();
        assert_eq!(
            h.effects,
            vec![restart("a"), restart("b"), Effect::Reload("a".into())]
        );
        assert_eq!(stats.effects_collapsed, 2);
    }

    #[test]
    fn validate_refuses_wrong_outcome_count() {
        let r = BatchResult {
            outcomes: vec![Outcome::Done],
            effects: vec![],
        };
        let e = validate(r, 2, 64, &mut InvokeStats::default()).unwrap_err();
        assert_eq!(
            e,
            InvokeError::ContractViolation("1 outcomes for a batch of 2 events".into())
        );
    }

    #[test]
    fn validate_caps_distinct_effects_after_collapsing() {
        let same = BatchResult {
            outcomes: vec![],
            effects: vec![restart("x"); 1000],
        };
        assert_eq!(
            validate(same, 0, 3, &mut InvokeStats::default())
                .unwrap()
                .effects
                .len(),
            1
        );
        let distinct = BatchResult {
            outcomes: vec![],
            effects: (0..10).map(|i| restart(&i.to_string())).collect(),
        };
        let e = validate(distinct, 0, 3, &mut InvokeStats::default()).unwrap_err();
        assert_eq!(
            e,
            InvokeError::EffectLimit {
                limit: 3,
                requested: 10
            }
        );
    }

    #[test]
    fn validate_truncates_reasons_at_char_boundary() {
        let reason = "é".repeat(MAX_REJECT_REASON_BYTES);
        let r = BatchResult {
            outcomes: vec![Outcome::Reject(reason)],
            effects: vec![],
        };
        let h = validate(r, 1, 64, &mut InvokeStats::default()).unwrap();
        let Outcome::Reject(kept) = &h.outcomes[0] else {
            panic!("not a reject")
        };
        assert!(kept.len() <= MAX_REJECT_REASON_BYTES + '…'.len_utf8());
        assert!(kept.ends_with('…'));
    }
}
