//! `weir.toml`: the host's configuration file.
//!
//! Units are in field names (`_ms`, `_bytes`); every default is a named
//! constant; unknown fields are refused; [`Config::load`] reports every
//! problem at once, before anything starts.
//!
//! ```toml
//! [node]                     # this host's identity
//! id = 1
//! name = "node1"
//!
//! [nats]                     # omit url: weir starts a private nats-server
//! url = "nats://127.0.0.1:4222"
//!
//! [http]
//! listen = "127.0.0.1:9101"  # /metrics, /health, /stats
//!
//! [effects]
//! executor = "log"           # "log" | "command"
//!
//! [[app]]
//! name = "mail1"
//! component = "handlers/mail.wasm"   # relative to this file
//! domains = ["dom01.example.org"]
//!
//! [[app.rule]]
//! event = "user-domain-changed"
//! source = "module/ldapproxy*"
//! origin = "local"
//! domains = "mine"
//!
//! [app.grants]
//! restart = ["dovecot.service", "postfix.service"]
//!
//! [app.limits]               # overrides of weir_host::Limits
//! max_batch = 64
//! linger_ms = 20
//! ```

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::domain::DomainSet;
use crate::engine::EngineConfig;
use crate::filter::{Filter, RuleConfig};
use crate::limits::Limits;
use crate::subjects::{self, DEFAULT_PREFIX, DEFAULT_STREAM};

/// Default HTTP listen address for `/metrics`, `/health`, `/stats`:
/// `127.0.0.1:9101` (loopback only: the endpoints are unauthenticated).
pub const DEFAULT_HTTP_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9101));

/// Default most deliveries of one event before it is dead-lettered: 5.
/// weir counts them itself (JetStream's own limit is off), so an event is
/// dead-lettered with the reason even when earlier deliveries were lost to a
/// kill or a lost ack.
pub const DEFAULT_MAX_DELIVER: u32 = 5;

/// Default time JetStream waits for an ack before redelivering: 30,000 ms.
/// It must exceed two batch deadlines (an event delivered ahead of its batch
/// waits for the batch before it, then runs in its own), checked at start.
pub const DEFAULT_ACK_WAIT_MS: u64 = 30_000;

/// Default most unacknowledged events per app consumer: 256 (four default
/// batches): enough to keep a batch ready while one runs, small enough that a
/// stuck app holds little.
pub const DEFAULT_MAX_ACK_PENDING: u32 = 256;

/// Default redelivery backoff after a failed batch, in ms: 1 s, 5 s, 30 s
/// (the last repeats).
pub const DEFAULT_BACKOFF_MS: [u64; 3] = [1_000, 5_000, 30_000];

/// Default time an effect command may run: 30,000 ms.
pub const DEFAULT_COMMAND_TIMEOUT_MS: u64 = 30_000;

/// The whole file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This host's identity.
    pub node: NodeConfig,
    /// NATS connection and names.
    #[serde(default)]
    pub nats: NatsConfig,
    /// HTTP endpoints.
    #[serde(default)]
    pub http: HttpConfig,
    /// How effects are executed.
    #[serde(default)]
    pub effects: EffectsConfig,
    /// Engine-wide settings.
    #[serde(default)]
    pub engine: EngineConfig,
    /// The apps on this node (`[[app]]`).
    #[serde(default, rename = "app")]
    pub apps: Vec<AppConfig>,
}

/// `[node]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node id (NS8 node id).
    pub id: u32,
    /// Node name.
    pub name: String,
}

/// `[nats]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL; `None` starts a private nats-server on loopback (the
    /// embedded default).
    pub url: Option<String>,
    /// Subject prefix. Default [`DEFAULT_PREFIX`].
    pub prefix: String,
    /// Events stream name. Default [`DEFAULT_STREAM`].
    pub stream: String,
    /// Store directory of the embedded server; default a `weir-nats`
    /// directory under the system's temporary directory.
    pub state_dir: Option<PathBuf>,
    /// User name, if the server requires one (with `password`). See
    /// `RELIABILITY.md` for the least-privilege permissions a host needs.
    pub user: Option<String>,
    /// Password of `user`.
    pub password: Option<String>,
    /// Inbox prefix for replies; default `_INBOX`. Give each host its own
    /// (e.g. `_INBOX_weir_node1`) so permissions can keep hosts from reading
    /// each other's replies.
    pub inbox_prefix: Option<String>,
    /// Events stream cap in bytes when weir creates it. Default
    /// [`crate::transport::DEFAULT_STREAM_MAX_BYTES`] (1 GiB); a full stream
    /// refuses new events (publishers get an error).
    pub stream_max_bytes: i64,
    /// Events stream cap in events when weir creates it; default `-1` (none).
    pub stream_max_msgs: i64,
    /// Age in seconds after which JetStream removes an event, handled or not,
    /// when weir creates the stream. Default
    /// [`crate::transport::DEFAULT_STREAM_MAX_AGE`] (7 days).
    pub stream_max_age_s: u64,
    /// Dead-letter stream cap in bytes when weir creates it. Default
    /// [`crate::transport::DEFAULT_DEAD_MAX_BYTES`] (256 MiB). A full
    /// dead-letter stream refuses new dead letters; their events stay in the
    /// events stream and are retried (nothing is lost, `/stats` counts
    /// `dead_letter_failures`).
    pub dead_max_bytes: i64,
    /// Dead-letter stream cap in messages; default `-1` (none).
    pub dead_max_msgs: i64,
    /// Age in seconds after which JetStream removes a dead letter. Default
    /// [`crate::transport::DEFAULT_DEAD_MAX_AGE`] (30 days).
    pub dead_max_age_s: u64,
}

impl NatsConfig {
    /// The events stream's caps.
    pub fn stream_limits(&self) -> crate::transport::StreamLimits {
        crate::transport::StreamLimits {
            max_bytes: self.stream_max_bytes,
            max_msgs: self.stream_max_msgs,
            max_age: std::time::Duration::from_secs(self.stream_max_age_s),
        }
    }

    /// The dead-letter stream's caps.
    pub fn dead_letter_limits(&self) -> crate::transport::StreamLimits {
        crate::transport::StreamLimits {
            max_bytes: self.dead_max_bytes,
            max_msgs: self.dead_max_msgs,
            max_age: std::time::Duration::from_secs(self.dead_max_age_s),
        }
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: None,
            prefix: DEFAULT_PREFIX.into(),
            stream: DEFAULT_STREAM.into(),
            state_dir: None,
            user: None,
            password: None,
            inbox_prefix: None,
            stream_max_bytes: crate::transport::DEFAULT_STREAM_MAX_BYTES,
            stream_max_msgs: -1,
            stream_max_age_s: crate::transport::DEFAULT_STREAM_MAX_AGE.as_secs(),
            dead_max_bytes: crate::transport::DEFAULT_DEAD_MAX_BYTES,
            dead_max_msgs: -1,
            dead_max_age_s: crate::transport::DEFAULT_DEAD_MAX_AGE.as_secs(),
        }
    }
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address; default [`DEFAULT_HTTP_LISTEN`].
    pub listen: SocketAddr,
    /// Serve the endpoints. Default `true`.
    pub enabled: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_HTTP_LISTEN,
            enabled: true,
        }
    }
}

/// Effect executors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    /// Log each effect (dry run). The default.
    #[default]
    Log,
    /// Run `command` with `{action}` and `{unit}` substituted (no shell).
    Command,
}

/// `[effects]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EffectsConfig {
    /// The executor. Default [`Executor::Log`].
    pub executor: Executor,
    /// Argv template for [`Executor::Command`]; `{action}` becomes `restart`
    /// or `reload`, `{unit}` the unit. Default
    /// `["systemctl", "--user", "try-reload-or-restart", "{unit}"]`.
    pub command: Vec<String>,
    /// Time a command may run, in ms. Default [`DEFAULT_COMMAND_TIMEOUT_MS`].
    pub timeout_ms: u64,
}

impl Default for EffectsConfig {
    fn default() -> Self {
        Self {
            executor: Executor::Log,
            command: ["systemctl", "--user", "try-reload-or-restart", "{unit}"]
                .map(String::from)
                .to_vec(),
            timeout_ms: DEFAULT_COMMAND_TIMEOUT_MS,
        }
    }
}

/// `[app.grants]`: what an app's effects may do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Grants {
    /// Units the app may restart.
    pub restart: Vec<String>,
    /// Units the app may reload.
    pub reload: Vec<String>,
    /// Event names the app may publish (as `module/<app>`).
    pub publish: Vec<String>,
    /// Real WASI clocks (wall and monotonic). Default `false`: both read a
    /// frozen time (the Unix epoch, 0).
    pub clocks: bool,
}

/// `[app.delivery]`: the app's consumer settings.
///
/// `max_deliver` is enforced by weir, not by JetStream: an event is handed
/// to the handler at most `max_deliver` times; after a failure on its last
/// delivery, or when it comes back past it (earlier deliveries consumed by a
/// kill or a lost ack), it is dead-lettered with the reason and the count.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    /// Deliveries before dead-lettering. Default [`DEFAULT_MAX_DELIVER`].
    pub max_deliver: u32,
    /// Ack wait in ms. Default [`DEFAULT_ACK_WAIT_MS`].
    pub ack_wait_ms: u64,
    /// Unacknowledged events at most. Default [`DEFAULT_MAX_ACK_PENDING`].
    pub max_ack_pending: u32,
    /// Delay before a failed batch's events are redelivered, by attempt, in
    /// ms (the last step repeats); weir naks with it. Default
    /// [`DEFAULT_BACKOFF_MS`].
    pub backoff_ms: Vec<u64>,
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            max_deliver: DEFAULT_MAX_DELIVER,
            ack_wait_ms: DEFAULT_ACK_WAIT_MS,
            max_ack_pending: DEFAULT_MAX_ACK_PENDING,
            backoff_ms: DEFAULT_BACKOFF_MS.to_vec(),
        }
    }
}

/// `[[app]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// App name: a subject token (used in consumer and dead-letter names).
    pub name: String,
    /// Component path; relative paths are resolved against the config file.
    pub component: PathBuf,
    /// The app's domains (exact or `*.suffix`).
    #[serde(default)]
    pub domains: Vec<String>,
    /// Relevance rules (`[[app.rule]]`); at least one.
    #[serde(default)]
    pub rule: Vec<RuleConfig>,
    /// Effect grants.
    #[serde(default)]
    pub grants: Grants,
    /// Sandbox and batching caps.
    #[serde(default)]
    pub limits: Limits,
    /// Consumer settings.
    #[serde(default)]
    pub delivery: Delivery,
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("failed to read config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("failed to parse config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// The configuration is invalid; every problem is listed.
    #[error("invalid config {path}:\n  {}", .problems.join("\n  "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// One line per problem.
        problems: Vec<String>,
    },
}

impl Config {
    /// Read, parse and validate `path`; relative component paths are
    /// resolved against its directory.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`], [`ConfigError::Parse`], or
    /// [`ConfigError::Invalid`] with every problem at once.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for app in &mut config.apps {
            if app.component.is_relative() {
                app.component = base.join(&app.component);
            }
        }
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// Parse TOML text (no validation).
    ///
    /// # Errors
    ///
    /// The parser's message.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Every problem with this configuration (empty if valid), the memory
    /// arithmetic checked against this node's memory.
    pub fn problems(&self) -> Vec<String> {
        self.problems_on(crate::engine::node_memory_bytes())
    }

    /// [`Config::problems`] for a node with `node_memory` bytes (`None`:
    /// unknown, not checked).
    pub fn problems_on(&self, node_memory: Option<u64>) -> Vec<String> {
        let mut p = Vec::new();
        if self.node.name.trim().is_empty() {
            p.push("node.name must not be empty".to_owned());
        }
        if let Err(e) = subjects::Subjects::new(&self.nats.prefix) {
            p.push(format!("nats.prefix: {e}"));
        }
        if let Err(e) = subjects::check_token("nats.stream", &self.nats.stream) {
            p.push(e.to_string());
        }
        p.extend(
            self.engine
                .problems()
                .into_iter()
                .map(|e| format!("engine: {e}")),
        );
        if self.effects.executor == Executor::Command {
            if self.effects.command.is_empty() {
                p.push("effects.command must name a program for executor = \"command\"".to_owned());
            } else if !self.effects.command.iter().any(|a| a.contains("{unit}")) {
                p.push("effects.command must contain {unit}".to_owned());
            }
        }
        if self.effects.timeout_ms == 0 {
            p.push("effects.timeout_ms must be greater than 0".to_owned());
        }
        if self.apps.is_empty() {
            p.push("no [[app]]: nothing to run".to_owned());
        }
        let largest = self
            .apps
            .iter()
            .map(|a| a.limits.memory_bytes)
            .max()
            .unwrap_or(0);
        p.extend(crate::engine::memory_problem(
            self.engine.pool_instances,
            largest,
            node_memory,
        ));
        for (name, value) in [
            ("nats.stream_max_age_s", self.nats.stream_max_age_s),
            ("nats.dead_max_age_s", self.nats.dead_max_age_s),
        ] {
            if value == 0 {
                p.push(format!("{name} must be greater than 0"));
            }
        }
        let mut names = HashSet::new();
        for app in &self.apps {
            let a = format!("app {:?}", app.name);
            if let Err(e) = subjects::check_token("app name", &app.name) {
                p.push(format!("{a}: {e}"));
            }
            if !names.insert(app.name.as_str()) {
                p.push(format!("{a}: duplicate app name"));
            }
            if !app.component.is_file() {
                p.push(format!(
                    "{a}: component {} does not exist",
                    app.component.display()
                ));
            }
            p.extend(
                app.limits
                    .problems(self.engine.max_memory_bytes)
                    .into_iter()
                    .map(|e| format!("{a}: limits: {e}")),
            );
            let domains = match DomainSet::new(&app.domains) {
                Ok(d) => d,
                Err(errors) => {
                    p.extend(errors.into_iter().map(|e| format!("{a}: domains: {e}")));
                    DomainSet::default()
                }
            };
            if let Err(errors) = Filter::new(&app.rule, self.node.id, domains) {
                p.extend(errors.into_iter().map(|e| format!("{a}: {e}")));
            }
            for unit in app.grants.restart.iter().chain(&app.grants.reload) {
                if unit.is_empty() || unit.contains(['/', ' ']) || unit.starts_with('-') {
                    p.push(format!("{a}: grants: {unit:?} is not a unit name"));
                }
            }
            for name in &app.grants.publish {
                if let Err(e) = subjects::check_token("granted event name", name) {
                    p.push(format!("{a}: grants: {e}"));
                }
            }
            let d = &app.delivery;
            if d.max_deliver == 0 {
                p.push(format!("{a}: delivery.max_deliver must be greater than 0"));
            }
            if d.max_ack_pending == 0 {
                p.push(format!(
                    "{a}: delivery.max_ack_pending must be greater than 0"
                ));
            }
            if d.ack_wait_ms <= app.limits.deadline_ms.saturating_mul(2) {
                p.push(format!(
                    "{a}: delivery.ack_wait_ms = {} must exceed twice limits.deadline_ms = {} (an event fetched during a batch waits for it, then runs in its own) or slow batches are redelivered",
                    d.ack_wait_ms, app.limits.deadline_ms
                ));
            }
            if (d.max_ack_pending as usize) < app.limits.max_batch {
                p.push(format!(
                    "{a}: delivery.max_ack_pending = {} is below limits.max_batch = {}: batches could never fill",
                    d.max_ack_pending, app.limits.max_batch
                ));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        [node]
        id = 1
        name = "node1"
        [nats]
        url = "nats://127.0.0.1:4222"
        [http]
        listen = "127.0.0.1:9101"
        [effects]
        executor = "log"
        [[app]]
        name = "mail1"
        component = "handlers/mail.wasm"
        domains = ["dom01.example.org"]
        [[app.rule]]
        event = "user-domain-changed"
        source = "module/ldapproxy*"
        origin = "local"
        domains = "mine"
        [app.grants]
        restart = ["dovecot.service", "postfix.service"]
        [app.limits]
        max_batch = 64
        linger_ms = 20
    "#;

    #[test]
    fn the_documented_example_parses() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.node.id, 1);
        assert_eq!(
            c.apps[0].grants.restart,
            ["dovecot.service", "postfix.service"]
        );
        assert_eq!(c.apps[0].limits.max_batch, 64);
        // Only the component is missing.
        let p = c.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("does not exist"));
    }

    #[test]
    fn documented_defaults() {
        let c = Config::parse("[node]\nid = 2\nname = \"n2\"").unwrap();
        assert_eq!(c.nats.url, None);
        assert_eq!(c.nats.prefix, "weir");
        assert_eq!(c.nats.stream, "WEIR_EVENTS");
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:9101");
        assert_eq!(c.effects.executor, Executor::Log);
        assert_eq!(
            c.effects.command,
            ["systemctl", "--user", "try-reload-or-restart", "{unit}"]
        );
        assert_eq!(c.effects.timeout_ms, 30_000);
        let d = Delivery::default();
        assert_eq!(
            (d.max_deliver, d.ack_wait_ms, d.max_ack_pending),
            (5, 30_000, 256)
        );
        assert_eq!(d.backoff_ms, [1_000, 5_000, 30_000]);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = Config::parse("[node]\nid = 1\nname = \"n\"\nnmae = \"x\"").unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
        let err = Config::parse(&EXAMPLE.replace("linger_ms", "linger")).unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn every_problem_at_once() {
        let text = r#"
            [node]
            id = 1
            name = ""
            [nats]
            prefix = "we.ir*"
            [effects]
            executor = "command"
            command = ["systemctl", "restart"]
            [engine]
            pool_instances = 1
            [[app]]
            name = "a.b"
            component = "/nonexistent.wasm"
            domains = ["bad_domain"]
            [app.grants]
            restart = ["../etc"]
            [app.limits]
            fuel = 0
            [app.delivery]
            ack_wait_ms = 10
            max_ack_pending = 1
            [[app]]
            name = "a.b"
            component = "/nonexistent.wasm"
            [[app.rule]]
            event = "x"
        "#;
        let p = Config::parse(text).unwrap().problems();
        let expected = [
            "node.name must not be empty",
            "nats.prefix",
            "effects.command must contain {unit}",
            "app name \"a.b\" cannot be used in a NATS subject",
            "duplicate app name",
            "does not exist",
            "limits: fuel must be greater than 0",
            "domains: invalid domain name \"bad_domain\"",
            "at least one rule is required",
            "\"../etc\" is not a unit name",
            "delivery.ack_wait_ms = 10 must exceed twice limits.deadline_ms = 2000",
            "delivery.max_ack_pending = 1 is below limits.max_batch = 64",
        ];
        for e in expected {
            assert!(
                p.iter().any(|line| line.contains(e)),
                "missing {e:?} in {p:#?}"
            );
        }
    }

    #[test]
    fn a_thousand_apps_fit_the_default_engine() {
        let dir = tempfile::tempdir().unwrap();
        let component = dir.path().join("h.wasm");
        std::fs::write(&component, b"\0asm").unwrap();
        let mut text = String::from("[node]\nid = 1\nname = \"n1\"\n");
        for i in 0..1000 {
            text.push_str(&format!(
                "[[app]]\nname = \"t{i:04}\"\ncomponent = \"{}\"\n[[app.rule]]\nevent = [\"t{i:04}-a\", \"t{i:04}-b\", \"t{i:04}-c\"]\n",
                component.display()
            ));
        }
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.engine.pool_instances, 64);
        // 64 slots × 64 MiB fit a 4 GiB node, whatever the number of apps.
        assert_eq!(c.problems_on(Some(4 << 30)), Vec::<String>::new());
        let p = c.problems_on(Some(2 << 30));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("= 4096 MiB of linear memory at most"),
            "{p:?}"
        );
    }

    #[test]
    fn load_resolves_components_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("handlers")).unwrap();
        std::fs::write(dir.path().join("handlers/mail.wasm"), b"\0asm").unwrap();
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, EXAMPLE).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.apps[0].component, dir.path().join("handlers/mail.wasm"));
        std::fs::write(&path, "[node]\nid = 1\nname = \"n\"").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("no [[app]]: nothing to run"), "{err}");
    }
}
