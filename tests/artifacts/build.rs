//! Compiles the guest workspace (`guests/`) for `wasm32-wasip2` in release
//! mode and generates path constants plus a `foreach_component!` macro, so
//! every example and test component is built before the tests and benches
//! that use it, and each has a test.

#![allow(clippy::unwrap_used)] // a build script reports failure by panicking

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

/// The wasm target guests are built for.
const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .join("../..")
        .canonicalize()
        .expect("workspace root");
    let guests = root.join("guests");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    // target/<profile>/build/<pkg>-<hash>/out -> target/
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .expect("target dir")
        .to_path_buf();
    let guest_target = target_dir.join("wasm-guests");

    for tracked in [
        "Cargo.toml",
        "Cargo.lock",
        "sdk",
        "examples",
        "test-components",
        ".cargo",
    ] {
        println!("cargo:rerun-if-changed={}", guests.join(tracked).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("wit").display());

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guests)
        .args(["build", "--release", "--workspace", "--target", TARGET])
        .arg("--target-dir")
        .arg(&guest_target);
    // Do not leak the host build's settings into the nested wasm build.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let keep = key == "CARGO_HOME" || key == "CARGO_MAKEFLAGS" || key == "CARGO_NET_OFFLINE";
        if (key.starts_with("CARGO_") && !keep)
            || matches!(
                key.as_str(),
                "RUSTFLAGS"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "NUM_JOBS"
                    | "RUSTC_LINKER"
                    | "RUSTDOC"
            )
        {
            cmd.env_remove(&key);
        }
    }
    let status = cmd.status().expect("failed to run cargo for the guests");
    assert!(
        status.success(),
        "building guests/ for {TARGET} failed (is the target installed? `rustup target add {TARGET}`)"
    );

    let wasm_dir = guest_target.join(TARGET).join("release");
    let mut names = Vec::new();
    for group in ["examples", "test-components"] {
        let mut entries: Vec<_> = std::fs::read_dir(guests.join(group))
            .expect("read guest dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("Cargo.toml").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        entries.sort();
        names.extend(entries.into_iter().map(|n| (group, n)));
    }
    let mut code = String::new();
    let mut foreach = String::new();
    for (group, name) in &names {
        let ident = name.replace('-', "_");
        let path = wasm_dir.join(format!("{ident}.wasm"));
        assert!(path.exists(), "missing {}", path.display());
        let konst = ident.to_uppercase();
        writeln!(code, "/// `guests/{group}/{name}` compiled for {TARGET}.").unwrap();
        writeln!(
            code,
            "pub const {konst}: &str = {:?};",
            path.display().to_string()
        )
        .unwrap();
        writeln!(foreach, "        $mac!({ident}, {konst});").unwrap();
    }
    writeln!(code, "/// Every guest component: (crate name, path).").unwrap();
    writeln!(code, "pub const ALL: &[(&str, &str)] = &[").unwrap();
    for (_, name) in &names {
        writeln!(
            code,
            "    ({name:?}, {}),",
            name.replace('-', "_").to_uppercase()
        )
        .unwrap();
    }
    writeln!(code, "];").unwrap();
    writeln!(
        code,
        "/// Invoke `$mac!(ident, CONST)` once per guest component.\n#[macro_export]\nmacro_rules! foreach_component {{\n    ($mac:ident) => {{\n{foreach}    }};\n}}"
    )
    .unwrap();
    std::fs::write(out_dir.join("artifacts.rs"), code).expect("write artifacts.rs");
}
