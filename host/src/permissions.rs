//! The least-privilege NATS permissions of one host, derived from its config.
//!
//! A host needs (with prefix `weir`, events stream `WEIR_EVENTS`, node `N`,
//! and for each app `A` its durable consumer `weir_N_A`):
//!
//! | direction | subject | why |
//! |---|---|---|
//! | publish | `$JS.API.STREAM.INFO.WEIR_EVENTS`, `…INFO.WEIR_DEAD`, `…INFO.KV_WEIR_EFFECTS` | verify the streams and the effect-records bucket exist |
//! | publish | `$JS.API.CONSUMER.CREATE.WEIR_EVENTS.weir_N_A` (and `.>`) | create or update the app's own consumer |
//! | publish | `$JS.API.CONSUMER.INFO.WEIR_EVENTS.weir_N_A` | the pull stream checks its consumer after a reconnection |
//! | publish | `$JS.API.CONSUMER.MSG.NEXT.WEIR_EVENTS.weir_N_A` | pull batches |
//! | publish | `$JS.ACK.WEIR_EVENTS.weir_N_A.>` | ack / nak / term |
//! | publish | `weir.dead.N.A` | dead letters |
//! | publish | `weir.events.<name>.module.A` for each granted `publish` name | `publish` effects, only as the app itself |
//! | publish | `$KV.WEIR_EFFECTS.nN.>`, `$JS.API.DIRECT.GET.KV_WEIR_EFFECTS.$KV.WEIR_EFFECTS.nN.>` | this node's effect records |
//! | subscribe | `<inbox>.>` (default `_INBOX_weir_nodeN`) | replies: JetStream API, publish acks, pulled events |
//!
//! Nothing else: no stream creation or deletion (an operator creates the
//! streams and the bucket once, e.g. with an unrestricted `weir run`), no
//! other node's or app's consumer, records or dead letters, and no event
//! subject but the app's own source. NATS permission wildcards match whole
//! tokens only, so each app's consumer is listed by name.

use serde::Serialize;

use crate::config::Config;
use crate::nats::subjects::{self, Subjects};
use crate::nats::{DEFAULT_DEAD_STREAM, EFFECT_RECORDS_BUCKET};

/// Subjects a host may publish to and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Permissions {
    /// Publish allow list.
    pub publish: Vec<String>,
    /// Subscribe allow list.
    pub subscribe: Vec<String>,
}

/// The inbox prefix a host uses when its config names none:
/// `_INBOX_weir_node<id>`.
pub fn default_inbox_prefix(node: u32) -> String {
    format!("_INBOX_weir_node{node}")
}

/// The least-privilege permissions of the host described by `config` (see
/// the module docs for each entry).
///
/// # Errors
///
/// If the configured subject prefix is invalid.
pub fn for_host(config: &Config) -> Result<Permissions, subjects::SubjectError> {
    let s = Subjects::new(&config.nats.prefix)?;
    let node = config.node.id;
    let stream = &config.nats.stream;
    let kv_stream = format!("KV_{EFFECT_RECORDS_BUCKET}");
    let mut publish = vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.STREAM.INFO.{DEFAULT_DEAD_STREAM}"),
        format!("$JS.API.STREAM.INFO.{kv_stream}"),
        format!("$KV.{EFFECT_RECORDS_BUCKET}.n{node}.>"),
        format!("$JS.API.DIRECT.GET.{kv_stream}.$KV.{EFFECT_RECORDS_BUCKET}.n{node}.>"),
    ];
    for app in &config.apps {
        let consumer = subjects::consumer_name(node, &app.name);
        publish.extend([
            format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}"),
            format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}.>"),
            format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
            format!("$JS.ACK.{stream}.{consumer}.>"),
            s.dead_letter(node, &app.name),
        ]);
        for name in &app.grants.publish {
            publish.push(s.event(name, &format!("module/{}", app.name))?);
        }
    }
    let inbox = config
        .nats
        .inbox_prefix
        .clone()
        .unwrap_or_else(|| default_inbox_prefix(node));
    Ok(Permissions {
        publish,
        subscribe: vec![format!("{inbox}.>")],
    })
}

impl Permissions {
    /// A nats-server `users` entry for `user` with `password` and these
    /// permissions (the server's configuration syntax; JSON strings are valid
    /// there).
    pub fn server_user(&self, user: &str, password: &str) -> String {
        let list = |v: &[String]| {
            v.iter()
                .map(|s| serde_json::to_string(s).unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{{ user: {}, password: {}, permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }} }} }}",
            serde_json::to_string(user).unwrap_or_default(),
            serde_json::to_string(password).unwrap_or_default(),
            list(&self.publish),
            list(&self.subscribe),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_only_the_hosts_own_consumers_records_and_sources() {
        let config = Config::parse(
            r#"
            [node]
            id = 4
            name = "node4"
            [[app]]
            name = "mail1"
            component = "mail.wasm"
            [[app.rule]]
            event = "user-domain-changed"
            [app.grants]
            publish = ["mail-ready"]
            "#,
        )
        .unwrap();
        let p = for_host(&config).unwrap();
        assert!(
            p.publish
                .contains(&"$JS.API.CONSUMER.MSG.NEXT.WEIR_EVENTS.weir_4_mail1".to_owned())
        );
        assert!(
            p.publish
                .contains(&"weir.events.mail-ready.module.mail1".to_owned())
        );
        assert!(p.publish.contains(&"weir.dead.4.mail1".to_owned()));
        assert!(
            p.publish
                .iter()
                .all(|s| !s.contains("CREATE.WEIR_EVENTS.weir_1"))
        );
        assert!(
            p.publish
                .iter()
                .all(|s| !s.starts_with("$JS.API.STREAM.CREATE"))
        );
        assert_eq!(p.subscribe, ["_INBOX_weir_node4.>"]);
        assert!(
            p.server_user("node4", "pw")
                .contains("\"weir.dead.4.mail1\"")
        );
    }
}
