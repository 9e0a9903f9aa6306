//! Operating a running host (issue #11): reload while events flow (a
//! component swapped, an app added, an app removed, a reload refused), a
//! crash-looping app quarantined beside a healthy one and resumed by a
//! reload, `/ready` following the NATS server, and the `weir` commands
//! around them (SIGHUP, `weir reload`, `weir stats`). All at default
//! delivery settings, against real nats-servers.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use weir_host::Daemon;
use weir_host::stats::AppState;
use weir_test_support::config::AppBuilder;
use weir_test_support::ledger::{
    EVENT, Publisher, UNIT, apps_config as config, read_by_app as ledger, times_handled as counts,
    unit_v2,
};
use weir_test_support::{http_get, nats::server};

use crate::common::{free_addr, get, heavy, wait};
use crate::nats::rt;

/// Publish rate: 300 events/s (the issue's figure).
const RATE: u32 = 300;

/// Longest wait for every event after the last publish: 30 s.
const SETTLE: Duration = Duration::from_secs(30);

/// The durable consumer `name` of the default stream, as the server has it.
async fn consumer_info(url: &str, name: &str) -> async_nats::jetstream::consumer::Info {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    let stream = js
        .get_stream(weir_host::nats::DEFAULT_STREAM)
        .await
        .unwrap();
    stream.consumer_info(name).await.unwrap().clone()
}

/// The sequence number of a publisher id (`<prefix><n>`).
fn number(id: &str, prefix: &str) -> u64 {
    id.strip_prefix(prefix)
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}

/// What most tests here start from: a nats-server of their own and a
/// scratch directory for `weir.toml` and the effects ledger.
struct Scene {
    _server: (weir_host::nats::NatsServer, tempfile::TempDir),
    url: String,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    ledger: std::path::PathBuf,
}

impl Scene {
    fn new() -> Self {
        let server = server();
        let dir = tempfile::tempdir().unwrap();
        Self {
            url: server.0.url(),
            _server: server,
            config: dir.path().join("weir.toml"),
            ledger: dir.path().join("ledger"),
            dir,
        }
    }

    /// `weir run` on the scene's config, stdio closed, once `/ready` at
    /// `addr` answers 200.
    fn run(&self, addr: std::net::SocketAddr) -> std::process::Child {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env_remove("WEIR_CONFIG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait(Duration::from_secs(60), "/ready 200", || {
            get(addr, "/ready").is_some_and(|(code, _)| code == 200)
        });
        child
    }
}

#[test]
fn reload_swaps_adds_and_removes_apps_while_events_flow() {
    let _heavy = heavy();
    let scene = Scene::new();
    let (url, ledger_path) = (&scene.url, &scene.ledger);
    let echo = weir_test_artifacts::ECHO;
    let v2 = weir_test_artifacts::ECHO_V2;
    rt().block_on(async {
        let plan = |apps: &[(&str, &str)]| {
            config(url, ledger_path, apps)
                .valid()
                .plan()
                .expect("valid plan")
        };
        let mut host = weir_host::http::start(plan(&[("a", echo), ("b", echo), ("c", echo)]))
            .await
            .unwrap();
        let publisher = Publisher::start(url, RATE, "r").await.unwrap();
        tokio::time::sleep(Duration::from_millis(1_500)).await;

        // Swap a's component, add d, remove c, while events flow.
        let report = host
            .reload(plan(&[("a", v2), ("b", echo), ("d", echo)]))
            .await
            .expect("reload applied");
        let after_reload = publisher.acked();
        assert_eq!(report.swapped, ["a"]);
        assert_eq!(report.added, ["d"]);
        assert_eq!(report.removed, ["c"]);
        assert_eq!(report.unchanged, ["b"]);
        tokio::time::sleep(Duration::from_millis(1_000)).await;

        // A reload that fails (a component that does not check) changes
        // nothing and says why.
        let b_before = ledger(ledger_path).get("b").map_or(0, Vec::len);
        let refused = host
            .reload(plan(&[
                ("a", v2),
                ("b", weir_test_artifacts::UNKNOWN_IMPORT),
                ("d", echo),
            ]))
            .await
            .expect_err("a component that does not check is refused");
        assert!(
            refused.problems.iter().any(|p| p.starts_with("app b:")),
            "{refused:?}"
        );
        let names: Vec<String> = host.stats().into_iter().map(|s| s.app).collect();
        assert_eq!(names, ["a", "b", "d"]);
        tokio::time::sleep(Duration::from_millis(500)).await;

        // b's rules and delivery settings change: applied to its next batch
        // and to its consumer on the server.
        let changed = config(url, ledger_path, &[("a", v2)])
            .app(
                AppBuilder::new("b", echo)
                    .events(&[EVENT, "other"])
                    .restart(&[UNIT, &unit_v2()])
                    .delivery(|d| d.ack_wait_ms = 20_000),
            )
            .app(
                AppBuilder::new("d", echo)
                    .events(&[EVENT])
                    .restart(&[UNIT, &unit_v2()]),
            )
            .valid()
            .plan()
            .unwrap();
        let report = host.reload(changed).await.expect("settings reload");
        assert_eq!(report.updated, ["b"]);
        assert_eq!(report.unchanged, ["a", "d"]);
        let consumer = consumer_info(url, "weir_1_b").await;
        assert_eq!(consumer.config.ack_wait, Duration::from_secs(20));
        assert_eq!(consumer.config.filter_subjects.len(), 2, "{:?}", consumer.config);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let published = publisher.finish().await;
        let acked: BTreeSet<&str> = published.acked.iter().map(String::as_str).collect();

        // Settle: a and b handle every acknowledged event; d every event
        // published a second after its reload returned.
        let must_d: BTreeSet<&str> = acked
            .iter()
            .copied()
            .filter(|id| number(id, "r") >= after_reload + u64::from(RATE))
            .collect();
        let deadline = Instant::now() + SETTLE;
        let handled = loop {
            let l = ledger(ledger_path);
            let has = |app: &str, want: &BTreeSet<&str>| {
                let got: BTreeSet<&str> = l
                    .get(app)
                    .map(|v| v.iter().map(|(_, id)| id.as_str()).collect())
                    .unwrap_or_default();
                want.is_subset(&got)
            };
            if (has("a", &acked) && has("b", &acked) && has("d", &must_d))
                || Instant::now() > deadline
            {
                break l;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let stats = host.stats();
        host.shutdown().await.unwrap();

        let a = &handled["a"];
        let a_counts = counts(a);
        let v1_ids: BTreeSet<&str> = a
            .iter()
            .filter(|(e, _)| *e == format!("restart:{UNIT}"))
            .map(|(_, id)| id.as_str())
            .collect();
        let v2_ids: BTreeSet<&str> = a
            .iter()
            .filter(|(e, _)| *e == format!("restart:{}", unit_v2()))
            .map(|(_, id)| id.as_str())
            .collect();
        eprintln!(
            "reload under load: {} acked; a: {} by v1, {} by v2; b: {}; c: {} (removed); d: {} (added; {} required); refused reload: {:?}",
            acked.len(),
            v1_ids.len(),
            v2_ids.len(),
            handled["b"].len(),
            handled.get("c").map_or(0, Vec::len),
            handled.get("d").map_or(0, Vec::len),
            must_d.len(),
            refused.problems
        );
        // Nothing lost, each of a's events handled by exactly one version.
        assert_eq!(a_counts.keys().copied().collect::<BTreeSet<_>>(), acked);
        assert!(a_counts.values().all(|n| *n == 1), "a ran an event twice");
        assert!(v1_ids.is_disjoint(&v2_ids));
        assert!(!v1_ids.is_empty() && !v2_ids.is_empty(), "both versions ran");
        // b went on through both reloads, the refused one included.
        let b_counts = counts(&handled["b"]);
        assert_eq!(b_counts.keys().copied().collect::<BTreeSet<_>>(), acked);
        assert!(b_counts.values().all(|n| *n == 1), "b ran an event twice");
        assert!(handled["b"].len() > b_before);
        // c stopped: what it handled, it handled once; not everything.
        let c = handled.get("c").cloned().unwrap_or_default();
        assert!(!c.is_empty() && c.len() < acked.len(), "{}", c.len());
        assert!(counts(&c).values().all(|n| *n == 1));
        // d consumed from its creation.
        let d_counts = counts(handled.get("d").map_or(&[][..], Vec::as_slice));
        assert!(
            must_d.iter().all(|id| d_counts.contains_key(id)),
            "d missed events published after it was added"
        );
        assert!(d_counts.values().all(|n| *n == 1));
        // Nothing dead-lettered, nothing quarantined.
        assert!(stats.iter().all(|s| s.dead_letters == 0 && s.quarantines == 0));
        // c's durable consumer is kept (re-adding c resumes).
        assert!(
            weir_test_support::nats::wait_consumer(url, "weir_1_c", Duration::from_secs(5))
                .await
        );
    });
}

#[test]
fn a_crash_looping_app_is_quarantined_and_a_fixed_component_drains_its_backlog() {
    let _heavy = heavy();
    let scene = Scene::new();
    let (url, ledger_path) = (&scene.url, &scene.ledger);
    let plan = |bad: &str| {
        config(
            url,
            ledger_path,
            &[("bad", bad), ("good", weir_test_artifacts::ECHO)],
        )
        .valid()
        .plan()
        .expect("valid plan")
    };
    rt().block_on(async {
        let mut host = weir_host::http::start(plan(weir_test_artifacts::TRAP)).await.unwrap();
        // `panic` traps the `trap` component on every batch; echo acks it.
        let publisher = Publisher::start_with(url, 50, "q", EVENT, "panic".into(), true)
            .await
            .unwrap();
        let stat = |host: &Daemon, app: &str| {
            host.stats()
                .into_iter()
                .find(|s| s.app == app)
                .expect("app in stats")
        };
        let deadline = Instant::now() + SETTLE;
        while stat(&host, "bad").state == AppState::Running {
            assert!(Instant::now() < deadline, "never quarantined");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let quarantined_at = Instant::now();
        let invocations_at = stat(&host, "bad").batches;
        let AppState::Quarantined { last_error, .. } = stat(&host, "bad").state else {
            unreachable!()
        };
        assert!(last_error.starts_with("trap"), "{last_error}");
        // Paused: in the next 2.5 s at most one probe runs (at 1 s; the next
        // is at 3 s): its batch and each of its events alone, at most 1 +
        // max_batch (64) invocations, where 50 events/s failing would run
        // at least 125.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let during = stat(&host, "bad").batches - invocations_at;
        assert!(during <= 65, "{during} invocations while quarantined");
        assert_eq!(stat(&host, "bad").quarantines, 1);
        assert_eq!(stat(&host, "bad").dead_letters, 0, "the pause dead-letters nothing");
        assert_eq!(stat(&host, "good").state, AppState::Running);

        // A fixed component lifts the quarantine at once.
        let report = host.reload(plan(weir_test_artifacts::ECHO)).await.unwrap();
        assert_eq!(report.swapped, ["bad"]);
        // The pipeline wakes from its pause to apply the swap.
        assert_eventually!(
            Duration::from_millis(500),
            "quarantine lifted by the new component",
            stat(&host, "bad").state == AppState::Running
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let published = publisher.finish().await;
        // Its backlog is handled (events nak'd with the default backoff come
        // back within 30 s), the good app was never touched.
        let deadline = Instant::now() + SETTLE + Duration::from_secs(10);
        let done = |host: &Daemon, app: &str| stat(host, app).outcomes["done"];
        while done(&host, "bad") < published.acked.len() as u64
            || done(&host, "good") < published.acked.len() as u64
        {
            assert!(
                Instant::now() < deadline,
                "backlog not handled: bad {} good {} of {}",
                done(&host, "bad"),
                done(&host, "good"),
                published.acked.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (bad, good) = (stat(&host, "bad"), stat(&host, "good"));
        eprintln!(
            "quarantine: {} events; backlog handled {:.1?} after the quarantine began; {during} invocations in 2.5 s of quarantine; bad after the fix: done {}, dead letters {}; good: done {}, traps {:?}",
            published.acked.len(),
            quarantined_at.elapsed(),
            bad.outcomes["done"],
            bad.dead_letters,
            good.outcomes["done"],
            good.traps
        );
        assert_eq!(bad.dead_letters, 0);
        assert_eq!(good.dead_letters + good.quarantines, 0);
        assert!(good.traps.is_empty());
        let dead = weir_test_support::nats::dead_letters(url, "bad").await.unwrap();
        assert!(dead.is_empty(), "{dead:?}");
        host.shutdown().await.unwrap();
    });
}

/// With `nats.delete_consumer`, a reload that removes an app deletes its
/// durable consumer once its pipeline has drained; re-adding the app
/// creates a fresh one.
#[test]
fn delete_consumer_removes_a_removed_apps_consumer() {
    let _heavy = heavy();
    let scene = Scene::new();
    let plan = |apps: &[(&str, &str)]| {
        config(&scene.url, &scene.ledger, apps)
            .nats(|n| n.delete_consumer = true)
            .valid()
            .plan()
            .unwrap()
    };
    let echo = weir_test_artifacts::ECHO;
    rt().block_on(async {
        let mut host = weir_host::http::start(plan(&[("x", echo), ("y", echo)]))
            .await
            .unwrap();
        let exists = |name: &'static str| {
            let url = scene.url.clone();
            async move {
                let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
                let stream = js
                    .get_stream(weir_host::nats::DEFAULT_STREAM)
                    .await
                    .unwrap();
                stream.consumer_info(name).await.is_ok()
            }
        };
        assert!(exists("weir_1_y").await);
        let report = host.reload(plan(&[("x", echo)])).await.unwrap();
        assert_eq!(report.removed, ["y"]);
        assert_eventually!(
            Duration::from_secs(10),
            "y's consumer deleted",
            !exists("weir_1_y").await
        );
        assert!(exists("weir_1_x").await, "x's consumer kept");
        let report = host
            .reload(plan(&[("x", echo), ("y", echo)]))
            .await
            .unwrap();
        assert_eq!(report.added, ["y"]);
        assert!(exists("weir_1_y").await, "re-created");
        host.shutdown().await.unwrap();
    });
}

#[test]
fn ready_follows_the_nats_server_within_5_s() {
    let _heavy = heavy();
    let (mut server, _dir) = server();
    let url = server.url();
    let scratch = tempfile::tempdir().unwrap();
    rt().block_on(async move {
        let plan = config(
            &url,
            &scratch.path().join("ledger"),
            &[("a", weir_test_artifacts::ECHO)],
        )
        .http("127.0.0.1:0".parse().unwrap())
        .valid()
        .plan()
        .unwrap();
        let host = weir_host::http::start(plan).await.unwrap();
        let addr = host.http_addr().unwrap();
        let ready = || async { http_get(addr, "/ready").await };
        assert_eq!(
            ready().await,
            Some((200, r#"{"ready":true,"reasons":[]}"#.to_owned()))
        );
        server.kill();
        let t = Instant::now();
        assert_eventually!(
            Duration::from_secs(5),
            "/ready 503 after the server died",
            ready()
                .await
                .is_some_and(|(code, body)| code == 503 && body.contains("nats: disconnected"))
        );
        let down = t.elapsed();
        // Without the admin token POST /reload changes nothing (401).
        let (code, body) = weir_test_support::http_request(addr, "POST", "/reload")
            .await
            .unwrap();
        assert_eq!(code, 401, "{body}");
        // With it, a library user that did not take the reload requests:
        // POST /reload says so at once.
        let token =
            weir_host::admin_token::read(&weir_host::admin_token::default_token_file()).unwrap();
        let bearer = format!("Bearer {token}");
        let (code, body) = weir_test_support::http_request_with(
            addr,
            "POST",
            "/reload",
            &[("Authorization", &bearer)],
        )
        .await
        .unwrap();
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("not taken"), "{body}");
        // Liveness does not follow NATS.
        assert_eq!(
            http_get(addr, "/health").await,
            Some((200, "ok: running\n".to_owned()))
        );
        let server = tokio::task::spawn_blocking(move || {
            server.restart().unwrap();
            server
        })
        .await
        .unwrap();
        let t = Instant::now();
        assert_eventually!(
            Duration::from_secs(5),
            "/ready 200 after the server came back",
            ready().await.is_some_and(|(code, _)| code == 200)
        );
        eprintln!(
            "/ready: 503 {down:.1?} after the kill, 200 {:.1?} after the restart",
            t.elapsed()
        );
        host.shutdown().await.unwrap();
        drop(server);
    });
}

/// `weir` with `args` (and `env`), waited for.
fn weir(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env_remove("WEIR_CONFIG")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run weir")
}

/// `weir` with `args` (and `env`), asserted to exit 0; its stdout.
fn succeeds(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = weir(args, env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "weir {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `weir publish` of one `EVENT` from `cluster` asking for a restart of
/// `UNIT`; asserts it was stored.
fn publish_one(url: &str) {
    let payload = format!("restart:{UNIT}");
    succeeds(
        &[
            "publish",
            "--url",
            url,
            "--name",
            EVENT,
            "--source",
            "cluster",
            "--payload",
            &payload,
        ],
        &[],
    );
}

/// `kill <signal> <pid>`, asserted to succeed.
fn signal(signal: &str, pid: &str) {
    let sent = std::process::Command::new("kill")
        .args([signal, pid])
        .status()
        .unwrap();
    assert!(sent.success(), "kill {signal} {pid}");
}

#[test]
fn sighup_weir_reload_and_weir_stats_on_a_running_host() {
    let _heavy = heavy();
    let scene = Scene::new();
    let (url, path, ledger_path) = (&scene.url, &scene.config, &scene.ledger);
    let file = path.to_str().unwrap();
    let addr = free_addr();
    let write = |apps: &[(&str, &str)]| {
        config(url, ledger_path, apps)
            .http(addr)
            .write(path)
            .unwrap();
    };
    write(&[("one", weir_test_artifacts::ECHO)]);
    let mut child = scene.run(addr);
    let pid = child.id().to_string();

    // weir stats: a table, or the raw object; the config found through
    // WEIR_CONFIG.
    let table = succeeds(&["stats"], &[("WEIR_CONFIG", file)]);
    assert!(
        table.lines().nth(1).is_some_and(|l| l.starts_with("APP")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .nth(2)
            .is_some_and(|l| l.starts_with("one  running")),
        "{table}"
    );
    let out = weir(&["stats", "--json", "--config", file], &[]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["apps"][0]["app"], "one");

    // SIGHUP applies an added app.
    write(&[
        ("one", weir_test_artifacts::ECHO),
        ("two", weir_test_artifacts::ECHO),
    ]);
    signal("-HUP", &pid);
    wait(Duration::from_secs(30), "app two added by SIGHUP", || {
        get(addr, "/stats").is_some_and(|(_, body)| body.contains("\"app\":\"two\""))
    });

    // weir reload with a config that does not parse: refused (78), every
    // problem said, the host keeps running both apps.
    std::fs::write(path, "[node\nid = 1\n").unwrap();
    let out = weir(&["reload", "--config", file], &[]);
    assert_eq!(
        out.status.code(),
        Some(78),
        "weir reload reads the file first"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed to parse config"));
    // The host, sent SIGHUP on the same file, refuses it and says why.
    signal("-HUP", &pid);
    wait(
        Duration::from_secs(30),
        "refused SIGHUP reload in /stats",
        || get(addr, "/stats").is_some_and(|(_, body)| body.contains("failed to parse config")),
    );
    write(&[
        ("one", weir_test_artifacts::ECHO),
        ("two", weir_test_artifacts::UNKNOWN_IMPORT),
    ]);
    let out = weir(&["reload", "--config", file], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("reload refused") && stderr.contains("app two:"),
        "{stderr}"
    );
    let (_, body) = get(addr, "/stats").unwrap();
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["reload"]["last"]["ok"], false, "{body}");
    assert_eq!(stats["apps"].as_array().map(Vec::len), Some(2), "{body}");

    // weir reload removing an app: exit 0 and what changed. An anonymous
    // POST /reload first: 401, nothing applied.
    write(&[("one", weir_test_artifacts::ECHO)]);
    let applied = |body: &str| {
        serde_json::from_str::<serde_json::Value>(body).unwrap()["reload"]["applied"].as_u64()
    };
    let before = applied(&get(addr, "/stats").unwrap().1);
    let anonymous = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(weir_test_support::http_request(addr, "POST", "/reload"));
    assert_eq!(anonymous.map(|(code, _)| code), Some(401));
    assert_eq!(applied(&get(addr, "/stats").unwrap().1), before);
    let stdout = succeeds(&["reload", "--config", file], &[]);
    assert!(stdout.contains("removed: two"), "{stdout}");
    assert!(get(addr, "/ready").is_some_and(|(code, _)| code == 200));

    signal("-TERM", &pid);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    // No host any more: weir stats says so (69).
    assert_eq!(
        weir(&["stats", "--config", file], &[]).status.code(),
        Some(69)
    );
}

#[test]
fn completions_and_man_page_come_from_the_command_line() {
    let script = succeeds(&["completions", "bash"], &[]);
    assert!(
        script.contains("_weir()") && script.contains("reload"),
        "{script}"
    );
    let page = succeeds(&["man"], &[]);
    assert!(page.contains(".TH weir 1"), "{page}");
}

/// `systemd-analyze security` exposure of every shipped unit: the host
/// alone and with the NS8 effects drop-in appended (which runs the host as
/// the static user `weir`, never root), the bridge, and the effect helper.
#[test]
fn the_unit_file_scores_at_most_3_0() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let dir = tempfile::tempdir().unwrap();
    // Each in a directory of its own: next to deploy/, systemd-analyze
    // would read the drop-in directory too.
    let n = std::cell::Cell::new(0);
    let exposure = |name: &str, text: &str| -> f64 {
        n.set(n.get() + 1);
        let own = dir.path().join(n.get().to_string());
        std::fs::create_dir(&own).unwrap();
        let unit = own.join(name);
        std::fs::write(&unit, text).unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .args(["security", "--offline=true"])
            .arg(&unit)
            .output()
            .expect("systemd-analyze (Debian's systemd package) is needed for this test");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        stdout
            .lines()
            .find_map(|l| {
                l.split(&format!("Overall exposure level for {name}: "))
                    .nth(1)
            })
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no exposure in: {stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    };
    let read = |f: &str| std::fs::read_to_string(deploy.join(f)).unwrap();
    let unit = read("weir.service");
    let drop_in = read("weir.service.d/ns8-effects.conf");
    assert!(
        drop_in.contains("User=weir") && !drop_in.contains("User=root"),
        "the NS8 drop-in runs the host unprivileged"
    );
    let scores = [
        ("weir.service", exposure("weir.service", &unit)),
        (
            "weir.service + ns8-effects.conf",
            exposure("weir.service", &(unit.clone() + &drop_in)),
        ),
        (
            "weir-bridge.service",
            exposure("weir-bridge.service", &read("weir-bridge.service")),
        ),
        (
            "weir-effects@.service",
            exposure("weir-effects@x.service", &read("weir-effects@.service")),
        ),
    ];
    eprintln!("systemd-analyze security exposure: {scores:?}");
    for (unit, score) in scores {
        assert!(score <= 3.0, "{unit}: {score}");
    }
}

/// `weir run` under a `Type=notify` service manager (a datagram socket in
/// `NOTIFY_SOCKET`, a watchdog in `WATCHDOG_USEC`): READY=1 once consuming,
/// WATCHDOG=1 while running, RELOADING=1 then READY=1 around a SIGHUP,
/// STOPPING=1 on SIGTERM; and `--log-format json` lines with the batch
/// span's fields.
#[test]
fn systemd_notifications_and_json_logs() {
    use std::os::unix::net::UnixDatagram;
    let _heavy = heavy();
    let scene = Scene::new();
    let (url, dir, path) = (&scene.url, &scene.dir, &scene.config);
    config(url, &scene.ledger, &[("one", weir_test_artifacts::ECHO)])
        .write(path)
        .unwrap();
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let log = dir.path().join("log.jsonl");
    // systemd sets WATCHDOG_PID to the service's main pid: exec keeps the
    // shell's.
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"WATCHDOG_PID=$$ exec "$0" run --log-format json --log-level weir_host=debug,info --config "$1""#)
        .arg(env!("CARGO_BIN_EXE_weir"))
        .arg(path)
        .env_remove("RUST_LOG")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let next = || {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification within 30 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut seen = Vec::new();
    let until = |want: &str, seen: &mut Vec<String>| loop {
        let m = next();
        seen.push(m.clone());
        if m.starts_with(want) {
            return m;
        }
    };
    until("READY=1", &mut seen);
    until("WATCHDOG=1", &mut seen);
    publish_one(url);
    wait(Duration::from_secs(10), "the event handled", || {
        ledger(&scene.ledger).contains_key("one")
    });
    signal("-HUP", &pid);
    let reloading = until("RELOADING=1", &mut seen);
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    until("READY=1", &mut seen);
    signal("-TERM", &pid);
    until("STOPPING=1", &mut seen);
    assert_eq!(child.wait().unwrap().code(), Some(0));

    // Every log line is a JSON object; the batch's carry its span's fields.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "weir running" || l["message"] == "weir running"),
        "{text}"
    );
    let invoking = lines
        .iter()
        .find(|l| l["message"] == "invoking")
        .unwrap_or_else(|| panic!("no batch line at debug: {text}"));
    assert_eq!(invoking["span"]["name"], "batch", "{invoking}");
    assert_eq!(invoking["span"]["weir.app"], "one", "{invoking}");
    assert_eq!(invoking["span"]["weir.node"], 1, "{invoking}");
    assert!(
        invoking["ids"].as_str().is_some_and(|ids| !ids.is_empty()),
        "the batch's event ids: {invoking}"
    );
    eprintln!("notifications: {seen:?}");
}

/// `[engine] watch = true`: replacing the component file (a rename over it,
/// as `install` does) reloads the host, and the next event runs the new
/// version.
#[test]
fn watch_reloads_when_a_component_file_is_replaced() {
    let _heavy = heavy();
    let scene = Scene::new();
    let (url, dir, ledger_path) = (&scene.url, &scene.dir, &scene.ledger);
    let handler = dir.path().join("handler.wasm");
    std::fs::copy(weir_test_artifacts::ECHO, &handler).unwrap();
    let addr = free_addr();
    config(url, ledger_path, &[("one", handler.to_str().unwrap())])
        .http(addr)
        .engine(|e| e.watch = true)
        .write(&scene.config)
        .unwrap();
    let mut child = scene.run(addr);
    let staged = dir.path().join("handler.wasm.new");
    std::fs::copy(weir_test_artifacts::ECHO_V2, &staged).unwrap();
    std::fs::rename(&staged, &handler).unwrap();
    wait(
        Duration::from_secs(20),
        "a reload after the file changed",
        || {
            get(addr, "/stats").is_some_and(|(_, body)| {
                let stats: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                stats["reload"]["last"]["changes"]["swapped"] == serde_json::json!(["one"])
            })
        },
    );
    publish_one(url);
    wait(
        Duration::from_secs(10),
        "the event handled by version 2",
        || {
            ledger(ledger_path).get("one").is_some_and(|l| {
                l.iter()
                    .any(|(effect, _)| *effect == format!("restart:{}", unit_v2()))
            })
        },
    );
    let _ = child.kill();
    let _ = child.wait();
}
