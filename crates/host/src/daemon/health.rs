//! The state the daemon keeps for whatever serves its endpoints: the
//! [`Phase`], readiness, every app's counters, the reload outcome and the
//! queue of reload requests ([`Health`]). The HTTP adapter
//! (`crate::http`) reads it; the daemon does not know who serves it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::reload::{ReloadError, ReloadReport};
use crate::nats::Transport;
use crate::stats::{AppCounters, unix_ms};

/// What a batch may take beyond its deadline before `/ready` calls its
/// pipeline stuck: 5 s (the epoch tick stops a spinning guest within
/// milliseconds of the deadline; effects run after the invocation and are
/// bounded separately).
pub const STUCK_BATCH_GRACE: Duration = Duration::from_secs(5);

/// How long fetches of one app may keep failing before `/ready` reports
/// it: 10 s (a reconnection or a JetStream election takes a few seconds).
pub const FETCH_FAILING_BAR: Duration = Duration::from_secs(10);

/// Reload requests queued at most: 4 (`POST /reload` answers 503 when the
/// queue is full).
pub const RELOAD_QUEUE: usize = 4;

/// The answer to one reload request.
pub type ReloadReply = oneshot::Sender<Result<ReloadReport, ReloadError>>;

/// Where the daemon is in its life, as `/health` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Starting NATS (the private server) or the runtime.
    Starting = 0,
    /// Compiling, checking and preparing the apps.
    Deploying = 1,
    /// Waiting for NATS, setting up streams and consumers.
    Connecting = 2,
    /// Consuming events.
    Running = 3,
    /// Shutting down: intake stopped, in-flight batches finishing.
    Draining = 4,
}

impl Phase {
    /// The word `/health` answers with.
    pub fn label(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Deploying => "deploying",
            Self::Connecting => "connecting",
            Self::Running => "running",
            Self::Draining => "draining",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Starting,
            1 => Self::Deploying,
            2 => Self::Connecting,
            3 => Self::Running,
            _ => Self::Draining,
        }
    }
}

/// The outcome of the last reload, as `/stats` reports it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadStatus {
    /// Reloads applied since start.
    pub applied: u64,
    /// Reloads refused since start (nothing changed).
    pub refused: u64,
    /// The last one, if any.
    pub last: Option<LastReload>,
}

/// One reload's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct LastReload {
    /// When it ended, in ms since the Unix epoch.
    pub at_ms: u64,
    /// Applied (`true`) or refused.
    pub ok: bool,
    /// What changed (applied).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<ReloadReport>,
    /// Every problem (refused).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// What `/health`, `/ready` and `/stats` read: the phase, the NATS
/// connection once made, every app's counters, the reload outcome.
#[derive(Debug)]
pub struct Health {
    phase: AtomicU8,
    pub(crate) transport: OnceLock<Transport>,
    pub(crate) stats: AppCounters,
    reload: Mutex<ReloadStatus>,
    pub(crate) reloads: mpsc::Sender<ReloadReply>,
    /// Set once the owner of the daemon takes the reload requests; until
    /// then `POST /reload` answers 503 at once.
    pub(crate) reloads_taken: std::sync::atomic::AtomicBool,
    /// Why the host cannot go on (its NATS client is gone), once it is so.
    pub(crate) fatal: OnceLock<String>,
}

impl Health {
    /// Health over `stats`, and the receiving end of `POST /reload`.
    pub(crate) fn new(stats: AppCounters) -> (Self, mpsc::Receiver<ReloadReply>) {
        let (reloads, requests) = mpsc::channel(RELOAD_QUEUE);
        (
            Self {
                phase: AtomicU8::new(Phase::Starting as u8),
                transport: OnceLock::new(),
                stats,
                reload: Mutex::default(),
                reloads,
                reloads_taken: std::sync::atomic::AtomicBool::new(false),
                fatal: OnceLock::new(),
            },
            requests,
        )
    }

    pub(crate) fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
        tracing::debug!(phase = phase.label(), "phase");
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    /// Record a reload's outcome.
    pub(crate) fn reloaded(&self, outcome: &Result<ReloadReport, ReloadError>) {
        let mut status = self
            .reload
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let last = match outcome {
            Ok(report) => {
                status.applied += 1;
                LastReload {
                    at_ms: unix_ms(),
                    ok: true,
                    changes: Some(report.clone()),
                    problems: Vec::new(),
                }
            }
            Err(e) => {
                status.refused += 1;
                LastReload {
                    at_ms: unix_ms(),
                    ok: false,
                    changes: None,
                    problems: e.problems.clone(),
                }
            }
        };
        status.last = Some(last);
    }

    /// The reload outcomes so far.
    pub fn reload_status(&self) -> ReloadStatus {
        self.reload
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Every reason the host is not ready (empty: ready): not running yet
    /// (or draining), NATS disconnected, a batch past its deadline +
    /// [`STUCK_BATCH_GRACE`], fetches failing for over
    /// [`FETCH_FAILING_BAR`]. A quarantined app does not make the host
    /// unready (the others are served); `/stats` shows it.
    pub fn readiness(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if let Some(fatal) = self.fatal.get() {
            reasons.push(format!("nats: {fatal}; the host is stopping"));
        }
        let phase = self.phase();
        if phase != Phase::Running {
            reasons.push(format!("phase: {}", phase.label()));
        }
        if phase == Phase::Running && !self.transport.get().is_some_and(Transport::is_connected) {
            reasons.push("nats: disconnected".to_owned());
        }
        let now = unix_ms();
        let apps = self
            .stats
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, s) in apps.iter() {
            let started = s.batch_started_ms.get();
            let deadline = s.batch_deadline_ms.get();
            let running = now.saturating_sub(started);
            if started != 0 && running > deadline + STUCK_BATCH_GRACE.as_millis() as u64 {
                reasons.push(format!(
                    "app {name}: batch running for {running} ms, past its deadline of {deadline} ms + {} s",
                    STUCK_BATCH_GRACE.as_secs()
                ));
            }
            let failing_since = s.fetch_failing_since_ms.get();
            let failing = now.saturating_sub(failing_since);
            if failing_since != 0 && failing > FETCH_FAILING_BAR.as_millis() as u64 {
                reasons.push(format!(
                    "app {name}: fetches failing for {} s",
                    failing / 1_000
                ));
            }
        }
        reasons
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::stats::AppStats;

    #[test]
    fn ready_only_while_running_and_connected() {
        let (h, _requests) = Health::new(AppCounters::default());
        assert_eq!(h.readiness(), ["phase: starting"]);
        h.set(Phase::Running);
        // Running, but no NATS connection yet.
        assert_eq!(h.readiness(), ["nats: disconnected"]);
        h.set(Phase::Draining);
        assert_eq!(h.readiness(), ["phase: draining"]);
        for p in [
            Phase::Starting,
            Phase::Deploying,
            Phase::Connecting,
            Phase::Running,
            Phase::Draining,
        ] {
            assert_eq!(Phase::from_u8(p as u8), p);
        }
    }

    #[test]
    fn a_stuck_batch_and_failing_fetches_are_reasons() {
        let stats = AppCounters::default();
        let app = Arc::new(AppStats::default());
        stats
            .write()
            .unwrap()
            .push(("mail".to_owned(), app.clone()));
        let (h, _requests) = Health::new(stats);
        h.set(Phase::Draining);
        app.batch_deadline_ms.set(2_000);
        // A batch that started 2 s + grace + 1 s ago.
        app.batch_started_ms
            .set(unix_ms() - 2_000 - STUCK_BATCH_GRACE.as_millis() as u64 - 1_000);
        app.fetch_failing_since_ms
            .set(unix_ms() - FETCH_FAILING_BAR.as_millis() as u64 - 1_000);
        let reasons = h.readiness();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(
            reasons[1].starts_with("app mail: batch running for"),
            "{reasons:?}"
        );
        assert!(
            reasons[2].starts_with("app mail: fetches failing for"),
            "{reasons:?}"
        );
        // Within the bars: not reasons.
        app.batch_started_ms.set(unix_ms() - 2_000);
        app.fetch_failing_since_ms.set(unix_ms() - 1_000);
        assert_eq!(h.readiness(), ["phase: draining"]);
    }
}
