//! Shadow run: the candidate on the live batches of the stable version,
//! effects intercepted.
//!
//! After each successful invocation of the stable version, the pipeline
//! offers its events and what the stable version decided
//! ([`crate::pipeline::Observer`]); the batch is queued (at most
//! [`SHADOW_QUEUE_BATCHES`]; when the queue is full the batch is skipped
//! and counted, so a slow candidate never holds the live pipeline back)
//! and run through the candidate on a task of its own as `weir replay`
//! runs it ([`crate::replay::compare::run`]: a fresh sandbox, the app's
//! limits; a failed batch is run event by event). Its effects are never
//! executed; its kv reads see the live buckets, its writes go to an
//! overlay cleared before each batch (the candidate sees the state the
//! stable version keeps, never its own earlier writes).
//!
//! Counted per app in `/stats` and `/metrics`: `shadow_batches`,
//! `shadow_events`, `shadow_changed_events` (an event whose decision
//! differs, or whose batch's effects differ, as `weir replay` counts
//! them), `shadow_failed_events`, `shadow_skipped_batches`.

use std::sync::Arc;

use tokio::sync::mpsc;
use weir_runtime::kv::KvBackend;
use weir_runtime::{App, Event, Handled};

use crate::pipeline::Observer;
use crate::replay::compare::{self, Decision, Run};
use crate::replay::overlay::OverlayKv;
use crate::stats::AppStats;

/// Live batches waiting for the candidate at most: 4. One more is
/// skipped (counted in `shadow_skipped_batches`).
pub const SHADOW_QUEUE_BATCHES: usize = 4;

/// One live batch and what the stable version decided.
struct Offered {
    events: Arc<[Event]>,
    live: Run,
}

/// The pipeline's side of a shadow run: offers batches. Dropping the
/// last one ends the run once its queue is drained.
#[derive(Debug)]
pub struct Shadow {
    queue: mpsc::Sender<Offered>,
    stats: Arc<AppStats>,
}

impl std::fmt::Debug for Offered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offered")
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl Shadow {
    /// Start running `candidate` beside the live version of the app whose
    /// counters are `stats`; `live_kv` is the app's buckets (read only).
    /// The task ends when the returned [`Shadow`] is dropped.
    pub fn start(
        candidate: App,
        stats: Arc<AppStats>,
        live_kv: Option<Arc<dyn KvBackend>>,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let overlay = Arc::new(OverlayKv::new(live_kv));
        if candidate.kv_grant().any() {
            candidate.attach_kv(overlay.clone());
        }
        let (queue, rx) = mpsc::channel(SHADOW_QUEUE_BATCHES);
        let task = tokio::spawn(run(candidate, stats.clone(), overlay, rx));
        (Arc::new(Self { queue, stats }), task)
    }
}

impl Observer for Shadow {
    fn handled(&self, events: &Arc<[Event]>, handled: &Handled) {
        let offered = Offered {
            events: events.clone(),
            live: Run::of(handled),
        };
        if self.queue.try_send(offered).is_err() {
            self.stats.shadow_skipped_batches.add(1);
        }
    }
}

async fn run(
    candidate: App,
    stats: Arc<AppStats>,
    overlay: Arc<OverlayKv>,
    mut queue: mpsc::Receiver<Offered>,
) {
    while let Some(Offered { events, live }) = queue.recv().await {
        overlay.clear();
        let shadow = compare::run(&candidate, events.clone()).await;
        let changed = compare::changed_events(&live, &shadow, events.len());
        let failed = shadow
            .decisions
            .iter()
            .filter(|d| matches!(d, Decision::Failed { .. }))
            .count();
        stats.shadow_batches.add(1);
        stats.shadow_events.add(events.len() as u64);
        stats.shadow_changed_events.add(changed as u64);
        stats.shadow_failed_events.add(failed as u64);
        if changed > 0 {
            tracing::debug!(app = %candidate.name(), changed, events = events.len(), "shadow: the candidate decided differently");
        }
    }
}
