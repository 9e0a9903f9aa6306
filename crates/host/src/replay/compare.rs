//! One batch through one version (isolating its events when it fails, as
//! the live pipeline does), and what two versions decided, compared.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use weir_runtime::{App, Effect, Event, InvokeError, Outcome};

/// What one version decided for one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Decision {
    /// `done`: acknowledged.
    Done,
    /// `retry(ms)`: redelivered after `ms`.
    Retry {
        /// The delay the handler asked for, ms.
        ms: u32,
    },
    /// `reject(reason)`: dead-lettered with the reason.
    Reject {
        /// The handler's reason.
        reason: String,
    },
    /// The invocation failed (alone, after its batch failed): trapped or hit
    /// a cap. A live host retries it and dead-letters it at its last
    /// delivery.
    Failed {
        /// [`InvokeError::kind`]: `timeout`, `out_of_fuel`, `trap`, ...
        kind: String,
        /// The error.
        error: String,
    },
}

impl Decision {
    /// The outcome's name: `done`, `retry`, `reject` or `failed`.
    pub fn name(&self) -> &'static str {
        match self {
            Decision::Done => "done",
            Decision::Retry { .. } => "retry",
            Decision::Reject { .. } => "reject",
            Decision::Failed { .. } => "failed",
        }
    }

    fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Done => Decision::Done,
            Outcome::Retry(ms) => Decision::Retry { ms: *ms },
            Outcome::Reject(reason) => Decision::Reject {
                reason: reason.clone(),
            },
        }
    }

    fn failed(error: &InvokeError) -> Self {
        Decision::Failed {
            kind: error.kind().to_owned(),
            error: error.to_string(),
        }
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decision::Done => f.write_str("done"),
            Decision::Retry { ms } => write!(f, "retry {ms} ms"),
            Decision::Reject { reason } => write!(f, "reject ({reason})"),
            Decision::Failed { kind, .. } => write!(f, "failed ({kind})"),
        }
    }
}

/// An effect as replay names it: `restart:<unit>`, `reload:<unit>`,
/// `publish:<name>` (the label effects are counted by).
pub fn label(effect: &Effect) -> String {
    match effect {
        Effect::Restart(unit) => format!("restart:{unit}"),
        Effect::Reload(unit) => format!("reload:{unit}"),
        Effect::Publish(m) => format!("publish:{}", m.name),
    }
}

/// An effect with everything that tells two apart (a publish's payload
/// too), for comparing.
fn identity(effect: &Effect) -> String {
    match effect {
        Effect::Publish(m) => format!("publish:{}:{}", m.name, String::from_utf8_lossy(&m.payload)),
        other => label(other),
    }
}

/// One batch through one version.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// One decision per event, in batch order.
    pub decisions: Vec<Decision>,
    /// The effects asked for, by label, in order (the batch's; if it failed,
    /// those of its events run alone).
    pub effects: Vec<String>,
    /// The same, with what tells them apart, sorted: what is compared.
    compared: Vec<String>,
    /// Invocations that failed, by [`InvokeError::kind`] (the batch's own
    /// failure included).
    pub traps: Vec<&'static str>,
    /// Invocations made: 1, or 1 + the events run alone.
    pub invocations: u32,
    /// Fuel consumed, all invocations.
    pub fuel: u64,
    /// Wall time of all invocations, µs.
    pub time_us: u64,
    /// Largest fuel and time of one invocation.
    pub fuel_max: u64,
    /// Largest time of one invocation, µs.
    pub time_max_us: u64,
}

impl Run {
    fn count(&mut self, fuel: u64, time_us: u64) {
        self.invocations += 1;
        self.fuel += fuel;
        self.time_us += time_us;
        self.fuel_max = self.fuel_max.max(fuel);
        self.time_max_us = self.time_max_us.max(time_us);
    }

    fn take(&mut self, effects: &[Effect]) {
        for e in effects {
            self.effects.push(label(e));
            self.compared.push(identity(e));
        }
    }
}

impl Run {
    /// What a live invocation decided, as a run of one invocation (the
    /// stable side of a shadow run; fuel and time are not kept).
    pub fn of(handled: &weir_runtime::Handled) -> Self {
        let mut run = Run {
            decisions: handled.outcomes.iter().map(Decision::of).collect(),
            invocations: 1,
            ..Run::default()
        };
        run.take(&handled.effects);
        run.compared.sort();
        run
    }
}

/// The events (indices of a batch of `events`) whose decision differs
/// between `a` and `b`, or all of them when the batch's effects differ:
/// the events `weir replay` and the shadow run count as changed. A
/// missing decision reads as `done`.
pub fn changed(a: &Run, b: &Run, events: usize) -> impl Iterator<Item = usize> {
    let all = effects_differ(a, b);
    let decision = |r: &Run, i: usize| r.decisions.get(i).cloned().unwrap_or(Decision::Done);
    let differs: Vec<bool> = (0..events)
        .map(|i| all || decision(a, i) != decision(b, i))
        .collect();
    differs
        .into_iter()
        .enumerate()
        .filter_map(|(i, d)| d.then_some(i))
}

/// How many events of a batch of `events` are [`changed`].
pub fn changed_events(a: &Run, b: &Run, events: usize) -> usize {
    changed(a, b, events).count()
}

/// Run `events` through `app` as a live host would: one invocation, and if
/// it fails with more than one event, each event alone.
pub async fn run(app: &App, events: Arc<[Event]>) -> Run {
    let mut run = Run::default();
    let inv = app.invoke(events.clone()).await;
    run.count(
        inv.stats.fuel_consumed,
        inv.stats.elapsed.as_micros() as u64,
    );
    match inv.result {
        Ok(handled) => {
            run.decisions = handled.outcomes.iter().map(Decision::of).collect();
            run.take(&handled.effects);
        }
        Err(error) if events.len() == 1 => {
            run.traps.push(error.kind());
            run.decisions = vec![Decision::failed(&error)];
        }
        Err(error) => {
            run.traps.push(error.kind());
            for event in events.iter() {
                let alone = app.invoke(vec![event.clone()]).await;
                run.count(
                    alone.stats.fuel_consumed,
                    alone.stats.elapsed.as_micros() as u64,
                );
                match alone.result {
                    Ok(handled) => {
                        run.decisions
                            .extend(handled.outcomes.iter().map(Decision::of));
                        run.take(&handled.effects);
                    }
                    Err(error) => {
                        run.traps.push(error.kind());
                        run.decisions.push(Decision::failed(&error));
                    }
                }
            }
        }
    }
    run.compared.sort();
    run
}

/// Whether two runs of the same batch asked for different effects (as
/// multisets: order within a batch is not compared).
pub fn effects_differ(a: &Run, b: &Run) -> bool {
    a.compared != b.compared
}

/// One version's totals over a replay.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VersionTally {
    /// Events by decision: `done`, `retry`, `reject`, `failed`.
    pub outcomes: BTreeMap<String, u64>,
    /// Effects asked for, by label (`restart:dovecot.service`), counted per
    /// batch that asked (a live host coalesces within a batch).
    pub effects: BTreeMap<String, u64>,
    /// Failed invocations by kind (`timeout`, `out_of_fuel`, `trap`, ...).
    pub traps: BTreeMap<String, u64>,
    /// Invocations made.
    pub invocations: u64,
    /// Fuel consumed in all.
    pub fuel: u64,
    /// Most fuel one invocation consumed.
    pub fuel_max: u64,
    /// Wall time of all invocations, µs.
    pub time_us: u64,
    /// Longest invocation, µs.
    pub time_max_us: u64,
}

impl VersionTally {
    /// Add one batch's run.
    pub fn add(&mut self, run: &Run) {
        for d in &run.decisions {
            *self.outcomes.entry(d.name().to_owned()).or_default() += 1;
        }
        for e in &run.effects {
            *self.effects.entry(e.clone()).or_default() += 1;
        }
        for t in &run.traps {
            *self.traps.entry((*t).to_owned()).or_default() += 1;
        }
        self.invocations += u64::from(run.invocations);
        self.fuel += run.fuel;
        self.fuel_max = self.fuel_max.max(run.fuel_max);
        self.time_us += run.time_us;
        self.time_max_us = self.time_max_us.max(run.time_max_us);
    }

    /// Failed invocations of every kind.
    pub fn trap_count(&self) -> u64 {
        self.traps.values().sum()
    }
}
