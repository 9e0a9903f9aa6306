//! Executing a batch's effects: check grants, skip what was already executed
//! for the same events (idempotency keys), execute the rest once.
//!
//! Executors: `log` (dry run: one info line per effect) and `command` (an argv
//! template such as `["systemctl", "--user", "try-reload-or-restart",
//! "{unit}"]`, `{action}`, `{unit}` and `{app}` substituted, no shell, bounded time).
//! A `publish` effect is published as an event whose source is the app itself
//! (`module/<app>`), so no app can forge another's events.
//!
//! Idempotency: an executed effect is recorded under (app, event id, effect)
//! for every event of its batch, in memory (at most
//! [`MAX_IDEMPOTENCY_RECORDS`], oldest forgotten first) and, with NATS, in the
//! `WEIR_EFFECTS` key-value bucket so records survive a restart
//! ([`crate::nats::EffectRecords`]). An effect runs only on behalf of the
//! events of its batch that have no record yet; a redelivered batch whose
//! events all carry the record does not run it again. The bucket is read only
//! for redelivered batches (a first delivery cannot have a record).
//!
//! Timing: by default an effect runs with its batch, before the batch's
//! events are acked. With `[app.effects] debounce_ms` it is recorded as
//! pending instead and runs once when its window closes ([`debounce`]).
//!
//! The `command` executor gets the idempotency keys in its environment:
//! `WEIR_APP`, `WEIR_EFFECT` (e.g. `restart:dovecot.service`), `WEIR_EVENT_IDS`
//! and `WEIR_EFFECT_KEYS` (space-separated, one per event the effect runs
//! for). A `kill -9` of the host after an effect ran but before its record was
//! stored runs it again on redelivery with the same keys, so an executor that
//! remembers keys never applies an effect twice.

pub mod debounce;
pub mod helper;
pub mod limit;
pub mod limit_store;
pub mod pending;

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use serde::{Deserialize, Serialize};
use tracing::Instrument as _;
use weir_runtime::Effect;

use crate::nats::subjects::Scope;
use crate::nats::{EffectRecords, Transport};
use crate::stats::AppCounters;
use crate::stats::{AppStats, unix_ms};
pub use limit_store::LimitStore;
pub use pending::PendingStore;
use pending::{PendingEffect, StoredEffect};

pub use debounce::{AppEffects, Debouncer, MAX_DEBOUNCE_MS, MAX_PENDING_EVENTS};

/// Default time an effect command may run: 30,000 ms.
pub const DEFAULT_COMMAND_TIMEOUT_MS: u64 = 30_000;

/// Variables an effect command gets from weir's environment whatever the
/// config says: `PATH` and `LANG` (to find programs and speak the node's
/// language), `XDG_RUNTIME_DIR` and `DBUS_SESSION_BUS_ADDRESS` (so the
/// default `systemctl --user` finds the user's manager). Nothing else of
/// weir's environment reaches a command (no NATS password or token given
/// through [`crate::nats::connect::PASSWORD_ENV`] and the like) unless
/// `[effects] pass_env` names it.
pub const DEFAULT_PASS_ENV: [&str; 4] = [
    "PATH",
    "LANG",
    "XDG_RUNTIME_DIR",
    "DBUS_SESSION_BUS_ADDRESS",
];

/// `template` with `{action}`, `{unit}` and `{app}` replaced in every
/// argument (no shell: each stays one argument).
pub fn substitute(template: &[String], action: &str, unit: &str, app: &str) -> Vec<String> {
    template
        .iter()
        .map(|a| {
            a.replace("{action}", action)
                .replace("{unit}", unit)
                .replace("{app}", app)
        })
        .collect()
}

/// Effect executors.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    /// Log each effect (dry run). The default.
    #[default]
    Log,
    /// Run `command` with `{action}`, `{unit}` and `{app}` substituted (no
    /// shell).
    Command,
}

/// `[effects]`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EffectsConfig {
    /// The executor. Default [`Executor::Log`].
    pub executor: Executor,
    /// Argv template for [`Executor::Command`]; `{action}` becomes `restart`
    /// or `reload`, `{unit}` the unit, `{app}` the app's name (on NS8, the
    /// module id: `["runagent", "-m", "{app}", "systemctl", "--user",
    /// "{action}", "{unit}"]`). Default
    /// `["systemctl", "--user", "try-reload-or-restart", "{unit}"]`.
    pub command: Vec<String>,
    /// Time a command may run, in ms. Default [`DEFAULT_COMMAND_TIMEOUT_MS`].
    pub timeout_ms: u64,
    /// More variables of weir's environment a command gets, by name, besides
    /// [`DEFAULT_PASS_ENV`] and the `WEIR_*` variables that describe the
    /// effect (as systemd's `PassEnvironment=`). Default empty.
    pub pass_env: Vec<String>,
}

impl Default for EffectsConfig {
    fn default() -> Self {
        Self {
            executor: Executor::Log,
            command: ["systemctl", "--user", "try-reload-or-restart", "{unit}"]
                .map(String::from)
                .to_vec(),
            timeout_ms: DEFAULT_COMMAND_TIMEOUT_MS,
            pass_env: Vec::new(),
        }
    }
}

impl EffectsConfig {
    /// Every problem with this section (empty if valid), unprefixed.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.executor == Executor::Command {
            if self.command.is_empty() {
                p.push("command must name a program for executor = \"command\"".to_owned());
            } else if !self.command.iter().any(|a| a.contains("{unit}")) {
                p.push("command must contain {unit}".to_owned());
            }
        }
        if self.timeout_ms == 0 {
            p.push("timeout_ms must be greater than 0".to_owned());
        }
        for name in &self.pass_env {
            if name.is_empty() || name.contains(['=', '\0']) {
                p.push(format!(
                    "pass_env {name:?} is not a variable name (empty, or holds '=' or NUL)"
                ));
            }
        }
        p
    }

    /// The environment of an effect command: each variable of
    /// [`DEFAULT_PASS_ENV`] and `pass_env` that weir's own environment has.
    pub fn command_env(&self) -> Vec<(String, std::ffi::OsString)> {
        DEFAULT_PASS_ENV
            .iter()
            .copied()
            .chain(self.pass_env.iter().map(String::as_str))
            .filter_map(|name| std::env::var_os(name).map(|v| (name.to_owned(), v)))
            .collect()
    }
}

/// `[app.grants]`: what an app's effects may do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Grants {
    /// Units the app may restart.
    pub restart: Vec<String>,
    /// Units the app may reload.
    pub reload: Vec<String>,
    /// Event names the app may publish (as `module/<app>`).
    pub publish: Vec<String>,
    /// Real WASI clocks (wall and monotonic). Default `false`: both read a
    /// frozen time (the Unix epoch, 0).
    pub clocks: bool,
    /// The app's own key-value bucket (`weir:handler/kv` with bucket `""`),
    /// named `<base>_KV_<app>` (`WEIR_KV_mail`). Default `false`: a
    /// component importing `kv` is refused at deploy.
    pub kv: bool,
    /// Shared key-value buckets the app may use by name (`<base>_KVS_<name>`),
    /// e.g. `["mail"]` for a bucket several apps share. Names are made of
    /// `A-Z a-z 0-9 _ -`.
    pub kv_shared: Vec<String>,
}

impl Grants {
    /// Every problem with these grants (empty if valid), unprefixed: unit
    /// names that are empty, contain `/` or a space, or start with `-`, and
    /// event names that are not subject tokens.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for unit in self.restart.iter().chain(&self.reload) {
            if unit.is_empty() || unit.contains(['/', ' ']) || unit.starts_with('-') {
                p.push(format!("{unit:?} is not a unit name"));
            }
        }
        for name in &self.publish {
            if let Err(e) = crate::nats::subjects::check_token("granted event name", name) {
                p.push(e.to_string());
            }
        }
        for name in &self.kv_shared {
            if !crate::nats::subjects::is_bucket_token(name) {
                p.push(format!(
                    "kv_shared: {name:?} is not a bucket name (A-Z a-z 0-9 _ - only)"
                ));
            }
        }
        p
    }
}

/// What the runner needs to know about one app's effects: its grants, its
/// timing (`[app.effects]`) and its scope (whose idempotency records it
/// uses: the node's, or the cluster's for `scope = "cluster"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EffectPolicy {
    /// What its effects may do.
    pub grants: Grants,
    /// When they run.
    pub timing: AppEffects,
    /// Who shares its consumer.
    pub scope: Scope,
}

impl From<Grants> for EffectPolicy {
    fn from(grants: Grants) -> Self {
        Self {
            grants,
            ..Self::default()
        }
    }
}

/// Most idempotency records kept: 100,000 (about 10 MB).
pub const MAX_IDEMPOTENCY_RECORDS: usize = 100_000;

/// Refused effects are logged at most once per app per window: 60 s (the
/// count is in `/stats` either way).
pub const REFUSED_LOG_WINDOW: Duration = Duration::from_secs(60);

/// Why one effect could not be executed (the batch fails and its events are
/// retried; `/stats` counts `effects_failed`).
#[derive(Debug, thiserror::Error)]
pub enum EffectFailure {
    /// A `publish` effect without a NATS connection (in-process use).
    #[error("no NATS connection for publish effects")]
    NoConnection,
    /// JetStream refused or did not acknowledge a `publish` effect.
    #[error("publish failed: {0}")]
    Publish(#[source] crate::nats::TransportError),
    /// `effects.command` is empty.
    #[error("empty command")]
    EmptyCommand,
    /// The command could not be started.
    #[error("failed to start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the command failed.
    #[error("{program}: {source}")]
    Wait {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The command exited unsuccessfully.
    #[error("{command} exited with {status}")]
    Exit {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
    },
    /// The command ran past `effects.timeout_ms` and was killed.
    #[error("{command} ran longer than {timeout:?}")]
    Timeout {
        /// The command line.
        command: String,
        /// The limit.
        timeout: Duration,
    },
}

/// What happened to a batch's effects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EffectReport {
    /// Executed now.
    pub executed: u64,
    /// What was executed now, one display form each (`restart
    /// dovecot.service`).
    pub executed_effects: Vec<String>,
    /// Skipped: already executed for all of these events.
    pub repeated: u64,
    /// Refused: not granted.
    pub refused: u64,
    /// Recorded as pending, opening a debounce window.
    pub deferred: u64,
    /// Joined a pending effect's window (debounced).
    pub debounced: u64,
    /// Over a rate limit with `over = "defer"`: pending until the next
    /// window.
    pub limit_deferred: u64,
    /// Over a rate limit with `over = "refuse"`: not executed.
    pub limited: u64,
    /// Failures, one message each (the batch is retried).
    pub failed: Vec<String>,
}

/// Executes effects for all apps of the host.
#[derive(Debug)]
pub struct EffectRunner {
    config: EffectsConfig,
    transport: Option<Transport>,
    records: Mutex<Records>,
    durable: Option<EffectRecords>,
    /// The cluster's records (`scope = "cluster"` apps).
    shared: Option<EffectRecords>,
    debouncer: Option<Debouncer>,
    limits: Option<LimitStore>,
    counters: AppCounters,
    refused_logged: Mutex<std::collections::HashMap<String, (std::time::Instant, u64)>>,
}

#[derive(Debug, Default)]
struct Records {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Records {
    fn insert(&mut self, key: String) {
        if self.set.insert(key.clone()) {
            self.order.push_back(key);
            while self.order.len() > MAX_IDEMPOTENCY_RECORDS {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// The effect as its idempotency keys and executors name it:
/// `restart:<unit>`, `reload:<unit>`, or `publish:<name>:<digest>` where the
/// digest is the first 16 hex characters of the payload's SHA-256, so two
/// publishes of one name with different payloads are two effects (both go
/// out, once each) and identical ones are one.
pub fn describe(effect: &Effect) -> String {
    match effect {
        Effect::Restart(u) => format!("restart:{u}"),
        Effect::Reload(u) => format!("reload:{u}"),
        Effect::Publish(m) => {
            let digest = Sha256::digest(&m.payload);
            format!("publish:{}:{}", m.name, hex::encode(&digest[..8]))
        }
    }
}

fn granted(grants: &Grants, effect: &Effect) -> bool {
    match effect {
        Effect::Restart(u) => grants.restart.contains(u),
        Effect::Reload(u) => grants.reload.contains(u),
        Effect::Publish(m) => grants.publish.contains(&m.name),
    }
}

impl EffectRunner {
    /// A runner with `config`; `transport` publishes `publish` effects (none:
    /// they fail).
    pub fn new(config: EffectsConfig, transport: Option<Transport>) -> Self {
        Self {
            config,
            transport,
            records: Mutex::new(Records::default()),
            durable: None,
            shared: None,
            debouncer: None,
            limits: None,
            counters: AppCounters::default(),
            refused_logged: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Also keep records in `records` (the NATS bucket), so they survive a
    /// restart.
    #[must_use]
    pub fn with_durable_records(mut self, records: EffectRecords) -> Self {
        self.shared = Some(records.cluster());
        self.durable = Some(records);
        self
    }

    /// Debounce effects of apps with `debounce_ms` through `store`, and
    /// rate-limit them through `limits`, counting into the apps' `counters`
    /// (`effects_pending`, `effects_debounced`, `effects_deferred`,
    /// `effects_limited`, and executions of pending effects). Start executing
    /// pending effects with [`EffectRunner::recover_pending`] and
    /// [`EffectRunner::run_pending`].
    #[must_use]
    pub fn with_pending(
        mut self,
        store: PendingStore,
        limits: LimitStore,
        counters: AppCounters,
    ) -> Self {
        self.debouncer = Some(Debouncer::new(store));
        self.limits = Some(limits);
        self.counters = counters;
        self
    }

    /// Take a slot of `limit` for `app` now: `Ok(Ok(()))` to execute,
    /// `Ok(Err(next))` when the window is full (`next`: when the next one
    /// opens, ms since the Unix epoch). Without a limits store, always a
    /// slot.
    async fn take_slot(
        &self,
        app: &str,
        limit: &limit::EffectLimit,
    ) -> Result<Result<(), u64>, crate::nats::TransportError> {
        let Some(limits) = &self.limits else {
            return Ok(Ok(()));
        };
        let key = limits.key(limit.scope, app, &limit.effect);
        limits
            .take(&key, limit.max, limit.window_ms(), unix_ms())
            .await
    }

    fn records_of(&self, scope: Scope) -> Option<&EffectRecords> {
        match scope {
            Scope::Node => self.durable.as_ref(),
            Scope::Cluster => self.shared.as_ref(),
        }
    }

    fn app_stats(&self, app: &str) -> Option<Arc<AppStats>> {
        self.counters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(n, _)| n == app)
            .map(|(_, s)| s.clone())
    }

    /// The idempotency key of `effect` (as [`describe`]d) of `app` for event
    /// `event_id`: SHA-256 of the three, `\x1f`-separated, first 32 hex
    /// characters.
    pub fn key(app: &str, event_id: &str, effect: &str) -> String {
        let digest = Sha256::new()
            .chain_update(app)
            .chain_update([0x1f])
            .chain_update(event_id)
            .chain_update([0x1f])
            .chain_update(effect)
            .finalize();
        hex::encode(&digest[..16])
    }

    /// Indices of `keys` without a record: the memory set, then (only when
    /// `redelivered`) the bucket. A bucket that cannot be read counts as no
    /// record (the effect runs again rather than being lost).
    async fn pending(
        &self,
        app: &str,
        scope: Scope,
        keys: &[String],
        redelivered: bool,
    ) -> Vec<usize> {
        let mut pending: Vec<usize> = {
            let records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
            (0..keys.len())
                .filter(|&i| !records.set.contains(&format!("{app}.{}", keys[i])))
                .collect()
        };
        if let (true, Some(durable)) = (redelivered, self.records_of(scope)) {
            let mut still = Vec::with_capacity(pending.len());
            for i in pending {
                match durable.contains(app, &keys[i]).await {
                    Ok(true) => {}
                    Ok(false) => still.push(i),
                    Err(e) => {
                        tracing::warn!(app, error = %e, "effect record lookup failed");
                        still.push(i);
                    }
                }
            }
            pending = still;
        }
        pending
    }

    /// Check, deduplicate and execute `effects` of `app` for the batch of
    /// `event_ids` under `policy`; `redelivered` says whether any of them
    /// was delivered before (then the durable records are consulted). With
    /// a debounce window (and a pending store) an effect is recorded as
    /// pending instead of executed ([`debounce`]); a failure to record it
    /// is a failure of the batch, like a failed execution.
    pub async fn run(
        &self,
        app: &str,
        policy: &EffectPolicy,
        effects: &[Effect],
        event_ids: &[&str],
        redelivered: bool,
    ) -> EffectReport {
        let mut report = EffectReport::default();
        for effect in effects {
            let name = describe(effect);
            let span = effect_span(app, effect, &name);
            let outcome = self
                .run_one(
                    app,
                    policy,
                    effect,
                    &name,
                    event_ids,
                    redelivered,
                    &mut report,
                )
                .instrument(span.clone())
                .await;
            span.record("weir.effect.outcome", outcome);
            if outcome == "failed" {
                span.record("otel.status_code", "error");
            }
        }
        report
    }

    /// One effect of [`EffectRunner::run`], counted in `report`; returns
    /// what happened to it (`executed`, `repeated`, `refused`, `debounced`,
    /// `deferred`, `limited`, `failed`), for its span.
    #[allow(clippy::too_many_arguments)]
    async fn run_one(
        &self,
        app: &str,
        policy: &EffectPolicy,
        effect: &Effect,
        name: &str,
        event_ids: &[&str],
        redelivered: bool,
        report: &mut EffectReport,
    ) -> &'static str {
        if !granted(&policy.grants, effect) {
            report.refused += 1;
            self.log_refused(app, name, "not granted");
            return "refused";
        }
        let keys: Vec<String> = event_ids
            .iter()
            .map(|id| Self::key(app, id, name))
            .collect();
        let pending = self.pending(app, policy.scope, &keys, redelivered).await;
        if pending.is_empty() && !event_ids.is_empty() {
            report.repeated += 1;
            return "repeated";
        }
        let ids: Vec<&str> = pending.iter().map(|&i| event_ids[i]).collect();
        let limit = limit::applicable(&policy.timing.limit, effect);
        if let (Some(debouncer), true) = (&self.debouncer, policy.timing.debounce_ms > 0) {
            return match self
                .defer(debouncer, app, policy, effect, name, &ids, None)
                .await
            {
                Ok(true) => {
                    report.debounced += 1;
                    "debounced"
                }
                Ok(false) => {
                    report.deferred += 1;
                    "deferred"
                }
                Err(e) => {
                    tracing::warn!(app, effect = %name, error = %e, "pending effect not recorded");
                    report
                        .failed
                        .push(format!("{name}: pending effect not recorded: {e}"));
                    "failed"
                }
            };
        }
        if let (Some(limit), Some(debouncer)) = (limit, &self.debouncer) {
            match self.take_slot(app, limit).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) if limit.over == limit::Over::Refuse => {
                    report.limited += 1;
                    self.log_refused(app, name, "over its rate limit");
                    return "limited";
                }
                Ok(Err(next)) => {
                    return match self
                        .defer(debouncer, app, policy, effect, name, &ids, Some(next))
                        .await
                    {
                        Ok(_) => {
                            report.limit_deferred += 1;
                            "deferred"
                        }
                        Err(e) => {
                            report
                                .failed
                                .push(format!("{name}: deferred effect not recorded: {e}"));
                            "failed"
                        }
                    };
                }
                Err(e) => {
                    report
                        .failed
                        .push(format!("{name}: rate limit unreadable: {e}"));
                    return "failed";
                }
            }
        }
        let pending_keys: Vec<String> = pending.iter().map(|&i| keys[i].clone()).collect();
        match self.execute(app, effect, &ids, &pending_keys).await {
            Ok(()) => {
                report.executed += 1;
                report.executed_effects.push(name.to_string());
                self.record(app, policy.scope, name, &pending_keys).await;
                "executed"
            }
            Err(e) => {
                tracing::warn!(app, effect = %name, error = %e, "effect failed");
                report.failed.push(format!("{name}: {e}"));
                "failed"
            }
        }
    }

    /// Store the records `keys` of executed effect `name` of `app` (memory,
    /// then the bucket of `scope`; a failed bucket write is logged: the
    /// effect ran, a redelivery after a restart could run it again).
    async fn record(&self, app: &str, scope: Scope, name: &str, keys: &[String]) {
        {
            let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
            for key in keys {
                records.insert(format!("{app}.{key}"));
            }
        }
        if let Some(durable) = self.records_of(scope)
            && let Err(e) = durable.insert(app, keys).await
        {
            tracing::warn!(app, effect = %name, error = %e, "effect record not stored");
            if let Some(stats) = self.app_stats(app) {
                stats.effect_records_failed.add(1);
            }
        }
    }

    /// Record `effect` of `app` as pending for `ids`, opening its window or
    /// joining the open one (compare-and-set, [`debounce::MAX_CAS_ROUNDS`]
    /// rounds); due after the debounce window, or not before `not_before`
    /// (ms since the Unix epoch: a rate limit's next window). `true` if it
    /// joined.
    #[allow(clippy::too_many_arguments)]
    async fn defer(
        &self,
        debouncer: &Debouncer,
        app: &str,
        policy: &EffectPolicy,
        effect: &Effect,
        name: &str,
        ids: &[&str],
        not_before: Option<u64>,
    ) -> Result<bool, String> {
        let key = debouncer.store.key(app, name);
        let window = policy.timing.debounce_ms;
        for _ in 0..debounce::MAX_CAS_ROUNDS {
            let now = unix_ms();
            let current = debouncer.store.get(&key).await.map_err(|e| e.to_string())?;
            let (pending, revision) = match current {
                None => {
                    let mut event_ids = Vec::new();
                    debounce::merge_ids(&mut event_ids, ids);
                    let pending = PendingEffect {
                        app: app.to_owned(),
                        effect: StoredEffect::from(effect),
                        event_ids,
                        requests: 1,
                        first_ms: now,
                        due_ms: not_before.unwrap_or(now + window),
                        window_ms: window,
                        max_wait_ms: policy.timing.max_wait_ms(),
                        limit: limit::applicable(&policy.timing.limit, effect).cloned(),
                        failures: 0,
                        shared: policy.scope == Scope::Cluster,
                        trace: weir_edge::telemetry::traceparent_of(&tracing::Span::current()),
                    };
                    (pending, None)
                }
                Some(current) => {
                    let mut pending = current.pending;
                    debounce::merge_ids(&mut pending.event_ids, ids);
                    pending.requests += 1;
                    pending.due_ms = debounce::joined_due(&pending, now, not_before);
                    (pending, Some(current.revision))
                }
            };
            match debouncer
                .store
                .write(&key, &pending, revision)
                .await
                .map_err(|e| e.to_string())?
            {
                Ok(_) => {
                    let count = debouncer.schedule(&key, pending.due_ms);
                    if let Some(stats) = self.app_stats(app) {
                        stats.effects_pending.set(count as u64);
                    }
                    tracing::debug!(
                        app,
                        effect = name,
                        due_ms = pending.due_ms,
                        requests = pending.requests,
                        "effect pending"
                    );
                    return Ok(revision.is_some());
                }
                Err(pending::Conflict) => continue,
            }
        }
        Err(format!(
            "{} concurrent writers in a row",
            debounce::MAX_CAS_ROUNDS
        ))
    }

    /// Schedule every pending effect this node left in the store (a host
    /// killed inside a window), each at its own due time; returns how many.
    ///
    /// # Errors
    ///
    /// The store cannot be listed or read.
    pub async fn recover_pending(&self) -> Result<usize, crate::nats::TransportError> {
        let Some(debouncer) = &self.debouncer else {
            return Ok(0);
        };
        let mut n = 0;
        for key in debouncer.store.keys().await? {
            if let Some(entry) = debouncer.store.get(&key).await? {
                debouncer.mark_recovered(&key);
                let count = debouncer.schedule(&key, entry.pending.due_ms);
                if let Some(stats) = self.app_stats(&entry.pending.app) {
                    stats.effects_pending.set(count as u64);
                }
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!(pending = n, "pending effects recovered");
        }
        Ok(n)
    }

    /// Execute pending effects as their windows close, until `stop` turns
    /// true (an execution in progress finishes first; what is left stays in
    /// the store for the next start). Without a pending store, returns at
    /// once.
    pub async fn run_pending(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(debouncer) = &self.debouncer else {
            return;
        };
        while !*stop.borrow() {
            let (due, next) = debouncer.take_due(unix_ms());
            for key in due {
                self.fire(debouncer, &key).await;
            }
            let pause = next.map_or(Duration::from_secs(3600), |at| {
                Duration::from_millis(at.saturating_sub(unix_ms()))
            });
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = debouncer.wake.notified() => {}
                changed = stop.changed() => {
                    if changed.is_err() {
                        return; // the daemon is gone
                    }
                }
            }
        }
    }

    /// Execute the pending effect `key` if its window has closed (else look
    /// again when it does), then store its records and remove it; an
    /// execution that fails is tried again later.
    async fn fire(&self, debouncer: &Debouncer, key: &str) {
        let entry = match debouncer.store.get(key).await {
            Ok(Some(entry)) => entry,
            Ok(None) => {
                self.pending_count(debouncer.done(key), debounce::app_of(key));
                return;
            }
            Err(e) => {
                tracing::warn!(key, error = %e, "pending effect unreadable; trying again");
                debouncer.schedule(key, unix_ms() + debouncer.failed(key).as_millis() as u64);
                return;
            }
        };
        let now = unix_ms();
        let p = &entry.pending;
        if p.due_ms > now {
            debouncer.schedule(key, p.due_ms);
            return;
        }
        let app = p.app.as_str();
        let effect = Effect::from(&p.effect);
        let name = describe(&effect);
        let span = effect_span(app, &effect, &name);
        if let Some(context) = p
            .trace
            .as_deref()
            .and_then(weir_edge::telemetry::parse_traceparent)
        {
            weir_edge::telemetry::follow(
                &span,
                vec![weir_edge::telemetry::Link {
                    context,
                    attributes: Vec::new(),
                }],
            );
        }
        span.record("weir.effect.requests", p.requests);
        self.fire_pending(debouncer, key, &entry, &effect, &name)
            .instrument(span)
            .await;
    }

    /// [`EffectRunner::fire`] of a due entry, in its effect's span.
    async fn fire_pending(
        &self,
        debouncer: &Debouncer,
        key: &str,
        entry: &pending::Revisioned,
        effect: &Effect,
        name: &str,
    ) {
        let p = &entry.pending;
        let now = unix_ms();
        let app = p.app.as_str();
        let (effect, name) = (effect.clone(), name.to_owned());
        if let Some(limit) = &p.limit {
            match self.take_slot(app, limit).await {
                Ok(Ok(())) => {}
                Ok(Err(next)) if limit.over == limit::Over::Defer => {
                    debouncer.schedule(key, next);
                    return;
                }
                Ok(Err(_)) => {
                    if let Some(s) = self.app_stats(app) {
                        s.effects_limited.add(1);
                    }
                    self.log_refused(app, &name, "over its rate limit");
                    self.finish(debouncer, key, entry, &name).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(app, effect = %name, error = %e, "rate limit unreadable; trying again");
                    debouncer.schedule(key, unix_ms() + debouncer.failed(key).as_millis() as u64);
                    return;
                }
            }
        }
        let scope = if p.shared {
            Scope::Cluster
        } else {
            Scope::Node
        };
        let keys: Vec<String> = p
            .event_ids
            .iter()
            .map(|id| Self::key(app, id, &name))
            .collect();
        // Only an entry left by an earlier process can have been executed
        // already (a kill before its removal): look for its records in the
        // bucket then, not for every window.
        let todo = self
            .pending(app, scope, &keys, debouncer.recovered(key))
            .await;
        let stats = self.app_stats(app);
        if !todo.is_empty() || p.event_ids.is_empty() {
            let ids: Vec<&str> = todo.iter().map(|&i| p.event_ids[i].as_str()).collect();
            let todo_keys: Vec<String> = todo.iter().map(|&i| keys[i].clone()).collect();
            match self.execute(app, &effect, &ids, &todo_keys).await {
                Ok(()) => {
                    if let Some(s) = &stats {
                        s.effect_executed(&name.to_string());
                    }
                    tracing::info!(app, effect = %name, requests = p.requests, events = p.event_ids.len(), waited_ms = now - p.first_ms, "pending effect executed");
                    tracing::Span::current().record("weir.effect.outcome", "executed");
                    self.record(app, scope, &name, &todo_keys).await;
                }
                Err(e) => {
                    if let Some(s) = &stats {
                        s.effects_failed.add(1);
                    }
                    let pause = debouncer.failed(key);
                    tracing::Span::current().record("weir.effect.outcome", "failed");
                    tracing::Span::current().record("otel.status_code", "error");
                    tracing::warn!(app, effect = %name, error = %e, retry_in_ms = pause.as_millis() as u64, "pending effect failed");
                    // Rewritten, so the bucket's age limit counts from the
                    // last failure: an effect that keeps failing stays
                    // pending, it never expires silently.
                    let mut again = entry.pending.clone();
                    again.failures += 1;
                    if let Err(e) = debouncer
                        .store
                        .write(key, &again, Some(entry.revision))
                        .await
                    {
                        tracing::debug!(key, error = %e, "pending effect failure not recorded");
                    }
                    debouncer.schedule(key, unix_ms() + pause.as_millis() as u64);
                    return;
                }
            }
        }
        self.finish(debouncer, key, entry, &name).await;
    }

    /// Remove a pending entry that was executed (or refused), keep what
    /// joined it since as a new window, and update the schedule and the
    /// app's pending gauge.
    async fn finish(
        &self,
        debouncer: &Debouncer,
        key: &str,
        entry: &pending::Revisioned,
        name: &str,
    ) {
        let app = entry.pending.app.as_str();
        match self.settle(debouncer, key, entry).await {
            Ok(None) => self.pending_count(debouncer.done(key), app),
            Ok(Some(due)) => {
                debouncer.done(key);
                self.pending_count(debouncer.schedule(key, due), app);
            }
            Err(e) => {
                tracing::warn!(app, effect = %name, error = %e, "pending effect executed but not removed; it may run again");
                debouncer.schedule(key, unix_ms() + debouncer.failed(key).as_millis() as u64);
            }
        }
    }

    /// Remove the executed entry; if a batch joined it meanwhile, keep the
    /// events that joined as a new window instead and return when it is
    /// due.
    async fn settle(
        &self,
        debouncer: &Debouncer,
        key: &str,
        executed: &pending::Revisioned,
    ) -> Result<Option<u64>, crate::nats::TransportError> {
        let mut revision = executed.revision;
        loop {
            if debouncer.store.remove(key, revision).await?.is_ok() {
                return Ok(None);
            }
            let Some(now) = debouncer.store.get(key).await? else {
                return Ok(None);
            };
            let mut rest = now.pending;
            rest.event_ids
                .retain(|id| !executed.pending.event_ids.contains(id));
            if rest.event_ids.is_empty() {
                revision = now.revision;
                continue;
            }
            let t = unix_ms();
            rest.first_ms = t;
            rest.due_ms = t + rest.window_ms;
            rest.requests = 1;
            if debouncer
                .store
                .write(key, &rest, Some(now.revision))
                .await?
                .is_ok()
            {
                return Ok(Some(rest.due_ms));
            }
        }
    }

    fn pending_count(&self, count: usize, app: &str) {
        if let Some(stats) = self.app_stats(app) {
            stats.effects_pending.set(count as u64);
        }
    }

    /// Log a refused effect once per [`REFUSED_LOG_WINDOW`] per app, with the
    /// number suppressed since the last line.
    fn log_refused(&self, app: &str, effect: &str, why: &'static str) {
        let mut logged = self
            .refused_logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = std::time::Instant::now();
        match logged.get_mut(app) {
            Some((at, suppressed)) if now.duration_since(*at) < REFUSED_LOG_WINDOW => {
                *suppressed += 1
            }
            entry => {
                let suppressed = entry.map_or(0, |(_, n)| *n);
                tracing::warn!(app, effect, why, suppressed, "effect refused");
                logged.insert(app.to_owned(), (now, 0));
            }
        }
    }

    async fn execute(
        &self,
        app: &str,
        effect: &Effect,
        event_ids: &[&str],
        keys: &[String],
    ) -> Result<(), EffectFailure> {
        let first_event = event_ids.first().copied().unwrap_or("");
        let (action, unit) = match effect {
            Effect::Restart(u) => ("restart", u),
            Effect::Reload(u) => ("reload", u),
            Effect::Publish(m) => {
                let transport = self.transport.as_ref().ok_or(EffectFailure::NoConnection)?;
                let source = format!("module/{app}");
                // Deterministic for (app, first event, name, payload): a
                // redelivered batch republishes under the same id, which the
                // stream drops within its duplicate window.
                let id = format!("effect:{app}:{first_event}:{}", describe(effect));
                return transport
                    .publish_event(&m.name, &source, Bytes::from(m.payload.clone()), &id)
                    .await
                    .map(|_| ())
                    .map_err(EffectFailure::Publish);
            }
        };
        match self.config.executor {
            Executor::Log => {
                tracing::info!(app, action, unit = %unit, "effect (log executor, dry run)");
                Ok(())
            }
            Executor::Command => {
                let argv = substitute(&self.config.command, action, unit, app);
                let (program, args) = argv.split_first().ok_or(EffectFailure::EmptyCommand)?;
                let mut child = tokio::process::Command::new(program)
                    .args(args)
                    // A clean environment: weir's may hold NATS credentials.
                    .env_clear()
                    .envs(self.config.command_env())
                    .env("WEIR_APP", app)
                    .env("WEIR_EFFECT", describe(effect))
                    .env("WEIR_EVENT_IDS", event_ids.join(" "))
                    .env("WEIR_EFFECT_KEYS", keys.join(" "))
                    .stdin(std::process::Stdio::null())
                    // A process group of its own, so a timeout stops what
                    // the command started too (a shell's children).
                    .process_group(0)
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|source| EffectFailure::Spawn {
                        program: program.clone(),
                        source,
                    })?;
                let timeout = Duration::from_millis(self.config.timeout_ms);
                match tokio::time::timeout(timeout, child.wait()).await {
                    Ok(Ok(status)) if status.success() => {
                        tracing::info!(app, action, unit = %unit, "effect executed");
                        Ok(())
                    }
                    Ok(Ok(status)) => Err(EffectFailure::Exit {
                        command: argv.join(" "),
                        status,
                    }),
                    Ok(Err(source)) => Err(EffectFailure::Wait {
                        program: program.clone(),
                        source,
                    }),
                    Err(_) => {
                        kill_group(&child);
                        Err(EffectFailure::Timeout {
                            command: argv.join(" "),
                            timeout,
                        })
                    }
                }
            }
        }
    }
}

/// The span of one effect when traces are exported (else
/// [`tracing::Span::none`]): named `effect restart`, `effect reload` or
/// `effect publish`, with `weir.app`, `weir.effect` (as [`describe`] names
/// it: `restart:dovecot.service`), then `weir.effect.outcome`; a `publish`
/// effect's event carries this span's context.
fn effect_span(app: &str, effect: &Effect, name: &str) -> tracing::Span {
    if !weir_edge::telemetry::enabled() {
        return tracing::Span::none();
    }
    let kind = match effect {
        Effect::Restart(_) => "effect restart",
        Effect::Reload(_) => "effect reload",
        Effect::Publish(_) => "effect publish",
    };
    tracing::info_span!(
        "effect",
        otel.name = kind,
        weir.app = app,
        weir.effect = name,
        weir.effect.outcome = tracing::field::Empty,
        weir.effect.requests = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// SIGKILL the process group of `child` (spawned as its leader): the
/// command and everything it started. Errors are ignored: the group may be
/// gone already. `kill_on_drop` then reaps the leader.
fn kill_group(child: &tokio::process::Child) {
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants() -> EffectPolicy {
        Grants {
            restart: vec!["a.service".into()],
            reload: vec![],
            publish: vec![],
            ..Grants::default()
        }
        .into()
    }

    use crate::test_runtime as rt;

    impl EffectRunner {
        /// Run the granted restart of `a.service` for one event.
        async fn restart_a(&self, app: &str, event: &str) -> EffectReport {
            self.run(
                app,
                &grants(),
                &[Effect::Restart("a.service".into())],
                &[event],
                false,
            )
            .await
        }
    }

    #[test]
    fn grants_and_idempotency() {
        let runner = EffectRunner::new(EffectsConfig::default(), None);
        rt().block_on(async {
            let effects = [
                Effect::Restart("a.service".into()),
                Effect::Restart("b.service".into()),
            ];
            let r = runner
                .run("mail1", &grants(), &effects, &["e1", "e2"], false)
                .await;
            assert_eq!((r.executed, r.refused, r.repeated), (1, 1, 0));
            // Redelivery of the same events: not executed again.
            let r = runner
                .run("mail1", &grants(), &effects[..1], &["e1", "e2"], false)
                .await;
            assert_eq!((r.executed, r.repeated), (0, 1));
            // A batch with a new event executes it.
            let r = runner
                .run("mail1", &grants(), &effects[..1], &["e2", "e3"], false)
                .await;
            assert_eq!(r.executed, 1);
            // Another app's record does not count.
            let r = runner
                .run("mail2", &grants(), &effects[..1], &["e1"], false)
                .await;
            assert_eq!(r.executed, 1);
        });
    }

    #[test]
    fn a_timed_out_command_is_stopped_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        // A shell whose child outlives it unless its group is killed.
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let runner = EffectRunner::new(
            EffectsConfig {
                executor: Executor::Command,
                command: vec!["sh".into(), "-c".into(), script, "{unit}".into()],
                timeout_ms: 300,
                pass_env: Vec::new(),
            },
            None,
        );
        rt().block_on(async {
            let r = runner.restart_a("m", "e").await;
            assert!(r.failed[0].contains("ran longer than"), "{r:?}");
        });
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let stat = format!("/proc/{}/stat", pid.trim());
        // Gone, or a zombie waiting for whoever adopted it.
        let running = || {
            std::fs::read_to_string(&stat)
                .map(|s| {
                    !s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(false)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while running() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!running(), "the command's child {} still runs", pid.trim());
    }

    #[test]
    fn command_executor_substitutes_and_reports_failures() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("done");
        let config = EffectsConfig {
            executor: Executor::Command,
            command: vec![
                "sh".into(),
                "-c".into(),
                format!("echo {{app}} {{action}} {{unit}} > {}", marker.display()),
            ],
            timeout_ms: 5_000,
            pass_env: Vec::new(),
        };
        let runner = EffectRunner::new(config, None);
        rt().block_on(async {
            let r = runner.restart_a("mail1", "e1").await;
            assert_eq!(r.executed, 1, "{r:?}");
        });
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap().trim(),
            "mail1 restart a.service"
        );
        let failing = EffectRunner::new(
            EffectsConfig {
                executor: Executor::Command,
                command: vec!["false".into(), "{unit}".into()],
                timeout_ms: 5_000,
                pass_env: Vec::new(),
            },
            None,
        );
        let slow = EffectRunner::new(
            EffectsConfig {
                executor: Executor::Command,
                command: vec!["sh".into(), "-c".into(), "sleep 5".into(), "{unit}".into()],
                timeout_ms: 100,
                pass_env: Vec::new(),
            },
            None,
        );
        rt().block_on(async {
            let r = failing.restart_a("m", "e").await;
            assert_eq!(r.failed.len(), 1, "{r:?}");
            assert!(r.failed[0].contains("false a.service exited with"), "{r:?}");
            let missing = EffectRunner::new(
                EffectsConfig {
                    executor: Executor::Command,
                    command: vec!["/nonexistent/weir-effect".into(), "{unit}".into()],
                    timeout_ms: 5_000,
                    pass_env: Vec::new(),
                },
                None,
            );
            let r = missing.restart_a("m", "e").await;
            assert!(
                r.failed[0].contains("failed to start /nonexistent/weir-effect"),
                "{r:?}"
            );
            let publish = Effect::Publish(weir_runtime::Message {
                name: "x".into(),
                payload: Vec::new(),
            });
            let publishing = Grants {
                publish: vec!["x".into()],
                ..Grants::default()
            };
            let r = failing
                .run("m", &publishing.into(), &[publish], &["e"], false)
                .await;
            assert!(r.failed[0].contains("no NATS connection"), "{r:?}");
            let r = slow.restart_a("m", "e").await;
            assert!(r.failed[0].contains("ran longer than"), "{r:?}");
        });
    }

    #[test]
    fn commands_get_a_clean_environment() {
        // HOME is in this test's environment (cargo sets it when the shell
        // does not) and not among the variables passed by default.
        assert!(
            std::env::var_os("HOME").is_some(),
            "the test needs HOME set"
        );
        let dir = tempfile::tempdir().unwrap();
        let seen = |pass_env: Vec<String>, file: &str| {
            let out = dir.path().join(file);
            let runner = EffectRunner::new(
                EffectsConfig {
                    executor: Executor::Command,
                    command: vec![
                        "sh".into(),
                        "-c".into(),
                        format!("env > {}", out.display()),
                        "{unit}".into(),
                    ],
                    timeout_ms: 5_000,
                    pass_env,
                },
                None,
            );
            let r = rt().block_on(runner.restart_a("mail1", "e1"));
            assert_eq!(r.executed, 1, "{r:?}");
            let env = std::fs::read_to_string(out).unwrap();
            env.lines()
                .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_owned()))
                .filter(|k| k != "PWD" && k != "SHLVL" && k != "_")
                .collect::<std::collections::BTreeSet<String>>()
        };
        let names = seen(Vec::new(), "default");
        assert!(!names.contains("HOME"), "{names:?}");
        assert!(
            names.contains("PATH") && names.contains("WEIR_APP"),
            "{names:?}"
        );
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("WEIR_") || DEFAULT_PASS_ENV.contains(&n.as_str())),
            "{names:?}"
        );
        let names = seen(vec!["HOME".into()], "listed");
        assert!(names.contains("HOME"), "{names:?}");
        let bad = EffectsConfig {
            pass_env: vec!["A=B".into()],
            ..EffectsConfig::default()
        };
        assert_eq!(bad.problems().len(), 1);
    }

    #[test]
    fn publishes_with_different_payloads_are_different_effects() {
        let publish = |payload: &str| {
            Effect::Publish(weir_runtime::Message {
                name: "mail-changed".into(),
                payload: payload.as_bytes().to_vec(),
            })
        };
        let (a, b) = (describe(&publish("a")), describe(&publish("b")));
        assert_ne!(a, b);
        assert_eq!(a, describe(&publish("a")));
        assert!(a.starts_with("publish:mail-changed:"), "{a}");
        assert_ne!(
            EffectRunner::key("app", "e1", &a),
            EffectRunner::key("app", "e1", &b)
        );
        // Both run for the same event: neither is taken for a repeat.
        let runner = EffectRunner::new(EffectsConfig::default(), None);
        let grants = Grants {
            publish: vec!["mail-changed".into()],
            ..Grants::default()
        };
        rt().block_on(async {
            let r = runner
                .run(
                    "app",
                    &grants.clone().into(),
                    &[publish("a"), publish("b")],
                    &["e1"],
                    false,
                )
                .await;
            // No NATS here: both are attempted (and fail), none is "repeated".
            assert_eq!((r.repeated, r.failed.len()), (0, 2), "{r:?}");
        });
    }

    #[test]
    fn records_are_bounded() {
        let mut r = Records::default();
        for i in 0..MAX_IDEMPOTENCY_RECORDS + 10 {
            r.insert(i.to_string());
        }
        assert_eq!(r.set.len(), MAX_IDEMPOTENCY_RECORDS);
        assert!(!r.set.contains("0"));
    }
}
