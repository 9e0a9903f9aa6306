//! A typed `weir.toml` builder: every field is a real
//! [`weir_host::config`] type, so a renamed or retyped field breaks the
//! build, not a test at run time. [`ConfigBuilder::build`] gives the
//! [`Config`]; [`ConfigBuilder::text`] its TOML (for a `weir run` child).
//!
//! ```no_run
//! use weir_test_support::config::{AppBuilder, ConfigBuilder};
//! let config = ConfigBuilder::new(1, "nats://127.0.0.1:4222")
//!     .app(AppBuilder::new("echo", "echo.wasm").rule(r#"event = "test""#).restart(&["u1"]))
//!     .build();
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use weir_host::config::{AppConfig, Config, HttpConfig, NodeConfig};
use weir_host::effects::{AppEffects, EffectsConfig, Executor, Grants};
use weir_host::filter::RuleConfig;
use weir_host::nats::subjects::Scope;
use weir_host::nats::{Delivery, NatsConfig};
use weir_host::{EngineConfig, Limits};

/// A host's configuration under construction. Defaults: node `id` named
/// `node<id>`, the given NATS URL, HTTP off, the `log` executor, no apps.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    config: Config,
}

impl ConfigBuilder {
    /// Node `id` (named `node<id>`) on the NATS server at `nats_url`, or on
    /// a seed list (`nats.urls`) if it holds several URLs separated by commas.
    pub fn new(id: u32, nats_url: &str) -> Self {
        let servers = crate::nats::seed_list(nats_url);
        let (url, urls) = if servers.len() > 1 {
            (None, Some(servers))
        } else {
            (Some(nats_url.to_owned()), None)
        };
        Self {
            config: Config {
                node: NodeConfig {
                    id,
                    name: format!("node{id}"),
                },
                nats: NatsConfig {
                    url,
                    urls,
                    ..NatsConfig::default()
                },
                http: HttpConfig {
                    enabled: false,
                    ..HttpConfig::default()
                },
                effects: EffectsConfig::default(),
                engine: EngineConfig::default(),
                apps: Vec::new(),
                bridge: None,
                telemetry: None,
            },
        }
    }

    /// Serve `/health`, `/stats`, `/metrics` on `listen` (port 0: any).
    pub fn http(mut self, listen: SocketAddr) -> Self {
        self.config.http = HttpConfig {
            listen,
            enabled: true,
            ..HttpConfig::default()
        };
        self
    }

    /// Change the `[nats]` section.
    pub fn nats(mut self, change: impl FnOnce(&mut NatsConfig)) -> Self {
        change(&mut self.config.nats);
        self
    }

    /// Change the `[engine]` section.
    pub fn engine(mut self, change: impl FnOnce(&mut EngineConfig)) -> Self {
        change(&mut self.config.engine);
        self
    }

    /// The `command` executor with argv `command` (`{unit}`, `{action}`
    /// substituted).
    pub fn command_executor(mut self, command: &[&str]) -> Self {
        self.config.effects.executor = Executor::Command;
        self.config.effects.command = command.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// The `command` executor running `sh -c '<script>'` with the unit as
    /// `$0`: e.g. `echo $0 >> marker` leaves each restarted unit in `marker`.
    pub fn shell_executor(self, script: &str) -> Self {
        self.command_executor(&["sh", "-c", script, "{unit}"])
    }

    /// Add an app.
    pub fn app(mut self, app: AppBuilder) -> Self {
        self.config.apps.push(app.app);
        self
    }

    /// The configuration.
    pub fn build(self) -> Config {
        self.config
    }

    /// The configuration; panics with every problem if it is invalid.
    pub fn valid(self) -> Config {
        let config = self.config;
        let problems = config.problems();
        assert!(problems.is_empty(), "invalid test config: {problems:#?}");
        config
    }

    /// The configuration as `weir.toml` text.
    pub fn text(&self) -> String {
        toml::to_string(&self.config).expect("a config serializes")
    }

    /// Write the configuration to `path` (for a `weir run` child).
    ///
    /// # Errors
    ///
    /// The file cannot be written.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.text())
    }
}

/// One `[[app]]` under construction: no rules, domains or grants, default
/// limits and delivery.
#[derive(Debug, Clone)]
pub struct AppBuilder {
    app: AppConfig,
}

impl AppBuilder {
    /// App `name` running `component`.
    pub fn new(name: &str, component: impl Into<PathBuf>) -> Self {
        Self {
            app: AppConfig {
                name: name.to_owned(),
                component: component.into(),
                domains: Vec::new(),
                rule: Vec::new(),
                grants: Grants::default(),
                effects: AppEffects::default(),
                scope: Scope::Node,
                limits: Limits::default(),
                delivery: Delivery::default(),
                canary: None,
            },
        }
    }

    /// The app's `[app.canary]`, written as the body of that table, e.g.
    /// `component = "/path/c.wasm"\nnodes = [3]`.
    pub fn canary(mut self, toml_body: &str) -> Self {
        self.app.canary = Some(
            toml::from_str(toml_body)
                .unwrap_or_else(|e| panic!("bad [app.canary] {toml_body:?}: {e}")),
        );
        self
    }

    /// Add a rule written as the body of one `[[app.rule]]` table, e.g.
    /// `event = "test"` or `event = ["a", "b"]\nsource = "cluster"`.
    pub fn rule(mut self, toml_body: &str) -> Self {
        let rule: RuleConfig =
            toml::from_str(toml_body).unwrap_or_else(|e| panic!("bad rule {toml_body:?}: {e}"));
        self.app.rule.push(rule);
        self
    }

    /// A rule for events named `names`, from any source.
    pub fn events(self, names: &[&str]) -> Self {
        let list: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
        self.rule(&format!("event = [{}]", list.join(", ")))
    }

    /// The app's domains.
    pub fn domains(mut self, domains: &[&str]) -> Self {
        self.app.domains = domains.iter().map(|d| (*d).to_owned()).collect();
        self
    }

    /// Units the app may restart.
    pub fn restart(mut self, units: &[&str]) -> Self {
        self.app.grants.restart = units.iter().map(|u| (*u).to_owned()).collect();
        self
    }

    /// Event names the app may publish.
    pub fn publish(mut self, names: &[&str]) -> Self {
        self.app.grants.publish = names.iter().map(|n| (*n).to_owned()).collect();
        self
    }

    /// Change the app's grants (e.g. `|g| g.kv = true`).
    pub fn grants(mut self, change: impl FnOnce(&mut Grants)) -> Self {
        change(&mut self.app.grants);
        self
    }

    /// Debounce the app's effects: `[app.effects] debounce_ms = ms`.
    pub fn debounce_ms(mut self, ms: u64) -> Self {
        self.app.effects.debounce_ms = ms;
        self
    }

    /// Change the app's `[app.effects]` (e.g. add a rate limit).
    pub fn effects(mut self, change: impl FnOnce(&mut AppEffects)) -> Self {
        change(&mut self.app.effects);
        self
    }

    /// The app's scope (`scope = "cluster"`: one consumer for all nodes).
    pub fn scope(mut self, scope: Scope) -> Self {
        self.app.scope = scope;
        self
    }

    /// Change the app's limits.
    pub fn limits(mut self, change: impl FnOnce(&mut Limits)) -> Self {
        change(&mut self.app.limits);
        self
    }

    /// Change the app's delivery settings.
    pub fn delivery(mut self, change: impl FnOnce(&mut Delivery)) -> Self {
        change(&mut self.app.delivery);
        self
    }

    /// The NS8 mail app (`examples/ns8/rules.toml`): both `user-domain-changed`
    /// rules (local ldapproxy changes, cluster-wide announcements) for
    /// `domain`, restarting dovecot and postfix.
    pub fn ns8_mail(name: &str, component: impl Into<PathBuf>, domain: &str) -> Self {
        Self::new(name, component)
            .domains(&[domain])
            .rule(
                r#"event = "user-domain-changed"
                source = "module/ldapproxy*"
                origin = "local"
                domains = "mine""#,
            )
            .rule(
                r#"event = "user-domain-changed"
                source = ["cluster", "module/openldap*", "module/samba*"]
                domains = "mine""#,
            )
            .restart(&["dovecot.service", "postfix.service"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_parses_back_to_the_same_config() {
        let b = ConfigBuilder::new(2, "nats://127.0.0.1:4222")
            .http("127.0.0.1:0".parse().unwrap())
            .shell_executor("echo $0 >> /tmp/m")
            .app(
                AppBuilder::new("echo", "/x/echo.wasm")
                    .events(&["test", "test-bad"])
                    .restart(&["a.service"])
                    .limits(|l| l.deadline_ms = 400)
                    .delivery(|d| d.backoff_ms = vec![50]),
            )
            .app(AppBuilder::ns8_mail(
                "mail1",
                "/x/mail.wasm",
                "dom01.example.org",
            ));
        let parsed = Config::parse(&b.text()).unwrap();
        let built = b.build();
        assert_eq!(parsed.node.name, "node2");
        assert_eq!(parsed.apps.len(), 2);
        assert_eq!(parsed.apps[0].limits, built.apps[0].limits);
        assert_eq!(parsed.apps[0].delivery.backoff_ms, [50]);
        assert_eq!(parsed.apps[1].rule, built.apps[1].rule);
        assert_eq!(
            parsed.effects.command,
            ["sh", "-c", "echo $0 >> /tmp/m", "{unit}"]
        );
    }
}
