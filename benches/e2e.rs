//! End to end through a real nats-server, weir beside its raw floor in the
//! same run:
//!
//! - throughput: events/s through one app with a no-op handler (`echo`, every
//!   event done) vs a raw async-nats pull consumer fetching batches of the
//!   same size and acking each message, over the same pre-published events;
//! - latency: at a fixed moderate rate, time from the stream's publish
//!   timestamp to the event being settled (weir: acked after the handler ran;
//!   raw: acked on receipt); p50 and p99 of each;
//! - shadow run (`[app.canary] mode = "shadow"`): the same throughput run
//!   with a candidate (`echo` again) beside the live version, against the
//!   run without in the same process: live events/s, the process's CPU
//!   per event (user + system, from `/proc/self/stat`) until the candidate
//!   has run every batch, and the batches it skipped;
//! - traces: the same throughput run over events that each carry a
//!   `traceparent`, with OTLP export off (weir's log layer only) and on
//!   (the trace layer beside it, sampling 100%,
//!   a span per batch linking its 64 events, its filter and invoke spans,
//!   exported over HTTP to a receiver that discards them), alternating, in
//!   the same process: events/s and CPU per event of each, and the ratio.
//!
//! Run: `cargo bench -p weir-benches --bench e2e`. Prints the floor, weir's
//! figure and the ratio. Needs `nats-server` (see README).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt as _;
use weir_host::effects::EffectRunner;
use weir_host::filter::{Filter, RuleConfig};
use weir_host::nats::TransportExt as _;
use weir_host::nats::subjects::DEFAULT_STREAM;
use weir_host::nats::{Delivery, Transport};
use weir_host::pipeline::AppPipeline;
use weir_host::stats::AppStats;
use weir_host::{AppSpec, DomainSet, EngineConfig, Limits, Runtime};

/// Events per throughput run.
const EVENTS: usize = 20_000;
/// Events per batch, both sides.
const BATCH: usize = 64;
/// Rounds per side; the median is reported.
const ROUNDS: usize = 3;
/// Rounds per side of the traces run (short rounds on a shared 2-core
/// machine are noisy: more of them).
const TRACE_ROUNDS: usize = 7;
/// Latency run: events per second and duration.
const RATE: u64 = 500;
const LATENCY_SECS: u64 = 4;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn publish_burst(js: &jetstream::Context, subject: &str, n: usize, tag: &str) {
    publish_burst_with(js, subject, n, tag, false).await;
}

/// [`publish_burst`], each event with a `traceparent` of its own trace when
/// `traced`.
async fn publish_burst_with(
    js: &jetstream::Context,
    subject: &str,
    n: usize,
    tag: &str,
    traced: bool,
) {
    let mut acks = Vec::with_capacity(1024);
    for i in 0..n {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{tag}-{i}"));
        if traced {
            headers.insert(
                "traceparent",
                format!("00-{:032x}-{:016x}-01", i + 1, i + 1),
            );
        }
        acks.push(
            js.publish_with_headers(subject.to_owned(), headers, "{}".into())
                .await
                .unwrap(),
        );
        if acks.len() == 1024 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks {
        a.await.unwrap();
    }
}

fn raw_config(name: &str, filter: String) -> pull::Config {
    pull::Config {
        durable_name: Some(name.to_owned()),
        filter_subject: filter,
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        max_ack_pending: 256,
        ..Default::default()
    }
}

/// Raw floor: fetch batches of BATCH, ack each; returns elapsed for `n`.
async fn raw_consume(
    js: &jetstream::Context,
    name: &str,
    filter: &str,
    n: usize,
    latencies: Option<&mut Vec<Duration>>,
) -> Duration {
    let stream = js.get_stream(DEFAULT_STREAM).await.unwrap();
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(raw_config(name, filter.to_owned()))
        .await
        .unwrap();
    let mut latencies = latencies;
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        let mut batch = consumer
            .batch()
            .max_messages(BATCH)
            .expires(Duration::from_millis(100))
            .messages()
            .await
            .unwrap();
        while let Some(Ok(m)) = batch.next().await {
            m.ack().await.unwrap();
            if let Some(l) = latencies.as_deref_mut() {
                let published_ns = m.info().unwrap().published.unix_timestamp_nanos();
                let now_ns = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as i128;
                l.push(Duration::from_nanos(
                    u64::try_from(now_ns - published_ns).unwrap_or(0),
                ));
            }
            done += 1;
        }
    }
    start.elapsed()
}

struct Weir {
    transport: Transport,
    app: weir_host::App,
}

async fn weir_pipeline(
    w: &Weir,
    app_name: &str,
    event: &str,
    shadow: Option<weir_host::App>,
) -> (AppPipeline, Arc<AppStats>) {
    let rules: Vec<RuleConfig> = vec![toml::from_str(&format!("event = \"{event}\"")).unwrap()];
    let filter = Filter::new(&rules, 1, DomainSet::default()).unwrap();
    let delivery = Delivery {
        max_ack_pending: 256,
        // The throughput rounds consume events published before the
        // consumer exists, as the raw consumer does.
        start: weir_host::nats::Start::All,
        ..Delivery::default()
    };
    let consumer = w
        .transport
        .consumer(
            &weir_host::nats::subjects::consumer_name(1, app_name),
            &filter.event_names(),
            &delivery,
            &weir_host::nats::KnownConsumers::default(),
        )
        .await
        .unwrap();
    let stats = Arc::new(AppStats::default());
    let observer = shadow.map(|candidate| {
        let (shadow, _task) =
            weir_host::canary::shadow::Shadow::start(candidate, stats.clone(), None);
        shadow as Arc<dyn weir_host::pipeline::Observer>
    });
    let pipeline = AppPipeline::new(
        w.app.clone(),
        1,
        filter,
        consumer,
        w.transport.clone(),
        Arc::new(EffectRunner::new(Default::default(), None)),
        stats.clone(),
    )
    .with_delivery(delivery)
    .with_observer(observer)
    .with_max_payload_bytes(1 << 20);
    (pipeline, stats)
}

/// weir: the app's pipeline until `n` events are done; returns elapsed.
async fn weir_consume(
    w: &Weir,
    app_name: &str,
    event: &str,
    n: u64,
    shadow: Option<weir_host::App>,
) -> (Duration, Arc<AppStats>) {
    let (pipeline, stats) = weir_pipeline(w, app_name, event, shadow).await;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let start = Instant::now();
    let task = tokio::spawn(pipeline.run(stop_rx));
    while stats.outcome_done.get() < n {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = start.elapsed();
    stop.send(true).unwrap();
    task.await.unwrap();
    (elapsed, stats)
}

/// This process's CPU time so far, user + system (`/proc/self/stat`,
/// fields 14 and 15, in clock ticks of 10 ms: `sysconf(_SC_CLK_TCK)` is 100
/// on Linux).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) may hold spaces: count after its `)`.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// Start exporting to `endpoint` as `weir run` would with
/// `OTEL_EXPORTER_OTLP_ENDPOINT` set and the defaults.
fn start_export(endpoint: &str) -> weir_edge::telemetry::Telemetry {
    let config = weir_edge::telemetry::TelemetryConfig {
        endpoint: Some(endpoint.to_owned()),
        ..Default::default()
    };
    let settings = weir_edge::telemetry::Settings::resolve(&config, &|_| None)
        .unwrap()
        .unwrap();
    weir_edge::telemetry::Telemetry::start(&settings, Vec::new()).unwrap()
}

/// Run `round` on a runtime of its own whose threads (and this one) have
/// the subscriber `weir run` has: info logs, and `telemetry`'s layer when
/// given.
fn traced_round<F, Fut>(telemetry: Option<&weir_edge::telemetry::Telemetry>, round: F) -> Duration
where
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = Duration> + Send,
{
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    // As `weir run` has it: info logs (to nowhere here), and with export
    // on, the trace layer beside them.
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::sink)
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    let traces = telemetry.map(|t| {
        t.layer().with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("weir_host", tracing::Level::INFO),
        )
    });
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(traces).with(logs));
    let on_threads = dispatch.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            std::mem::forget(tracing::dispatcher::set_default(&on_threads));
        })
        .build()
        .unwrap();
    std::thread::scope(|scope| {
        scope
            .spawn(|| tracing::dispatcher::with_default(&dispatch, || runtime.block_on(round())))
            .join()
            .unwrap()
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        // `cargo test --benches`: this bench needs minutes and a server.
        println!("e2e: skipped in test mode");
        return;
    }
    let (server, _dir) = weir_test_support::nats::server();
    rt().block_on(async {
        let transport = weir_test_support::nats::publisher(&server.url()).await.unwrap();
        let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
        let runtime = Runtime::new(EngineConfig::default()).unwrap();
        let spec = AppSpec { limits: Limits { max_batch: BATCH, ..Limits::default() }, ..AppSpec::new("echo", 1, "node1") };
        let app = runtime.deploy_file(spec, weir_test_artifacts::ECHO.as_ref()).unwrap();
        let w = Weir { transport, app };

        println!("throughput: {EVENTS} events, batches of {BATCH}, ack each (median of {ROUNDS}):");
        let (mut raw, mut weir) = (Vec::new(), Vec::new());
        for r in 0..ROUNDS {
            let subject = format!("weir.events.t{r}.cluster");
            publish_burst(&js, &subject, EVENTS, &format!("t{r}")).await;
            raw.push(raw_consume(&js, &format!("raw{r}"), &subject, EVENTS, None).await);
            let (elapsed, stats) =
                weir_consume(&w, &format!("app{r}"), &format!("t{r}"), EVENTS as u64, None).await;
            assert_eq!(stats.received.get(), EVENTS as u64);
            weir.push(elapsed);
        }
        let (raw, weir) = (median(raw), median(weir));
        let rate = |d: Duration| EVENTS as f64 / d.as_secs_f64();
        println!(
            "  raw async-nats floor: {:>9.0} events/s\n  weir (filter, fresh sandbox per batch, ack): {:>9.0} events/s\n  ratio weir/raw: {:.2} (target ≥ 0.90)",
            rate(raw),
            rate(weir),
            rate(weir) / rate(raw)
        );

        println!(
            "\nshadow run: {EVENTS} events, batches of {BATCH}, a candidate (echo) beside the live version (median of {ROUNDS}):"
        );
        let candidate = runtime
            .deploy_file(
                AppSpec { limits: Limits { max_batch: BATCH, ..Limits::default() }, ..AppSpec::new("echo", 1, "node1") },
                weir_test_artifacts::ECHO.as_ref(),
            )
            .unwrap();
        let (mut alone, mut beside) = (Vec::new(), Vec::new());
        for r in 0..ROUNDS {
            for (shadow, out) in [(false, &mut alone), (true, &mut beside)] {
                let tag = format!("s{}{r}", u8::from(shadow));
                let subject = format!("weir.events.{tag}.cluster");
                publish_burst(&js, &subject, EVENTS, &tag).await;
                let cpu = cpu_time();
                let (elapsed, stats) = weir_consume(
                    &w,
                    &format!("app{tag}"),
                    &tag,
                    EVENTS as u64,
                    shadow.then(|| candidate.clone()),
                )
                .await;
                // The candidate's queue drained: every batch run or skipped.
                while shadow
                    && stats.shadow_batches.get() + stats.shadow_skipped_batches.get()
                        < stats.batches.get()
                {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let cpu = cpu_time() - cpu;
                out.push((elapsed, cpu, stats.shadow_batches.get(), stats.shadow_skipped_batches.get()));
            }
        }
        let pick = |v: &mut Vec<(Duration, Duration, u64, u64)>| {
            v.sort_by_key(|x| x.0);
            v[v.len() / 2]
        };
        let (a, b) = (pick(&mut alone), pick(&mut beside));
        let per_event = |d: Duration| d.as_secs_f64() * 1e6 / EVENTS as f64;
        println!(
            "  live version alone: {:>9.0} events/s, {:.1} µs CPU per event\n  with the shadow candidate: {:>9.0} events/s, {:.1} µs CPU per event ({} batches run, {} skipped)\n  ratio with/alone: throughput {:.2}, CPU {:.2}",
            rate(a.0),
            per_event(a.1),
            rate(b.0),
            per_event(b.1),
            b.2,
            b.3,
            rate(b.0) / rate(a.0),
            per_event(b.1) / per_event(a.1),
        );

        println!(
            "\ntraces: {EVENTS} events with a traceparent each, batches of {BATCH}, OTLP export off and on (sampling 100%), alternating (median of {TRACE_ROUNDS}):"
        );
        let collector = weir_test_support::otlp::Collector::discarding();
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for r in 0..TRACE_ROUNDS {
            // Alternating which goes first: a round runs after the other's
            // on a server still settling its acks.
            let order = if r % 2 == 0 { [false, true] } else { [true, false] };
            for export in order {
                let out = if export { &mut on } else { &mut off };
                let tag = format!("o{}{r}", u8::from(export));
                let subject = format!("weir.events.{tag}.cluster");
                publish_burst_with(&js, &subject, EVENTS, &tag, true).await;
                let telemetry = export.then(|| start_export(&collector.endpoint()));
                let cpu = cpu_time();
                let elapsed = {
                    let w = &w;
                    let tag = tag.clone();
                    tokio::task::block_in_place(|| {
                        traced_round(telemetry.as_ref(), move || async move {
                            weir_consume(w, &format!("app{tag}"), &tag, EVENTS as u64, None).await.0
                        })
                    })
                };
                if let Some(t) = telemetry {
                    t.shutdown();
                }
                out.push((elapsed, cpu_time() - cpu));
            }
        }
        let traces = weir_edge::telemetry::stats();
        let pick = |v: &mut Vec<(Duration, Duration)>| {
            v.sort_by_key(|x| x.0);
            v[v.len() / 2]
        };
        let (a, b) = (pick(&mut off), pick(&mut on));
        println!(
            "  export off: {:>9.0} events/s, {:.1} µs CPU per event\n  export on:  {:>9.0} events/s, {:.1} µs CPU per event ({} spans exported, {} dropped, {} failed; {} KiB sent)\n  ratio on/off: throughput {:.2} (target ≥ 0.95), CPU {:.2}",
            rate(a.0),
            per_event(a.1),
            rate(b.0),
            per_event(b.1),
            traces.exported,
            traces.dropped,
            traces.failed,
            collector.bytes() / 1024,
            rate(b.0) / rate(a.0),
            per_event(b.1) / per_event(a.1),
        );

        println!("\nlatency: {RATE} events/s for {LATENCY_SECS} s, publish timestamp → settled:");
        let n = (RATE * LATENCY_SECS) as usize;
        let interval = Duration::from_micros(1_000_000 / RATE);
        // Raw: consumer running while the publisher paces events.
        let mut raw_lat = Vec::with_capacity(n);
        let publisher = {
            let js = js.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                for i in 0..n {
                    tick.tick().await;
                    js.publish("weir.events.lraw.cluster", format!("{i}").into()).await.unwrap().await.unwrap();
                }
            })
        };
        raw_consume(&js, "lraw", "weir.events.lraw.cluster", n, Some(&mut raw_lat)).await;
        publisher.await.unwrap();
        // weir: the pipeline records publish → settle latency in its stats.
        let (pipeline, stats) = weir_pipeline(&w, "lweir", "lweir", None).await;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(pipeline.run(stop_rx));
        let mut tick = tokio::time::interval(interval);
        for i in 0..n {
            tick.tick().await;
            js.publish("weir.events.lweir.cluster", format!("{i}").into()).await.unwrap().await.unwrap();
        }
        while stats.outcome_done.get() < n as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.send(true).unwrap();
        task.await.unwrap();
        let weir_p = stats.settle_latency.quantiles(&[0.5, 0.99]);
        let raw_p50 = percentile(&mut raw_lat, 0.5);
        let raw_p99 = percentile(&mut raw_lat, 0.99);
        // Adaptive linger (the default): a lone event is not held for
        // batch-mates, so the bar is the raw floor plus 2 ms.
        let bar = raw_p99 + Duration::from_millis(2);
        println!(
            "  raw async-nats floor: p50 {:.2} ms, p99 {:.2} ms\n  weir (default limits, adaptive linger): p50 ≤ {:.2} ms, p99 ≤ {:.2} ms (histogram bucket upper bounds)\n  weir p99 - raw p99: {:.2} ms; target: weir p99 ≤ raw p99 + 2 ms = {:.2} ms",
            raw_p50.as_secs_f64() * 1e3,
            raw_p99.as_secs_f64() * 1e3,
            weir_p[0].as_secs_f64() * 1e3,
            weir_p[1].as_secs_f64() * 1e3,
            (weir_p[1].as_secs_f64() - raw_p99.as_secs_f64()) * 1e3,
            bar.as_secs_f64() * 1e3,
        );
    });
}
