//! The daemon's HTTP endpoints, on loopback by default (they are
//! unauthenticated):
//!
//! - `/health`: `200 ok: running` only while every app consumes and NATS is
//!   connected; `503 unavailable: <phase>` otherwise ([`Phase`]);
//! - `/stats`: JSON, `{"node": <id>, "apps": [<AppStatsSnapshot>...]}`;
//! - `/metrics`: OpenMetrics text ([`crate::stats::prometheus`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use tokio::sync::watch;

use crate::nats::Transport;
use crate::stats::{AppStats, prometheus};

/// Every app's name and counters, in config order.
pub(crate) type AppCounters = Arc<Vec<(String, Arc<AppStats>)>>;

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

/// What `/health` reads: the phase and, once connected, the NATS state.
#[derive(Debug, Default)]
pub(crate) struct Health {
    phase: AtomicU8,
    pub(crate) transport: OnceLock<Transport>,
}

impl Health {
    pub(crate) fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
        tracing::debug!(phase = phase.label(), "phase");
    }

    pub(crate) fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    /// HTTP status and body: 200 only while running with NATS connected.
    pub(crate) fn answer(&self) -> (u16, String) {
        match self.phase() {
            Phase::Running if self.transport.get().is_some_and(Transport::is_connected) => {
                (200, "ok: running\n".to_owned())
            }
            Phase::Running => (503, "unavailable: running, NATS disconnected\n".to_owned()),
            other => (503, format!("unavailable: {}\n", other.label())),
        }
    }
}

/// Bind `listen` and serve `/health`, `/stats` and `/metrics` until `stop`
/// turns true; returns the task and the address bound (port 0 resolved).
///
/// # Errors
///
/// The address cannot be bound (taken, not local).
pub(crate) async fn serve(
    listen: SocketAddr,
    node: u32,
    stats: AppCounters,
    health: Arc<Health>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("failed to listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let router = router(node, stats, health);
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        if let Err(e) = serve.await {
            tracing::warn!(error = %e, "HTTP server stopped");
        }
    });
    tracing::info!(addr = %addr, "serving /metrics, /health, /stats");
    Ok((task, addr))
}

fn router(node: u32, stats: AppCounters, health: Arc<Health>) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;
    let snapshots =
        |stats: &AppCounters| stats.iter().map(|(n, s)| s.snapshot(n)).collect::<Vec<_>>();
    let for_stats = stats.clone();
    axum::Router::new()
        .route(
            "/health",
            get(move || {
                let (code, body) = health.answer();
                async move {
                    (
                        StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                        body,
                    )
                }
            }),
        )
        .route(
            "/stats",
            get(move || {
                let s = snapshots(&for_stats);
                async move { axum::Json(serde_json::json!({ "node": node, "apps": s })) }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let body = prometheus(node, &snapshots(&stats));
                async move {
                    (
                        [("content-type", crate::stats::OPENMETRICS_CONTENT_TYPE)],
                        body,
                    )
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_ok_only_while_running() {
        let h = Health::default();
        assert_eq!(h.answer(), (503, "unavailable: starting\n".to_owned()));
        h.set(Phase::Deploying);
        assert_eq!(h.answer().0, 503);
        h.set(Phase::Running);
        // Running, but no NATS connection yet.
        assert_eq!(
            h.answer(),
            (503, "unavailable: running, NATS disconnected\n".to_owned())
        );
        h.set(Phase::Draining);
        assert_eq!(h.answer(), (503, "unavailable: draining\n".to_owned()));
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
}
