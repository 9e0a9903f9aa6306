//! Cluster state and storms (issue #12): effects debounced across batches
//! (durable, surviving a SIGKILL inside the window), and apps that act once
//! per cluster (one shared consumer among several hosts). At default
//! delivery settings, against real nats-servers and `weir run` processes.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use weir_test_support::config::{AppBuilder, ConfigBuilder};
use weir_test_support::nats::server;

use crate::common::{free_addr, get, heavy, marker_units, wait};
use crate::nats::rt;

/// The debounce window of the storm tests: 5,000 ms (the figure).
const WINDOW_MS: u64 = 5_000;

/// Relevant events in the storm: 20, [`GAP`] apart.
const STORM: usize = 20;

/// Gap between the storm's events: 100 ms.
const GAP: Duration = Duration::from_millis(100);

/// What every test here starts from, holding the heavy-test lock: a
/// nats-server of its own and a scratch directory.
struct Scene {
    _heavy: std::sync::MutexGuard<'static, ()>,
    _nats: (weir_host::nats::NatsServer, tempfile::TempDir),
    url: String,
    dir: tempfile::TempDir,
}

impl Scene {
    fn new() -> Self {
        let heavy = heavy();
        let nats = server();
        Self {
            url: nats.0.url(),
            _heavy: heavy,
            _nats: nats,
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

/// A `weir run` process on `config`, SIGKILLed when dropped.
struct Host(Child);

impl Host {
    /// Start `weir run` and wait until `/ready` at `addr` answers 200.
    fn start(config: &Path, addr: std::net::SocketAddr) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", "--config"])
            .arg(config)
            .env_remove("WEIR_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let host = Self(child);
        wait(Duration::from_secs(60), "/ready 200", || {
            get(addr, "/ready").is_some_and(|(code, _)| code == 200)
        });
        host
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines of the effects marker (one unit per executed restart), in
/// order; empty if there is none yet.
fn executed(marker: &Path) -> Vec<String> {
    std::fs::read_to_string(marker)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Node 1's mail app for `dom01.example.org` with a `WINDOW_MS` debounce,
/// restarts recorded in `marker`, HTTP on `addr`.
fn mail_config(url: &str, marker: &Path, addr: std::net::SocketAddr) -> ConfigBuilder {
    ConfigBuilder::new(1, url)
        .http(addr)
        .shell_executor(&format!("echo $0 >> {}", marker.display()))
        .app(
            AppBuilder::ns8_mail("mail", weir_test_artifacts::MAIL, "dom01.example.org")
                .debounce_ms(WINDOW_MS),
        )
}

/// Publish the storm: `STORM` cluster-wide `user-domain-changed` events for
/// dom01, `GAP` apart, ids `<prefix><n>`.
fn publish_storm(url: &str, prefix: &str) {
    rt().block_on(async {
        let publisher = weir_test_support::nats::publisher(url).await.unwrap();
        weir_test_support::nats::publish_domain_storm(
            &publisher,
            "dom01.example.org",
            prefix,
            STORM,
            GAP,
        )
        .await
        .unwrap();
    });
}

/// The `effects_*` and `outcomes.done` figures of app `mail` in `/stats`.
fn mail_stats(addr: std::net::SocketAddr) -> serde_json::Value {
    let (_, body) = get(addr, "/stats").expect("/stats answers");
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    stats["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["app"] == "mail")
        .cloned()
        .expect("mail in /stats")
}

/// The mail consumer's ack floor (stream sequence) and ack-pending count.
fn ack_state(url: &str, consumer: &str) -> (u64, usize) {
    rt().block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        let stream = js
            .get_stream(weir_host::nats::DEFAULT_STREAM)
            .await
            .unwrap();
        let info = stream.consumer_info(consumer).await.unwrap();
        (info.ack_floor.stream_sequence, info.num_ack_pending)
    })
}

#[test]
fn a_storm_of_twenty_batches_restarts_each_service_once_after_the_window() {
    let scene = Scene::new();
    let (url, dir) = (scene.url.clone(), &scene.dir);
    let (config, marker) = (dir.path().join("weir.toml"), dir.path().join("effects"));
    let addr = free_addr();
    mail_config(&url, &marker, addr).write(&config).unwrap();
    let _host = Host::start(&config, addr);

    let started = std::time::Instant::now();
    publish_storm(&url, "s");
    // The window is still open: nothing ran, two effects wait, every event
    // is acked.
    wait(Duration::from_secs(10), "20 events acked", || {
        mail_stats(addr)["outcomes"]["done"] == STORM as u64
    });
    let during = mail_stats(addr);
    assert!(executed(&marker).is_empty(), "ran inside the window");
    assert_eq!(during["effects_pending"], 2, "{during}");
    assert!(
        during["effects_debounced"].as_u64().unwrap() >= 2,
        "later batches join the window: {during}"
    );
    assert!(during["batches"].as_u64().unwrap() >= 2, "{during}");
    wait(Duration::from_secs(20), "the window closes", || {
        executed(&marker).len() >= 2
    });
    let quiet_for = started.elapsed();
    std::thread::sleep(Duration::from_millis(WINDOW_MS / 2));
    let ran = executed(&marker);
    assert_eq!(
        marker_units(&marker),
        ["dovecot.service", "postfix.service"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    assert_eq!(ran.len(), 2, "once each, not once per batch: {ran:?}");
    let after = mail_stats(addr);
    assert_eq!(after["effects_pending"], 0, "{after}");
    assert_eq!(after["effects_executed"], 2, "{after}");
    assert!(
        quiet_for >= Duration::from_millis(WINDOW_MS),
        "trailing edge: {quiet_for:?}"
    );
}

#[test]
fn a_pending_effect_survives_a_sigkill_inside_its_window() {
    let scene = Scene::new();
    let (url, dir) = (scene.url.clone(), &scene.dir);
    let (config, marker) = (dir.path().join("weir.toml"), dir.path().join("effects"));
    let addr = free_addr();
    mail_config(&url, &marker, addr).write(&config).unwrap();
    let host = Host::start(&config, addr);
    publish_storm(&url, "k");
    wait(Duration::from_secs(10), "20 events acked", || {
        mail_stats(addr)["outcomes"]["done"] == STORM as u64
    });
    assert!(executed(&marker).is_empty(), "ran inside the window");
    drop(host); // SIGKILL inside the window
    assert!(executed(&marker).is_empty());

    let _host = Host::start(&config, addr);
    wait(
        Duration::from_secs(20),
        "the recovered window closes",
        || executed(&marker).len() >= 2,
    );
    std::thread::sleep(Duration::from_millis(WINDOW_MS / 2));
    let ran = executed(&marker);
    assert_eq!(ran.len(), 2, "exactly once each after the restart: {ran:?}");
    assert_eq!(
        marker_units(&marker).len(),
        2,
        "dovecot and postfix: {ran:?}"
    );
    // Nothing lost: every event acked.
    let (floor, pending) = ack_state(&url, "weir_1_mail");
    assert_eq!((floor, pending), (STORM as u64, 0));
}

/// Hosts sharing the cluster-scope app: 3 (nodes 1 to 3).
const HOSTS: u32 = 3;

/// Most effects run again for an event after the kill: 128 (the killed
/// host's events in flight, `max_batch` 64 per batch, at most two batches
/// fetched; an effect run just before the kill whose record was not stored
/// runs again on the node that gets the redelivery).
const MAX_REEXECUTIONS: u64 = 128;

/// Node `node`'s config: the echo app `ledger` in `scope = "cluster"`,
/// effects appended to `ledger`, HTTP on `addr`.
fn cluster_scope_config(
    url: &str,
    node: u32,
    ledger_file: &Path,
    addr: std::net::SocketAddr,
) -> ConfigBuilder {
    use weir_test_support::ledger::{EVENT, UNIT};
    ConfigBuilder::new(node, url)
        .http(addr)
        .shell_executor(&format!(
            "printf '%s|%s\\n' \"$WEIR_EFFECT_KEYS\" \"$WEIR_EVENT_IDS\" >> {}",
            ledger_file.display()
        ))
        .app(
            AppBuilder::new("ledger", weir_test_artifacts::ECHO)
                .events(&[EVENT])
                .restart(&[UNIT])
                .scope(weir_host::nats::subjects::Scope::Cluster)
                .delivery(|d| d.start = weir_host::nats::Start::All),
        )
}

/// Events the `ledger` app handed to its handler on the host at `addr`.
fn invoked(addr: std::net::SocketAddr) -> u64 {
    let (_, body) = get(addr, "/stats").expect("/stats answers");
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    stats["apps"][0]["invoked_events"].as_u64().unwrap()
}

#[test]
fn a_cluster_scope_app_handles_each_event_once_across_three_hosts() {
    use weir_test_support::ledger::{self, Publisher};
    let scene = Scene::new();
    let (url, dir) = (scene.url.clone(), &scene.dir);
    let ledger_file = dir.path().join("ledger");
    let mut hosts = Vec::new();
    for node in 1..=HOSTS {
        let addr = free_addr();
        let config = dir.path().join(format!("node{node}.toml"));
        cluster_scope_config(&url, node, &ledger_file, addr)
            .write(&config)
            .unwrap();
        hosts.push(Some((Host::start(&config, addr), addr)));
    }
    let rt = rt();

    // No faults: every event handled by exactly one host.
    let publisher = rt.block_on(Publisher::start(&url, 300, "a")).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let mut published = rt.block_on(publisher.finish());
    assert!(rt.block_on(ledger::drain(
        &published,
        &ledger_file,
        &url,
        "ledger",
        Duration::from_secs(30)
    )));
    let per_host: Vec<u64> = hosts
        .iter()
        .flatten()
        .map(|(_, addr)| invoked(*addr))
        .collect();
    assert_eq!(
        per_host.iter().sum::<u64>(),
        published.acked.len() as u64,
        "exactly once in sum, not once per host: {per_host:?}"
    );
    assert!(
        per_host.iter().filter(|&&n| n > 0).count() >= 2,
        "the hosts share the work: {per_host:?}"
    );
    eprintln!(
        "cluster scope, no faults: {} events, per host {per_host:?}",
        published.acked.len()
    );
    let executions = ledger::read(&ledger_file);
    assert!(
        executions.per_event.values().all(|&n| n == 1),
        "each event's effect ran once"
    );

    // SIGKILL the busiest host mid-stream: nothing lost.
    let publisher = rt.block_on(Publisher::start(&url, 300, "b")).unwrap();
    std::thread::sleep(Duration::from_millis(2_500));
    let busiest = (0..hosts.len())
        .max_by_key(|&i| hosts[i].as_ref().map_or(0, |(_, addr)| invoked(*addr)))
        .unwrap();
    drop(hosts[busiest].take());
    std::thread::sleep(Duration::from_millis(2_500));
    let second = rt.block_on(publisher.finish());
    published.attempted.extend(second.attempted);
    published.acked.extend(second.acked);
    // The killed host's unacknowledged events go to the others after the
    // ack wait (default 30 s).
    assert!(rt.block_on(ledger::drain(
        &published,
        &ledger_file,
        &url,
        "ledger",
        Duration::from_secs(weir_host::nats::consumer::DEFAULT_ACK_WAIT_MS / 1_000 + 30)
    )));
    let v = ledger::check(
        &published,
        &ledger::read(&ledger_file),
        &std::collections::HashSet::new(),
    );
    eprintln!("cluster scope, busiest host killed: {v:?}");
    assert_eq!((v.lost, v.unexpected, v.unstable_keys), (0, 0, 0), "{v:?}");
    assert!(v.reexecutions <= MAX_REEXECUTIONS, "{v:?}");
}

/// Requests in the rate-limit tests: 30 restarts of distinct units.
const REQUESTS: usize = 30;

/// The limit of the rate-limit tests: 3 restarts per window, across the
/// cluster.
const LIMIT_MAX: u32 = 3;

/// Three in-process hosts (nodes 1 to 3) sharing a `scope = "cluster"` echo
/// app `lim` whose restarts (`u0`..`u29`) are limited to `LIMIT_MAX` per
/// `per_s` seconds cluster-wide, `over` as given; each execution appends
/// `<unit> <ms since the epoch>` to `marker`. Publishes the 30 requests
/// once all three consume, and returns the hosts.
async fn limited_hosts(
    url: &str,
    marker: &Path,
    per_s: u64,
    over: weir_host::effects::limit::Over,
) -> Vec<weir_host::Daemon> {
    use weir_host::effects::limit::{EffectLimit, LimitScope};
    let units: Vec<String> = (0..REQUESTS).map(|i| format!("u{i}")).collect();
    let units: Vec<&str> = units.iter().map(String::as_str).collect();
    let mut hosts = Vec::new();
    for node in 1..=HOSTS {
        let plan = ConfigBuilder::new(node, url)
            .shell_executor(&format!("echo $0 $(date +%s%3N) >> {}", marker.display()))
            .app(
                AppBuilder::new("lim", weir_test_artifacts::ECHO)
                    .events(&["test"])
                    .restart(&units)
                    .scope(weir_host::nats::subjects::Scope::Cluster)
                    .effects(|e| {
                        e.limit.push(EffectLimit {
                            effect: "restart:*".into(),
                            max: LIMIT_MAX,
                            per_s,
                            scope: LimitScope::Cluster,
                            over,
                        })
                    }),
            )
            .valid()
            .plan()
            .unwrap();
        hosts.push(weir_host::Daemon::start(plan).await.unwrap());
    }
    let publisher = weir_test_support::nats::publisher(url).await.unwrap();
    for i in 0..REQUESTS {
        publisher
            .publish_event(
                "test",
                "cluster",
                Bytes::from(format!("restart:u{i}")),
                &format!("lim{i}"),
            )
            .await
            .unwrap();
    }
    hosts
}

/// Sum of `field` of app `lim` over `hosts`.
fn summed(
    hosts: &[weir_host::Daemon],
    field: fn(&weir_host::stats::AppStatsSnapshot) -> u64,
) -> u64 {
    hosts
        .iter()
        .flat_map(|h| h.stats())
        .map(|s| field(&s))
        .sum()
}

/// `(unit, ms)` of each execution in `marker`.
fn timed(marker: &Path) -> Vec<(String, u64)> {
    executed(marker)
        .iter()
        .filter_map(|l| {
            let (unit, ms) = l.split_once(' ')?;
            Some((unit.to_owned(), ms.parse().ok()?))
        })
        .collect()
}

#[test]
fn a_cluster_rate_limit_refuses_past_three_per_minute_across_three_hosts() {
    let scene = Scene::new();
    let (url, dir) = (scene.url.clone(), &scene.dir);
    let marker = dir.path().join("effects");
    rt().block_on(async {
        let hosts = limited_hosts(
            &url,
            &marker,
            60,
            weir_host::effects::limit::Over::Refuse,
        )
        .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while summed(&hosts, |s| s.outcomes["done"]) < REQUESTS as u64 {
            assert!(tokio::time::Instant::now() < deadline, "30 events not handled");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let executed_total = summed(&hosts, |s| s.effects_executed);
        let limited = summed(&hosts, |s| s.effects_limited);
        let per_host: Vec<u64> = hosts
            .iter()
            .map(|h| h.stats()[0].invoked_events)
            .collect();
        eprintln!("rate limit, refuse: executed {executed_total}, refused {limited}, events per host {per_host:?}");
        assert_eq!(executed_total, u64::from(LIMIT_MAX));
        assert_eq!(limited, REQUESTS as u64 - u64::from(LIMIT_MAX));
        assert_eq!(timed(&marker).len(), LIMIT_MAX as usize);
        for host in hosts {
            host.shutdown().await.unwrap();
        }
    });
}

#[test]
fn a_cluster_rate_limit_defers_to_the_next_window_and_loses_nothing() {
    let scene = Scene::new();
    let (url, dir) = (scene.url.clone(), &scene.dir);
    let marker = dir.path().join("effects");
    const WINDOW_S: u64 = 2;
    rt().block_on(async {
        let hosts = limited_hosts(
            &url,
            &marker,
            WINDOW_S,
            weir_host::effects::limit::Over::Defer,
        )
        .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while timed(&marker).len() < REQUESTS {
            assert!(
                tokio::time::Instant::now() < deadline,
                "deferred effects not executed: {} of {REQUESTS}",
                timed(&marker).len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let runs = timed(&marker);
        let units: std::collections::BTreeSet<&str> =
            runs.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!((runs.len(), units.len()), (REQUESTS, REQUESTS), "each once");
        let first = runs.iter().map(|r| r.1).min().unwrap();
        let last = runs.iter().map(|r| r.1).max().unwrap();
        let windows = (REQUESTS as u64).div_ceil(u64::from(LIMIT_MAX));
        eprintln!(
            "rate limit, defer: {REQUESTS} executed over {} ms ({} deferred)",
            last - first,
            summed(&hosts, |s| s.effects_deferred)
        );
        assert!(
            last - first >= (windows - 1) * WINDOW_S * 1_000 - 100,
            "{LIMIT_MAX} per {WINDOW_S} s: {} ms for {REQUESTS}",
            last - first
        );
        assert!(summed(&hosts, |s| s.effects_deferred) >= (REQUESTS as u64) - u64::from(LIMIT_MAX));
        for host in hosts {
            host.shutdown().await.unwrap();
        }
    });
}

#[test]
fn a_pending_effect_whose_execution_fails_is_retried_not_dropped() {
    let scene = Scene::new();
    let (url, dir) = (scene.url.clone(), &scene.dir);
    let (marker, flag) = (dir.path().join("effects"), dir.path().join("failed-once"));
    rt().block_on(async {
        // The first execution fails (and leaves the flag); later ones
        // succeed.
        let plan = ConfigBuilder::new(1, &url)
            .shell_executor(&format!(
                "if [ -e {flag} ]; then echo $0 >> {marker}; else touch {flag}; exit 1; fi",
                flag = flag.display(),
                marker = marker.display()
            ))
            .app(
                AppBuilder::ns8_mail("mail", weir_test_artifacts::MAIL, "dom01.example.org")
                    .debounce_ms(500),
            )
            .valid()
            .plan()
            .unwrap();
        let host = weir_host::Daemon::start(plan).await.unwrap();
        let publisher = weir_test_support::nats::publisher(&url).await.unwrap();
        weir_test_support::nats::publish_domain_storm(
            &publisher,
            "dom01.example.org",
            "f",
            1,
            Duration::ZERO,
        )
        .await
        .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while executed(&marker).len() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the failed effect was not retried"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The command writes the marker before the host removes the
        // pending entry and counts it: the counters follow shortly after.
        let counts = || {
            let stats = &host.stats()[0];
            (
                stats.effects_failed,
                stats.effects_executed,
                stats.effects_pending,
            )
        };
        weir_test_support::assert_eventually!(
            Duration::from_secs(5),
            format!(
                "(failed, executed, pending) = {:?}, want (1, 2, 0)",
                counts()
            ),
            counts() == (1, 2, 0)
        );
        assert_eq!(marker_units(&marker).len(), 2);
        host.shutdown().await.unwrap();
    });
}

#[test]
fn a_reload_that_changes_an_apps_scope_is_refused() {
    let scene = Scene::new();
    rt().block_on(async {
        let plan = |scope| {
            ConfigBuilder::new(1, &scene.url)
                .app(
                    AppBuilder::new("echo", weir_test_artifacts::ECHO)
                        .events(&["test"])
                        .scope(scope),
                )
                .valid()
                .plan()
                .unwrap()
        };
        use weir_host::nats::subjects::Scope;
        let mut host = weir_host::Daemon::start(plan(Scope::Node)).await.unwrap();
        let refused = host
            .reload(plan(Scope::Cluster))
            .await
            .expect_err("a scope change needs the app removed and added");
        assert!(
            refused.problems.iter().any(|p| p.contains(
                "app echo: scope changed (consumer weir_1_echo would become weir_cluster_echo)"
            )),
            "{refused:?}"
        );
        host.shutdown().await.unwrap();
    });
}
