//! Exit codes of `weir`, after BSD's `sysexits.h`, so scripts and systemd
//! can tell a refused component from a typo from a server that is down.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the verdict is no: `check` refused the component, a batch of `invoke` failed |
//! | 64 | usage: the command line is wrong (`EX_USAGE`) |
//! | 65 | bad input: a component, events file or corpus cannot be used (`EX_DATAERR`) |
//! | 69 | unavailable: NATS, the private nats-server or the HTTP address (`EX_UNAVAILABLE`); `weir run` also exits 69 after draining when its NATS client died |
//! | 70 | internal error (`EX_SOFTWARE`) |
//! | 73 | cannot create: `weir new`'s directory exists and is not empty (`EX_CANTCREAT`) |
//! | 77 | no permission: `weir reload` cannot read the admin token, or the host refused it (`EX_NOPERM`) |
//! | 78 | configuration: `weir.toml` cannot be read or is invalid (`EX_CONFIG`) |
//! | 130 | a second SIGTERM or SIGINT during a drain |

use std::process::ExitCode;

/// The verdict is no (refused component, failed batch).
pub const NO: u8 = 1;
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

/// The table above, for `--help`.
pub const HELP: &str = "Exit codes: 0 success; 1 refused component or failed batch; \
64 usage; 65 bad input (component, events, corpus); 69 unavailable (NATS, nats-server, \
HTTP address); 70 internal error; 73 cannot create (weir new); 77 no permission (admin token); 78 invalid configuration; 130 second signal.";

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
