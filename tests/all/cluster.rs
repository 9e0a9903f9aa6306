//! weir on a real 3-server NATS cluster (routes and JetStream on each, one
//! store directory each), at default delivery settings: replicated streams
//! created by weir from `nats.urls` and `nats.replicas`, then SIGKILLs of the
//! stream leader and of the server weir is connected to, each restarted,
//! while an external publisher streams events in; and, with one-replica
//! consumers (`consumer_replicas = 1`), the SIGKILL of the server that holds the app's
//! consumer, kept down: weir makes the consumer again on a live server.
//! Judged by the ledger checker: lost 0, unexpected 0, every event handled,
//! the consumer's ack floor at the last sequence.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use weir_host::Daemon;
use weir_host::config::Plan;
use weir_host::nats::CONSUMER_FAILOVER_AFTER;
use weir_host::nats::PULL_HEARTBEAT;
use weir_host::nats::TransportExt as _;
use weir_host::nats::consumer::{
    DEFAULT_ACK_WAIT_MS, DEFAULT_MAX_ACK_PENDING, FAILOVER_DELETE_TIMEOUT, FAILOVER_RETRY,
    STALE_DELETE_RETRY,
};
use weir_host::nats::{DEFAULT_DEAD_STREAM, DEFAULT_STREAM, EFFECT_RECORDS_BUCKET, subjects};
use weir_test_support::ledger::{self, Publisher, Scratch};
use weir_test_support::nats::Cluster;

use crate::common::heavy;
use crate::nats::rt;

/// Events published in each test: 3,000 (the figure).
const EVENTS: u64 = 3_000;
/// Publish rate: 300 events/s (the torture row's).
const RATE: u32 = 300;
/// Longest wait for a consumer changed from R3 to R1 to lose its
/// followers: 10 s.
const SCALE_DOWN: Duration = Duration::from_secs(10);
/// Longest wait for the ack floor after the last publish: 30 s.
const SETTLE: Duration = Duration::from_secs(30);

/// The consumer's ack floor and pending counts, and the stream's last
/// sequence, asked through any live server (retried for 10 s: right after a
/// restart JetStream may answer "temporarily unavailable").
async fn consumer_state(urls: &[String]) -> (u64, u64, usize, u64) {
    let client = async_nats::connect(urls).await.unwrap();
    let js = jetstream::new(client);
    let mut tries = 0;
    loop {
        let state = async {
            let mut stream = js.get_stream(DEFAULT_STREAM).await.ok()?;
            let last = stream.info().await.ok()?.state.last_sequence;
            let info = weir_test_support::nats::current_consumer(
                &stream,
                &subjects::consumer_name(1, "ledger"),
            )
            .await?;
            Some((
                info.ack_floor.stream_sequence,
                info.num_pending,
                info.num_ack_pending,
                last,
            ))
        };
        match state.await {
            Some(state) => return state,
            None if tries < 50 => tries += 1,
            None => panic!("the consumer's state could not be read for 10 s"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn replicas(urls: &[String], stream: &str) -> usize {
    let client = async_nats::connect(urls).await.unwrap();
    let js = jetstream::new(client);
    let mut s = js.get_stream(stream).await.unwrap();
    s.info().await.unwrap().config.num_replicas
}

/// Kill server `victim`, measure the time until the ledger grows again,
/// restart the server after `down`; returns the resume time.
async fn kill_and_restart(
    cluster: &mut Cluster,
    victim: usize,
    ledger: &std::path::Path,
    down: Duration,
) -> Duration {
    let before = ledger::handled(ledger);
    let killed = Instant::now();
    cluster.kill(victim);
    let resumed =
        weir_test_support::eventually(Duration::from_secs(60), || ledger::handled(ledger) > before)
            .await;
    let resume = killed.elapsed();
    assert!(resumed, "nothing handled within 60 s of killing n{victim}");
    if let Some(left) = down.checked_sub(killed.elapsed()) {
        tokio::time::sleep(left).await;
    }
    cluster.restart(victim).await;
    resume
}

/// Stop `publisher` once it has [`EVENTS`] acks (within 120 s).
async fn finish(publisher: Publisher) -> ledger::Published {
    assert!(
        weir_test_support::eventually(Duration::from_secs(120), || publisher.acked() >= EVENTS)
            .await,
        "the publisher got {} acks",
        publisher.acked()
    );
    publisher.finish().await
}

/// Whether every event of `published` is handled by the app `ledger`
/// within [`SETTLE`].
async fn drain(published: &ledger::Published, scratch: &Scratch, urls: &[String]) -> bool {
    ledger::drain(
        published,
        &scratch.ledger,
        &urls.join(","),
        "ledger",
        SETTLE,
    )
    .await
}

/// The ledger checker's verdict on `published`, with the dead letters of
/// the app `ledger`.
async fn verdict(
    published: &ledger::Published,
    scratch: &Scratch,
    urls: &[String],
) -> (ledger::Verdict, std::collections::HashMap<String, String>) {
    let dead = ledger::dead_letters(&urls.join(","), "ledger")
        .await
        .unwrap();
    let v = ledger::check(
        published,
        &ledger::read(&scratch.ledger),
        &dead.keys().cloned().collect(),
    );
    (v, dead)
}

/// The ledger host's plan on the cluster `urls`: R3 streams, each app's
/// consumer at `consumer_replicas` (0: the stream's).
fn ledger_plan(urls: &[String], scratch: &Scratch, consumer_replicas: usize) -> Plan {
    ledger::host_config(
        &urls.join(","),
        weir_test_artifacts::ECHO,
        &scratch.ledger,
        &scratch.cache,
        DEFAULT_ACK_WAIT_MS,
    )
    .nats(|n| {
        n.replicas = 3;
        n.consumer_replicas = consumer_replicas;
    })
    .valid()
    .plan()
    .unwrap()
}

#[test]
fn replicated_streams_survive_sigkill_of_the_leader_and_of_weirs_own_server() {
    let _heavy = heavy();
    rt().block_on(async {
        let mut cluster = Cluster::start(3).await;
        let urls = cluster.urls();
        let scratch = Scratch::new().unwrap();
        // Replicated consumers (`scope = "cluster"` apps keep them, and
        // `consumer_replicas = 0` asks for them): their leader moves by
        // election. One-replica consumers are the next test's.
        let plan = ledger_plan(&urls, &scratch, 0);
        let host = Daemon::start(plan).await.unwrap();
        for stream in [
            DEFAULT_STREAM.to_owned(),
            DEFAULT_DEAD_STREAM.to_owned(),
            format!("KV_{EFFECT_RECORDS_BUCKET}"),
        ] {
            assert_eq!(replicas(&urls, &stream).await, 3, "{stream}");
        }
        // The publisher starts on the last server: never weir's first.
        let mut publisher_urls = urls.clone();
        publisher_urls.rotate_right(1);
        let publisher = Publisher::start(&publisher_urls.join(","), RATE, "c-")
            .await
            .unwrap();
        let third = |n: u64| {
            let scratch = &scratch.ledger;
            move || ledger::handled(scratch) as u64 >= n
        };
        assert!(weir_test_support::eventually(Duration::from_secs(60), third(EVENTS / 4)).await);

        // 1. The stream leader, unless weir is connected to it.
        let (_, port) = host.connected_server();
        let own = cluster.index_of_port(port).unwrap();
        let leader = cluster
            .stream_leader(DEFAULT_STREAM)
            .await
            .and_then(|n| Cluster::index_of_name(&n))
            .unwrap();
        let victim = if leader == own { (own + 1) % 3 } else { leader };
        let resume_leader =
            kill_and_restart(&mut cluster, victim, &scratch.ledger, Duration::from_secs(3)).await;
        assert!(
            weir_test_support::eventually(Duration::from_secs(60), third(EVENTS / 2)).await
        );

        // 2. The server weir is connected to, made the consumer's leader
        // first (the worst case: the pulls in flight, the deliveries not yet
        // replicated and the leader all die at once).
        let (_, port) = host.connected_server();
        let own = cluster.index_of_port(port).unwrap();
        let consumer = subjects::consumer_name(1, "ledger");
        assert!(
            cluster
                .move_consumer_leader(DEFAULT_STREAM, &consumer, own)
                .await,
            "the consumer's leader could not be moved to n{own}"
        );
        let resume_own =
            kill_and_restart(&mut cluster, own, &scratch.ledger, Duration::from_secs(3)).await;
        let (_, port) = host.connected_server();
        assert_ne!(cluster.index_of_port(port), Some(own), "weir moved to another server");

        let published = finish(publisher).await;
        let last_publish = Instant::now();
        let drained = drain(&published, &scratch, &urls).await;
        let mut state = consumer_state(&urls).await;
        while state.0 != state.3 && last_publish.elapsed() < SETTLE {
            tokio::time::sleep(Duration::from_millis(200)).await;
            state = consumer_state(&urls).await;
        }
        let settled = last_publish.elapsed();
        let (v, dead) = verdict(&published, &scratch, &urls).await;
        eprintln!(
            "cluster: {v:?}; resume after killing the leader n{victim} {resume_leader:.1?}, weir's own server n{own} {resume_own:.1?}; ack floor {} of {} after {settled:.1?}; dead letters {dead:?}",
            state.0, state.3
        );
        assert!(drained, "not every event handled within {SETTLE:?}: {v:?}");
        assert_eq!(v.lost, 0, "{v:?}");
        assert_eq!(v.unexpected, 0, "{v:?}");
        assert_eq!(v.dead_lettered, 0, "no fault may use up deliveries: {v:?}");
        // Every acknowledged event was handled; a publish whose ack died
        // with a killed server may be stored and handled too (`unexpected`
        // above holds handled events to those attempted).
        assert!(v.handled >= v.acked, "{v:?}");
        assert!(v.acked >= EVENTS as usize, "{v:?}");
        let (floor, pending, ack_pending, last) = state;
        assert_eq!(
            (floor, pending, ack_pending),
            (last, 0, 0),
            "ack floor at the last sequence within {SETTLE:?} of the last publish"
        );
        host.shutdown().await.unwrap();
    });
}

/// A second deployment in the same account (its own prefix and stream)
/// gets its own dead-letter stream and bucket, and an existing stream with
/// fewer replicas than configured is reported, never changed.
#[test]
fn names_follow_the_stream_and_fewer_replicas_are_reported_not_changed() {
    let _heavy = heavy();
    rt().block_on(async {
        let cluster = Cluster::start(3).await;
        let urls = cluster.urls();
        let client = async_nats::connect(&urls).await.unwrap();
        let js = jetstream::new(client);
        js.create_stream(jetstream::stream::Config {
            name: "C2_EVENTS".into(),
            subjects: vec!["c2.events.>".into()],
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .unwrap();
        let t = weir_host::nats::Transport::connect_with(
            &urls,
            "c2",
            weir_host::nats::Subjects::new("c2").unwrap(),
            "C2_EVENTS",
            weir_host::nats::ConnectAuth::default(),
        )
        .await
        .unwrap()
        .with_replicas(3);
        let shortfalls = t.ensure_streams().await.unwrap();
        assert_eq!(
            shortfalls,
            [weir_host::nats::ReplicaShortfall {
                stream: "C2_EVENTS".into(),
                replicas: 1,
                configured: 3
            }]
        );
        assert_eq!(replicas(&urls, "C2_EVENTS").await, 1, "never changed");
        assert_eq!(t.dead_letter_stream(), "C2_DEAD");
        assert_eq!(replicas(&urls, "C2_DEAD").await, 3);
        t.effect_records(1).await.unwrap();
        assert_eq!(replicas(&urls, "KV_C2_EFFECTS").await, 3);
    });
}

/// One-replica consumers (the default) on an R3 stream, from a deployment
/// with R3 consumers: the consumer is changed in place to one replica
/// under load. Its server then loses its store (killed, wiped, back within
/// seconds): JetStream makes the consumer again there from its configured
/// start, and weir, seeing its delivery sequence go back, makes it again
/// under its next name from what it settled. Then the server holding it is
/// SIGKILLed and kept down while the publisher goes on; weir makes it again
/// on a live server after [`CONSUMER_FAILOVER_AFTER`]. Every event is
/// handled: none lost, the events handled twice (in flight at each remake)
/// at most twice the consumer's `max_ack_pending`, no effect run twice; the
/// names left behind are deleted once their servers answer.
#[test]
fn one_replica_consumers_fail_over_when_their_server_dies() {
    let _heavy = heavy();
    crate::common::init_tracing();
    rt().block_on(async {
        let mut cluster = Cluster::start(3).await;
        let urls = cluster.urls();
        let scratch = Scratch::new().unwrap();
        let plan = |consumer_replicas| ledger_plan(&urls, &scratch, consumer_replicas);
        let consumer = subjects::consumer_name(1, "ledger");
        let client = async_nats::connect(urls.clone()).await.unwrap();
        let js = jetstream::new(client);
        let consumer_replicas = || async {
            let info = js
                .get_stream(DEFAULT_STREAM)
                .await
                .unwrap()
                .consumer_info(&consumer)
                .await
                .unwrap();
            (
                info.config.num_replicas,
                info.cluster.map_or(0, |c| c.replicas.len()),
            )
        };
        let invoked = |host: &Daemon| {
            host.stats()
                .iter()
                .find(|s| s.app == "ledger")
                .map_or(0, |s| s.invoked_events)
        };
        let handled = |n: u64| {
            let scratch = &scratch.ledger;
            move || ledger::handled(scratch) as u64 >= n
        };
        let mut publisher_urls = urls.clone();
        publisher_urls.rotate_right(1);

        // A deployment from before: the consumer inherits R3 (two followers).
        let host = Daemon::start(plan(0)).await.unwrap();
        assert_eq!(consumer_replicas().await, (0, 2), "an R3 consumer first");
        assert_eq!(replicas(&urls, DEFAULT_STREAM).await, 3);
        let publisher = Publisher::start(&publisher_urls.join(","), RATE, "f-")
            .await
            .unwrap();
        assert!(weir_test_support::eventually(Duration::from_secs(60), handled(EVENTS / 8)).await);
        let invoked_before = invoked(&host);
        host.shutdown().await.unwrap();
        // Restarted with `consumer_replicas = 1`: changed in place, its
        // cursor kept, while the publisher goes on.
        let host = Daemon::start(plan(1)).await.unwrap();
        // The update is applied at once; the followers leave shortly after
        // (at once on nats-server 2.12.8, within a second or so on 2.15.1).
        let scaled_down = Instant::now() + SCALE_DOWN;
        let mut now_replicas = consumer_replicas().await;
        while now_replicas != (1, 0) && Instant::now() < scaled_down {
            tokio::time::sleep(Duration::from_millis(200)).await;
            now_replicas = consumer_replicas().await;
        }
        assert_eq!(now_replicas, (1, 0), "changed in place to R1 within {SCALE_DOWN:?}");
        assert!(weir_test_support::eventually(Duration::from_secs(60), handled(EVENTS / 4)).await);

        let failovers = || {
            host.stats()
                .iter()
                .find(|s| s.app == "ledger")
                .map_or(0, |s| s.consumer_failovers)
        };
        async fn holder(cluster: &Cluster, consumer: &str) -> usize {
            cluster
                .current_consumer_leader(DEFAULT_STREAM, consumer)
                .await
                .and_then(|n| Cluster::index_of_name(&n))
                .expect("the consumer's server")
        }

        // The consumer's server loses its store: killed, wiped and back
        // within seconds (no failover for silence); JetStream makes the
        // consumer again there from its configured start (`new`: what was
        // published meanwhile would be skipped). weir sees its delivery
        // sequence go back and makes it again from what it settled.
        let wiped = holder(&cluster, &consumer).await;
        cluster.kill(wiped);
        cluster.wipe_store(wiped);
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.restart(wiped).await;
        assert!(
            weir_test_support::eventually(Duration::from_secs(60), || failovers() > 0).await,
            "the consumer was not made again within 60 s of n{wiped} coming back without its store"
        );
        let after_reset = ledger::handled(&scratch.ledger);
        assert!(
            weir_test_support::eventually(Duration::from_secs(30), || {
                ledger::handled(&scratch.ledger) > after_reset
            })
            .await,
            "nothing handled within 30 s of the reset"
        );

        // The server holding the consumer, killed and kept down. (The wiped
        // server's catching up may have made weir remake the consumer more
        // than once already: it can place the new one there.)
        let holder = holder(&cluster, &consumer).await;
        let before_kill = failovers();
        let killed = Instant::now();
        cluster.kill(holder);
        // Batches already delivered may still be handled; the consumer is
        // made again after CONSUMER_FAILOVER_AFTER without answers (the
        // counter is read after the next batch).
        assert!(
            weir_test_support::eventually(Duration::from_secs(120), || failovers() > before_kill)
                .await,
            "no failover within 120 s of killing n{holder}, the consumer's server"
        );
        let failed_over = killed.elapsed();
        let before = ledger::handled(&scratch.ledger);
        assert!(
            weir_test_support::eventually(Duration::from_secs(30), || {
                ledger::handled(&scratch.ledger) > before
            })
            .await,
            "nothing handled within 30 s of the failover"
        );
        let moved_to = cluster
            .current_consumer_leader(DEFAULT_STREAM, &consumer)
            .await;
        let published = finish(publisher).await;
        // Back for the judging (the dead-letter reader's own consumer may be
        // placed on any server); the app's consumer stays where it moved.
        cluster.restart(holder).await;
        let drained = drain(&published, &scratch, &urls).await;
        let (v, _) = verdict(&published, &scratch, &urls).await;
        let stats = host.stats();
        let app = stats.iter().find(|s| s.app == "ledger").unwrap();
        let twice = (invoked_before + app.invoked_events).saturating_sub(v.handled as u64);
        eprintln!(
            "one-replica failover: {v:?}; killed n{holder} (the consumer's server), failed over after {failed_over:.1?} to {moved_to:?}; failovers {}; events handled twice {twice}",
            app.consumer_failovers
        );
        if v.lost > 0 {
            let handled = ledger::read(&scratch.ledger);
            let lost: Vec<&String> = published
                .acked
                .iter()
                .filter(|id| !handled.per_event.contains_key(*id))
                .collect();
            let stored = weir_test_support::nats::stored(&urls[0], DEFAULT_STREAM)
                .await
                .unwrap_or_default();
            for id in lost {
                // In stream order, from sequence 1.
                let seq = stored
                    .iter()
                    .position(|m| m.msg_id.as_deref() == Some(id.as_str()))
                    .map(|i| i + 1);
                eprintln!("lost: {id} at stream sequence {seq:?}");
            }
        }
        assert!(drained, "not every event handled within {SETTLE:?}: {v:?}");
        assert_eq!((v.lost, v.unexpected, v.dead_lettered), (0, 0, 0), "{v:?}");
        assert!(v.handled >= v.acked && v.acked >= EVENTS as usize, "{v:?}");
        assert_eq!(v.reexecutions, 0, "an effect ran twice: {v:?}");
        assert!(
            app.consumer_failovers > before_kill && before_kill >= 1,
            "a reset and a failover: {before_kill} before the kill, {} in all",
            app.consumer_failovers
        );
        // The first "no responders" comes when the long poll in flight is
        // given up (two missed heartbeats), the failover
        // CONSUMER_FAILOVER_AFTER later, after the old consumer's delete.
        // An attempt whose create times out (the metadata leader may still
        // count the dead server as a peer) is tried again: allow four.
        let bound = 2 * PULL_HEARTBEAT
            + CONSUMER_FAILOVER_AFTER
            + 4 * (2 * FAILOVER_DELETE_TIMEOUT + FAILOVER_RETRY)
            + Duration::from_secs(10);
        assert!(
            failed_over >= CONSUMER_FAILOVER_AFTER && failed_over <= bound,
            "failed over {failed_over:?} after the kill (bar: {CONSUMER_FAILOVER_AFTER:?} to {bound:?})"
        );
        // At most what was in flight at each remake.
        assert!(
            twice <= app.consumer_failovers * u64::from(DEFAULT_MAX_ACK_PENDING),
            "{twice} events handled twice"
        );
        assert_ne!(
            moved_to.as_deref(),
            Some(format!("n{holder}").as_str()),
            "the consumer is on a live server"
        );
        // The names it left behind are deleted once their servers answer.
        let names = |js: jetstream::Context| {
            let consumer = consumer.clone();
            async move {
            let stream = js.get_stream(DEFAULT_STREAM).await.unwrap();
            let mut names = Vec::new();
            for g in 0..subjects::CONSUMER_GENERATIONS {
                let name = subjects::consumer_generation(&consumer, g);
                if stream.consumer_info(&name).await.is_ok() {
                    names.push(name);
                }
            }
            names
            }
        };
        let deadline = Instant::now() + STALE_DELETE_RETRY + Duration::from_secs(15);
        let mut left = names(js.clone()).await;
        while left.len() > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
            left = names(js.clone()).await;
        }
        assert_eq!(left.len(), 1, "consumers left behind: {left:?}");
        host.shutdown().await.unwrap();
    });
}
