//! Per-app counters behind `/stats` (JSON) and `/metrics` (OpenMetrics
//! text through `prometheus-client`, with the settle latency as a real
//! histogram: `_bucket`, `_sum`, `_count`). Every counter is a relaxed
//! atomic ([`Count`]): updated once per batch, read by the HTTP endpoints.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use serde::Serialize;

/// A monotonic counter or high-water mark: one relaxed atomic.
#[derive(Debug, Default)]
pub struct Count(AtomicU64);

impl Count {
    /// Add `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Raise to at least `value` (a high-water mark).
    pub fn raise(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }

    /// Set to `value` (a gauge such as the consumer lag).
    pub fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Buckets of [`LatencyHistogram`]: upper bounds growing by 5% from 50 µs,
/// the last one unbounded (300 buckets reach past 100 s).
pub const LATENCY_BUCKETS: usize = 300;
/// Upper bound of the first latency bucket: 50 µs.
pub const LATENCY_FIRST_BUCKET_US: f64 = 50.0;
/// Growth of latency bucket bounds: 5% per bucket.
pub const LATENCY_GROWTH: f64 = 1.05;
/// `/metrics` exposes every 14th bucket bound (×1.98 apart: 50 µs, 99 µs,
/// 196 µs, ... 83 s, then `+Inf`, 23 buckets), so counts at each exposed
/// bound are exact and a 1,000-app host stays scrapeable.
pub const EXPOSED_BUCKET_STRIDE: usize = 14;

/// A lock-free latency histogram with log-spaced buckets (5% wide), for
/// publish → settled latency. Quantiles are reported as bucket upper bounds.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS],
    sum_us: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

/// The coarse view of a [`LatencyHistogram`] that `/metrics` exposes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExposedHistogram {
    /// Sum of observations in seconds.
    pub sum_seconds: f64,
    /// Observations.
    pub count: u64,
    /// `(upper bound in seconds, observations in this bucket)`, the last
    /// bound `+Inf` (not cumulative; the encoder accumulates).
    pub buckets: Vec<(f64, u64)>,
}

impl LatencyHistogram {
    fn upper_bound_us(i: usize) -> f64 {
        LATENCY_FIRST_BUCKET_US * LATENCY_GROWTH.powi(i as i32)
    }

    /// Count one observation.
    pub fn record(&self, latency: std::time::Duration) {
        let us = latency.as_secs_f64() * 1e6;
        let i = if us <= LATENCY_FIRST_BUCKET_US {
            0
        } else {
            ((us / LATENCY_FIRST_BUCKET_US).ln() / LATENCY_GROWTH.ln()).ceil() as usize
        };
        self.buckets[i.min(LATENCY_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us as u64, Ordering::Relaxed);
    }

    /// Every [`EXPOSED_BUCKET_STRIDE`]th bucket, the rest merged into them.
    pub fn exposed(&self) -> ExposedHistogram {
        let mut out = ExposedHistogram {
            sum_seconds: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            ..ExposedHistogram::default()
        };
        let mut pending = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Ordering::Relaxed);
            out.count += n;
            pending += n;
            if i == LATENCY_BUCKETS - 1 {
                out.buckets.push((f64::INFINITY, pending));
            } else if i % EXPOSED_BUCKET_STRIDE == 0 {
                out.buckets.push((Self::upper_bound_us(i) / 1e6, pending));
                pending = 0;
            }
        }
        out
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Observations per bucket ([`LATENCY_BUCKETS`] of them), for
    /// quantiles over a window: subtract an earlier copy, then
    /// [`LatencyHistogram::quantiles_of`].
    pub fn counts(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    /// The upper bound of the bucket holding each quantile `q` (0..=1);
    /// zero when empty.
    pub fn quantiles(&self, qs: &[f64]) -> Vec<std::time::Duration> {
        Self::quantiles_of(&self.counts(), qs)
    }

    /// [`LatencyHistogram::quantiles`] of bucket `counts` (as
    /// [`LatencyHistogram::counts`] returns them, or a difference of two).
    pub fn quantiles_of(counts: &[u64], qs: &[f64]) -> Vec<std::time::Duration> {
        let total: u64 = counts.iter().sum();
        let bound = |i: usize| std::time::Duration::from_secs_f64(Self::upper_bound_us(i) / 1e6);
        qs.iter()
            .map(|q| {
                if total == 0 {
                    return std::time::Duration::ZERO;
                }
                let rank = ((total as f64 * q).ceil() as u64).max(1);
                let mut seen = 0;
                for (i, c) in counts.iter().enumerate() {
                    seen += c;
                    if seen >= rank {
                        return bound(i);
                    }
                }
                bound(counts.len().saturating_sub(1))
            })
            .collect()
    }
}

/// Counters of one app on this node.
#[derive(Debug, Default)]
pub struct AppStats {
    /// Events delivered to the app's consumer.
    pub received: Count,
    /// Events acked without invoking (pre-filter said irrelevant).
    pub skipped: Count,
    /// Of `skipped`: events a rule named but refused only for their source
    /// (see [`crate::filter::Verdict::UntrustedSource`]).
    pub skipped_source: Count,
    /// Events handed to the handler.
    pub invoked_events: Count,
    /// Handler invocations.
    pub batches: Count,
    /// Outcomes: done.
    pub outcome_done: Count,
    /// Outcomes: retry.
    pub outcome_retry: Count,
    /// Outcomes: reject.
    pub outcome_reject: Count,
    /// Events dead-lettered (rejected, malformed, or out of deliveries).
    pub dead_letters: Count,
    /// Of `dead_letters`: events that arrived after their last allowed
    /// delivery (`delivery.max_deliver`) because earlier deliveries were
    /// never settled (a host stopped or killed mid-batch, an ack lost).
    pub dead_letters_out_of_deliveries: Count,
    /// Dead letters JetStream refused to store (full or unreachable
    /// dead-letter stream): the event stays unacknowledged and is retried.
    pub dead_letter_failures: Count,
    /// Redeliveries weir did not ask for: an event that came back (an
    /// `attempt` above 1) without this process having nak'd it. Without
    /// faults this is 0; a kill, a lost ack or an ack wait shorter than a
    /// batch raises it.
    pub redeliveries_unrequested: Count,
    /// Redeliveries of any kind: deliveries with an `attempt` above 1,
    /// asked for by a nak or not. `received - redelivered` is the number of
    /// distinct events the app was delivered.
    pub redelivered: Count,
    /// Events delivered ahead of their batch and handed back (nak without
    /// delay) when the host stopped.
    pub released: Count,
    /// Effects executed.
    pub effects_executed: Count,
    /// Effects collapsed (identical within a batch, or already executed for
    /// the same events).
    pub effects_collapsed: Count,
    /// Effects refused (not granted).
    pub effects_refused: Count,
    /// Effects whose execution failed.
    pub effects_failed: Count,
    /// Executed effects whose record the store refused (unreachable,
    /// full, or not permitted: the permissions do not cover the bucket).
    /// The effect ran; without its record a redelivery of the same events
    /// after a host restart may run it again. 0 on a healthy host.
    pub effect_records_failed: Count,
    /// Effects of this app pending now, waiting for their debounce window
    /// to close (`[app.effects] debounce_ms`).
    pub effects_pending: Count,
    /// Effect requests that joined a pending effect's window instead of
    /// running again.
    pub effects_debounced: Count,
    /// Effects over a rate limit deferred to its next window.
    pub effects_deferred: Count,
    /// Effects over a rate limit refused (`over = "refuse"`).
    pub effects_limited: Count,
    /// `weir:handler/kv` calls.
    pub kv_calls: Count,
    /// Of those, calls that returned an error.
    pub kv_errors: Count,
    /// Highest fuel used by one batch.
    pub fuel_high_water: Count,
    /// Highest linear memory of one instance, in bytes.
    pub memory_high_water: Count,
    /// Events not yet delivered to the consumer (last reading).
    pub consumer_lag: Count,
    /// Times the app's one-replica consumer was created again on a live
    /// server after its own stopped answering.
    pub consumer_failovers: Count,
    /// Times the app was quarantined (see [`crate::pipeline`]).
    pub quarantines: Count,
    /// When the current batch's invocation started, in ms since the Unix
    /// epoch; 0 while none runs (read by `/ready`).
    pub batch_started_ms: Count,
    /// The current batch deadline of the app, in ms (read by `/ready`).
    pub batch_deadline_ms: Count,
    /// When fetching started failing without a success since, in ms since
    /// the Unix epoch; 0 while fetches succeed (read by `/ready`).
    pub fetch_failing_since_ms: Count,
    /// Events whose invocation failed alone (trapped, hit a cap or had an
    /// effect fail, after their batch failed or in a batch of one):
    /// retried or dead-lettered.
    pub failed_events: Count,
    /// Effects the handler asked for (distinct within a batch, as its
    /// answer holds them), before grants, coalescing with earlier batches
    /// and debounce (what canary guard rails compare).
    pub effects_requested: Count,
    /// Times a canary candidate was rolled back on this node
    /// ([`crate::canary`]).
    pub canary_rollbacks: Count,
    /// Shadow run ([`crate::canary::shadow`]): live batches the candidate
    /// also ran on, effects intercepted.
    pub shadow_batches: Count,
    /// Shadow run: the events of those batches.
    pub shadow_events: Count,
    /// Shadow run: events whose decision or whose batch's effects differ
    /// between the live version and the candidate (as `weir replay`
    /// counts them).
    pub shadow_changed_events: Count,
    /// Shadow run: events the candidate failed on (trap or cap, alone).
    pub shadow_failed_events: Count,
    /// Shadow run: live batches the candidate did not run because its
    /// queue was full ([`crate::canary::shadow::SHADOW_QUEUE_BATCHES`]).
    pub shadow_skipped_batches: Count,
    /// The app's canary, if its `[app.canary]` concerns this node.
    canary: Mutex<Option<CanaryStatus>>,
    /// Failed batches by [`crate::InvokeError::kind`].
    traps: Mutex<BTreeMap<&'static str, u64>>,
    /// Effects executed (or logged, with `executor = "log"`) by effect,
    /// e.g. `restart:dovecot.service`.
    effects: Mutex<BTreeMap<String, u64>>,
    /// Running or quarantined, and the last batch failure.
    state: Mutex<AppState>,
    /// Time from the stream's publish timestamp to the event being acked
    /// (done or skipped).
    pub settle_latency: LatencyHistogram,
}

/// Whether an app's pipeline pulls events, as `/stats` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AppState {
    /// Pulling and handling events.
    #[default]
    Running,
    /// Paused after failed batches in a row: no pulls until `until_ms`
    /// (ms since the Unix epoch), then one probe batch.
    Quarantined {
        /// When the next probe batch is fetched, ms since the Unix epoch.
        until_ms: u64,
        /// The failure of the last batch.
        last_error: String,
    },
}

/// What one version decided over a window, as canary guard rails read
/// it ([`AppStats::window_counts`] at two instants, subtracted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct WindowCounts {
    /// Events decided: done, retry, reject, or failed alone (a failed
    /// event counts once per delivery that failed).
    pub events: u64,
    /// Of `events`, those whose invocation failed alone (trap, cap or
    /// effect failure).
    pub failed: u64,
    /// Of `events`, those the handler rejected.
    pub rejected: u64,
    /// Effects the handler asked for (distinct within a batch; before
    /// grants and coalescing with earlier batches).
    pub effects: u64,
}

impl WindowCounts {
    /// What was counted after `earlier` (saturating: never below 0).
    pub fn since(self, earlier: Self) -> Self {
        Self {
            events: self.events.saturating_sub(earlier.events),
            failed: self.failed.saturating_sub(earlier.failed),
            rejected: self.rejected.saturating_sub(earlier.rejected),
            effects: self.effects.saturating_sub(earlier.effects),
        }
    }

    /// Both counts together (several nodes' windows).
    pub fn plus(self, other: Self) -> Self {
        Self {
            events: self.events.saturating_add(other.events),
            failed: self.failed.saturating_add(other.failed),
            rejected: self.rejected.saturating_add(other.rejected),
            effects: self.effects.saturating_add(other.effects),
        }
    }
}

/// Where an app's canary stands on this node, as `/stats` reports it
/// under `canary` ([`crate::canary`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CanaryStatus {
    /// `"live"` (the candidate handles events on its nodes) or `"shadow"`
    /// (it runs beside the stable version, effects intercepted).
    pub mode: &'static str,
    /// `"trial"`: the candidate handles this node's events, guard rails
    /// watched; `"rolled_back"`: a guard rail tripped, the stable
    /// component runs again until the configuration changes;
    /// `"reference"`: this node runs the stable component and reports
    /// its window to the candidate's nodes; `"shadow"`: the candidate runs
    /// beside the stable component here.
    pub state: &'static str,
    /// The candidate component's SHA-256, first 12 hex digits.
    pub candidate: String,
    /// When this state began, ms since the Unix epoch.
    pub since_ms: u64,
    /// The guard rails' window, seconds.
    pub window_s: u64,
    /// This node's window (the candidate's on trial, the stable's on a
    /// reference node); the last one before a rollback.
    pub window: WindowCounts,
    /// The stable version's window on the reference nodes heard from
    /// (none yet: `null`).
    pub reference: Option<WindowCounts>,
    /// Reference nodes heard from within [`crate::canary::REFERENCE_STALE`].
    pub reference_nodes: u32,
    /// Why the candidate was rolled back.
    pub reason: Option<String>,
}

impl CanaryStatus {
    /// A status of `state` since now, with empty windows and no reason
    /// (`candidate`: its full digest, shortened here).
    pub fn new(mode: &'static str, state: &'static str, candidate: &str, window_s: u64) -> Self {
        Self {
            mode,
            state,
            candidate: candidate.chars().take(12).collect(),
            since_ms: unix_ms(),
            window_s,
            window: WindowCounts::default(),
            reference: None,
            reference_nodes: 0,
            reason: None,
        }
    }
}

/// Now, in ms since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A point-in-time copy of [`AppStats`], as `/stats` serves it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AppStatsSnapshot {
    /// App name.
    pub app: String,
    /// See [`AppStats::received`].
    pub received: u64,
    /// See [`AppStats::skipped`].
    pub skipped: u64,
    /// See [`AppStats::skipped_source`].
    pub skipped_source: u64,
    /// See [`AppStats::invoked_events`].
    pub invoked_events: u64,
    /// See [`AppStats::batches`].
    pub batches: u64,
    /// Outcomes by kind: `done`, `retry`, `reject`.
    pub outcomes: BTreeMap<&'static str, u64>,
    /// See [`AppStats::dead_letters`].
    pub dead_letters: u64,
    /// See [`AppStats::dead_letters_out_of_deliveries`].
    pub dead_letters_out_of_deliveries: u64,
    /// See [`AppStats::dead_letter_failures`].
    pub dead_letter_failures: u64,
    /// See [`AppStats::redeliveries_unrequested`].
    pub redeliveries_unrequested: u64,
    /// See [`AppStats::redelivered`].
    pub redelivered: u64,
    /// See [`AppStats::released`].
    pub released: u64,
    /// See [`AppStats::effects_executed`].
    pub effects_executed: u64,
    /// See [`AppStats::effects_collapsed`].
    pub effects_collapsed: u64,
    /// See [`AppStats::effects_refused`].
    pub effects_refused: u64,
    /// See [`AppStats::effects_failed`].
    pub effects_failed: u64,
    /// See [`AppStats::effect_records_failed`].
    pub effect_records_failed: u64,
    /// See [`AppStats::effects_pending`].
    pub effects_pending: u64,
    /// See [`AppStats::effects_debounced`].
    pub effects_debounced: u64,
    /// See [`AppStats::effects_deferred`].
    pub effects_deferred: u64,
    /// See [`AppStats::effects_limited`].
    pub effects_limited: u64,
    /// See [`AppStats::kv_calls`].
    pub kv_calls: u64,
    /// See [`AppStats::kv_errors`].
    pub kv_errors: u64,
    /// Failed batches by kind.
    pub traps: BTreeMap<&'static str, u64>,
    /// Effects executed (or logged, with `executor = "log"`: what shadow
    /// mode reports) by effect, e.g. `{"restart:dovecot.service": 2}`.
    pub effects: BTreeMap<String, u64>,
    /// See [`AppStats::fuel_high_water`].
    pub fuel_high_water: u64,
    /// See [`AppStats::memory_high_water`].
    pub memory_high_water: u64,
    /// See [`AppStats::consumer_lag`].
    pub consumer_lag: u64,
    /// See [`AppStats::consumer_failovers`].
    pub consumer_failovers: u64,
    /// Running or quarantined (flattened: `"state": "running"` or
    /// `"state": "quarantined", "until_ms": .., "last_error": ".."`).
    #[serde(flatten)]
    pub state: AppState,
    /// See [`AppStats::quarantines`].
    pub quarantines: u64,
    /// See [`AppStats::failed_events`].
    pub failed_events: u64,
    /// See [`AppStats::effects_requested`].
    pub effects_requested: u64,
    /// See [`AppStats::canary_rollbacks`].
    pub canary_rollbacks: u64,
    /// See [`AppStats::shadow_batches`].
    pub shadow_batches: u64,
    /// See [`AppStats::shadow_events`].
    pub shadow_events: u64,
    /// See [`AppStats::shadow_changed_events`].
    pub shadow_changed_events: u64,
    /// See [`AppStats::shadow_failed_events`].
    pub shadow_failed_events: u64,
    /// See [`AppStats::shadow_skipped_batches`].
    pub shadow_skipped_batches: u64,
    /// The app's canary on this node ([`CanaryStatus`]); absent without
    /// one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
    /// Publish → acked latency, median, in ms (bucket upper bound).
    pub settle_latency_p50_ms: f64,
    /// Publish → acked latency, 99th percentile, in ms (bucket upper bound).
    pub settle_latency_p99_ms: f64,
    /// Publish → acked latency as `/metrics` exposes it.
    #[serde(skip)]
    pub settle_latency: ExposedHistogram,
}

fn get(c: &Count) -> u64 {
    c.get()
}

impl AppStats {
    /// Count one failed batch of `kind`.
    pub fn trap(&self, kind: &'static str) {
        *self
            .traps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(kind)
            .or_default() += 1;
    }

    /// Count one executed (or logged) `effect` (its display form, e.g.
    /// `restart:dovecot.service`): one more in [`AppStats::effects_executed`]
    /// and in the snapshot's `effects`.
    pub fn effect_executed(&self, effect: &str) {
        self.effects_executed.add(1);
        *self
            .effects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(effect.to_owned())
            .or_default() += 1;
    }

    /// Set the app's state (see [`AppState`]).
    pub fn set_state(&self, state: AppState) {
        *self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = state;
    }

    /// The app's state.
    pub fn state(&self) -> AppState {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Set or clear the app's canary status.
    pub fn set_canary(&self, status: Option<CanaryStatus>) {
        *self
            .canary
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = status;
    }

    /// The app's canary status.
    pub fn canary(&self) -> Option<CanaryStatus> {
        self.canary
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The decisions counted so far, for a window ([`WindowCounts`]).
    pub fn window_counts(&self) -> WindowCounts {
        let failed = get(&self.failed_events);
        let rejected = get(&self.outcome_reject);
        WindowCounts {
            events: get(&self.outcome_done) + get(&self.outcome_retry) + rejected + failed,
            failed,
            rejected,
            effects: get(&self.effects_requested),
        }
    }

    /// A snapshot for app `app`.
    pub fn snapshot(&self, app: &str) -> AppStatsSnapshot {
        AppStatsSnapshot {
            app: app.to_owned(),
            received: get(&self.received),
            skipped: get(&self.skipped),
            skipped_source: get(&self.skipped_source),
            invoked_events: get(&self.invoked_events),
            batches: get(&self.batches),
            outcomes: [
                ("done", get(&self.outcome_done)),
                ("retry", get(&self.outcome_retry)),
                ("reject", get(&self.outcome_reject)),
            ]
            .into_iter()
            .collect(),
            dead_letters: get(&self.dead_letters),
            dead_letters_out_of_deliveries: get(&self.dead_letters_out_of_deliveries),
            dead_letter_failures: get(&self.dead_letter_failures),
            redeliveries_unrequested: get(&self.redeliveries_unrequested),
            redelivered: get(&self.redelivered),
            released: get(&self.released),
            effects_executed: get(&self.effects_executed),
            effects_collapsed: get(&self.effects_collapsed),
            effects_refused: get(&self.effects_refused),
            effects_failed: get(&self.effects_failed),
            effect_records_failed: get(&self.effect_records_failed),
            effects_pending: get(&self.effects_pending),
            effects_debounced: get(&self.effects_debounced),
            effects_deferred: get(&self.effects_deferred),
            effects_limited: get(&self.effects_limited),
            kv_calls: get(&self.kv_calls),
            kv_errors: get(&self.kv_errors),
            traps: self
                .traps
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            effects: self
                .effects
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            fuel_high_water: get(&self.fuel_high_water),
            memory_high_water: get(&self.memory_high_water),
            consumer_lag: get(&self.consumer_lag),
            consumer_failovers: get(&self.consumer_failovers),
            state: self.state(),
            quarantines: get(&self.quarantines),
            failed_events: get(&self.failed_events),
            effects_requested: get(&self.effects_requested),
            canary_rollbacks: get(&self.canary_rollbacks),
            shadow_batches: get(&self.shadow_batches),
            shadow_events: get(&self.shadow_events),
            shadow_changed_events: get(&self.shadow_changed_events),
            shadow_failed_events: get(&self.shadow_failed_events),
            shadow_skipped_batches: get(&self.shadow_skipped_batches),
            canary: self.canary(),
            settle_latency_p50_ms: 0.0,
            settle_latency_p99_ms: 0.0,
            settle_latency: ExposedHistogram::default(),
        }
        .with_latency(&self.settle_latency)
    }
}

impl AppStatsSnapshot {
    fn with_latency(mut self, h: &LatencyHistogram) -> Self {
        let q = h.quantiles(&[0.5, 0.99]);
        self.settle_latency_p50_ms = q[0].as_secs_f64() * 1e3;
        self.settle_latency_p99_ms = q[1].as_secs_f64() * 1e3;
        self.settle_latency = h.exposed();
        self
    }
}

/// The content type of [`prometheus`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Field = fn(&AppStatsSnapshot) -> u64;

/// Every per-app counter and gauge `/metrics` exposes: name (counters get
/// `_total`), type, help, value.
const FAMILIES: [(&str, MetricType, &str, Field); 38] = [
    (
        "weir_events_received",
        MetricType::Counter,
        "Events delivered to the app's consumer.",
        |s| s.received,
    ),
    (
        "weir_events_skipped",
        MetricType::Counter,
        "Events acked by the pre-filter without invoking.",
        |s| s.skipped,
    ),
    (
        "weir_events_skipped_source",
        MetricType::Counter,
        "Events skipped because their source is not trusted for their name.",
        |s| s.skipped_source,
    ),
    (
        "weir_events_invoked",
        MetricType::Counter,
        "Events handed to the handler.",
        |s| s.invoked_events,
    ),
    (
        "weir_batches",
        MetricType::Counter,
        "Handler invocations.",
        |s| s.batches,
    ),
    (
        "weir_dead_letters",
        MetricType::Counter,
        "Events dead-lettered.",
        |s| s.dead_letters,
    ),
    (
        "weir_dead_letters_out_of_deliveries",
        MetricType::Counter,
        "Events dead-lettered because earlier deliveries were never settled.",
        |s| s.dead_letters_out_of_deliveries,
    ),
    (
        "weir_dead_letter_failures",
        MetricType::Counter,
        "Dead letters the dead-letter stream refused (the event is retried).",
        |s| s.dead_letter_failures,
    ),
    (
        "weir_redeliveries_unrequested",
        MetricType::Counter,
        "Redeliveries weir did not ask for (0 without faults).",
        |s| s.redeliveries_unrequested,
    ),
    (
        "weir_redeliveries",
        MetricType::Counter,
        "Deliveries with an attempt above 1, asked for or not.",
        |s| s.redelivered,
    ),
    (
        "weir_events_released",
        MetricType::Counter,
        "Events delivered ahead of their batch and handed back at shutdown.",
        |s| s.released,
    ),
    (
        "weir_effects_executed",
        MetricType::Counter,
        "Effects executed.",
        |s| s.effects_executed,
    ),
    (
        "weir_effects_collapsed",
        MetricType::Counter,
        "Effects collapsed as duplicates.",
        |s| s.effects_collapsed,
    ),
    (
        "weir_effects_refused",
        MetricType::Counter,
        "Effects refused for lack of a grant.",
        |s| s.effects_refused,
    ),
    (
        "weir_effects_failed",
        MetricType::Counter,
        "Effects whose execution failed.",
        |s| s.effects_failed,
    ),
    (
        "weir_effect_records_failed",
        MetricType::Counter,
        "Executed effects whose record the store refused (0 on a healthy host).",
        |s| s.effect_records_failed,
    ),
    (
        "weir_effects_pending",
        MetricType::Gauge,
        "Effects waiting for their debounce window to close.",
        |s| s.effects_pending,
    ),
    (
        "weir_effects_debounced",
        MetricType::Counter,
        "Effect requests that joined a pending effect's window.",
        |s| s.effects_debounced,
    ),
    (
        "weir_effects_deferred",
        MetricType::Counter,
        "Effects over a rate limit deferred to its next window.",
        |s| s.effects_deferred,
    ),
    (
        "weir_effects_limited",
        MetricType::Counter,
        "Effects over a rate limit refused.",
        |s| s.effects_limited,
    ),
    (
        "weir_kv_calls",
        MetricType::Counter,
        "Key-value calls of the app's handlers.",
        |s| s.kv_calls,
    ),
    (
        "weir_kv_errors",
        MetricType::Counter,
        "Key-value calls that returned an error.",
        |s| s.kv_errors,
    ),
    (
        "weir_fuel_high_water",
        MetricType::Gauge,
        "Most fuel used by one batch.",
        |s| s.fuel_high_water,
    ),
    (
        "weir_memory_high_water_bytes",
        MetricType::Gauge,
        "Most linear memory of one instance.",
        |s| s.memory_high_water,
    ),
    (
        "weir_consumer_lag",
        MetricType::Gauge,
        "Events not yet delivered to the app's consumer.",
        |s| s.consumer_lag,
    ),
    (
        "weir_consumer_failovers",
        MetricType::Counter,
        "Times the app's one-replica consumer was created again on a live server.",
        |s| s.consumer_failovers,
    ),
    (
        "weir_quarantines",
        MetricType::Counter,
        "Times the app was quarantined after failed batches in a row.",
        |s| s.quarantines,
    ),
    (
        "weir_app_quarantined",
        MetricType::Gauge,
        "1 while the app is quarantined, else 0.",
        |s| u64::from(s.state != AppState::Running),
    ),
    (
        "weir_failed_events",
        MetricType::Counter,
        "Events whose invocation failed alone (trap or cap).",
        |s| s.failed_events,
    ),
    (
        "weir_effects_requested",
        MetricType::Counter,
        "Effects handlers asked for (distinct within a batch), before grants.",
        |s| s.effects_requested,
    ),
    (
        "weir_canary_rollbacks",
        MetricType::Counter,
        "Times the app's canary candidate was rolled back on this node.",
        |s| s.canary_rollbacks,
    ),
    (
        "weir_canary_trial",
        MetricType::Gauge,
        "1 while the app's canary candidate handles this node's events, else 0.",
        |s| u64::from(s.canary.as_ref().is_some_and(|c| c.state == "trial")),
    ),
    (
        "weir_shadow_batches",
        MetricType::Counter,
        "Live batches the shadow candidate also ran on.",
        |s| s.shadow_batches,
    ),
    (
        "weir_shadow_events",
        MetricType::Counter,
        "Events of the batches the shadow candidate ran on.",
        |s| s.shadow_events,
    ),
    (
        "weir_shadow_changed_events",
        MetricType::Counter,
        "Events the shadow candidate decided differently (decision or batch effects).",
        |s| s.shadow_changed_events,
    ),
    (
        "weir_shadow_failed_events",
        MetricType::Counter,
        "Events the shadow candidate failed on (trap or cap).",
        |s| s.shadow_failed_events,
    ),
    (
        "weir_shadow_skipped_batches",
        MetricType::Counter,
        "Live batches the shadow candidate skipped because its queue was full.",
        |s| s.shadow_skipped_batches,
    ),
    (
        "weir_apps",
        MetricType::Gauge,
        "Apps on this node (1 per app).",
        |_| 1,
    ),
];

/// The metric families of one scrape, as a `prometheus-client` collector.
#[derive(Debug)]
struct Scrape {
    node: String,
    apps: Vec<AppStatsSnapshot>,
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (name, kind, help, field) in FAMILIES {
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for s in &self.apps {
                let labels = [("node", self.node.as_str()), ("app", s.app.as_str())];
                let mut metric = family.encode_family(&labels)?;
                match kind {
                    MetricType::Counter => {
                        metric.encode_counter::<NoLabelSet, _, u64>(&field(s), None)?
                    }
                    _ => metric.encode_gauge(&field(s))?,
                }
            }
        }
        for (name, help, pick) in [
            (
                "weir_outcomes",
                "Handler outcomes by kind.",
                (|s| &s.outcomes) as fn(&AppStatsSnapshot) -> &BTreeMap<&'static str, u64>,
            ),
            ("weir_traps", "Failed batches by kind.", |s| &s.traps),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for s in &self.apps {
                for (kind, n) in pick(s) {
                    let labels = [
                        ("node", self.node.as_str()),
                        ("app", s.app.as_str()),
                        ("kind", kind),
                    ];
                    family
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(n, None)?;
                }
            }
        }
        encode_trace_export(&mut encoder, &self.node)?;
        let mut family = encoder.encode_descriptor(
            "weir_settle_latency_seconds",
            "Time from the stream's publish timestamp to the event being acked (done or skipped).",
            None,
            MetricType::Histogram,
        )?;
        for s in &self.apps {
            let labels = [("node", self.node.as_str()), ("app", s.app.as_str())];
            let h = &s.settle_latency;
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)?;
        }
        Ok(())
    }
}

/// The process's trace export counters
/// ([`weir_edge::telemetry::stats`]), labelled by `node`:
/// `weir_trace_spans_exported_total`, `weir_trace_spans_dropped_total`
/// (the export queue was full) and `weir_trace_spans_failed_total` (lost
/// with a failed export request); all 0 when traces are not exported.
/// Shared with the bridge's `/metrics`.
///
/// # Errors
///
/// The encoder's (writing to a `String` does not fail).
pub fn encode_trace_export(
    encoder: &mut DescriptorEncoder<'_>,
    node: &str,
) -> Result<(), std::fmt::Error> {
    let stats = weir_edge::telemetry::stats();
    for (name, help, value) in [
        (
            "weir_trace_spans_exported",
            "Spans the OTLP collector accepted.",
            stats.exported,
        ),
        (
            "weir_trace_spans_dropped",
            "Spans dropped because the trace export queue was full (collector down or slow).",
            stats.dropped,
        ),
        (
            "weir_trace_spans_failed",
            "Spans lost with an OTLP export request that failed after its retries.",
            stats.failed,
        ),
    ] {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        family
            .encode_family(&[("node", node)])?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

/// OpenMetrics text ([`OPENMETRICS_CONTENT_TYPE`]) of `snapshots`, encoded by
/// `prometheus-client`: one family per counter or gauge labelled by `node`
/// and `app` (and `kind` for outcomes and traps), and the settle latency as
/// a histogram in seconds.
pub fn prometheus(node: u32, snapshots: &[AppStatsSnapshot]) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(Scrape {
        node: node.to_string(),
        apps: snapshots.to_vec(),
    }));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// Every app's name and counters, in config order (a reload adds and
/// removes entries).
pub(crate) type AppCounters = Arc<RwLock<Vec<(String, Arc<AppStats>)>>>;

/// A snapshot of every app's counters.
pub(crate) fn snapshots(stats: &AppCounters) -> Vec<AppStatsSnapshot> {
    stats
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|(n, s)| s.snapshot(n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_and_prometheus_text() {
        let s = AppStats::default();
        s.received.add(5);
        s.skipped.add(3);
        s.fuel_high_water.raise(10);
        s.fuel_high_water.raise(7);
        s.settle_latency.record(std::time::Duration::from_millis(1));
        s.settle_latency.record(std::time::Duration::from_millis(3));
        s.trap("timeout");
        s.trap("timeout");
        let snap = s.snapshot("mail1");
        assert_eq!(
            (snap.received, snap.skipped, snap.fuel_high_water),
            (5, 3, 10)
        );
        assert_eq!(snap.traps["timeout"], 2);
        let text = prometheus(1, &[snap]);
        assert!(
            text.contains("weir_events_received_total{node=\"1\",app=\"mail1\"} 5\n"),
            "{text}"
        );
        assert!(
            text.contains("weir_traps_total{node=\"1\",app=\"mail1\",kind=\"timeout\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE weir_consumer_lag gauge\n"), "{text}");
        // A real histogram: cumulative buckets, sum and count.
        assert!(
            text.contains("# TYPE weir_settle_latency_seconds histogram\n"),
            "{text}"
        );
        assert!(
            text.contains("weir_settle_latency_seconds_count{node=\"1\",app=\"mail1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "weir_settle_latency_seconds_bucket{le=\"+Inf\",node=\"1\",app=\"mail1\"} 2\n"
            ) || text.contains(
                "weir_settle_latency_seconds_bucket{node=\"1\",app=\"mail1\",le=\"+Inf\"} 2\n"
            ),
            "{text}"
        );
        let buckets: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("weir_settle_latency_seconds_bucket"))
            .collect();
        assert_eq!(buckets.len(), 23, "{buckets:#?}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn latency_quantiles_are_bucket_upper_bounds() {
        use std::time::Duration;
        let h = LatencyHistogram::default();
        assert_eq!(h.quantiles(&[0.5]), vec![Duration::ZERO]);
        for _ in 0..98 {
            h.record(Duration::from_millis(1));
        }
        h.record(Duration::from_millis(20));
        h.record(Duration::from_secs(3600));
        assert_eq!(h.count(), 100);
        let q = h.quantiles(&[0.5, 0.99, 1.0]);
        // Within one 5% bucket above the true value.
        assert!(
            q[0] >= Duration::from_millis(1) && q[0] < Duration::from_micros(1_050),
            "{q:?}"
        );
        assert!(
            q[1] >= Duration::from_millis(20) && q[1] < Duration::from_millis(21),
            "{q:?}"
        );
        assert!(
            q[2] > Duration::from_secs(60),
            "the last bucket is unbounded: {q:?}"
        );
    }
}
