//! `weir new --lang rust|python|js`: each project builds with the command its
//! README documents, passes `weir check`, and `weir invoke` on its sample
//! events asks for exactly its one restart (of four events, one is
//! relevant); a bad name and a non-empty directory are refused with their
//! exit codes. Relevance itself, language by language, is the conformance
//! suite's.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::heavy;

fn weir(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run weir")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Run `program args` in `dir` and assert success.
fn build(dir: &Path, program: &str, args: &[&str], env: &[(&str, &Path)]) {
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program} not found: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// `weir new`, the documented build, then `weir check` and `weir invoke`.
fn new_build_check_invoke(lang: &str, build_it: impl FnOnce(&Path), wasm: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = weir(&["new", "--lang", lang, "demo-app"], tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let project = tmp.path().join("demo-app");
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    assert!(readme.contains(wasm), "{lang}: README names {wasm}");
    build_it(&project);
    let check = weir(&["check", wasm], &project);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{lang}: {}",
        text(&check.stdout)
    );
    assert!(text(&check.stdout).contains("verdict: deployable"));
    let invoke = weir(
        &[
            "invoke",
            wasm,
            "--events",
            "events.jsonl",
            "--domain",
            "example.org",
        ],
        &project,
    );
    assert_eq!(
        invoke.status.code(),
        Some(0),
        "{lang}: {}",
        text(&invoke.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&invoke.stdout)
        .unwrap_or_else(|e| panic!("{lang}: {e}: {}", text(&invoke.stdout)));
    assert_eq!(line["events"], 4, "{lang}: {line}");
    assert_eq!(
        line["outcomes"],
        serde_json::json!(["done", "done", "done", "done"]),
        "{lang}"
    );
    assert_eq!(
        line["effects"],
        serde_json::json!([{ "restart": "demo-app.service" }]),
        "{lang}"
    );
}

#[test]
fn a_rust_project_builds_checks_and_invokes() {
    let _heavy = heavy();
    // The guests' target directory: the SDK's dependencies (the versions of
    // guests/Cargo.lock, which the project's Cargo.lock copies) are already
    // built there with the same profile.
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/wasm-guests");
    new_build_check_invoke(
        "rust",
        |dir| {
            build(
                dir,
                "cargo",
                &["build", "--release", "--target", "wasm32-wasip2"],
                &[("CARGO_TARGET_DIR", &target)],
            );
            let built = target.join("wasm32-wasip2/release/demo_app.wasm");
            let to = dir.join("target/wasm32-wasip2/release");
            std::fs::create_dir_all(&to).unwrap();
            std::fs::copy(built, to.join("demo_app.wasm")).unwrap();
        },
        "target/wasm32-wasip2/release/demo_app.wasm",
    );
}

#[test]
fn a_python_project_builds_checks_and_invokes() {
    let _heavy = heavy();
    new_build_check_invoke(
        "python",
        |dir| {
            build(
                dir,
                "componentize-py",
                &[
                    "-d",
                    "wit",
                    "-w",
                    "handler",
                    "componentize",
                    "app",
                    "-p",
                    ".",
                    "-o",
                    "demo-app.wasm",
                ],
                &[],
            )
        },
        "demo-app.wasm",
    );
}

#[test]
fn a_javascript_project_builds_checks_and_invokes() {
    let _heavy = heavy();
    new_build_check_invoke(
        "js",
        |dir| {
            // npm's cache holds the pinned componentize-js after `.ci/run`'s
            // `npm ci` in guests/js; the project pins the same version.
            build(
                dir,
                "npm",
                &["install", "--no-audit", "--no-fund", "--prefer-offline"],
                &[],
            );
            build(dir, "npm", &["run", "build"], &[]);
        },
        "demo-app.wasm",
    );
}

#[test]
fn bad_names_and_non_empty_directories_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = weir(&["new", "--lang", "rust", "Bad_Name"], tmp.path());
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("invalid project name"));
    std::fs::create_dir(tmp.path().join("taken")).unwrap();
    std::fs::write(tmp.path().join("taken/keep.txt"), "mine").unwrap();
    let out = weir(&["new", "--lang", "python", "taken"], tmp.path());
    assert_eq!(out.status.code(), Some(73), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("is not empty"));
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("taken/keep.txt")).unwrap(),
        "mine"
    );
    // An empty directory given with --dir is used.
    std::fs::create_dir(tmp.path().join("empty")).unwrap();
    let out = weir(&["new", "--lang", "js", "ok", "--dir", "empty"], tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(tmp.path().join("empty/weir.js").is_file());
}
