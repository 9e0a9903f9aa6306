//! The composition root: `weir run` as a library.
//!
//! [`Daemon::start`] takes a validated [`Plan`] and runs these phases in
//! order; `/health` reports the current one from the first ([`Phase`]):
//!
//! 1. `serve_http`: the endpoints, when the daemon is given an adapter that
//!    serves them ([`Endpoints`]; [`crate::http::start`] gives the HTTP one:
//!    `/health`, `/ready`, `/stats`, `/metrics`, `POST /reload`), first, so
//!    a host that is still starting says so;
//! 2. `start_nats`: the configured URL, or a private nats-server on loopback
//!    (the embedded default, stopped with the host);
//! 3. `deploy_apps`: the runtime and every app (compiled, checked,
//!    prepared), off the async workers;
//! 4. `connect` and `set_up_streams`: waits for NATS, creates or verifies the
//!    streams and the buckets of effect records, pending effects and
//!    rate-limit windows (a conflicting stream fails), then starts the
//!    executor of pending effects;
//! 5. `attach_buckets`, `set_up_consumer` and `spawn_app`: an app's
//!    key-value buckets (if granted), one durable consumer and one pipeline
//!    task per app; then the pending effects an earlier process left are
//!    scheduled.
//!
//! [`Daemon::reload`] applies a new plan's apps to the running daemon
//! ([`reload`]).
//!
//! Every phase may be abandoned by dropping the future (a signal during
//! start): what it holds is released on drop (the private server is
//! stopped). [`Daemon::shutdown`] stops intake, lets in-flight batches finish
//! within [`DRAIN_TIMEOUT`], then flushes and closes NATS within
//! [`NATS_CLOSE_TIMEOUT`] each, so it ends within
//! `DRAIN_TIMEOUT` + [`SHUTDOWN_SLACK`] even when NATS is gone.

pub mod reload;
mod rollout;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use backon::{ConstantBuilder, Retryable as _};
use futures::{StreamExt as _, TryStreamExt as _};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::LoadSource;
use crate::config::{AppConfig, AppPlan, Config, Plan};
use crate::effects::EffectRunner;
use crate::envelope::DEFAULT_MAX_PAYLOAD_BYTES;
use crate::filter::Filter;
pub mod health;
use crate::effects::{LimitStore, PendingStore};
use crate::nats::{
    AppConsumer, Delivery, EffectRecords, KnownConsumers, NatsServer, Subjects, Transport,
    TransportError, TransportExt as _,
};
use crate::pipeline::{AppPipeline, SwapSlot};
use crate::stats::AppCounters;
use crate::stats::{AppStats, AppStatsSnapshot};
pub use health::{Health, Phase, ReloadReply};
use rollout::{Arming, Deployed};
use weir_runtime::kv::KvBackend;
use weir_runtime::{App, Runtime};

/// Pause between attempts to set up streams and consumers at start: 1 s.
pub const SETUP_RETRY: Duration = Duration::from_secs(1);

/// Attempts to create or update an app's consumer at start before giving
/// up: 30 (about 30 s with [`SETUP_RETRY`]): long enough for a cluster's
/// JetStream to elect a leader ("temporarily unavailable" meanwhile), short
/// enough that a consumer the server refuses stops the start with its
/// error.
pub const CONSUMER_SETUP_ATTEMPTS: u32 = 30;

/// Apps whose buckets and consumers are set up at once at start: 16. Each is
/// a JetStream API round trip plus the server's writes of the consumer's
/// files; one at a time, 1,000 apps took 6 s to become ready on a disk
/// mounted with `discard` (the storm bench's scaling curve, README).
pub const CONSUMER_SETUP_CONCURRENCY: usize = 16;

/// Longest wait for in-flight batches at shutdown: 10 s (a batch's default
/// deadline is 2 s; effects may take longer). Past it, unfinished events are
/// redelivered after their ack wait.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for each of flushing and closing the NATS connection at
/// shutdown: 2 s (both wait forever on a connection whose server is gone).
pub const NATS_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the daemon checks that its NATS client still works
/// ([`Transport::client_gone`]): every 1 s. A client whose connection task
/// is gone (a panic in the client, a closed client) never reconnects; the
/// daemon reports it ([`Daemon::failed`]) and `weir run` drains and exits
/// non-zero so its supervisor restarts it.
pub const CLIENT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

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

/// One app as the daemon runs it.
#[derive(Debug)]
struct RunningApp {
    name: String,
    /// Its `[[app]]` entry as last applied (to tell what a reload changes).
    config: serde_json::Value,
    /// SHA-256 of its component file as last deployed, hex.
    digest: String,
    /// Its consumer's filter, as last set on the server.
    events: Vec<String>,
    /// Its consumer settings, as last set on the server.
    delivery: Delivery,
    /// Its durable consumer's name.
    consumer: String,
    swaps: Arc<SwapSlot>,
    stop: watch::Sender<bool>,
    task: AbortOnDrop,
    /// Its canary's task (guard rails, reference reports or shadow run).
    canary: AbortOnDrop,
    /// Its counters.
    stats: Arc<AppStats>,
}

/// What an app's set-up found, for its pipeline and canary.
struct SetUp {
    /// The app's buckets, if granted any.
    live_kv: Option<Arc<dyn KvBackend>>,
    /// This node rolled its canary's candidate back before.
    rolled_back: bool,
}

/// A running daemon: every app consuming, the HTTP endpoints served.
#[derive(Debug)]
pub struct Daemon {
    config: Config,
    nats_url: String,
    http_addr: Option<SocketAddr>,
    stats: AppCounters,
    health: Arc<Health>,
    transport: Transport,
    runtime: Runtime,
    effects: Arc<EffectRunner>,
    /// The node's effect records (canary rollbacks are recorded there too).
    records: EffectRecords,
    apps: Vec<RunningApp>,
    /// Pipelines of removed apps, draining (then their consumer deleted if
    /// `nats.delete_consumer`).
    retiring: JoinSet<()>,
    reload_requests: Option<mpsc::Receiver<ReloadReply>>,
    http_stop: watch::Sender<bool>,
    http: AbortOnDrop,
    embedded: Option<NatsServer>,
    /// Stops the executor of pending (debounced) effects.
    pending_stop: watch::Sender<bool>,
    pending_task: AbortOnDrop,
    /// Watches the NATS client ([`CLIENT_CHECK_INTERVAL`]).
    client_watch: AbortOnDrop,
    /// Why the NATS client is gone, once it is ([`Daemon::failed`]).
    fatal: watch::Receiver<Option<String>>,
}

impl Daemon {
    /// Start everything `plan` describes (see module docs); build the plan
    /// with [`Config::plan`]. No endpoints are served: use
    /// [`crate::http::start`] (what `weir run` does) or
    /// [`Daemon::start_with`].
    ///
    /// Cancel safety: dropping the future abandons the start and releases
    /// what it holds (the HTTP listener, the private nats-server, the NATS
    /// connection, pipelines already started); a compile already running
    /// finishes on its thread.
    ///
    /// # Errors
    ///
    /// The first phase that fails, with every problem of that phase: the
    /// private server cannot start (with the install hint, or its port is
    /// taken), an app cannot be deployed, a stream conflicts, a
    /// consumer is refused [`CONSUMER_SETUP_ATTEMPTS`] times.
    pub async fn start(plan: Plan) -> anyhow::Result<Self> {
        Self::start_with(plan, None).await
    }

    /// [`Daemon::start`], its endpoints served by `endpoints` in the first
    /// phase when `[http] enabled` (the HTTP adapter:
    /// [`crate::http::start`]); `None` serves none.
    ///
    /// # Errors
    ///
    /// As [`Daemon::start`].
    pub async fn start_with(plan: Plan, endpoints: Option<Endpoints>) -> anyhow::Result<Self> {
        let stats = AppCounters::default();
        let (health, reload_requests) = Health::new(stats.clone());
        let health = Arc::new(health);
        let (http_stop, http_stop_rx) = watch::channel(false);
        let (http, http_addr) =
            serve_http(&plan.config, endpoints, health.clone(), http_stop_rx).await?;
        let (embedded, servers) = start_nats(&plan.config).await?;
        health.set(Phase::Deploying);
        let (runtime, deployed) =
            deploy_apps(plan.config.engine.for_host(), plan.apps.clone()).await?;
        health.set(Phase::Connecting);
        let transport = connect(&plan.config, &servers).await?;
        let nats_url = servers.first().cloned().unwrap_or_default();
        let _ = health.transport.set(transport.clone());
        let (records, pending, limits) = set_up_streams(&transport, plan.config.node.id).await?;
        let effects = Arc::new(
            EffectRunner::new(plan.config.effects.clone(), Some(transport.clone()))
                .with_durable_records(records.clone())
                .with_pending(pending, limits, stats.clone()),
        );
        let (pending_stop, pending_stop_rx) = watch::channel(false);
        let pending_task = AbortOnDrop(Some(tokio::spawn(
            effects.clone().run_pending(pending_stop_rx),
        )));
        let (fatal_tx, fatal) = watch::channel(None);
        let client_watch = AbortOnDrop(Some(tokio::spawn(watch_client(
            transport.clone(),
            health.clone(),
            fatal_tx,
        ))));
        let mut daemon = Self {
            config: plan.config.clone(),
            nats_url,
            http_addr,
            stats,
            health,
            transport,
            runtime,
            effects,
            records,
            apps: Vec::with_capacity(plan.apps.len()),
            retiring: JoinSet::new(),
            reload_requests: Some(reload_requests),
            http_stop,
            http,
            embedded,
            pending_stop,
            pending_task,
            client_watch,
            fatal,
        };
        // Buckets and consumers, CONSUMER_SETUP_CONCURRENCY apps at a time
        // (each is a JetStream API round trip and files on the server's
        // disk); the apps start in order once all are set up.
        let consumers: Vec<(AppConsumer, SetUp)> = {
            // Collected first: a stream over a borrowing closure would make
            // `start`'s future not `Send` for every lifetime ("implementation of
            // `FnOnce` is not general enough" where it is spawned).
            // The stream's consumers listed once, so only names that exist
            // are looked up (none on a first start); without the list every
            // app looks up each of its names.
            daemon.transport.wait_connected().await;
            let known = KnownConsumers::list(&daemon.transport)
                .await
                .unwrap_or_else(|e| {
                    tracing::debug!(error = %e, "consumer names not listed; each app looks up its own");
                    KnownConsumers::default()
                });
            let setups: Vec<_> = plan
                .apps
                .iter()
                .zip(&deployed)
                .map(|(app_plan, d)| daemon.set_up_app(d, app_plan, &known))
                .collect();
            futures::stream::iter(setups)
                .buffered(CONSUMER_SETUP_CONCURRENCY)
                .try_collect()
                .await?
        };
        for (((app_plan, app_config), deployed), (consumer, set_up)) in plan
            .apps
            .iter()
            .zip(&plan.config.apps)
            .zip(deployed)
            .zip(consumers)
        {
            let running = daemon.spawn_app(app_plan, app_config, deployed, set_up, consumer);
            daemon.apps.push(running);
        }
        tracing::info!(apps = daemon.apps.len(), "apps consuming");
        // After the apps' counters exist, so the pending gauges are set.
        if let Err(e) = daemon.effects.recover_pending().await {
            tracing::warn!(error = %e, "pending effects not read; they run at the next start");
        }
        daemon.health.set(Phase::Running);
        tracing::info!(
            node = daemon.config.node.id,
            apps = daemon.apps.len(),
            "weir running"
        );
        Ok(daemon)
    }

    /// Attach the app's buckets (a live canary candidate's too) and set
    /// up its consumer; with the buckets, if any, and whether this node
    /// rolled its canary's candidate back before.
    async fn set_up_app(
        &self,
        deployed: &Deployed,
        app_plan: &AppPlan,
        known: &KnownConsumers,
    ) -> anyhow::Result<(AppConsumer, SetUp)> {
        let live_kv = self.attach_buckets(&deployed.app).await?;
        attach_candidate_kv(deployed, app_plan, live_kv.as_ref());
        let rolled_back = rollout::rolled_back_before(&self.records, app_plan, deployed).await;
        Ok((
            self.set_up_consumer(app_plan, known).await?,
            SetUp {
                live_kv,
                rolled_back,
            },
        ))
    }

    /// Create or update the consumer of one app, retrying through
    /// JetStream's temporary unavailability ([`CONSUMER_SETUP_ATTEMPTS`] ×
    /// [`SETUP_RETRY`]). The first attempt looks up only the names in
    /// `known`; a retry looks up all (the failed attempt may have made one).
    async fn set_up_consumer(
        &self,
        app_plan: &AppPlan,
        known: &KnownConsumers,
    ) -> anyhow::Result<AppConsumer> {
        let events = app_plan.filter.event_names();
        let name = &app_plan.spec.name;
        let attempt = std::sync::atomic::AtomicU32::new(0);
        let setup = || async {
            self.transport.wait_connected().await;
            let first = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0;
            let unknown = KnownConsumers::default();
            let known = if first { known } else { &unknown };
            self.transport
                .consumer(&app_plan.consumer, &events, &app_plan.delivery, known)
                .await
        };
        let consumer = setup
            .retry(
                ConstantBuilder::new()
                    .with_delay(SETUP_RETRY)
                    .with_max_times(CONSUMER_SETUP_ATTEMPTS as usize - 1),
            )
            .notify(
                |e, _| tracing::warn!(app = %name, error = %e, "consumer setup failed; retrying"),
            )
            .await?;
        Ok(consumer)
    }

    /// Give `app` its key-value buckets (created if missing) when it is
    /// granted any, retrying through JetStream's temporary unavailability
    /// like the consumers.
    async fn attach_buckets(&self, app: &App) -> anyhow::Result<Option<Arc<dyn KvBackend>>> {
        let grant = app.kv_grant().clone();
        if !grant.any() {
            return Ok(None);
        }
        let setup = || async {
            self.transport.wait_connected().await;
            self.transport.app_buckets(app.name(), &grant).await
        };
        let buckets = setup
            .retry(
                ConstantBuilder::new()
                    .with_delay(SETUP_RETRY)
                    .with_max_times(CONSUMER_SETUP_ATTEMPTS as usize - 1),
            )
            .notify(|e, _| tracing::warn!(app = %app.name(), error = %e, "key-value bucket setup failed; retrying"))
            .await?;
        let buckets: Arc<dyn KvBackend> = Arc::new(buckets);
        app.attach_kv(buckets.clone());
        Ok(Some(buckets))
    }

    /// Start the pipeline of one deployed app on `consumer`, counted in
    /// `/stats` (an app re-added keeps no counters of its earlier life).
    fn spawn_app(
        &self,
        app_plan: &AppPlan,
        app_config: &AppConfig,
        deployed: Deployed,
        SetUp {
            live_kv,
            rolled_back,
        }: SetUp,
        consumer: AppConsumer,
    ) -> RunningApp {
        let name = app_plan.spec.name.clone();
        let app_stats = Arc::new(AppStats::default());
        {
            let mut stats = self
                .stats
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            stats.retain(|(n, _)| *n != name);
            stats.push((name.clone(), app_stats.clone()));
        }
        tracing::debug!(app = %name, consumer = %consumer.name(), events = ?app_plan.filter.event_names(), "app consuming");
        let swaps = Arc::new(SwapSlot::default());
        let digest = deployed.digests();
        let armed = rollout::arm(Arming {
            plan: app_plan,
            node: self.config.node.id,
            deployed,
            live_kv,
            stats: app_stats.clone(),
            swaps: swaps.clone(),
            transport: &self.transport,
            records: Some(self.records.clone()),
            rolled_back,
        });
        let pipeline = AppPipeline::new(
            armed.app,
            self.config.node.id,
            app_plan.filter.clone(),
            consumer,
            self.transport.clone(),
            self.effects.clone(),
            app_stats.clone(),
        )
        .with_observer(armed.observer)
        .with_effects(app_plan.effects.clone())
        .with_delivery(app_plan.delivery.clone())
        .with_max_payload_bytes(DEFAULT_MAX_PAYLOAD_BYTES)
        .with_swaps(swaps.clone());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(pipeline.run(stop_rx));
        RunningApp {
            name,
            config: app_value(app_config),
            digest,
            events: owned_events(&app_plan.filter),
            delivery: app_plan.delivery.clone(),
            consumer: app_plan.consumer.clone(),
            swaps,
            stop,
            task: AbortOnDrop(Some(task)),
            canary: AbortOnDrop(armed.task),
            stats: app_stats,
        }
    }

    /// The requests of `POST /reload`, for the process that owns the
    /// daemon to answer with [`Daemon::reload_file`] (taken once; `None`
    /// after). While nobody takes them, `POST /reload` answers 503.
    pub fn take_reload_requests(&mut self) -> Option<mpsc::Receiver<ReloadReply>> {
        let requests = self.reload_requests.take();
        if requests.is_some() {
            self.health
                .reloads_taken
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        requests
    }

    /// The NATS server the host is connected to now, as it announced
    /// itself: `(server name, client port)`.
    pub fn connected_server(&self) -> (String, u16) {
        self.transport.connected_server()
    }

    /// The first NATS server configured (the private server's when
    /// embedded).
    pub fn nats_url(&self) -> &str {
        &self.nats_url
    }

    /// The HTTP address actually bound (with port 0 resolved).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// A snapshot of every app's counters, in config order.
    pub fn stats(&self) -> Vec<AppStatsSnapshot> {
        crate::stats::snapshots(&self.stats)
    }

    /// The publish → settled latency counts of `app`
    /// ([`crate::stats::LatencyHistogram::counts`]), `None` if no such app
    /// runs.
    pub fn latency_counts(&self, app: &str) -> Option<Vec<u64>> {
        self.stats
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|(name, _)| name == app)
            .map(|(_, s)| s.settle_latency.counts())
    }

    /// This node's id.
    pub fn node(&self) -> u32 {
        self.config.node.id
    }

    /// The current phase (see [`Phase`]).
    pub fn phase(&self) -> Phase {
        self.health.phase()
    }

    /// Every reason the host is not ready, as `/ready` reports them (empty:
    /// ready).
    pub fn readiness(&self) -> Vec<String> {
        self.health.readiness()
    }

    /// Wait until the host cannot go on, and say why: its NATS client's
    /// connection task is gone (it panicked, or the client was closed), so no
    /// event can be pulled, acked or dead-lettered again and no reconnection
    /// will come. `/ready` says so from then on. The owner should
    /// [`Daemon::shutdown`] and exit non-zero (`weir run` exits 69,
    /// `EX_UNAVAILABLE`) so that systemd restarts the host.
    ///
    /// The future does not borrow the daemon. Cancel safety: cancel safe (it
    /// only waits). Never resolves while the client works.
    pub fn failed(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut fatal = self.fatal.clone();
        async move {
            loop {
                if let Some(reason) = fatal.borrow_and_update().clone() {
                    return reason;
                }
                if fatal.changed().await.is_err() {
                    // The watch ended without a verdict (shutdown): never.
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// Close the NATS client as a crash of its connection task would leave
    /// it, for tests of [`Daemon::failed`]: every later publish, ack and
    /// pull fails.
    #[doc(hidden)]
    pub async fn close_nats_client_for_test(&self) {
        let _ = self.transport.close().await;
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
        // Closing the client below is not a death.
        if let Some(watch) = self.client_watch.0.take() {
            watch.abort();
        }
        for app in &self.apps {
            let _ = app.stop.send(true);
        }
        // Pending (debounced) effects stay in their bucket for the next
        // start; one being executed may finish within the drain.
        let _ = self.pending_stop.send(true);
        let mut workers: Vec<_> = self
            .apps
            .iter_mut()
            .filter_map(|a| a.task.0.take())
            .chain(self.pending_task.0.take())
            .collect();
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            for worker in &mut workers {
                let _ = worker.await;
            }
            while self.retiring.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            for worker in &workers {
                worker.abort();
            }
            self.retiring.abort_all();
        }
        let _ = self.http_stop.send(true);
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

/// Check the NATS client every [`CLIENT_CHECK_INTERVAL`] until it is gone;
/// then record why (for `/ready` and [`Daemon::failed`]) and end.
async fn watch_client(
    transport: Transport,
    health: Arc<Health>,
    fatal: watch::Sender<Option<String>>,
) {
    let mut tick = tokio::time::interval(CLIENT_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(reason) = transport.client_gone().await {
            tracing::error!(
                reason,
                "NATS client is gone; stopping the host so it is restarted"
            );
            let _ = health.fatal.set(reason.clone());
            let _ = fatal.send(Some(reason));
            return;
        }
    }
}

/// The future an [`Endpoints`] returns: the serving task and the address
/// bound (port 0 resolved), or why it could not bind.
pub type ServeFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = anyhow::Result<(tokio::task::JoinHandle<()>, SocketAddr)>>
            + Send,
    >,
>;

/// What serves the daemon's endpoints, given `[http] listen`, the node's
/// id, the state they read ([`Health`]), the admin token and a signal that
/// turns true at shutdown. The daemon imports no server: the HTTP adapter
/// ([`crate::http::endpoints`]) is given to [`Daemon::start_with`].
pub type Endpoints = fn(SocketAddr, u32, Arc<Health>, String, watch::Receiver<bool>) -> ServeFuture;

/// Phase 1: bind and serve the endpoints (if enabled and given).
async fn serve_http(
    config: &Config,
    endpoints: Option<Endpoints>,
    health: Arc<Health>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(AbortOnDrop, Option<SocketAddr>)> {
    let Some(endpoints) = endpoints.filter(|_| config.http.enabled) else {
        return Ok((AbortOnDrop(None), None));
    };
    let token_file = config.http.token_file();
    let token = if config.http.admin_token_file.is_some() {
        crate::admin_token::read(&token_file)
    } else {
        crate::admin_token::ensure(&token_file)
    }?;
    if config.http.public {
        tracing::warn!(listen = %config.http.listen, "http.public: the endpoints are served beyond loopback (plain HTTP; POST /reload still needs the admin token)");
    }
    let (task, addr) = endpoints(config.http.listen, config.node.id, health, token, stop).await?;
    Ok((AbortOnDrop(Some(task)), Some(addr)))
}

/// Phase 2: the configured NATS URL, or a private nats-server.
async fn start_nats(config: &Config) -> anyhow::Result<(Option<NatsServer>, Vec<String>)> {
    if let Some(servers) = config.nats.servers() {
        return Ok((None, servers));
    }
    let dir = config
        .nats
        .state_dir
        .clone()
        .unwrap_or_else(crate::nats::server::default_store_dir);
    let port = config.nats.embedded_port;
    let server = tokio::task::spawn_blocking(move || NatsServer::start_on(&dir, port))
        .await
        .context("failed to start the private nats-server")??;
    let url = server.url();
    tracing::info!(url = %url, "no nats.url configured: using a private nats-server (embedded default)");
    Ok((Some(server), vec![url]))
}

/// Phase 3: the runtime and every app, on a blocking thread (compiling is
/// CPU work; the async workers keep serving `/health` and signals). Each
/// app comes with its component's digest.
async fn deploy_apps(
    engine: weir_runtime::EngineConfig,
    apps: Vec<AppPlan>,
) -> anyhow::Result<(Runtime, Vec<Deployed>)> {
    tokio::task::spawn_blocking(move || {
        let cache_dir = engine.cache_dir.clone();
        let runtime = Runtime::new(engine)?;
        let started = std::time::Instant::now();
        let mut deployed = Vec::with_capacity(apps.len());
        let mut problems = Vec::new();
        // Apps whose component was compiled, read from the artifact
        // directory, or found in memory (an identical component).
        let mut sources = [0usize; 3];
        for app in &apps {
            match rollout::deploy(&runtime, app) {
                Ok(a) => {
                    sources[match a.app.report().source {
                        LoadSource::Compiled => 0,
                        LoadSource::Disk => 1,
                        LoadSource::Memory => 2,
                    }] += 1;
                    deployed.push(a);
                }
                Err(e) => problems.push(format!("app {}: {e}", app.spec.name)),
            }
        }
        anyhow::ensure!(
            problems.is_empty(),
            "cannot deploy:\n  {}",
            problems.join("\n  ")
        );
        tracing::info!(
            apps = deployed.len(),
            compiled = sources[0],
            precompiled = sources[1],
            shared = sources[2],
            ms = started.elapsed().as_millis() as u64,
            artifacts = %cache_dir.as_deref().map_or("memory only".into(), |d| d.display().to_string()),
            "apps deployed"
        );
        Ok((runtime, deployed))
    })
    .await
    .context("deploy thread failed")?
}

/// Give a live canary candidate the app's buckets (`live_kv`): it handles
/// the app's events for real. A shadow candidate gets an overlay instead
/// ([`crate::canary::shadow`]).
fn attach_candidate_kv(
    deployed: &Deployed,
    app_plan: &AppPlan,
    live_kv: Option<&Arc<dyn KvBackend>>,
) {
    let live = app_plan
        .canary
        .as_ref()
        .is_some_and(|c| c.config.mode == crate::canary::CanaryMode::Live);
    if let (true, Some((candidate, _)), Some(kv)) = (live, &deployed.candidate, live_kv) {
        candidate.attach_kv(kv.clone());
    }
}

/// An `[[app]]` entry as a value, to tell whether a reload changed it.
fn app_value(app: &AppConfig) -> serde_json::Value {
    serde_json::to_value(app).unwrap_or_default()
}

/// The event names a filter lets through, owned.
fn owned_events(filter: &Filter) -> Vec<String> {
    filter
        .event_names()
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// Phase 4a: the NATS connection (an unreachable server is retried in the
/// background).
async fn connect(config: &Config, servers: &[String]) -> anyhow::Result<Transport> {
    let subjects = Subjects::new(&config.nats.prefix)?;
    let client_name = format!("weir-node{}", config.node.id);
    // A per-node inbox, so least-privilege permissions can keep hosts from
    // reading each other's replies.
    let auth = config
        .nats
        .auth(crate::nats::subjects::default_inbox_prefix(config.node.id))?;
    Ok(
        Transport::connect_with(servers, &client_name, subjects, &config.nats.stream, auth)
            .await?
            .with_replicas(config.nats.replicas)
            .with_stream_limits(config.nats.stream_limits())
            .with_dead_letter_limits(config.nats.dead_letter_limits()),
    )
}

/// Phase 4b: wait for NATS, then create or verify the streams and the
/// buckets of effect records, pending effects and rate-limit windows. A setup error other than a conflicting stream is
/// retried (the connection can drop again in between).
async fn set_up_streams(
    transport: &Transport,
    node: u32,
) -> anyhow::Result<(EffectRecords, PendingStore, LimitStore)> {
    let setup = || async {
        transport.wait_connected().await;
        transport.ensure_streams().await?;
        Ok((
            transport.effect_records(node).await?,
            PendingStore::open(transport, node).await?,
            LimitStore::open(transport, node).await?,
        ))
    };
    let records = setup
        .retry(
            ConstantBuilder::new()
                .with_delay(SETUP_RETRY)
                .without_max_times(),
        )
        .when(|e| !matches!(e, TransportError::StreamConflict { .. }))
        .notify(|e, _| tracing::warn!(error = %e, "stream setup failed; retrying"))
        .await?;
    Ok(records)
}
