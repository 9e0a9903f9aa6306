//! Envelope normalisation: the fields weir reads from a payload.
//!
//! Real NS8 payloads are inconsistent (`../README` of the corpus lists the
//! cases); this module turns any payload into the same shape, without ever
//! panicking:
//!
//! - `domains` (a list) wins; a scalar `domain` is folded in (legacy format);
//!   duplicates are removed, payload order kept;
//! - the origin node comes from `node_id`, else `node`, an integer or a decimal
//!   string (`"1"`); absent means cluster-wide;
//! - a payload that is not a JSON object (the bare string `cluster/acls`, a
//!   JSON array or scalar) is a valid event with no fields; `{}` is valid;
//! - a payload that starts like a JSON object must be one that every JSON
//!   parser reads the same way, else it is malformed: valid UTF-8 JSON, at
//!   most [`MAX_JSON_DEPTH`] levels deep, no number outside `f64` (`1e400`),
//!   no key repeated within an object.
//!
//! Domains are normalised with [`weir_runtime::domain::normalize_pattern`] (a leading
//! `*.` label is kept, e.g. for certificate names); invalid names are kept raw
//! and never match.

use serde::Deserialize;
use serde::de::IgnoredAny;
use std::collections::HashSet;

use weir_runtime::Event;
use weir_runtime::domain;

/// Default cap on a payload's size, checked before parsing: 1 MiB (NATS's
/// default maximum message size).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// Most domains kept from one payload: 10,000. NS8 clusters carry tens; a
/// longer list is malformed.
pub const MAX_DOMAINS_PER_EVENT: usize = 10_000;

/// Deepest nesting of arrays and objects accepted in a JSON payload: 127
/// levels, what `serde_json`'s recursion limit of 128 admits (the parser most
/// Rust handlers use), so a payload weir accepts never fails a handler's
/// parser for depth.
pub const MAX_JSON_DEPTH: usize = 127;

/// Longest event id accepted (the `Nats-Msg-Id` header): 256 bytes. Ids are
/// keys of idempotency records and dead letters; longer ones are refused.
pub const MAX_EVENT_ID_BYTES: usize = 256;

/// The normalised fields of a payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// Origin node, if the payload names one.
    pub origin_node: Option<u32>,
    /// Normalised domains (invalid ones raw), deduplicated, payload order.
    pub domains: Vec<String>,
}

/// Why a payload cannot be normalised. Such an event is dead-lettered with
/// this reason, never retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The payload is larger than the cap; it was not parsed.
    #[error("payload of {size} bytes exceeds the cap of {cap} bytes")]
    TooLarge {
        /// Payload size in bytes.
        size: usize,
        /// The cap in bytes.
        cap: usize,
    },
    /// The payload looks like a JSON object but is not valid JSON, or a known
    /// field has the wrong type.
    #[error("malformed JSON payload: {0}")]
    Malformed(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NodeRef {
    Int(u64),
    Str(String),
    Other(IgnoredAny),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DomainList {
    List(Vec<DomainItem>),
    Other(IgnoredAny),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DomainItem {
    Name(String),
    Other(IgnoredAny),
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    node_id: Option<NodeRef>,
    #[serde(default)]
    node: Option<NodeRef>,
    #[serde(default)]
    domain: Option<DomainItem>,
    #[serde(default)]
    domains: Option<DomainList>,
}

impl NodeRef {
    fn id(&self) -> Option<u32> {
        match self {
            NodeRef::Int(n) => u32::try_from(*n).ok(),
            NodeRef::Str(s) => s.trim().parse().ok(),
            NodeRef::Other(_) => None,
        }
    }
}

/// Normalise `payload` (at most `max_bytes`).
///
/// # Errors
///
/// [`EnvelopeError::TooLarge`] before parsing; [`EnvelopeError::Malformed`]
/// for a payload that starts with `{` but is not a valid JSON object, nests
/// deeper than [`MAX_JSON_DEPTH`] levels, holds a number outside `f64`,
/// repeats a key within an object, or lists more than
/// [`MAX_DOMAINS_PER_EVENT`] domains.
pub fn parse(payload: &[u8], max_bytes: usize) -> Result<Envelope, EnvelopeError> {
    if payload.len() > max_bytes {
        return Err(EnvelopeError::TooLarge {
            size: payload.len(),
            cap: max_bytes,
        });
    }
    let looks_like_object = payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if !looks_like_object {
        return Ok(Envelope::default());
    }
    strict::validate(payload).map_err(EnvelopeError::Malformed)?;
    let raw: Raw =
        serde_json::from_slice(payload).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    let origin_node = raw
        .node_id
        .as_ref()
        .or(raw.node.as_ref())
        .and_then(NodeRef::id);
    let mut names: Vec<String> = Vec::new();
    if let Some(DomainList::List(items)) = raw.domains {
        if items.len() > MAX_DOMAINS_PER_EVENT {
            return Err(EnvelopeError::Malformed(format!(
                "{} domains exceed the cap of {MAX_DOMAINS_PER_EVENT}",
                items.len()
            )));
        }
        names.extend(items.into_iter().filter_map(|d| match d {
            DomainItem::Name(n) => Some(n),
            DomainItem::Other(_) => None,
        }));
    }
    if let Some(DomainItem::Name(scalar)) = raw.domain {
        names.push(scalar);
    }
    // O(n): a set of what was kept, the payload order preserved.
    let mut domains: Vec<String> = Vec::with_capacity(names.len());
    let mut seen: HashSet<String> = HashSet::with_capacity(names.len());
    for name in names {
        let normal = domain::normalize_pattern(&name).unwrap_or(name);
        if seen.insert(normal.clone()) {
            domains.push(normal);
        }
    }
    Ok(Envelope {
        origin_node,
        domains,
    })
}

/// A strict pass over a JSON document: every value is visited (numbers parsed,
/// so `1e400` fails), depth is capped at [`MAX_JSON_DEPTH`] by `serde_json`'s recursion limit
/// and each object's keys must be distinct.
mod strict {
    use std::collections::HashSet;
    use std::fmt;

    use serde::Deserializer as _;
    use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

    /// Validate `payload` as one JSON value; the error text says why not.
    pub(super) fn validate(payload: &[u8]) -> Result<(), String> {
        let mut de = serde_json::Deserializer::from_slice(payload);
        de.deserialize_any(Strict).map_err(|e| e.to_string())?;
        de.end().map_err(|e| e.to_string())
    }

    struct Strict;

    impl<'de> DeserializeSeed<'de> for Strict {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(Strict)
        }
    }

    impl<'de> Visitor<'de> for Strict {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Strict)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut keys: HashSet<std::borrow::Cow<'de, str>> = HashSet::new();
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if keys.contains(&key) {
                    return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
                }
                map.next_value_seed(Strict)?;
                keys.insert(key);
            }
            Ok(())
        }
    }
}

/// Metadata of an event that does not come from its payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventMeta {
    /// Event id (`Nats-Msg-Id`, else `"<stream>:<sequence>"`).
    pub id: String,
    /// Event name, e.g. `"user-domain-changed"`.
    pub name: String,
    /// Publisher identity with `/`, e.g. `"module/ldapproxy4"`.
    pub source: String,
    /// Delivery attempt, 1-based.
    pub attempt: u32,
    /// Stream sequence (0 outside a stream).
    pub sequence: u64,
    /// Publish time in ms since the Unix epoch (0 if unknown).
    pub published_ms: u64,
}

/// Build the handler's [`Event`] from its metadata and raw payload,
/// normalising the payload's envelope (see module docs).
///
/// # Errors
///
/// As [`parse`].
pub fn event(
    meta: EventMeta,
    payload: Vec<u8>,
    max_payload_bytes: usize,
) -> Result<Event, EnvelopeError> {
    let envelope = parse(&payload, max_payload_bytes)?;
    Ok(Event {
        id: meta.id,
        name: meta.name,
        source: meta.source,
        origin_node: envelope.origin_node,
        domains: envelope.domains,
        payload,
        attempt: meta.attempt.max(1),
        sequence: meta.sequence,
        published_ms: meta.published_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Envelope, EnvelopeError> {
        parse(s.as_bytes(), DEFAULT_MAX_PAYLOAD_BYTES)
    }

    #[test]
    fn list_wins_and_scalar_is_folded_in() {
        let e = p(r#"{"node_id": 4, "domain": "dom01.example.org", "domains": ["dom01.example.org", "DOM02.example.org."]}"#)
            .unwrap();
        assert_eq!(e.origin_node, Some(4));
        assert_eq!(e.domains, ["dom01.example.org", "dom02.example.org"]);
        let legacy = p(r#"{"node_id": 4, "domain": "dom03.example.org"}"#).unwrap();
        assert_eq!(legacy.domains, ["dom03.example.org"]);
        let folded = p(r#"{"domain": "b.org", "domains": ["a.org"]}"#).unwrap();
        assert_eq!(folded.domains, ["a.org", "b.org"]);
    }

    #[test]
    fn node_key_variants() {
        assert_eq!(p(r#"{"node": 4}"#).unwrap().origin_node, Some(4));
        assert_eq!(p(r#"{"node_id": "1"}"#).unwrap().origin_node, Some(1));
        assert_eq!(p(r#"{"node_id": " 7 "}"#).unwrap().origin_node, Some(7));
        assert_eq!(p(r#"{"node_id": "x"}"#).unwrap().origin_node, None);
        assert_eq!(p(r#"{"node_id": -1}"#).unwrap().origin_node, None);
        assert_eq!(p(r#"{"node_id": 99999999999}"#).unwrap().origin_node, None);
        // A null `node_id` counts as absent: `node` is used.
        assert_eq!(
            p(r#"{"node_id": null, "node": 2}"#).unwrap().origin_node,
            Some(2)
        );
        assert_eq!(p(r#"{"module": "traefik4"}"#).unwrap().origin_node, None);
    }

    #[test]
    fn non_json_and_empty_payloads_are_valid() {
        assert_eq!(p("cluster/acls").unwrap(), Envelope::default());
        assert_eq!(p("{}").unwrap(), Envelope::default());
        assert_eq!(p("").unwrap(), Envelope::default());
        assert_eq!(p("[1, 2]").unwrap(), Envelope::default());
        assert_eq!(parse(b"\xff\xfe", 10).unwrap(), Envelope::default());
    }

    #[test]
    fn malformed_and_oversized_payloads_are_errors() {
        assert!(matches!(
            p(r#"{"node_id": 4"#),
            Err(EnvelopeError::Malformed(_))
        ));
        assert!(matches!(
            p(r#"{"node_id": 1, "node_id": 2}"#),
            Err(EnvelopeError::Malformed(_))
        ));
        // 10,000-deep nesting: refused in any field (serde_json's recursion
        // limit), whether weir reads it or not.
        let deep =
            |key: &str| format!("{{\"{key}\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(
            matches!(p(&deep("domains")), Err(EnvelopeError::Malformed(m)) if m.contains("recursion limit"))
        );
        assert!(matches!(
            p(&deep("node_id")),
            Err(EnvelopeError::Malformed(_))
        ));
        assert!(
            matches!(p(&deep("other")), Err(EnvelopeError::Malformed(m)) if m.contains("recursion limit"))
        );
        let at_cap = format!(
            "{{\"x\":{}{}}}",
            "[".repeat(MAX_JSON_DEPTH - 1),
            "]".repeat(MAX_JSON_DEPTH - 1)
        );
        assert_eq!(p(&at_cap), Ok(Envelope::default()));
        let over = format!(
            "{{\"x\":{}{}}}",
            "[".repeat(MAX_JSON_DEPTH),
            "]".repeat(MAX_JSON_DEPTH)
        );
        assert!(matches!(p(&over), Err(EnvelopeError::Malformed(_))));
        // Duplicate keys anywhere: parsers disagree on which wins.
        assert!(
            matches!(p(r#"{"a": {"k": 1, "k": 2}}"#), Err(EnvelopeError::Malformed(m)) if m.contains("duplicate key"))
        );
        assert!(matches!(
            p(r#"{"a": 1, "a": 1}"#),
            Err(EnvelopeError::Malformed(_))
        ));
        // Numbers outside f64, wherever they are.
        assert!(
            matches!(p(r#"{"x": 1e400, "node": 3}"#), Err(EnvelopeError::Malformed(m)) if m.contains("out of range"))
        );
        // Invalid UTF-8 inside a JSON object, trailing garbage, truncation.
        assert!(matches!(
            parse(b"{\"domains\": [\"\xff.org\"]}", 100),
            Err(EnvelopeError::Malformed(_))
        ));
        assert!(matches!(p("{} {}"), Err(EnvelopeError::Malformed(_))));
        let full = r#"{"node_id": 4, "domains": ["dom01.example.org"]}"#;
        for cut in 1..full.len() {
            assert!(
                matches!(p(&full[..cut]), Err(EnvelopeError::Malformed(_))),
                "truncated at {cut}"
            );
        }
        assert_eq!(
            parse(b"{}", 1),
            Err(EnvelopeError::TooLarge { size: 2, cap: 1 })
        );
        let many = format!(
            "{{\"domains\": [{}]}}",
            vec!["\"a.org\""; MAX_DOMAINS_PER_EVENT + 1].join(",")
        );
        assert!(
            matches!(p(&many), Err(EnvelopeError::Malformed(m)) if m.contains("domains exceed the cap"))
        );
    }

    #[test]
    fn odd_field_types_are_ignored_and_invalid_domains_kept_raw() {
        let e = p(r#"{"domains": "not-a-list", "domain": 5}"#).unwrap();
        assert!(e.domains.is_empty());
        let e = p(r#"{"domains": ["ok.org", 5, "bad_name"]}"#).unwrap();
        assert_eq!(e.domains, ["ok.org", "bad_name"]);
        // Big but representable numbers are fine.
        assert_eq!(
            p(r#"{"x": 1e300, "y": 18446744073709551616, "node": 3}"#)
                .unwrap()
                .origin_node,
            Some(3)
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        /// JSON-ish text: the bytes payloads are made of, so random cases
        /// reach deep into the parser rather than failing on the first byte.
        fn jsonish() -> impl Strategy<Value = Vec<u8>> {
            let atoms = prop::sample::select(vec![
                "{",
                "}",
                "[",
                "]",
                ",",
                ":",
                "\"",
                "\"domains\"",
                "\"domain\"",
                "\"node_id\"",
                "\"node\"",
                "\"a.org\"",
                "\"*.B.org.\"",
                "1",
                "-1",
                "1e400",
                "4294967296",
                "null",
                "true",
                "\\u0000",
                "\\ud800",
                " ",
                "\u{FF0E}",
                "xn--",
                "\u{0}",
            ]);
            prop::collection::vec(atoms, 0..40).prop_map(|v| v.concat().into_bytes())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            /// Arbitrary bytes never panic; the result is a value or a reason.
            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse(&bytes, DEFAULT_MAX_PAYLOAD_BYTES);
                let mut object = b"{".to_vec();
                object.extend_from_slice(&bytes);
                let _ = parse(&object, DEFAULT_MAX_PAYLOAD_BYTES);
            }

            /// JSON-like input never panics, and whatever is accepted is
            /// valid JSON to `serde_json` with normalised, distinct domains.
            #[test]
            fn accepted_payloads_are_valid_json(bytes in jsonish()) {
                match parse(&bytes, DEFAULT_MAX_PAYLOAD_BYTES) {
                    Ok(env) => {
                        let starts_object =
                            bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
                        if starts_object {
                            prop_assert!(serde_json::from_slice::<serde_json::Value>(&bytes).is_ok());
                        }
                        let mut seen = std::collections::HashSet::new();
                        for d in &env.domains {
                            prop_assert!(seen.insert(d), "duplicate domain {d}");
                        }
                    }
                    Err(EnvelopeError::Malformed(reason)) => prop_assert!(!reason.is_empty()),
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                }
            }
        }
    }
}
