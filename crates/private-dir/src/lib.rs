//! # weir-private-dir: private directories
//!
//! Directories only this user can touch: the precompiled-artifact cache
//! (weir deserializes native code from it) and the embedded nats-server's
//! store.
//!
//! [`open`] creates a missing directory with mode 0700 and opens it as a
//! capability handle (`cap_std::fs::Dir`): every later file operation is
//! relative to that handle and cannot leave it (no `..`, no absolute path, no
//! symlink out). An existing directory is used only if it is a real
//! directory (not a symlink), owned by this process's effective user, and
//! not readable, writable or searchable by group or others; otherwise it is
//! refused with the reason, never repaired behind the operator's back.

use std::io;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;

/// Why a directory cannot be used as a private directory.
#[derive(Debug, thiserror::Error)]
pub enum PrivateDirError {
    /// Creating or opening it failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// It exists but is not safe to use.
    #[error(
        "{}: {why}; weir keeps native code and state there, so it must be a directory owned by this user with mode 0700 (fix it or choose another path)",
        path.display()
    )]
    Unsafe {
        /// The directory.
        path: PathBuf,
        /// What is wrong (symlink, owner, mode).
        why: String,
    },
}

/// Create (mode 0700, parents as needed) or check `path`, then open it as a
/// capability handle (see module docs).
///
/// # Errors
///
/// [`PrivateDirError::Io`] if it cannot be created or opened,
/// [`PrivateDirError::Unsafe`] for a symlink, another owner, or a mode that
/// lets group or others in.
pub fn open(path: &Path) -> Result<Dir, PrivateDirError> {
    let io = |source| PrivateDirError::Io {
        path: path.to_owned(),
        source,
    };
    create(path).map_err(io)?;
    check(path)?;
    let dir = Dir::open_ambient_dir(path, ambient_authority()).map_err(io)?;
    // The handle must be the directory that was checked (not one swapped in
    // between the check and the open).
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let checked = std::fs::symlink_metadata(path).map_err(io)?;
        let opened = dir.dir_metadata().map_err(io)?;
        if (
            cap_std::fs::MetadataExt::dev(&opened),
            cap_std::fs::MetadataExt::ino(&opened),
        ) != (checked.dev(), checked.ino())
        {
            return Err(PrivateDirError::Unsafe {
                path: path.to_owned(),
                why: "it changed while being opened".into(),
            });
        }
    }
    Ok(dir)
}

/// Check `path` without opening it (for a directory another process uses
/// by path, such as nats-server's store); creates it if missing.
///
/// # Errors
///
/// As [`open`].
pub fn ensure(path: &Path) -> Result<(), PrivateDirError> {
    open(path).map(drop)
}

fn create(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        match std::fs::symlink_metadata(path) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path),
            Err(e) => Err(e),
        }
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(path)
    }
}

fn check(path: &Path) -> Result<(), PrivateDirError> {
    let meta = std::fs::symlink_metadata(path).map_err(|source| PrivateDirError::Io {
        path: path.to_owned(),
        source,
    })?;
    let unsafe_dir = |why: String| PrivateDirError::Unsafe {
        path: path.to_owned(),
        why,
    };
    if meta.file_type().is_symlink() {
        return Err(unsafe_dir("it is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(unsafe_dir("it is not a directory".into()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(unsafe_dir(format!(
                "it is owned by uid {}, not by this user (uid {me})",
                meta.uid()
            )));
        }
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(unsafe_dir(format!("its mode is {mode:04o}, not 0700")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_is_created_private() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b");
        let dir = open(&path).unwrap();
        dir.write("x", b"1").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700);
        }
        // The handle cannot reach outside.
        assert!(dir.read("../b/x").is_err());
        assert!(dir.read(tmp.path().join("a/b/x")).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn open_modes_and_symlinks_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = open(&shared).unwrap_err().to_string();
        assert!(err.contains("its mode is 0755, not 0700"), "{err}");

        let target = tmp.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = open(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");

        let file = tmp.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(
            open(&file)
                .unwrap_err()
                .to_string()
                .contains("not a directory")
        );
        assert!(open(&target).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn another_owner_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (path, owner) = if rustix::process::geteuid().is_root() {
            // As root, hand a 0700 directory to `nobody`.
            let theirs = tmp.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            let nobody = rustix::process::Uid::from_raw(65_534);
            rustix::fs::chown(&theirs, Some(nobody), None).unwrap();
            (theirs, 65_534)
        } else {
            // `/` is root's.
            (PathBuf::from("/"), 0)
        };
        let err = open(&path).unwrap_err().to_string();
        assert!(err.contains(&format!("owned by uid {owner},")), "{err}");
    }
}
