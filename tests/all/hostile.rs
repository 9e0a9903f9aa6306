//! Hostile bytes from the broker: events whose header blocks the NATS
//! client cannot read, or reads as something else, published over a plain
//! TCP socket (`HPUB`) to a real nats-server between well-formed events.
//! Each is handled or dead-lettered with a reason, and the host keeps
//! serving: every event published after them is handled. Default delivery
//! settings throughout.

use std::time::Duration;

use weir_test_support::hostile::{block, hostile_blocks, hpub};

use crate::nats::{dead_letters, rt, server};

#[test]
fn hostile_headers_are_handled_or_dead_lettered_and_the_host_keeps_serving() {
    let _heavy = crate::common::heavy();
    let (server, _dir) = server();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("effects.log");
    let hostile = hostile_blocks();
    let good = 10;
    let units = hostile.len() + 2 * good + 1;
    let config = crate::common::marker_config(&server.url(), &marker, units)
        .http("127.0.0.1:0".parse().unwrap())
        .valid();
    rt().block_on(async {
        let host = weir_host::http::start(config.plan().unwrap())
            .await
            .unwrap();
        let subject = "weir.events.test.cluster".to_owned();
        let event = |unit: usize, id: String| {
            (
                subject.clone(),
                block("NATS/1.0", &[format!("Nats-Msg-Id: {id}").as_bytes()]),
                format!("restart:u{unit}").into_bytes(),
            )
        };
        // Well-formed events, the hostile ones (each asks for its own
        // unit), an id of 10 KiB, then well-formed events again.
        let mut messages: Vec<_> = (0..good).map(|i| event(i, format!("before-{i}"))).collect();
        for (i, (_, headers, _)) in hostile.iter().enumerate() {
            messages.push((
                subject.clone(),
                headers.clone(),
                format!("restart:u{}", good + i).into_bytes(),
            ));
        }
        assert_eq!(
            hostile
                .iter()
                .find(|h| h.0 == "at-limit")
                .map(|h| h.1.len()),
            Some(65_535)
        );
        let long_id_unit = good + hostile.len();
        messages.push(event(long_id_unit, "i".repeat(10 * 1024)));
        let after: Vec<_> = (0..good)
            .map(|i| event(long_id_unit + 1 + i, format!("after-{i}")))
            .collect();
        messages.extend(after);
        tokio::task::spawn_blocking({
            let url = server.url();
            move || hpub(&url, &messages)
        })
        .await
        .unwrap();

        let units_seen = || crate::common::marker_units(&marker);
        let expect_handled: Vec<String> = (0..good)
            .chain(
                hostile
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, _, readable))| *readable)
                    .map(|(i, _)| good + i),
            )
            .chain(long_id_unit + 1..long_id_unit + 1 + good)
            .map(|u| format!("u{u}"))
            .collect();
        let unreadable = hostile.iter().filter(|(_, _, r)| !r).count();
        assert_eventually!(
            Duration::from_secs(90),
            format!(
                "every readable event handled and {} dead letters: handled {:?}, letters {:?}",
                unreadable + 1,
                units_seen(),
                dead_letters(&server, "echo").await
            ),
            {
                expect_handled.iter().all(|u| units_seen().contains(u))
                    && dead_letters(&server, "echo").await.len() == unreadable + 1
            }
        );
        let letters = dead_letters(&server, "echo").await;
        // No event was both handled and dead-lettered, and nothing is left.
        assert_eq!(
            units_seen().len(),
            expect_handled.len(),
            "{:?}",
            units_seen()
        );
        let header_letters = letters
            .iter()
            .filter(|l| l.reason.contains("cannot read this event's headers"))
            .count();
        assert_eq!(header_letters, unreadable, "{letters:#?}");
        assert!(
            letters
                .iter()
                .any(|l| l.reason.contains("event id of 10240 bytes exceeds")),
            "{letters:#?}"
        );
        for l in &letters {
            assert!(!l.reason.contains(['\r', '\n']), "{l:?}");
        }
        let addr = host.http_addr().unwrap();
        assert_eventually!(
            Duration::from_secs(10),
            "/ready",
            weir_test_support::http_get(addr, "/ready")
                .await
                .is_some_and(|(code, _)| code == 200)
        );
        host.shutdown().await.unwrap();
    });
}

/// A NATS client whose connection task is gone (closed here, as a panic in
/// the client would leave it) makes the host say why on `/ready` and
/// report it through `Daemon::failed` within seconds; the drain that
/// follows ends within its bound.
#[test]
fn a_dead_nats_client_is_reported_and_the_host_stops() {
    let _heavy = crate::common::heavy();
    let (server, _dir) = server();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("effects.log");
    let config = crate::common::marker_config(&server.url(), &marker, 1)
        .http("127.0.0.1:0".parse().unwrap())
        .valid();
    rt().block_on(async {
        let host = weir_host::http::start(config.plan().unwrap())
            .await
            .unwrap();
        let failed = host.failed();
        tokio::pin!(failed);
        // Alive: no verdict.
        assert!(
            tokio::time::timeout(Duration::from_secs(3), &mut failed)
                .await
                .is_err()
        );
        host.close_nats_client_for_test().await;
        let reason = tokio::time::timeout(
            weir_host::daemon::CLIENT_CHECK_INTERVAL * 2 + weir_host::nats::CLIENT_CHECK_TIMEOUT,
            &mut failed,
        )
        .await
        .expect("the dead client is reported");
        assert!(reason.contains("connection task is gone"), "{reason}");
        let (code, body) = weir_test_support::http_get(host.http_addr().unwrap(), "/ready")
            .await
            .unwrap();
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("connection task is gone"), "{body}");
        let t = std::time::Instant::now();
        let _ = host.shutdown().await;
        assert!(
            t.elapsed() < weir_host::daemon::DRAIN_TIMEOUT + weir_host::daemon::SHUTDOWN_SLACK,
            "{:?}",
            t.elapsed()
        );
    });
}
