//! Folding at the source (`[bridge] fold_domains_ms`): NS8's legacy
//! per-domain `user-domain-changed` events (one per domain, a scalar
//! `domain` in a JSON object) from one source within the window become one
//! event with a `domains` list, as `weir publish --batch-domains` does for a
//! replay (`weir_host::corpus::fold_domains`).
//!
//! - A group opens with the first foldable event of a source and closes
//!   `fold_domains_ms` later, or at [`MAX_FOLD_EVENTS`], or when the same
//!   source publishes anything else (so one source's events keep their
//!   order), or when the bridge stops.
//! - A group of one is published unchanged (its own payload and id).
//! - A fold's payload is the first event's fields plus `domains` (each
//!   domain once, in order of arrival); its id is `fold:` and the first 128
//!   bits of SHA-256 over its parts' ids, so bridges that formed the same
//!   group store it once. Bridges whose groups differ (a group split by
//!   timing) store both folds: some domains are delivered twice, none is
//!   lost.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use crate::outbox::{Outgoing, Target};

/// The event folded: `user-domain-changed`.
pub const FOLD_EVENT: &str = "user-domain-changed";

/// Most events in one fold: 1,000 (a fold of 1,000 domains is about 30 KB).
pub const MAX_FOLD_EVENTS: usize = 1_000;

/// An open group.
#[derive(Debug)]
struct Group {
    source: String,
    opened: Instant,
    fields: serde_json::Map<String, serde_json::Value>,
    domains: Vec<String>,
    parts: Vec<Outgoing>,
}

/// The open groups, one per source.
#[derive(Debug)]
pub struct Folder {
    window: Duration,
    groups: Vec<Group>,
}

/// What a fold emitted: the event, and how many events went into it.
#[derive(Debug)]
pub struct Folded {
    /// The event to publish.
    pub out: Outgoing,
    /// Events folded into it (1: published unchanged).
    pub parts: usize,
}

impl Folder {
    /// Fold within `window` (`fold_domains_ms`).
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            groups: Vec::new(),
        }
    }

    /// Offer `out`: a foldable event joins its source's group (and may
    /// close it, at [`MAX_FOLD_EVENTS`]); any other event from a source with
    /// an open group closes it first. Returns what is ready, in order,
    /// `out` last unless it was kept.
    pub fn offer(&mut self, out: Outgoing) -> Vec<Folded> {
        let Target::Event { name, source } = &out.target else {
            return vec![Folded { out, parts: 1 }];
        };
        let source = source.clone();
        let fields = (name == FOLD_EVENT)
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.payload).ok())
            .flatten()
            .and_then(|v| match v {
                serde_json::Value::Object(map)
                    if map.get("domain").is_some_and(|d| d.is_string())
                        && !map.contains_key("domains") =>
                {
                    Some(map)
                }
                _ => None,
            });
        let Some(fields) = fields else {
            let mut ready: Vec<Folded> = self.close_source(&source).into_iter().collect();
            ready.push(Folded { out, parts: 1 });
            return ready;
        };
        let domain = fields["domain"].as_str().unwrap_or_default().to_owned();
        match self.groups.iter_mut().find(|g| g.source == source) {
            Some(g) => {
                if !g.domains.contains(&domain) {
                    g.domains.push(domain);
                }
                g.parts.push(out);
                if g.parts.len() >= MAX_FOLD_EVENTS {
                    return self.close_source(&source).into_iter().collect();
                }
            }
            None => self.groups.push(Group {
                source,
                opened: out.received,
                fields,
                domains: vec![domain],
                parts: vec![out],
            }),
        }
        Vec::new()
    }

    /// When the next group closes, if any is open.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.groups.iter().map(|g| g.opened + self.window).min()
    }

    /// Close the groups whose window has passed at `now`.
    pub fn due(&mut self, now: Instant) -> Vec<Folded> {
        let window = self.window;
        let (due, open): (Vec<Group>, Vec<Group>) = std::mem::take(&mut self.groups)
            .into_iter()
            .partition(|g| g.opened + window <= now);
        self.groups = open;
        due.into_iter().map(close).collect()
    }

    /// Close every group (the bridge stops).
    pub fn drain(&mut self) -> Vec<Folded> {
        std::mem::take(&mut self.groups)
            .into_iter()
            .map(close)
            .collect()
    }

    fn close_source(&mut self, source: &str) -> Option<Folded> {
        let i = self.groups.iter().position(|g| g.source == source)?;
        Some(close(self.groups.remove(i)))
    }
}

fn close(mut g: Group) -> Folded {
    let parts = g.parts.len();
    if parts == 1 {
        let out = g.parts.remove(0);
        return Folded { out, parts };
    }
    let mut hash = Sha256::new();
    for p in &g.parts {
        hash.update(p.msg_id.as_bytes());
        hash.update([0]);
    }
    let digest = hash.finalize();
    g.fields.insert(
        "domains".to_owned(),
        serde_json::Value::Array(g.domains.into_iter().map(Into::into).collect()),
    );
    let first = &g.parts[0];
    Folded {
        out: Outgoing {
            target: first.target.clone(),
            payload: Bytes::from(serde_json::Value::Object(g.fields).to_string()),
            msg_id: format!("fold:{}", hex::encode(&digest[..16])),
            received: first.received,
            // The first part's: the fold is published in its trace.
            span: first.span.clone(),
        },
        parts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udc(source: &str, domain: &str, id: &str, at: Instant) -> Outgoing {
        Outgoing {
            target: Target::Event {
                name: FOLD_EVENT.into(),
                source: source.into(),
            },
            payload: Bytes::from(format!(r#"{{"node_id": 4, "domain": "{domain}"}}"#)),
            msg_id: id.into(),
            received: at,
            span: tracing::Span::none(),
        }
    }

    #[test]
    fn one_source_within_the_window_becomes_one_event() {
        let t0 = Instant::now();
        let w = Duration::from_millis(100);
        let mut f = Folder::new(w);
        assert!(
            f.offer(udc("module/ldapproxy4", "a.org", "1", t0))
                .is_empty()
        );
        assert!(
            f.offer(udc("module/ldapproxy4", "b.org", "2", t0))
                .is_empty()
        );
        assert!(
            f.offer(udc("module/ldapproxy4", "a.org", "3", t0))
                .is_empty()
        );
        assert!(
            f.offer(udc("module/ldapproxy5", "a.org", "4", t0))
                .is_empty()
        );
        assert_eq!(f.next_deadline(), Some(t0 + w));
        assert!(f.due(t0 + w - Duration::from_millis(1)).is_empty());
        let done = f.due(t0 + w);
        assert_eq!(done.len(), 2);
        assert_eq!(done[0].parts, 3);
        let payload: serde_json::Value = serde_json::from_slice(&done[0].out.payload).unwrap();
        assert_eq!(payload["domains"], serde_json::json!(["a.org", "b.org"]));
        assert_eq!(payload["node_id"], 4);
        assert!(done[0].out.msg_id.starts_with("fold:"));
        // A group of one is the event itself.
        assert_eq!((done[1].parts, done[1].out.msg_id.as_str()), (1, "4"));
        assert!(f.next_deadline().is_none());
        // Same parts, same id (another bridge's fold).
        let mut g = Folder::new(w);
        for (d, id) in [("a.org", "1"), ("b.org", "2"), ("a.org", "3")] {
            g.offer(udc("module/ldapproxy4", d, id, t0));
        }
        assert_eq!(g.drain()[0].out.msg_id, done[0].out.msg_id);
    }

    #[test]
    fn another_event_of_the_source_closes_its_group_first() {
        let t0 = Instant::now();
        let mut f = Folder::new(Duration::from_secs(1));
        f.offer(udc("module/x", "a.org", "1", t0));
        f.offer(udc("module/x", "b.org", "2", t0));
        let mut other = udc("module/x", "c.org", "3", t0);
        other.payload = Bytes::from_static(br#"{"domains": ["c.org"]}"#);
        let ready = f.offer(other);
        assert_eq!(ready.len(), 2);
        assert_eq!(ready[0].parts, 2);
        assert_eq!(ready[1].out.msg_id, "3");
        // Other names and non-JSON pass at once.
        let mut acl = udc("cluster", "", "4", t0);
        acl.target = Target::Event {
            name: "acl-changed".into(),
            source: "cluster".into(),
        };
        assert_eq!(f.offer(acl).len(), 1);
    }

    #[test]
    fn a_group_closes_at_its_size_cap() {
        let t0 = Instant::now();
        let mut f = Folder::new(Duration::from_secs(60));
        let mut ready = Vec::new();
        for i in 0..MAX_FOLD_EVENTS {
            ready.extend(f.offer(udc("module/x", &format!("d{i}.org"), &i.to_string(), t0)));
        }
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].parts, MAX_FOLD_EVENTS);
        assert!(f.next_deadline().is_none());
    }
}
