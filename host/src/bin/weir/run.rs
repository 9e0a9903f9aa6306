//! `weir run --config weir.toml`: the daemon, until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use weir_host::config::Plan;
use weir_host::nats::TransportError;
use weir_host::{Daemon, DeployError};

use crate::exit::{self, Code as _, Failure};

/// Longest the tokio runtime waits for its blocking threads (a compile in
/// progress, a stop of the private server) after `weir run` is done: 2 s.
pub const RUNTIME_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// `weir run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The configuration file.
    #[arg(long, default_value = "weir.toml")]
    config: PathBuf,
}

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

/// The exit code of a start that failed: 65 for a component that cannot be
/// deployed, 78 for a stream whose configuration conflicts, 69 otherwise
/// (the HTTP address, the private nats-server, the NATS server).
fn start_failure(error: anyhow::Error) -> Failure {
    let code = if error.chain().any(|e| e.is::<DeployError>()) {
        exit::DATA
    } else if error.chain().any(|e| {
        matches!(
            e.downcast_ref(),
            Some(TransportError::StreamConflict { .. })
        )
    }) {
        exit::CONFIG
    } else {
        exit::UNAVAILABLE
    };
    Failure { code, error }
}

/// Start the daemon; a signal in any start phase abandons the start (exit
/// 0), a signal while running drains (exit 0, or 70 if the drain timed
/// out), a second signal exits at once (130).
pub fn run(args: RunArgs) -> Result<ExitCode, Failure> {
    let plan = Plan::load(&args.config).code(exit::CONFIG)?;
    let rt = crate::tokio_runtime()?;
    let result = rt.block_on(async {
        let mut signals = Signals::new()?;
        // A signal in any start phase (private server, deploy, waiting for
        // NATS, stream setup) abandons the start: what it holds is dropped.
        let daemon = tokio::select! {
            daemon = Daemon::start(plan) => daemon.map_err(start_failure)?,
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
            std::process::exit(exit::SECOND_SIGNAL);
        });
        daemon.shutdown().await?;
        Ok(ExitCode::SUCCESS)
    });
    rt.shutdown_timeout(RUNTIME_STOP_TIMEOUT);
    result
}
