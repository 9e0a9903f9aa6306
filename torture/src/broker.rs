//! nats-server faults while a host (in this process) consumes: stopped with
//! SIGTERM and SIGKILL, down 1 s and 30 s, and down when the host starts.
//! No manual action: the host and the publisher reconnect on their own.
//! Judged by the ledger, with the time to resume after each fault.

use std::time::{Duration, Instant};

use weir_host::nats::NatsServer;

use crate::report::Report;
use crate::util::{ByMode, Mode, wait_for};
use weir_test_support::ledger::{self, Publisher, Scratch};

/// Publish rate: 200 events/s.
const RATE: u32 = 200;
/// Bar on resuming after the server is back: 10 s ("within seconds").
const RESUME_BAR: Duration = Duration::from_secs(10);

/// (signal, seconds down) of each fault: down 1 s and 30 s (CI run: 1 s
/// and 10 s, still past the client's reconnect backoff).
const FAULTS: ByMode<[(&str, u64); 4]> = ByMode {
    full: [("TERM", 1), ("KILL", 1), ("TERM", 30), ("KILL", 30)],
    ci: [("TERM", 1), ("KILL", 1), ("TERM", 10), ("KILL", 10)],
};

async fn resumed_after(ledger: &std::path::Path) -> Option<Duration> {
    let before = ledger::handled(ledger);
    let t = Instant::now();
    wait_for(Duration::from_secs(60), || ledger::handled(ledger) > before)
        .await
        .then(|| t.elapsed())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// Run the scenario.
pub async fn run(report: &mut Report, mode: Mode) -> anyhow::Result<()> {
    let faults = FAULTS.pick(mode);
    let scratch = Scratch::new()?;
    let server = NatsServer::start(&scratch.dir.path().join("js"))?;
    let url = server.url();
    let plan = scratch.echo_plan(&url)?;
    let host = weir_host::http::start(plan.clone()).await?;
    let publisher = Publisher::start(&url, RATE, "b").await?;
    let mut server = Some(server);
    let mut resumes = Vec::new();
    for (signal, down) in faults {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut s = server.take().expect("server");
        eprintln!("   nats-server SIG{signal}, down {down} s");
        s = blocking(move || {
            if signal == "KILL" {
                s.kill();
            } else {
                s.stop();
            }
            s
        })
        .await;
        tokio::time::sleep(Duration::from_secs(down)).await;
        let s = blocking(move || s.restart().map(|()| s)).await?;
        server = Some(s);
        let r = resumed_after(&scratch.ledger).await;
        resumes.push((format!("SIG{signal}, down {down} s"), r));
    }
    // NATS down when the host starts: the host waits, then serves.
    host.shutdown().await?;
    let mut s = server.take().expect("server");
    s = blocking(move || {
        s.stop();
        s
    })
    .await;
    let starting = tokio::spawn(weir_host::http::start(plan));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = blocking(move || s.restart().map(|()| s)).await?;
    let r = resumed_after(&scratch.ledger).await;
    resumes.push(("down at host start (3 s)".to_owned(), r));
    let host = starting.await??;
    let published = publisher.finish().await;
    let drained = ledger::drain(
        &published,
        &scratch.ledger,
        &s.url(),
        "ledger",
        Duration::from_secs(60),
    )
    .await;
    host.shutdown().await?;
    let dead = ledger::dead_letters(&s.url(), "ledger").await?;
    drop(s);
    let v = ledger::check(
        &published,
        &ledger::read(&scratch.ledger),
        &dead.keys().cloned().collect(),
    );
    let injected = "nats-server SIGTERM and SIGKILL, down 1 s and 30 s; down at host start";
    report.check(
        "broker faults: lost",
        injected,
        format!(
            "{} of {} acknowledged (drained: {drained})",
            v.lost, v.acked
        ),
        "0",
        v.lost == 0 && drained,
    );
    report.check(
        "broker faults: dead-lettered (out of deliveries)",
        injected,
        format!("{} of {} acknowledged", v.dead_lettered, v.acked),
        "0: the load is all events a handler accepts, so a dead letter here is one the faults caused (default max_deliver 5)",
        v.lost == 0 && v.dead_lettered == 0,
    );
    report.check(
        "broker faults: unexpected",
        injected,
        v.unexpected.to_string(),
        "0",
        v.unexpected == 0,
    );
    report.check(
        "broker faults: effects with unstable keys",
        injected,
        v.unstable_keys.to_string(),
        "0",
        v.unstable_keys == 0,
    );
    report.note(
        "broker faults: publish attempts refused while down (retried)",
        injected,
        published.errors.to_string(),
    );
    for (what, r) in resumes {
        report.check(
            &format!("broker: resume after {what}"),
            "server back on the same port and store",
            r.map_or("never".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
            &format!("≤ {} s, no manual action", RESUME_BAR.as_secs()),
            r.is_some_and(|d| d <= RESUME_BAR),
        );
    }
    Ok(())
}
