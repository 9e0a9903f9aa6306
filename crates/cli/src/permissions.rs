//! `weir permissions --config weir.toml`: the least-privilege NATS
//! permissions of the host a config describes, as a nats-server `users`
//! entry for the identity the config authenticates as (its `user`, or its
//! nkey's public key), or as the `nsc` command for a JWT (`creds_file`) user.

use std::process::ExitCode;

use weir_host::config::Config;
use weir_host::permissions::{self, Identity};

use crate::exit::{self, Code as _, Failure};

/// `weir permissions`.
#[derive(clap::Args)]
pub struct PermissionsArgs {
    #[command(flatten)]
    config: crate::ConfigArg,
    /// User name to put in the entry when the config names none
    /// (`nats.user`), and the JWT user's name for `nsc`.
    #[arg(long, default_value = "weir-node")]
    user: String,
    /// Password to put in a user entry (the host reads its own from
    /// `nats.password_file` or `WEIR_NATS_PASSWORD`).
    #[arg(long, default_value = "CHANGE-ME")]
    password: String,
    /// The permissions of `weir bridge` on this node instead of the host's
    /// (publish every event subject, the bridge's dead letters).
    #[arg(long)]
    bridge: bool,
}

/// Print the entry; 78 if the config cannot be used.
pub fn run(args: PermissionsArgs) -> Result<ExitCode, Failure> {
    let allowed = if args.bridge {
        // A bridge-only file need not have apps.
        let config = Config::read(&args.config.path()).code(exit::CONFIG)?;
        permissions::for_bridge(&config).code(exit::CONFIG)?
    } else {
        let config = Config::load(&args.config.path()).code(exit::CONFIG)?;
        permissions::for_host(&config).code(exit::CONFIG)?
    };
    let config = Config::read(&args.config.path()).code(exit::CONFIG)?;
    match permissions::identity(&config.nats, &args.user, &args.password).code(exit::CONFIG)? {
        Some(identity @ (Identity::User { .. } | Identity::Nkey(_))) => {
            println!("{}", allowed.server_entry(&identity));
        }
        None => {
            let user = config.nats.user.as_deref().unwrap_or(&args.user);
            println!("{}", allowed.nsc_command(user));
        }
    }
    Ok(ExitCode::SUCCESS)
}
