//! One app's durable pull consumer: created by [`super::TransportExt::consumer`],
//! read by [`AppConsumer::next_batch`], each event an [`Inbound`] settled
//! with ack / nak(delay) / term.

use std::time::Duration;

use async_nats::jetstream::consumer::{PullConsumer, pull};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures::FutureExt as _;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use super::cursor::{Cursor, HOLD_CHECK};
use super::unreadable::{self, DECIDED_MEMORY, MsgGetReply, SCAN_MAX_MESSAGES};
use super::{
    LINGER_IDLE_GAP, LINGER_MARGIN, LONG_POLL, MIN_LINGER_PULL, MSG_ID_HEADER, PULL_HEARTBEAT,
    PULL_REPLY_MARGIN, RECOVERY_HEARTBEAT, RELEASE_TIMEOUT, Transport, TransportError, js_err,
};
use weir_edge::nats::CONSUMER_FAILOVER_AFTER;
use weir_edge::nats::subjects::{CONSUMER_GENERATIONS, consumer_generation};

/// Shortest time between two scans for unreadable deliveries of one
/// consumer ([`unreadable`]): 1 s, so a flapping connection does not turn
/// into a stream of API requests.
pub const SCAN_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Longest wait for the answer to deleting a consumer whose server is down,
/// on failover: 5 s. The delete is applied by the cluster's metadata
/// leader, and its answer may never come; creating the consumer again
/// before the delete is applied times out (seen on nats-server 2.12.8 after
/// a 2 s wait).
pub const FAILOVER_DELETE_TIMEOUT: Duration = Duration::from_secs(5);

/// Wait before another failover attempt after one failed (no metadata
/// quorum, the create's answer lost): 2 s.
pub const FAILOVER_RETRY: Duration = Duration::from_secs(2);

/// Pause between attempts to delete a consumer left behind by a failover
/// (its server is down: the delete is applied by the metadata leader, but
/// its answer comes from the consumer's server; asked again until one
/// answers, "not found" included): 10 s.
pub const STALE_DELETE_RETRY: Duration = Duration::from_secs(10);

/// Default most deliveries of one event before it is dead-lettered: 5.
/// weir counts them itself (JetStream's own limit is off), so an event is
/// dead-lettered with the reason even when earlier deliveries were lost to a
/// kill or a lost ack.
pub const DEFAULT_MAX_DELIVER: u32 = 5;

/// Failed batches in a row after which an app is quarantined (its consumer
/// stops pulling, see [`crate::pipeline`]): 5, as in the issue that asked
/// for it; a burst failing on every delivery is paused at its fifth
/// delivery, the one [`DEFAULT_MAX_DELIVER`] would have dead-lettered.
pub const DEFAULT_QUARANTINE_AFTER: u32 = 5;

/// Default time JetStream waits for an ack before redelivering: 30,000 ms.
/// It must exceed two batch deadlines (an event delivered ahead of its batch
/// waits for the batch before it, then runs in its own), checked at start.
pub const DEFAULT_ACK_WAIT_MS: u64 = 30_000;

/// Default most unacknowledged events per app consumer: 256 (four default
/// batches): enough to keep a batch ready while one runs, small enough that a
/// stuck app holds little.
pub const DEFAULT_MAX_ACK_PENDING: u32 = 256;

/// Default redelivery backoff after a failed batch, in ms: 1 s, 5 s, 30 s
/// (the last repeats).
pub const DEFAULT_BACKOFF_MS: [u64; 3] = [1_000, 5_000, 30_000];

/// Where an app's consumer starts when it is created for the first time
/// (`[app.delivery] start`): `"new"` (default: only events stored from
/// now on), `"all"` (everything the stream holds, up to its age limit of 7
/// days by default) or a duration such as `"24h"`, `"30m"`, `"7d"` (events
/// stored that long ago or later; [`humantime`] syntax).
///
/// A consumer that exists already resumes from its own cursor whatever
/// `start` says: a host that was down, or restarted, gets every event it
/// missed (replay after downtime is the point of a durable consumer).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
pub enum Start {
    /// Events stored after the consumer is created.
    #[default]
    New,
    /// Every event the stream holds.
    All,
    /// Events stored at most this long before the consumer is created.
    Ago(Duration),
}

impl TryFrom<String> for Start {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "new" => Ok(Self::New),
            "all" => Ok(Self::All),
            other => humantime::parse_duration(other).map(Self::Ago).map_err(|e| {
                format!("start = {other:?}: expected \"new\", \"all\" or a duration like \"24h\" ({e})")
            }),
        }
    }
}

impl From<Start> for String {
    fn from(start: Start) -> Self {
        match start {
            Start::New => "new".to_owned(),
            Start::All => "all".to_owned(),
            Start::Ago(d) => humantime::format_duration(d).to_string(),
        }
    }
}

impl Start {
    /// The JetStream deliver policy for a consumer created now.
    fn deliver_policy(self) -> jetstream::consumer::DeliverPolicy {
        use jetstream::consumer::DeliverPolicy;
        match self {
            Self::New => DeliverPolicy::New,
            Self::All => DeliverPolicy::All,
            Self::Ago(d) => DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::now_utc() - d,
            },
        }
    }
}

/// `[app.delivery]`: the app's consumer settings.
///
/// `max_deliver` is enforced by weir, not by JetStream: an event is handed
/// to the handler at most `max_deliver` times; after a failure on its last
/// delivery, or when it comes back past it (earlier deliveries consumed by a
/// kill or a lost ack), it is dead-lettered with the reason and the count.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    /// Deliveries before dead-lettering. Default [`DEFAULT_MAX_DELIVER`].
    pub max_deliver: u32,
    /// Ack wait in ms. Default [`DEFAULT_ACK_WAIT_MS`].
    pub ack_wait_ms: u64,
    /// Unacknowledged events at most. Default [`DEFAULT_MAX_ACK_PENDING`].
    pub max_ack_pending: u32,
    /// Delay before a failed batch's events are redelivered, by attempt, in
    /// ms (the last step repeats); weir naks with it. Default
    /// [`DEFAULT_BACKOFF_MS`].
    pub backoff_ms: Vec<u64>,
    /// Where the consumer starts when it is created for the first time.
    /// Default [`Start::New`]; an existing consumer resumes from its cursor.
    pub start: Start,
    /// Failed batches in a row (traps, timeouts, caps, effect failures)
    /// after which the app is quarantined; 0 never quarantines. Default
    /// [`DEFAULT_QUARANTINE_AFTER`].
    pub quarantine_after: u32,
    /// Replicas of the consumer, 0 for the stream's: not a key of
    /// `[app.delivery]`, the plan sets it from `[nats] consumer_replicas`
    /// and the app's scope.
    #[serde(skip)]
    #[schemars(skip)]
    pub replicas: usize,
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            max_deliver: DEFAULT_MAX_DELIVER,
            ack_wait_ms: DEFAULT_ACK_WAIT_MS,
            max_ack_pending: DEFAULT_MAX_ACK_PENDING,
            backoff_ms: DEFAULT_BACKOFF_MS.to_vec(),
            start: Start::New,
            quarantine_after: DEFAULT_QUARANTINE_AFTER,
            replicas: 0,
        }
    }
}

impl Delivery {
    /// Every problem with these settings for an app whose batches have
    /// `deadline_ms` and at most `max_batch` events (empty if valid),
    /// unprefixed: zero counts, an ack wait not above two deadlines (an event
    /// fetched during a batch waits for it, then runs in its own), fewer
    /// pending acks than a batch.
    pub fn problems(&self, deadline_ms: u64, max_batch: usize) -> Vec<String> {
        let mut p = Vec::new();
        if self.max_deliver == 0 {
            p.push("delivery.max_deliver must be greater than 0".to_owned());
        }
        if self.max_ack_pending == 0 {
            p.push("delivery.max_ack_pending must be greater than 0".to_owned());
        }
        if self.ack_wait_ms <= deadline_ms.saturating_mul(2) {
            p.push(format!(
                "delivery.ack_wait_ms = {} must exceed twice limits.deadline_ms = {deadline_ms} (an event fetched during a batch waits for it, then runs in its own) or slow batches are redelivered",
                self.ack_wait_ms
            ));
        }
        if (self.max_ack_pending as usize) < max_batch {
            p.push(format!(
                "delivery.max_ack_pending = {} is below limits.max_batch = {max_batch}: batches could never fill",
                self.max_ack_pending
            ));
        }
        p
    }
}

/// Create or update the durable pull consumer `durable` (an app's name
/// in its scope: [`super::subjects::Scope::consumer_name`]), filtered to
/// `event_names`. A new consumer starts at
/// `delivery.start`; an existing one keeps its start (JetStream cannot
/// change it) and resumes from its cursor.
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
pub(crate) async fn create(
    transport: &Transport,
    durable: &str,
    event_names: &[&str],
    delivery: &Delivery,
    known: &KnownConsumers,
) -> Result<AppConsumer, TransportError> {
    let filter_subjects = event_names
        .iter()
        .map(|n| transport.subjects().event_filter(n))
        .collect::<Result<Vec<_>, _>>()?;
    let name = durable.to_owned();
    let config = jetstream::consumer::pull::Config {
        durable_name: Some(name.clone()),
        filter_subjects: filter_subjects.clone(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_millis(delivery.ack_wait_ms),
        max_deliver: -1,
        max_ack_pending: i64::from(delivery.max_ack_pending),
        num_replicas: delivery.replicas,
        // No consumer `backoff`: JetStream would use it in place of
        // `ack_wait` for unacknowledged deliveries, redelivering any batch
        // slower than its first step. weir applies `backoff_ms` itself,
        // as the delay of the nak of a failed batch.
        ..Default::default()
    };
    // A handle without STREAM.INFO (a request to the stream's leader per
    // app, 1,000 per host at start): the stream exists (the transport made
    // or checked it), and a consumer request names it anyway.
    let stream = transport
        .jetstream()
        .get_stream_no_info(transport.stream())
        .await
        .map_err(|e| js_err("stream lookup")(e))?;
    // On a replicated stream the consumer may have been made again under
    // another name by a failover: the newest that answers is the one.
    let generations = if transport.replicas() > 1 {
        CONSUMER_GENERATIONS
    } else {
        1
    };
    let found = find_generations(&stream, durable, generations, known).await?;
    let one_replica = delivery.replicas == 1 && transport.replicas() > 1;
    let unread = matches!(found.current, Current::Unanswered(_));
    let (name, deliver_policy) = match found.current {
        Current::Answered(name, existing) => (name, existing.config.deliver_policy),
        Current::Unanswered(name) => (name, delivery.start.deliver_policy()),
        Current::None => (name, delivery.start.deliver_policy()),
    };
    let config = jetstream::consumer::pull::Config {
        durable_name: Some(name.clone()),
        deliver_policy,
        ..config
    };
    let consumer: PullConsumer = if unread {
        // Its server is down: pull from it all the same (the app waits for
        // it, the others start); what it settled is read when it answers
        // again (a failover needs that).
        tracing::warn!(consumer = %name, "the server holding this consumer does not answer; the app waits for it");
        unanswered(transport.jetstream(), transport.stream(), &name, &config)?
    } else {
        stream
            .create_consumer(config.clone())
            .await
            .map_err(|e| js_err("consumer create")(e))?
    };
    let cursor = (one_replica && !unread).then(|| cursor_of(consumer.cached_info()));
    let mut consumer = AppConsumer {
        last_delivery: cursor
            .as_ref()
            .map(|_| consumer.cached_info().delivered.consumer_sequence)
            .filter(|&d| d > 0),
        config,
        cursor,
        cursor_unread: one_replica && unread,
        consumer,
        leaderless_since: None,
        failovers: 0,
        last_hold_check: None,
        failover_pending: None,
        reset: false,
        base: durable.to_owned(),
        stale: StaleConsumers::default(),
        name,
        stream: transport.stream().to_owned(),
        filter_subjects,
        client: transport.client().clone(),
        js: transport.jetstream().clone(),
        subscription: None,
        connections: transport.connections(),
        partial: Vec::new(),
        lag: 0,
        last_published_ns: None,
        recovering: false,
        // A delivery lost before this process started leaves no gap to
        // see: look once.
        scan_due: true,
        last_scan: None,
        decided: std::collections::VecDeque::new(),
    };
    for old in found.stale {
        consumer.stale.add(&consumer.js, &consumer.stream, old);
    }
    Ok(consumer)
}

/// The names of the stream's consumers as listed once
/// (`$JS.API.CONSUMER.NAMES`, one request per 1,024 names, answered from
/// the cluster's metadata: consumers on a server that is down are listed),
/// so that setting up many apps looks up only the names that exist: a
/// host opening 1,000 apps on a replicated stream asked 3,000
/// `CONSUMER.INFO`s of the metadata leader (3 generations each) where a
/// first start needs none. [`KnownConsumers::default`] knows nothing: every
/// name is looked up (a reload, a retried set-up, a failed listing).
#[derive(Debug, Clone, Default)]
pub struct KnownConsumers(Option<std::sync::Arc<std::collections::HashSet<String>>>);

impl KnownConsumers {
    /// List the consumers of `transport`'s stream.
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`] if a page is refused or not answered.
    pub async fn list(transport: &Transport) -> Result<Self, TransportError> {
        let stream = transport
            .jetstream()
            .get_stream_no_info(transport.stream())
            .await
            .map_err(|e| js_err("stream lookup")(e))?;
        let mut names = stream.consumer_names();
        let mut known = std::collections::HashSet::new();
        while let Some(name) = names.next().await {
            known.insert(name.map_err(|e| js_err("consumer names")(e))?);
        }
        Ok(Self(Some(std::sync::Arc::new(known))))
    }

    /// Whether consumer `name` may exist: listed, or nothing is known.
    pub fn may_exist(&self, name: &str) -> bool {
        self.0.as_ref().is_none_or(|known| known.contains(name))
    }
}

/// What [`find_generations`] found of one consumer's names.
struct Found {
    current: Current,
    /// The other names that exist: left behind by a failover, to delete.
    stale: Vec<String>,
}

/// The consumer name in use.
enum Current {
    /// The newest (by creation time) that answers.
    Answered(String, Box<jetstream::consumer::Info>),
    /// None answers; this one exists and its server is down.
    Unanswered(String),
    /// None exists: make the base name.
    None,
}

/// Look up each of the first `generations` names of `base`
/// ([`consumer_generation`]) at once: the newest that answers is in use,
/// the other existing ones are stale. When none answers but one exists on
/// a server that is down, that one is in use (a host starting while its
/// consumer's server is down).
///
/// # Errors
///
/// [`TransportError::JetStream`] when JetStream refuses a lookup, or no
/// name could be looked up at all (no metadata leader: retried by the
/// caller).
async fn find_generations<I>(
    stream: &jetstream::stream::Stream<I>,
    base: &str,
    generations: u32,
    known: &KnownConsumers,
) -> Result<Found, TransportError> {
    let names: Vec<String> = (0..generations)
        .map(|g| consumer_generation(base, g))
        .filter(|name| known.may_exist(name))
        .collect();
    if names.is_empty() {
        return Ok(Found {
            current: Current::None,
            stale: Vec::new(),
        });
    }
    let looked_up = names.len();
    let infos = futures::future::join_all(names.iter().map(|n| stream.consumer_info(n))).await;
    let mut answered = Vec::new();
    let mut unanswered = Vec::new();
    let mut last_error = None;
    for (name, info) in names.into_iter().zip(infos) {
        match info {
            Ok(info) => answered.push((name, info)),
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {}
            Err(e) if generations > 1 && unanswered_error(&e.kind()) => {
                last_error = Some(e.to_string());
                unanswered.push(name);
            }
            Err(e) => return Err(js_err("consumer info")(e)),
        }
    }
    if unanswered.len() == looked_up {
        return Err(js_err("consumer info")(
            last_error.unwrap_or_else(|| "no answer".to_owned()),
        ));
    }
    answered.sort_by_key(|(_, info)| std::cmp::Reverse(info.created));
    let mut stale: Vec<String> = unanswered.clone();
    let current = if answered.is_empty() {
        match stale.pop() {
            Some(name) => Current::Unanswered(name),
            None => Current::None,
        }
    } else {
        let (name, info) = answered.remove(0);
        stale.extend(answered.into_iter().map(|(n, _)| n));
        Current::Answered(name, Box::new(info))
    };
    Ok(Found { current, stale })
}

/// Whether a lookup failed because no server answers for the consumer.
fn unanswered_error(kind: &ConsumerInfoErrorKind) -> bool {
    match kind {
        ConsumerInfoErrorKind::Offline
        | ConsumerInfoErrorKind::TimedOut
        | ConsumerInfoErrorKind::NoResponders
        | ConsumerInfoErrorKind::Request => true,
        ConsumerInfoErrorKind::JetStream(e) => e.code() == 503,
        _ => false,
    }
}

/// The settled floor of a consumer as it is opened: its ack floor, held
/// there until the server's ack floor passes what was delivered before
/// (taken by a previous process and maybe not settled: JetStream delivers
/// them again, and this host never saw them).
fn cursor_of(info: &jetstream::consumer::Info) -> Cursor {
    let cursor = Cursor::new(info.ack_floor.stream_sequence);
    if info.delivered.stream_sequence > info.ack_floor.stream_sequence {
        cursor.hold(info.delivered.stream_sequence);
    }
    cursor
}

/// A handle on consumer `name`, whose server does not answer, without
/// asking the server: pulls go to its subject and meet "no responders"
/// until the server is back.
///
/// # Errors
///
/// [`TransportError::JetStream`] if the handle cannot be made.
fn unanswered(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    config: &pull::Config,
) -> Result<PullConsumer, TransportError> {
    use jetstream::consumer::IntoConsumerConfig as _;
    let consumer_config: jetstream::consumer::Config = config.clone().into_consumer_config();
    let zero = serde_json::json!({"consumer_seq": 0, "stream_seq": 0});
    let info: jetstream::consumer::Info = serde_json::from_value(serde_json::json!({
        "stream_name": stream,
        "name": name,
        "created": "1970-01-01T00:00:00Z",
        "config": consumer_config,
        "delivered": zero,
        "ack_floor": zero,
        "num_ack_pending": 0,
        "num_redelivered": 0,
        "num_waiting": 0,
        "num_pending": 0,
    }))
    .map_err(|e| js_err("consumer handle")(e))?;
    Ok(PullConsumer::new(config.clone(), info, js.clone()))
}

/// Consumers left behind by failovers, deleted in the background (their
/// servers may be down: asked again every [`STALE_DELETE_RETRY`] until
/// applied). The task ends with the [`AppConsumer`].
#[derive(Default)]
struct StaleConsumers {
    names: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    task: Option<AbortOnDrop>,
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl StaleConsumers {
    fn names(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `name` is still to be deleted.
    fn contains(&self, name: &str) -> bool {
        self.names().contains(name)
    }

    /// Delete `name` (now, and again until applied).
    fn add(&mut self, js: &jetstream::Context, stream: &str, name: String) {
        self.names().insert(name);
        if self.task.as_ref().is_some_and(|t| !t.0.is_finished()) {
            return;
        }
        let names = self.names.clone();
        let js = js.clone();
        let stream = stream.to_owned();
        self.task = Some(AbortOnDrop(tokio::spawn(async move {
            loop {
                let pending: Vec<String> = names
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .iter()
                    .cloned()
                    .collect();
                if pending.is_empty() {
                    return;
                }
                for name in pending {
                    let deleted = tokio::time::timeout(
                        FAILOVER_DELETE_TIMEOUT,
                        js.delete_consumer_from_stream(&name, &stream),
                    )
                    .await;
                    // Any answer (deleted, not found, refused) ends it.
                    let answered = matches!(&deleted, Ok(Ok(_)))
                        || matches!(&deleted, Ok(Err(e)) if matches!(e.kind(), jetstream::stream::ConsumerErrorKind::JetStream(_)));
                    if answered {
                        tracing::debug!(consumer = %name, "consumer left behind by a failover deleted");
                        names
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .remove(&name);
                    }
                }
                tokio::time::sleep(STALE_DELETE_RETRY).await;
            }
        })));
    }
}

/// Delete the durable consumer `name` (a reload removed its app and
/// `nats.delete_consumer` is set). A consumer already gone is not an
/// error.
///
/// # Errors
///
/// [`TransportError::JetStream`] if the server refuses or does not answer.
pub(crate) async fn delete(transport: &Transport, name: &str) -> Result<(), TransportError> {
    let stream = transport
        .jetstream()
        .get_stream_no_info(transport.stream())
        .await
        .map_err(|e| js_err("stream lookup")(e))?;
    match stream.delete_consumer(name).await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("not found") => Ok(()),
        Err(e) => Err(js_err("consumer delete")(e)),
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
    /// The settings it was created with (to create it again on failover).
    config: pull::Config,
    /// What this host settled, for a consumer of one replica on a
    /// replicated stream ([`cursor`]); `None` otherwise.
    cursor: Option<Cursor>,
    /// Since when every pull has met "no responders" (no server holds the
    /// consumer).
    leaderless_since: Option<tokio::time::Instant>,
    /// A one-replica consumer opened while its server was down: its ack
    /// floor is read when the server answers again (no failover before).
    cursor_unread: bool,
    /// Times the consumer was created again on a live server.
    failovers: u64,
    /// When a held floor last asked the server ([`HOLD_CHECK`]).
    last_hold_check: Option<tokio::time::Instant>,
    /// The name a failover's create was sent for when its answer did not
    /// come: it may have been applied, and is looked up before another.
    failover_pending: Option<String>,
    /// The consumer started over (its delivery sequence went back: its
    /// server lost its store and made it again from its configured start):
    /// nothing more is taken from it; it is made again from the floor.
    reset: bool,
    /// The app's consumer name in its scope ([`consumer_generation`] 0).
    base: String,
    /// Names left behind by failovers, being deleted.
    stale: StaleConsumers,
    /// The name in use: `base` or one of its generations.
    name: String,
    /// The events stream.
    stream: String,
    /// The consumer's filter subjects.
    filter_subjects: Vec<String>,
    client: async_nats::Client,
    js: jetstream::Context,
    subscription: Option<(async_nats::Subject, async_nats::Subscriber)>,
    connections: tokio::sync::watch::Receiver<u64>,
    /// Events taken for a batch not yet returned (kept here so a cancelled
    /// [`AppConsumer::next_batch`] loses nothing).
    partial: Vec<Inbound>,
    lag: u64,
    /// Publish time of the last event taken (ns since the Unix epoch), to
    /// tell a burst in progress from a lone event.
    last_published_ns: Option<i128>,
    /// Set by a reconnection or a missed heartbeat, cleared by any answer
    /// from the consumer: until then long polls ask for heartbeats every
    /// [`RECOVERY_HEARTBEAT`], so a request lost while the consumer had no
    /// leader is reissued within seconds, not after two normal heartbeats.
    recovering: bool,
    /// The consumer (delivery) sequence of the last delivery taken: a jump
    /// past it means deliveries never arrived ([`unreadable`]).
    last_delivery: Option<u64>,
    /// A delivery may have been lost: scan for unreadable ones before the
    /// next pull.
    scan_due: bool,
    /// When the last scan ran ([`SCAN_MIN_INTERVAL`] apart).
    last_scan: Option<tokio::time::Instant>,
    /// Stream sequences already handed on as unreadable (at most
    /// [`DECIDED_MEMORY`], oldest forgotten first).
    decided: std::collections::VecDeque<u64>,
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
    ///    repeated until one arrives; if the server says more are queued
    ///    behind it (its pending count), those too, without waiting;
    /// 3. with `adaptive` (the default, `[app.limits] linger_adaptive`),
    ///    lingering only when there is something to batch with (adaptive
    ///    linger, as Nagle's algorithm with a deadline): when two or more
    ///    events are in hand, or the first was published within
    ///    [`LINGER_IDLE_GAP`] of the event before it, more are taken in
    ///    windows of [`LINGER_IDLE_GAP`] until a window brings none, the
    ///    batch is full, or the first event is `linger` old (counted from its
    ///    publish time). A lone event at a low rate is handed on at once;
    ///    under load, batches form from what queues while the previous batch
    ///    runs. Without `adaptive`, a partial batch always waits until its
    ///    first event is `linger` old.
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
        adaptive: bool,
    ) -> Result<Vec<Inbound>, TransportError> {
        let max = max.max(1);
        let previous = if self.partial.is_empty() {
            self.last_published_ns
        } else {
            None
        };
        self.take_arrived(max)?;
        self.scan_if_due().await;
        if self.partial.len() < max {
            self.pull(max - self.partial.len(), Wait::No).await?;
        }
        while self.partial.is_empty() {
            self.pull(1, Wait::For(LONG_POLL)).await?;
            self.scan_if_due().await;
            if self.lag > 0 && self.partial.len() < max {
                self.pull(max - self.partial.len(), Wait::No).await?;
            }
        }
        let gap = LINGER_IDLE_GAP.as_nanos() as i128;
        let burst = !adaptive
            || self.partial.len() >= 2
            || previous.is_some_and(|p| self.partial[0].published_ns - p <= gap);
        let window = if adaptive { LINGER_IDLE_GAP } else { linger };
        while burst && self.partial.len() < max {
            let left = linger
                .checked_sub(self.partial[0].age() + LINGER_MARGIN)
                .unwrap_or_default();
            if left < MIN_LINGER_PULL {
                self.take_arrived(max)?;
                break;
            }
            let before = self.partial.len();
            self.pull(max - before, Wait::For(left.min(window))).await?;
            if !adaptive || self.partial.len() == before {
                break;
            }
        }
        Ok(std::mem::take(&mut self.partial))
    }

    /// Scan for unreadable deliveries ([`unreadable`]) if a delivery may
    /// have been lost, at least [`SCAN_MIN_INTERVAL`] after the last scan
    /// (waiting out the rest). What it finds joins the batch being formed. A
    /// scan that fails (NATS away) is tried again at the next call.
    async fn scan_if_due(&mut self) {
        if !self.scan_due {
            return;
        }
        if let Some(last) = self.last_scan {
            // Wait out the interval rather than skip: a loss seen now may
            // show no other sign until the next ack wait.
            tokio::time::sleep_until(last + SCAN_MIN_INTERVAL).await;
        }
        self.last_scan = Some(tokio::time::Instant::now());
        match self.scan().await {
            Ok(found) => {
                self.scan_due = false;
                if !found.is_empty() {
                    tracing::warn!(
                        consumer = %self.name,
                        events = found.len(),
                        "deliveries the NATS client cannot read: dead-lettering them"
                    );
                }
                for inbound in found {
                    self.decided.push_back(inbound.sequence);
                    if self.decided.len() > DECIDED_MEMORY {
                        self.decided.pop_front();
                    }
                    self.push(inbound);
                }
            }
            Err(e) => {
                tracing::debug!(consumer = %self.name, error = %e, "scan for unreadable deliveries failed; trying again later");
            }
        }
    }

    /// Read the consumer's unacknowledged range of the stream (above its
    /// ack floor, up to its last delivery) through the JSON message-get API
    /// and return, as events to dead-letter, the messages whose header block
    /// the client cannot read. At most [`SCAN_MAX_MESSAGES`] are read.
    async fn scan(&mut self) -> Result<Vec<Inbound>, TransportError> {
        let info = self
            .consumer
            .info()
            .await
            .map_err(|e| js_err("consumer info")(e))?;
        if info.num_ack_pending == 0 {
            return Ok(Vec::new());
        }
        let (floor, last) = (
            info.ack_floor.stream_sequence,
            info.delivered.stream_sequence,
        );
        let api = format!("STREAM.MSG.GET.{}", self.stream);
        let mut found = Vec::new();
        let mut read = 0;
        let filters = if self.filter_subjects.is_empty() {
            vec![">".to_owned()]
        } else {
            self.filter_subjects.clone()
        };
        for filter in filters {
            let mut seq = floor + 1;
            while seq <= last && read < SCAN_MAX_MESSAGES {
                let request = serde_json::json!({ "seq": seq, "next_by_subj": filter });
                let reply: MsgGetReply = self
                    .js
                    .request(api.clone(), &request)
                    .await
                    .map_err(|e| js_err("message get")(e))?;
                let message = match reply {
                    MsgGetReply::Found { message } => message,
                    MsgGetReply::Error { error } if error.code == 404 => break,
                    MsgGetReply::Error { error } => {
                        return Err(js_err("message get")(format!(
                            "{}: {}",
                            error.code, error.description
                        )));
                    }
                };
                read += 1;
                if message.seq > last {
                    break;
                }
                seq = message.seq + 1;
                if self.decided.contains(&message.seq)
                    || self.partial.iter().any(|m| m.sequence == message.seq)
                {
                    continue;
                }
                let (headers, payload) = message.decoded();
                if headers.is_empty() {
                    continue;
                }
                if let Some(problem) = unreadable::header_block_problem(&headers) {
                    found.push(self.unreadable_inbound(
                        message.subject,
                        message.seq,
                        payload,
                        &problem,
                        &headers,
                    ));
                }
            }
        }
        Ok(found)
    }

    /// An event for a stored message whose delivery the client cannot read:
    /// its subject and payload, no headers, and an ack subject weir writes
    /// (`$JS.ACK.<stream>.<consumer>.1.<sequence>.0.<now>.0`; a term of it
    /// reaches the message, JetStream's explicit acks key on the stream
    /// sequence alone).
    fn unreadable_inbound(
        &self,
        subject: String,
        sequence: u64,
        payload: Vec<u8>,
        problem: &str,
        headers: &[u8],
    ) -> Inbound {
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let reply = format!(
            "$JS.ACK.{}.{}.1.{sequence}.0.{now_ns}.0",
            self.stream, self.name
        );
        let payload = Bytes::from(payload);
        let message = async_nats::Message {
            subject: subject.into(),
            reply: Some(reply.into()),
            length: payload.len(),
            payload,
            headers: None,
            status: None,
            description: None,
        };
        let mut inbound = Inbound::new(jetstream::Message {
            message,
            context: self.js.clone(),
        });
        inbound.header_error = Some(format!(
            "the NATS client cannot read this event's headers ({problem}): {}",
            unreadable::quote(headers)
        ));
        inbound
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
                .map_err(|e| js_err("subscribe")(e))?;
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
        // After a failover, what the consumer it replaced still sends is
        // not this consumer's (delivered again by this one).
        let own = self.cursor.is_some().then_some(self.name.as_str());
        let Some(inbound) = Inbound::read(msg, own) else {
            return;
        };
        let delivery = inbound.consumer_sequence;
        if delivery > 0 {
            if let Some(cursor) = &self.cursor {
                if self.reset || self.last_delivery.is_some_and(|last| delivery <= last) {
                    // Delivery sequences only grow: this consumer started
                    // over. Take nothing more from it (what it delivers is
                    // delivered again by the one made from the floor).
                    if !self.reset {
                        tracing::warn!(consumer = %self.name, delivery, "the consumer started over (its server lost its store?); making it again from what this host settled");
                        self.reset = true;
                        let now = tokio::time::Instant::now();
                        self.leaderless_since =
                            Some(now.checked_sub(CONSUMER_FAILOVER_AFTER).unwrap_or(now));
                    }
                    return;
                }
                if self.last_delivery.is_some_and(|last| delivery > last + 1) {
                    // Deliveries never arrived (below this one): keep the
                    // floor below them until the server settled them.
                    cursor.hold(inbound.sequence.saturating_sub(1));
                }
            }
            if self.last_delivery.is_some_and(|last| delivery > last + 1) {
                self.scan_due = true;
            }
            self.last_delivery = Some(self.last_delivery.map_or(delivery, |l| l.max(delivery)));
        }
        self.lag = inbound.pending;
        self.last_published_ns = Some(inbound.published_ns);
        self.push(inbound);
    }

    /// Hold `inbound` for the batch being formed, known to the cursor.
    fn push(&mut self, mut inbound: Inbound) {
        if let Some(cursor) = &self.cursor {
            cursor.delivered(inbound.sequence);
            inbound.cursor = Some(cursor.clone());
        }
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
        if self
            .leaderless_since
            .is_some_and(|since| since.elapsed() >= CONSUMER_FAILOVER_AFTER)
        {
            self.failover().await;
        }
        self.check_hold().await;
        let beat = if self.recovering {
            RECOVERY_HEARTBEAT
        } else {
            PULL_HEARTBEAT
        };
        let (expires, heartbeat, give_up) = match wait {
            Wait::No => (None, Duration::ZERO, PULL_REPLY_MARGIN),
            Wait::For(d) if d > beat * 2 => (Some(d), beat, d + PULL_REPLY_MARGIN),
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
            .map_err(|e| js_err("pull")(e))?;
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
                // The server may have lost the request with the connection:
                // ask again at once, on the new one.
                _ = connections.changed() => {
                    self.recovering = true;
                    // What was on its way may never have been read.
                    self.scan_due = true;
                    break;
                }
            };
            match message {
                Err(_) => {
                    // Two heartbeats missed (the consumer's leader died with
                    // the request), or the request's time is up.
                    if !heartbeat.is_zero() {
                        self.recovering = true;
                    }
                    break;
                }
                Ok(None) => return Err(js_err("pull")("subscription closed".to_owned())),
                Ok(Some(message)) => {
                    let reply = classify(message)?;
                    // Any answer but "no responders" means the consumer is
                    // served again.
                    self.recovering = matches!(reply, PullReply::Leaderless);
                    if !self.recovering {
                        if !self.reset {
                            self.leaderless_since = None;
                        }
                        if self.cursor_unread {
                            self.read_cursor().await;
                        }
                    } else if self.cursor.is_some() && self.leaderless_since.is_none() {
                        self.leaderless_since = Some(tokio::time::Instant::now());
                    }
                    match reply {
                        PullReply::Leaderless => {
                            // Its leader died and the election takes
                            // seconds: ask again shortly.
                            tracing::debug!(consumer = %self.name, "consumer has no leader; asking again");
                            tokio::time::sleep(RECOVERY_HEARTBEAT).await;
                            break;
                        }
                        PullReply::Event(m) => {
                            got += 1;
                            self.take(jetstream::Message {
                                message: m,
                                context: self.js.clone(),
                            });
                        }
                        PullReply::Heartbeat => {}
                        PullReply::Over => break,
                    }
                }
            }
        }
        Ok(())
    }

    /// A held floor ([`Cursor::hold`]) learns the consumer's ack floor from
    /// its server, every [`HOLD_CHECK`] at most, while the server answers.
    async fn check_hold(&mut self) {
        let Some(cursor) = &self.cursor else {
            return;
        };
        if !cursor.held()
            || self.leaderless_since.is_some()
            || self
                .last_hold_check
                .is_some_and(|t| t.elapsed() < HOLD_CHECK)
        {
            return;
        }
        self.last_hold_check = Some(tokio::time::Instant::now());
        let cursor = cursor.clone();
        if let Ok(Ok(info)) = tokio::time::timeout(HOLD_CHECK, self.consumer.info()).await {
            cursor.server_floor(info.ack_floor.stream_sequence);
        }
    }

    /// The consumer was opened while its server was down and answers now:
    /// its ack floor is where this host's cursor starts.
    async fn read_cursor(&mut self) {
        if let Ok(info) = self.consumer.info().await {
            self.cursor = Some(cursor_of(info));
            self.last_delivery = Some(info.delivered.consumer_sequence).filter(|&d| d > 0);
            self.cursor_unread = false;
        }
    }

    /// Make the consumer again, under its next free name
    /// ([`consumer_generation`]), on a server that answers, from what this
    /// host settled: the server holding this one-replica consumer has not
    /// answered for [`CONSUMER_FAILOVER_AFTER`] (or the consumer started
    /// over). A new name, because the old consumer may come back with its
    /// server (a delete sent while its server is down may not be applied;
    /// seen on nats-server 2.12.8) and must not be confused with the new
    /// one; the old name is deleted in the background until that is
    /// applied. The new consumer starts after the settled floor, so nothing
    /// unsettled is skipped. A failed attempt (no metadata quorum, the
    /// answer lost) is tried again after [`FAILOVER_RETRY`], first looking
    /// up whether the lost create was applied.
    async fn failover(&mut self) {
        let Some(cursor) = &self.cursor else {
            return;
        };
        let floor = cursor.floor();
        self.leaderless_since = Some(tokio::time::Instant::now());
        let created = async {
            let stream = self
                .js
                .get_stream_no_info(&self.stream)
                .await
                .map_err(|e| js_err("stream lookup")(e))?;
            // The last attempt's create was not answered: it may have been
            // applied, on a live server (use it) or on the dead one (the
            // metadata leader counts a SIGKILLed server as active for a
            // minute or more, and places a one-replica consumer on any of
            // the stream's active servers): delete it, try another name.
            if let Some(pending) = self.failover_pending.take() {
                match tokio::time::timeout(
                    FAILOVER_DELETE_TIMEOUT,
                    stream.get_consumer::<pull::Config>(&pending),
                )
                .await
                {
                    Ok(Ok(consumer)) => return Ok(consumer),
                    _ => self.stale.add(&self.js, &self.stream, pending),
                }
            }
            let next = (0..CONSUMER_GENERATIONS)
                .map(|g| consumer_generation(&self.base, g))
                .find(|n| *n != self.name && !self.stale.contains(n))
                .ok_or_else(|| {
                    js_err("failover")("every consumer name is waiting to be deleted".to_owned())
                })?;
            self.failover_pending = Some(next.clone());
            let config = pull::Config {
                durable_name: Some(next.clone()),
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: floor + 1,
                },
                ..self.config.clone()
            };
            stream
                .create_consumer(config)
                .await
                .map_err(|e| js_err("consumer create")(e))
        }
        .await;
        let durable = created
            .as_ref()
            .ok()
            .and_then(|c: &PullConsumer| c.cached_info().config.durable_name.clone());
        match created {
            Ok(consumer) => {
                let next = consumer.cached_info().name.clone();
                let old = std::mem::replace(&mut self.name, next);
                self.config.durable_name = durable;
                self.consumer = consumer;
                self.recovering = false;
                self.reset = false;
                self.stale.add(&self.js, &self.stream, old.clone());
                tracing::warn!(
                    consumer = %self.name,
                    replaces = %old,
                    from_sequence = floor + 1,
                    "the consumer's server did not answer (or it started over): made it again on a live server"
                );
                // Requests made of the old consumer answer on a new inbox.
                self.subscription = None;
                self.failovers += 1;
                self.failover_pending = None;
                self.leaderless_since = None;
                self.last_delivery = None;
                self.scan_due = true;
            }
            Err(e) => {
                tracing::warn!(consumer = %self.name, error = %e, "failover of an unanswered consumer failed; trying again");
                self.failover_retry();
            }
        }
    }

    /// Try the failover again after [`FAILOVER_RETRY`].
    fn failover_retry(&mut self) {
        let now = tokio::time::Instant::now();
        self.leaderless_since = Some(
            now.checked_sub(CONSUMER_FAILOVER_AFTER.saturating_sub(FAILOVER_RETRY))
                .unwrap_or(now),
        );
    }

    /// Times the consumer was created again on a live server (failover of
    /// a one-replica consumer whose server stopped answering).
    pub fn failovers(&self) -> u64 {
        self.failovers
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
    /// No server answers for the consumer (503): its leader is gone and no
    /// new one is elected yet.
    Leaderless,
}

fn classify(message: async_nats::Message) -> Result<PullReply, TransportError> {
    use async_nats::StatusCode;
    // A delivery carries its ack subject; the server's own status messages
    // (heartbeats, the end of a request) carry none. A publisher can write
    // any status into an event's header line (`NATS/1.0 408`): with an ack
    // subject it is an event all the same, never taken for a control reply.
    if message
        .reply
        .as_deref()
        .is_some_and(|r| r.starts_with("$JS.ACK."))
    {
        return Ok(PullReply::Event(message));
    }
    match message.status {
        None | Some(StatusCode::OK) => Ok(PullReply::Event(message)),
        Some(StatusCode::IDLE_HEARTBEAT) => Ok(PullReply::Heartbeat),
        Some(StatusCode::NOT_FOUND | StatusCode::TIMEOUT) => Ok(PullReply::Over),
        Some(StatusCode::NO_RESPONDERS) => Ok(PullReply::Leaderless),
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
    pub(super) msg: jetstream::Message,
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
    /// Why the client could not read the delivery's header block
    /// ([`unreadable`]): such an event is dead-lettered with this reason,
    /// never handled.
    pub header_error: Option<String>,
    /// The consumer's delivery sequence (0 if unknown).
    consumer_sequence: u64,
    /// Told when this event is settled (one-replica consumers).
    cursor: Option<Cursor>,
}

impl Inbound {
    /// Wrap a delivered message, reading its JetStream metadata.
    pub fn new(msg: jetstream::Message) -> Self {
        Self::read(msg, None).expect("no consumer to compare with")
    }

    /// [`Inbound::new`], or `None` when the metadata names a consumer
    /// other than `consumer` (given): read once per event.
    fn read(msg: jetstream::Message, consumer: Option<&str>) -> Option<Self> {
        let (attempt, sequence, consumer_sequence, published_ns, stream, pending, metadata_error) =
            match msg.info() {
                Ok(info) if consumer.is_some_and(|c| info.consumer != c) => return None,
                Ok(info) => (
                    u32::try_from(info.delivered).unwrap_or(u32::MAX),
                    info.stream_sequence,
                    info.consumer_sequence,
                    info.published.unix_timestamp_nanos(),
                    info.stream.to_owned(),
                    info.pending,
                    None,
                ),
                Err(e) => (
                    0,
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
        Some(Self {
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
            header_error: None,
            consumer_sequence,
            cursor: None,
        })
    }

    /// The trace this event was published in (a valid `traceparent`
    /// header), as a link naming the event; `None` otherwise, and always
    /// when traces are not exported (no header is read then).
    pub fn trace_link(&self) -> Option<weir_edge::telemetry::Link> {
        if !weir_edge::telemetry::enabled() {
            return None;
        }
        weir_edge::telemetry::extract(self.msg.headers.as_ref())
            .map(|cx| weir_edge::telemetry::Link::event(cx, &self.id))
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
        self.msg.ack().await.map_err(|e| js_err("ack")(e))?;
        self.settled();
        Ok(())
    }

    fn settled(&self) {
        if let Some(cursor) = &self.cursor {
            cursor.settled(self.sequence);
        }
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
            .map_err(|e| js_err("nak")(e))
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
            .map_err(|e| js_err("term")(e))?;
        self.settled();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: async_nats::StatusCode, description: &str) -> async_nats::Message {
        async_nats::Message {
            subject: "_INBOX.x".into(),
            reply: None,
            payload: Bytes::new(),
            headers: None,
            status: Some(status),
            description: Some(description.to_owned()),
            length: 0,
        }
    }

    #[test]
    fn classify_tells_replies_apart() {
        use async_nats::StatusCode;
        let kind = |m| match classify(m) {
            Ok(PullReply::Event(_)) => "event",
            Ok(PullReply::Heartbeat) => "heartbeat",
            Ok(PullReply::Over) => "over",
            Ok(PullReply::Leaderless) => "leaderless",
            Err(_) => "error",
        };
        assert_eq!(kind(status(StatusCode::OK, "")), "event");
        assert_eq!(
            kind(status(StatusCode::IDLE_HEARTBEAT, "Idle Heartbeat")),
            "heartbeat"
        );
        assert_eq!(kind(status(StatusCode::NOT_FOUND, "No Messages")), "over");
        assert_eq!(kind(status(StatusCode::TIMEOUT, "Request Timeout")), "over");
        assert_eq!(
            kind(status(StatusCode::REQUEST_TERMINATED, "Leadership Change")),
            "over"
        );
        // The leader is gone and no new one is elected: asked again soon.
        assert_eq!(kind(status(StatusCode::NO_RESPONDERS, "")), "leaderless");
        assert_eq!(
            kind(status(StatusCode::REQUEST_TERMINATED, "Consumer Deleted")),
            "error"
        );
        // An event whose publisher wrote a status into its header line is
        // an event all the same: it carries its ack subject.
        for forged in [
            StatusCode::TIMEOUT,
            StatusCode::NO_RESPONDERS,
            StatusCode::IDLE_HEARTBEAT,
            StatusCode::REQUEST_TERMINATED,
        ] {
            let mut m = status(forged, "forged");
            m.reply = Some("$JS.ACK.WEIR_EVENTS.weir_1_a.1.7.7.1.0".into());
            assert_eq!(kind(m), "event", "{forged}");
        }
    }
}
