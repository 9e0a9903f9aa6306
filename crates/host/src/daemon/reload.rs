//! Reload: apply a new configuration's apps to a running daemon, without
//! losing or re-running events beyond at-least-once redelivery.
//!
//! [`Daemon::reload`] works in three steps, so a reload that fails changes
//! nothing:
//!
//! 1. **check**, off the event path: the sections other than `[[app]]`
//!    must be unchanged (they need a restart; `nats.delete_consumer` is the
//!    exception), every component is read and hashed, and every added or
//!    changed app is compiled, checked and prepared on a blocking thread.
//!    Any problem refuses the reload, with every problem listed;
//! 2. **consumers**: an added app's durable consumer is created (subject to
//!    its `delivery.start`; an existing one resumes from its cursor), a
//!    changed app's consumer settings or filter are updated on the server;
//! 3. **apply**, which cannot fail: a changed app's pipeline gets a
//!    [`Swap`] that it applies before its next batch (the batch in progress
//!    finishes on the old component); an added app's pipeline starts; a
//!    removed app's pipeline drains and stops, its consumer kept (so
//!    re-adding it resumes) unless `nats.delete_consumer` is set.
//!
//! An app is *changed* when its `[[app]]` entry or its component file's
//! bytes differ; a new component also lifts a quarantine at once.

use std::path::Path;

use serde::Serialize;

use super::rollout::{self, Arming, Deployed};
use super::{AbortOnDrop, Daemon, RunningApp, SetUp, app_value, attach_candidate_kv, owned_events};
use crate::config::{AppPlan, Config, ConfigError, Plan};
use crate::nats::{KnownConsumers, TransportExt as _};
use crate::pipeline::Swap;
use weir_runtime::Runtime;

/// What a reload changed, app by app (names in config order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// Apps whose component changed: the next batch runs the new one.
    pub swapped: Vec<String>,
    /// Apps whose settings changed (rules, grants, limits, delivery,
    /// domains) with the same component.
    pub updated: Vec<String>,
    /// Apps deployed and consuming.
    pub added: Vec<String>,
    /// Apps stopped (their pipeline drains in the background).
    pub removed: Vec<String>,
    /// Apps left as they were.
    pub unchanged: Vec<String>,
}

impl ReloadReport {
    /// True if the reload changed nothing.
    pub fn is_empty(&self) -> bool {
        self.swapped.is_empty()
            && self.updated.is_empty()
            && self.added.is_empty()
            && self.removed.is_empty()
    }
}

impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (what, names) in [
            ("swapped", &self.swapped),
            ("updated", &self.updated),
            ("added", &self.added),
            ("removed", &self.removed),
        ] {
            if !names.is_empty() {
                write!(
                    f,
                    "{}{what}: {}",
                    if first { "" } else { "; " },
                    names.join(", ")
                )?;
                first = false;
            }
        }
        if first {
            write!(f, "no change")?;
        }
        Ok(())
    }
}

/// A refused reload: nothing changed, the old configuration keeps running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reload refused, nothing changed:\n  {}", .problems.join("\n  "))]
pub struct ReloadError {
    /// Every problem, one line each.
    pub problems: Vec<String>,
}

impl From<ConfigError> for ReloadError {
    fn from(e: ConfigError) -> Self {
        let problems = match e {
            ConfigError::Invalid { problems, .. } => problems,
            other => vec![format!("{other:#}")],
        };
        Self { problems }
    }
}

/// What step 1 found for one app of the new plan.
enum Change {
    Added,
    Changed { new_component: bool },
}

/// Step 1's outcome: the added and changed apps, deployed; the names of
/// those left as they are; every problem.
struct Checked {
    ready: Vec<(AppPlan, Change, Deployed)>,
    unchanged: Vec<String>,
    problems: Vec<String>,
}

/// The digests a reload compares for `app_plan` ([`Deployed::digests`]):
/// its component's, and its candidate's on a node that runs it.
fn digests(app_plan: &AppPlan) -> Result<String, String> {
    let read = |path: &Path| {
        std::fs::read(path)
            .map(|bytes| rollout::digest(&bytes))
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let stable = read(&app_plan.component)?;
    let candidate = match app_plan.canary.as_ref().filter(|c| c.runs_candidate()) {
        Some(c) => Some(read(&c.config.component)?),
        None => None,
    };
    Ok(rollout::digests(&stable, candidate.as_deref()))
}

/// Step 1: read and hash every component of `apps` (each with its
/// `[[app]]` entry as a value), compare with the `running` apps (name,
/// entry, digests), deploy the added and changed ones.
fn check(
    runtime: &Runtime,
    running: &[(String, serde_json::Value, String)],
    apps: Vec<(AppPlan, serde_json::Value)>,
) -> Checked {
    let mut checked = Checked {
        ready: Vec::new(),
        unchanged: Vec::new(),
        problems: Vec::new(),
    };
    for (app_plan, value) in apps {
        let name = app_plan.spec.name.clone();
        let digest = match digests(&app_plan) {
            Ok(digest) => digest,
            Err(e) => {
                checked.problems.push(format!("app {name}: {e}"));
                continue;
            }
        };
        let change = match running.iter().find(|(n, _, _)| *n == name) {
            None => Change::Added,
            Some((_, config, old)) if *config != value || *old != digest => Change::Changed {
                new_component: *old != digest,
            },
            Some(_) => {
                checked.unchanged.push(name);
                continue;
            }
        };
        match rollout::deploy(runtime, &app_plan) {
            Ok(deployed) => checked.ready.push((app_plan, change, deployed)),
            Err(e) => checked.problems.push(format!("app {name}: {e}")),
        }
    }
    checked
}

impl Daemon {
    /// Read `path` and apply it ([`Daemon::reload`]); a file that cannot be
    /// read, parsed or validated refuses the reload with every problem.
    ///
    /// # Errors
    ///
    /// [`ReloadError`]; the running configuration is untouched.
    pub async fn reload_file(&mut self, path: &Path) -> Result<ReloadReport, ReloadError> {
        match Plan::load(path) {
            Ok(plan) => self.reload(plan).await,
            Err(e) => {
                let outcome = Err(ReloadError::from(e));
                self.record(&outcome);
                outcome
            }
        }
    }

    /// Apply `plan`'s apps to the running daemon (see the module docs). The
    /// outcome is logged (one line) and shown in `/stats`.
    ///
    /// # Errors
    ///
    /// [`ReloadError`] with every problem: a section other than `[[app]]`
    /// changed, a component cannot be read or does not deploy, a consumer
    /// cannot be created or updated. Before the consumer step nothing has
    /// changed; a consumer failure may leave consumers of other apps of the
    /// same reload already created or updated on the server (harmless: no
    /// pipeline reads a created one, an updated one keeps working), and says
    /// so.
    pub async fn reload(&mut self, plan: Plan) -> Result<ReloadReport, ReloadError> {
        let outcome = self.try_reload(plan).await;
        self.record(&outcome);
        outcome
    }

    fn record(&self, outcome: &Result<ReloadReport, ReloadError>) {
        match outcome {
            Ok(report) => tracing::info!(changes = %report, "reloaded"),
            Err(e) => {
                tracing::warn!(problems = ?e.problems, "reload refused; the running configuration is unchanged");
            }
        }
        self.health.reloaded(outcome);
    }

    async fn try_reload(&mut self, plan: Plan) -> Result<ReloadReport, ReloadError> {
        // Pipelines of apps removed by earlier reloads that have stopped.
        while self.retiring.try_join_next().is_some() {}
        // Step 1: check everything before changing anything, on a thread of
        // its own at low priority (reading, hashing and compiling must not
        // take CPU from the batches of running apps; on a cache miss,
        // wasmtime's parallel compile threads still run at normal priority).
        let mut restart_only = restart_only_changes(&self.config, &plan.config);
        for app_plan in &plan.apps {
            if let Some(running) = self.apps.iter().find(|a| a.name == app_plan.spec.name)
                && running.consumer != app_plan.consumer
            {
                restart_only.push(format!(
                    "app {}: scope changed (consumer {} would become {}): remove the app in one reload and add it back in the next, or restart weir",
                    running.name, running.consumer, app_plan.consumer
                ));
            }
        }
        let running: Vec<(String, serde_json::Value, String)> = self
            .apps
            .iter()
            .map(|a| (a.name.clone(), a.config.clone(), a.digest.clone()))
            .collect();
        let runtime = self.runtime.clone();
        let apps: Vec<(AppPlan, serde_json::Value)> = plan
            .apps
            .iter()
            .cloned()
            .zip(plan.config.apps.iter().map(app_value))
            .collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("weir-reload".to_owned())
            .spawn(move || {
                weir_runtime::priority::demote_current_thread();
                let _ = tx.send(check(&runtime, &running, apps));
            })
            .map_err(|e| ReloadError {
                problems: vec![format!("cannot start the reload thread: {e}")],
            })?;
        let Checked {
            ready,
            unchanged,
            mut problems,
        } = rx.await.map_err(|_| ReloadError {
            problems: vec!["the reload thread failed".to_owned()],
        })?;
        // Every problem at once: the sections that need a restart first.
        problems.splice(0..0, restart_only);
        if !problems.is_empty() {
            return Err(ReloadError { problems });
        }
        let mut report = ReloadReport {
            unchanged,
            ..ReloadReport::default()
        };

        // Step 2: consumers on the server.
        let mut consumers = Vec::with_capacity(ready.len());
        let mut live_kvs = Vec::with_capacity(ready.len());
        for (app_plan, change, deployed) in &ready {
            let name = &app_plan.spec.name;
            let app = &deployed.app;
            let mut live_kv = None;
            if app.kv_grant().any() {
                match self.transport.app_buckets(name, app.kv_grant()).await {
                    Ok(buckets) => {
                        let buckets: std::sync::Arc<dyn weir_runtime::kv::KvBackend> =
                            std::sync::Arc::new(buckets);
                        app.attach_kv(buckets.clone());
                        attach_candidate_kv(deployed, app_plan, Some(&buckets));
                        live_kv = Some(buckets);
                    }
                    Err(e) => problems.push(format!("app {name}: key-value bucket: {e}")),
                }
            }
            let rolled_back = rollout::rolled_back_before(&self.records, app_plan, deployed).await;
            live_kvs.push(SetUp {
                live_kv,
                rolled_back,
            });
            let events = owned_events(&app_plan.filter);
            let needed = match change {
                Change::Added => true,
                Change::Changed { .. } => self
                    .apps
                    .iter()
                    .find(|a| a.name == *name)
                    .is_none_or(|a| a.events != events || a.delivery != app_plan.delivery),
            };
            if !needed {
                consumers.push(None);
                continue;
            }
            let event_refs: Vec<&str> = events.iter().map(String::as_str).collect();
            match self
                .transport
                .consumer(
                    &app_plan.consumer,
                    &event_refs,
                    &app_plan.delivery,
                    &KnownConsumers::default(),
                )
                .await
            {
                Ok(c) => consumers.push(Some(c)),
                Err(e) => {
                    problems.push(format!("app {name}: consumer: {e}"));
                    consumers.push(None);
                }
            }
        }
        if !problems.is_empty() {
            problems.push(
                "consumers of this reload's other apps may already be created or updated on the server; no pipeline changed".to_owned(),
            );
            return Err(ReloadError { problems });
        }

        // Step 3: apply (cannot fail).
        let configs: std::collections::HashMap<&str, &crate::config::AppConfig> = plan
            .config
            .apps
            .iter()
            .map(|a| (a.name.as_str(), a))
            .collect();
        for (((app_plan, change, deployed), consumer), set_up) in
            ready.into_iter().zip(consumers).zip(live_kvs)
        {
            let name = app_plan.spec.name.clone();
            let app_config = configs[name.as_str()];
            match change {
                Change::Added => {
                    let Some(consumer) = consumer else {
                        continue;
                    };
                    let running = self.spawn_app(&app_plan, app_config, deployed, set_up, consumer);
                    self.apps.push(running);
                    report.added.push(name);
                }
                Change::Changed { new_component } => {
                    let node = self.config.node.id;
                    let transport = self.transport.clone();
                    let records = self.records.clone();
                    let Some(running) = self.apps.iter_mut().find(|a| a.name == name) else {
                        continue;
                    };
                    let digest = deployed.digests();
                    // The old canary's task stops before the new one
                    // starts (a rollback it left in the slot is replaced
                    // by this swap).
                    running.canary = AbortOnDrop(None);
                    let armed = rollout::arm(Arming {
                        plan: &app_plan,
                        node,
                        deployed,
                        live_kv: set_up.live_kv,
                        stats: running.stats.clone(),
                        swaps: running.swaps.clone(),
                        transport: &transport,
                        records: Some(records),
                        rolled_back: set_up.rolled_back,
                    });
                    running.swaps.put(Swap {
                        app: armed.app,
                        filter: app_plan.filter.clone(),
                        effects: app_plan.effects.clone(),
                        delivery: app_plan.delivery.clone(),
                        new_component,
                        observer: armed.observer,
                    });
                    running.canary = AbortOnDrop(armed.task);
                    running.config = app_value(app_config);
                    running.digest = digest;
                    running.events = owned_events(&app_plan.filter);
                    running.delivery = app_plan.delivery.clone();
                    if new_component {
                        report.swapped.push(name);
                    } else {
                        report.updated.push(name);
                    }
                }
            }
        }
        let removed: Vec<RunningApp> = {
            let (keep, removed) = std::mem::take(&mut self.apps)
                .into_iter()
                .partition(|a| configs.contains_key(a.name.as_str()));
            self.apps = keep;
            removed
        };
        for mut app in removed {
            let _ = app.stop.send(true);
            let task = app.task.0.take();
            let transport = self.transport.clone();
            let delete = plan.config.nats.delete_consumer;
            let name = app.name.clone();
            let consumer = app.consumer.clone();
            self.retiring.spawn(async move {
                if let Some(task) = task {
                    let _ = task.await;
                }
                if delete {
                    match transport.delete_consumer(&consumer).await {
                        Ok(()) => tracing::info!(app = %name, "consumer deleted"),
                        Err(e) => {
                            tracing::warn!(app = %name, error = %e, "consumer not deleted")
                        }
                    }
                }
            });
            report.removed.push(app.name);
        }
        // `/stats` in the new config order, without removed apps.
        {
            let mut stats = self
                .stats
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            stats.retain(|(n, _)| configs.contains_key(n.as_str()));
            let order: Vec<&str> = plan.config.apps.iter().map(|a| a.name.as_str()).collect();
            stats.sort_by_key(|(n, _)| order.iter().position(|o| o == n));
        }
        let order: Vec<&str> = plan.config.apps.iter().map(|a| a.name.as_str()).collect();
        self.apps
            .sort_by_key(|a| order.iter().position(|o| *o == a.name));
        report
            .unchanged
            .sort_by_key(|n| order.iter().position(|o| o == n));
        self.config = plan.config;
        Ok(report)
    }
}

/// The sections of `new` a reload cannot apply, one problem each: every
/// section but `[[app]]`, except `nats.delete_consumer`.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut old_nats = old.nats.clone();
    old_nats.delete_consumer = new.nats.delete_consumer;
    let sections: [(&str, serde_json::Value, serde_json::Value); 5] = [
        ("node", value(&old.node), value(&new.node)),
        ("nats", value(&old_nats), value(&new.nats)),
        ("http", value(&old.http), value(&new.http)),
        ("effects", value(&old.effects), value(&new.effects)),
        ("engine", value(&old.engine), value(&new.engine)),
    ];
    sections
        .into_iter()
        .filter(|(_, a, b)| a != b)
        .map(|(name, _, _)| {
            format!("[{name}] changed: restart weir to apply it (a reload applies [[app]] changes and nats.delete_consumer)")
        })
        .collect()
}

/// A config section as a value, for comparison.
fn value<T: Serialize>(section: &T) -> serde_json::Value {
    serde_json::to_value(section).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        toml::from_str(&format!(
            "[node]\nid = 1\nname = \"n1\"\n{extra}\n[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\n"
        ))
        .unwrap()
    }

    #[test]
    fn only_app_sections_and_delete_consumer_reload() {
        let old = config("");
        assert!(restart_only_changes(&old, &config("")).is_empty());
        assert!(restart_only_changes(&old, &config("[nats]\ndelete_consumer = true")).is_empty());
        let p = restart_only_changes(
            &old,
            &config("[nats]\nreplicas = 3\n[engine]\npool_instances = 8"),
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("[nats] changed: restart weir"), "{p:?}");
        assert!(p[1].starts_with("[engine] changed"), "{p:?}");
    }

    #[test]
    fn reports_say_what_changed() {
        let r = ReloadReport {
            swapped: vec!["mail".into()],
            removed: vec!["old".into(), "older".into()],
            ..ReloadReport::default()
        };
        assert_eq!(r.to_string(), "swapped: mail; removed: old, older");
        assert!(!r.is_empty());
        assert_eq!(ReloadReport::default().to_string(), "no change");
        let e = ReloadError::from(ConfigError::Invalid {
            path: "w.toml".into(),
            problems: vec!["one".into(), "two".into()],
        });
        assert_eq!(e.problems, ["one", "two"]);
        assert_eq!(
            e.to_string(),
            "reload refused, nothing changed:\n  one\n  two"
        );
    }
}
