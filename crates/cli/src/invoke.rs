//! `weir invoke <component.wasm> --events <file.jsonl>`: run a handler
//! in-process on events from a JSON Lines file (the NS8 corpus format) in
//! batches, and print each batch's outcomes and effects as JSON lines.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::{Value, json};
use weir_host::corpus::CorpusEvent;
use weir_host::envelope;
use weir_host::{AppSpec, Effect, Limits, Outcome};

use crate::exit::{self, Code as _, Failure};

/// Default events per batch for `weir invoke`: 64.
pub const DEFAULT_INVOKE_BATCH: usize = 64;

/// `weir invoke`.
#[derive(clap::Args)]
pub struct InvokeArgs {
    /// The component (`.wasm`); with `--config`, default the app's.
    #[arg(required_unless_present = "config")]
    component: Option<PathBuf>,
    /// Take the app's node, domains, limits and kv grants (and, without a
    /// component argument, its component) from this `weir.toml`, the app
    /// named by `--app` (or its only app). The app's pre-filter is not
    /// applied: every event of the file reaches the handler (`--only`
    /// selects names).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["node_id", "node_name", "domains", "limits", "kv", "kv_shared"])]
    config: Option<PathBuf>,
    /// Events, one JSON object per line: `name`, `source`, `payload` (a string,
    /// as published) and optionally `id`, `seq`, `t_ms`, `attempt` (the NS8
    /// corpus format). `-` reads standard input.
    #[arg(long)]
    events: PathBuf,
    /// Only events with this name (repeatable; default: all).
    #[arg(long = "only")]
    only: Vec<String>,
    /// App name (default `app`; with `--config`, the app to take).
    #[arg(long)]
    app: Option<String>,
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
    /// Grant the app its own key-value bucket, kept in memory for this run
    /// (for components that import `weir:handler/kv`).
    #[arg(long)]
    kv: bool,
    /// Grant a shared key-value bucket by name, in memory (repeatable).
    #[arg(long = "kv-shared")]
    kv_shared: Vec<String>,
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

/// The app `name` (or the only one) of the config at `path`: its spec as
/// `weir run` would deploy it, and its component unless `component` is
/// given.
fn from_config(
    path: &Path,
    name: Option<&str>,
    component: Option<PathBuf>,
) -> Result<(AppSpec, PathBuf), Failure> {
    let plan = weir_host::config::Plan::load(path).code(exit::CONFIG)?;
    let names: Vec<&str> = plan.apps.iter().map(|a| a.spec.name.as_str()).collect();
    let app = match name {
        Some(name) => plan.apps.iter().find(|a| a.spec.name == name),
        None if plan.apps.len() == 1 => plan.apps.first(),
        None => None,
    };
    let Some(app) = app else {
        return Err(anyhow::anyhow!(
            "{} has apps {names:?}: name one with --app",
            path.display()
        ))
        .code(exit::USAGE);
    };
    Ok((
        app.spec.clone(),
        component.unwrap_or_else(|| app.component.clone()),
    ))
}

/// The spec the flags describe (`--app`, `--node-id`, `--domain`,
/// `--limits`, `--kv`).
fn spec_from_flags(args: &InvokeArgs) -> Result<AppSpec, Failure> {
    let limits: Limits = match &args.limits {
        Some(path) => toml::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("failed to read {}", path.display()))
                .code(exit::DATA)?,
        )
        .with_context(|| format!("failed to parse limits {}", path.display()))
        .code(exit::DATA)?,
        None => Limits::default(),
    };
    let mut spec = AppSpec::new(
        args.app.as_deref().unwrap_or("app"),
        args.node_id,
        args.node_name
            .clone()
            .unwrap_or(format!("node{}", args.node_id)),
    );
    spec.domains = args.domains.clone();
    spec.limits = limits;
    spec.kv = weir_host::runtime::kv::KvGrant {
        own: args.kv,
        shared: args.kv_shared.clone(),
    };
    Ok(spec)
}

/// Exit 0 if every batch succeeded, 1 if one failed, 64 for a bad `--batch`,
/// 65 for a component, limits or events file that cannot be used.
pub fn run(args: InvokeArgs) -> Result<ExitCode, Failure> {
    if args.batch == 0 {
        return Err(anyhow::anyhow!("--batch must be greater than 0")).code(exit::USAGE);
    }
    let rt = crate::one_app_runtime()?;
    let (spec, component) = match &args.config {
        Some(path) => from_config(path, args.app.as_deref(), args.component.clone())?,
        None => {
            let Some(component) = args.component.clone() else {
                return Err(anyhow::anyhow!("give a component or --config")).code(exit::USAGE);
            };
            (spec_from_flags(&args)?, component)
        }
    };
    let app = rt.deploy_file(spec, &component).code(exit::DATA)?;
    if app.kv_grant().any() {
        app.attach_kv(std::sync::Arc::new(
            weir_host::runtime::kv::MemoryKv::default(),
        ));
    }

    let reader: Box<dyn BufRead> = if args.events.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&args.events)
                .with_context(|| format!("failed to open {}", args.events.display()))
                .code(exit::DATA)?,
        ))
    };
    let mut events = Vec::new();
    let mut invalid = 0usize;
    for (n, line) in reader.lines().enumerate() {
        let line = line.context("failed to read events").code(exit::DATA)?;
        if line.trim().is_empty() {
            continue;
        }
        let e: CorpusEvent = serde_json::from_str(&line)
            .with_context(|| format!("line {}: not an event", n + 1))
            .code(exit::DATA)?;
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
        writeln!(out, "{line}").code(exit::SOFTWARE)?;
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
        ExitCode::from(exit::NO)
    })
}
