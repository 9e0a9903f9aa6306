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
//! - [`AppConsumer::next_batch`]: one subscription per consumer for its
//!   whole life, pull requests for only what can start (what is ready now,
//!   else a long poll for a first event, then at most `linger`, from that
//!   event's publish time, for the rest of a batch); cancel safe, so nothing
//!   delivered to weir is ever dropped by weir itself;
//! - [`Inbound`]: one delivered event with ack / nak(delay) / term;
//! - publishing events (with `Nats-Msg-Id`) and dead letters, each awaited
//!   until JetStream acknowledges it.

use std::time::Duration;

use async_nats::jetstream::consumer::{PullConsumer, pull};
use async_nats::jetstream::{self, AckKind, kv, stream};
use async_nats::{ConnectOptions, HeaderMap};
use bytes::Bytes;
use futures::FutureExt as _;
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

/// Default age limit of events in the stream: 7 days. JetStream removes an
/// older event whether or not every consumer has handled it: a host down
/// longer than this misses events (set `nats.stream_max_age_s` to keep more).
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
    dead_limits: StreamLimits,
    /// Counts (re)connections.
    connections: tokio::sync::watch::Receiver<u64>,
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
    /// JetStream's own `max_deliver` is left unlimited: weir counts the
    /// deliveries itself (the `attempt` of each event) and dead-letters an
    /// event with the reason once it has had `delivery.max_deliver`, whatever
    /// consumed the earlier deliveries (a kill, an ack lost on reconnect, an
    /// expired ack wait). JetStream, left to count, would stop delivering such
    /// an event and it would leave the stream without a decision.
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
            max_deliver: -1,
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
            client: self.client.clone(),
            js: self.js.clone(),
            subscription: None,
            connections: self.connections.clone(),
            partial: Vec::new(),
            lag: 0,
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
///
/// weir subscribes once per consumer (an inbox under the host's prefix) and
/// sends its pull requests with that inbox as the reply subject, asking only
/// for what can start (`max_batch` minus what it holds). Whatever the server
/// delivers stays in the subscription until weir takes it: a request weir
/// stopped waiting for (its wait timed out, the connection was renewed, the
/// call was cancelled at shutdown) loses nothing, its late deliveries are
/// taken with the next batch. (async-nats's own `fetch`/`batch` subscribe
/// per request and drop what arrives after they end; in async-nats 0.51 a
/// `batch` with heartbeats also stops reading after its first heartbeat, so
/// an event delivered to a long poll that had seen one was dropped. Its
/// `Stream` keeps one subscription but delivers ahead of the batch and was
/// seen to stop requesting after start, resuming only on a missed
/// heartbeat.)
pub struct AppConsumer {
    consumer: PullConsumer,
    name: String,
    client: async_nats::Client,
    js: jetstream::Context,
    subscription: Option<(async_nats::Subject, async_nats::Subscriber)>,
    connections: tokio::sync::watch::Receiver<u64>,
    /// Events taken for a batch not yet returned (kept here so a cancelled
    /// [`AppConsumer::next_batch`] loses nothing).
    partial: Vec<Inbound>,
    lag: u64,
}

impl std::fmt::Debug for AppConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppConsumer")
            .field("name", &self.name)
            .field("partial", &self.partial.len())
            .field("lag", &self.lag)
            .finish_non_exhaustive()
    }
}

/// How a pull request waits.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// Only what is ready now.
    No,
    /// Up to this long for the events asked for.
    For(Duration),
}

impl AppConsumer {
    /// The durable name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Events not yet delivered to this consumer (its lag), as of the last
    /// delivered event (JetStream puts the count in each delivery's
    /// metadata, so reading it costs no request).
    pub fn lag(&self) -> u64 {
        self.lag
    }

    /// The next batch of at most `max` events:
    ///
    /// 1. what has already arrived, plus what is ready now (a request that
    ///    does not wait: a backlog costs one round trip per batch);
    /// 2. if nothing was, a long poll ([`LONG_POLL`]) for a first event,
    ///    repeated until one arrives;
    /// 3. if the batch is not full, more only until the first event is
    ///    `linger` old (counted from its publish time), so an event waits for
    ///    batch-mates at most `linger` in all.
    ///
    /// Only what can start is asked for, so at most `max` events are
    /// delivered and not yet handled (beyond what a request weir stopped
    /// waiting for still delivers).
    ///
    /// Cancel safety: cancel safe. Events taken before a cancellation are
    /// kept and returned by the next call (or handed back by
    /// [`AppConsumer::release`]).
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`] if a request fails or the server ends one
    /// with an error (the consumer was deleted); events already taken are
    /// kept for the next call.
    pub async fn next_batch(
        &mut self,
        max: usize,
        linger: Duration,
    ) -> Result<Vec<Inbound>, TransportError> {
        let max = max.max(1);
        self.take_arrived(max)?;
        if self.partial.len() < max {
            self.pull(max - self.partial.len(), Wait::No).await?;
        }
        while self.partial.is_empty() {
            self.pull(1, Wait::For(LONG_POLL)).await?;
        }
        if self.partial.len() < max {
            match linger.checked_sub(self.partial[0].age() + LINGER_MARGIN) {
                Some(wait) if wait >= MIN_LINGER_PULL => {
                    self.pull(max - self.partial.len(), Wait::For(wait)).await?;
                }
                _ => self.take_arrived(max)?,
            }
        }
        Ok(std::mem::take(&mut self.partial))
    }

    /// The subscription, made on first use.
    async fn subscription(
        &mut self,
    ) -> Result<&mut (async_nats::Subject, async_nats::Subscriber), TransportError> {
        if self.subscription.is_none() {
            let inbox = async_nats::Subject::from(self.client.new_inbox());
            let subscriber = self
                .client
                .subscribe(inbox.clone())
                .await
                .map_err(|e| js_err("subscribe")(e.to_string()))?;
            self.subscription = Some((inbox, subscriber));
        }
        self.subscription
            .as_mut()
            .ok_or_else(|| js_err("subscribe")("no subscription".to_owned()))
    }

    /// Take what has already arrived in the subscription, up to `max` held.
    fn take_arrived(&mut self, max: usize) -> Result<(), TransportError> {
        while self.partial.len() < max {
            let Some((_, subscriber)) = &mut self.subscription else {
                return Ok(());
            };
            match subscriber.next().now_or_never() {
                Some(Some(message)) => {
                    if let PullReply::Event(m) = classify(message)? {
                        self.take(jetstream::Message {
                            message: m,
                            context: self.js.clone(),
                        });
                    }
                }
                Some(None) => return Err(js_err("pull")("subscription closed".to_owned())),
                None => break,
            }
        }
        Ok(())
    }

    fn take(&mut self, msg: jetstream::Message) {
        let inbound = Inbound::new(msg);
        self.lag = inbound.pending;
        self.partial.push(inbound);
    }

    /// Ask for `want` events and take what the request delivers until it
    /// ends: filled, the server's closing status (no messages, expired), a
    /// reconnection, two missed heartbeats, or [`PULL_REPLY_MARGIN`] past
    /// its expiry.
    async fn pull(&mut self, want: usize, wait: Wait) -> Result<(), TransportError> {
        if want == 0 {
            return Ok(());
        }
        let (expires, heartbeat, give_up) = match wait {
            Wait::No => (None, Duration::ZERO, PULL_REPLY_MARGIN),
            Wait::For(d) if d > PULL_HEARTBEAT * 2 => {
                (Some(d), PULL_HEARTBEAT, d + PULL_REPLY_MARGIN)
            }
            Wait::For(d) => (Some(d), Duration::ZERO, d + PULL_REPLY_MARGIN),
        };
        let inbox = self.subscription().await?.0.clone();
        let mut connections = self.connections.clone();
        connections.mark_unchanged();
        let request = pull::BatchConfig {
            batch: want,
            expires,
            no_wait: expires.is_none(),
            idle_heartbeat: heartbeat,
            ..Default::default()
        };
        self.consumer
            .request_batch(request, inbox)
            .await
            .map_err(|e| js_err("pull")(e.to_string()))?;
        let give_up = tokio::time::Instant::now() + give_up;
        let mut got = 0;
        while got < want {
            // A heartbeat (or any message) is expected within two intervals.
            let next_due = if heartbeat.is_zero() {
                give_up
            } else {
                give_up.min(tokio::time::Instant::now() + heartbeat * 2)
            };
            let Some((_, subscriber)) = &mut self.subscription else {
                break;
            };
            let message = tokio::select! {
                m = tokio::time::timeout_at(next_due, subscriber.next()) => m,
                // The server may have lost the request with the connection.
                _ = connections.changed() => break,
            };
            match message {
                Err(_) => break,
                Ok(None) => return Err(js_err("pull")("subscription closed".to_owned())),
                Ok(Some(message)) => match classify(message)? {
                    PullReply::Event(m) => {
                        got += 1;
                        self.take(jetstream::Message {
                            message: m,
                            context: self.js.clone(),
                        });
                    }
                    PullReply::Heartbeat => {}
                    PullReply::Over => break,
                },
            }
        }
        Ok(())
    }

    /// Hand back every event taken but not handled (a cancelled batch) and
    /// every event already in the subscription, with a nak without delay, so
    /// another host (or this one after a restart) gets them at once instead
    /// of after the ack wait; then unsubscribe (the server drops requests
    /// whose reply subject has no interest). Bounded by [`RELEASE_TIMEOUT`];
    /// returns how many were handed back.
    pub async fn release(&mut self) -> usize {
        let mut taken = std::mem::take(&mut self.partial);
        if let Some((_, subscriber)) = &mut self.subscription {
            while let Some(Some(message)) = subscriber.next().now_or_never() {
                if let Ok(PullReply::Event(m)) = classify(message) {
                    taken.push(Inbound::new(jetstream::Message {
                        message: m,
                        context: self.js.clone(),
                    }));
                }
            }
        }
        self.subscription = None;
        let naks = futures::future::join_all(taken.iter().map(|m| m.nak(Duration::ZERO)));
        if tokio::time::timeout(RELEASE_TIMEOUT, naks).await.is_err() {
            tracing::debug!(consumer = %self.name, "handing back events timed out; they come back after the ack wait");
        }
        taken.len()
    }
}

/// What a message on a pull subscription is.
enum PullReply {
    /// An event.
    Event(async_nats::Message),
    /// The server's idle heartbeat: the request is alive.
    Heartbeat,
    /// The request is over: no messages (404), expired (408), or ended by
    /// the server for a reason that does not concern the consumer (409
    /// leadership change, max ack pending, batch completed).
    Over,
}

fn classify(message: async_nats::Message) -> Result<PullReply, TransportError> {
    use async_nats::StatusCode;
    match message.status {
        None | Some(StatusCode::OK) => Ok(PullReply::Event(message)),
        Some(StatusCode::IDLE_HEARTBEAT) => Ok(PullReply::Heartbeat),
        Some(StatusCode::NOT_FOUND | StatusCode::TIMEOUT) => Ok(PullReply::Over),
        Some(StatusCode::REQUEST_TERMINATED) => {
            let description = message.description.unwrap_or_default();
            if description.contains("Consumer Deleted") || description.contains("push based") {
                Err(js_err("pull")(description))
            } else {
                Ok(PullReply::Over)
            }
        }
        Some(status) => Err(js_err("pull")(format!(
            "{status}: {}",
            message.description.unwrap_or_default()
        ))),
    }
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
    /// Events pending for the consumer when this one was delivered.
    pub pending: u64,
    /// Why the delivery's JetStream metadata could not be read, if it could
    /// not (then `attempt`, `sequence` and the publish time are unknown, 0):
    /// such an event is dead-lettered with this reason, never handled.
    pub metadata_error: Option<String>,
}

impl Inbound {
    /// Wrap a delivered message, reading its JetStream metadata.
    pub fn new(msg: jetstream::Message) -> Self {
        let (attempt, sequence, published_ns, stream, pending, metadata_error) = match msg.info() {
            Ok(info) => (
                u32::try_from(info.delivered).unwrap_or(u32::MAX),
                info.stream_sequence,
                info.published.unix_timestamp_nanos(),
                info.stream.to_owned(),
                info.pending,
                None,
            ),
            Err(e) => (
                0,
                0,
                0,
                String::new(),
                0,
                Some(format!(
                    "JetStream metadata of the delivery cannot be read ({e}); reply subject {:?}",
                    msg.reply.as_deref().unwrap_or("")
                )),
            ),
        };
        let published_ms = u64::try_from(published_ns / 1_000_000).unwrap_or(0);
        let id = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(MSG_ID_HEADER))
            .map(|v| v.as_str().to_owned())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| format!("{stream}:{sequence}"));
        let id = match (&metadata_error, id.as_str()) {
            // No id and no sequence: name it by its reply subject, which is
            // unique per delivery, so no two such events share a key.
            (Some(_), ":0") => format!("unknown:{}", msg.reply.as_deref().unwrap_or("no-reply")),
            _ => id,
        };
        Self {
            subject: msg.subject.to_string(),
            payload: msg.payload.clone(),
            msg,
            id,
            attempt,
            sequence,
            published_ms,
            published_ns,
            pending,
            metadata_error,
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
