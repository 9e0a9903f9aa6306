//! Sleeper: blocks in the host instead of spinning, so epoch interruption
//! alone would never stop it. The first payload picks the wait:
//! `sleep` (`std::thread::sleep` for an hour: a monotonic-clock subscription
//! and `pollable.block`), `block-max` (a subscription to the instant
//! `u64::MAX`, blocked on), `poll-max` (`wasi:io/poll.poll` on a subscription
//! of `u64::MAX` ns), `sleep-loop` (one-second sleeps forever); `ok` acks at
//! once. After any wait it acks, so a batch that is not stopped succeeds.
use weir_guest::{Batch, EventExt, Handler};

struct Sleeper;

impl Handler for Sleeper {
    fn handle(batch: &mut Batch) {
        match batch.events().first().and_then(|e| e.text()) {
            Some("sleep") => std::thread::sleep(std::time::Duration::from_secs(3_600)),
            Some("block-max") => wasi::clocks::monotonic_clock::subscribe_instant(u64::MAX).block(),
            Some("poll-max") => {
                let forever = wasi::clocks::monotonic_clock::subscribe_duration(u64::MAX);
                wasi::io::poll::poll(&[&forever]);
            }
            Some("sleep-loop") => loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            },
            _ => {}
        }
    }
}

weir_guest::export!(Sleeper);
