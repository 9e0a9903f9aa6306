//! The NATS JetStream edge: the only part of weir that imports `async_nats`.
//!
//! - [`Transport::connect`]: one connection per process, retrying the initial
//!   connect, reconnecting forever, pinging every [`PING_INTERVAL`] so a dead
//!   server is noticed in seconds;
//! - [`Transport::ensure_streams`]: the events stream (`<prefix>.events.>`) and
//!   the dead-letter stream (`<prefix>.dead.>`), created or verified (a
//!   conflicting existing stream is reported, never changed);
//! - [`consumer`]: [`Transport::consumer`], one durable pull consumer per
//!   (node, app) with the app's event names as filter subjects, explicit ack
//!   and bounded `max_ack_pending` and `ack_wait` ([`Delivery`]);
//!   [`AppConsumer::next_batch`] pulls only what can start, cancel safe;
//!   [`Inbound`] is one delivered event with ack / nak(delay) / term;
//! - [`records`]: [`EffectRecords`], effect idempotency records in a
//!   key-value bucket;
//! - [`subjects`]: every subject, stream, bucket, consumer and header name;
//! - [`server`]: a private nats-server process (the embedded default, tests);
//! - publishing events (with `Nats-Msg-Id`) and dead letters, each awaited
//!   until JetStream acknowledges it.

pub mod consumer;
pub mod records;
pub mod server;
pub mod subjects;

pub use consumer::{AppConsumer, Delivery, Inbound};
pub use records::EffectRecords;
pub use server::NatsServer;
pub use subjects::{
    DEAD_ATTEMPTS_HEADER, DEAD_ID_HEADER, DEAD_REASON_HEADER, DEAD_SUBJECT_HEADER,
    DEFAULT_DEAD_STREAM, DEFAULT_PREFIX, DEFAULT_STREAM, EFFECT_RECORDS_BUCKET, MSG_ID_HEADER,
    Subjects,
};

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_nats::{ConnectOptions, HeaderMap};
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

/// Long poll for the first event of a batch: 30 s, with a heartbeat every
/// [`PULL_HEARTBEAT`] (so a server that lost the request is noticed) and a
/// new request at once after a reconnection. With 1,000 idle apps this is
/// about 33 requests and 200 heartbeats a second in all.
pub const LONG_POLL: Duration = Duration::from_secs(30);

/// Idle heartbeat of a long poll: 5 s. Two missed heartbeats (10 s) end the
/// wait and a new request is made.
pub const PULL_HEARTBEAT: Duration = Duration::from_secs(5);

/// Shortest linger worth a waiting pull: 1 ms (below it, take what is ready).
pub const MIN_LINGER_PULL: Duration = Duration::from_millis(1);

/// Part of `linger` kept for the pull's own cost: 2 ms. The server answers an
/// expired pull about a millisecond late and the reply takes a round trip;
/// without this margin an event would wait for batch-mates a little longer
/// than `linger` (measured with `benches/e2e.rs`).
pub const LINGER_MARGIN: Duration = Duration::from_millis(2);

/// How long weir waits past a request's expiry (or, for a request that does
/// not wait, at all) for the server's closing status: 2 s. Past it the
/// request is taken as over; anything it still delivers arrives in the same
/// subscription and is taken with the next batch.
pub const PULL_REPLY_MARGIN: Duration = Duration::from_secs(2);

/// Longest time [`AppConsumer::release`] spends handing back events taken
/// but not handled at shutdown: 2 s.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

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

/// How long an effect record is kept: 24 h, far beyond any redelivery
/// (`max_deliver` × the longest backoff). An event redelivered later than
/// that would run its effects again.
pub const EFFECT_RECORD_TTL: Duration = Duration::from_secs(24 * 3600);

/// Cap on the effect records bucket: 256 MiB (about 2 M records). When full,
/// recording fails and is logged; the effect has run and its events are acked.
pub const EFFECT_RECORDS_MAX_BYTES: i64 = 256 << 20;

/// Default age limit of events in the stream: 7 days. JetStream removes an
/// older event whether or not every consumer has handled it: a host down
/// longer than this misses events (set `nats.stream_max_age_s` to keep more).
pub const DEFAULT_STREAM_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Window in which JetStream drops a repeated `Nats-Msg-Id`: 2 minutes.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// `[nats]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL; `None` starts a private nats-server on loopback (the
    /// embedded default).
    pub url: Option<String>,
    /// Subject prefix. Default [`DEFAULT_PREFIX`].
    pub prefix: String,
    /// Events stream name. Default [`DEFAULT_STREAM`].
    pub stream: String,
    /// Store directory of the embedded server; default
    /// [`server::default_store_dir`] (`~/.local/state/weir/nats`). Created
    /// with mode 0700; an existing one must be this user's with mode 0700.
    pub state_dir: Option<PathBuf>,
    /// User name, if the server requires one (with `password`). See
    /// `RELIABILITY.md` for the least-privilege permissions a host needs.
    pub user: Option<String>,
    /// Password of `user`.
    pub password: Option<String>,
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
            prefix: DEFAULT_PREFIX.into(),
            stream: DEFAULT_STREAM.into(),
            state_dir: None,
            user: None,
            password: None,
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
    /// Every problem with this section (empty if valid), unprefixed.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Err(e) = Subjects::new(&self.prefix) {
            p.push(format!("prefix: {e}"));
        }
        if let Err(e) = subjects::check_token("stream", &self.stream) {
            p.push(e.to_string());
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

fn js_err<E: Into<BoxError>>(operation: &'static str) -> impl FnOnce(E) -> TransportError {
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
    limits: StreamLimits,
    dead_limits: StreamLimits,
    /// Counts (re)connections.
    connections: tokio::sync::watch::Receiver<u64>,
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

/// How to authenticate and where replies go.
#[derive(Debug, Clone, Default)]
pub struct ConnectAuth {
    /// User and password, if the server requires them.
    pub user_password: Option<(String, String)>,
    /// Inbox prefix for replies (default `_INBOX`); a per-host prefix lets
    /// the server's permissions keep hosts from reading each other's replies.
    pub inbox_prefix: Option<String>,
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
        Self::connect_with(url, name, subjects, stream, ConnectAuth::default()).await
    }

    /// Connect to `url` as client `name` with `auth`.
    ///
    /// # Errors
    ///
    /// [`TransportError::Connect`] if the options are invalid; an unreachable
    /// server is retried in the background, not an error.
    pub async fn connect_with(
        url: &str,
        name: &str,
        subjects: Subjects,
        stream: &str,
        auth: ConnectAuth,
    ) -> Result<Self, TransportError> {
        let mut options = ConnectOptions::new();
        if let Some((user, password)) = auth.user_password {
            options = options.user_and_password(user, password);
        }
        if let Some(prefix) = auth.inbox_prefix {
            options = options.custom_inbox_prefix(prefix);
        }
        let (connected_tx, connections) = tokio::sync::watch::channel(0u64);
        let connected_tx = std::sync::Arc::new(connected_tx);
        options = options.event_callback(move |event| {
            let tx = connected_tx.clone();
            async move {
                if matches!(event, async_nats::Event::Connected) {
                    tx.send_modify(|n| *n += 1);
                }
            }
        });
        let client = options
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .ping_interval(PING_INTERVAL)
            .connection_timeout(CONNECT_TIMEOUT)
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .connect(url)
            .await
            .map_err(|source| TransportError::Connect {
                url: url.to_owned(),
                source,
            })?;
        let js = jetstream::new(client.clone());
        Ok(Self {
            client,
            js,
            subjects,
            stream: stream.to_owned(),
            dead_stream: DEFAULT_DEAD_STREAM.to_owned(),
            limits: StreamLimits::EVENTS,
            dead_limits: StreamLimits::DEAD_LETTERS,
            connections,
        })
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
            tracing::warn!(waited_s = started.elapsed().as_secs(), "waiting for NATS");
            // Woken by a (re)connection; the timeout only paces the warning.
            let _ = tokio::time::timeout(CONNECT_WAIT_LOG, connections.changed()).await;
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

    /// The effect idempotency records of `node`, in the
    /// [`EFFECT_RECORDS_BUCKET`] bucket (looked up, else created).
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`] if the bucket can be neither found nor
    /// created.
    pub async fn effect_records(&self, node: u32) -> Result<EffectRecords, TransportError> {
        let store = match self.js.get_key_value(EFFECT_RECORDS_BUCKET).await {
            Ok(store) => store,
            Err(_) => self
                .js
                .create_key_value(kv::Config {
                    bucket: EFFECT_RECORDS_BUCKET.to_owned(),
                    description: "weir effect idempotency records".to_owned(),
                    history: 1,
                    max_age: EFFECT_RECORD_TTL,
                    max_bytes: EFFECT_RECORDS_MAX_BYTES,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| js_err("effect records bucket")(e))?,
        };
        Ok(EffectRecords {
            store,
            prefix: format!("n{node}"),
        })
    }

    /// The subjects in use.
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// Create the events and dead-letter streams, or verify existing ones
    /// capture the right subjects.
    ///
    /// # Errors
    ///
    /// [`TransportError::StreamConflict`] if a stream exists without the
    /// subjects weir needs; [`TransportError::JetStream`] otherwise.
    pub async fn ensure_streams(&self) -> Result<(), TransportError> {
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
                        ..Default::default()
                    };
                    self.js
                        .create_stream(config)
                        .await
                        .map_err(|e| js_err("stream create")(e))?;
                    tracing::info!(stream = %name, "stream created");
                }
            }
        }
        Ok(())
    }

    /// Publish event `name` from `source` with `payload` and id `msg_id`;
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
        let subject = self.subjects.event(name, source)?;
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID_HEADER, msg_id);
        self.publish_acked(subject, headers, payload, "publish")
            .await
    }

    /// Publish and wait until JetStream has stored the message; returns its
    /// stream sequence.
    async fn publish_acked(
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

    /// Publish `inbound` as a dead letter of `app` on `node` with `reason`,
    /// awaiting JetStream's ack. Idempotent within the duplicate window.
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`]: the caller must not term the event.
    pub async fn publish_dead_letter(
        &self,
        node: u32,
        app: &str,
        inbound: &Inbound,
        reason: &str,
    ) -> Result<(), TransportError> {
        let mut headers = inbound.msg.headers.clone().unwrap_or_default();
        headers.insert(DEAD_REASON_HEADER, reason.replace(['\r', '\n'], " "));
        headers.insert(DEAD_SUBJECT_HEADER, inbound.subject.as_str());
        headers.insert(DEAD_ATTEMPTS_HEADER, inbound.attempt.to_string());
        headers.insert(DEAD_ID_HEADER, inbound.id.as_str());
        headers.insert(MSG_ID_HEADER, format!("dead:{node}:{app}:{}", inbound.id));
        let subject = self.subjects.dead_letter(node, app);
        self.publish_acked(
            subject,
            headers,
            inbound.payload.clone(),
            "dead-letter publish",
        )
        .await
        .map(|_| ())
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
