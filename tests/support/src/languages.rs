//! Building the Python (componentize-py) and JavaScript (componentize-js)
//! handlers of `guests/python` and `guests/js` into components, for the
//! conformance suite and the per-language bench. The Rust builds come from
//! `weir-test-artifacts`.
//!
//! Tools: `componentize-py` on `PATH` (pinned in `.ci/run`, 0.25.1) and
//! Node.js with `guests/js/node_modules` (`npm ci --prefix guests/js`,
//! componentize-js 0.23.0 pinned by its `package-lock.json`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Build the Python handler `guests/python/<name>/app.py` (with the SDK
/// `guests/python/weir_sdk`) against `wit/`, world `handler`, into `out`.
///
/// # Panics
///
/// If componentize-py is missing (with the install command) or fails.
pub fn build_python(name: &str, out: &Path) {
    let python = repo().join("guests/python");
    let status = Command::new("componentize-py")
        .arg("-d")
        .arg(repo().join("wit"))
        .args(["-w", "handler", "componentize", "app", "-p"])
        .arg(python.join(name))
        .arg("-p")
        .arg(&python)
        .arg("-o")
        .arg(out)
        .current_dir(out.parent().unwrap_or(Path::new(".")))
        .status()
        .unwrap_or_else(|e| {
            panic!("componentize-py not found ({e}): `pip install componentize-py==0.25.1`")
        });
    assert!(status.success(), "componentize-py failed for {name}");
}

/// Build the JavaScript handlers `guests/js/<name>/app.js` (each with the
/// SDK `guests/js/weir.js`) with `guests/js/build.mjs` into
/// `out/<name>.wasm`.
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
    let status = Command::new("node")
        .arg(js.join("build.mjs"))
        .args(names)
        .env("WEIR_JS_OUT", out)
        .status()
        .unwrap_or_else(|e| panic!("node not found ({e}): install Node.js 20 or later"));
    assert!(status.success(), "componentize-js failed for {names:?}");
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
