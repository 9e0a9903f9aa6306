//! `weir run` end to end (as the library `Daemon`) against a real nats-server
//! per test: delivery, pre-filter, outcomes, dead letters, restarts.

use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_host::Daemon;
use weir_host::config::Config;
use weir_host::nats::NatsServer;
use weir_test_support::config::{AppBuilder, ConfigBuilder};
use weir_test_support::http_get;

use crate::nats::{app, dead_letters, publisher, rt, server};

/// Node 1 with an echo app (event `test`, any source), the NS8 mail app
/// and `extra` apps, HTTP on any loopback port.
fn config(server: &NatsServer, extra: impl IntoIterator<Item = AppBuilder>) -> Config {
    let host = ConfigBuilder::new(1, &server.url())
        .http("127.0.0.1:0".parse().unwrap())
        .app(
            AppBuilder::new("echo", weir_test_artifacts::ECHO)
                .events(&["test", "test-bad"])
                .restart(&["a.service"])
                .delivery(|d| {
                    d.max_deliver = 3;
                    d.backoff_ms = vec![50, 50];
                    d.ack_wait_ms = 5000;
                }),
        )
        .app(AppBuilder::ns8_mail(
            "mail1",
            weir_test_artifacts::MAIL,
            "dom01.example.org",
        ));
    extra.into_iter().fold(host, ConfigBuilder::app).valid()
}

#[test]
fn delivers_filters_and_settles_outcomes() {
    let _heavy = crate::common::heavy();
    let (server, _dir) = server();
    rt().block_on(async {
        let host = weir_host::http::start(config(&server, []).plan().expect("valid config"))
            .await
            .unwrap();
        let p = publisher(&server).await;
        // The legacy storm for node 4's ldapproxy: irrelevant to mail1 on node 1.
        for i in 0..25 {
            let payload = format!(
                r#"{{"node_id": 4, "domain": "dom{:02}.example.org"}}"#,
                i + 1
            );
            p.publish_event(
                "user-domain-changed",
                "module/ldapproxy4",
                Bytes::from(payload),
                &format!("storm-{i}"),
            )
            .await
            .unwrap();
        }
        // One cluster-wide announcement that is relevant.
        let announce =
            r#"{"domain":"dom01.example.org","domains":["dom01.example.org"],"node_id":3}"#;
        p.publish_event(
            "user-domain-changed",
            "module/openldap1",
            Bytes::from_static(announce.as_bytes()),
            "announce",
        )
        .await
        .unwrap();
        p.publish_event("test", "cluster", Bytes::from_static(b"hello"), "t-done")
            .await
            .unwrap();
        p.publish_event(
            "test",
            "cluster",
            Bytes::from_static(b"restart:a.service"),
            "t-effect",
        )
        .await
        .unwrap();
        p.publish_event(
            "test",
            "cluster",
            Bytes::from_static(b"restart:z.service"),
            "t-refused",
        )
        .await
        .unwrap();
        p.publish_event(
            "test",
            "cluster",
            Bytes::from_static(b"reject:no thanks"),
            "t-reject",
        )
        .await
        .unwrap();
        p.publish_event(
            "test",
            "cluster",
            Bytes::from_static(b"{\"node_id\": 1"),
            "t-malformed",
        )
        .await
        .unwrap();

        assert_eventually!(Duration::from_secs(30), "mail1 settles 26 events", {
            let s = host.stats();
            let m = app(&s, "mail1");
            m.skipped == 25 && m.outcomes["done"] == 1
        });
        assert_eventually!(Duration::from_secs(30), "echo settles 5 events", {
            let s = host.stats();
            let e = app(&s, "echo");
            e.outcomes["done"] == 3 && e.dead_letters == 2
        });
        let s = host.stats();
        let mail = app(&s, "mail1");
        assert_eq!(
            (mail.received, mail.skipped, mail.invoked_events),
            (26, 25, 1)
        );
        assert_eq!(mail.effects_executed, 2, "dovecot + postfix, once");
        // Shadow mode's view (`weir stats --shadow`): the effects by name.
        assert_eq!(
            mail.effects
                .iter()
                .map(|(k, v)| (k.as_str(), *v))
                .collect::<Vec<_>>(),
            [
                ("restart:dovecot.service", 1),
                ("restart:postfix.service", 1)
            ],
            "{:?}",
            mail.effects
        );
        let echo = app(&s, "echo");
        assert_eq!(echo.effects_executed, 1);
        assert_eq!(echo.effects_refused, 1);
        assert_eq!(echo.outcomes["reject"], 1);

        let mut dead = dead_letters(&server, "echo").await;
        dead.sort();
        assert_eq!(dead.len(), 2, "{dead:?}");
        assert!(
            dead[0].reason.contains("malformed JSON payload") && dead[0].id == "t-malformed",
            "{dead:?}"
        );
        assert_eq!(
            (dead[1].reason.as_str(), dead[1].id.as_str()),
            ("rejected by handler: no thanks", "t-reject")
        );

        // The HTTP endpoints serve the same counters.
        let addr = host.http_addr().unwrap();
        let (_, body) = http_get(addr, "/metrics").await.unwrap();
        assert!(
            body.contains("weir_events_skipped_total{node=\"1\",app=\"mail1\"} 25"),
            "{body}"
        );
        assert_eq!(
            http_get(addr, "/health").await,
            Some((200, "ok: running\n".to_owned()))
        );
        assert_eq!(
            http_get(addr, "/ready").await,
            Some((200, r#"{"ready":true,"reasons":[]}"#.to_owned()))
        );
        assert!(
            http_get(addr, "/stats")
                .await
                .unwrap()
                .1
                .contains("\"invoked_events\":1")
        );
        host.shutdown().await.unwrap();
    });
}

#[test]
fn retry_then_dead_letter_after_max_deliver() {
    let _heavy = crate::common::heavy();
    let (server, _dir) = server();
    rt().block_on(async {
        let host = weir_host::http::start(config(&server, []).plan().expect("valid config"))
            .await
            .unwrap();
        let p = publisher(&server).await;
        p.publish_event(
            "test",
            "cluster",
            Bytes::from_static(b"retry:20"),
            "always-retry",
        )
        .await
        .unwrap();
        assert_eventually!(
            Duration::from_secs(30),
            "dead-lettered after 3 deliveries",
            { app(&host.stats(), "echo").dead_letters == 1 }
        );
        let s = host.stats();
        assert_eq!(app(&s, "echo").outcomes["retry"], 3);
        // Three deliveries of one event: two redeliveries, both asked for
        // (`weir stats --shadow` counts the event once for NS8).
        assert_eq!(
            (
                app(&s, "echo").redelivered,
                app(&s, "echo").redeliveries_unrequested
            ),
            (2, 0)
        );
        let dead = dead_letters(&server, "echo").await;
        assert_eq!(
            dead[0].reason,
            "handler asked for a retry after 3 deliveries"
        );
        host.shutdown().await.unwrap();
    });
}

#[test]
fn trapping_batches_are_retried_then_dead_lettered_with_the_error() {
    let _heavy = crate::common::heavy();
    let (server, _dir) = server();
    let extra = [AppBuilder::new("trap", weir_test_artifacts::TRAP)
        .events(&["boom"])
        .delivery(|d| {
            d.max_deliver = 2;
            d.backoff_ms = vec![20];
            d.ack_wait_ms = 5000;
        })];
    rt().block_on(async {
        let host = weir_host::http::start(config(&server, extra).plan().expect("valid config"))
            .await
            .unwrap();
        let p = publisher(&server).await;
        p.publish_event("boom", "cluster", Bytes::from_static(b"panic"), "poison")
            .await
            .unwrap();
        p.publish_event("boom", "cluster", Bytes::from_static(b"fine"), "fine")
            .await
            .unwrap();
        assert_eventually!(
            Duration::from_secs(30),
            "poison dead-lettered, fine acked",
            {
                let s = host.stats();
                let t = app(&s, "trap");
                t.dead_letters == 1 && t.outcomes["done"] >= 1
            }
        );
        let dead = dead_letters(&server, "trap").await;
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].id, "poison");
        assert!(
            dead[0]
                .reason
                .starts_with("failed after 2 deliveries: trap:"),
            "{dead:?}"
        );
        // The poison event failed with its batch-mate once, then alone twice;
        // the healthy event was isolated and acked on the first delivery.
        let s = host.stats();
        let t = app(&s, "trap");
        assert_eq!(t.outcomes["done"], 1, "{t:?}");
        // 2 alone, plus 1 if the two shared a batch at first: a third
        // delivery or a re-run beyond the isolation would make it more.
        assert!((2..=3).contains(&t.traps["trap"]), "{t:?}");
        host.shutdown().await.unwrap();
    });
}

#[test]
fn a_restarted_host_resumes_from_its_cursor() {
    let _heavy = crate::common::heavy();
    let (server, _dir) = server();
    rt().block_on(async {
        let host = weir_host::http::start(config(&server, []).plan().expect("valid config"))
            .await
            .unwrap();
        let p = publisher(&server).await;
        p.publish_event("test", "cluster", Bytes::from_static(b"one"), "before")
            .await
            .unwrap();
        assert_eventually!(Duration::from_secs(30), "first event acked", {
            app(&host.stats(), "echo").outcomes["done"] == 1
        });
        host.shutdown().await.unwrap();
        // Published while the host is down.
        for i in 0..5 {
            p.publish_event(
                "test",
                "cluster",
                Bytes::from_static(b"x"),
                &format!("while-down-{i}"),
            )
            .await
            .unwrap();
        }
        let host = weir_host::http::start(config(&server, []).plan().expect("valid config"))
            .await
            .unwrap();
        assert_eventually!(
            Duration::from_secs(30),
            format!(
                "the 5 events published while down: {:?}",
                app(&host.stats(), "echo")
            ),
            app(&host.stats(), "echo").outcomes["done"] >= 5
        );
        assert_eq!(
            app(&host.stats(), "echo").received,
            5,
            "the acked event is not redelivered"
        );
        host.shutdown().await.unwrap();
    });
}

#[test]
fn cluster_wide_announcement_reaches_the_apps_of_every_node() {
    let _heavy = crate::common::heavy();
    let (server, _dir) = server();
    rt().block_on(async {
        let mut hosts = Vec::new();
        for node in 1..=3 {
            let config = ConfigBuilder::new(node, &server.url())
                .app(AppBuilder::ns8_mail(
                    &format!("mail{node}"),
                    weir_test_artifacts::MAIL,
                    "dom.test",
                ))
                .valid();
            hosts.push(
                weir_host::http::start(config.plan().expect("valid config"))
                    .await
                    .unwrap(),
            );
        }
        let p = publisher(&server).await;
        let payload = r#"{"domain":"dom.test","domains":["dom.test"],"node_id":1}"#;
        p.publish_event(
            "user-domain-changed",
            "module/openldap1",
            Bytes::from_static(payload.as_bytes()),
            "rotation",
        )
        .await
        .unwrap();
        // The same shape from node 1's ldapproxy is local to node 1 only.
        p.publish_event(
            "user-domain-changed",
            "module/ldapproxy1",
            Bytes::from_static(payload.as_bytes()),
            "remap",
        )
        .await
        .unwrap();
        for host in &hosts {
            let node = host.node();
            let name = format!("mail{node}");
            let invoked = if node == 1 { 2 } else { 1 };
            assert_eventually!(
                Duration::from_secs(30),
                format!("{name} settles both events"),
                {
                    let s = host.stats();
                    let a = app(&s, &name);
                    a.received == 2
                        && a.invoked_events + a.skipped == 2
                        && a.outcomes["done"] == invoked
                }
            );
            let s = host.stats();
            let a = app(&s, &name);
            assert_eq!(
                (a.invoked_events, a.skipped),
                (invoked, 2 - invoked),
                "{a:?}"
            );
            // dovecot + postfix once per batch that needed them (each
            // batch here does): a duplicate execution breaks the equality.
            assert!((1..=invoked).contains(&a.batches), "{a:?}");
            assert_eventually!(
                Duration::from_secs(10),
                format!(
                    "{name}: 2 effects per batch, {:?}",
                    app(&host.stats(), &name)
                ),
                {
                    let s = host.stats();
                    let a = app(&s, &name);
                    a.effects_executed == 2 * a.batches
                }
            );
        }
        for host in hosts {
            host.shutdown().await.unwrap();
        }
    });
}

#[test]
fn the_example_node_config_is_valid() {
    // The components are the ones the test build produced.
    let path = crate::common::examples_dir().join("ns8/node1.toml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.apps.len(), 2);
    assert!(
        config.nats.url.is_none(),
        "the example uses the embedded default"
    );
}

#[test]
fn the_example_cluster_config_is_valid() {
    let path = crate::common::examples_dir().join("ns8/node1-cluster.toml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.nats.servers().map(|s| s.len()), Some(3));
    assert_eq!(config.nats.replicas, 3);
    assert!(config.nats.creds_file.is_some() && config.nats.tls.is_set());
    // A creds user: `weir permissions` gives the nsc command for it.
    assert_eq!(
        weir_host::permissions::identity(&config.nats, "weir-node", "x").unwrap(),
        None
    );
}

#[test]
fn nats_server_restarted_mid_stream_loses_no_acknowledged_event() {
    let _heavy = crate::common::heavy();
    let (mut server, dir) = server();
    let marker = dir.path().join("handled.log");
    let config = crate::common::marker_config(&server.url(), &marker, 20).valid();
    let handled = || crate::common::marker_units(&marker);
    rt().block_on(async {
        let host = weir_host::http::start(config.plan().expect("valid config"))
            .await
            .unwrap();
        let p = publisher(&server).await;
        for i in 0..10 {
            let payload = Bytes::from(format!("restart:u{i}"));
            p.publish_event("test", "cluster", payload, &format!("e{i}"))
                .await
                .unwrap();
        }
        assert_eventually!(
            Duration::from_secs(30),
            "first 10 handled",
            handled().len() == 10
        );
        // Stop (SIGTERM: JetStream flushes) and start again on the same port
        // and store; both clients reconnect on their own.
        tokio::task::block_in_place(|| server.restart().unwrap());
        let mut acknowledged = 10;
        let deadline = Instant::now() + Duration::from_secs(20);
        while acknowledged < 20 {
            // A publish counts only once JetStream acknowledged it; retry
            // until the client has reconnected.
            let payload = Bytes::from(format!("restart:u{acknowledged}"));
            match p
                .publish_event("test", "cluster", payload, &format!("e{acknowledged}"))
                .await
            {
                Ok(_) => acknowledged += 1,
                Err(_) => {
                    assert!(Instant::now() < deadline, "publisher did not reconnect");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let expected: std::collections::BTreeSet<String> =
            (0..20).map(|i| format!("u{i}")).collect();
        assert_eventually!(
            Duration::from_secs(20),
            "every acknowledged event handled",
            handled() == expected
        );
        host.shutdown().await.unwrap();
    });
}

/// The broker-test shape that lost events: 1,000 apps on one host, each with
/// one rule over 3 event names, one event per (app, name), at the default
/// engine config (64 shared pool slots). Every event reaches its handler on
/// its first delivery: 3,000 invoked, 0 redeliveries weir did not ask for,
/// 0 dead letters.
#[test]
fn a_thousand_apps_receive_every_event_on_its_first_delivery() {
    let _heavy = crate::common::heavy();
    let (server, _dir) = server();
    const APPS: usize = 1_000;
    let config = (0..APPS)
        .fold(ConfigBuilder::new(1, &server.url()), |host, i| {
            let t = format!("t{i:04}");
            host.app(AppBuilder::new(&t, weir_test_artifacts::ECHO).events(&[
                &format!("{t}-a"),
                &format!("{t}-b"),
                &format!("{t}-c"),
            ]))
        })
        .valid();
    assert_eq!(config.engine, weir_host::EngineConfig::default());
    rt().block_on(async {
        let host = weir_host::http::start(config.plan().expect("valid config"))
            .await
            .unwrap();
        let p = publisher(&server).await;
        // Let every pull go idle past a heartbeat first (the old failure).
        tokio::time::sleep(weir_host::nats::PULL_HEARTBEAT + Duration::from_secs(1)).await;
        let started = Instant::now();
        let publishes = (0..APPS).flat_map(|i| {
            ["a", "b", "c"].map(|n| {
                let p = p.clone();
                async move {
                    p.publish_event(
                        &format!("t{i:04}-{n}"),
                        "cluster",
                        Bytes::from_static(b"hello"),
                        &format!("t{i:04}-{n}"),
                    )
                    .await
                }
            })
        });
        for result in futures::future::join_all(publishes).await {
            result.unwrap();
        }
        let invoked = |host: &Daemon| host.stats().iter().map(|s| s.invoked_events).sum::<u64>();
        assert_eventually!(Duration::from_secs(60), "3,000 events invoked", {
            invoked(&host) == 3 * APPS as u64
        });
        let took = started.elapsed();
        let s = host.stats();
        let sum = |f: fn(&weir_host::stats::AppStatsSnapshot) -> u64| s.iter().map(f).sum::<u64>();
        assert_eq!(sum(|a| a.received), 3_000);
        assert_eq!(sum(|a| a.redeliveries_unrequested), 0);
        assert_eq!(sum(|a| a.dead_letters), 0);
        assert_eq!(sum(|a| a.outcomes["done"]), 3_000);
        eprintln!("1,000 apps: 3,000 events invoked {took:?} after the first publish");
        host.shutdown().await.unwrap();
    });
}
