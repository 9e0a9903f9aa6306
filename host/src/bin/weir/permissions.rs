//! `weir permissions --config weir.toml`: the least-privilege NATS
//! permissions of the host a config describes, as a nats-server `users`
//! entry.

use std::path::PathBuf;
use std::process::ExitCode;

use weir_host::config::Config;

use crate::exit::{self, Code as _, Failure};

/// `weir permissions`.
#[derive(clap::Args)]
pub struct PermissionsArgs {
    /// The configuration file.
    #[arg(long, default_value = "weir.toml")]
    config: PathBuf,
    /// User name to put in the entry.
    #[arg(long, default_value = "weir-node")]
    user: String,
    /// Password to put in the entry.
    #[arg(long, default_value = "CHANGE-ME")]
    password: String,
}

/// Print the entry; 78 if the config cannot be used.
pub fn run(args: PermissionsArgs) -> Result<ExitCode, Failure> {
    let config = Config::load(&args.config).code(exit::CONFIG)?;
    let permissions = weir_host::permissions::for_host(&config).code(exit::CONFIG)?;
    println!("{}", permissions.server_user(&args.user, &args.password));
    Ok(ExitCode::SUCCESS)
}
