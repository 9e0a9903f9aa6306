//! NATS subjects, stream and consumer names: typed helpers, never inline
//! strings. Defaults live here as constants; the prefix is configurable.
//!
//! - events: `<prefix>.events.<event-name>.<source>` where `<source>` is the
//!   publisher identity with `/` written as `.` (`module/ldapproxy4` →
//!   `module.ldapproxy4`);
//! - dead letters: `<prefix>.dead.<node>.<app>`;
//! - stream [`DEFAULT_STREAM`] captures `<prefix>.events.>`;
//! - one durable consumer per (node, app): `weir_<node>_<app>`; an app of
//!   [`Scope::Cluster`] shares one across nodes: `weir_cluster_<app>`.

use serde::{Deserialize, Serialize};

/// Default subject prefix: `weir`.
pub const DEFAULT_PREFIX: &str = "weir";

/// Default name of the events stream: `WEIR_EVENTS`.
pub const DEFAULT_STREAM: &str = "WEIR_EVENTS";

/// Bucket of effect idempotency records with the default events stream:
/// `WEIR_EFFECTS` (a JetStream key-value bucket, so records survive a host
/// restart). Derived from the stream name: [`effect_records_bucket`].
pub const EFFECT_RECORDS_BUCKET: &str = "WEIR_EFFECTS";

/// Name of the dead-letter stream with the default events stream:
/// `WEIR_DEAD`. Derived from the stream name: [`dead_letter_stream`].
pub const DEFAULT_DEAD_STREAM: &str = "WEIR_DEAD";

/// The app name in the dead-letter subject of `weir bridge`
/// (`<prefix>.dead.<node>.bridge`): `bridge`.
pub const BRIDGE_DEAD_LETTER_APP: &str = "bridge";

/// The inbox prefix a host or bridge uses when its config names none:
/// `_INBOX_weir_node<id>`.
pub fn default_inbox_prefix(node: u32) -> String {
    format!("_INBOX_weir_node{node}")
}

/// The name shared by a deployment's streams and buckets: the events stream
/// without a trailing `_EVENTS` (`WEIR_EVENTS` → `WEIR`, `C1` → `C1`).
fn deployment_base(stream: &str) -> &str {
    stream.strip_suffix("_EVENTS").unwrap_or(stream)
}

/// The dead-letter stream of events stream `stream`: `<base>_DEAD`, where
/// `<base>` is `stream` without a trailing `_EVENTS` (`WEIR_EVENTS` →
/// `WEIR_DEAD`, `C1_EVENTS` → `C1_DEAD`, `C1` → `C1_DEAD`). Two deployments
/// sharing an account have different events streams (their subjects would
/// overlap otherwise), hence different dead letters; only streams named `X`
/// and `X_EVENTS` would share one.
pub fn dead_letter_stream(stream: &str) -> String {
    format!("{}_DEAD", deployment_base(stream))
}

/// The effect-records bucket of events stream `stream`: `<base>_EFFECTS`
/// (`WEIR_EVENTS` → `WEIR_EFFECTS`), as [`dead_letter_stream`].
pub fn effect_records_bucket(stream: &str) -> String {
    format!("{}_EFFECTS", deployment_base(stream))
}

/// The pending-effects bucket of events stream `stream`: `<base>_PENDING`
/// (`WEIR_EVENTS` → `WEIR_PENDING`), as [`dead_letter_stream`]. Holds the
/// effects waiting for their debounce window to close.
pub fn pending_effects_bucket(stream: &str) -> String {
    format!("{}_PENDING", deployment_base(stream))
}

/// The effect rate-limits bucket of events stream `stream`: `<base>_LIMITS`
/// (`WEIR_EVENTS` → `WEIR_LIMITS`), as [`dead_letter_stream`].
pub fn limits_bucket(stream: &str) -> String {
    format!("{}_LIMITS", deployment_base(stream))
}

/// Whether `name` can be part of a bucket name: non-empty, `A-Z a-z 0-9 _ -`
/// only (JetStream's key-value bucket names allow nothing else).
pub fn is_bucket_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The key-value bucket of app `app` (`grants.kv`): `<base>_KV_<app>`
/// (`WEIR_EVENTS`, `mail` → `WEIR_KV_mail`), as [`dead_letter_stream`].
pub fn app_kv_bucket(stream: &str, app: &str) -> String {
    format!("{}_KV_{app}", deployment_base(stream))
}

/// The shared key-value bucket `name` (`grants.kv_shared`):
/// `<base>_KVS_<name>` (`WEIR_KVS_mail`).
pub fn shared_kv_bucket(stream: &str, name: &str) -> String {
    format!("{}_KVS_{name}", deployment_base(stream))
}

/// Check an events stream name: a subject token made of `A-Z a-z 0-9 _ -`
/// only (the effect-records bucket is named after it, and bucket names allow
/// nothing else).
///
/// # Errors
///
/// [`SubjectError`] naming the rule broken.
pub fn check_stream_name(stream: &str) -> Result<(), SubjectError> {
    check_token("stream", stream)?;
    if stream
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        Ok(())
    } else {
        Err(SubjectError {
            what: "stream",
            value: stream.to_owned(),
            why: "only A-Z, a-z, 0-9, '_' and '-' are allowed (its key-value bucket is named after it)",
        })
    }
}

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

    /// Every admin subject: `<prefix>.admin.>` (core NATS, not captured by
    /// any stream weir creates).
    pub fn all_admin(&self) -> String {
        format!("{}.admin.>", self.prefix)
    }

    /// Where a node running `app`'s stable component while a canary runs
    /// elsewhere reports its window:
    /// `<prefix>.admin.canary.<app>.reference.<node>`.
    pub fn canary_reference(&self, app: &str, node: u32) -> String {
        format!("{}.admin.canary.{app}.reference.{node}", self.prefix)
    }

    /// Every node's reference report for `app`:
    /// `<prefix>.admin.canary.<app>.reference.*`.
    pub fn canary_references(&self, app: &str) -> String {
        format!("{}.admin.canary.{app}.reference.*", self.prefix)
    }

    /// Where `node` announces that it rolled `app`'s canary back:
    /// `<prefix>.admin.canary.<app>.rolled_back.<node>`.
    pub fn canary_rolled_back(&self, app: &str, node: u32) -> String {
        format!("{}.admin.canary.{app}.rolled_back.{node}", self.prefix)
    }
}

/// Durable consumer name of `app` on `node`: `weir_<node>_<app>`.
pub fn consumer_name(node: u32, app: &str) -> String {
    format!("weir_{node}_{app}")
}

/// Names one app's consumer may have on a replicated stream: 3. A
/// one-replica consumer whose server stops answering is made again under
/// another of them (its server may come back with the old one, which is
/// deleted then); [`consumer_generation`] gives each. Three, so one can be
/// in use and one waiting to be deleted while a second failover needs a
/// third; NATS permission wildcards match whole tokens only, so `weir
/// permissions` lists each.
pub const CONSUMER_GENERATIONS: u32 = 3;

/// Name `generation` (0 to [`CONSUMER_GENERATIONS`] − 1) of the consumer
/// `base`: `base` itself for 0, `base~<generation>` after it. App names
/// cannot end in `~<digits>` ([`check_app_name`]), so no app's own consumer
/// is another's generation.
pub fn consumer_generation(base: &str, generation: u32) -> String {
    if generation == 0 {
        base.to_owned()
    } else {
        format!("{base}~{generation}")
    }
}

/// An app name is a subject token ([`check_token`]) that does not end in
/// `~` and digits (reserved for [`consumer_generation`]).
///
/// # Errors
///
/// [`SubjectError`] saying why.
pub fn check_app_name(value: &str) -> Result<(), SubjectError> {
    check_token("app name", value)?;
    if let Some((_, digits)) = value.rsplit_once('~')
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(SubjectError {
            what: "app name",
            value: value.to_owned(),
            why: "it ends in '~' and digits (reserved for consumer generations)",
        });
    }
    Ok(())
}

/// Which hosts share an app's durable consumer (`[[app]] scope`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One consumer per node ([`consumer_name`]): every node's host handles
    /// every event. The default.
    #[default]
    Node,
    /// One consumer for the whole cluster ([`cluster_consumer_name`]): the
    /// hosts that run the app pull from it together, so each event is
    /// handled by one of them; when that one dies, its unacknowledged events
    /// go to the others after the ack wait.
    Cluster,
}

impl Scope {
    /// The durable consumer name of `app` on `node` in this scope.
    pub fn consumer_name(self, node: u32, app: &str) -> String {
        match self {
            Self::Node => consumer_name(node, app),
            Self::Cluster => cluster_consumer_name(app),
        }
    }
}

/// Durable consumer name of a [`Scope::Cluster`] app, shared by every node:
/// `weir_cluster_<app>` (never a node's name: those have a number where
/// `cluster` is).
pub fn cluster_consumer_name(app: &str) -> String {
    format!("weir_cluster_{app}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_generations_are_never_another_apps_consumer() {
        assert_eq!(consumer_generation("weir_1_mail", 0), "weir_1_mail");
        assert_eq!(consumer_generation("weir_1_mail", 2), "weir_1_mail~2");
        for ok in ["mail", "mail~", "mail~x", "a~1b", "~"] {
            assert!(check_app_name(ok).is_ok(), "{ok}");
        }
        for refused in ["mail~1", "mail~0042", "~7", "a.b", ""] {
            assert!(check_app_name(refused).is_err(), "{refused}");
        }
    }

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
    fn dead_letters_and_records_are_named_after_the_stream() {
        assert_eq!(dead_letter_stream(DEFAULT_STREAM), DEFAULT_DEAD_STREAM);
        assert_eq!(effect_records_bucket(DEFAULT_STREAM), EFFECT_RECORDS_BUCKET);
        assert_eq!(dead_letter_stream("C1_EVENTS"), "C1_DEAD");
        assert_eq!(effect_records_bucket("staging"), "staging_EFFECTS");
        assert!(check_stream_name("C1_EVENTS").is_ok());
        assert!(check_stream_name("c1$x").is_err());
        assert!(check_stream_name("a.b").is_err());
    }

    #[test]
    fn per_app_names() {
        let s = Subjects::default();
        assert_eq!(s.dead_letter(3, "mail1"), "weir.dead.3.mail1");
        assert_eq!(s.all_dead_letters(), "weir.dead.>");
        assert_eq!(consumer_name(3, "mail1"), "weir_3_mail1");
        assert_eq!(Scope::Node.consumer_name(3, "mail1"), "weir_3_mail1");
        assert_eq!(Scope::Cluster.consumer_name(3, "acme"), "weir_cluster_acme");
        assert_eq!(pending_effects_bucket("WEIR_EVENTS"), "WEIR_PENDING");
    }
}
