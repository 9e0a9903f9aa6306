//! The bearer token that guards the host's state-changing HTTP endpoints
//! (`POST /reload`).
//!
//! `/health`, `/ready`, `/stats` and `/metrics` only read; anyone who can
//! reach the listener may read them. `POST /reload` changes what runs, so it
//! needs `Authorization: Bearer <token>`, where the token is the content of
//! a file only weir's user (and root) can read:
//!
//! - `[http] admin_token_file` when set (the operator writes it; it must
//!   exist and not be readable by group or others);
//! - else [`default_token_file`], which `weir run` creates at start with
//!   [`TOKEN_BYTES`] random bytes, hex, mode 0600, and keeps across
//!   restarts.
//!
//! `weir reload --config weir.toml`, run as the same user or as root, reads
//! the same file. A request without the token, or with another, changes
//! nothing and is answered `401`. SIGHUP reloads without any token: sending
//! a signal already needs the host's user or root.

use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};

/// Random bytes of a token `weir run` creates: 32 (256 bits), written as 64
/// hex digits.
pub const TOKEN_BYTES: usize = 32;

/// Longest token file read: 4 KiB (a token is one line).
pub const MAX_TOKEN_FILE_BYTES: u64 = 4_096;

/// Shortest token accepted from an operator's file: 16 characters.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Where `weir run` keeps its token when `[http] admin_token_file` is not
/// set: `$XDG_STATE_HOME/weir/admin.token`, else
/// `$HOME/.local/state/weir/admin.token`, else `weir-admin-<uid>.token`
/// under the temporary directory (beside the artifact cache and the
/// embedded server's store).
pub fn default_token_file() -> PathBuf {
    let non_empty = |v: std::ffi::OsString| (!v.is_empty()).then(|| PathBuf::from(v));
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").and_then(non_empty) {
        return state.join("weir/admin.token");
    }
    if let Some(home) = std::env::var_os("HOME").and_then(non_empty) {
        return home.join(".local/state/weir/admin.token");
    }
    std::env::temp_dir().join(format!(
        "weir-admin-{}.token",
        rustix::process::geteuid().as_raw()
    ))
}

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Reading or creating it failed.
    #[error("admin token {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// It is readable by group or others, or not a regular file.
    #[error("admin token {}: {why} (it guards POST /reload: chmod 600 it, owned by weir's user)", path.display())]
    Unsafe {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Shorter than [`MIN_TOKEN_CHARS`] (after trimming white space).
    #[error("admin token {}: {len} characters, at least {MIN_TOKEN_CHARS}", path.display())]
    TooShort {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
}

/// Read the token in `path` (trimmed): a regular file of at most
/// [`MAX_TOKEN_FILE_BYTES`] that group and others cannot read, holding at
/// least [`MIN_TOKEN_CHARS`] characters.
///
/// # Errors
///
/// [`TokenError`] as above.
pub fn read(path: &Path) -> Result<String, TokenError> {
    let io = |source| TokenError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(TokenError::Unsafe {
            path: path.to_owned(),
            why: "not a regular file".to_owned(),
        });
    }
    if meta.mode() & 0o077 != 0 {
        return Err(TokenError::Unsafe {
            path: path.to_owned(),
            why: format!("mode {:o} lets group or others in", meta.mode() & 0o777),
        });
    }
    let mut text = String::new();
    file.take(MAX_TOKEN_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(io)?;
    let token = text.trim().to_owned();
    if token.chars().count() < MIN_TOKEN_CHARS {
        return Err(TokenError::TooShort {
            path: path.to_owned(),
            len: token.chars().count(),
        });
    }
    Ok(token)
}

/// The token in `path`, created first if missing: [`TOKEN_BYTES`] from the
/// system's random source, hex, in a new file of mode 0600 (its directory
/// created with mode 0700). Two processes starting at once end with the
/// same token: the file appears whole or not at all (written aside, then
/// linked in place without replacing).
///
/// # Errors
///
/// [`TokenError`]: the random source, the directory or the file fails, or
/// an existing file is unsafe.
pub fn ensure(path: &Path) -> Result<String, TokenError> {
    let io = |source| TokenError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(_) => return read(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    let mut random = [0u8; TOKEN_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(io)?;
    let token = hex::encode(random);
    let aside = path.with_extension(format!("{}.new", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&aside)
        .and_then(|mut f| {
            f.write_all(token.as_bytes())?;
            f.sync_all()
        });
    let linked = written.and_then(|()| std::fs::hard_link(&aside, path));
    let _ = std::fs::remove_file(&aside);
    match linked {
        Ok(()) => {
            // Whatever the umask did.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
            Ok(token)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read(path),
        Err(e) => Err(io(e)),
    }
}

/// Whether the `Authorization` header value `given` carries `token`
/// (`Bearer <token>`), compared in time independent of where they differ.
pub fn authorizes(token: &str, given: Option<&str>) -> bool {
    let Some(given) = given.and_then(|g| g.strip_prefix("Bearer ")) else {
        return false;
    };
    let (a, b) = (token.as_bytes(), given.trim().as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_once_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/weir/admin.token");
        let token = ensure(&path).unwrap();
        assert_eq!(token.len(), TOKEN_BYTES * 2);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
        assert_eq!(ensure(&path).unwrap(), token, "kept across starts");
        assert_eq!(read(&path).unwrap(), token);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read(&path), Err(TokenError::Unsafe { .. })));
        let short = dir.path().join("short");
        std::fs::write(&short, "abc\n").unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            read(&short),
            Err(TokenError::TooShort { len: 3, .. })
        ));
    }

    #[test]
    fn only_the_bearer_token_authorizes() {
        let t = "0123456789abcdef0123";
        assert!(authorizes(t, Some("Bearer 0123456789abcdef0123")));
        assert!(!authorizes(t, Some("Bearer 0123456789abcdef0124")));
        assert!(!authorizes(t, Some("Bearer 0123456789abcdef012")));
        assert!(!authorizes(t, Some("Basic 0123456789abcdef0123")));
        assert!(!authorizes(t, Some(t)));
        assert!(!authorizes(t, None));
    }
}
