//! `weir`: the per-node handler host's command line, one module per
//! command:
//!
//! - `weir run` ([`run`]): the daemon;
//! - `weir check` ([`check`]): can this component be deployed;
//! - `weir invoke` ([`invoke`]): run a handler on a JSON Lines events file;
//! - `weir publish` ([`publish`]): publish one event or replay a corpus;
//! - `weir permissions` ([`permissions`]): the NATS permissions a host needs.
//!
//! Exit codes are listed in [`exit`] and in `--help`.

mod check;
mod exit;
mod invoke;
mod permissions;
mod publish;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weir_host::{EngineConfig, Runtime};

use exit::{Code as _, Failure};

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Run sandboxed WebAssembly event handlers for cluster events",
    after_help = exit::HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that a component can be deployed: list its imports with what weir
    /// grants for each (provided, denied, refused), its exports, and a verdict.
    Check(check::CheckArgs),
    /// Run a handler in-process on events from a JSON Lines file, in batches,
    /// and print each batch's outcomes and effects as JSON lines.
    Invoke(invoke::InvokeArgs),
    /// Run the host: consume events from NATS JetStream and run each app's
    /// handler (see weir.toml). Without `nats.url`, starts a private
    /// nats-server. SIGTERM or SIGINT drains in-flight batches and exits 0
    /// within 15 s, NATS reachable or not; a second signal exits at once
    /// (130).
    Run(run::RunArgs),
    /// Publish events: one (`--name`, `--source`, `--payload`) or a replay of a
    /// JSON Lines corpus (`--replay`). Each is awaited until JetStream stores
    /// it; `Nats-Msg-Id` makes republishing idempotent.
    Publish(publish::PublishArgs),
    /// Print the least-privilege NATS permissions of the host described by a
    /// config, as a nats-server `users` entry (see RELIABILITY.md).
    Permissions(permissions::PermissionsArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(exit::USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // Lifecycle at info for the long-running host; warnings only for tools.
    let default_filter = if matches!(cli.command, Command::Run(_)) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .init();
    exit::report(match cli.command {
        Command::Check(args) => check::run(args),
        Command::Invoke(args) => invoke::run(args),
        Command::Run(args) => run::run(args),
        Command::Publish(args) => publish::run(args),
        Command::Permissions(args) => permissions::run(args),
    })
}

/// The runtime of the one-app commands (`check`, `invoke`): a small pool.
fn one_app_runtime() -> Result<Runtime, Failure> {
    Runtime::new(EngineConfig {
        pool_instances: 4,
        ..EngineConfig::default()
    })
    .code(exit::SOFTWARE)
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .code(exit::SOFTWARE)
}
