//! The bridge's counters, behind its `/stats` (JSON, [`BridgeSnapshot`])
//! and `/metrics` (OpenMetrics text, `weir_bridge_*{node="<id>"}`).
//!
//! Every message received is, at any moment, exactly one of: published,
//! a duplicate, dead-lettered, folded into another (`folded - folds`),
//! dropped, buffered, or in an open fold group or in flight.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;

/// Buckets of the lag histogram: 0.5 ms doubling, 20 of them (to 262 s).
pub const LAG_BUCKETS: (f64, f64, u16) = (0.000_5, 2.0, 20);

/// The counters (cheap clones share them).
#[derive(Debug, Clone)]
pub struct BridgeStats {
    /// Messages received from Redis on the event channels.
    pub received: Counter,
    /// Events JetStream stored.
    pub published: Counter,
    /// Events JetStream already had: another bridge stored them first, or
    /// an earlier attempt of this one whose acknowledgement was lost (NATS
    /// went away). Nothing new stored.
    pub duplicates: Counter,
    /// Events folded into `domains` lists (`fold_domains_ms`).
    pub folded: Counter,
    /// Events those folds became.
    pub folds: Counter,
    /// Events dropped: the buffer was full (NATS away) or the bridge stopped
    /// before it could store them.
    pub dropped: Counter,
    /// Messages stored in the dead-letter stream (channel of another
    /// shape, or a payload over NATS's `max_payload`).
    pub dead_lettered: Counter,
    /// Failed publish attempts (each retried).
    pub publish_failures: Counter,
    /// Redis subscriptions made (the first and every reconnection).
    pub redis_connects: Counter,
    /// Redis connections lost.
    pub redis_disconnects: Counter,
    /// 1 while subscribed to Redis.
    pub redis_connected: Gauge,
    /// 1 while connected to NATS.
    pub nats_connected: Gauge,
    /// Events waiting in the buffer.
    pub buffered: Gauge,
    /// Receipt → stored, in seconds.
    pub lag: Histogram,
    /// The last event's lag, in milliseconds.
    pub lag_last_ms: Gauge,
    /// The largest lag so far, in milliseconds.
    pub lag_max_ms: Gauge,
}

impl Default for BridgeStats {
    fn default() -> Self {
        let (start, factor, count) = LAG_BUCKETS;
        Self {
            received: Counter::default(),
            published: Counter::default(),
            duplicates: Counter::default(),
            folded: Counter::default(),
            folds: Counter::default(),
            dropped: Counter::default(),
            dead_lettered: Counter::default(),
            publish_failures: Counter::default(),
            redis_connects: Counter::default(),
            redis_disconnects: Counter::default(),
            redis_connected: Gauge::default(),
            nats_connected: Gauge::default(),
            buffered: Gauge::default(),
            lag: Histogram::new(exponential_buckets(start, factor, count)),
            lag_last_ms: Gauge::default(),
            lag_max_ms: Gauge::default(),
        }
    }
}

/// `/stats` of a bridge.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct BridgeSnapshot {
    /// `[node] id`.
    pub node: u32,
    /// Subscribed to Redis now.
    pub redis_connected: bool,
    /// Connected to NATS now.
    pub nats_connected: bool,
    /// See [`BridgeStats`].
    pub received: u64,
    /// See [`BridgeStats`].
    pub published: u64,
    /// See [`BridgeStats`].
    pub duplicates: u64,
    /// See [`BridgeStats`].
    pub folded: u64,
    /// See [`BridgeStats`].
    pub folds: u64,
    /// See [`BridgeStats`].
    pub dropped: u64,
    /// See [`BridgeStats`].
    pub dead_lettered: u64,
    /// See [`BridgeStats`].
    pub publish_failures: u64,
    /// See [`BridgeStats`].
    pub redis_connects: u64,
    /// See [`BridgeStats`].
    pub redis_disconnects: u64,
    /// See [`BridgeStats`].
    pub buffered: u64,
    /// See [`BridgeStats`].
    pub lag_last_ms: u64,
    /// See [`BridgeStats`].
    pub lag_max_ms: u64,
}

impl BridgeStats {
    /// Count one stored event that took `lag` from receipt.
    pub fn stored(&self, duplicate: bool, lag: std::time::Duration) {
        if duplicate {
            self.duplicates.inc();
        } else {
            self.published.inc();
        }
        self.lag.observe(lag.as_secs_f64());
        let ms = lag.as_millis().min(i64::MAX as u128) as i64;
        self.lag_last_ms.set(ms);
        if ms > self.lag_max_ms.get() {
            self.lag_max_ms.set(ms);
        }
    }

    /// The counters now.
    pub fn snapshot(&self, node: u32) -> BridgeSnapshot {
        let g = |g: &Gauge| g.get().max(0) as u64;
        BridgeSnapshot {
            node,
            redis_connected: self.redis_connected.get() == 1,
            nats_connected: self.nats_connected.get() == 1,
            received: self.received.get(),
            published: self.published.get(),
            duplicates: self.duplicates.get(),
            folded: self.folded.get(),
            folds: self.folds.get(),
            dropped: self.dropped.get(),
            dead_lettered: self.dead_lettered.get(),
            publish_failures: self.publish_failures.get(),
            redis_connects: self.redis_connects.get(),
            redis_disconnects: self.redis_disconnects.get(),
            buffered: g(&self.buffered),
            lag_last_ms: g(&self.lag_last_ms),
            lag_max_ms: g(&self.lag_max_ms),
        }
    }

    /// A registry exposing these counters as `weir_bridge_*` with the
    /// label `node`, and the process's trace export counters
    /// (`weir_bridge_trace_spans_{exported,dropped,failed}_total`).
    pub fn registry(&self, node: u32) -> Registry {
        let mut r = Registry::with_prefix_and_labels(
            "weir_bridge",
            [("node".into(), node.to_string().into())].into_iter(),
        );
        let counters = [
            ("received", "Messages received from Redis", &self.received),
            ("published", "Events stored in JetStream", &self.published),
            (
                "duplicates",
                "Events JetStream already had",
                &self.duplicates,
            ),
            ("folded", "Events folded into domains lists", &self.folded),
            ("folds", "Events the folds became", &self.folds),
            (
                "dropped",
                "Events dropped (buffer full, or stopped)",
                &self.dropped,
            ),
            (
                "dead_lettered",
                "Messages dead-lettered",
                &self.dead_lettered,
            ),
            (
                "publish_failures",
                "Failed publish attempts, retried",
                &self.publish_failures,
            ),
            (
                "redis_connects",
                "Redis subscriptions made",
                &self.redis_connects,
            ),
            (
                "redis_disconnects",
                "Redis connections lost",
                &self.redis_disconnects,
            ),
        ];
        for (name, help, c) in counters {
            r.register(name, help, c.clone());
        }
        let gauges = [
            (
                "redis_connected",
                "1 while subscribed to Redis",
                &self.redis_connected,
            ),
            (
                "nats_connected",
                "1 while connected to NATS",
                &self.nats_connected,
            ),
            ("buffered", "Events waiting for NATS", &self.buffered),
            (
                "lag_max_milliseconds",
                "Largest receipt to stored lag",
                &self.lag_max_ms,
            ),
        ];
        for (name, help, g) in gauges {
            r.register(name, help, g.clone());
        }
        r.register("lag_seconds", "Receipt to stored", self.lag.clone());
        // The process's trace export (weir_edge::telemetry), read now.
        let traces = weir_edge::telemetry::stats();
        for (name, help, value) in [
            (
                "trace_spans_exported",
                "Spans the OTLP collector accepted",
                traces.exported,
            ),
            (
                "trace_spans_dropped",
                "Spans dropped: trace export queue full",
                traces.dropped,
            ),
            (
                "trace_spans_failed",
                "Spans lost with a failed OTLP export",
                traces.failed,
            ),
        ] {
            r.register(
                name,
                help,
                prometheus_client::metrics::counter::ConstCounter::new(value),
            );
        }
        r
    }

    /// OpenMetrics text of [`BridgeStats::registry`].
    pub fn prometheus(&self, node: u32) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry(node));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_and_metrics() {
        let s = BridgeStats::default();
        s.received.inc_by(3);
        s.stored(false, std::time::Duration::from_millis(4));
        s.stored(true, std::time::Duration::from_millis(2));
        let snap = s.snapshot(2);
        assert_eq!((snap.received, snap.published, snap.duplicates), (3, 1, 1));
        assert_eq!((snap.lag_last_ms, snap.lag_max_ms), (2, 4));
        let text = s.prometheus(2);
        assert!(
            text.contains("weir_bridge_received_total{node=\"2\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("weir_bridge_lag_seconds_count{node=\"2\"} 2"),
            "{text}"
        );
    }
}
