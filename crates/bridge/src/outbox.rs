//! What the bridge has read from Redis and not yet stored in JetStream: a
//! bounded queue that drops its oldest entries when full (Redis pub/sub
//! offers no replay, so what a full queue drops is gone; it is counted).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Notify;

/// Where one message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The events stream: `<prefix>.events.<name>.<source>`.
    Event {
        /// Event name.
        name: String,
        /// Publisher, `/`-separated (`module/ldapproxy4`).
        source: String,
    },
    /// The dead-letter stream: `<prefix>.dead.<node>.bridge`, with the
    /// channel and the reason in headers.
    Dead {
        /// The Redis channel it came on.
        channel: String,
        /// Why it is not an event.
        reason: String,
    },
}

/// One message to store.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Where it goes.
    pub target: Target,
    /// The payload as published on Redis (a folded event's: the fold).
    pub payload: Bytes,
    /// Its `Nats-Msg-Id` ([`super::msg_id`]).
    pub msg_id: String,
    /// When the bridge received it (the earliest part, for a fold).
    pub received: Instant,
    /// Its trace span when traces are exported (from receipt to stored;
    /// the event carries its context), else [`tracing::Span::none`].
    pub span: tracing::Span,
}

/// The bounded queue: at most `max_events` entries and `max_bytes` of
/// payload.
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<VecDeque<Outgoing>>,
    bytes: Mutex<usize>,
    ready: Notify,
    max_events: usize,
    max_bytes: usize,
}

impl Outbox {
    /// An empty queue holding at most `max_events` entries and `max_bytes`
    /// of payload (each at least 1).
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            bytes: Mutex::new(0),
            ready: Notify::new(),
            max_events: max_events.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    /// The byte cap (`buffer_bytes`).
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Queue `out`; returns how many of the oldest entries were dropped to
    /// make room (`out` itself, if it alone is over `max_bytes`).
    pub fn push(&self, out: Outgoing) -> u64 {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        if out.payload.len() > self.max_bytes {
            return 1;
        }
        let mut dropped = 0;
        while queue.len() >= self.max_events || *bytes + out.payload.len() > self.max_bytes {
            match queue.pop_front() {
                Some(old) => {
                    *bytes -= old.payload.len();
                    dropped += 1;
                }
                None => break,
            }
        }
        *bytes += out.payload.len();
        queue.push_back(out);
        drop((queue, bytes));
        self.ready.notify_one();
        dropped
    }

    /// The oldest entry, waiting for one.
    ///
    /// Cancel safety: cancel safe (nothing is taken until it returns).
    pub async fn pop(&self) -> Outgoing {
        loop {
            let notified = self.ready.notified();
            if let Some(out) = self.try_pop() {
                return out;
            }
            notified.await;
        }
    }

    /// The oldest entry, if any.
    pub fn try_pop(&self) -> Option<Outgoing> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let out = queue.pop_front()?;
        *self.bytes.lock().unwrap_or_else(|p| p.into_inner()) -= out.payload.len();
        Some(out)
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Payload bytes waiting.
    pub fn bytes(&self) -> usize {
        *self.bytes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(id: &str, len: usize) -> Outgoing {
        Outgoing {
            target: Target::Event {
                name: "e".into(),
                source: "cluster".into(),
            },
            payload: Bytes::from(vec![b'x'; len]),
            msg_id: id.into(),
            received: Instant::now(),
            span: tracing::Span::none(),
        }
    }

    #[test]
    fn full_queue_drops_its_oldest_and_counts() {
        let q = Outbox::new(3, 100);
        for i in 0..3 {
            assert_eq!(q.push(out(&i.to_string(), 10)), 0);
        }
        assert_eq!(q.push(out("3", 10)), 1, "count cap");
        assert_eq!(q.try_pop().unwrap().msg_id, "1");
        assert_eq!(
            q.push(out("big", 91)),
            2,
            "byte cap: 20 + 91 > 100 drops two"
        );
        assert_eq!((q.len(), q.bytes()), (1, 91));
        assert_eq!(q.push(out("huge", 101)), 1, "over the cap alone: dropped");
        assert_eq!(q.len(), 1);
    }
}
