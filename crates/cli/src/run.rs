//! `weir run --config weir.toml`: the daemon, until SIGTERM or SIGINT.
//!
//! SIGHUP (or `weir reload`, through `POST /reload`, or a change on disk
//! with `[engine] watch = true`) re-reads the config and applies its apps
//! ([`weir_host::daemon::reload`]). Under systemd
//! (`Type=notify`), the host says `READY=1` once every app consumes,
//! `RELOADING=1` during a reload, `STOPPING=1` when it drains, and
//! `WATCHDOG=1` every half `WatchdogSec` while its runtime answers.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use sd_notify::NotifyState;
use weir_host::config::Plan;
use weir_host::daemon::ReloadReply;
use weir_host::daemon::reload::{ReloadError, ReloadReport};
use weir_host::nats::{CredentialsError, TransportError};
use weir_host::{Daemon, DeployError};

use crate::exit::{self, Code as _, Failure};
use crate::watch::{WATCH_DEBOUNCE, Watch};

/// `weir run`.
#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub(crate) config: crate::ConfigArg,
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
/// deployed, 78 for a stream whose configuration conflicts or credentials
/// that cannot be read, 69 otherwise (the HTTP address, the private
/// nats-server, the NATS server).
fn start_failure(error: anyhow::Error) -> Failure {
    let code = if error.chain().any(|e| e.is::<DeployError>()) {
        exit::DATA
    } else if error.chain().any(|e| {
        matches!(
            e.downcast_ref(),
            Some(TransportError::StreamConflict { .. })
        ) || e.is::<CredentialsError>()
    }) {
        exit::CONFIG
    } else {
        exit::UNAVAILABLE
    };
    Failure { code, error }
}

/// Start the daemon; a signal in any start phase abandons the start (exit
/// 0), a signal while running drains (exit 0, or 70 if the drain timed
/// out), a second signal exits at once (130). A NATS client that dies
/// ([`Daemon::failed`]) drains and exits 69 so the supervisor restarts the
/// host.
pub fn run(args: RunArgs) -> Result<ExitCode, Failure> {
    let path = args.config.path();
    let plan = Plan::load(&path).code(exit::CONFIG)?;
    if let Some(table) = &plan.config.bridge {
        crate::bridge::section(table, &path)?;
    }
    let watching = plan.config.engine.watch;
    let rt = crate::tokio_runtime()?;
    let result = rt.block_on(async {
        let mut signals = Signals::new()?;
        // Registered before the start, so a SIGHUP then waits instead of
        // killing the process (the default action).
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(anyhow::Error::from)?;
        // A signal in any start phase (private server, deploy, waiting for
        // NATS, stream setup) abandons the start: what it holds is dropped.
        let mut daemon = tokio::select! {
            daemon = weir_host::http::start(plan) => daemon.map_err(start_failure)?,
            signal = signals.next() => {
                tracing::info!(signal, "stopping during start");
                return Ok(ExitCode::SUCCESS);
            }
        };
        systemd(&[NotifyState::Ready]);
        let watchdog = watchdog();
        let mut reloads = daemon.take_reload_requests();
        let mut watch = if watching {
            let plan = Plan::load(&path).code(exit::CONFIG)?;
            let w = Watch::new(&path, &plan).code(exit::UNAVAILABLE)?;
            tracing::info!(config = %path.display(), debounce_ms = WATCH_DEBOUNCE.as_millis() as u64, "watching the config and components for changes");
            Some(w)
        } else {
            None
        };
        let failed = daemon.failed();
        tokio::pin!(failed);
        let stop = loop {
            tokio::select! {
                signal = signals.next() => break Ok(signal),
                reason = &mut failed => break Err(reason),
                _ = hup.recv() => {
                    tracing::info!(config = %path.display(), "SIGHUP: reloading");
                    // Logged and shown in /stats by the daemon.
                    let _ = reload(&mut daemon, &path).await;
                }
                Some(reply) = next_request(&mut reloads) => {
                    tracing::info!(config = %path.display(), "POST /reload: reloading");
                    let _ = reply.send(reload(&mut daemon, &path).await);
                }
                Some(()) = next_change(&mut watch) => {
                    tracing::info!(config = %path.display(), "files changed: reloading");
                    let outcome = reload(&mut daemon, &path).await;
                    if let (Ok(_), Some(w)) = (outcome, watch.as_mut())
                        && let Ok(plan) = Plan::load(&path)
                        && let Err(e) = w.follow(&path, &plan)
                    {
                        tracing::warn!(error = %e, "cannot watch the new components");
                    }
                }
            }
        };
        systemd(&[NotifyState::Stopping]);
        if let Some(w) = watchdog {
            w.abort();
        }
        match &stop {
            Ok(signal) => tracing::info!(signal, "draining (a second signal exits at once)"),
            Err(reason) => {
                tracing::error!(reason, "draining and exiting {}: the NATS client is gone", exit::UNAVAILABLE);
            }
        }
        tokio::spawn(async move {
            let signal = signals.next().await;
            tracing::warn!(signal, "second signal: exiting at once");
            std::process::exit(exit::SECOND_SIGNAL);
        });
        // Bounded (DRAIN_TIMEOUT + SHUTDOWN_SLACK) whatever NATS does.
        let drained = daemon.shutdown().await;
        match stop {
            Ok(_) => drained.map(|()| ExitCode::SUCCESS).map_err(Failure::from),
            Err(reason) => Err(Failure {
                code: exit::UNAVAILABLE,
                error: anyhow::anyhow!("NATS client is gone: {reason}"),
            }),
        }
    });
    rt.shutdown_timeout(crate::RUNTIME_STOP_TIMEOUT);
    result
}

/// One reload, told to systemd (`RELOADING=1` with the monotonic time, then
/// `READY=1`); the outcome is logged and shown in `/stats` by the daemon.
async fn reload(daemon: &mut Daemon, path: &Path) -> Result<ReloadReport, ReloadError> {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    systemd(&states);
    let outcome = daemon.reload_file(path).await;
    systemd(&[NotifyState::Ready]);
    outcome
}

/// The next burst of file changes (never, without `[engine] watch`).
async fn next_change(watch: &mut Option<Watch>) -> Option<()> {
    match watch {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

/// The next `POST /reload` request (never, if requests are not taken).
async fn next_request(
    requests: &mut Option<tokio::sync::mpsc::Receiver<ReloadReply>>,
) -> Option<ReloadReply> {
    match requests {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Tell systemd `states` (nothing outside a `Type=notify` unit: sd-notify
/// does nothing without `NOTIFY_SOCKET`).
fn systemd(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// With `WatchdogSec` set: a task on the async runtime that sends
/// `WATCHDOG=1` every half period, so a runtime that stops answering is
/// restarted by systemd.
fn watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    let period = Duration::from_micros(usec / 2);
    tracing::info!(
        period_ms = period.as_millis() as u64,
        "systemd watchdog enabled"
    );
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            systemd(&[NotifyState::Watchdog]);
        }
    }))
}
