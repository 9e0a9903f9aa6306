//! An app acting once per cluster (`scope = "cluster"`) on three host
//! processes sharing one consumer, while hosts are SIGKILLed and restarted
//! under a steady publisher, at default delivery settings (`ack_wait` 30 s,
//! `max_deliver` 5). Judged by the ledger: nothing lost, and effects run
//! again only for what a killed host had in flight.

use std::process::Child;
use std::time::Duration;

use weir_host::nats::NatsServer;
use weir_host::nats::consumer::DEFAULT_ACK_WAIT_MS;
use weir_host::nats::subjects::Scope;
use weir_test_support::ledger::{self, Publisher, Scratch};

use crate::kill::{log_tail, spawn_host};
use crate::report::Report;
use crate::util::{ByMode, Mode, Rng, wait_for};

/// Hosts sharing the app: 3 (nodes 1 to 3).
const HOSTS: u32 = 3;
/// Publish rate: 300 events/s.
const RATE: u32 = 300;
/// SIGKILLs of a random host, each restarted after 1 s: 8 (CI run: 3).
const KILLS: ByMode<u32> = ByMode { full: 8, ci: 3 };
/// Most events in flight on one host (`max_batch`): effects run again
/// (and deliveries repeat) for at most this many per kill.
const IN_FLIGHT: u64 = 64;
/// Longest wait for every event after the last publish: the ack wait (a
/// killed host's events come back after it) plus 30 s.
const DRAIN: Duration = Duration::from_secs(DEFAULT_ACK_WAIT_MS / 1_000 + 30);

/// Run the scenario.
pub async fn run(report: &mut Report, mode: Mode) -> anyhow::Result<()> {
    let kills = KILLS.pick(mode);
    let scratch = Scratch::new()?;
    let server = NatsServer::start(&scratch.dir.path().join("js"))?;
    let url = server.url();
    let mut configs = Vec::new();
    for node in 1..=HOSTS {
        let config = scratch.dir.path().join(format!("node{node}/weir.toml"));
        std::fs::create_dir_all(config.parent().unwrap_or(scratch.dir.path()))?;
        let host = ledger::node_config(
            node,
            Scope::Cluster,
            &url,
            weir_test_artifacts::ECHO,
            &scratch.ledger,
            &scratch.cache,
            DEFAULT_ACK_WAIT_MS,
        );
        let problems = host.clone().build().problems();
        anyhow::ensure!(problems.is_empty(), "singleton config: {problems:?}");
        host.write(&config)?;
        configs.push(config);
    }
    let mut hosts: Vec<Child> = configs
        .iter()
        .map(|c| spawn_host(c))
        .collect::<anyhow::Result<_>>()?;
    let publisher = Publisher::start(&url, RATE, "s").await?;
    let started = wait_for(Duration::from_secs(30), || {
        ledger::handled(&scratch.ledger) > 0
    })
    .await;
    anyhow::ensure!(
        started,
        "no host handled an event: {}",
        log_tail(&configs[0])
    );
    let mut rng = Rng::from_clock();
    for kill in 0..kills {
        tokio::time::sleep(Duration::from_millis(2_000 + rng.below(3_000))).await;
        let victim = rng.below(u64::from(HOSTS)) as usize;
        hosts[victim].kill()?;
        hosts[victim].wait()?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        hosts[victim] = spawn_host(&configs[victim])?;
        if (kill + 1) % 4 == 0 {
            eprintln!(
                "   {}/{kills} kills, {} events acked",
                kill + 1,
                publisher.acked()
            );
        }
    }
    let (published, drained, settle) =
        ledger::finish_and_drain(publisher, &scratch.ledger, &url, "ledger", DRAIN).await;
    for host in &mut hosts {
        host.kill()?;
        host.wait()?;
    }
    let dead = ledger::dead_letters(&url, "ledger").await?;
    let v = ledger::check(
        &published,
        &ledger::read(&scratch.ledger),
        &dead.keys().cloned().collect(),
    );
    let injected = format!(
        "{kills} SIGKILLs of one of {HOSTS} hosts sharing a scope = \"cluster\" app, {RATE} events/s"
    );
    report.ledger_verdict("singleton", &injected, &v, &dead, drained, settle);
    let bound = u64::from(kills) * IN_FLIGHT;
    report.check(
        "singleton: effects run again",
        &injected,
        format!(
            "{} of {} events (the others once, by one host)",
            v.reexecutions, v.handled
        ),
        &format!("≤ kills × in-flight window = {bound}"),
        v.reexecutions <= bound && v.unstable_keys == 0,
    );
    Ok(())
}
