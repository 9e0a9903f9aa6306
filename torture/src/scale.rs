//! Many apps on one host: 1,000 apps, each with one rule over 3 event names,
//! one event per (app, name) from an external publisher, at the default
//! engine config (the shape of a broker test with 1,000 topics × 3
//! partitions). The host runs as its own process at `weir run`'s default
//! log level, so its RSS and log bytes are its own.
//!
//! Judged: every event received and invoked on its first delivery (no
//! redelivery weir did not ask for, no dead letter), all within 30 s of the
//! first publish, RSS after the traffic at most 1.5 × idle, at most 200 log
//! bytes per event; and the host stops within its shutdown bound.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_host::nats::NatsServer;
use weir_host::nats::Transport;
use weir_host::nats::subjects::Subjects;

use crate::report::Report;
use weir_test_support::config::{AppBuilder, ConfigBuilder};
use weir_test_support::http_get;

use crate::util::{mib, rss_bytes, wait_for};

/// Apps on the host: 1,000.
const APPS: usize = 1_000;
/// Event names per app: 3.
pub(crate) const NAMES: [&str; 3] = ["a", "b", "c"];
/// Bar on first publish → last event invoked: 30 s.
const SETTLE_BAR: Duration = Duration::from_secs(30);
/// Bar on RSS after the traffic, as a multiple of idle: 1.5.
const RSS_BAR: f64 = 1.5;
/// Bar on host log bytes per event: 200.
const LOG_BAR: u64 = 200;

/// `weir.toml` of the scale host.
fn config(url: &str, http: SocketAddr, cache: &std::path::Path) -> ConfigBuilder {
    let cache = cache.to_owned();
    with_apps(
        ConfigBuilder::new(1, url)
            .http(http)
            .engine(|e| e.cache_dir = Some(cache)),
        APPS,
    )
}

/// `host` with `apps` apps `t0000`, `t0001`, …, each listening to its own
/// [`NAMES`] (`t0000-a`, …).
pub(crate) fn with_apps(host: ConfigBuilder, apps: usize) -> ConfigBuilder {
    (0..apps).fold(host, |host, i| {
        let events: Vec<String> = NAMES.iter().map(|n| format!("t{i:04}-{n}")).collect();
        let events: Vec<&str> = events.iter().map(String::as_str).collect();
        host.app(AppBuilder::new(&format!("t{i:04}"), weir_test_artifacts::ECHO).events(&events))
    })
}

/// Publish one event on each name of each of `apps` apps ([`with_apps`]),
/// all at once; how many the stream refused.
pub(crate) async fn publish_one_each(publisher: &Transport, apps: usize) -> usize {
    publish_round(publisher, apps, 0).await.len()
}

/// Publish one event on each name of each of `apps` apps, round `round`
/// (its message ids differ from other rounds'), all at once; the names the
/// stream refused.
pub(crate) async fn publish_round(publisher: &Transport, apps: usize, round: u32) -> Vec<String> {
    let names = (0..apps).flat_map(|i| NAMES.map(|n| format!("t{i:04}-{n}")));
    publish_names(publisher, names, round).await
}

/// Publish one event on each of `names`, round `round`, all at once; the
/// names the stream refused.
pub(crate) async fn publish_names(
    publisher: &Transport,
    names: impl IntoIterator<Item = String>,
    round: u32,
) -> Vec<String> {
    let publishes = names.into_iter().map(|name| {
        let p = publisher.clone();
        async move {
            let id = if round == 0 {
                name.clone()
            } else {
                format!("{name}.{round}")
            };
            let stored = p
                .publish_event(&name, "cluster", Bytes::from_static(b"hello"), &id)
                .await;
            (name, stored.is_ok())
        }
    });
    futures::future::join_all(publishes)
        .await
        .into_iter()
        .filter_map(|(name, ok)| (!ok).then_some(name))
        .collect()
}

/// Sums of every app's counters in `/stats`.
#[derive(Debug, Default)]
struct Totals {
    received: u64,
    invoked: u64,
    unrequested: u64,
    dead: u64,
}

async fn totals(addr: SocketAddr) -> Option<Totals> {
    let (_, body) = http_get(addr, "/stats").await?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let mut t = Totals::default();
    for app in v["apps"].as_array()? {
        let get = |k: &str| app[k].as_u64().unwrap_or(0);
        t.received += get("received");
        t.invoked += get("invoked_events");
        t.unrequested += get("redeliveries_unrequested");
        t.dead += get("dead_letters");
    }
    Some(t)
}

/// Run the scenario.
pub async fn run(report: &mut Report) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = NatsServer::start(&dir.path().join("js"))?;
    let http = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let path = dir.path().join("weir.toml");
    config(&server.url(), http, &dir.path().join("cache")).write(&path)?;
    let log_path = dir.path().join("host.log");
    let log = std::fs::File::create(&log_path)?;
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe()?)
        .args(["host", "--config"])
        .arg(&path)
        // `weir run`'s default filter: lifecycle at info.
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let pid = child.id();
    let mut healthy = false;
    while started.elapsed() < Duration::from_secs(120) && !healthy {
        healthy = matches!(http_get(http, "/ready").await, Some((200, _)));
        if child.try_wait()?.is_some() {
            anyhow::bail!("scale host exited: {}", std::fs::read_to_string(&log_path)?);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(healthy, "scale host not healthy within 120 s");
    let to_healthy = started.elapsed();
    // Idle: every pull has been renewed past a heartbeat.
    tokio::time::sleep(weir_host::nats::PULL_HEARTBEAT + Duration::from_secs(1)).await;
    let idle = rss_bytes(Some(pid));
    let log_before = std::fs::metadata(&log_path)?.len();
    let publisher = Transport::connect(
        &server.url(),
        "scale-publisher",
        Subjects::default(),
        "WEIR_EVENTS",
    )
    .await?;
    publisher.wait_connected().await;
    let expected = (APPS * NAMES.len()) as u64;
    let first_publish = Instant::now();
    let refused = publish_one_each(&publisher, APPS).await;
    let mut last = Totals::default();
    let mut settled = None;
    while first_publish.elapsed() < Duration::from_secs(120) {
        if let Some(t) = totals(http).await {
            let done = t.invoked >= expected;
            last = t;
            if done {
                settled = Some(first_publish.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let late redeliveries show, if any.
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Some(t) = totals(http).await {
        last = t;
    }
    let after = rss_bytes(Some(pid));
    let log_bytes = std::fs::metadata(&log_path)?.len() - log_before;
    let stop = Instant::now();
    // The child's `host` mode drains on SIGINT, as `weir run` does on SIGTERM.
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    let bound = weir_host::daemon::DRAIN_TIMEOUT + weir_host::daemon::SHUTDOWN_SLACK;
    let exited = wait_for(bound + Duration::from_secs(5), || {
        child.try_wait().ok().flatten().is_some()
    })
    .await;
    let stopped_in = stop.elapsed();
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    let injected = format!(
        "{APPS} apps × {} event names, one event each ({expected}), default engine config; healthy in {:.1} s",
        NAMES.len(),
        to_healthy.as_secs_f64()
    );
    report.check(
        "scale: received = invoked",
        &injected,
        format!(
            "{} received, {} invoked of {expected} ({refused} publishes refused)",
            last.received, last.invoked
        ),
        &format!("{expected} = {expected}"),
        refused == 0 && last.received == expected && last.invoked == expected,
    );
    report.check(
        "scale: redeliveries weir did not ask for",
        &injected,
        format!("{} ({} dead letters)", last.unrequested, last.dead),
        "0",
        last.unrequested == 0 && last.dead == 0,
    );
    report.check(
        "scale: first publish → last invoked",
        &injected,
        settled.map_or("never".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
        &format!("≤ {} s", SETTLE_BAR.as_secs()),
        settled.is_some_and(|d| d <= SETTLE_BAR),
    );
    report.check(
        "scale: host RSS idle → after",
        &injected,
        format!(
            "{} → {} ({:.2}×)",
            mib(idle),
            mib(after),
            after as f64 / idle.max(1) as f64
        ),
        &format!("≤ {RSS_BAR} × idle"),
        after as f64 <= idle as f64 * RSS_BAR,
    );
    report.check(
        "scale: host log bytes",
        &injected,
        format!(
            "{log_bytes} B for {expected} events ({:.1} B/event)",
            log_bytes as f64 / expected as f64
        ),
        &format!("≤ {LOG_BAR} B/event"),
        log_bytes <= LOG_BAR * expected,
    );
    report.check(
        "scale: SIGINT → exit (drain)",
        &injected,
        format!("{:.2} s", stopped_in.as_secs_f64()),
        &format!(
            "≤ drain {} s + {} s",
            weir_host::daemon::DRAIN_TIMEOUT.as_secs(),
            weir_host::daemon::SHUTDOWN_SLACK.as_secs()
        ),
        exited && stopped_in <= bound,
    );
    drop(server);
    Ok(())
}
