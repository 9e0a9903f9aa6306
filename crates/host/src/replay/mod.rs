//! Replay: what a candidate component would have done on the events the
//! stream still holds, beside the component the app runs now, with every
//! effect intercepted (`weir replay`).
//!
//! ```text
//! events stream, sequences from..=to    (nats::history: message-get, no consumer, no acks)
//!   -> the app's subjects only           (its event names, as its consumer filters them)
//!   -> batches of max_batch deliveries   (as the live pipeline fetches them, linger off)
//!   -> decode                            (bad: counted, a live host dead-letters it)
//!   -> filter                            (the app's rules: irrelevant ones skipped)
//!   -> chunk by max_batch_bytes
//!   -> stable and candidate, together    (fresh sandbox each, the app's limits and node;
//!                                         a failed batch runs its events alone, as live)
//!   -> compare                           (each event's decision; the batch's effects)
//! ```
//!
//! Nothing is executed, acknowledged or published: effects are what the
//! handlers returned, counted and compared; kv reads see the app's live
//! buckets as they are now and writes go to an [`overlay::OverlayKv`] per
//! version. An event is **changed** when its decision differs or its
//! batch's effects differ (as multisets): with a batch of one event, exactly
//! the events whose own decisions differ.
//!
//! The batches a live host made cannot be known (they depend on arrival
//! times and linger); replay groups events as the live pipeline would with
//! `linger_adaptive` off and a backlog, or one at a time ([`Options::batch`]
//! = 1).

pub mod compare;
pub mod overlay;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde::Serialize;
use weir_runtime::{App, Event};

use crate::filter::{Filter, Verdict};
use crate::nats::history::{self, StoredEvent, StreamSpan};
use crate::nats::{Transport, TransportError};
use crate::pipeline::{self, Stored};
use compare::{Decision, Run, VersionTally};

/// Changed events listed in a [`Report`] unless told otherwise: 20 (all
/// are counted).
pub const DEFAULT_CHANGE_LIMIT: usize = 20;

/// How often [`replay`] reports progress: every 2 s.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Which stored events to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Range {
    /// Everything the stream holds (the default).
    #[default]
    All,
    /// Events published in the last this long.
    Since(Duration),
    /// Stream sequences `from..=to` (`to`: the last stored if `None`).
    Sequences {
        /// First sequence (0: the first stored).
        from: u64,
        /// Last sequence.
        to: Option<u64>,
    },
}

/// How to replay.
#[derive(Debug, Clone)]
pub struct Options {
    /// Which events.
    pub range: Range,
    /// Deliveries per batch instead of the app's `max_batch` (1: each event
    /// alone).
    pub batch: Option<usize>,
    /// Changed events to list ([`DEFAULT_CHANGE_LIMIT`]); all are counted.
    pub limit: usize,
    /// The payload cap, bytes (the host's: `[nats] max_payload_bytes`).
    pub max_payload_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            range: Range::All,
            batch: None,
            limit: DEFAULT_CHANGE_LIMIT,
            max_payload_bytes: crate::envelope::DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }
}

/// The two versions of one app, deployed with the app's spec (node,
/// domains, limits, kv grant), each with its own kv overlay attached if
/// granted ([`attach_overlays`]).
#[derive(Debug, Clone)]
pub struct Versions {
    /// The component the app runs now.
    pub stable: App,
    /// The component to compare with it.
    pub candidate: App,
}

/// One event whose decision, or whose batch's effects, differ.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// Its stream sequence.
    pub sequence: u64,
    /// Its event id.
    pub id: String,
    /// The subject it was published on.
    pub subject: String,
    /// The stable version's decision.
    pub stable: Decision,
    /// The candidate's decision.
    pub candidate: Decision,
    /// The effects of its batch, stable version (labels).
    pub stable_effects: Vec<String>,
    /// The effects of its batch, candidate.
    pub candidate_effects: Vec<String>,
}

/// Progress of a replay in flight.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Sequences read of the range.
    pub read: u64,
    /// Sequences in the range.
    pub range: u64,
    /// Events replayed so far.
    pub events: u64,
}

/// What a replay found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The stream's first stored sequence when the replay began.
    pub stream_first: u64,
    /// The stream's last stored sequence when the replay began.
    pub stream_last: u64,
    /// The first sequence read (`stream_last + 1` if none was).
    pub from: u64,
    /// The last sequence read.
    pub to: u64,
    /// Sequences asked for (`--from-seq`) that the stream no longer held
    /// (removed by its age or size limits).
    pub missing: u64,
    /// `--since`: the range began before the oldest stored event and the
    /// stream's limits removed earlier ones, so events of the range may be
    /// gone.
    pub since_before_oldest: bool,
    /// Messages of the range read back.
    pub read: u64,
    /// Sequences of the range not found (deleted, or removed while
    /// replaying).
    pub gaps: u64,
    /// Messages of other apps' events, not read further.
    pub other_events: u64,
    /// Events a live host would dead-letter before any handler (unreadable
    /// headers, bad subject or envelope).
    pub undecodable: u64,
    /// Events the app's rules skip.
    pub skipped: u64,
    /// Events run through both versions.
    pub events: u64,
    /// Batches run through both versions.
    pub batches: u64,
    /// Deliveries per batch: the app's `max_batch`, or `--batch`.
    pub batch: usize,
    /// Events whose decision or batch's effects differ.
    pub changed: u64,
    /// The stable version's totals.
    pub stable: VersionTally,
    /// The candidate's totals.
    pub candidate: VersionTally,
    /// The first [`Options::limit`] changed events.
    pub changes: Vec<Change>,
    /// Wall time of the replay, ms.
    pub elapsed_ms: u64,
}

/// Attach a fresh [`overlay::OverlayKv`] to each version granted kv, over
/// `live` (the app's buckets, read only; `None`: reads find nothing).
pub fn attach_overlays(versions: &Versions, live: Option<Arc<dyn weir_runtime::kv::KvBackend>>) {
    for app in [&versions.stable, &versions.candidate] {
        if app.kv_grant().any() {
            app.attach_kv(Arc::new(overlay::OverlayKv::new(live.clone())));
        }
    }
}

/// The sequences to read for `range` of a stream spanning `span`, and
/// what of it the stream no longer holds.
async fn bounds(
    transport: &Transport,
    span: StreamSpan,
    range: Range,
) -> Result<(u64, u64, u64, bool), TransportError> {
    let last = span.last_sequence;
    Ok(match range {
        Range::All => (span.first_sequence, last, 0, false),
        Range::Sequences { from: 0, to } => {
            (span.first_sequence, to.unwrap_or(last).min(last), 0, false)
        }
        Range::Sequences { from, to } => {
            let to = to.unwrap_or(last).min(last);
            let missing = span
                .first_sequence
                .saturating_sub(from)
                .min(to.saturating_add(1).saturating_sub(from));
            (from.max(span.first_sequence), to, missing, false)
        }
        Range::Since(ago) => {
            let since_ms = crate::stats::unix_ms().saturating_sub(ago.as_millis() as u64);
            let from = history::first_since(transport, span, since_ms).await?;
            let oldest = match history::read_one(transport, span.first_sequence).await? {
                Some(first) => first.published_ms,
                None => 0,
            };
            // Only if something was removed (a stream that began after
            // `since` lost nothing).
            let before =
                span.first_sequence > 1 && from == span.first_sequence && oldest > since_ms;
            (from, last, 0, before)
        }
    })
}

/// Replay `options.range` of `transport`'s events stream for the app whose
/// rules are `filter`, through both `versions`, calling `progress` every
/// [`PROGRESS_EVERY`].
///
/// # Errors
///
/// [`TransportError`] if the stream cannot be read.
pub async fn replay(
    transport: &Transport,
    filter: &Filter,
    versions: &Versions,
    options: &Options,
    mut progress: impl FnMut(Progress),
) -> Result<Report, TransportError> {
    let started = Instant::now();
    let span = history::span(transport).await?;
    let (from, to, missing, since_before_oldest) = bounds(transport, span, options.range).await?;
    let batch = options
        .batch
        .unwrap_or(versions.stable.limits().max_batch)
        .max(1);
    let mut report = Report {
        stream_first: span.first_sequence,
        stream_last: span.last_sequence,
        from,
        to: to.max(from.saturating_sub(1)),
        missing,
        since_before_oldest,
        batch,
        ..Report::default()
    };
    let names = filter.event_names();
    let mut replayer = Replayer {
        filter,
        versions,
        options,
        subjects: transport.subjects(),
        names: &names,
        report: &mut report,
    };
    let range = (to + 1).saturating_sub(from);
    let mut last_progress = Instant::now();
    let mut pending: Vec<StoredEvent> = Vec::with_capacity(batch);
    if from <= to {
        let mut stored = std::pin::pin!(history::read(transport, from, to));
        while let Some(message) = stored.next().await {
            let Some(message) = message? else {
                replayer.report.gaps += 1;
                continue;
            };
            replayer.report.read += 1;
            if !replayer.is_the_apps(&message) {
                replayer.report.other_events += 1;
                continue;
            }
            pending.push(message);
            if pending.len() == batch {
                replayer.fetched(std::mem::take(&mut pending)).await;
            }
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                progress(Progress {
                    read: replayer.report.read + replayer.report.gaps,
                    range,
                    events: replayer.report.events,
                });
            }
        }
    }
    if !pending.is_empty() {
        replayer.fetched(pending).await;
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// The state of one replay.
struct Replayer<'a> {
    filter: &'a Filter,
    versions: &'a Versions,
    options: &'a Options,
    subjects: &'a crate::nats::Subjects,
    names: &'a [&'a str],
    report: &'a mut Report,
}

impl Replayer<'_> {
    /// Whether the app's consumer would deliver `message`: one of its event
    /// names (all events if its rules name none), or a subject that is no
    /// event's (a live consumer filtering by name never sees those).
    fn is_the_apps(&self, message: &StoredEvent) -> bool {
        if self.names.is_empty() {
            return true;
        }
        match self.subjects.parse_event(&message.subject) {
            Some((name, _)) => self.names.contains(&name),
            None => false,
        }
    }

    /// One batch as the live pipeline fetches it: decode, filter, chunk,
    /// run both versions.
    async fn fetched(&mut self, messages: Vec<StoredEvent>) {
        let mut relevant: Vec<(StoredEvent, Event)> = Vec::with_capacity(messages.len());
        for message in messages {
            if message.header_error.is_some() {
                self.report.undecodable += 1;
                continue;
            }
            let decoded = pipeline::decode(
                self.subjects,
                Stored {
                    subject: &message.subject,
                    id: &message.id,
                    payload: &message.payload,
                    sequence: message.sequence,
                    published_ms: message.published_ms,
                },
                1,
                self.options.max_payload_bytes,
            );
            let Ok(event) = decoded else {
                self.report.undecodable += 1;
                continue;
            };
            match self.filter.check(&event) {
                Verdict::Relevant(_) => relevant.push((message, event)),
                Verdict::Skipped | Verdict::UntrustedSource => self.report.skipped += 1,
            }
        }
        let max_bytes = self.versions.stable.limits().max_batch_bytes;
        for chunk in pipeline::chunks_by_bytes(relevant, max_bytes) {
            self.run_both(chunk).await;
        }
    }

    /// One chunk through both versions at once, compared.
    async fn run_both(&mut self, chunk: Vec<(StoredEvent, Event)>) {
        let (messages, events): (Vec<StoredEvent>, Vec<Event>) = chunk.into_iter().unzip();
        let events: Arc<[Event]> = events.into();
        let (stable, candidate) = tokio::join!(
            compare::run(&self.versions.stable, events.clone()),
            compare::run(&self.versions.candidate, events.clone()),
        );
        self.report.batches += 1;
        self.report.events += events.len() as u64;
        self.report.stable.add(&stable);
        self.report.candidate.add(&candidate);
        self.compare(&messages, &stable, &candidate);
    }

    fn compare(&mut self, messages: &[StoredEvent], stable: &Run, candidate: &Run) {
        for i in compare::changed(stable, candidate, messages.len()) {
            let message = &messages[i];
            let (a, b) = (
                stable.decisions.get(i).cloned().unwrap_or(Decision::Done),
                candidate
                    .decisions
                    .get(i)
                    .cloned()
                    .unwrap_or(Decision::Done),
            );
            self.report.changed += 1;
            if self.report.changes.len() < self.options.limit {
                self.report.changes.push(Change {
                    sequence: message.sequence,
                    id: message.id.clone(),
                    subject: message.subject.clone(),
                    stable: a,
                    candidate: b,
                    stable_effects: stable.effects.clone(),
                    candidate_effects: candidate.effects.clone(),
                });
            }
        }
    }
}
