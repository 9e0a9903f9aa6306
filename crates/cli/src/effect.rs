//! `weir effect-request` and `weir effect-helper`: restart and reload
//! effects carried out by a privileged helper, so the host never runs as
//! root ([`weir_host::effects::helper`]; `deploy/weir-effects.socket`).

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use weir_host::config::Config;
use weir_host::effects::helper::{MAX_REPLY_BYTES, MAX_REQUEST_BYTES, OK_REPLY, Request};
use weir_host::effects::{DEFAULT_PASS_ENV, substitute};

use crate::exit::{self, Code as _, Failure};

/// Default socket of the helper: `/run/weir-effects.sock`
/// (`deploy/weir-effects.socket`).
pub const DEFAULT_SOCKET: &str = "/run/weir-effects.sock";

/// How often the helper looks whether its command has ended: every 10 ms.
const CHILD_POLL: Duration = Duration::from_millis(10);

/// `weir effect-request`.
#[derive(clap::Args)]
pub struct EffectRequestArgs {
    /// The helper's socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Longest wait for the helper's answer, in ms (the helper's command
    /// has `[effects] timeout_ms`, 30,000 by default).
    #[arg(long, default_value_t = 60_000)]
    timeout_ms: u64,
    /// `restart` or `reload`.
    action: String,
    /// The app (on NS8, the module id).
    app: String,
    /// The unit.
    unit: String,
}

/// Ask the helper; 0 if it carried the request out, 1 if it refused or
/// the command failed (its reason on stderr), 69 if no helper answers.
pub fn request(args: EffectRequestArgs) -> Result<ExitCode, Failure> {
    let line = Request::line(&args.action, &args.app, &args.unit);
    Request::parse(line.as_bytes())
        .map_err(anyhow::Error::msg)
        .code(exit::USAGE)?;
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let unavailable = |e: std::io::Error| {
        anyhow::anyhow!(
            "effect helper at {}: {e} (is weir-effects.socket installed and started?)",
            args.socket.display()
        )
    };
    let mut stream = std::os::unix::net::UnixStream::connect(&args.socket)
        .map_err(unavailable)
        .code(exit::UNAVAILABLE)?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .and_then(|()| stream.write_all(line.as_bytes()))
        .and_then(|()| stream.shutdown(std::net::Shutdown::Write))
        .map_err(unavailable)
        .code(exit::UNAVAILABLE)?;
    let mut reply = String::new();
    (&mut stream)
        .take(MAX_REPLY_BYTES as u64)
        .read_to_string(&mut reply)
        .map_err(unavailable)
        .code(exit::UNAVAILABLE)?;
    let reply = reply.trim();
    if reply == OK_REPLY {
        return Ok(ExitCode::SUCCESS);
    }
    Err(Failure {
        code: exit::NO,
        error: anyhow::anyhow!(
            "effect helper: {}",
            if reply.is_empty() { "no answer" } else { reply }
        ),
    })
}

/// `weir effect-helper`.
#[derive(clap::Args)]
pub struct EffectHelperArgs {
    #[command(flatten)]
    config: crate::ConfigArg,
    /// The command to run for a granted request, after `--`: `{action}`,
    /// `{app}` and `{unit}` are replaced in each argument (no shell). On
    /// NS8: `-- runagent -m {app} systemctl --user try-reload-or-restart
    /// {unit}`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Serve one request on stdin/stdout (systemd's `Accept=yes`): answer `ok`
/// and exit 0, or `error: <reason>` and exit 1.
pub fn helper(args: EffectHelperArgs) -> Result<ExitCode, Failure> {
    let outcome = serve_one(&args);
    let reply = match &outcome {
        Ok(()) => format!("{OK_REPLY}\n"),
        Err(reason) => format!("error: {}\n", reason.replace(['\r', '\n'], " ")),
    };
    let _ = std::io::stdout().write_all(reply.as_bytes());
    let _ = std::io::stdout().flush();
    match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(reason) => {
            eprintln!("weir effect-helper: refused or failed: {reason}");
            Ok(ExitCode::from(exit::NO))
        }
    }
}

/// Read, check and carry out one request.
fn serve_one(args: &EffectHelperArgs) -> Result<(), String> {
    let mut line = Vec::with_capacity(MAX_REQUEST_BYTES);
    std::io::stdin()
        .take(MAX_REQUEST_BYTES as u64 + 1)
        .read_to_end(&mut line)
        .map_err(|e| format!("reading the request: {e}"))?;
    let request = Request::parse(&line)?;
    let config = Config::load(&args.config.path()).map_err(|e| format!("{e:#}"))?;
    request.check(|app| {
        config
            .apps
            .iter()
            .find(|a| a.name == app)
            .map(|a| &a.grants)
    })?;
    let argv = substitute(&args.command, &request.action, &request.unit, &request.app);
    let (program, rest) = argv.split_first().ok_or("empty command")?;
    let mut child = std::process::Command::new(program)
        .args(rest)
        .env_clear()
        .envs(
            DEFAULT_PASS_ENV
                .iter()
                .filter_map(|n| std::env::var_os(n).map(|v| (*n, v))),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("failed to start {program}: {e}"))?;
    let deadline = Instant::now() + Duration::from_millis(config.effects.timeout_ms);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{} exited with {status}", argv.join(" "))),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} ran longer than {} ms",
                    argv.join(" "),
                    config.effects.timeout_ms
                ));
            }
            Ok(None) => std::thread::sleep(CHILD_POLL),
            Err(e) => return Err(format!("waiting for {program}: {e}")),
        }
    }
}
