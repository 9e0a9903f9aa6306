//! `weir completions SHELL` and `weir man`: generated from the command line
//! itself (`clap_complete`, `clap_mangen`), so they never drift from it.

use std::process::ExitCode;

use crate::exit::{self, Code as _, Failure};

/// `weir completions`.
#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// The shell, e.g. `bash` (install: `weir completions bash >
    /// /etc/bash_completion.d/weir`).
    shell: clap_complete::Shell,
}

/// Print the completion script of `args.shell`.
pub fn completions(args: CompletionsArgs) -> Result<ExitCode, Failure> {
    let mut cmd = crate::command();
    clap_complete::generate(args.shell, &mut cmd, "weir", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// Print the man page (`weir man > /usr/local/share/man/man1/weir.1`); a
/// reader that stops early (`weir man | head`) is not an error.
pub fn man() -> Result<ExitCode, Failure> {
    match clap_mangen::Man::new(crate::command()).render(&mut std::io::stdout()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::from(e)).code(exit::SOFTWARE)
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}
