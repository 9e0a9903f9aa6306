//! `weir-torture`: the long reliability harness (the fast checks live in the
//! integration suite, `tests/all`). Each scenario injects a fault or a load,
//! measures a figure and judges it against a bar; the run prints one table
//! (test, injected, figure, bar, verdict) and exits 1 if any bar is missed.
//!
//! ```text
//! weir-torture [--ci] [--budget-secs N] [--kills N] [--only NAME[,NAME]]
//! ```
//!
//! A full run (the default) takes about 10 to 15 minutes on the 2-core
//! reference machine and gives RELIABILITY.md's figures. `--ci` (what
//! `.ci/run` uses) runs every scenario with shorter loops and the same bars
//! in about 5 minutes: 20 kills instead of 100, 4 cluster kills instead of
//! 20, and the other counts each scenario's `ByMode` constants give.
//!
//! Scenarios, in order: `hostile`, `scale`, `kill9`, `broker`, `cluster`,
//! `singleton`, `debounce`, `reload`, `poison`, `load`, `burst`. The
//! budget (default 1,500 s) is shared: `kill9` stops early when its share
//! runs out, and later scenarios are not run when the budget is spent;
//! either is a failed check (a bar nobody measured is not met), and a run
//! with no check at all exits 1. Every scenario starts its own nats-server (three,
//! clustered, for `cluster`).
//!
//! On demand only (`--only cluster-scale`, `--only cluster-growth`):
//! `cluster-scale`, the broker's cost of 3 hosts × 1,000 apps on a
//! 3-server cluster with replicated and with one-replica consumers, with a
//! fault round (several minutes); `cluster-growth`, the same at 100, 300
//! and 1,000 apps per host (about 10 minutes).

mod broker;
mod cluster;
mod cluster_scale;
mod debounce;
mod hostile;
mod kill;
mod load;
mod poison;
mod reload;
mod report;
mod scale;
mod singleton;
mod util;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use report::Report;
use util::{ByMode, Mode};

/// Default time budget of a run: 1,500 s (25 min), which keeps CI under its
/// 60-minute bar with the build and the fast suite.
const DEFAULT_BUDGET: Duration = Duration::from_secs(1_500);

/// Default time budget of a `--ci` run: 600 s; a run that needs more has
/// a scenario that hangs.
const CI_BUDGET: Duration = Duration::from_secs(600);

/// Default `kill -9` iterations: 100 (the issue's bar); 20 in a `--ci` run.
const DEFAULT_KILLS: ByMode<u32> = ByMode { full: 100, ci: 20 };

/// Every scenario, in run order.
const SCENARIOS: [&str; 11] = [
    "hostile",
    "scale",
    "kill9",
    "broker",
    "cluster",
    "singleton",
    "debounce",
    "reload",
    "poison",
    "load",
    "burst",
];

/// Scenarios run only when named (`--only`): long measurements, not bars
/// every CI run checks.
const ON_DEMAND: [&str; 2] = ["cluster-scale", "cluster-growth"];

struct Options {
    mode: Mode,
    budget: Duration,
    kills: u32,
    only: Option<Vec<String>>,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mode = if args.iter().any(|a| a == "--ci") {
        Mode::Ci
    } else {
        Mode::Full
    };
    let mut o = Options {
        mode,
        budget: ByMode {
            full: DEFAULT_BUDGET,
            ci: CI_BUDGET,
        }
        .pick(mode),
        kills: DEFAULT_KILLS.pick(mode),
        only: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--budget-secs" => {
                o.budget = Duration::from_secs(value()?.parse().map_err(|e| format!("{a}: {e}"))?)
            }
            "--kills" => o.kills = value()?.parse().map_err(|e| format!("{a}: {e}"))?,
            "--ci" => {}
            "--only" => o.only = Some(value()?.split(',').map(str::to_owned).collect()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if let Some(only) = &o.only
        && let Some(bad) = only
            .iter()
            .find(|n| !SCENARIOS.contains(&n.as_str()) && !ON_DEMAND.contains(&n.as_str()))
    {
        return Err(format!(
            "unknown scenario {bad:?}; known: {SCENARIOS:?}, on demand: {ON_DEMAND:?}"
        ));
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Child mode: a host process for the kill -9 scenario.
    if args.first().map(String::as_str) == Some("host") {
        return kill::host_main(&args[1..]);
    }
    {
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error,weir::guest=off"));
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .with(
                hostile::SummaryCounter.with_filter(tracing_subscriber::filter::LevelFilter::WARN),
            )
            .init();
    }
    let options = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    eprintln!(
        "weir-torture: {} run, budget {} s, {} kills",
        match options.mode {
            Mode::Full => "full",
            Mode::Ci => "CI (--ci)",
        },
        options.budget.as_secs(),
        options.kills
    );
    let deadline = started + options.budget;
    let mut report = Report::default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let on_demand = ON_DEMAND.into_iter().filter(|n| {
        options
            .only
            .as_ref()
            .is_some_and(|o| o.iter().any(|x| x == n))
    });
    for name in SCENARIOS.into_iter().chain(on_demand) {
        if options
            .only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|n| n == name))
        {
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_secs(30) {
            report.skipped(name, "time budget spent");
            continue;
        }
        eprintln!("== {name} ({}s of budget left)", left.as_secs());
        let t = Instant::now();
        let result = match name {
            "hostile" => rt.block_on(hostile::run(&mut report)),
            "scale" => rt.block_on(scale::run(&mut report)),
            "kill9" => rt.block_on(kill::run(&mut report, options.kills, left / 2)),
            "broker" => rt.block_on(broker::run(&mut report, options.mode)),
            "cluster" => rt.block_on(cluster::run(&mut report, options.mode)),
            "singleton" => rt.block_on(singleton::run(&mut report, options.mode)),
            "debounce" => rt.block_on(debounce::run(&mut report, options.mode)),
            "reload" => rt.block_on(reload::run(&mut report)),
            "poison" => rt.block_on(poison::run(&mut report, options.mode)),
            "load" => rt.block_on(load::sustained(&mut report, options.mode)),
            "burst" => rt.block_on(load::burst(&mut report)),
            "cluster-scale" => rt.block_on(cluster_scale::run(&mut report)),
            "cluster-growth" => rt.block_on(cluster_scale::growth(&mut report)),
            _ => unreachable!("checked against SCENARIOS"),
        };
        if let Err(e) = result {
            report.failed_to_run(name, &format!("{e:#}"));
        }
        eprintln!("   {name} took {:.0}s", t.elapsed().as_secs_f64());
    }
    print!("{}", report.markdown());
    eprintln!(
        "weir-torture: {} checks, {} failed, {:.0}s",
        report.len(),
        report.failures(),
        started.elapsed().as_secs_f64()
    );
    if report.len() == 0 {
        eprintln!("weir-torture: no check ran; that is a failure");
        return ExitCode::FAILURE;
    }
    if report.failures() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
