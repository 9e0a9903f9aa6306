//! # weir-bridge: NS8's Redis events into JetStream
//!
//! `weir bridge`: NS8's Redis pub/sub events into weir's JetStream stream,
//! without changing an emitter. It depends on the NATS edge it shares with
//! the host (`weir-edge`), never on the sandbox.
//!
//! NS8 publishes every event with `PUBLISH` on a Redis channel
//! ([`channel`]); every node runs a Redis replica that sees every event. A
//! bridge subscribes to its node's Redis, maps each message to
//! `<prefix>.events.<name>.<source>` (the source from the channel, never
//! from the payload) and publishes it to JetStream with a deterministic
//! `Nats-Msg-Id` ([`msg_id`]), so one bridge per node may run on every node
//! at once and the stream keeps one copy of each event.
//!
//! - **Folding** (`fold_domains_ms`, off by default): legacy per-domain
//!   `user-domain-changed` events become one event with a `domains` list
//!   ([`fold`]).
//! - **Bounded buffer**: while NATS is away, at most `buffer_events` events
//!   and `buffer_bytes` bytes wait; a full buffer drops its oldest, counted
//!   (`dropped`). Redis pub/sub has no replay: what is published while a
//!   bridge is disconnected from Redis never reaches it (another bridge may
//!   have it; `redis_disconnects` says when it happened).
//! - **Reconnection**: to Redis and NATS, forever, with exponential backoff
//!   ([`RECONNECT_MIN`] to [`RECONNECT_MAX`]); a silent Redis connection is
//!   detected by a `PING` every [`REDIS_PING_INTERVAL`].
//! - **Dead letters**: a message on a channel of another shape, or with a
//!   payload over the NATS server's `max_payload`, is stored on
//!   `<prefix>.dead.<node>.bridge` with the reason (`Weir-Dead-Reason`) and
//!   the channel (`Weir-Original-Subject`): never dropped silently.
//! - **Traces** (with OTLP export on, [`weir_edge::telemetry`]): each
//!   Redis message is a span from receipt to stored, starting a trace (or
//!   continuing the one in the payload's [`PAYLOAD_TRACEPARENT_FIELD`]);
//!   the event carries it in its `traceparent` header to the hosts.
//! - **Endpoints** (`[bridge] listen`, default [`DEFAULT_BRIDGE_LISTEN`]):
//!   `/stats` ([`stats::BridgeSnapshot`]), `/metrics`, `/health`, `/ready`
//!   (200 while subscribed to Redis and connected to NATS).

pub mod channel;
pub mod fold;
pub mod msg_id;
pub mod outbox;
pub mod stats;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use backon::BackoffBuilder as _;
use bytes::Bytes;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::Instrument as _;

use fold::{Folded, Folder};
use msg_id::MsgIds;
use outbox::{Outbox, Outgoing, Target};
use stats::{BridgeSnapshot, BridgeStats};
use weir_edge::nats::subjects::Subjects;
use weir_edge::nats::{NatsConfig, Transport};

/// Default `[bridge] listen`: `127.0.0.1:9102` (next to the host's 9101;
/// loopback only, the endpoints are unauthenticated).
pub const DEFAULT_BRIDGE_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9102));

/// Default `buffer_events`: 10,000 events (NS8's 64 s node-join storm of
/// `examples/ns8/node-join-legacy` publishes 64).
pub const DEFAULT_BUFFER_EVENTS: usize = 10_000;
/// Largest `buffer_events`: 1,000,000.
pub const MAX_BUFFER_EVENTS: usize = 1_000_000;
/// Default `buffer_bytes`: 64 MiB.
pub const DEFAULT_BUFFER_BYTES: usize = 64 << 20;
/// Largest `buffer_bytes`: 1 GiB.
pub const MAX_BUFFER_BYTES: usize = 1 << 30;
/// Largest `fold_domains_ms`: 60,000 (a fold holds its events back that
/// long).
pub const MAX_FOLD_DOMAINS_MS: u64 = 60_000;

/// First reconnection delay (Redis, and retried publishes): 100 ms.
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest reconnection delay: 5 s.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Longest wait for a Redis connection and its subscriptions: 5 s.
pub const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A `PING` on the subscription connection this often: 5 s.
pub const REDIS_PING_INTERVAL: Duration = Duration::from_secs(5);
/// A `PING` unanswered this long ends the connection: 5 s.
pub const REDIS_PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a stopping bridge keeps publishing what it holds: 5 s; the rest
/// is counted as dropped.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// A failing connection or publish is logged at most this often: 10 s.
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How often the fold timer looks for a newly opened group while none is
/// open: 50 ms (a fold closes at most that late).
pub const FOLD_POLL: Duration = Duration::from_millis(50);
/// Shortest time between two warnings about a full buffer: 10 s.
pub const DROP_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The app name in the bridge's dead-letter subject: `bridge`
/// ([`weir_edge::nats::subjects::BRIDGE_DEAD_LETTER_APP`], which the
/// permissions generator also reads).
pub use weir_edge::nats::subjects::BRIDGE_DEAD_LETTER_APP as DEAD_LETTER_APP;

/// `[bridge]` in `weir.toml` (`weir bridge` reads it; `weir run` ignores
/// it). The NATS side is the node's `[nats]` section.
///
/// ```toml
/// [bridge]
/// redis_url = "redis://127.0.0.1:6379"   # rediss:// for TLS
/// # user = "weir"                        # Redis ACL user
/// # password_file = "/etc/weir/redis-password"
/// # tls_ca_file = "/etc/weir/redis-ca.pem"
/// listen = "127.0.0.1:9102"              # /stats, /metrics
/// fold_domains_ms = 0                    # off
/// buffer_events = 10000
/// ```
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// The node's Redis: `redis://host:port[/db]`, or `rediss://` for TLS.
    pub redis_url: String,
    /// Redis ACL user (default: the URL's, else Redis's `default`).
    #[serde(default)]
    pub user: Option<String>,
    /// File holding the Redis password (trimmed); else the URL's.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates to trust for `rediss://` (default: the system's).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate for `rediss://` (with `tls_key_file`).
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM client key for `rediss://` (with `tls_cert_file`).
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// `/stats`, `/metrics`, `/health`, `/ready`; default
    /// [`DEFAULT_BRIDGE_LISTEN`].
    #[serde(default = "default_listen")]
    #[schemars(with = "String")]
    pub listen: SocketAddr,
    /// Fold legacy per-domain `user-domain-changed` events of one source
    /// within this many milliseconds ([`fold`]); 0 (default) is off; at most
    /// [`MAX_FOLD_DOMAINS_MS`]. Every bridge of a cluster must use the same.
    #[serde(default)]
    pub fold_domains_ms: u64,
    /// Most events waiting for NATS; default [`DEFAULT_BUFFER_EVENTS`].
    #[serde(default = "default_buffer_events")]
    pub buffer_events: usize,
    /// Most payload bytes waiting for NATS; default
    /// [`DEFAULT_BUFFER_BYTES`].
    #[serde(default = "default_buffer_bytes")]
    pub buffer_bytes: usize,
}

fn default_listen() -> SocketAddr {
    DEFAULT_BRIDGE_LISTEN
}
fn default_buffer_events() -> usize {
    DEFAULT_BUFFER_EVENTS
}
fn default_buffer_bytes() -> usize {
    DEFAULT_BUFFER_BYTES
}

impl BridgeConfig {
    /// A bridge to `redis_url` with every default.
    pub fn new(redis_url: &str) -> Self {
        Self {
            redis_url: redis_url.to_owned(),
            user: None,
            password_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            listen: DEFAULT_BRIDGE_LISTEN,
            fold_domains_ms: 0,
            buffer_events: DEFAULT_BUFFER_EVENTS,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
        }
    }

    /// `[bridge]` of a `weir.toml` parsed and checked: `table` as
    /// `weir_host::config::Config::bridge` keeps it, relative file paths
    /// taken from `base` (the config file's directory).
    ///
    /// # Errors
    ///
    /// Every problem at once, each prefixed `bridge.` ([`Self::problems`]),
    /// or the one parse error (an unknown key, a wrong type).
    pub fn from_section(table: &toml::Table, base: &Path) -> Result<Self, Vec<String>> {
        let mut config: Self = table
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| vec![format!("[bridge]: {}", e.message())])?;
        for file in [
            &mut config.password_file,
            &mut config.tls_ca_file,
            &mut config.tls_cert_file,
            &mut config.tls_key_file,
        ]
        .into_iter()
        .flatten()
        {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems
                .into_iter()
                .map(|p| format!("bridge.{p}"))
                .collect())
        }
    }

    /// Every problem with this section (empty if valid); files are not read.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let tls = match redis::parse_redis_url(&self.redis_url) {
            Some(url) if matches!(url.scheme(), "redis" | "rediss") => url.scheme() == "rediss",
            _ => {
                p.push(format!(
                    "redis_url {:?} is not redis://host:port or rediss://host:port",
                    self.redis_url
                ));
                false
            }
        };
        let tls_files = [&self.tls_ca_file, &self.tls_cert_file, &self.tls_key_file];
        if !tls && tls_files.iter().any(|f| f.is_some()) {
            p.push("tls_ca_file, tls_cert_file and tls_key_file need a rediss:// redis_url".into());
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            p.push("tls_cert_file and tls_key_file go together".into());
        }
        if self.fold_domains_ms > MAX_FOLD_DOMAINS_MS {
            p.push(format!(
                "fold_domains_ms = {} is over {MAX_FOLD_DOMAINS_MS}",
                self.fold_domains_ms
            ));
        }
        if !(1..=MAX_BUFFER_EVENTS).contains(&self.buffer_events) {
            p.push(format!(
                "buffer_events = {} is not in 1..={MAX_BUFFER_EVENTS}",
                self.buffer_events
            ));
        }
        if !(1..=MAX_BUFFER_BYTES).contains(&self.buffer_bytes) {
            p.push(format!(
                "buffer_bytes = {} is not in 1..={MAX_BUFFER_BYTES}",
                self.buffer_bytes
            ));
        }
        p
    }

    /// The Redis client: the URL, with `user`, `password_file` and the TLS
    /// files applied.
    ///
    /// # Errors
    ///
    /// A file that cannot be read, or a URL or certificate the client
    /// refuses.
    pub fn redis_client(&self) -> anyhow::Result<redis::Client> {
        use redis::IntoConnectionInfo as _;
        let mut info = self
            .redis_url
            .as_str()
            .into_connection_info()
            .with_context(|| format!("invalid redis_url {:?}", self.redis_url))?;
        if let Some(user) = &self.user {
            info.redis.username = Some(user.clone());
        }
        if let Some(path) = &self.password_file {
            let password = std::fs::read_to_string(path)
                .with_context(|| format!("failed to read password_file {}", path.display()))?;
            info.redis.password = Some(password.trim().to_owned());
        }
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).with_context(|| format!("failed to read {what} {}", path.display()))
        };
        if self.tls_ca_file.is_none() && self.tls_cert_file.is_none() {
            return redis::Client::open(info).context("invalid Redis settings");
        }
        let root_cert = self
            .tls_ca_file
            .as_ref()
            .map(|p| read(p, "tls_ca_file"))
            .transpose()?;
        let client_tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert, "tls_cert_file")?,
                client_key: read(key, "tls_key_file")?,
            }),
            _ => None,
        };
        redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
        .context("invalid Redis TLS settings")
    }
}

/// What the reader, the fold timer and the publisher share.
struct Shared {
    node: u32,
    transport: Transport,
    stats: BridgeStats,
    outbox: Outbox,
    ids: Mutex<MsgIds>,
    folder: Option<Mutex<Folder>>,
    /// The publisher holds an event it has not stored yet.
    in_flight: std::sync::atomic::AtomicBool,
    /// Drops not yet logged, and when the last warning went out
    /// ([`DROP_WARN_INTERVAL`] apart).
    drop_warn: Mutex<(u64, Option<Instant>)>,
}

impl Shared {
    /// The counters now, the NATS connection state read live.
    fn snapshot(&self) -> BridgeSnapshot {
        self.stats
            .nats_connected
            .set(i64::from(self.transport.is_connected()));
        self.stats.snapshot(self.node)
    }

    /// One message from Redis.
    fn receive(&self, channel: &str, payload: Bytes, now: Instant) {
        self.stats.received.inc();
        let msg_id = self
            .ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next(channel, &payload, now);
        let target = match channel::map_channel(channel) {
            Ok((name, source)) => Target::Event { name, source },
            Err(e) => {
                tracing::debug!(channel, reason = %e, "not an event channel: dead-lettered");
                Target::Dead {
                    channel: channel.to_owned(),
                    reason: e.to_string(),
                }
            }
        };
        let span = receive_span(
            channel,
            &target,
            &msg_id,
            &payload,
            self.transport.subjects(),
        );
        let out = Outgoing {
            target,
            payload,
            msg_id,
            received: now,
            span,
        };
        let ready = match &self.folder {
            Some(f) => f.lock().unwrap_or_else(|p| p.into_inner()).offer(out),
            None => vec![Folded { out, parts: 1 }],
        };
        self.enqueue(ready);
    }

    fn enqueue(&self, ready: Vec<Folded>) {
        for Folded { out, parts } in ready {
            if parts > 1 {
                self.stats.folded.inc_by(parts as u64);
                self.stats.folds.inc();
            }
            // A payload no buffer of this size can hold is decided now: a
            // dead letter with the reason and without the payload.
            let cap = self.outbox.max_bytes();
            let out = if out.payload.len() > cap {
                let reason = format!(
                    "payload of {} bytes is over the bridge's buffer_bytes of {cap} bytes",
                    out.payload.len()
                );
                without_payload(out, reason)
            } else {
                out
            };
            let dropped = self.outbox.push(out);
            if dropped > 0 {
                self.stats.dropped.inc_by(dropped);
                self.warn_dropped(dropped);
            }
        }
        self.stats.buffered.set(self.outbox.len() as i64);
    }

    /// Log drops at warn, at most once every [`DROP_WARN_INTERVAL`] (with
    /// the count since the last warning); every drop is counted in
    /// `dropped` whatever is logged.
    fn warn_dropped(&self, dropped: u64) {
        let mut warn = self.drop_warn.lock().unwrap_or_else(|p| p.into_inner());
        warn.0 += dropped;
        let now = Instant::now();
        if warn
            .1
            .is_none_or(|last| now.duration_since(last) >= DROP_WARN_INTERVAL)
        {
            tracing::warn!(
                dropped = warn.0,
                "bridge buffer full (NATS away or slow): oldest events dropped"
            );
            *warn = (0, Some(now));
        }
    }
}

/// A running bridge.
pub struct Bridge {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    drain: watch::Sender<bool>,
    reader: tokio::task::JoinHandle<()>,
    timer: Option<tokio::task::JoinHandle<()>>,
    publisher: tokio::task::JoinHandle<()>,
    http: Option<(tokio::task::JoinHandle<()>, SocketAddr)>,
    transport: Transport,
}

/// Why a bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// `[bridge]` or `[nats]` is invalid: every problem, one per entry.
    #[error("invalid bridge configuration:\n  {}", .0.join("\n  "))]
    Config(Vec<String>),
    /// The Redis client cannot be built: a file the section names (password,
    /// TLS) cannot be read, or the URL is refused.
    #[error("{0:#}")]
    RedisClient(anyhow::Error),
    /// The NATS credentials cannot be read.
    #[error(transparent)]
    Credentials(#[from] weir_edge::nats::CredentialsError),
    /// The NATS connection options are refused.
    #[error(transparent)]
    Nats(#[from] weir_edge::nats::TransportError),
    /// The endpoints' listen address cannot be bound.
    #[error("{0:#}")]
    Listen(anyhow::Error),
}

impl Bridge {
    /// Start a bridge for node `node` from `config` to the NATS of `nats`
    /// (which must name a server: `url` or `urls`). Serves its endpoints on
    /// `config.listen` unless `serve_http` is false. Neither Redis nor NATS
    /// need be up: both are retried forever.
    ///
    /// # Errors
    ///
    /// [`BridgeError::Config`] for an invalid section (every problem), the
    /// other [`BridgeError`]s for a file that cannot be read or the listen
    /// address taken.
    pub async fn start(
        node: u32,
        nats: &NatsConfig,
        config: &BridgeConfig,
        serve_http: bool,
    ) -> Result<Self, BridgeError> {
        let mut problems: Vec<String> = config
            .problems()
            .into_iter()
            .map(|p| format!("bridge.{p}"))
            .chain(nats.problems().into_iter().map(|p| format!("nats.{p}")))
            .collect();
        let servers = nats.servers().unwrap_or_default();
        if servers.is_empty() {
            problems.push(
                "nats: weir bridge needs [nats] url or urls (it does not start a private server)"
                    .into(),
            );
        }
        let subjects = Subjects::new(&nats.prefix);
        if let Err(e) = &subjects {
            problems.push(format!("nats.prefix: {e}"));
        }
        let (Ok(subjects), true) = (subjects, problems.is_empty()) else {
            return Err(BridgeError::Config(problems));
        };
        let client = config.redis_client().map_err(BridgeError::RedisClient)?;
        let auth = nats.auth(weir_edge::nats::subjects::default_inbox_prefix(node))?;
        let transport = Transport::connect_with(
            &servers,
            &format!("weir-bridge-node{node}"),
            subjects,
            &nats.stream,
            auth,
        )
        .await?
        .with_replicas(nats.replicas)
        .with_stream_limits(nats.stream_limits())
        .with_dead_letter_limits(nats.dead_letter_limits());
        let shared = Arc::new(Shared {
            node,
            transport: transport.clone(),
            stats: BridgeStats::default(),
            outbox: Outbox::new(config.buffer_events, config.buffer_bytes),
            ids: Mutex::new(MsgIds::new(msg_id::id_window(
                weir_edge::nats::DUPLICATE_WINDOW,
            ))),
            folder: (config.fold_domains_ms > 0)
                .then(|| Mutex::new(Folder::new(Duration::from_millis(config.fold_domains_ms)))),
            in_flight: std::sync::atomic::AtomicBool::new(false),
            drop_warn: Mutex::new((0, None)),
        });
        let (stop, stop_rx) = watch::channel(false);
        let (drain, drain_rx) = watch::channel(false);
        let http = if serve_http {
            Some(
                serve(config.listen, shared.clone(), stop_rx.clone())
                    .await
                    .map_err(BridgeError::Listen)?,
            )
        } else {
            None
        };
        let reader = tokio::spawn(read_redis(client, shared.clone(), stop_rx.clone()));
        let timer = shared
            .folder
            .is_some()
            .then(|| tokio::spawn(close_folds(shared.clone(), stop_rx.clone())));
        let publisher = tokio::spawn(publish(transport.clone(), shared.clone(), drain_rx));
        tracing::info!(
            node,
            redis = %redact(&config.redis_url),
            fold_domains_ms = config.fold_domains_ms,
            buffer_events = config.buffer_events,
            "bridge started"
        );
        Ok(Self {
            shared,
            stop,
            drain,
            reader,
            timer,
            publisher,
            http,
            transport,
        })
    }

    /// The counters now.
    pub fn stats(&self) -> BridgeSnapshot {
        self.shared.snapshot()
    }

    /// The address the endpoints are served on (port 0 resolved).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(_, a)| *a)
    }

    /// Stop: unsubscribe from Redis, close open folds, publish what is
    /// buffered for at most [`DRAIN_TIMEOUT`] (the rest is counted as
    /// dropped), close the NATS connection. Always returns.
    pub async fn shutdown(self) -> BridgeSnapshot {
        let _ = self.stop.send(true);
        let _ = self.reader.await;
        if let Some(t) = self.timer {
            let _ = t.await;
        }
        if let Some(f) = &self.shared.folder {
            let rest = f.lock().unwrap_or_else(|p| p.into_inner()).drain();
            self.shared.enqueue(rest);
        }
        let _ = self.drain.send(true);
        let mut publisher = self.publisher;
        if tokio::time::timeout(DRAIN_TIMEOUT, &mut publisher)
            .await
            .is_err()
        {
            publisher.abort();
            let _ = publisher.await;
            // The one in flight, if any, and every one buffered.
            let in_flight = self
                .shared
                .in_flight
                .load(std::sync::atomic::Ordering::Relaxed);
            let left = self.shared.outbox.len() as u64 + u64::from(in_flight);
            self.shared.stats.dropped.inc_by(left);
            tracing::warn!(
                dropped = left,
                "bridge stopped before NATS stored everything"
            );
            while self.shared.outbox.try_pop().is_some() {}
        }
        self.shared.stats.buffered.set(0);
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, self.transport.close()).await;
        if let Some((task, _)) = self.http {
            let _ = task.await;
        }
        let snapshot = self.shared.snapshot();
        tracing::info!(
            received = snapshot.received,
            published = snapshot.published,
            duplicates = snapshot.duplicates,
            dropped = snapshot.dropped,
            "bridge stopped"
        );
        snapshot
    }
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match redis::parse_redis_url(url) {
        Some(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Exponential backoff from [`RECONNECT_MIN`] to [`RECONNECT_MAX`], forever.
fn backoff() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(RECONNECT_MIN)
        .with_max_delay(RECONNECT_MAX)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Logs a failure the first time and then at most every
/// [`FAILURE_LOG_INTERVAL`].
#[derive(Default)]
struct Throttle(Option<Instant>);

impl Throttle {
    fn due(&mut self) -> bool {
        let due = self.0.is_none_or(|t| t.elapsed() >= FAILURE_LOG_INTERVAL);
        if due {
            self.0 = Some(Instant::now());
        }
        due
    }
}

/// Subscribe to NS8's event channels.
async fn subscribe(client: &redis::Client) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    for pattern in channel::PATTERNS {
        pubsub.psubscribe(pattern).await?;
    }
    Ok(pubsub)
}

/// The Redis side: subscribe, receive, reconnect, until `stop`.
async fn read_redis(client: redis::Client, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut delays = backoff();
    let mut throttle = Throttle::default();
    let stats = &shared.stats;
    while !*stop.borrow() {
        let connected = tokio::select! {
            c = tokio::time::timeout(REDIS_CONNECT_TIMEOUT, subscribe(&client)) => c,
            _ = stop.changed() => break,
        };
        match connected {
            Ok(Ok(pubsub)) => {
                stats.redis_connects.inc();
                stats.redis_connected.set(1);
                tracing::info!(patterns = ?channel::PATTERNS, "Redis subscribed");
                delays = backoff();
                throttle = Throttle::default();
                let (mut sink, mut messages) = pubsub.split();
                let mut ping = tokio::time::interval(REDIS_PING_INTERVAL);
                ping.tick().await;
                let why = loop {
                    tokio::select! {
                        msg = messages.next() => match msg {
                            Some(m) => shared.receive(
                                m.get_channel_name(),
                                Bytes::copy_from_slice(m.get_payload_bytes()),
                                Instant::now(),
                            ),
                            None => break "connection closed".to_owned(),
                        },
                        _ = ping.tick() => {
                            match tokio::time::timeout(REDIS_PING_TIMEOUT, sink.ping::<redis::Value>()).await {
                                Ok(Ok(_)) => {}
                                Ok(Err(e)) => break format!("PING failed: {e}"),
                                Err(_) => break "PING unanswered".to_owned(),
                            }
                        }
                        _ = stop.changed() => {
                            stats.redis_connected.set(0);
                            return;
                        }
                    }
                };
                stats.redis_connected.set(0);
                stats.redis_disconnects.inc();
                tracing::warn!(reason = %why, "Redis connection lost: reconnecting (messages published meanwhile never reach this bridge)");
            }
            Ok(Err(e)) => {
                if throttle.due() {
                    tracing::warn!(error = %e, "cannot subscribe to Redis: retrying");
                }
            }
            Err(_) => {
                if throttle.due() {
                    tracing::warn!(
                        timeout_ms = REDIS_CONNECT_TIMEOUT.as_millis() as u64,
                        "Redis did not answer: retrying"
                    );
                }
            }
        }
        let delay = delays.next().unwrap_or(RECONNECT_MAX);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => break,
        }
    }
}

/// Close fold groups as their windows pass, until `stop`.
async fn close_folds(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let Some(folder) = &shared.folder else { return };
    loop {
        let next = folder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next_deadline();
        // No group open: look again in FOLD_POLL (a group opened meanwhile
        // closes at most that late).
        let wake = next.unwrap_or_else(|| Instant::now() + FOLD_POLL);
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {
                let due = folder.lock().unwrap_or_else(|p| p.into_inner()).due(Instant::now());
                shared.enqueue(due);
            }
            _ = stop.changed() => return,
        }
    }
}

/// The NATS side: set up the streams, then store each buffered event,
/// retrying each until stored, until `drain` and the buffer is empty.
async fn publish(transport: Transport, shared: Arc<Shared>, mut drain: watch::Receiver<bool>) {
    let stats = &shared.stats;
    let mut throttle = Throttle::default();
    // Streams first (a bridge may start before any host).
    let mut delays = backoff();
    loop {
        transport.wait_connected().await;
        match transport.ensure_streams().await {
            Ok(_) => break,
            Err(e) => {
                if throttle.due() {
                    tracing::warn!(error = %e, "cannot set up the streams: retrying");
                }
                tokio::time::sleep(delays.next().unwrap_or(RECONNECT_MAX)).await;
            }
        }
    }
    if let Ok(window) = transport.duplicate_window().await {
        shared
            .ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_window(msg_id::id_window(window));
    }
    loop {
        stats
            .nats_connected
            .set(i64::from(transport.is_connected()));
        let out = match shared.outbox.try_pop() {
            Some(out) => out,
            None if *drain.borrow() => return,
            None => tokio::select! {
                out = shared.outbox.pop() => out,
                _ = drain.changed() => continue,
            },
        };
        stats.buffered.set(shared.outbox.len() as i64);
        shared
            .in_flight
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let out = oversized(out, transport.max_payload());
        let mut delays = backoff();
        loop {
            let result = match &out.target {
                Target::Event { name, source } => {
                    transport
                        .publish_event(name, source, out.payload.clone(), &out.msg_id)
                        .instrument(out.span.clone())
                        .await
                }
                Target::Dead { channel, reason } => {
                    transport
                        .publish_raw_dead_letter(
                            shared.node,
                            DEAD_LETTER_APP,
                            channel,
                            out.payload.clone(),
                            reason,
                            &out.msg_id,
                        )
                        .await
                }
            };
            match result {
                Ok(published) => {
                    if matches!(out.target, Target::Dead { .. }) {
                        stats.dead_lettered.inc();
                    } else {
                        stats.stored(published.duplicate, out.received.elapsed());
                    }
                    shared
                        .in_flight
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    stats.publish_failures.inc();
                    stats
                        .nats_connected
                        .set(i64::from(transport.is_connected()));
                    if throttle.due() {
                        tracing::warn!(error = %e, buffered = shared.outbox.len(), "publish failed: retrying");
                    }
                    tokio::time::sleep(delays.next().unwrap_or(RECONNECT_MAX)).await;
                }
            }
        }
    }
}

/// A payload NATS would refuse (over `max_payload`, with a margin for the
/// headers) becomes a dead letter holding no payload.
fn oversized(out: Outgoing, max_payload: usize) -> Outgoing {
    /// Room left for the subject and headers: 4 KiB.
    const HEADER_ROOM: usize = 4 << 10;
    if out.payload.len() + HEADER_ROOM <= max_payload {
        return out;
    }
    let reason = format!(
        "payload of {} bytes is over the NATS server's max_payload of {max_payload} bytes",
        out.payload.len()
    );
    without_payload(out, reason)
}

/// The payload field NS8 would carry a W3C trace context in, if it ever
/// sends one: `"traceparent"` (a string at the top level of a JSON
/// object).
pub const PAYLOAD_TRACEPARENT_FIELD: &str = "traceparent";

/// The span of one Redis message when traces are exported (else
/// [`tracing::Span::none`]): a messaging `send` span from receipt to
/// stored, the root of a new trace or, when the payload carries a valid
/// [`PAYLOAD_TRACEPARENT_FIELD`], a child of that context. The event it
/// publishes carries the span's context in its headers.
fn receive_span(
    channel: &str,
    target: &Target,
    msg_id: &str,
    payload: &[u8],
    subjects: &Subjects,
) -> tracing::Span {
    if !weir_edge::telemetry::enabled() {
        return tracing::Span::none();
    }
    let (name, source, subject) = match target {
        Target::Event { name, source } => (
            name.as_str(),
            source.as_str(),
            subjects.event(name, source).unwrap_or_default(),
        ),
        Target::Dead { .. } => ("dead letter", "", String::new()),
    };
    let span = weir_edge::telemetry::send_span(
        name,
        &subject,
        msg_id,
        source,
        payload_traceparent(payload),
    );
    span.record("weir.redis.channel", channel);
    span
}

/// The valid trace context in `payload`'s [`PAYLOAD_TRACEPARENT_FIELD`],
/// if it is a JSON object holding one (anything else: none).
fn payload_traceparent(payload: &[u8]) -> Option<weir_edge::telemetry::SpanContext> {
    let needle = PAYLOAD_TRACEPARENT_FIELD.as_bytes();
    if !payload.windows(needle.len()).any(|w| w == needle) {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let field = value.get(PAYLOAD_TRACEPARENT_FIELD)?.as_str()?;
    weir_edge::telemetry::parse_traceparent(field)
}

/// `out` as a dead letter of its channel with `reason` and no payload.
fn without_payload(out: Outgoing, reason: String) -> Outgoing {
    let channel = match &out.target {
        Target::Event { name, source } => format!("{source}/event/{name}"),
        Target::Dead { channel, .. } => channel.clone(),
    };
    Outgoing {
        target: Target::Dead { reason, channel },
        payload: Bytes::new(),
        ..out
    }
}

/// Serve `/stats`, `/metrics`, `/health`, `/ready` on `listen` until `stop`.
async fn serve(
    listen: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, SocketAddr)> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let (s1, s2, s3) = (shared.clone(), shared.clone(), shared);
    let router = axum::Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/stats",
            get(move || {
                let snap = s1.snapshot();
                async move { axum::Json(snap) }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                s2.snapshot();
                let text = s2.stats.prometheus(s2.node);
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        )
        .route(
            "/ready",
            get(move || {
                let snap = s3.snapshot();
                let mut reasons = Vec::new();
                if !snap.redis_connected {
                    reasons.push("not subscribed to Redis");
                }
                if !snap.nats_connected {
                    reasons.push("not connected to NATS");
                }
                let code = if reasons.is_empty() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                async move {
                    (
                        code,
                        axum::Json(
                            serde_json::json!({"ready": reasons.is_empty(), "reasons": reasons}),
                        ),
                    )
                }
            }),
        );
    weir_edge::serve::serve_router(listen, router, stop, "/health, /ready, /stats, /metrics").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_traceparent_is_taken_only_when_valid() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = payload_traceparent(format!(r#"{{"traceparent": "{valid}", "x": 1}}"#).as_bytes())
            .expect("a valid field");
        assert_eq!(
            cx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        for payload in [
            r#"{"traceparent": "00-zz-00f067aa0ba902b7-01"}"#.to_owned(),
            r#"{"traceparent": 42}"#.to_owned(),
            r#"{"nested": {"traceparent": "VALID"}}"#.replace("VALID", valid),
            format!(r#"["traceparent", "{valid}"]"#),
            r#"{"traceparent": "#.to_owned(),
            "traceparent".to_owned(),
        ] {
            assert!(
                payload_traceparent(payload.as_bytes()).is_none(),
                "{payload}"
            );
        }
        assert!(payload_traceparent(&[0xff, 0xfe, b't']).is_none());
    }

    #[test]
    fn a_payload_nats_would_refuse_becomes_a_dead_letter_without_it() {
        let out = |len: usize| Outgoing {
            span: tracing::Span::none(),
            target: Target::Event {
                name: "x-changed".into(),
                source: "module/a1".into(),
            },
            payload: Bytes::from(vec![b'x'; len]),
            msg_id: "redis:ab:0".into(),
            received: Instant::now(),
        };
        let max = 1 << 20;
        let kept = oversized(out(1000), max);
        assert!(matches!(kept.target, Target::Event { .. }));
        assert_eq!(kept.payload.len(), 1000);
        let dead = oversized(out(max), max);
        match &dead.target {
            Target::Dead { channel, reason } => {
                assert_eq!(channel, "module/a1/event/x-changed");
                assert!(reason.contains("1048576 bytes"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(dead.payload.is_empty());
        assert_eq!(dead.msg_id, "redis:ab:0", "the same id on every bridge");
    }

    #[test]
    fn config_problems_name_each_field() {
        let mut c = BridgeConfig::new("redis://127.0.0.1:6379");
        assert!(c.problems().is_empty());
        c.tls_ca_file = Some("ca.pem".into());
        c.tls_cert_file = Some("c.pem".into());
        c.fold_domains_ms = MAX_FOLD_DOMAINS_MS + 1;
        c.buffer_bytes = MAX_BUFFER_BYTES + 1;
        let p = c.problems().join("\n");
        for field in [
            "need a rediss://",
            "go together",
            "fold_domains_ms",
            "buffer_bytes",
        ] {
            assert!(p.contains(field), "{field}: {p}");
        }
    }
}
