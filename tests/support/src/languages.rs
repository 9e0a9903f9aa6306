//! Building the Python (componentize-py) and JavaScript (componentize-js)
//! handlers of `guests/python` and `guests/js` into components, for the
//! conformance suite and the per-language bench. The Rust builds come from
//! `weir-test-artifacts`.
//!
//! Tools: `componentize-py` on `PATH` (pinned in `.ci/run`, 0.25.1) and
//! Node.js with `guests/js/node_modules` (`npm ci --prefix guests/js`,
//! componentize-js 0.23.0 pinned by its `package-lock.json`).
//!
//! Builds are cached in `<target>/lang-components`, keyed by the SHA-256 of
//! the tool's version and every source file (see [`cached`]): the suite's
//! processes and the bench build each component once per change.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Build the Python handler `guests/python/<name>/app.py` (with the SDK
/// `guests/python/weir_sdk`) against `wit/`, world `handler`, into `out`.
///
/// The component comes from the build cache ([`cached`]) when one was made
/// from the same sources with the same componentize-py.
///
/// # Panics
///
/// If componentize-py is missing (with the install command) or fails.
pub fn build_python(name: &str, out: &Path) {
    let python = repo().join("guests/python");
    let tool = tool_version(Command::new("componentize-py").arg("--version"));
    let key = BuildKey::new("python", name, &tool)
        .tree(&repo().join("wit"))
        .tree(&python.join(name))
        .tree(&python.join("weir_sdk"));
    cached(&key, out, |into| {
        let status = Command::new("componentize-py")
            .arg("-d")
            .arg(repo().join("wit"))
            .args(["-w", "handler", "componentize", "app", "-p"])
            .arg(python.join(name))
            .arg("-p")
            .arg(&python)
            .arg("-o")
            .arg(into)
            .current_dir(into.parent().unwrap_or(Path::new(".")))
            .status()
            .unwrap_or_else(|e| {
                panic!("componentize-py not found ({e}): `pip install componentize-py==0.25.1`")
            });
        assert!(status.success(), "componentize-py failed for {name}");
    });
}

/// Build the JavaScript handlers `guests/js/<name>/app.js` (each with the
/// SDK `guests/js/weir.js`) with `guests/js/build.mjs` into
/// `out/<name>.wasm`.
///
/// Each component comes from the build cache ([`cached`]) when one was made
/// from the same sources with the same componentize-js (the lock file).
///
/// # Panics
///
/// If Node.js or componentize-js is missing (with the install command) or a
/// build fails.
pub fn build_js(names: &[&str], out: &Path) {
    let js = repo().join("guests/js");
    assert!(
        js.join("node_modules/@bytecodealliance/componentize-js")
            .is_dir(),
        "componentize-js is not installed: run `npm ci --prefix guests/js`"
    );
    let tool = tool_version(Command::new("node").arg("--version"));
    for name in names {
        let key = BuildKey::new("js", name, &tool)
            .file(&js.join("package-lock.json"))
            .file(&js.join("build.mjs"))
            .file(&js.join("weir.js"))
            .tree(&repo().join("wit"))
            .tree(&js.join(name));
        cached(&key, &out.join(format!("{name}.wasm")), |into| {
            let dir = into.parent().unwrap_or(Path::new("."));
            let status = Command::new("node")
                .arg(js.join("build.mjs"))
                .arg(name)
                .env("WEIR_JS_OUT", dir)
                .status()
                .unwrap_or_else(|e| panic!("node not found ({e}): install Node.js 20 or later"));
            assert!(status.success(), "componentize-js failed for {name}");
            std::fs::rename(dir.join(format!("{name}.wasm")), into)
                .expect("componentize-js wrote its component");
        });
    }
}

/// The first line a tool prints for its version, part of a build key.
fn tool_version(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?} could not start: {e}"));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// What a cached component was built from: the language, the handler, the
/// tool's version and the bytes and paths of every source file, hashed
/// (SHA-256).
pub struct BuildKey {
    hasher: Sha256,
    name: String,
}

impl BuildKey {
    /// A key for handler `name` in `language`, built by `tool` (its version).
    pub fn new(language: &str, name: &str, tool: &str) -> Self {
        let mut hasher = Sha256::new();
        for part in [language, name, tool] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        Self {
            hasher,
            name: format!("{name}.{language}"),
        }
    }

    /// Add one file (its path relative to the repository, and its bytes).
    ///
    /// # Panics
    ///
    /// If the file cannot be read.
    pub fn file(mut self, path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let relative = path.strip_prefix(repo()).unwrap_or(path);
        let relative = relative.to_string_lossy();
        self.hasher.update((relative.len() as u64).to_le_bytes());
        self.hasher.update(relative.as_bytes());
        self.hasher.update((bytes.len() as u64).to_le_bytes());
        self.hasher.update(&bytes);
        self
    }

    /// Add every file under `dir`, in path order (skipping `__pycache__`).
    pub fn tree(mut self, dir: &Path) -> Self {
        let mut files = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let entries =
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            for entry in entries {
                let path = entry
                    .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                    .path();
                if path.file_name().is_some_and(|n| n == "__pycache__") {
                    continue;
                }
                if path.is_dir() {
                    stack.push(path);
                } else {
                    files.push(path);
                }
            }
        }
        files.sort();
        for file in files {
            self = self.file(&file);
        }
        self
    }

    /// The cache file name: `<name>.<language>.<first 16 hex digits>.wasm`.
    fn file_name(&self) -> String {
        let digest = self.hasher.clone().finalize();
        format!("{}.{}.wasm", self.name, hex::encode(&digest[..8]))
    }
}

/// The build cache's directory: `<target>/lang-components` (the
/// `CARGO_TARGET_DIR` if set, else the repository's `target/`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
        .join("lang-components")
}

/// Run `f` holding the exclusive lock `<cache_dir>/<name>.lock`, shared by
/// every process of the machine (the test processes of one `cargo nextest`
/// run): one of them does the work while the others wait.
///
/// # Panics
///
/// If the cache directory or the lock file cannot be made, or `f` panics.
pub fn with_lock<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let lock_path = dir.join(format!("{name}.lock"));
    let lock = std::fs::File::create(&lock_path)
        .unwrap_or_else(|e| panic!("{}: {e}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("locking {}: {e}", lock_path.display()));
    f()
}

/// Copy the component of `key` from the cache to `out`, building it with
/// `build` (given the path to write) first if the cache has none.
///
/// Test processes share the cache (nextest runs each test in a process of
/// its own): an exclusive lock on `<file>.lock` makes one of them build
/// while the others wait, and a build is renamed into place whole, so a
/// reader never sees a partial component. A componentize run takes 20-80 s
/// on the 2-core reference machine; the conformance tests and the
/// per-language bench need the same four builds.
///
/// # Panics
///
/// If the cache directory cannot be written or the build panics.
pub fn cached(key: &BuildKey, out: &Path, build: impl FnOnce(&Path)) {
    let dir = cache_dir();
    let name = key.file_name();
    let path = dir.join(&name);
    with_lock(&name, || {
        if !path.is_file() {
            let building = tempfile::tempdir_in(&dir)
                .unwrap_or_else(|e| panic!("a directory in {}: {e}", dir.display()));
            let into = building.path().join(&name);
            build(&into);
            std::fs::rename(&into, &path)
                .unwrap_or_else(|e| panic!("{} -> {}: {e}", into.display(), path.display()));
        }
    });
    std::fs::copy(&path, out)
        .unwrap_or_else(|e| panic!("{} -> {}: {e}", path.display(), out.display()));
}

/// `component` with a custom section `name` holding `payload` appended: the
/// same code under another SHA-256, so a cache keyed by content compiles it
/// again (the bench's "20 different apps" from one build).
pub fn with_custom_section(component: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    let mut out = component.to_vec();
    out.push(0); // custom section id
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}
