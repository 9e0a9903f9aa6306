//! A live canary's guard rails: this node's window, the reference nodes'
//! windows, the verdict ([`verdict`]), and the two tasks that use them:
//! [`watch`] on a candidate's node, [`report`] on a reference node.
//!
//! Reports and the rollback announcement are core NATS messages (JSON,
//! [`Report`], [`RolledBack`]): nothing is stored, a lost report only
//! leaves the reference older. A report that does not parse is dropped
//! (logged at debug); one for another stable component (a node whose
//! `component` differs) is not counted.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{CHECK_INTERVAL, CanaryConfig, EFFECT_RATE_SLACK, REFERENCE_STALE, REPORT_INTERVAL};
use crate::nats::{EffectRecords, Transport};
use crate::stats::{AppStats, CanaryStatus, WindowCounts, unix_ms};

/// Most samples a [`Window`] keeps: 60 (a sample every `window / 60`, at
/// least every [`CHECK_INTERVAL`]), so a day-long window costs no more
/// than a minute-long one.
pub const MAX_WINDOW_SAMPLES: usize = 60;

/// Cumulative counts sampled over time; what was counted in the last
/// `span`, to within one sample step.
#[derive(Debug)]
pub struct Window {
    span: Duration,
    step: Duration,
    samples: VecDeque<(Instant, WindowCounts)>,
}

impl Window {
    /// A window of `span`, empty.
    pub fn new(span: Duration) -> Self {
        Self {
            span,
            step: (span / MAX_WINDOW_SAMPLES as u32).max(CHECK_INTERVAL),
            samples: VecDeque::with_capacity(MAX_WINDOW_SAMPLES + 1),
        }
    }

    /// Take `counts` (cumulative) at `now`; what was counted since the
    /// oldest sample within the span (0 on the first call).
    pub fn push(&mut self, now: Instant, counts: WindowCounts) -> WindowCounts {
        let due = self
            .samples
            .back()
            .is_none_or(|(t, _)| now.duration_since(*t) >= self.step);
        if due {
            self.samples.push_back((now, counts));
        }
        while self.samples.len() > 1
            && self
                .samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > self.span)
        {
            self.samples.pop_front();
        }
        while self.samples.len() > MAX_WINDOW_SAMPLES + 1 {
            self.samples.pop_front();
        }
        self.samples
            .front()
            .map_or_else(WindowCounts::default, |(_, first)| counts.since(*first))
    }
}

/// A reference node's window, published every [`REPORT_INTERVAL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The reporting node.
    pub node: u32,
    /// Its stable component's SHA-256 (hex).
    pub stable: String,
    /// What it decided in its window.
    pub window: WindowCounts,
}

/// Published once when a candidate is rolled back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolledBack {
    /// The app.
    pub app: String,
    /// The node that rolled back.
    pub node: u32,
    /// The candidate's SHA-256 (hex).
    pub candidate: String,
    /// The stable component's SHA-256 (hex), running again.
    pub stable: String,
    /// The guard rail that tripped, in words.
    pub reason: String,
    /// The candidate's window on this node.
    pub window: WindowCounts,
    /// The reference nodes' window, if any was heard from.
    pub reference: Option<WindowCounts>,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Whether the candidate's window (`candidate`) breaks a guard rail of
/// `config` against the stable version's (`reference`): the reason, or
/// `None`. Nothing is checked before the candidate has decided
/// `min_events` events; a reference with fewer is not used (the trap and
/// reject rails then compare with 0, the effect rail is not checked).
pub fn verdict(
    config: &CanaryConfig,
    candidate: WindowCounts,
    reference: Option<WindowCounts>,
) -> Option<String> {
    if candidate.events < config.min_events {
        return None;
    }
    let reference = reference.filter(|r| r.events >= config.min_events);
    let (ref_failed, ref_rejected) = reference.map_or((0.0, 0.0), |r| {
        (ratio(r.failed, r.events), ratio(r.rejected, r.events))
    });
    // A share of the candidate's events (`count`, `what`) above the
    // stable version's share by more than `margin`: the reason.
    let share = |what: &str, count: u64, stable: f64, margin: f64| {
        let mine = ratio(count, candidate.events);
        (mine > stable + margin).then(|| {
            let versus = match reference {
                Some(_) => format!("stable {:.1}%", stable * 100.0),
                None => "no reference".to_owned(),
            };
            format!(
                "{count} of {} events {what} ({:.1}%; {versus}; allowed {:.1} points more)",
                candidate.events,
                mine * 100.0,
                margin * 100.0
            )
        })
    };
    if let Some(reason) = share(
        "failed",
        candidate.failed,
        ref_failed,
        config.max_trap_ratio,
    )
    .or_else(|| {
        share(
            "rejected",
            candidate.rejected,
            ref_rejected,
            config.max_reject_ratio,
        )
    }) {
        return Some(reason);
    }
    if let Some(r) = reference {
        let per_event = ratio(candidate.effects, candidate.events);
        let stable = ratio(r.effects, r.events);
        if per_event > stable * config.max_effect_ratio + EFFECT_RATE_SLACK {
            return Some(format!(
                "{} effects for {} events ({per_event:.3} per event; stable {stable:.3}; allowed {:.1}x)",
                candidate.effects, candidate.events, config.max_effect_ratio
            ));
        }
    }
    None
}

/// What [`watch`] and [`report`] need of one app.
#[derive(Debug, Clone)]
pub struct Canary {
    /// The app.
    pub app: String,
    /// This node.
    pub node: u32,
    /// Its `[app.canary]`.
    pub config: CanaryConfig,
    /// The stable component's SHA-256 (hex).
    pub stable: String,
    /// The candidate's SHA-256 (hex).
    pub candidate: String,
    /// The app's counters.
    pub stats: Arc<AppStats>,
    /// The NATS connection.
    pub transport: Transport,
    /// Where a rollback is recorded, so a restart does not try the
    /// candidate again (none: not recorded).
    pub records: Option<EffectRecords>,
    /// The rollback's record key.
    pub record: String,
}

impl Canary {
    fn status(&self, state: &'static str) -> CanaryStatus {
        CanaryStatus::new(
            self.config.mode.as_str(),
            state,
            &self.candidate,
            self.config.window_s,
        )
    }
}

/// On a candidate's node: check the guard rails every
/// [`CHECK_INTERVAL`] against the reference reports heard; when one trips,
/// call `rollback` (which leaves the stable component for the pipeline),
/// record why and return. Runs until then or until dropped.
pub async fn watch(canary: Canary, rollback: impl FnOnce() + Send) {
    let mut status = canary.status("trial");
    canary.stats.set_canary(Some(status.clone()));
    let subjects = canary.transport.subjects().clone();
    let mut references = match canary
        .transport
        .client()
        .subscribe(subjects.canary_references(&canary.app))
        .await
    {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(app = %canary.app, error = %e, "canary: reference reports not subscribed; guard rails compare with none");
            None
        }
    };
    let mut heard: HashMap<u32, (Instant, Report)> = HashMap::new();
    let mut window = Window::new(Duration::from_secs(canary.config.window_s));
    window.push(Instant::now(), canary.stats.window_counts());
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = async {
                match references.as_mut() {
                    Some(s) => s.next().await,
                    None => std::future::pending().await,
                }
            } => {
                match message {
                    Some(m) => match serde_json::from_slice::<Report>(&m.payload) {
                        Ok(r) if r.stable == canary.stable => {
                            heard.insert(r.node, (Instant::now(), r));
                        }
                        Ok(r) => tracing::debug!(app = %canary.app, node = r.node, "canary: a reference runs another stable component; not counted"),
                        Err(e) => tracing::debug!(app = %canary.app, error = %e, "canary: unreadable reference report dropped"),
                    },
                    None => references = None,
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let mine = window.push(now, canary.stats.window_counts());
                heard.retain(|_, (at, _)| now.duration_since(*at) <= REFERENCE_STALE);
                let reference = heard
                    .values()
                    .map(|(_, r)| r.window)
                    .reduce(WindowCounts::plus);
                status.window = mine;
                status.reference = reference;
                status.reference_nodes = heard.len() as u32;
                if let Some(reason) = verdict(&canary.config, mine, reference) {
                    rollback();
                    canary.stats.canary_rollbacks.add(1);
                    status.state = "rolled_back";
                    status.since_ms = unix_ms();
                    status.reason = Some(reason.clone());
                    tracing::warn!(
                        app = %canary.app,
                        candidate = %status.candidate,
                        reason = %reason,
                        "canary rolled back: the stable component runs again until [app.canary] or a component changes"
                    );
                    canary.stats.set_canary(Some(status));
                    if let Some(records) = &canary.records
                        && let Err(e) = records.insert(&canary.app, std::slice::from_ref(&canary.record)).await
                    {
                        tracing::warn!(app = %canary.app, error = %e, "canary rollback not recorded: a restart tries the candidate again");
                    }
                    announce(&canary, reason, mine, reference).await;
                    return;
                }
                canary.stats.set_canary(Some(status.clone()));
            }
        }
    }
}

/// Publish the rollback ([`RolledBack`]) on
/// [`weir_edge::nats::subjects::Subjects::canary_rolled_back`].
async fn announce(
    canary: &Canary,
    reason: String,
    window: WindowCounts,
    reference: Option<WindowCounts>,
) {
    let event = RolledBack {
        app: canary.app.clone(),
        node: canary.node,
        candidate: canary.candidate.clone(),
        stable: canary.stable.clone(),
        reason,
        window,
        reference,
        at_ms: unix_ms(),
    };
    let subject = canary
        .transport
        .subjects()
        .canary_rolled_back(&canary.app, canary.node);
    let payload = serde_json::to_vec(&event).unwrap_or_default();
    if let Err(e) = canary
        .transport
        .client()
        .publish(subject, payload.into())
        .await
    {
        tracing::warn!(app = %canary.app, error = %e, "canary rollback not announced");
    }
}

/// On a reference node (the stable component, a live canary elsewhere):
/// publish this node's window every [`REPORT_INTERVAL`]. Runs until
/// dropped.
pub async fn report(canary: Canary) {
    let mut status = canary.status("reference");
    let subject = canary
        .transport
        .subjects()
        .canary_reference(&canary.app, canary.node);
    let mut window = Window::new(Duration::from_secs(canary.config.window_s));
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let counts = window.push(Instant::now(), canary.stats.window_counts());
        status.window = counts;
        canary.stats.set_canary(Some(status.clone()));
        let report = Report {
            node: canary.node,
            stable: canary.stable.clone(),
            window: counts,
        };
        let payload = serde_json::to_vec(&report).unwrap_or_default();
        if let Err(e) = canary
            .transport
            .client()
            .publish(subject.clone(), payload.into())
            .await
        {
            tracing::debug!(app = %canary.app, error = %e, "canary reference report not published");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CanaryConfig {
        toml::from_str("component = \"c.wasm\"\nnodes = [1]").unwrap()
    }

    fn counts(events: u64, failed: u64, rejected: u64, effects: u64) -> WindowCounts {
        WindowCounts {
            events,
            failed,
            rejected,
            effects,
        }
    }

    #[test]
    fn rails_trip_on_traps_rejects_and_effects_relative_to_the_reference() {
        let c = config();
        assert_eq!(
            verdict(&c, counts(19, 19, 0, 0), None),
            None,
            "under min_events"
        );
        let r = verdict(&c, counts(100, 30, 0, 0), None).unwrap();
        assert!(
            r.starts_with("30 of 100 events failed (30.0%; no reference"),
            "{r}"
        );
        assert_eq!(
            verdict(&c, counts(100, 5, 0, 0), None),
            None,
            "5% is allowed"
        );
        assert_eq!(
            verdict(&c, counts(100, 30, 0, 0), Some(counts(100, 28, 0, 0))),
            None,
            "the stable version fails as often"
        );
        let r = verdict(&c, counts(100, 0, 20, 0), Some(counts(100, 0, 10, 0))).unwrap();
        assert!(r.contains("rejected (20.0%; stable 10.0%"), "{r}");
        let r = verdict(&c, counts(100, 0, 0, 300), Some(counts(200, 0, 0, 200))).unwrap();
        assert!(r.contains("3.000 per event; stable 1.000"), "{r}");
        assert_eq!(
            verdict(&c, counts(100, 0, 0, 200), Some(counts(200, 0, 0, 200))),
            None,
            "twice the stable rate is allowed"
        );
        assert_eq!(
            verdict(&c, counts(100, 0, 0, 1), Some(counts(100, 0, 0, 0))),
            None,
            "one effect over a stable version that asks for none: within the slack"
        );
        assert!(verdict(&c, counts(100, 0, 0, 50), Some(counts(100, 0, 0, 0))).is_some());
        assert_eq!(
            verdict(&c, counts(100, 0, 0, 500), Some(counts(19, 0, 0, 0))),
            None,
            "a reference under min_events is not used"
        );
    }

    #[test]
    fn a_window_counts_only_its_span() {
        let start = Instant::now();
        let mut w = Window::new(Duration::from_secs(10));
        let at = |s| start + Duration::from_secs(s);
        assert_eq!(w.push(at(0), counts(5, 0, 0, 0)), counts(0, 0, 0, 0));
        assert_eq!(w.push(at(5), counts(8, 1, 0, 0)), counts(3, 1, 0, 0));
        assert_eq!(w.push(at(10), counts(10, 1, 0, 0)), counts(5, 1, 0, 0));
        assert_eq!(
            w.push(at(16), counts(20, 1, 0, 0)),
            counts(10, 0, 0, 0),
            "0 s dropped"
        );
        let mut long = Window::new(Duration::from_secs(86_400));
        for s in 0..10_000 {
            long.push(at(s), counts(s, 0, 0, 0));
        }
        assert!(
            long.samples.len() <= MAX_WINDOW_SAMPLES + 1,
            "{}",
            long.samples.len()
        );
    }
}
