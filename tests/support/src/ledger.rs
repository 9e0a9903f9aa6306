//! A ledger checker in the spirit of Jepsen's queue checker.
//!
//! - The [`Publisher`] sends events with unique ids (`Nats-Msg-Id`) and
//!   records which it attempted and which JetStream acknowledged (a failed
//!   publish is retried with the same id, so the stream stores it once).
//! - The host's handler (the `echo` component) asks for one effect per
//!   event; the `command` executor appends a line per execution to a ledger
//!   file: the idempotency keys and the event ids it ran for
//!   (`WEIR_EFFECT_KEYS|WEIR_EVENT_IDS`).
//! - [`check`] compares them after a drain phase: `lost` (acknowledged but
//!   neither handled nor dead-lettered with a reason) and `unexpected`
//!   (handled but never attempted) must be 0; `dead-lettered` counts events
//!   that ran out of deliveries (the host's default `max_deliver` of 5: a
//!   kill in the middle of an event's batch uses one of its deliveries);
//!   `re-executions` counts effects run again for an event (a kill between
//!   the effect and its record); `unstable keys` counts events whose effect
//!   got two different keys (an executor deduplicating by key would apply it
//!   twice), which must be 0.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use weir_host::nats::subjects::{Scope, Subjects};
use weir_host::nats::{ConnectAuth, DEFAULT_STREAM, Start, Transport};

use crate::config::{AppBuilder, ConfigBuilder};
use crate::nats::seed_list;

/// The event every ledger app handles.
pub const EVENT: &str = "work";
/// The unit every event asks to restart.
pub const UNIT: &str = "ledger.service";

/// `weir.toml` for node 1 on `url` (one server, or a comma-separated seed
/// list, see [`crate::nats::seed_list`]) with one app, `ledger`, running
/// `component` (the echo fixture: `restart:<unit>` asks for a restart),
/// whose effects append to `ledger`. Its consumer starts at `all` (see the
/// delivery settings); everything else is at its default. `ack_wait_ms` is short so a killed host's
/// in-flight events come back quickly; `max_deliver` is the default (5): an
/// event whose deliveries the faults use up is dead-lettered, and the
/// checker counts it as decided, not lost.
pub fn host_config(
    url: &str,
    component: &str,
    ledger: &Path,
    cache: &Path,
    ack_wait_ms: u64,
) -> ConfigBuilder {
    node_config(1, Scope::Node, url, component, ledger, cache, ack_wait_ms)
}

/// [`host_config`] for node `node`, the app in `scope` (`Scope::Cluster`:
/// every node's host shares one consumer, as in the singleton scenarios).
pub fn node_config(
    node: u32,
    scope: Scope,
    url: &str,
    component: &str,
    ledger: &Path,
    cache: &Path,
    ack_wait_ms: u64,
) -> ConfigBuilder {
    let cache = cache.to_owned();
    ConfigBuilder::new(node, url)
        .engine(|e| e.cache_dir = Some(cache))
        .shell_executor(&format!(
            "printf '%s|%s\\n' \"$WEIR_EFFECT_KEYS\" \"$WEIR_EVENT_IDS\" >> {}",
            ledger.display()
        ))
        .app(
            AppBuilder::new("ledger", component)
                .events(&[EVENT])
                .restart(&[UNIT])
                .scope(scope)
                .limits(|l| l.deadline_ms = 400)
                .delivery(|d| {
                    d.backoff_ms = vec![100];
                    d.ack_wait_ms = ack_wait_ms;
                    // The checker counts every acknowledged event as the
                    // app's, published before its consumer existed or not.
                    d.start = Start::All;
                }),
        )
}

/// What the publisher did.
#[derive(Default)]
pub struct Published {
    /// Ids sent at least once.
    pub attempted: HashSet<String>,
    /// Ids JetStream acknowledged.
    pub acked: HashSet<String>,
    /// Failed publish attempts (each retried).
    pub errors: u64,
    /// Acknowledged publishes (counted even when ids are not kept).
    pub acked_count: u64,
}

/// A background publisher at a fixed rate.
pub struct Publisher {
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<Published>>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// Start publishing `EVENT` (payload `restart:UNIT`) at `per_second` to
    /// `url` (one server or a comma-separated seed list), ids `<prefix><n>`.
    pub async fn start(url: &str, per_second: u32, prefix: &str) -> anyhow::Result<Self> {
        Self::start_with(
            url,
            per_second,
            prefix,
            EVENT,
            format!("restart:{UNIT}"),
            true,
        )
        .await
    }

    /// Start publishing `event` with `payload` at `per_second`; `keep_ids`
    /// records every id for the checker (off for long load runs, where the
    /// sets would show in the RSS being measured).
    pub async fn start_with(
        url: &str,
        per_second: u32,
        prefix: &str,
        event: &str,
        payload: String,
        keep_ids: bool,
    ) -> anyhow::Result<Self> {
        let (event, payload) = (event.to_owned(), Bytes::from(payload));
        let t = Transport::connect_with(
            &seed_list(url),
            "ledger-publisher",
            Subjects::default(),
            DEFAULT_STREAM,
            ConnectAuth::default(),
        )
        .await?;
        t.wait_connected().await;
        t.ensure_streams().await?;
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(Published::default()));
        let (s, st, prefix) = (stop.clone(), state.clone(), prefix.to_owned());
        let period = Duration::from_secs_f64(1.0 / f64::from(per_second.max(1)));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                let id = format!("{prefix}{n}");
                n += 1;
                if keep_ids {
                    lock(&st).attempted.insert(id.clone());
                }
                // Retry with the same id until acknowledged (or stopped).
                loop {
                    match t
                        .publish_event(&event, "cluster", payload.clone(), &id)
                        .await
                    {
                        Ok(_) => {
                            let mut p = lock(&st);
                            p.acked_count += 1;
                            if keep_ids {
                                p.acked.insert(id);
                            }
                            break;
                        }
                        Err(_) => {
                            lock(&st).errors += 1;
                            if s.load(Ordering::Relaxed) {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        });
        Ok(Self { stop, state, task })
    }

    /// Publishes acknowledged so far.
    pub fn acked(&self) -> u64 {
        lock(&self.state).acked_count
    }

    /// Stop and return what was published.
    pub async fn finish(self) -> Published {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        std::mem::take(&mut *lock(&self.state))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The ledger file's executions.
#[derive(Default)]
pub struct Executions {
    /// Executions per event id.
    pub per_event: HashMap<String, u32>,
    /// Distinct keys per event id.
    pub keys: HashMap<String, HashSet<String>>,
    /// Lines (effect executions).
    pub lines: usize,
}

/// Read `ledger`.
pub fn read(ledger: &Path) -> Executions {
    let mut ex = Executions::default();
    let text = std::fs::read_to_string(ledger).unwrap_or_default();
    for line in text.lines() {
        let Some((keys, ids)) = line.split_once('|') else {
            continue;
        };
        ex.lines += 1;
        for (key, id) in keys.split_whitespace().zip(ids.split_whitespace()) {
            *ex.per_event.entry(id.to_owned()).or_default() += 1;
            ex.keys
                .entry(id.to_owned())
                .or_default()
                .insert(key.to_owned());
        }
    }
    ex
}

/// Events handled so far (distinct ids in the ledger).
pub fn handled(ledger: &Path) -> usize {
    read(ledger).per_event.len()
}

/// The checker's verdict.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Acknowledged publishes.
    pub acked: usize,
    /// Distinct events handled.
    pub handled: usize,
    /// Acknowledged but neither handled nor dead-lettered.
    pub lost: usize,
    /// Acknowledged, not handled, dead-lettered with a reason.
    pub dead_lettered: usize,
    /// Handled but never attempted.
    pub unexpected: usize,
    /// Effects run more than once for an event (sum of extra runs).
    pub reexecutions: u64,
    /// Events whose effect got more than one key.
    pub unstable_keys: usize,
}

/// Judge `published` against `executions` and the ids of `dead` letters.
pub fn check(published: &Published, executions: &Executions, dead: &HashSet<String>) -> Verdict {
    let handled: HashSet<&String> = executions.per_event.keys().collect();
    let unhandled: Vec<&String> = published
        .acked
        .iter()
        .filter(|id| !handled.contains(id))
        .collect();
    Verdict {
        acked: published.acked.len(),
        handled: handled.len(),
        lost: unhandled
            .iter()
            .filter(|id| !dead.contains(id.as_str()))
            .count(),
        dead_lettered: unhandled
            .iter()
            .filter(|id| dead.contains(id.as_str()))
            .count(),
        unexpected: handled
            .iter()
            .filter(|id| !published.attempted.contains(id.as_str()))
            .count(),
        reexecutions: executions
            .per_event
            .values()
            .map(|n| u64::from(n.saturating_sub(1)))
            .sum(),
        unstable_keys: executions.keys.values().filter(|k| k.len() > 1).count(),
    }
}

/// Wait (at most `within`) until every acknowledged id is in the ledger or
/// among the dead letters of node 1's `app` on the server at `url`.
pub async fn drain(
    published: &Published,
    ledger: &Path,
    url: &str,
    app: &str,
    within: Duration,
) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        let ex = read(ledger);
        let pending: Vec<&String> = published
            .acked
            .iter()
            .filter(|id| !ex.per_event.contains_key(*id))
            .collect();
        if pending.is_empty() {
            return true;
        }
        if let Ok(dead) = dead_letters(url, app).await
            && pending.iter().all(|id| dead.contains_key(id.as_str()))
        {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Stop `publisher` and [`drain`] `app` on `url` for at most `within`:
/// what was published, whether every acknowledged event was decided, and
/// how long after the last publish the drain ended.
pub async fn finish_and_drain(
    publisher: Publisher,
    ledger: &Path,
    url: &str,
    app: &str,
    within: Duration,
) -> (Published, bool, Duration) {
    let published = publisher.finish().await;
    let last_publish = std::time::Instant::now();
    let drained = drain(&published, ledger, url, app, within).await;
    (published, drained, last_publish.elapsed())
}

/// The dead letters of node 1's `app`: original event id → reason.
pub async fn dead_letters(url: &str, app: &str) -> anyhow::Result<HashMap<String, String>> {
    Ok(crate::nats::dead_letters(url, app)
        .await?
        .into_iter()
        .map(|(id, d)| (id, d.reason))
        .collect())
}

/// Dead letters by reason, without the per-event numbers: `(reason, count)`,
/// most frequent first.
pub fn reasons(dead: &HashMap<String, String>) -> Vec<(String, usize)> {
    let mut by: HashMap<String, usize> = HashMap::new();
    for reason in dead.values() {
        let general: String = reason
            .split(|c: char| c.is_ascii_digit())
            .collect::<Vec<_>>()
            .join("N");
        *by.entry(general).or_default() += 1;
    }
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by_key(|r| std::cmp::Reverse(r.1));
    v
}

/// Total deliveries (including redeliveries) of node 1's `app` consumer.
pub async fn deliveries(url: &str, app: &str) -> anyhow::Result<u64> {
    let client = async_nats::connect(seed_list(url)).await?;
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(DEFAULT_STREAM).await?;
    let info =
        crate::nats::current_consumer(&stream, &weir_host::nats::subjects::consumer_name(1, app))
            .await
            .ok_or_else(|| anyhow::anyhow!("consumer lookup: no answer"))?;
    Ok(info.delivered.consumer_sequence)
}

/// The unit version 2 of echo restarts (`echo-v2` asks for `v2-<unit>`).
pub fn unit_v2() -> String {
    format!("v2-{UNIT}")
}

/// `weir.toml` for node 1 on `url` with one app per `(name, component)`,
/// each handling [`EVENT`] at default settings and granted [`UNIT`] and
/// [`unit_v2`]; every effect is appended to `ledger` as `app|effect|event
/// ids` (read with [`read_by_app`]), so the ledger tells which app and which
/// version handled each event.
pub fn apps_config(url: &str, ledger: &Path, apps: &[(&str, &str)]) -> ConfigBuilder {
    let mut c = ConfigBuilder::new(1, url).shell_executor(&format!(
        "printf '%s|%s|%s\\n' \"$WEIR_APP\" \"$WEIR_EFFECT\" \"$WEIR_EVENT_IDS\" >> {}",
        ledger.display()
    ));
    for (name, component) in apps {
        c = c.app(
            AppBuilder::new(name, *component)
                .events(&[EVENT])
                .restart(&[UNIT, &unit_v2()]),
        );
    }
    c
}

/// A ledger written by [`apps_config`]'s executor: per app, every
/// `(effect, event id)` in order.
pub fn read_by_app(ledger: &Path) -> HashMap<String, Vec<(String, String)>> {
    let mut by_app: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for line in std::fs::read_to_string(ledger).unwrap_or_default().lines() {
        let mut parts = line.splitn(3, '|');
        let (Some(app), Some(effect), Some(ids)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let entries = by_app.entry(app.to_owned()).or_default();
        for id in ids.split_whitespace() {
            entries.push((effect.to_owned(), id.to_owned()));
        }
    }
    by_app
}

/// How many times each event id occurs in one app's [`read_by_app`] entries.
pub fn times_handled(handled: &[(String, String)]) -> HashMap<&str, usize> {
    let mut c = HashMap::new();
    for (_, id) in handled {
        *c.entry(id.as_str()).or_default() += 1;
    }
    c
}

/// A scratch directory with the ledger and the artifact cache.
pub struct Scratch {
    /// Kept alive for the scenario.
    pub dir: tempfile::TempDir,
    /// The ledger file.
    pub ledger: PathBuf,
    /// The artifact cache.
    pub cache: PathBuf,
}

impl Scratch {
    /// A fresh scratch directory.
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ledger = dir.path().join("ledger.log");
        let cache = dir.path().join("cache");
        Ok(Self { dir, ledger, cache })
    }

    /// The plan of [`host_config`] for one server at `url` with the echo
    /// fixture and an `ack_wait_ms` of 2,000, on this scratch directory.
    ///
    /// # Errors
    ///
    /// The config's problems, if it is refused.
    pub fn echo_plan(&self, url: &str) -> anyhow::Result<weir_host::config::Plan> {
        host_config(
            url,
            weir_test_artifacts::ECHO,
            &self.ledger,
            &self.cache,
            2_000,
        )
        .build()
        .plan()
        .map_err(|p| anyhow::anyhow!("ledger config: {p:?}"))
    }
}
