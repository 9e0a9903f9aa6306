//! The NS8 event corpus format (`examples/ns8/`): JSON Lines of published
//! events, the ground truth of which agent should act on each, and the
//! cluster topology. Read by `weir invoke`, the storm demo and the tests.
//!
//! - `events.jsonl`: one [`CorpusEvent`] per publish;
//! - `deliveries.jsonl`: one [`Delivery`] per (event, agent with a handler);
//! - `topology.json`: the apps, their nodes and domains ([`Topology`]).

use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;

use crate::bindings::Event;
use crate::envelope::{self, EnvelopeError, EventMeta};

/// One published event.
#[derive(Debug, Clone, Deserialize)]
pub struct CorpusEvent {
    /// Position in the scenario (0-based).
    #[serde(default)]
    pub seq: u64,
    /// Offset of the publish in the scenario, in milliseconds.
    #[serde(default)]
    pub t_ms: u64,
    /// Publisher identity, e.g. `"module/ldapproxy4"`.
    pub source: String,
    /// Event name, e.g. `"user-domain-changed"`.
    pub name: String,
    /// The payload exactly as published (not always JSON).
    #[serde(default)]
    pub payload: String,
    /// Event id; default `"<scenario>:<seq>"`.
    #[serde(default)]
    pub id: Option<String>,
    /// Delivery attempt; default 1.
    #[serde(default)]
    pub attempt: u32,
}

impl CorpusEvent {
    /// The handler's [`Event`], its envelope normalised; `scope` prefixes the
    /// default id (`"<scope>:<seq>"`).
    ///
    /// # Errors
    ///
    /// As [`envelope::parse`] (oversized or malformed payload).
    pub fn to_event(&self, scope: &str, max_payload_bytes: usize) -> Result<Event, EnvelopeError> {
        let meta = EventMeta {
            id: self
                .id
                .clone()
                .unwrap_or_else(|| format!("{scope}:{}", self.seq)),
            name: self.name.clone(),
            source: self.source.clone(),
            attempt: self.attempt.max(1),
            sequence: self.seq,
            published_ms: self.t_ms,
        };
        envelope::event(meta, self.payload.clone().into_bytes(), max_payload_bytes)
    }
}

/// Ground truth for one (event, agent) pair.
#[derive(Debug, Clone, Deserialize)]
pub struct Delivery {
    /// The event's `seq`.
    pub seq: u64,
    /// The agent, e.g. `"module/mail1"` or `"node/3"`.
    pub agent: String,
    /// NS8 spawns a handler process for it.
    pub handler_runs: bool,
    /// The handler as shipped restarts or reloads something.
    pub current_effect: bool,
    /// It should: the domain is the app's and the event is cluster-wide or
    /// from the app's own node.
    pub ideal_effect: bool,
}

/// The apps of a corpus scenario.
#[derive(Debug, Clone, Deserialize)]
pub struct Topology {
    /// The apps, in generator order.
    pub apps: Vec<TopologyApp>,
}

/// One app of the topology.
#[derive(Debug, Clone, Deserialize)]
pub struct TopologyApp {
    /// Module id, e.g. `"mail1"`.
    pub name: String,
    /// Node it runs on.
    pub node: u32,
    /// Its user domain.
    pub domain: String,
}

/// Read a JSON Lines file of `T` (blank lines skipped).
///
/// # Errors
///
/// If the file cannot be read or a line does not parse (the line number is
/// in the error).
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    parse_jsonl(&text).with_context(|| format!("in {}", path.display()))
}

/// Parse JSON Lines text of `T` (blank lines skipped).
///
/// # Errors
///
/// The first line that does not parse, with its number.
pub fn parse_jsonl<T: serde::de::DeserializeOwned>(text: &str) -> anyhow::Result<Vec<T>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| serde_json::from_str(l).with_context(|| format!("line {}", n + 1)))
        .collect()
}

/// Read `topology.json`.
///
/// # Errors
///
/// If the file cannot be read or parsed.
pub fn read_topology(path: &Path) -> anyhow::Result<Topology> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("failed to parse {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_corpus_lines_and_reports_bad_ones() {
        let text = "{\"seq\": 3, \"t_ms\": 5, \"source\": \"cluster\", \"name\": \"acl-changed\", \"payload\": \"cluster/acls\"}\n\n";
        let events: Vec<CorpusEvent> = parse_jsonl(text).unwrap();
        let event = events[0].to_event("s", 1 << 20).unwrap();
        assert_eq!(
            (event.id.as_str(), event.sequence, event.attempt),
            ("s:3", 3, 1)
        );
        assert_eq!(event.payload, b"cluster/acls");
        let err = parse_jsonl::<CorpusEvent>("{}\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 1"), "{err:#}");
    }
}
