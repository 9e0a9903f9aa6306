//! One app's event pipeline on this node:
//!
//! ```text
//! durable pull consumer weir_<node>_<app>     (fetch ≤ max_batch, linger)
//!   -> decode + normalise envelope          (bad subject / malformed / oversized: dead letter + term)
//!   -> pre-filter                           (irrelevant: ack, counted, never instantiated)
//!   -> batch by max_batch_bytes
//!   -> invoke on a fresh instance            (caps from the app's limits)
//!   -> effects: grants, idempotency, execute once (before any ack)
//!   -> outcomes: done -> ack | retry -> nak(delay) | reject -> dead letter + term
//!   -> failed batch (trap, cap, effect failure): its events run alone, so a
//!      poison event does not take its batch-mates down; an event that fails
//!      alone is naked with backoff, and dead-lettered with the error once
//!      max_deliver is reached
//! ```
//!
//! Batches of one app run in order, one at a time; apps run independently.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::app::App;
use crate::bindings::{Event, Outcome};
use crate::config::{Delivery, Grants};
use crate::effects::EffectRunner;
use crate::envelope::{self, EventMeta};
use crate::filter::{Filter, Verdict};
use crate::stats::AppStats;
use crate::transport::{AppConsumer, Inbound, LONG_POLL, Transport, TransportError};

/// Longest retry delay a handler may ask for: 1 hour.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(3_600);

/// Pause after a failed fetch before trying again: 1 s.
pub const FETCH_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Everything one app's worker needs.
#[derive(Debug)]
pub struct AppPipeline {
    /// The deployed handler.
    pub app: App,
    /// The app's relevance rules.
    pub filter: Filter,
    /// The app's consumer.
    pub consumer: AppConsumer,
    /// The NATS edge.
    pub transport: Transport,
    /// The effect executor shared by all apps.
    pub effects: Arc<EffectRunner>,
    /// The app's grants.
    pub grants: Grants,
    /// The app's consumer settings.
    pub delivery: Delivery,
    /// This node's id.
    pub node: u32,
    /// Payload cap, checked before parsing.
    pub max_payload_bytes: usize,
    /// The app's counters.
    pub stats: Arc<AppStats>,
}

fn nak_delay(delivery: &Delivery, attempt: u32) -> Duration {
    let i = (attempt.max(1) - 1) as usize;
    let ms = delivery
        .backoff_ms
        .get(i)
        .or(delivery.backoff_ms.last())
        .copied()
        .unwrap_or(1_000);
    Duration::from_millis(ms)
}

/// The nak delay for a handler's `retry(ms)`, capped at [`MAX_RETRY_DELAY`].
fn retry_delay(ms: u32) -> Duration {
    Duration::from_millis(u64::from(ms)).min(MAX_RETRY_DELAY)
}

impl AppPipeline {
    /// Run until `shutdown` turns true: fetch, process, repeat. A batch in
    /// progress is finished before returning (drain); a fetch in progress is
    /// abandoned (its events are redelivered after the ack wait).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let limits = self.app.limits().clone();
        let linger = Duration::from_millis(limits.linger_ms);
        let mut lag_reading = tokio::time::Instant::now();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let fetched = tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                fetched = self.consumer.next_batch(limits.max_batch, linger, LONG_POLL) => fetched,
            };
            match fetched {
                Ok(batch) if batch.is_empty() => {}
                Ok(batch) => self.process(batch).await,
                Err(e) => {
                    tracing::warn!(app = %self.app.name(), error = %e, "fetch failed; retrying");
                    tokio::time::sleep(FETCH_ERROR_PAUSE).await;
                }
            }
            if lag_reading.elapsed() >= LONG_POLL {
                lag_reading = tokio::time::Instant::now();
                if let Ok(lag) = self.consumer.pending().await {
                    self.stats
                        .consumer_lag
                        .store(lag, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        tracing::info!(app = %self.app.name(), "pipeline stopped");
    }

    /// Process one fetched batch end to end.
    pub async fn process(&self, batch: Vec<Inbound>) {
        let span = tracing::info_span!("batch", app = %self.app.name(), fetched = batch.len());
        let _enter = span.enter();
        AppStats::add(&self.stats.received, batch.len() as u64);
        let mut relevant: Vec<(Inbound, Event)> = Vec::with_capacity(batch.len());
        for inbound in batch {
            let Some((name, source)) = self.transport.subjects().parse_event(&inbound.subject)
            else {
                let reason = format!("not an event subject: {}", inbound.subject);
                self.dead_letter(&inbound, &reason).await;
                continue;
            };
            if inbound.id.len() > envelope::MAX_EVENT_ID_BYTES {
                let reason = format!(
                    "event id of {} bytes exceeds the cap of {} bytes",
                    inbound.id.len(),
                    envelope::MAX_EVENT_ID_BYTES
                );
                self.dead_letter(&inbound, &reason).await;
                continue;
            }
            let meta = EventMeta {
                id: inbound.id.clone(),
                name: name.to_owned(),
                source,
                attempt: inbound.attempt,
                sequence: inbound.sequence,
                published_ms: inbound.published_ms,
            };
            match envelope::event(meta, inbound.payload.to_vec(), self.max_payload_bytes) {
                Err(e) => self.dead_letter(&inbound, &e.to_string()).await,
                Ok(event) => match self.filter.check(&event) {
                    verdict @ (Verdict::Skipped | Verdict::UntrustedSource) => {
                        tracing::trace!(id = %event.id, ?verdict, "skipped by filter");
                        AppStats::add(&self.stats.skipped, 1);
                        if verdict == Verdict::UntrustedSource {
                            AppStats::add(&self.stats.skipped_source, 1);
                        }
                        self.settle(inbound.ack().await);
                        self.stats.settle_latency.record(inbound.age());
                    }
                    Verdict::Relevant(_) => relevant.push((inbound, event)),
                },
            }
        }
        // Split by bytes: one invocation per chunk, in order.
        let max_bytes = self.app.limits().max_batch_bytes;
        let mut chunk: Vec<(Inbound, Event)> = Vec::new();
        let mut bytes = 0usize;
        for item in relevant {
            let size = item.1.payload.len();
            if !chunk.is_empty() && bytes + size > max_bytes {
                self.invoke(std::mem::take(&mut chunk)).await;
                bytes = 0;
            }
            bytes += size;
            chunk.push(item);
        }
        if !chunk.is_empty() {
            self.invoke(chunk).await;
        }
    }

    /// Invoke one batch and settle it. If a batch of several events fails,
    /// each event is run alone, so one poison event does not take its
    /// batch-mates down; only events that fail alone are retried or
    /// dead-lettered.
    async fn invoke(&self, items: Vec<(Inbound, Event)>) {
        let (inbound, events): (Vec<Inbound>, Vec<Event>) = items.into_iter().unzip();
        let events: Arc<[Event]> = events.into();
        let Err(error) = self.run_batch(&inbound, events.clone()).await else {
            return;
        };
        if inbound.len() == 1 {
            return self.fail(&inbound, &error).await;
        }
        tracing::debug!(error = %error, events = inbound.len(), "batch failed; isolating its events");
        for (msg, event) in inbound.iter().zip(events.iter()) {
            let single: Arc<[Event]> = Arc::from([event.clone()]);
            if let Err(error) = self.run_batch(std::slice::from_ref(msg), single).await {
                self.fail(std::slice::from_ref(msg), &error).await;
            }
        }
    }

    /// Invoke the handler on `events`, execute its effects and settle every
    /// outcome. On failure (trap, cap, effect failure) nothing is settled and
    /// the error is returned.
    async fn run_batch(&self, inbound: &[Inbound], events: Arc<[Event]>) -> Result<(), String> {
        tracing::debug!(ids = ?events.iter().map(|e| (&e.id, e.attempt)).collect::<Vec<_>>(), "invoking");
        let invocation = self.app.invoke(events.clone()).await;
        let s = &self.stats;
        AppStats::add(&s.batches, 1);
        AppStats::add(&s.invoked_events, inbound.len() as u64);
        AppStats::high_water(&s.fuel_high_water, invocation.stats.fuel_consumed);
        AppStats::high_water(
            &s.memory_high_water,
            invocation.stats.memory_high_water as u64,
        );
        AppStats::add(
            &s.effects_collapsed,
            invocation.stats.effects_collapsed as u64,
        );
        let handled = match invocation.result {
            Ok(h) => h,
            Err(e) => {
                s.trap(e.kind());
                tracing::warn!(error = %e, "batch failed");
                return Err(e.to_string());
            }
        };
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let report = self
            .effects
            .run(
                self.app.name(),
                &self.grants,
                &handled.effects,
                &ids,
                events.iter().any(|e| e.attempt > 1),
            )
            .await;
        AppStats::add(&s.effects_executed, report.executed);
        AppStats::add(&s.effects_collapsed, report.repeated);
        AppStats::add(&s.effects_refused, report.refused);
        if !report.failed.is_empty() {
            AppStats::add(&s.effects_failed, report.failed.len() as u64);
            return Err(format!("effects failed: {}", report.failed.join("; ")));
        }
        for (msg, outcome) in inbound.iter().zip(handled.outcomes) {
            match outcome {
                Outcome::Done => {
                    AppStats::add(&s.outcome_done, 1);
                    self.settle(msg.ack().await);
                    s.settle_latency.record(msg.age());
                }
                Outcome::Retry(ms) => {
                    AppStats::add(&s.outcome_retry, 1);
                    if msg.attempt >= self.delivery.max_deliver {
                        // JetStream would not redeliver it: never drop silently.
                        let reason =
                            format!("handler asked for a retry after {} deliveries", msg.attempt);
                        self.dead_letter(msg, &reason).await;
                    } else {
                        self.settle(msg.nak(retry_delay(ms)).await);
                    }
                }
                Outcome::Reject(reason) => {
                    AppStats::add(&s.outcome_reject, 1);
                    self.dead_letter(msg, &format!("rejected by handler: {reason}"))
                        .await;
                }
            }
        }
        Ok(())
    }

    /// A failed batch: nak each event with backoff, or dead-letter it once
    /// it has used its deliveries.
    async fn fail(&self, inbound: &[Inbound], error: &str) {
        for msg in inbound {
            if msg.attempt >= self.delivery.max_deliver {
                let reason = format!("failed after {} deliveries: {error}", msg.attempt);
                self.dead_letter(msg, &reason).await;
            } else {
                self.settle(msg.nak(nak_delay(&self.delivery, msg.attempt)).await);
            }
        }
    }

    /// Publish a dead letter, then term. If the dead letter cannot be stored,
    /// the event is naked instead: never terminated without a record.
    async fn dead_letter(&self, msg: &Inbound, reason: &str) {
        match self
            .transport
            .publish_dead_letter(self.node, self.app.name(), msg, reason)
            .await
        {
            Ok(()) => {
                AppStats::add(&self.stats.dead_letters, 1);
                tracing::debug!(id = %msg.id, reason, "dead-lettered");
                self.settle(msg.term().await);
            }
            Err(e) => {
                tracing::warn!(id = %msg.id, error = %e, "dead letter not stored; will retry the event");
                self.settle(msg.nak(nak_delay(&self.delivery, msg.attempt)).await);
            }
        }
    }

    fn settle(&self, result: Result<(), TransportError>) {
        if let Err(e) = result {
            // The event is redelivered after the ack wait: nothing is lost.
            tracing::warn!(app = %self.app.name(), error = %e, "ack/nak/term not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_retry_delays_are_capped() {
        assert_eq!(retry_delay(250), Duration::from_millis(250));
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY_DELAY);
    }

    #[test]
    fn backoff_by_attempt_repeats_the_last_step() {
        let d = Delivery {
            backoff_ms: vec![10, 20],
            ..Delivery::default()
        };
        assert_eq!(nak_delay(&d, 1), Duration::from_millis(10));
        assert_eq!(nak_delay(&d, 2), Duration::from_millis(20));
        assert_eq!(nak_delay(&d, 9), Duration::from_millis(20));
        let none = Delivery {
            backoff_ms: vec![],
            ..Delivery::default()
        };
        assert_eq!(nak_delay(&none, 1), Duration::from_secs(1));
    }
}
