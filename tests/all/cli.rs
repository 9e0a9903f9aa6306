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
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("core wasm module"),
        "{}",
        text(&out.stderr)
    );
    let out = weir(&["check", "/nonexistent/handler.wasm"]);
    assert_eq!(out.status.code(), Some(2));
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
