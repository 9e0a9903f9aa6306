//! Debounced effects under `kill -9`: storms of relevant events to the NS8
//! mail app with `debounce_ms = 5000`, the host SIGKILLed at a random point
//! inside each storm's window and restarted. Judged by the restarts
//! executed: each storm's two (dovecot, postfix) exactly once, none lost,
//! every event acked.

use std::process::Child;
use std::time::Duration;

use weir_host::nats::NatsServer;
use weir_test_support::config::{AppBuilder, ConfigBuilder};
use weir_test_support::ledger::Scratch;

use crate::kill::{log_tail, spawn_host};
use crate::report::Report;
use crate::util::{ByMode, Mode, Rng, wait_for};

/// Storms: 5 (CI run: 2), each killed once inside its window.
const STORMS: ByMode<u32> = ByMode { full: 5, ci: 2 };
/// Relevant events per storm: 20, 100 ms apart.
const STORM_EVENTS: u32 = 20;
/// The debounce window: 5,000 ms.
const WINDOW_MS: u64 = 5_000;

/// The executed restarts recorded in `marker`, one line each.
fn executed(marker: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(marker)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Start a host and wait until its consumer exists.
async fn start(config: &std::path::Path, url: &str) -> anyhow::Result<Child> {
    let child = spawn_host(config)?;
    anyhow::ensure!(
        weir_test_support::nats::wait_consumer(url, "weir_1_mail", Duration::from_secs(30)).await,
        "the host did not create its consumer: {}",
        log_tail(config)
    );
    Ok(child)
}

/// Run the scenario.
pub async fn run(report: &mut Report, mode: Mode) -> anyhow::Result<()> {
    let storms = STORMS.pick(mode);
    let scratch = Scratch::new()?;
    let server = NatsServer::start(&scratch.dir.path().join("js"))?;
    let url = server.url();
    let marker = scratch.dir.path().join("restarts");
    let config = scratch.dir.path().join("weir.toml");
    let host = ConfigBuilder::new(1, &url)
        .shell_executor(&format!("echo $0 >> {}", marker.display()))
        .app(
            AppBuilder::ns8_mail("mail", weir_test_artifacts::MAIL, "dom01.example.org")
                .debounce_ms(WINDOW_MS),
        );
    let problems = host.clone().build().problems();
    anyhow::ensure!(problems.is_empty(), "debounce config: {problems:?}");
    host.write(&config)?;
    let publisher = weir_test_support::nats::publisher(&url).await?;
    let mut child = start(&config, &url).await?;
    let mut rng = Rng::from_clock();
    let (mut lost, mut extra, mut kills_in_window) = (0u32, 0usize, 0u32);
    let mut per_storm = Vec::new();
    for storm in 0..storms {
        let before = executed(&marker).len();
        weir_test_support::nats::publish_domain_storm(
            &publisher,
            "dom01.example.org",
            &format!("d{storm}-"),
            STORM_EVENTS as usize,
            Duration::from_millis(100),
        )
        .await?;
        // Every event of the storm acked (so the kill lands in the window,
        // not on an unacknowledged batch), then SIGKILL at a random point
        // of the window.
        let acked = wait_for(Duration::from_secs(10), || {
            ledger_acked(&url, u64::from((storm + 1) * STORM_EVENTS))
        })
        .await;
        anyhow::ensure!(acked, "storm {storm} not acked: {}", log_tail(&config));
        tokio::time::sleep(Duration::from_millis(rng.below(WINDOW_MS - 500))).await;
        if executed(&marker).len() == before {
            kills_in_window += 1;
        }
        child.kill()?;
        child.wait()?;
        child = start(&config, &url).await?;
        wait_for(Duration::from_secs(30), || {
            executed(&marker).len() >= before + 2
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let lines = executed(&marker);
        let ran = &lines[before..];
        let units: std::collections::BTreeSet<&String> = ran.iter().collect();
        if units.len() < 2 {
            lost += 1;
        }
        extra += ran.len().saturating_sub(2);
        per_storm.push(ran.len());
    }
    child.kill()?;
    child.wait()?;
    let injected = format!(
        "{storms} storms of {STORM_EVENTS} relevant events 100 ms apart to the mail app (debounce_ms {WINDOW_MS}), a SIGKILL inside each window ({kills_in_window} before the effect ran)"
    );
    report.check(
        "debounce under kill -9: restarts lost",
        &injected,
        format!(
            "{lost} of {storms} storms without both restarts (restarts per storm {per_storm:?})"
        ),
        "0",
        lost == 0,
    );
    report.check(
        "debounce under kill -9: restarts run twice",
        &injected,
        extra.to_string(),
        "0 (a kill between a restart and the removal of its entry would run it again, with the same keys)",
        extra == 0,
    );
    Ok(())
}

/// Whether the mail consumer at `url` has acked at least `n` events.
fn ledger_acked(url: &str, n: u64) -> bool {
    let url = url.to_owned();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()
            .and_then(|rt| {
                rt.block_on(async {
                    let js = async_nats::jetstream::new(async_nats::connect(&url).await.ok()?);
                    let stream = js.get_stream(weir_host::nats::DEFAULT_STREAM).await.ok()?;
                    let info = stream.consumer_info("weir_1_mail").await.ok()?;
                    Some(info.ack_floor.stream_sequence >= n)
                })
            })
            .unwrap_or(false)
    })
    .join()
    .unwrap_or(false)
}
