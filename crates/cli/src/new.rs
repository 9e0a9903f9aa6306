//! `weir new --lang rust|python|js NAME`: write a handler project that builds
//! with one command and passes `weir check` and `weir invoke` out of the box.
//!
//! Every project gets the WIT package (`wit/handler.wit`), a sample
//! `events.jsonl`, a README with the build, check, invoke and deploy steps,
//! and a copy of the SDK this `weir` was built with, so the project is pinned
//! to it and builds without the weir repository:
//!
//! | language | SDK copy | build command | component |
//! |---|---|---|---|
//! | rust | `weir-guest/` (and weir's `Cargo.lock`) | `cargo build --release --target wasm32-wasip2` | `target/wasm32-wasip2/release/<name>.wasm` (`-` becomes `_`) |
//! | python | `weir_sdk/` | `componentize-py -d wit -w handler componentize app -p . -o <name>.wasm` | `<name>.wasm` |
//! | js | `weir.js` | `npm install && npm run build` (componentize-js pinned in `package.json`, every package in `package-lock.json`) | `<name>.wasm` |

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::ValueEnum;

use crate::exit::{self, Code as _, Failure};

/// The componentize-js version a JavaScript project pins (npm), the one
/// `guests/js/package.json` is built and tested with.
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";

/// The `@bytecodealliance/preview2-shim` version a JavaScript project pins:
/// componentize-js imports it at build time, but npm does not install it by
/// itself (an optional peer), so `npm ci` on a lock without it fails.
pub const PREVIEW2_SHIM_VERSION: &str = "0.25.0";

/// The componentize-py version a Python project is documented with (PyPI),
/// the one `.ci/run` installs.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// Longest project name: 64 bytes (a crate, npm package and file name).
pub const MAX_NAME_BYTES: usize = 64;

/// The SDK version every language's copy carries: the guests workspace's
/// (`guests/Cargo.toml`), which follows the WIT package's.
const SDK_VERSION: &str = "0.2.0";

/// `weir new`.
#[derive(clap::Args)]
pub struct NewArgs {
    /// The handler's language.
    #[arg(long, value_enum)]
    lang: Lang,
    /// The project's name: lower-case letters, digits and `-`, starting with
    /// a letter (also the service unit the sample handler restarts).
    name: String,
    /// Where to write the project (default: `./NAME`). Must not exist, or be
    /// an empty directory.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// A handler language `weir new` can write.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Lang {
    /// Rust with the `weir-guest` SDK (cargo, target wasm32-wasip2).
    Rust,
    /// Python with `weir_sdk` (componentize-py).
    Python,
    /// JavaScript with `weir.js` (componentize-js, npm).
    Js,
}

/// One file of a project: its path and its text (placeholders filled).
type File = (&'static str, String);

/// Exit 0 with the project written, 64 for a bad name, 73 if the directory
/// exists and is not empty or cannot be written.
pub fn run(args: NewArgs) -> Result<ExitCode, Failure> {
    check_name(&args.name).code(exit::USAGE)?;
    if matches!(args.lang, Lang::Rust) && args.name == "weir-guest" {
        return Err(anyhow::anyhow!(
            "invalid project name \"weir-guest\": it is the vendored SDK's package name"
        ))
        .code(exit::USAGE);
    }
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    let files = project(args.lang, &args.name);
    write_all(&dir, &files).code(exit::CANT_CREATE)?;
    for (path, _) in &files {
        println!("  created {}", dir.join(path).display());
    }
    let (build, wasm) = build_and_wasm(args.lang, &args.name);
    println!(
        "\nnext:\n  cd {}\n  {build}\n  weir check {wasm}\n  weir invoke {wasm} --events events.jsonl --domain example.org",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= MAX_NAME_BYTES
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    anyhow::ensure!(
        ok,
        "invalid project name {name:?}: use lower-case letters, digits and '-', \
         starting with a letter, at most {MAX_NAME_BYTES} bytes (e.g. \"mail-sync\")"
    );
    Ok(())
}

/// The build command and the component path it produces.
fn build_and_wasm(lang: Lang, name: &str) -> (String, String) {
    match lang {
        Lang::Rust => (
            "cargo build --release --target wasm32-wasip2".into(),
            format!(
                "target/wasm32-wasip2/release/{}.wasm",
                name.replace('-', "_")
            ),
        ),
        Lang::Python => (
            format!("componentize-py -d wit -w handler componentize app -p . -o {name}.wasm"),
            format!("{name}.wasm"),
        ),
        Lang::Js => (
            "npm install && npm run build".into(),
            format!("{name}.wasm"),
        ),
    }
}

/// Fill `{{key}}` placeholders.
fn fill(template: &str, lang: Lang, name: &str) -> String {
    let (build, wasm) = build_and_wasm(lang, name);
    let (lang_name, sdk_path) = match lang {
        Lang::Rust => ("Rust", "`weir-guest/`"),
        Lang::Python => ("Python", "`weir_sdk/`"),
        Lang::Js => ("JavaScript", "`weir.js`"),
    };
    let needs = match lang {
        Lang::Rust => "Rust 1.95 or later with `rustup target add wasm32-wasip2`".to_owned(),
        Lang::Python => format!(
            "componentize-py {COMPONENTIZE_PY_VERSION} (`pip install componentize-py=={COMPONENTIZE_PY_VERSION}`)"
        ),
        Lang::Js => format!(
            "Node.js 20 or later; `npm install` fetches componentize-js {COMPONENTIZE_JS_VERSION}, pinned in `package.json`"
        ),
    };
    template
        .replace("{{name}}", name)
        .replace("{{lang}}", lang_name)
        .replace("{{sdk_path}}", sdk_path)
        .replace("{{sdk_version}}", SDK_VERSION)
        .replace("{{weir_version}}", env!("CARGO_PKG_VERSION"))
        .replace("{{componentize_js}}", COMPONENTIZE_JS_VERSION)
        .replace("{{preview2_shim}}", PREVIEW2_SHIM_VERSION)
        .replace("{{build}}", &build)
        .replace("{{needs}}", &needs)
        .replace("{{wasm}}", &wasm)
}

/// Every file of a `lang` project called `name`.
fn project(lang: Lang, name: &str) -> Vec<File> {
    let t = |text: &str| fill(text, lang, name);
    let mut files: Vec<File> = vec![
        (
            "wit/handler.wit",
            include_str!("../../../wit/handler.wit").into(),
        ),
        (
            "events.jsonl",
            include_str!("../templates/common/events.jsonl").into(),
        ),
        (
            "README.md",
            t(include_str!("../templates/common/README.md")),
        ),
    ];
    match lang {
        Lang::Rust => files.extend([
            (
                "Cargo.toml",
                t(include_str!("../templates/rust/Cargo.toml")),
            ),
            // The versions the SDK is built and tested with (cargo drops
            // the entries of weir's own guest crates on the first build).
            (
                "Cargo.lock",
                include_str!("../../../guests/Cargo.lock").into(),
            ),
            ("src/lib.rs", t(include_str!("../templates/rust/lib.rs"))),
            (".gitignore", "target/\n".into()),
            (
                "weir-guest/Cargo.toml",
                t(include_str!("../templates/rust/sdk-Cargo.toml")),
            ),
            (
                "weir-guest/src/lib.rs",
                // The SDK finds the WIT package next to it, not in the repository.
                include_str!("../../../guests/sdk/src/lib.rs")
                    .replace(r#"path: "../../wit""#, r#"path: "../wit""#),
            ),
            (
                "weir-guest/src/kv.rs",
                include_str!("../../../guests/sdk/src/kv.rs").into(),
            ),
        ]),
        Lang::Python => files.extend([
            ("app.py", t(include_str!("../templates/python/app.py"))),
            (".gitignore", "*.wasm\n__pycache__/\n".into()),
            (
                "weir_sdk/__init__.py",
                include_str!("../../../guests/python/weir_sdk/__init__.py").into(),
            ),
            ("weir_sdk/py.typed", String::new()),
        ]),
        Lang::Js => files.extend([
            ("app.js", t(include_str!("../templates/js/app.js"))),
            (
                "package.json",
                t(include_str!("../templates/js/package.json")),
            ),
            ("package-lock.json", js_lock(name)),
            (".gitignore", "node_modules/\n*.wasm\n".into()),
            ("weir.js", include_str!("../../../guests/js/weir.js").into()),
        ]),
    }
    files
}

/// `guests/js/package-lock.json` (the versions weir's JavaScript SDK is
/// built and tested with) renamed for project `name`, so `npm install`
/// installs exactly those.
fn js_lock(name: &str) -> String {
    let mut lock: serde_json::Value =
        serde_json::from_str(include_str!("../../../guests/js/package-lock.json"))
            .expect("guests/js/package-lock.json is JSON");
    lock["name"] = name.into();
    lock["version"] = "0.1.0".into();
    if let Some(root) = lock["packages"][""].as_object_mut() {
        root.insert("name".into(), name.into());
        root.insert("version".into(), "0.1.0".into());
        root.remove("license");
    }
    let mut text = serde_json::to_string_pretty(&lock).expect("a JSON value serializes");
    text.push('\n');
    text
}

/// Write `files` under `dir`, which must not exist or be empty.
fn write_all(dir: &Path, files: &[File]) -> anyhow::Result<()> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir)
            .with_context(|| format!("{} exists and cannot be read", dir.display()))?;
        anyhow::ensure!(
            entries.next().is_none(),
            "{} exists and is not empty: choose another name or --dir",
            dir.display()
        );
    }
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["mail", "mail-sync", "a1"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Mail",
            "1mail",
            "mail_sync",
            "mail-",
            "a/b",
            &"a".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_placeholder_is_filled_and_the_sdk_finds_its_wit() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            for (path, text) in project(lang, "demo-app") {
                assert!(
                    !text.contains("{{"),
                    "{lang:?} {path}: unfilled placeholder"
                );
            }
        }
        // The JavaScript lock pins what package.json asks for.
        let js = project(Lang::Js, "demo-app");
        let file =
            |files: &[File], path: &str| files.iter().find(|(p, _)| *p == path).unwrap().1.clone();
        let package: serde_json::Value = serde_json::from_str(&file(&js, "package.json")).unwrap();
        let lock: serde_json::Value =
            serde_json::from_str(&file(&js, "package-lock.json")).unwrap();
        assert_eq!(lock["packages"][""]["name"], "demo-app");
        assert_eq!(
            lock["packages"][""]["devDependencies"],
            package["devDependencies"]
        );
        let rust = project(Lang::Rust, "demo-app");
        let sdk = &rust
            .iter()
            .find(|(p, _)| *p == "weir-guest/src/lib.rs")
            .unwrap()
            .1;
        assert!(sdk.contains(r#"path: "../wit""#));
    }
}
