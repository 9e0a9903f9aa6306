//! A host on a 3-server NATS cluster (R3 streams created by weir from
//! `nats.urls` and `nats.replicas`) while servers are SIGKILLed and
//! restarted one at a time, weir's own server included, under a steady
//! publisher, at default delivery settings (`ack_wait` 30 s, `max_deliver`
//! 5). Judged by the ledger, the consumer's ack floor and the time to resume
//! after each kill.

use std::time::{Duration, Instant};

use backon::{ConstantBuilder, Retryable};

use weir_host::nats::consumer::DEFAULT_ACK_WAIT_MS;
use weir_host::nats::{DEFAULT_STREAM, subjects};
use weir_test_support::ledger::{self, Publisher, Scratch};
use weir_test_support::nats::Cluster;

use crate::report::Report;
use crate::util::{ByMode, Mode, Rng, wait_for};

/// Servers in the cluster: 3.
const SERVERS: usize = 3;
/// Publish rate: 300 events/s.
const RATE: u32 = 300;
/// SIGKILLs: 20 (CI run: 4), every third of weir's own server, the others
/// of a random server.
const KILLS: ByMode<u32> = ByMode { full: 20, ci: 4 };
/// Longest down time of a killed server: 4 s (a random 1 to 4 s).
const MAX_DOWN_S: u64 = 4;
/// Bar on resuming after a kill: 20 s (a JetStream election takes up to
/// about 9 s; a request lost with the leader is reissued within a second).
const RESUME_BAR: Duration = Duration::from_secs(20);
/// Most events in flight on the host (`max_batch`): duplicate deliveries are
/// bounded by this per kill.
const IN_FLIGHT: u64 = 64;
/// Longest wait for every event after the last publish: the ack wait (30 s,
/// an event delivered into a dead connection comes back after it) plus 30 s.
const DRAIN: Duration = Duration::from_secs(DEFAULT_ACK_WAIT_MS / 1_000 + 30);
/// Attempts, a second apart, at reading the dead letters after the run: 10
/// (a request can time out while a restarted server's streams elect).
const REQUEST_RETRIES: usize = 10;

/// Run the scenario.
pub async fn run(report: &mut Report, mode: Mode) -> anyhow::Result<()> {
    let kills = KILLS.pick(mode);
    let mut cluster = Cluster::start(SERVERS).await;
    let urls = cluster.urls().join(",");
    let scratch = Scratch::new()?;
    let plan = ledger::host_config(
        &urls,
        weir_test_artifacts::ECHO,
        &scratch.ledger,
        &scratch.cache,
        DEFAULT_ACK_WAIT_MS,
    )
    .nats(|n| n.replicas = 3)
    .build()
    .plan()
    .map_err(|p| anyhow::anyhow!("ledger config: {p:?}"))?;
    let host = weir_host::http::start(plan).await?;
    let mut seeds = cluster.urls();
    seeds.rotate_right(1);
    let publisher = Publisher::start(&seeds.join(","), RATE, "cl").await?;
    let mut rng = Rng::from_clock();
    let mut resumes = Vec::new();
    let mut stuck = 0u32;
    let mut own_kills = 0u32;
    for kill in 0..kills {
        tokio::time::sleep(Duration::from_millis(1_000 + rng.below(2_000))).await;
        let (_, port) = host.connected_server();
        let own = cluster.index_of_port(port);
        let victim = match own {
            Some(own) if kill % 3 == 0 => own,
            _ => rng.below(SERVERS as u64) as usize,
        };
        if Some(victim) == own {
            own_kills += 1;
        }
        let before = ledger::handled(&scratch.ledger);
        let t = Instant::now();
        cluster.kill(victim);
        let resumed = wait_for(Duration::from_secs(60), || {
            ledger::handled(&scratch.ledger) > before
        })
        .await;
        if resumed {
            resumes.push(t.elapsed());
        } else {
            stuck += 1;
        }
        let down = Duration::from_secs(1 + rng.below(MAX_DOWN_S));
        if let Some(left) = down.checked_sub(t.elapsed()) {
            tokio::time::sleep(left).await;
        }
        cluster.restart(victim).await;
        if (kill + 1) % 5 == 0 {
            eprintln!(
                "   {}/{kills} kills, {} events acked",
                kill + 1,
                publisher.acked()
            );
        }
    }
    let last_publish = Instant::now();
    let (published, drained, settle) =
        ledger::finish_and_drain(publisher, &scratch.ledger, &urls, "ledger", DRAIN).await;
    let (floor, floor_after) = settled_floor(&urls, last_publish).await?;
    // Deliveries as the host counted them: the consumer's own delivery
    // sequence is not replicated with every delivery, and falls back when a
    // new leader takes over.
    let deliveries: u64 = host.stats().iter().map(|s| s.received).sum();
    let dead = (|| ledger::dead_letters(&urls, "ledger"))
        .retry(
            ConstantBuilder::default()
                .with_delay(Duration::from_secs(1))
                .with_max_times(REQUEST_RETRIES),
        )
        .await?;
    host.shutdown().await?;
    let v = ledger::check(
        &published,
        &ledger::read(&scratch.ledger),
        &dead.keys().cloned().collect(),
    );
    let injected = format!(
        "{kills} SIGKILLs of one of {SERVERS} servers ({own_kills} of weir's own), down 1-{MAX_DOWN_S} s, R3, {RATE} events/s"
    );
    report.ledger_verdict("cluster", &injected, &v, &dead, drained, settle);
    report.duplicate_deliveries(
        "cluster: duplicate deliveries",
        &injected,
        deliveries,
        v.acked,
        u64::from(kills),
        IN_FLIGHT,
    );
    report.check(
        "cluster: ack floor",
        &injected,
        format!(
            "{} of last sequence {} ({} ack pending) {:.1} s after the last publish",
            floor.floor,
            floor.last,
            floor.ack_pending,
            floor_after.as_secs_f64()
        ),
        &format!(
            "= last sequence within {} s (ack wait + 30 s: an ack lost with a leader is redelivered)",
            DRAIN.as_secs()
        ),
        floor.floor == floor.last,
    );
    let max_resume = resumes.iter().max().copied().unwrap_or_default();
    report.check(
        "cluster: resume after a kill",
        &injected,
        format!(
            "max {:.2} s, median {:.2} s over {} kills ({stuck} never resumed)",
            max_resume.as_secs_f64(),
            crate::util::quantile(&mut resumes, 0.5).as_secs_f64(),
            kills
        ),
        &format!("≤ {} s", RESUME_BAR.as_secs()),
        stuck == 0 && max_resume <= RESUME_BAR,
    );
    Ok(())
}

/// The ledger consumer's ack state at one moment.
#[derive(Debug, Clone, Copy)]
struct Floor {
    floor: u64,
    last: u64,
    ack_pending: usize,
}

/// Polls the ack floor until it reaches the stream's last sequence or
/// [`DRAIN`] has passed since `since`; returns the last state read and when
/// (since `since`). A request that fails (a leader still being elected after
/// the last restart answers nothing for a while) is asked again; only a
/// poll that never succeeds before the deadline is an error.
async fn settled_floor(urls: &str, since: Instant) -> anyhow::Result<(Floor, Duration)> {
    let client = async_nats::connect(weir_test_support::nats::seed_list(urls)).await?;
    let js = async_nats::jetstream::new(client);
    let mut last = None;
    loop {
        match ack_floor(&js).await {
            Ok(floor) => {
                if floor.floor == floor.last {
                    return Ok((floor, since.elapsed()));
                }
                last = Some(floor);
            }
            Err(e) if since.elapsed() >= DRAIN && last.is_none() => {
                return Err(e.context("ack floor never read"));
            }
            Err(e) => tracing::debug!("ack floor: {e:#}"),
        }
        if since.elapsed() >= DRAIN
            && let Some(floor) = last
        {
            return Ok((floor, since.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The ledger consumer's ack floor and ack-pending count, and the stream's
/// last sequence.
async fn ack_floor(js: &async_nats::jetstream::Context) -> anyhow::Result<Floor> {
    let mut stream = js.get_stream(DEFAULT_STREAM).await?;
    let last = stream.info().await?.state.last_sequence;
    let info =
        weir_test_support::nats::current_consumer(&stream, &subjects::consumer_name(1, "ledger"))
            .await
            .ok_or_else(|| anyhow::anyhow!("the ledger consumer does not answer"))?;
    Ok(Floor {
        floor: info.ack_floor.stream_sequence,
        last,
        ack_pending: info.num_ack_pending,
    })
}
