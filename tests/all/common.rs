//! Shared helpers: one runtime per test binary, event builders, RSS.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use weir_host::envelope::{self, EventMeta};
use weir_host::{App, AppSpec, EngineConfig, Event, Limits, Runtime};
use weir_test_support::config::{AppBuilder, ConfigBuilder};

/// The runtime shared by the tests of this binary (compiled components are
/// cached in its memory).
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new(EngineConfig::default()).expect("runtime"))
}

/// Tests that measure RSS or wall-clock bounds, or that load the machine
/// (guests allocating hundreds of MiB, spinning guests, nats-servers and
/// hosts), hold this lock: they run one at a time, beside the light tests, so
/// a figure is never disturbed by another heavy test on a 2-core machine.
/// This holds in `cargo test`'s single process; under `cargo nextest` (the
/// test command) each test is a process of its own, and the wall-clock and
/// RSS ones run one at a time through the `timing` test group of
/// `.config/nextest.toml`.
pub fn heavy() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Deploy component file `path` as app `name` on node 1 with `limits`.
pub fn deploy(name: &str, path: &str, limits: Limits) -> App {
    deploy_on(name, path, 1, &[], limits)
}

/// Deploy with node id and domains.
pub fn deploy_on(name: &str, path: &str, node: u32, domains: &[&str], limits: Limits) -> App {
    let mut spec = AppSpec::new(name, node, format!("node{node}"));
    spec.domains = domains.iter().map(|d| d.to_string()).collect();
    spec.limits = limits;
    runtime()
        .deploy_file(spec, path.as_ref())
        .unwrap_or_else(|e| panic!("deploy {name}: {e}"))
}

/// An event `name` from `source` with `payload`, attempt 1.
pub fn event(name: &str, source: &str, payload: &str) -> Event {
    event_attempt(name, source, payload, 1)
}

/// An event with a given delivery attempt.
pub fn event_attempt(name: &str, source: &str, payload: &str, attempt: u32) -> Event {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let sequence = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let meta = EventMeta {
        id: format!("test:{sequence}"),
        name: name.into(),
        source: source.into(),
        attempt,
        sequence,
        published_ms: 0,
    };
    envelope::event(
        meta,
        payload.as_bytes().to_vec(),
        envelope::DEFAULT_MAX_PAYLOAD_BYTES,
    )
    .expect("valid event")
}

/// A one-event batch whose payload is `payload` (the fixtures' directive).
pub fn directive(payload: &str) -> Vec<Event> {
    vec![event("test", "cluster", payload)]
}

/// `examples/` of the repository.
pub fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Run `app` on `events` on a thread of its own and wait for it.
///
/// A batch that runs past `LONG_BATCH_TICKS` (20 ms; a Python handler on a
/// loaded machine does) moves its thread to `SCHED_IDLE`, and a process
/// without `CAP_SYS_NICE` (CI runners) cannot take it back out: the next
/// batch on the same test thread would run at idle priority and, on a busy
/// 2-core machine, starve to its deadline. `App::invoke`'s pool retires such
/// threads; tests that call the blocking API in a loop use this instead.
pub fn invoke_on_own_thread(app: &App, events: &[Event]) -> weir_host::Invocation {
    std::thread::scope(|s| {
        s.spawn(|| app.invoke_blocking(events))
            .join()
            .expect("invocation thread panicked")
    })
}

/// A bystander app (echo) answers normally: call after a hostile batch.
pub fn assert_bystander_serves() {
    static BYSTANDER: OnceLock<App> = OnceLock::new();
    let app =
        BYSTANDER.get_or_init(|| deploy("bystander", weir_test_artifacts::ECHO, Limits::default()));
    let inv = invoke_on_own_thread(
        app,
        &[
            event("test", "cluster", "hello"),
            event("test", "cluster", "retry:7"),
        ],
    );
    let handled = inv.result.expect("bystander must be served");
    assert_eq!(
        handled.outcomes,
        vec![weir_host::Outcome::Done, weir_host::Outcome::Retry(7)]
    );
}

/// The app's filesystem and socket imports are linked but denied.
pub fn assert_fs_and_sockets_denied(app: &App) {
    let denied: Vec<&str> = app
        .report()
        .imports
        .iter()
        .filter(|i| i.grant.label() == "denied")
        .map(|i| i.name.as_str())
        .collect();
    assert!(
        denied.iter().any(|n| n.starts_with("wasi:filesystem/")),
        "{denied:?}"
    );
    assert!(
        denied.iter().any(|n| n.starts_with("wasi:sockets/")),
        "{denied:?}"
    );
}

/// Log to the test's captured output when `RUST_LOG` is set.
pub fn init_tracing() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_test_writer()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .try_init();
        }
    });
}

/// Node 1 with one echo app (event `test`) whose granted restarts of
/// `u0`..`u<units>` run `sh -c 'echo $0 >> marker'` (command executor):
/// each handled `restart:uN` event leaves `uN` in `marker`.
pub fn marker_config(nats_url: &str, marker: &std::path::Path, units: usize) -> ConfigBuilder {
    let units: Vec<String> = (0..units).map(|i| format!("u{i}")).collect();
    let units: Vec<&str> = units.iter().map(String::as_str).collect();
    ConfigBuilder::new(1, nats_url)
        .shell_executor(&format!("echo $0 >> {}", marker.display()))
        .app(
            AppBuilder::new("echo", weir_test_artifacts::ECHO)
                .events(&["test"])
                .restart(&units),
        )
}

/// The units recorded in a marker file (see [`marker_config`]).
pub fn marker_units(marker: &std::path::Path) -> std::collections::BTreeSet<String> {
    std::fs::read_to_string(marker)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A free loopback address (bound, then released).
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// `GET path` on `addr`, blocking.
pub fn get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?
        .block_on(weir_test_support::http_get(addr, path))
}

/// Poll `cond` every 50 ms for at most `within`.
pub fn wait(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
