//! Storms side by side: what a storm costs with weir against what NS8 runs
//! today, at 10, 100 and 1,000 apps; then weir's scaling curve.
//!
//! One run, the same events, four dispatchers:
//!
//! 1. **NS8 today**: for every event and every handler NS8 runs for it, a
//!    fork and exec of `python3 storm/ns8_handler.py` (payload on stdin,
//!    identity in the environment, the `mail` example's decision), one at a
//!    time, as NS8's agent runs event handler scripts. Rows with more than
//!    [`NS8_MAX_SPAWNS`] handler runs run that many and scale CPU and wall
//!    linearly to the full count (marked `~`; every spawn costs the same).
//! 2. **weir**: a real host process (`weir_host::Daemon`, what `weir run`
//!    runs) on a private nats-server, the apps' pre-filter rules, default
//!    settings; the events are published to JetStream after the host is
//!    ready.
//! 3. **weir, no pre-filter**: the same with each rule cut to its event
//!    names, so every delivery is invoked and the handler decides.
//! 4. **warm instance**: one long-lived instance per app on weir's engine
//!    (on-demand allocation, as a pool of 64 slots cannot hold 1,000 live
//!    instances), in-process, no NATS, the same pre-filter, one call per
//!    relevant event: the model of hosts that reuse instances.
//!
//! Workloads: node 1 of the NS8 node-join corpus (`examples/ns8`, legacy
//! and batched: NS8's handler runs are the corpus's `deliveries.jsonl`), and
//! a synthetic storm of [`SYNTH_EVENTS`] events over 3 names that every app
//! subscribes to, each event naming one app's domain, at 10, 100 and 1,000
//! apps.
//!
//! Figures: CPU (user + sys, `getrusage` of the dispatcher's process with
//! its waited-for children, from the first publish to settled for weir; the
//! host's idle pulls in that time included), wall time to settle, peak RSS
//! of the dispatcher process (the largest of it and its children), handler
//! invocations (processes, sandboxes, calls) and the CPU ratio to weir.
//! nats-server's CPU over the same time is a separate column.
//!
//! Scaling curve, weir alone: apps 10 → 100 → 1,000, events 1k → 10k →
//! 100k (each app on 3 names of its own, events spread evenly, published as
//! fast as JetStream stores them): CPU per event, idle RSS, start time and
//! p99 publish → settled (from the hosts' `weir_settle_latency_seconds`).
//!
//! Run: `cargo bench -p weir-benches --bench storm` (about 8 minutes here);
//! `-- --only side|scaling`, `--apps 10,1000`, `--events 1000` and
//! `--store DIR` (where nats-server keeps JetStream) run a part. `cargo
//! test --benches` (no `--bench`) or `cargo bench -- --test` (CI): the NS8 legacy corpus, 10 apps
//! × 30 events and one scaling row (about 8 s), as a check that it works.
//! Needs `nats-server` and `python3`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use nix::sys::resource::{UsageWho, getrusage};
use weir_host::config::Config;
use weir_host::corpus::{CorpusEvent, Delivery};
use weir_host::envelope::{self, EventMeta};
use weir_host::filter::{Filter, Verdict};
use weir_host::nats::subjects::Subjects;
use weir_host::nats::{NatsServer, Transport};
use weir_host::raw::{self, HandlerPre, RawState};
use weir_host::{DomainSet, EngineConfig, Event, Runtime};
use weir_test_support::config::{AppBuilder, ConfigBuilder};
use weir_test_support::http_get;

/// Apps of the synthetic storm's rows.
const SYNTH_APPS: [usize; 3] = [10, 100, 1_000];
/// Events of the synthetic storm.
const SYNTH_EVENTS: usize = 300;
/// The synthetic storm's event names; every app subscribes to all three
/// (NS8's model: each app has handlers for the names it cares about).
const SYNTH_NAMES: [&str; 3] = [
    "user-domain-changed",
    "domain-settings-changed",
    "domain-users-changed",
];
/// Handler runs of the NS8 dispatcher per row; beyond it, CPU and wall are
/// scaled linearly (each run is one more identical process).
const NS8_MAX_SPAWNS: usize = 300;
/// Scaling curve: apps.
const SCALE_APPS: [usize; 3] = [10, 100, 1_000];
/// Scaling curve: events.
const SCALE_EVENTS: [usize; 3] = [1_000, 10_000, 100_000];
/// Publishes in flight at once.
const PUBLISH_WINDOW: usize = 512;
/// How long a weir run may take to settle before the bench fails.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a host may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Where nats-server keeps JetStream (`--store DIR`); default the run's
/// temporary directory.
static STORE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
/// The node every workload runs on.
const NODE: u32 = 1;

// ---------------------------------------------------------------- usage

/// CPU (user + sys) and peak RSS, as `getrusage` reports them.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct Usage {
    cpu_us: u64,
    maxrss_kib: u64,
}

/// CPU of `who`; the peak RSS is this process's own (`VmHWM`): a child's
/// `ru_maxrss` starts at its parent's RSS, which survives `exec`.
fn rusage(who: UsageWho) -> Usage {
    let r = getrusage(who).expect("getrusage");
    let us = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    Usage {
        cpu_us: us(r.user_time()) + us(r.system_time()),
        maxrss_kib: match who {
            UsageWho::RUSAGE_SELF => status_kib("self", "VmHWM:"),
            _ => r.max_rss() as u64,
        },
    }
}

/// A `/proc/<pid>/status` figure in KiB (`VmRSS:`, `VmHWM:`).
fn status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// This process and its waited-for children (whose `ru_maxrss` is right:
/// they were forked from this small process).
fn usage_with_children() -> Usage {
    let own = rusage(UsageWho::RUSAGE_SELF);
    let children = rusage(UsageWho::RUSAGE_CHILDREN);
    Usage {
        cpu_us: own.cpu_us + children.cpu_us,
        maxrss_kib: own.maxrss_kib.max(children.maxrss_kib),
    }
}

/// CPU of process `pid` from `/proc/<pid>/stat` (clock ticks, 10 ms here).
fn proc_cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as u64;
    ticks * 1_000_000 / hz
}

/// Resident set of process `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    status_kib(&pid.to_string(), "VmRSS:")
}

// ------------------------------------------------------------ workloads

/// One event as published.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Ev {
    name: String,
    source: String,
    payload: String,
}

/// One NS8 handler run: event `event` for an app (`domains`) or a node
/// agent (`domains` empty, `node_agent`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Ns8Run {
    event: usize,
    node_agent: bool,
    domains: Vec<String>,
}

struct Workload {
    label: String,
    events: Vec<Ev>,
    /// The node's config with the pre-filter rules; [`write_config`] points
    /// it at a run's server, HTTP address and cache.
    config: Config,
    ns8: Vec<Ns8Run>,
}

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/ns8")
}

/// Node 1 of an NS8 corpus scenario.
fn corpus_workload(scenario: &str) -> Workload {
    let dir = examples();
    let topology = weir_host::corpus::read_topology(&dir.join("topology.json")).unwrap();
    let rules = std::fs::read_to_string(dir.join("rules.toml")).unwrap();
    let text =
        weir_test_support::ns8::node_config(NODE, "nats://127.0.0.1:4222", 0, &topology, &rules);
    let config = Config::parse(&text).unwrap();
    let corpus: Vec<CorpusEvent> =
        weir_host::corpus::read_jsonl(&dir.join(scenario).join("events.jsonl")).unwrap();
    let index: BTreeMap<u64, usize> = corpus.iter().enumerate().map(|(i, e)| (e.seq, i)).collect();
    let deliveries: Vec<Delivery> =
        weir_host::corpus::read_jsonl(&dir.join(scenario).join("deliveries.jsonl")).unwrap();
    // NS8's handler runs on this node: its node agent's and its apps'.
    let node_agent = format!("node/{NODE}");
    let ns8 = deliveries
        .iter()
        .filter(|d| d.handler_runs)
        .filter_map(|d| {
            let app = topology
                .apps
                .iter()
                .find(|a| a.node == NODE && d.agent == format!("module/{}", a.name));
            (app.is_some() || d.agent == node_agent).then(|| Ns8Run {
                event: index[&d.seq],
                node_agent: app.is_none(),
                domains: app.map(|a| vec![a.domain.clone()]).unwrap_or_default(),
            })
        })
        .collect();
    Workload {
        label: format!("NS8 {scenario}, node {NODE}"),
        events: corpus
            .iter()
            .map(|e| Ev {
                name: e.name.clone(),
                source: e.source.clone(),
                payload: e.payload.clone(),
            })
            .collect(),
        config,
        ns8,
    }
}

fn synth_domain(app: usize) -> String {
    format!("d{app:04}.example.org")
}

/// `apps` apps on [`SYNTH_NAMES`], `events` cluster-wide events each naming
/// one app's domain.
fn synthetic_workload(apps: usize, events: usize) -> Workload {
    let names: Vec<&str> = SYNTH_NAMES.to_vec();
    let config = (0..apps)
        .fold(ConfigBuilder::new(NODE, "nats://127.0.0.1:4222"), |c, i| {
            let list: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
            c.app(
                AppBuilder::new(&format!("app{i:04}"), weir_test_artifacts::MAIL)
                    .domains(&[&synth_domain(i)])
                    .rule(&format!(
                        "event = [{}]\nsource = \"cluster\"\ndomains = \"mine\"",
                        list.join(", ")
                    ))
                    .restart(&["dovecot.service", "postfix.service"]),
            )
        })
        .build();
    let evs: Vec<Ev> = (0..events)
        .map(|j| Ev {
            name: names[j % names.len()].to_owned(),
            source: "cluster".to_owned(),
            payload: format!("{{\"domains\": [\"{}\"]}}", synth_domain((j * 7) % apps)),
        })
        .collect();
    let ns8 = (0..events)
        .flat_map(|event| {
            (0..apps).map(move |app| Ns8Run {
                event,
                node_agent: false,
                domains: vec![synth_domain(app)],
            })
        })
        .collect();
    Workload {
        label: format!("synthetic, {apps} apps × 3 names, {events} events"),
        events: evs,
        config,
        ns8,
    }
}

/// The workload's config with each rule cut to its event names.
fn without_prefilter(config: &Config) -> Config {
    let mut c = config.clone();
    for app in &mut c.apps {
        for rule in &mut app.rule {
            *rule = toml::from_str(&format!(
                "event = {}",
                toml::Value::from(rule.event.to_vec())
            ))
            .unwrap();
        }
    }
    c
}

/// Write `config` for the server at `url`, HTTP on `http`, compiled
/// components cached in `cache`.
fn write_config(config: &Config, url: &str, http: std::net::SocketAddr, cache: &Path, to: &Path) {
    let mut c = config.clone();
    c.nats.url = Some(url.to_owned());
    c.nats.urls = None;
    c.http.enabled = true;
    c.http.listen = http;
    c.engine.cache_dir = Some(cache.to_owned());
    std::fs::write(to, toml::to_string(&c).unwrap()).unwrap();
}

// ---------------------------------------------------------- dispatchers

/// One row of the side-by-side table.
#[derive(Debug, Clone)]
struct Row {
    dispatcher: &'static str,
    cpu_us: u64,
    wall: Duration,
    maxrss_kib: u64,
    invocations: u64,
    /// Events the handlers saw (weir: invoked events).
    events_invoked: u64,
    nats_cpu_us: Option<u64>,
    /// Measured share of the handler runs, if scaled.
    scaled_from: Option<(usize, usize)>,
}

/// What the NS8 child prints.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Ns8Report {
    spawns: usize,
    total: usize,
    restarts: usize,
    wall_us: u64,
    usage: Usage,
}

fn ns8_row(w: &Workload, dir: &Path, max_spawns: usize) -> Row {
    let jobs = dir.join("ns8.json");
    std::fs::write(&jobs, serde_json::to_vec(&(&w.events, &w.ns8)).unwrap()).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["ns8", &jobs.display().to_string(), &max_spawns.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "the NS8 dispatcher failed");
    let r: Ns8Report = serde_json::from_slice(&out.stdout).unwrap();
    let scale = r.total as f64 / r.spawns.max(1) as f64;
    Row {
        dispatcher: "NS8 (fork/exec python per event per app)",
        cpu_us: (r.usage.cpu_us as f64 * scale) as u64,
        wall: Duration::from_micros((r.wall_us as f64 * scale) as u64),
        maxrss_kib: r.usage.maxrss_kib,
        invocations: r.total as u64,
        events_invoked: r.total as u64,
        nats_cpu_us: None,
        scaled_from: (r.spawns < r.total).then_some((r.spawns, r.total)),
    }
}

/// The system's `/usr/bin/python3` (what NS8's agent runs), else `python3`
/// from `PATH` (a version manager's shim can cost 5× per spawn).
fn python() -> PathBuf {
    let system = PathBuf::from("/usr/bin/python3");
    if system.exists() {
        system
    } else {
        PathBuf::from("python3")
    }
}

/// The NS8 dispatcher's process: run the handler runs in order, one
/// `python3` per run, up to `max`.
fn ns8_main(jobs: &Path, max: usize) -> ExitCode {
    let (events, runs): (Vec<Ev>, Vec<Ns8Run>) =
        serde_json::from_slice(&std::fs::read(jobs).unwrap()).unwrap();
    let handler = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("storm/ns8_handler.py");
    let start = Instant::now();
    let mut restarts = 0;
    let mut spawns = 0;
    for run in runs.iter().take(max) {
        let e = &events[run.event];
        let mut child = Command::new(python())
            .arg(&handler)
            .env("AGENT_EVENT_NAME", &e.name)
            .env("AGENT_EVENT_SOURCE", &e.source)
            .env("NODE_ID", NODE.to_string())
            .env("APP_KIND", if run.node_agent { "node" } else { "app" })
            .env("APP_DOMAINS", run.domains.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(e.payload.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "ns8_handler.py failed");
        restarts += usize::from(out.stdout.starts_with(b"restart"));
        spawns += 1;
    }
    let report = Ns8Report {
        spawns,
        total: runs.len(),
        restarts,
        wall_us: start.elapsed().as_micros() as u64,
        usage: usage_with_children(),
    };
    println!("{}", serde_json::to_string(&report).unwrap());
    ExitCode::SUCCESS
}

/// A weir host process: `current_exe host --config FILE`; stdin lines
/// `usage` are answered with its [`Usage`] on stdout; EOF stops it.
struct Host {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    started_in: Duration,
}

impl Host {
    async fn start(config: &Path, http: std::net::SocketAddr) -> Self {
        let started = Instant::now();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["host", &config.display().to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        loop {
            if matches!(http_get(http, "/ready").await, Some((200, _))) {
                break;
            }
            assert!(child.try_wait().unwrap().is_none(), "host exited");
            assert!(started.elapsed() < READY_TIMEOUT, "host not ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            child,
            stdin,
            stdout,
            started_in: started.elapsed(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn usage(&mut self) -> Usage {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(b"usage\n").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    fn stop(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "host exited with {status}");
    }
}

/// A tokio runtime with 2 workers (one per core here), as `weir run`'s.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The host process's main.
fn host_main(config: &Path) -> ExitCode {
    let config = Config::load(config).unwrap();
    let rt = runtime();
    rt.block_on(async {
        let host = weir_host::http::start(config.plan().expect("valid config"))
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                if line.is_err() {
                    break;
                }
                let u = rusage(UsageWho::RUSAGE_SELF);
                println!("{}", serde_json::to_string(&u).unwrap());
            }
            let _ = tx.send(());
        });
        let _ = rx.await;
        host.shutdown().await.unwrap();
    });
    ExitCode::SUCCESS
}

/// Sums over every app's `/stats`.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    received: u64,
    skipped: u64,
    invoked: u64,
    batches: u64,
}

async fn totals(http: std::net::SocketAddr) -> Option<Totals> {
    let (_, body) = http_get(http, "/stats").await?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let mut t = Totals::default();
    for app in v["apps"].as_array()? {
        let get = |k: &str| app[k].as_u64().unwrap_or(0);
        t.received += get("received");
        t.skipped += get("skipped");
        t.invoked += get("invoked_events");
        t.batches += get("batches");
    }
    Some(t)
}

/// p99 of publish → settled over every app, from `/metrics` (the bucket
/// upper bound), in ms.
async fn settle_p99_ms(http: std::net::SocketAddr) -> f64 {
    let (_, text) = http_get(http, "/metrics").await.unwrap();
    let mut by_le: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("weir_settle_latency_seconds_bucket{") else {
            continue;
        };
        let (labels, count) = rest.rsplit_once("} ").unwrap();
        let le = labels
            .split(',')
            .find_map(|l| l.strip_prefix("le=\""))
            .unwrap()
            .trim_end_matches('"');
        let bound: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap()
        };
        let entry = by_le.entry(bound.to_bits()).or_insert((bound, 0));
        entry.1 += count.parse::<u64>().unwrap();
    }
    let mut buckets: Vec<(f64, u64)> = by_le.into_values().collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0, |b| b.1);
    let want = (total as f64 * 0.99).ceil() as u64;
    buckets
        .iter()
        .find(|b| b.1 >= want)
        .map_or(f64::NAN, |b| b.0 * 1e3)
}

/// Deliveries the host must receive: each event once per app whose rules
/// name it.
fn expected_deliveries(config: &Config, events: &[Ev]) -> u64 {
    config
        .apps
        .iter()
        .map(|app| {
            let names: Vec<String> = app.rule.iter().flat_map(|r| r.event.to_vec()).collect();
            events.iter().filter(|e| names.contains(&e.name)).count() as u64
        })
        .sum()
}

/// What one weir run measured.
struct WeirRun {
    row: Row,
    start: Duration,
    idle_rss_kib: u64,
    p99_ms: f64,
}

async fn publish_all(url: &str, events: &[Ev], tag: &str) {
    let publisher = Transport::connect(url, "storm-publisher", Subjects::default(), "WEIR_EVENTS")
        .await
        .unwrap();
    publisher.wait_connected().await;
    let failed = futures::stream::iter(events.iter().enumerate())
        .map(|(i, e)| {
            let p = publisher.clone();
            async move {
                p.publish_event(
                    &e.name,
                    &e.source,
                    Bytes::from(e.payload.clone()),
                    &format!("{tag}-{i}"),
                )
                .await
            }
        })
        .buffer_unordered(PUBLISH_WINDOW)
        .filter(|r| std::future::ready(r.is_err()))
        .count()
        .await;
    assert_eq!(failed, 0, "publishes refused");
}

async fn weir_run(
    dispatcher: &'static str,
    config: &Config,
    events: &[Ev],
    dir: &Path,
    cache: &Path,
) -> WeirRun {
    let store = tempfile::tempdir_in(STORE.get().map_or(dir, PathBuf::as_path)).unwrap();
    let mut server = NatsServer::start(&store.path().join("js")).unwrap();
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let path = dir.join("weir.toml");
    write_config(config, &server.url(), http, cache, &path);
    let mut host = Host::start(&path, http).await;
    // Every consumer has made its first pull.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss_kib = rss_kib(host.pid());
    let expected = expected_deliveries(config, events);
    let nats_pid = server.pid().unwrap();
    let nats_before = proc_cpu_us(nats_pid);
    let before = host.usage();
    let first = Instant::now();
    publish_all(&server.url(), events, dispatcher).await;
    let mut last = Totals::default();
    loop {
        if let Some(t) = totals(http).await {
            last = t;
            if t.received >= expected && t.skipped + t.invoked >= t.received {
                break;
            }
        }
        assert!(
            first.elapsed() < SETTLE_TIMEOUT,
            "{dispatcher}: not settled: {last:?} of {expected}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = first.elapsed();
    let after = host.usage();
    let nats_cpu_us = proc_cpu_us(nats_pid).saturating_sub(nats_before);
    let p99_ms = settle_p99_ms(http).await;
    let start = host.started_in;
    host.stop();
    server.stop();
    WeirRun {
        row: Row {
            dispatcher,
            cpu_us: after.cpu_us - before.cpu_us,
            wall,
            maxrss_kib: after.maxrss_kib,
            invocations: last.batches,
            events_invoked: last.invoked,
            nats_cpu_us: Some(nats_cpu_us),
            scaled_from: None,
        },
        start,
        idle_rss_kib,
        p99_ms,
    }
}

/// What the warm-instance child prints.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct WarmReport {
    calls: u64,
    wall_us: u64,
    usage: Usage,
}

fn warm_row(w: &Workload, dir: &Path) -> Row {
    let config = dir.join("warm.toml");
    let events = dir.join("warm-events.json");
    std::fs::write(&config, toml::to_string(&w.config).unwrap()).unwrap();
    std::fs::write(&events, serde_json::to_vec(&w.events).unwrap()).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "warm",
            &config.display().to_string(),
            &events.display().to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "the warm dispatcher failed");
    let r: WarmReport = serde_json::from_slice(&out.stdout).unwrap();
    Row {
        dispatcher: "warm instance per app (in-process)",
        cpu_us: r.usage.cpu_us,
        wall: Duration::from_micros(r.wall_us),
        maxrss_kib: r.usage.maxrss_kib,
        invocations: r.calls,
        events_invoked: r.calls,
        nats_cpu_us: None,
        scaled_from: None,
    }
}

/// The warm dispatcher's process: one instance per app, built before the
/// clock starts; then each event through each subscribed app's filter and,
/// if relevant, one call.
fn warm_main(config: &Path, events: &Path) -> ExitCode {
    let config = Config::load(config).unwrap();
    let evs: Vec<Ev> = serde_json::from_slice(&std::fs::read(events).unwrap()).unwrap();
    let runtime = Runtime::new(EngineConfig {
        pooling: false,
        ..EngineConfig::default()
    })
    .unwrap();
    let linker = raw::linker(runtime.engine()).unwrap();
    let mut pres: BTreeMap<PathBuf, HandlerPre<RawState>> = BTreeMap::new();
    let mut apps = Vec::new();
    for app in &config.apps {
        let pre = pres.entry(app.component.clone()).or_insert_with(|| {
            let component =
                wasmtime::component::Component::from_file(runtime.engine(), &app.component)
                    .unwrap();
            HandlerPre::new(linker.instantiate_pre(&component).unwrap()).unwrap()
        });
        let domains = DomainSet::new(&app.domains).unwrap();
        let filter = Filter::new(&app.rule, config.node.id, domains.clone()).unwrap();
        let mut store =
            wasmtime::Store::new(runtime.engine(), RawState::for_app(config.node.id, domains));
        store.set_fuel(u64::MAX).unwrap();
        store.set_epoch_deadline(u64::MAX / 2);
        let handler = pre.instantiate(&mut store).unwrap();
        let names: Vec<String> = filter
            .event_names()
            .iter()
            .map(|n| (*n).to_owned())
            .collect();
        apps.push((filter, names, store, handler));
    }
    let start = Instant::now();
    let before = rusage(UsageWho::RUSAGE_SELF);
    let mut calls = 0;
    for (i, e) in evs.iter().enumerate() {
        let meta = EventMeta {
            id: format!("warm:{i}"),
            name: e.name.clone(),
            source: e.source.clone(),
            attempt: 1,
            sequence: i as u64,
            published_ms: 0,
        };
        let Ok(event): Result<Event, _> = envelope::event(
            meta,
            e.payload.as_bytes().to_vec(),
            envelope::DEFAULT_MAX_PAYLOAD_BYTES,
        ) else {
            continue;
        };
        for (filter, names, store, handler) in &mut apps {
            if names.contains(&event.name) && matches!(filter.check(&event), Verdict::Relevant(_)) {
                handler
                    .call_handle(&mut *store, std::slice::from_ref(&event))
                    .unwrap();
                calls += 1;
            }
        }
    }
    let after = rusage(UsageWho::RUSAGE_SELF);
    let report = WarmReport {
        calls,
        wall_us: start.elapsed().as_micros() as u64,
        usage: Usage {
            cpu_us: after.cpu_us - before.cpu_us,
            maxrss_kib: after.maxrss_kib,
        },
    };
    println!("{}", serde_json::to_string(&report).unwrap());
    ExitCode::SUCCESS
}

// ----------------------------------------------------------------- main

fn fmt_cpu(us: u64) -> String {
    if us >= 10_000_000 {
        format!("{:.0} s", us as f64 / 1e6)
    } else if us >= 1_000_000 {
        format!("{:.2} s", us as f64 / 1e6)
    } else {
        format!("{:.1} ms", us as f64 / 1e3)
    }
}

fn print_table(rows: &[(String, Vec<Row>)]) {
    println!();
    println!(
        "| workload | dispatcher | invocations (events) | CPU | × weir's CPU | nats-server CPU | wall to settle | peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (label, rows) in rows {
        let weir = rows.iter().find(|r| r.dispatcher == WEIR).map(|r| r.cpu_us);
        for r in rows {
            let scaled = r.scaled_from.map_or(String::new(), |(m, t)| {
                format!(" ~({m} of {t} run, scaled)")
            });
            let ratio = weir.map_or("-".to_owned(), |w| {
                format!("{:.1}×", r.cpu_us as f64 / w.max(1) as f64)
            });
            println!(
                "| {label} | {} | {} ({}) | {}{scaled} | {ratio} | {} | {:.2} s | {:.1} MiB |",
                r.dispatcher,
                r.invocations,
                r.events_invoked,
                fmt_cpu(r.cpu_us),
                r.nats_cpu_us.map_or("-".to_owned(), fmt_cpu),
                r.wall.as_secs_f64(),
                r.maxrss_kib as f64 / 1024.0,
            );
        }
    }
}

const WEIR: &str = "weir (pre-filter, batches)";
const WEIR_NO_FILTER: &str = "weir, no pre-filter";

async fn side_by_side(workloads: Vec<Workload>, max_spawns: usize, cache: &Path) {
    let mut table = Vec::new();
    for w in workloads {
        eprintln!("storm: {}", w.label);
        let dir = tempfile::tempdir().unwrap();
        let mut rows = Vec::new();
        rows.push(ns8_row(&w, dir.path(), max_spawns));
        let d = tempfile::tempdir().unwrap();
        rows.push(
            weir_run(WEIR, &w.config, &w.events, d.path(), cache)
                .await
                .row,
        );
        let d = tempfile::tempdir().unwrap();
        let plain = without_prefilter(&w.config);
        rows.push(
            weir_run(WEIR_NO_FILTER, &plain, &w.events, d.path(), cache)
                .await
                .row,
        );
        rows.push(warm_row(&w, dir.path()));
        for r in &rows {
            eprintln!(
                "  {:<45} {:>8} invocations  CPU {:>10}  wall {:>7.2} s",
                r.dispatcher,
                r.invocations,
                fmt_cpu(r.cpu_us),
                r.wall.as_secs_f64()
            );
        }
        table.push((w.label, rows));
    }
    print_table(&table);
}

/// `apps` apps with 3 names of their own, `events` events spread evenly.
fn scale_config(apps: usize) -> Config {
    (0..apps)
        .fold(ConfigBuilder::new(NODE, "nats://127.0.0.1:4222"), |c, i| {
            let names: Vec<String> = ["a", "b", "c"]
                .iter()
                .map(|n| format!("s{i:04}-{n}"))
                .collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            c.app(AppBuilder::new(&format!("s{i:04}"), weir_test_artifacts::ECHO).events(&names))
        })
        .build()
}

fn scale_events(apps: usize, events: usize) -> Vec<Ev> {
    (0..events)
        .map(|j| Ev {
            name: format!("s{:04}-{}", j % apps, ["a", "b", "c"][(j / apps) % 3]),
            source: "cluster".to_owned(),
            payload: "{}".to_owned(),
        })
        .collect()
}

async fn scaling(apps: &[usize], events: &[usize], cache: &Path) {
    let mut runs = Vec::new();
    for &a in apps {
        let config = scale_config(a);
        for &n in events {
            eprintln!("storm: scaling, {a} apps, {n} events");
            let d = tempfile::tempdir().unwrap();
            let run = weir_run("weir", &config, &scale_events(a, n), d.path(), cache).await;
            assert_eq!(run.row.events_invoked, n as u64, "every event invoked");
            runs.push((a, n, run));
        }
    }
    println!();
    println!(
        "| apps | events | CPU per event | CPU per batch | mean batch | nats-server CPU per event | wall to settle | p99 publish → settled | idle RSS | start to ready |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (a, n, run) in &runs {
        let batches = run.row.invocations.max(1) as f64;
        println!(
            "| {a} | {n} | {:.1} µs | {:.1} µs | {:.1} | {:.1} µs | {:.2} s | {:.1} ms | {:.1} MiB | {:.2} s |",
            run.row.cpu_us as f64 / *n as f64,
            run.row.cpu_us as f64 / batches,
            *n as f64 / batches,
            run.row.nats_cpu_us.unwrap_or(0) as f64 / *n as f64,
            run.row.wall.as_secs_f64(),
            run.p99_ms,
            run.idle_rss_kib as f64 / 1024.0,
            run.start.as_secs_f64(),
        );
    }
    // How each figure grows from the fewest apps to the most.
    let (&first, &last) = (apps.first().unwrap(), apps.last().unwrap());
    let at = |a: usize, n: usize| &runs.iter().find(|r| r.0 == a && r.1 == n).unwrap().2;
    if last == first {
        return;
    }
    println!();
    for &n in events {
        let (small, big) = (at(first, n), at(last, n));
        let per_batch = |r: &WeirRun| r.row.cpu_us as f64 / r.row.invocations.max(1) as f64;
        println!(
            "- {n} events: CPU per event at {last} apps is {:.2}× that at {first} apps, CPU per batch {:.2}×; p99 {:.1} → {:.1} ms",
            big.row.cpu_us as f64 / small.row.cpu_us.max(1) as f64,
            per_batch(big) / per_batch(small),
            small.p99_ms,
            big.p99_ms
        );
    }
    {
        let n = events[0];
        let (small, big) = (at(first, n), at(last, n));
        println!(
            "- idle RSS per app (slope from {first} to {last} apps): {:.1} KiB; start to ready {:.2} → {:.2} s",
            (big.idle_rss_kib as f64 - small.idle_rss_kib as f64) / (last - first) as f64,
            small.start.as_secs_f64(),
            big.start.as_secs_f64()
        );
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("host") => return host_main(Path::new(&args[1])),
        Some("ns8") => return ns8_main(Path::new(&args[1]), args[2].parse().unwrap()),
        Some("warm") => return warm_main(Path::new(&args[1]), Path::new(&args[2])),
        _ => {}
    }
    // `cargo test --benches` passes no `--bench`, `cargo bench -- --test`
    // passes `--test` (CI): a small check run.
    let quick = !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--test");
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    let list = |flag: &str, default: &[usize]| -> Vec<usize> {
        value(flag).map_or_else(
            || default.to_vec(),
            |v| v.split(',').map(|n| n.parse().expect("a number")).collect(),
        )
    };
    let only = value("--only");
    if let Some(store) = value("--store") {
        STORE.set(PathBuf::from(store)).unwrap();
    }
    // weir creates its cache directory with mode 0700.
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let rt = runtime();
    rt.block_on(async {
        if quick {
            side_by_side(
                vec![
                    corpus_workload("node-join-legacy"),
                    synthetic_workload(10, 30),
                ],
                20,
                &cache,
            )
            .await;
            scaling(&[10], &[1_000], &cache).await;
            return;
        }
        if only != Some("scaling") {
            let mut workloads = vec![
                corpus_workload("node-join-legacy"),
                corpus_workload("node-join-batched"),
            ];
            for a in list("--apps", &SYNTH_APPS) {
                workloads.push(synthetic_workload(a, SYNTH_EVENTS));
            }
            side_by_side(workloads, NS8_MAX_SPAWNS, &cache).await;
        }
        if only != Some("side") {
            let apps = list("--apps", &SCALE_APPS);
            let events = list("--events", &SCALE_EVENTS);
            scaling(&apps, &events, &cache).await;
        }
    });
    ExitCode::SUCCESS
}
