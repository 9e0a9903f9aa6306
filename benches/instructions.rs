//! The deterministic regression gate: instruction counts of weir's hot
//! paths under valgrind's callgrind, against a checked-in baseline
//! (`benches/instructions.baseline.json`). Wall-clock figures on a shared
//! 2-core machine move by 10% from run to run; instruction counts do not.
//!
//! Cases (each one iteration of what weir does per event or per batch):
//!
//! - `decode_filter_1`: decode one NS8 `user-domain-changed` payload into an
//!   event and run the mail app's pre-filter on it;
//! - `fresh_call_1`, `fresh_call_64`: a fresh store and instance of the echo
//!   handler and one call with a batch of 1 and 64 events, validated
//!   (`App::invoke_blocking`);
//! - `collapse_64`: validate a batch result of 64 outcomes and 64 effects,
//!   8 distinct (`weir_host::runtime::invoke::validate`);
//! - `host_batch_64`: weir's own per-batch work with no wasmtime in it, so
//!   that it cannot grow unseen inside the `fresh_call_*` counts (where it
//!   is a few percent): 64 NS8 payloads decoded into events and pre-filtered,
//!   then a result of 64 outcomes and 64 effects (8 distinct) validated and
//!   collapsed. Settling (acks) is NATS I/O and not counted.
//!
//! Each case runs in a child process under `valgrind --tool=callgrind`
//! twice, with [`SHORT`] and [`LONG`] iterations, counting only inside
//! `run_case` on the thread that runs it (`--toggle-collect`); the
//! difference divided by `LONG - SHORT` is the count per iteration, free of
//! the set-up (engine, compilation), of process start and exit, and of other
//! threads (the epoch ticker wakes on wall-clock time, which valgrind
//! stretches).
//!
//! The baseline is of the `ci` profile, the one `.ci/run` builds with.
//! Run: `cargo bench --workspace --profile ci --bench instructions`. It prints
//! each case's baseline, count and ratio and exits 1 if a count grew by more
//! than [`TOLERANCE`] (5%). After a change that costs instructions on
//! purpose, update the baseline with `WEIR_UPDATE_BASELINE=1 cargo bench
//! --workspace --profile ci --bench instructions` and commit the file (`-p
//! weir-benches` resolves other features and counts about 1% apart). `cargo
//! bench --workspace --benches --profile ci -- --test` (CI) runs the gate
//! too; without valgrind it fails with the install hint (Debian: `apt-get
//! install valgrind`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;

use weir_host::envelope::{self, EventMeta};
use weir_host::filter::{Filter, RuleConfig};
use weir_host::{AppSpec, BatchResult, DomainSet, Effect, EngineConfig, Event, Outcome, Runtime};

/// Iterations of the shorter child run.
pub const SHORT: u64 = 20;
/// Iterations of the longer child run.
pub const LONG: u64 = 320;
/// Largest growth over the baseline that passes: 5%.
pub const TOLERANCE: f64 = 0.05;
/// Smallest ratio to the baseline that passes: 0.5. A case that drops
/// below half its baseline measured nothing it used to (a renamed case, a
/// loop that no longer runs the handler): a failure, not a speed-up. A
/// real halving is committed as a new baseline.
pub const FLOOR_RATIO: f64 = 0.5;
/// The cases, in report order.
pub const CASES: [&str; 5] = [
    "decode_filter_1",
    "fresh_call_1",
    "fresh_call_64",
    "collapse_64",
    "host_batch_64",
];

const PAYLOAD: &[u8] = br#"{"node_id": 4, "domain": "dom01.example.org"}"#;

fn baseline_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("instructions.baseline.json")
}

fn meta(i: usize) -> EventMeta {
    EventMeta {
        id: format!("gate:{i}"),
        name: "user-domain-changed".into(),
        source: "module/ldapproxy4".into(),
        attempt: 1,
        sequence: i as u64,
        published_ms: 0,
    }
}

/// Event `i`: [`PAYLOAD`] decoded through the envelope.
fn decoded(i: usize) -> Event {
    envelope::event(
        meta(i),
        PAYLOAD.to_vec(),
        envelope::DEFAULT_MAX_PAYLOAD_BYTES,
    )
    .unwrap()
}

fn events(n: usize) -> Vec<Event> {
    (0..n).map(decoded).collect()
}

/// The mail app's pre-filter on node 4 (serving `dom01.example.org`).
fn mail_filter() -> Filter {
    let rules: Vec<RuleConfig> = toml::from_str::<BTreeMap<String, Vec<RuleConfig>>>(
        "[[rule]]\nevent = \"user-domain-changed\"\nsource = \"module/ldapproxy*\"\ndomains = \"mine\"\n",
    )
    .unwrap()
    .remove("rule")
    .unwrap();
    let domains = DomainSet::new(&["dom01.example.org".to_owned()]).unwrap();
    Filter::new(&rules, 4, domains).unwrap()
}

/// A handler's result for a batch of 64: all done, 64 restarts of 8 units.
fn result_64() -> BatchResult {
    BatchResult {
        outcomes: vec![Outcome::Done; 64],
        effects: (0..64)
            .map(|i| Effect::Restart(format!("unit{}.service", i % 8)))
            .collect(),
    }
}

/// One case's work, `iterations` times (the child process).
#[inline(never)]
fn run_case(case: &str, iterations: u64) {
    match case {
        "decode_filter_1" => {
            let filter = mail_filter();
            for i in 0..iterations {
                let event = envelope::event(
                    meta(i as usize),
                    PAYLOAD.to_vec(),
                    envelope::DEFAULT_MAX_PAYLOAD_BYTES,
                )
                .unwrap();
                black_box(filter.check(&event));
            }
        }
        "fresh_call_1" | "fresh_call_64" => {
            let n = if case == "fresh_call_1" { 1 } else { 64 };
            let runtime = Runtime::new(EngineConfig::default()).unwrap();
            let app = runtime
                .deploy_file(
                    AppSpec::new("echo", 4, "node4"),
                    weir_test_artifacts::ECHO.as_ref(),
                )
                .unwrap();
            let batch = events(n);
            for _ in 0..iterations {
                black_box(app.invoke_blocking(&batch).result.unwrap());
            }
        }
        "collapse_64" => {
            for _ in 0..iterations {
                let mut stats = weir_host::InvokeStats::default();
                black_box(
                    weir_host::runtime::invoke::validate(result_64(), 64, 64, &mut stats).unwrap(),
                );
            }
        }
        "host_batch_64" => {
            let filter = mail_filter();
            for _ in 0..iterations {
                let relevant: Vec<Event> = (0..64)
                    .map(decoded)
                    .filter(|e| matches!(filter.check(e), weir_host::filter::Verdict::Relevant(_)))
                    .collect();
                let mut stats = weir_host::InvokeStats::default();
                black_box(
                    weir_host::runtime::invoke::validate(
                        result_64(),
                        relevant.len(),
                        64,
                        &mut stats,
                    )
                    .unwrap(),
                );
            }
        }
        other => panic!("unknown case {other}"),
    }
}

/// Instructions of one child run under callgrind.
fn collected(case: &str, iterations: u64) -> u64 {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("valgrind")
        // Only what runs inside `run_case` on its own thread: not the
        // compiler's threads, not the epoch ticker's wake-ups (wall-clock
        // noise, slowed 50× by valgrind).
        .args([
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            "--toggle-collect=*run_case*",
        ])
        .arg(&exe)
        .args(["--case", case, "--iterations", &iterations.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run valgrind: {e} (Debian: apt-get install valgrind)"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{case} under valgrind failed:\n{stderr}"
    );
    stderr
        .lines()
        .find_map(|l| l.split("Collected :").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no \"Collected\" line from callgrind:\n{stderr}"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        let iterations = args
            .iter()
            .position(|a| a == "--iterations")
            .and_then(|j| args.get(j + 1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        return run_case(&args[i + 1], iterations);
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let baseline: BTreeMap<String, u64> = std::fs::read_to_string(baseline_path())
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let update = std::env::var_os("WEIR_UPDATE_BASELINE").is_some();
    if update && std::env::var_os("CI").is_some() {
        eprintln!(
            "WEIR_UPDATE_BASELINE is refused under CI: a gate that rewrites its own baseline cannot fail"
        );
        std::process::exit(1);
    }
    println!(
        "instructions per iteration under callgrind ({SHORT} and {LONG} iterations, the difference):"
    );
    println!(
        "{:<16} {:>12} {:>12} {:>7}",
        "case", "baseline", "measured", "ratio"
    );
    let mut measured = BTreeMap::new();
    let mut failed = Vec::new();
    for case in CASES {
        let per = (collected(case, LONG) - collected(case, SHORT)) / (LONG - SHORT);
        measured.insert(case.to_owned(), per);
        match baseline.get(case) {
            Some(&base) => {
                let ratio = per as f64 / base as f64;
                println!("{case:<16} {base:>12} {per:>12} {ratio:>7.3}");
                if ratio > 1.0 + TOLERANCE {
                    failed.push(format!(
                        "{case}: {per} instructions, {ratio:.3}× the baseline {base}"
                    ));
                } else if ratio < FLOOR_RATIO {
                    failed.push(format!(
                        "{case}: {per} instructions, {ratio:.3}× the baseline {base}: below {FLOOR_RATIO}×, the case measured (almost) nothing"
                    ));
                }
            }
            None => {
                println!("{case:<16} {:>12} {per:>12} {:>7}", "-", "-");
                if !update {
                    failed.push(format!("{case}: no baseline"));
                }
            }
        }
    }
    if update {
        let text = serde_json::to_string_pretty(&measured).unwrap() + "\n";
        std::fs::write(baseline_path(), text).unwrap();
        println!("baseline written: {}", baseline_path().display());
        return;
    }
    if !failed.is_empty() {
        eprintln!(
            "instruction counts over the baseline by more than {:.0}%, or under half of it:\n  {}\nIf on purpose: WEIR_UPDATE_BASELINE=1 cargo bench --workspace --profile ci --bench instructions, and commit benches/instructions.baseline.json",
            TOLERANCE * 100.0,
            failed.join("\n  ")
        );
        std::process::exit(1);
    }
    println!(
        "every count within {:.0}% of the baseline",
        TOLERANCE * 100.0
    );
}
