//! `weir check <component.wasm>`: imports with what weir grants for each,
//! exports, and a verdict. `weir check --config weir.toml`: the whole
//! configuration, offline: every problem at once (each section's, the pool's
//! memory arithmetic, the `[bridge]` section), and every app's component
//! deployed as `weir run` would deploy it (with the app's limits and
//! grants), without NATS and without writing the artifact cache.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;
use weir_host::config::Config;
use weir_host::{CheckReport, DeployError, EngineConfig, Grant, Runtime};

use crate::exit::{self, Code as _, Failure};

/// `weir check`.
#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["component", "config"]))]
pub struct CheckArgs {
    /// The component (`.wasm`, built for wasm32-wasip2).
    component: Option<PathBuf>,
    /// Check a whole `weir.toml` instead: every problem, every app's
    /// component; exit 0 if `weir run` would start with it, 78 if not.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// With `--config`: one JSON object (`valid`, `problems`, `apps`).
    #[arg(long, requires = "config")]
    json: bool,
}

/// One app of a checked config.
#[derive(Debug, Serialize)]
struct AppVerdict {
    name: String,
    component: PathBuf,
    deployable: bool,
    problems: Vec<String>,
}

/// A checked config: what `--json` prints.
#[derive(Debug, Serialize)]
struct ConfigVerdict {
    config: PathBuf,
    valid: bool,
    problems: Vec<String>,
    apps: Vec<AppVerdict>,
}

/// `weir check --config`: the configuration's problems (read, parse,
/// validate: [`Config::plan`]; `[bridge]`), then each app deployed on a
/// runtime of the file's engine settings (a small pool, no disk cache). A
/// config with problems still has its components checked (imports only).
fn check_config(path: &Path) -> Result<ConfigVerdict, Failure> {
    let config = Config::read(path).code(exit::CONFIG)?;
    let mut problems = Vec::new();
    let plan = config.plan().map_err(|p| problems.extend(p)).ok();
    if let Some(table) = &config.bridge
        && let Err(p) =
            weir_bridge::BridgeConfig::from_section(table, path.parent().unwrap_or(Path::new(".")))
    {
        problems.extend(p);
    }
    let rt = Runtime::new(EngineConfig {
        pool_instances: 4,
        disk_cache: false,
        cache_dir: None,
        ..config.engine.clone()
    })
    .code(exit::SOFTWARE)?;
    let apps = match &plan {
        Some(plan) => plan
            .apps
            .iter()
            .map(|app| {
                let deployed = rt.deploy_file(app.spec.clone(), &app.component);
                verdict(&app.spec.name, &app.component, deployed.err())
            })
            .collect(),
        None => config
            .apps
            .iter()
            .map(|app| {
                let checked = rt.check_file(&app.component);
                let error = match checked {
                    Ok(report) if report.deployable() => None,
                    Ok(report) => Some(DeployError::Refused(report.problems)),
                    Err(e) => Some(e),
                };
                verdict(&app.name, &app.component, error)
            })
            .collect::<Vec<_>>(),
    };
    for app in &apps {
        problems.extend(
            app.problems
                .iter()
                .map(|p| format!("app {}: {p}", app.name)),
        );
    }
    Ok(ConfigVerdict {
        config: path.to_owned(),
        valid: problems.is_empty(),
        problems,
        apps,
    })
}

fn verdict(name: &str, component: &Path, error: Option<DeployError>) -> AppVerdict {
    let problems = match error {
        None => Vec::new(),
        Some(DeployError::Refused(p) | DeployError::Config(p)) => p,
        Some(e) => vec![e.to_string()],
    };
    AppVerdict {
        name: name.to_owned(),
        component: component.to_owned(),
        deployable: problems.is_empty(),
        problems,
    }
}

fn print_config(v: &ConfigVerdict) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "config: {}", v.config.display())?;
    for app in &v.apps {
        let state = if app.deployable {
            "deployable"
        } else {
            "refused"
        };
        writeln!(
            out,
            "  app {}: {} ({state})",
            app.name,
            app.component.display()
        )?;
    }
    if v.valid {
        writeln!(out, "verdict: valid")
    } else {
        for p in &v.problems {
            writeln!(out, "  problem: {p}")?;
        }
        writeln!(
            out,
            "verdict: invalid ({} problem{})",
            v.problems.len(),
            if v.problems.len() == 1 { "" } else { "s" }
        )
    }
}

/// Exit 0 if deployable, 1 with every problem on stderr otherwise, 65 if
/// the file cannot be loaded as a component at all. With `--config`: 0 if
/// valid, 78 with every problem otherwise.
pub fn run(args: CheckArgs) -> Result<ExitCode, Failure> {
    if let Some(path) = &args.config {
        let verdict = check_config(path)?;
        if args.json {
            let line = serde_json::to_string(&verdict).code(exit::SOFTWARE)?;
            println!("{line}");
        } else {
            print_config(&verdict).code(exit::SOFTWARE)?;
        }
        return Ok(if verdict.valid {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(exit::CONFIG)
        });
    }
    let Some(component) = args.component else {
        return Err(anyhow::anyhow!("give a component or --config")).code(exit::USAGE);
    };
    let rt = crate::one_app_runtime()?;
    let report = rt.check_file(&component).code(exit::DATA)?;
    print_report(&component, &report).code(exit::SOFTWARE)?;
    if report.deployable() {
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &report.problems {
        eprintln!("error: {problem}");
    }
    Ok(ExitCode::from(exit::NO))
}

fn print_report(path: &Path, report: &CheckReport) -> std::io::Result<()> {
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
            Grant::Provided
                if import
                    .name
                    .starts_with(weir_host::runtime::deploy::KV_INTERFACE) =>
            {
                "  (deploys only for an app granted kv or kv_shared)".to_owned()
            }
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
