//! The crates' layering, checked from the sources and `Cargo.lock`: no
//! import cycle among the top-level modules of any crate (a cycle between
//! crates does not compile, a cycle inside one would), and the dependency
//! graphs the crate split promises (#24).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src` belongs to (`None`: the crate root).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    (!matches!(name.as_str(), "lib" | "main")).then_some(name)
}

/// The modules `text` names as `crate::<m>` or in `crate::{<m>, ..}`,
/// comments skipped.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                refs.extend(group[..end].split(',').map(|m| ident(m.trim())));
            } else {
                refs.insert(ident(rest));
            }
        }
    }
    refs
}

/// A cycle among the top-level modules of the crate at `src`, if any.
fn module_cycle(src: &Path) -> Option<Vec<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let tops: BTreeSet<String> = files.iter().filter_map(|f| top_module(src, f)).collect();
    for file in &files {
        let Some(me) = top_module(src, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        let deps: Vec<String> = crate_refs(&text)
            .into_iter()
            .filter(|m| tops.contains(m) && *m != me)
            .collect();
        edges.entry(me).or_default().extend(deps);
    }
    // Depth-first search; a grey node reached again closes a cycle.
    fn visit(
        u: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        color: &mut HashMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        color.insert(u.to_owned(), 1);
        stack.push(u.to_owned());
        for v in edges.get(u).into_iter().flatten() {
            match color.get(v.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|s| s == v).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(v.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(v, edges, color, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        color.insert(u.to_owned(), 2);
        None
    }
    let mut color = HashMap::new();
    for u in edges.keys() {
        if !color.contains_key(u.as_str())
            && let Some(c) = visit(u, &edges, &mut color, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_crate_has_an_import_cycle_among_its_modules() {
    let crates = workspace().join("crates");
    let mut checked = 0;
    let mut cycles = Vec::new();
    for entry in std::fs::read_dir(&crates).unwrap() {
        let src = entry.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        checked += 1;
        if let Some(cycle) = module_cycle(&src) {
            cycles.push(format!("{}: {}", src.display(), cycle.join(" -> ")));
        }
    }
    assert!(
        checked >= 6,
        "found {checked} crates under {}",
        crates.display()
    );
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::X;\n// crate::c\n").unwrap();
    std::fs::create_dir(src.join("b")).unwrap();
    std::fs::write(src.join("b/mod.rs"), "pub struct X;\n").unwrap();
    assert_eq!(module_cycle(src), None);
    std::fs::write(src.join("b/inner.rs"), "use crate::{a::Y, b};\n").unwrap();
    assert_eq!(
        module_cycle(src),
        Some(vec!["a".to_owned(), "b".to_owned(), "a".to_owned()])
    );
}

/// Every package `package` may depend on, transitively, in `Cargo.lock`
/// (normal, build and dev dependencies alike: a superset of what it links).
fn lock_closure(package: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(workspace().join("Cargo.lock")).unwrap();
    let lock: toml::Table = toml::from_str(&text).unwrap();
    let mut deps: HashMap<String, Vec<String>> = HashMap::new();
    for p in lock["package"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap().to_owned();
        let list = p
            .get("dependencies")
            .and_then(|d| d.as_array())
            .into_iter()
            .flatten()
            // "name" or "name version" when two versions are locked.
            .map(|d| d.as_str().unwrap().split(' ').next().unwrap().to_owned());
        deps.entry(name).or_default().extend(list);
    }
    assert!(deps.contains_key(package), "{package} is not in Cargo.lock");
    let mut seen = BTreeSet::new();
    let mut todo = vec![package.to_owned()];
    while let Some(p) = todo.pop() {
        for d in deps.get(&p).into_iter().flatten() {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}

#[test]
fn each_crate_links_only_its_planes() {
    let forbidden = |package: &str, names: &[&str]| {
        let closure = lock_closure(package);
        let found: Vec<_> = names.iter().filter(|n| closure.contains(**n)).collect();
        assert!(found.is_empty(), "{package} depends on {found:?}");
        closure
    };
    let runtime = forbidden(
        "weir-runtime",
        &[
            "async-nats",
            "axum",
            "hyper",
            "redis",
            "weir-edge",
            "weir-host",
        ],
    );
    assert!(
        runtime.contains("wasmtime"),
        "the closure is read: {runtime:?}"
    );
    forbidden("weir-bridge", &["wasmtime", "weir-runtime", "weir-host"]);
    forbidden("weir-edge", &["wasmtime", "weir-runtime", "redis"]);
    forbidden("weir-host", &["redis", "clap", "weir-bridge"]);
}

#[test]
fn the_versions_weir_reports_are_the_ones_it_is_built_with() {
    let lock = std::fs::read_to_string(workspace().join("Cargo.lock")).unwrap();
    let wasmtime = lock
        .split("[[package]]")
        .find(|p| p.contains("\nname = \"wasmtime\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    assert_eq!(weir_runtime::WASMTIME_VERSION, wasmtime);
    let wit = std::fs::read_to_string(workspace().join("wit/handler.wit")).unwrap();
    assert!(
        wit.contains(&format!("package {};", weir_runtime::WIT_PACKAGES[0])),
        "wit/handler.wit is not {}",
        weir_runtime::WIT_PACKAGES[0]
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8(out.stdout).unwrap();
    for expected in [
        env!("CARGO_PKG_VERSION"),
        weir_runtime::WIT_PACKAGES[0],
        weir_runtime::WIT_PACKAGES[1],
        &format!("wasmtime {wasmtime}"),
    ] {
        assert!(
            version.contains(expected),
            "{expected:?} not in {version:?}"
        );
    }
}
