//! The event plane's JetStream state, opened on the connection it shares
//! with the bridge ([`Transport`], `weir-edge`, re-exported here with the
//! rest of `weir_edge::nats`); with `weir-edge`, the only code of weir that
//! imports `async_nats`.
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
//!   is changed);
//! - [`consumer`]: [`TransportExt::consumer`], one durable pull consumer per
//!   (node, app) with the app's event names as filter subjects, explicit ack
//!   and bounded `max_ack_pending` and `ack_wait` ([`Delivery`]), starting
//!   at [`Start`] when created;
//!   [`AppConsumer::next_batch`] pulls only what can start, cancel safe;
//!   [`Inbound`] is one delivered event with ack / nak(delay) / term;
//! - [`records`]: [`EffectRecords`], effect idempotency records in a
//!   key-value bucket;
//! - [`buckets`]: handlers' key-value buckets ([`buckets::AppBuckets`], the backend
//!   of the `weir:handler/kv` import);
//! - [`subjects`] (from `weir-edge`): every subject, stream, bucket,
//!   consumer and header name;
//! - [`unreadable`]: deliveries whose header block the client cannot read,
//!   found through the JSON message-get API and dead-lettered;
//! - [`history`]: the stream's stored events by sequence, for `weir replay`
//!   (the same API: no consumer, no header parser);
//! - [`server`] (from `weir-edge`): a private nats-server process (the
//!   embedded default, tests);
//! - publishing events (with `Nats-Msg-Id`) and dead letters, each awaited
//!   until JetStream acknowledges it.

pub mod buckets;
pub mod consumer;
pub mod cursor;
pub mod history;
pub mod records;
pub mod unreadable;

pub use weir_edge::nats::*;

pub use consumer::{AppConsumer, Delivery, Inbound, KnownConsumers, Start};
pub use records::EffectRecords;

use std::future::Future;
use std::time::Duration;

use weir_runtime::kv::KvGrant;

/// Long poll for the first event of a batch: 30 s, with a heartbeat every
/// [`PULL_HEARTBEAT`] (so a server that lost the request is noticed) and a
/// new request at once after a reconnection. With 1,000 idle apps this is
/// about 33 requests and 200 heartbeats a second in all.
pub const LONG_POLL: Duration = Duration::from_secs(30);

/// Idle heartbeat of a long poll: 5 s. Two missed heartbeats (10 s) end the
/// wait and a new request is made.
pub const PULL_HEARTBEAT: Duration = Duration::from_secs(5);

/// Idle heartbeat of a long poll made after a reconnection or a missed
/// heartbeat, until the consumer answers: 500 ms. A request sent while the
/// consumer had no leader (its server was killed; the election takes a few
/// seconds) is lost without a reply; with this heartbeat it is reissued
/// after 1 s instead of after two [`PULL_HEARTBEAT`]s (10 s).
pub const RECOVERY_HEARTBEAT: Duration = Duration::from_millis(500);

/// Shortest linger worth a waiting pull: 1 ms (below it, take what is ready).
pub const MIN_LINGER_PULL: Duration = Duration::from_millis(1);

/// A burst is over after this long without a new event: 1 ms. Lingering
/// waits for batch-mates in windows this long and stops at the first that
/// brings none (adaptive linger, [`consumer::AppConsumer::next_batch`]).
pub const LINGER_IDLE_GAP: Duration = Duration::from_millis(1);

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

/// How long an effect record is kept: 24 h, far beyond any redelivery
/// (`max_deliver` × the longest backoff). An event redelivered later than
/// that would run its effects again.
pub const EFFECT_RECORD_TTL: Duration = Duration::from_secs(24 * 3600);

/// Cap on the effect records bucket: 256 MiB (about 2 M records). When full,
/// recording fails and is logged; the effect has run and its events are acked.
pub const EFFECT_RECORDS_MAX_BYTES: i64 = 256 << 20;

/// What the event plane opens on the shared [`Transport`]: durable
/// consumers, effect records and the handlers' kv buckets, and its dead
/// letters. (The effects' own stores open themselves:
/// `effects::PendingStore::open`, `effects::LimitStore::open`.) Implemented for [`Transport`]; bring it into scope
/// (`use weir_host::nats::TransportExt as _`) to call its methods.
pub trait TransportExt {
    /// Create or update the durable pull consumer `durable` (an app's name
    /// in its scope: [`subjects::Scope::consumer_name`]), filtered to
    /// `event_names`; see [`consumer`] for the settings. Only the names
    /// `known` may hold are looked up ([`KnownConsumers::default`]: all).
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`] (e.g. the server refuses the config).
    fn consumer(
        &self,
        durable: &str,
        event_names: &[&str],
        delivery: &Delivery,
        known: &KnownConsumers,
    ) -> impl Future<Output = Result<AppConsumer, TransportError>> + Send;

    /// Delete the durable consumer `name` (a reload removed its app and
    /// `nats.delete_consumer` is set). A consumer already gone is not an
    /// error.
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`] if the server refuses or does not answer.
    fn delete_consumer(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// The buckets `grant` gives app `app`, each looked up or created (with
    /// the configured replicas, one revision per key,
    /// [`buckets::KV_BUCKET_MAX_BYTES`]).
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`] for the first bucket that can be
    /// neither found nor created.
    fn app_buckets(
        &self,
        app: &str,
        grant: &KvGrant,
    ) -> impl Future<Output = Result<buckets::AppBuckets, TransportError>> + Send;

    /// The effect idempotency records of `node`, in the bucket named after
    /// the events stream ([`subjects::effect_records_bucket`], default
    /// [`EFFECT_RECORDS_BUCKET`]; looked up, else created with the
    /// configured replicas).
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`] if the bucket can be neither found nor
    /// created.
    fn effect_records(
        &self,
        node: u32,
    ) -> impl Future<Output = Result<EffectRecords, TransportError>> + Send;

    /// Publish `inbound` as a dead letter of `app` on `node` with `reason`,
    /// awaiting JetStream's ack. Idempotent within the duplicate window.
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`]: the caller must not term the event.
    fn publish_dead_letter(
        &self,
        node: u32,
        app: &str,
        inbound: &Inbound,
        reason: &str,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;
}

impl TransportExt for Transport {
    async fn consumer(
        &self,
        durable: &str,
        event_names: &[&str],
        delivery: &Delivery,
        known: &KnownConsumers,
    ) -> Result<AppConsumer, TransportError> {
        consumer::create(self, durable, event_names, delivery, known).await
    }

    async fn delete_consumer(&self, name: &str) -> Result<(), TransportError> {
        consumer::delete(self, name).await
    }

    async fn app_buckets(
        &self,
        app: &str,
        grant: &KvGrant,
    ) -> Result<buckets::AppBuckets, TransportError> {
        buckets::open(self, app, grant).await
    }

    async fn effect_records(&self, node: u32) -> Result<EffectRecords, TransportError> {
        let store = self
            .bucket(
                &subjects::effect_records_bucket(self.stream()),
                "weir effect idempotency records",
                EFFECT_RECORD_TTL,
                EFFECT_RECORDS_MAX_BYTES,
            )
            .await?;
        Ok(EffectRecords {
            store,
            prefix: format!("n{node}"),
        })
    }

    async fn publish_dead_letter(
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
        let subject = self.subjects().dead_letter(node, app);
        self.publish_acked(
            subject,
            headers,
            inbound.payload.clone(),
            "dead-letter publish",
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_is_new_all_or_a_duration() {
        use consumer::Start;
        let parse = |s: &str| Start::try_from(s.to_owned());
        assert_eq!(Delivery::default().start, Start::New);
        assert_eq!(parse("all"), Ok(Start::All));
        assert_eq!(parse("24h"), Ok(Start::Ago(Duration::from_secs(86_400))));
        assert!(
            parse("yesterday")
                .unwrap_err()
                .contains("expected \"new\", \"all\"")
        );
        assert_eq!(String::from(Start::Ago(Duration::from_secs(90))), "1m 30s");
    }
}
