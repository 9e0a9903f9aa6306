//! NATS subjects, stream and consumer names: typed helpers, never inline
//! strings. Defaults live here as constants; the prefix is configurable.
//!
//! - events: `<prefix>.events.<event-name>.<source>` where `<source>` is the
//!   publisher identity with `/` written as `.` (`module/ldapproxy4` →
//!   `module.ldapproxy4`);
//! - dead letters: `<prefix>.dead.<node>.<app>`;
//! - stream [`DEFAULT_STREAM`] captures `<prefix>.events.>`;
//! - one durable consumer per (node, app): `weir_<node>_<app>`.

/// Default subject prefix: `weir`.
pub const DEFAULT_PREFIX: &str = "weir";

/// Default name of the events stream: `WEIR_EVENTS`.
pub const DEFAULT_STREAM: &str = "WEIR_EVENTS";

/// Bucket of effect idempotency records: `WEIR_EFFECTS` (a JetStream
/// key-value bucket, so records survive a host restart).
pub const EFFECT_RECORDS_BUCKET: &str = "WEIR_EFFECTS";

/// Default name of the dead-letter stream.
pub const DEFAULT_DEAD_STREAM: &str = "WEIR_DEAD";

/// Header carrying the publisher's event id.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// Dead-letter headers.
pub const DEAD_REASON_HEADER: &str = "Weir-Dead-Reason";
/// Original subject of a dead letter.
pub const DEAD_SUBJECT_HEADER: &str = "Weir-Original-Subject";
/// Deliveries before the event was dead-lettered.
pub const DEAD_ATTEMPTS_HEADER: &str = "Weir-Attempts";
/// Original event id of a dead letter.
pub const DEAD_ID_HEADER: &str = "Weir-Original-Id";

/// Why a name cannot be used in a subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} cannot be used in a NATS subject: {why}")]
pub struct SubjectError {
    /// What was checked (`event name`, `source`, `app name`, ...).
    pub what: &'static str,
    /// The offending value.
    pub value: String,
    /// The rule it breaks.
    pub why: &'static str,
}

/// Check one subject token: non-empty, no `.`, `*`, `>` or whitespace.
///
/// # Errors
///
/// [`SubjectError`] naming `what` and the rule broken.
pub fn check_token(what: &'static str, value: &str) -> Result<(), SubjectError> {
    let why = if value.is_empty() {
        "it is empty"
    } else if value.contains('.') {
        "it contains '.'"
    } else if value.contains(['*', '>']) {
        "it contains a wildcard ('*' or '>')"
    } else if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "it contains whitespace or a control character"
    } else {
        return Ok(());
    };
    Err(SubjectError {
        what,
        value: value.to_owned(),
        why,
    })
}

/// Subjects under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl Subjects {
    /// Subjects under `prefix` (one or more tokens, e.g. `weir` or
    /// `cluster1.weir`).
    ///
    /// # Errors
    ///
    /// If a token of `prefix` is invalid.
    pub fn new(prefix: &str) -> Result<Self, SubjectError> {
        for token in prefix.split('.') {
            check_token("subject prefix token", token)?;
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    /// Subject of event `name` published by `source` (`/`-separated).
    ///
    /// # Errors
    ///
    /// If `name` or a segment of `source` is not a valid token.
    pub fn event(&self, name: &str, source: &str) -> Result<String, SubjectError> {
        check_token("event name", name)?;
        for segment in source.split('/') {
            check_token("source segment", segment)?;
        }
        Ok(format!(
            "{}.events.{name}.{}",
            self.prefix,
            source.replace('/', ".")
        ))
    }

    /// Filter subject for every publisher of event `name`:
    /// `<prefix>.events.<name>.>`.
    ///
    /// # Errors
    ///
    /// If `name` is not a valid token.
    pub fn event_filter(&self, name: &str) -> Result<String, SubjectError> {
        check_token("event name", name)?;
        Ok(format!("{}.events.{name}.>", self.prefix))
    }

    /// Subject the events stream captures: `<prefix>.events.>`.
    pub fn all_events(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    /// Split an event subject into `(name, source)`, the source with `/`
    /// separators; `None` if `subject` is not an event subject under this
    /// prefix or has no source.
    pub fn parse_event<'a>(&self, subject: &'a str) -> Option<(&'a str, String)> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".events.")?;
        let (name, source) = rest.split_once('.')?;
        if name.is_empty() || source.is_empty() || source.split('.').any(str::is_empty) {
            return None;
        }
        Some((name, source.replace('.', "/")))
    }

    /// Subject the dead-letter stream captures: `<prefix>.dead.>`.
    pub fn all_dead_letters(&self) -> String {
        format!("{}.dead.>", self.prefix)
    }

    /// Dead-letter subject of `app` on `node`.
    pub fn dead_letter(&self, node: u32, app: &str) -> String {
        format!("{}.dead.{node}.{app}", self.prefix)
    }
}

/// Durable consumer name of `app` on `node`: `weir_<node>_<app>`.
pub fn consumer_name(node: u32, app: &str) -> String {
    format!("weir_{node}_{app}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_subjects_round_trip() {
        let s = Subjects::default();
        let subject = s.event("user-domain-changed", "module/ldapproxy4").unwrap();
        assert_eq!(subject, "weir.events.user-domain-changed.module.ldapproxy4");
        assert_eq!(
            s.parse_event(&subject),
            Some(("user-domain-changed", "module/ldapproxy4".to_owned()))
        );
        assert_eq!(
            s.event("acl-changed", "cluster").unwrap(),
            "weir.events.acl-changed.cluster"
        );
        assert_eq!(
            s.event_filter("acl-changed").unwrap(),
            "weir.events.acl-changed.>"
        );
        assert_eq!(s.all_events(), "weir.events.>");
    }

    #[test]
    fn invalid_tokens_are_refused_with_the_rule() {
        let s = Subjects::default();
        assert_eq!(
            s.event("a.b", "cluster").unwrap_err().why,
            "it contains '.'"
        );
        assert!(s.event("x", "module//a").is_err());
        assert!(s.event("x", "module/a*").is_err());
        assert!(s.event("x y", "cluster").is_err());
        assert!(s.event_filter(">").is_err());
        assert!(Subjects::new("weir..x").is_err());
        assert_eq!(
            Subjects::new("c1.weir").unwrap().all_events(),
            "c1.weir.events.>"
        );
    }

    #[test]
    fn parse_rejects_foreign_or_truncated_subjects() {
        let s = Subjects::default();
        assert_eq!(s.parse_event("weir.events.x"), None);
        assert_eq!(s.parse_event("other.events.x.cluster"), None);
        assert_eq!(s.parse_event("weir.dead.1.mail"), None);
        assert_eq!(s.parse_event("weir.events.x.module..a"), None);
    }

    #[test]
    fn per_app_names() {
        let s = Subjects::default();
        assert_eq!(s.dead_letter(3, "mail1"), "weir.dead.3.mail1");
        assert_eq!(s.all_dead_letters(), "weir.dead.>");
        assert_eq!(consumer_name(3, "mail1"), "weir_3_mail1");
    }
}
