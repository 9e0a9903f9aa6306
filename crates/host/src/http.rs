//! The daemon's HTTP endpoints, on loopback by default (a listen address
//! beyond loopback needs `[http] public = true`); the ones that read need no
//! credentials, the one that changes state needs the admin token:
//!
//! - `GET /health`: liveness. `200 ok: <phase>` whenever the runtime's loop
//!   answers (a hung process answers nothing, which is the signal);
//! - `GET /ready`: readiness. `200` with `{"ready": true, "reasons": []}`
//!   while running with NATS connected, every stream and consumer set up
//!   and no pipeline stuck; `503` with `{"ready": false, "reasons":
//!   ["..."]}` naming each reason otherwise ([`crate::daemon::Daemon::readiness`]);
//! - `GET /stats`: JSON, `{"node": <id>, "apps": [<AppStatsSnapshot>...],
//!   "reload": <ReloadStatus>}`;
//! - `GET /metrics`: OpenMetrics text ([`crate::stats::prometheus`]);
//! - `POST /reload` (with `Authorization: Bearer <admin token>`,
//!   [`crate::admin_token`]; `401` and nothing done without it): re-read
//!   the config file and apply it (see
//!   [`crate::daemon::Daemon::reload`]); `200` with the changes or `422`
//!   with every problem (nothing changed); `503` if the process does not
//!   take reload requests (a library user that did not ask for them).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::config::Plan;
use crate::daemon::health::Health;
pub use crate::daemon::health::{LastReload, Phase, ReloadReply, ReloadStatus};
use crate::daemon::{Daemon, ServeFuture};
use crate::stats::{prometheus, snapshots};

/// [`Daemon::start_with`] these endpoints: what `weir run` starts.
///
/// # Errors
///
/// As [`Daemon::start`], plus the listen address cannot be bound.
pub async fn start(plan: Plan) -> anyhow::Result<Daemon> {
    Daemon::start_with(plan, Some(endpoints)).await
}

/// [`serve`] as the daemon's [`crate::daemon::Endpoints`].
pub fn endpoints(
    listen: SocketAddr,
    node: u32,
    health: Arc<Health>,
    admin_token: String,
    stop: watch::Receiver<bool>,
) -> ServeFuture {
    Box::pin(serve(listen, node, health, admin_token, stop))
}

/// Longest `POST /reload` waits for the reload to finish: 300 s (a reload
/// compiles changed components; a large Python or JavaScript component
/// takes seconds).
pub const RELOAD_REPLY_TIMEOUT: Duration = Duration::from_secs(300);

/// Bind `listen` and serve the endpoints until `stop` turns true; returns
/// the task and the address bound (port 0 resolved).
///
/// # Errors
///
/// The address cannot be bound (taken, not local).
pub async fn serve(
    listen: SocketAddr,
    node: u32,
    health: Arc<Health>,
    admin_token: String,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, SocketAddr)> {
    weir_edge::serve::serve_router(
        listen,
        router(node, health, admin_token.into()),
        stop,
        "/health, /ready, /stats, /metrics, POST /reload",
    )
    .await
}

fn router(node: u32, health: Arc<Health>, admin_token: Arc<str>) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    let json = |code: StatusCode, body: serde_json::Value| (code, axum::Json(body));
    let (h_health, h_ready, h_stats, h_metrics) = (
        health.clone(),
        health.clone(),
        health.clone(),
        health.clone(),
    );
    axum::Router::new()
        .route(
            "/health",
            get(move || {
                let body = format!("ok: {}\n", h_health.phase().label());
                async move { body }
            }),
        )
        .route(
            "/ready",
            get(move || {
                let reasons = h_ready.readiness();
                let code = if reasons.is_empty() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let body = serde_json::json!({ "ready": reasons.is_empty(), "reasons": reasons });
                async move { json(code, body) }
            }),
        )
        .route(
            "/stats",
            get(move || {
                let body = serde_json::json!({
                    "node": node,
                    "apps": snapshots(&h_stats.stats),
                    "reload": h_stats.reload_status(),
                });
                async move { axum::Json(body) }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let body = prometheus(node, &snapshots(&h_metrics.stats));
                async move {
                    (
                        [("content-type", crate::stats::OPENMETRICS_CONTENT_TYPE)],
                        body,
                    )
                }
            }),
        )
        .route(
            "/reload",
            post(move |headers: axum::http::HeaderMap| {
                let reloads = health.reloads.clone();
                let taken = health.reloads_taken.load(Ordering::Relaxed);
                let authorized = crate::admin_token::authorizes(
                    &admin_token,
                    headers
                        .get(axum::http::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok()),
                );
                async move {
                    if !authorized {
                        tracing::warn!("POST /reload without the admin token: refused");
                        return json(
                            StatusCode::UNAUTHORIZED,
                            serde_json::json!({ "ok": false, "problems": ["POST /reload needs Authorization: Bearer <the admin token> (weir reload --config reads it; see [http] admin_token_file)"] }),
                        );
                    }
                    let (reply, answer) = oneshot::channel();
                    if !taken || reloads.try_send(reply).is_err() {
                        return json(
                            StatusCode::SERVICE_UNAVAILABLE,
                            serde_json::json!({ "ok": false, "problems": ["reloads are not taken now (queue full or not enabled)"] }),
                        );
                    }
                    match tokio::time::timeout(RELOAD_REPLY_TIMEOUT, answer).await {
                        Ok(Ok(Ok(report))) => json(
                            StatusCode::OK,
                            serde_json::json!({ "ok": true, "changes": report }),
                        ),
                        Ok(Ok(Err(e))) => json(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            serde_json::json!({ "ok": false, "problems": e.problems }),
                        ),
                        Ok(Err(_)) | Err(_) => json(
                            StatusCode::SERVICE_UNAVAILABLE,
                            serde_json::json!({ "ok": false, "problems": ["the reload did not answer (host stopping?)"] }),
                        ),
                    }
                }
            }),
        )
}
