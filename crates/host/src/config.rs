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

use crate::canary::{CanaryConfig, CanaryPlan};
use crate::effects::{AppEffects, EffectPolicy, EffectsConfig, Grants};
use crate::filter::{Filter, RuleConfig};
use crate::nats::subjects::{self, Scope};
use crate::nats::{Delivery, NatsConfig};
use weir_runtime::domain::DomainSet;
use weir_runtime::{AppSpec, EngineConfig, Limits};

/// Default HTTP listen address for `/metrics`, `/health`, `/stats`:
/// `127.0.0.1:9101` (loopback only: the endpoints are unauthenticated).
pub const DEFAULT_HTTP_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9101));

/// The whole file.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
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
    /// `[bridge]`, `weir bridge`'s settings (NS8's Redis events into NATS),
    /// kept as TOML: the section belongs to `weir-bridge`
    /// (`weir_bridge::BridgeConfig::from_section` parses and checks it; the
    /// `weir` binary checks it wherever it checks the file). `weir run` does
    /// not use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub bridge: Option<toml::Table>,
    /// Trace export over OTLP (`[telemetry]`, for `weir run`, `weir
    /// bridge` and `weir publish --config`); the standard `OTEL_*`
    /// variables win. None by default (export off unless they set it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<weir_edge::telemetry::TelemetryConfig>,
}

/// `[node]`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node id (NS8 node id).
    pub id: u32,
    /// Node name.
    pub name: String,
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address; default [`DEFAULT_HTTP_LISTEN`]. An address that is
    /// not loopback needs `public = true`.
    #[schemars(with = "String")]
    pub listen: SocketAddr,
    /// Serve the endpoints. Default `true`.
    pub enabled: bool,
    /// Allow a `listen` address that is not loopback (the endpoints are
    /// plain HTTP; `/stats` names every app). Default `false`; when set,
    /// the start logs a warning.
    pub public: bool,
    /// File holding the bearer token `POST /reload` requires (absolute
    /// path; mode 0600, at least 16 characters). Default: none, and `weir
    /// run` creates and keeps one at
    /// [`crate::admin_token::default_token_file`].
    pub admin_token_file: Option<std::path::PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_HTTP_LISTEN,
            enabled: true,
            public: false,
            admin_token_file: None,
        }
    }
}

impl HttpConfig {
    /// Every problem (empty if valid), unprefixed: a listen address that is
    /// not loopback without `public = true`, a relative token path.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.enabled && !self.listen.ip().is_loopback() && !self.public {
            p.push(format!(
                "listen = \"{}\" is not a loopback address: the endpoints would be reachable from the network; set public = true to mean it",
                self.listen
            ));
        }
        if self
            .admin_token_file
            .as_ref()
            .is_some_and(|f| f.is_relative())
        {
            p.push("admin_token_file must be an absolute path".to_owned());
        }
        p
    }

    /// The admin token file in use: `admin_token_file`, else
    /// [`crate::admin_token::default_token_file`].
    pub fn token_file(&self) -> std::path::PathBuf {
        self.admin_token_file
            .clone()
            .unwrap_or_else(crate::admin_token::default_token_file)
    }
}

/// `[[app]]`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
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
    /// Effect grants ([`Grants`]).
    #[serde(default)]
    pub grants: Grants,
    /// When effects run (`[app.effects]`: [`AppEffects`], e.g.
    /// `debounce_ms`).
    #[serde(default)]
    pub effects: AppEffects,
    /// Who shares the app's consumer: `"node"` (default: every node handles
    /// every event) or `"cluster"` (each event is handled by one of the
    /// nodes that run the app; `origin = "local"` rules are refused).
    #[serde(default)]
    pub scope: Scope,
    /// Sandbox and batching caps.
    #[serde(default)]
    pub limits: Limits,
    /// Consumer settings.
    #[serde(default)]
    pub delivery: Delivery,
    /// A candidate component on chosen nodes, live with guard rails or in
    /// shadow (`[app.canary]`: [`CanaryConfig`]); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryConfig>,
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
        Ok(Plan::load(path)?.config)
    }

    /// Read and parse `path` and resolve relative component paths against
    /// its directory; no validation.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`] or [`ConfigError::Parse`].
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
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
            if let Some(canary) = &mut app.canary
                && canary.component.is_relative()
            {
                canary.component = base.join(&canary.component);
            }
        }
        Ok(config)
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
        self.problems_on(weir_runtime::node_memory_bytes())
    }

    /// [`Config::problems`] for a node with `node_memory` bytes (`None`:
    /// unknown, not checked). Each section checks itself (its owner's
    /// `problems()`); this prefixes what they say and adds what spans
    /// sections (the pool's memory, duplicate names, components on disk).
    pub fn problems_on(&self, node_memory: Option<u64>) -> Vec<String> {
        match self.plan_on(node_memory) {
            Ok(_) => Vec::new(),
            Err(problems) => problems,
        }
    }

    /// Validate and build everything the daemon runs from, once: each app's
    /// [`AppSpec`], [`Filter`] (with its [`DomainSet`]) and consumer
    /// settings.
    ///
    /// # Errors
    ///
    /// Every problem at once, one line each (as [`Config::problems`]).
    pub fn plan(&self) -> Result<Plan, Vec<String>> {
        self.plan_on(weir_runtime::node_memory_bytes())
    }

    fn plan_on(&self, node_memory: Option<u64>) -> Result<Plan, Vec<String>> {
        let mut p = Vec::new();
        let prefixed = |p: &mut Vec<String>, prefix: &str, problems: Vec<String>| {
            p.extend(problems.into_iter().map(|e| format!("{prefix}{e}")));
        };
        if self.node.name.trim().is_empty() {
            p.push("node.name must not be empty".to_owned());
        }
        prefixed(&mut p, "nats.", self.nats.problems());
        prefixed(&mut p, "http.", self.http.problems());
        prefixed(&mut p, "engine: ", self.engine.problems());
        prefixed(&mut p, "effects.", self.effects.problems());
        if let Some(telemetry) = &self.telemetry {
            prefixed(&mut p, "telemetry.", telemetry.problems());
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
        p.extend(weir_runtime::memory_problem(
            self.engine.pool_instances,
            largest,
            node_memory,
        ));
        let mut names = HashSet::new();
        let mut apps = Vec::with_capacity(self.apps.len());
        for app in &self.apps {
            let a = format!("app {:?}: ", app.name);
            if let Err(e) = subjects::check_app_name(&app.name) {
                p.push(format!("{a}{e}"));
            }
            if !names.insert(app.name.as_str()) {
                p.push(format!("{a}duplicate app name"));
            }
            if !app.component.is_file() {
                p.push(format!(
                    "{a}component {} does not exist",
                    app.component.display()
                ));
            }
            prefixed(
                &mut p,
                &format!("{a}limits: "),
                app.limits.problems(self.engine.max_memory_bytes),
            );
            let domains = match DomainSet::new(&app.domains) {
                Ok(d) => d,
                Err(errors) => {
                    p.extend(errors.into_iter().map(|e| format!("{a}domains: {e}")));
                    DomainSet::default()
                }
            };
            let filter = Filter::new(&app.rule, self.node.id, domains)
                .map_err(|errors| prefixed(&mut p, &a, errors))
                .ok();
            prefixed(&mut p, &format!("{a}grants: "), app.grants.problems());
            if let Some(canary) = &app.canary {
                prefixed(&mut p, &format!("{a}canary: "), canary.problems());
                if !canary.component.is_file() {
                    p.push(format!(
                        "{a}canary: component {} does not exist",
                        canary.component.display()
                    ));
                }
            }
            prefixed(&mut p, &format!("{a}effects."), app.effects.problems());
            if app.grants.kv && !subjects::is_bucket_token(&app.name) {
                p.push(format!(
                    "{a}grants.kv needs an app name of A-Z a-z 0-9 _ - only (it names the bucket)"
                ));
            }
            if app.scope == Scope::Cluster
                && app
                    .rule
                    .iter()
                    .any(|r| r.origin == crate::filter::Origin::Local)
            {
                p.push(format!(
                    "{a}scope = \"cluster\" handles each event on one node only: a rule with origin = \"local\" would depend on which node that is (use scope = \"node\")"
                ));
            }
            prefixed(
                &mut p,
                &a,
                app.delivery
                    .problems(app.limits.deadline_ms, app.limits.max_batch),
            );
            if let Some(filter) = filter {
                let mut spec = AppSpec::new(&app.name, self.node.id, &self.node.name);
                spec.domains = app.domains.clone();
                spec.limits = app.limits.clone();
                spec.clocks = app.grants.clocks;
                spec.kv = weir_runtime::kv::KvGrant {
                    own: app.grants.kv,
                    shared: app.grants.kv_shared.clone(),
                };
                apps.push(AppPlan {
                    spec,
                    component: app.component.clone(),
                    filter,
                    effects: EffectPolicy {
                        grants: app.grants.clone(),
                        timing: app.effects.clone(),
                        scope: app.scope,
                    },
                    delivery: Delivery {
                        // A node's own consumer takes `consumer_replicas`; a
                        // consumer shared by hosts keeps the stream's.
                        replicas: match app.scope {
                            Scope::Node => self.nats.consumer_replicas,
                            Scope::Cluster => 0,
                        },
                        ..app.delivery.clone()
                    },
                    consumer: app.scope.consumer_name(self.node.id, &app.name),
                    canary: app.canary.as_ref().map(|c| CanaryPlan {
                        config: c.clone(),
                        here: c.chooses(&app.name, self.node.id),
                    }),
                });
            }
        }
        if !p.is_empty() {
            return Err(p);
        }
        Ok(Plan {
            config: self.clone(),
            apps,
        })
    }
}

/// A validated configuration with every app's pieces built once
/// ([`Config::plan`], [`Plan::load`]): what the daemon runs from.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The configuration it was built from (sections other than the apps
    /// are used as they are).
    pub config: Config,
    /// One entry per `[[app]]`, in file order.
    pub apps: Vec<AppPlan>,
}

impl Plan {
    /// [`Config::read`] then [`Config::plan`]: read, parse, validate and
    /// build in one pass.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`], [`ConfigError::Parse`], or
    /// [`ConfigError::Invalid`] with every problem at once.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Config::read(path)?
            .plan()
            .map_err(|problems| ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
    }
}

/// One app, ready to deploy and consume.
#[derive(Debug, Clone)]
pub struct AppPlan {
    /// What [`weir_runtime::Runtime::deploy`] takes.
    pub spec: AppSpec,
    /// The component file (resolved against the config file).
    pub component: PathBuf,
    /// The pre-filter, with the app's domain set.
    pub filter: Filter,
    /// What the app's effects may do, when they run, whose records they use.
    pub effects: EffectPolicy,
    /// Its consumer settings.
    pub delivery: Delivery,
    /// Its durable consumer's name ([`Scope::consumer_name`]).
    pub consumer: String,
    /// Its canary ([`crate::canary`]), if `[app.canary]` is set.
    pub canary: Option<CanaryPlan>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::Executor;

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
            scope = "cluster"
            [app.effects]
            debounce_ms = 7200000
            [[app.rule]]
            event = "x"
            origin = "local"
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
            "effects.debounce_ms = 7200000 is above the most, 3600000",
            "scope = \"cluster\" handles each event on one node only",
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
