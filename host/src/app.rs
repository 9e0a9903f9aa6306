//! Deploying an app (compile, check, prepare) and invoking its handler on a
//! batch in a fresh sandbox.
//!
//! Phases: [`Runtime::deploy`] runs once per app (off the event path);
//! [`App::invoke`] runs once per batch on a fresh `Store` and instance, on a
//! blocking thread so a spinning guest never stalls the async runtime.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use wasmtime::component::Component;
use wasmtime::{Store, Trap, UpdateDeadline};

use crate::bindings::{BatchResult, Effect, Event, HandlerPre, Outcome};
use crate::check::{CheckReport, inspect};
use crate::domain::DomainSet;
use crate::engine::Runtime;
use crate::error::{DeployError, InvokeError};
use crate::guest_log::{LogCounts, LogSink, LogWindow};
use crate::limits::{
    EPOCH_TICK, LONG_BATCH_TICKS, Limits, MAX_REJECT_REASON_BYTES, MAX_TRAP_MESSAGE_BYTES,
};
use crate::state::{
    AppIdentity, DeadlineReached, HostState, MemoryLimitExceeded, TableLimitExceeded,
};

/// Everything needed to deploy one app on this node.
#[derive(Debug, Clone)]
pub struct AppSpec {
    /// App name, e.g. `"mail1"`: used in logs, metrics and as the source of
    /// its published events (`module/<name>`).
    pub name: String,
    /// This node's id (answered by `node.id`).
    pub node_id: u32,
    /// This node's name (answered by `node.name`).
    pub node_name: String,
    /// The app's domains (exact or `*.suffix`), normalised at deploy.
    pub domains: Vec<String>,
    /// Caps for each batch.
    pub limits: Limits,
    /// Grant of the real WASI clocks. Default `false`: the wall clock reads
    /// the Unix epoch and the monotonic clock reads 0, so a handler cannot
    /// time the host or other apps.
    pub clocks: bool,
}

impl AppSpec {
    /// A spec with default limits and no domains.
    pub fn new(name: impl Into<String>, node_id: u32, node_name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            node_id,
            node_name: node_name.into(),
            domains: Vec::new(),
            limits: Limits::default(),
            clocks: false,
        }
    }
}

/// A deployed app: its prepared component and caps. Cheap to clone.
#[derive(Clone)]
pub struct App {
    inner: Arc<AppInner>,
}

struct AppInner {
    runtime: Runtime,
    pre: HandlerPre<HostState>,
    identity: Arc<AppIdentity>,
    limits: Limits,
    log_window: Arc<LogWindow>,
    report: CheckReport,
    /// The last batch ran past [`LONG_BATCH_TICKS`]: the next one starts
    /// demoted (a spinning app never competes at full priority).
    long_running: std::sync::atomic::AtomicBool,
}

impl Drop for AppInner {
    fn drop(&mut self) {
        self.runtime.inner.deployed.fetch_sub(1, Ordering::Relaxed);
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

impl Runtime {
    /// Load `bytes` as a component (cache, size cap, compile timeout) and
    /// report its imports, exports and every problem that would prevent
    /// deploying it. Does not deploy.
    ///
    /// # Errors
    ///
    /// [`DeployError::TooLarge`], [`DeployError::NotAComponent`],
    /// [`DeployError::Compile`], [`DeployError::CompileTimeout`]. Import and
    /// export problems are not errors here: they are in
    /// [`CheckReport::problems`].
    pub fn check(&self, bytes: &[u8]) -> Result<CheckReport, DeployError> {
        Ok(self.check_component(bytes)?.1)
    }

    /// [`Runtime::check`] on a file.
    ///
    /// # Errors
    ///
    /// As [`Runtime::check`], plus [`DeployError::Read`].
    pub fn check_file(&self, path: &Path) -> Result<CheckReport, DeployError> {
        self.check(&read(path)?)
    }

    fn check_component(&self, bytes: &[u8]) -> Result<(Component, CheckReport), DeployError> {
        let cfg = &self.inner.config;
        let loaded = self.inner.cache.load(
            &self.inner.engine,
            bytes,
            cfg.max_component_bytes,
            Duration::from_millis(cfg.compile_timeout_ms),
        )?;
        let (imports, exports, mut problems) = inspect(&self.inner.engine, &loaded.component);
        if problems.is_empty() {
            // Type-check every import against what is linked (catches, e.g., a
            // newer WASI minor version or a changed weir:handler signature).
            if let Err(e) = self.inner.linker.instantiate_pre(&loaded.component) {
                problems.push(format!("{e:#}"));
            } else if let Err(e) = self
                .inner
                .linker
                .instantiate_pre(&loaded.component)
                .and_then(HandlerPre::new)
            {
                problems.push(format!(
                    "export `handle` does not match weir:handler@0.1.0: {e:#}"
                ));
            }
        }
        tracing::debug!(key = %loaded.key, source = ?loaded.source, elapsed = ?loaded.elapsed, "component loaded");
        let report = CheckReport {
            size: bytes.len(),
            imports,
            exports,
            problems,
            source: loaded.source,
            load_time: loaded.elapsed,
        };
        Ok((loaded.component, report))
    }

    /// Deploy an app from component bytes: validate the spec (every problem
    /// at once), load and check the component, and prepare it for
    /// instantiation. Apps share the runtime's pool slots: deploying reserves
    /// none, any number of apps may be deployed.
    ///
    /// # Errors
    ///
    /// [`DeployError::Config`] (limits, domains), the load errors of [`Runtime::check`], and [`DeployError::Refused`]
    /// with every import or export problem.
    pub fn deploy(&self, spec: AppSpec, bytes: &[u8]) -> Result<App, DeployError> {
        let mut problems: Vec<String> = spec
            .limits
            .problems(self.inner.config.max_memory_bytes)
            .into_iter()
            .map(|p| format!("app {}: limits: {p}", spec.name))
            .collect();
        if spec.name.is_empty() {
            problems.push("app name must not be empty".into());
        }
        let domains = DomainSet::new(&spec.domains).unwrap_or_else(|errors| {
            problems.extend(
                errors
                    .into_iter()
                    .map(|e| format!("app {}: domains: {e}", spec.name)),
            );
            DomainSet::default()
        });
        if !problems.is_empty() {
            return Err(DeployError::Config(problems));
        }
        let (component, report) = self.check_component(bytes)?;
        if !report.deployable() {
            return Err(DeployError::Refused(report.problems));
        }
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .and_then(HandlerPre::new)
            .map_err(|e| DeployError::Refused(vec![format!("{e:#}")]))?;
        self.inner.deployed.fetch_add(1, Ordering::Relaxed);
        let identity = Arc::new(AppIdentity {
            app: spec.name.as_str().into(),
            node_id: spec.node_id,
            node_name: spec.node_name,
            domains,
            clocks: spec.clocks,
        });
        tracing::info!(
            app = %spec.name,
            size = report.size,
            source = ?report.source,
            load_ms = report.load_time.as_millis() as u64,
            "app deployed"
        );
        Ok(App {
            inner: Arc::new(AppInner {
                runtime: self.clone(),
                pre,
                log_window: Arc::new(LogWindow::new(&spec.limits)),
                long_running: std::sync::atomic::AtomicBool::new(false),
                limits: spec.limits,
                identity,
                report,
            }),
        })
    }

    /// [`Runtime::deploy`] from a file.
    ///
    /// # Errors
    ///
    /// As [`Runtime::deploy`], plus [`DeployError::Read`].
    pub fn deploy_file(&self, spec: AppSpec, path: &Path) -> Result<App, DeployError> {
        self.deploy(spec, &read(path)?)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, DeployError> {
    std::fs::read(path).map_err(|source| DeployError::Read {
        path: path.to_owned(),
        source,
    })
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

impl App {
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
            Err(e) => Err(classify_error(&e, store.data(), limits)),
        };
        stats.log = store.data().log.finish();
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

fn validate(
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

/// Map a failed instantiate/call to the typed error, using what the limiter
/// recorded (memory and table caps) and the trap code.
fn classify_error(e: &wasmtime::Error, state: &HostState, limits: &Limits) -> InvokeError {
    if let Some((limit, requested)) = state.limiter.memory_exceeded {
        return InvokeError::MemoryLimit { limit, requested };
    }
    if let Some((limit, requested)) = state.limiter.table_exceeded {
        return InvokeError::ResourceLimit(format!(
            "table grew to {requested} elements, the cap is {limit}"
        ));
    }
    if e.is::<MemoryLimitExceeded>() {
        return InvokeError::MemoryLimit {
            limit: limits.memory_bytes,
            requested: 0,
        };
    }
    if e.is::<TableLimitExceeded>() {
        return InvokeError::ResourceLimit("table element limit exceeded".into());
    }
    if e.is::<DeadlineReached>() {
        return InvokeError::Timeout {
            deadline_ms: limits.deadline_ms,
        };
    }
    if let Some(trap) = e.downcast_ref::<Trap>() {
        match trap {
            Trap::OutOfFuel => return InvokeError::OutOfFuel { limit: limits.fuel },
            Trap::Interrupt => {
                return InvokeError::Timeout {
                    deadline_ms: limits.deadline_ms,
                };
            }
            Trap::StackOverflow => return InvokeError::StackOverflow,
            _ => {}
        }
    }
    let message = format!("{e:#}");
    if message.contains("fuel allocated for hostcalls has been exhausted") {
        return InvokeError::HostcallLimit {
            limit: limits.hostcall_bytes,
        };
    }
    // wasmtime's messages for a full guest handle table and a full host
    // resource table (wasmtime 48: `vm/component/handle_table.rs`,
    // `component/resource_table.rs`).
    if message.contains("store handle limit exceeded")
        || message.contains("resource table has no free keys")
    {
        return InvokeError::ResourceLimit(truncate(message, MAX_TRAP_MESSAGE_BYTES));
    }
    InvokeError::Trap(truncate(message, MAX_TRAP_MESSAGE_BYTES))
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
