//! Deterministic `Nats-Msg-Id`s for events read from Redis pub/sub, so N
//! bridges on N nodes that publish the same event store it once.
//!
//! Redis pub/sub gives a message no id, no sequence and no timestamp. What
//! every bridge sees identically is the channel, the payload, and the
//! order: PUBLISH is propagated through the replication stream, so every
//! replica delivers the same messages in the same order. The id is
//!
//! ```text
//! redis:<first 128 bits of SHA-256(channel NUL payload), hex>:<n>
//! ```
//!
//! where `n` is how many times this bridge received the same channel and
//! payload in the preceding [`id_window`] (the stream's duplicate window
//! plus [`ID_WINDOW_MARGIN`]). So:
//!
//! - the k-th byte-identical repeat within the window gets `n = k`: a
//!   legitimate repeat (NS8's `acl-changed` with payload `cluster/acls`
//!   twice in 26 s, in `examples/ns8/node-join-legacy`) is a new id, stored
//!   again, never folded;
//! - a repeat after the window gets `n = 0` again, which JetStream has
//!   forgotten by then (its duplicate window is shorter by the margin), so it
//!   is stored too;
//! - a bridge that missed some occurrences (it started later, or its Redis
//!   connection dropped) numbers the rest lower: its ids are a subset of
//!   those of a bridge that saw them all, so it stores nothing twice. The
//!   events stored for one channel and payload are as many as the most any
//!   bridge saw.
//!
//! What can still go wrong, by construction:
//!
//! - **folded (lost)**: a repeat when no single bridge saw every occurrence
//!   in the window (bridge A missed the first, bridge B the second); or an
//!   event a bridge could only publish more than the margin (60 s) after it
//!   received it (NATS away) that meets a byte-identical newer one;
//! - **stored twice**: a repeat about one window after the first, which one
//!   bridge counts inside the window and another outside (their receipt
//!   times differ by the replication lag).
//!
//! Memory: one entry per message in the window, at most
//! [`MAX_TRACKED_MESSAGES`]; past that the oldest are forgotten early
//! (counted in [`MsgIds::forgotten`]).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// Added to the stream's duplicate window to make the counting window:
/// 60 s, so an occurrence JetStream may still remember is always counted.
pub const ID_WINDOW_MARGIN: Duration = Duration::from_secs(60);

/// Most messages remembered for counting: 262,144 (at 1,000 events/s, 262
/// s of them; about 40 bytes each).
pub const MAX_TRACKED_MESSAGES: usize = 262_144;

/// The counting window for a stream whose duplicate window is
/// `duplicate_window`: the two added ([`ID_WINDOW_MARGIN`]).
pub fn id_window(duplicate_window: Duration) -> Duration {
    duplicate_window + ID_WINDOW_MARGIN
}

type Digest = [u8; 16];

/// The ids of one bridge's messages, in the order received.
#[derive(Debug)]
pub struct MsgIds {
    window: Duration,
    seen: VecDeque<(Instant, Digest)>,
    counts: HashMap<Digest, u32>,
    forgotten: u64,
}

impl MsgIds {
    /// Count repeats within `window` (see [`id_window`]).
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            seen: VecDeque::new(),
            counts: HashMap::new(),
            forgotten: 0,
        }
    }

    /// The id of a message on `channel` with `payload` received at `now`
    /// (non-decreasing between calls).
    pub fn next(&mut self, channel: &str, payload: &[u8], now: Instant) -> String {
        while let Some(&(at, digest)) = self.seen.front() {
            let full = self.seen.len() >= MAX_TRACKED_MESSAGES;
            if now.saturating_duration_since(at) < self.window && !full {
                break;
            }
            if full && now.saturating_duration_since(at) < self.window {
                self.forgotten += 1;
            }
            self.seen.pop_front();
            if let Some(n) = self.counts.get_mut(&digest) {
                *n -= 1;
                if *n == 0 {
                    self.counts.remove(&digest);
                }
            }
        }
        let mut hash = Sha256::new();
        hash.update(channel.as_bytes());
        hash.update([0]);
        hash.update(payload);
        let mut digest = Digest::default();
        digest.copy_from_slice(&hash.finalize()[..16]);
        let count = self.counts.entry(digest).or_insert(0);
        let n = *count;
        *count += 1;
        self.seen.push_back((now, digest));
        format!("redis:{}:{n}", hex::encode(digest))
    }

    /// Count repeats within `window` from now on (the stream's duplicate
    /// window is read once NATS answers).
    pub fn set_window(&mut self, window: Duration) {
        self.window = window;
    }

    /// Messages forgotten before the end of the window because
    /// [`MAX_TRACKED_MESSAGES`] were remembered.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(180);

    #[test]
    fn same_message_same_id_on_every_bridge_repeats_numbered() {
        let t0 = Instant::now();
        let (mut a, mut b) = (MsgIds::new(W), MsgIds::new(W));
        let ids_a: Vec<String> = (0..3)
            .map(|i| {
                a.next(
                    "cluster/event/acl-changed",
                    b"cluster/acls",
                    t0 + Duration::from_secs(i),
                )
            })
            .collect();
        // Bridge b receives the same stream 50 ms later.
        let ids_b: Vec<String> = (0..3)
            .map(|i| {
                b.next(
                    "cluster/event/acl-changed",
                    b"cluster/acls",
                    t0 + Duration::from_secs(i) + Duration::from_millis(50),
                )
            })
            .collect();
        assert_eq!(ids_a, ids_b);
        assert!(ids_a[0].ends_with(":0") && ids_a[1].ends_with(":1") && ids_a[2].ends_with(":2"));
        assert_ne!(
            a.next(
                "cluster/event/acl-changed",
                b"other",
                t0 + Duration::from_secs(4)
            ),
            a.next(
                "cluster/event/vpn-changed",
                b"cluster/acls",
                t0 + Duration::from_secs(4)
            ),
            "channel and payload both count"
        );
        // NUL separates them: no ambiguity between channel and payload bytes.
        assert_ne!(a.next("ab", b"c", t0), a.next("a", b"bc", t0));
    }

    #[test]
    fn a_bridge_that_missed_one_publishes_a_subset() {
        let t0 = Instant::now();
        let (mut full, mut late) = (MsgIds::new(W), MsgIds::new(W));
        let all: Vec<String> = (0..4)
            .map(|i| full.next("c", b"p", t0 + Duration::from_secs(i)))
            .collect();
        // `late` missed the first occurrence.
        let some: Vec<String> = (1..4)
            .map(|i| late.next("c", b"p", t0 + Duration::from_secs(i)))
            .collect();
        assert!(some.iter().all(|id| all.contains(id)), "{some:?} ⊄ {all:?}");
    }

    #[test]
    fn counts_restart_after_the_window_and_memory_is_bounded() {
        let t0 = Instant::now();
        let mut ids = MsgIds::new(W);
        let first = ids.next("c", b"p", t0);
        assert_eq!(
            ids.next("c", b"p", t0 + W - Duration::from_millis(1)),
            first.replace(":0", ":1")
        );
        // Both earlier occurrences are out of the window now.
        assert_eq!(ids.next("c", b"p", t0 + 2 * W), first);
        assert_eq!(ids.seen.len(), 1);
        assert_eq!(ids.counts.len(), 1);
        let mut ids = MsgIds::new(W);
        for i in 0..MAX_TRACKED_MESSAGES + 10 {
            ids.next("c", i.to_string().as_bytes(), t0);
        }
        assert_eq!(ids.seen.len(), MAX_TRACKED_MESSAGES);
        assert_eq!(ids.forgotten(), 10);
    }
}
