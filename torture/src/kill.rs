//! `kill -9` of a host process at random points, judged by the ledger.
//!
//! A publisher sends 300 events/s throughout. Each iteration starts a host
//! process, waits until it handles new events (the resume time), lets it run
//! a random 0–400 ms more (so kills land before invoke, during it, between an
//! effect and its record, between the record and the ack) and SIGKILLs it.
//! After the last kill a host runs to drain, and the ledger is checked.

use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use weir_host::nats::NatsServer;

use crate::report::Report;
use crate::util::{Rng, wait_for};
use weir_test_support::ledger::{self, Publisher, Scratch};

/// Publish rate during the scenario: 300 events/s.
const RATE: u32 = 300;
/// Ack wait of the ledger app: 1 s (in-flight events of a killed host come
/// back after it).
const ACK_WAIT_MS: u64 = 1_000;
/// Start-up budget of a host process (spawn → consuming): 2 s. The resume
/// bar is this plus the ack wait.
const STARTUP_BUDGET: Duration = Duration::from_secs(2);
/// Most events in flight per host (`max_batch`, fetch only what can start):
/// duplicate deliveries are bounded by this per kill.
const IN_FLIGHT: u64 = 64;

/// Child mode: `weir-torture host --config FILE` runs a host until killed.
pub fn host_main(args: &[String]) -> ExitCode {
    let Some(path) = args.iter().skip_while(|a| *a != "--config").nth(1) else {
        eprintln!("usage: weir-torture host --config FILE");
        return ExitCode::from(2);
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let run = async {
        let config = weir_host::config::Config::load(Path::new(path))?;
        let host = weir_host::http::start(config.plan().expect("valid config")).await?;
        tokio::signal::ctrl_c().await?;
        host.shutdown().await
    };
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("host: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Start a host process; its log goes to `host.log` next to `config`.
pub(crate) fn spawn_host(config: &Path) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.with_file_name("host.log"))?;
    Ok(Command::new(std::env::current_exe()?)
        .args(["host", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

/// The last lines of the hosts' log, for an error message.
pub(crate) fn log_tail(config: &Path) -> String {
    let text = std::fs::read_to_string(config.with_file_name("host.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// Run up to `kills` iterations within `budget`.
pub async fn run(report: &mut Report, kills: u32, budget: Duration) -> anyhow::Result<()> {
    let scratch = Scratch::new()?;
    let server = NatsServer::start(&scratch.dir.path().join("js"))?;
    let config = scratch.dir.path().join("weir.toml");
    let host = ledger::host_config(
        &server.url(),
        weir_test_artifacts::ECHO,
        &scratch.ledger,
        &scratch.cache,
        ACK_WAIT_MS,
    );
    let problems = host.clone().build().problems();
    anyhow::ensure!(problems.is_empty(), "ledger config: {problems:?}");
    host.write(&config)?;
    let publisher = Publisher::start(&server.url(), RATE, "k").await?;
    let mut rng = Rng::from_clock();
    let started = Instant::now();
    let mut resumes = Vec::new();
    let mut done = 0u32;
    let mut stuck = 0u32;
    while done < kills && started.elapsed() < budget {
        let before = ledger::handled(&scratch.ledger);
        let t = Instant::now();
        let mut child = spawn_host(&config)?;
        let mut exited = None;
        let resumed = wait_for(Duration::from_secs(30), || {
            exited = child.try_wait().ok().flatten();
            exited.is_some() || ledger::handled(&scratch.ledger) > before
        })
        .await;
        if let Some(status) = exited {
            anyhow::bail!("host exited ({status}): {}", log_tail(&config));
        }
        if resumed {
            resumes.push(t.elapsed());
        } else {
            stuck += 1;
            eprintln!(
                "   host did not resume within 30 s; log: {}",
                log_tail(&config)
            );
        }
        tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
        child.kill()?;
        child.wait()?;
        done += 1;
        if done.is_multiple_of(10) {
            eprintln!(
                "   {done}/{kills} kills, {} events acked",
                publisher.acked()
            );
        }
    }
    // Drain: one host runs until every acknowledged event is handled.
    let mut child = spawn_host(&config)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let published = publisher.finish().await;
    let drained = ledger::drain(
        &published,
        &scratch.ledger,
        &server.url(),
        "ledger",
        Duration::from_secs(60),
    )
    .await;
    let deliveries = ledger::deliveries(&server.url(), "ledger").await?;
    child.kill()?;
    child.wait()?;
    let dead = ledger::dead_letters(&server.url(), "ledger").await?;
    let v = ledger::check(
        &published,
        &ledger::read(&scratch.ledger),
        &dead.keys().cloned().collect(),
    );
    let injected = format!("kill -9 of the host at random points, {done} times, 300 events/s");
    report.check(
        "kill -9: lost",
        &injected,
        format!(
            "{} of {} acknowledged (drained: {drained})",
            v.lost, v.acked
        ),
        "0",
        v.lost == 0 && drained,
    );
    report.check(
        "kill -9: dead-lettered (out of deliveries)",
        &injected,
        format!(
            "{} of {} acknowledged ({})",
            v.dead_lettered,
            v.acked,
            weir_test_support::ledger::reasons(&dead)
                .first()
                .map_or("none".to_owned(), |(r, n)| format!("{n}× \"{r}\""))
        ),
        "0: the load is all events a handler accepts, so a dead letter here is one the faults caused (default max_deliver 5)",
        v.lost == 0 && v.dead_lettered == 0,
    );
    report.check(
        "kill -9: kills done",
        &injected,
        format!("{done} of {kills} within {:.0} s", budget.as_secs_f64()),
        "all (a loop that stops short measured less than it says)",
        done == kills,
    );
    report.check(
        "kill -9: unexpected",
        &injected,
        v.unexpected.to_string(),
        "0",
        v.unexpected == 0,
    );
    report.duplicate_deliveries(
        "kill -9: duplicate deliveries",
        &injected,
        deliveries,
        v.acked,
        u64::from(done),
        IN_FLIGHT,
    );
    report.check(
        "kill -9: effects with unstable keys",
        &injected,
        v.unstable_keys.to_string(),
        "0 (an executor deduplicating by key applies each effect once)",
        v.unstable_keys == 0,
    );
    report.note(
        "kill -9: effects run again",
        &injected,
        format!(
            "{} of {} (kill between an effect and its record)",
            v.reexecutions, v.handled
        ),
    );
    let max_resume = resumes.iter().max().copied().unwrap_or_default();
    let bar = STARTUP_BUDGET + Duration::from_millis(ACK_WAIT_MS);
    report.check(
        "kill -9: resume after restart",
        &injected,
        format!(
            "max {:.2} s over {} restarts ({stuck} never resumed)",
            max_resume.as_secs_f64(),
            resumes.len()
        ),
        &format!(
            "≤ start-up {} s + ack wait {} s",
            STARTUP_BUDGET.as_secs(),
            ACK_WAIT_MS / 1000
        ),
        stuck == 0 && max_resume <= bar,
    );
    Ok(())
}
