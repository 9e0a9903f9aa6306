//! The least-privilege NATS permissions of one host, derived from its config
//! ([`for_host`]), and of its node's `weir bridge` ([`for_bridge`]).
//!
//! A host needs (with prefix `weir`, events stream `WEIR_EVENTS`, node `N`,
//! and for each app `A` its durable consumer `weir_N_A`, or `weir_cluster_A`
//! for a `scope = "cluster"` app):
//!
//! | direction | subject | why |
//! |---|---|---|
//! | publish | `$JS.API.STREAM.INFO.WEIR_EVENTS`, `…INFO.WEIR_DEAD`, `…INFO.KV_WEIR_EFFECTS` | verify the streams and the effect-records bucket exist (their names follow the events stream: [`subjects::dead_letter_stream`]) |
//! | publish | `$JS.API.STREAM.MSG.GET.WEIR_EVENTS` | read a delivery the NATS client cannot parse through the JSON message-get API, to dead-letter it ([`crate::nats::unreadable`]); it can read any stored event, which every host's apps may be sent anyway |
//! | publish | `$JS.API.CONSUMER.CREATE.WEIR_EVENTS.weir_N_A` (and `.>`) | create or update the app's own consumer |
//! | publish | `$JS.API.CONSUMER.INFO.WEIR_EVENTS.weir_N_A` | whether the consumer exists (it keeps its start position) |
//! | publish | `$JS.API.CONSUMER.MSG.NEXT.WEIR_EVENTS.weir_N_A` | pull batches |
//! | publish | the four above and the two ack subjects below for `weir_N_A~1` and `weir_N_A~2` too, and `$JS.API.CONSUMER.DELETE.WEIR_EVENTS.weir_N_A` (and `~1`, `~2`), on a replicated stream (`replicas` > 1) | failover: a one-replica consumer whose server stops answering is made again under the app's next name ([`subjects::consumer_generation`]), and the one it leaves is deleted |
//! | publish | `$JS.ACK.WEIR_EVENTS.weir_N_A.>`, `$JS.ACK.*.*.WEIR_EVENTS.weir_N_A.>` | ack / nak / term, in both ack subject formats (the second, `$JS.ACK.<domain>.<account hash>.<stream>.<consumer>...`, is what newer servers may send) |
//! | publish | `weir.dead.N.A` | dead letters |
//! | publish | `weir.events.<name>.module.A` for each granted `publish` name | `publish` effects, only as the app itself |
//! | publish | `$KV.WEIR_EFFECTS.nN.>`, `$JS.API.DIRECT.GET.KV_WEIR_EFFECTS.$KV.WEIR_EFFECTS.nN.>` | this node's effect records |
//! | publish | the same for `cluster.>` in place of `nN.>` (only with a `scope = "cluster"` app) | the cluster's effect records, shared by the nodes that run such an app |
//! | publish | `$JS.API.STREAM.INFO.KV_WEIR_PENDING`, `$KV.WEIR_PENDING.nN.>`, `$JS.API.DIRECT.GET.KV_WEIR_PENDING.$KV.WEIR_PENDING.nN.>` | this node's pending (debounced) effects |
//! | publish | `$JS.API.STREAM.INFO.KV_WEIR_LIMITS`, `$KV.WEIR_LIMITS.nN.>`, `$JS.API.DIRECT.GET.KV_WEIR_LIMITS.$KV.WEIR_LIMITS.nN.>` (and `cluster.>` with a cluster-scope limit) | effect rate-limit windows |
//! | publish | `$JS.API.CONSUMER.CREATE.KV_WEIR_PENDING` (and `.>`) | list the pending effects at start (an ordered consumer of key names; it can see the names of other nodes' pending keys, never change them) |
//! | publish | `$JS.API.STREAM.INFO.KV_WEIR_KV_A`, `$KV.WEIR_KV_A.>`, `$JS.API.DIRECT.GET.KV_WEIR_KV_A.>`, `$JS.API.CONSUMER.CREATE.KV_WEIR_KV_A` (and `.>`) (and the same for `WEIR_KVS_<name>` per `kv_shared` name) | the app's key-value buckets (`grants.kv`, `grants.kv_shared`): read, write, list keys |
//! | publish | `weir.admin.canary.A.reference.N` (an app whose live canary runs on other nodes), `weir.admin.canary.A.rolled_back.N` (an app whose live canary runs here) | a canary's reference window and its rollback announcement ([`crate::canary`]) |
//! | subscribe | `<inbox>.>` (default `_INBOX_weir_nodeN`) | replies: JetStream API, publish acks, pulled events |
//! | subscribe | `weir.admin.canary.A.reference.*` (an app whose live canary runs here) | the reference nodes' windows |
//!
//! Nothing else: no stream creation or deletion (an operator creates the
//! streams and the bucket once, e.g. with an unrestricted `weir run`), no
//! other node's or app's consumer, records or dead letters, and no event
//! subject but the app's own source. NATS permission wildcards match whole
//! tokens only, so each app's consumer is listed by name.

use serde::Serialize;

use crate::config::Config;
use crate::nats::NatsConfig;
use crate::nats::subjects::{self, Subjects};

/// Subjects a host may publish to and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Permissions {
    /// Publish allow list.
    pub publish: Vec<String>,
    /// Subscribe allow list.
    pub subscribe: Vec<String>,
}

/// The inbox prefix of the host or bridge `config` describes: `[nats]
/// inbox_prefix`, else [`subjects::default_inbox_prefix`].
fn inbox_prefix(config: &Config) -> String {
    config
        .nats
        .inbox_prefix
        .clone()
        .unwrap_or_else(|| subjects::default_inbox_prefix(config.node.id))
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
    let dead_stream = subjects::dead_letter_stream(stream);
    let bucket = subjects::effect_records_bucket(stream);
    let kv_stream = format!("KV_{bucket}");
    let pending = subjects::pending_effects_bucket(stream);
    let pending_stream = format!("KV_{pending}");
    let limits = subjects::limits_bucket(stream);
    let limits_stream = format!("KV_{limits}");
    let mut subscribe: Vec<String> = Vec::new();
    let mut publish = vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        // The stream's consumer names, listed once at start (names only),
        // so that only the consumers that exist are looked up.
        format!("$JS.API.CONSUMER.NAMES.{stream}"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.API.STREAM.INFO.{dead_stream}"),
        format!("$JS.API.STREAM.INFO.{kv_stream}"),
        format!("$KV.{bucket}.n{node}.>"),
        format!("$JS.API.DIRECT.GET.{kv_stream}.$KV.{bucket}.n{node}.>"),
        format!("$JS.API.STREAM.INFO.{pending_stream}"),
        format!("$KV.{pending}.n{node}.>"),
        format!("$JS.API.DIRECT.GET.{pending_stream}.$KV.{pending}.n{node}.>"),
        // async-nats lists keys through an unnamed ordered consumer:
        // `CONSUMER.CREATE.<stream>` with no name token, which `.>` misses.
        format!("$JS.API.CONSUMER.CREATE.{pending_stream}"),
        format!("$JS.API.CONSUMER.CREATE.{pending_stream}.>"),
        format!("$JS.API.STREAM.INFO.{limits_stream}"),
        format!("$KV.{limits}.n{node}.>"),
        format!("$JS.API.DIRECT.GET.{limits_stream}.$KV.{limits}.n{node}.>"),
    ];
    if config.apps.iter().any(|a| {
        a.effects
            .limit
            .iter()
            .any(|l| l.scope == crate::effects::limit::LimitScope::Cluster)
    }) {
        publish.extend([
            format!("$KV.{limits}.cluster.>"),
            format!("$JS.API.DIRECT.GET.{limits_stream}.$KV.{limits}.cluster.>"),
        ]);
    }
    if config
        .apps
        .iter()
        .any(|a| a.scope == subjects::Scope::Cluster)
    {
        publish.extend([
            format!("$KV.{bucket}.cluster.>"),
            format!("$JS.API.DIRECT.GET.{kv_stream}.$KV.{bucket}.cluster.>"),
        ]);
    }
    for app in &config.apps {
        let base = app.scope.consumer_name(node, &app.name);
        // On a replicated stream a failover makes the consumer again under
        // its next name (and deletes the one it leaves).
        let generations = if config.nats.replicas > 1 {
            subjects::CONSUMER_GENERATIONS
        } else {
            1
        };
        for generation in 0..generations {
            let consumer = subjects::consumer_generation(&base, generation);
            publish.extend([
                format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}"),
                format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}.>"),
                format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"),
                format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
                format!("$JS.ACK.{stream}.{consumer}.>"),
                format!("$JS.ACK.*.*.{stream}.{consumer}.>"),
            ]);
            if generations > 1 && app.scope == subjects::Scope::Node {
                publish.push(format!("$JS.API.CONSUMER.DELETE.{stream}.{consumer}"));
            }
        }
        publish.push(s.dead_letter(node, &app.name));
        if let Some(canary) = &app.canary {
            if canary.chooses(&app.name, node) {
                if canary.mode == crate::canary::CanaryMode::Live {
                    publish.push(s.canary_rolled_back(&app.name, node));
                    subscribe.push(s.canary_references(&app.name));
                }
            } else if canary.mode == crate::canary::CanaryMode::Live {
                publish.push(s.canary_reference(&app.name, node));
            }
        }
        for name in &app.grants.publish {
            publish.push(s.event(name, &format!("module/{}", app.name))?);
        }
        let own = app
            .grants
            .kv
            .then(|| subjects::app_kv_bucket(stream, &app.name));
        let shared = app
            .grants
            .kv_shared
            .iter()
            .map(|n| subjects::shared_kv_bucket(stream, n));
        for bucket in own.into_iter().chain(shared) {
            let kv = format!("KV_{bucket}");
            for subject in [
                format!("$JS.API.STREAM.INFO.{kv}"),
                format!("$KV.{bucket}.>"),
                format!("$JS.API.DIRECT.GET.{kv}.>"),
                format!("$JS.API.CONSUMER.CREATE.{kv}"),
                format!("$JS.API.CONSUMER.CREATE.{kv}.>"),
            ] {
                if !publish.contains(&subject) {
                    publish.push(subject);
                }
            }
        }
    }
    let inbox = inbox_prefix(config);
    subscribe.insert(0, format!("{inbox}.>"));
    Ok(Permissions { publish, subscribe })
}

/// The least-privilege permissions of `weir bridge` for the node `config`
/// describes (`weir permissions --bridge`):
///
/// | direction | subject | why |
/// |---|---|---|
/// | publish | `$JS.API.STREAM.INFO.WEIR_EVENTS`, `…INFO.WEIR_DEAD` | verify the streams exist and read the duplicate window |
/// | publish | `weir.events.>` | every NS8 event, under the source of its Redis channel (the bridge publishes for every source: Redis ACLs decide who may publish on which channel) |
/// | publish | `weir.dead.N.bridge` | messages that are not events |
/// | subscribe | `<inbox>.>` | publish acks and JetStream API replies |
///
/// No stream creation: an operator creates the streams once.
///
/// # Errors
///
/// If the configured subject prefix is invalid.
pub fn for_bridge(config: &Config) -> Result<Permissions, subjects::SubjectError> {
    let s = Subjects::new(&config.nats.prefix)?;
    let node = config.node.id;
    let stream = &config.nats.stream;
    let inbox = inbox_prefix(config);
    Ok(Permissions {
        publish: vec![
            format!("$JS.API.STREAM.INFO.{stream}"),
            format!(
                "$JS.API.STREAM.INFO.{}",
                subjects::dead_letter_stream(stream)
            ),
            s.all_events(),
            s.dead_letter(node, subjects::BRIDGE_DEAD_LETTER_APP),
        ],
        subscribe: vec![format!("{inbox}.>")],
    })
}

/// Who a [`Permissions`] entry is for, as the server's configuration names
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A user with a password (the password written into the entry).
    User {
        /// The user.
        user: String,
        /// The password to write (a placeholder unless given).
        password: String,
    },
    /// An nkey user, by public key (`U...`).
    Nkey(String),
}

/// Why the identity of a host could not be worked out.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The nkey seed file cannot be read.
    #[error("nats.nkey_seed_file {path}: {message}")]
    Seed {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// The identity the `[nats]` section authenticates as: its `nkey_seed_file`'s
/// public key, else its `user` (else `default_user`), with `password`
/// written into the entry. `None` for `creds_file` (a JWT user's permissions
/// live in its JWT: see [`Permissions::nsc_command`]).
///
/// # Errors
///
/// [`IdentityError::Seed`] if the seed cannot be read or is not a seed.
pub fn identity(
    nats: &NatsConfig,
    default_user: &str,
    password: &str,
) -> Result<Option<Identity>, IdentityError> {
    if nats.creds_file.is_some() {
        return Ok(None);
    }
    if let Some(path) = &nats.nkey_seed_file {
        let seed_error = |message: String| IdentityError::Seed {
            path: path.clone(),
            message,
        };
        let seed = std::fs::read_to_string(path).map_err(|e| seed_error(e.to_string()))?;
        let pair = nkeys::KeyPair::from_seed(seed.trim()).map_err(|e| seed_error(e.to_string()))?;
        return Ok(Some(Identity::Nkey(pair.public_key())));
    }
    Ok(Some(Identity::User {
        user: nats.user.clone().unwrap_or_else(|| default_user.to_owned()),
        password: password.to_owned(),
    }))
}

impl Permissions {
    fn server_list(v: &[String]) -> String {
        v.iter()
            .map(|s| serde_json::to_string(s).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A nats-server `users` entry for `user` with `password` and these
    /// permissions (the server's configuration syntax; JSON strings are valid
    /// there).
    pub fn server_user(&self, user: &str, password: &str) -> String {
        self.server_entry(&Identity::User {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }

    /// A nats-server `users` entry for `identity` with these permissions.
    pub fn server_entry(&self, identity: &Identity) -> String {
        let who = match identity {
            Identity::User { user, password } => format!(
                "user: {}, password: {}",
                serde_json::to_string(user).unwrap_or_default(),
                serde_json::to_string(password).unwrap_or_default()
            ),
            Identity::Nkey(public) => format!(
                "nkey: {}",
                serde_json::to_string(public).unwrap_or_default()
            ),
        };
        format!(
            "{{ {who}, permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }} }} }}",
            Self::server_list(&self.publish),
            Self::server_list(&self.subscribe),
        )
    }

    /// The `nsc` command that gives JWT user `user` these permissions (for a
    /// host that authenticates with a `creds_file`).
    pub fn nsc_command(&self, user: &str) -> String {
        let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
        format!(
            "nsc edit user --name {} --allow-pub {} --allow-sub {}",
            quote(user),
            quote(&self.publish.join(",")),
            quote(&self.subscribe.join(",")),
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
        for ack in [
            "$JS.ACK.WEIR_EVENTS.weir_4_mail1.>",
            "$JS.ACK.*.*.WEIR_EVENTS.weir_4_mail1.>",
        ] {
            assert!(p.publish.contains(&ack.to_owned()), "{ack}");
        }
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
        assert!(p.nsc_command("node4").starts_with(
            "nsc edit user --name 'node4' --allow-pub '$JS.API.STREAM.INFO.WEIR_EVENTS,"
        ));
    }

    #[test]
    fn names_follow_the_stream_and_nkey_users_are_named_by_public_key() {
        let mut config = Config::parse(
            r#"
            [node]
            id = 2
            name = "node2"
            [nats]
            url = "nats://127.0.0.1:4222"
            stream = "C1_EVENTS"
            prefix = "c1"
            "#,
        )
        .unwrap();
        let p = for_host(&config).unwrap();
        assert!(
            p.publish
                .contains(&"$JS.API.STREAM.INFO.C1_DEAD".to_owned())
        );
        assert!(p.publish.contains(&"$KV.C1_EFFECTS.n2.>".to_owned()));
        assert!(p.publish.contains(&"$KV.C1_PENDING.n2.>".to_owned()));
        assert!(!p.publish.iter().any(|s| s.contains(".cluster.")));
        let dir = tempfile::tempdir().unwrap();
        let pair = nkeys::KeyPair::new_user();
        let seed = dir.path().join("node2.nk");
        std::fs::write(&seed, pair.seed().unwrap()).unwrap();
        config.nats.nkey_seed_file = Some(seed);
        let id = identity(&config.nats, "weir-node", "x").unwrap().unwrap();
        assert_eq!(id, Identity::Nkey(pair.public_key()));
        assert!(
            p.server_entry(&id)
                .starts_with(&format!("{{ nkey: \"{}\"", pair.public_key()))
        );
        config.nats.nkey_seed_file = None;
        config.nats.creds_file = Some("node2.creds".into());
        assert_eq!(identity(&config.nats, "weir-node", "x").unwrap(), None);
    }
}
