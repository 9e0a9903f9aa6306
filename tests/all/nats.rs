//! The NATS edge against a real nats-server per test (random port, temp
//! JetStream dir, stopped on drop).

use std::time::Duration;

use bytes::Bytes;
use weir_host::config::Delivery;
use weir_host::nats_server::NatsServer;
use weir_host::subjects::Subjects;
use weir_host::transport::{Transport, TransportError};

/// A private server for one test; panics with the install hint if missing.
pub fn server() -> (NatsServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(&dir.path().join("js")).unwrap_or_else(|e| panic!("{e}"));
    (server, dir)
}

async fn transport(server: &NatsServer) -> Transport {
    let t = Transport::connect(
        &server.url(),
        "weir-test",
        Subjects::default(),
        "WEIR_EVENTS",
    )
    .await
    .unwrap();
    t.ensure_streams().await.unwrap();
    t
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

/// App `name`'s stats in a host's `stats`.
pub fn app<'a>(
    stats: &'a [weir_host::stats::AppStatsSnapshot],
    name: &str,
) -> &'a weir_host::stats::AppStatsSnapshot {
    stats.iter().find(|s| s.app == name).unwrap()
}

/// A producer connection that also creates the streams.
pub async fn publisher(server: &NatsServer) -> Transport {
    let t = Transport::connect(
        &server.url(),
        "publisher",
        Subjects::default(),
        "WEIR_EVENTS",
    )
    .await
    .unwrap();
    t.ensure_streams().await.unwrap();
    t
}

/// One stored dead letter (its `Weir-*` headers), ordered by reason.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeadLetter {
    /// `Weir-Dead-Reason`.
    pub reason: String,
    /// `Weir-Original-Id`.
    pub id: String,
    /// `Weir-Attempts`.
    pub attempts: String,
}

/// Every dead letter stored for `app` on node 1.
pub async fn dead_letters(server: &NatsServer, app: &str) -> Vec<DeadLetter> {
    use futures::StreamExt as _;
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("WEIR_DEAD").await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: format!("weir.dead.1.{app}"),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut msgs = consumer
        .fetch()
        .max_messages(100)
        .expires(Duration::from_millis(500))
        .messages()
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(Ok(m)) = msgs.next().await {
        let h = m.headers.clone().unwrap();
        let get = |k: &str| h.get(k).map(ToString::to_string).unwrap_or_default();
        out.push(DeadLetter {
            reason: get("Weir-Dead-Reason"),
            id: get("Weir-Original-Id"),
            attempts: get("Weir-Attempts"),
        });
    }
    out
}

#[test]
fn publish_fetch_ack_nak_term() {
    let _heavy = crate::common::heavy();
    let (server, _dir) = server();
    rt().block_on(async {
        let t = transport(&server).await;
        t.ensure_streams()
            .await
            .expect("ensure_streams is idempotent");
        let consumer = t
            .consumer(1, "mail1", &["user-domain-changed"], &Delivery::default())
            .await
            .unwrap();
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
            .next_batch(10, Duration::from_millis(100), Duration::from_secs(2))
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
            .next_batch(10, Duration::from_millis(100), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].id.as_str(), again[0].attempt), ("id-1", 2));
        again[0].ack().await.unwrap();
        t.flush().await.unwrap();
        let none = consumer
            .next_batch(10, Duration::from_millis(50), Duration::from_millis(300))
            .await
            .unwrap();
        assert!(none.is_empty());
    });
}

#[test]
fn duplicate_msg_ids_are_stored_once() {
    let _heavy = crate::common::heavy();
    let (server, _dir) = server();
    rt().block_on(async {
        let t = transport(&server).await;
        let a = t
            .publish_event("x", "cluster", Bytes::from_static(b"{}"), "same")
            .await
            .unwrap();
        let b = t
            .publish_event("x", "cluster", Bytes::from_static(b"{}"), "same")
            .await
            .unwrap();
        assert_eq!(a, b);
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
