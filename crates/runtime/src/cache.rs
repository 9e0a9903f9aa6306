//! Compiling components and caching the precompiled artifacts.
//!
//! The key of an artifact is the SHA-256 of the component bytes, of the
//! engine's precompile-compatibility hash (wasmtime version, target, settings)
//! and of weir's version. Artifacts are kept in memory for the process and,
//! with a cache directory, on disk as `<key>.cwasm` plus `<key>.sha256` (the
//! digest of the artifact file). weir deserializes only files it wrote: the
//! directory is opened as a capability handle and refused unless it is this
//! user's, mode 0700 and not a symlink ([`weir_private_dir`]); files are
//! written to a temporary name and renamed; the artifact is read once, and
//! those bytes are checked against the sidecar's digest and then
//! deserialized (no second read a swap could slip into). A missing, stale
//! or mismatching file is recompiled, never trusted.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use cap_std::fs::Dir;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::error::DeployError;

/// Feeds `Hash` output into SHA-256 (for the engine's compatibility hash).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The artifact directory `weir run` uses when `[engine] cache_dir` is not
/// set and `disk_cache` is on: `$XDG_STATE_HOME/weir/artifacts`, else
/// `$HOME/.local/state/weir/artifacts`, else `weir-artifacts-<uid>` under the
/// temporary directory (beside the embedded nats-server's store). It is held
/// to the same rules as any `cache_dir`: this user's, mode 0700, created so
/// when missing.
pub fn default_cache_dir() -> PathBuf {
    let non_empty = |v: std::ffi::OsString| (!v.is_empty()).then(|| PathBuf::from(v));
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").and_then(non_empty) {
        return state.join("weir/artifacts");
    }
    if let Some(home) = std::env::var_os("HOME").and_then(non_empty) {
        return home.join(".local/state/weir/artifacts");
    }
    std::env::temp_dir().join(format!(
        "weir-artifacts-{}",
        rustix::process::geteuid().as_raw()
    ))
}

/// Artifact cache (see module docs).
#[derive(Debug)]
pub(crate) struct ArtifactCache {
    dir: Option<(PathBuf, Dir)>,
    memory: Mutex<HashMap<String, Component>>,
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSource {
    /// Compiled now.
    Compiled,
    /// Found in this process's memory.
    Memory,
    /// Deserialized from the cache directory.
    Disk,
}

/// A loaded component and how long it took.
#[derive(Clone)]
pub(crate) struct Loaded {
    pub(crate) component: Component,
    pub(crate) key: String,
    pub(crate) source: LoadSource,
    pub(crate) elapsed: Duration,
}

const COMPONENT_MAGIC: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
const CORE_MAGIC: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];

/// Clear error for bytes that are not a component, before compiling.
fn check_header(bytes: &[u8]) -> Result<(), DeployError> {
    if bytes.starts_with(&COMPONENT_MAGIC) {
        Ok(())
    } else if bytes.starts_with(&CORE_MAGIC) {
        Err(DeployError::NotAComponent(
            "this is a core wasm module; build the handler for wasm32-wasip2 (which emits a component)".into(),
        ))
    } else if bytes.starts_with(b"\0asm") {
        Err(DeployError::NotAComponent(
            "unsupported wasm binary version".into(),
        ))
    } else {
        Err(DeployError::NotAComponent(
            "missing the wasm magic number (not a wasm file, or truncated)".into(),
        ))
    }
}

impl ArtifactCache {
    pub(crate) fn new(dir: Option<PathBuf>) -> Result<Self, DeployError> {
        let dir = match dir {
            Some(path) => {
                let handle = weir_private_dir::open(&path)
                    .map_err(|e| DeployError::Cache(format!("cache directory {e}")))?;
                Some((path, handle))
            }
            None => None,
        };
        Ok(Self {
            dir,
            memory: Mutex::new(HashMap::new()),
        })
    }

    fn key(engine: &Engine, bytes: &[u8]) -> String {
        let mut h = ShaHasher(Sha256::new());
        h.0.update(b"weir-artifact-v1\0");
        h.0.update(env!("CARGO_PKG_VERSION").as_bytes());
        engine.precompile_compatibility_hash().hash(&mut h);
        h.0.update(Sha256::digest(bytes));
        hex::encode(h.0.finalize())
    }

    /// Load `bytes` as a component: from memory, from disk, or by compiling
    /// (on a separate thread, abandoned after `timeout`).
    pub(crate) fn load(
        &self,
        engine: &Engine,
        bytes: &[u8],
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<Loaded, DeployError> {
        let start = Instant::now();
        if bytes.len() > max_bytes {
            return Err(DeployError::TooLarge {
                size: bytes.len(),
                cap: max_bytes,
            });
        }
        check_header(bytes)?;
        let key = Self::key(engine, bytes);
        let done = |component: Component, source| Loaded {
            component,
            key: key.clone(),
            source,
            elapsed: start.elapsed(),
        };
        if let Some(c) = self
            .memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(done(c.clone(), LoadSource::Memory));
        }
        if let Some(c) = self.load_disk(engine, &key) {
            self.remember(&key, &c);
            return Ok(done(c, LoadSource::Disk));
        }
        let component = compile(engine, bytes, timeout)?;
        if let Err(e) = self.store_disk(&key, &component) {
            tracing::warn!(error = %e, "failed to write precompiled artifact; continuing without it");
        }
        self.remember(&key, &component);
        Ok(done(component, LoadSource::Compiled))
    }

    fn remember(&self, key: &str, component: &Component) {
        self.memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_owned(), component.clone());
    }

    fn load_disk(&self, engine: &Engine, key: &str) -> Option<Component> {
        let (path, dir) = self.dir.as_ref()?;
        let expected = dir.read_to_string(format!("{key}.sha256")).ok()?;
        let bytes = dir.read(format!("{key}.cwasm")).ok()?;
        if hex::encode(Sha256::digest(&bytes)) != expected.trim() {
            tracing::warn!(dir = %path.display(), key, "precompiled artifact does not match its digest; recompiling");
            return None;
        }
        // SAFETY: these bytes are a file weir wrote with
        // `Component::serialize` for an engine with the same compatibility
        // hash (part of the key), in a private directory, renamed into place
        // whole, and their SHA-256 matches the sidecar written with them.
        // wasmtime additionally checks the header and engine settings and
        // refuses a mismatch.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize(engine, &bytes) };
        match loaded {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(dir = %path.display(), key, error = %e, "precompiled artifact refused; recompiling");
                None
            }
        }
    }

    fn store_disk(&self, key: &str, component: &Component) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let Some((_, dir)) = &self.dir else {
            return Ok(());
        };
        let bytes = component
            .serialize()
            .map_err(anyhow::Error::from)
            .context("failed to serialize component")?;
        let digest = hex::encode(Sha256::digest(&bytes));
        write_whole(dir, &format!("{key}.cwasm"), &bytes).context("failed to store artifact")?;
        write_whole(dir, &format!("{key}.sha256"), digest.as_bytes())
            .context("failed to store digest")?;
        Ok(())
    }
}

/// Write `name` in `dir` whole: to a temporary name first, then renamed, so
/// a reader never sees a partial file.
fn write_whole(dir: &Dir, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tmp = format!(".{name}.{}.{nanos:x}.tmp", std::process::id());
    let mut file = dir.create(&tmp)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    drop(file);
    match written.and_then(|()| dir.rename(&tmp, dir, name)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = dir.remove_file(&tmp);
            Err(e)
        }
    }
}

fn compile(engine: &Engine, bytes: &[u8], timeout: Duration) -> Result<Component, DeployError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let engine = engine.clone();
    let bytes = bytes.to_vec();
    std::thread::Builder::new()
        .name("weir-compile".into())
        .spawn(move || {
            let _ = tx.send(Component::new(&engine, &bytes));
        })
        .map_err(|e| DeployError::Compile(format!("failed to start the compile thread: {e}")))?;
    match rx.recv_timeout(timeout) {
        Ok(Ok(component)) => Ok(component),
        Ok(Err(e)) => Err(DeployError::Compile(format!("{e:#}"))),
        // The thread keeps compiling until cranelift finishes; its result is
        // dropped. Compilation cannot be interrupted.
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            Err(DeployError::CompileTimeout(timeout))
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            Err(DeployError::Compile("the compile thread panicked".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_errors_are_specific() {
        assert!(check_header(&COMPONENT_MAGIC).is_ok());
        let core = check_header(&CORE_MAGIC).unwrap_err().to_string();
        assert!(core.contains("core wasm module"), "{core}");
        let junk = check_header(b"hello world").unwrap_err().to_string();
        assert!(junk.contains("magic"), "{junk}");
        assert!(check_header(b"\0as").is_err());
    }
}
