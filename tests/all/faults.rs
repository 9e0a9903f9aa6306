//! Fault tests with a real nats-server: slow handlers around their deadline,
//! a poison event among healthy ones, a full stream, forged sources and
//! effects published under another app's name.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use weir_host::nats::NatsServer;
use weir_host::nats::TransportExt as _;
use weir_host::stats::AppStatsSnapshot;
use weir_host::{Daemon, Limits};
use weir_test_support::config::{AppBuilder, ConfigBuilder};

use crate::common::{deploy, directive, heavy};
use crate::nats::{app, dead_letters, publisher, rt, server};

/// Node 1 on `server`, HTTP off, with `apps`.
fn host(server: &NatsServer, apps: impl IntoIterator<Item = AppBuilder>) -> ConfigBuilder {
    apps.into_iter()
        .fold(ConfigBuilder::new(1, &server.url()), ConfigBuilder::app)
}

/// App `name` running `component` on events named `event`.
fn app_on(name: &str, component: &str, event: &str) -> AppBuilder {
    AppBuilder::new(name, component).events(&[event])
}

fn stats(host: &Daemon, name: &str) -> AppStatsSnapshot {
    app(&host.stats(), name).clone()
}

#[test]
fn slow_handler_under_its_deadline_is_never_redelivered_and_over_it_is_dead_lettered() {
    let _heavy = heavy();
    // Calibrate the spin: iterations per ms of this machine, in a sandbox.
    // The sandbox is demoted to SCHED_IDLE after 20 ms, so beside CPU-bound
    // tests it may get no CPU for seconds (a 20M-iteration probe with a
    // 10 s deadline timed out beside the Python scaffold test): a short
    // probe under a long deadline. A starved probe only underestimates the
    // speed, which makes the slow handler below faster, not slower.
    let probe = deploy(
        "spin-calibrate",
        weir_test_artifacts::INFINITE_LOOP,
        Limits {
            fuel: u64::MAX / 2,
            deadline_ms: 120_000,
            ..Limits::default()
        },
    );
    let n = 5_000_000u64;
    let start = Instant::now();
    probe
        .invoke_blocking(&directive(&format!("spin:{n}")))
        .result
        .unwrap();
    let per_ms = n as f64 / start.elapsed().as_secs_f64() / 1e3;
    // Under the deadline: a tenth of it at this machine's full speed. The
    // handler is demoted to SCHED_IDLE after 20 ms, so any normal-priority
    // work beside it takes its CPU: nextest runs this test alone
    // (.config/nextest.toml; beside the conformance suite's componentize
    // builds it passed its deadline in CI), and 10x headroom covers the
    // host's own threads and whatever else the machine runs.
    let deadline_ms = 10_000u64;
    let slow = (per_ms * deadline_ms as f64 * 0.1) as u64;
    let (server, _dir) = server();
    let apps = [
        app_on("slow", weir_test_artifacts::INFINITE_LOOP, "slow")
            .limits(|l| {
                l.deadline_ms = deadline_ms;
                l.fuel = u64::MAX / 4;
                l.max_batch = 1;
            })
            .delivery(|d| {
                d.max_deliver = 3;
                d.backoff_ms = vec![50];
                d.ack_wait_ms = 2 * deadline_ms + 5_000;
            }),
        // Far over its deadline: stopped each time, retried, dead-lettered
        // after exactly max_deliver attempts.
        app_on("forever", weir_test_artifacts::INFINITE_LOOP, "forever")
            .limits(|l| {
                l.deadline_ms = 500;
                l.fuel = u64::MAX / 4;
                l.max_batch = 1;
            })
            .delivery(|d| {
                d.max_deliver = 3;
                d.backoff_ms = vec![50];
                d.ack_wait_ms = 5_000;
            }),
    ];
    rt().block_on(async {
        let host = Daemon::start(host(&server, apps).valid().plan().expect("valid config"))
            .await
            .unwrap();
        let p = publisher(&server).await;
        for i in 0..4 {
            let payload = Bytes::from(format!("spin:{slow}"));
            p.publish_event("slow", "cluster", payload, &format!("slow-{i}"))
                .await
                .unwrap();
        }
        assert_eventually!(Duration::from_secs(60), "4 slow events done", {
            stats(&host, "slow").outcomes["done"] == 4
        });
        let s = stats(&host, "slow");
        assert_eq!(s.received, 4, "no redelivery under the deadline: {s:?}");
        assert!(s.traps.is_empty(), "{s:?}");
        p.publish_event("forever", "cluster", Bytes::from_static(b"spin"), "forever")
            .await
            .unwrap();
        assert_eventually!(
            Duration::from_secs(90),
            "spinning event dead-lettered",
            stats(&host, "forever").dead_letters == 1
        );
        let s = stats(&host, "forever");
        assert_eq!(s.traps.get("timeout"), Some(&3), "{s:?}");
        let dead = dead_letters(&server, "forever").await;
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].attempts, "3", "{dead:?}");
        assert_eq!(dead[0].id, "forever");
        assert!(dead[0].reason.contains("deadline"), "{dead:?}");
        host.shutdown().await.unwrap();
    });
}

#[test]
fn poison_event_is_dead_lettered_after_exactly_max_deliver_while_others_flow() {
    let _heavy = heavy();
    let (server, _dir) = server();
    let apps = [
        app_on("trap", weir_test_artifacts::TRAP, "work").delivery(|d| {
            d.max_deliver = 4;
            d.backoff_ms = vec![200];
            d.ack_wait_ms = 5000;
        }),
    ];
    rt().block_on(async {
        let host = Daemon::start(host(&server, apps).valid().plan().expect("valid config"))
            .await
            .unwrap();
        let p = publisher(&server).await;
        p.publish_event("work", "cluster", Bytes::from_static(b"panic"), "poison")
            .await
            .unwrap();
        for i in 0..200 {
            p.publish_event(
                "work",
                "cluster",
                Bytes::from_static(b"fine"),
                &format!("f{i}"),
            )
            .await
            .unwrap();
        }
        assert_eventually!(Duration::from_secs(30), "poison dead-lettered", {
            stats(&host, "trap").dead_letters == 1
        });
        let s = stats(&host, "trap");
        assert_eq!(s.outcomes["done"], 200, "healthy events all done: {s:?}");
        let dead = dead_letters(&server, "trap").await;
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].id, "poison");
        assert_eq!(dead[0].attempts, "4", "{dead:?}");
        assert!(
            dead[0].reason.starts_with("failed after 4 deliveries"),
            "{dead:?}"
        );
        host.shutdown().await.unwrap();
    });
}

#[test]
fn full_stream_refuses_publishes_and_loses_nothing_acknowledged() {
    let _heavy = heavy();
    let (server, dir) = server();
    let marker = dir.path().join("handled.log");
    let config = crate::common::marker_config(&server.url(), &marker, 40)
        .nats(|n| n.stream_max_msgs = 25)
        .valid();
    rt().block_on(async {
        let host = Daemon::start(config.plan().expect("valid config"))
            .await
            .unwrap();
        let p = publisher(&server).await;
        let mut acknowledged = Vec::new();
        let mut refused = Vec::new();
        for i in 0..40 {
            let payload = Bytes::from(format!("restart:u{i}"));
            match p
                .publish_event("test", "cluster", payload, &format!("e{i}"))
                .await
            {
                Ok(_) => acknowledged.push(format!("u{i}")),
                Err(e) => refused.push(e.to_string()),
            }
        }
        assert_eq!(acknowledged.len(), 25, "{refused:?}");
        assert_eq!(refused.len(), 15);
        assert!(
            refused.iter().all(|e| e.contains("maximum messages")),
            "{refused:?}"
        );
        let expected: std::collections::BTreeSet<String> = acknowledged.into_iter().collect();
        assert_eventually!(
            Duration::from_secs(30),
            "every acknowledged event handled",
            crate::common::marker_units(&marker) == expected
        );
        host.shutdown().await.unwrap();
    });
}

#[test]
fn published_effects_carry_the_apps_own_source_and_forgeries_are_skipped() {
    let _heavy = heavy();
    let (server, _dir) = server();
    // `echo` may publish `user-domain-changed`: it goes out as module/echo,
    // which the mail app does not trust for that name.
    let apps = [
        app_on("echo", weir_test_artifacts::ECHO, "test").publish(&["user-domain-changed"]),
        AppBuilder::ns8_mail("mail1", weir_test_artifacts::MAIL, "dom01.example.org"),
    ];
    rt().block_on(async {
        let host = Daemon::start(host(&server, apps).valid().plan().expect("valid config"))
            .await
            .unwrap();
        let client = async_nats::connect(server.url()).await.unwrap();
        let mut sub = client
            .subscribe("weir.events.user-domain-changed.>")
            .await
            .unwrap();
        let p = publisher(&server).await;
        p.publish_event(
            "test",
            "cluster",
            Bytes::from_static(
                br#"publish:user-domain-changed {"domains": ["dom01.example.org"]}"#,
            ),
            "forge-1",
        )
        .await
        .unwrap();
        // An ungranted name (and one that would inject subject tokens) is
        // refused, never published.
        p.publish_event(
            "test",
            "cluster",
            Bytes::from_static(b"publish:user-domain-changed.cluster"),
            "forge-2",
        )
        .await
        .unwrap();
        let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            msg.subject.as_str(),
            "weir.events.user-domain-changed.module.echo"
        );
        assert_eventually!(Duration::from_secs(20), "forgery skipped and counted", {
            let m = stats(&host, "mail1");
            m.skipped_source == 1 && stats(&host, "echo").effects_refused == 1
        });
        let m = stats(&host, "mail1");
        assert_eq!((m.invoked_events, m.skipped), (0, 1), "{m:?}");
        host.shutdown().await.unwrap();
    });
}

#[test]
fn oversized_event_id_is_dead_lettered_with_the_reason() {
    let _heavy = heavy();
    let (server, _dir) = server();
    let apps = [app_on("echo", weir_test_artifacts::ECHO, "test")];
    rt().block_on(async {
        let host = Daemon::start(host(&server, apps).valid().plan().expect("valid config"))
            .await
            .unwrap();
        let p = publisher(&server).await;
        let long_id = "x".repeat(weir_host::envelope::MAX_EVENT_ID_BYTES + 1);
        p.publish_event("test", "cluster", Bytes::from_static(b"hi"), &long_id)
            .await
            .unwrap();
        p.publish_event("test", "cluster", Bytes::from_static(b"hi"), "short")
            .await
            .unwrap();
        assert_eventually!(
            Duration::from_secs(20),
            "long id dead-lettered, short done",
            {
                let s = stats(&host, "echo");
                s.dead_letters == 1 && s.outcomes["done"] == 1
            }
        );
        let dead = dead_letters(&server, "echo").await;
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(
            dead[0].reason,
            "event id of 257 bytes exceeds the cap of 256 bytes"
        );
        host.shutdown().await.unwrap();
    });
}

/// Deliveries used up by something other than the handler (here another
/// client of the same durable consumer that nak's without handling, as a
/// killed host or a lost ack would) are counted by weir: at the default
/// `max_deliver` the event is dead-lettered with the reason, never left in
/// the stream without a decision (JetStream, counting itself, would have
/// stopped delivering it after its 5th delivery).
#[test]
fn deliveries_used_up_elsewhere_end_in_a_dead_letter_with_the_reason() {
    let _heavy = heavy();
    let (server, _dir) = server();
    let apps = [app_on("echo", weir_test_artifacts::ECHO, "test")];
    let config = host(&server, apps).valid();
    let delivery = config.apps[0].delivery.clone();
    assert_eq!(delivery.max_deliver, 5, "the default");
    rt().block_on(async {
        let p = publisher(&server).await;
        // The host's consumer, created first (it starts at `new`); five
        // deliveries that never reach the handler.
        let mut thief = p
            .consumer(
                &weir_host::nats::subjects::consumer_name(1, "echo"),
                &["test"],
                &delivery,
                &weir_host::nats::KnownConsumers::default(),
            )
            .await
            .unwrap();
        p.publish_event("test", "cluster", Bytes::from_static(b"hello"), "stolen")
            .await
            .unwrap();
        for attempt in 1..=5 {
            let batch = thief.next_batch(1, Duration::ZERO, false).await.unwrap();
            assert_eq!(batch[0].attempt, attempt);
            batch[0].nak(Duration::ZERO).await.unwrap();
        }
        drop(thief);
        let host = Daemon::start(config.plan().expect("valid config"))
            .await
            .unwrap();
        assert_eventually!(Duration::from_secs(30), "dead-lettered", {
            stats(&host, "echo").dead_letters == 1
        });
        let s = stats(&host, "echo");
        assert_eq!(s.dead_letters_out_of_deliveries, 1, "{s:?}");
        assert_eq!(s.invoked_events, 0, "never handed to the handler: {s:?}");
        assert_eq!(s.redeliveries_unrequested, 1, "{s:?}");
        assert_eq!(
            s.redelivered, 1,
            "the one delivery it saw was the 6th: {s:?}"
        );
        let dead = dead_letters(&server, "echo").await;
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(
            (dead[0].id.as_str(), dead[0].attempts.as_str()),
            ("stolen", "6")
        );
        assert!(
            dead[0]
                .reason
                .starts_with("delivered 6 times, more than max_deliver = 5"),
            "{dead:?}"
        );
        host.shutdown().await.unwrap();
    });
}

/// A full dead-letter stream (its own caps, discard `new`) refuses a dead
/// letter: the event is not terminated but stays in the events stream,
/// retried with backoff and counted, and is dead-lettered once there is
/// room. Nothing is lost.
#[test]
fn a_full_dead_letter_stream_loses_nothing() {
    let _heavy = heavy();
    let (server, _dir) = server();
    let apps = [
        app_on("echo", weir_test_artifacts::ECHO, "test").delivery(|d| d.backoff_ms = vec![100])
    ];
    let config = host(&server, apps).nats(|n| n.dead_max_msgs = 1).valid();
    rt().block_on(async {
        let host = Daemon::start(config.plan().expect("valid config"))
            .await
            .unwrap();
        let p = publisher(&server).await;
        for id in ["r1", "r2"] {
            p.publish_event("test", "cluster", Bytes::from_static(b"reject:no"), id)
                .await
                .unwrap();
        }
        assert_eventually!(Duration::from_secs(30), "one stored, one refused", {
            let s = stats(&host, "echo");
            s.dead_letters == 1 && s.dead_letter_failures >= 1
        });
        // Make room: the refused one is dead-lettered on a later delivery.
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut dead_stream = js.get_stream("WEIR_DEAD").await.unwrap();
        let first = dead_letters(&server, "echo").await;
        assert_eq!(first.len(), 1);
        dead_stream.purge().await.unwrap();
        assert_eventually!(Duration::from_secs(30), "the second stored", {
            stats(&host, "echo").dead_letters == 2
        });
        let second = dead_letters(&server, "echo").await;
        let ids: std::collections::BTreeSet<&str> =
            first.iter().chain(&second).map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["r1", "r2"].into_iter().collect());
        let info = dead_stream.info().await.unwrap();
        assert_eq!(info.config.max_messages, 1);
        assert_eq!(
            info.config.discard,
            async_nats::jetstream::stream::DiscardPolicy::New
        );
        host.shutdown().await.unwrap();
    });
}
