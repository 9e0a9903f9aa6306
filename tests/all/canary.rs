//! Canary rollouts against a real nats-server: three hosts run app `work`
//! (the `echo` component), node 3 runs a candidate, at default settings
//! (guard rails, window, delivery and backoff):
//!
//! - a candidate that traps on 30% of events, live: rolled back within its
//!   window, the rollback announced on
//!   `weir.admin.canary.work.rolled_back.3` and shown in `/stats` and
//!   `/metrics`; on every node every event is decided `done` exactly once
//!   (none skipped or dead-lettered, none left in a consumer);
//! - a healthy candidate (`echo-v2`) stays on trial, compared with the two
//!   reference nodes' windows;
//! - shadow mode: the trapping candidate beside the stable version, which
//!   handles everything; the candidate's failures and changed events are
//!   counted exactly.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use weir_host::Daemon;
use weir_host::canary::guard::RolledBack;
use weir_host::nats::{DEFAULT_STREAM, NatsServer, Transport};
use weir_host::stats::AppStatsSnapshot;
use weir_test_support::config::{AppBuilder, ConfigBuilder};

use crate::nats::{app, publisher, rt, server};

/// Events published in each scenario.
const EVENTS: usize = 200;
/// Of every ten events, those the `trap` candidate fails on (`poison`:
/// any batch holding one traps, and the event alone traps again; `echo`
/// acks it): 30%.
const POISON_PER_TEN: usize = 3;
/// Nodes 1 to 3; node 3 runs the candidate.
const NODES: [u32; 3] = [1, 2, 3];

fn host(server: &NatsServer, node: u32, canary: &str) -> weir_host::config::Plan {
    ConfigBuilder::new(node, &server.url())
        .app(
            AppBuilder::new("work", weir_test_artifacts::ECHO)
                .events(&["work"])
                .restart(&["u.service"])
                .canary(canary),
        )
        .valid()
        .plan()
        .expect("valid config")
}

async fn start(server: &NatsServer, canary: &str) -> Vec<Daemon> {
    let mut hosts = Vec::new();
    for node in NODES {
        hosts.push(Daemon::start(host(server, node, canary)).await.unwrap());
    }
    hosts
}

/// 30% `poison` (with `poison`), 10% `restart:u.service`, the rest
/// `fine`: the payload of event `i`.
fn mixed(poison: bool) -> impl Fn(usize) -> &'static str {
    move |i| match i % 10 {
        n if poison && n < POISON_PER_TEN => "poison",
        9 => "restart:u.service",
        _ => "fine",
    }
}

/// Publish [`EVENTS`] `work` events, event `i` with `payload(i)`.
async fn publish(p: &Transport, payload: impl Fn(usize) -> &'static str) {
    for i in 0..EVENTS {
        let payload = payload(i);
        p.publish_event("work", "cluster", Bytes::from(payload), &format!("e{i}"))
            .await
            .unwrap();
    }
}

fn work(host: &Daemon) -> AppStatsSnapshot {
    app(&host.stats(), "work").clone()
}

/// Every event decided `done` exactly once on every node: `done` equals
/// the events published, none skipped or dead-lettered, and each node's
/// consumer holds nothing pending or unacknowledged (an event done twice
/// would leave another without its ack).
async fn assert_each_event_done_once(hosts: &[Daemon], p: &Transport) {
    for host in hosts {
        assert_eventually!(
            Duration::from_secs(60),
            format!("node {} decided every event", host.node()),
            { work(host).outcomes["done"] >= EVENTS as u64 }
        );
    }
    let stream = p.jetstream().get_stream(DEFAULT_STREAM).await.unwrap();
    for host in hosts {
        let consumer = format!("weir_{}_work", host.node());
        assert_eventually!(Duration::from_secs(10), format!("{consumer} settled"), {
            let info = stream.consumer_info(&consumer).await.unwrap();
            info.num_pending == 0 && info.num_ack_pending == 0
        });
        let s = work(host);
        assert_eq!(
            (s.outcomes["done"], s.skipped, s.dead_letters),
            (EVENTS as u64, 0, 0),
            "node {}: every event done exactly once",
            host.node()
        );
    }
}

#[test]
fn a_canary_that_traps_is_rolled_back_within_its_window_and_nothing_is_lost() {
    let _heavy = crate::common::heavy();
    let (server, _dir) = server();
    let canary = format!("component = {:?}\nnodes = [3]", weir_test_artifacts::TRAP);
    rt().block_on(async {
        let p = publisher(&server).await;
        let mut announced = p
            .client()
            .subscribe("weir.admin.canary.work.rolled_back.*")
            .await
            .unwrap();
        let hosts = start(&server, &canary).await;
        assert_eventually!(
            Duration::from_secs(10),
            "node 3 runs the candidate, node 1 reports",
            {
                work(&hosts[2]).canary.map(|c| c.state) == Some("trial")
                    && work(&hosts[0]).canary.map(|c| c.state) == Some("reference")
            }
        );
        let published_ms = unix_ms();
        publish(&p, mixed(true)).await;
        let message = tokio::time::timeout(Duration::from_secs(60), announced.next())
            .await
            .expect("a rollback announced within 60 s")
            .unwrap();
        assert_eq!(
            message.subject.as_str(),
            "weir.admin.canary.work.rolled_back.3"
        );
        let event: RolledBack = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!((event.app.as_str(), event.node), ("work", 3));
        assert!(event.reason.contains("events failed"), "{}", event.reason);
        // About 30% of what the candidate decided failed (each poison
        // event, alone, on every delivery it had).
        assert!(
            event.window.failed * 10 >= event.window.events * 2,
            "{event:?}"
        );
        let window_ms = weir_host::canary::DEFAULT_WINDOW_S * 1_000;
        assert!(
            event.at_ms.saturating_sub(published_ms) < window_ms,
            "rolled back {} ms after the first publish (window {window_ms} ms)",
            event.at_ms.saturating_sub(published_ms)
        );
        assert_each_event_done_once(&hosts, &p).await;
        let node3 = work(&hosts[2]);
        let status = node3.canary.clone().unwrap();
        assert_eq!(status.state, "rolled_back");
        assert_eq!(status.reason.as_deref(), Some(event.reason.as_str()));
        assert_eq!(node3.canary_rollbacks, 1);
        assert!(node3.failed_events > 0, "the candidate failed some events");
        for host in &hosts[..2] {
            let s = work(host);
            assert_eq!((s.failed_events, s.canary_rollbacks), (0, 0));
        }
        let metrics = weir_host::stats::prometheus(3, &hosts[2].stats());
        assert!(
            metrics.contains("weir_canary_rollbacks_total{node=\"3\",app=\"work\"} 1\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("weir_canary_trial{node=\"3\",app=\"work\"} 0\n"),
            "{metrics}"
        );
        // Node 3 restarted on the same configuration: the rollback was
        // recorded, the candidate stays off.
        let mut hosts = hosts;
        hosts.pop().unwrap().shutdown().await.unwrap();
        let again = Daemon::start(host(&server, 3, &canary)).await.unwrap();
        let status = work(&again).canary.unwrap();
        assert_eq!(status.state, "rolled_back");
        assert!(
            status
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with("rolled back before")),
            "{status:?}"
        );
        hosts.push(again);
        for host in hosts {
            host.shutdown().await.unwrap();
        }
    });
}

#[test]
fn a_healthy_canary_stays_and_a_shadow_candidate_only_counts() {
    let _heavy = crate::common::heavy();
    // Live: echo-v2 decides as echo does (its restarts name other units:
    // as many effects per event).
    let (server, _dir) = server();
    let canary = format!(
        "component = {:?}\nnodes = [3]",
        weir_test_artifacts::ECHO_V2
    );
    rt().block_on(async {
        let p = publisher(&server).await;
        let hosts = start(&server, &canary).await;
        // Hostile reference reports, every 200 ms for the whole scenario:
        // bytes that are not JSON, a report of a node running another
        // stable component, and one with counts that cannot add up. None
        // is counted (a foreign or unreadable report is dropped), none
        // stops node 3.
        let forger = {
            let client = p.client().clone();
            tokio::spawn(async move {
                let subject = "weir.admin.canary.work.reference.9";
                let reports: [&[u8]; 3] = [
                    b"\xff\x00{not json",
                    br#"{"node":9,"stable":"another","window":{"events":1000,"failed":0,"rejected":0,"effects":0}}"#,
                    br#"{"node":8,"stable":"another","window":{"events":18446744073709551615,"failed":18446744073709551615,"rejected":0,"effects":18446744073709551615}}"#,
                ];
                loop {
                    for r in reports {
                        let _ = client.publish(subject, bytes::Bytes::from_static(r)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        publish(&p, mixed(false)).await;
        assert_each_event_done_once(&hosts, &p).await;
        // The rails were checked with both references and enough events.
        assert_eventually!(
            Duration::from_secs(15),
            "node 3 compared its window with both reference nodes",
            {
                work(&hosts[2]).canary.is_some_and(|c| {
                    c.reference_nodes == 2
                        && c.window.events == EVENTS as u64
                        && c.reference.is_some_and(|r| r.events == 2 * EVENTS as u64)
                })
            }
        );
        forger.abort();
        let node3 = work(&hosts[2]);
        let status = node3.canary.unwrap();
        assert_eq!((status.state, status.reason), ("trial", None));
        // Effects are counted distinct within a batch, as a handler's
        // answer holds them.
        assert!(status.window.effects > 0);
        assert_eq!(status.window.effects, node3.effects_requested);
        assert_eq!(node3.canary_rollbacks, 0);
        for host in hosts {
            host.shutdown().await.unwrap();
        }
    });
    drop(server);

    // Shadow: the trapping candidate runs beside echo on node 3.
    let (server, _dir) = crate::nats::server();
    let canary = format!(
        "component = {:?}\nnodes = [3]\nmode = \"shadow\"",
        weir_test_artifacts::TRAP
    );
    rt().block_on(async {
        let p = publisher(&server).await;
        let hosts = start(&server, &canary).await;
        assert_eq!(work(&hosts[0]).canary, None, "shadow needs no reference");
        publish(&p, mixed(true)).await;
        assert_each_event_done_once(&hosts, &p).await;
        assert_eventually!(
            Duration::from_secs(30),
            "the shadow candidate ran every batch",
            { work(&hosts[2]).shadow_events == EVENTS as u64 }
        );
        let s = work(&hosts[2]);
        let poison = (EVENTS / 10 * POISON_PER_TEN) as u64;
        assert_eq!(s.canary.as_ref().map(|c| c.state), Some("shadow"));
        assert_eq!(
            (
                s.shadow_failed_events,
                s.shadow_skipped_batches,
                s.failed_events,
                s.canary_rollbacks
            ),
            (poison, 0, 0, 0),
            "the candidate failed the poison events; the live version nothing: {s:?}"
        );
        // Changed: every event of a batch whose effects differ (`trap` asks
        // for none, `echo` restarts), and the poison events (failed vs done).
        assert!(s.shadow_changed_events >= poison, "{s:?}");
        for host in hosts {
            host.shutdown().await.unwrap();
        }
    });
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A shadow candidate slower than the live version: at most
/// [`SHADOW_QUEUE_BATCHES`] batches wait for it, the others are skipped
/// and counted, and offering never waits (ten offers return at once while
/// each candidate batch takes 300 ms).
#[test]
fn a_slow_shadow_candidate_skips_batches_instead_of_holding_the_pipeline() {
    use weir_host::canary::shadow::{SHADOW_QUEUE_BATCHES, Shadow};
    use weir_host::pipeline::Observer as _;
    const OFFERS: u64 = 10;
    let candidate = crate::common::deploy(
        "work",
        weir_test_artifacts::INFINITE_LOOP,
        weir_host::Limits {
            deadline_ms: 300,
            ..weir_host::Limits::default()
        },
    );
    rt().block_on(async {
        let stats = std::sync::Arc::new(weir_host::stats::AppStats::default());
        let (shadow, _task) = Shadow::start(candidate, stats.clone(), None);
        let events: std::sync::Arc<[weir_host::Event]> = crate::common::directive("spin").into();
        let handled = weir_host::Handled {
            outcomes: vec![weir_host::Outcome::Done],
            effects: vec![],
        };
        let started = std::time::Instant::now();
        for _ in 0..OFFERS {
            shadow.handled(&events, &handled);
        }
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "offering waited"
        );
        assert_eventually!(Duration::from_secs(10), "every offer run or skipped", {
            stats.shadow_batches.get() + stats.shadow_skipped_batches.get() == OFFERS
        });
        let skipped = stats.shadow_skipped_batches.get();
        // The task may have taken the first offer before the rest came.
        let queued = SHADOW_QUEUE_BATCHES as u64;
        assert!(
            (OFFERS - queued - 1..=OFFERS - queued).contains(&skipped),
            "{skipped} skipped"
        );
        assert_eq!(
            stats.shadow_failed_events.get(),
            OFFERS - skipped,
            "each run timed out"
        );
    });
}
