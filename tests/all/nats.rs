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

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
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
