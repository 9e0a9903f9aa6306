//! `weir`: the per-node handler host's command line, one module per
//! command:
//!
//! - `weir run` ([`run`]): the daemon;
//! - `weir bridge` ([`bridge`]): NS8's Redis events into NATS;
//! - `weir check` ([`check`]): can this component be deployed; with
//!   `--config`, is this whole configuration valid;
//! - `weir invoke` ([`invoke`]): run a handler on a JSON Lines events file;
//! - `weir new` ([`new`]): write a handler project in Rust, Python or
//!   JavaScript;
//! - `weir publish` ([`publish`]): publish one event or replay a corpus;
//! - `weir replay` ([`mod@replay`]): a new version of an app's handler beside
//!   the one it runs, on the events the stream holds, compared;
//! - `weir permissions` ([`permissions`]): the NATS permissions a host needs;
//! - `weir reload` ([`reload`]) and `weir stats` ([`stats`]): a running
//!   host's loopback endpoints ([`admin`]);
//! - `weir config example` ([`config`]): a commented weir.toml;
//! - `weir completions` and `weir man` ([`docs`]): shell completions and
//!   the man page; `weir reference` ([`mod@reference`], hidden): the book's
//!   reference pages.
//!
//! Exit codes are listed in [`exit`] and in `--help`.

mod admin;
mod bridge;
mod check;
mod config;
mod docs;
mod effect;
mod exit;
mod invoke;
mod new;
mod permissions;
mod publish;
mod reference;
mod reload;
mod replay;
mod run;
mod stats;
mod telemetry;
mod watch;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use weir_host::{EngineConfig, Runtime};

use exit::{Code as _, Failure};

/// The system-wide config file, last on the search path:
/// `/etc/weir/weir.toml`.
pub const SYSTEM_CONFIG: &str = "/etc/weir/weir.toml";

/// The config file in the working directory, searched before
/// [`SYSTEM_CONFIG`]: `weir.toml`.
pub const LOCAL_CONFIG: &str = "weir.toml";

/// `--config`, shared by the commands that read `weir.toml`.
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArg {
    /// The configuration file. Default: $WEIR_CONFIG, else ./weir.toml if
    /// it exists, else /etc/weir/weir.toml.
    #[arg(long, env = "WEIR_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    /// The file to read: `--config`, `WEIR_CONFIG`, [`LOCAL_CONFIG`] if it
    /// exists, [`SYSTEM_CONFIG`].
    pub fn path(&self) -> PathBuf {
        match &self.config {
            Some(path) => path.clone(),
            None if Path::new(LOCAL_CONFIG).exists() => LOCAL_CONFIG.into(),
            None => SYSTEM_CONFIG.into(),
        }
    }
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the span's fields (`weir.node`,
    /// `weir.app`, the batch's `weir.first_sequence`) and the event's (ids
    /// at debug).
    Json,
}

#[derive(Parser)]
#[command(
    name = "weir",
    version = VERSION.as_str(),
    about = "Run sandboxed WebAssembly event handlers for cluster events",
    after_help = exit::help()
)]
struct Cli {
    /// Log line format (to stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level or filter (`info`, `debug`, `weir_host=debug,warn`);
    /// RUST_LOG wins when set. Default: info for `run`, warn for the tools.
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
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
    #[command(after_long_help = "Examples:\n  \
        weir invoke mail.wasm --events events.jsonl --domain example.org\n  \
        weir invoke mail.wasm --events events.jsonl --node-id 2 --batch 1 --limits limits.toml")]
    Invoke(invoke::InvokeArgs),
    /// Write a handler project (`--lang rust|python|js`) that builds with one
    /// command and passes `weir check` and `weir invoke` out of the box.
    #[command(after_long_help = "Examples:\n  \
        weir new --lang rust mail-sync && cd mail-sync && cargo build --release --target wasm32-wasip2\n  \
        weir new --lang python certs-reload\n  \
        weir new --lang js domain-relay")]
    New(new::NewArgs),
    /// Run the host: consume events from NATS JetStream and run each app's
    /// handler (see weir.toml). Without `nats.url`, starts a private
    /// nats-server. SIGHUP reloads the config without losing events.
    /// SIGTERM or SIGINT drains in-flight batches and exits 0 within 15 s,
    /// NATS reachable or not; a second signal exits at once (130).
    Run(run::RunArgs),
    /// Bridge NS8's Redis pub/sub events (`cluster/event/*`,
    /// `node/*/event/*`, `module/*/event/*`) into the events stream, with
    /// deterministic message ids so one bridge per node stores each event
    /// once (`[bridge]` in weir.toml). SIGTERM drains within 5 s.
    Bridge(bridge::BridgeArgs),
    /// Publish events: one (`--name`, `--source`, `--payload`) or a replay of a
    /// JSON Lines corpus (`--replay`). Each is awaited until JetStream stores
    /// it; `Nats-Msg-Id` makes republishing idempotent.
    #[command(after_long_help = "Examples:\n  \
        weir publish --config weir.toml --name user-domain-changed --source cluster --payload '{\"domains\": [\"example.org\"]}'\n  \
        weir publish --url nats://10.0.0.11:4222 --creds-file node1.creds --replay events.jsonl --batch-domains")]
    Publish(Box<publish::PublishArgs>),
    /// Print the least-privilege NATS permissions of the host described by a
    /// config, as a nats-server `users` entry (see RELIABILITY.md).
    #[command(after_long_help = "Examples:\n  \
        weir permissions --config /etc/weir/weir.toml >> nats-server.conf\n  \
        weir permissions --config /etc/weir/weir.toml --bridge")]
    Permissions(permissions::PermissionsArgs),
    /// Ask the running host to re-read its config and apply it (as SIGHUP
    /// does): swap changed components, add and remove apps, without losing
    /// events. Exits 78 with every problem if the reload is refused (the
    /// host keeps its running configuration).
    Reload(reload::ReloadArgs),
    /// Print a running host's per-app counters as a table (`--json` for the
    /// raw `/stats`, `--watch` to refresh).
    Stats(stats::StatsArgs),
    /// Run a new version of an app's handler beside the one it runs now on
    /// the events the stream holds, effects intercepted, and print what
    /// changed. Exits 0 when nothing did, 2 when some events changed.
    #[command(after_long_help = "Examples:\n  \
        weir replay --app mail1 --component mail-v2.wasm --since 24h\n  \
        weir replay --app mail1 --component mail-v2.wasm --from-seq 1000 --to-seq 2000 --batch 1 --json")]
    Replay(replay::ReplayArgs),
    /// Ask the privileged effect helper to restart or reload a unit (the
    /// command executor's command when the host runs unprivileged; see
    /// deploy/weir-effects.socket). Exits 0 when done, 1 when refused or
    /// failed, 69 when no helper answers.
    EffectRequest(effect::EffectRequestArgs),
    /// Serve one effect request on stdin/stdout (started by systemd per
    /// connection on weir-effects.socket, as root): carry it out with the
    /// command after `--` only if weir.toml grants it.
    EffectHelper(effect::EffectHelperArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(docs::CompletionsArgs),
    /// Print the man page (roff) of weir.
    Man,
    /// Print a complete, commented weir.toml (`weir config example`).
    Config(config::ConfigArgs),
    /// Print a page of the book's reference, generated from weir itself.
    #[command(hide = true)]
    Reference(reference::ReferenceArgs),
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
    let telemetry = match telemetry::start(&cli) {
        Ok(t) => t,
        Err(failure) => return exit::report(Err(failure)),
    };
    init_logs(&cli, telemetry.as_ref());
    if let Some(t) = &telemetry {
        tracing::info!(
            endpoint = t.endpoint(),
            "exporting traces (OTLP, http/protobuf)"
        );
    }
    let code = exit::report(match cli.command {
        Command::Check(args) => check::run(args),
        Command::Invoke(args) => invoke::run(args),
        Command::New(args) => new::run(args),
        Command::Run(args) => run::run(args),
        Command::Bridge(args) => bridge::run(args),
        Command::Publish(args) => publish::run(*args),
        Command::Permissions(args) => permissions::run(args),
        Command::Reload(args) => reload::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Replay(args) => replay::run(args),
        Command::EffectRequest(args) => effect::request(args),
        Command::EffectHelper(args) => effect::helper(args),
        Command::Completions(args) => docs::completions(args),
        Command::Man => docs::man(),
        Command::Config(args) => config::run(args),
        Command::Reference(args) => reference::run(args),
    });
    if let Some(t) = telemetry {
        t.shutdown();
    }
    code
}

/// Logs to stderr: `--log-format`, and `RUST_LOG`, else `--log-level`,
/// else info for the long-running host and warnings only for tools. With
/// trace export on, weir's spans (its crates', info and up, whatever the
/// log filter) also go to `telemetry`'s layer.
fn init_logs(cli: &Cli, telemetry: Option<&weir_edge::telemetry::Telemetry>) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let default_filter = if matches!(cli.command, Command::Run(_) | Command::Bridge(_)) {
        "info"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let wanted = cli.log_level.as_deref().unwrap_or(default_filter);
        EnvFilter::try_new(wanted).unwrap_or_else(|e| {
            eprintln!("warning: --log-level {wanted:?}: {e}; using {default_filter}");
            EnvFilter::new(default_filter)
        })
    });
    let traces = telemetry.map(|t| {
        t.layer().with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_targets(TRACED_CRATES.map(|c| (c, tracing::Level::INFO))),
        )
    });
    // Colours only on a terminal: a journal, a pipe or a file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let registry = tracing_subscriber::registry().with(traces);
    match cli.log_format {
        LogFormat::Text => registry.with(logs.with_filter(filter)).init(),
        LogFormat::Json => registry
            .with(
                logs.json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_filter(filter),
            )
            .init(),
    }
}

/// The crates whose spans become trace spans: weir's own.
const TRACED_CRATES: [&str; 4] = ["weir", "weir_host", "weir_edge", "weir_bridge"];

/// `weir --version`: weir's version, the WIT packages its components may
/// target, and the wasmtime it runs them on.
static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} (WIT {}; wasmtime {})",
        env!("CARGO_PKG_VERSION"),
        weir_host::runtime::WIT_PACKAGES.join(", "),
        weir_host::runtime::WASMTIME_VERSION
    )
});

/// The command line, for completions and the man page.
fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// The runtime of the one-app commands (`check`, `invoke`): a small pool.
fn one_app_runtime() -> Result<Runtime, Failure> {
    Runtime::new(EngineConfig {
        pool_instances: 4,
        ..EngineConfig::default()
    })
    .code(exit::SOFTWARE)
}

/// Longest the tokio runtime waits for its blocking threads (a compile in
/// progress, a stop of the private server) after `weir run` or `weir
/// bridge` is done: 2 s.
const RUNTIME_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

fn tokio_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .code(exit::SOFTWARE)
}
