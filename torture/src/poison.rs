//! Hostile headers and payloads mixed into a steady stream: while the
//! ledger publisher sends 200 events/s, a raw socket (`HPUB`, no client
//! library) sends, every [`INJECT_EVERY`], one event whose header block is
//! one of [`hostile_blocks`] in turn and one whose payload is one of
//! [`hostile_payloads`] in turn. The readable header blocks carry an id and
//! ask for the ledger's restart, so the checker counts them like the
//! publisher's; the unreadable ones must each come back as a dead letter
//! naming the headers, the malformed payloads as dead letters naming the
//! payload's fault. Judged by the ledger: none lost, none unexpected, no
//! dead letter but the expected ones.

use std::time::{Duration, Instant};

use weir_host::nats::NatsServer;
use weir_test_support::hostile::{
    JETSTREAM_MAX_HEADER_BYTES, RawMessage, block, hostile_blocks, hostile_payloads, hpub,
};
use weir_test_support::ledger::{self, EVENT, Publisher, Scratch, UNIT};

use crate::report::Report;
use crate::util::{ByMode, Mode};

/// Publish rate of the steady stream: 200 events/s.
const RATE: u32 = 200;
/// One hostile event this often: 250 ms.
const INJECT_EVERY: Duration = Duration::from_millis(250);
/// How long hostile events are mixed in: 20 s, 80 of them (CI run: 8 s,
/// 32 of them).
const INJECT_FOR: ByMode<Duration> = ByMode {
    full: Duration::from_secs(20),
    ci: Duration::from_secs(8),
};
/// Longest wait for every event to be decided after the last publish:
/// 60 s (an event delivered alongside an unreadable one comes back after
/// the 2 s ack wait).
const SETTLE: Duration = Duration::from_secs(60);
/// What an unreadable event's dead-letter reason says.
const UNREADABLE_REASON: &str = "cannot read this event's headers";
/// Id prefix of the events with a malformed payload.
const PAYLOAD_ID_PREFIX: &str = "poison-payload-";

/// Run the scenario.
pub async fn run(report: &mut Report, mode: Mode) -> anyhow::Result<()> {
    let inject_for = INJECT_FOR.pick(mode);
    let scratch = Scratch::new()?;
    let server = NatsServer::start(&scratch.dir.path().join("js"))?;
    let url = server.url();
    let plan = scratch.echo_plan(&url)?;
    let host = weir_host::http::start(plan).await?;
    let publisher = Publisher::start(&url, RATE, "p").await?;
    let subject = format!("weir.events.{EVENT}.cluster");
    let blocks = hostile_blocks();
    let payloads = hostile_payloads();
    let (mut readable_ids, mut unreadable) = (Vec::new(), 0usize);
    let started = Instant::now();
    let mut i = 0usize;
    while started.elapsed() < inject_for {
        let (_, headers, readable) = &blocks[i % blocks.len()];
        let message: RawMessage = if *readable {
            // The hostile block with an id added after its version line.
            let id = format!("poison-{i}");
            let split = headers
                .iter()
                .position(|&b| b == b'\n')
                .map_or(0, |p| p + 1);
            let mut h = [
                &headers[..split],
                format!("Nats-Msg-Id: {id}\r\n").as_bytes(),
                &headers[split..],
            ]
            .concat();
            // Keep a block at JetStream's cap at the cap: shorten its last
            // value by what the id added (else it is refused, never stored).
            let over = h.len().saturating_sub(JETSTREAM_MAX_HEADER_BYTES);
            if over > 0 {
                let end = h.len() - 4;
                h.drain(end - over..end);
            }
            readable_ids.push(id);
            (subject.clone(), h, format!("restart:{UNIT}").into_bytes())
        } else {
            unreadable += 1;
            (
                subject.clone(),
                headers.clone(),
                format!("restart:{UNIT}").into_bytes(),
            )
        };
        // A readable header block with an id, and a malformed payload.
        let (_, payload) = &payloads[i % payloads.len()];
        let bad_payload: RawMessage = (
            subject.clone(),
            block(
                "NATS/1.0",
                &[format!("Nats-Msg-Id: {PAYLOAD_ID_PREFIX}{i}").as_bytes()],
            ),
            payload.clone(),
        );
        let url = url.clone();
        tokio::task::spawn_blocking(move || hpub(&url, &[message, bad_payload])).await?;
        i += 1;
        tokio::time::sleep(INJECT_EVERY).await;
    }
    let mut published = publisher.finish().await;
    for id in &readable_ids {
        published.attempted.insert(id.clone());
        published.acked.insert(id.clone());
    }
    let drained = ledger::drain(&published, &scratch.ledger, &url, "ledger", SETTLE).await;
    let dead = ledger::dead_letters(&url, "ledger").await?;
    host.shutdown().await?;
    drop(server);
    let header_letters = dead
        .values()
        .filter(|r| r.contains(UNREADABLE_REASON))
        .count();
    // Each malformed payload once, with a reason that is not a handler's
    // (the echo handler is never invoked for them).
    let payload_letters = dead
        .iter()
        .filter(|(id, r)| id.starts_with(PAYLOAD_ID_PREFIX) && !r.contains(UNREADABLE_REASON))
        .count();
    let v = ledger::check(
        &published,
        &ledger::read(&scratch.ledger),
        &dead.keys().cloned().collect(),
    );
    let injected = format!(
        "{i} hostile header blocks ({} readable, {unreadable} unreadable by the client) and {i} malformed payloads among {} events at {RATE}/s",
        readable_ids.len(),
        v.acked
    );
    report.check(
        "poison: lost",
        &injected,
        format!("{} of {} (drained: {drained})", v.lost, v.acked),
        "0",
        v.lost == 0 && drained,
    );
    report.check(
        "poison: unexpected",
        &injected,
        v.unexpected.to_string(),
        "0",
        v.unexpected == 0,
    );
    report.check(
        "poison: unreadable ones dead-lettered with the reason",
        &injected,
        format!("{header_letters} of {unreadable}"),
        "all",
        header_letters == unreadable,
    );
    report.check(
        "poison: malformed payloads dead-lettered with the reason",
        &injected,
        format!("{payload_letters} of {i}"),
        "all",
        payload_letters == i,
    );
    let others = dead.len() - header_letters - payload_letters;
    report.check(
        "poison: other dead letters",
        &injected,
        others.to_string(),
        "0 (default max_deliver 5)",
        others == 0,
    );
    Ok(())
}
