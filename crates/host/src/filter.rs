//! The declarative pre-filter: per-app relevance rules evaluated by the host
//! before any sandbox starts. An event is relevant to an app if any of its
//! rules matches; irrelevant events are acked and counted, never invoked.
//!
//! Rule shapes seen in real NS8 handlers, all expressible without code:
//!
//! - `event`: one or more event names (required: they become the app's
//!   consumer filter subjects);
//! - `source`: globs over the publisher identity (`cluster`,
//!   `module/ldapproxy*`), for source trust; default any;
//! - `origin = "local"`: the event's origin node is this node; default `any`;
//! - `domains = "mine"`: the event touches one of the app's domains
//!   (wildcards allowed); default `any`;
//! - `field`: a top-level payload field equals a JSON value, or contains one
//!   (array element or substring).
//!
//! ```toml
//! [[app.rule]]                      # ldapproxy remaps ports on its own node only
//! event = "user-domain-changed"
//! source = "module/ldapproxy*"
//! origin = "local"
//! domains = "mine"
//!
//! [[app.rule]]                      # cluster-wide announcements
//! event = "user-domain-changed"
//! source = ["cluster", "module/openldap*", "module/samba*"]
//! domains = "mine"
//! ```
//!
//! Evaluation costs no allocation for rules without `field`; a payload is
//! parsed (once per event) only when a candidate rule has a `field` test.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use weir_runtime::Event;
use weir_runtime::domain::DomainSet;

/// One name or a list of names, as written in TOML.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single string.
    One(String),
    /// A list of strings.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The strings, in order.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// Which origin nodes a rule accepts.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Any origin, including none (cluster-wide). The default.
    #[default]
    Any,
    /// Only events whose origin node is this node.
    Local,
}

/// Which domains a rule accepts.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Domains {
    /// Any event, with or without domains. The default.
    #[default]
    Any,
    /// Only events touching at least one of the app's domains.
    Mine,
}

/// A test on a top-level payload field.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldRule {
    /// Top-level key of the JSON payload, e.g. `"module"`.
    pub name: String,
    /// The field equals this JSON value (a string also matches the same
    /// number written as a string: `"1"` equals `1`).
    #[serde(default)]
    pub equals: Option<Value>,
    /// The field is an array containing this value, or a string containing
    /// this substring.
    #[serde(default)]
    pub contains: Option<Value>,
}

/// A relevance rule as configured (`[[app.rule]]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Event name(s). Required.
    pub event: OneOrMany,
    /// Source glob(s); default any source.
    #[serde(default)]
    pub source: Option<OneOrMany>,
    /// Origin node test; default [`Origin::Any`].
    #[serde(default)]
    pub origin: Origin,
    /// Domain test; default [`Domains::Any`].
    #[serde(default)]
    pub domains: Domains,
    /// Payload field tests; all must hold.
    #[serde(default)]
    pub field: Vec<FieldRule>,
}

#[derive(Debug, Clone)]
struct Rule {
    events: Vec<String>,
    sources: Option<GlobSet>,
    origin: Origin,
    domains: Domains,
    fields: Vec<FieldRule>,
}

/// An app's compiled rules plus what they are evaluated against.
#[derive(Debug, Clone)]
pub struct Filter {
    rules: Vec<Rule>,
    node_id: u32,
    domains: DomainSet,
}

/// The verdict on one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Rule number `n` (0-based) matched: invoke the handler.
    Relevant(usize),
    /// No rule matched: ack and count as skipped.
    Skipped,
    /// No rule matched, at least one rule naming this event refused it only
    /// for its source, and no rule naming it trusts that source: a publisher using an event name it is not trusted
    /// for (e.g. a module publishing a name reserved for `cluster`). Acked and
    /// counted as skipped and as `skipped_source`.
    UntrustedSource,
}

impl Filter {
    /// Compile `rules` for an app on node `node_id` with `domains`.
    ///
    /// # Errors
    ///
    /// Every problem at once, each naming the rule (1-based): no rules, an
    /// empty event list, an invalid event name (empty, or containing `.`,
    /// `*`, `>` or whitespace, which cannot be a subject token), an invalid
    /// glob, a field test with neither or both of `equals` and `contains`,
    /// `domains = "mine"` for an app without domains.
    pub fn new(
        rules: &[RuleConfig],
        node_id: u32,
        domains: DomainSet,
    ) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        if rules.is_empty() {
            problems.push(
                "at least one rule is required (an app without rules would never run)".to_owned(),
            );
        }
        let mut compiled = Vec::with_capacity(rules.len());
        for (i, r) in rules.iter().enumerate() {
            let n = i + 1;
            let events = r.event.to_vec();
            if events.is_empty() {
                problems.push(format!("rule {n}: `event` lists no event name"));
            }
            for e in &events {
                if let Err(err) = crate::nats::subjects::check_token("event name", e) {
                    problems.push(format!("rule {n}: {err}"));
                }
            }
            let sources = match &r.source {
                None => None,
                Some(globs) => {
                    let mut b = GlobSetBuilder::new();
                    for g in globs.to_vec() {
                        // `*` stops at `/`: `module/ldapproxy*` matches
                        // `module/ldapproxy4`, never `module/ldapproxy4/x`.
                        match GlobBuilder::new(&g).literal_separator(true).build() {
                            Ok(glob) => {
                                b.add(glob);
                            }
                            Err(e) => problems.push(format!("rule {n}: source glob {g:?}: {e}")),
                        }
                    }
                    match b.build() {
                        Ok(set) => Some(set),
                        Err(e) => {
                            problems.push(format!("rule {n}: source globs: {e}"));
                            None
                        }
                    }
                }
            };
            for f in &r.field {
                if f.equals.is_some() == f.contains.is_some() {
                    problems.push(format!(
                        "rule {n}: field {:?} needs exactly one of `equals` and `contains`",
                        f.name
                    ));
                }
            }
            if r.domains == Domains::Mine && domains.listed().is_empty() {
                problems.push(format!(
                    "rule {n}: domains = \"mine\" but the app has no domains"
                ));
            }
            compiled.push(Rule {
                events,
                sources,
                origin: r.origin,
                domains: r.domains,
                fields: r.field.clone(),
            });
        }
        if problems.is_empty() {
            Ok(Self {
                rules: compiled,
                node_id,
                domains,
            })
        } else {
            Err(problems)
        }
    }

    /// Every event name the rules mention, deduplicated, in rule order: the
    /// app's consumer filter subjects.
    pub fn event_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for rule in &self.rules {
            for e in &rule.events {
                if !names.contains(&e.as_str()) {
                    names.push(e);
                }
            }
        }
        names
    }

    /// Decide whether `event` is relevant.
    pub fn check(&self, event: &Event) -> Verdict {
        let mut payload: Option<Option<Value>> = None;
        // Refused only for the source by some rule, and trusted by none.
        let mut refused_for_source = false;
        let mut trusted = false;
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.events.contains(&event.name) {
                continue;
            }
            let source_ok = rule
                .sources
                .as_ref()
                .is_none_or(|sources| sources.is_match(&event.source));
            trusted |= source_ok;
            if rule.origin == Origin::Local && event.origin_node != Some(self.node_id) {
                continue;
            }
            if rule.domains == Domains::Mine
                && !event
                    .domains
                    .iter()
                    .any(|d| self.domains.contains_normalized(d))
            {
                continue;
            }
            if !rule.fields.is_empty() {
                let json =
                    payload.get_or_insert_with(|| serde_json::from_slice(&event.payload).ok());
                if !rule.fields.iter().all(|f| field_matches(f, json.as_ref())) {
                    continue;
                }
            }
            if !source_ok {
                refused_for_source = true;
                continue;
            }
            return Verdict::Relevant(i);
        }
        if refused_for_source && !trusted {
            Verdict::UntrustedSource
        } else {
            Verdict::Skipped
        }
    }
}

fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(s), Value::Number(n)) | (Value::Number(n), Value::String(s)) => {
            s.trim() == n.to_string()
        }
        _ => a == b,
    }
}

fn field_matches(rule: &FieldRule, payload: Option<&Value>) -> bool {
    let Some(value) = payload.and_then(|p| p.get(&rule.name)) else {
        return false;
    };
    if let Some(expected) = &rule.equals {
        return loose_eq(value, expected);
    }
    match (&rule.contains, value) {
        (Some(needle), Value::Array(items)) => items.iter().any(|item| loose_eq(item, needle)),
        (Some(Value::String(needle)), Value::String(hay)) => hay.contains(needle.as_str()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{self, EventMeta};

    fn ev(name: &str, source: &str, payload: &str) -> Event {
        let meta = EventMeta {
            name: name.into(),
            source: source.into(),
            ..Default::default()
        };
        envelope::event(meta, payload.as_bytes().to_vec(), 1 << 20).unwrap()
    }

    fn rules(toml_text: &str) -> Vec<RuleConfig> {
        #[derive(Deserialize)]
        struct W {
            rule: Vec<RuleConfig>,
        }
        toml::from_str::<W>(toml_text).unwrap().rule
    }

    const NS8_APP: &str = r#"
        [[rule]]
        event = "user-domain-changed"
        source = "module/ldapproxy*"
        origin = "local"
        domains = "mine"

        [[rule]]
        event = "user-domain-changed"
        source = ["cluster", "module/openldap*", "module/samba*"]
        domains = "mine"
    "#;

    fn app(node: u32, domains: &[&str]) -> Filter {
        Filter::new(&rules(NS8_APP), node, DomainSet::new(domains).unwrap()).unwrap()
    }

    #[test]
    fn ldapproxy_events_are_node_local() {
        let f = app(1, &["dom01.example.org"]);
        let local = ev(
            "user-domain-changed",
            "module/ldapproxy1",
            r#"{"node_id": 1, "domains": ["dom01.example.org"]}"#,
        );
        let remote = ev(
            "user-domain-changed",
            "module/ldapproxy4",
            r#"{"node_id": 4, "domains": ["dom01.example.org"]}"#,
        );
        assert_eq!(f.check(&local), Verdict::Relevant(0));
        assert_eq!(f.check(&remote), Verdict::Skipped);
    }

    #[test]
    fn a_source_glob_star_stops_at_a_slash() {
        let f = app(1, &["dom01.example.org"]);
        let payload = r#"{"node_id": 1, "domains": ["dom01.example.org"]}"#;
        assert_eq!(
            f.check(&ev("user-domain-changed", "module/ldapproxy1", payload)),
            Verdict::Relevant(0)
        );
        // Not a module named `ldapproxy1/x`'s impersonation of ldapproxy1.
        assert_eq!(
            f.check(&ev("user-domain-changed", "module/ldapproxy1/x", payload)),
            Verdict::UntrustedSource
        );
    }

    #[test]
    fn cluster_wide_announcements_reach_every_node() {
        let payload = r#"{"domain":"dom.test","domains":["dom.test"],"node_id":1}"#;
        for node in [1, 2, 3] {
            let f = app(node, &["dom.test"]);
            assert_eq!(
                f.check(&ev("user-domain-changed", "module/openldap1", payload)),
                Verdict::Relevant(1)
            );
        }
        // A module that is not trusted for announcements cannot forge one,
        // and the attempt is told apart from a plain skip.
        assert_eq!(
            app(2, &["dom.test"]).check(&ev("user-domain-changed", "module/mail1", payload)),
            Verdict::UntrustedSource
        );
        // A trusted source refused for another reason is a plain skip.
        assert_eq!(
            app(2, &["other.test"]).check(&ev("user-domain-changed", "module/openldap1", payload)),
            Verdict::Skipped
        );
    }

    #[test]
    fn other_domains_and_other_events_are_skipped() {
        let f = app(1, &["dom01.example.org"]);
        assert_eq!(
            f.check(&ev(
                "user-domain-changed",
                "cluster",
                r#"{"domains": ["dom02.example.org"]}"#
            )),
            Verdict::Skipped
        );
        assert_eq!(
            f.check(&ev("user-domain-changed", "cluster", "{}")),
            Verdict::Skipped
        );
        assert_eq!(
            f.check(&ev("acl-changed", "cluster", "cluster/acls")),
            Verdict::Skipped
        );
        assert_eq!(f.event_names(), ["user-domain-changed"]);
    }

    #[test]
    fn field_rules() {
        let r = rules(
            r#"
            [[rule]]
            event = ["module-added", "module-removed"]
            source = "cluster"
            field = [{ name = "node", equals = 4 }, { name = "module", contains = "traefik" }]
            "#,
        );
        let f = Filter::new(&r, 4, DomainSet::default()).unwrap();
        assert_eq!(
            f.check(&ev(
                "module-added",
                "cluster",
                r#"{"module": "traefik4", "node": 4}"#
            )),
            Verdict::Relevant(0)
        );
        assert_eq!(
            f.check(&ev(
                "module-removed",
                "cluster",
                r#"{"module": "traefik4", "node": "4"}"#
            )),
            Verdict::Relevant(0)
        );
        assert_eq!(
            f.check(&ev(
                "module-added",
                "cluster",
                r#"{"module": "ldapproxy4", "node": 4}"#
            )),
            Verdict::Skipped
        );
        assert_eq!(
            f.check(&ev("module-added", "cluster", "not json")),
            Verdict::Skipped
        );
        let arr = rules("[[rule]]\nevent = \"x\"\nfield = [{ name = \"tags\", contains = \"a\" }]");
        let f = Filter::new(&arr, 1, DomainSet::default()).unwrap();
        assert_eq!(
            f.check(&ev("x", "cluster", r#"{"tags": ["b", "a"]}"#)),
            Verdict::Relevant(0)
        );
        assert_eq!(
            f.check(&ev("x", "cluster", r#"{"tags": ["b"]}"#)),
            Verdict::Skipped
        );
    }

    #[test]
    fn invalid_rules_report_every_problem() {
        let r = rules(
            r#"
            [[rule]]
            event = ["ok", "bad.name", ""]
            source = "module/[oops"
            domains = "mine"
            field = [{ name = "x" }]
            "#,
        );
        let problems = Filter::new(&r, 1, DomainSet::default()).unwrap_err();
        assert_eq!(problems.len(), 5, "{problems:#?}");
        assert!(Filter::new(&[], 1, DomainSet::default()).is_err());
        let unknown =
            toml::from_str::<RuleConfig>("event = \"x\"\norigin = \"remote\"").unwrap_err();
        assert!(unknown.to_string().contains("unknown variant"), "{unknown}");
    }
}
