//! The NATS JetStream connection weir's host and bridge share.
//!
//! - [`Transport::connect_with`]: one connection per process to a seed list
//!   of servers ([`connect`]: credentials and TLS as async-nats options),
//!   retrying the initial connect, reconnecting forever to any server of the
//!   cluster, pinging every [`PING_INTERVAL`] so a dead server is noticed in
//!   seconds;
//! - [`Transport::ensure_streams`]: the events stream (`<prefix>.events.>`) and
//!   the dead-letter stream (`<prefix>.dead.>`), created with
//!   [`Transport::with_replicas`] replicas or verified (a conflicting
//!   existing stream is an error, one with fewer replicas a warning; neither
//!   is changed); [`Transport::bucket`]: a key-value bucket looked up or
//!   created the same way;
//! - publishing events (with `Nats-Msg-Id`) and dead letters, each awaited
//!   until JetStream acknowledges it;
//! - [`subjects`]: every subject, stream, bucket, consumer and header name;
//! - [`server`]: a private nats-server process (the embedded default, tests);
//! - [`NatsConfig`]: the `[nats]` section of `weir.toml`.
//!
//! The event plane's own JetStream state (consumers, effect records, kv
//! buckets) is opened on a [`Transport`] by `weir-host`.

pub mod connect;
pub mod server;
pub mod subjects;

pub use connect::{ConnectAuth, Credentials, CredentialsError, TlsConfig};
pub use server::NatsServer;
pub use subjects::{
    DEAD_ATTEMPTS_HEADER, DEAD_ID_HEADER, DEAD_REASON_HEADER, DEAD_SUBJECT_HEADER,
    DEFAULT_DEAD_STREAM, DEFAULT_PREFIX, DEFAULT_STREAM, EFFECT_RECORDS_BUCKET, MSG_ID_HEADER,
    Subjects,
};

use std::path::PathBuf;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Client ping interval: 5 s (async-nats defaults to 60 s); two missed pongs
/// mark the connection dead.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);

/// Timeout of one connection attempt: 5 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Client-side buffer of a subscription, in messages: 8,192. weir's
/// subscriptions carry pull replies bounded by `max_batch`, so this never
/// fills (async-nats drops past its default of 65,536).
pub const SUBSCRIPTION_CAPACITY: usize = 8_192;

/// How long [`Transport::client_gone`] waits for the client to take a flush:
/// 2 s. A client that is reconnecting takes it only once connected; that is
/// not a death, and the check answers "alive" then.
pub const CLIENT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// While NATS is unreachable at start, a warning every 10 s.
pub const CONNECT_WAIT_LOG: Duration = Duration::from_secs(10);

/// Default cap on the events stream: 1 GiB. A full stream refuses new
/// events (discard policy `new`): the publisher gets an error, nothing
/// stored is dropped to make room.
pub const DEFAULT_STREAM_MAX_BYTES: i64 = 1 << 30;

/// Default cap on the dead-letter stream: 256 MiB. When full it refuses new
/// dead letters (discard `new`): the event whose dead letter was refused
/// stays unacknowledged in the events stream and is retried with backoff,
/// so nothing is lost; `/stats` counts the refusals
/// (`dead_letter_failures`).
pub const DEFAULT_DEAD_MAX_BYTES: i64 = 256 << 20;

/// Default age limit of dead letters: 30 days (time for an operator to look;
/// older dead letters are removed by JetStream).
pub const DEFAULT_DEAD_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Default age limit of events in the stream: 7 days. JetStream removes an
/// older event whether or not every consumer has handled it: a host down
/// longer than this misses events (set `nats.stream_max_age_s` to keep more).
pub const DEFAULT_STREAM_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Consumers a stream weir creates may hold: 100,000 (100 nodes × 1,000
/// apps, the generation names of a failover beside them). Set on the
/// stream because nats-server 2.15 gives every stream that sets none a
/// limit of 1,000 (`default_max_consumers`, nats-server PR #8337), which
/// one node of 1,000 apps fills; a stream made by an earlier weir or by
/// hand keeps its own (see the cluster runbook).
pub const STREAM_MAX_CONSUMERS: i32 = 100_000;

/// Window in which JetStream drops a repeated `Nats-Msg-Id`: 2 minutes.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Default port of the embedded nats-server: 4222, nats-server's own default
/// (<https://docs.nats.io/running-a-nats-service/introduction/flags>).
pub const DEFAULT_EMBEDDED_PORT: u16 = 4222;

/// Most replicas of a stream or bucket: 5 (JetStream's own limit).
pub const MAX_REPLICAS: usize = 5;

/// Default `[nats] consumer_replicas`: 1. On a cluster each replicated
/// consumer is a Raft group of its own: 3,000 idle durable consumers on an
/// R3 stream of a 3-server cluster (nats-server 2.12.8, issue #26) took 75%
/// of one core and 465 MiB per server at R3, 0.8% and 82 MiB at R1. A
/// one-replica consumer lives on one server; weir makes it again elsewhere
/// when that server stops answering ([`CONSUMER_FAILOVER_AFTER`]). 0 gives
/// each consumer the stream's replicas (the default before this setting existed).
pub const DEFAULT_CONSUMER_REPLICAS: usize = 1;

/// How long a consumer of one replica may go without a server answering for
/// it ("no responders": the server that holds it is down) before the host
/// creates it again on a live server: 10 s. A server that restarts is back
/// well within it (2-3 s on the reference machine), so a restart costs no
/// redeliveries; a server that stays down costs at most this long a pause.
pub const CONSUMER_FAILOVER_AFTER: Duration = Duration::from_secs(10);

/// `[nats]`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// One server URL (`nats://host:port`, `tls://host:port`); with neither
    /// `url` nor `urls`, weir starts a private nats-server on loopback (the
    /// embedded default).
    pub url: Option<String>,
    /// A seed list of servers, tried in the order given (put the node's own
    /// server first); the client also reconnects to the servers the cluster
    /// tells it about. Give `url` or `urls`, not both.
    pub urls: Option<Vec<String>>,
    /// Replicas of the streams and the effect-records bucket weir creates,
    /// 1 to [`MAX_REPLICAS`]. Default 1 (the embedded server is one
    /// server); a cluster wants 3. An existing stream with fewer is reported
    /// at start, never changed.
    pub replicas: usize,
    /// Replicas of each app's own consumer (`scope = "node"`), 0 to
    /// `replicas`; default 1 ([`DEFAULT_CONSUMER_REPLICAS`]); 0 gives it the
    /// stream's. On a cluster each replicated consumer is a Raft group of its
    /// own: 1,000 apps on 3 nodes make 3,000 groups that keep the servers
    /// busy while idle; one replica removes that cost. A consumer of one
    /// replica lives on one server: when that server stops answering for
    /// [`CONSUMER_FAILOVER_AFTER`], or comes back without the consumer's
    /// state, weir makes the consumer again on a live server, under the
    /// app's next consumer name, from what this host has settled (an event
    /// it handled whose ack died with the server is delivered again; the
    /// effect records keep its effects from running twice). A host that
    /// starts while its consumer's server is down waits for that server
    /// for that app alone. Apps with `scope = "cluster"` share one consumer
    /// between hosts and keep the stream's replicas. An existing consumer
    /// is changed in place at start.
    pub consumer_replicas: usize,
    /// Subject prefix. Default [`DEFAULT_PREFIX`].
    pub prefix: String,
    /// Events stream name. Default [`DEFAULT_STREAM`].
    pub stream: String,
    /// Port of the embedded server on 127.0.0.1 (neither `url` nor `urls`):
    /// default [`DEFAULT_EMBEDDED_PORT`] (4222, nats-server's own default,
    /// so `weir publish --config` with the same file, the `nats` CLI and
    /// other clients on the node find it); `0` lets the server pick a free
    /// port, logged at start. A port in use is an error at start.
    pub embedded_port: u16,
    /// Store directory of the embedded server; default
    /// [`server::default_store_dir`] (`~/.local/state/weir/nats`). Created
    /// with mode 0700; an existing one must be this user's with mode 0700.
    pub state_dir: Option<PathBuf>,
    /// User name, if the server requires one; the password comes from
    /// `password_file` or [`connect::PASSWORD_ENV`]. `weir permissions`
    /// prints the least-privilege entry a host needs.
    pub user: Option<String>,
    /// Refused: a password never sits in the config (use `password_file`
    /// or [`connect::PASSWORD_ENV`]). Kept only to say so.
    pub password: Option<String>,
    /// File holding the password of `user`.
    pub password_file: Option<PathBuf>,
    /// File holding a token (or [`connect::TOKEN_ENV`]).
    pub token_file: Option<PathBuf>,
    /// File holding an nkey seed (`SU...`).
    pub nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (user JWT and nkey seed, as `nsc` writes it).
    pub creds_file: Option<PathBuf>,
    /// `[nats.tls]`.
    pub tls: TlsConfig,
    /// Inbox prefix for replies; default `_INBOX`. Give each host its own
    /// (e.g. `_INBOX_weir_node1`) so permissions can keep hosts from reading
    /// each other's replies.
    pub inbox_prefix: Option<String>,
    /// Events stream cap in bytes when weir creates it. Default
    /// [`DEFAULT_STREAM_MAX_BYTES`] (1 GiB); a full stream
    /// refuses new events (publishers get an error).
    pub stream_max_bytes: i64,
    /// Events stream cap in events when weir creates it; default `-1` (none).
    pub stream_max_msgs: i64,
    /// Age in seconds after which JetStream removes an event, handled or not,
    /// when weir creates the stream. Default
    /// [`DEFAULT_STREAM_MAX_AGE`] (7 days).
    pub stream_max_age_s: u64,
    /// Dead-letter stream cap in bytes when weir creates it. Default
    /// [`DEFAULT_DEAD_MAX_BYTES`] (256 MiB). A full
    /// dead-letter stream refuses new dead letters; their events stay in the
    /// events stream and are retried (nothing is lost, `/stats` counts
    /// `dead_letter_failures`).
    pub dead_max_bytes: i64,
    /// Dead-letter stream cap in messages; default `-1` (none).
    pub dead_max_msgs: i64,
    /// Age in seconds after which JetStream removes a dead letter. Default
    /// [`DEFAULT_DEAD_MAX_AGE`] (30 days).
    pub dead_max_age_s: u64,
    /// When a reload removes an app, delete its durable consumer too (its
    /// cursor is lost: re-adding the app starts at `delivery.start`).
    /// Default `false`: the consumer is kept and a re-added app resumes
    /// where it stopped. The one `[nats]` setting a reload applies.
    pub delete_consumer: bool,
}

impl NatsConfig {
    /// The events stream's caps.
    pub fn stream_limits(&self) -> StreamLimits {
        StreamLimits {
            max_bytes: self.stream_max_bytes,
            max_msgs: self.stream_max_msgs,
            max_age: Duration::from_secs(self.stream_max_age_s),
        }
    }

    /// The dead-letter stream's caps.
    pub fn dead_letter_limits(&self) -> StreamLimits {
        StreamLimits {
            max_bytes: self.dead_max_bytes,
            max_msgs: self.dead_max_msgs,
            max_age: Duration::from_secs(self.dead_max_age_s),
        }
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: None,
            urls: None,
            replicas: 1,
            consumer_replicas: DEFAULT_CONSUMER_REPLICAS,
            prefix: DEFAULT_PREFIX.into(),
            stream: DEFAULT_STREAM.into(),
            state_dir: None,
            user: None,
            password: None,
            password_file: None,
            token_file: None,
            nkey_seed_file: None,
            creds_file: None,
            delete_consumer: false,
            embedded_port: DEFAULT_EMBEDDED_PORT,
            tls: TlsConfig::default(),
            inbox_prefix: None,
            stream_max_bytes: DEFAULT_STREAM_MAX_BYTES,
            stream_max_msgs: -1,
            stream_max_age_s: DEFAULT_STREAM_MAX_AGE.as_secs(),
            dead_max_bytes: DEFAULT_DEAD_MAX_BYTES,
            dead_max_msgs: -1,
            dead_max_age_s: DEFAULT_DEAD_MAX_AGE.as_secs(),
        }
    }
}

impl NatsConfig {
    /// The servers to connect to: `urls`, else `url`; `None` for the
    /// embedded server.
    pub fn servers(&self) -> Option<Vec<String>> {
        match (&self.urls, &self.url) {
            (Some(urls), _) => Some(urls.clone()),
            (None, Some(url)) => Some(vec![url.clone()]),
            (None, None) => None,
        }
    }

    /// The servers a client of this host connects to: [`Self::servers`],
    /// else the embedded server's URL (`nats://127.0.0.1:<embedded_port>`);
    /// `None` when the embedded port is chosen at start (`0`).
    pub fn client_servers(&self) -> Option<Vec<String>> {
        self.servers().or_else(|| {
            (self.embedded_port != 0)
                .then(|| vec![format!("nats://127.0.0.1:{}", self.embedded_port)])
        })
    }

    /// The credential fields.
    pub fn auth_fields(&self) -> connect::AuthFields<'_> {
        connect::AuthFields {
            user: self.user.as_deref(),
            password_file: self.password_file.as_deref(),
            token_file: self.token_file.as_deref(),
            nkey_seed_file: self.nkey_seed_file.as_deref(),
            creds_file: self.creds_file.as_deref(),
        }
    }

    /// How to connect: the credential (read now from its file or the
    /// environment), TLS, and the inbox prefix `inbox_prefix` or
    /// `default_inbox`.
    ///
    /// # Errors
    ///
    /// [`CredentialsError`] if a secret cannot be read.
    pub fn auth(&self, default_inbox: String) -> Result<ConnectAuth, CredentialsError> {
        Ok(ConnectAuth {
            credentials: self.auth_fields().read()?,
            tls: self.tls.clone(),
            inbox_prefix: Some(self.inbox_prefix.clone().unwrap_or(default_inbox)),
        })
    }

    /// Every problem with this section (empty if valid), unprefixed.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Err(e) = Subjects::new(&self.prefix) {
            p.push(format!("prefix: {e}"));
        }
        if let Err(e) = subjects::check_stream_name(&self.stream) {
            p.push(e.to_string());
        }
        if self.url.is_some() && self.urls.is_some() {
            p.push("give url or urls, not both".to_owned());
        }
        let servers = self.servers();
        if let Some(servers) = &servers {
            p.extend(connect::server_problems(servers));
        }
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            p.push(format!(
                "replicas = {} must be 1 to {MAX_REPLICAS}",
                self.replicas
            ));
        }
        if self.consumer_replicas > self.replicas {
            p.push(format!(
                "consumer_replicas = {} is above replicas = {} (a consumer cannot have more replicas than its stream; 0 gives it the stream's)",
                self.consumer_replicas, self.replicas
            ));
        }
        if self.password.is_some() {
            p.push(format!(
                "password is refused in the config file: use password_file or {}",
                connect::PASSWORD_ENV
            ));
        }
        let auth = self.auth_fields();
        p.extend(auth.problems());
        p.extend(self.tls.problems());
        if servers.is_none() {
            if self.replicas > 1 {
                p.push(format!(
                    "replicas = {} needs a cluster: the embedded server (no url or urls) is one server",
                    self.replicas
                ));
            }
            if auth.is_set() || self.tls.is_set() {
                p.push(
                    "credentials and tls need url or urls (the embedded server uses neither)"
                        .to_owned(),
                );
            }
        }
        for (name, value) in [
            ("stream_max_age_s", self.stream_max_age_s),
            ("dead_max_age_s", self.dead_max_age_s),
        ] {
            if value == 0 {
                p.push(format!("{name} must be greater than 0"));
            }
        }
        p
    }
}

/// Errors at the NATS edge, by phase.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Connecting failed (invalid options; an unreachable server is retried,
    /// not an error).
    #[error("failed to connect to NATS at {url}: {source}")]
    Connect {
        /// The server URL.
        url: String,
        /// What the client said.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A stream exists with a configuration weir cannot use.
    #[error(
        "stream {name} exists with an incompatible configuration: {message} (weir never changes it; fix or delete it)"
    )]
    StreamConflict {
        /// Stream name.
        name: String,
        /// What differs.
        message: String,
    },
    /// A JetStream API call failed.
    #[error("JetStream {operation} failed: {source}")]
    JetStream {
        /// What was attempted.
        operation: &'static str,
        /// What the server or client said.
        #[source]
        source: BoxError,
    },
    /// A subject could not be formed.
    #[error(transparent)]
    Subject(#[from] subjects::SubjectError),
}

/// The source of a [`TransportError::JetStream`]: the client's error, or
/// weir's description of a reply it cannot use.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A [`TransportError::JetStream`] for `operation`, from any error.
pub fn js_err<E: Into<BoxError>>(operation: &'static str) -> impl FnOnce(E) -> TransportError {
    move |source| TransportError::JetStream {
        operation,
        source: source.into(),
    }
}

/// The process's NATS connection and JetStream context.
#[derive(Clone, Debug)]
pub struct Transport {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    stream: String,
    dead_stream: String,
    replicas: usize,
    limits: StreamLimits,
    dead_limits: StreamLimits,
    /// Counts (re)connections.
    connections: tokio::sync::watch::Receiver<u64>,
}

/// An existing stream with fewer replicas than configured (reported at
/// start, never changed by weir).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaShortfall {
    /// The stream (`KV_<bucket>` for a key-value bucket).
    pub stream: String,
    /// Its replicas.
    pub replicas: usize,
    /// `nats.replicas`.
    pub configured: usize,
}

/// What JetStream answered to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The stream sequence of the stored message (of the first copy, for a
    /// duplicate).
    pub sequence: u64,
    /// The `Nats-Msg-Id` was already stored within [`DUPLICATE_WINDOW`]:
    /// nothing new was stored.
    pub duplicate: bool,
}

/// Caps of a stream when weir creates it (an existing stream keeps its own).
/// Both streams discard `new`: a full stream refuses what comes, it never
/// drops what it holds to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Most bytes stored.
    pub max_bytes: i64,
    /// Most messages stored; `-1` for no count cap.
    pub max_msgs: i64,
    /// Age after which JetStream removes a message.
    pub max_age: Duration,
}

impl StreamLimits {
    /// The events stream's defaults: [`DEFAULT_STREAM_MAX_BYTES`], no count
    /// cap, [`DEFAULT_STREAM_MAX_AGE`].
    pub const EVENTS: Self = Self {
        max_bytes: DEFAULT_STREAM_MAX_BYTES,
        max_msgs: -1,
        max_age: DEFAULT_STREAM_MAX_AGE,
    };

    /// The dead-letter stream's defaults: [`DEFAULT_DEAD_MAX_BYTES`], no count
    /// cap, [`DEFAULT_DEAD_MAX_AGE`].
    pub const DEAD_LETTERS: Self = Self {
        max_bytes: DEFAULT_DEAD_MAX_BYTES,
        max_msgs: -1,
        max_age: DEFAULT_DEAD_MAX_AGE,
    };
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self::EVENTS
    }
}

impl Transport {
    /// Connect to `url` as client `name` without credentials.
    ///
    /// # Errors
    ///
    /// As [`Transport::connect_with`].
    pub async fn connect(
        url: &str,
        name: &str,
        subjects: Subjects,
        stream: &str,
    ) -> Result<Self, TransportError> {
        Self::connect_with(
            &[url.to_owned()],
            name,
            subjects,
            stream,
            ConnectAuth::default(),
        )
        .await
    }

    /// Connect to one of `servers` (a seed list, tried in order; the client
    /// also learns the cluster's other servers and reconnects to any of
    /// them, forever) as client `name` with `auth`. The dead-letter stream
    /// and the effect-records bucket are named after `stream`
    /// ([`subjects::dead_letter_stream`], [`subjects::effect_records_bucket`]).
    ///
    /// # Errors
    ///
    /// [`TransportError::Connect`] if the options are invalid (a bad URL, a
    /// creds file that cannot be read); an unreachable server is retried in
    /// the background, not an error.
    pub async fn connect_with(
        servers: &[String],
        name: &str,
        subjects: Subjects,
        stream: &str,
        auth: ConnectAuth,
    ) -> Result<Self, TransportError> {
        let url = servers.join(",");
        let options = connect::options(auth)
            .await
            .map_err(|e| TransportError::Connect {
                url: url.clone(),
                source: e.into(),
            })?;
        let (connected_tx, connections) = tokio::sync::watch::channel(0u64);
        let connected_tx = std::sync::Arc::new(connected_tx);
        let options = options.event_callback(move |event| {
            let tx = connected_tx.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tx.send_modify(|n| *n += 1);
                        tracing::info!("NATS connected");
                    }
                    async_nats::Event::Disconnected => tracing::warn!("NATS disconnected"),
                    other => tracing::debug!(event = %other, "NATS client event"),
                }
            }
        });
        let client = options
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            // The first server is the node's own: try it first.
            .retain_servers_order()
            .ping_interval(PING_INTERVAL)
            .connection_timeout(CONNECT_TIMEOUT)
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .connect(servers)
            .await
            .map_err(|source| TransportError::Connect { url, source })?;
        let js = jetstream::new(client.clone());
        Ok(Self {
            client,
            js,
            subjects,
            stream: stream.to_owned(),
            dead_stream: subjects::dead_letter_stream(stream),
            replicas: 1,
            limits: StreamLimits::EVENTS,
            dead_limits: StreamLimits::DEAD_LETTERS,
            connections,
        })
    }

    /// Create streams and the effect-records bucket with `replicas`
    /// replicas (default 1; consumers inherit the stream's).
    #[must_use]
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// Replicas of the streams and buckets weir creates (1 by default).
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The dead-letter stream's name.
    pub fn dead_letter_stream(&self) -> &str {
        &self.dead_stream
    }

    /// Wait until the client is connected, logging every
    /// [`CONNECT_WAIT_LOG`] while it is not (the client keeps retrying on its
    /// own: a host started while NATS is down starts serving once it is up,
    /// with no manual action).
    ///
    /// Cancel safety: cancel safe (it only waits).
    pub async fn wait_connected(&self) {
        let started = std::time::Instant::now();
        let mut connections = self.connections.clone();
        while self.client.connection_state() != async_nats::connection::State::Connected {
            // Woken by a (re)connection; the timeout only paces the warning.
            if tokio::time::timeout(CONNECT_WAIT_LOG, connections.changed())
                .await
                .is_err()
            {
                tracing::warn!(waited_s = started.elapsed().as_secs(), "waiting for NATS");
            }
        }
    }

    /// The server the client is connected to now (or was last), as it
    /// announced itself: `(server name, client port)`.
    pub fn connected_server(&self) -> (String, u16) {
        let info = self.client.server_info();
        (info.server_name, info.port)
    }

    /// Why the client can no longer work, if it cannot: its connection task
    /// is gone (it panicked, or the client was closed), so every publish,
    /// ack and pull fails from now on and no reconnection will come. `None`
    /// while it is alive, connected or reconnecting. Costs one write-buffer
    /// flush (no round trip to the server), at most [`CLIENT_CHECK_TIMEOUT`].
    pub async fn client_gone(&self) -> Option<String> {
        match tokio::time::timeout(CLIENT_CHECK_TIMEOUT, self.client.flush()).await {
            // The command channel is closed (send error) or the task
            // dropped the flush it had taken: only a task that ended does
            // either; a disconnected client keeps both until it reconnects.
            Ok(Err(e)) => Some(format!("the NATS client's connection task is gone ({e})")),
            Ok(Ok(())) | Err(_) => None,
        }
    }

    /// Whether the client is connected right now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Use `limits` when creating the events stream (default
    /// [`StreamLimits::EVENTS`]).
    #[must_use]
    pub fn with_stream_limits(mut self, limits: StreamLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Use `limits` when creating the dead-letter stream (default
    /// [`StreamLimits::DEAD_LETTERS`]).
    #[must_use]
    pub fn with_dead_letter_limits(mut self, limits: StreamLimits) -> Self {
        self.dead_limits = limits;
        self
    }

    /// The key-value bucket `name`: looked up (and its replicas checked,
    /// fewer than configured is a warning), else created with the configured
    /// replicas, one revision per key, keys removed after `max_age` (zero:
    /// never) and at most `max_bytes`, on file storage. A bucket another host
    /// created meanwhile is looked up again.
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`] if the bucket can be neither found nor
    /// created.
    pub async fn bucket(
        &self,
        name: &str,
        description: &str,
        max_age: Duration,
        max_bytes: i64,
    ) -> Result<kv::Store, TransportError> {
        if let Ok(store) = self.js.get_key_value(name).await {
            self.report_replicas(&format!("KV_{name}")).await;
            return Ok(store);
        }
        let created = self
            .js
            .create_key_value(kv::Config {
                bucket: name.to_owned(),
                description: description.to_owned(),
                history: 1,
                max_age,
                max_bytes,
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await;
        match created {
            Ok(store) => Ok(store),
            Err(e) => self
                .js
                .get_key_value(name)
                .await
                .map_err(|_| js_err("key-value bucket")(e)),
        }
    }

    /// Warn if stream `name` has fewer replicas than configured (weir never
    /// changes an existing stream); the shortfall, if any.
    async fn report_replicas(&self, name: &str) -> Option<ReplicaShortfall> {
        let mut stream = self.js.get_stream(name).await.ok()?;
        let replicas = stream.info().await.ok()?.config.num_replicas;
        (replicas < self.replicas).then(|| {
            tracing::warn!(
                stream = %name,
                replicas,
                configured = self.replicas,
                "stream has fewer replicas than configured; weir does not change it (raise it with `nats stream edit --replicas`)"
            );
            ReplicaShortfall {
                stream: name.to_owned(),
                replicas,
                configured: self.replicas,
            }
        })
    }

    /// The subjects in use.
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// The events stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The client (for subscriptions and requests of the event plane).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// A receiver of the connection count, which grows by one at each
    /// (re)connection.
    pub fn connections(&self) -> tokio::sync::watch::Receiver<u64> {
        self.connections.clone()
    }

    /// Create the events and dead-letter streams (with the configured
    /// replicas), or verify existing ones capture the right subjects; returns
    /// the existing streams with fewer replicas than configured (each also
    /// logged as a warning; weir never changes them).
    ///
    /// # Errors
    ///
    /// [`TransportError::StreamConflict`] if a stream exists without the
    /// subjects weir needs; [`TransportError::JetStream`] otherwise.
    pub async fn ensure_streams(&self) -> Result<Vec<ReplicaShortfall>, TransportError> {
        let mut shortfalls = Vec::new();
        let streams = [
            (self.stream.clone(), self.subjects.all_events(), self.limits),
            (
                self.dead_stream.clone(),
                self.subjects.all_dead_letters(),
                self.dead_limits,
            ),
        ];
        for (name, subject, limits) in streams {
            match self.js.get_stream(&name).await {
                Ok(mut existing) => {
                    let info = existing
                        .info()
                        .await
                        .map_err(|e| js_err("stream info")(e))?;
                    if !info.config.subjects.contains(&subject) {
                        return Err(TransportError::StreamConflict {
                            name,
                            message: format!(
                                "captures {:?}, weir needs {subject:?}",
                                info.config.subjects
                            ),
                        });
                    }
                    shortfalls.extend(self.report_replicas(&name).await);
                }
                Err(_) => {
                    let config = stream::Config {
                        name: name.clone(),
                        subjects: vec![subject],
                        storage: stream::StorageType::File,
                        max_bytes: limits.max_bytes,
                        max_messages: limits.max_msgs,
                        max_age: limits.max_age,
                        duplicate_window: DUPLICATE_WINDOW,
                        discard: stream::DiscardPolicy::New,
                        num_replicas: self.replicas,
                        max_consumers: STREAM_MAX_CONSUMERS,
                        ..Default::default()
                    };
                    self.js
                        .create_stream(config)
                        .await
                        .map_err(|e| js_err("stream create")(e))?;
                    tracing::info!(stream = %name, replicas = self.replicas, "stream created");
                }
            }
        }
        Ok(shortfalls)
    }

    /// Publish event `name` from `source` with `payload` and id `msg_id`
    /// (and, when traces are exported, the current span's `traceparent`);
    /// returns once JetStream has stored it, or recognised `msg_id` as a
    /// duplicate within [`DUPLICATE_WINDOW`] (then nothing new is stored).
    ///
    /// # Errors
    ///
    /// [`TransportError::Subject`] for invalid names, or
    /// [`TransportError::JetStream`] if the stream refuses it (full, down).
    pub async fn publish_event(
        &self,
        name: &str,
        source: &str,
        payload: Bytes,
        msg_id: &str,
    ) -> Result<Published, TransportError> {
        self.publish_event_carrying(name, source, payload, msg_id, None)
            .await
    }

    /// [`Transport::publish_event`] carrying `traceparent` as is when no
    /// span context is injected (traces not exported here: `weir publish
    /// --traceparent` continues the caller's trace for the hosts that do).
    ///
    /// # Errors
    ///
    /// As [`Transport::publish_event`].
    pub async fn publish_event_carrying(
        &self,
        name: &str,
        source: &str,
        payload: Bytes,
        msg_id: &str,
        traceparent: Option<&str>,
    ) -> Result<Published, TransportError> {
        let subject = self.subjects.event(name, source)?;
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID_HEADER, msg_id);
        crate::telemetry::inject_current(&mut headers);
        if let Some(value) = traceparent
            && headers
                .get(crate::telemetry::context::TRACEPARENT)
                .is_none()
            && crate::telemetry::parse_traceparent(value).is_some()
        {
            headers.insert(crate::telemetry::context::TRACEPARENT, value.trim());
        }
        self.publish_acked(subject, headers, payload, "publish")
            .await
    }

    /// Publish and wait until JetStream has stored the message; returns its
    /// stream sequence. `operation` names it in a [`TransportError`].
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`] if the stream refuses it or is down.
    pub async fn publish_acked(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
        operation: &'static str,
    ) -> Result<Published, TransportError> {
        let ack = self
            .js
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| js_err(operation)(e))?
            .await
            .map_err(|e| js_err(operation)(format!("not acknowledged: {e}")))?;
        Ok(Published {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// Store `payload` as a dead letter of `app` on `node` that never was an
    /// event (the bridge's: a Redis message on another channel shape),
    /// with `reason` and the subject or channel it came on
    /// (`original`), under `msg_id`; awaits JetStream's ack.
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`] if the stream refuses it or is down.
    pub async fn publish_raw_dead_letter(
        &self,
        node: u32,
        app: &str,
        original: &str,
        payload: Bytes,
        reason: &str,
        msg_id: &str,
    ) -> Result<Published, TransportError> {
        let mut headers = HeaderMap::new();
        headers.insert(DEAD_REASON_HEADER, reason.replace(['\r', '\n'], " "));
        headers.insert(DEAD_SUBJECT_HEADER, original.replace(['\r', '\n'], " "));
        headers.insert(DEAD_ATTEMPTS_HEADER, "0");
        headers.insert(DEAD_ID_HEADER, msg_id);
        headers.insert(MSG_ID_HEADER, format!("dead:{node}:{app}:{msg_id}"));
        let subject = self.subjects.dead_letter(node, app);
        self.publish_acked(subject, headers, payload, "dead-letter publish")
            .await
    }

    /// The events stream's duplicate window, as the server has it.
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`] if the stream cannot be read.
    pub async fn duplicate_window(&self) -> Result<Duration, TransportError> {
        let mut stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| js_err("stream info")(e))?;
        let info = stream.info().await.map_err(|e| js_err("stream info")(e))?;
        Ok(info.config.duplicate_window)
    }

    /// The largest message the server takes, in bytes (its `max_payload`,
    /// 1 MiB by default; what the last server announced).
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    /// Flush, then close the connection (before stopping a private server, so
    /// the client does not report a lost server).
    ///
    /// # Errors
    ///
    /// If the connection is already gone.
    pub async fn close(&self) -> Result<(), TransportError> {
        self.client.drain().await.map_err(|e| js_err("drain")(e))
    }

    /// Flush pending publishes and acks.
    ///
    /// # Errors
    ///
    /// If the connection is gone.
    pub async fn flush(&self) -> Result<(), TransportError> {
        self.client.flush().await.map_err(|e| js_err("flush")(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nats(toml: &str) -> NatsConfig {
        toml::from_str(toml).expect("parses")
    }

    #[test]
    fn cluster_settings_are_checked_together() {
        let ok = nats(
            r#"
            urls = ["nats://a:4222", "tls://b:4222"]
            replicas = 3
            creds_file = "node1.creds"
            [tls]
            ca_file = "ca.pem"
            first = true
            "#,
        );
        assert!(ok.problems().is_empty(), "{:?}", ok.problems());
        assert_eq!(ok.servers().unwrap().len(), 2);
        let problems = nats(
            r#"
            url = "nats://a:4222"
            urls = ["nats://a:4222,nats://b:4222"]
            replicas = 6
            user = "n1"
            password = "plain"
            token_file = "t"
            "#,
        )
        .problems();
        for expected in [
            "give url or urls, not both",
            "url \"nats://a:4222,nats://b:4222\"",
            "replicas = 6 must be 1 to 5",
            "password is refused in the config file",
            "give one way to authenticate, not 2 (user, token_file)",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "{expected:?} not in {problems:?}"
            );
        }
        let embedded = nats("replicas = 3\nnkey_seed_file = \"s.nk\"").problems();
        assert_eq!(embedded.len(), 2, "{embedded:?}");
        assert!(embedded[0].contains("needs a cluster"), "{embedded:?}");
    }
}
