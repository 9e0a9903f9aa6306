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

use crate::envelope::{self, EnvelopeError, EventMeta};
use weir_runtime::Event;

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

/// Fold per-domain events into one event per burst: consecutive events with
/// the same name, source and `t_ms` whose JSON payloads carry a scalar
/// `domain` (the legacy NS8 format, one event per domain) become one event
/// whose payload has a `domains` list (and the first `domain`, as NS8's
/// newer format keeps it), the other fields of the first payload, and the id
/// `fold:<first seq>-<last seq>`. Other events pass unchanged.
pub fn fold_domains(events: &[CorpusEvent]) -> Vec<CorpusEvent> {
    let mut out: Vec<CorpusEvent> = Vec::with_capacity(events.len());
    let mut group: Vec<(&CorpusEvent, serde_json::Map<String, serde_json::Value>)> = Vec::new();
    let flush = |group: &mut Vec<(&CorpusEvent, serde_json::Map<String, serde_json::Value>)>,
                 out: &mut Vec<CorpusEvent>| {
        match group.len() {
            0 => {}
            1 => out.push(group[0].0.clone()),
            _ => {
                let (first, fields) = &group[0];
                let mut payload = fields.clone();
                let domains: Vec<serde_json::Value> = group
                    .iter()
                    .filter_map(|(_, f)| f.get("domain").cloned())
                    .collect();
                payload.insert("domains".into(), serde_json::Value::Array(domains));
                let last = group[group.len() - 1].0.seq;
                out.push(CorpusEvent {
                    id: Some(format!("fold:{}-{last}", first.seq)),
                    payload: serde_json::Value::Object(payload).to_string(),
                    ..(*first).clone()
                });
            }
        }
        group.clear();
    };
    for e in events {
        let fields = match serde_json::from_str::<serde_json::Value>(&e.payload) {
            Ok(serde_json::Value::Object(map))
                if map.get("domain").is_some_and(|d| d.is_string())
                    && !map.contains_key("domains") =>
            {
                Some(map)
            }
            _ => None,
        };
        match fields {
            Some(map) => {
                let same = group.first().is_some_and(|(g, _)| {
                    g.name == e.name && g.source == e.source && g.t_ms == e.t_ms
                });
                if !same {
                    flush(&mut group, &mut out);
                }
                group.push((e, map));
            }
            None => {
                flush(&mut group, &mut out);
                out.push(e.clone());
            }
        }
    }
    flush(&mut group, &mut out);
    out
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
    fn fold_domains_turns_a_legacy_burst_into_one_event() {
        let text = [
            r#"{"seq": 0, "t_ms": 0, "source": "cluster", "name": "acl-changed", "payload": "cluster/acls"}"#,
            r#"{"seq": 1, "t_ms": 5, "source": "module/ldapproxy4", "name": "user-domain-changed", "payload": "{\"node_id\": 4, \"domain\": \"a.org\"}"}"#,
            r#"{"seq": 2, "t_ms": 5, "source": "module/ldapproxy4", "name": "user-domain-changed", "payload": "{\"node_id\": 4, \"domain\": \"b.org\"}"}"#,
            r#"{"seq": 3, "t_ms": 9, "source": "module/ldapproxy5", "name": "user-domain-changed", "payload": "{\"node_id\": 5, \"domain\": \"a.org\"}"}"#,
        ]
        .join("\n");
        let folded = fold_domains(&parse_jsonl::<CorpusEvent>(&text).unwrap());
        assert_eq!(folded.len(), 3);
        assert_eq!(folded[1].id.as_deref(), Some("fold:1-2"));
        let event = folded[1].to_event("s", 1 << 20).unwrap();
        assert_eq!(event.domains, ["a.org", "b.org"]);
        assert_eq!(event.origin_node, Some(4));
        assert_eq!(
            folded[2].payload, r#"{"node_id": 5, "domain": "a.org"}"#,
            "a lone event is unchanged"
        );
    }

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
