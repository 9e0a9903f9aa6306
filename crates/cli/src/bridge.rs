//! `weir bridge --config weir.toml`: NS8's Redis pub/sub events into the
//! events stream (`weir_bridge`), until SIGTERM or SIGINT.
//!
//! It reads `[node]`, `[nats]` (which must name a server) and `[bridge]`
//! of the file; the apps are not its business. One bridge per node may run
//! on every node at once: the stream keeps one copy of each event.

use std::process::ExitCode;

use weir_bridge::{Bridge, BridgeConfig, BridgeError};
use weir_host::config::Config;

use crate::exit::{self, Code as _, Failure};

/// `weir bridge`.
#[derive(clap::Args)]
pub struct BridgeArgs {
    #[command(flatten)]
    pub(crate) config: crate::ConfigArg,
}

/// `[bridge]` of the config at `path` parsed and checked
/// ([`BridgeConfig::from_section`]); `weir run` checks it too, though it
/// does not use it.
///
/// # Errors
///
/// Every problem of the section, exit code 78.
pub fn section(table: &toml::Table, path: &std::path::Path) -> Result<BridgeConfig, Failure> {
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    BridgeConfig::from_section(table, base)
        .map_err(|problems| {
            anyhow::anyhow!(
                "invalid configuration {}:\n  {}",
                path.display(),
                problems.join("\n  ")
            )
        })
        .code(exit::CONFIG)
}

/// Run the bridge until a signal; a second signal exits at once (130).
pub fn run(args: BridgeArgs) -> Result<ExitCode, Failure> {
    let path = args.config.path();
    let config = Config::read(&path).code(exit::CONFIG)?;
    let Some(section_table) = &config.bridge else {
        return Err(anyhow::anyhow!(
            "{} has no [bridge] section (redis_url = \"redis://host:port\")",
            path.display()
        ))
        .code(exit::CONFIG);
    };
    let bridge = section(section_table, &path)?;
    let rt = crate::tokio_runtime()?;
    let result = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(anyhow::Error::from)?;
        let mut int = signal(SignalKind::interrupt()).map_err(anyhow::Error::from)?;
        let running = Bridge::start(config.node.id, &config.nats, &bridge, true)
            .await
            .map_err(|e| {
                // A file the config names that cannot be read, or options
                // refused, are the configuration's; the rest is unavailable.
                let code = match e {
                    BridgeError::Config(_)
                    | BridgeError::RedisClient(_)
                    | BridgeError::Credentials(_) => exit::CONFIG,
                    BridgeError::Nats(_) | BridgeError::Listen(_) => exit::UNAVAILABLE,
                };
                Failure {
                    code,
                    error: e.into(),
                }
            })?;
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "stopping: publishing what is buffered (a second signal exits at once)"
        );
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            std::process::exit(exit::SECOND_SIGNAL);
        });
        running.shutdown().await;
        Ok(ExitCode::SUCCESS)
    });
    rt.shutdown_timeout(crate::RUNTIME_STOP_TIMEOUT);
    result
}
