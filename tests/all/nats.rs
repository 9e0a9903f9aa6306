//! The NATS edge against a real nats-server per test (random port, temp
//! JetStream dir, stopped on drop).

use std::time::Duration;

use bytes::Bytes;
use weir_host::nats::Delivery;
use weir_host::nats::KnownConsumers;
use weir_host::nats::NatsServer;
use weir_host::nats::TransportExt as _;
use weir_host::nats::subjects::Subjects;
use weir_host::nats::{Transport, TransportError};
use weir_test_support::nats::DeadLetter;

pub use weir_test_support::nats::server;

/// A producer connection that also creates the streams.
pub async fn publisher(server: &NatsServer) -> Transport {
    weir_test_support::nats::publisher(&server.url())
        .await
        .unwrap()
}

/// A 2-worker runtime with tracing (RUST_LOG) for a server test.
pub fn rt() -> tokio::runtime::Runtime {
    crate::common::init_tracing();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// App `app`'s consumer on node 1 for event `names`, default delivery.
pub async fn app_consumer(
    t: &Transport,
    app: &str,
    names: &[&str],
) -> weir_host::nats::AppConsumer {
    t.consumer(
        &weir_host::nats::subjects::consumer_name(1, app),
        names,
        &Delivery::default(),
        &KnownConsumers::default(),
    )
    .await
    .unwrap()
}

/// App `name`'s stats in a host's `stats`.
pub fn app<'a>(
    stats: &'a [weir_host::stats::AppStatsSnapshot],
    name: &str,
) -> &'a weir_host::stats::AppStatsSnapshot {
    stats.iter().find(|s| s.app == name).unwrap()
}

/// Every dead letter stored for `app` on node 1, by original event id.
pub async fn dead_letters(server: &NatsServer, app: &str) -> Vec<DeadLetter> {
    weir_test_support::nats::dead_letters(&server.url(), app)
        .await
        .unwrap()
        .into_values()
        .collect()
}

#[test]
fn publish_fetch_ack_nak_term() {
    let _heavy = crate::common::heavy();
    let (server, _dir) = server();
    rt().block_on(async {
        let t = publisher(&server).await;
        t.ensure_streams()
            .await
            .expect("ensure_streams is idempotent");
        let mut consumer = app_consumer(&t, "mail1", &["user-domain-changed"]).await;
        for i in 0..3 {
            t.publish_event(
                "user-domain-changed",
                "module/ldapproxy4",
                Bytes::from(format!("{{\"i\": {i}}}")),
                &format!("id-{i}"),
            )
            .await
            .unwrap();
        }
        t.publish_event(
            "acl-changed",
            "cluster",
            Bytes::from_static(b"cluster/acls"),
            "acl-1",
        )
        .await
        .unwrap();
        let batch = consumer
            .next_batch(10, Duration::from_millis(100), false)
            .await
            .unwrap();
        assert_eq!(batch.len(), 3, "only the filtered event name arrives");
        assert_eq!(
            batch.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["id-0", "id-1", "id-2"]
        );
        assert!(batch.iter().all(|m| m.attempt == 1 && m.published_ms > 0));
        assert_eq!(
            t.subjects().parse_event(&batch[0].subject),
            Some(("user-domain-changed", "module/ldapproxy4".to_owned()))
        );
        batch[0].ack().await.unwrap();
        batch[1].nak(Duration::from_millis(50)).await.unwrap();
        batch[2].term().await.unwrap();
        let again = consumer
            .next_batch(10, Duration::from_millis(100), false)
            .await
            .unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].id.as_str(), again[0].attempt), ("id-1", 2));
        again[0].ack().await.unwrap();
        t.flush().await.unwrap();
        let none = tokio::time::timeout(
            Duration::from_millis(300),
            consumer.next_batch(10, Duration::ZERO, false),
        )
        .await;
        assert!(none.is_err(), "nothing left: {none:?}");
        assert_eq!(consumer.lag(), 0);
    });
}

/// The regression behind events lost at 1,000 apps: a pull that had seen an
/// idle heartbeat stopped reading its subscription and dropped what came
/// next. An event published after the consumer idled for longer than a
/// heartbeat interval arrives at once, on its first delivery.
#[test]
fn an_event_after_idle_heartbeats_arrives_on_its_first_delivery() {
    let _heavy = crate::common::heavy();
    let (server, _dir) = server();
    rt().block_on(async {
        let t = publisher(&server).await;
        let mut consumer = app_consumer(&t, "idle", &["late"]).await;
        let waiting = tokio::spawn(async move {
            let batch = consumer.next_batch(10, Duration::ZERO, false).await;
            (batch, consumer)
        });
        // Longer than a pull heartbeat interval: heartbeats have arrived.
        tokio::time::sleep(weir_host::nats::PULL_HEARTBEAT + Duration::from_secs(1)).await;
        let published = std::time::Instant::now();
        t.publish_event("late", "cluster", Bytes::from_static(b"{}"), "late-1")
            .await
            .unwrap();
        let (batch, _consumer) = tokio::time::timeout(Duration::from_secs(3), waiting)
            .await
            .expect("the event did not arrive within 3 s")
            .unwrap();
        let batch = batch.unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!((batch[0].id.as_str(), batch[0].attempt), ("late-1", 1));
        assert!(published.elapsed() < Duration::from_secs(3));
    });
}

/// Start a batch that lingers far longer than we wait, and cancel it after
/// its events were taken.
async fn take_then_cancel(consumer: &mut weir_host::nats::AppConsumer) {
    let cancelled = tokio::time::timeout(
        Duration::from_millis(300),
        consumer.next_batch(10, Duration::from_secs(60), false),
    )
    .await;
    assert!(cancelled.is_err(), "cancelled mid-batch");
}

/// `next_batch` is cancel safe: events taken before a cancellation come back
/// from the next call, still on their first delivery; `release` hands back
/// what is left so the next consumer gets it at once (not after the ack
/// wait), and JetStream's own delivery limit is off (weir counts).
#[test]
fn next_batch_is_cancel_safe_and_release_hands_events_back() {
    let _heavy = crate::common::heavy();
    let (server, _dir) = server();
    rt().block_on(async {
        let t = publisher(&server).await;
        let mut consumer = app_consumer(&t, "cancel", &["c"]).await;
        for i in 0..2 {
            t.publish_event("c", "cluster", Bytes::from_static(b"{}"), &format!("c-{i}"))
                .await
                .unwrap();
        }
        take_then_cancel(&mut consumer).await;
        let batch = consumer
            .next_batch(10, Duration::ZERO, false)
            .await
            .unwrap();
        assert_eq!(
            batch
                .iter()
                .map(|m| (m.id.as_str(), m.attempt))
                .collect::<Vec<_>>(),
            [("c-0", 1), ("c-1", 1)]
        );
        for m in &batch {
            m.ack().await.unwrap();
        }
        // Taken but not handled, then released at shutdown.
        t.publish_event("c", "cluster", Bytes::from_static(b"{}"), "c-2")
            .await
            .unwrap();
        take_then_cancel(&mut consumer).await;
        assert_eq!(consumer.release().await, 1);
        drop(consumer);
        let mut next = app_consumer(&t, "cancel", &["c"]).await;
        let back = tokio::time::timeout(
            Duration::from_secs(5),
            next.next_batch(10, Duration::ZERO, false),
        )
        .await
        .expect("a released event comes back at once, not after the 30 s ack wait")
        .unwrap();
        assert_eq!((back[0].id.as_str(), back[0].attempt), ("c-2", 2));
    });
}

#[test]
fn duplicate_msg_ids_are_stored_once() {
    let _heavy = crate::common::heavy();
    let (server, _dir) = server();
    rt().block_on(async {
        let t = publisher(&server).await;
        let a = t
            .publish_event("x", "cluster", Bytes::from_static(b"{}"), "same")
            .await
            .unwrap();
        let b = t
            .publish_event("x", "cluster", Bytes::from_static(b"{}"), "same")
            .await
            .unwrap();
        assert_eq!(a.sequence, b.sequence, "one copy stored");
        assert!(!a.duplicate && b.duplicate, "{a:?} {b:?}");
    });
}

#[test]
fn conflicting_stream_is_reported_not_changed() {
    let _heavy = crate::common::heavy();
    let (server, _dir) = server();
    rt().block_on(async {
        // Someone else's stream under weir's name, capturing other subjects.
        let other = Transport::connect(
            &server.url(),
            "other",
            Subjects::new("other").unwrap(),
            "WEIR_EVENTS",
        )
        .await
        .unwrap();
        other.ensure_streams().await.unwrap();
        let t = Transport::connect(&server.url(), "weir", Subjects::default(), "WEIR_EVENTS")
            .await
            .unwrap();
        let err = t.ensure_streams().await.unwrap_err();
        assert!(
            matches!(err, TransportError::StreamConflict { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("weir.events.>"), "{err}");
    });
}

/// A delivery whose JetStream metadata cannot be read (its reply subject is
/// not an ack subject) carries the reason, so the pipeline dead-letters it
/// instead of handling it as attempt 1 of sequence 0; ids of such events
/// never collide (the reply subject is unique per delivery).
#[test]
fn unreadable_metadata_is_reported_not_defaulted() {
    rt().block_on(async {
        // A client that never connects: only the message's context needs it.
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("nats://127.0.0.1:1")
            .await
            .unwrap();
        let message = |reply: &str, id: Option<&str>| {
            let headers = id.map(|id| {
                let mut h = async_nats::HeaderMap::new();
                h.insert("Nats-Msg-Id", id);
                h
            });
            async_nats::jetstream::Message {
                message: async_nats::Message {
                    subject: "weir.events.test.cluster".into(),
                    reply: Some(reply.into()),
                    payload: Bytes::from_static(b"{}"),
                    headers,
                    status: None,
                    description: None,
                    length: 2,
                },
                context: async_nats::jetstream::new(client.clone()),
            }
        };
        let a = weir_host::nats::Inbound::new(message("_INBOX.a", None));
        let b = weir_host::nats::Inbound::new(message("_INBOX.b", None));
        assert!(
            a.metadata_error
                .as_deref()
                .is_some_and(|e| e.contains("_INBOX.a")),
            "{a:?}"
        );
        assert_eq!((a.attempt, a.sequence), (0, 0));
        assert_eq!(a.id, "unknown:_INBOX.a");
        assert_ne!(a.id, b.id);
        let c = weir_host::nats::Inbound::new(message("_INBOX.c", Some("pub-1")));
        assert!(c.metadata_error.is_some());
        assert_eq!(c.id, "pub-1", "a publisher's id is kept");
        // A real JetStream ack subject parses.
        let ok = weir_host::nats::Inbound::new(message(
            "$JS.ACK.WEIR_EVENTS.weir_1_echo.3.17.17.1700000000000000000.0",
            None,
        ));
        assert_eq!(ok.metadata_error, None);
        assert_eq!(
            (ok.attempt, ok.sequence, ok.id.as_str()),
            (3, 17, "WEIR_EVENTS:17")
        );
    });
}

/// `start` applies to a consumer created for the first time: `new` skips
/// what the stream holds, `all` and a duration replay it; a consumer that
/// exists resumes from its cursor whatever `start` says now.
/// The host lists the stream's consumers once at start and looks up only
/// the names listed: the list is paged by the server (1,024 names a page),
/// so it must hold every consumer past the first page, and nothing else.
#[test]
fn the_consumer_listing_holds_every_consumer_past_a_page() {
    use futures::StreamExt as _;
    const CONSUMERS: usize = 1_100; // over nats-server's 1,024 a page
    let (server, _dir) = server();
    rt().block_on(async {
        let t = publisher(&server).await;
        let stream = t.jetstream().get_stream(t.stream()).await.unwrap();
        let names: Vec<String> = (0..CONSUMERS)
            .map(|i| weir_host::nats::subjects::consumer_name(1, &format!("app{i}")))
            .collect();
        let created: Vec<_> = futures::stream::iter(names.iter().map(|name| {
            stream.create_consumer(async_nats::jetstream::consumer::pull::Config {
                durable_name: Some(name.clone()),
                ..Default::default()
            })
        }))
        .buffer_unordered(32)
        .collect()
        .await;
        let refused: Vec<String> = created
            .into_iter()
            .filter_map(|r| r.err().map(|e| e.to_string()))
            .collect();
        assert!(
            refused.is_empty(),
            "{} refused: {:?}",
            refused.len(),
            refused.first()
        );
        let known = KnownConsumers::list(&t).await.unwrap();
        let missing: Vec<&String> = names.iter().filter(|n| !known.may_exist(n)).collect();
        assert!(missing.is_empty(), "not listed: {missing:?}");
        assert!(!known.may_exist(&weir_host::nats::subjects::consumer_name(1, "absent")));
        assert!(KnownConsumers::default().may_exist("anything"));
    });
}

#[test]
fn start_positions_apply_only_to_new_consumers() {
    use weir_host::nats::Start;
    let _heavy = crate::common::heavy();
    let (server, _dir) = server();
    rt().block_on(async {
        let t = publisher(&server).await;
        let publish = |id: &'static str| {
            let t = t.clone();
            async move {
                t.publish_event("s", "cluster", Bytes::from_static(b"{}"), id)
                    .await
                    .unwrap();
            }
        };
        let ids = |batch: &[weir_host::nats::Inbound]| {
            batch.iter().map(|m| m.id.clone()).collect::<Vec<_>>()
        };
        let delivery = |start| Delivery {
            start,
            ..Delivery::default()
        };
        publish("old-1").await;
        publish("old-2").await;
        let mut fresh = t
            .consumer(
                &weir_host::nats::subjects::consumer_name(1, "fresh"),
                &["s"],
                &delivery(Start::New),
                &KnownConsumers::default(),
            )
            .await
            .unwrap();
        let mut all = t
            .consumer(
                &weir_host::nats::subjects::consumer_name(1, "all"),
                &["s"],
                &delivery(Start::All),
                &KnownConsumers::default(),
            )
            .await
            .unwrap();
        let mut hour = t
            .consumer(
                &weir_host::nats::subjects::consumer_name(1, "hour"),
                &["s"],
                &delivery(Start::Ago(Duration::from_secs(3600))),
                &KnownConsumers::default(),
            )
            .await
            .unwrap();
        publish("new-1").await;
        let got = fresh.next_batch(10, Duration::ZERO, false).await.unwrap();
        assert_eq!(ids(&got), ["new-1"], "start = new skips the history");
        for m in &got {
            m.ack().await.unwrap();
        }
        for c in [&mut all, &mut hour] {
            let got = c.next_batch(10, Duration::ZERO, false).await.unwrap();
            assert_eq!(ids(&got), ["old-1", "old-2", "new-1"]);
        }
        // The same consumer again, now asking for everything: it resumes.
        // Looked up through the host's one listing of the stream's
        // consumers, as at start (a name missing from it would be made
        // anew, and JetStream refuses the changed start).
        drop(fresh);
        let known = KnownConsumers::list(&t).await.unwrap();
        let mut again = t
            .consumer(
                &weir_host::nats::subjects::consumer_name(1, "fresh"),
                &["s"],
                &delivery(Start::All),
                &known,
            )
            .await
            .unwrap();
        publish("new-2").await;
        let got = again.next_batch(10, Duration::ZERO, false).await.unwrap();
        assert_eq!(
            ids(&got),
            ["new-2"],
            "an existing consumer keeps its cursor"
        );
    });
}

/// Adaptive linger (the default): a lone event is handed on without waiting
/// for batch-mates, queued events form one batch at once; with
/// `linger_adaptive = false` a lone event waits out the linger.
#[test]
fn adaptive_linger_waits_only_when_there_is_something_to_batch_with() {
    let _heavy = crate::common::heavy();
    let (server, _dir) = server();
    rt().block_on(async {
        let t = publisher(&server).await;
        let mut consumer = app_consumer(&t, "adaptive", &["a"]).await;
        let linger = Duration::from_secs(60);
        t.publish_event("a", "cluster", Bytes::from_static(b"{}"), "a-lone")
            .await
            .unwrap();
        // A 60 s linger would hold it; adaptive hands it on.
        let lone = tokio::time::timeout(
            Duration::from_secs(10),
            consumer.next_batch(64, linger, true),
        )
        .await
        .expect("a lone event does not wait for batch-mates")
        .unwrap();
        assert_eq!(lone.len(), 1);
        lone[0].ack().await.unwrap();
        // Twenty queued before the call: one batch.
        for i in 0..20 {
            t.publish_event("a", "cluster", Bytes::from_static(b"{}"), &format!("a-{i}"))
                .await
                .unwrap();
        }
        let burst = tokio::time::timeout(
            Duration::from_secs(10),
            consumer.next_batch(64, linger, true),
        )
        .await
        .expect("a burst ends at its first quiet millisecond")
        .unwrap();
        assert_eq!(burst.len(), 20);
        for m in &burst {
            m.ack().await.unwrap();
        }
        // Fixed linger: a lone event waits until it is `linger` old.
        t.publish_event("a", "cluster", Bytes::from_static(b"{}"), "a-fixed")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let fixed = consumer
            .next_batch(64, Duration::from_millis(300), false)
            .await
            .unwrap();
        assert_eq!(fixed.len(), 1);
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );
    });
}
