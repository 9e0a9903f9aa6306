//! The NATS JetStream edge: the only module that imports `async_nats`.
//!
//! - [`Transport::connect`]: one connection per process, retrying the initial
//!   connect, reconnecting forever, pinging every [`PING_INTERVAL`] so a dead
//!   server is noticed in seconds;
//! - [`Transport::ensure_streams`]: the events stream (`<prefix>.events.>`) and
//!   the dead-letter stream (`<prefix>.dead.>`), created or verified (a
//!   conflicting existing stream is reported, never changed);
//! - [`Transport::consumer`]: one durable pull consumer per (node, app) with
//!   the app's event names as filter subjects, explicit ack and bounded
//!   `max_ack_pending`, `ack_wait` and `max_deliver` (failure backoff is the
//!   delay of weir's naks);
//! - [`AppConsumer::next_batch`]: what is ready now, else a long poll for a
//!   first event, then at most `linger` (from that event's publish time) for
//!   the rest of a batch: only what can start is fetched;
//! - [`Inbound`]: one delivered event with ack / nak(delay) / term;
//! - publishing events (with `Nats-Msg-Id`) and dead letters, each awaited
//!   until JetStream acknowledges it.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, kv, stream};
use async_nats::{ConnectOptions, HeaderMap};
use bytes::Bytes;
use futures::StreamExt as _;

use crate::config::Delivery;
use crate::subjects::{self, Subjects};

/// Client ping interval: 5 s (async-nats defaults to 60 s); two missed pongs
/// mark the connection dead.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);

/// Timeout of one connection attempt: 5 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Client-side buffer of a subscription, in messages: 8,192. weir's
/// subscriptions carry pull replies bounded by `max_batch`, so this never
/// fills (async-nats drops past its default of 65,536).
pub const SUBSCRIPTION_CAPACITY: usize = 8_192;

/// Long poll for the first event of a batch: 5 s, with a heartbeat every
/// [`PULL_HEARTBEAT`] so a lost server is noticed.
pub const LONG_POLL: Duration = Duration::from_secs(5);

/// Shortest linger worth a waiting pull: 1 ms (below it, take what is ready).
pub const MIN_LINGER_PULL: Duration = Duration::from_millis(1);

/// Part of `linger` kept for the pull's own cost: 2 ms. The server answers an
/// expired pull about a millisecond late and the reply takes a round trip;
/// without this margin an event would wait for batch-mates a little longer
/// than `linger` (measured with `benches/e2e.rs`).
pub const LINGER_MARGIN: Duration = Duration::from_millis(2);

/// Idle heartbeat of a pull request: 1 s.
pub const PULL_HEARTBEAT: Duration = Duration::from_secs(1);

/// While NATS is unreachable at start, a warning every 10 s.
pub const CONNECT_WAIT_LOG: Duration = Duration::from_secs(10);

/// Default cap on the events stream: 1 GiB. A full stream refuses new
/// events (discard policy `new`): the publisher gets an error, nothing
/// stored is dropped to make room.
pub const DEFAULT_STREAM_MAX_BYTES: i64 = 1 << 30;

/// Bucket of effect idempotency records: `WEIR_EFFECTS` (a JetStream
/// key-value bucket, so records survive a host restart).
pub const EFFECT_RECORDS_BUCKET: &str = "WEIR_EFFECTS";

/// How long an effect record is kept: 24 h, far beyond any redelivery
/// (`max_deliver` × the longest backoff). An event redelivered later than
/// that would run its effects again.
pub const EFFECT_RECORD_TTL: Duration = Duration::from_secs(24 * 3600);

/// Cap on the effect records bucket: 256 MiB (about 2 M records). When full,
/// recording fails and is logged; the effect has run and its events are acked.
pub const EFFECT_RECORDS_MAX_BYTES: i64 = 256 << 20;

/// Default age limit of events in the stream: 7 days (a host down longer
/// misses events; `weir` reports the gap via consumer lag).
pub const DEFAULT_STREAM_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Window in which JetStream drops a repeated `Nats-Msg-Id`: 2 minutes.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Default name of the dead-letter stream.
pub const DEFAULT_DEAD_STREAM: &str = "WEIR_DEAD";

/// Header carrying the publisher's event id.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// Dead-letter headers.
pub const DEAD_REASON_HEADER: &str = "Weir-Dead-Reason";
/// Original subject of a dead letter.
pub const DEAD_SUBJECT_HEADER: &str = "Weir-Original-Subject";
/// Deliveries before the event was dead-lettered.
pub const DEAD_ATTEMPTS_HEADER: &str = "Weir-Attempts";
/// Original event id of a dead letter.
pub const DEAD_ID_HEADER: &str = "Weir-Original-Id";

/// Errors at the NATS edge, by phase.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Connecting failed.
    #[error("failed to connect to NATS at {url}: {message}")]
    Connect {
        /// The server URL.
        url: String,
        /// What the client said.
        message: String,
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
    #[error("JetStream {operation} failed: {message}")]
    JetStream {
        /// What was attempted.
        operation: &'static str,
        /// What the server or client said.
        message: String,
    },
    /// A subject could not be formed.
    #[error(transparent)]
    Subject(#[from] subjects::SubjectError),
}

fn js_err(operation: &'static str) -> impl FnOnce(String) -> TransportError {
    move |message| TransportError::JetStream { operation, message }
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
    /// Counts (re)connections: a pull waiting when it changes was lost with
    /// the old connection and is abandoned at once.
    connections: tokio::sync::watch::Receiver<u64>,
}

/// Caps of the events stream when weir creates it (an existing stream keeps
/// its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Most bytes stored; default [`DEFAULT_STREAM_MAX_BYTES`].
    pub max_bytes: i64,
    /// Most events stored; default `-1` (no count cap).
    pub max_msgs: i64,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_STREAM_MAX_BYTES,
            max_msgs: -1,
        }
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
            .map_err(|e| TransportError::Connect {
                url: url.to_owned(),
                message: e.to_string(),
            })?;
        let js = jetstream::new(client.clone());
        Ok(Self {
            client,
            js,
            subjects,
            stream: stream.to_owned(),
            dead_stream: DEFAULT_DEAD_STREAM.to_owned(),
            limits: StreamLimits::default(),
            connections,
        })
    }

    /// Wait until the client is connected, logging every
    /// [`CONNECT_WAIT_LOG`] while it is not (the client keeps retrying on its
    /// own: a host started while NATS is down starts serving once it is up,
    /// with no manual action).
    pub async fn wait_connected(&self) {
        let started = std::time::Instant::now();
        let mut next_log = Duration::ZERO;
        while self.client.connection_state() != async_nats::connection::State::Connected {
            let waited = started.elapsed();
            if waited >= next_log {
                tracing::warn!(waited_s = waited.as_secs(), "waiting for NATS");
                next_log += CONNECT_WAIT_LOG;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Use `limits` when creating the events stream.
    #[must_use]
    pub fn with_stream_limits(mut self, limits: StreamLimits) -> Self {
        self.limits = limits;
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
                .map_err(|e| js_err("effect records bucket")(e.to_string()))?,
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
            (self.stream.clone(), self.subjects.all_events()),
            (self.dead_stream.clone(), self.subjects.all_dead_letters()),
        ];
        for (name, subject) in streams {
            match self.js.get_stream(&name).await {
                Ok(mut existing) => {
                    let info = existing
                        .info()
                        .await
                        .map_err(|e| js_err("stream info")(e.to_string()))?;
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
                        max_bytes: self.limits.max_bytes,
                        max_messages: self.limits.max_msgs,
                        max_age: DEFAULT_STREAM_MAX_AGE,
                        duplicate_window: DUPLICATE_WINDOW,
                        discard: stream::DiscardPolicy::New,
                        ..Default::default()
                    };
                    self.js
                        .create_stream(config)
                        .await
                        .map_err(|e| js_err("stream create")(e.to_string()))?;
                    tracing::info!(stream = %name, "stream created");
                }
            }
        }
        Ok(())
    }

    /// Create or update the durable pull consumer of `app` on `node`,
    /// filtered to `event_names`.
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`] (e.g. the server refuses the config).
    pub async fn consumer(
        &self,
        node: u32,
        app: &str,
        event_names: &[&str],
        delivery: &Delivery,
    ) -> Result<AppConsumer, TransportError> {
        let filter_subjects = event_names
            .iter()
            .map(|n| self.subjects.event_filter(n))
            .collect::<Result<Vec<_>, _>>()?;
        let name = subjects::consumer_name(node, app);
        let config = jetstream::consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subjects,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_millis(delivery.ack_wait_ms),
            max_deliver: i64::from(delivery.max_deliver),
            max_ack_pending: i64::from(delivery.max_ack_pending),
            // No consumer `backoff`: JetStream would use it in place of
            // `ack_wait` for unacknowledged deliveries, redelivering any batch
            // slower than its first step. weir applies `backoff_ms` itself,
            // as the delay of the nak of a failed batch.
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        };
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| js_err("stream lookup")(e.to_string()))?;
        let consumer: PullConsumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| js_err("consumer create")(e.to_string()))?;
        Ok(AppConsumer {
            consumer,
            name,
            connections: self.connections.clone(),
        })
    }

    /// Publish event `name` from `source` with `payload` and id `msg_id`;
    /// returns the stream sequence once JetStream has stored it.
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
    ) -> Result<u64, TransportError> {
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
    ) -> Result<u64, TransportError> {
        let ack = self
            .js
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| js_err(operation)(e.to_string()))?
            .await
            .map_err(|e| js_err(operation)(format!("not acknowledged: {e}")))?;
        Ok(ack.sequence)
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
        self.client
            .drain()
            .await
            .map_err(|e| js_err("drain")(e.to_string()))
    }

    /// Flush pending publishes and acks.
    ///
    /// # Errors
    ///
    /// If the connection is gone.
    pub async fn flush(&self) -> Result<(), TransportError> {
        self.client
            .flush()
            .await
            .map_err(|e| js_err("flush")(e.to_string()))
    }
}

/// One app's durable pull consumer.
#[derive(Debug)]
pub struct AppConsumer {
    consumer: PullConsumer,
    name: String,
    connections: tokio::sync::watch::Receiver<u64>,
}

impl AppConsumer {
    /// The durable name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Events not yet delivered to this consumer (its lag).
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`].
    pub async fn pending(&mut self) -> Result<u64, TransportError> {
        let info = self
            .consumer
            .info()
            .await
            .map_err(|e| js_err("consumer info")(e.to_string()))?;
        Ok(info.num_pending)
    }

    /// Fetch at most `max` events:
    ///
    /// 1. take whatever is ready, without waiting (a backlog costs one round
    ///    trip per batch);
    /// 2. if nothing was ready, wait up to `long_poll` for a first event;
    /// 3. if the batch is not full, wait for more only until the first event
    ///    is `linger` old (counted from its publish time), so an event waits
    ///    for batch-mates at most `linger` in all.
    ///
    /// Only what was asked for is delivered: no pull request is left
    /// outstanding. Returns an empty batch if nothing arrived.
    ///
    /// Cancel safety: not cancel safe; events delivered to a cancelled call
    /// are redelivered after the ack wait.
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`] if the pull fails.
    pub async fn next_batch(
        &self,
        max: usize,
        linger: Duration,
        long_poll: Duration,
    ) -> Result<Vec<Inbound>, TransportError> {
        let mut out = Vec::with_capacity(max.min(1024));
        self.ready(max, &mut out).await?;
        if out.is_empty() {
            self.pull(1, long_poll, &mut out).await?;
        }
        if out.is_empty() || out.len() >= max {
            return Ok(out);
        }
        let left = max - out.len();
        match linger.checked_sub(out[0].age() + LINGER_MARGIN) {
            Some(wait) if wait >= MIN_LINGER_PULL => self.pull(left, wait, &mut out).await?,
            _ => self.ready(left, &mut out).await?,
        }
        Ok(out)
    }

    /// Up to `max` events that are ready now (a no-wait pull).
    async fn ready(&self, max: usize, out: &mut Vec<Inbound>) -> Result<(), TransportError> {
        let messages = self
            .consumer
            .fetch()
            .max_messages(max)
            .messages()
            .await
            .map_err(|e| js_err("fetch")(e.to_string()))?;
        drain(messages, "fetch", out).await
    }

    async fn pull(
        &self,
        max: usize,
        expires: Duration,
        out: &mut Vec<Inbound>,
    ) -> Result<(), TransportError> {
        let mut connections = self.connections.clone();
        connections.mark_unchanged();
        let mut request = self.consumer.batch().max_messages(max).expires(expires);
        if expires > PULL_HEARTBEAT * 2 {
            request = request.heartbeat(PULL_HEARTBEAT);
        }
        let messages = request
            .messages()
            .await
            .map_err(|e| js_err("pull")(e.to_string()))?;
        // A reconnection means the server may have lost this pull request
        // (e.g. it was killed): stop waiting and pull again at once, keeping
        // what arrived (unacked events are redelivered if need be).
        tokio::select! {
            result = drain(messages, "pull", out) => result,
            _ = connections.changed() => Ok(()),
        }
    }
}

/// Collect every message of one pull request into `out`.
async fn drain<S, E>(
    mut messages: S,
    operation: &'static str,
    out: &mut Vec<Inbound>,
) -> Result<(), TransportError>
where
    S: futures::Stream<Item = Result<jetstream::Message, E>> + Unpin,
    E: std::fmt::Display,
{
    while let Some(message) = messages.next().await {
        match message {
            Ok(msg) => out.push(Inbound::new(msg)),
            Err(e) => return Err(js_err(operation)(e.to_string())),
        }
    }
    Ok(())
}

/// One delivered event.
#[derive(Debug)]
pub struct Inbound {
    msg: jetstream::Message,
    /// The subject it was published on.
    pub subject: String,
    /// `Nats-Msg-Id`, else `"<stream>:<sequence>"`.
    pub id: String,
    /// The payload as published.
    pub payload: Bytes,
    /// Delivery attempt, 1-based.
    pub attempt: u32,
    /// Stream sequence.
    pub sequence: u64,
    /// Publish time, ms since the Unix epoch.
    pub published_ms: u64,
    /// Publish time, ns since the Unix epoch (for latency).
    published_ns: i128,
}

impl Inbound {
    fn new(msg: jetstream::Message) -> Self {
        let (attempt, sequence, published_ns, stream) = match msg.info() {
            Ok(info) => (
                u32::try_from(info.delivered).unwrap_or(u32::MAX),
                info.stream_sequence,
                info.published.unix_timestamp_nanos(),
                info.stream.to_owned(),
            ),
            Err(_) => (1, 0, 0, String::new()),
        };
        let published_ms = u64::try_from(published_ns / 1_000_000).unwrap_or(0);
        let id = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(MSG_ID_HEADER))
            .map(|v| v.as_str().to_owned())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| format!("{stream}:{sequence}"));
        Self {
            subject: msg.subject.to_string(),
            payload: msg.payload.clone(),
            msg,
            id,
            attempt: attempt.max(1),
            sequence,
            published_ms,
            published_ns,
        }
    }

    /// Time since the stream stored this event (zero if unknown or in the
    /// future).
    pub fn age(&self) -> Duration {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        Duration::from_nanos(u64::try_from(now - self.published_ns).unwrap_or(0))
    }

    /// Acknowledge: done.
    ///
    /// # Errors
    ///
    /// If the ack could not be sent (the event will be redelivered).
    pub async fn ack(&self) -> Result<(), TransportError> {
        self.msg
            .ack()
            .await
            .map_err(|e| js_err("ack")(e.to_string()))
    }

    /// Negative ack: redeliver after `delay`.
    ///
    /// # Errors
    ///
    /// If the nak could not be sent (redelivered after the ack wait).
    pub async fn nak(&self, delay: Duration) -> Result<(), TransportError> {
        self.msg
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| js_err("nak")(e.to_string()))
    }

    /// Terminate: never redeliver (after dead-lettering it).
    ///
    /// # Errors
    ///
    /// If the term could not be sent.
    pub async fn term(&self) -> Result<(), TransportError> {
        self.msg
            .ack_with(AckKind::Term)
            .await
            .map_err(|e| js_err("term")(e.to_string()))
    }
}

/// Effect idempotency records of one node: keys `n<node>.<app>.<digest>` in
/// the [`EFFECT_RECORDS_BUCKET`] bucket, where the digest is the SHA-256 of
/// (app, event id, effect) in hex, first 32 characters.
#[derive(Clone)]
pub struct EffectRecords {
    store: kv::Store,
    prefix: String,
}

impl std::fmt::Debug for EffectRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EffectRecords")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl EffectRecords {
    fn key(&self, app: &str, digest: &str) -> String {
        format!("{}.{app}.{digest}", self.prefix)
    }

    /// Whether the record `digest` of `app` exists.
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`] if the bucket cannot be read.
    pub async fn contains(&self, app: &str, digest: &str) -> Result<bool, TransportError> {
        self.store
            .get(self.key(app, digest))
            .await
            .map(|v| v.is_some())
            .map_err(|e| js_err("effect record get")(e.to_string()))
    }

    /// Store the records `digests` of `app`, concurrently, each acknowledged
    /// by JetStream.
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`] for the first record not stored.
    pub async fn insert(&self, app: &str, digests: &[String]) -> Result<(), TransportError> {
        let puts = digests
            .iter()
            .map(|d| self.store.put(self.key(app, d), Bytes::from_static(b"1")));
        for result in futures::future::join_all(puts).await {
            result.map_err(|e| js_err("effect record put")(e.to_string()))?;
        }
        Ok(())
    }
}
