//! What this host has settled of one consumer's deliveries, so a consumer
//! of one replica whose server died can be created again on a live server
//! from where this host stands ([`super::consumer`]'s failover).
//!
//! The settled floor is the highest stream sequence at or below which every
//! event the consumer delivered here was acked or terminated: events taken
//! and not yet settled (a batch running, a retry waiting in JetStream after
//! a nak) hold it down. A consumer created again from `floor + 1` delivers
//! everything not settled, plus what was settled above the floor (handled
//! twice; bounded by the consumer's `max_ack_pending`, and their effects
//! are kept from running twice by the effect records).
//!
//! What this host never saw cannot hold the floor: deliveries a previous
//! process took and left unsettled (the consumer's pending acks when it was
//! opened), and a delivery lost on its way (a gap in the consumer's delivery
//! sequence). For those the consumer puts a [`Cursor::hold`] on the floor
//! until the consumer's own ack floor, asked of its server every
//! [`HOLD_CHECK`] meanwhile, shows them settled.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// One consumer's settled floor, shared by the consumer and the events it
/// delivered (each settles itself on ack or term).
#[derive(Debug, Clone, Default)]
pub struct Cursor(Arc<Mutex<State>>);

#[derive(Debug, Default)]
struct State {
    /// Stream sequences delivered and not yet settled.
    open: BTreeSet<u64>,
    /// The highest stream sequence delivered, or the consumer's ack floor
    /// when it was opened.
    highest: u64,
    /// The floor is at most this until the hold's time is up.
    hold: Option<Hold>,
}

#[derive(Debug, Clone, Copy)]
struct Hold {
    /// The floor is at most this (raised by the server's ack floor).
    cap: u64,
    /// The hold ends when the server's ack floor reaches this.
    target: u64,
}

/// How often a consumer whose floor is held asks its server for its ack
/// floor: 1 s. One request per held consumer and second; a hold lasts until
/// what was owed is delivered again and settled (under a second after a
/// start, the previous process having handed its events back). Events
/// settled meanwhile above the cap are what a remake during a hold
/// delivers twice.
pub const HOLD_CHECK: Duration = Duration::from_secs(1);

impl Cursor {
    /// A cursor for a consumer whose ack floor is `ack_floor` (every
    /// sequence at or below it settled).
    pub fn new(ack_floor: u64) -> Self {
        Self(Arc::new(Mutex::new(State {
            open: BTreeSet::new(),
            highest: ack_floor,
            hold: None,
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stream sequence `seq` was delivered (again, after a nak: no change).
    pub fn delivered(&self, seq: u64) {
        if seq == 0 {
            return;
        }
        let mut s = self.state();
        s.open.insert(seq);
        s.highest = s.highest.max(seq);
    }

    /// Stream sequence `seq` was acked or terminated.
    pub fn settled(&self, seq: u64) {
        self.state().open.remove(&seq);
    }

    /// Every sequence at or below this is settled.
    pub fn floor(&self) -> u64 {
        let s = self.state();
        let floor = s.open.first().map_or(s.highest, |first| first - 1);
        s.hold.map_or(floor, |h| floor.min(h.cap))
    }

    /// Keep the floor at or below where it is now until the consumer's ack
    /// floor on its server ([`Cursor::server_floor`]) reaches `target`:
    /// deliveries this host has not seen may be owed at or below `target`
    /// (the pending acks of a previous process when the consumer was
    /// opened, a gap in the delivery sequence). Holds combine: the lower
    /// cap, the higher target.
    pub fn hold(&self, target: u64) {
        let floor = self.floor();
        let mut s = self.state();
        s.hold = Some(match s.hold {
            Some(h) => Hold {
                cap: h.cap.min(floor),
                target: h.target.max(target),
            },
            None => Hold { cap: floor, target },
        });
    }

    /// Whether the floor is held (the consumer should report its server's
    /// ack floor every [`HOLD_CHECK`]).
    pub fn held(&self) -> bool {
        self.state().hold.is_some()
    }

    /// The consumer's ack floor on its server: everything at or below it is
    /// settled there, so a hold's cap rises to it, and the hold ends when it
    /// reaches the hold's target.
    pub fn server_floor(&self, ack_floor: u64) {
        let mut s = self.state();
        if let Some(h) = &mut s.hold {
            if ack_floor >= h.target {
                s.hold = None;
            } else {
                h.cap = h.cap.max(ack_floor);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_held_by_the_lowest_unsettled_delivery() {
        let c = Cursor::new(10);
        assert_eq!(c.floor(), 10);
        for seq in [11, 12, 13, 15] {
            c.delivered(seq);
        }
        assert_eq!(c.floor(), 10);
        c.settled(12);
        c.settled(13);
        assert_eq!(c.floor(), 10, "11 is still open");
        c.settled(11);
        assert_eq!(c.floor(), 14, "15 is open");
        c.settled(15);
        assert_eq!(c.floor(), 15);
        // A nak'd event stays open until it comes back and is settled.
        c.delivered(16);
        c.delivered(17);
        c.settled(17);
        assert_eq!(c.floor(), 15);
        c.delivered(16);
        c.settled(16);
        assert_eq!(c.floor(), 17);
        // Sequence 0 (metadata unreadable) is not tracked.
        c.delivered(0);
        assert_eq!(c.floor(), 17);
    }

    #[test]
    fn a_hold_keeps_the_floor_until_the_servers_ack_floor_reaches_its_target() {
        let c = Cursor::new(10);
        // A previous process took up to 14 and settled some of it.
        c.hold(14);
        assert!(c.held());
        for seq in [15, 16] {
            c.delivered(seq);
            c.settled(seq);
        }
        assert_eq!(c.floor(), 10, "held at the ack floor it was opened with");
        c.server_floor(12);
        assert_eq!(c.floor(), 12, "the server settled up to 12");
        c.server_floor(14);
        assert!(!c.held());
        assert_eq!(c.floor(), 16, "released");
        // Holds combine: the lower cap, the higher target.
        c.hold(20);
        c.delivered(17);
        c.settled(17);
        c.hold(25);
        assert_eq!(c.floor(), 16);
        c.server_floor(20);
        assert!(c.held(), "target 25");
        c.server_floor(25);
        assert_eq!(c.floor(), 17);
    }
}
