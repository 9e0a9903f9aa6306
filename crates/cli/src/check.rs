//! `weir check <component.wasm>`: imports with what weir grants for each,
//! exports, and a verdict.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use weir_host::{CheckReport, Grant};

use crate::exit::{self, Code as _, Failure};

/// `weir check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// The component (`.wasm`, built for wasm32-wasip2).
    component: PathBuf,
}

/// Exit 0 if deployable, 1 with every problem on stderr otherwise, 65 if
/// the file cannot be loaded as a component at all.
pub fn run(args: CheckArgs) -> Result<ExitCode, Failure> {
    let rt = crate::one_app_runtime()?;
    let report = rt.check_file(&args.component).code(exit::DATA)?;
    print_report(&args.component, &report).code(exit::SOFTWARE)?;
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
