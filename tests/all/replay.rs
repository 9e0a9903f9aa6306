//! `weir replay` against a real nats-server: events a live host handled,
//! replayed through the same component (nothing changed), one that drops
//! effects and traps on some input (changed, exit 2), sequence ranges,
//! `--since`, a stream whose oldest events were removed, an event whose
//! header block the NATS client cannot read, and the app's durable
//! consumer and kv bucket left as they were.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use serde_json::Value;
use weir_host::Daemon;
use weir_host::nats::history;
use weir_host::nats::{NatsServer, Transport};
use weir_test_support::config::{AppBuilder, ConfigBuilder};
use weir_test_support::hostile::{block, hpub};

use crate::nats::{app, publisher, rt, server};

/// Events the `echo` app handles: restarts, plain ones, and payloads the
/// `trap` component panics on (`echo` acks them).
const RESTARTS: usize = 10;
const PLAIN: usize = 10;
const PANICS: usize = 2;
/// Another app's events, in the same stream.
const OTHERS: usize = 3;

/// Node 1 with app `echo` (ECHO on `work`, restarts granted) and app
/// `other` (on `other`).
fn config(server: &NatsServer) -> ConfigBuilder {
    let units: Vec<String> = (0..RESTARTS).map(|i| format!("u{i}")).collect();
    let units: Vec<&str> = units.iter().map(String::as_str).collect();
    ConfigBuilder::new(1, &server.url())
        .app(
            AppBuilder::new("echo", weir_test_artifacts::ECHO)
                .events(&["work"])
                .restart(&units),
        )
        .app(AppBuilder::new("other", weir_test_artifacts::ECHO).events(&["other"]))
}

fn weir_replay(config: &Path, args: &[&str]) -> (Output, Value) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "replay",
            "--config",
            config.to_str().unwrap(),
            "--app",
            "echo",
        ])
        .args(args)
        .arg("--json")
        .output()
        .expect("run weir replay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    (out, json)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(u64::MAX)
}

/// The sequences of the `work` events in the stream, in order.
async fn work_sequences(t: &Transport) -> Vec<u64> {
    let span = history::span(t).await.unwrap();
    history::read(t, span.first_sequence, span.last_sequence)
        .filter_map(|m| async move { m.unwrap() })
        .filter(|m| std::future::ready(m.subject.starts_with("weir.events.work.")))
        .map(|m| m.sequence)
        .collect()
        .await
}

#[test]
fn replay_compares_versions_on_the_stream_and_touches_nothing() {
    let _heavy = crate::common::heavy();
    let (server, dir) = server();
    let config_file = dir.path().join("weir.toml");
    config(&server).write(&config_file).unwrap();
    let config = config(&server).valid();
    rt().block_on(async {
        // A live host handles them first (its consumers start at new events).
        let host = Daemon::start(config.plan().expect("valid config"))
            .await
            .unwrap();
        let p = publisher(&server).await;
        let mut i = 0;
        let mut publish = |name: &'static str, payload: String| {
            i += 1;
            let id = format!("e{i}");
            let p = &p;
            async move {
                p.publish_event(name, "cluster", Bytes::from(payload), &id)
                    .await
                    .unwrap();
            }
        };
        for u in 0..RESTARTS {
            publish("work", format!("restart:u{u}")).await;
        }
        for _ in 0..PLAIN {
            publish("work", "fine".to_owned()).await;
        }
        for _ in 0..PANICS {
            publish("work", "panic".to_owned()).await;
        }
        for _ in 0..OTHERS {
            publish("other", "fine".to_owned()).await;
        }
        let handled = (RESTARTS + PLAIN + PANICS) as u64;
        assert_eventually!(
            Duration::from_secs(30),
            "the live host handled the events",
            { app(&host.stats(), "echo").outcomes["done"] == handled }
        );
        host.shutdown().await.unwrap();
        // An event whose header block the NATS client cannot read (a line
        // feed inside a value): a live host dead-letters it (`hostile::`); replay counts
        // it and goes on (a consumer delivering it would lose its
        // connection, again and again).
        tokio::task::spawn_blocking({
            let url = server.url();
            move || {
                hpub(
                    &url,
                    &[(
                        "weir.events.work.cluster".to_owned(),
                        block("NATS/1.0", &[b"Nats-Msg-Id: bad", b"X-Odd: a\nb"]),
                        b"restart:u0".to_vec(),
                    )],
                )
            }
        })
        .await
        .unwrap();

        let before = consumers(&p).await;

        // The same component: nothing changed.
        let (out, r) = weir_replay(&config_file, &["--component", weir_test_artifacts::ECHO]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(n(&r["events"]), handled, "{r}");
        assert_eq!(n(&r["changed"]), 0, "{r}");
        assert_eq!(n(&r["undecodable"]), 1, "{r}");
        assert_eq!(n(&r["other_events"]), OTHERS as u64, "{r}");
        assert_eq!(n(&r["stable"]["effects"]["restart:u3"]), 1, "{r}");
        assert!(
            stderr(&out).contains("changed: none of 22 events"),
            "{}",
            stderr(&out)
        );

        // A candidate that drops every effect and panics on `panic`, one
        // event at a time: exactly the restarts and the panics changed.
        let (out, r) = weir_replay(
            &config_file,
            &["--component", weir_test_artifacts::TRAP, "--batch", "1"],
        );
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert_eq!(n(&r["changed"]), (RESTARTS + PANICS) as u64, "{r}");
        assert_eq!(n(&r["candidate"]["traps"]["trap"]), PANICS as u64, "{r}");
        assert_eq!(
            n(&r["candidate"]["outcomes"]["failed"]),
            PANICS as u64,
            "{r}"
        );
        assert_eq!(r["candidate"]["effects"], serde_json::json!({}), "{r}");
        assert_eq!(
            r["changes"].as_array().map(Vec::len),
            Some(RESTARTS + PANICS),
            "{r}"
        );
        let listed = stderr(&out);
        assert!(listed.contains("done -> failed (trap)"), "{listed}");
        assert!(
            listed.contains("batch effects without [restart:u0]"),
            "{listed}"
        );
        // `--limit` lists fewer, counts all.
        let (_, r) = weir_replay(
            &config_file,
            &[
                "--component",
                weir_test_artifacts::TRAP,
                "--batch",
                "1",
                "--limit",
                "3",
            ],
        );
        assert_eq!(n(&r["changed"]), (RESTARTS + PANICS) as u64, "{r}");
        assert_eq!(r["changes"].as_array().map(Vec::len), Some(3), "{r}");

        // In the app's batches (max_batch 64: all of them in one), the
        // batch's effects differ, so every event of it changed (`trap`
        // looks only at a batch's first event: this one acks them all).
        let (out, r) = weir_replay(&config_file, &["--component", weir_test_artifacts::TRAP]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert_eq!((n(&r["batches"]), n(&r["changed"])), (1, handled), "{r}");
        assert_eq!(n(&r["candidate"]["outcomes"]["done"]), handled, "{r}");

        // A batch that fails runs its events alone, as a live host does:
        // from the first `panic` on, the batch fails, then each panic alone.
        let work = work_sequences(&p).await;
        let first_panic = work[RESTARTS + PLAIN].to_string();
        let (out, r) = weir_replay(
            &config_file,
            &[
                "--component",
                weir_test_artifacts::TRAP,
                "--from-seq",
                &first_panic,
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert_eq!(
            (n(&r["events"]), n(&r["changed"])),
            (PANICS as u64, PANICS as u64),
            "{r}"
        );
        assert_eq!(n(&r["candidate"]["invocations"]), 1 + PANICS as u64, "{r}");
        assert_eq!(
            n(&r["candidate"]["traps"]["trap"]),
            1 + PANICS as u64,
            "{r}"
        );
        assert_eq!(n(&r["undecodable"]), 1, "{r}");

        // A sequence range: the first five restarts only.
        let (from, to) = (work[0].to_string(), work[4].to_string());
        let (out, r) = weir_replay(
            &config_file,
            &[
                "--component",
                weir_test_artifacts::TRAP,
                "--batch",
                "1",
                "--from-seq",
                &from,
                "--to-seq",
                &to,
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert_eq!((n(&r["events"]), n(&r["changed"])), (5, 5), "{r}");
        assert_eq!((n(&r["from"]), n(&r["to"])), (work[0], work[4]), "{r}");

        // `--since`: the last hour holds them all; the time search finds
        // the first event published at or after a given event's time.
        let (out, r) = weir_replay(
            &config_file,
            &["--component", weir_test_artifacts::ECHO, "--since", "1h"],
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(n(&r["events"]), handled, "{r}");
        // (Nothing was removed from this stream: nothing is reported gone.)
        assert_eq!(r["since_before_oldest"], false, "{r}");
        let span = history::span(&p).await.unwrap();
        for &seq in &work {
            let at = history::read_one(&p, seq)
                .await
                .unwrap()
                .unwrap()
                .published_ms;
            let first = history::first_since(&p, span, at).await.unwrap();
            let first_at = history::read_one(&p, first)
                .await
                .unwrap()
                .unwrap()
                .published_ms;
            assert!(
                first <= seq && first_at == at,
                "{seq} at {at}: found {first} at {first_at}"
            );
        }
        assert_eq!(
            history::first_since(&p, span, u64::MAX).await.unwrap(),
            span.last_sequence + 1
        );

        // Nothing of the live state moved: no consumer made or removed, the
        // app's own where it was.
        assert_eq!(consumers(&p).await, before);
    });
}

/// A stream whose oldest events were removed (by its age limit, or an
/// operator): replay says how many of the range it could not read, and
/// counts a deleted sequence as a gap.
#[test]
fn replay_reports_the_part_of_its_range_the_stream_no_longer_holds() {
    let (server, dir) = server();
    let config_file = dir.path().join("weir.toml");
    config(&server).write(&config_file).unwrap();
    rt().block_on(async {
        let p = publisher(&server).await;
        for i in 0..15 {
            p.publish_event(
                "work",
                "cluster",
                Bytes::from_static(b"fine"),
                &format!("e{i}"),
            )
            .await
            .unwrap();
        }
        let stream = p.jetstream().get_stream(p.stream()).await.unwrap();
        stream.purge().sequence(6).await.unwrap();
        stream.delete_message(8).await.unwrap();
        let span = history::span(&p).await.unwrap();
        assert_eq!((span.first_sequence, span.last_sequence), (6, 15));
    });
    let (out, r) = weir_replay(
        &config_file,
        &["--component", weir_test_artifacts::ECHO, "--from-seq", "1"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        (
            n(&r["missing"]),
            n(&r["from"]),
            n(&r["gaps"]),
            n(&r["events"])
        ),
        (5, 6, 1, 9),
        "{r}"
    );
    assert!(
        stderr(&out).contains("not replayed: 5 sequences of the range the stream no longer holds"),
        "{}",
        stderr(&out)
    );
    // `--since` past the oldest event of a stream that removed some: said.
    let (out, r) = weir_replay(
        &config_file,
        &["--component", weir_test_artifacts::ECHO, "--since", "1h"],
    );
    assert_eq!((n(&r["from"]), n(&r["events"])), (6, 9), "{r}");
    assert_eq!(r["since_before_oldest"], true, "{r}");
    assert!(
        stderr(&out).contains("begins before the stream's oldest event (seq 6)"),
        "{}",
        stderr(&out)
    );
    // A range wholly before the stream's first event: nothing replayed,
    // all of it missing.
    let (out, r) = weir_replay(
        &config_file,
        &[
            "--component",
            weir_test_artifacts::ECHO,
            "--from-seq",
            "2",
            "--to-seq",
            "4",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!((n(&r["missing"]), n(&r["events"])), (3, 0), "{r}");
    // A bad range is a usage error; a server that is not there is
    // unavailable.
    let (out, _) = weir_replay(
        &config_file,
        &[
            "--component",
            weir_test_artifacts::ECHO,
            "--from-seq",
            "9",
            "--to-seq",
            "4",
        ],
    );
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    drop(server);
    let (out, _) = weir_replay(&config_file, &["--component", weir_test_artifacts::ECHO]);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
}

/// The consumers on the events stream, with each one's delivered and
/// acknowledged stream sequences.
async fn consumers(t: &Transport) -> Vec<(String, u64, u64)> {
    let stream = t.jetstream().get_stream(t.stream()).await.unwrap();
    let mut found = Vec::new();
    let mut infos = stream.consumers();
    while let Some(info) = infos.next().await {
        let info = info.unwrap();
        found.push((
            info.name.clone(),
            info.delivered.stream_sequence,
            info.ack_floor.stream_sequence,
        ));
    }
    found.sort();
    found
}

/// A handler that reads and writes kv: replay reads the live bucket as it
/// is now, and its writes stay in an overlay per version (the live value
/// is what the live host left).
#[test]
fn replay_reads_the_live_bucket_and_keeps_its_writes() {
    let (server, dir) = server();
    let counter = || {
        ConfigBuilder::new(1, &server.url()).app(
            AppBuilder::new("echo", weir_test_artifacts::KV_PROBE)
                .events(&["count"])
                .grants(|g| g.kv = true),
        )
    };
    let config_file = dir.path().join("weir.toml");
    counter().write(&config_file).unwrap();
    let url = server.url();
    rt().block_on(async {
        let host = Daemon::start(counter().valid().plan().expect("valid config"))
            .await
            .unwrap();
        let p = publisher(&server).await;
        for i in 0..3 {
            p.publish_event(
                "count",
                "cluster",
                Bytes::from_static(b"cas-incr:c"),
                &format!("c{i}"),
            )
            .await
            .unwrap();
        }
        assert_eventually!(Duration::from_secs(20), "3 increments", {
            crate::kv::value(&url, "WEIR_KV_echo", "c").await.as_deref() == Some("3")
        });
        host.shutdown().await.unwrap();
    });
    let (out, r) = weir_replay(
        &config_file,
        &["--component", weir_test_artifacts::KV_PROBE, "--batch", "1"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Every compare-and-set succeeded in both versions (a kv error would
    // reject the event), on the live value and then on their own writes.
    assert_eq!(n(&r["stable"]["outcomes"]["done"]), 3, "{r}");
    assert_eq!(n(&r["candidate"]["outcomes"]["done"]), 3, "{r}");
    rt().block_on(async {
        assert_eq!(
            crate::kv::value(&url, "WEIR_KV_echo", "c").await.as_deref(),
            Some("3"),
            "replay wrote to the live bucket"
        );
    });
}
