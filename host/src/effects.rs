//! Executing a batch's effects: check grants, skip what was already executed
//! for the same events (idempotency keys), execute the rest once.
//!
//! Executors: `log` (dry run: one info line per effect) and `command` (an argv
//! template such as `["systemctl", "--user", "try-reload-or-restart",
//! "{unit}"]`, `{action}` and `{unit}` substituted, no shell, bounded time).
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
//! The `command` executor gets the idempotency keys in its environment:
//! `WEIR_APP`, `WEIR_EFFECT` (e.g. `restart:dovecot.service`), `WEIR_EVENT_IDS`
//! and `WEIR_EFFECT_KEYS` (space-separated, one per event the effect runs
//! for). A `kill -9` of the host after an effect ran but before its record was
//! stored runs it again on redelivery with the same keys, so an executor that
//! remembers keys never applies an effect twice.

use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use crate::bindings::Effect;
use serde::{Deserialize, Serialize};

use crate::nats::{EffectRecords, Transport};

/// Default time an effect command may run: 30,000 ms.
pub const DEFAULT_COMMAND_TIMEOUT_MS: u64 = 30_000;

/// Effect executors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    /// Log each effect (dry run). The default.
    #[default]
    Log,
    /// Run `command` with `{action}` and `{unit}` substituted (no shell).
    Command,
}

/// `[effects]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EffectsConfig {
    /// The executor. Default [`Executor::Log`].
    pub executor: Executor,
    /// Argv template for [`Executor::Command`]; `{action}` becomes `restart`
    /// or `reload`, `{unit}` the unit. Default
    /// `["systemctl", "--user", "try-reload-or-restart", "{unit}"]`.
    pub command: Vec<String>,
    /// Time a command may run, in ms. Default [`DEFAULT_COMMAND_TIMEOUT_MS`].
    pub timeout_ms: u64,
}

impl Default for EffectsConfig {
    fn default() -> Self {
        Self {
            executor: Executor::Log,
            command: ["systemctl", "--user", "try-reload-or-restart", "{unit}"]
                .map(String::from)
                .to_vec(),
            timeout_ms: DEFAULT_COMMAND_TIMEOUT_MS,
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
        p
    }
}

/// `[app.grants]`: what an app's effects may do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
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
        p
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
    /// Skipped: already executed for all of these events.
    pub repeated: u64,
    /// Refused: not granted.
    pub refused: u64,
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
            refused_logged: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Also keep records in `records` (the NATS bucket), so they survive a
    /// restart.
    #[must_use]
    pub fn with_durable_records(mut self, records: EffectRecords) -> Self {
        self.durable = Some(records);
        self
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
    async fn pending(&self, app: &str, keys: &[String], redelivered: bool) -> Vec<usize> {
        let mut pending: Vec<usize> = {
            let records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
            (0..keys.len())
                .filter(|&i| !records.set.contains(&format!("{app}.{}", keys[i])))
                .collect()
        };
        if let (true, Some(durable)) = (redelivered, &self.durable) {
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
    /// `event_ids`; `redelivered` says whether any of them was delivered
    /// before (then the durable records are consulted).
    pub async fn run(
        &self,
        app: &str,
        grants: &Grants,
        effects: &[Effect],
        event_ids: &[&str],
        redelivered: bool,
    ) -> EffectReport {
        let mut report = EffectReport::default();
        for effect in effects {
            let name = describe(effect);
            if !granted(grants, effect) {
                report.refused += 1;
                self.log_refused(app, &name);
                continue;
            }
            let keys: Vec<String> = event_ids
                .iter()
                .map(|id| Self::key(app, id, &name))
                .collect();
            let pending = self.pending(app, &keys, redelivered).await;
            if pending.is_empty() && !event_ids.is_empty() {
                report.repeated += 1;
                continue;
            }
            let ids: Vec<&str> = pending.iter().map(|&i| event_ids[i]).collect();
            let pending_keys: Vec<String> = pending.iter().map(|&i| keys[i].clone()).collect();
            match self.execute(app, effect, &ids, &pending_keys).await {
                Ok(()) => {
                    report.executed += 1;
                    {
                        let mut records =
                            self.records.lock().unwrap_or_else(PoisonError::into_inner);
                        for key in &pending_keys {
                            records.insert(format!("{app}.{key}"));
                        }
                    }
                    if let Some(durable) = &self.durable
                        && let Err(e) = durable.insert(app, &pending_keys).await
                    {
                        // The effect ran; a redelivery could run it again.
                        tracing::warn!(app, effect = %name, error = %e, "effect record not stored");
                    }
                }
                Err(e) => {
                    tracing::warn!(app, effect = %name, error = %e, "effect failed");
                    report.failed.push(format!("{name}: {e}"));
                }
            }
        }
        report
    }

    /// Log a refused effect once per [`REFUSED_LOG_WINDOW`] per app, with the
    /// number suppressed since the last line.
    fn log_refused(&self, app: &str, effect: &str) {
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
                tracing::warn!(app, effect, suppressed, "effect refused: not granted");
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
                let argv: Vec<String> = self
                    .config
                    .command
                    .iter()
                    .map(|a| a.replace("{action}", action).replace("{unit}", unit))
                    .collect();
                let (program, args) = argv.split_first().ok_or(EffectFailure::EmptyCommand)?;
                let mut child = tokio::process::Command::new(program)
                    .args(args)
                    .env("WEIR_APP", app)
                    .env("WEIR_EFFECT", describe(effect))
                    .env("WEIR_EVENT_IDS", event_ids.join(" "))
                    .env("WEIR_EFFECT_KEYS", keys.join(" "))
                    .stdin(std::process::Stdio::null())
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
                    Err(_) => Err(EffectFailure::Timeout {
                        command: argv.join(" "),
                        timeout,
                    }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants() -> Grants {
        Grants {
            restart: vec!["a.service".into()],
            reload: vec![],
            publish: vec![],
            ..Grants::default()
        }
    }

    use crate::test_runtime as rt;

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
    fn command_executor_substitutes_and_reports_failures() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("done");
        let config = EffectsConfig {
            executor: Executor::Command,
            command: vec![
                "sh".into(),
                "-c".into(),
                format!("echo {{action}} {{unit}} > {}", marker.display()),
            ],
            timeout_ms: 5_000,
        };
        let runner = EffectRunner::new(config, None);
        rt().block_on(async {
            let r = runner
                .run(
                    "mail1",
                    &grants(),
                    &[Effect::Restart("a.service".into())],
                    &["e1"],
                    false,
                )
                .await;
            assert_eq!(r.executed, 1, "{r:?}");
        });
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap().trim(),
            "restart a.service"
        );
        let failing = EffectRunner::new(
            EffectsConfig {
                executor: Executor::Command,
                command: vec!["false".into(), "{unit}".into()],
                timeout_ms: 5_000,
            },
            None,
        );
        let slow = EffectRunner::new(
            EffectsConfig {
                executor: Executor::Command,
                command: vec!["sh".into(), "-c".into(), "sleep 5".into(), "{unit}".into()],
                timeout_ms: 100,
            },
            None,
        );
        rt().block_on(async {
            let r = failing
                .run(
                    "m",
                    &grants(),
                    &[Effect::Restart("a.service".into())],
                    &["e"],
                    false,
                )
                .await;
            assert_eq!(r.failed.len(), 1, "{r:?}");
            assert!(r.failed[0].contains("false a.service exited with"), "{r:?}");
            let missing = EffectRunner::new(
                EffectsConfig {
                    executor: Executor::Command,
                    command: vec!["/nonexistent/weir-effect".into(), "{unit}".into()],
                    timeout_ms: 5_000,
                },
                None,
            );
            let r = missing
                .run(
                    "m",
                    &grants(),
                    &[Effect::Restart("a.service".into())],
                    &["e"],
                    false,
                )
                .await;
            assert!(
                r.failed[0].contains("failed to start /nonexistent/weir-effect"),
                "{r:?}"
            );
            let publish = Effect::Publish(crate::bindings::Message {
                name: "x".into(),
                payload: Vec::new(),
            });
            let publishing = Grants {
                publish: vec!["x".into()],
                ..Grants::default()
            };
            let r = failing
                .run("m", &publishing, &[publish], &["e"], false)
                .await;
            assert!(r.failed[0].contains("no NATS connection"), "{r:?}");
            let r = slow
                .run(
                    "m",
                    &grants(),
                    &[Effect::Restart("a.service".into())],
                    &["e"],
                    false,
                )
                .await;
            assert!(r.failed[0].contains("ran longer than"), "{r:?}");
        });
    }

    #[test]
    fn publishes_with_different_payloads_are_different_effects() {
        let publish = |payload: &str| {
            Effect::Publish(crate::bindings::Message {
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
                    &grants,
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
