//! One app's event pipeline on this node, stage by stage:
//!
//! ```text
//! durable pull consumer weir_<node>_<app>     (next_batch: ≤ max_batch, linger)
//!   -> decode     metadata, subject, id cap, envelope     (bad: dead letter + term)
//!   -> filter     declarative rules                        (irrelevant: ack, counted)
//!   -> admit      weir's own delivery count                (past max_deliver: dead letter)
//!   -> chunk      by max_batch_bytes
//!   -> invoke     fresh instance, the app's caps
//!   -> observe    a shadow candidate is offered the batch ([`Observer`])
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
//! [`crate::nats::TransportExt::consumer`]), so an event whose earlier
//! deliveries were consumed without a settlement (a kill, a lost ack) is
//! dead-lettered with the reason when it comes back past `max_deliver`; a dead
//! letter that cannot be stored leaves the event unacknowledged (nak'd with
//! backoff) until it can.
//!
//! Batches of one app run in order, one at a time; apps run independently.
//!
//! **Quarantine.** When `delivery.quarantine_after` fetched batches in a row
//! fail (every invocation trapped, hit a cap or had an effect fail; none
//! succeeded), the app is quarantined: its consumer stops pulling and its
//! events stay in JetStream. After [`QUARANTINE_FIRST_BACKOFF`] one probe
//! batch is fetched; if it fails too the pause doubles, up to
//! [`QUARANTINE_MAX_BACKOFF`]; a success (any event of the probe, run alone
//! if the batch fails) resumes the app. The deliveries of the batch that
//! quarantines the app and of failed probes are not counted against
//! `max_deliver` (the app is broken, not its events), so the pause
//! dead-letters nothing: a burst that fails on every delivery waits in the
//! stream instead of running out of deliveries. A poison event among
//! events that succeed is still dead-lettered at its last delivery. A
//! [`Swap`] with a new component lifts the quarantine at once.
//!
//! **Reload.** A [`Swap`] left in the pipeline's [`SwapSlot`] is applied
//! before the next batch: the batch in progress finishes on the old
//! component, the next one runs on the new. A canary's rollback
//! ([`crate::canary`]) is such a swap.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument as _;

use crate::effects::{EffectPolicy, EffectRunner};
use crate::envelope::{self, EventMeta};
use crate::filter::{Filter, Verdict};
use crate::nats::{AppConsumer, Delivery, Inbound, Transport, TransportError, TransportExt as _};
use crate::stats::{AppState, AppStats};
use weir_runtime::App;
use weir_runtime::{Event, Outcome};

/// Longest retry delay a handler may ask for: 1 hour.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(3_600);

/// Pause after a failed fetch before trying again: 1 s.
pub const FETCH_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Most nak'd events remembered per app to tell requested redeliveries from
/// unrequested ones: 4,096 (an event is remembered until it comes back; at
/// most `max_ack_pending` can be outstanding, 256 by default).
pub const MAX_REMEMBERED_NAKS: usize = 4_096;

/// The first pause of a quarantined app: 1 s (doubling on every failed
/// probe).
pub const QUARANTINE_FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The longest pause of a quarantined app between probes: 5 minutes.
pub const QUARANTINE_MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Most characters of a batch failure kept as an app's `last_error`: 512.
pub const MAX_LAST_ERROR_CHARS: usize = 512;

/// Sees every successful invocation of an app's pipeline: its events and
/// what the handler decided (the shadow run of a canary candidate,
/// [`crate::canary::shadow`]). Called on the pipeline's task before the
/// effects run: it must not block (queue the work, or drop it).
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// `events` were handled as `handled` says.
    fn handled(&self, events: &Arc<[Event]>, handled: &weir_runtime::Handled);
}

/// A new version of an app (a reload), applied by its running pipeline
/// before its next batch.
#[derive(Debug)]
pub struct Swap {
    /// The deployed component with its limits and spec.
    pub app: App,
    /// The pre-filter.
    pub filter: Filter,
    /// What its effects may do and when they run.
    pub effects: EffectPolicy,
    /// Its consumer settings (already updated on the server).
    pub delivery: Delivery,
    /// The component itself changed: lifts a quarantine at once.
    pub new_component: bool,
    /// What sees its successful invocations (a shadow run), if anything.
    pub observer: Option<Arc<dyn Observer>>,
}

/// Where a reload leaves the next [`Swap`] of one pipeline: the latest
/// one wins.
#[derive(Debug, Default)]
pub struct SwapSlot {
    next: std::sync::Mutex<Option<Swap>>,
    ready: tokio::sync::Notify,
}

impl SwapSlot {
    /// Leave `swap` for the pipeline (replacing one not yet applied) and wake
    /// it if it is paused.
    pub fn put(&self, swap: Swap) {
        *self
            .next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(swap);
        self.ready.notify_one();
    }

    fn take(&self) -> Option<Swap> {
        self.next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// How the invocations of one fetched batch went.
#[derive(Debug, Default)]
struct Tally {
    ok: u32,
    failed: u32,
    last_error: Option<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed += other.failed;
        if other.last_error.is_some() {
            self.last_error = other.last_error;
        }
    }

    fn failure(error: &BatchFailure) -> Self {
        Self {
            ok: 0,
            failed: 1,
            last_error: Some(error.to_string()),
        }
    }
}

/// An app's quarantine: when its next probe batch is fetched and the pause
/// after that one if it fails too.
#[derive(Debug, Clone, Copy)]
struct Quarantine {
    until: tokio::time::Instant,
    backoff: Duration,
}

/// Everything one app's worker needs: built with [`AppPipeline::new`], run
/// with [`AppPipeline::run`].
#[derive(Debug)]
pub struct AppPipeline {
    app: App,
    filter: Filter,
    consumer: AppConsumer,
    transport: Transport,
    effects: Arc<EffectRunner>,
    policy: EffectPolicy,
    delivery: Delivery,
    node: u32,
    max_payload_bytes: usize,
    stats: Arc<AppStats>,
    swaps: Arc<SwapSlot>,
    failed_in_row: u32,
    quarantine: Option<Quarantine>,
    /// Set for a batch whose failure quarantines (or keeps quarantined) the
    /// app: its failures are excused, not counted against `max_deliver`.
    excusing: bool,
    observer: Option<Arc<dyn Observer>>,
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
            policy: EffectPolicy::default(),
            delivery: Delivery::default(),
            node,
            max_payload_bytes: envelope::DEFAULT_MAX_PAYLOAD_BYTES,
            stats,
            swaps: Arc::default(),
            failed_in_row: 0,
            quarantine: None,
            excusing: false,
            observer: None,
        }
    }

    /// What sees the pipeline's successful invocations ([`Observer`]).
    pub fn with_observer(mut self, observer: Option<Arc<dyn Observer>>) -> Self {
        self.observer = observer;
        self
    }

    /// Where reloads leave this pipeline's [`Swap`]s.
    pub fn with_swaps(mut self, swaps: Arc<SwapSlot>) -> Self {
        self.swaps = swaps;
        self
    }

    /// What the app's effects may do and when they run.
    pub fn with_effects(mut self, policy: EffectPolicy) -> Self {
        self.policy = policy;
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
    /// The NATS client could not read the delivery's header block
    /// ([`crate::nats::unreadable`]).
    #[error("{0}")]
    Headers(String),
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

/// What a message of the events stream carries, delivered or read back.
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a> {
    /// The subject it was published on.
    pub subject: &'a str,
    /// Its event id (`Nats-Msg-Id`, else `<stream>:<sequence>`).
    pub id: &'a str,
    /// The payload as published.
    pub payload: &'a [u8],
    /// Its stream sequence.
    pub sequence: u64,
    /// Publish time, ms since the Unix epoch.
    pub published_ms: u64,
}

/// Stage 1 past the delivery's own metadata: subject, id cap and envelope
/// of a message (`attempt`: its delivery, 1-based), with payloads up to
/// `max_payload_bytes`. `weir replay` decodes what it reads back the same way.
///
/// # Errors
///
/// The [`DecodeError`] whose `Display` is the dead-letter reason.
pub fn decode(
    subjects: &crate::nats::Subjects,
    message: Stored<'_>,
    attempt: u32,
    max_payload_bytes: usize,
) -> Result<Event, DecodeError> {
    let Some((name, source)) = subjects.parse_event(message.subject) else {
        return Err(DecodeError::Subject(message.subject.to_owned()));
    };
    if message.id.len() > envelope::MAX_EVENT_ID_BYTES {
        return Err(DecodeError::IdTooLong(message.id.len()));
    }
    let meta = EventMeta {
        id: message.id.to_owned(),
        name: name.to_owned(),
        source,
        attempt,
        sequence: message.sequence,
        published_ms: message.published_ms,
    };
    envelope::event(meta, message.payload.to_vec(), max_payload_bytes)
        .map_err(|e| DecodeError::Envelope(e.to_string()))
}

/// Why a batch failed as a whole (its events are isolated, retried or
/// dead-lettered; the kind is counted in `/stats`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum BatchFailure {
    /// The handler trapped or hit a cap.
    #[error("{0}")]
    Invoke(weir_runtime::InvokeError),
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
    /// Deliveries of each event spent on quarantine probes (not counted
    /// against `max_deliver`), bounded by [`MAX_REMEMBERED_NAKS`] too.
    excused: HashMap<u64, u32>,
    excused_order: VecDeque<u64>,
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

    /// Do not count this delivery of `sequence` against `max_deliver`.
    fn excuse(&mut self, sequence: u64) {
        let n = self.excused.entry(sequence).or_insert(0);
        if *n == 0 {
            self.excused_order.push_back(sequence);
        }
        *n += 1;
        while self.excused_order.len() > MAX_REMEMBERED_NAKS {
            if let Some(old) = self.excused_order.pop_front() {
                self.excused.remove(&old);
            }
        }
    }

    /// The deliveries of `sequence` that count against `max_deliver`, of
    /// `attempt` in all.
    fn counted(&self, sequence: u64, attempt: u32) -> u32 {
        attempt
            .saturating_sub(self.excused.get(&sequence).copied().unwrap_or(0))
            .max(1)
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
    /// Run until `shutdown` turns true: apply a pending [`Swap`], wait out a
    /// quarantine, fetch, process, repeat. A batch in progress is finished
    /// before returning (drain); events delivered ahead of their batch are
    /// handed back (nak without delay).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let naks = std::sync::Mutex::new(Naks::default());
        loop {
            if *shutdown.borrow() {
                break;
            }
            if let Some(swap) = self.swaps.take() {
                self.apply(swap);
            }
            if let Some(q) = self.quarantine
                && tokio::time::Instant::now() < q.until
            {
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => break,
                    _ = self.swaps.ready.notified() => {}
                    _ = tokio::time::sleep_until(q.until) => {}
                }
                continue;
            }
            let limits = self.app.limits().clone();
            let linger = Duration::from_millis(limits.linger_ms);
            self.stats.batch_deadline_ms.set(limits.deadline_ms);
            let fetched = tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                fetched = self.consumer.next_batch(limits.max_batch, linger, limits.linger_adaptive) => fetched,
            };
            self.stats.consumer_failovers.set(self.consumer.failovers());
            match fetched {
                Ok(batch) => {
                    self.stats.fetch_failing_since_ms.set(0);
                    if batch.is_empty() {
                        continue;
                    }
                    // A reload during the fetch: this batch has not started,
                    // it runs on the new version.
                    if let Some(swap) = self.swaps.take() {
                        self.apply(swap);
                    }
                    let span = self.batch_span(&batch);
                    let quarantine_after = self.delivery.quarantine_after;
                    self.excusing = self.quarantine.is_some()
                        || (quarantine_after > 0 && self.failed_in_row + 1 >= quarantine_after);
                    let tally = self.process_with(batch, &naks).instrument(span).await;
                    self.stats.consumer_lag.set(self.consumer.lag());
                    let was_quarantined = self.quarantine.is_some();
                    self.after_batch(tally);
                    if !was_quarantined && self.quarantine.is_some() {
                        // Nothing waits in the subscription through the
                        // pause: what arrived is handed back at once.
                        let released = self.consumer.release().await;
                        self.stats.released.add(released as u64);
                    }
                }
                Err(e) => {
                    if self.stats.fetch_failing_since_ms.get() == 0 {
                        self.stats
                            .fetch_failing_since_ms
                            .set(crate::stats::unix_ms());
                    }
                    tracing::warn!(app = %self.app.name(), error = %e, "fetch failed; retrying");
                    tokio::time::sleep(FETCH_ERROR_PAUSE).await;
                }
            }
        }
        let released = self.consumer.release().await;
        self.stats.released.add(released as u64);
        tracing::info!(app = %self.app.name(), released, "pipeline stopped");
    }

    /// The one span of a fetched batch. When traces are exported it is a
    /// messaging `process` span (OpenTelemetry semantic conventions for
    /// messaging: `messaging.system`, `messaging.destination.name` (the
    /// first event's subject), `messaging.consumer.group.name`,
    /// `messaging.batch.message_count`), in the trace of its first traced
    /// event and linked to every traced event's; otherwise a lean span for
    /// the logs.
    fn batch_span(&self, batch: &[Inbound]) -> tracing::Span {
        let app = self.app.name();
        if !weir_edge::telemetry::enabled() {
            return tracing::info_span!(
                "batch",
                weir.node = self.node,
                weir.app = %app,
                weir.first_sequence = batch[0].sequence,
                messaging.batch.message_count = batch.len(),
            );
        }
        let span = tracing::info_span!(
            "batch",
            otel.name = %format_args!("process {app}"),
            otel.kind = "consumer",
            weir.node = self.node,
            weir.app = %app,
            weir.first_sequence = batch[0].sequence,
            messaging.batch.message_count = batch.len(),
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = %batch[0].subject,
            messaging.consumer.group.name = %self.consumer.name(),
            messaging.message.id = tracing::field::Empty,
        );
        if let [only] = batch {
            span.record("messaging.message.id", only.id.as_str());
        }
        weir_edge::telemetry::follow(
            &span,
            batch.iter().filter_map(Inbound::trace_link).collect(),
        );
        span
    }

    /// Apply a reload's new version of the app.
    fn apply(&mut self, swap: Swap) {
        self.app = swap.app;
        self.filter = swap.filter;
        self.policy = swap.effects;
        self.delivery = swap.delivery;
        self.observer = swap.observer;
        if swap.new_component {
            self.failed_in_row = 0;
            if self.quarantine.take().is_some() {
                self.stats.set_state(AppState::Running);
                tracing::info!(app = %self.app.name(), "quarantine lifted: new component");
            }
        }
        tracing::debug!(app = %self.app.name(), new_component = swap.new_component, "reloaded");
    }

    /// Count a fetched batch towards (or out of) a quarantine.
    fn after_batch(&mut self, tally: Tally) {
        if tally.ok > 0 || tally.failed == 0 {
            if tally.ok > 0 {
                self.failed_in_row = 0;
                if self.quarantine.take().is_some() {
                    self.stats.set_state(AppState::Running);
                    tracing::info!(app = %self.app.name(), "resumed: a probe batch succeeded");
                }
            }
            return;
        }
        self.failed_in_row += 1;
        let error = tally.last_error.unwrap_or_default();
        let backoff = match self.quarantine {
            Some(q) => (q.backoff * 2).min(QUARANTINE_MAX_BACKOFF),
            None if self.delivery.quarantine_after > 0
                && self.failed_in_row >= self.delivery.quarantine_after =>
            {
                self.stats.quarantines.add(1);
                tracing::warn!(
                    app = %self.app.name(),
                    failed_in_row = self.failed_in_row,
                    pause_s = QUARANTINE_FIRST_BACKOFF.as_secs_f64(),
                    error = %error,
                    "quarantined: batches keep failing; pulling paused, events stay in the stream"
                );
                QUARANTINE_FIRST_BACKOFF
            }
            None => return,
        };
        tracing::debug!(app = %self.app.name(), pause_s = backoff.as_secs_f64(), "quarantine probe failed");
        self.quarantine = Some(Quarantine {
            until: tokio::time::Instant::now() + backoff,
            backoff,
        });
        self.stats.set_state(AppState::Quarantined {
            until_ms: crate::stats::unix_ms() + backoff.as_millis() as u64,
            last_error: error.chars().take(MAX_LAST_ERROR_CHARS).collect(),
        });
    }

    /// Process one fetched batch end to end.
    pub async fn process(&self, batch: Vec<Inbound>) {
        self.process_with(batch, &std::sync::Mutex::new(Naks::default()))
            .await;
    }

    async fn process_with(&self, batch: Vec<Inbound>, naks: &std::sync::Mutex<Naks>) -> Tally {
        self.stats.received.add(batch.len() as u64);
        self.count_redeliveries(&batch, naks);
        let span = if weir_edge::telemetry::enabled() {
            tracing::info_span!(
                "filter",
                weir.relevant = tracing::field::Empty,
                weir.skipped = tracing::field::Empty,
                weir.dead_lettered = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        let (skipped_before, dead_before) =
            (self.stats.skipped.get(), self.stats.dead_letters.get());
        let relevant = self
            .filter_batch(batch, naks)
            .instrument(span.clone())
            .await;
        span.record("weir.relevant", relevant.len());
        span.record(
            "weir.skipped",
            self.stats.skipped.get().saturating_sub(skipped_before),
        );
        span.record(
            "weir.dead_lettered",
            self.stats.dead_letters.get().saturating_sub(dead_before),
        );
        drop(span);
        let mut tally = Tally::default();
        for chunk in chunks_by_bytes(relevant, self.app.limits().max_batch_bytes) {
            tally.add(self.invoke(chunk, naks).await);
        }
        tally
    }

    /// Stages decode, filter and admit: the events to invoke, in order;
    /// the rest are settled here (skipped: ack; undecodable or out of
    /// deliveries: dead letter).
    async fn filter_batch(
        &self,
        batch: Vec<Inbound>,
        naks: &std::sync::Mutex<Naks>,
    ) -> Vec<(Inbound, Event)> {
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
                Verdict::Relevant(_) if counted(naks, &inbound) > self.delivery.max_deliver => {
                    self.stats.dead_letters_out_of_deliveries.add(1);
                    let reason = format!(
                        "delivered {} times, more than max_deliver = {}: earlier deliveries were never settled (host stopped or killed mid-batch, ack lost)",
                        counted(naks, &inbound),
                        self.delivery.max_deliver
                    );
                    self.dead_letter(&inbound, &reason, naks).await;
                }
                Verdict::Relevant(_) => relevant.push((inbound, event)),
            }
        }
        relevant
    }

    /// Count redeliveries, and of them those this process did not ask for.
    fn count_redeliveries(&self, batch: &[Inbound], naks: &std::sync::Mutex<Naks>) {
        let mut naks = naks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let redelivered = batch.iter().filter(|m| m.attempt > 1).count();
        if redelivered == 0 {
            return;
        }
        self.stats.redelivered.add(redelivered as u64);
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
        if let Some(e) = &inbound.header_error {
            return Err(DecodeError::Headers(e.clone()));
        }
        decode(
            self.transport.subjects(),
            Stored {
                subject: &inbound.subject,
                id: &inbound.id,
                payload: &inbound.payload,
                sequence: inbound.sequence,
                published_ms: inbound.published_ms,
            },
            inbound.attempt,
            self.max_payload_bytes,
        )
    }

    /// Invoke one batch and settle it. If a batch of several events fails,
    /// each event is run alone, so one poison event does not take its
    /// batch-mates down; only events that fail alone are retried or
    /// dead-lettered.
    async fn invoke(&self, items: Vec<(Inbound, Event)>, naks: &std::sync::Mutex<Naks>) -> Tally {
        let (inbound, events): (Vec<Inbound>, Vec<Event>) = items.into_iter().unzip();
        let events: Arc<[Event]> = events.into();
        let Err(error) = self.run_batch(&inbound, events.clone(), naks).await else {
            return Tally {
                ok: 1,
                ..Tally::default()
            };
        };
        if inbound.len() == 1 {
            self.fail(&inbound, &error, naks).await;
            return Tally::failure(&error);
        }
        tracing::debug!(error = %error, events = inbound.len(), "batch failed; isolating its events");
        let mut tally = Tally::failure(&error);
        for (msg, event) in inbound.iter().zip(events.iter()) {
            let single: Arc<[Event]> = Arc::from([event.clone()]);
            match self
                .run_batch(std::slice::from_ref(msg), single, naks)
                .await
            {
                Ok(()) => tally.ok += 1,
                Err(error) => {
                    self.fail(std::slice::from_ref(msg), &error, naks).await;
                    tally.add(Tally::failure(&error));
                }
            }
        }
        tally
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
        self.stats.batch_started_ms.set(crate::stats::unix_ms());
        let span = invoke_span(events.len());
        let invocation = self
            .app
            .invoke(events.clone())
            .instrument(span.clone())
            .await;
        self.stats.batch_started_ms.set(0);
        record_invocation(&span, &invocation);
        drop(span);
        let s = &self.stats;
        s.batches.add(1);
        s.invoked_events.add(inbound.len() as u64);
        s.fuel_high_water.raise(invocation.stats.fuel_consumed);
        s.memory_high_water
            .raise(invocation.stats.memory_high_water as u64);
        s.effects_collapsed
            .add(invocation.stats.effects_collapsed as u64);
        s.kv_calls.add(u64::from(invocation.stats.kv_calls));
        s.kv_errors.add(u64::from(invocation.stats.kv_errors));
        let handled = match invocation.result {
            Ok(h) => h,
            Err(e) => {
                s.trap(e.kind());
                tracing::warn!(error = %e, "batch failed");
                return Err(BatchFailure::Invoke(e));
            }
        };
        s.effects_requested.add(handled.effects.len() as u64);
        if let Some(observer) = &self.observer {
            observer.handled(&events, &handled);
        }
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let report = self
            .effects
            .run(
                self.app.name(),
                &self.policy,
                &handled.effects,
                &ids,
                events.iter().any(|e| e.attempt > 1),
            )
            .await;
        for effect in &report.executed_effects {
            s.effect_executed(effect);
        }
        s.effects_collapsed.add(report.repeated);
        s.effects_refused.add(report.refused);
        s.effects_debounced.add(report.debounced);
        s.effects_deferred.add(report.limit_deferred);
        s.effects_limited.add(report.limited);
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
                    if counted(naks, msg) >= self.delivery.max_deliver {
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
    /// last delivery. In a batch whose failure quarantines the app (or a
    /// probe of a quarantined one), the delivery is excused and the event
    /// nak'd without delay: it waits in the stream for the next probe.
    async fn fail(&self, inbound: &[Inbound], error: &BatchFailure, naks: &std::sync::Mutex<Naks>) {
        self.stats.failed_events.add(inbound.len() as u64);
        for msg in inbound {
            if self.excusing {
                naks.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .excuse(msg.sequence);
                self.nak(msg, Duration::ZERO, naks).await;
            } else if counted(naks, msg) >= self.delivery.max_deliver {
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

/// The span of one invocation, when traces are exported (else
/// [`tracing::Span::none`]): `weir.events`, then what
/// [`record_invocation`] adds.
fn invoke_span(events: usize) -> tracing::Span {
    if !weir_edge::telemetry::enabled() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "invoke",
        weir.events = events,
        weir.fuel = tracing::field::Empty,
        weir.memory_bytes = tracing::field::Empty,
        weir.outcomes.done = tracing::field::Empty,
        weir.outcomes.retry = tracing::field::Empty,
        weir.outcomes.reject = tracing::field::Empty,
        weir.effects = tracing::field::Empty,
        weir.error = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    )
}

/// Record on `span` the fuel and sandbox memory an invocation used (its
/// high water, bytes), its outcomes by kind and the effects it asked for,
/// or its error (the span's status is then `error`).
fn record_invocation(span: &tracing::Span, invocation: &weir_runtime::Invocation) {
    if span.is_none() {
        return;
    }
    span.record("weir.fuel", invocation.stats.fuel_consumed);
    span.record(
        "weir.memory_bytes",
        invocation.stats.memory_high_water as u64,
    );
    match &invocation.result {
        Ok(handled) => {
            let (mut done, mut retry, mut reject) = (0u64, 0u64, 0u64);
            for outcome in &handled.outcomes {
                match outcome {
                    Outcome::Done => done += 1,
                    Outcome::Retry(_) => retry += 1,
                    Outcome::Reject(_) => reject += 1,
                }
            }
            span.record("weir.outcomes.done", done);
            span.record("weir.outcomes.retry", retry);
            span.record("weir.outcomes.reject", reject);
            span.record("weir.effects", handled.effects.len());
        }
        Err(e) => {
            span.record("weir.error", e.kind());
            span.record("otel.status_code", "error");
            span.record("otel.status_description", tracing::field::display(e));
        }
    }
}

/// The deliveries of `msg` that count against `max_deliver` (those spent
/// on quarantine probes do not).
fn counted(naks: &std::sync::Mutex<Naks>, msg: &Inbound) -> u32 {
    naks.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .counted(msg.sequence, msg.attempt)
}

/// Split `items` into chunks whose payloads add up to at most `max_bytes`
/// (an event larger than that is a chunk of its own), in order. Shared
/// with `weir replay`, which keeps its own item beside each event.
pub fn chunks_by_bytes<T>(items: Vec<(T, Event)>, max_bytes: usize) -> Vec<Vec<(T, Event)>> {
    let mut chunks = Vec::new();
    let mut chunk: Vec<(T, Event)> = Vec::new();
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
    fn excused_deliveries_do_not_count_against_max_deliver() {
        let mut n = Naks::default();
        assert_eq!(n.counted(7, 3), 3);
        n.excuse(7);
        n.excuse(7);
        assert_eq!(n.counted(7, 3), 1, "two of three deliveries excused");
        assert_eq!(n.counted(7, 2), 1, "never below 1");
        assert_eq!(n.counted(8, 3), 3, "another event");
        for seq in 100..(100 + MAX_REMEMBERED_NAKS as u64 + 1) {
            n.excuse(seq);
        }
        assert_eq!(n.excused.len(), MAX_REMEMBERED_NAKS);
        assert_eq!(n.counted(7, 3), 3, "oldest forgotten first");
    }

    #[test]
    fn tallies_add_up_and_keep_the_last_error() {
        let mut t = Tally::default();
        t.add(Tally {
            ok: 2,
            ..Tally::default()
        });
        t.add(Tally::failure(&BatchFailure::Effects(vec!["boom".into()])));
        assert_eq!((t.ok, t.failed), (2, 1));
        assert_eq!(t.last_error.as_deref(), Some("effects failed: boom"));
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
