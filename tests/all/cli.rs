//! The `weir` binary: `check` and `invoke`.

use std::process::{Command, Output};

fn weir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .output()
        .expect("run weir")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Assert that `out`'s stderr contains `what`, showing it if not.
fn assert_stderr_has(out: &Output, what: &str) {
    let stderr = text(&out.stderr);
    assert!(stderr.contains(what), "{what:?} not in: {stderr}");
}

/// Usage, bad input and configuration errors have exit codes of their own
/// (sysexits), listed in `--help`.
#[test]
fn exit_codes_tell_usage_from_input_from_config() {
    let help = weir(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(
        text(&help.stdout).contains("Exit codes: 0 success; 1 refused"),
        "{}",
        text(&help.stdout)
    );
    assert_eq!(weir(&["no-such-command"]).status.code(), Some(64));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, "[node]\nid = 1\nname = \"n\"\n").unwrap();
    let out = weir(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no [[app]]: nothing to run"));
    let out = weir(&["permissions", "--config", "/nonexistent/weir.toml"]);
    assert_eq!(out.status.code(), Some(78));
    // A credentials file the config names that cannot be read is the
    // configuration's problem (78), found before any connection (nothing
    // listens on port 1), not an unavailable server (69).
    crate::common::marker_config("nats://127.0.0.1:1", &dir.path().join("m"), 1)
        .nats(|n| n.creds_file = Some("/nonexistent/node1.creds".into()))
        .write(&config)
        .unwrap();
    let out = weir(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out.stderr));
    assert_stderr_has(&out, "/nonexistent/node1.creds");
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, "not json\n").unwrap();
    let out = weir(&[
        "invoke",
        weir_test_artifacts::ECHO,
        "--events",
        events.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(65), "{}", text(&out.stderr));
    let out = weir(&[
        "invoke",
        weir_test_artifacts::ECHO,
        "--events",
        "-",
        "--batch",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn check_accepts_the_examples() {
    for path in [
        weir_test_artifacts::MAIL,
        weir_test_artifacts::CERTIFICATES,
        weir_test_artifacts::ACL_SYNC,
    ] {
        let out = weir(&["check", path]);
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{path}: {stdout}{}",
            text(&out.stderr)
        );
        assert!(stdout.contains("verdict: deployable"), "{stdout}");
        assert!(stdout.contains("func      handle"), "{stdout}");
        assert!(stdout.contains("provided  weir:handler/"), "{stdout}");
    }
}

#[test]
fn check_says_a_kv_import_needs_a_grant() {
    let out = weir(&["check", weir_test_artifacts::KV_PROBE]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("weir:handler/kv@0.2.0")
            && stdout.contains("(deploys only for an app granted kv or kv_shared)"),
        "{stdout}"
    );
    // `weir invoke` refuses it without `--kv`, and runs it with an
    // in-memory bucket with it.
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        "{\"name\":\"test\",\"source\":\"cluster\",\"payload\":\"incr:n\"}\n".repeat(3)
            + "{\"name\":\"test\",\"source\":\"cluster\",\"payload\":\"big:70000\"}\n",
    )
    .unwrap();
    let args = [
        "invoke",
        weir_test_artifacts::KV_PROBE,
        "--events",
        events.to_str().unwrap(),
    ];
    let refused = weir(&args);
    assert_eq!(refused.status.code(), Some(65), "{}", text(&refused.stderr));
    assert!(text(&refused.stderr).contains("granted no key-value bucket"));
    let ran = weir(&[&args[..], &["--kv"]].concat());
    let stdout = text(&ran.stdout);
    assert_eq!(ran.status.code(), Some(0), "{stdout}{}", text(&ran.stderr));
    assert!(
        stdout.contains(
            r#""outcomes":["done","done","done",{"reject":"kv: value larger than 65536 bytes"}]"#
        ),
        "{stdout}"
    );
    // Handlers that never call kv do not import it.
    let mail = text(&weir(&["check", weir_test_artifacts::MAIL]).stdout);
    assert!(!mail.contains("weir:handler/kv"), "{mail}");
}

#[test]
fn check_refuses_the_unknown_import_and_names_it() {
    let out = weir(&["check", weir_test_artifacts::UNKNOWN_IMPORT]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("refused   acme:vault/secrets@1.0.0"),
        "{stdout}"
    );
    assert!(stdout.contains("verdict: refused (1 problem)"), "{stdout}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("error: import `acme:vault/secrets@1.0.0` refused"),
        "{stderr}"
    );
}

#[test]
fn check_reports_the_probes_filesystem_and_socket_imports_as_denied() {
    let out = weir(&["check", weir_test_artifacts::CAPABILITY_PROBE]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    for iface in [
        "wasi:filesystem/types",
        "wasi:filesystem/preopens",
        "wasi:sockets/tcp",
        "wasi:sockets/ip-name-lookup",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains("denied") && l.contains(iface)),
            "{iface}: {stdout}"
        );
    }
}

#[test]
fn check_reports_every_problem_of_a_non_handler() {
    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let out = weir(&["check", core.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(65), "bad input (EX_DATAERR)");
    assert_stderr_has(&out, "core wasm module");
    let out = weir(&["check", "/nonexistent/handler.wasm"]);
    assert_eq!(out.status.code(), Some(65));
    assert!(text(&out.stderr).contains("failed to read component /nonexistent/handler.wasm"));
}

#[test]
fn invoke_runs_the_mail_example_on_the_corpus() {
    let events = crate::common::examples_dir().join("ns8/node-join-legacy/events.jsonl");
    let args = [
        "invoke",
        weir_test_artifacts::MAIL,
        "--events",
        events.to_str().unwrap(),
        "--only",
        "user-domain-changed",
        "--node-id",
        "4",
        "--domain",
        "dom01.example.org",
        "--batch",
        "16",
    ];
    let out = weir(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // 50 user-domain-changed events in batches of 16: 4 invocations.
    assert_eq!(lines.len(), 4);
    assert_eq!(
        lines
            .iter()
            .map(|l| l["events"].as_u64().unwrap())
            .sum::<u64>(),
        50
    );
    // On node 4, ldapproxy4's change of dom01 is local: one restart pair, in
    // the batch that carries it.
    let restarts: usize = lines
        .iter()
        .map(|l| l["effects"].as_array().unwrap().len())
        .sum();
    assert_eq!(restarts, 2, "{lines:?}");
    assert!(text(&out.stderr).contains("50 events in 4 batches: 2 effects, 0 failed batches"));
}

/// A `weir run` child process with one echo app whose effects append the
/// unit to `marker` (command executor). Killed when dropped, so no test
/// leaves a host running.
struct RunningHost {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    marker: std::path::PathBuf,
    config: std::path::PathBuf,
}

impl Drop for RunningHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RunningHost {
    /// Start `weir run` and wait until its consumer exists.
    fn start(nats_url: &str) -> Self {
        let host = Self::start_unready(nats_url);
        // Consumers start at `new`: publish only once the host's exists.
        let ready = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(weir_test_support::nats::wait_consumer(
                nats_url,
                "weir_1_echo",
                std::time::Duration::from_secs(30),
            ));
        assert!(ready, "weir run did not create its consumer within 30 s");
        host
    }

    /// Start `weir run` without waiting for anything.
    fn start_unready(nats_url: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("effects.log");
        let config = dir.path().join("weir.toml");
        crate::common::marker_config(nats_url, &marker, 100)
            .write(&config)
            .unwrap();
        Self::spawn(dir, marker, config)
    }

    fn spawn(
        dir: tempfile::TempDir,
        marker: std::path::PathBuf,
        config: std::path::PathBuf,
    ) -> Self {
        Self {
            child: Self::run(&config),
            _dir: dir,
            marker,
            config,
        }
    }

    /// `weir run` with its state directory (the default artifact
    /// directory's parent) beside the config, not under `$HOME`.
    fn run(config: &std::path::Path) -> std::process::Child {
        Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", "--config", config.to_str().unwrap()])
            .env("XDG_STATE_HOME", config.with_file_name("state"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// SIGKILL the host and start it again on the same config and marker.
    fn restart(mut self) -> Self {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::run(&self.config);
        self
    }

    fn units(&self) -> std::collections::BTreeSet<String> {
        crate::common::marker_units(&self.marker)
    }

    fn wait_units(&self, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while self.units().len() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {n} effects",
                self.units().len()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

fn publish(url: &str, extra: &[&str]) -> Output {
    let mut args = vec!["publish", "--url", url];
    args.extend_from_slice(extra);
    weir(&args)
}

/// `weir publish` of one `test` event from `cluster` asking for
/// `restart:u<unit>` (with `--id`, if given); asserts it succeeded.
fn publish_restart(url: &str, unit: usize, id: Option<&str>) {
    let payload = format!("restart:u{unit}");
    let mut args = vec![
        "--name",
        "test",
        "--source",
        "cluster",
        "--payload",
        &payload,
    ];
    if let Some(id) = id {
        args.extend(["--id", id]);
    }
    let out = publish(url, &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn run_consumes_and_sigterm_drains_with_exit_0() {
    let _heavy = crate::common::heavy();
    let (server, _dir) = crate::nats::server();
    let mut host = RunningHost::start(&server.url());
    for i in 0..3 {
        publish_restart(&server.url(), i, None);
    }
    host.wait_units(3);
    let pid = host.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = host.child.wait().unwrap();
    let mut log = String::new();
    std::io::Read::read_to_string(host.child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        log.contains("SIGTERM") && log.contains("shutdown complete"),
        "{log}"
    );
}

#[test]
fn killed_host_restarts_and_misses_nothing() {
    let _heavy = crate::common::heavy();
    let (server, _dir) = crate::nats::server();
    let host = RunningHost::start(&server.url());
    let publish_range = |range: std::ops::Range<usize>| {
        for i in range {
            publish_restart(&server.url(), i, Some(&format!("k{i}")));
        }
    };
    publish_range(0..10);
    host.wait_units(10);
    // SIGKILL, publish while it is down, start it again.
    let host = host.restart();
    publish_range(10..20);
    host.wait_units(20);
    let expected: std::collections::BTreeSet<String> = (0..20).map(|i| format!("u{i}")).collect();
    assert_eq!(host.units(), expected);
    // The restarted host read its component precompiled from the default
    // artifact directory (the state directory's weir/artifacts), not
    // compiled again.
    let artifacts = host.config.with_file_name("state/weir/artifacts");
    let cwasm = std::fs::read_dir(&artifacts)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        })
        .count();
    assert_eq!(cwasm, 1, "{}", artifacts.display());
    let mut host = host;
    signal(&host.child, "TERM");
    let (status, _) = wait_exit(&mut host.child, std::time::Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()));
    let log = stderr_of(&mut host.child);
    assert!(log.contains("compiled=0 precompiled=1 shared=0"), "{log}");
}

#[test]
fn publish_replays_the_corpus_and_folds_domains() {
    let _heavy = crate::common::heavy();
    let (server, _dir) = crate::nats::server();
    let events = crate::common::examples_dir().join("ns8/node-join-legacy/events.jsonl");
    let events = events.to_str().unwrap();
    let out = publish(&server.url(), &["--replay", events, "--batch-domains"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // 64 events, of which two bursts of 25 per-domain events fold into two.
    assert_stderr_has(&out, "published 16 events");
    assert_stderr_has(&out, "16 stored, 0 duplicates");
    // Unfolded, the 14 events that were not folded have the same ids as
    // before: JetStream keeps one copy, and weir says so.
    let out = publish(&server.url(), &["--replay", events]);
    assert_stderr_has(&out, "published 64 events");
    assert_stderr_has(&out, "50 stored, 14 duplicates");
    let out = publish(&server.url(), &["--replay", events]);
    assert_stderr_has(&out, "0 stored, 64 duplicates");
    // Usage errors exit 64 (EX_USAGE) with what is missing.
    let out = publish(&server.url(), &[]);
    assert_eq!(out.status.code(), Some(64));
    assert_stderr_has(&out, "give --name and --source");
    // The most trusted source is never a default.
    let out = publish(&server.url(), &["--name", "test"]);
    assert_eq!(out.status.code(), Some(64));
    assert_stderr_has(&out, "--source");
}

/// A host on `url` that has handled one event.
fn serving_one_event(url: &str) -> RunningHost {
    let host = RunningHost::start(url);
    publish_restart(url, 0, None);
    host.wait_units(1);
    host
}

/// Wait at most `within` for `child` to exit; its status and how long it took.
fn wait_exit(
    child: &mut std::process::Child,
    within: std::time::Duration,
) -> (Option<std::process::ExitStatus>, std::time::Duration) {
    let t = std::time::Instant::now();
    while t.elapsed() < within {
        if let Some(status) = child.try_wait().unwrap() {
            return (Some(status), t.elapsed());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    (None, t.elapsed())
}

fn signal(child: &std::process::Child, name: &str) {
    assert!(
        Command::new("kill")
            .args([&format!("-{name}"), &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

fn stderr_of(child: &mut std::process::Child) -> String {
    let mut log = String::new();
    if let Some(err) = child.stderr.as_mut() {
        let _ = std::io::Read::read_to_string(err, &mut log);
    }
    log
}

/// SIGTERM to a running host whose nats-server was SIGKILLed: the drain,
/// the flush and the close are each bounded, so the host exits 0 within the
/// drain bound plus 5 s (it used to wait for the lost server forever).
#[test]
fn sigterm_with_nats_down_exits_within_the_bound() {
    let _heavy = crate::common::heavy();
    let (mut server, _dir) = crate::nats::server();
    let mut host = serving_one_event(&server.url());
    server.kill();
    std::thread::sleep(std::time::Duration::from_millis(500));
    signal(&host.child, "TERM");
    let bound = weir_host::daemon::DRAIN_TIMEOUT + weir_host::daemon::SHUTDOWN_SLACK;
    let (status, took) = wait_exit(&mut host.child, bound + std::time::Duration::from_secs(10));
    let log = stderr_of(&mut host.child);
    assert!(
        took <= bound,
        "exited after {took:?}, bound {bound:?}: {log}"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{log}");
}

/// SIGTERM while the host waits for an unreachable NATS at start: it stops
/// at once (the start is abandoned, nothing was consumed).
#[test]
fn sigterm_while_waiting_for_nats_at_start_exits_at_once() {
    let _heavy = crate::common::heavy();
    // A loopback port with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut host = RunningHost::start_unready(&format!("nats://127.0.0.1:{port}"));
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        host.child.try_wait().unwrap().is_none(),
        "still waiting for NATS"
    );
    signal(&host.child, "TERM");
    let (status, took) = wait_exit(&mut host.child, std::time::Duration::from_secs(10));
    let log = stderr_of(&mut host.child);
    assert!(
        took <= std::time::Duration::from_secs(3),
        "took {took:?}: {log}"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{log}");
    assert!(log.contains("stopping during start"), "{log}");
}

/// A second signal during the drain exits at once, with 130.
#[test]
fn a_second_signal_exits_at_once() {
    let _heavy = crate::common::heavy();
    let (mut server, _dir) = crate::nats::server();
    let mut host = serving_one_event(&server.url());
    // With the server gone the shutdown waits out its flush bound: the
    // second signal lands while it does.
    server.kill();
    signal(&host.child, "TERM");
    std::thread::sleep(std::time::Duration::from_millis(300));
    signal(&host.child, "INT");
    let (status, took) = wait_exit(&mut host.child, std::time::Duration::from_secs(10));
    let log = stderr_of(&mut host.child);
    assert!(
        took <= std::time::Duration::from_secs(1),
        "took {took:?}: {log}"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(130), "{log}");
}

/// systemd's `Accept=yes` socket for the effect helper, in a thread: each
/// connection runs `weir effect-helper --config config -- <command>` with the
/// connection as its stdin and stdout. Stops when dropped.
struct HelperSocket {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HelperSocket {
    fn start(socket: &std::path::Path, config: &std::path::Path, command: &[&str]) -> Self {
        let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (config, command): (std::path::PathBuf, Vec<String>) = (
            config.to_owned(),
            command.iter().map(|s| (*s).to_owned()).collect(),
        );
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok((conn, _)) = listener.accept() else {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        continue;
                    };
                    conn.set_nonblocking(false).unwrap();
                    let out = conn.try_clone().unwrap();
                    let _ = Command::new(env!("CARGO_BIN_EXE_weir"))
                        .arg("effect-helper")
                        .arg("--config")
                        .arg(&config)
                        .arg("--")
                        .args(&command)
                        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(conn)))
                        .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(out)))
                        .status();
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HelperSocket {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The host's restarts carried out by the privileged helper: `weir run`'s
/// command executor runs `weir effect-request`, the helper checks the
/// config's grants and runs its own command; a request outside the grants
/// is refused by the helper itself.
#[test]
fn effects_through_the_helper_socket_are_granted_by_the_config() {
    let _heavy = crate::common::heavy();
    let (server, _dir) = crate::nats::server();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("effects.log");
    let config = dir.path().join("weir.toml");
    let socket = dir.path().join("effects.sock");
    let socket_arg = socket.to_str().unwrap();
    weir_test_support::config::ConfigBuilder::new(1, &server.url())
        .command_executor(&[
            env!("CARGO_BIN_EXE_weir"),
            "effect-request",
            "--socket",
            socket_arg,
            "{action}",
            "{app}",
            "{unit}",
        ])
        .app(
            weir_test_support::config::AppBuilder::new("echo", weir_test_artifacts::ECHO)
                .events(&["test"])
                .restart(&["u0", "u1"]),
        )
        .write(&config)
        .unwrap();
    let script = format!("echo $0 $1 >> {}", marker.display());
    let _helper = HelperSocket::start(&socket, &config, &["sh", "-c", &script, "{app}", "{unit}"]);
    // Refused by the helper: not granted, no such app, a bad action.
    for (args, why) in [
        (["restart", "echo", "u9"], "not granted restart of \"u9\""),
        (["restart", "other", "u1"], "no app \"other\""),
        (["reload", "echo", "u1"], "not granted reload"),
    ] {
        let mut all = vec!["effect-request", "--socket", socket_arg];
        all.extend(args);
        let out = weir(&all);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(why),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    assert!(!marker.exists(), "nothing ran");
    // The host, through the helper.
    let mut host = RunningHost::spawn(dir, marker.clone(), config.clone());
    let ready = rt_block(weir_test_support::nats::wait_consumer(
        &server.url(),
        "weir_1_echo",
        std::time::Duration::from_secs(30),
    ));
    assert!(ready);
    publish_restart(&server.url(), 1, None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_to_string(&marker).unwrap_or_default().trim() != "echo u1" {
        assert!(
            std::time::Instant::now() < deadline,
            "marker: {:?}",
            std::fs::read_to_string(&marker)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    signal(&host.child, "TERM");
    let (status, _) = wait_exit(&mut host.child, std::time::Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()));
    // No helper: the host's request says so (69).
    let out = weir(&[
        "effect-request",
        "--socket",
        "/nonexistent/weir.sock",
        "restart",
        "a",
        "b",
    ]);
    assert_eq!(out.status.code(), Some(69), "{}", text(&out.stderr));
}

fn rt_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// `weir run` without `[nats] url` starts the embedded nats-server on
/// `nats.embedded_port`, and `weir publish --config` with the same file
/// publishes to it: a host and a publisher pair on one config. A second host
/// on the same port is refused with the reason (69); a host killed with
/// SIGKILL leaves no server behind.
#[test]
fn run_and_publish_pair_on_one_config_with_the_embedded_server() {
    let _heavy = crate::common::heavy();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("effects.log");
    let config = dir.path().join("weir.toml");
    let port = crate::common::free_addr().port();
    crate::common::marker_config("nats://127.0.0.1:4222", &marker, 100)
        .nats(|n| {
            n.url = None;
            n.urls = None;
            n.embedded_port = port;
            n.state_dir = Some(dir.path().join("nats"));
        })
        .write(&config)
        .unwrap();
    let mut host = RunningHost::spawn(dir, marker, config.clone());
    let ready = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(weir_test_support::nats::wait_consumer(
            &format!("nats://127.0.0.1:{port}"),
            "weir_1_echo",
            std::time::Duration::from_secs(30),
        ));
    assert!(ready, "the embedded server on port {port} has no consumer");
    let out = weir(&[
        "publish",
        "--config",
        config.to_str().unwrap(),
        "--name",
        "test",
        "--source",
        "cluster",
        "--payload",
        "restart:u7",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    host.wait_units(1);
    assert!(host.units().contains("u7"), "{:?}", host.units());
    // The port is the first host's: a second one says so and exits 69.
    let second = weir(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(second.status.code(), Some(69), "{}", text(&second.stderr));
    assert!(
        text(&second.stderr).contains(&format!("127.0.0.1:{port} is in use")),
        "{}",
        text(&second.stderr)
    );
    // A host killed with SIGKILL takes its embedded server with it: the
    // port is free again (else the next start would be refused).
    host.child.kill().unwrap();
    host.child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the embedded server outlived its killed host (port {port} still taken)"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `weir check --config`: every problem of a whole configuration at once,
/// offline (78, `--json`), and 0 for a valid one.
#[test]
fn check_config_reports_every_problem_offline() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    crate::common::marker_config("nats://127.0.0.1:4222", &dir.path().join("m"), 3)
        .write(&good)
        .unwrap();
    let out = weir(&["check", "--config", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("verdict: valid"),
        "{}",
        text(&out.stdout)
    );
    // A file that cannot be read: 78, naming it, with and without --json.
    for json in [false, true] {
        let mut args = vec!["check", "--config", "/nonexistent/weir.toml"];
        args.extend(json.then_some("--json"));
        let out = weir(&args);
        assert_eq!(out.status.code(), Some(78), "{}", text(&out.stderr));
        assert_stderr_has(&out, "/nonexistent/weir.toml");
    }
    let text_of_good = std::fs::read_to_string(&good).unwrap();
    let check = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = weir(&["check", "--config", path.to_str().unwrap(), "--json"]);
        assert_eq!(
            out.status.code(),
            Some(78),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(verdict["valid"], false, "{verdict}");
        verdict
    };
    // A valid file whose component the runtime refuses: deployed as
    // `weir run` would, it is refused with the reason.
    let refused = check(
        "refused.toml",
        text_of_good.replace(
            weir_test_artifacts::ECHO,
            weir_test_artifacts::UNKNOWN_IMPORT,
        ),
    );
    assert!(
        refused["problems"].to_string().contains("acme:vault"),
        "{refused}"
    );
    assert_eq!(refused["apps"][0]["deployable"], false, "{refused}");
    // Problems of the file and of the component, all at once.
    let both = check(
        "both.toml",
        text_of_good
            .replace("replicas = 1\n", "replicas = 9\n")
            .replace(
                weir_test_artifacts::ECHO,
                weir_test_artifacts::UNKNOWN_IMPORT,
            ),
    );
    let problems = both["problems"].to_string();
    assert!(problems.contains("replicas = 9"), "{problems}");
    assert!(problems.contains("acme:vault"), "{problems}");
}

/// `weir invoke --config F --app NAME` deploys the app as `weir run` would
/// (its component, node, domains, limits, grants): the mail app of the
/// example node restarts for its own domain, which the same component with
/// no domains does not.
#[test]
fn invoke_takes_the_app_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        r#"{"name": "user-domain-changed", "source": "cluster", "payload": "{\"domains\": [\"dom01.example.org\"]}"}"#,
    )
    .unwrap();
    let config = crate::common::examples_dir().join("ns8/node1.toml");
    let restarts = |args: &[&str]| {
        let mut all = vec!["invoke", "--events", events.to_str().unwrap()];
        all.extend(args);
        let out = weir(&all);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout).matches("\"restart\"").count()
    };
    assert_eq!(
        restarts(&["--config", config.to_str().unwrap(), "--app", "mail1"]),
        2,
        "dovecot and postfix for the app's own domain"
    );
    assert_eq!(
        restarts(&[weir_test_artifacts::MAIL]),
        0,
        "no domains: not mine"
    );
    let out = weir(&[
        "invoke",
        "--config",
        config.to_str().unwrap(),
        "--events",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(64), "two apps and no --app");
    assert!(
        text(&out.stderr).contains("name one with --app"),
        "{}",
        text(&out.stderr)
    );
}
