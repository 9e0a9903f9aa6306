//! `weir`: the per-node handler host's command line.
//!
//! - `weir check <component.wasm>`: imports with what weir grants for each,
//!   exports, and a verdict; exit 0 if deployable, 1 with every problem on
//!   stderr otherwise, 2 if the file cannot be loaded at all.
//! - `weir invoke <component.wasm> --events <file.jsonl>`: run a handler
//!   in-process on events from a JSON Lines file (the NS8 corpus format) in
//!   batches, and print each batch's outcomes and effects as JSON lines.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use weir_host::corpus::CorpusEvent;
use weir_host::envelope;
use weir_host::{AppSpec, CheckReport, Effect, EngineConfig, Grant, Limits, Outcome, Runtime};

/// Default events per batch for `weir invoke`: 64.
const DEFAULT_INVOKE_BATCH: usize = 64;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Run sandboxed WebAssembly event handlers for cluster events"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that a component can be deployed: list its imports with what weir
    /// grants for each (provided, denied, refused), its exports, and a verdict.
    Check {
        /// The component (`.wasm`, built for wasm32-wasip2).
        component: PathBuf,
    },
    /// Run a handler in-process on events from a JSON Lines file, in batches,
    /// and print each batch's outcomes and effects as JSON lines.
    Invoke(InvokeArgs),
    /// Run the host: consume events from NATS JetStream and run each app's
    /// handler (see weir.toml). Without `nats.url`, starts a private
    /// nats-server. SIGTERM or SIGINT drains in-flight batches and exits 0
    /// within 15 s, NATS reachable or not; a second signal exits at once
    /// (130).
    Run {
        /// The configuration file.
        #[arg(long, default_value = "weir.toml")]
        config: PathBuf,
    },
    /// Publish events: one (`--name`, `--source`, `--payload`) or a replay of a
    /// JSON Lines corpus (`--replay`). Each is awaited until JetStream stores
    /// it; `Nats-Msg-Id` makes republishing idempotent.
    Publish(PublishArgs),
    /// Print the least-privilege NATS permissions of the host described by a
    /// config, as a nats-server `users` entry (see RELIABILITY.md).
    Permissions {
        /// The configuration file.
        #[arg(long, default_value = "weir.toml")]
        config: PathBuf,
        /// User name to put in the entry.
        #[arg(long, default_value = "weir-node")]
        user: String,
        /// Password to put in the entry.
        #[arg(long, default_value = "CHANGE-ME")]
        password: String,
    },
}

#[derive(Args)]
struct PublishArgs {
    /// NATS server URL.
    #[arg(long, env = "WEIR_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    url: String,
    /// Subject prefix.
    #[arg(long, default_value = weir_host::subjects::DEFAULT_PREFIX)]
    prefix: String,
    /// Event name (single event).
    #[arg(long, conflicts_with = "replay")]
    name: Option<String>,
    /// Publisher identity, e.g. `module/ldapproxy4` (single event).
    #[arg(long, default_value = "cluster")]
    source: String,
    /// Payload, as published (single event).
    #[arg(long, default_value = "{}")]
    payload: String,
    /// Event id (`Nats-Msg-Id`); default a fresh unique id.
    #[arg(long)]
    id: Option<String>,
    /// Replay a JSON Lines corpus (NS8 corpus format).
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Honour the corpus's `t_ms` offsets (default: publish as fast as
    /// JetStream acknowledges).
    #[arg(long)]
    realtime: bool,
    /// Fold per-domain events of one source published at the same instant
    /// into one event with a `domains` list (the fix at the source).
    #[arg(long)]
    batch_domains: bool,
}

#[derive(Args)]
struct InvokeArgs {
    /// The component (`.wasm`).
    component: PathBuf,
    /// Events, one JSON object per line: `name`, `source`, `payload` (a string,
    /// as published) and optionally `id`, `seq`, `t_ms`, `attempt` (the NS8
    /// corpus format). `-` reads standard input.
    #[arg(long)]
    events: PathBuf,
    /// Only events with this name (repeatable; default: all).
    #[arg(long = "only")]
    only: Vec<String>,
    /// App name.
    #[arg(long, default_value = "app")]
    app: String,
    /// This node's id.
    #[arg(long, default_value_t = 1)]
    node_id: u32,
    /// This node's name (default `node<ID>`).
    #[arg(long)]
    node_name: Option<String>,
    /// One of the app's domains (repeatable; `*.example.org` allowed).
    #[arg(long = "domain")]
    domains: Vec<String>,
    /// Events per batch.
    #[arg(long, default_value_t = DEFAULT_INVOKE_BATCH)]
    batch: usize,
    /// Per-app limits as a TOML file (fields of `weir_host::Limits`).
    #[arg(long)]
    limits: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Lifecycle at info for the long-running host; warnings only for tools.
    let default_filter = if matches!(cli.command, Command::Run { .. }) {
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
    let result = match cli.command {
        Command::Check { component } => check(component),
        Command::Invoke(args) => invoke(args),
        Command::Run { config } => run(config),
        Command::Publish(args) => publish(args),
        Command::Permissions {
            config,
            user,
            password,
        } => permissions(config, &user, &password),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> anyhow::Result<Runtime> {
    // The CLI runs one app: a small pool is enough.
    Ok(Runtime::new(EngineConfig {
        pool_instances: 4,
        ..EngineConfig::default()
    })?)
}

fn check(path: PathBuf) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let report = rt.check_file(&path)?;
    print_report(&path, &report)?;
    if report.deployable() {
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &report.problems {
        eprintln!("error: {problem}");
    }
    Ok(ExitCode::from(1))
}

fn print_report(path: &std::path::Path, report: &CheckReport) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "component: {} ({} bytes, loaded in {} ms)",
        path.display(),
        report.size,
        report.load_time.as_millis()
    )?;
    writeln!(out, "imports:")?;
    let width = report
        .imports
        .iter()
        .map(|i| i.name.len())
        .max()
        .unwrap_or(0);
    for import in &report.imports {
        let why = match &import.grant {
            Grant::Provided => String::new(),
            Grant::Denied(why) => format!("  ({why})"),
            Grant::Refused(why) => format!("  ({why})"),
        };
        let row = format!("  {:<9} {:<width$}{why}", import.grant.label(), import.name);
        writeln!(out, "{}", row.trim_end())?;
    }
    writeln!(out, "exports:")?;
    for (name, kind) in &report.exports {
        writeln!(out, "  {kind:<9} {name}")?;
    }
    let verdict = if report.deployable() {
        "deployable".to_owned()
    } else {
        format!(
            "refused ({} problem{})",
            report.problems.len(),
            if report.problems.len() == 1 { "" } else { "s" }
        )
    };
    writeln!(out, "verdict: {verdict}")
}

fn outcome_json(o: &Outcome) -> Value {
    match o {
        Outcome::Done => json!("done"),
        Outcome::Retry(ms) => json!({ "retry_ms": ms }),
        Outcome::Reject(reason) => json!({ "reject": reason }),
    }
}

fn effect_json(e: &Effect) -> Value {
    match e {
        Effect::Restart(unit) => json!({ "restart": unit }),
        Effect::Reload(unit) => json!({ "reload": unit }),
        Effect::Publish(m) => {
            json!({ "publish": m.name, "payload": String::from_utf8_lossy(&m.payload) })
        }
    }
}

fn invoke(args: InvokeArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    anyhow::ensure!(args.batch > 0, "--batch must be greater than 0");
    let limits: Limits = match &args.limits {
        Some(path) => toml::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("failed to read {}", path.display()))?,
        )
        .with_context(|| format!("failed to parse limits {}", path.display()))?,
        None => Limits::default(),
    };
    let rt = runtime()?;
    let mut spec = AppSpec::new(
        &args.app,
        args.node_id,
        args.node_name
            .clone()
            .unwrap_or(format!("node{}", args.node_id)),
    );
    spec.domains = args.domains.clone();
    spec.limits = limits;
    let app = rt.deploy_file(spec, &args.component)?;

    let reader: Box<dyn BufRead> = if args.events.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&args.events)
                .with_context(|| format!("failed to open {}", args.events.display()))?,
        ))
    };
    let mut events = Vec::new();
    let mut invalid = 0usize;
    for (n, line) in reader.lines().enumerate() {
        let line = line.context("failed to read events")?;
        if line.trim().is_empty() {
            continue;
        }
        let e: CorpusEvent =
            serde_json::from_str(&line).with_context(|| format!("line {}: not an event", n + 1))?;
        if !args.only.is_empty() && !args.only.contains(&e.name) {
            continue;
        }
        match e.to_event(
            &format!("line{}", n + 1),
            envelope::DEFAULT_MAX_PAYLOAD_BYTES,
        ) {
            Ok(event) => events.push(event),
            Err(err) => {
                invalid += 1;
                eprintln!("line {}: dead letter: {err}", n + 1);
            }
        }
    }

    let mut out = std::io::stdout().lock();
    let (mut failed, mut effects) = (0usize, 0usize);
    for (i, batch) in events.chunks(args.batch).enumerate() {
        let inv = app.invoke_blocking(batch);
        let mut line = json!({
            "batch": i,
            "events": batch.len(),
            "fuel": inv.stats.fuel_consumed,
            "memory_bytes": inv.stats.memory_high_water,
            "elapsed_us": inv.stats.elapsed.as_micros() as u64,
        });
        match &inv.result {
            Ok(h) => {
                effects += h.effects.len();
                line["outcomes"] = h.outcomes.iter().map(outcome_json).collect();
                line["effects"] = h.effects.iter().map(effect_json).collect();
            }
            Err(e) => {
                failed += 1;
                line["error"] = json!({ "kind": e.kind(), "message": e.to_string() });
            }
        }
        writeln!(out, "{line}")?;
    }
    eprintln!(
        "{} events in {} batches: {} effects, {} failed batches, {} invalid events",
        events.len(),
        events.len().div_ceil(args.batch),
        effects,
        failed,
        invalid
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Exit code after a second SIGTERM or SIGINT: 130 (as a shell reports an
/// interrupted program). The first signal drains; the second exits at once
/// (unacknowledged events are redelivered later, none is lost).
const SECOND_SIGNAL_EXIT: i32 = 130;

/// Longest the tokio runtime waits for its blocking threads (a compile in
/// progress, a stop of the private server) after `weir run` is done: 2 s.
const RUNTIME_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// SIGTERM and SIGINT, as one stream of signal names.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next SIGTERM or SIGINT.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

fn permissions(path: PathBuf, user: &str, password: &str) -> anyhow::Result<ExitCode> {
    let config = weir_host::config::Config::load(&path)?;
    let permissions = weir_host::permissions::for_host(&config)?;
    println!("{}", permissions.server_user(user, password));
    Ok(ExitCode::SUCCESS)
}

fn run(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = weir_host::config::Config::load(&path)?;
    let rt = tokio_runtime()?;
    let result = rt.block_on(async {
        let mut signals = Signals::new()?;
        // A signal in any start phase (private server, deploy, waiting for
        // NATS, stream setup) abandons the start: what it holds is dropped.
        let host = tokio::select! {
            host = weir_host::Host::start(config) => host?,
            signal = signals.next() => {
                tracing::info!(signal, "stopping during start");
                return Ok(ExitCode::SUCCESS);
            }
        };
        let signal = signals.next().await;
        tracing::info!(signal, "draining (a second signal exits at once)");
        tokio::spawn(async move {
            let signal = signals.next().await;
            tracing::warn!(signal, "second signal: exiting at once");
            std::process::exit(SECOND_SIGNAL_EXIT);
        });
        host.shutdown().await?;
        Ok(ExitCode::SUCCESS)
    });
    rt.shutdown_timeout(RUNTIME_STOP_TIMEOUT);
    result
}

fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    use weir_host::corpus::{self, CorpusEvent};
    let events: Vec<CorpusEvent> = match (&args.replay, &args.name) {
        (Some(path), _) => {
            let events = corpus::read_jsonl(path)?;
            if args.batch_domains {
                corpus::fold_domains(&events)
            } else {
                events
            }
        }
        (None, Some(name)) => vec![CorpusEvent {
            seq: 0,
            t_ms: 0,
            source: args.source.clone(),
            name: name.clone(),
            payload: args.payload.clone(),
            id: Some(
                args.id
                    .clone()
                    .unwrap_or_else(|| format!("weir-publish:{}", unique_suffix())),
            ),
            attempt: 0,
        }],
        (None, None) => anyhow::bail!("give --name (one event) or --replay FILE"),
    };
    let scope = args
        .replay
        .as_ref()
        .and_then(|p| p.file_stem())
        .map_or_else(
            || "publish".to_owned(),
            |s| s.to_string_lossy().into_owned(),
        );
    tokio_runtime()?.block_on(async {
        let subjects = weir_host::subjects::Subjects::new(&args.prefix)?;
        let transport = weir_host::transport::Transport::connect(
            &args.url,
            "weir-publish",
            subjects,
            weir_host::subjects::DEFAULT_STREAM,
        )
        .await?;
        transport.ensure_streams().await?;
        let start = std::time::Instant::now();
        for (n, e) in events.iter().enumerate() {
            if args.realtime {
                let at = std::time::Duration::from_millis(e.t_ms);
                if let Some(wait) = at.checked_sub(start.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
            let id = e.id.clone().unwrap_or_else(|| format!("{scope}:{}", e.seq));
            let seq = transport
                .publish_event(
                    &e.name,
                    &e.source,
                    bytes::Bytes::from(e.payload.clone()),
                    &id,
                )
                .await
                .with_context(|| format!("event {} ({})", n + 1, e.name))?;
            tracing::debug!(id, seq, "published");
        }
        eprintln!(
            "published {} events in {:.1?}",
            events.len(),
            start.elapsed()
        );
        Ok(ExitCode::SUCCESS)
    })
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{:x}", std::process::id())
}
