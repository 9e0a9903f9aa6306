//! weir on a real 3-server NATS cluster (routes and JetStream on each, one
//! store directory each), at default delivery settings: replicated streams
//! created by weir from `nats.urls` and `nats.replicas`, then SIGKILLs of the
//! stream leader and of the server weir is connected to, each restarted,
//! while an external publisher streams events in. Judged by the ledger
//! checker: lost 0, unexpected 0, every event handled, the consumer's ack
//! floor at the last sequence.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use weir_host::Daemon;
use weir_host::nats::TransportExt as _;
use weir_host::nats::consumer::DEFAULT_ACK_WAIT_MS;
use weir_host::nats::{DEFAULT_DEAD_STREAM, DEFAULT_STREAM, EFFECT_RECORDS_BUCKET, subjects};
use weir_test_support::ledger::{self, Publisher, Scratch};
use weir_test_support::nats::Cluster;

use crate::common::heavy;
use crate::nats::rt;

/// Events published in each test: 3,000 (the figure).
const EVENTS: u64 = 3_000;
/// Publish rate: 300 events/s (the torture row's).
const RATE: u32 = 300;
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
            let info = stream
                .consumer_info(subjects::consumer_name(1, "ledger"))
                .await
                .ok()?;
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

#[test]
fn replicated_streams_survive_sigkill_of_the_leader_and_of_weirs_own_server() {
    let _heavy = heavy();
    rt().block_on(async {
        let mut cluster = Cluster::start(3).await;
        let urls = cluster.urls();
        let scratch = Scratch::new().unwrap();
        let plan = ledger::host_config(
            &urls.join(","),
            weir_test_artifacts::ECHO,
            &scratch.ledger,
            &scratch.cache,
            DEFAULT_ACK_WAIT_MS,
        )
        .nats(|n| n.replicas = 3)
        .valid()
        .plan()
        .unwrap();
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

        assert!(
            weir_test_support::eventually(Duration::from_secs(120), || publisher.acked() >= EVENTS)
                .await,
            "the publisher got {} acks",
            publisher.acked()
        );
        let published = publisher.finish().await;
        let last_publish = Instant::now();
        let drained = ledger::drain(
            &published,
            &scratch.ledger,
            &urls.join(","),
            "ledger",
            SETTLE,
        )
        .await;
        let mut state = consumer_state(&urls).await;
        while state.0 != state.3 && last_publish.elapsed() < SETTLE {
            tokio::time::sleep(Duration::from_millis(200)).await;
            state = consumer_state(&urls).await;
        }
        let settled = last_publish.elapsed();
        let dead = ledger::dead_letters(&urls.join(","), "ledger").await.unwrap();
        let v = ledger::check(
            &published,
            &ledger::read(&scratch.ledger),
            &dead.keys().cloned().collect(),
        );
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
