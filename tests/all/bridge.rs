//! `weir bridge` against a real redis-server and a real nats-server:
//! channel mapping, the source taken from the channel, N bridges storing
//! each event once, Redis restarted mid-stream, NATS down with the buffer
//! cap, folding on and off. Every bridge runs at its default settings except
//! where a test is about a setting (`buffer_events`, `fold_domains_ms`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use weir_bridge::{Bridge, BridgeConfig};
use weir_host::nats::subjects::{DEAD_REASON_HEADER, DEAD_SUBJECT_HEADER};
use weir_host::nats::{DEFAULT_DEAD_STREAM, DEFAULT_STREAM, NatsConfig};
use weir_test_support::nats::{Stored, stored};
use weir_test_support::redis::{RedisPublisher, RedisServer};

use crate::nats::{rt, server};

fn nats(url: &str) -> NatsConfig {
    NatsConfig {
        url: Some(url.to_owned()),
        ..NatsConfig::default()
    }
}

fn bridge_config(redis: &RedisServer) -> BridgeConfig {
    let mut c = BridgeConfig::new(&redis.url());
    c.listen = "127.0.0.1:0".parse().unwrap();
    c
}

/// Start bridges for nodes 1..=`n` on the same Redis, no endpoints.
async fn start_bridges(n: u32, nats_url: &str, config: &BridgeConfig) -> Vec<Bridge> {
    let mut bridges = Vec::new();
    for node in 1..=n {
        bridges.push(
            Bridge::start(node, &nats(nats_url), config, false)
                .await
                .unwrap(),
        );
    }
    subscribed(&config.redis_url, n).await;
    bridges
}

/// Wait until `n` bridges are subscribed to the Redis at `url`.
async fn subscribed(url: &str, n: u32) {
    let mut p = RedisPublisher::connect(url).await.unwrap();
    assert_eventually!(
        Duration::from_secs(15),
        format!("{n} bridges subscribed"),
        { p.pattern_subscribers().await.unwrap_or(0) >= u64::from(n) }
    );
}

/// Wait until every message the bridges received is settled (stored, a
/// duplicate, dead-lettered or dropped; folds accounted).
async fn settled(bridges: &[Bridge], received_each: u64) {
    assert_eventually!(
        Duration::from_secs(30),
        format!(
            "settled: {:?}",
            bridges.iter().map(Bridge::stats).collect::<Vec<_>>()
        ),
        {
            bridges.iter().all(|b| {
                let s = b.stats();
                s.received >= received_each
                    && s.buffered == 0
                    && s.published + s.duplicates + s.dead_lettered + s.dropped + s.folded - s.folds
                        == s.received
            })
        }
    );
}

fn events_of(stored: &[Stored]) -> BTreeMap<String, usize> {
    let mut by_subject = BTreeMap::new();
    for m in stored {
        *by_subject.entry(m.subject.clone()).or_insert(0) += 1;
    }
    by_subject
}

#[test]
fn channels_map_to_subjects_and_the_source_is_the_channels() {
    let _heavy = crate::common::heavy();
    rt().block_on(async {
        let (nats_server, _dir) = server();
        let redis = RedisServer::start();
        let bridge = Bridge::start(1, &nats(&nats_server.url()), &bridge_config(&redis), true)
            .await
            .unwrap();
        subscribed(&redis.url(), 1).await;
        let mut p = RedisPublisher::connect(&redis.url()).await.unwrap();
        let forged = br#"{"source": "module/mail1", "node_id": 1, "domain": "dom01.example.org"}"#;
        for (channel, payload) in [
            ("cluster/event/acl-changed", &b"cluster/acls"[..]),
            ("node/4/event/vpn-changed", b"{}"),
            ("module/ldapproxy4/event/user-domain-changed", forged),
            ("module/x/event/a.b", b"not an event name"),
            ("module/x/task/y", b"not subscribed: never seen"),
        ] {
            p.publish(channel, payload).await.unwrap();
        }
        settled(std::slice::from_ref(&bridge), 4).await;
        let events = stored(&nats_server.url(), DEFAULT_STREAM).await.unwrap();
        let subjects: Vec<&str> = events.iter().map(|m| m.subject.as_str()).collect();
        assert_eq!(
            subjects,
            [
                "weir.events.acl-changed.cluster",
                "weir.events.vpn-changed.node.4",
                // The payload names module/mail1; the channel is ldapproxy4's.
                "weir.events.user-domain-changed.module.ldapproxy4",
            ]
        );
        assert_eq!(
            &events[2].payload[..],
            forged,
            "the payload is stored as published"
        );
        assert!(events.iter().all(|m| {
            m.msg_id
                .as_deref()
                .is_some_and(|id| id.starts_with("redis:"))
        }));
        let dead = stored(&nats_server.url(), DEFAULT_DEAD_STREAM)
            .await
            .unwrap();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].subject, "weir.dead.1.bridge");
        let header = |name: &str| {
            dead[0]
                .headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(header(DEAD_SUBJECT_HEADER), "module/x/event/a.b");
        assert!(header(DEAD_REASON_HEADER).contains("'.'"), "{dead:?}");
        let s = bridge.stats();
        assert_eq!((s.received, s.published, s.dead_lettered), (4, 3, 1));
        // The endpoints.
        let addr = bridge.http_addr().unwrap();
        let (code, body) = weir_test_support::http_get(addr, "/stats").await.unwrap();
        assert_eq!(code, 200);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (json["received"].as_u64(), json["published"].as_u64()),
            (Some(4), Some(3))
        );
        assert_eq!(json["redis_connected"], true);
        let (_, metrics) = weir_test_support::http_get(addr, "/metrics").await.unwrap();
        assert!(
            metrics.contains("weir_bridge_published_total{node=\"1\"} 3"),
            "{metrics}"
        );
        let (code, _) = weir_test_support::http_get(addr, "/ready").await.unwrap();
        assert_eq!(code, 200);
        bridge.shutdown().await;
    });
}

#[test]
fn three_bridges_store_each_of_500_events_once() {
    let _heavy = crate::common::heavy();
    rt().block_on(async {
        let (nats_server, _dir) = server();
        let redis = RedisServer::start();
        let bridges = start_bridges(3, &nats_server.url(), &bridge_config(&redis)).await;
        let mut p = RedisPublisher::connect(&redis.url()).await.unwrap();
        // 250 payloads, each published twice: a legitimate repeat is an
        // event too, and must be stored again.
        for i in 0..500u32 {
            let channel = format!("module/app{}/event/thing-changed", i % 7);
            let receivers = p
                .publish(&channel, format!("{{\"n\": {}}}", i % 250).as_bytes())
                .await
                .unwrap();
            assert_eq!(receivers, 3);
        }
        settled(&bridges, 500).await;
        let events = stored(&nats_server.url(), DEFAULT_STREAM).await.unwrap();
        assert_eq!(events.len(), 500, "one copy of each of 500 events");
        let ids: BTreeSet<_> = events.iter().map(|m| m.msg_id.clone()).collect();
        assert_eq!(ids.len(), 500);
        let (published, duplicates): (u64, u64) = bridges
            .iter()
            .map(|b| b.stats())
            .fold((0, 0), |(p, d), s| (p + s.published, d + s.duplicates));
        assert_eq!((published, duplicates), (500, 1000));
        for b in bridges {
            b.shutdown().await;
        }
    });
}

#[test]
fn redis_restarted_mid_stream_loses_only_what_no_bridge_received_and_stores_nothing_twice() {
    let _heavy = crate::common::heavy();
    rt().block_on(async {
        let (nats_server, _dir) = server();
        let mut redis = RedisServer::start();
        let url = redis.url();
        let bridges = start_bridges(2, &nats_server.url(), &bridge_config(&redis)).await;
        // NS8's side: publish event i every 2 ms for 4 s, reconnecting when
        // Redis is gone; record how many subscribers received each.
        let publishing = tokio::spawn(async move {
            let mut receivers: Vec<u64> = Vec::new();
            let mut p = RedisPublisher::connect(&url).await.ok();
            let start = Instant::now();
            let mut i = 0u64;
            while start.elapsed() < Duration::from_secs(4) {
                let got = match p.as_mut() {
                    Some(conn) => conn
                        .publish("cluster/event/tick", format!("{i}").as_bytes())
                        .await
                        .ok(),
                    None => None,
                };
                if got.is_none() {
                    p = RedisPublisher::connect(&url).await.ok();
                }
                receivers.push(got.unwrap_or(0));
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            receivers
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        redis.kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        redis.restart();
        let receivers = publishing.await.unwrap();
        let reached: BTreeSet<u64> = receivers
            .iter()
            .enumerate()
            .filter(|(_, r)| **r > 0)
            .map(|(i, _)| i as u64)
            .collect();
        let lost = receivers.len() - reached.len();
        assert!(lost > 0, "Redis was down for 500 ms: some PUBLISHes failed");
        let expected = reached.len() as u64;
        assert_eventually!(Duration::from_secs(30), format!("{expected} published"), {
            let n: u64 = bridges.iter().map(|b| b.stats().published).sum();
            n >= expected
        });
        settled(&bridges, 0).await;
        let events = stored(&nats_server.url(), DEFAULT_STREAM).await.unwrap();
        let seqs: Vec<u64> = events
            .iter()
            .map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap())
            .collect();
        let unique: BTreeSet<u64> = seqs.iter().copied().collect();
        assert_eq!(unique.len(), seqs.len(), "an event stored twice");
        assert_eq!(
            unique,
            reached,
            "stored = what reached at least one bridge ({lost} of {} lost while Redis was down)",
            receivers.len()
        );
        for b in bridges {
            let s = b.stats();
            assert!(s.redis_disconnects >= 1 && s.redis_connects >= 2, "{s:?}");
            b.shutdown().await;
        }
    });
}

#[test]
fn nats_down_for_10_s_keeps_the_buffer_bounded_and_counts_drops() {
    let _heavy = crate::common::heavy();
    rt().block_on(async {
        let (mut nats_server, _dir) = server();
        let redis = RedisServer::start();
        let mut config = bridge_config(&redis);
        config.buffer_events = 100;
        let bridge = Bridge::start(1, &nats(&nats_server.url()), &config, false)
            .await
            .unwrap();
        subscribed(&redis.url(), 1).await;
        let mut p = RedisPublisher::connect(&redis.url()).await.unwrap();
        for i in 0..10u32 {
            p.publish("cluster/event/tick", i.to_string().as_bytes())
                .await
                .unwrap();
        }
        settled(std::slice::from_ref(&bridge), 10).await;
        nats_server.stop();
        let down = Instant::now();
        let mut most_buffered = 0;
        for i in 10..310u32 {
            p.publish("cluster/event/tick", i.to_string().as_bytes())
                .await
                .unwrap();
            most_buffered = most_buffered.max(bridge.stats().buffered);
        }
        while down.elapsed() < Duration::from_secs(10) {
            most_buffered = most_buffered.max(bridge.stats().buffered);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let during = bridge.stats();
        assert!(most_buffered <= 100, "buffer over its cap: {most_buffered}");
        assert_eq!(during.received, 310);
        // One event is held by the publisher, retrying; 100 wait.
        assert_eq!(during.dropped, 199, "{during:?}");
        nats_server.restart().unwrap();
        settled(std::slice::from_ref(&bridge), 310).await;
        let s = bridge.stats();
        // The event in flight when NATS went away may be stored by the
        // client's own resend on reconnection, and then again by the retry
        // (same id: a duplicate).
        assert_eq!(s.published + s.duplicates, 310 - 199, "{s:?}");
        let events = stored(&nats_server.url(), DEFAULT_STREAM).await.unwrap();
        let seqs: BTreeSet<u32> = events
            .iter()
            .map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap())
            .collect();
        assert_eq!(seqs.len(), 111);
        assert!(
            (210..310).all(|i| seqs.contains(&i)),
            "the newest 100 are kept"
        );
        assert!((0..10).all(|i| seqs.contains(&i)));
        assert!(s.publish_failures >= 1 && s.lag_max_ms >= 1_000, "{s:?}");
        bridge.shutdown().await;
    });
}

#[test]
fn folding_on_makes_one_event_per_source_burst_and_off_keeps_each() {
    let _heavy = crate::common::heavy();
    rt().block_on(async {
        for fold_ms in [200, 0] {
            let (nats_server, _dir) = server();
            let redis = RedisServer::start();
            let mut config = bridge_config(&redis);
            config.fold_domains_ms = fold_ms;
            // Two bridges folding the same burst store one fold.
            let bridges = start_bridges(2, &nats_server.url(), &config).await;
            let mut p = RedisPublisher::connect(&redis.url()).await.unwrap();
            for d in 1..=25 {
                let payload = format!(r#"{{"node_id": 4, "domain": "dom{d:02}.example.org"}}"#);
                p.publish(
                    "module/ldapproxy4/event/user-domain-changed",
                    payload.as_bytes(),
                )
                .await
                .unwrap();
            }
            p.publish("cluster/event/acl-changed", b"cluster/acls")
                .await
                .unwrap();
            settled(&bridges, 26).await;
            let events = stored(&nats_server.url(), DEFAULT_STREAM).await.unwrap();
            let by_subject = events_of(&events);
            let udc = "weir.events.user-domain-changed.module.ldapproxy4";
            let s = bridges[0].stats();
            if fold_ms > 0 {
                assert_eq!(by_subject[udc], 1, "{by_subject:?}");
                let fold = events.iter().find(|m| m.subject == udc).unwrap();
                let payload: serde_json::Value = serde_json::from_slice(&fold.payload).unwrap();
                assert_eq!(payload["domains"].as_array().unwrap().len(), 25);
                assert_eq!(payload["node_id"], 4);
                assert_eq!((s.folded, s.folds), (25, 1));
            } else {
                assert_eq!(by_subject[udc], 25, "{by_subject:?}");
                assert_eq!((s.folded, s.folds), (0, 0));
            }
            assert_eq!(by_subject["weir.events.acl-changed.cluster"], 1);
            for b in bridges {
                b.shutdown().await;
            }
        }
    });
}

#[test]
fn weir_bridge_serves_until_sigterm_and_refuses_bad_configs() {
    let _heavy = crate::common::heavy();
    let (nats_server, dir) = server();
    let redis = RedisServer::start();
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = dir.path().join("weir.toml");
    let write = |bridge: &str| {
        std::fs::write(
            &config,
            format!(
                "[node]\nid = 2\nname = \"node2\"\n[nats]\nurl = \"{}\"\n{bridge}",
                nats_server.url()
            ),
        )
        .unwrap();
    };
    let weir = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.args(["bridge", "--config", config.to_str().unwrap()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        cmd
    };
    // `section` is refused with exit `code`, stderr naming each of `named`.
    let refused = |section: &str, code: i32, named: &[&str]| {
        write(section);
        let out = weir().output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{section}: {stderr}");
        for name in named {
            assert!(stderr.contains(name), "{section}: no {name:?} in {stderr}");
        }
    };
    let redis_url = redis.url();
    // No [bridge], a bad URL: 78 with the reason.
    refused("", 78, &["no [bridge] section"]);
    refused(
        "[bridge]\nredis_url = \"http://x\"\nbuffer_events = 0\n",
        78,
        &["redis_url", "buffer_events"],
    );
    // A key the section does not have: 78, naming it.
    refused(
        &format!("[bridge]\nredis_url = \"{redis_url}\"\nfold_domain_ms = 200\n"),
        78,
        &["fold_domain_ms"],
    );
    // A password file that cannot be read: the configuration's (78).
    refused(
        &format!(
            "[bridge]\nredis_url = \"{redis_url}\"\nuser = \"weir\"\npassword_file = \"/nonexistent/redis-password\"\n"
        ),
        78,
        &["/nonexistent/redis-password"],
    );
    // The endpoints' address taken: unavailable (69), naming it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    refused(
        &format!("[bridge]\nredis_url = \"{redis_url}\"\nlisten = \"{taken_addr}\"\n"),
        69,
        &[&taken_addr],
    );
    drop(taken);
    // A good one: serves, bridges, stops on SIGTERM with exit 0.
    write(&format!(
        "[bridge]\nredis_url = \"{}\"\nlisten = \"{listen}\"\n",
        redis.url()
    ));
    let mut child = weir().spawn().unwrap();
    rt().block_on(async {
        assert_eventually!(Duration::from_secs(20), "bridge ready", {
            weir_test_support::http_get(listen, "/ready")
                .await
                .is_some_and(|(code, _)| code == 200)
        });
        let mut p = RedisPublisher::connect(&redis.url()).await.unwrap();
        p.publish("node/2/event/x-changed", b"{}").await.unwrap();
        assert_eventually!(Duration::from_secs(20), "stored", {
            stored(&nats_server.url(), DEFAULT_STREAM)
                .await
                .unwrap()
                .iter()
                .any(|m| m.subject == "weir.events.x-changed.node.2")
        });
    });
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "weir bridge did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn tls_with_a_client_certificate_and_an_acl_user_from_a_password_file() {
    let _heavy = crate::common::heavy();
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::auth::pki(dir.path());
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let (ca, cert, key) = (path(&pki.ca), path(&pki.server_cert), path(&pki.server_key));
    // TLS only, client certificates required, the default user off: only
    // `weir` with its password gets in.
    let redis = RedisServer::start_with(
        &[
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "yes",
            "--user",
            "default",
            "off",
            "--user",
            "weir",
            "on",
            ">s3cret",
            "allchannels",
            "+@all",
        ],
        true,
    );
    let password = dir.path().join("redis-password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let config = |password_file: &std::path::Path| {
        let mut c = BridgeConfig::new(&format!("rediss://127.0.0.1:{}", redis.port()));
        c.user = Some("weir".into());
        c.password_file = Some(password_file.to_owned());
        c.tls_ca_file = Some(pki.ca.clone());
        c.tls_cert_file = Some(pki.client_cert.clone());
        c.tls_key_file = Some(pki.client_key.clone());
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        c
    };
    let good = config(&password);
    let wrong = dir.path().join("wrong-password");
    std::fs::write(&wrong, "nope").unwrap();
    let (nats_server, _dir) = server();
    rt().block_on(async {
        let bridge = Bridge::start(1, &nats(&nats_server.url()), &good, false)
            .await
            .unwrap();
        let refused = Bridge::start(2, &nats(&nats_server.url()), &config(&wrong), false)
            .await
            .unwrap();
        assert_eventually!(Duration::from_secs(15), "subscribed over TLS", {
            bridge.stats().redis_connected
        });
        let mut p = RedisPublisher::with_client(good.redis_client().unwrap())
            .await
            .unwrap();
        assert_eq!(
            p.publish("cluster/event/acl-changed", b"cluster/acls")
                .await
                .unwrap(),
            1
        );
        settled(std::slice::from_ref(&bridge), 1).await;
        let events = stored(&nats_server.url(), DEFAULT_STREAM).await.unwrap();
        assert_eq!(events.len(), 1);
        let s = refused.stats();
        assert!(
            !s.redis_connected && s.received == 0 && s.redis_connects == 0,
            "{s:?}"
        );
        bridge.shutdown().await;
        refused.shutdown().await;
    });
}

#[test]
fn a_bridge_runs_with_exactly_its_least_privilege_permissions() {
    let _heavy = crate::common::heavy();
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let password_file = dir.path().join("bridge.password");
    std::fs::write(&password_file, "bridge-secret\n").unwrap();
    let mut config = weir_test_support::config::ConfigBuilder::new(3, "nats://127.0.0.1:4222")
        .nats(|n| {
            n.user = Some("bridge3".into());
            n.password_file = Some(password_file.clone());
        })
        .build();
    let bridge_config = BridgeConfig::new(&redis.url());
    config.bridge = Some(toml::Table::try_from(&bridge_config).unwrap());
    let allowed = weir_host::permissions::for_bridge(&config).unwrap();
    let server_conf = dir.path().join("server.conf");
    std::fs::write(
        &server_conf,
        format!(
            "accounts {{ WEIR {{ jetstream: enabled, users: [ {{ user: admin, password: admin-secret }}, {} ] }} }}\n",
            allowed.server_user("bridge3", "bridge-secret")
        ),
    )
    .unwrap();
    let nats_server =
        weir_host::nats::NatsServer::start_with_config(&dir.path().join("js"), &server_conf)
            .unwrap_or_else(|e| panic!("{e}"));
    rt().block_on(async {
        // The operator creates the streams.
        let admin = weir_host::nats::Transport::connect_with(
            &[nats_server.url()],
            "admin",
            weir_host::nats::Subjects::default(),
            DEFAULT_STREAM,
            weir_host::nats::ConnectAuth {
                credentials: weir_host::nats::Credentials::UserPassword {
                    user: "admin".into(),
                    password: "admin-secret".into(),
                },
                ..weir_host::nats::ConnectAuth::default()
            },
        )
        .await
        .unwrap();
        admin.ensure_streams().await.unwrap();
        config.nats.url = Some(nats_server.url());
        let bridge = Bridge::start(3, &config.nats, &bridge_config, false)
            .await
            .unwrap();
        subscribed(&redis.url(), 1).await;
        let mut p = RedisPublisher::connect(&redis.url()).await.unwrap();
        p.publish("module/ldapproxy4/event/user-domain-changed", b"{}")
            .await
            .unwrap();
        p.publish("module/x/event/a.b", b"dead").await.unwrap();
        settled(std::slice::from_ref(&bridge), 2).await;
        let s = bridge.stats();
        assert_eq!(
            (s.published, s.dead_lettered, s.publish_failures),
            (1, 1, 0),
            "{s:?}"
        );
        bridge.shutdown().await;
        let client = async_nats::ConnectOptions::with_user_and_password(
            "admin".into(),
            "admin-secret".into(),
        )
        .connect(nats_server.url())
        .await
        .unwrap();
        let mut stream = async_nats::jetstream::new(client)
            .get_stream(DEFAULT_STREAM)
            .await
            .unwrap();
        assert_eq!(stream.info().await.unwrap().state.messages, 1);
    });
}

#[test]
fn a_bridge_stopped_while_nats_is_away_ends_and_counts_what_it_held() {
    let _heavy = crate::common::heavy();
    rt().block_on(async {
        let (mut nats_server, _dir) = server();
        let redis = RedisServer::start();
        let bridge = Bridge::start(1, &nats(&nats_server.url()), &bridge_config(&redis), false)
            .await
            .unwrap();
        subscribed(&redis.url(), 1).await;
        nats_server.stop();
        let mut p = RedisPublisher::connect(&redis.url()).await.unwrap();
        for i in 0..5u32 {
            p.publish("cluster/event/tick", i.to_string().as_bytes())
                .await
                .unwrap();
        }
        assert_eventually!(Duration::from_secs(10), "received", {
            bridge.stats().received == 5
        });
        let started = Instant::now();
        let s = bridge.shutdown().await;
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "shutdown took {:?}",
            started.elapsed()
        );
        // Four buffered and one in flight (or five buffered while the
        // streams were still being set up): all counted, none stored.
        assert_eq!((s.dropped, s.published, s.duplicates), (5, 0, 0), "{s:?}");
    });
}

#[test]
fn a_payload_over_the_buffer_cap_is_dead_lettered_with_its_reason() {
    let _heavy = crate::common::heavy();
    rt().block_on(async {
        let (nats_server, _dir) = server();
        let redis = RedisServer::start();
        let mut config = bridge_config(&redis);
        config.buffer_bytes = 1_000;
        let bridges = start_bridges(1, &nats_server.url(), &config).await;
        let mut p = RedisPublisher::connect(&redis.url()).await.unwrap();
        p.publish("cluster/event/big", &[b'x'; 2_000])
            .await
            .unwrap();
        p.publish("cluster/event/small", b"{}").await.unwrap();
        settled(&bridges, 2).await;
        let events = stored(&nats_server.url(), DEFAULT_STREAM).await.unwrap();
        assert_eq!(
            events_of(&events).keys().collect::<Vec<_>>(),
            ["weir.events.small.cluster"]
        );
        let dead = stored(&nats_server.url(), DEFAULT_DEAD_STREAM)
            .await
            .unwrap();
        assert_eq!(dead.len(), 1, "{dead:?}");
        let reason = dead[0]
            .headers
            .iter()
            .find(|(k, _)| k == DEAD_REASON_HEADER)
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        assert!(
            reason.contains("payload of 2000 bytes is over the bridge's buffer_bytes of 1000"),
            "{reason:?}"
        );
        assert!(dead[0].payload.is_empty());
        let s = bridges[0].stats();
        assert_eq!((s.dead_lettered, s.dropped), (1, 0), "{s:?}");
        for b in bridges {
            b.shutdown().await;
        }
    });
}
