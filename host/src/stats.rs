//! Per-app counters behind `/stats` (JSON) and `/metrics` (Prometheus text).
//! Every counter is a relaxed atomic: updated once per batch, read by the
//! HTTP endpoints.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Buckets of [`LatencyHistogram`]: upper bounds growing by 5% from 50 µs,
/// the last one unbounded (300 buckets reach past 100 s).
const LATENCY_BUCKETS: usize = 300;
const LATENCY_FIRST_BUCKET_US: f64 = 50.0;
const LATENCY_GROWTH: f64 = 1.05;

/// A lock-free latency histogram with log-spaced buckets (5% wide), for
/// publish → settled latency. Quantiles are reported as bucket upper bounds.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
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
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The upper bound of the bucket holding each quantile `q` (0..=1);
    /// zero when empty.
    pub fn quantiles(&self, qs: &[f64]) -> Vec<std::time::Duration> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
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
                        return std::time::Duration::from_secs_f64(Self::upper_bound_us(i) / 1e6);
                    }
                }
                std::time::Duration::from_secs_f64(Self::upper_bound_us(LATENCY_BUCKETS - 1) / 1e6)
            })
            .collect()
    }
}

/// Counters of one app on this node.
#[derive(Debug, Default)]
pub struct AppStats {
    /// Events delivered to the app's consumer.
    pub received: AtomicU64,
    /// Events acked without invoking (pre-filter said irrelevant).
    pub skipped: AtomicU64,
    /// Of `skipped`: events a rule named but refused only for their source
    /// (see [`crate::filter::Verdict::UntrustedSource`]).
    pub skipped_source: AtomicU64,
    /// Events handed to the handler.
    pub invoked_events: AtomicU64,
    /// Handler invocations.
    pub batches: AtomicU64,
    /// Outcomes: done.
    pub outcome_done: AtomicU64,
    /// Outcomes: retry.
    pub outcome_retry: AtomicU64,
    /// Outcomes: reject.
    pub outcome_reject: AtomicU64,
    /// Events dead-lettered (rejected, malformed, or out of deliveries).
    pub dead_letters: AtomicU64,
    /// Of `dead_letters`: events that arrived after their last allowed
    /// delivery (`delivery.max_deliver`) because earlier deliveries were
    /// never settled (a host stopped or killed mid-batch, an ack lost).
    pub dead_letters_out_of_deliveries: AtomicU64,
    /// Dead letters JetStream refused to store (full or unreachable
    /// dead-letter stream): the event stays unacknowledged and is retried.
    pub dead_letter_failures: AtomicU64,
    /// Redeliveries weir did not ask for: an event that came back (an
    /// `attempt` above 1) without this process having nak'd it. Without
    /// faults this is 0; a kill, a lost ack or an ack wait shorter than a
    /// batch raises it.
    pub redeliveries_unrequested: AtomicU64,
    /// Events delivered ahead of their batch and handed back (nak without
    /// delay) when the host stopped.
    pub released: AtomicU64,
    /// Effects executed.
    pub effects_executed: AtomicU64,
    /// Effects collapsed (identical within a batch, or already executed for
    /// the same events).
    pub effects_collapsed: AtomicU64,
    /// Effects refused (not granted).
    pub effects_refused: AtomicU64,
    /// Effects whose execution failed.
    pub effects_failed: AtomicU64,
    /// Highest fuel used by one batch.
    pub fuel_high_water: AtomicU64,
    /// Highest linear memory of one instance, in bytes.
    pub memory_high_water: AtomicU64,
    /// Events not yet delivered to the consumer (last reading).
    pub consumer_lag: AtomicU64,
    /// Failed batches by [`crate::InvokeError::kind`].
    traps: Mutex<BTreeMap<&'static str, u64>>,
    /// Time from the stream's publish timestamp to the event being acked
    /// (done or skipped).
    pub settle_latency: LatencyHistogram,
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
    /// Failed batches by kind.
    pub traps: BTreeMap<&'static str, u64>,
    /// See [`AppStats::fuel_high_water`].
    pub fuel_high_water: u64,
    /// See [`AppStats::memory_high_water`].
    pub memory_high_water: u64,
    /// See [`AppStats::consumer_lag`].
    pub consumer_lag: u64,
    /// Publish → acked latency, median, in ms (bucket upper bound).
    pub settle_latency_p50_ms: f64,
    /// Publish → acked latency, 99th percentile, in ms (bucket upper bound).
    pub settle_latency_p99_ms: f64,
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl AppStats {
    /// Add `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Raise `counter` to at least `value`.
    pub fn high_water(counter: &AtomicU64, value: u64) {
        counter.fetch_max(value, Ordering::Relaxed);
    }

    /// Count one failed batch of `kind`.
    pub fn trap(&self, kind: &'static str) {
        *self
            .traps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(kind)
            .or_default() += 1;
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
            released: get(&self.released),
            effects_executed: get(&self.effects_executed),
            effects_collapsed: get(&self.effects_collapsed),
            effects_refused: get(&self.effects_refused),
            effects_failed: get(&self.effects_failed),
            traps: self
                .traps
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            fuel_high_water: get(&self.fuel_high_water),
            memory_high_water: get(&self.memory_high_water),
            consumer_lag: get(&self.consumer_lag),
            settle_latency_p50_ms: 0.0,
            settle_latency_p99_ms: 0.0,
        }
        .with_latency(&self.settle_latency)
    }
}

impl AppStatsSnapshot {
    fn with_latency(mut self, h: &LatencyHistogram) -> Self {
        let q = h.quantiles(&[0.5, 0.99]);
        self.settle_latency_p50_ms = q[0].as_secs_f64() * 1e3;
        self.settle_latency_p99_ms = q[1].as_secs_f64() * 1e3;
        self
    }
}

/// Prometheus text exposition (format 0.0.4) of `snapshots`: one family per
/// counter, labelled by `app` (and `kind` for outcomes and traps).
pub fn prometheus(node: u32, snapshots: &[AppStatsSnapshot]) -> String {
    type Field = fn(&AppStatsSnapshot) -> u64;
    let families: [(&str, &str, &str, Field); 18] = [
        (
            "weir_events_received_total",
            "counter",
            "Events delivered to the app's consumer.",
            |s| s.received,
        ),
        (
            "weir_events_skipped_total",
            "counter",
            "Events acked by the pre-filter without invoking.",
            |s| s.skipped,
        ),
        (
            "weir_events_skipped_source_total",
            "counter",
            "Events skipped because their source is not trusted for their name.",
            |s| s.skipped_source,
        ),
        (
            "weir_events_invoked_total",
            "counter",
            "Events handed to the handler.",
            |s| s.invoked_events,
        ),
        (
            "weir_batches_total",
            "counter",
            "Handler invocations.",
            |s| s.batches,
        ),
        (
            "weir_dead_letters_total",
            "counter",
            "Events dead-lettered.",
            |s| s.dead_letters,
        ),
        (
            "weir_dead_letters_out_of_deliveries_total",
            "counter",
            "Events dead-lettered because earlier deliveries were never settled.",
            |s| s.dead_letters_out_of_deliveries,
        ),
        (
            "weir_dead_letter_failures_total",
            "counter",
            "Dead letters the dead-letter stream refused (the event is retried).",
            |s| s.dead_letter_failures,
        ),
        (
            "weir_redeliveries_unrequested_total",
            "counter",
            "Redeliveries weir did not ask for (0 without faults).",
            |s| s.redeliveries_unrequested,
        ),
        (
            "weir_events_released_total",
            "counter",
            "Events delivered ahead of their batch and handed back at shutdown.",
            |s| s.released,
        ),
        (
            "weir_effects_executed_total",
            "counter",
            "Effects executed.",
            |s| s.effects_executed,
        ),
        (
            "weir_effects_collapsed_total",
            "counter",
            "Effects collapsed as duplicates.",
            |s| s.effects_collapsed,
        ),
        (
            "weir_effects_refused_total",
            "counter",
            "Effects refused for lack of a grant.",
            |s| s.effects_refused,
        ),
        (
            "weir_effects_failed_total",
            "counter",
            "Effects whose execution failed.",
            |s| s.effects_failed,
        ),
        (
            "weir_fuel_high_water",
            "gauge",
            "Most fuel used by one batch.",
            |s| s.fuel_high_water,
        ),
        (
            "weir_memory_high_water_bytes",
            "gauge",
            "Most linear memory of one instance.",
            |s| s.memory_high_water,
        ),
        (
            "weir_consumer_lag",
            "gauge",
            "Events not yet delivered to the app's consumer.",
            |s| s.consumer_lag,
        ),
        (
            "weir_apps",
            "gauge",
            "Apps on this node (1 per app).",
            |_| 1,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, field) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in snapshots {
            let _ = writeln!(
                out,
                "{name}{{node=\"{node}\",app=\"{}\"}} {}",
                s.app,
                field(s)
            );
        }
    }
    for (name, help, q) in [
        (
            "weir_settle_latency_p50_ms",
            "Publish to acked latency, median (bucket upper bound).",
            0,
        ),
        (
            "weir_settle_latency_p99_ms",
            "Publish to acked latency, 99th percentile (bucket upper bound).",
            1,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for s in snapshots {
            let v = if q == 0 {
                s.settle_latency_p50_ms
            } else {
                s.settle_latency_p99_ms
            };
            let _ = writeln!(out, "{name}{{node=\"{node}\",app=\"{}\"}} {v:.3}", s.app);
        }
    }
    for (name, help, pick) in [
        (
            "weir_outcomes_total",
            "Handler outcomes by kind.",
            (|s| &s.outcomes) as fn(&AppStatsSnapshot) -> &BTreeMap<&'static str, u64>,
        ),
        ("weir_traps_total", "Failed batches by kind.", |s| &s.traps),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for s in snapshots {
            for (kind, n) in pick(s) {
                let _ = writeln!(
                    out,
                    "{name}{{node=\"{node}\",app=\"{}\",kind=\"{kind}\"}} {n}",
                    s.app
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_and_prometheus_text() {
        let s = AppStats::default();
        AppStats::add(&s.received, 5);
        AppStats::add(&s.skipped, 3);
        AppStats::high_water(&s.fuel_high_water, 10);
        AppStats::high_water(&s.fuel_high_water, 7);
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
