//! Traces (#28): `weir run` with the standard OTLP variables set, against
//! a real nats-server and an OTLP/HTTP receiver decoding what weir sends
//! (`weir_test_support::otlp`). An event published with a `traceparent`
//! is processed in that trace (batch, filter, invoke, effects), a publish
//! effect's event continues it, `weir publish` starts or continues one, a
//! batch of traced events links each, malformed `traceparent` values are
//! ignored, a collector that is down or slow costs spans, never events, and
//! `weir bridge` starts (or continues) a trace per Redis message.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use weir_test_support::config::{AppBuilder, ConfigBuilder};
use weir_test_support::ledger::UNIT;
use weir_test_support::nats::server;
use weir_test_support::otlp::{Collector, Span};

use crate::common::{free_addr, get, heavy, wait};
use crate::nats::rt;

/// The trace an outside publisher started (W3C Trace Context's example).
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// The publisher's span in [`TRACE`].
const PUBLISHER_SPAN: &str = "00f067aa0ba902b7";

/// The trace of the debounced effect's event.
const LATER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// Longest wait for spans or effects: 30 s.
const SETTLE: Duration = Duration::from_secs(30);

fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

/// A `weir` child killed when dropped.
struct Weir(Child);

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `weir <args>` with only `env` of the `OTEL_*` variables (the rest of
/// this process's removed) and no `WEIR_CONFIG`.
fn weir(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(args).env_remove("WEIR_CONFIG");
    for (k, _) in std::env::vars() {
        if k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// `weir run --config <config>` with `env` (every other `OTEL_*` removed),
/// once `/ready` on `addr` answers 200.
fn run(config: &Path, addr: std::net::SocketAddr, env: &[(&str, String)]) -> Weir {
    let mut cmd = weir(&["run", "--config", config.to_str().unwrap()], env);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = Weir(cmd.spawn().unwrap());
    wait(Duration::from_secs(60), "/ready 200", || {
        get(addr, "/ready").is_some_and(|(code, _)| code == 200)
    });
    child
}

/// Export settings of a test host: `endpoint`, batches sent every 100 ms.
fn otel(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ]
}

/// `weir publish` of one event with `extra` arguments and environment;
/// returns its stderr.
fn publish(
    url: &str,
    name: &str,
    payload: &str,
    id: &str,
    extra: &[&str],
    env: &[(&str, String)],
) -> String {
    let mut args = vec![
        "publish",
        "--url",
        url,
        "--name",
        name,
        "--source",
        "module/x",
        "--payload",
        payload,
        "--id",
        id,
    ];
    args.extend_from_slice(extra);
    let mut cmd = weir(&args, env);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "weir publish: {stderr}");
    stderr
}

/// Publish `payload` as event `name` from `module/x` with raw `headers`
/// (a publisher that is not weir), awaiting JetStream's ack.
async fn publish_raw(url: &str, name: &str, payload: &str, headers: &[(&str, &str)]) {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    let mut h = async_nats::HeaderMap::new();
    for (k, v) in headers {
        h.insert(*k, *v);
    }
    let subject = format!("weir.events.{name}.module.x");
    js.publish_with_headers(subject, h, payload.to_owned().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

fn find(spans: &[Span], what: impl Fn(&Span) -> bool) -> Option<&Span> {
    spans.iter().find(|s| what(s))
}

fn one<'a>(spans: &'a [Span], label: &str, what: impl Fn(&Span) -> bool) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| what(s)).collect();
    assert_eq!(found.len(), 1, "one {label}: {found:#?}");
    found[0]
}

#[test]
fn an_event_s_trace_runs_through_its_batch_and_the_effects_it_caused() {
    let _heavy = heavy();
    let (nats, _dir) = server();
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let config = dir.path().join("weir.toml");
    let addr = free_addr();
    let collector = Collector::start();
    ConfigBuilder::new(1, &url)
        .http(addr)
        .shell_executor(&format!(
            "echo \"$WEIR_EFFECT $WEIR_EVENT_IDS\" >> {}",
            ledger.display()
        ))
        .app(
            AppBuilder::new("a", weir_test_artifacts::ECHO)
                .events(&["work", "chained"])
                .restart(&[UNIT])
                .publish(&["chained"])
                .limits(|l| l.max_batch = 1),
        )
        .app(
            AppBuilder::new("b", weir_test_artifacts::ECHO)
                .events(&["many"])
                .limits(|l| {
                    // The three events published together are one batch.
                    l.max_batch = 3;
                    l.linger_ms = 3_000;
                    l.linger_adaptive = false;
                }),
        )
        .app(
            AppBuilder::new("c", weir_test_artifacts::ECHO)
                .events(&["later"])
                .restart(&[UNIT])
                .debounce_ms(200),
        )
        .write(&config)
        .unwrap();

    let many: Vec<String> = (1..=3).map(|n| format!("{n:032x}")).collect();
    let _host = run(&config, addr, &otel(&collector.endpoint()));
    // `weir publish --traceparent` with export off: the context is carried
    // as is (no trace of its own is started or printed).
    let stderr = publish(
        &url,
        "work",
        "ok",
        "p1",
        &["--traceparent", &traceparent(TRACE, "00000000000000aa")],
        &[],
    );
    assert!(
        !stderr.contains("traceparent 00-"),
        "no export, no new trace: {stderr}"
    );

    rt().block_on(async {
        // An outside publisher's trace, with vendor state.
        publish_raw(
            &url,
            "work",
            "publish:chained restart:ledger.service",
            &[
                ("Nats-Msg-Id", "t1"),
                ("traceparent", &traceparent(TRACE, PUBLISHER_SPAN)),
                ("tracestate", "vendor=1"),
            ],
        )
        .await;
        // Three events of three traces for app b, one batch.
        for (n, trace) in many.iter().enumerate() {
            let value = traceparent(trace, "00000000000000bb");
            publish_raw(
                &url,
                "many",
                "ok",
                &[("Nats-Msg-Id", &format!("m{n}")), ("traceparent", &value)],
            )
            .await;
        }
        // A debounced effect: executed after its window, in the trace of
        // the batch that asked for it.
        let value = traceparent(LATER_TRACE, PUBLISHER_SPAN);
        publish_raw(
            &url,
            "later",
            "restart:ledger.service",
            &[("Nats-Msg-Id", "l1"), ("traceparent", &value)],
        )
        .await;
        // Malformed trace context: each event is handled, untraced by it.
        let long = format!("00-{}-{PUBLISHER_SPAN}-01", "a".repeat(4_000));
        for (id, value) in [
            ("bad1", "00-zzzz-00f067aa0ba902b7-01"),
            (
                "bad2",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            ),
            ("bad3", long.as_str()),
            ("bad4", "\u{e9}t\u{e9}"),
        ] {
            publish_raw(
                &url,
                "work",
                "restart:ledger.service",
                &[("Nats-Msg-Id", id), ("Traceparent", value)],
            )
            .await;
        }
    });

    // The chain: publisher span -> batch of t1 -> invoke, effects -> the
    // published `chained` event's batch -> its restart.
    let spans = collector.wait_for(
        SETTLE,
        "the chained event's restart in the trace",
        |spans| {
            spans.iter().any(|s| {
                s.trace_id == TRACE
                    && s.name == "effect restart"
                    && s.attr("weir.effect.outcome") == "executed"
            }) && spans.iter().filter(|s| s.name == "process a").count() >= 6
        },
    );
    let batch = one(&spans, "batch of t1", |s| {
        s.name == "process a" && s.attr("messaging.message.id") == "t1"
    });
    assert_eq!(
        (batch.trace_id.as_str(), batch.parent_span_id.as_str()),
        (TRACE, PUBLISHER_SPAN)
    );
    assert_eq!(batch.kind, 5, "a consumer span");
    for (key, value) in [
        ("messaging.system", "nats"),
        ("messaging.operation.type", "process"),
        ("messaging.destination.name", "weir.events.work.module.x"),
        ("messaging.consumer.group.name", "weir_1_a"),
        ("messaging.batch.message_count", "1"),
        ("weir.node", "1"),
        ("weir.app", "a"),
    ] {
        assert_eq!(batch.attr(key), value, "{key} of {batch:#?}");
    }
    assert!(
        batch
            .attributes
            .keys()
            .all(|k| k.starts_with("messaging.") || k.starts_with("weir.")),
        "semantic-convention or weir.* names only: {batch:#?}"
    );
    assert_eq!(batch.links.len(), 1, "{batch:#?}");
    assert_eq!(
        (batch.links[0].0.as_str(), batch.links[0].1.as_str()),
        (TRACE, PUBLISHER_SPAN)
    );
    assert_eq!(
        batch.links[0]
            .2
            .get("messaging.message.id")
            .map(String::as_str),
        Some("t1")
    );
    assert_eq!(
        batch.resource.get("service.name").map(String::as_str),
        Some("weir")
    );
    assert_eq!(
        batch.resource.get("weir.node.id").map(String::as_str),
        Some("1")
    );

    let children = |parent: &Span| -> Vec<&Span> {
        spans
            .iter()
            .filter(|s| s.parent_span_id == parent.span_id)
            .collect()
    };
    let names: BTreeSet<&str> = children(batch).iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["effect publish", "filter", "invoke"].into(),
        "the batch's children"
    );
    let filter = one(&spans, "filter of t1", |s| {
        s.name == "filter" && s.parent_span_id == batch.span_id
    });
    assert_eq!(
        (filter.attr("weir.relevant"), filter.attr("weir.skipped")),
        ("1", "0")
    );
    let invoke = one(&spans, "invoke of t1", |s| {
        s.name == "invoke" && s.parent_span_id == batch.span_id
    });
    assert!(
        invoke.attr("weir.fuel").parse::<u64>().unwrap() > 0,
        "{invoke:#?}"
    );
    assert!(
        invoke.attr("weir.memory_bytes").parse::<u64>().unwrap() > 0,
        "{invoke:#?}"
    );
    assert_eq!(invoke.attr("weir.outcomes.done"), "1");
    assert_eq!(invoke.attr("weir.effects"), "1", "the publish asked for");
    let publish_effect = one(&spans, "publish effect", |s| s.name == "effect publish");
    assert_eq!(publish_effect.parent_span_id, batch.span_id);
    assert_eq!(publish_effect.attr("weir.effect.outcome"), "executed");
    assert!(
        publish_effect
            .attr("weir.effect")
            .starts_with("publish:chained:"),
        "{publish_effect:#?}"
    );

    // The published event continues the trace: its batch is a child of the
    // publish effect, and the stored event carries the context and state.
    let chained = one(&spans, "batch of the chained event", |s| {
        s.name == "process a"
            && s.attr("messaging.destination.name") == "weir.events.chained.module.a"
    });
    assert_eq!(chained.trace_id, TRACE);
    assert_eq!(chained.parent_span_id, publish_effect.span_id);
    let restart = one(&spans, "the chained restart", |s| {
        s.name == "effect restart" && s.parent_span_id == chained.span_id
    });
    assert_eq!(restart.attr("weir.effect.outcome"), "executed");
    assert_eq!(restart.attr("weir.effect"), "restart:ledger.service");
    let stored = rt().block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
        let stream = js
            .get_stream(weir_host::nats::DEFAULT_STREAM)
            .await
            .unwrap();
        stream
            .get_last_raw_message_by_subject("weir.events.chained.module.a")
            .await
            .unwrap()
    });
    let headers = stored.headers;
    let carried = headers
        .get("traceparent")
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    assert_eq!(carried, traceparent(TRACE, &publish_effect.span_id));
    assert_eq!(
        headers.get("tracestate").map(|v| v.as_str()),
        Some("vendor=1")
    );

    // Malformed contexts: handled (each one's restart ran), and its batch
    // is a trace of its own, without a parent or link.
    wait(SETTLE, "the four malformed events' restarts", || {
        let text = std::fs::read_to_string(&ledger).unwrap_or_default();
        ["bad1", "bad2", "bad3", "bad4"]
            .iter()
            .all(|id| text.contains(id))
    });
    for id in ["bad1", "bad2", "bad3", "bad4"] {
        let spans = collector.wait_for(SETTLE, id, |spans| {
            find(spans, |s| {
                s.name == "process a" && s.attr("messaging.message.id") == id
            })
            .is_some()
        });
        let bad = one(&spans, id, |s| {
            s.name == "process a" && s.attr("messaging.message.id") == id
        });
        assert!(
            bad.parent_span_id.is_empty() && bad.links.is_empty(),
            "{bad:#?}"
        );
        assert_ne!(bad.trace_id, TRACE);
    }

    // b's first batch: three events of three traces, linked each; its
    // parent is the first one's.
    let spans = collector.wait_for(SETTLE, "b's batch", |spans| {
        find(spans, |s| s.name == "process b").is_some()
    });
    let b = one(&spans, "b's batch", |s| s.name == "process b");
    assert_eq!(b.attr("messaging.batch.message_count"), "3", "{b:#?}");
    let linked: Vec<&str> = b.links.iter().map(|l| l.0.as_str()).collect();
    assert_eq!(linked, many.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        (b.trace_id.as_str(), b.parent_span_id.as_str()),
        (many[0].as_str(), "00000000000000bb")
    );
    let b_ids: BTreeSet<&str> = b
        .links
        .iter()
        .filter_map(|l| l.2.get("messaging.message.id"))
        .map(String::as_str)
        .collect();
    assert_eq!(b_ids, ["m0", "m1", "m2"].into());

    // p1, published by `weir publish --traceparent` without export: its
    // batch continues the given context.
    let spans = collector.wait_for(SETTLE, "p1's batch", |spans| {
        find(spans, |s| s.attr("messaging.message.id") == "p1").is_some()
    });
    let p1 = one(&spans, "p1's batch", |s| {
        s.attr("messaging.message.id") == "p1"
    });
    assert_eq!(
        (p1.trace_id.as_str(), p1.parent_span_id.as_str()),
        (TRACE, "00000000000000aa")
    );

    // The debounced restart: asked for in c's batch (deferred), executed
    // when its window closed, as a child of the asking effect's span.
    let spans = collector.wait_for(SETTLE, "the debounced restart", |spans| {
        find(spans, |s| {
            s.trace_id == LATER_TRACE && s.attr("weir.effect.outcome") == "executed"
        })
        .is_some()
    });
    let asked = one(&spans, "the deferred effect", |s| {
        s.trace_id == LATER_TRACE && s.attr("weir.effect.outcome") == "deferred"
    });
    let executed = one(&spans, "the executed effect", |s| {
        s.trace_id == LATER_TRACE && s.attr("weir.effect.outcome") == "executed"
    });
    assert_eq!(executed.name, "effect restart");
    assert_eq!(executed.parent_span_id, asked.span_id);
    assert_eq!(executed.attr("weir.effect.requests"), "1");

    // `weir publish` with export on starts a trace: its send span is the
    // parent of the batch.
    let stderr = publish(&url, "work", "ok", "w1", &[], &otel(&collector.endpoint()));
    let started = stderr
        .lines()
        .find_map(|l| l.strip_prefix("traceparent "))
        .unwrap_or_else(|| panic!("a trace started: {stderr}"))
        .to_owned();
    let trace = started.split('-').nth(1).unwrap().to_owned();
    let spans = collector.wait_for(SETTLE, "w1's send and batch", |spans| {
        find(spans, |s| s.trace_id == trace && s.name == "process a").is_some()
            && find(spans, |s| s.trace_id == trace && s.name == "send work").is_some()
    });
    let send = one(&spans, "send span", |s| {
        s.trace_id == trace && s.name == "send work"
    });
    assert_eq!(send.kind, 4, "a producer span");
    assert!(send.parent_span_id.is_empty(), "a new trace");
    assert_eq!(send.attr("messaging.message.id"), "w1");
    let w1 = one(&spans, "w1's batch", |s| {
        s.trace_id == trace && s.name == "process a"
    });
    assert_eq!(w1.parent_span_id, send.span_id);

    // Counted in /metrics.
    let (_, metrics) = get(addr, "/metrics").unwrap();
    let exported = metric(&metrics, "weir_trace_spans_exported_total");
    assert!(exported > 0, "{metrics}");
    assert_eq!(metric(&metrics, "weir_trace_spans_dropped_total"), 0);
}

/// The value of the first sample of `name` in `/metrics` text (0 if none).
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A host of [`a_collector_that_is_down_or_slow_costs_spans_never_events`]:
/// node id, `/metrics` address, config file, environment.
type TestHost = (
    u32,
    std::net::SocketAddr,
    std::path::PathBuf,
    Vec<(&'static str, String)>,
);

#[test]
fn a_collector_that_is_down_or_slow_costs_spans_never_events() {
    let _heavy = heavy();
    let (nats, _dir) = server();
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap();
    let slow = Collector::with_delay(Duration::from_secs(3));
    let down = format!("http://{}", free_addr());
    // Node 1 exports to a collector that answers in 3 s with a queue of
    // 16 spans; node 2 to a port nobody listens on, giving up after 1 s.
    let hosts: Vec<TestHost> = [
        (1, {
            let mut e = otel(&slow.endpoint());
            e.push(("OTEL_BSP_MAX_QUEUE_SIZE", "16".to_owned()));
            e
        }),
        (2, {
            let mut e = otel(&down);
            e.push(("OTEL_EXPORTER_OTLP_TIMEOUT", "1000".to_owned()));
            e
        }),
    ]
    .into_iter()
    .map(|(node, env)| {
        let ledger = dir.path().join(format!("ledger{node}"));
        let config = dir.path().join(format!("weir{node}.toml"));
        let addr = free_addr();
        ConfigBuilder::new(node, &url)
            .http(addr)
            .shell_executor(&format!("echo \"$WEIR_EVENT_IDS\" >> {}", ledger.display()))
            .app(
                AppBuilder::new("a", weir_test_artifacts::ECHO)
                    .events(&["work"])
                    .restart(&[UNIT])
                    // A batch per event: 300 batches of 4 spans each.
                    .limits(|l| l.max_batch = 1),
            )
            .write(&config)
            .unwrap();
        (node, addr, config, env)
    })
    .collect();
    let _running: Vec<Weir> = hosts
        .iter()
        .map(|(_, addr, config, env)| run(config, *addr, env))
        .collect();

    const EVENTS: usize = 300;
    rt().block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
        let mut acks = Vec::with_capacity(EVENTS);
        for n in 0..EVENTS {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", format!("e{n}"));
            h.insert(
                "traceparent",
                traceparent(&format!("{:032x}", n + 1), PUBLISHER_SPAN),
            );
            acks.push(
                js.publish_with_headers(
                    "weir.events.work.module.x",
                    h,
                    format!("restart:{UNIT}").into(),
                )
                .await
                .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
    });
    let all: BTreeSet<String> = (0..EVENTS).map(|n| format!("e{n}")).collect();
    for node in [1, 2] {
        let ledger = dir.path().join(format!("ledger{node}"));
        wait(SETTLE, &format!("node {node} handles every event"), || {
            let text = std::fs::read_to_string(&ledger).unwrap_or_default();
            let seen: BTreeSet<String> = text.split_whitespace().map(str::to_owned).collect();
            all.is_subset(&seen)
        });
    }
    // Both counted what they could not send.
    let (_, slow_addr, _, _) = &hosts[0];
    let (_, down_addr, _, _) = &hosts[1];
    wait(SETTLE, "node 1 drops spans for its slow collector", || {
        get(*slow_addr, "/metrics")
            .is_some_and(|(_, m)| metric(&m, "weir_trace_spans_dropped_total") > 0)
    });
    wait(SETTLE, "node 2 counts failed exports", || {
        get(*down_addr, "/metrics")
            .is_some_and(|(_, m)| metric(&m, "weir_trace_spans_failed_total") > 0)
    });
    assert!(slow.requests() > 0, "the slow collector was asked");
}

#[test]
fn the_bridge_starts_a_trace_per_redis_message_and_carries_it_in_the_headers() {
    use weir_test_support::redis::{RedisPublisher, RedisServer};
    let _heavy = heavy();
    let (nats, _dir) = server();
    let url = nats.url();
    let redis = RedisServer::start();
    let collector = Collector::start();
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nid = 2\nname = \"node2\"\n[nats]\nurl = \"{url}\"\n[bridge]\nredis_url = \"{}\"\nlisten = \"{listen}\"\n",
            redis.url()
        ),
    )
    .unwrap();
    let mut cmd = weir(
        &["bridge", "--config", config.to_str().unwrap()],
        &otel(&collector.endpoint()),
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _bridge = Weir(cmd.spawn().unwrap());
    wait(Duration::from_secs(60), "bridge /ready 200", || {
        get(listen, "/ready").is_some_and(|(code, _)| code == 200)
    });
    let continued = traceparent(TRACE, PUBLISHER_SPAN);
    let stored = rt().block_on(async {
        let mut p = RedisPublisher::connect(&redis.url()).await.unwrap();
        p.publish("node/2/event/x-changed", b"{}").await.unwrap();
        let payload = format!(r#"{{"traceparent": "{continued}"}}"#);
        p.publish("module/mail1/event/y-changed", payload.as_bytes())
            .await
            .unwrap();
        let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
        let mut found = Vec::new();
        for subject in [
            "weir.events.x-changed.node.2",
            "weir.events.y-changed.module.mail1",
        ] {
            let mut message = None;
            for _ in 0..200 {
                if let Ok(stream) = js.get_stream(weir_host::nats::DEFAULT_STREAM).await
                    && let Ok(m) = stream.get_last_raw_message_by_subject(subject).await
                {
                    message = Some(m);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let m = message.unwrap_or_else(|| panic!("{subject} not stored"));
            let header = m.headers.get("traceparent").map(|v| v.as_str().to_owned());
            found.push(header.unwrap_or_else(|| panic!("{subject}: no traceparent")));
        }
        found
    });
    // Each stored event carries the context of its bridge span.
    let spans = collector.wait_for(SETTLE, "the bridge's two send spans", |spans| {
        spans.iter().filter(|s| s.name.starts_with("send ")).count() >= 2
    });
    for (header, name) in stored.iter().zip(["send x-changed", "send y-changed"]) {
        let span = one(&spans, name, |s| s.name == name);
        assert_eq!(
            *header,
            traceparent(&span.trace_id, &span.span_id),
            "{span:#?}"
        );
        assert_eq!(span.kind, 4, "a producer span");
        assert!(
            span.attr("weir.redis.channel").ends_with(&name[5..]),
            "{span:#?}"
        );
    }
    let x = one(&spans, "x", |s| s.name == "send x-changed");
    assert!(x.parent_span_id.is_empty(), "a new trace: {x:#?}");
    assert_eq!(
        x.attr("messaging.destination.name"),
        "weir.events.x-changed.node.2"
    );
    assert_eq!(x.attr("weir.redis.channel"), "node/2/event/x-changed");
    // The payload's traceparent is continued.
    let y = one(&spans, "y", |s| s.name == "send y-changed");
    assert_eq!(
        (y.trace_id.as_str(), y.parent_span_id.as_str()),
        (TRACE, PUBLISHER_SPAN)
    );
    assert_eq!(
        y.resource.get("weir.command").map(String::as_str),
        Some("bridge")
    );
}
