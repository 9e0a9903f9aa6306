//! Trace export for `weir run`, `weir bridge` and `weir publish`: the
//! standard OTLP variables and `[telemetry]` of the config
//! ([`weir_edge::telemetry`]), started before the logs so the `tracing`
//! layer goes in with them.

use std::path::PathBuf;

use weir_edge::telemetry::{Settings, Telemetry};
use weir_host::config::Config;

use crate::exit::{self, Failure};
use crate::{Cli, Command};

/// The export of `cli`'s command, if it exports traces and the
/// environment or its config's `[telemetry]` turn export on; `Ok(None)`
/// otherwise (other commands never export).
///
/// A config that cannot be read is left to the command, which reports it
/// with every other problem; its `[telemetry]` is then not used.
///
/// # Errors
///
/// Export settings that cannot be used (a protocol weir does not export,
/// an endpoint that is not a URL), exit code 78.
pub fn start(cli: &Cli) -> Result<Option<Telemetry>, Failure> {
    let (config_path, command): (Option<PathBuf>, &str) = match &cli.command {
        Command::Run(args) => (Some(args.config.path()), "run"),
        Command::Bridge(args) => (Some(args.config.path()), "bridge"),
        Command::Publish(args) => (args.config_path(), "publish"),
        _ => return Ok(None),
    };
    let config = config_path.and_then(|p| Config::read(&p).ok());
    let section = config
        .as_ref()
        .and_then(|c| c.telemetry.clone())
        .unwrap_or_default();
    let settings = match Settings::from_env(&section) {
        Ok(Some(settings)) => settings,
        Ok(None) => return Ok(None),
        Err(problems) => {
            return Err(Failure {
                code: exit::CONFIG,
                error: anyhow::anyhow!("trace export:\n  {}", problems.join("\n  ")),
            });
        }
    };
    let mut attributes = vec![opentelemetry_kv("weir.command", command.to_owned())];
    if let Some(c) = &config {
        attributes.push(opentelemetry_kv("weir.node.id", c.node.id.to_string()));
        attributes.push(opentelemetry_kv("weir.node.name", c.node.name.clone()));
        attributes.push(opentelemetry_kv(
            "service.instance.id",
            format!("node{}", c.node.id),
        ));
    }
    Telemetry::start(&settings, attributes)
        .map(Some)
        .map_err(|e| Failure {
            code: exit::CONFIG,
            error: anyhow::anyhow!("trace export: {e}"),
        })
}

fn opentelemetry_kv(key: &'static str, value: String) -> weir_edge::telemetry::KeyValue {
    weir_edge::telemetry::KeyValue::new(key, value)
}
