//! The NS8 node-join storm through real NATS JetStream and one weir host per
//! node.
//!
//! Two nodes join a 3-node NethServer 8 cluster with 25 user domains and 6
//! apps (`examples/ns8/`, real payload shapes). NS8 spawns a handler process
//! per event per app: 300 spawns for `user-domain-changed` and 12 service
//! restarts, none needed. This demo starts a private nats-server, one weir
//! host process per node (apps placed as in the corpus, rules from
//! `examples/ns8/rules.toml`, the `mail` example as each app's handler and
//! `echo` as each node agent's), replays each corpus, reads every host's
//! `/stats`, and prints the comparison. The apps debounce their restarts
//! (`[app.effects] debounce_ms` in `rules.toml`): a storm costs at most one
//! restart per service per node, executed when the storm has been quiet for
//! the window. Each scenario is replayed twice:
//! as a burst (every event published back to back, as fast as JetStream
//! acknowledges) and in real time (each event at its corpus `t_ms`, divided
//! by `--speed`, same order and relative gaps). Run with:
//!
//! ```text
//! cargo run --release -p weir --example ns8-storm [-- --burst | --realtime] [--speed N] [--via-redis]
//! ```
//!
//! `--via-redis` replays each event as NS8 emits it, `PUBLISH` on its
//! channel (`cluster/event/<name>`, `module/<id>/event/<name>`) of a
//! private redis-server primary (Debian's `redis-server`), with one replica
//! per node and one bridge per node ([`weir_bridge`]) subscribed to
//! it, all five publishing to JetStream; the table adds the duplicates
//! JetStream dropped, and the demo checks the stream held each event once.
//! The folded rows fold in the bridges (`fold_domains_ms`) instead of the
//! publisher.
//!
//! The topology, counts and NS8 figures printed come from the corpus files
//! (`summary.json`, `topology.json`, `events.jsonl`, `deliveries.jsonl`).
//!
//! Host processes are this binary re-executed as `ns8-storm host --config
//! FILE`, which runs exactly what `weir run --config FILE` runs
//! (`weir_host::Daemon`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weir_test_support::ns8;

use weir_host::corpus::{self, CorpusEvent, Delivery, Topology};
use weir_host::nats::NatsServer;
use weir_host::nats::Transport;
use weir_host::nats::subjects::{DEFAULT_STREAM, Subjects};

/// Default speed-up of the real-time replay: 10 (the 61 s node join takes
/// 6.1 s). Its gaps (0.5 s and more) stay far above `linger` (20 ms), so the
/// batches are those of real time.
const DEFAULT_SPEED: u64 = 10;

/// Longest wait for the hosts to settle a scenario.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

#[derive(Default, Debug)]
struct Totals {
    received: u64,
    skipped: u64,
    invoked_events: u64,
    batches: u64,
    effects_executed: u64,
    settled: u64,
    udc_invoked: u64,
    /// Effects still waiting for their debounce window.
    pending: u64,
    /// Most effects executed by one app on one node.
    max_app_effects: u64,
}

fn totals(ports: &[u16]) -> Option<Totals> {
    let mut t = Totals::default();
    for port in ports {
        let stats: serde_json::Value = serde_json::from_str(&http_get(*port, "/stats")?).ok()?;
        for a in stats["apps"].as_array()? {
            let n = |k: &str| a[k].as_u64().unwrap_or(0);
            let outcomes = &a["outcomes"];
            let settled = n("skipped")
                + outcomes["done"].as_u64().unwrap_or(0)
                + outcomes["reject"].as_u64().unwrap_or(0)
                + n("dead_letters").saturating_sub(outcomes["reject"].as_u64().unwrap_or(0));
            t.received += n("received");
            t.skipped += n("skipped");
            t.invoked_events += n("invoked_events");
            t.batches += n("batches");
            t.effects_executed += n("effects_executed");
            t.pending += n("effects_pending");
            if a["app"] != "node" {
                t.max_app_effects = t.max_app_effects.max(n("effects_executed"));
            }
            t.settled += settled;
            if a["app"] != "node" {
                t.udc_invoked += n("invoked_events");
            }
        }
    }
    Some(t)
}

struct Scenario {
    name: &'static str,
    fold: bool,
    /// `None`: a burst; `Some(speed)`: at `t_ms / speed`.
    realtime: Option<u64>,
    /// Published on NS8's Redis channels and bridged (`--via-redis`), the
    /// fold done by the bridges (`fold_domains_ms`).
    via_redis: bool,
}

/// `fold_domains_ms` of the bridges in the folded `--via-redis` rows: 200
/// (a legacy burst of one source arrives within milliseconds).
const BRIDGE_FOLD_MS: u64 = 200;

/// What the bridges did in a `--via-redis` row.
#[derive(Default, Debug)]
struct Bridged {
    /// Events in the stream afterwards.
    stored: usize,
    /// Publishes JetStream recognised as already stored, all bridges.
    duplicates: u64,
    /// Events folded into domains lists (counted once, by the first bridge).
    folded: u64,
}

struct Row {
    label: String,
    published: usize,
    bridged: Option<Bridged>,
    ns8_runs: usize,
    ns8_udc_runs: usize,
    ns8_restarts: usize,
    ideal_restarts: usize,
    weir: Totals,
}

fn run_scenario(exe: &Path, s: &Scenario, nodes: &[u32], topology: &Topology, rules: &str) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(&dir.path().join("js")).expect("nats-server");
    let ports: Vec<u16> = nodes.iter().map(|_| free_port()).collect();
    let mut hosts: Vec<Child> = nodes
        .iter()
        .zip(&ports)
        .map(|(node, port)| {
            let path = dir.path().join(format!("node{node}.toml"));
            std::fs::write(
                &path,
                ns8::node_config(*node, &server.url(), *port, topology, rules),
            )
            .unwrap();
            Command::new(exe)
                .args(["host", "--config", path.to_str().unwrap()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    // Running (consumers created: they start at `new`, so an event published
    // before would not be theirs).
    while ports
        .iter()
        .any(|p| !http_get(*p, "/ready").is_some_and(|b| b.contains("\"ready\":true")))
    {
        assert!(Instant::now() < deadline, "hosts did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let dir_events = examples().join("ns8").join(s.name);
    let events: Vec<CorpusEvent> = corpus::read_jsonl(&dir_events.join("events.jsonl")).unwrap();
    let deliveries: Vec<Delivery> =
        corpus::read_jsonl(&dir_events.join("deliveries.jsonl")).unwrap();
    let published = if s.fold {
        corpus::fold_domains(&events)
    } else {
        events.clone()
    };
    let udc: Vec<u64> = events
        .iter()
        .filter(|e| e.name == "user-domain-changed")
        .map(|e| e.seq)
        .collect();
    let (published, bridged) = if s.via_redis {
        let (stored, bridged) = replay_via_redis(s, &events, nodes, &server.url());
        (stored, Some(bridged))
    } else {
        replay_to_nats(s, &published, &server.url());
        (published, None)
    };
    // Each event reaches every consumer filtered to its name: node agents
    // subscribe to their rule's event names, apps to user-domain-changed.
    let node_names = ns8::node_event_names(rules);
    let node_events = published
        .iter()
        .filter(|e| node_names.contains(&e.name))
        .count() as u64;
    let udc_events = published
        .iter()
        .filter(|e| e.name == "user-domain-changed")
        .count() as u64;
    let expected = node_events * nodes.len() as u64 + udc_events * topology.apps.len() as u64;
    let weir = loop {
        if let Some(t) = totals(&ports)
            && t.received >= expected
            && t.settled >= expected
            && t.pending == 0
        {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "hosts did not settle {expected} deliveries: {:?}",
            totals(&ports)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    for host in &mut hosts {
        let _ = Command::new("kill")
            .args(["-TERM", &host.id().to_string()])
            .status();
    }
    for host in &mut hosts {
        let _ = host.wait();
    }
    let mode = match s.realtime {
        None => "burst".to_owned(),
        Some(speed) => format!("real time /{speed}"),
    };
    let label = match (s.fold, s.via_redis) {
        (true, false) => format!("{} --batch-domains ({mode})", s.name),
        (true, true) => format!("{} fold_domains_ms ({mode}, Redis)", s.name),
        (false, true) => format!("{} ({mode}, Redis)", s.name),
        (false, false) => format!("{} ({mode})", s.name),
    };
    if let Some(b) = &bridged {
        let ids: std::collections::BTreeSet<&Option<String>> =
            published.iter().map(|e| &e.id).collect();
        assert_eq!(ids.len(), b.stored, "the stream holds an event twice");
        if !s.fold {
            assert_eq!(b.stored, events.len(), "the stream holds each event once");
        }
    }
    Row {
        label,
        published: published.len(),
        bridged,
        ns8_runs: deliveries.iter().filter(|d| d.handler_runs).count(),
        ns8_udc_runs: deliveries
            .iter()
            .filter(|d| udc.contains(&d.seq) && d.handler_runs)
            .count(),
        ns8_restarts: deliveries
            .iter()
            .filter(|d| udc.contains(&d.seq) && d.current_effect)
            .count(),
        ideal_restarts: deliveries
            .iter()
            .filter(|d| udc.contains(&d.seq) && d.ideal_effect)
            .count(),
        weir,
    }
}

/// Publish `events` straight to JetStream, as `weir publish --replay` does.
fn replay_to_nats(s: &Scenario, published: &[CorpusEvent], url: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let t = Transport::connect(url, "ns8-storm", Subjects::default(), DEFAULT_STREAM)
            .await
            .unwrap();
        t.ensure_streams().await.unwrap();
        let start = Instant::now();
        for e in published {
            if let Some(speed) = s.realtime {
                let at = Duration::from_millis(e.t_ms / speed.max(1));
                if let Some(wait) = at.checked_sub(start.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
            let id =
                e.id.clone()
                    .unwrap_or_else(|| format!("{}:{}", s.name, e.seq));
            t.publish_event(
                &e.name,
                &e.source,
                bytes::Bytes::from(e.payload.clone()),
                &id,
            )
            .await
            .unwrap();
        }
    });
}

/// Publish `events` as NS8 does, `PUBLISH <channel> <payload>` on the
/// cluster's Redis primary, with one bridge per node subscribed to that
/// node's replica, all publishing to JetStream; returns the events the
/// stream holds afterwards (as corpus events, for the expected counts) and
/// what the bridges did.
fn replay_via_redis(
    s: &Scenario,
    events: &[CorpusEvent],
    nodes: &[u32],
    nats_url: &str,
) -> (Vec<CorpusEvent>, Bridged) {
    use weir_bridge::{Bridge, BridgeConfig};
    use weir_test_support::redis::{RedisPublisher, RedisServer};
    let primary = RedisServer::start();
    let replicas: Vec<RedisServer> = nodes
        .iter()
        .map(|_| RedisServer::start_replica(Some(primary.port())))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let nats = weir_host::nats::NatsConfig {
            url: Some(nats_url.to_owned()),
            ..Default::default()
        };
        let mut bridges = Vec::new();
        for (node, replica) in nodes.iter().zip(&replicas) {
            let mut config = BridgeConfig::new(&replica.url());
            config.fold_domains_ms = if s.fold { BRIDGE_FOLD_MS } else { 0 };
            bridges.push(Bridge::start(*node, &nats, &config, false).await.unwrap());
        }
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while bridges.iter().any(|b| !b.stats().redis_connected) {
            assert!(Instant::now() < deadline, "bridges did not subscribe");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut publisher = RedisPublisher::connect(&primary.url()).await.unwrap();
        let start = Instant::now();
        for e in events {
            if let Some(speed) = s.realtime {
                let at = Duration::from_millis(e.t_ms / speed.max(1));
                if let Some(wait) = at.checked_sub(start.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
            let channel = format!("{}/event/{}", e.source, e.name);
            publisher
                .publish(&channel, e.payload.as_bytes())
                .await
                .unwrap();
        }
        // Every bridge received every event and holds nothing back.
        loop {
            let settled = bridges.iter().all(|b| {
                let st = b.stats();
                st.received == events.len() as u64
                    && st.buffered == 0
                    && st.published + st.duplicates + st.dead_lettered + st.dropped + st.folded
                        - st.folds
                        == st.received
            });
            if settled {
                break;
            }
            assert!(Instant::now() < deadline, "bridges did not settle");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut bridged = Bridged::default();
        for (i, b) in bridges.into_iter().enumerate() {
            let st = b.shutdown().await;
            assert_eq!(st.dropped + st.dead_lettered, 0, "{st:?}");
            bridged.duplicates += st.duplicates;
            if i == 0 {
                bridged.folded = st.folded;
            }
        }
        let subjects = Subjects::default();
        let stored: Vec<CorpusEvent> = weir_test_support::nats::stored(nats_url, DEFAULT_STREAM)
            .await
            .unwrap()
            .into_iter()
            .map(|m| {
                let (name, source) = subjects.parse_event(&m.subject).unwrap();
                CorpusEvent {
                    seq: 0,
                    t_ms: 0,
                    source,
                    name: name.to_owned(),
                    payload: String::from_utf8_lossy(&m.payload).into_owned(),
                    id: m.msg_id,
                    attempt: 1,
                }
            })
            .collect();
        bridged.stored = stored.len();
        (stored, bridged)
    })
}

fn host_mode(config: &Path) {
    let config = weir_host::config::Config::load(config).unwrap_or_else(|e| panic!("{e}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let host = weir_host::http::start(config.plan().expect("valid config"))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        term.recv().await;
        host.shutdown().await.unwrap();
    });
}

/// `--burst`, `--realtime`, `--speed N`: which replays to run.
fn replays(args: &[String]) -> Vec<Option<u64>> {
    let speed = args
        .iter()
        .position(|a| a == "--speed")
        .and_then(|i| args.get(i + 1))
        .map_or(DEFAULT_SPEED, |v| {
            v.parse().expect("--speed takes a positive integer")
        });
    let burst = args.iter().any(|a| a == "--burst");
    let realtime = args.iter().any(|a| a == "--realtime");
    match (burst, realtime) {
        (true, false) => vec![None],
        (false, true) => vec![Some(speed)],
        _ => vec![None, Some(speed)],
    }
}

/// What the corpus says about itself, for the header.
fn describe(scenario: &str) -> String {
    let dir = examples().join("ns8").join(scenario);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let events: Vec<CorpusEvent> = corpus::read_jsonl(&dir.join("events.jsonl")).unwrap();
    let instants: std::collections::BTreeSet<u64> = events.iter().map(|e| e.t_ms).collect();
    let span = events.iter().map(|e| e.t_ms).max().unwrap_or(0);
    let p = &summary["params"];
    if p.is_null() {
        return format!(
            "{scenario}: {} hand-written positive and near-miss events over {:.1} s",
            events.len(),
            span as f64 / 1e3
        );
    }
    format!(
        "{scenario}: {} nodes + {} joining, {} user domains, {} apps; {} events at {} instants over {:.1} s",
        p["existing_nodes"],
        p["join"],
        p["domains"],
        p["apps"],
        events.len(),
        instants.len(),
        span as f64 / 1e3
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("host") {
        return host_mode(Path::new(&args[3]));
    }
    let exe = std::env::current_exe().unwrap();
    let topology: Topology = corpus::read_topology(&examples().join("ns8/topology.json")).unwrap();
    let rules = std::fs::read_to_string(examples().join("ns8/rules.toml")).unwrap();
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(examples().join("ns8/node-join-legacy/summary.json")).unwrap(),
    )
    .unwrap();
    let p = &summary["params"];
    let node_count = p["existing_nodes"].as_u64().unwrap() + p["join"].as_u64().unwrap();
    let nodes: Vec<u32> = (1..=node_count as u32).collect();
    println!("NS8 node-join storm (examples/ns8/)");
    for scenario in ["node-join-legacy", "node-join-batched", "positive"] {
        println!("  {}", describe(scenario));
    }
    println!(
        "weir: a private nats-server, one host process per node ({}), {} apps placed as in topology.json, rules from rules.toml",
        nodes.len(),
        topology.apps.len()
    );
    let modes = replays(&args);
    let via_redis = args.iter().any(|a| a == "--via-redis");
    if via_redis {
        println!(
            "via Redis: each event PUBLISHed on its NS8 channel of a redis-server primary; one replica and one `weir bridge` per node, all publishing"
        );
    }
    let scenarios: Vec<Scenario> = modes
        .iter()
        .flat_map(|&realtime| {
            [
                ("node-join-legacy", false),
                ("node-join-legacy", true),
                ("node-join-batched", false),
                ("positive", false),
            ]
            .map(|(name, fold)| Scenario {
                name,
                fold,
                realtime,
                via_redis,
            })
        })
        .collect();
    let mut rows = Vec::new();
    for s in &scenarios {
        let start = Instant::now();
        rows.push(run_scenario(&exe, s, &nodes, &topology, &rules));
        eprintln!(
            "  {} settled in {:.1?}",
            rows.last().unwrap().label,
            start.elapsed()
        );
    }
    let header = [
        "scenario",
        "events",
        "NS8 spawns",
        "(udc)",
        "NS8 restarts",
        "ideal",
        "weir deliveries",
        "skipped by filter",
        "invoked events",
        "(udc)",
        "handler invocations",
        "weir restarts",
        "max per service per node",
        "bridge duplicates dropped",
    ];
    let mut table: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    table.insert(0, header.iter().map(|h| h.to_string()).collect());
    // `--wide`: every counter; else the five that tell the story.
    let wide = args.iter().any(|a| a == "--wide") || via_redis;
    for (i, r) in rows.iter().enumerate() {
        let w = &r.weir;
        table.insert(
            i + 1,
            vec![
                r.label.clone(),
                r.published.to_string(),
                r.ns8_runs.to_string(),
                r.ns8_udc_runs.to_string(),
                r.ns8_restarts.to_string(),
                r.ideal_restarts.to_string(),
                w.received.to_string(),
                w.skipped.to_string(),
                w.invoked_events.to_string(),
                w.udc_invoked.to_string(),
                w.batches.to_string(),
                // Each restart run restarts the app's two services.
                (w.effects_executed / 2).to_string(),
                (w.max_app_effects / 2).to_string(),
                r.bridged
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |b| b.duplicates.to_string()),
            ],
        );
    }
    if !via_redis {
        // The bridge column only means something through Redis.
        for row in table.values_mut() {
            row.pop();
        }
    }
    if !wide {
        // scenario, NS8 spawns, NS8 restarts, handler invocations (fresh
        // sandboxes), weir restarts (with the ideal count).
        for (i, row) in table.iter_mut() {
            let restarts = if *i == 0 {
                "weir restarts (needed)".to_owned()
            } else {
                format!("{} ({})", row[11], row[5])
            };
            let sandboxes = if *i == 0 {
                "weir sandboxes".to_owned()
            } else {
                row[10].clone()
            };
            *row = vec![
                row[0].clone(),
                row[2].clone(),
                row[4].clone(),
                sandboxes,
                restarts,
            ];
        }
    }
    let columns = table[&0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| table.values().map(|r| r[c].len()).max().unwrap())
        .collect();
    println!();
    for row in table.values() {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, v)| {
                if c == 0 {
                    format!("{v:<w$}", w = widths[c])
                } else {
                    format!("{v:>w$}", w = widths[c])
                }
            })
            .collect();
        println!("{}", cells.join("  "));
    }
    if via_redis {
        println!(
            "\nvia Redis: {} bridges each published every event; JetStream kept one copy (events = what the stream held,",
            nodes.len()
        );
        println!(
            "each once), the other copies are the duplicates dropped. Folded rows: the bridges' fold_domains_ms = {BRIDGE_FOLD_MS}."
        );
    }
    println!(
        "\nburst: every event published back to back; real time /N: each event at its corpus t_ms / N"
    );
    println!(
        "(same order, gaps scaled; they stay far above linger, so batches form as in real time)."
    );
    println!(
        "NS8 spawns a handler process per event per app: {} for user-domain-changed in node-join-legacy,",
        summary["udc_handler_runs"]
    );
    println!(
        "{} of them restart a service, {} are needed (summary.json). weir's pre-filter acks irrelevant",
        summary["udc_current_effects"], summary["udc_ideal_effects"]
    );
    println!(
        "events before any sandbox starts; the node agents still handle their cluster events, in batches."
    );
    println!(
        "Restarts count restart runs of an app (dovecot + postfix each); ideal: the deliveries that need one"
    );
    println!(
        "(deliveries.jsonl). weir's are debounced (rules.toml: [app.effects] debounce_ms) and counted once executed."
    );
    // The headline, checked: every row restarts exactly what is needed, and
    // no service on any node more than once. A demo that prints a worse
    // table exits 1 (CI runs it).
    let misses = headline_misses(&rows);
    if !misses.is_empty() {
        for m in &misses {
            eprintln!("ns8-storm: {m}");
        }
        std::process::exit(1);
    }
}

/// The rows that miss the demo's headline, one message each: weir's restart
/// runs (`effects_executed / 2`: each run restarts an app's two services)
/// must equal the ideal count from `deliveries.jsonl`, and no app on any
/// node may execute more than one run (`max_app_effects <= 2`).
fn headline_misses(rows: &[Row]) -> Vec<String> {
    let mut misses = Vec::new();
    for r in rows {
        let w = &r.weir;
        if w.effects_executed != 2 * r.ideal_restarts as u64 {
            misses.push(format!(
                "{}: {} effects executed, the ideal is {} restart runs ({} effects)",
                r.label,
                w.effects_executed,
                r.ideal_restarts,
                2 * r.ideal_restarts
            ));
        }
        if w.max_app_effects > 2 {
            misses.push(format!(
                "{}: one app on one node executed {} effects (a restart run is 2; at most one run per service per node)",
                r.label, w.max_app_effects
            ));
        }
    }
    misses
}
