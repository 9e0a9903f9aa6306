//! The composition root: `weir run` as a library.
//!
//! [`Daemon::start`] takes a validated [`Plan`] and runs these phases in
//! order; `/health` reports the current one from the first ([`Phase`]):
//!
//! 1. `serve_http`: `/metrics`, `/health`, `/stats` (first, so a host that is
//!    still starting says so);
//! 2. `start_nats`: the configured URL, or a private nats-server on loopback
//!    (the embedded default, stopped with the host);
//! 3. `deploy_apps`: the runtime and every app (compiled, checked,
//!    prepared), off the async workers;
//! 4. `connect` and `set_up_streams`: waits for NATS, creates or verifies the
//!    streams and the effect records bucket (a conflicting stream fails);
//! 5. `spawn_pipelines`: one durable consumer and one pipeline task per app.
//!
//! Every phase may be abandoned by dropping the future (a signal during
//! start): what it holds is released on drop (the private server is
//! stopped). [`Daemon::shutdown`] stops intake, lets in-flight batches finish
//! within [`DRAIN_TIMEOUT`], then flushes and closes NATS within
//! [`NATS_CLOSE_TIMEOUT`] each, so it ends within
//! `DRAIN_TIMEOUT` + [`SHUTDOWN_SLACK`] even when NATS is gone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Config, Plan};
use crate::effects::EffectRunner;
use crate::envelope::DEFAULT_MAX_PAYLOAD_BYTES;
pub use crate::http::Phase;
use crate::http::{AppCounters, Health};
use crate::nats::{ConnectAuth, EffectRecords, NatsServer, Subjects, Transport, TransportError};
use crate::pipeline::AppPipeline;
use crate::runtime::{App, Runtime};
use crate::stats::{AppStats, AppStatsSnapshot};

/// Pause between attempts to set up streams at start: 1 s.
pub const SETUP_RETRY: Duration = Duration::from_secs(1);

/// Longest wait for in-flight batches at shutdown: 10 s (a batch's default
/// deadline is 2 s; effects may take longer). Past it, unfinished events are
/// redelivered after their ack wait.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for each of flushing and closing the NATS connection at
/// shutdown: 2 s (both wait forever on a connection whose server is gone).
pub const NATS_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait for the HTTP server to stop at shutdown: 1 s.
pub const HTTP_STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// What [`Daemon::shutdown`] may take beyond [`DRAIN_TIMEOUT`]: 5 s (flush and
/// close, the HTTP server, the private nats-server's own stop grace).
pub const SHUTDOWN_SLACK: Duration = Duration::from_secs(5);

/// Aborts a task when dropped (the HTTP server of a start that failed or was
/// abandoned).
#[derive(Debug)]
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// A running daemon: every app consuming, the HTTP endpoints served.
#[derive(Debug)]
pub struct Daemon {
    node: u32,
    nats_url: String,
    http_addr: Option<SocketAddr>,
    stats: AppCounters,
    health: Arc<Health>,
    transport: Transport,
    runtime: Runtime,
    shutdown: watch::Sender<bool>,
    workers: JoinSet<()>,
    http: AbortOnDrop,
    embedded: Option<NatsServer>,
}

impl Daemon {
    /// Start everything `plan` describes (see module docs); build the plan
    /// with [`Config::plan`].
    ///
    /// Cancel safety: dropping the future abandons the start and releases
    /// what it holds (the HTTP listener, the private nats-server, the NATS
    /// connection); a compile already running finishes on its thread.
    ///
    /// # Errors
    ///
    /// The first phase that fails, with every problem of that phase: the
    /// HTTP address is taken, the private server cannot start (with the
    /// install hint), an app cannot be deployed, a stream conflicts, a
    /// consumer is refused.
    pub async fn start(plan: Plan) -> anyhow::Result<Self> {
        let plan = Arc::new(plan);
        let config = &plan.config;
        let health = Arc::new(Health::default());
        let stats: AppCounters = Arc::new(
            plan.apps
                .iter()
                .map(|a| (a.spec.name.clone(), Arc::new(AppStats::default())))
                .collect(),
        );
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (http, http_addr) =
            serve_http(config, stats.clone(), health.clone(), shutdown_rx.clone()).await?;
        let (embedded, nats_url) = start_nats(config).await?;
        health.set(Phase::Deploying);
        let (runtime, apps) = deploy_apps(plan.clone()).await?;
        health.set(Phase::Connecting);
        let transport = connect(config, &nats_url).await?;
        let _ = health.transport.set(transport.clone());
        let records = set_up_streams(&transport, config.node.id).await?;
        let effects = Arc::new(
            EffectRunner::new(config.effects.clone(), Some(transport.clone()))
                .with_durable_records(records),
        );
        let workers =
            spawn_pipelines(&plan, apps, &stats, &transport, &effects, &shutdown_rx).await?;
        health.set(Phase::Running);
        tracing::info!(node = config.node.id, apps = stats.len(), "weir running");
        Ok(Self {
            node: config.node.id,
            nats_url,
            http_addr,
            stats,
            health,
            transport,
            runtime,
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

    /// The current phase (see [`Phase`]).
    pub fn phase(&self) -> Phase {
        self.health.phase()
    }

    /// The runtime the apps run in.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Stop intake, drain in-flight batches (at most [`DRAIN_TIMEOUT`]), flush
    /// and close NATS (at most [`NATS_CLOSE_TIMEOUT`] each), stop the HTTP
    /// server and the private nats-server. Ends within `DRAIN_TIMEOUT` +
    /// [`SHUTDOWN_SLACK`], NATS reachable or not.
    ///
    /// # Errors
    ///
    /// If the drain timed out (unfinished events will be redelivered).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        tracing::info!("shutting down: draining in-flight batches");
        self.health.set(Phase::Draining);
        let _ = self.shutdown.send(true);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while self.workers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.workers.abort_all();
        }
        match tokio::time::timeout(NATS_CLOSE_TIMEOUT, self.transport.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flush at shutdown failed"),
            Err(_) => tracing::warn!(
                "flush at shutdown timed out (NATS unreachable): unsent acks are redelivered later"
            ),
        }
        if let Some(http) = self.http.0.take()
            && tokio::time::timeout(HTTP_STOP_TIMEOUT, http).await.is_err()
        {
            tracing::debug!("HTTP server did not stop in time");
        }
        if tokio::time::timeout(NATS_CLOSE_TIMEOUT, self.transport.close())
            .await
            .is_err()
        {
            tracing::debug!("closing the NATS connection timed out");
        }
        if let Some(server) = self.embedded.take() {
            tokio::task::spawn_blocking(move || drop(server)).await.ok();
        }
        match drained {
            Ok(()) => {
                tracing::info!("shutdown complete");
                Ok(())
            }
            Err(_) => anyhow::bail!(
                "drain timed out after {DRAIN_TIMEOUT:?}; unfinished events will be redelivered"
            ),
        }
    }
}

/// Phase 1: bind and serve the HTTP endpoints (if enabled).
async fn serve_http(
    config: &Config,
    stats: AppCounters,
    health: Arc<Health>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(AbortOnDrop, Option<SocketAddr>)> {
    if !config.http.enabled {
        return Ok((AbortOnDrop(None), None));
    }
    let (task, addr) =
        crate::http::serve(config.http.listen, config.node.id, stats, health, stop).await?;
    Ok((AbortOnDrop(Some(task)), Some(addr)))
}

/// Phase 2: the configured NATS URL, or a private nats-server.
async fn start_nats(config: &Config) -> anyhow::Result<(Option<NatsServer>, String)> {
    if let Some(url) = &config.nats.url {
        return Ok((None, url.clone()));
    }
    let dir = config
        .nats
        .state_dir
        .clone()
        .unwrap_or_else(crate::nats::server::default_store_dir);
    let server = tokio::task::spawn_blocking(move || NatsServer::start(&dir))
        .await
        .context("failed to start the private nats-server")??;
    let url = server.url();
    tracing::info!(url = %url, "no nats.url configured: using a private nats-server (embedded default)");
    Ok((Some(server), url))
}

/// Phase 3: the runtime and every app, on a blocking thread (compiling is
/// CPU work; the async workers keep serving `/health` and signals).
async fn deploy_apps(plan: Arc<Plan>) -> anyhow::Result<(Runtime, Vec<App>)> {
    tokio::task::spawn_blocking(move || {
        let runtime = Runtime::new(plan.config.engine.clone())?;
        let mut deployed = Vec::with_capacity(plan.apps.len());
        let mut problems = Vec::new();
        for app in &plan.apps {
            match runtime.deploy_file(app.spec.clone(), &app.component) {
                Ok(a) => deployed.push(a),
                Err(e) => problems.push(format!("app {}: {e}", app.spec.name)),
            }
        }
        anyhow::ensure!(
            problems.is_empty(),
            "cannot deploy:\n  {}",
            problems.join("\n  ")
        );
        Ok((runtime, deployed))
    })
    .await
    .context("deploy thread failed")?
}

/// Phase 4a: the NATS connection (an unreachable server is retried in the
/// background).
async fn connect(config: &Config, url: &str) -> anyhow::Result<Transport> {
    let subjects = Subjects::new(&config.nats.prefix)?;
    let client_name = format!("weir-node{}", config.node.id);
    let auth = ConnectAuth {
        user_password: config
            .nats
            .user
            .clone()
            .map(|u| (u, config.nats.password.clone().unwrap_or_default())),
        // A per-node inbox, so least-privilege permissions can keep hosts
        // from reading each other's replies.
        inbox_prefix: Some(
            config
                .nats
                .inbox_prefix
                .clone()
                .unwrap_or_else(|| crate::permissions::default_inbox_prefix(config.node.id)),
        ),
    };
    Ok(
        Transport::connect_with(url, &client_name, subjects, &config.nats.stream, auth)
            .await?
            .with_stream_limits(config.nats.stream_limits())
            .with_dead_letter_limits(config.nats.dead_letter_limits()),
    )
}

/// Phase 4b: wait for NATS, then create or verify the streams and the
/// effect records bucket. A setup error other than a conflicting stream is
/// retried (the connection can drop again in between).
async fn set_up_streams(transport: &Transport, node: u32) -> anyhow::Result<EffectRecords> {
    loop {
        transport.wait_connected().await;
        let setup = async {
            transport.ensure_streams().await?;
            transport.effect_records(node).await
        };
        match setup.await {
            Ok(records) => return Ok(records),
            Err(e @ TransportError::StreamConflict { .. }) => return Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, "stream setup failed; retrying");
                tokio::time::sleep(SETUP_RETRY).await;
            }
        }
    }
}

/// Phase 5: one durable consumer and one pipeline task per app.
async fn spawn_pipelines(
    plan: &Plan,
    apps: Vec<App>,
    stats: &AppCounters,
    transport: &Transport,
    effects: &Arc<EffectRunner>,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<JoinSet<()>> {
    let node = plan.config.node.id;
    let mut workers = JoinSet::new();
    for ((app_plan, app), (_, app_stats)) in plan.apps.iter().zip(apps).zip(stats.iter()) {
        let events = app_plan.filter.event_names();
        let consumer = transport
            .consumer(node, &app_plan.spec.name, &events, &app_plan.delivery)
            .await?;
        tracing::debug!(app = %app_plan.spec.name, consumer = %consumer.name(), ?events, "app consuming");
        let pipeline = AppPipeline::new(
            app,
            node,
            app_plan.filter.clone(),
            consumer,
            transport.clone(),
            effects.clone(),
            app_stats.clone(),
        )
        .with_grants(app_plan.grants.clone())
        .with_delivery(app_plan.delivery.clone())
        .with_max_payload_bytes(DEFAULT_MAX_PAYLOAD_BYTES);
        workers.spawn(pipeline.run(shutdown.clone()));
    }
    tracing::info!(apps = workers.len(), "apps consuming");
    Ok(workers)
}
