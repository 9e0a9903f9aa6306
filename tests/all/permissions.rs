//! weir works with exactly the least-privilege NATS permissions of
//! `weir_host::permissions::for_host`, on a nats-server configured with them,
//! and those permissions stop a host from acting as another node or app.

use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_host::Daemon;
use weir_host::config::Config;
use weir_host::nats::NatsServer;
use weir_host::nats::TransportExt as _;
use weir_host::nats::subjects::Subjects;
use weir_host::nats::{ConnectAuth, Credentials, Transport};
use weir_test_support::config::AppBuilder;

/// The marker-file host of `crate::common` as user `node1`, also granted
/// `publish = ["echoed"]` and a second unit, with two more apps: `here`,
/// whose live canary (the `trap` component) runs on node 1, and `there`,
/// whose canary runs on node 2 (node 1 reports its window).
fn host_config(url: &str, marker: &std::path::Path) -> Config {
    // The password sits in a file next to the marker, never in the config.
    let password_file = marker.with_file_name("node1.password");
    std::fs::write(&password_file, "node1-secret\n").unwrap();
    let mut config = crate::common::marker_config(url, marker, 3)
        .nats(|n| {
            n.user = Some("node1".into());
            n.password_file = Some(password_file);
        })
        .app(
            AppBuilder::new("here", weir_test_artifacts::ECHO)
                .events(&["here"])
                .canary(&format!(
                    "component = {:?}\nnodes = [1]",
                    weir_test_artifacts::TRAP
                )),
        )
        .app(
            AppBuilder::new("there", weir_test_artifacts::ECHO)
                .events(&["there"])
                .canary(&format!(
                    "component = {:?}\nnodes = [2]",
                    weir_test_artifacts::TRAP
                )),
        )
        .valid();
    config.apps[0].grants.publish = vec!["echoed".into()];
    config
}

async fn connect(url: &str, user: &str, password: &str, inbox: Option<String>) -> Transport {
    Transport::connect_with(
        &[url.to_owned()],
        user,
        Subjects::default(),
        "WEIR_EVENTS",
        ConnectAuth {
            credentials: Credentials::UserPassword {
                user: user.into(),
                password: password.into(),
            },
            inbox_prefix: inbox,
            ..ConnectAuth::default()
        },
    )
    .await
    .unwrap()
}

/// The permission violations nats-server logged ("Publish Violation -
/// ...", "Subscription Violation - ...", at `[ERR]`).
fn violations(server: &NatsServer) -> Vec<String> {
    server
        .log_tail()
        .into_iter()
        .filter(|l| l.contains(" Violation - "))
        .collect()
}

#[test]
fn host_runs_with_exactly_its_least_privilege_permissions() {
    crate::common::init_tracing();
    let _heavy = crate::common::heavy();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("effects.log");
    // The permissions come from the host's own config; the server config
    // also has an unrestricted operator user who creates the streams.
    let probe = host_config("nats://127.0.0.1:4222", &marker);
    let node1 = weir_host::permissions::for_host(&probe)
        .unwrap()
        .server_user("node1", "node1-secret");
    let server_conf = dir.path().join("server.conf");
    std::fs::write(
        &server_conf,
        format!(
            "accounts {{ WEIR {{ jetstream: enabled, users: [ {{ user: admin, password: admin-secret }}, {node1} ] }} }}\n"
        ),
    )
    .unwrap();
    let server = NatsServer::start_with_config(&dir.path().join("js"), &server_conf)
        .unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // The operator creates the streams and the buckets.
        let admin = connect(&server.url(), "admin", "admin-secret", None).await;
        admin.ensure_streams().await.unwrap();
        admin.effect_records(1).await.unwrap();
        weir_host::effects::PendingStore::open(&admin, 1)
            .await
            .unwrap();
        weir_host::effects::LimitStore::open(&admin, 1)
            .await
            .unwrap();
        let config = host_config(&server.url(), &marker);
        let host = Daemon::start(config.plan().expect("valid config"))
            .await
            .expect("host starts with its permissions");
        let client = async_nats::ConnectOptions::with_user_and_password(
            "admin".into(),
            "admin-secret".into(),
        )
        .connect(server.url())
        .await
        .unwrap();
        let mut echoed = client.subscribe("weir.events.echoed.>").await.unwrap();
        let mut canary = client.subscribe("weir.admin.canary.>").await.unwrap();
        admin
            .publish_event("test", "cluster", Bytes::from_static(b"restart:u1"), "e1")
            .await
            .unwrap();
        admin
            .publish_event(
                "test",
                "cluster",
                Bytes::from_static(b"publish:echoed hi"),
                "e2",
            )
            .await
            .unwrap();
        admin
            .publish_event("test", "cluster", Bytes::from_static(b"reject:no"), "e3")
            .await
            .unwrap();
        // Consume, ack, execute and record an effect, publish as itself,
        // dead-letter: all within the permissions.
        let msg = tokio::time::timeout(
            Duration::from_secs(20),
            futures::StreamExt::next(&mut echoed),
        )
        .await
        .expect("publish effect within 20 s")
        .unwrap();
        assert_eq!(msg.subject.as_str(), "weir.events.echoed.module.echo");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = host.stats().into_iter().find(|s| s.app == "echo").unwrap();
            if s.outcomes["done"] == 2 && s.dead_letters == 1 {
                assert_eq!(s.effects_executed, 2, "{s:?}");
                break;
            }
            assert!(Instant::now() < deadline, "{s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(crate::common::marker_units(&marker).len(), 1);
        // Everything the host did was within its permissions: the effect
        // record was stored, and the server logged no violation.
        let echo = host.stats().into_iter().find(|s| s.app == "echo").unwrap();
        assert_eq!(echo.effect_records_failed, 0, "{echo:?}");
        // Canaries: node 1 reports `there`'s window, and rolls `here`'s
        // candidate back (every event panics) and says so.
        for i in 0..weir_host::canary::DEFAULT_MIN_EVENTS {
            admin
                .publish_event(
                    "here",
                    "cluster",
                    Bytes::from_static(b"panic"),
                    &format!("h{i}"),
                )
                .await
                .unwrap();
        }
        let mut heard = std::collections::BTreeSet::new();
        let listen = async {
            while heard.len() < 2 {
                let m = futures::StreamExt::next(&mut canary).await.unwrap();
                heard.insert(m.subject.to_string());
            }
        };
        if tokio::time::timeout(Duration::from_secs(30), listen)
            .await
            .is_err()
        {
            panic!("not within 30 s: a reference report and the rollback; heard {heard:?}");
        }
        assert_eq!(
            heard.into_iter().collect::<Vec<_>>(),
            [
                "weir.admin.canary.here.rolled_back.1",
                "weir.admin.canary.there.reference.1"
            ]
        );
        assert_eq!(violations(&server), Vec::<String>::new());

        // With the same credentials, acting as another app or node fails.
        let inbox = weir_host::nats::subjects::default_inbox_prefix(1);
        let node1 = connect(&server.url(), "node1", "node1-secret", Some(inbox)).await;
        let forged = node1
            .publish_event("test", "module/other", Bytes::from_static(b"x"), "forged")
            .await;
        assert!(forged.is_err(), "publish as module/other must be refused");
        let other_consumer = node1
            .consumer(
                &weir_host::nats::subjects::consumer_name(2, "mail2"),
                &["test"],
                &weir_host::nats::Delivery::default(),
                &weir_host::nats::KnownConsumers::default(),
            )
            .await;
        assert!(other_consumer.is_err(), "node 2's consumer must be refused");
        // And the server's log shows those two refusals (the log check above
        // sees what it looks for).
        assert_eventually!(Duration::from_secs(5), "violations logged", {
            !violations(&server).is_empty()
        });
        host.shutdown().await.unwrap();
    });
}
