//! Exit codes of `weir`, after BSD's `sysexits.h`, so scripts and systemd
//! can tell a refused component from a typo from a server that is down.
//!
//! Every code with its meaning is in [`CODES`], which feeds `--help` and
//! the book's exit-code page (`weir reference exit-codes`).

use std::process::ExitCode;

/// The verdict is no (refused component, failed batch).
pub const NO: u8 = 1;
/// `weir replay`: the candidate decided differently on some events.
pub const CHANGED: u8 = 2;
/// `EX_USAGE`: the command line is wrong.
pub const USAGE: u8 = 64;
/// `EX_DATAERR`: an input file cannot be used.
pub const DATA: u8 = 65;
/// `EX_UNAVAILABLE`: a service weir needs is unavailable.
pub const UNAVAILABLE: u8 = 69;
/// `EX_SOFTWARE`: an internal error.
pub const SOFTWARE: u8 = 70;
/// `EX_NOPERM`: the admin token cannot be read, or the host refused it
/// (`weir reload`).
pub const NO_PERMISSION: u8 = 77;
/// `EX_CANTCREAT`: an output cannot be created (`weir new`).
pub const CANT_CREATE: u8 = 73;
/// `EX_CONFIG`: the configuration cannot be used.
pub const CONFIG: u8 = 78;
/// A second SIGTERM or SIGINT during a drain (as a shell reports an
/// interrupted program). Unacknowledged events are redelivered later.
pub const SECOND_SIGNAL: i32 = 130;

/// Every exit code: the code, a few words for `--help`, and the meaning.
pub const CODES: &[(i32, &str, &str)] = &[
    (0, "success", "success"),
    (
        NO as i32,
        "refused component or failed batch",
        "the verdict is no: `check` refused the component, a batch of `invoke` failed",
    ),
    (
        CHANGED as i32,
        "replay found changes",
        "changes: `weir replay`'s candidate decided differently on some events, or asked for different effects (the report lists them)",
    ),
    (
        USAGE as i32,
        "usage",
        "usage: the command line is wrong (`EX_USAGE`)",
    ),
    (
        DATA as i32,
        "bad input (component, events, corpus)",
        "bad input: a component, events file or corpus cannot be used (`EX_DATAERR`)",
    ),
    (
        UNAVAILABLE as i32,
        "unavailable (NATS, nats-server, HTTP address)",
        "unavailable: NATS, the private nats-server or the HTTP address (`EX_UNAVAILABLE`); `weir run` also exits 69 after draining when its NATS client died",
    ),
    (
        SOFTWARE as i32,
        "internal error",
        "internal error (`EX_SOFTWARE`)",
    ),
    (
        CANT_CREATE as i32,
        "cannot create (weir new)",
        "cannot create: `weir new`'s directory exists and is not empty (`EX_CANTCREAT`)",
    ),
    (
        NO_PERMISSION as i32,
        "no permission (admin token)",
        "no permission: `weir reload` cannot read the admin token, or the host refused it (`EX_NOPERM`)",
    ),
    (
        CONFIG as i32,
        "invalid configuration",
        "configuration: `weir.toml` cannot be read or is invalid, or a file it names (credentials, a password) cannot be read (`EX_CONFIG`); `weir check --config` found a problem",
    ),
    (
        SECOND_SIGNAL,
        "second signal",
        "a second SIGTERM or SIGINT during a drain",
    ),
];

/// [`CODES`] in one line, for `--help`.
pub fn help() -> String {
    let codes: Vec<String> = CODES
        .iter()
        .map(|(code, short, _)| format!("{code} {short}"))
        .collect();
    format!("Exit codes: {}.", codes.join("; "))
}

/// A command's failure: the error and the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    /// Exit code (one of the constants above).
    pub code: u8,
    /// What went wrong, printed as `error: {error:#}`.
    pub error: anyhow::Error,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Self {
            code: SOFTWARE,
            error,
        }
    }
}

/// Attach an exit code to an error.
pub trait Code<T> {
    /// Map the error to a [`Failure`] with `code`.
    fn code(self, code: u8) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> Code<T> for Result<T, E> {
    fn code(self, code: u8) -> Result<T, Failure> {
        self.map_err(|e| Failure {
            code,
            error: e.into(),
        })
    }
}

/// Print a failure and turn it into the process's exit code.
pub fn report(result: Result<ExitCode, Failure>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(Failure { code, error }) => {
            eprintln!("error: {error:#}");
            ExitCode::from(code)
        }
    }
}
