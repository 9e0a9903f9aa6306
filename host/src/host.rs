//! A running host: `weir run` as a library.
//!
//! [`Host::start`] phases, in order (each fails with every problem it can
//! see):
//!
//! 1. NATS: the configured URL, or a private nats-server on loopback (the
//!    embedded default, stopped with the host);
//! 2. the runtime and every app deployed (compiled, checked, prepared);
//! 3. the streams created or verified, one durable consumer per app;
//! 4. one pipeline task per app, and the HTTP endpoints.
//!
//! [`Host::shutdown`] stops intake, lets in-flight batches finish within
//! [`DRAIN_TIMEOUT`], flushes acks and stops the private server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::app::AppSpec;
use crate::config::Config;
use crate::domain::DomainSet;
use crate::effects::EffectRunner;
use crate::engine::Runtime;
use crate::envelope::DEFAULT_MAX_PAYLOAD_BYTES;
use crate::filter::Filter;
use crate::nats_server::NatsServer;
use crate::pipeline::AppPipeline;
use crate::stats::{AppStats, AppStatsSnapshot, prometheus};
use crate::subjects::Subjects;
use crate::transport::{ConnectAuth, StreamLimits, Transport};

/// Pause between attempts to set up streams at start: 1 s.
pub const SETUP_RETRY: Duration = Duration::from_secs(1);

/// Longest wait for in-flight batches at shutdown: 10 s (a batch's default
/// deadline is 2 s; effects may take longer). Past it, unfinished events are
/// redelivered after their ack wait.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

type AppCounters = Arc<Vec<(String, Arc<AppStats>)>>;

/// A running host.
#[derive(Debug)]
pub struct Host {
    node: u32,
    nats_url: String,
    http_addr: Option<SocketAddr>,
    stats: AppCounters,
    transport: Transport,
    shutdown: watch::Sender<bool>,
    workers: JoinSet<()>,
    http: Option<tokio::task::JoinHandle<()>>,
    embedded: Option<NatsServer>,
}

impl Host {
    /// Start everything `config` describes (see module docs).
    ///
    /// # Errors
    ///
    /// The first phase that fails, with every problem of that phase: the
    /// private server cannot start (with the install hint), an app cannot be
    /// deployed, a stream conflicts, a consumer is refused, the HTTP address
    /// is taken.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let (embedded, nats_url) = match &config.nats.url {
            Some(url) => (None, url.clone()),
            None => {
                let dir = config
                    .nats
                    .state_dir
                    .clone()
                    .unwrap_or_else(|| std::env::temp_dir().join("weir-nats"));
                let server = tokio::task::spawn_blocking(move || NatsServer::start(&dir))
                    .await
                    .context("failed to start the private nats-server")??;
                let url = server.url();
                tracing::info!(url = %url, "no nats.url configured: using a private nats-server (embedded default)");
                (Some(server), url)
            }
        };

        let runtime = Runtime::new(config.engine.clone())?;
        let mut deployed = Vec::new();
        let mut problems = Vec::new();
        for app in &config.apps {
            let mut spec = AppSpec::new(&app.name, config.node.id, &config.node.name);
            spec.domains = app.domains.clone();
            spec.limits = app.limits.clone();
            spec.clocks = app.grants.clocks;
            match runtime.deploy_file(spec, &app.component) {
                Ok(a) => deployed.push((app, a)),
                Err(e) => problems.push(format!("app {}: {e}", app.name)),
            }
        }
        anyhow::ensure!(
            problems.is_empty(),
            "cannot deploy:\n  {}",
            problems.join("\n  ")
        );

        let subjects = Subjects::new(&config.nats.prefix)?;
        let client_name = format!("weir-node{}", config.node.id);
        let auth =
            ConnectAuth {
                user_password: config
                    .nats
                    .user
                    .clone()
                    .map(|u| (u, config.nats.password.clone().unwrap_or_default())),
                // A per-node inbox, so least-privilege permissions can keep
                // hosts from reading each other's replies.
                inbox_prefix: Some(
                    config.nats.inbox_prefix.clone().unwrap_or_else(|| {
                        crate::permissions::default_inbox_prefix(config.node.id)
                    }),
                ),
            };
        let transport =
            Transport::connect_with(&nats_url, &client_name, subjects, &config.nats.stream, auth)
                .await?
                .with_stream_limits(StreamLimits {
                    max_bytes: config.nats.stream_max_bytes,
                    max_msgs: config.nats.stream_max_msgs,
                });
        // NATS may be down at start: wait for it, then set up; a setup error
        // other than a conflicting stream is retried (the connection can drop
        // again in between).
        let records = loop {
            transport.wait_connected().await;
            let setup = async {
                transport.ensure_streams().await?;
                transport.effect_records(config.node.id).await
            };
            match setup.await {
                Ok(records) => break records,
                Err(e @ crate::transport::TransportError::StreamConflict { .. }) => {
                    return Err(e.into());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "stream setup failed; retrying");
                    tokio::time::sleep(SETUP_RETRY).await;
                }
            }
        };
        let effects = Arc::new(
            EffectRunner::new(config.effects.clone(), Some(transport.clone()))
                .with_durable_records(records),
        );
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut workers = JoinSet::new();
        let mut counters = Vec::new();
        for (app_config, app) in deployed {
            let domains =
                DomainSet::new(&app_config.domains).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let filter = Filter::new(&app_config.rule, config.node.id, domains)
                .map_err(|p| anyhow::anyhow!("app {}: {}", app_config.name, p.join("; ")))?;
            let consumer = transport
                .consumer(
                    config.node.id,
                    &app_config.name,
                    &filter.event_names(),
                    &app_config.delivery,
                )
                .await?;
            let stats = Arc::new(AppStats::default());
            counters.push((app_config.name.clone(), stats.clone()));
            tracing::info!(app = %app_config.name, consumer = %consumer.name(), events = ?filter.event_names(), "app consuming");
            let pipeline = AppPipeline {
                app,
                filter,
                consumer,
                transport: transport.clone(),
                effects: effects.clone(),
                grants: app_config.grants.clone(),
                delivery: app_config.delivery.clone(),
                node: config.node.id,
                max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
                stats,
            };
            workers.spawn(pipeline.run(shutdown_rx.clone()));
        }
        let stats: AppCounters = Arc::new(counters);
        let (http, http_addr) = if config.http.enabled {
            let listener = tokio::net::TcpListener::bind(config.http.listen)
                .await
                .with_context(|| format!("failed to listen on {}", config.http.listen))?;
            let addr = listener.local_addr()?;
            let router = http_router(config.node.id, stats.clone());
            let mut stop = shutdown_rx.clone();
            let task = tokio::spawn(async move {
                let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                });
                if let Err(e) = serve.await {
                    tracing::warn!(error = %e, "HTTP server stopped");
                }
            });
            tracing::info!(addr = %addr, "serving /metrics, /health, /stats");
            (Some(task), Some(addr))
        } else {
            (None, None)
        };
        tracing::info!(node = config.node.id, apps = stats.len(), "weir running");
        Ok(Self {
            node: config.node.id,
            nats_url,
            http_addr,
            stats,
            transport,
            shutdown,
            workers,
            http,
            embedded,
        })
    }

    /// The NATS URL in use (the private server's when embedded).
    pub fn nats_url(&self) -> &str {
        &self.nats_url
    }

    /// The HTTP address actually bound (with port 0 resolved).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// A snapshot of every app's counters.
    pub fn stats(&self) -> Vec<AppStatsSnapshot> {
        self.stats
            .iter()
            .map(|(name, s)| s.snapshot(name))
            .collect()
    }

    /// This node's id.
    pub fn node(&self) -> u32 {
        self.node
    }

    /// Stop intake, drain in-flight batches (at most [`DRAIN_TIMEOUT`]), flush
    /// acks, stop the HTTP server and the private nats-server.
    ///
    /// # Errors
    ///
    /// If the drain timed out (events will be redelivered).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        tracing::info!("shutting down: draining in-flight batches");
        let _ = self.shutdown.send(true);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while self.workers.join_next().await.is_some() {}
        })
        .await;
        if let Err(e) = self.transport.flush().await {
            tracing::warn!(error = %e, "flush at shutdown failed");
        }
        if let Some(http) = self.http.take() {
            let _ = http.await;
        }
        if let Err(e) = self.transport.close().await {
            tracing::debug!(error = %e, "closing the NATS connection");
        }
        if let Some(server) = self.embedded.take() {
            tokio::task::spawn_blocking(move || drop(server)).await.ok();
        }
        match drained {
            Ok(()) => {
                tracing::info!("shutdown complete");
                Ok(())
            }
            Err(_) => {
                self.workers.abort_all();
                anyhow::bail!(
                    "drain timed out after {DRAIN_TIMEOUT:?}; unfinished events will be redelivered"
                )
            }
        }
    }
}

fn http_router(node: u32, stats: AppCounters) -> axum::Router {
    use axum::routing::get;
    let snapshots =
        |stats: &AppCounters| stats.iter().map(|(n, s)| s.snapshot(n)).collect::<Vec<_>>();
    let for_stats = stats.clone();
    axum::Router::new()
        .route("/health", get(|| async { "ok\n" }))
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
                async move { ([("content-type", "text/plain; version=0.0.4")], body) }
            }),
        )
}
