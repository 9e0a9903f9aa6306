//! `weir reload --config weir.toml`: ask the running host to re-read its
//! config and apply it (`POST /reload` on its loopback HTTP address; the
//! same as `kill -HUP`), and wait for the outcome.

use std::process::ExitCode;

use crate::admin::{self, RELOAD_TIMEOUT};
use crate::exit::{self, Failure};

/// `weir reload`.
#[derive(clap::Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    config: crate::ConfigArg,
}

/// Print what changed (0), or every problem of a refused reload (78: the
/// host keeps its running configuration); 69 if no host answers; 77 if the
/// admin token cannot be read or is refused.
pub fn run(args: ReloadArgs) -> Result<ExitCode, Failure> {
    let addr = admin::host_addr(&args.config)?;
    let token = admin::admin_token(&args.config)?;
    let (status, body) = admin::request(addr, "POST", "/reload", Some(&token), RELOAD_TIMEOUT)?;
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    match status {
        200 => {
            let changes = &answer["changes"];
            for what in ["swapped", "updated", "added", "removed"] {
                let names: Vec<&str> = changes[what]
                    .as_array()
                    .map(|a| a.iter().filter_map(|n| n.as_str()).collect())
                    .unwrap_or_default();
                if !names.is_empty() {
                    println!("{what}: {}", names.join(", "));
                }
            }
            println!(
                "reloaded ({} unchanged)",
                changes["unchanged"].as_array().map_or(0, Vec::len)
            );
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            let problems: Vec<String> = answer["problems"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_else(|| vec![body.trim().to_owned()]);
            let code = match status {
                422 => exit::CONFIG,
                401 => exit::NO_PERMISSION,
                _ => exit::UNAVAILABLE,
            };
            Err(Failure {
                code,
                error: anyhow::anyhow!(
                    "reload refused (HTTP {status}); the host keeps running its current configuration:\n  {}",
                    problems.join("\n  ")
                ),
            })
        }
    }
}
