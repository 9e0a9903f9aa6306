//! One app's event pipeline on this node, stage by stage:
//!
//! ```text
//! durable pull consumer weir_<node>_<app>     (next_batch: ≤ max_batch, linger)
//!   -> decode     metadata, subject, id cap, envelope     (bad: dead letter + term)
//!   -> filter     declarative rules                        (irrelevant: ack, counted)
//!   -> admit      weir's own delivery count                (past max_deliver: dead letter)
//!   -> chunk      by max_batch_bytes
//!   -> invoke     fresh instance, the app's caps
//!   -> effects    grants, idempotency, execute once (before any ack)
//!   -> settle     done -> ack | retry -> nak(delay) | reject -> dead letter + term
//!   -> isolate    a failed batch (trap, cap, effect failure) runs its events
//!                 alone, so a poison event does not take its batch-mates down;
//!                 an event that fails alone is nak'd with backoff, and
//!                 dead-lettered with the error at its last delivery
//! ```
//!
//! No event leaves JetStream without a decision: weir counts deliveries
//! itself (JetStream's `max_deliver` is unlimited, see
//! [`crate::nats::Transport::consumer`]), so an event whose earlier
//! deliveries were consumed without a settlement (a kill, a lost ack) is
//! dead-lettered with the reason when it comes back past `max_deliver`; a dead
//! letter that cannot be stored leaves the event unacknowledged (nak'd with
//! backoff) until it can.
//!
//! Batches of one app run in order, one at a time; apps run independently.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument as _;

use crate::bindings::{Event, Outcome};
use crate::effects::{EffectRunner, Grants};
use crate::envelope::{self, EventMeta};
use crate::filter::{Filter, Verdict};
use crate::nats::{AppConsumer, Delivery, Inbound, Transport, TransportError};
use crate::runtime::App;
use crate::stats::AppStats;

/// Longest retry delay a handler may ask for: 1 hour.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(3_600);

/// Pause after a failed fetch before trying again: 1 s.
pub const FETCH_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Most nak'd events remembered per app to tell requested redeliveries from
/// unrequested ones: 4,096 (an event is remembered until it comes back; at
/// most `max_ack_pending` can be outstanding, 256 by default).
pub const MAX_REMEMBERED_NAKS: usize = 4_096;

/// Everything one app's worker needs: built with [`AppPipeline::new`], run
/// with [`AppPipeline::run`].
#[derive(Debug)]
pub struct AppPipeline {
    app: App,
    filter: Filter,
    consumer: AppConsumer,
    transport: Transport,
    effects: Arc<EffectRunner>,
    grants: Grants,
    delivery: Delivery,
    node: u32,
    max_payload_bytes: usize,
    stats: Arc<AppStats>,
}

impl AppPipeline {
    /// A pipeline for `app` on `node`, reading `consumer`, keeping only what
    /// `filter` lets through, counting into `stats`. Defaults: no grants,
    /// [`Delivery::default`], payloads up to
    /// [`envelope::DEFAULT_MAX_PAYLOAD_BYTES`].
    pub fn new(
        app: App,
        node: u32,
        filter: Filter,
        consumer: AppConsumer,
        transport: Transport,
        effects: Arc<EffectRunner>,
        stats: Arc<AppStats>,
    ) -> Self {
        Self {
            app,
            filter,
            consumer,
            transport,
            effects,
            grants: Grants::default(),
            delivery: Delivery::default(),
            node,
            max_payload_bytes: envelope::DEFAULT_MAX_PAYLOAD_BYTES,
            stats,
        }
    }

    /// What the app's effects may do.
    pub fn with_grants(mut self, grants: Grants) -> Self {
        self.grants = grants;
        self
    }

    /// The app's consumer settings: `max_deliver` and the nak backoff are
    /// applied by the pipeline (the consumer itself was created with them).
    pub fn with_delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = delivery;
        self
    }

    /// The payload cap in bytes, checked before parsing.
    pub fn with_max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }
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

/// Why a delivered event is dead-lettered before any handler sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// JetStream's metadata of the delivery could not be read.
    #[error("{0}")]
    Metadata(String),
    /// The subject is not `<prefix>.events.<name>.<source>`.
    #[error("not an event subject: {0}")]
    Subject(String),
    /// The event id is over [`envelope::MAX_EVENT_ID_BYTES`].
    #[error("event id of {0} bytes exceeds the cap of {max} bytes", max = envelope::MAX_EVENT_ID_BYTES)]
    IdTooLong(usize),
    /// The envelope is malformed or oversized.
    #[error("{0}")]
    Envelope(String),
}

/// Why a batch failed as a whole (its events are isolated, retried or
/// dead-lettered; the kind is counted in `/stats`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum BatchFailure {
    /// The handler trapped or hit a cap.
    #[error("{0}")]
    Invoke(crate::runtime::InvokeError),
    /// An effect failed to execute.
    #[error("effects failed: {}", .0.join("; "))]
    Effects(Vec<String>),
}

/// Events this process nak'd, by stream sequence (to tell the redeliveries
/// it asked for from those it did not), bounded by [`MAX_REMEMBERED_NAKS`].
#[derive(Debug, Default)]
struct Naks {
    by_sequence: HashMap<u64, u32>,
    order: VecDeque<u64>,
}

impl Naks {
    fn remember(&mut self, sequence: u64, attempt: u32) {
        if self.by_sequence.insert(sequence, attempt).is_none() {
            self.order.push_back(sequence);
        }
        while self.order.len() > MAX_REMEMBERED_NAKS {
            if let Some(old) = self.order.pop_front() {
                self.by_sequence.remove(&old);
            }
        }
    }

    /// Whether this redelivery (attempt > 1) was asked for by a nak of the
    /// previous attempt.
    fn requested(&mut self, sequence: u64, attempt: u32) -> bool {
        match self.by_sequence.remove(&sequence) {
            Some(naked) => naked + 1 == attempt,
            None => false,
        }
    }
}

impl AppPipeline {
    /// Run until `shutdown` turns true: fetch, process, repeat. A batch in
    /// progress is finished before returning (drain); events delivered
    /// ahead of their batch are handed back (nak without delay).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let limits = self.app.limits().clone();
        let linger = Duration::from_millis(limits.linger_ms);
        let naks = std::sync::Mutex::new(Naks::default());
        loop {
            if *shutdown.borrow() {
                break;
            }
            let fetched = tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                fetched = self.consumer.next_batch(limits.max_batch, linger) => fetched,
            };
            match fetched {
                Ok(batch) if batch.is_empty() => {}
                Ok(batch) => {
                    let span =
                        tracing::info_span!("batch", app = %self.app.name(), fetched = batch.len());
                    self.process_with(batch, &naks).instrument(span).await;
                    self.stats.consumer_lag.set(self.consumer.lag());
                }
                Err(e) => {
                    tracing::warn!(app = %self.app.name(), error = %e, "fetch failed; retrying");
                    tokio::time::sleep(FETCH_ERROR_PAUSE).await;
                }
            }
        }
        let released = self.consumer.release().await;
        self.stats.released.add(released as u64);
        tracing::info!(app = %self.app.name(), released, "pipeline stopped");
    }

    /// Process one fetched batch end to end.
    pub async fn process(&self, batch: Vec<Inbound>) {
        self.process_with(batch, &std::sync::Mutex::new(Naks::default()))
            .await;
    }

    async fn process_with(&self, batch: Vec<Inbound>, naks: &std::sync::Mutex<Naks>) {
        self.stats.received.add(batch.len() as u64);
        self.count_redeliveries(&batch, naks);
        let mut relevant: Vec<(Inbound, Event)> = Vec::with_capacity(batch.len());
        for inbound in batch {
            let event = match self.decode(&inbound) {
                Ok(event) => event,
                Err(e) => {
                    self.dead_letter(&inbound, &e.to_string(), naks).await;
                    continue;
                }
            };
            match self.filter.check(&event) {
                verdict @ (Verdict::Skipped | Verdict::UntrustedSource) => {
                    tracing::trace!(id = %event.id, ?verdict, "skipped by filter");
                    self.stats.skipped.add(1);
                    if verdict == Verdict::UntrustedSource {
                        self.stats.skipped_source.add(1);
                    }
                    self.settle(inbound.ack().await);
                    self.stats.settle_latency.record(inbound.age());
                }
                Verdict::Relevant(_) if inbound.attempt > self.delivery.max_deliver => {
                    self.stats.dead_letters_out_of_deliveries.add(1);
                    let reason = format!(
                        "delivered {} times, more than max_deliver = {}: earlier deliveries were never settled (host stopped or killed mid-batch, ack lost)",
                        inbound.attempt, self.delivery.max_deliver
                    );
                    self.dead_letter(&inbound, &reason, naks).await;
                }
                Verdict::Relevant(_) => relevant.push((inbound, event)),
            }
        }
        for chunk in chunks_by_bytes(relevant, self.app.limits().max_batch_bytes) {
            self.invoke(chunk, naks).await;
        }
    }

    /// Count redeliveries this process did not ask for.
    fn count_redeliveries(&self, batch: &[Inbound], naks: &std::sync::Mutex<Naks>) {
        let mut naks = naks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let unrequested = batch
            .iter()
            .filter(|m| m.attempt > 1 && !naks.requested(m.sequence, m.attempt))
            .count();
        if unrequested > 0 {
            self.stats.redeliveries_unrequested.add(unrequested as u64);
            tracing::debug!(unrequested, "redeliveries weir did not ask for");
        }
    }

    /// Stage 1: metadata, subject, id cap and envelope of one delivery.
    ///
    /// # Errors
    ///
    /// The [`DecodeError`] whose `Display` is the dead-letter reason.
    pub fn decode(&self, inbound: &Inbound) -> Result<Event, DecodeError> {
        if let Some(e) = &inbound.metadata_error {
            return Err(DecodeError::Metadata(e.clone()));
        }
        let Some((name, source)) = self.transport.subjects().parse_event(&inbound.subject) else {
            return Err(DecodeError::Subject(inbound.subject.clone()));
        };
        if inbound.id.len() > envelope::MAX_EVENT_ID_BYTES {
            return Err(DecodeError::IdTooLong(inbound.id.len()));
        }
        let meta = EventMeta {
            id: inbound.id.clone(),
            name: name.to_owned(),
            source,
            attempt: inbound.attempt,
            sequence: inbound.sequence,
            published_ms: inbound.published_ms,
        };
        envelope::event(meta, inbound.payload.to_vec(), self.max_payload_bytes)
            .map_err(|e| DecodeError::Envelope(e.to_string()))
    }

    /// Invoke one batch and settle it. If a batch of several events fails,
    /// each event is run alone, so one poison event does not take its
    /// batch-mates down; only events that fail alone are retried or
    /// dead-lettered.
    async fn invoke(&self, items: Vec<(Inbound, Event)>, naks: &std::sync::Mutex<Naks>) {
        let (inbound, events): (Vec<Inbound>, Vec<Event>) = items.into_iter().unzip();
        let events: Arc<[Event]> = events.into();
        let Err(error) = self.run_batch(&inbound, events.clone(), naks).await else {
            return;
        };
        if inbound.len() == 1 {
            return self.fail(&inbound, &error, naks).await;
        }
        tracing::debug!(error = %error, events = inbound.len(), "batch failed; isolating its events");
        for (msg, event) in inbound.iter().zip(events.iter()) {
            let single: Arc<[Event]> = Arc::from([event.clone()]);
            if let Err(error) = self
                .run_batch(std::slice::from_ref(msg), single, naks)
                .await
            {
                self.fail(std::slice::from_ref(msg), &error, naks).await;
            }
        }
    }

    /// Invoke the handler on `events`, execute its effects and settle every
    /// outcome. On failure (trap, cap, effect failure) nothing is settled and
    /// the failure is returned.
    async fn run_batch(
        &self,
        inbound: &[Inbound],
        events: Arc<[Event]>,
        naks: &std::sync::Mutex<Naks>,
    ) -> Result<(), BatchFailure> {
        tracing::debug!(ids = ?events.iter().map(|e| (&e.id, e.attempt)).collect::<Vec<_>>(), "invoking");
        let invocation = self.app.invoke(events.clone()).await;
        let s = &self.stats;
        s.batches.add(1);
        s.invoked_events.add(inbound.len() as u64);
        s.fuel_high_water.raise(invocation.stats.fuel_consumed);
        s.memory_high_water
            .raise(invocation.stats.memory_high_water as u64);
        s.effects_collapsed
            .add(invocation.stats.effects_collapsed as u64);
        let handled = match invocation.result {
            Ok(h) => h,
            Err(e) => {
                s.trap(e.kind());
                tracing::warn!(error = %e, "batch failed");
                return Err(BatchFailure::Invoke(e));
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
        s.effects_executed.add(report.executed);
        s.effects_collapsed.add(report.repeated);
        s.effects_refused.add(report.refused);
        if !report.failed.is_empty() {
            s.effects_failed.add(report.failed.len() as u64);
            return Err(BatchFailure::Effects(report.failed));
        }
        for (msg, outcome) in inbound.iter().zip(handled.outcomes) {
            match outcome {
                Outcome::Done => {
                    s.outcome_done.add(1);
                    self.settle(msg.ack().await);
                    s.settle_latency.record(msg.age());
                }
                Outcome::Retry(ms) => {
                    s.outcome_retry.add(1);
                    if msg.attempt >= self.delivery.max_deliver {
                        // Its last delivery: decide now, never drop silently.
                        let reason =
                            format!("handler asked for a retry after {} deliveries", msg.attempt);
                        self.dead_letter(msg, &reason, naks).await;
                    } else {
                        self.nak(msg, retry_delay(ms), naks).await;
                    }
                }
                Outcome::Reject(reason) => {
                    s.outcome_reject.add(1);
                    self.dead_letter(msg, &format!("rejected by handler: {reason}"), naks)
                        .await;
                }
            }
        }
        Ok(())
    }

    /// A failed batch: nak each event with backoff, or dead-letter it at its
    /// last delivery.
    async fn fail(&self, inbound: &[Inbound], error: &BatchFailure, naks: &std::sync::Mutex<Naks>) {
        for msg in inbound {
            if msg.attempt >= self.delivery.max_deliver {
                let reason = format!("failed after {} deliveries: {error}", msg.attempt);
                self.dead_letter(msg, &reason, naks).await;
            } else {
                self.nak(msg, nak_delay(&self.delivery, msg.attempt), naks)
                    .await;
            }
        }
    }

    /// Nak `msg` for redelivery after `delay`, remembering that weir asked
    /// for it.
    async fn nak(&self, msg: &Inbound, delay: Duration, naks: &std::sync::Mutex<Naks>) {
        naks.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remember(msg.sequence, msg.attempt);
        self.settle(msg.nak(delay).await);
    }

    /// Publish a dead letter, then term. If the dead letter cannot be stored
    /// (dead-letter stream full or unreachable), the event is nak'd with
    /// backoff instead: it stays in the events stream, unacknowledged, and is
    /// dead-lettered on a later delivery once the dead letter can be stored.
    async fn dead_letter(&self, msg: &Inbound, reason: &str, naks: &std::sync::Mutex<Naks>) {
        match self
            .transport
            .publish_dead_letter(self.node, self.app.name(), msg, reason)
            .await
        {
            Ok(()) => {
                self.stats.dead_letters.add(1);
                tracing::debug!(id = %msg.id, reason, "dead-lettered");
                self.settle(msg.term().await);
            }
            Err(e) => {
                self.stats.dead_letter_failures.add(1);
                tracing::warn!(id = %msg.id, error = %e, "dead letter not stored; the event stays in the stream and is retried");
                self.nak(msg, nak_delay(&self.delivery, msg.attempt), naks)
                    .await;
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

/// Split `items` into chunks whose payloads add up to at most `max_bytes`
/// (an event larger than that is a chunk of its own), in order.
fn chunks_by_bytes(items: Vec<(Inbound, Event)>, max_bytes: usize) -> Vec<Vec<(Inbound, Event)>> {
    let mut chunks = Vec::new();
    let mut chunk: Vec<(Inbound, Event)> = Vec::new();
    let mut bytes = 0usize;
    for item in items {
        let size = item.1.payload.len();
        if !chunk.is_empty() && bytes + size > max_bytes {
            chunks.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
        bytes += size;
        chunk.push(item);
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
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

    #[test]
    fn naks_tell_requested_from_unrequested_redeliveries() {
        let mut n = Naks::default();
        n.remember(7, 1);
        assert!(n.requested(7, 2), "nak'd at attempt 1, back at 2");
        assert!(!n.requested(7, 3), "forgotten once it came back");
        assert!(!n.requested(8, 2), "never nak'd");
        n.remember(9, 1);
        assert!(!n.requested(9, 3), "a delivery was lost in between");
        for seq in 0..(MAX_REMEMBERED_NAKS as u64 + 10) {
            n.remember(seq, 1);
        }
        assert_eq!(n.by_sequence.len(), MAX_REMEMBERED_NAKS);
        assert!(!n.requested(0, 2), "oldest forgotten first");
    }
}
